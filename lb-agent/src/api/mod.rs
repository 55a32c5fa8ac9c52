//! The HTTP API: Cloudflare's v4 load-balancing paths, objects and envelope, a live status
//! view, Prometheus metrics and the dashboard. Reads come from the `View` the agent's main
//! loop publishes; every change goes to the main loop as a `Command` (the reconciler stays
//! the one writer of maps) and is answered once it is validated, saved and applied.

mod errors;
mod traffic;

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

pub use errors::{code, status_and_code, Rejection};
pub use traffic::{Sample, Sampler};

use crate::{
    config::Config,
    metrics::RttHistograms,
    plan::Plan,
    reconcile::Assignment,
    refusal::Refusal,
    status::{OriginState, Status},
    store::{Done, Kind, Op, Store},
};

/// What the API reads: published by the main loop after every change and status update.
#[derive(Debug, Clone)]
pub struct View {
    pub store: Store,
    pub status: Status,
    pub cfg: Arc<Config>,
    /// The plan the maps hold, and the ids the reconciler gave its VIPs, rings and origins
    /// (the traffic sampler names counters by them).
    pub plan: Arc<Plan>,
    pub ids: Arc<Assignment>,
    pub rtt: RttHistograms,
    /// Webhook delivery counters: sent, failed, dropped, retried.
    pub notifications: [u64; 4],
}

/// A change for the main loop, answered with the object as stored (or `{"id"}` for a
/// delete) once it is saved and in the maps.
#[derive(Debug)]
pub struct Command {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Value, Refusal>>,
}

/// Credentials that the environment adds to the config's (`LB_API_TOKEN`, comma-separated,
/// and `LB_API_EMAIL` + `LB_API_KEY`).
#[derive(Debug, Clone, Default)]
pub struct EnvCredentials {
    pub tokens: Vec<String>,
    pub keys: Vec<(String, String)>,
}

impl EnvCredentials {
    pub fn from_env() -> Self {
        let var = |k| std::env::var(k).ok();
        Self::parse(var("LB_API_TOKEN"), var("LB_API_EMAIL"), var("LB_API_KEY"))
    }

    /// `token`: one or more tokens, comma-separated; `email` and `key` count only together.
    pub fn parse(token: Option<String>, email: Option<String>, key: Option<String>) -> Self {
        let tokens = token
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let keys = match (email, key) {
            (Some(e), Some(k)) if !e.is_empty() && !k.is_empty() => vec![(e, k)],
            _ => Vec::new(),
        };
        Self { tokens, keys }
    }
}

#[derive(Clone)]
struct Api {
    view: watch::Receiver<Arc<View>>,
    tx: mpsc::Sender<Command>,
    env: Arc<EnvCredentials>,
    traffic: Sampler,
}

/// The router, ready for `axum::serve`.
pub fn router(
    view: watch::Receiver<Arc<View>>,
    tx: mpsc::Sender<Command>,
    env: EnvCredentials,
    traffic: Sampler,
) -> Router {
    let api = Api {
        view,
        tx,
        env: Arc::new(env),
        traffic,
    };
    let mut r = Router::new();
    for prefix in [
        "/client/v4/accounts/{scope}/load_balancers",
        "/client/v4/organizations/{scope}/load_balancers",
        "/client/v4/user/load_balancers",
    ] {
        r = objects(r, &format!("{prefix}/monitors"), Kind::Monitor);
        r = objects(r, &format!("{prefix}/pools"), Kind::Pool);
        r = r.route(&format!("{prefix}/pools/{{id}}/health"), get(pool_health));
    }
    r = objects(
        r,
        "/client/v4/zones/{scope}/load_balancers",
        Kind::LoadBalancer,
    );
    r = r.route("/lb-agent/v1/status", get(status));
    let authed = r.layer(axum::middleware::from_fn_with_state(api.clone(), auth));
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .merge(authed)
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(api)
}

/// The five routes of one kind of object under `base`.
fn objects(r: Router<Api>, base: &str, kind: Kind) -> Router<Api> {
    r.route(
        base,
        get(move |s: State<Api>, q: Query<Page>| list(s, kind, q)).post(
            move |s: State<Api>, b: Bytes| async move {
                mutate(&s, body(b).map(|v| Op::Create(kind, v))).await
            },
        ),
    )
    .route(
        &format!("{base}/{{id}}"),
        get(move |s: State<Api>, p: Path<HashMap<String, String>>| one(s, kind, p))
            .put(
                move |s: State<Api>, p: Path<HashMap<String, String>>, b: Bytes| async move {
                    let id = id_of(&p);
                    mutate(&s, body(b).map(|v| Op::Replace(kind, id, v))).await
                },
            )
            .patch(
                move |s: State<Api>, p: Path<HashMap<String, String>>, b: Bytes| async move {
                    let id = id_of(&p);
                    mutate(&s, body(b).map(|v| Op::Patch(kind, id, v))).await
                },
            )
            .delete(
                move |s: State<Api>, p: Path<HashMap<String, String>>| async move {
                    mutate(&s, Ok(Op::Delete(kind, id_of(&p)))).await
                },
            ),
    )
}

fn id_of(p: &HashMap<String, String>) -> String {
    p.get("id").cloned().unwrap_or_default()
}

fn body(b: Bytes) -> Result<Value, Rejection> {
    if b.is_empty() {
        return Err(Rejection::new(
            400,
            code::BAD_BODY,
            "body: empty; send the object as JSON",
        ));
    }
    serde_json::from_slice(&b).map_err(|e| {
        Rejection::new(
            400,
            code::BAD_BODY,
            format!("body: not valid JSON ({e}); send the object as JSON"),
        )
    })
}

// --- envelope

fn envelope(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn success(result: Value, info: Option<Value>) -> Response {
    let mut v = json!({"success": true, "errors": [], "messages": [], "result": result});
    if let Some(i) = info {
        v["result_info"] = i;
    }
    envelope(StatusCode::OK, v)
}

fn failure(r: &Rejection) -> Response {
    let errors: Vec<Value> = r
        .errors
        .iter()
        .map(|(c, m)| json!({"code": c, "message": m}))
        .collect();
    envelope(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
        json!({"success": false, "errors": errors, "messages": [], "result": null}),
    )
}

async fn no_route(req: Request) -> Response {
    failure(&Rejection::new(
        404,
        code::NO_ROUTE,
        format!(
            "Could not route to {}, perhaps your object identifier is invalid?",
            req.uri().path()
        ),
    ))
}

async fn no_method(req: Request) -> Response {
    failure(&Rejection::new(
        405,
        code::NO_METHOD,
        format!("No route for {} {}", req.method(), req.uri().path()),
    ))
}

// --- auth

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks the request's credentials against the config's and the environment's.
fn check_auth(headers: &HeaderMap, cfg: &Config, env: &EnvCredentials) -> Result<(), Rejection> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let bearer = h("authorization").and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
            .map(str::trim)
    });
    let (email, key) = (h("x-auth-email"), h("x-auth-key"));
    let configured = !(cfg.api.tokens.is_empty()
        && cfg.api.keys.is_empty()
        && env.tokens.is_empty()
        && env.keys.is_empty());
    if bearer.is_none() && key.is_none() {
        return Err(Rejection::new(
            401,
            code::AUTH_MISSING,
            "Authentication error: send Authorization: Bearer <token>, or X-Auth-Email and X-Auth-Key",
        ));
    }
    if !configured {
        return Err(Rejection::new(
            403,
            code::AUTH_INVALID,
            "no API credentials are configured, so every request is refused; set [api] tokens in the config or LB_API_TOKEN in the agent's environment",
        ));
    }
    let token_ok =
        bearer.is_some_and(|t| cfg.api.tokens.iter().chain(&env.tokens).any(|x| same(x, t)));
    let key_ok = match (email, key) {
        (Some(e), Some(k)) => cfg
            .api
            .keys
            .iter()
            .chain(&env.keys)
            .any(|(xe, xk)| xe.eq_ignore_ascii_case(e) && same(xk, k)),
        _ => false,
    };
    if token_ok || key_ok {
        Ok(())
    } else if key.is_some() && email.is_none() {
        Err(Rejection::new(
            401,
            code::AUTH_MISSING,
            "Authentication error: X-Auth-Key needs X-Auth-Email",
        ))
    } else {
        Err(Rejection::new(
            403,
            code::AUTH_INVALID,
            "Invalid access token or key",
        ))
    }
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    let cfg = api.view.borrow().cfg.clone();
    match check_auth(req.headers(), &cfg, &api.env) {
        Ok(()) => next.run(req).await,
        Err(r) => failure(&r),
    }
}

// --- objects

#[derive(Debug, serde::Deserialize)]
struct Page {
    page: Option<String>,
    per_page: Option<String>,
}

pub const DEFAULT_PER_PAGE: usize = 20;
pub const MAX_PER_PAGE: usize = 1000;

/// One page of `items` and Cloudflare's `result_info`.
fn paginate(items: Vec<Value>, page: &Page) -> Result<(Vec<Value>, Value), Rejection> {
    let num = |s: &Option<String>, field: &str, default: usize, max: usize| match s {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Rejection::new(
                400,
                code::BAD_BODY,
                format!("{field}: \"{s}\" is not a whole number between 1 and {max}"),
            )),
        },
    };
    let p = num(&page.page, "page", 1, usize::MAX)?;
    let per = num(&page.per_page, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
    let total = items.len();
    let out: Vec<Value> = items
        .into_iter()
        .skip((p - 1).saturating_mul(per))
        .take(per)
        .collect();
    let info = json!({
        "page": p,
        "per_page": per,
        "count": out.len(),
        "total_count": total,
        "total_pages": total.div_ceil(per),
    });
    Ok((out, info))
}

async fn list(State(api): State<Api>, kind: Kind, Query(q): Query<Page>) -> Response {
    let items = api.view.borrow().store.list(kind);
    match paginate(items, &q) {
        Ok((items, info)) => success(Value::Array(items), Some(info)),
        Err(r) => failure(&r),
    }
}

async fn one(
    State(api): State<Api>,
    kind: Kind,
    Path(p): Path<HashMap<String, String>>,
) -> Response {
    let id = id_of(&p);
    match api.view.borrow().store.get(kind, &id) {
        Some(v) => success(v, None),
        None => failure(&Rejection::new(
            404,
            code::NOT_FOUND,
            format!("no {} has id \"{id}\"", kind.singular()),
        )),
    }
}

async fn mutate(api: &Api, op: Result<Op, Rejection>) -> Response {
    let op = match op {
        Ok(op) => op,
        Err(r) => return failure(&r),
    };
    let (reply, rx) = oneshot::channel();
    if api.tx.send(Command { op, reply }).await.is_err() {
        return failure(&Rejection::new(
            503,
            code::INTERNAL,
            "the agent is shutting down; nothing changed",
        ));
    }
    match rx.await {
        Ok(Ok(v)) => success(v, None),
        Ok(Err(r)) => failure(&r.into()),
        Err(_) => failure(&Rejection::new(
            503,
            code::INTERNAL,
            "the agent is shutting down; nothing changed",
        )),
    }
}

/// The answer to a successful mutation, read from the store it produced.
pub fn done_result(store: &Store, done: &Done) -> Value {
    if done.deleted {
        json!({"id": done.id})
    } else {
        store.get(done.kind, &done.id).unwrap_or(Value::Null)
    }
}

/// `GET .../pools/{id}/health`, in Cloudflare's shape: health per PoP (this host is one),
/// per origin address.
async fn pool_health(State(api): State<Api>, Path(p): Path<HashMap<String, String>>) -> Response {
    let id = id_of(&p);
    let view = api.view.borrow().clone();
    let Some(pool) = view.store.pool(&id) else {
        return failure(&Rejection::new(
            404,
            code::NOT_FOUND,
            format!("no pool has id \"{id}\""),
        ));
    };
    let name = &pool.object.name;
    let healthy = view
        .status
        .pools
        .iter()
        .find(|p| &p.name == name)
        .is_some_and(|p| p.healthy);
    let origins: Vec<Value> = view
        .status
        .origins
        .iter()
        .filter(|o| &o.pool == name)
        .map(|o| {
            let up = o.takes_new_connections();
            let mut m = serde_json::Map::new();
            m.insert(
                o.address.clone(),
                json!({
                    "healthy": up,
                    "rtt": o.rtt_ms.map(|r| format!("{r:.1}ms")),
                    "failure_reason": if o.last_ok == Some(false) || o.state == OriginState::Down { o.reason.clone() } else { "No failures".to_owned() },
                    "response_code": o.reason.strip_prefix("HTTP ").and_then(|c| c.get(..3)).and_then(|c| c.parse::<u16>().ok()),
                    "name": o.origin,
                    "port": o.port,
                    "state": o.state,
                }),
            );
            Value::Object(m)
        })
        .collect();
    let pop = pop_name(&view.cfg);
    success(
        json!({
            "pool_id": id,
            "pop_health": { pop: { "healthy": healthy, "origins": origins } },
        }),
        None,
    )
}

/// This host's name among PoPs: `agent.pop`, else the host name.
fn pop_name(cfg: &Config) -> String {
    cfg.agent.pop.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "local".into())
    })
}

/// `GET /lb-agent/v1/status`: health and traffic, per load balancer, pool and origin.
async fn status(State(api): State<Api>) -> Response {
    let view = api.view.borrow().clone();
    let sample = api.traffic.latest();
    success(json!(status_with_traffic(&view, sample.as_deref())), None)
}

/// The published status with the traffic figures of `sample` (zero before the first).
pub fn status_with_traffic(view: &View, sample: Option<&Sample>) -> Status {
    let mut s = view.status.clone();
    for l in &mut s.load_balancers {
        l.traffic = Some(
            sample
                .and_then(|s| s.vips.get(&l.name))
                .copied()
                .unwrap_or_default(),
        );
    }
    for o in &mut s.origins {
        o.traffic = Some(
            sample
                .and_then(|s| s.origins.get(&(o.pool.clone(), o.origin.clone())))
                .copied()
                .unwrap_or_default(),
        );
    }
    s
}

// --- metrics and dashboard

async fn metrics(State(api): State<Api>) -> Response {
    let view = api.view.borrow().clone();
    let sample = api.traffic.latest();
    let text = crate::metrics::render(&crate::metrics::MetricsInput {
        status: &view.status,
        stats: sample.as_ref().map(|s| &s.stats),
        rtt: &view.rtt,
        flow_table: sample.as_ref().and_then(|s| s.flow_table),
        notifications: Some(view.notifications),
    });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn cfg(tokens: &[&str], keys: &[(&str, &str)]) -> Config {
        let mut c = Config::parse(
            "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n",
            std::path::Path::new("t.toml"),
        )
        .expect("valid");
        c.api.tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
        c.api.keys = keys
            .iter()
            .map(|(e, k)| ((*e).to_owned(), (*k).to_owned()))
            .collect();
        c
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn status(r: Result<(), Rejection>) -> u16 {
        r.map_or_else(|r| r.status, |()| 200)
    }

    #[test]
    fn bearer_tokens_and_email_keys_from_config_or_environment() {
        let c = cfg(
            &["config-token-0123456789"],
            &[("ops@example.com", "config-key-0123456789")],
        );
        let env = EnvCredentials::parse(
            Some("env-token-0123456789, second-token-0123456789".into()),
            Some("env@example.com".into()),
            Some("env-key-0123456789".into()),
        );
        let none = EnvCredentials::default();
        for (h, want) in [
            (vec![], 401),
            (
                vec![("authorization", "Bearer config-token-0123456789")],
                200,
            ),
            (vec![("authorization", "Bearer env-token-0123456789")], 200),
            (
                vec![("authorization", "Bearer second-token-0123456789")],
                200,
            ),
            (
                vec![("authorization", "Bearer wrong-token-0123456789")],
                403,
            ),
            (vec![("authorization", "Basic abc")], 401),
            (
                vec![
                    ("x-auth-email", "OPS@example.com"),
                    ("x-auth-key", "config-key-0123456789"),
                ],
                200,
            ),
            (
                vec![
                    ("x-auth-email", "env@example.com"),
                    ("x-auth-key", "env-key-0123456789"),
                ],
                200,
            ),
            (
                vec![
                    ("x-auth-email", "ops@example.com"),
                    ("x-auth-key", "env-key-0123456789"),
                ],
                403,
            ),
            (vec![("x-auth-key", "config-key-0123456789")], 401),
        ] {
            assert_eq!(status(check_auth(&headers(&h), &c, &env)), want, "{h:?}");
        }
        // Environment credentials only count when given.
        let h = headers(&[("authorization", "Bearer env-token-0123456789")]);
        assert_eq!(status(check_auth(&h, &c, &none)), 403);
        // Nothing configured: refused, with the fix named.
        let r = check_auth(&h, &cfg(&[], &[]), &none).expect_err("refused");
        assert!(
            r.status == 403 && r.errors[0].1.contains("LB_API_TOKEN"),
            "{r:?}"
        );
        // An email without a key, or a key without an email, is no credential.
        assert!(EnvCredentials::parse(None, Some("a@b".into()), None)
            .keys
            .is_empty());
    }

    #[test]
    fn pages_cover_the_list_with_cloudflare_result_info() {
        let items: Vec<Value> = (0..7).map(|i| json!(i)).collect();
        let page = |p: Option<&str>, per: Option<&str>| Page {
            page: p.map(str::to_owned),
            per_page: per.map(str::to_owned),
        };
        let (out, info) = paginate(items.clone(), &page(Some("3"), Some("3"))).expect("page");
        assert_eq!(out, vec![json!(6)]);
        assert_eq!(
            info,
            json!({"page": 3, "per_page": 3, "count": 1, "total_count": 7, "total_pages": 3})
        );
        let (out, info) = paginate(items.clone(), &page(None, None)).expect("defaults");
        assert_eq!(
            (out.len(), &info["per_page"]),
            (7, &json!(DEFAULT_PER_PAGE))
        );
        let (out, _) = paginate(items.clone(), &page(Some("9"), None)).expect("past the end");
        assert!(out.is_empty());
        for bad in [
            page(Some("0"), None),
            page(None, Some("1001")),
            page(Some("x"), None),
        ] {
            assert_eq!(
                paginate(items.clone(), &bad)
                    .map(|_| ())
                    .map_err(|r| r.errors[0].0),
                Err(code::BAD_BODY)
            );
        }
    }
}

//! The HTTP client of the agent's API: authentication, the v4 envelope and its errors,
//! object paths and pagination.

use std::{fmt::Write as _, time::Duration};

use serde_json::Value;

pub(crate) const DEFAULT_API: &str = "http://127.0.0.1:8405";
/// Page size asked for when listing; the API's maximum.
const PER_PAGE: u64 = 1000;
/// Stops a server that keeps announcing more pages from looping us forever.
const MAX_PAGES: u64 = 10_000;

/// How lbctl failed, mapped to its exit status in `main`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CtlError {
    /// The API answered with a non-2xx status or `success: false`. `lines` are ready to print.
    #[error("{}", lines.join("\n"))]
    Api { lines: Vec<String> },
    /// No HTTP exchange happened (connection refused, DNS, timeout, bad URL).
    #[error("{0}")]
    Unreachable(String),
    /// The input was unusable: a bad body or credentials flag, an unknown or ambiguous name.
    /// Printed as `error: <message>`.
    #[error("{0}")]
    Input(String),
}

impl CtlError {
    /// `context: error: its source: ...`.
    pub(crate) fn input(context: &str, e: &dyn std::error::Error) -> Self {
        CtlError::Input(format!("{context}: {}", error_chain(e)))
    }
}

/// An error and its sources on one line, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let _ = write!(msg, ": {s}");
        src = s.source();
    }
    msg
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Auth {
    None,
    Bearer(String),
    Key { email: String, key: String },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    pub(crate) result: Value,
    pub(crate) result_info: Option<Value>,
    pub(crate) messages: Vec<String>,
}

pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Auth,
}

impl Client {
    pub(crate) fn new(base: &str, auth: Auth) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            auth,
        }
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Envelope, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .request(method, &url)
            .set("Accept", "application/json");
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.set("Authorization", &format!("Bearer {t}")),
            Auth::Key { email, key } => req.set("X-Auth-Email", email).set("X-Auth-Key", key),
        };
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.into_string().map_err(|e| {
                    CtlError::Unreachable(format!("reading the answer from {url}: {e}"))
                })?;
                parse_envelope(status, &text).map_err(|lines| CtlError::Api { lines })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let mut lines = error_lines(status, &text);
                if status == 401 && self.auth == Auth::None {
                    lines.push(
                        "hint: pass --token (LB_API_TOKEN) or --email and --key \
                         (LB_API_EMAIL, LB_API_KEY)"
                            .to_owned(),
                    );
                }
                Err(CtlError::Api { lines })
            }
            Err(ureq::Error::Transport(t)) => {
                Err(CtlError::Unreachable(transport_message(&self.base, &t)))
            }
        }
    }

    pub(crate) fn get(&self, path: &str) -> Result<Envelope, CtlError> {
        self.call("GET", path, None)
    }

    /// GETs every page of a list and joins the results.
    pub(crate) fn list_all(&self, path: &str) -> Result<Vec<Value>, CtlError> {
        fetch_all_pages(path, |url| self.get(url))
    }
}

fn transport_message(base: &str, t: &ureq::Transport) -> String {
    let mut detail = t.kind().to_string();
    if let Some(m) = t.message() {
        let _ = write!(detail, ": {m}");
    }
    if let Some(src) = std::error::Error::source(t) {
        let _ = write!(detail, ": {src}");
    }
    match t.kind() {
        ureq::ErrorKind::UnknownScheme => format!(
            "cannot use --api {base}: {detail}; lbctl speaks plain http:// only \
             (reach a remote agent through a tunnel to its TLS proxy)"
        ),
        ureq::ErrorKind::InvalidUrl => {
            format!("cannot use --api {base:?}: {detail}; give a URL like {DEFAULT_API}")
        }
        _ => format!(
            "cannot reach the agent's API at {base}: {detail}; \
             is lb-agent running (its --api-listen)?"
        ),
    }
}

/// Parses a 2xx answer; `Err` holds the lines to print when the envelope says
/// `success: false` or is not an envelope at all.
fn parse_envelope(status: u16, text: &str) -> Result<Envelope, Vec<String>> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Err(vec![format!(
            "error: HTTP {status} with a body that is not JSON: {}",
            excerpt(text)
        )]);
    };
    if v.get("success").and_then(Value::as_bool) != Some(true) {
        return Err(error_lines(status, text));
    }
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(message_text).collect())
        .unwrap_or_default();
    Ok(Envelope {
        result: v.get("result").cloned().unwrap_or(Value::Null),
        result_info: v.get("result_info").filter(|r| !r.is_null()).cloned(),
        messages,
    })
}

/// One line per `errors[]` entry: `error <code>: <message>`. Falls back to the HTTP status
/// and an excerpt of the body when the body is not an envelope with errors.
fn error_lines(status: u16, text: &str) -> Vec<String> {
    let errors = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    if errors.is_empty() {
        let body = excerpt(text);
        return vec![if body.is_empty() {
            format!("error: HTTP {status}")
        } else {
            format!("error: HTTP {status}: {body}")
        }];
    }
    errors
        .iter()
        .map(|e| {
            let code = match e.get("code") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => status.to_string(),
            };
            format!("error {code}: {}", message_text(e))
        })
        .collect()
}

fn message_text(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        _ => match e.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => e.to_string(),
        },
    }
}

fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_owned(),
    }
}

// Paths and pagination (pure)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Monitor,
    Pool,
    Lb,
}

impl Kind {
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Kind::Monitor => "monitor",
            Kind::Pool => "pool",
            Kind::Lb => "load balancer",
        }
    }
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters pass through).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The collection path of a kind, under the account (monitors, pools) or zone (lbs).
pub(crate) fn collection_path(kind: Kind, account: &str, zone: &str) -> String {
    match kind {
        Kind::Monitor => format!(
            "/client/v4/accounts/{}/load_balancers/monitors",
            encode_segment(account)
        ),
        Kind::Pool => format!(
            "/client/v4/accounts/{}/load_balancers/pools",
            encode_segment(account)
        ),
        Kind::Lb => format!("/client/v4/zones/{}/load_balancers", encode_segment(zone)),
    }
}

pub(crate) fn object_path(collection: &str, id: &str) -> String {
    format!("{collection}/{}", encode_segment(id))
}

fn page_url(path: &str, page: u64, per_page: u64) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}page={page}&per_page={per_page}")
}

/// `result_info.total_pages`, or 1 when absent.
fn total_pages(result_info: Option<&Value>) -> u64 {
    result_info
        .and_then(|r| r.get("total_pages"))
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

/// Follows `result_info.total_pages` from page 1, joining each page's `result` array.
fn fetch_all_pages<E>(
    path: &str,
    mut get: impl FnMut(&str) -> Result<Envelope, E>,
) -> Result<Vec<Value>, E> {
    let mut all = Vec::new();
    let mut page = 1;
    loop {
        let env = get(&page_url(path, page, PER_PAGE))?;
        let items = match env.result {
            Value::Array(a) => a,
            Value::Null => Vec::new(),
            other => vec![other],
        };
        let empty = items.is_empty();
        all.extend(items);
        let total = total_pages(env.result_info.as_ref());
        if empty || page >= total || page >= MAX_PAGES {
            return Ok(all);
        }
        page += 1;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::WEB_A;
    use crate::render::str_field;
    use lb_agent::store::is_id;

    fn env(result: Value, info: Option<Value>) -> Envelope {
        Envelope {
            result,
            result_info: info,
            messages: Vec::new(),
        }
    }

    #[test]
    fn paths_and_page_urls() {
        assert_eq!(
            collection_path(Kind::Monitor, "-", "-"),
            "/client/v4/accounts/-/load_balancers/monitors"
        );
        assert_eq!(
            collection_path(Kind::Pool, "acc 1/x", "-"),
            "/client/v4/accounts/acc%201%2Fx/load_balancers/pools"
        );
        assert_eq!(
            collection_path(Kind::Lb, "-", "example.com"),
            "/client/v4/zones/example.com/load_balancers"
        );
        assert_eq!(
            object_path("/client/v4/zones/-/load_balancers", WEB_A),
            format!("/client/v4/zones/-/load_balancers/{WEB_A}")
        );
        assert_eq!(
            page_url("/x/pools", 2, 1000),
            "/x/pools?page=2&per_page=1000"
        );
        assert_eq!(page_url("/x?a=b", 1, 20), "/x?a=b&page=1&per_page=20");
        assert_eq!(total_pages(None), 1);
        assert_eq!(
            total_pages(Some(
                &json!({"page":1,"per_page":20,"count":20,"total_count":45,"total_pages":3})
            )),
            3
        );
        assert!(is_id(WEB_A));
        assert!(!is_id("web-a"));
        assert!(!is_id(&WEB_A.to_uppercase()));
        assert_eq!(Client::new("http://h:1/", Auth::None).base, "http://h:1");
    }

    #[test]
    fn list_follows_total_pages_and_joins_results() {
        let mut asked = Vec::new();
        let all = fetch_all_pages("/p", |url: &str| -> Result<Envelope, ()> {
            asked.push(url.to_owned());
            let page: u64 = url
                .split("page=")
                .nth(1)
                .and_then(|s| s.split('&').next())
                .and_then(|s| s.parse().ok())
                .expect("page in url");
            let info = json!({"page": page, "per_page": 2, "count": 2, "total_count": 5, "total_pages": 3});
            Ok(env(json!([{"id": format!("{page}a")}, {"id": format!("{page}b")}]), Some(info)))
        })
        .expect("canned pages");
        assert_eq!(
            asked,
            [
                "/p?page=1&per_page=1000",
                "/p?page=2&per_page=1000",
                "/p?page=3&per_page=1000"
            ]
        );
        let ids: Vec<&str> = all.iter().map(|v| str_field(v, "id")).collect();
        assert_eq!(ids, ["1a", "1b", "2a", "2b", "3a", "3b"]);

        // No result_info: one page. An empty page ends the walk even if more are announced.
        let mut n = 0;
        let one = fetch_all_pages("/p", |_: &str| -> Result<Envelope, ()> {
            n += 1;
            Ok(env(json!([{"id": "x"}]), None))
        })
        .expect("one page");
        assert_eq!((n, one.len()), (1, 1));
        let mut n = 0;
        let none = fetch_all_pages("/p", |_: &str| -> Result<Envelope, ()> {
            n += 1;
            Ok(env(json!([]), Some(json!({"total_pages": 9}))))
        })
        .expect("empty page");
        assert_eq!((n, none.len()), (1, 0));
        // An error on a later page is returned.
        let err = fetch_all_pages("/p", |url: &str| {
            if url.contains("page=2&") {
                Err("boom")
            } else {
                Ok(env(json!([1]), Some(json!({"total_pages": 2}))))
            }
        });
        assert_eq!(err, Err("boom"));
    }

    #[test]
    fn envelope_success_and_errors() {
        let ok = parse_envelope(
            200,
            r#"{"success":true,"errors":[],"messages":[{"code":1,"message":"hi"}],
                "result":[{"id":"x"}],"result_info":{"page":1,"per_page":20,"count":1,"total_count":1,"total_pages":1}}"#,
        )
        .expect("success envelope");
        assert_eq!(ok.result, json!([{"id": "x"}]));
        assert_eq!(total_pages(ok.result_info.as_ref()), 1);
        assert_eq!(ok.messages, ["hi"]);

        let body = r#"{"success": false, "errors": [{"code": 1002, "message": "origins[0].weight: 2 is out of range; use 0..1"}, {"code": 1003, "message": "name: required"}], "messages": [], "result": null}"#;
        assert_eq!(
            error_lines(400, body),
            [
                "error 1002: origins[0].weight: 2 is out of range; use 0..1",
                "error 1003: name: required"
            ]
        );
        // success=false on a 2xx is an error too.
        assert_eq!(
            parse_envelope(200, body).expect_err("success=false"),
            error_lines(400, body)
        );
        assert_eq!(
            error_lines(
                403,
                r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#
            ),
            ["error 10000: Authentication error"]
        );
        assert_eq!(
            error_lines(502, "Bad Gateway\n"),
            ["error: HTTP 502: Bad Gateway"]
        );
        assert_eq!(error_lines(500, ""), ["error: HTTP 500"]);
        assert_eq!(
            parse_envelope(200, "<html>").expect_err("not json"),
            ["error: HTTP 200 with a body that is not JSON: <html>"]
        );
    }
}

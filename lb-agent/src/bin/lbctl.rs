//! `lbctl`: command-line client of the agent's HTTP API (`/client/v4` objects and the
//! `/lb-agent/v1/status` live view), for operators and scripts.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::Read as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use lb_agent::store::is_id;
use serde_json::{json, Value};

const DEFAULT_API: &str = "http://127.0.0.1:8405";
/// Page size asked for when listing; the API's maximum.
const PER_PAGE: u64 = 1000;
/// Stops a server that keeps announcing more pages from looping us forever.
const MAX_PAGES: u64 = 10_000;

const TOP_EXAMPLES: &str = "\
Examples:
  lbctl --token $T status
  lbctl --token $T pools list
  lbctl --token $T --json lbs list | jq '.[].name'
  lbctl --token $T monitors create --data '{\"type\":\"tcp\",\"port\":2048,\"interval\":5,\"timeout\":2,\"retries\":1}'
  lbctl --token $T origin disable web-pool origin-a
  LB_API_EMAIL=ops@example.com LB_API_KEY=$K lbctl pools health web-pool

Exit status: 0 on success; 1 when the API answered with an error (each `errors[]` entry is
printed to stderr as `error <code>: <message>`) or the input was unusable; 2 when the API
could not be reached or on a command-line usage error.";

const MONITOR_EXAMPLES: &str = "\
Examples:
  lbctl --token $T monitors list
  lbctl --token $T monitors create --data '{\"type\":\"tcp\",\"port\":2048,\"interval\":5,\"timeout\":2,\"retries\":1}'
  lbctl --token $T monitors create --data '{\"type\":\"http\",\"method\":\"GET\",\"path\":\"/health\",\"expected_codes\":\"2xx\"}'
  lbctl --token $T monitors patch 0123456789abcdef0123456789abcdef --data '{\"interval\":10}'
  lbctl --token $T monitors delete 0123456789abcdef0123456789abcdef";

const POOL_EXAMPLES: &str = "\
Examples:
  lbctl --token $T pools list
  lbctl --token $T pools create --file pool.json
  lbctl --token $T pools patch web-pool --data '{\"minimum_origins\":2}'
  lbctl --token $T pools get web-pool --json | jq .origins
  lbctl --token $T pools health web-pool
  cat pool.json | lbctl --token $T pools update web-pool --file -";

const LB_EXAMPLES: &str = "\
Examples:
  lbctl --token $T lbs list
  lbctl --token $T --zone example.com lbs create --data '{\"name\":\"www\",\"address\":\"10.0.0.10\",\"port\":80,\"default_pools\":[\"0123456789abcdef0123456789abcdef\"],\"fallback_pool\":\"0123456789abcdef0123456789abcdef\"}'
  lbctl --token $T lbs patch www --data '{\"session_affinity\":\"ip\",\"session_affinity_ttl\":300}'";

const ORIGIN_EXAMPLES: &str = "\
Examples:
  lbctl --token $T origin disable web-pool origin-a      # by origin name
  lbctl --token $T origin disable web-pool 10.0.1.2      # by address
  lbctl --token $T origin enable 0123456789abcdef0123456789abcdef 10.0.1.2:8080";

/// Client of the lb-agent HTTP API.
///
/// Talks plain HTTP to the agent's API (`lb-agent --api-listen`, by default 127.0.0.1:8405,
/// loopback only). The API carries credentials and changes the forwarding state, so it is not
/// meant to be exposed as is: for remote use put it behind a TLS-terminating proxy and reach
/// that from lbctl through a local tunnel (e.g. `ssh -L 8405:127.0.0.1:8405 lb-host`), since
/// lbctl itself does not speak TLS.
///
/// Authenticate with `--token` (sent as `Authorization: Bearer`) or with `--email` and `--key`
/// (sent as `X-Auth-Email` / `X-Auth-Key`). Identifiers given as ID may also be an object's
/// name; a name that matches several objects is refused.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about, long_about, after_long_help = TOP_EXAMPLES)]
struct Cli {
    /// Base URL of the agent's API.
    #[arg(long, global = true, env = "LB_API", default_value = DEFAULT_API)]
    api: String,
    /// API token, sent as `Authorization: Bearer <token>`; takes precedence over --email/--key.
    #[arg(long, global = true, env = "LB_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Account email, sent as `X-Auth-Email` (with --key).
    #[arg(long, global = true, env = "LB_API_EMAIL")]
    email: Option<String>,
    /// API key, sent as `X-Auth-Key` (with --email).
    #[arg(long, global = true, env = "LB_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print the raw `result` JSON (for lists: all pages joined into one array) instead of
    /// tables and summaries.
    #[arg(long, global = true)]
    json: bool,
    /// Account identifier used in monitor and pool paths
    /// (/client/v4/accounts/{account}/load_balancers/...); the agent is single tenant.
    #[arg(long, global = true, default_value = "-")]
    account: String,
    /// Zone identifier used in load balancer paths (/client/v4/zones/{zone}/load_balancers).
    #[arg(long, global = true, default_value = "-")]
    zone: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live view: each load balancer, the pools it may use (default pools, geo pools, fallback)
    /// with the active one marked `*`, and each pool's origins with health, RTT, open flows and
    /// packet, byte and new-flow rates.
    ///
    /// Reads GET /lb-agent/v1/status, plus the load balancer and pool lists to know which
    /// pools belong to which load balancer. With --json prints only the status result.
    #[command(after_long_help = "Example:\n  lbctl --token $T status")]
    Status,
    /// Health monitors (/client/v4/accounts/{account}/load_balancers/monitors).
    #[command(after_long_help = MONITOR_EXAMPLES)]
    Monitors {
        #[command(subcommand)]
        cmd: CrudCmd,
    },
    /// Origin pools (/client/v4/accounts/{account}/load_balancers/pools).
    #[command(after_long_help = POOL_EXAMPLES)]
    Pools {
        #[command(subcommand)]
        cmd: PoolsCmd,
    },
    /// Load balancers (/client/v4/zones/{zone}/load_balancers).
    #[command(after_long_help = LB_EXAMPLES)]
    Lbs {
        #[command(subcommand)]
        cmd: CrudCmd,
    },
    /// Enable or disable one origin of a pool (GET the pool, flip the origin's `enabled`,
    /// PATCH the pool's full `origins` list) and print what changed.
    #[command(after_long_help = ORIGIN_EXAMPLES)]
    Origin {
        #[command(subcommand)]
        cmd: OriginCmd,
    },
}

#[derive(Debug, Subcommand)]
enum CrudCmd {
    /// List all objects as a table (every page is fetched).
    List,
    /// Print one object as JSON.
    Get {
        /// Object id (32 hex characters) or name.
        id: String,
    },
    /// Create an object from a JSON body (POST).
    Create {
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Replace a whole object with a JSON body (PUT).
    Update {
        /// Object id (32 hex characters) or name.
        id: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Replace only the top-level fields given in a JSON body (PATCH).
    Patch {
        /// Object id (32 hex characters) or name.
        id: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Delete an object.
    Delete {
        /// Object id (32 hex characters) or name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PoolsCmd {
    #[command(flatten)]
    Crud(CrudCmd),
    /// Health of a pool's origins as seen by the agent (GET /pools/{id}/health).
    Health {
        /// Pool id (32 hex characters) or name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum OriginCmd {
    /// Stop sending new flows to an origin (sets its `enabled` to false).
    Disable {
        /// Pool id or name.
        pool: String,
        /// Origin name, address, or address:port.
        origin: String,
    },
    /// Send flows to an origin again (sets its `enabled` to true).
    Enable {
        /// Pool id or name.
        pool: String,
        /// Origin name, address, or address:port.
        origin: String,
    },
}

/// The JSON body of create/update/patch.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct BodyArgs {
    /// The JSON body inline, e.g. --data '{"type":"tcp","port":2048}'.
    #[arg(long)]
    data: Option<String>,
    /// Read the JSON body from a file (`-` = standard input).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl BodyArgs {
    fn read(&self) -> anyhow::Result<Value> {
        let (text, from) = match (&self.data, &self.file) {
            (Some(d), _) => (d.clone(), "--data".to_owned()),
            (None, Some(p)) if p.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the JSON body from standard input")?;
                (s, "standard input".to_owned())
            }
            (None, Some(p)) => (
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the JSON body from {}", p.display()))?,
                p.display().to_string(),
            ),
            (None, None) => bail!("give the JSON body with --data '<json>' or --file PATH"),
        };
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("the body from {from} is not valid JSON"))?;
        if !v.is_object() {
            bail!("the body from {from} must be a JSON object");
        }
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// How lbctl failed, mapped to its exit status in `main`.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    /// The API answered with a non-2xx status or `success: false`. `lines` are ready to print.
    #[error("{}", lines.join("\n"))]
    Api { lines: Vec<String> },
    /// No HTTP exchange happened (connection refused, DNS, timeout, bad URL).
    #[error("{0}")]
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Auth {
    None,
    Bearer(String),
    Key { email: String, key: String },
}

impl Auth {
    fn from_cli(cli: &Cli) -> anyhow::Result<Self> {
        let nonempty = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        Ok(
            match (
                nonempty(&cli.token),
                nonempty(&cli.email),
                nonempty(&cli.key),
            ) {
                (Some(t), _, _) => Auth::Bearer(t),
                (None, Some(email), Some(key)) => Auth::Key { email, key },
                (None, Some(_), None) => bail!("--email needs --key (or LB_API_KEY)"),
                (None, None, Some(_)) => bail!("--key needs --email (or LB_API_EMAIL)"),
                (None, None, None) => Auth::None,
            },
        )
    }
}

/// A successful answer: the envelope's `result` and, on lists, `result_info`.
#[derive(Debug, Clone, PartialEq)]
struct Envelope {
    result: Value,
    result_info: Option<Value>,
    messages: Vec<String>,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Auth,
}

impl Client {
    fn new(base: &str, auth: Auth) -> Self {
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

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Envelope, CtlError> {
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

    fn get(&self, path: &str) -> Result<Envelope, CtlError> {
        self.call("GET", path, None)
    }

    /// GETs every page of a list and joins the results.
    fn list_all(&self, path: &str) -> Result<Vec<Value>, CtlError> {
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

// ---------------------------------------------------------------------------------------------
// Paths and pagination (pure)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Monitor,
    Pool,
    Lb,
}

impl Kind {
    fn noun(self) -> &'static str {
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
fn collection_path(kind: Kind, account: &str, zone: &str) -> String {
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

fn object_path(collection: &str, id: &str) -> String {
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

/// Finds one object by id or name in a list. Errors name the candidates.
fn find_object<'a>(items: &'a [Value], key: &str, noun: &str) -> Result<&'a Value, String> {
    if let Some(o) = items.iter().find(|o| str_field(o, "id") == key) {
        return Ok(o);
    }
    let named: Vec<&Value> = items
        .iter()
        .filter(|o| str_field(o, "name") == key)
        .collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no {noun} has the id or name {key:?}")),
        many => Err(format!(
            "{} {noun}s are named {key:?} ({}); give the id",
            many.len(),
            many.iter()
                .map(|o| str_field(o, "id"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Origin enable/disable (pure)

/// What `set_origin_enabled` did.
#[derive(Debug, PartialEq, Eq)]
enum OriginChange {
    /// The origin at `index` (name, address) now has `enabled` = the wanted value.
    Changed { index: usize, label: String },
    /// Already in the wanted state; nothing to send.
    Unchanged { label: String },
}

/// Finds the origin named `key` (by name, then address, then `address:port`) in a pool's
/// `origins` and sets its `enabled`. Returns the new full origins list.
fn set_origin_enabled(
    origins: &[Value],
    key: &str,
    enabled: bool,
) -> Result<(Vec<Value>, OriginChange), String> {
    let by = |pred: &dyn Fn(&Value) -> bool| -> Vec<usize> {
        origins
            .iter()
            .enumerate()
            .filter(|(_, o)| pred(o))
            .map(|(i, _)| i)
            .collect()
    };
    let mut hits = by(&|o| str_field(o, "name") == key);
    if hits.is_empty() {
        hits = by(&|o| str_field(o, "address") == key);
    }
    if hits.is_empty() {
        hits = by(&|o| origin_addr(o) == key);
    }
    let index = match hits.as_slice() {
        [i] => *i,
        [] => {
            return Err(format!(
                "no origin named {key:?} or at that address; the pool has: {}",
                origins
                    .iter()
                    .map(origin_label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        many => {
            return Err(format!(
                "{key:?} matches {} origins ({}); use the name or address:port",
                many.len(),
                many.iter()
                    .map(|&i| origin_label(&origins[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let label = origin_label(&origins[index]);
    // An origin without `enabled` is enabled (the Cloudflare default).
    let current = origins[index]
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if current == enabled {
        return Ok((origins.to_vec(), OriginChange::Unchanged { label }));
    }
    let mut new = origins.to_vec();
    if let Some(o) = new[index].as_object_mut() {
        o.insert("enabled".to_owned(), Value::Bool(enabled));
    }
    Ok((new, OriginChange::Changed { index, label }))
}

fn origin_addr(o: &Value) -> String {
    let addr = str_field(o, "address");
    match o.get("port").and_then(Value::as_u64) {
        Some(p) if p != 0 => join_host_port(addr, p),
        _ => addr.to_owned(),
    }
}

fn join_host_port(addr: &str, port: u64) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn origin_label(o: &Value) -> String {
    let name = str_field(o, "name");
    let addr = origin_addr(o);
    if name.is_empty() || name == addr {
        addr
    } else {
        format!("{name} ({addr})")
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting (pure)

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn f64_field(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A scalar for a table cell: strings as is, numbers and bools printed, absent as "-".
fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Scales with k/M/G/T: 0 -> "0", 0.5 -> "0.5", 999 -> "999", 1234 -> "1.2k",
/// 45678 -> "46k", 3.4e6 -> "3.4M". Negative or non-finite values (a counter reset) print "0".
fn fmt_si(v: f64) -> String {
    const UNITS: [(&str, f64); 5] = [("", 1.0), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)];
    if !v.is_finite() || v <= 0.0 {
        return "0".to_owned();
    }
    let mut i = UNITS.iter().rposition(|&(_, u)| v >= u).unwrap_or(0);
    loop {
        let (suffix, unit) = UNITS[i];
        let scaled = v / unit;
        let s = if scaled < 9.95 {
            let s = format!("{scaled:.1}");
            s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
        } else {
            format!("{scaled:.0}")
        };
        // 999_999 rounds to "1000k": show it as "1M" instead.
        if s == "1000" && i + 1 < UNITS.len() {
            i += 1;
            continue;
        }
        return format!("{s}{suffix}");
    }
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
fn fmt_count(v: u64) -> String {
    fmt_si(v as f64)
}

/// RTT in milliseconds: "0.42 ms", "3.1 ms", "120 ms"; "-" when unknown.
fn fmt_rtt(ms: Option<f64>) -> String {
    match ms {
        Some(m) if m.is_finite() && m >= 0.0 => {
            if m < 1.0 {
                format!("{m:.2} ms")
            } else if m < 9.95 {
                format!("{m:.1} ms")
            } else {
                format!("{m:.0} ms")
            }
        }
        _ => "-".to_owned(),
    }
}

/// A duration in seconds as "42s", "5m", "3h", "2d".
fn fmt_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Aligns columns with two spaces between them; the last column is not padded.
fn render_table(headers: &[&str], rows: &[Vec<String>], indent: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = " ".repeat(indent);
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn name_or_dash(v: &Value) -> String {
    cell(v, "name")
}

fn monitor_target(m: &Value) -> String {
    let ty = str_field(m, "type");
    let port = m
        .get("port")
        .and_then(Value::as_u64)
        .filter(|&p| p != 0)
        .map(|p| format!(":{p}"));
    if ty == "tcp" {
        port.unwrap_or_else(|| "origin port".to_owned())
    } else {
        let method = match str_field(m, "method") {
            "" => "GET",
            x => x,
        };
        let path = match str_field(m, "path") {
            "" => "/",
            x => x,
        };
        format!(
            "{method} {path}{}",
            port.map(|p| format!(" {p}")).unwrap_or_default()
        )
    }
}

fn render_monitors(items: &[Value]) -> String {
    if items.is_empty() {
        return "no monitors\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            vec![
                cell(m, "id"),
                name_or_dash(m),
                cell(m, "type"),
                monitor_target(m),
                cell(m, "interval"),
                cell(m, "timeout"),
                cell(m, "retries"),
                if str_field(m, "type") == "tcp" {
                    "-".to_owned()
                } else {
                    cell(m, "expected_codes")
                },
                str_field(m, "description").to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "TYPE",
            "TARGET",
            "INTERVAL",
            "TIMEOUT",
            "RETRIES",
            "EXPECT",
            "DESCRIPTION",
        ],
        &rows,
        0,
    )
}

fn render_pools(items: &[Value], monitor_names: &HashMap<String, String>) -> String {
    if items.is_empty() {
        return "no pools\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            let origins = p.get("origins").and_then(Value::as_array);
            let total = origins.map_or(0, Vec::len);
            let enabled = origins.map_or(0, |o| {
                o.iter()
                    .filter(|o| o.get("enabled").and_then(Value::as_bool).unwrap_or(true))
                    .count()
            });
            let monitor = match str_field(p, "monitor") {
                "" => "-".to_owned(),
                id => monitor_names
                    .get(id)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| id.to_owned()),
            };
            let steering = p
                .get("origin_steering")
                .map(|s| cell(s, "policy"))
                .unwrap_or_else(|| "-".to_owned());
            vec![
                cell(p, "id"),
                name_or_dash(p),
                yes_no(p.get("enabled").and_then(Value::as_bool).unwrap_or(true)),
                format!("{enabled}/{total}"),
                cell(p, "minimum_origins"),
                monitor,
                steering,
                str_field(p, "description").to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "ENABLED",
            "ORIGINS",
            "MIN",
            "MONITOR",
            "STEERING",
            "DESCRIPTION",
        ],
        &rows,
        0,
    )
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn pool_ref(id: &str, pool_names: &HashMap<String, String>) -> String {
    pool_names
        .get(id)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_owned())
}

fn render_lbs(items: &[Value], pool_names: &HashMap<String, String>) -> String {
    if items.is_empty() {
        return "no load balancers\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|lb| {
            let vip = match (
                str_field(lb, "address"),
                lb.get("port").and_then(Value::as_u64),
            ) {
                ("", _) => "-".to_owned(),
                (a, Some(p)) => join_host_port(a, p),
                (a, None) => a.to_owned(),
            };
            let defaults = lb
                .get("default_pools")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|id| pool_ref(id, pool_names))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".to_owned());
            let fallback = match str_field(lb, "fallback_pool") {
                "" => "-".to_owned(),
                id => pool_ref(id, pool_names),
            };
            let affinity = match str_field(lb, "session_affinity") {
                "" | "none" => "none".to_owned(),
                a => match lb.get("session_affinity_ttl").and_then(Value::as_u64) {
                    Some(ttl) => format!("{a} {ttl}s"),
                    None => a.to_owned(),
                },
            };
            vec![
                cell(lb, "id"),
                name_or_dash(lb),
                vip,
                yes_no(lb.get("enabled").and_then(Value::as_bool).unwrap_or(true)),
                cell(lb, "steering_policy"),
                defaults,
                fallback,
                affinity,
                str_field(lb, "description").to_owned(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "VIP",
            "ENABLED",
            "STEERING",
            "DEFAULT POOLS",
            "FALLBACK",
            "AFFINITY",
            "DESCRIPTION",
        ],
        &rows,
        0,
    )
}

fn id_name_map(items: &[Value]) -> HashMap<String, String> {
    items
        .iter()
        .map(|o| {
            (
                str_field(o, "id").to_owned(),
                str_field(o, "name").to_owned(),
            )
        })
        .collect()
}

/// The pools a load balancer may use, in order, with why: default pools, then pools only
/// named by region/country/PoP steering ("geo"), then the fallback pool.
fn lb_pool_roles(lb_config: &Value) -> Vec<(String, Vec<&'static str>)> {
    fn add(out: &mut Vec<(String, Vec<&'static str>)>, id: &str, role: &'static str) {
        if id.is_empty() {
            return;
        }
        match out.iter_mut().find(|(p, _)| p == id) {
            Some((_, roles)) if !roles.contains(&role) => roles.push(role),
            Some(_) => {}
            None => out.push((id.to_owned(), vec![role])),
        }
    }
    let mut out = Vec::new();
    for id in lb_config
        .get("default_pools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        add(&mut out, id, "default");
    }
    for key in ["region_pools", "country_pools", "pop_pools"] {
        // BTreeMap for a stable order whatever the server's key order.
        let map: BTreeMap<&String, &Value> = lb_config
            .get(key)
            .and_then(Value::as_object)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        for ids in map.values() {
            for id in ids
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !out.iter().any(|(p, _)| p == id) {
                    add(&mut out, id, "geo");
                }
            }
        }
    }
    add(&mut out, str_field(lb_config, "fallback_pool"), "fallback");
    out
}

const ORIGIN_HEADERS: [&str; 11] = [
    "ORIGIN", "ADDRESS", "STATE", "FOR", "RTT", "FLOWS", "PKT/S", "BYTES/S", "NEW/S", "WEIGHT",
    "REASON",
];

fn origin_row(o: &Value, updated: u64) -> Vec<String> {
    let mut state = match str_field(o, "state") {
        "" => "?".to_owned(),
        s => s.to_owned(),
    };
    if o.get("enabled").and_then(Value::as_bool) == Some(false) {
        state.push_str(",disabled");
    }
    let since = o
        .get("since")
        .and_then(Value::as_u64)
        .filter(|&s| s != 0)
        .map_or_else(|| "-".to_owned(), |s| fmt_age(updated.saturating_sub(s)));
    let addr = match o.get("port").and_then(Value::as_u64) {
        Some(p) if p != 0 => join_host_port(str_field(o, "address"), p),
        _ => cell(o, "address"),
    };
    vec![
        cell(o, "origin"),
        addr,
        state,
        since,
        fmt_rtt(f64_field(o, "rtt_ms")),
        o.get("open_flows")
            .and_then(Value::as_i64)
            .map_or_else(|| "-".to_owned(), |n| n.max(0).to_string()),
        fmt_si(f64_field(o, "packets_per_sec").unwrap_or(0.0)),
        fmt_si(f64_field(o, "bytes_per_sec").unwrap_or(0.0)),
        fmt_si(f64_field(o, "new_flows_per_sec").unwrap_or(0.0)),
        f64_field(o, "weight").map_or_else(|| "-".to_owned(), fmt_weight),
        str_field(o, "reason").to_owned(),
    ]
}

fn pool_line(pool: &Value, roles: &[&str], active: bool) -> String {
    let mut tags: Vec<&str> = roles.to_vec();
    if active {
        tags.push("active");
    }
    let health = match pool.get("healthy").and_then(Value::as_bool) {
        Some(true) => "healthy",
        Some(false) => "UNHEALTHY",
        None => "health unknown",
    };
    let mut s = format!(
        "{} pool {}",
        if active { "*" } else { " " },
        match str_field(pool, "name") {
            "" => str_field(pool, "id"),
            n => n,
        }
    );
    if !tags.is_empty() {
        let _ = write!(s, " [{}]", tags.join(", "));
    }
    let _ = write!(
        s,
        "  {health}  {}/{} origins healthy (min {})  rtt {}",
        cell(pool, "healthy_origins"),
        cell(pool, "enabled_origins"),
        cell(pool, "minimum_origins"),
        fmt_rtt(f64_field(pool, "rtt_ms"))
    );
    s
}

/// The `status` tree: each load balancer with its traffic, under it each pool it may use
/// (active marked `*`), under each pool its origins as an aligned table.
///
/// `lbs` and `pools` are the configured objects (`/client/v4` lists): the load balancers say
/// which pools belong to which load balancer, the pools name those missing from the live view.
/// `now` (unix seconds) dates the snapshot.
fn render_status(status: &Value, lbs: &[Value], pools: &[Value], now: u64) -> String {
    let empty = Vec::new();
    let arr = |k: &str| status.get(k).and_then(Value::as_array).unwrap_or(&empty);
    let (st_lbs, st_pools, st_origins) = (arr("load_balancers"), arr("pools"), arr("origins"));
    let updated = status.get("updated").and_then(Value::as_u64).unwrap_or(now);

    let mut out = String::new();
    let _ = write!(
        out,
        "agent status, {} old",
        fmt_age(now.saturating_sub(updated))
    );
    if let Some(pop) = status.get("pop").and_then(Value::as_str) {
        let _ = write!(out, ", PoP {pop}");
    }
    out.push('\n');
    if st_lbs.is_empty() {
        out.push_str("no load balancers\n");
    }

    let live_pool = |id: &str| st_pools.iter().find(|p| str_field(p, "id") == id);
    let origins_of = |pool: &Value| -> Vec<&Value> {
        let (id, name) = (str_field(pool, "id"), str_field(pool, "name"));
        st_origins
            .iter()
            .filter(|o| match str_field(o, "pool_id") {
                "" => str_field(o, "pool") == name,
                pid => pid == id,
            })
            .collect()
    };
    let mut shown: Vec<String> = Vec::new();
    let mut any_active = false;

    for lb in st_lbs {
        let lb_id = str_field(lb, "id");
        let _ = write!(
            out,
            "\nload balancer {}  vip {}  steering {}",
            match str_field(lb, "name") {
                "" => lb_id,
                n => n,
            },
            cell(lb, "vip"),
            cell(lb, "steering_policy"),
        );
        if lb.get("enabled").and_then(Value::as_bool) == Some(false) {
            out.push_str("  DISABLED");
        }
        if lb.get("fallback").and_then(Value::as_bool) == Some(true) {
            out.push_str("  FALLBACK: no default pool is healthy");
        }
        // The live view names the active pool by id and by name; older agents by name only.
        let active_id = match str_field(lb, "active_pool_id") {
            "" => st_pools
                .iter()
                .find(|p| {
                    let n = str_field(lb, "active_pool");
                    !n.is_empty() && str_field(p, "name") == n
                })
                .map_or("", |p| str_field(p, "id")),
            id => id,
        };
        if active_id.is_empty() {
            out.push_str("  NO ACTIVE POOL");
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "  {} pkt/s  {} B/s  {} new flows/s  (totals: {} packets, {} bytes, {} flows)",
            fmt_si(f64_field(lb, "packets_per_sec").unwrap_or(0.0)),
            fmt_si(f64_field(lb, "bytes_per_sec").unwrap_or(0.0)),
            fmt_si(f64_field(lb, "new_flows_per_sec").unwrap_or(0.0)),
            fmt_count(lb.get("packets").and_then(Value::as_u64).unwrap_or(0)),
            fmt_count(lb.get("bytes").and_then(Value::as_u64).unwrap_or(0)),
            fmt_count(lb.get("new_flows").and_then(Value::as_u64).unwrap_or(0)),
        );

        let mut members = lbs
            .iter()
            .find(|c| str_field(c, "id") == lb_id)
            .map(lb_pool_roles)
            .unwrap_or_default();
        // The configured list may lag the live view: never hide the active pool.
        if !active_id.is_empty() && !members.iter().any(|(p, _)| p == active_id) {
            members.push((active_id.to_owned(), Vec::new()));
        }
        let groups: Vec<(String, Vec<&Value>)> = members
            .iter()
            .map(|(id, roles)| {
                let active = id == active_id;
                any_active |= active;
                shown.push(id.clone());
                match live_pool(id) {
                    Some(p) => (pool_line(p, roles, active), origins_of(p)),
                    None => {
                        let name = pools
                            .iter()
                            .find(|p| str_field(p, "id") == id)
                            .map(|p| str_field(p, "name"))
                            .filter(|n| !n.is_empty())
                            .unwrap_or(id);
                        let mut tags = roles.clone();
                        if active {
                            tags.push("active");
                        }
                        let line = format!(
                            "{} pool {name} [{}]  not in the agent's live view",
                            if active { "*" } else { " " },
                            tags.join(", ")
                        );
                        (line, Vec::new())
                    }
                }
            })
            .collect();
        render_pool_groups(&mut out, &groups, updated);
    }

    let others: Vec<&Value> = st_pools
        .iter()
        .filter(|p| !shown.iter().any(|s| s == str_field(p, "id")))
        .collect();
    if !others.is_empty() {
        out.push_str("\npools used by no load balancer\n");
        let groups: Vec<(String, Vec<&Value>)> = others
            .iter()
            .map(|p| (pool_line(p, &[], false), origins_of(p)))
            .collect();
        render_pool_groups(&mut out, &groups, updated);
    }
    if any_active {
        out.push_str("\n(* = active pool)\n");
    }
    out
}

/// Writes each pool line at indent 2 and its origins below at indent 6, with the origin
/// columns aligned across all the pools of the group.
fn render_pool_groups(out: &mut String, groups: &[(String, Vec<&Value>)], updated: u64) {
    let rows: Vec<Vec<Vec<String>>> = groups
        .iter()
        .map(|(_, origins)| origins.iter().map(|o| origin_row(o, updated)).collect())
        .collect();
    // One table for the whole group, split back per pool.
    let all: Vec<Vec<String>> = rows.iter().flatten().cloned().collect();
    let table = render_table(&ORIGIN_HEADERS, &all, 6);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    for ((line, _), pool_rows) in groups.iter().zip(&rows) {
        let _ = writeln!(out, "  {line}");
        if pool_rows.is_empty() {
            out.push_str("      (no origins)\n");
            continue;
        }
        let _ = writeln!(out, "{header}");
        for _ in pool_rows {
            let _ = writeln!(out, "{}", lines.next().unwrap_or(""));
        }
    }
}

/// `pools health`: per PoP (the Cloudflare shape `pop_health`), each origin's health.
/// Anything else is printed as JSON.
fn render_pool_health(h: &Value) -> String {
    let Some(pops) = h.get("pop_health").and_then(Value::as_object) else {
        return serde_json::to_string_pretty(h).unwrap_or_default() + "\n";
    };
    let mut out = String::new();
    let _ = writeln!(out, "pool {}", cell(h, "pool_id"));
    for (pop, ph) in pops {
        let healthy = match ph.get("healthy").and_then(Value::as_bool) {
            Some(true) => "healthy",
            Some(false) => "UNHEALTHY",
            None => "health unknown",
        };
        let _ = writeln!(out, "  {pop}: {healthy}");
        let mut rows = Vec::new();
        for entry in ph
            .get("origins")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Each entry is {"<address>": {healthy, rtt, failure_reason, response_code}}.
            for (addr, o) in entry.as_object().into_iter().flatten() {
                let rtt = match o.get("rtt") {
                    Some(Value::Number(n)) => fmt_rtt(n.as_f64()),
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => "-".to_owned(),
                };
                rows.push(vec![
                    addr.clone(),
                    match o.get("healthy").and_then(Value::as_bool) {
                        Some(b) => yes_no(b),
                        None => "-".to_owned(),
                    },
                    rtt,
                    cell(o, "response_code"),
                    str_field(o, "failure_reason").to_owned(),
                ]);
            }
        }
        if rows.is_empty() {
            out.push_str("    (no origins)\n");
        } else {
            out.push_str(&render_table(
                &["ORIGIN", "HEALTHY", "RTT", "CODE", "REASON"],
                &rows,
                4,
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Commands

struct Ctx {
    client: Client,
    json: bool,
    account: String,
    zone: String,
}

impl Ctx {
    fn collection(&self, kind: Kind) -> String {
        collection_path(kind, &self.account, &self.zone)
    }

    /// An id as is; anything else is looked up by name in the list.
    fn resolve(&self, kind: Kind, key: &str) -> anyhow::Result<String> {
        if is_id(key) {
            return Ok(key.to_owned());
        }
        let items = self.client.list_all(&self.collection(kind))?;
        let found = find_object(&items, key, kind.noun()).map_err(anyhow::Error::msg)?;
        Ok(str_field(found, "id").to_owned())
    }

    fn print_json(&self, v: &Value) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    fn note_messages(env: &Envelope) {
        for m in &env.messages {
            eprintln!("note: {m}");
        }
    }

    fn crud(&self, kind: Kind, cmd: &CrudCmd) -> anyhow::Result<()> {
        let coll = self.collection(kind);
        let noun = kind.noun();
        let (method, path, body, verb) = match cmd {
            CrudCmd::List => return self.list(kind),
            CrudCmd::Get { id } => {
                let env = self
                    .client
                    .get(&object_path(&coll, &self.resolve(kind, id)?))?;
                Self::note_messages(&env);
                return self.print_json(&env.result);
            }
            CrudCmd::Create { body } => ("POST", coll.clone(), Some(body.read()?), "created"),
            CrudCmd::Update { id, body } => (
                "PUT",
                object_path(&coll, &self.resolve(kind, id)?),
                Some(body.read()?),
                "replaced",
            ),
            CrudCmd::Patch { id, body } => (
                "PATCH",
                object_path(&coll, &self.resolve(kind, id)?),
                Some(body.read()?),
                "updated",
            ),
            CrudCmd::Delete { id } => (
                "DELETE",
                object_path(&coll, &self.resolve(kind, id)?),
                None,
                "deleted",
            ),
        };
        let env = self.client.call(method, &path, body.as_ref())?;
        Self::note_messages(&env);
        if self.json {
            return self.print_json(&env.result);
        }
        let id = str_field(&env.result, "id");
        match str_field(&env.result, "name") {
            "" => println!("{verb} {noun} {id}"),
            name => println!("{verb} {noun} {id} ({name})"),
        }
        Ok(())
    }

    fn list(&self, kind: Kind) -> anyhow::Result<()> {
        let items = self.client.list_all(&self.collection(kind))?;
        if self.json {
            return self.print_json(&Value::Array(items));
        }
        let text = match kind {
            Kind::Monitor => render_monitors(&items),
            Kind::Pool => {
                let monitors = self.client.list_all(&self.collection(Kind::Monitor))?;
                render_pools(&items, &id_name_map(&monitors))
            }
            Kind::Lb => {
                let pools = self.client.list_all(&self.collection(Kind::Pool))?;
                render_lbs(&items, &id_name_map(&pools))
            }
        };
        print!("{text}");
        Ok(())
    }

    fn pool_health(&self, key: &str) -> anyhow::Result<()> {
        let id = self.resolve(Kind::Pool, key)?;
        let path = format!("{}/health", object_path(&self.collection(Kind::Pool), &id));
        let env = self.client.get(&path)?;
        Self::note_messages(&env);
        if self.json {
            return self.print_json(&env.result);
        }
        print!("{}", render_pool_health(&env.result));
        Ok(())
    }

    fn origin(&self, pool_key: &str, origin_key: &str, enabled: bool) -> anyhow::Result<()> {
        let id = self.resolve(Kind::Pool, pool_key)?;
        let path = object_path(&self.collection(Kind::Pool), &id);
        let pool = self.client.get(&path)?.result;
        let pool_name = match str_field(&pool, "name") {
            "" => id.clone(),
            n => n.to_owned(),
        };
        let origins = pool
            .get("origins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (new, change) = set_origin_enabled(&origins, origin_key, enabled)
            .map_err(|e| anyhow::anyhow!("pool {pool_name}: {e}"))?;
        let word = if enabled { "enabled" } else { "disabled" };
        match change {
            OriginChange::Unchanged { label } => {
                if self.json {
                    self.print_json(&pool)?;
                } else {
                    println!("pool {pool_name}: origin {label} is already {word}; nothing changed");
                }
            }
            OriginChange::Changed { index, label } => {
                let env = self
                    .client
                    .call("PATCH", &path, Some(&json!({ "origins": new })))?;
                Self::note_messages(&env);
                if self.json {
                    self.print_json(&env.result)?;
                } else {
                    let confirmed = env
                        .result
                        .get("origins")
                        .and_then(|o| o.get(index))
                        .and_then(|o| o.get("enabled"))
                        .and_then(Value::as_bool);
                    println!(
                        "pool {pool_name}: origin {label} enabled: {} -> {}{}",
                        !enabled,
                        enabled,
                        if confirmed == Some(enabled) {
                            ""
                        } else {
                            " (the answer did not echo it; check `lbctl pools get`)"
                        }
                    );
                }
            }
        }
        Ok(())
    }

    fn status(&self) -> anyhow::Result<()> {
        let env = self.client.get("/lb-agent/v1/status")?;
        Self::note_messages(&env);
        if self.json {
            return self.print_json(&env.result);
        }
        let lbs = self.client.list_all(&self.collection(Kind::Lb))?;
        let pools = self.client.list_all(&self.collection(Kind::Pool))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", render_status(&env.result, &lbs, &pools, now));
        Ok(())
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        // An empty LB_API counts as unset.
        client: Client::new(
            if cli.api.is_empty() {
                DEFAULT_API
            } else {
                &cli.api
            },
            Auth::from_cli(cli)?,
        ),
        json: cli.json,
        account: cli.account.clone(),
        zone: cli.zone.clone(),
    };
    match &cli.command {
        Command::Status => ctx.status(),
        Command::Monitors { cmd } => ctx.crud(Kind::Monitor, cmd),
        Command::Pools {
            cmd: PoolsCmd::Crud(cmd),
        } => ctx.crud(Kind::Pool, cmd),
        Command::Pools {
            cmd: PoolsCmd::Health { id },
        } => ctx.pool_health(id),
        Command::Lbs { cmd } => ctx.crud(Kind::Lb, cmd),
        Command::Origin {
            cmd: OriginCmd::Disable { pool, origin },
        } => ctx.origin(pool, origin, false),
        Command::Origin {
            cmd: OriginCmd::Enable { pool, origin },
        } => ctx.origin(pool, origin, true),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<CtlError>() {
            Some(CtlError::Api { lines }) => {
                for l in lines {
                    eprintln!("{l}");
                }
                ExitCode::from(1)
            }
            Some(CtlError::Unreachable(msg)) => {
                eprintln!("{msg}");
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// A weight with at most 3 decimals and no trailing zeros: `1`, `0.5`, `0.333`.
fn fmt_weight(w: f64) -> String {
    let s = format!("{w:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    const WEB_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const WEB_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const SORRY: &str = "cccccccccccccccccccccccccccccccc";
    const SPARE: &str = "dddddddddddddddddddddddddddddddd";
    const LB1: &str = "11111111111111111111111111111111";
    const LB2: &str = "22222222222222222222222222222222";

    /// Configured load balancers as `GET /client/v4/zones/-/load_balancers` returns them.
    fn lbs_config() -> Vec<Value> {
        serde_json::from_value(json!([
            {"id": LB1, "name": "www", "address": "10.0.0.10", "port": 80, "enabled": true,
             "default_pools": [WEB_A, WEB_B], "fallback_pool": SORRY, "steering_policy": "off",
             "session_affinity": "ip", "session_affinity_ttl": 300},
            {"id": LB2, "name": "api", "address": "10.0.0.11", "port": 443, "enabled": true,
             "default_pools": [WEB_B], "fallback_pool": SORRY, "steering_policy": "geo",
             "region_pools": {"WNAM": [WEB_A]}, "session_affinity": "none"}
        ]))
        .expect("canned lbs")
    }

    fn pools_config() -> Vec<Value> {
        serde_json::from_value(json!([
            {"id": WEB_A, "name": "web-a", "enabled": true, "minimum_origins": 1,
             "monitor": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "origin_steering": {"policy": "hash"},
             "origins": [
                {"name": "a1", "address": "10.0.1.1", "weight": 1, "enabled": true},
                {"name": "a2", "address": "10.0.1.2", "port": 8080, "weight": 0.5, "enabled": false}]},
            {"id": WEB_B, "name": "web-b", "enabled": true, "minimum_origins": 1, "monitor": null,
             "origins": [{"name": "b1", "address": "10.0.2.1", "weight": 1, "enabled": true}]},
            {"id": SORRY, "name": "sorry", "enabled": true, "minimum_origins": 1,
             "origins": [{"name": "s1", "address": "10.0.9.1", "weight": 1, "enabled": true}]}
        ]))
        .expect("canned pools")
    }

    /// `GET /lb-agent/v1/status` result per API.md: www on its first default pool, api on
    /// its fallback because web-b is down, and a pool no load balancer uses.
    fn status() -> Value {
        json!({
            "updated": 1_000_000, "pop": "AMS",
            "load_balancers": [
                {"id": LB1, "name": "www", "vip": "10.0.0.10:80", "steering_policy": "off",
                 "active_pool": "web-a", "active_pool_id": WEB_A, "fallback": false, "enabled": true,
                 "packets": 1_234_567, "bytes": 3_400_000_000_u64, "new_flows": 45_000,
                 "packets_per_sec": 1234.0, "bytes_per_sec": 3_400_000.0, "new_flows_per_sec": 12.0},
                {"id": LB2, "name": "api", "vip": "10.0.0.11:443", "steering_policy": "geo",
                 "active_pool": "sorry", "active_pool_id": SORRY, "fallback": true, "enabled": true,
                 "packets": 0, "bytes": 0, "new_flows": 0,
                 "packets_per_sec": 0.0, "bytes_per_sec": 0.0, "new_flows_per_sec": 0.0}
            ],
            "pools": [
                {"id": WEB_A, "name": "web-a", "healthy": true, "healthy_origins": 1,
                 "enabled_origins": 1, "minimum_origins": 1, "rtt_ms": 0.8},
                {"id": WEB_B, "name": "web-b", "healthy": false, "healthy_origins": 0,
                 "enabled_origins": 1, "minimum_origins": 1, "rtt_ms": null},
                {"id": SORRY, "name": "sorry", "healthy": true, "healthy_origins": 1,
                 "enabled_origins": 1, "minimum_origins": 1, "rtt_ms": 12.4},
                {"id": SPARE, "name": "spare", "healthy": true, "healthy_origins": 0,
                 "enabled_origins": 0, "minimum_origins": 0, "rtt_ms": null}
            ],
            "origins": [
                {"pool": "web-a", "pool_id": WEB_A, "origin": "a1", "address": "10.0.1.1", "port": 80,
                 "state": "up", "enabled": true, "weight": 1.0, "reason": "connect ok", "rtt_ms": 0.42,
                 "since": 999_700, "open_flows": 37, "packets": 10, "bytes": 10, "new_flows": 1,
                 "packets_per_sec": 1234.0, "bytes_per_sec": 3_400_000.0, "new_flows_per_sec": 12.0},
                {"pool": "web-a", "pool_id": WEB_A, "origin": "a2", "address": "10.0.1.2", "port": 8080,
                 "state": "unknown", "enabled": false, "weight": 0.5, "reason": "", "rtt_ms": null,
                 "since": null, "open_flows": 0, "packets": 0, "bytes": 0, "new_flows": 0,
                 "packets_per_sec": 0.0, "bytes_per_sec": 0.0, "new_flows_per_sec": 0.0},
                {"pool": "web-b", "pool_id": WEB_B, "origin": "b1", "address": "10.0.2.1", "port": 443,
                 "state": "down", "enabled": true, "weight": 1.0, "reason": "connection refused",
                 "rtt_ms": null, "since": 999_990, "open_flows": 0, "packets": 0, "bytes": 0,
                 "new_flows": 0, "packets_per_sec": 0.0, "bytes_per_sec": 0.0, "new_flows_per_sec": 0.0},
                {"pool": "sorry", "pool_id": SORRY, "origin": "s1", "address": "10.0.9.1", "port": 80,
                 "state": "up", "enabled": true, "weight": 1.0, "reason": "connect ok", "rtt_ms": 12.4,
                 "since": 900_000, "open_flows": 2, "packets": 0, "bytes": 0, "new_flows": 0,
                 "packets_per_sec": 0.4, "bytes_per_sec": 150.0, "new_flows_per_sec": 0.1}
            ]
        })
    }

    fn env(result: Value, info: Option<Value>) -> Envelope {
        Envelope {
            result,
            result_info: info,
            messages: Vec::new(),
        }
    }

    #[test]
    fn si_rates_use_k_m_g_and_drop_trailing_zero() {
        let cases = [
            (0.0, "0"),
            (0.5, "0.5"),
            (3.0, "3"),
            (12.4, "12"),
            (999.0, "999"),
            (999.6, "1k"),
            (1234.0, "1.2k"),
            (45_678.0, "46k"),
            (999_999.0, "1M"),
            (3_400_000.0, "3.4M"),
            (2.5e9, "2.5G"),
            (-3.0, "0"),
            (f64::NAN, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(fmt_si(v), want, "fmt_si({v})");
        }
        assert_eq!(fmt_count(3_400_000_000), "3.4G");
    }

    #[test]
    fn rtt_in_milliseconds_and_ages() {
        assert_eq!(fmt_rtt(None), "-");
        assert_eq!(fmt_rtt(Some(0.42)), "0.42 ms");
        assert_eq!(fmt_rtt(Some(3.06)), "3.1 ms");
        assert_eq!(fmt_rtt(Some(120.4)), "120 ms");
        assert_eq!(fmt_rtt(Some(f64::INFINITY)), "-");
        assert_eq!(fmt_age(42), "42s");
        assert_eq!(fmt_age(300), "5m");
        assert_eq!(fmt_age(7200), "2h");
        assert_eq!(fmt_age(200_000), "2d");
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

    #[test]
    fn objects_found_by_id_or_unique_name() {
        let pools = pools_config();
        assert_eq!(
            str_field(find_object(&pools, WEB_B, "pool").expect("id"), "name"),
            "web-b"
        );
        assert_eq!(
            str_field(find_object(&pools, "sorry", "pool").expect("name"), "id"),
            SORRY
        );
        let missing = find_object(&pools, "nope", "pool").expect_err("missing");
        assert_eq!(missing, "no pool has the id or name \"nope\"");
        let mut twice = pools.clone();
        twice.push(json!({"id": SPARE, "name": "sorry"}));
        let amb = find_object(&twice, "sorry", "pool").expect_err("ambiguous");
        assert!(amb.contains(SORRY) && amb.contains(SPARE), "{amb}");
    }

    #[test]
    fn origin_flip_changes_only_that_origin() {
        let pools = pools_config();
        let origins = pools[0]["origins"].as_array().expect("origins").clone();

        let (new, change) = set_origin_enabled(&origins, "a1", false).expect("by name");
        assert_eq!(
            change,
            OriginChange::Changed {
                index: 0,
                label: "a1 (10.0.1.1)".into()
            }
        );
        assert_eq!(new[0]["enabled"], json!(false));
        assert_eq!(new[1], origins[1], "other origins are sent unchanged");
        assert_eq!(new[0]["weight"], origins[0]["weight"]);

        let (new, change) = set_origin_enabled(&origins, "10.0.1.2", true).expect("by address");
        assert!(matches!(change, OriginChange::Changed { index: 1, .. }));
        assert_eq!(new[1]["enabled"], json!(true));
        let (_, change) =
            set_origin_enabled(&origins, "10.0.1.2:8080", true).expect("by addr:port");
        assert!(matches!(change, OriginChange::Changed { index: 1, .. }));

        let (new, change) = set_origin_enabled(&origins, "a2", false).expect("already off");
        assert_eq!(
            change,
            OriginChange::Unchanged {
                label: "a2 (10.0.1.2:8080)".into()
            }
        );
        assert_eq!(new, origins);

        // No `enabled` field means enabled.
        let bare = [json!({"name": "x", "address": "10.0.0.1"})];
        let (new, _) = set_origin_enabled(&bare, "x", false).expect("bare");
        assert_eq!(new[0]["enabled"], json!(false));

        let same_addr = [
            json!({"name": "p1", "address": "10.0.0.1", "port": 80}),
            json!({"name": "p2", "address": "10.0.0.1", "port": 81}),
        ];
        let err = set_origin_enabled(&same_addr, "10.0.0.1", false).expect_err("ambiguous");
        assert!(err.contains("matches 2 origins"), "{err}");
        let (_, change) = set_origin_enabled(&same_addr, "10.0.0.1:81", false).expect("port");
        assert!(matches!(change, OriginChange::Changed { index: 1, .. }));
        let err = set_origin_enabled(&same_addr, "zz", false).expect_err("missing");
        assert!(err.contains("p1 (10.0.0.1:80)"), "{err}");
    }

    #[test]
    fn status_tree_layout() {
        let out = render_status(&status(), &lbs_config(), &pools_config(), 1_000_002);
        let want = "\
agent status, 2s old, PoP AMS

load balancer www  vip 10.0.0.10:80  steering off
  1.2k pkt/s  3.4M B/s  12 new flows/s  (totals: 1.2M packets, 3.4G bytes, 45k flows)
  * pool web-a [default, active]  healthy  1/1 origins healthy (min 1)  rtt 0.80 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      a1      10.0.1.1:80    up                5m   0.42 ms  37     1.2k   3.4M     12     1       connect ok
      a2      10.0.1.2:8080  unknown,disabled  -    -        0      0      0        0      0.5
    pool web-b [default]  UNHEALTHY  0/1 origins healthy (min 1)  rtt -
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      b1      10.0.2.1:443   down              10s  -        0      0      0        0      1       connection refused
    pool sorry [fallback]  healthy  1/1 origins healthy (min 1)  rtt 12 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      s1      10.0.9.1:80    up                1d   12 ms    2      0.4    150      0.1    1       connect ok

load balancer api  vip 10.0.0.11:443  steering geo  FALLBACK: no default pool is healthy
  0 pkt/s  0 B/s  0 new flows/s  (totals: 0 packets, 0 bytes, 0 flows)
    pool web-b [default]  UNHEALTHY  0/1 origins healthy (min 1)  rtt -
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      b1      10.0.2.1:443   down              10s  -        0      0      0        0      1       connection refused
    pool web-a [geo]  healthy  1/1 origins healthy (min 1)  rtt 0.80 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      a1      10.0.1.1:80    up                5m   0.42 ms  37     1.2k   3.4M     12     1       connect ok
      a2      10.0.1.2:8080  unknown,disabled  -    -        0      0      0        0      0.5
  * pool sorry [fallback, active]  healthy  1/1 origins healthy (min 1)  rtt 12 ms
      ORIGIN  ADDRESS        STATE             FOR  RTT      FLOWS  PKT/S  BYTES/S  NEW/S  WEIGHT  REASON
      s1      10.0.9.1:80    up                1d   12 ms    2      0.4    150      0.1    1       connect ok

pools used by no load balancer
    pool spare  healthy  0/0 origins healthy (min 0)  rtt -
      (no origins)

(* = active pool)
";
        assert_eq!(out, want, "got:\n{out}");
    }

    #[test]
    fn status_keeps_active_pool_missing_from_config_and_flags_none() {
        let mut st = status();
        st["load_balancers"][1]["active_pool_id"] = Value::Null;
        st["load_balancers"][1]["active_pool"] = Value::Null;
        // Config lists only www, and www's config no longer names web-a.
        let mut lbs = lbs_config();
        lbs.truncate(1);
        lbs[0]["default_pools"] = json!([WEB_B]);
        let out = render_status(&st, &lbs, &pools_config(), 1_000_000);
        assert!(out.contains("  * pool web-a [active]  healthy"), "{out}");
        assert!(
            out.contains("load balancer api  vip 10.0.0.11:443  steering geo  FALLBACK: no default pool is healthy  NO ACTIVE POOL\n"),
            "{out}"
        );
        // The active pool found by name when the id is absent (older agent).
        let mut st = status();
        st["load_balancers"][0]
            .as_object_mut()
            .expect("lb")
            .remove("active_pool_id");
        let out = render_status(&st, &lbs_config(), &pools_config(), 1_000_000);
        assert!(out.contains("  * pool web-a [default, active]"), "{out}");

        let empty = render_status(
            &json!({"updated": 5, "pop": null, "load_balancers": [], "pools": [], "origins": []}),
            &[],
            &[],
            5,
        );
        assert_eq!(empty, "agent status, 0s old\nno load balancers\n");
    }

    #[test]
    fn pools_of_a_load_balancer_in_order_with_roles() {
        let lbs = lbs_config();
        assert_eq!(
            lb_pool_roles(&lbs[0]),
            [
                (WEB_A.to_owned(), vec!["default"]),
                (WEB_B.to_owned(), vec!["default"]),
                (SORRY.to_owned(), vec!["fallback"])
            ]
        );
        let same = json!({"default_pools": [WEB_A], "fallback_pool": WEB_A,
                          "country_pools": {"NL": [WEB_A, WEB_B]}});
        assert_eq!(
            lb_pool_roles(&same),
            [
                (WEB_A.to_owned(), vec!["default", "fallback"]),
                (WEB_B.to_owned(), vec!["geo"])
            ]
        );
    }

    #[test]
    fn list_tables() {
        let monitors = [
            json!({"id": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "http-health", "type": "http",
                   "method": "GET", "path": "/health", "port": 8080, "interval": 5, "timeout": 2,
                   "retries": 1, "expected_codes": "2xx", "description": "app health"}),
            json!({"id": "ffffffffffffffffffffffffffffffff", "type": "tcp", "port": 2048,
                   "interval": 60, "timeout": 5, "retries": 2, "description": ""}),
        ];
        assert_eq!(
            render_monitors(&monitors),
            "\
ID                                NAME         TYPE  TARGET             INTERVAL  TIMEOUT  RETRIES  EXPECT  DESCRIPTION
eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee  http-health  http  GET /health :8080  5         2        1        2xx     app health
ffffffffffffffffffffffffffffffff  -            tcp   :2048              60        5        2        -
"
        );

        let monitor_names = id_name_map(&monitors);
        let pools = render_pools(&pools_config(), &monitor_names);
        let lines: Vec<&str> = pools.lines().collect();
        assert_eq!(
            lines[0],
            "ID                                NAME   ENABLED  ORIGINS  MIN  MONITOR      STEERING  DESCRIPTION"
        );
        assert_eq!(
            lines[1],
            format!("{WEB_A}  web-a  yes      1/2      1    http-health  hash")
        );
        assert_eq!(
            lines[2],
            format!("{WEB_B}  web-b  yes      1/1      1    -            -")
        );

        let lbs = render_lbs(&lbs_config(), &id_name_map(&pools_config()));
        let lines: Vec<&str> = lbs.lines().collect();
        assert_eq!(
            lines[0],
            "ID                                NAME  VIP            ENABLED  STEERING  DEFAULT POOLS  FALLBACK  AFFINITY  DESCRIPTION"
        );
        assert_eq!(
            lines[1],
            format!(
                "{LB1}  www   10.0.0.10:80   yes      off       web-a,web-b    sorry     ip 300s"
            )
        );
        assert_eq!(
            lines[2],
            format!("{LB2}  api   10.0.0.11:443  yes      geo       web-b          sorry     none")
        );
        assert_eq!(render_lbs(&[], &HashMap::new()), "no load balancers\n");
        assert_eq!(join_host_port("2001:db8::1", 80), "[2001:db8::1]:80");
    }

    #[test]
    fn pool_health_per_pop() {
        let h = json!({"pool_id": WEB_A, "pop_health": {"AMS": {"healthy": true, "origins": [
            {"10.0.1.1": {"healthy": true, "rtt": "0.4ms", "failure_reason": "No failures", "response_code": 200}},
            {"10.0.1.2": {"healthy": false, "rtt": 12.5, "failure_reason": "connection refused"}}
        ]}}});
        assert_eq!(
            render_pool_health(&h),
            format!(
                "\
pool {WEB_A}
  AMS: healthy
    ORIGIN    HEALTHY  RTT    CODE  REASON
    10.0.1.1  yes      0.4ms  200   No failures
    10.0.1.2  no       12 ms  -     connection refused
"
            )
        );
        // An unknown shape is shown as JSON rather than dropped.
        assert_eq!(render_pool_health(&json!({"x": 1})), "{\n  \"x\": 1\n}\n");
    }

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "lbctl",
            "--api",
            "http://h:1/",
            "--token",
            "t",
            "pools",
            "health",
            "web",
            "--json",
        ])
        .expect("pools health");
        assert!(cli.json);
        assert!(
            matches!(cli.command, Command::Pools { cmd: PoolsCmd::Health { ref id } } if id == "web")
        );
        assert_eq!(
            Auth::from_cli(&cli).expect("auth"),
            Auth::Bearer("t".into())
        );
        assert_eq!(Client::new(&cli.api, Auth::None).base, "http://h:1");

        let cli =
            Cli::try_parse_from(["lbctl", "pools", "list", "--account", "acc"]).expect("crud");
        assert!(matches!(
            cli.command,
            Command::Pools {
                cmd: PoolsCmd::Crud(CrudCmd::List)
            }
        ));
        assert_eq!(cli.account, "acc");

        // create needs exactly one of --data / --file.
        assert!(Cli::try_parse_from(["lbctl", "monitors", "create"]).is_err());
        assert!(Cli::try_parse_from([
            "lbctl", "monitors", "create", "--data", "{}", "--file", "x.json"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "lbctl",
            "monitors",
            "create",
            "--data",
            r#"{"type":"tcp","port":2048}"#,
        ])
        .expect("create");
        let Command::Monitors {
            cmd: CrudCmd::Create { body },
        } = &cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(
            body.read().expect("body"),
            json!({"type": "tcp", "port": 2048})
        );
        let bad = BodyArgs {
            data: Some("[1]".into()),
            file: None,
        };
        assert!(bad.read().is_err(), "a body must be an object");

        let cli =
            Cli::try_parse_from(["lbctl", "origin", "disable", "web-a", "a1"]).expect("origin");
        assert!(matches!(
            cli.command,
            Command::Origin {
                cmd: OriginCmd::Disable { .. }
            }
        ));
    }

    #[test]
    fn auth_needs_email_and_key_together() {
        let parse = |args: &[&str]| {
            let mut v = vec!["lbctl"];
            v.extend_from_slice(args);
            v.push("status");
            let mut cli = Cli::try_parse_from(v).expect("parse");
            // Only what the test passed, whatever LB_API_* the environment has.
            if !args.contains(&"--token") {
                cli.token = None;
            }
            if !args.contains(&"--email") {
                cli.email = None;
            }
            if !args.contains(&"--key") {
                cli.key = None;
            }
            Auth::from_cli(&cli)
        };
        assert_eq!(
            parse(&["--email", "e@x", "--key", "k"]).expect("key auth"),
            Auth::Key {
                email: "e@x".into(),
                key: "k".into()
            }
        );
        assert!(parse(&["--email", "e@x"]).is_err());
        assert!(parse(&["--key", "k"]).is_err());
        assert_eq!(parse(&[]).expect("none"), Auth::None);
        assert_eq!(
            parse(&["--token", "t", "--email", "e@x", "--key", "k"]).expect("token wins"),
            Auth::Bearer("t".into())
        );
    }

    #[test]
    fn weights_are_short() {
        assert_eq!(fmt_weight(1.0), "1");
        assert_eq!(fmt_weight(0.5), "0.5");
        assert_eq!(fmt_weight(1.0 / 3.0), "0.333");
        assert_eq!(fmt_weight(0.0), "0");
    }
}

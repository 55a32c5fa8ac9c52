//! Health-notification webhooks: a JSON [`Event`] is POSTed to each of a pool's webhook URLs
//! when an origin or the pool changes health, retried with backoff, without ever blocking the
//! caller (the reconciler or the health loop).
//!
//! # Delivery model
//! - [`Notifier::notify`] only does a `try_send` on a bounded queue. When the queue is full the
//!   event is dropped and counted (`dropped`); the caller never waits.
//! - One dispatcher task takes events off the queue and spawns one task per (URL, event), so a
//!   slow or dead endpoint never delays deliveries to other URLs or later events.
//! - At most `queue` deliveries are in flight at once. When they are all busy (endpoints that
//!   hang until the timeout), the dispatcher waits, the queue fills and new events are dropped:
//!   memory and task count stay bounded however many transitions a flapping origin produces.
//! - Each delivery makes up to `attempts` attempts, each under `timeout`, sleeping
//!   `first_backoff`, then twice that, ... (capped at 30 s) between them. Transport errors,
//!   timeouts, 5xx, 408 and 429 are retried; other 3xx/4xx answers will not change on a retry,
//!   so they give up at once. Success is any 2xx.
//! - Order is not kept: deliveries are independent, and a retried event can arrive after a
//!   later one. Every event carries `timestamp` (microseconds) and `previous_healthy`, so a
//!   receiver can order them or drop stale ones.
//! - The dispatcher ends when every `Notifier` clone is dropped; deliveries already started
//!   run to completion (bounded by `attempts` x (`timeout` + backoff)).
//!
//! Requests go through the agent's one outbound client ([`crate::http_client`], hyper):
//! HTTP/1.1, `Connection: close`, only the status of the answer is read (interim 1xx answers
//! are skipped). `https://` verifies the server certificate against the webpki root store,
//! as the health probes do for monitors without `allow_insecure`.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT},
    Method, Request,
};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::{
    net::TcpStream,
    sync::{mpsc, Semaphore},
};

use crate::http_client::{ClientError, HttpClient, Verify};

/// Backoff between attempts doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const USER_AGENT_VALUE: &str = concat!("lb-agent/", env!("CARGO_PKG_VERSION"));

/// One health change, as POSTed (`Content-Type: application/json`) to a pool's webhooks.
///
/// The fields follow Cloudflare's Load Balancing health notifications (pool and origin by name,
/// the new health, the reason from the health check), flattened into one object:
///
/// ```json
/// {
///   "event": "origin_health",
///   "timestamp": "2026-11-25T20:01:02.123456Z",
///   "pool": "web-eu",
///   "pool_id": "web-eu",
///   "origin": "eu-1",
///   "address": "10.0.11.2:8080",
///   "healthy": false,
///   "previous_healthy": true,
///   "reason": "connection refused",
///   "pop": "ams",
///   "load_balancers": ["www"]
/// }
/// ```
///
/// - `event`: `"origin_health"` (one origin of the pool changed) or `"pool_health"` (the pool
///   as a whole, per `minimum_origins`); for `pool_health`, `origin` and `address` are `null`.
/// - `timestamp`: when the change was decided, RFC 3339 UTC with microseconds ([`rfc3339`]).
/// - `previous_healthy`: `null` when there was no earlier state (first decision after start).
/// - `pop`: this host's PoP name, `null` when the config names none.
/// - `load_balancers`: names of the load balancers that use the pool (default, fallback,
///   region/country/PoP pools).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: String,
    pub timestamp: String,
    pub pool: String,
    pub pool_id: String,
    pub origin: Option<String>,
    pub address: Option<String>,
    pub healthy: bool,
    pub previous_healthy: Option<bool>,
    pub reason: String,
    pub pop: Option<String>,
    pub load_balancers: Vec<String>,
}

/// How deliveries are queued and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyOptions {
    /// Attempts per (URL, event), the first included; 0 is taken as 1.
    pub attempts: u32,
    /// Sleep before the first retry; doubles for each later one, capped at 30 s.
    pub first_backoff: Duration,
    /// Limit on one attempt: connect, TLS handshake, request and status line.
    pub timeout: Duration,
    /// Events waiting to be dispatched, and also deliveries in flight at once; at least 1.
    pub queue: usize,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            queue: 1024,
        }
    }
}

/// Totals since [`Notifier::spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyCounters {
    /// Deliveries answered with a 2xx.
    pub sent: u64,
    /// Deliveries given up (all attempts failed, or an answer that a retry cannot change).
    pub failed: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Retries (attempts after the first).
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Job {
    urls: Vec<String>,
    event: Event,
}

/// Handle to the notification task; cheap to clone (a channel sender and an `Arc`).
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Starts the dispatcher task. Must be called inside a tokio runtime.
    pub fn spawn(opts: NotifyOptions) -> Notifier {
        let queue = opts.queue.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::channel(queue);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            opts,
            client: HttpClient::new(),
            counters: counters.clone(),
        });
        tokio::spawn(dispatch(rx, shared, Arc::new(Semaphore::new(queue))));
        Notifier { tx, counters }
    }

    /// Queues `event` for each of `urls`. Never blocks or awaits: when the queue is full (or
    /// the dispatcher is gone) the event is dropped and counted in `dropped`.
    pub fn notify(&self, urls: &[String], event: Event) {
        if urls.is_empty() {
            return;
        }
        let job = Job {
            urls: urls.to_vec(),
            event,
        };
        if let Err(e) = self.tx.try_send(job) {
            Counters::bump(&self.counters.dropped);
            let (mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) = e;
            tracing::debug!(event = %job.event.event, pool = %job.event.pool,
                "webhook queue full, event dropped");
        }
    }

    pub fn counters(&self) -> NotifyCounters {
        let c = &self.counters;
        NotifyCounters {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    opts: NotifyOptions,
    client: HttpClient,
    counters: Arc<Counters>,
}

async fn dispatch(mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    while let Some(Job { urls, event }) = rx.recv().await {
        let body: Arc<[u8]> = match serde_json::to_vec(&event) {
            Ok(b) => b.into(),
            Err(e) => {
                // Unreachable with the field types above; counted rather than panicking.
                tracing::warn!(error = %e, event = %event.event, "webhook event not serializable");
                shared
                    .counters
                    .failed
                    .fetch_add(urls.len() as u64, Ordering::Relaxed);
                continue;
            }
        };
        let event = Arc::new(event);
        for url in urls {
            // Waiting here (all slots busy) is what fills the queue and makes notify() drop.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (shared, body, event) = (shared.clone(), body.clone(), event.clone());
            tokio::spawn(async move {
                deliver(&shared, &url, &event, &body).await;
                drop(slot);
            });
        }
    }
}

/// One (URL, event) delivery with its retries; updates the counters and logs the outcome.
async fn deliver(shared: &Shared, url: &str, event: &Event, body: &[u8]) {
    let opts = &shared.opts;
    let counters = &shared.counters;
    let target = match parse_url(url) {
        Ok(t) => t,
        Err(e) => {
            Counters::bump(&counters.failed);
            tracing::warn!(url = %redact(url), event = %event.event, pool = %event.pool,
                error = %e, "webhook not delivered");
            return;
        }
    };
    let attempts = opts.attempts.max(1);
    let mut backoff = opts.first_backoff.min(MAX_BACKOFF);
    for attempt in 1..=attempts {
        let result = match tokio::time::timeout(opts.timeout, post(shared, &target, body)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout(opts.timeout)),
        };
        let err = match result {
            Ok(()) => {
                Counters::bump(&counters.sent);
                tracing::debug!(url = %redact(url), event = %event.event, pool = %event.pool,
                    attempt, "webhook delivered");
                return;
            }
            Err(e) => e,
        };
        if attempt == attempts || !err.retryable() {
            Counters::bump(&counters.failed);
            tracing::warn!(url = %redact(url), event = %event.event, pool = %event.pool,
                attempts = attempt, error = %err, "webhook delivery failed, giving up");
            return;
        }
        Counters::bump(&counters.retries);
        tracing::debug!(url = %redact(url), event = %event.event, attempt, error = %err,
            retry_in = ?backoff, "webhook attempt failed, will retry");
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
    }
}

/// Webhook URLs often carry a token in the query string; logs show everything before it.
fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("connecting to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("building the request: {0}")]
    Request(hyper::http::Error),
    #[error("exchanging with {host}: {source}")]
    Http { host: String, source: hyper::Error },
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl DeliveryError {
    /// Whether another attempt can succeed. Redirects and client errors other than 408
    /// (Request Timeout) and 429 (Too Many Requests) will get the same answer again.
    fn retryable(&self) -> bool {
        match self {
            DeliveryError::Status(code) => *code >= 500 || *code == 408 || *code == 429,
            DeliveryError::Request(_) => false,
            _ => true,
        }
    }
}

/// One attempt: connect, (TLS), POST, read the status.
async fn post(shared: &Shared, t: &Url, body: &[u8]) -> Result<(), DeliveryError> {
    let req = request(t, body).map_err(DeliveryError::Request)?;
    let stream = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|source| DeliveryError::Connect {
            host: t.host.clone(),
            port: t.port,
            source,
        })?;
    // Webhook events are small and sent once; no need to wait for Nagle.
    let _ = stream.set_nodelay(true);
    let tls = if t.tls {
        let name = match t.host.parse::<Ipv4Addr>() {
            Ok(ip) => ServerName::IpAddress(IpAddr::V4(ip).into()),
            Err(_) => ServerName::try_from(t.host.clone()).map_err(|e| DeliveryError::Tls {
                host: t.host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?,
        };
        Some((name, Verify::Certificates))
    } else {
        None
    };
    let exchange = shared
        .client
        .send(stream, tls, req)
        .await
        .map_err(|e| match e {
            ClientError::Tls(source) => DeliveryError::Tls {
                host: t.host.clone(),
                source,
            },
            ClientError::Http(source) => DeliveryError::Http {
                host: t.host.clone(),
                source,
            },
        })?;
    let code = exchange.response.status().as_u16();
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(DeliveryError::Status(code))
    }
}

/// The POST of `body` to `t`; `Host` carries the port when it is not the scheme's default.
fn request(t: &Url, body: &[u8]) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let host = if t.port == t.default_port() {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    Request::builder()
        .method(Method::POST)
        .uri(t.path.as_str())
        .header(HOST, host)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::copy_from_slice(body)))
}

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`; the fragment is dropped.
    path: String,
}

impl Url {
    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }
}

/// Checks a webhook URL as config validation needs: `http://` or `https://`, a host name or
/// IPv4 address, an optional port, then path and query. The message names the problem and
/// the fix, e.g. `"ftp://x": use an http:// or https:// URL`.
pub fn validate_url(s: &str) -> Result<(), String> {
    parse_url(s).map(|_| ())
}

fn parse_url(s: &str) -> Result<Url, String> {
    let bad = |problem: &str| format!("{s:?}: {problem}");
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(&format!(
            "contains {c:?}; percent-encode it (e.g. %20 for a space)"
        )));
    }
    if !s.is_ascii() {
        return Err(bad("contains non-ASCII characters; percent-encode them"));
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| bad("use an http:// or https:// URL"))?;
    let tls = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(bad("use an http:// or https:// URL"));
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.contains('@') {
        return Err(bad(
            "user:password@ is not supported; put the endpoint's token in the path or query",
        ));
    }
    if authority.starts_with('[') {
        return Err(bad(
            "IPv6 literals are not supported; use a host name or an IPv4 address",
        ));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("port {p:?} must be a number from 1 to 65535")))?;
            (h, port)
        }
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad("missing host; write http(s)://host[:port]/path"));
    }
    let host_ok = host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !host_ok {
        return Err(bad(&format!(
            "host {host:?} is not a valid host name or IPv4 address"
        )));
    }
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    let path = match tail.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{tail}"),
        Some(_) => tail.to_owned(),
    };
    Ok(Url {
        tls,
        host: host.to_ascii_lowercase(),
        port,
        path,
    })
}

/// `t` as RFC 3339 UTC with microseconds, e.g. `2026-11-25T20:01:02.123456Z`. Instants
/// before 1970 are handled; no leap seconds (like `SystemTime` itself).
pub fn rfc3339(t: SystemTime) -> String {
    let micros: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    };
    const MICROS_PER_DAY: i128 = 86_400 * 1_000_000;
    let days = micros.div_euclid(MICROS_PER_DAY);
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = of_day / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        of_day % 1_000_000
    )
}

/// (year, month, day) of the proleptic Gregorian calendar for `z` days since 1970-01-01.
/// Howard Hinnant's `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html):
/// count in 400-year eras from 0000-03-01 so that the leap day ends each year.
fn civil_from_days(z: i128) -> (i128, i128, i128) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    (yoe + era * 400 + i128::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    fn event() -> Event {
        Event {
            event: "origin_health".into(),
            timestamp: "2026-11-25T20:01:02.123456Z".into(),
            pool: "web-eu".into(),
            pool_id: "web-eu".into(),
            origin: Some("eu-1".into()),
            address: Some("10.0.11.2:8080".into()),
            healthy: false,
            previous_healthy: Some(true),
            reason: "connection refused".into(),
            pop: Some("ams".into()),
            load_balancers: vec!["www".into(), "api".into()],
        }
    }

    fn fast(attempts: u32) -> NotifyOptions {
        NotifyOptions {
            attempts,
            first_backoff: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
            queue: 16,
        }
    }

    /// Polls `cond` every 10 ms for at most 10 s.
    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Reads one request (head plus Content-Length body), within 5 s.
    async fn read_request(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        for _ in 0..100 {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("request has a Content-Length");
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("request arrives within 5 s")
                .expect("read request");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        panic!("incomplete request: {:?}", String::from_utf8_lossy(&buf));
    }

    /// A server on 127.0.0.1 that answers the n-th request (0-based) with `answer(n)`, for
    /// at most 10 connections. Returns its address, the request count and the requests.
    async fn server(
        answer: fn(usize) -> &'static str,
    ) -> (
        std::net::SocketAddr,
        Arc<AtomicUsize>,
        mpsc::UnboundedReceiver<String>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("local addr");
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let c = count.clone();
        tokio::spawn(async move {
            for n in 0..10 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let req = read_request(&mut s).await;
                c.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(req);
                let _ = s.write_all(answer(n).as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (addr, count, rx)
    }

    /// A listener on 127.0.0.1 that accepts connections and holds them without answering.
    async fn black_hole() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("local addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..100 {
                let Ok((s, _)) = l.accept().await else {
                    return;
                };
                held.push(s);
            }
        });
        addr
    }

    const E500: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test]
    async fn retries_until_2xx_and_posts_the_event_as_json() {
        let (addr, count, mut reqs) = server(|n| {
            if n < 2 {
                E500
            } else {
                "HTTP/1.1 204 No Content\r\n\r\n"
            }
        })
        .await;
        let n = Notifier::spawn(fast(5));
        n.notify(&[format!("http://{addr}/hook?token=abc")], event());
        wait_until("sent = 1", || n.counters().sent == 1).await;
        // No further attempt may follow a success.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3, "two 500s then one 204");
        assert_eq!(
            n.counters(),
            NotifyCounters {
                sent: 1,
                failed: 0,
                dropped: 0,
                retries: 2
            }
        );
        for _ in 0..3 {
            let req = reqs.try_recv().expect("request recorded");
            let (head, body) = req.split_once("\r\n\r\n").expect("head and body");
            let mut lines = head.lines();
            assert_eq!(lines.next(), Some("POST /hook?token=abc HTTP/1.1"));
            let headers: Vec<&str> = lines.collect();
            for want in [
                format!("Host: {addr}"),
                "Content-Type: application/json".to_owned(),
                format!("User-Agent: lb-agent/{}", env!("CARGO_PKG_VERSION")),
                format!("Content-Length: {}", body.len()),
                "Connection: close".to_owned(),
            ] {
                assert!(headers.contains(&want.as_str()), "{want:?} in {headers:?}");
            }
            let v: serde_json::Value = serde_json::from_str(body).expect("body is JSON");
            assert_eq!(v["event"], "origin_health");
            assert_eq!(v["timestamp"], "2026-11-25T20:01:02.123456Z");
            assert_eq!(v["pool"], "web-eu");
            assert_eq!(v["pool_id"], "web-eu");
            assert_eq!(v["origin"], "eu-1");
            assert_eq!(v["address"], "10.0.11.2:8080");
            assert_eq!(v["healthy"], false);
            assert_eq!(v["previous_healthy"], true);
            assert_eq!(v["reason"], "connection refused");
            assert_eq!(v["pop"], "ams");
            assert_eq!(v["load_balancers"], serde_json::json!(["www", "api"]));
        }
    }

    #[tokio::test]
    async fn gives_up_after_all_attempts() {
        let (addr, count, _reqs) = server(|_| E500).await;
        let n = Notifier::spawn(fast(3));
        n.notify(&[format!("http://{addr}/")], event());
        wait_until("failed = 1", || n.counters().failed == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3, "one request per attempt");
        assert_eq!(
            n.counters(),
            NotifyCounters {
                sent: 0,
                failed: 1,
                dropped: 0,
                retries: 2
            }
        );
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (addr, count, _reqs) =
            server(|_| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        let n = Notifier::spawn(fast(5));
        n.notify(&[format!("http://{addr}/")], event());
        wait_until("failed = 1", || n.counters().failed == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(n.counters().retries, 0);
    }

    #[tokio::test]
    async fn refused_connections_are_retried_then_given_up() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("local addr")
        };
        let n = Notifier::spawn(fast(2));
        n.notify(&[format!("http://{addr}/")], event());
        wait_until("failed = 1", || n.counters().failed == 1).await;
        assert_eq!(n.counters().retries, 1);
        assert_eq!(n.counters().sent, 0);
    }

    #[tokio::test]
    async fn https_does_not_fall_back_to_plain_http() {
        // A plain-HTTP server behind an https:// URL: the TLS handshake must fail.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("local addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
        let n = Notifier::spawn(fast(1));
        n.notify(&[format!("https://{addr}/")], event());
        wait_until("failed = 1", || n.counters().failed == 1).await;
        assert_eq!(n.counters().sent, 0);
    }

    #[tokio::test]
    async fn a_hanging_endpoint_does_not_delay_another() {
        let hang = black_hole().await;
        let (ok, _count, _reqs) = server(|_| "HTTP/1.1 200 OK\r\n\r\n").await;
        let n = Notifier::spawn(NotifyOptions {
            timeout: Duration::from_secs(60),
            ..fast(1)
        });
        n.notify(
            &[format!("http://{hang}/"), format!("http://{ok}/")],
            event(),
        );
        wait_until("sent = 1", || n.counters().sent == 1).await;
        assert_eq!(
            n.counters().failed,
            0,
            "the hanging delivery is still pending"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let hang = black_hole().await;
        let n = Notifier::spawn(NotifyOptions {
            attempts: 1,
            first_backoff: Duration::from_millis(5),
            timeout: Duration::from_secs(60),
            queue: 1,
        });
        let urls = [format!("http://{hang}/")];
        const CALLS: u64 = 50;
        for _ in 0..CALLS {
            n.notify(&urls, event());
        }
        // At most one event in flight (queue = 1 slot), one held by the dispatcher waiting
        // for that slot and one in the queue: everything else was dropped, not waited for.
        let c = n.counters();
        assert!(c.dropped >= CALLS - 3, "dropped {} of {CALLS}", c.dropped);
        assert_eq!((c.sent, c.failed), (0, 0));
    }

    #[test]
    fn urls() {
        let ok = |s: &str, tls, host: &str, port, path: &str| {
            assert_eq!(
                parse_url(s),
                Ok(Url {
                    tls,
                    host: host.into(),
                    port,
                    path: path.into()
                }),
                "{s}"
            );
            assert_eq!(validate_url(s), Ok(()));
        };
        ok(
            "http://hooks.example.com/x",
            false,
            "hooks.example.com",
            80,
            "/x",
        );
        ok(
            "https://hooks.example.com",
            true,
            "hooks.example.com",
            443,
            "/",
        );
        ok(
            "HTTPS://Hooks.Example.com:8443/a/b?c=d&e=f#frag",
            true,
            "hooks.example.com",
            8443,
            "/a/b?c=d&e=f",
        );
        ok("http://10.0.0.1:8080?x=1", false, "10.0.0.1", 8080, "/?x=1");
        ok("http://localhost:1/", false, "localhost", 1, "/");

        let bad = |s: &str, want: &str| {
            let e = validate_url(s).expect_err(s);
            assert!(e.starts_with(&format!("{s:?}: ")), "{e}");
            assert!(e.contains(want), "{s}: {e} should mention {want:?}");
        };
        bad("ftp://x", "use an http:// or https:// URL");
        assert_eq!(
            validate_url("ftp://x"),
            Err("\"ftp://x\": use an http:// or https:// URL".into())
        );
        bad("hooks.example.com/x", "use an http:// or https:// URL");
        bad("", "use an http:// or https:// URL");
        bad("http://", "missing host");
        bad("http:///path", "missing host");
        bad("http://:8080/", "missing host");
        bad("http://host:0/", "from 1 to 65535");
        bad("http://host:65536/", "from 1 to 65535");
        bad("http://host:/", "from 1 to 65535");
        bad("http://host:http/", "from 1 to 65535");
        bad("http://user:pw@host/", "user:password@");
        bad("http://[::1]:80/", "IPv6");
        bad("http://ho$t/", "not a valid host");
        bad("http://host..com/", "not a valid host");
        bad("http://-host/", "not a valid host");
        bad("http://host/a b", "percent-encode");
        bad(" http://host/", "percent-encode");
        bad("http://host/\r\nX-Injected: 1", "percent-encode");
        bad("http://höst/", "percent-encode");
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_garbage_is_retried() {
        let (addr, count, _reqs) = server(|_| {
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        })
        .await;
        let n = Notifier::spawn(fast(3));
        n.notify(&[format!("http://{addr}/")], event());
        wait_until("sent = 1", || n.counters().sent == 1).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);

        let (addr, count, _reqs) = server(|_| "SSH-2.0-OpenSSH\r\n").await;
        let n = Notifier::spawn(fast(2));
        n.notify(&[format!("http://{addr}/")], event());
        wait_until("failed = 1", || n.counters().failed == 1).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "a malformed answer is retried"
        );
    }

    #[test]
    fn retryable_answers() {
        for (code, retry) in [(500, true), (503, true), (408, true), (429, true)] {
            assert_eq!(DeliveryError::Status(code).retryable(), retry, "{code}");
        }
        for code in [301, 400, 401, 403, 404] {
            assert!(!DeliveryError::Status(code).retryable(), "{code}");
        }
        assert!(DeliveryError::Timeout(Duration::from_secs(1)).retryable());
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64, micros: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_700_000_000, 1), "2023-11-14T22:13:20.000001Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(1_795_636_862, 123_456), "2026-11-25T20:01:02.123456Z");
        // 2100 is not a leap year: the day after 02-28 is 03-01.
        assert_eq!(at(4_107_456_000, 0), "2100-02-28T00:00:00.000000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // Sub-microsecond parts are truncated, not rounded.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_nanos(1_999)),
            "1970-01-01T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_micros(1)),
            "1969-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(86_400 * 365)),
            "1969-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn default_options() {
        let o = NotifyOptions::default();
        assert_eq!(o.attempts, 5);
        assert_eq!(o.first_backoff, Duration::from_millis(500));
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.queue, 1024);
    }
}

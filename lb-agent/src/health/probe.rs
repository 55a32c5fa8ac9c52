//! One health check against one origin: TCP connect, an HTTP/1.1 request over TCP or TLS,
//! or (by monitor type) an ICMP echo, a UDP datagram and an echo, or an SMTP greeting
//! (`icmp`, `smtp`). A check is an attempt plus up to `retries` immediate retries; it
//! succeeds if any attempt does. Every attempt has the monitor's timeout, whatever its type. Probes use the host's own stack (ordinary
//! sockets from ephemeral ports); the XDP program passes them and their replies untouched.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{HeaderName, HeaderValue, ACCEPT, CONNECTION, HOST, LOCATION, USER_AGENT},
    Method, Request,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::Outcome;
use crate::{
    config::{HttpMethod, Monitor, MonitorKind},
    http_client::{ClientError, HttpClient, Verify},
};

/// How much of the body is read: the 10 KB that `expected_body` looks at (as Cloudflare does).
const BODY_WINDOW: usize = 10 * 1024;
const MAX_REDIRECTS: usize = 5;

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs one check (attempt + retries) of `monitor` against `addr`.
pub async fn check(monitor: &Monitor, addr: SocketAddr, client: &HttpClient) -> Outcome {
    let attempts = monitor.retries + 1;
    let mut last = String::new();
    for _ in 0..attempts {
        let start = Instant::now();
        match tokio::time::timeout(monitor.timeout.get(), attempt(monitor, addr, client)).await {
            Ok(Ok(summary)) => {
                return Outcome {
                    ok: true,
                    reason: summary,
                    rtt: Some(start.elapsed()),
                }
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("timed out after {}", secs(monitor.timeout.get())),
        }
    }
    Outcome {
        ok: false,
        reason: format!(
            "{last}, {attempts} attempt{}",
            if attempts == 1 { "" } else { "s" }
        ),
        rtt: None,
    }
}

/// One attempt, by monitor type. Ok holds what the status shows of a good result.
async fn attempt(m: &Monitor, addr: SocketAddr, client: &HttpClient) -> Result<String, String> {
    let sock = addr;
    match m.kind {
        MonitorKind::Tcp | MonitorKind::Http | MonitorKind::Https => {
            attempt_path(m, addr, client, &m.path, 0).await
        }
        MonitorKind::IcmpPing => super::icmp::ping(sock.ip())
            .await
            .map(|()| "ICMP echo reply".to_owned()),
        MonitorKind::UdpIcmp => super::icmp::udp_icmp(sock).await,
        MonitorKind::Smtp => super::smtp::check(sock).await,
    }
}

/// One connection and, for HTTP(S), one request for `path`. Redirects are followed (up to
/// MAX_REDIRECTS) on a new connection to the same origin: a health check probes this origin,
/// not whatever host a Location header names.
async fn attempt_path(
    m: &Monitor,
    addr: SocketAddr,
    client: &HttpClient,
    path: &str,
    hop: usize,
) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => format!("connect failed: {e}"),
    })?;
    let tls = match m.kind {
        MonitorKind::Tcp => return Ok("connection established".into()),
        MonitorKind::Http | MonitorKind::UdpIcmp | MonitorKind::IcmpPing | MonitorKind::Smtp => {
            None
        }
        MonitorKind::Https => {
            let ip = ServerName::IpAddress(addr.ip().into());
            let name = host_header(m).map_or(ip.clone(), |h| {
                ServerName::try_from(host_name(h).to_owned()).unwrap_or(ip)
            });
            let verify = if m.allow_insecure {
                Verify::Insecure
            } else {
                Verify::Certificates
            };
            Some((name, verify))
        }
    };
    let exchange = client
        .send(stream, tls, request(m, addr, path)?)
        .await
        .map_err(|e| match e {
            ClientError::Tls(e) => format!("TLS handshake failed: {e}"),
            ClientError::Http(e) if e.is_incomplete_message() => "empty response".to_owned(),
            ClientError::Http(e) if e.is_parse() => format!("malformed HTTP response: {e}"),
            ClientError::Http(e) => format!("reading response: {e}"),
        })?;
    let code = exchange.response.status().as_u16();
    if m.follow_redirects && (300..400).contains(&code) {
        if let Some(loc) = exchange.response.headers().get(LOCATION) {
            if hop >= MAX_REDIRECTS {
                return Err(format!("more than {MAX_REDIRECTS} redirects"));
            }
            let next = redirect_path(&String::from_utf8_lossy(loc.as_bytes()));
            drop(exchange);
            return Box::pin(attempt_path(m, addr, client, &next, hop + 1)).await;
        }
    }
    let body = if m.method == HttpMethod::Head {
        Vec::new()
    } else {
        exchange
            .body_prefix(BODY_WINDOW)
            .await
            .map_err(|e| format!("reading response: {e}"))?
    };
    judge(m, code, &body)
}

fn host_header(m: &Monitor) -> Option<&str> {
    m.header
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str())
}

/// The host of a `Host` header value, without its port: `example.com:8443` ->
/// `example.com`, `[2001:db8::1]:443` -> `2001:db8::1` (the TLS server name).
fn host_name(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.split_once(':') {
        // More than one colon: a bare IPv6 address, which has no port.
        Some((_, port)) if port.contains(':') => h,
        Some((host, _)) => host,
        None => h,
    }
}

fn redirect_path(loc: &str) -> String {
    match loc.find("://") {
        Some(i) => {
            let rest = &loc[i + 3..];
            rest.find('/')
                .map_or_else(|| "/".to_owned(), |j| rest[j..].to_owned())
        }
        None if loc.starts_with('/') => loc.to_owned(),
        None => format!("/{loc}"),
    }
}

/// The probe's request: the monitor's method, path and headers; `Host` is the origin's
/// `address:port` (`[2001:db8::1]:8080` for IPv6, RFC 9110 §7.2 with RFC 3986's brackets)
/// unless the monitor sets one.
fn request(m: &Monitor, addr: SocketAddr, path: &str) -> Result<Request<Full<Bytes>>, String> {
    let method = match m.method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
    };
    let mut req = Request::builder().method(method).uri(path);
    if host_header(m).is_none() {
        req = req.header(HOST, addr.to_string());
    }
    for (k, v) in &m.header {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header {k:?} is not a header name"))?;
        let value = HeaderValue::from_bytes(v.as_bytes())
            .map_err(|_| format!("header {k}: {v:?} is not a header value"))?;
        req = req.header(name, value);
    }
    req.header(USER_AGENT, "lb-agent-healthcheck")
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request for {path:?}: {e}"))
}

fn judge(m: &Monitor, code: u16, body: &[u8]) -> Result<String, String> {
    if !m.expected_codes.matches(code) {
        return Err(format!("HTTP {code} (expected {})", m.expected_codes));
    }
    if !m.expected_body.is_empty() {
        let body = String::from_utf8_lossy(body).to_lowercase();
        if !body.contains(&m.expected_body.to_lowercase()) {
            return Err(format!(
                "HTTP {code}: body does not contain {:?}",
                m.expected_body
            ));
        }
    }
    Ok(format!("HTTP {code}"))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback server that answers each of up to 16 connections with `answer(request)`,
    /// then closes it.
    async fn server(answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
        server_on("127.0.0.1:0", answer).await
    }

    /// `server` on `bind` (`"[::1]:0"` for IPv6).
    async fn server_on(
        bind: &str,
        answer: impl Fn(&str) -> Vec<u8> + Send + 'static,
    ) -> SocketAddr {
        let l = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = s
                    .write_all(&answer(&String::from_utf8_lossy(&buf[..n])))
                    .await;
            }
        });
        addr
    }

    /// A loopback server that answers every connection with `answer`, then closes.
    async fn fixed_server(answer: &'static [u8]) -> SocketAddr {
        server(move |_| answer.to_vec()).await
    }

    #[tokio::test]
    async fn rejects_garbage() {
        let tls = HttpClient::new();
        let mut m = monitor(false);
        m.path = "/".into();
        for answer in [&b""[..], b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\n"] {
            let o = check(&m, fixed_server(answer).await, &tls).await;
            assert!(!o.ok, "{answer:?}: {o:?}");
        }
    }

    #[tokio::test]
    async fn a_stray_body_after_204_is_still_judged() {
        let mut m = monitor(false);
        m.path = "/".into();
        let o = check(
            &m,
            fixed_server(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfine",
            )
            .await,
            &HttpClient::new(),
        )
        .await;
        m.expected_codes = crate::config::CodePattern::parse("2xx").expect("codes");
        let o2 = check(
            &m,
            fixed_server(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfine",
            )
            .await,
            &HttpClient::new(),
        )
        .await;
        assert!(!o.ok, "204 is not the expected 200: {o:?}");
        assert!(o2.ok, "{o2:?}");
    }

    #[tokio::test]
    async fn body_window_is_the_first_10_kb() {
        // "fine" just past the window is not seen; a body without Content-Length ends at close.
        static LATE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let late = LATE.get_or_init(|| {
            let mut r = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            r.extend(std::iter::repeat_n(b'x', BODY_WINDOW));
            r.extend_from_slice(b"fine");
            r
        });
        let mut m = monitor(false);
        m.path = "/".into();
        let tls = HttpClient::new();
        let o = check(&m, fixed_server(late).await, &tls).await;
        assert_eq!(
            o.reason,
            "HTTP 200: body does not contain \"FINE\", 1 attempt"
        );
        let o = check(
            &m,
            fixed_server(b"HTTP/1.1 200 OK\r\n\r\nall fine").await,
            &tls,
        )
        .await;
        assert!(o.ok, "{o:?}");
    }

    /// A loopback HTTP server: `/a` redirects to `/b`, `/b` answers 200 "fine".
    async fn redirect_server() -> SocketAddr {
        server(|req| {
            if req.starts_with("GET /a ") {
                b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/b\r\nContent-Length: 0\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine".to_vec()
            }
        })
        .await
    }

    fn monitor(follow: bool) -> Monitor {
        let text = format!(
            "[dataplane]\ninterfaces=[\"lo\"]\nsnat_address=\"10.0.0.1\"\n[[monitors]]\nname=\"m\"\npath=\"/a\"\nretries=0\ntimeout=2\nfollow_redirects={follow}\nexpected_body=\"FINE\"\n"
        );
        crate::config::Config::parse(&text, std::path::Path::new("t"))
            .expect("config")
            .monitors[0]
            .clone()
    }

    #[tokio::test]
    async fn follows_redirects_on_the_same_origin_only_when_asked() {
        let addr = redirect_server().await;
        let tls = HttpClient::new();
        let o = check(&monitor(true), addr, &tls).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.reason, "HTTP 200");
        let o = check(&monitor(false), addr, &tls).await;
        assert!(!o.ok);
        assert!(o.reason.starts_with("HTTP 302 (expected 200)"), "{o:?}");
    }

    #[tokio::test]
    async fn refused_connection_names_attempts() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let mut m = monitor(false);
        m.retries = 2;
        let o = check(&m, addr, &HttpClient::new()).await;
        assert_eq!(o.reason, "connection refused, 3 attempts");
    }

    #[tokio::test]
    async fn ipv6_origins_are_probed_with_a_bracketed_host() {
        // The server answers with the Host header it got.
        let addr = server_on("[::1]:0", |req| {
            let host = req
                .lines()
                .find_map(|l| {
                    l.strip_prefix("host: ")
                        .or_else(|| l.strip_prefix("Host: "))
                })
                .unwrap_or("none")
                .to_owned();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{host}",
                host.len()
            )
            .into_bytes()
        })
        .await;
        assert!(addr.is_ipv6());
        let mut m = monitor(false);
        m.path = "/".into();
        m.expected_body = format!("[::1]:{}", addr.port());
        let o = check(&m, addr, &HttpClient::new()).await;
        assert!(o.ok, "the Host header is [::1]:port: {o:?}");
        m.kind = MonitorKind::Tcp;
        let o = check(&m, addr, &HttpClient::new()).await;
        assert_eq!((o.ok, o.reason.as_str()), (true, "connection established"));
        let req = request(&m, addr, "/").expect("request");
        assert_eq!(req.headers()[HOST], format!("[::1]:{}", addr.port()));
    }

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(host_name("example.com:8443"), "example.com");
        assert_eq!(host_name("example.com"), "example.com");
        assert_eq!(host_name("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(host_name("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn redirect_paths_stay_on_the_origin() {
        assert_eq!(redirect_path("https://example.com/a/b?c"), "/a/b?c");
        assert_eq!(redirect_path("https://example.com"), "/");
        assert_eq!(redirect_path("/x"), "/x");
        assert_eq!(redirect_path("x"), "/x");
    }
}

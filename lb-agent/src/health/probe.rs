//! One health check against one origin: TCP connect, or an HTTP/1.1 request over TCP or TLS.
//! A check is an attempt plus up to `retries` immediate retries; it succeeds if any attempt
//! does. Every attempt has the monitor's timeout. Probes use the host's own stack (ordinary
//! sockets from ephemeral ports); the XDP program passes them and their replies untouched.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::Outcome;
use crate::config::{HttpMethod, Monitor, MonitorKind};

/// How much of a response is read: headers plus the 10 KB of body that `expected_body`
/// looks at (as Cloudflare does).
const MAX_RESPONSE: usize = 16 * 1024;
const BODY_WINDOW: usize = 10 * 1024;
const MAX_REDIRECTS: usize = 5;

/// TLS client configurations, built once.
#[derive(Clone)]
pub struct Tls {
    verified: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
}

impl Tls {
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let insecure = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        Self {
            verified: Arc::new(verified),
            insecure: Arc::new(insecure),
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Self::new()
    }
}

/// `allow_insecure`: accepts any certificate, still checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs one check (attempt + retries) of `monitor` against `addr`.
pub async fn check(monitor: &Monitor, addr: SocketAddrV4, tls: &Tls) -> Outcome {
    let attempts = monitor.retries + 1;
    let mut last = String::new();
    for _ in 0..attempts {
        let start = Instant::now();
        match tokio::time::timeout(monitor.timeout, attempt(monitor, addr, tls)).await {
            Ok(Ok(summary)) => {
                return Outcome {
                    ok: true,
                    reason: summary,
                    rtt: Some(start.elapsed()),
                }
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("timed out after {}", secs(monitor.timeout)),
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

async fn attempt(m: &Monitor, addr: SocketAddrV4, tls: &Tls) -> Result<String, String> {
    attempt_path(m, addr, tls, &m.path, 0).await
}

/// One connection and, for HTTP(S), one request for `path`. Redirects are followed (up to
/// MAX_REDIRECTS) on a new connection to the same origin: a health check probes this origin,
/// not whatever host a Location header names.
async fn attempt_path(
    m: &Monitor,
    addr: SocketAddrV4,
    tls: &Tls,
    path: &str,
    hop: usize,
) -> Result<String, String> {
    let stream = TcpStream::connect(SocketAddr::V4(addr))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            _ => format!("connect failed: {e}"),
        })?;
    let resp = match m.kind {
        MonitorKind::Tcp => return Ok("connection established".into()),
        MonitorKind::Http => request(m, addr, stream, path).await?,
        MonitorKind::Https => {
            let ip = ServerName::IpAddress(IpAddr::V4(*addr.ip()).into());
            let name = host_header(m).map_or(ip.clone(), |h| {
                ServerName::try_from(h.split(':').next().unwrap_or(h).to_owned()).unwrap_or(ip)
            });
            let cfg = if m.allow_insecure {
                &tls.insecure
            } else {
                &tls.verified
            };
            let s = TlsConnector::from(cfg.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            request(m, addr, s, path).await?
        }
    };
    if m.follow_redirects && (300..400).contains(&resp.code) {
        if let Some(loc) = &resp.location {
            if hop >= MAX_REDIRECTS {
                return Err(format!("more than {MAX_REDIRECTS} redirects"));
            }
            return Box::pin(attempt_path(m, addr, tls, &redirect_path(loc), hop + 1)).await;
        }
    }
    judge(m, &resp)
}

fn host_header(m: &Monitor) -> Option<&str> {
    m.header
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str())
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

struct Response {
    code: u16,
    location: Option<String>,
    body: Vec<u8>,
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    m: &Monitor,
    addr: SocketAddrV4,
    mut s: S,
    path: &str,
) -> Result<Response, String> {
    let method = match m.method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if host_header(m).is_none() {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in &m.header {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("User-Agent: lb-agent-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending request: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // Many servers close a `Connection: close` response without TLS close_notify;
            // like curl, accept that once a response has arrived.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(format!("reading response: {e}")),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= MAX_RESPONSE {
            break;
        }
    }
    parse_response(&buf, m.method == HttpMethod::Head)
}

fn parse_response(buf: &[u8], head: bool) -> Result<Response, String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            if buf.is_empty() {
                "empty response".to_owned()
            } else {
                "malformed HTTP response (no end of headers)".to_owned()
            }
        })?;
    let head_text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head_text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|_| version.starts_with("HTTP/"))
        .ok_or_else(|| format!("malformed status line {status:?}"))?;
    let location = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_owned());
    let body = if head {
        Vec::new()
    } else {
        buf[end + 4..].iter().copied().take(BODY_WINDOW).collect()
    };
    Ok(Response {
        code,
        location,
        body,
    })
}

fn judge(m: &Monitor, r: &Response) -> Result<String, String> {
    if !m.expected_codes.matches(r.code) {
        return Err(format!("HTTP {} (expected {})", r.code, m.expected_codes));
    }
    if !m.expected_body.is_empty() {
        let body = String::from_utf8_lossy(&r.body).to_lowercase();
        if !body.contains(&m.expected_body.to_lowercase()) {
            return Err(format!(
                "HTTP {}: body does not contain {:?}",
                r.code, m.expected_body
            ));
        }
    }
    Ok(format!("HTTP {}", r.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_location_and_body() {
        let r = parse_response(
            b"HTTP/1.1 302 Found\r\nLocation: /next\r\nX: y\r\n\r\nhello",
            false,
        )
        .expect("parse");
        assert_eq!(
            (r.code, r.location.as_deref(), r.body.as_slice()),
            (302, Some("/next"), &b"hello"[..])
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"", false).is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false).is_err());
    }

    /// A loopback HTTP server: `/a` redirects to `/b`, `/b` answers 200 "fine".
    async fn redirect_server() -> SocketAddrV4 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
            panic!("v4")
        };
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("GET /a ") {
                    "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/b\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        addr
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
        let tls = Tls::new();
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
        let SocketAddr::V4(addr) = l.local_addr().expect("addr") else {
            panic!("v4")
        };
        drop(l);
        let mut m = monitor(false);
        m.retries = 2;
        let o = check(&m, addr, &Tls::new()).await;
        assert_eq!(o.reason, "connection refused, 3 attempts");
    }

    #[test]
    fn redirect_paths_stay_on_the_origin() {
        assert_eq!(redirect_path("https://example.com/a/b?c"), "/a/b?c");
        assert_eq!(redirect_path("https://example.com"), "/");
        assert_eq!(redirect_path("/x"), "/x");
        assert_eq!(redirect_path("x"), "/x");
    }
}

//! The agent's one outbound HTTP client, for health probes (`health::probe`) and webhooks
//! (`notify`): hyper's HTTP/1.1 client connection over a TCP stream the caller opened, with
//! TLS from rustls on the ring provider. The TLS configurations (verified against the webpki
//! roots, and the `allow_insecure` one that accepts any certificate) are built here and only
//! here.
//!
//! Each request gets its own connection (`Connection: close` is the callers' header): a
//! probe measures one origin's answer, and a webhook is sent once. hyper's pooled client
//! (`hyper_util::client::legacy`) is not used because both callers choose the address to
//! connect to and the TLS server name themselves (a probe connects to the origin's IP and
//! takes SNI from the monitor's Host header), which a per-request connection states directly.

use std::{io, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;

/// Whether TLS checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Against the webpki root store, for the server name given.
    Certificates,
    /// `allow_insecure`: any certificate; handshake signatures are still checked.
    Insecure,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

/// The client: TLS client configurations, built once and cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    verified: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
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

    /// Sends `req` on `stream` (after a TLS handshake with `tls`'s server name when given)
    /// and returns the response head; its body is read from the returned [`Exchange`]. The
    /// request is written as it is: the caller sets `Host` and every other header.
    pub async fn send(
        &self,
        stream: TcpStream,
        tls: Option<(ServerName<'static>, Verify)>,
        req: Request<Full<Bytes>>,
    ) -> Result<Exchange, ClientError> {
        match tls {
            None => exchange(stream, req).await,
            Some((name, verify)) => {
                let cfg = match verify {
                    Verify::Certificates => &self.verified,
                    Verify::Insecure => &self.insecure,
                };
                let s = TlsConnector::from(cfg.clone())
                    .connect(name, stream)
                    .await
                    .map_err(ClientError::Tls)?;
                exchange(s, req).await
            }
        }
    }
}

async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> Result<Exchange, ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Header names go out in Title-Case (`User-Agent`), as the agent has always sent them,
    // rather than hyper's lower case.
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ClientError::Http)?;
    // The connection task ends with the exchange: dropping `Exchange` (done, or timed out
    // by the caller) aborts it, so no socket outlives its request. Once the response is
    // complete it hands back the stream and the bytes hyper read past the response (see
    // `Exchange::body_prefix`).
    let driver = Driver(Some(tokio::spawn(async move {
        let parts = conn.without_shutdown().await.ok()?;
        let rest: Box<dyn AsyncRead + Send + Unpin> = Box::new(parts.io.into_inner());
        Some((parts.read_buf, rest))
    })));
    let response = sender.send_request(req).await.map_err(ClientError::Http)?;
    Ok(Exchange { response, driver })
}

/// The stream after a complete response, and the bytes already read from it.
type Rest = (Bytes, Box<dyn AsyncRead + Send + Unpin>);

struct Driver(Option<JoinHandle<Option<Rest>>>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// A response whose connection is still open for its body.
pub struct Exchange {
    pub response: Response<Incoming>,
    driver: Driver,
}

impl Exchange {
    /// Reads at most the first `limit` bytes of the (decoded) body, then stops and closes
    /// the connection. Many servers close a `Connection: close` response without TLS
    /// close_notify; like curl, that ends the body rather than failing it.
    ///
    /// For 204 and 304 answers HTTP has no body and hyper reads none; a server that sends
    /// one anyway gets it read raw up to `limit`, as the agent's health checks always have
    /// (a `204` whose stray body holds `expected_body` passes). Callers skip this for HEAD.
    pub async fn body_prefix(mut self, limit: usize) -> Result<Vec<u8>, hyper::Error> {
        let status = self.response.status();
        if status == hyper::StatusCode::NO_CONTENT || status == hyper::StatusCode::NOT_MODIFIED {
            return Ok(self.stray_body(limit).await);
        }
        let mut body = Vec::new();
        while body.len() < limit {
            let Some(frame) = self.response.body_mut().frame().await else {
                break;
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) if is_unexpected_eof(&e) => break,
                Err(e) => return Err(e),
            };
            if let Ok(data) = frame.into_data() {
                let take = data.len().min(limit - body.len());
                body.extend_from_slice(&data[..take]);
            }
        }
        Ok(body)
    }

    /// Whatever follows a bodiless response on the connection, up to `limit` bytes or the
    /// end of the stream; empty when there is nothing or it cannot be read.
    async fn stray_body(&mut self, limit: usize) -> Vec<u8> {
        let Some(handle) = self.driver.0.take() else {
            return Vec::new();
        };
        let Ok(Some((read_buf, mut io))) = handle.await else {
            return Vec::new();
        };
        let mut body = read_buf[..read_buf.len().min(limit)].to_vec();
        let mut chunk = [0u8; 4096];
        while body.len() < limit {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n.min(limit - body.len())]),
            }
        }
        body
    }
}

fn is_unexpected_eof(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
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

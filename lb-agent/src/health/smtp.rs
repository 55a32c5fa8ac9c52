//! The `smtp` monitor: a TCP connection to the port, the server's greeting must be 220
//! (RFC 5321 4.2: "220 <domain> Service ready"), then `QUIT` must be answered with 221.
//! No `EHLO` is sent: the greeting and an orderly close show the MTA accepts sessions,
//! and a session without mail leaves nothing but a connect line in the server's log.
//! Replies are parsed as RFC 5321 4.2 writes them: `<3 digits>-<text>` for every line but
//! the last, `<3 digits> <text>` (or the code alone) for the last.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A reply longer than this is not an SMTP server's greeting.
pub const MAX_REPLY: usize = 4096;

/// A complete SMTP reply: its code and the text of its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

/// Why bytes are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("not an SMTP reply: {0:?}")]
    Malformed(String),
    #[error("SMTP reply lines disagree on the code ({0} then {1})")]
    MixedCodes(u16, u16),
    #[error("SMTP reply longer than {MAX_REPLY} bytes")]
    TooLong,
}

/// Parses the reply at the start of `buf`: `Ok(None)` while its last line has not arrived.
pub fn parse_reply(buf: &[u8]) -> Result<Option<Reply>, ReplyError> {
    let mut code = None;
    let mut rest = buf;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        let text = String::from_utf8_lossy(line);
        let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let sep = line.get(3).copied();
        let (Some(digits), Some(b' ' | b'-') | None) = (digits, sep) else {
            return Err(ReplyError::Malformed(text.into_owned()));
        };
        let c = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if let Some(first) = code.filter(|&first| first != c) {
            return Err(ReplyError::MixedCodes(first, c));
        }
        code = Some(c);
        if sep != Some(b'-') {
            return Ok(Some(Reply {
                code: c,
                text: text.get(4..).unwrap_or("").trim().to_owned(),
            }));
        }
    }
    if buf.len() > MAX_REPLY {
        return Err(ReplyError::TooLong);
    }
    Ok(None)
}

/// Reads one reply from `stream`. `what` names it in errors ("greeting").
async fn read_reply(stream: &mut TcpStream, what: &str) -> Result<Reply, String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the SMTP {what}: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed before the SMTP {what}"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = parse_reply(&buf).map_err(|e| e.to_string())? {
            return Ok(r);
        }
    }
}

/// What a reply means for the check: `want` is the healthy code.
pub fn judge(reply: &Reply, want: u16, what: &str) -> Result<(), String> {
    if reply.code == want {
        Ok(())
    } else {
        let text = if reply.text.is_empty() {
            String::new()
        } else {
            format!(" {}", reply.text)
        };
        Err(format!(
            "SMTP {}{text} to {what} (expected {want})",
            reply.code
        ))
    }
}

/// The `smtp` check against `addr`.
pub async fn check(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => format!("connect failed: {e}"),
    })?;
    let greeting = read_reply(&mut stream, "greeting").await?;
    judge(&greeting, 220, "the connection")?;
    stream
        .write_all(b"QUIT\r\n")
        .await
        .map_err(|e| format!("sending QUIT: {e}"))?;
    let bye = read_reply(&mut stream, "answer to QUIT").await?;
    judge(&bye, 221, "QUIT")?;
    Ok("SMTP 220, 221 to QUIT".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> Result<Option<Reply>, ReplyError> {
        Ok(Some(Reply {
            code,
            text: text.to_owned(),
        }))
    }

    #[test]
    fn one_line_replies() {
        assert_eq!(
            parse_reply(b"220 mail.example ESMTP ready\r\n"),
            reply(220, "mail.example ESMTP ready")
        );
        assert_eq!(parse_reply(b"221\r\n"), reply(221, ""), "the code alone");
        assert_eq!(parse_reply(b"554 no\n"), reply(554, "no"), "a bare LF");
    }

    #[test]
    fn multi_line_replies_end_at_the_line_without_a_hyphen() {
        assert_eq!(parse_reply(b"220-mail.example\r\n220-more\r\n"), Ok(None));
        assert_eq!(
            parse_reply(b"220-mail.example\r\n220-more\r\n220 ready\r\n"),
            reply(220, "ready")
        );
        assert_eq!(
            parse_reply(b"220-a\r\n554 b\r\n"),
            Err(ReplyError::MixedCodes(220, 554))
        );
    }

    #[test]
    fn incomplete_and_malformed() {
        assert_eq!(parse_reply(b""), Ok(None));
        assert_eq!(parse_reply(b"220 mail.exa"), Ok(None), "no line end yet");
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 200 OK\r\n",
            b"22 short\r\n",
            b"220x\r\n",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = vec![b'2'; MAX_REPLY + 1];
        assert_eq!(parse_reply(&long), Err(ReplyError::TooLong));
    }

    #[test]
    fn judge_names_code_text_and_step() {
        let r = Reply {
            code: 554,
            text: "no service".into(),
        };
        assert_eq!(
            judge(&r, 220, "the connection"),
            Err("SMTP 554 no service to the connection (expected 220)".into())
        );
        assert_eq!(
            judge(
                &Reply {
                    code: 221,
                    text: String::new()
                },
                221,
                "QUIT"
            ),
            Ok(())
        );
    }

    /// A loopback SMTP server that sends `greeting`, reads one line and answers `bye`.
    async fn server(greeting: &'static [u8], bye: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let _ = s.write_all(greeting).await;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap_or(0);
            if &buf[..n] == b"QUIT\r\n" {
                let _ = s.write_all(bye).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_session_on_loopback() {
        let ok = check(server(b"220-mx\r\n220 ready\r\n", b"221 bye\r\n").await).await;
        assert_eq!(ok, Ok("SMTP 220, 221 to QUIT".into()));
        let busy = check(server(b"554 go away\r\n", b"221 bye\r\n").await).await;
        assert_eq!(
            busy,
            Err("SMTP 554 go away to the connection (expected 220)".into())
        );
        let rude = check(server(b"220 ready\r\n", b"").await).await;
        assert_eq!(
            rude,
            Err("connection closed before the SMTP answer to QUIT".into())
        );
    }
}

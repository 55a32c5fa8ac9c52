//! ICMP echo for the `icmp_ping` and `udp_icmp` monitors: echo requests built and replies
//! recognised (pure), one echo exchange over a raw socket, and the `udp_icmp` check.
//!
//! The socket is `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)` (`AF_INET6`/`IPPROTO_ICMPV6` for
//! an IPv6 origin), which needs root or `CAP_NET_RAW`; without them the kernel's ping socket
//! (`SOCK_DGRAM`, allowed by `net.ipv4.ping_group_range`) is tried. The socket is connected
//! to the origin, so the kernel hands it only packets from that address; a reply is ours
//! when it is an echo reply with our sequence number and payload token (and, on a raw
//! socket, our identifier: a ping socket rewrites the identifier itself). Every other
//! packet is skipped until the monitor's timeout ends the attempt. An ICMP error about our
//! request (host unreachable) reaches a connected socket as a receive error and fails the
//! attempt at once.
//!
//! `udp_icmp` sends one empty UDP datagram from a connected UDP socket to the origin's port,
//! then an echo request. Linux reports an ICMP port unreachable for a datagram of a
//! connected UDP socket as `ECONNREFUSED` on the socket's next receive
//! (`__udp4_lib_err`/`__udp6_lib_err` set `sk_err` for a connected socket), so the check
//! is down when that error arrives before the echo reply or is pending right after it, and
//! up when the echo reply comes back without it. The origin's port-unreachable answer is
//! sent before its echo reply (same path, same order), but origins rate-limit ICMP errors
//! (Linux: `net.ipv4.icmp_ratelimit`, by default 1 per second per destination after a
//! burst of 6), so a closed port probed more often than that can pass some checks.

use std::{
    io::{self, Read},
    net::{IpAddr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::unix::AsyncFd, net::UdpSocket};

/// ICMPv4 echo request and reply types (RFC 792).
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
/// ICMPv6 echo request and reply types (RFC 4443).
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Bytes of payload after the 8-byte header: a token that ties a reply to its request.
pub const TOKEN_LEN: usize = 8;
/// Receive buffer: an IPv4 header (up to 60 bytes) and an echo of ours fit with room to spare.
const RECV_BUF: usize = 512;

/// One echo request's identity: what the reply must carry back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    pub id: u16,
    pub seq: u16,
    pub token: [u8; TOKEN_LEN],
}

impl Echo {
    /// A fresh request identity (random identifier, sequence and token).
    pub fn random() -> Self {
        let mut token = [0u8; TOKEN_LEN];
        fastrand::fill(&mut token);
        Self {
            id: fastrand::u16(..),
            seq: fastrand::u16(..),
            token,
        }
    }

    /// The echo request: type, code 0, checksum, identifier, sequence, token. An ICMPv4
    /// checksum is computed here (RFC 792); for ICMPv6 it stays 0 because the kernel fills it
    /// in for raw and ping sockets alike (it covers a pseudo-header, RFC 4443 2.3).
    pub fn request(&self, v6: bool) -> Vec<u8> {
        let mut p = Vec::with_capacity(8 + TOKEN_LEN);
        p.push(if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 });
        p.push(0);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.id.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.token);
        if !v6 {
            let c = checksum(&p);
            p[2..4].copy_from_slice(&c.to_be_bytes());
        }
        p
    }

    /// Whether `packet` (as a socket of `kind` delivers it) is the echo reply to this request.
    pub fn is_reply(&self, packet: &[u8], v6: bool, kind: SocketKind) -> bool {
        let Some(icmp) = icmp_payload(packet, v6, kind) else {
            return false;
        };
        let reply_type = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
        icmp.len() >= 8 + TOKEN_LEN
            && icmp[0] == reply_type
            && icmp[1] == 0
            // A ping socket picks the identifier itself; a raw socket sees every echo reply.
            && (kind == SocketKind::Ping || icmp[4..6] == self.id.to_be_bytes())
            && icmp[6..8] == self.seq.to_be_bytes()
            && icmp[8..8 + TOKEN_LEN] == self.token
    }
}

/// Which kind of socket carries the echo: it decides what a received packet starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_RAW`: an IPv4 raw socket receives the IP header too; an IPv6 one does not.
    Raw,
    /// `SOCK_DGRAM` ping socket: the ICMP message alone.
    Ping,
}

/// The ICMP message in `packet`: past the IPv4 header (its length from IHL) on an IPv4 raw
/// socket, the whole packet otherwise. `None` when the header is cut short.
pub fn icmp_payload(packet: &[u8], v6: bool, kind: SocketKind) -> Option<&[u8]> {
    if v6 || kind == SocketKind::Ping {
        return Some(packet);
    }
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if ihl < 20 || packet.first()? >> 4 != 4 {
        return None;
    }
    packet.get(ihl..)
}

/// The Internet checksum (RFC 1071): ones' complement of the ones' complement sum of
/// 16-bit big-endian words, an odd last byte padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// An ICMP socket connected to `ip`: raw if allowed, else a ping socket.
fn open(ip: IpAddr) -> io::Result<(AsyncFd<Socket>, SocketKind)> {
    let (domain, proto) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (socket, kind) = match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => (s, SocketKind::Raw),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => (
            Socket::new(domain, Type::DGRAM, Some(proto))?,
            SocketKind::Ping,
        ),
        Err(e) => return Err(e),
    };
    socket.set_nonblocking(true)?;
    socket.connect(&SocketAddr::new(ip, 0).into())?;
    // SAFETY: the AsyncFd owns `socket`, whose descriptor stays open and the same until the
    // AsyncFd drops it.
    let fd = unsafe { AsyncFd::register(socket) }?;
    Ok((fd, kind))
}

/// Why an echo exchange failed, as the origin's status shows it.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EHOSTUNREACH) => "ICMP host unreachable".to_owned(),
        Some(libc::ENETUNREACH) => "ICMP network unreachable".to_owned(),
        Some(libc::EPERM | libc::EACCES) => {
            format!("cannot open an ICMP socket ({e}); ICMP monitors need root or CAP_NET_RAW")
        }
        _ => format!("ICMP echo: {e}"),
    }
}

/// Sends one echo request to `ip` and waits for its reply (the caller bounds the wait with
/// the monitor's timeout).
pub async fn ping(ip: IpAddr) -> Result<(), String> {
    let (fd, kind) = open(ip).map_err(|e| describe(&e))?;
    let echo = Echo::random();
    let v6 = ip.is_ipv6();
    let request = echo.request(v6);
    loop {
        let mut guard = fd.writable().await.map_err(|e| describe(&e))?;
        match guard.try_io(|s| s.get_ref().send(&request)) {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_would_block) => {}
        }
    }
    let mut buf = [0u8; RECV_BUF];
    loop {
        let mut guard = fd.readable().await.map_err(|e| describe(&e))?;
        match guard.try_io(|s| {
            let mut sock: &Socket = s.get_ref();
            sock.read(&mut buf)
        }) {
            Ok(Ok(n)) if echo.is_reply(&buf[..n], v6, kind) => return Ok(()),
            Ok(Ok(_)) => {} // another echo's reply, or another ICMP message
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_would_block) => {}
        }
    }
}

/// Why the UDP socket failed: a port unreachable is the expected way down.
fn describe_udp(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "ICMP port unreachable".to_owned(),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) => "ICMP host unreachable".to_owned(),
            _ => format!("UDP: {e}"),
        },
    }
}

/// The `udp_icmp` check: an empty datagram to `addr`, then an echo request to its address;
/// up when the echo reply comes back and no port unreachable came for the datagram.
pub async fn udp_icmp(addr: SocketAddr) -> Result<String, String> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = UdpSocket::bind(local).await.map_err(|e| describe_udp(&e))?;
    udp.connect(addr).await.map_err(|e| describe_udp(&e))?;
    udp.send(&[]).await.map_err(|e| describe_udp(&e))?;
    // Datagrams the service sends back are fine; an error on the socket is the verdict.
    let watch = async {
        let mut buf = [0u8; 64];
        loop {
            if let Err(e) = udp.recv(&mut buf).await {
                return e;
            }
        }
    };
    tokio::select! {
        biased;
        e = watch => Err(describe_udp(&e)),
        r = ping(addr.ip()) => {
            r?;
            // An error processed between the last poll and the echo reply is pending still.
            let mut buf = [0u8; 64];
            match udp.try_recv(&mut buf) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(describe_udp(&e)),
                _ => Ok("ICMP echo reply, no port unreachable".to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: Echo = Echo {
        id: 0x1234,
        seq: 0x0102,
        token: *b"lbagent!",
    };

    /// `request` with the type turned into the reply's and, for a raw IPv4 socket, an IPv4
    /// header of `ihl` words in front.
    fn reply_of(v6: bool, ihl: u8) -> Vec<u8> {
        let mut icmp = ECHO.request(v6);
        icmp[0] = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
        if ihl == 0 {
            return icmp;
        }
        let mut p = vec![0u8; usize::from(ihl) * 4];
        p[0] = 0x40 | ihl;
        p.extend(icmp);
        p
    }

    #[test]
    fn checksum_matches_rfc_1071_examples() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is !ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // An odd byte is padded with zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
        // A packet with its checksum filled in sums to zero.
        assert_eq!(checksum(&ECHO.request(false)), 0);
    }

    #[test]
    fn echo_request_layout() {
        let v4 = ECHO.request(false);
        assert_eq!(&v4[..2], &[8, 0]);
        assert_eq!(&v4[4..8], &[0x12, 0x34, 0x01, 0x02]);
        assert_eq!(&v4[8..], b"lbagent!");
        let v6 = ECHO.request(true);
        assert_eq!(
            &v6[..4],
            &[128, 0, 0, 0],
            "the kernel fills the ICMPv6 checksum"
        );
        assert_eq!(v6.len(), 8 + TOKEN_LEN);
    }

    #[test]
    fn a_raw_ipv4_reply_is_found_past_any_header_length() {
        for ihl in [5, 6, 15] {
            assert!(
                ECHO.is_reply(&reply_of(false, ihl), false, SocketKind::Raw),
                "ihl {ihl}"
            );
        }
        // A ping socket and an IPv6 raw socket deliver the ICMP message alone.
        assert!(ECHO.is_reply(&reply_of(false, 0), false, SocketKind::Ping));
        assert!(ECHO.is_reply(&reply_of(true, 0), true, SocketKind::Raw));
    }

    #[test]
    fn only_our_reply_counts() {
        let ours = reply_of(false, 5);
        // Our own request (type 8) looped back, another id, seq or token, a truncated one.
        let mut request = ours.clone();
        request[20] = ECHO_REQUEST_V4;
        assert!(!ECHO.is_reply(&request, false, SocketKind::Raw));
        for at in [24, 26, 28] {
            let mut other = ours.clone();
            other[at] ^= 0xff;
            assert!(!ECHO.is_reply(&other, false, SocketKind::Raw), "byte {at}");
        }
        assert!(!ECHO.is_reply(&ours[..ours.len() - 1], false, SocketKind::Raw));
        assert!(!ECHO.is_reply(&[0x45, 0], false, SocketKind::Raw));
        assert!(!ECHO.is_reply(&[], false, SocketKind::Raw));
        // A ping socket's identifier is the kernel's; sequence and token still decide.
        let mut other_id = reply_of(false, 0);
        other_id[4] ^= 0xff;
        assert!(ECHO.is_reply(&other_id, false, SocketKind::Ping));
        // An ICMPv4 reply type means nothing on an ICMPv6 socket.
        assert!(!ECHO.is_reply(&reply_of(false, 0), true, SocketKind::Raw));
    }

    #[test]
    fn an_ipv4_header_is_checked_before_it_is_skipped() {
        assert_eq!(icmp_payload(&[0x44, 0, 0], false, SocketKind::Raw), None);
        assert_eq!(icmp_payload(&[0x65, 0, 0], false, SocketKind::Raw), None);
        assert_eq!(icmp_payload(&[0x45; 4], false, SocketKind::Raw), None);
    }
}

/// Loopback runs of the checks. They need an ICMP socket: root or CAP_NET_RAW, or a ping
/// socket that `net.ipv4.ping_group_range` allows; without one they say so and pass (the
/// namespace tests in `tests/health.rs` run them as root).
#[cfg(test)]
mod loopback {
    use super::*;

    fn icmp_allowed() -> bool {
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4));
        let ping = || Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4));
        let ok = raw.is_ok() || ping().is_ok();
        if !ok {
            eprintln!("no ICMP socket for this user: loopback ICMP checks skipped");
        }
        ok
    }

    fn bounded<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(std::time::Duration::from_secs(2), f)
    }

    #[tokio::test]
    async fn ping_and_udp_icmp_on_loopback() {
        if !icmp_allowed() {
            return;
        }
        let lo = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        assert_eq!(bounded(ping(lo)).await.expect("in time"), Ok(()));
        let open = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let up = bounded(udp_icmp(open.local_addr().expect("addr")))
            .await
            .expect("in time");
        assert_eq!(up, Ok("ICMP echo reply, no port unreachable".to_owned()));
        let closed = open.local_addr().expect("addr");
        drop(open);
        let down = bounded(udp_icmp(closed)).await.expect("in time");
        assert_eq!(down, Err("ICMP port unreachable".to_owned()));
    }

    /// The same over IPv6 (ICMPv6 echo 128/129, the kernel's checksum), where the host has
    /// `::1`.
    #[tokio::test]
    async fn ping_and_udp_icmp_on_ipv6_loopback() {
        let Ok(open) = std::net::UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        if !icmp_allowed() || Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).is_err()
        {
            return;
        }
        let lo = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(bounded(ping(lo)).await.expect("in time"), Ok(()));
        let addr = open.local_addr().expect("addr");
        let up = bounded(udp_icmp(addr)).await.expect("in time");
        assert_eq!(up, Ok("ICMP echo reply, no port unreachable".to_owned()));
        drop(open);
        let down = bounded(udp_icmp(addr)).await.expect("in time");
        assert_eq!(down, Err("ICMP port unreachable".to_owned()));
    }
}

//! IPv6 frames for the fuzzer: builders (TCP, UDP and ICMPv6 with extension headers), an
//! independent checksum verifier (the IPv6 pseudo-header, RFC 8200 §8.1, over the upper
//! layer found by walking the extension headers), the mutations of IPv6 headers and
//! chains, and the IPv6 part of the generator and of the rewrite check.

use lb_common::{event, FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use lb_testbed::Side;

use crate::frame::{Rng, ACK, FIN, PSH, RST, SYN};

/// Offset of the IPv6 header in an untagged frame, and of the upper layer when there are
/// no extension headers.
pub const IP6: usize = 14;
pub const L4: usize = 54;
pub const ICMPV6: u8 = 58;

/// `2001:db8:<net>::<host>`: the addresses of `FibBed::add_ipv6` (`2001:db8:1::/64` on
/// the client side, `2001:db8:11::/64` on the origin side).
pub const fn v6(net: u8, host: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}

pub const VIP6: [u8; 16] = v6(0xa, 0x10);
pub const SNAT6: [u8; 16] = v6(5, 1);
pub const CLIENTS6: [[u8; 16]; 3] = [v6(1, 2), v6(1, 3), v6(1, 4)];
/// Origins of pool `web6` (port 8080) and `dns6` (port 5353), on the origin side.
pub const O6: [[u8; 16]; 2] = [v6(0x11, 2), v6(0x11, 3)];
/// A router on the origin side (sends ICMPv6 errors), and the host's own addresses.
pub const R6: [u8; 16] = v6(0x11, 0xfe);
pub const LB6_A: [u8; 16] = v6(1, 1);
/// A neighbour on the client side that is no VIP (transit to it must not be routed).
pub const OTHER6: [u8; 16] = v6(1, 9);
/// TCP VIP ports and UDP VIP ports on `VIP6`; the origins' ports for each.
pub const TCP6_PORTS: [(u16, u16); 1] = [(80, 8080)];
pub const UDP6_PORTS: [(u16, u16); 1] = [(53, 5353)];

/// The pools and load balancers of the IPv6 VIP, for the fuzzer's config.
pub const CONFIG: &str = r#"
[[pools]]
name = "web6"
origins = [
  { name = "w6a", address = "2001:db8:11::2", port = 8080 },
  { name = "w6b", address = "2001:db8:11::3", port = 8080 },
]

[[pools]]
name = "dns6"
origins = [
  { name = "d6a", address = "2001:db8:11::2", port = 5353 },
  { name = "d6b", address = "2001:db8:11::3", port = 5353 },
]

[[load_balancers]]
name = "www6"
address = "2001:db8:a::10"
port = 80
default_pools = ["web6"]

[[load_balancers]]
name = "dns6"
protocol = "udp"
address = "2001:db8:a::10"
port = 53
default_pools = ["dns6"]
"#;

/// The SNAT addresses of the config: one per family.
pub const SNAT_ADDRESSES: &str = "snat_address = [\"10.0.0.1\", \"2001:db8:5::1\"]";

/// The MAC of an IPv6 neighbour (clients, origins, the router): from its last byte.
pub const fn mac6(a: [u8; 16]) -> [u8; 6] {
    [2, 6, 0, a[5], 0, a[15]]
}

/// `a` as IPv4-mapped (`::ffff:a.b.c.d`).
pub const fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded below 0x10000")]
    let r = s as u16;
    r
}

/// Offset of the checksum field in an upper-layer header of protocol `proto`.
pub const fn sum_offset(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        ICMPV6 => Some(2),
        _ => None,
    }
}

/// The one's-complement sum over the IPv6 pseudo-header and `l4` (checksum field included).
fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut s = sum(src, 0);
    s = sum(dst, s);
    s += l4.len() as u64 + u64::from(proto);
    fold(sum(l4, s))
}

/// Writes the checksum of the upper-layer bytes `l4` (protocol `proto`) between `src` and
/// `dst`.
pub fn set_sum(src: &[u8], dst: &[u8], proto: u8, l4: &mut [u8]) {
    let Some(o) = sum_offset(proto) else { return };
    if l4.len() < o + 2 {
        return;
    }
    l4[o..o + 2].copy_from_slice(&[0, 0]);
    let c = !pseudo_sum(src, dst, proto, l4);
    let c = if c == 0 && proto == IPPROTO_UDP {
        0xffff
    } else {
        c
    };
    l4[o..o + 2].copy_from_slice(&c.to_be_bytes());
}

/// A TCP header (20 bytes, no options) and `payload`, checksum 0.
pub fn tcp_l4(ports: (u16, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + payload.len());
    v.extend_from_slice(&ports.0.to_be_bytes());
    v.extend_from_slice(&ports.1.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ack.to_be_bytes());
    v.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

/// A UDP header and `payload`, checksum 0.
pub fn udp_l4(ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("datagram length");
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&ports.0.to_be_bytes());
    v.extend_from_slice(&ports.1.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// An ICMPv6 message: type, code, the type-specific word, `body`; checksum 0.
pub fn icmp_l4(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, code, 0, 0];
    v.extend_from_slice(&rest);
    v.extend_from_slice(body);
    v
}

/// An IPv6 frame: Ethernet, the fixed header, the extension headers `ext` (kind and bytes;
/// each next-header byte is filled in here) and the upper layer `l4` of `proto`, whose
/// checksum is computed (over the pseudo-header with `dst`).
pub fn build(
    (smac, dmac): ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    hop: u8,
    proto: u8,
    mut l4: Vec<u8>,
    ext: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    set_sum(&src, &dst, proto, &mut l4);
    let ext_len: usize = ext.iter().map(|e| e.1.len()).sum();
    let plen = u16::try_from(ext_len + l4.len()).unwrap_or(u16::MAX);
    let mut v = Vec::with_capacity(L4 + ext_len + l4.len());
    v.extend_from_slice(&dmac);
    v.extend_from_slice(&smac);
    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    v.extend_from_slice(&plen.to_be_bytes());
    v.push(ext.first().map_or(proto, |e| e.0));
    v.push(hop);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut h = bytes.clone();
        if let Some(b) = h.first_mut() {
            *b = ext.get(i + 1).map_or(proto, |n| n.0);
        }
        v.extend(h);
    }
    v.extend(l4);
    v
}

/// The IPv6 packet (from the fixed header) of `frame`, for a quote.
pub fn packet(frame: &[u8]) -> &[u8] {
    &frame[IP6..]
}

/// What a receiver finds in an IPv6 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The upper-layer protocol, its offset in the frame, and its length by the payload
    /// length (which fits the frame).
    pub proto: u8,
    pub l4: usize,
    pub l4_len: usize,
    /// Extension headers before it (bytes).
    pub ext_len: usize,
    pub fragment: bool,
}

/// Parses an untagged IPv6 frame as a receiver does; `None` if it is not IPv6, its payload
/// length runs past the frame, or the extension header chain is cut short, over-long
/// (more than 8) or runs past the payload.
pub fn parse(f: &[u8]) -> Option<Parsed> {
    parse_with(f, false)
}

/// `parse`, but a payload length that runs past the frame is taken as reaching its end
/// (the lie is counted by the caller, as the IPv4 total length's is).
pub fn parse_lenient(f: &[u8]) -> Option<Parsed> {
    parse_with(f, true)
}

/// Does the payload length of an IPv6 frame disagree with the frame's length?
pub fn length_lies(f: &[u8]) -> bool {
    f.len() >= L4 && usize::from(u16::from_be_bytes([f[IP6 + 4], f[IP6 + 5]])) + L4 != f.len()
}

fn parse_with(f: &[u8], lenient: bool) -> Option<Parsed> {
    if f.len() < L4 || f[12..14] != [0x86, 0xdd] || f[IP6] >> 4 != 6 {
        return None;
    }
    let mut plen = usize::from(u16::from_be_bytes([f[IP6 + 4], f[IP6 + 5]]));
    if L4 + plen > f.len() {
        if !lenient {
            return None;
        }
        plen = f.len() - L4;
    }
    let end = L4 + plen;
    let mut next = f[IP6 + 6];
    let mut off = L4;
    let mut fragment = false;
    for _ in 0..=8 {
        let len = match next {
            0 | 60 | 43 => usize::from(*f.get(off + 1)?) * 8 + 8,
            44 => {
                fragment = true;
                8
            }
            51 => usize::from(*f.get(off + 1)?) * 4 + 8,
            _ => {
                return Some(Parsed {
                    src: f[IP6 + 8..IP6 + 24].try_into().ok()?,
                    dst: f[IP6 + 24..IP6 + 40].try_into().ok()?,
                    proto: next,
                    l4: off,
                    l4_len: end - off,
                    ext_len: off - L4,
                    fragment,
                })
            }
        };
        if off + len > end {
            return None;
        }
        next = f[off];
        off += len;
    }
    None
}

/// An upper-layer checksum as a receiver reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sum {
    Good,
    Bad,
    /// A UDP checksum of 0, which IPv6 does not allow (RFC 8200 §8.1).
    Zero,
}

/// The upper layer's checksum of a parsed frame (TCP, UDP by its UDP length, ICMPv6);
/// `None` for another protocol, a fragment, or a header that does not fit.
pub fn l4_sum(f: &[u8], p: &Parsed) -> Option<Sum> {
    let o = sum_offset(p.proto)?;
    if p.fragment || p.l4_len < o + 2 {
        return None;
    }
    let mut l4 = &f[p.l4..p.l4 + p.l4_len];
    if p.proto == IPPROTO_UDP {
        let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
        if ulen < 8 || ulen > l4.len() {
            return None;
        }
        l4 = &l4[..ulen];
        if l4[6..8] == [0, 0] {
            return Some(Sum::Zero);
        }
    }
    if p.proto == IPPROTO_TCP && l4.len() < 20 {
        return None;
    }
    Some(if pseudo_sum(&p.src, &p.dst, p.proto, l4) == 0xffff {
        Sum::Good
    } else {
        Sum::Bad
    })
}

/// Extension headers the mutations insert: (next-header value, bytes, what).
fn ext_header(rng: &mut Rng) -> (u8, Vec<u8>, &'static str) {
    match rng.below(12) {
        0 => (0, vec![0, 0, 1, 4, 0, 0, 0, 0], "hop-by-hop PadN"),
        1 => (60, vec![0, 0, 1, 4, 0, 0, 0, 0], "dest options PadN"),
        2 => (
            60,
            vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "dest options 16",
        ),
        3 => (43, vec![0, 0, 4, 0, 0, 0, 0, 0], "routing, segments left 0"),
        4 => {
            let mut h = vec![0, 2, 0, 1, 0, 0, 0, 0];
            h.extend_from_slice(&VIP6);
            (43, h, "routing, segments left 1")
        }
        5 => (44, vec![0, 0, 0, 1, 0, 0, 0, 7], "fragment, first (M=1)"),
        6 => (
            44,
            vec![0, 0, 0x05, 0x00, 0, 0, 0, 9],
            "fragment, offset 160",
        ),
        7 => (44, vec![0, 0, 0, 0, 0, 0, 0, 3], "atomic fragment"),
        8 => (51, vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1], "AH"),
        9 => (
            0,
            vec![0, 200, 1, 4, 0, 0, 0, 0],
            "hop-by-hop claiming 1608 bytes",
        ),
        10 => (60, rng.bytes(8), "dest options, garbage"),
        _ => (59, Vec::new(), "no next header"),
    }
}

/// Inserts extension headers after the fixed header of an IPv6 frame (payload length
/// kept consistent), as `build` does.
fn insert_ext(f: &mut Vec<u8>, ext: &[(u8, Vec<u8>)]) {
    let transport = f[IP6 + 6];
    let mut chain = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut h = bytes.clone();
        if let Some(b) = h.first_mut() {
            *b = ext.get(i + 1).map_or(transport, |n| n.0);
        }
        chain.extend(h);
    }
    if let Some(first) = ext.first() {
        f[IP6 + 6] = first.0;
    }
    let plen = u16::from_be_bytes([f[IP6 + 4], f[IP6 + 5]]);
    let plen = plen.saturating_add(u16::try_from(chain.len()).unwrap_or(u16::MAX));
    f[IP6 + 4..IP6 + 6].copy_from_slice(&plen.to_be_bytes());
    f.splice(L4..L4, chain);
}

/// Mutates an IPv6 frame (built without extension headers) in one or two ways; returns
/// what was done.
pub fn mutate(rng: &mut Rng, f: &mut Vec<u8>) -> String {
    let mut done = Vec::new();
    for _ in 0..=rng.below(2) {
        if f.len() < L4 {
            break;
        }
        match rng.below(14) {
            0..=3 => {
                let n = if rng.chance(20) {
                    9 + rng.below(4)
                } else {
                    1 + rng.below(3)
                };
                let ext: Vec<(u8, Vec<u8>)> = (0..n)
                    .map(|_| {
                        let (k, b, what) = ext_header(rng);
                        done.push(what.to_string());
                        (k, b)
                    })
                    .collect();
                insert_ext(f, &ext);
                done.push(format!("{n} extension headers"));
            }
            4 => {
                let (k, b, what) = ext_header(rng);
                insert_ext(f, &[(k, b)]);
                let cut = L4 + rng.below(8);
                f.truncate(cut);
                let plen = u16::try_from(cut - L4).expect("small");
                f[IP6 + 4..IP6 + 6].copy_from_slice(&plen.to_be_bytes());
                done.push(format!("{what} cut to {} bytes", cut - L4));
            }
            5 => {
                let n = IP6 + rng.below(f.len() - IP6);
                f.truncate(n);
                done.push(format!("truncated to {n}"));
            }
            6 => {
                let v = rng.pick(&[0u8, 4, 5, 7, 15]);
                f[IP6] = (v << 4) | (f[IP6] & 0xf);
                done.push(format!("version {v}"));
            }
            7 => {
                let plen = u16::from_be_bytes([f[IP6 + 4], f[IP6 + 5]]);
                let lie = match rng.below(4) {
                    0 => 0,
                    1 => plen.wrapping_add(1 + rng.u16() % 64),
                    2 => plen.saturating_sub(1 + rng.u16() % 16),
                    _ => rng.u16(),
                };
                f[IP6 + 4..IP6 + 6].copy_from_slice(&lie.to_be_bytes());
                done.push(format!("payload length {plen} -> {lie}"));
            }
            8 => {
                let a = rng.pick(&[
                    mapped([10, 0, 0, 10]),
                    mapped([10, 0, 0, 1]),
                    mapped([10, 0, 1, 2]),
                    mapped([10, 0, 11, 2]),
                ]);
                let at = if rng.chance(50) { IP6 + 8 } else { IP6 + 24 };
                f[at..at + 16].copy_from_slice(&a);
                if let Some(p) = parse(f) {
                    let (s, d) = (p.src, p.dst);
                    let l4 = p.l4;
                    set_sum(&s, &d, p.proto, &mut f[l4..l4 + p.l4_len]);
                }
                done.push(format!(
                    "IPv4-mapped {}",
                    if at == IP6 + 8 {
                        "source"
                    } else {
                        "destination"
                    }
                ));
            }
            9 => {
                let h = rng.pick(&[0u8, 1, 2, 255]);
                f[IP6 + 7] = h;
                done.push(format!("hop limit {h}"));
            }
            10 => {
                // Traffic class and flow label: a rewrite keeps them.
                let b = rng.bytes(3);
                f[IP6] = (f[IP6] & 0xf0) | (b[0] & 0xf);
                f[IP6 + 1] = b[1];
                f[IP6 + 2] = b[2];
                done.push("traffic class and flow label".into());
            }
            11 => {
                if let Some(p) = parse(f) {
                    if p.proto == IPPROTO_TCP && p.l4_len >= 20 {
                        let flags = rng.u8();
                        f[p.l4 + 13] = flags;
                        let (s, d, l4) = (p.src, p.dst, p.l4);
                        set_sum(&s, &d, p.proto, &mut f[l4..l4 + p.l4_len]);
                        done.push(format!("TCP flags {flags:#04x}"));
                        continue;
                    }
                }
                done.push("(no TCP flags to set)".into());
            }
            12 => {
                if let Some(p) = parse(f) {
                    if let Some(o) = sum_offset(p.proto) {
                        if p.l4_len >= o + 2 {
                            f[p.l4 + o] ^= 1 + rng.u8() % 255;
                            done.push("upper-layer checksum corrupted".into());
                            continue;
                        }
                    }
                }
                done.push("(no checksum to corrupt)".into());
            }
            _ => {
                let n = 1 + rng.below(40);
                f.extend(rng.bytes(n));
                done.push(format!("{n} bytes of trailing junk"));
            }
        }
    }
    done.join(", ")
}

/// A flow over IPv6 the generator knows (TCP from a clean handshake, UDP from a first
/// datagram).
#[derive(Clone, Debug)]
pub struct Known6 {
    pub proto: u8,
    pub client: [u8; 16],
    pub cport: u16,
    pub vport: u16,
    pub origin: [u8; 16],
    pub oport: u16,
    pub snat_port: u16,
    pub cseq: u32,
    pub oseq: u32,
}

impl crate::Fuzzer<'_> {
    /// A frame from `src` (at its MAC) arriving on `side`.
    fn frame6(
        &self,
        side: Side,
        (src, dst): ([u8; 16], [u8; 16]),
        proto: u8,
        l4: Vec<u8>,
    ) -> Vec<u8> {
        build(
            (mac6(src), self.lb_mac(side)),
            (src, dst),
            64,
            proto,
            l4,
            &[],
        )
    }

    /// A segment of a known TCP flow from the client or the origin.
    fn seg6(&self, k: &Known6, from_client: bool, flags: u8, payload: &[u8]) -> (Vec<u8>, Side) {
        if from_client {
            let l4 = tcp_l4((k.cport, k.vport), k.cseq, k.oseq, flags, payload);
            (
                self.frame6(Side::A, (k.client, VIP6), IPPROTO_TCP, l4),
                Side::A,
            )
        } else {
            let l4 = tcp_l4((k.oport, k.snat_port), k.oseq, k.cseq, flags, payload);
            (
                self.frame6(Side::B, (k.origin, SNAT6), IPPROTO_TCP, l4),
                Side::B,
            )
        }
    }

    fn dgram6(&mut self, k: &Known6, from_client: bool) -> (Vec<u8>, Side) {
        let n = self.rng.pick(&[0, 12, 100, 1200, 1452]);
        let payload = self.rng.bytes(n);
        if from_client {
            let l4 = udp_l4((k.cport, k.vport), &payload);
            (
                self.frame6(Side::A, (k.client, VIP6), IPPROTO_UDP, l4),
                Side::A,
            )
        } else {
            let l4 = udp_l4((k.oport, k.snat_port), &payload);
            (
                self.frame6(Side::B, (k.origin, SNAT6), IPPROTO_UDP, l4),
                Side::B,
            )
        }
    }

    /// Runs the first packet of a new IPv6 flow and learns it from its rewrite.
    fn first6(
        &mut self,
        f: &[u8],
        what: &str,
        proto: u8,
        client: [u8; 16],
        cport: u16,
        vport: u16,
    ) -> Option<Known6> {
        let (v, out) = self.step(f, Side::A, what)?;
        if !(v == crate::XDP_TX || v == crate::XDP_REDIRECT) || out.len() < L4 + 4 {
            return None;
        }
        let p = parse(&out)?;
        if p.src != SNAT6 || !O6.contains(&p.dst) {
            return None;
        }
        Some(Known6 {
            proto,
            client,
            cport,
            vport,
            origin: p.dst,
            oport: u16::from_be_bytes([out[L4 + 2], out[L4 + 3]]),
            snat_port: u16::from_be_bytes([out[L4], out[L4 + 1]]),
            cseq: 0,
            oseq: 0,
        })
    }

    /// A clean IPv6 handshake to `stage` (as `establish`: 0 SYN, 1 SYN-ACK, 2 established,
    /// 3 closed by FINs, 4 reset by the client).
    pub(crate) fn establish6(&mut self, client: [u8; 16], cport: u16, stage: u32) {
        let (vport, _) = TCP6_PORTS[0];
        let isn = self.rng.u32();
        let syn = self.frame6(
            Side::A,
            (client, VIP6),
            IPPROTO_TCP,
            tcp_l4((cport, vport), isn, 0, SYN, &[]),
        );
        let Some(mut k) = self.first6(&syn, "IPv6 set-up SYN", IPPROTO_TCP, client, cport, vport)
        else {
            return;
        };
        k.cseq = isn.wrapping_add(1);
        k.oseq = self.rng.u32();
        if stage >= 1 {
            let (f, s) = self.seg6(&k, false, SYN | ACK, &[]);
            self.step(&f, s, "IPv6 set-up SYN-ACK");
            k.oseq = k.oseq.wrapping_add(1);
        }
        if stage >= 2 {
            let (f, s) = self.seg6(&k, true, ACK, &[]);
            self.step(&f, s, "IPv6 set-up ACK");
        }
        match stage {
            3 => {
                for from_client in [true, false] {
                    let (f, s) = self.seg6(&k, from_client, FIN | ACK, &[]);
                    self.step(&f, s, "IPv6 set-up FIN");
                    if from_client {
                        k.cseq = k.cseq.wrapping_add(1);
                    } else {
                        k.oseq = k.oseq.wrapping_add(1);
                    }
                }
            }
            4 => {
                let (f, s) = self.seg6(&k, true, RST, &[]);
                self.step(&f, s, "IPv6 set-up RST");
            }
            _ => {}
        }
        if self.known6.len() >= 64 {
            self.known6.swap_remove(0);
        }
        self.known6.push(k);
    }

    /// A first IPv6 datagram (and an answer, if `answer`).
    pub(crate) fn open_udp6(&mut self, client: [u8; 16], cport: u16, answer: bool) {
        let (vport, _) = UDP6_PORTS[0];
        let f = self.frame6(
            Side::A,
            (client, VIP6),
            IPPROTO_UDP,
            udp_l4((cport, vport), b"query"),
        );
        let Some(k) = self.first6(
            &f,
            "IPv6 set-up datagram",
            IPPROTO_UDP,
            client,
            cport,
            vport,
        ) else {
            return;
        };
        if answer {
            let (f, s) = self.dgram6(&k, false);
            self.step(&f, s, "IPv6 set-up answer");
        }
        if self.known6.len() >= 64 {
            self.known6.swap_remove(0);
        }
        self.known6.push(k);
    }

    fn pick_known6(&mut self, proto: Option<u8>) -> Option<Known6> {
        let ks: Vec<&Known6> = self
            .known6
            .iter()
            .filter(|k| proto.is_none_or(|p| p == k.proto))
            .collect();
        (!ks.is_empty()).then(|| ks[self.rng.below(ks.len())].clone())
    }

    /// An ICMPv6 error about a known (or forged) flow, quoting what the load balancer sent:
    /// from the origin side to the SNAT address, or from the client side to the VIP.
    fn icmp6_error(&mut self) -> Option<(Vec<u8>, Side, String)> {
        let k = self.pick_known6(None)?;
        let (kind, code) = self.rng.pick(&[(1u8, 4u8), (1, 1), (2, 0), (3, 0), (4, 0)]);
        let rest = if kind == 2 {
            1280u32.to_be_bytes()
        } else {
            [0; 4]
        };
        let forged = self.rng.chance(30);
        let delta = if forged { 1 + self.rng.u16() % 7 } else { 0 };
        let n = self.rng.pick(&[0, 8, 64]);
        let payload = self.rng.bytes(n);
        let (quote_frame, src, dst, side) = if self.rng.chance(60) {
            // What we sent the origin: SNAT6:sp -> origin:op.
            let l4 = if k.proto == IPPROTO_TCP {
                tcp_l4(
                    (k.snat_port.wrapping_add(delta), k.oport),
                    k.cseq,
                    k.oseq,
                    ACK,
                    &payload,
                )
            } else {
                udp_l4((k.snat_port.wrapping_add(delta), k.oport), &payload)
            };
            let q = build(([0; 6], [0; 6]), (SNAT6, k.origin), 63, k.proto, l4, &[]);
            let from = if self.rng.chance(50) { R6 } else { k.origin };
            (q, from, SNAT6, Side::B)
        } else {
            // What we sent the client: VIP6:vp -> client:cp.
            let l4 = if k.proto == IPPROTO_TCP {
                tcp_l4(
                    (k.vport, k.cport.wrapping_add(delta)),
                    k.oseq,
                    k.cseq,
                    ACK,
                    &payload,
                )
            } else {
                udp_l4((k.vport, k.cport.wrapping_add(delta)), &payload)
            };
            let q = build(([0; 6], [0; 6]), (VIP6, k.client), 63, k.proto, l4, &[]);
            (q, k.client, VIP6, Side::A)
        };
        let mut quote = packet(&quote_frame).to_vec();
        if self.rng.chance(30) {
            quote.truncate(40 + 8);
        }
        let f = build(
            (mac6(src), self.lb_mac(side)),
            (src, dst),
            64,
            ICMPV6,
            icmp_l4(kind, code, rest, &quote),
            &[],
        );
        Some((
            f,
            side,
            format!(
                "ICMPv6 {kind}/{code} about a{} {} flow, from the {} side",
                if forged { " forged" } else { "" },
                if k.proto == IPPROTO_TCP { "TCP" } else { "UDP" },
                if side == Side::A { "client" } else { "origin" }
            ),
        ))
    }

    /// The next IPv6 frame: a base frame, then (half of the time) IPv6 mutations.
    pub(crate) fn generate6(&mut self) -> (Vec<u8>, Side, String) {
        let r = self.rng.below(100);
        let (mut f, side, mut what) = match r {
            0..=29 => match self.pick_known6(Some(IPPROTO_TCP)) {
                Some(k) => {
                    let from_client = self.rng.chance(55);
                    let flags = self.rng.pick(&[
                        ACK,
                        ACK,
                        ACK | PSH,
                        FIN | ACK,
                        RST,
                        RST | ACK,
                        SYN,
                        SYN | ACK,
                    ]);
                    let n = self.rng.pick(&[0, 0, 1, 100, 1400]);
                    let payload = self.rng.bytes(n);
                    let mut k2 = k.clone();
                    if self.rng.chance(30) {
                        k2.cseq = k2
                            .cseq
                            .wrapping_add(self.rng.u32() % 131_072)
                            .wrapping_sub(65536);
                    }
                    let (f, s) = self.seg6(&k2, from_client, flags, &payload);
                    (
                        f,
                        s,
                        format!(
                            "IPv6 TCP segment (flags {flags:#04x}) of a known flow from the {}",
                            if from_client { "client" } else { "origin" }
                        ),
                    )
                }
                None => self.new6(),
            },
            30..=44 => match self.pick_known6(Some(IPPROTO_UDP)) {
                Some(k) => {
                    let from_client = self.rng.chance(50);
                    let (f, s) = self.dgram6(&k, from_client);
                    (
                        f,
                        s,
                        format!(
                            "IPv6 datagram of a known flow from the {}",
                            if from_client { "client" } else { "origin" }
                        ),
                    )
                }
                None => self.new6(),
            },
            45..=52 => match self.pick_known6(None) {
                Some(mut k) => {
                    let how = match self.rng.below(3) {
                        0 => {
                            k.snat_port = k.snat_port.wrapping_add(1 + self.rng.u16() % 20);
                            "another SNAT port"
                        }
                        1 => {
                            k.origin = if k.origin == O6[0] { O6[1] } else { O6[0] };
                            "another origin address"
                        }
                        _ => {
                            k.oport = k.oport.wrapping_add(1);
                            "another origin port"
                        }
                    };
                    let (f, s) = if k.proto == IPPROTO_TCP {
                        let flags = self.rng.pick(&[ACK, SYN | ACK, RST, FIN | ACK]);
                        self.seg6(&k, false, flags, b"forged")
                    } else {
                        self.dgram6(&k, false)
                    };
                    (f, s, format!("IPv6 forged answer ({how})"))
                }
                None => self.new6(),
            },
            53..=62 => self.new6(),
            63..=74 => self.icmp6_error().unwrap_or_else(|| self.new6()),
            75..=80 => {
                let (kind, to) =
                    self.rng
                        .pick(&[(128u8, VIP6), (128, SNAT6), (129, VIP6), (128, LB6_A)]);
                let c = self.rng.pick(&CLIENTS6);
                let n = self.rng.pick(&[0, 8, 56, 1200]);
                let body = self.rng.bytes(n);
                let f = self.frame6(
                    Side::A,
                    (c, to),
                    ICMPV6,
                    icmp_l4(kind, 0, [0, 7, 0, 1], &body),
                );
                (f, Side::A, format!("ICMPv6 echo type {kind}"))
            }
            81..=85 => {
                let kind = self.rng.pick(&[133u8, 134, 135, 136, 137]);
                let c = self.rng.pick(&CLIENTS6);
                let mut snm = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
                snm[13..].copy_from_slice(&VIP6[13..]);
                let to = self.rng.pick(&[VIP6, snm, SNAT6, LB6_A]);
                let mut body = VIP6.to_vec();
                body.extend_from_slice(&[1, 1, 2, 6, 0, 1, 0, 2]);
                let l4 = icmp_l4(kind, 0, [0; 4], &body);
                let f = build(
                    (mac6(c), self.lb_mac(Side::A)),
                    (c, to),
                    255,
                    ICMPV6,
                    l4,
                    &[],
                );
                (f, Side::A, format!("ICMPv6 ND type {kind}"))
            }
            86..=91 => {
                // Neither a VIP nor the SNAT address: the host's own, another host's, an
                // IPv4-mapped VIP.
                let c = self.rng.pick(&CLIENTS6);
                let to = self.rng.pick(&[
                    LB6_A,
                    OTHER6,
                    mapped([10, 0, 0, 10]),
                    mapped([10, 0, 0, 1]),
                    O6[0],
                ]);
                let udp = self.rng.chance(40);
                let l4 = if udp {
                    udp_l4((5000, 53), b"x")
                } else {
                    tcp_l4((40000, 80), 1, 0, SYN, &[])
                };
                let f = self.frame6(
                    Side::A,
                    (c, to),
                    if udp { IPPROTO_UDP } else { IPPROTO_TCP },
                    l4,
                );
                (f, Side::A, "IPv6 not for us".into())
            }
            _ => {
                let c = self.rng.pick(&CLIENTS6);
                let proto = self
                    .rng
                    .pick(&[IPPROTO_TCP, IPPROTO_UDP, ICMPV6, 0, 44, 253]);
                let n = self.rng.below(60);
                let l4 = self.rng.bytes(n);
                let mut f = self.frame6(Side::A, (c, VIP6), proto, l4);
                if self.rng.chance(50) {
                    f[IP6 + 6] = self.rng.u8();
                }
                (f, Side::A, "IPv6 with random upper-layer bytes".into())
            }
        };
        if self.rng.chance(50) {
            let m = mutate(&mut self.rng, &mut f);
            what = format!("{what}; mutated: {m}");
        }
        (f, side, what)
    }

    /// A new IPv6 flow's first packet (SYN or datagram) from a client or a spoofed source.
    fn new6(&mut self) -> (Vec<u8>, Side, String) {
        let c = if self.rng.chance(80) {
            self.rng.pick(&CLIENTS6)
        } else {
            let mut a = v6(1, 0);
            a[8..].copy_from_slice(&self.rng.bytes(8));
            a
        };
        let cport = self.fresh_cport();
        if self.rng.chance(50) {
            let isn = self.rng.u32();
            let f = self.frame6(
                Side::A,
                (c, VIP6),
                IPPROTO_TCP,
                tcp_l4((cport, 80), isn, 0, SYN, &[]),
            );
            (f, Side::A, "IPv6 SYN".into())
        } else {
            let port = self.rng.pick(&[53, 53, 80]);
            let f = self.frame6(
                Side::A,
                (c, VIP6),
                IPPROTO_UDP,
                udp_l4((cport, port), b"new"),
            );
            (f, Side::A, format!("IPv6 new datagram to port {port}"))
        }
    }

    /// What is wrong with `out` as the rewrite of the IPv6 frame `input` (`None`: nothing).
    pub(crate) fn check_rewrite6(&mut self, input: &[u8], out: &[u8], ev: u32) -> Option<String> {
        if length_lies(out) {
            self.report.forwarded_bad_length += 1;
        }
        let Some(po) = parse_lenient(out) else {
            return Some(format!(
                "output is not a well-formed IPv6 frame ({} bytes)",
                out.len()
            ));
        };
        let pi = parse_lenient(input);
        let input_ok = pi.is_some_and(|p| l4_sum(input, &p) == Some(Sum::Good));
        let built = matches!(
            ev,
            event::RST_TO_ORIGIN
                | event::SYN_COOKIE_SENT
                | event::COOKIE_ORIGIN_ACK
                | event::ICMP_ECHO_REPLY
                | event::ICMP_FRAG_NEEDED_SENT
        );
        if po.proto == ICMPV6 || built {
            // Built: full checksums; translated: a correct checksum whenever the input's
            // was correct.
            if (input_ok || (built && po.proto == IPPROTO_TCP))
                && l4_sum(out, &po) != Some(Sum::Good)
            {
                return Some(format!(
                    "{} checksum of the output: {:?}",
                    po.proto,
                    l4_sum(out, &po)
                ));
            }
            if po.proto == ICMPV6 && po.l4_len >= 48 && out[po.l4] < 128 {
                // A translated error: the quote is an IPv6 header between the output's
                // addresses, reversed.
                let q = po.l4 + 8;
                if out[q] >> 4 != 6 || out[q + 8..q + 24] != po.dst || out[q + 24..q + 40] != po.src
                {
                    return Some(
                        "the quoted IPv6 header is not the reverse of the error's addresses".into(),
                    );
                }
            }
            return None;
        }
        let Some(pi) = pi else {
            return Some("a malformed IPv6 input was forwarded".into());
        };
        if po.ext_len != 0 || pi.fragment {
            return Some(format!(
                "forwarded with {} bytes of extension headers (input fragment: {})",
                po.ext_len, pi.fragment
            ));
        }
        if po.proto != pi.proto || po.l4_len != pi.l4_len {
            return Some(format!(
                "upper layer {} ({} bytes) became {} ({} bytes)",
                pi.proto, pi.l4_len, po.proto, po.l4_len
            ));
        }
        if input.len() - pi.l4 - pi.l4_len != out.len() - po.l4 - po.l4_len {
            return Some("bytes after the payload length were not kept".into());
        }
        if input[IP6..IP6 + 4] != out[IP6..IP6 + 4] {
            return Some("version, traffic class or flow label changed".into());
        }
        if out[IP6 + 7].wrapping_add(1) != input[IP6 + 7] {
            return Some(format!("hop limit {} -> {}", input[IP6 + 7], out[IP6 + 7]));
        }
        let co = sum_offset(po.proto).unwrap_or(0);
        // The payload length may lie short (a lie the IPv4 path forwards too, counted in
        // `forwarded_bad_length`): the bytes to the frame's end are compared.
        let (li, lo) = (&input[pi.l4..], &out[po.l4..]);
        let min = if po.proto == IPPROTO_TCP { 20 } else { 8 };
        if (po.proto != IPPROTO_TCP && po.proto != IPPROTO_UDP)
            || li.len() != lo.len()
            || li.len() < min
        {
            return Some(format!(
                "forwarded protocol {} with {} bytes of upper layer in the frame",
                po.proto,
                lo.len()
            ));
        }
        if let Some(i) = (4..li.len()).find(|&i| li[i] != lo[i] && !(co..co + 2).contains(&i)) {
            return Some(format!(
                "upper-layer byte {i} changed ({:02x} -> {:02x})",
                li[i], lo[i]
            ));
        }
        let (before, after) = (l4_sum(input, &pi), l4_sum(out, &po));
        if before == Some(Sum::Zero) {
            return Some(
                "a UDP datagram without checksum (invalid over IPv6) was forwarded".into(),
            );
        }
        if before == Some(Sum::Bad) {
            self.report.forwarded_bad_checksum += 1;
        }
        if before != after {
            return Some(format!("checksum before: {before:?}, after: {after:?}"));
        }
        // A rewrite of a flow in the tables: client -> origin (from the SNAT address) or
        // origin -> client (from the VIP).
        let port = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]).to_be();
        let (isp, idp, osp, odp) = (port(li, 0), port(li, 2), port(lo, 0), port(lo, 2));
        if po.src == SNAT6 {
            let rk = FlowKey {
                src: po.dst,
                dst: SNAT6,
                sport: odp,
                dport: osp,
                proto: po.proto,
                _pad: [0; 3],
            };
            let Ok(r) = self.rec.maps.rev_flows.get(&rk, 0) else {
                return Some("forwarded to an origin without a REV_FLOWS entry".into());
            };
            if r.client_addr != pi.src
                || r.client_port != isp
                || r.vip_addr != pi.dst
                || r.vip_port != idp
            {
                return Some(
                    "forwarded to an origin whose REV_FLOWS entry names another client tuple"
                        .into(),
                );
            }
        } else if po.src == VIP6 {
            let k = FlowKey {
                src: po.dst,
                dst: VIP6,
                sport: odp,
                dport: osp,
                proto: po.proto,
                _pad: [0; 3],
            };
            let Ok(fl) = self.rec.maps.flows.get(&k, 0) else {
                return Some("forwarded to a client without a FLOWS entry".into());
            };
            if fl.origin_addr != pi.src || fl.origin_port != isp || fl.snat_port != idp {
                return Some(
                    "forwarded to a client whose FLOWS entry names another origin tuple".into(),
                );
            }
        } else {
            return Some("source is neither the IPv6 SNAT address nor the VIP".into());
        }
        None
    }
}

//! Frames: a seeded PRNG, builders for valid Ethernet/IPv4/TCP and /UDP frames, the
//! structured mutations the fuzzer applies to them, and an independent checksum verifier.
//!
//! Offsets are those of a frame without a VLAN tag and without IP options (`IP`, `TCP`);
//! mutations that insert a tag or options shift everything after them, as on the wire.

/// Where the IPv4 header starts.
pub const IP: usize = 14;
/// Where the TCP header starts when the IPv4 header has no options.
pub const TCP: usize = 34;
/// Where the UDP header starts when the IPv4 header has no options (as `TCP`).
pub const UDP: usize = 34;

pub use lb_testbed::tcp_flags::{ACK, FIN, PSH, RST, SYN};

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and the same sequence on every
/// platform, so a seed reproduces a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub fn u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u32) -> bool {
        self.u32() % 100 < pct
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words (RFC 1071), unfolded.
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
    s as u16
}

/// The IPv4 and TCP checksums of an IPv4/TCP frame, as a receiver checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sums {
    /// IPv4 header checksum verifies (the sum over the header is all ones).
    pub ip: bool,
    /// TCP checksum verifies over the pseudo-header and `tot_len - ihl * 4` bytes; `None`
    /// when the IPv4 header's lengths do not describe a segment inside the frame.
    pub tcp: Option<bool>,
    /// The UDP checksum; `None` when the frame is not UDP or its lengths (IPv4 total
    /// length, UDP length) do not describe a datagram inside the frame.
    pub udp: Option<UdpSum>,
}

/// A UDP checksum as a receiver reads it (RFC 768).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpSum {
    /// Zero: the sender computed none.
    Zero,
    /// Verifies over the pseudo-header and the UDP length's bytes.
    Good,
    Bad,
}

/// The UDP header's start and length field of an IPv4/UDP frame, when the IPv4 total length
/// fits the frame and the UDP length fits the IPv4 payload (the datagram a receiver sums).
fn udp_extent(frame: &[u8], ihl: usize) -> Option<(usize, usize)> {
    let tot = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    if frame[IP + 9] != 17 || tot < ihl + 8 || IP + tot > frame.len() {
        return None;
    }
    let u = IP + ihl;
    let ulen = usize::from(u16::from_be_bytes([frame[u + 4], frame[u + 5]]));
    (ulen >= 8 && ulen <= tot - ihl).then_some((u, ulen))
}

/// The UDP checksum field `frame` should carry (never 0: a computed 0 is sent as 0xffff).
fn udp_sum(frame: &[u8], u: usize, ulen: usize) -> u16 {
    let mut s = sum(&frame[IP + 12..IP + 20], 0);
    s += 17 + ulen as u64;
    s = sum(&frame[u..u + 6], s);
    s = sum(&frame[u + 8..u + ulen], s);
    match !fold(s) {
        0 => 0xffff,
        c => c,
    }
}

/// Verifies the checksums of `frame` (untagged Ethernet, IPv4, TCP or UDP) the way a
/// receiving host does (RFC 1071 §4.1: the sum including the checksum field is all ones); `None` if
/// the frame is not IPv4 with a complete header.
pub fn verify(frame: &[u8]) -> Option<Sums> {
    if frame.len() < IP + 20 || frame[12..14] != [0x08, 0x00] || frame[IP] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[IP] & 0x0f) * 4;
    if ihl < 20 || frame.len() < IP + ihl {
        return None;
    }
    let ip_ok = fold(sum(&frame[IP..IP + ihl], 0)) == 0xffff;
    let tot = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let tcp = if frame[IP + 9] == 6 && tot >= ihl + 20 && IP + tot <= frame.len() {
        let seg = &frame[IP + ihl..IP + tot];
        let mut s = sum(&frame[IP + 12..IP + 20], 0);
        s += 6 + seg.len() as u64;
        Some(fold(sum(seg, s)) == 0xffff)
    } else {
        None
    };
    let udp = udp_extent(frame, ihl).map(|(u, ulen)| {
        let field = u16::from_be_bytes([frame[u + 6], frame[u + 7]]);
        if field == 0 {
            UdpSum::Zero
        } else if fold(
            sum(&frame[IP + 12..IP + 20], 17 + ulen as u64) + sum(&frame[u..u + ulen], 0),
        ) == 0xffff
        {
            UdpSum::Good
        } else {
            UdpSum::Bad
        }
    });
    Some(Sums {
        ip: ip_ok,
        tcp,
        udp,
    })
}

/// What is wrong with an ICMP frame the data path sent (`None`: nothing): its IPv4 header
/// checksum, its length, and the ICMP checksum over everything the IPv4 length covers.
pub fn icmp_problem(frame: &[u8]) -> Option<String> {
    let ihl = usize::from(frame[IP] & 0x0f) * 4;
    if fold(sum(&frame[IP..IP + ihl], 0)) != 0xffff {
        return Some("ICMP frame: IPv4 header checksum".into());
    }
    let tot = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    if tot < ihl + 8 || IP + tot > frame.len() {
        return Some(format!(
            "ICMP frame: IPv4 length {tot} for a {}-byte frame",
            frame.len()
        ));
    }
    if fold(sum(&frame[IP + ihl..IP + tot], 0)) != 0xffff {
        return Some("ICMP frame: ICMP checksum".into());
    }
    None
}

/// The UDP checksum of the datagram an ICMP error (destination unreachable, time exceeded)
/// in `frame` quotes, when it quotes a whole one (`None`: not such an error, or a shorter
/// quote).
pub fn quoted_udp(frame: &[u8]) -> Option<UdpSum> {
    if frame.len() < IP + 28 + 28 || frame[12..14] != [0x08, 0x00] || frame[IP] != 0x45 {
        return None;
    }
    if frame[IP + 9] != 1 || !matches!(frame[IP + 20], 3 | 11) {
        return None;
    }
    let tot = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let end = (IP + tot).min(frame.len());
    if end < IP + 28 + 28 {
        return None;
    }
    let mut q = vec![0u8; 12];
    q.extend_from_slice(&[0x08, 0x00]);
    q.extend_from_slice(&frame[IP + 28..end]);
    verify(&q)?.udp
}

/// An ICMP message of `kind`/`code` with the type-specific word `rest` and `body`, IPv4
/// TTL 64, checksums computed.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
pub fn icmp(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let tot = u16::try_from(28 + body.len()).unwrap_or(u16::MAX);
    let mut f = headers((smac, dmac), (src, dst), 64, 1, tot);
    f.extend_from_slice(&[kind, code, 0, 0]);
    f.extend_from_slice(&rest);
    f.extend_from_slice(body);
    let c = !fold(sum(&f[IP + 20..], 0));
    f[IP + 22..IP + 24].copy_from_slice(&c.to_be_bytes());
    fix_checksums(&mut f);
    f
}

/// Recomputes the checksums of a frame in place (after a mutation), where the frame's own
/// lengths allow it; a zero UDP checksum (none) stays zero. Frames that are not IPv4 are
/// left alone.
pub fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < IP + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(frame[IP] & 0x0f) * 4;
    if ihl < 20 || frame.len() < IP + ihl {
        return;
    }
    frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let c = !fold(sum(&frame[IP..IP + ihl], 0));
    frame[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    let tot = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    if frame[IP + 9] == 6 && tot >= ihl + 20 && IP + tot <= frame.len() {
        let t = IP + ihl;
        frame[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let mut s = sum(&frame[IP + 12..IP + 20], 0);
        s += 6 + (tot - ihl) as u64;
        let c = !fold(sum(&frame[t..IP + tot], s));
        frame[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    }
    if let Some((u, ulen)) = udp_extent(frame, ihl) {
        if frame[u + 6..u + 8] != [0, 0] {
            let c = udp_sum(frame, u, ulen);
            frame[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// The Ethernet header and an option-less IPv4 header (DF set, checksum left 0 for
/// `fix_checksums`) of a packet of IPv4 length `tot`, with room for the rest.
fn headers(
    (smac, dmac): ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 4], [u8; 4]),
    ttl: u8,
    proto: u8,
    tot: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(IP + usize::from(tot));
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f
}

/// A valid TCP segment to build.
#[derive(Clone, Debug)]
pub struct Seg {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub win: u16,
    /// TCP options, padded to a multiple of 4 bytes by the builder (with EOL).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Seg {
    pub fn build(&self) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        opts.truncate(40);
        let tcp_len = 20 + opts.len() + self.payload.len();
        let tot = u16::try_from(20 + tcp_len).unwrap_or(u16::MAX);
        let mut f = headers(
            (self.smac, self.dmac),
            (self.src, self.dst),
            self.ttl,
            6,
            tot,
        );
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        let ack = if self.flags & ACK != 0 { self.ack } else { 0 };
        f.extend_from_slice(&ack.to_be_bytes());
        let doff = ((20 + opts.len()) / 4) as u8;
        f.extend_from_slice(&[doff << 4, self.flags]);
        f.extend_from_slice(&self.win.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&opts);
        f.extend_from_slice(&self.payload);
        fix_checksums(&mut f);
        f
    }
}

/// A valid UDP datagram to build.
#[derive(Clone, Debug)]
pub struct Dgram {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    /// false: checksum 0 (none, RFC 768).
    pub checksum: bool,
    pub payload: Vec<u8>,
}

impl Dgram {
    pub fn build(&self) -> Vec<u8> {
        let ulen = u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX);
        let tot = ulen.saturating_add(20);
        let mut f = headers(
            (self.smac, self.dmac),
            (self.src, self.dst),
            self.ttl,
            17,
            tot,
        );
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&ulen.to_be_bytes());
        let mark = if self.checksum { [0xff, 0xff] } else { [0, 0] };
        f.extend_from_slice(&mark);
        f.extend_from_slice(&self.payload);
        fix_checksums(&mut f);
        f
    }
}

/// TCP options of a typical Linux SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
pub fn syn_options(rng: &mut Rng) -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend_from_slice(&rng.u32().to_be_bytes());
    o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, rng.below(15) as u8]);
    o
}

/// Random TCP options, often malformed: window scale with odd lengths and shifts, lengths
/// 0, 1 and 255, NOP runs, EOL, truncated options, random kinds.
pub fn random_options(rng: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    let n = 1 + rng.below(8);
    for _ in 0..n {
        match rng.below(12) {
            0 => o.push(1),
            1 => o.push(0),
            2 => o.extend_from_slice(&[3, 3, rng.u8()]),
            3 => o.extend_from_slice(&[3, rng.pick(&[0, 1, 2, 4, 255]), rng.u8()]),
            4 => o.extend_from_slice(&[3]),
            5 => o.extend_from_slice(&[2, 4, rng.u8(), rng.u8()]),
            6 => o.extend_from_slice(&[4, 2]),
            7 => {
                o.extend_from_slice(&[8, 10]);
                o.extend(rng.bytes(8));
            }
            8 => o.extend_from_slice(&[rng.u8(), rng.pick(&[0, 1, 255])]),
            9 => o.extend_from_slice(&[1, 1, 1, 1, 1, 1, 1, 1, 3, 3, rng.u8()]),
            10 => {
                let k = rng.u8();
                let len = rng.u8();
                o.extend_from_slice(&[k, len]);
                o.extend(rng.bytes(usize::from(len.saturating_sub(2)).min(8)));
            }
            _ => {
                let n = 1 + rng.below(6);
                o.extend(rng.bytes(n));
            }
        }
        if o.len() >= 40 {
            break;
        }
    }
    o.truncate(40);
    o
}

/// A header field a mutation can target: (name, offset in an untagged, option-less frame,
/// width in bytes).
pub const FIELDS: &[(&str, usize, usize)] = &[
    ("eth.dst", 0, 6),
    ("eth.src", 6, 6),
    ("eth.type", 12, 2),
    ("ip.ver_ihl", IP, 1),
    ("ip.tos", IP + 1, 1),
    ("ip.tot_len", IP + 2, 2),
    ("ip.id", IP + 4, 2),
    ("ip.frag", IP + 6, 2),
    ("ip.ttl", IP + 8, 1),
    ("ip.proto", IP + 9, 1),
    ("ip.check", IP + 10, 2),
    ("ip.src", IP + 12, 4),
    ("ip.dst", IP + 16, 4),
    ("tcp.sport", TCP, 2),
    ("tcp.dport", TCP + 2, 2),
    ("tcp.seq", TCP + 4, 4),
    ("tcp.ack", TCP + 8, 4),
    ("tcp.doff", TCP + 12, 1),
    ("tcp.flags", TCP + 13, 1),
    ("tcp.win", TCP + 14, 2),
    ("tcp.check", TCP + 16, 2),
    ("tcp.urg", TCP + 18, 2),
    ("udp.len", UDP + 4, 2),
    ("udp.check", UDP + 6, 2),
];

/// Interesting values for a field of `width` bytes, as big-endian bytes.
fn field_value(rng: &mut Rng, name: &str, width: usize, cur: &[u8], addrs: &[[u8; 4]]) -> Vec<u8> {
    match name {
        "eth.type" => {
            let x = rng.u16();
            rng.pick(&[0x0800u16, 0x8100, 0x88a8, 0x86dd, 0x0806, 0x0000, 0xffff, x])
        }
        .to_be_bytes()
        .to_vec(),
        "ip.ver_ihl" => vec![match rng.below(4) {
            0 => 0x40 | (rng.u8() & 0x0f),
            1 => (rng.u8() & 0xf0) | 5,
            2 => rng.pick(&[0x45, 0x46, 0x4f, 0x44, 0x40, 0x65, 0x05]),
            _ => rng.u8(),
        }],
        "ip.tot_len" => {
            let c = i32::from(u16::from_be_bytes([cur[0], cur[1]]));
            let v = match rng.below(6) {
                0 => rng.pick(&[0, 1, 19, 20, 39, 40, 41, 60, 0xffff]),
                1 => c + rng.pick(&[-1, 1, -4, 4, -20, 20]),
                2 => c + 1500,
                _ => i32::from(rng.u16()),
            };
            (v.clamp(0, 0xffff) as u16).to_be_bytes().to_vec()
        }
        "ip.frag" => {
            let x = rng.u16();
            rng.pick(&[
                0x0000u16, 0x4000, 0x2000, 0x6000, 0x0001, 0x1fff, 0x8000, 0x4001, x,
            ])
        }
        .to_be_bytes()
        .to_vec(),
        "ip.ttl" => vec![rng.pick(&[0, 1, 2, 64, 255])],
        "ip.proto" => vec![{
            let x = rng.u8();
            rng.pick(&[6, 17, 1, 0, 41, 132, 255, x])
        }],
        "ip.src" | "ip.dst" => match rng.below(3) {
            0 => rng.pick(addrs).to_vec(),
            1 => {
                let mut a = rng.pick(addrs);
                a[3] ^= 1 << rng.below(8);
                a.to_vec()
            }
            _ => rng.bytes(4),
        },
        "tcp.sport" | "tcp.dport" => {
            let x = rng.u16();
            rng.pick(&[
                0u16, 53, 80, 443, 5353, 8080, 8081, 8443, 61000, 61007, 61015, 65535, x,
            ])
        }
        .to_be_bytes()
        .to_vec(),
        "tcp.seq" | "tcp.ack" => {
            let c = u32::from_be_bytes([cur[0], cur[1], cur[2], cur[3]]);
            let v = match rng.below(5) {
                0 => c.wrapping_add(rng.below(70_000) as u32),
                1 => c.wrapping_sub(rng.below(70_000) as u32),
                2 => c ^ (1 << rng.below(32)),
                3 => rng.pick(&[0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX]),
                _ => rng.u32(),
            };
            v.to_be_bytes().to_vec()
        }
        "tcp.doff" => vec![(rng.u8() & 0xf0) | (cur[0] & 0x0f)],
        "tcp.flags" => vec![match rng.below(3) {
            0 => rng.pick(&[
                0,
                FIN,
                SYN,
                RST,
                ACK,
                SYN | ACK,
                FIN | ACK,
                RST | ACK,
                SYN | FIN,
                SYN | RST,
                FIN | RST | ACK,
                PSH | ACK,
                0xff,
            ]),
            _ => rng.u8(),
        }],
        "udp.len" => {
            let c = i32::from(u16::from_be_bytes([cur[0], cur[1]]));
            let v = match rng.below(4) {
                0 => rng.pick(&[0, 1, 7, 8, 9, 0xffff]),
                1 => c + rng.pick(&[-1, 1, -8, 8, 20, -20]),
                2 => c - i32::from(rng.u8()),
                _ => i32::from(rng.u16()),
            };
            (v.clamp(0, 0xffff) as u16).to_be_bytes().to_vec()
        }
        "udp.check" => {
            let x = rng.u16();
            rng.pick(&[0u16, 0xffff, 1, x])
        }
        .to_be_bytes()
        .to_vec(),
        "tcp.win" => {
            let x = rng.u16();
            rng.pick(&[0u16, 1, 0xffff, x])
        }
        .to_be_bytes()
        .to_vec(),
        _ => match rng.below(3) {
            0 => vec![0; width],
            1 => vec![0xff; width],
            _ => rng.bytes(width),
        },
    }
}

/// One mutation of `f`; returns its description. `addrs` are addresses worth trying.
pub fn mutate(rng: &mut Rng, f: &mut Vec<u8>, addrs: &[[u8; 4]]) -> String {
    match rng.below(16) {
        0..=6 => {
            let (name, off, width) = rng.pick(FIELDS);
            if off + width > f.len() {
                return format!("{name}: beyond the frame");
            }
            let v = field_value(rng, name, width, &f[off..off + width], addrs);
            f[off..off + width].copy_from_slice(&v);
            format!("{name} = {}", hex(&v))
        }
        7 => {
            // IPv4 options: IHL > 5 with option bytes really inserted.
            if f.len() < TCP {
                return "ip options: too short".into();
            }
            let words = 1 + rng.below(10);
            let mut opts = match rng.below(3) {
                0 => vec![1; words * 4],
                1 => {
                    let mut o = vec![7, 7, 4, 0, 0, 0, 0, 0];
                    o.resize(words * 4, 0);
                    o
                }
                _ => rng.bytes(words * 4),
            };
            opts.truncate(words * 4);
            f.splice(TCP..TCP, opts);
            let ihl = (5 + words) as u8;
            f[IP] = 0x40 | ihl;
            let tot = u16::from_be_bytes([f[IP + 2], f[IP + 3]]).wrapping_add((words * 4) as u16);
            f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
            format!("ip options: {words} words")
        }
        8 => {
            // TCP options replaced by random (often malformed) ones.
            if f.len() < TCP + 20 || f[IP] != 0x45 {
                return "tcp options: no plain header".into();
            }
            let old = usize::from(f[TCP + 12] >> 4) * 4;
            if old < 20 || TCP + old > f.len() {
                return "tcp options: bad doff".into();
            }
            let mut o = random_options(rng);
            let pad = rng.chance(80);
            if pad {
                while !o.len().is_multiple_of(4) {
                    o.push(rng.pick(&[0, 1]));
                }
            }
            let olen = o.len();
            f.splice(TCP + 20..TCP + old, o);
            let doff = ((20 + olen.next_multiple_of(4)) / 4).min(15) as u8;
            f[TCP + 12] = (doff << 4) | (f[TCP + 12] & 0x0f);
            let tot = u16::try_from(f.len() - IP).unwrap_or(u16::MAX);
            f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
            format!(
                "tcp options {} ({olen} bytes, doff {doff})",
                hex(&f[TCP + 20..(TCP + 20 + olen).min(f.len())])
            )
        }
        9 => {
            // Truncation at any length.
            let n = rng.below(f.len() + 1);
            f.truncate(n);
            format!("truncated to {n}")
        }
        10 => {
            let n = 1 + rng.below(64);
            let junk = rng.bytes(n);
            f.extend_from_slice(&junk);
            if rng.chance(50) && f.len() >= IP + 4 {
                let tot = u16::try_from(f.len() - IP).unwrap_or(u16::MAX);
                f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
                format!("extended by {n} bytes (tot_len follows)")
            } else {
                format!("extended by {n} bytes")
            }
        }
        11 => {
            // An 802.1Q tag in front of an otherwise valid frame.
            if f.len() < 14 {
                return "vlan: too short".into();
            }
            let tpid = rng.pick(&[0x8100u16, 0x88a8]);
            let tci = rng.u16();
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&tci.to_be_bytes());
            f.splice(12..12, tag);
            format!("vlan tag {tpid:04x}/{tci:04x}")
        }
        12 => {
            let i = rng.below(f.len().max(1));
            if i < f.len() {
                f[i] ^= 1 << rng.below(8);
            }
            format!("bit flip at byte {i}")
        }
        13 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = rng.below(f.len().max(1));
                if i < f.len() {
                    f[i] = rng.u8();
                }
            }
            format!("{n} random bytes")
        }
        14 => {
            // Payload grown or shrunk, lengths (the UDP length too) kept consistent.
            let ihl = usize::from(f.get(IP).copied().unwrap_or(0x45) & 0x0f) * 4;
            let udp = f.get(IP + 9) == Some(&17);
            let l4 = if udp {
                8
            } else {
                usize::from(f.get(IP + ihl + 12).copied().unwrap_or(0x50) >> 4) * 4
            };
            let start = IP + ihl + l4;
            if start > f.len() || start < TCP {
                return "payload: no room".into();
            }
            let n = rng.pick(&[0, 1, 17, 100, 1400, 1460]);
            f.truncate(start);
            f.extend(rng.bytes(n));
            let tot = u16::try_from(f.len() - IP).unwrap_or(u16::MAX);
            f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
            if udp {
                let ulen = u16::try_from(f.len() - IP - ihl).unwrap_or(u16::MAX);
                f[IP + ihl + 4..IP + ihl + 6].copy_from_slice(&ulen.to_be_bytes());
            }
            format!("payload of {n} bytes")
        }
        _ => {
            // Swap the frame's addresses and ports (a "reply" of the segment).
            if f.len() < TCP + 4 {
                return "swap: too short".into();
            }
            let (s, d) = (f[IP + 12..IP + 16].to_vec(), f[IP + 16..IP + 20].to_vec());
            f[IP + 12..IP + 16].copy_from_slice(&d);
            f[IP + 16..IP + 20].copy_from_slice(&s);
            let (sp, dp) = (f[TCP..TCP + 2].to_vec(), f[TCP + 2..TCP + 4].to_vec());
            f[TCP..TCP + 2].copy_from_slice(&dp);
            f[TCP + 2..TCP + 4].copy_from_slice(&sp);
            "addresses and ports swapped".into()
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify() {
        let mut rng = Rng::new(1);
        let s = Seg {
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 2],
            src: [10, 0, 1, 2],
            dst: [10, 0, 0, 10],
            ttl: 64,
            sport: 40000,
            dport: 80,
            seq: 1,
            ack: 2,
            flags: SYN,
            win: 64240,
            options: syn_options(&mut rng),
            payload: b"odd".to_vec(),
        };
        let f = s.build();
        assert_eq!(
            verify(&f),
            Some(Sums {
                ip: true,
                tcp: Some(true),
                udp: None
            })
        );
        let mut g = f.clone();
        g[TCP + 4] ^= 1;
        assert_eq!(
            verify(&g),
            Some(Sums {
                ip: true,
                tcp: Some(false),
                udp: None
            })
        );
        fix_checksums(&mut g);
        assert_eq!(
            verify(&g),
            Some(Sums {
                ip: true,
                tcp: Some(true),
                udp: None
            })
        );
    }

    #[test]
    fn built_datagrams_verify_and_zero_stays_zero() {
        let mut d = Dgram {
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 2],
            src: [10, 0, 1, 2],
            dst: [10, 0, 0, 10],
            ttl: 64,
            sport: 40000,
            dport: 53,
            checksum: true,
            payload: b"odd".to_vec(),
        };
        let f = d.build();
        assert_eq!(verify(&f).and_then(|s| s.udp), Some(UdpSum::Good));
        let mut g = f.clone();
        g[UDP + 8] ^= 1;
        assert_eq!(verify(&g).and_then(|s| s.udp), Some(UdpSum::Bad));
        fix_checksums(&mut g);
        assert_eq!(verify(&g).and_then(|s| s.udp), Some(UdpSum::Good));
        d.checksum = false;
        let mut z = d.build();
        assert_eq!(verify(&z).and_then(|s| s.udp), Some(UdpSum::Zero));
        fix_checksums(&mut z);
        assert_eq!(verify(&z).and_then(|s| s.udp), Some(UdpSum::Zero));
        // Padding after the UDP length is outside the sum; a length past the IPv4 payload
        // describes no datagram.
        let mut p = f.clone();
        p.extend_from_slice(&[9, 9]);
        let tot = u16::try_from(p.len() - IP).unwrap();
        p[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
        fix_checksums(&mut p);
        assert_eq!(verify(&p).and_then(|s| s.udp), Some(UdpSum::Good));
        p[UDP + 4..UDP + 6].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(verify(&p).and_then(|s| s.udp), None);
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}

//! Packet fixtures through `BPF_PROG_TEST_RUN`: the addresses of the fixture namespace
//! (a `FibBed`), the config sections they share, independent checksum and frame builders,
//! the program loader, and the one case runner.
//!
//! A fixture case is a row {description, ingress side, input frame, expected verdict,
//! expected output frame, events it counts}. Expected frames are built independently
//! (etherparse, or by hand with the checksums computed here), so byte equality also proves
//! the data path's incremental checksum updates right; every output's checksums are
//! recomputed on top. After the cases, `Loaded::assert_events` checks that every event
//! counter moved exactly as the cases said.
//!
//! ```text
//!   a (10.0.1.1/24)  client side: clients 10.0.1.2-.7, "local" origin 10.0.1.9, router .254
//!   b (10.0.11.1/24) origin side: origins 10.0.11.2-.4, router .254
//! ```

use std::{collections::BTreeMap, path::Path};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use lb_agent::{
    config::Config,
    dataplane::{Dataplane, Maps},
    health::HealthTable,
    reconcile::Reconciler,
};
use lb_common::{event, hash, FlowKey};

use crate::{ebpf_object, FibBed, Side};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const VIP: [u8; 4] = [10, 0, 0, 10];
pub const VIP2: [u8; 4] = [10, 0, 0, 11];
pub const VIP3: [u8; 4] = [10, 0, 0, 12];
pub const SNAT: [u8; 4] = [10, 0, 0, 1];
/// The LB's own address on side a.
pub const LB_A: [u8; 4] = [10, 0, 1, 1];
pub const C1: [u8; 4] = [10, 0, 1, 2];
pub const C2: [u8; 4] = [10, 0, 1, 3];
pub const C3: [u8; 4] = [10, 0, 1, 4];
pub const C4: [u8; 4] = [10, 0, 1, 5];
pub const C5: [u8; 4] = [10, 0, 1, 6];
pub const C6: [u8; 4] = [10, 0, 1, 7];
/// An origin behind the client side (a one-armed VIP: XDP_TX).
pub const LOCAL_ORIGIN: [u8; 4] = [10, 0, 1, 9];
pub const O1: [u8; 4] = [10, 0, 11, 2];
pub const O2: [u8; 4] = [10, 0, 11, 3];
pub const O3: [u8; 4] = [10, 0, 11, 4];
/// Routers that send ICMP errors about a flow, one per side.
pub const R_CLIENT: [u8; 4] = [10, 0, 1, 254];
pub const R_ORIGIN: [u8; 4] = [10, 0, 11, 254];
/// The fixtures' SNAT range (two ports, so they run out).
pub const SNAT_MIN: u16 = 61000;
pub const SNAT_MAX: u16 = 61001;

/// The MAC of a fixture host: 02:00:00 and the address's last three bytes.
pub const fn mac_of(a: [u8; 4]) -> [u8; 6] {
    [2, 0, 0, a[1], a[2], a[3]]
}

/// Permanent neighbours for `FibBed::new`: each address on its side, at `mac_of`.
pub fn neighbours(a: &[[u8; 4]], b: &[[u8; 4]]) -> Vec<([u8; 4], [u8; 6], Side)> {
    a.iter()
        .map(|x| (*x, mac_of(*x), Side::A))
        .chain(b.iter().map(|x| (*x, mac_of(*x), Side::B)))
        .collect()
}

/// The `[dataplane]` section of a fixture config: XDP on `lo` only (frames come from
/// `BPF_PROG_TEST_RUN`), SNAT 10.0.0.1 on `snat_ports`, pins under `@PIN@` (filled in by
/// `Loaded::apply`), then `extra` lines.
pub fn dataplane(snat_ports: (u16, u16), extra: &str) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"lo\"]\nsnat_address = \"10.0.0.1\"\nsnat_ports = [{}, {}]\n{extra}{}pin_dir = \"@PIN@\"\nflow_table_size = 4096\n",
        snat_ports.0,
        snat_ports.1,
        if extra.is_empty() || extra.ends_with('\n') { "" } else { "\n" },
    )
}

/// Pool `web`: o1 (10.0.11.2:8080).
pub const POOL_WEB: &str = r#"
[[pools]]
name = "web"
origins = [{ name = "o1", address = "10.0.11.2", port = 8080 }]
"#;

/// Pool `local`: l1 (10.0.1.9:8080), behind the client side.
pub const POOL_LOCAL: &str = r#"
[[pools]]
name = "local"
origins = [{ name = "l1", address = "10.0.1.9", port = 8080 }]
"#;

/// Load balancer `www`: 10.0.0.10:80 -> pool `web`.
pub const LB_WWW: &str = r#"
[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web"]
"#;

/// Load balancer `one-armed`: 10.0.0.11:80 -> pool `local`.
pub const LB_ONE_ARMED: &str = r#"
[[load_balancers]]
name = "one-armed"
address = "10.0.0.11"
port = 80
default_pools = ["local"]
"#;

/// The SNAT port the data path tries first for a client flow, in `min..=max` (the shared
/// hash, see lb_common).
pub fn first_snat_port(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> u16 {
    first_snat_port_in((SNAT_MIN, SNAT_MAX), src, sport, dst, dport)
}

/// `first_snat_port` for another SNAT range.
pub fn first_snat_port_in(
    (min, max): (u16, u16),
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
) -> u16 {
    first_snat_port_of((min, max), &FlowKey::tcp_v4(src, sport, dst, dport))
}

/// The first SNAT port of a UDP flow in the fixtures' range.
pub fn first_snat_port_udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> u16 {
    let key = FlowKey {
        proto: lb_common::IPPROTO_UDP,
        ..FlowKey::tcp_v4(src, sport, dst, dport)
    };
    first_snat_port_of((SNAT_MIN, SNAT_MAX), &key)
}

/// The first SNAT port the data path tries for `key`, in `min..=max`.
pub fn first_snat_port_of((min, max): (u16, u16), key: &FlowKey) -> u16 {
    let range = u32::from(max - min) + 1;
    min + u16::try_from(hash::flow_hash(key, hash::SEED_SNAT) % range).expect("range")
}

/// The other port of the two-port fixture range.
pub fn other_port(p: u16) -> u16 {
    if p == SNAT_MIN {
        SNAT_MAX
    } else {
        SNAT_MIN
    }
}

/// One's-complement sum of `b` (RFC 1071), folded; a valid checksummed block sums to 0xffff.
pub fn sum16(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    u16::try_from(s).expect("folded")
}

/// The checksum field for a block whose checksum field is zero.
pub fn csum(b: &[u8]) -> [u8; 2] {
    (!sum16(b)).to_be_bytes()
}

/// The sum of a TCP segment with its IPv4 pseudo-header (0xffff when its checksum is right).
pub fn tcp_sum(src: &[u8], dst: &[u8], seg: &[u8]) -> u16 {
    l4_sum(src, dst, 6, seg)
}

/// The sum of a TCP segment or UDP datagram (`proto`) with its IPv4 pseudo-header.
pub fn l4_sum(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u16 {
    let len = u16::try_from(seg.len()).expect("len").to_be_bytes();
    let mut b = src.to_vec();
    b.extend_from_slice(dst);
    b.extend_from_slice(&[0, proto, len[0], len[1]]);
    b.extend_from_slice(seg);
    sum16(&b)
}

/// A UDP datagram's checksum is right: 0 (none, RFC 768) or summing to 0xffff with its
/// pseudo-header.
fn assert_udp_sum(desc: &str, what: &str, src: &[u8], dst: &[u8], dgram: &[u8]) {
    if dgram[6..8] != [0, 0] {
        assert_eq!(l4_sum(src, dst, 17, dgram), 0xffff, "{desc}: {what}");
    }
}

/// Recomputes every checksum of an output frame: IPv4; TCP or UDP; for ICMP the ICMP
/// checksum (over the quote too), the quoted IPv4 header and, when the whole quoted segment
/// is there, its TCP or UDP checksum.
pub fn assert_checksums(desc: &str, f: &[u8]) {
    if f[12..14] == [0x86, 0xdd] {
        return assert_checksums6(desc, f);
    }
    assert_eq!(&f[12..14], &[8, 0], "{desc}: IPv4");
    assert_eq!(sum16(&f[14..34]), 0xffff, "{desc}: IPv4 header checksum");
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let l4 = &f[34..14 + tot];
    match f[23] {
        1 => {
            assert_eq!(sum16(l4), 0xffff, "{desc}: ICMP checksum");
            if l4[0] == 3 || l4[0] == 11 {
                let q = &l4[8..];
                assert_eq!(
                    sum16(&q[..20]),
                    0xffff,
                    "{desc}: quoted IPv4 header checksum"
                );
                let qlen = usize::from(u16::from_be_bytes([q[2], q[3]]));
                if q.len() >= qlen {
                    if q[9] == 17 {
                        assert_udp_sum(
                            desc,
                            "quoted UDP checksum",
                            &q[12..16],
                            &q[16..20],
                            &q[20..qlen],
                        );
                    } else {
                        assert_eq!(
                            tcp_sum(&q[12..16], &q[16..20], &q[20..qlen]),
                            0xffff,
                            "{desc}: quoted TCP checksum"
                        );
                    }
                }
            }
        }
        6 => assert_eq!(
            tcp_sum(&f[26..30], &f[30..34], l4),
            0xffff,
            "{desc}: TCP checksum"
        ),
        17 => assert_udp_sum(desc, "UDP checksum", &f[26..30], &f[30..34], l4),
        p => panic!("{desc}: protocol {p}"),
    }
}

/// `assert_checksums` for IPv6 (no header checksum, RFC 8200): TCP, UDP (never 0) or
/// ICMPv6 with their pseudo-headers; for ICMPv6 errors (types 1-4) the quoted TCP or UDP
/// checksum when the whole quoted segment is there.
fn assert_checksums6(desc: &str, f: &[u8]) {
    let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let (src, dst, l4) = (&f[22..38], &f[38..54], &f[54..54 + plen]);
    match f[20] {
        6 => assert_eq!(l4_sum(src, dst, 6, l4), 0xffff, "{desc}: TCP checksum"),
        17 => {
            assert_ne!(
                &l4[6..8],
                &[0, 0],
                "{desc}: IPv6 UDP checksum must not be 0"
            );
            assert_udp_sum(desc, "UDP checksum", src, dst, l4);
        }
        58 => {
            assert_eq!(l4_sum(src, dst, 58, l4), 0xffff, "{desc}: ICMPv6 checksum");
            if (1..=4).contains(&l4[0]) {
                let q = &l4[8..];
                let qlen = 40 + usize::from(u16::from_be_bytes([q[4], q[5]]));
                if q.len() >= qlen {
                    let what = if q[6] == 17 {
                        "quoted UDP"
                    } else {
                        "quoted TCP"
                    };
                    assert_eq!(
                        l4_sum(&q[8..24], &q[24..40], q[6], &q[40..qlen]),
                        0xffff,
                        "{desc}: {what} checksum"
                    );
                }
            }
        }
        p => panic!("{desc}: IPv6 next header {p}"),
    }
}

/// `2001:db8:<net>::<host>`: the addresses of `FibBed::add_ipv6` (`2001:db8:1::/64` on
/// side a, `2001:db8:11::/64` on side b) and of the IPv6 fixtures' VIPs and SNAT addresses.
pub const fn net6(net: u8, host: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}

/// An ICMPv6 frame built by etherparse: `kind`/`code`, the type-specific word, `body`.
pub fn icmp6_frame(
    (smac, dmac): ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    hop: u8,
    (kind, code, rest): (u8, u8, [u8; 4]),
    body: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src, dst, hop)
        .icmpv6_raw(kind, code, rest);
    let mut v = Vec::new();
    b.write(&mut v, body).expect("icmpv6 frame");
    v
}

/// The TCP header of an output frame (either family), after its checksums are rechecked.
pub fn tcp_header_of(frame: &[u8]) -> etherparse::TcpHeader {
    assert_checksums("TCP output", frame);
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("parses");
    match p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.to_header(),
        other => panic!("not TCP: {other:?}"),
    }
}

/// The IPv4 packet of a frame, without its Ethernet header: the bytes an ICMP error quotes.
pub fn ip_of(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

/// A UDP frame built by etherparse (TTL 64).
pub fn udp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    addrs: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    udp_frame_ttl(smac, dmac, addrs, 64, ports, payload)
}

/// A UDP frame built by etherparse, with its TTL.
pub fn udp_frame_ttl(
    smac: [u8; 6],
    dmac: [u8; 6],
    (src, dst): ([u8; 4], [u8; 4]),
    ttl: u8,
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, ttl)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("udp frame");
    v
}

/// An ICMP frame built by etherparse: `kind`/`code`, the type-specific word `rest`, `body`.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
pub fn icmp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, ttl)
        .icmpv4_raw(kind, code, rest);
    let mut v = Vec::new();
    b.write(&mut v, body).expect("icmp frame");
    v
}

/// The "fragmentation needed" the data path originates, built by hand: IPv4 (TOS 0xc0, no
/// DF, TTL 64) + ICMP 3/4 with `mtu` + the quoted IPv4 header and 8 bytes of TCP.
pub fn frag_needed(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    mtu: u16,
    quoted: &[u8],
) -> Vec<u8> {
    let quote = &quoted[..28];
    let mut ip = vec![0x45, 0xc0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c);
    let m = mtu.to_be_bytes();
    let mut icmp = vec![3, 4, 0, 0, 0, 0, m[0], m[1]];
    icmp.extend_from_slice(quote);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c);
    let mut v = dmac.to_vec();
    v.extend_from_slice(&smac);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend(ip);
    v.extend(icmp);
    v
}

/// Clears DF in a frame's IPv4 header and fixes its checksum.
pub fn without_df(mut v: Vec<u8>) -> Vec<u8> {
    v[14 + 6] &= !0x40;
    v[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&v[14..34]);
    v[24..26].copy_from_slice(&c);
    v
}

/// Whole seconds of `CLOCK_MONOTONIC_COARSE`: the data path's clock (`now_secs`).
fn coarse_secs() -> i64 {
    // SAFETY: zeroed timespec is valid; clock_gettime fills it.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid out pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut t) };
    assert_eq!(rc, 0, "clock_gettime");
    t.tv_sec
}

/// Waits (at most about a second) until the data path's clock starts a new second: the
/// once-per-second checks of a flow (its pair, in `Flow::synced`) then run on its next packet.
pub fn next_second() {
    let start = coarse_secs();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while coarse_secs() == start {
        assert!(
            std::time::Instant::now() < deadline,
            "CLOCK_MONOTONIC_COARSE did not move"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// One row of a fixture table.
pub struct Case {
    pub desc: &'static str,
    pub ingress: Side,
    pub input: Vec<u8>,
    pub verdict: u32,
    /// `None`: the frame must come out unchanged.
    pub output: Option<Vec<u8>>,
    /// Every event this case must count (a forwarded frame counts its forwarding event
    /// too, e.g. `FWD_REDIRECT`).
    pub events: &'static [u32],
}

/// Builds a fixture namespace (`prefix`, `neighbours`), loads the XDP program under test
/// in it with `config` applied (`@PIN@` stands for the pin directory), and runs `f` on a
/// thread inside the namespace (`bpf_fib_lookup` answers from the namespace of the caller).
/// The namespace and pins go on return, also on panic. Take `serial()` first.
pub fn with_loaded<T: Send>(
    prefix: &str,
    neighbours: &[([u8; 4], [u8; 6], Side)],
    config: &str,
    f: impl FnOnce(&mut Loaded<'_>) -> T + Send,
) -> T {
    crate::require_prerequisites();
    let bed = FibBed::new(prefix, neighbours);
    let object = ebpf_object();
    with_loaded_in(&bed, object, config, f)
}

/// `with_loaded` in a bed the caller made, with an explicit object.
pub fn with_loaded_in<T: Send>(
    bed: &FibBed,
    object: &Path,
    config: &str,
    f: impl FnOnce(&mut Loaded<'_>) -> T + Send,
) -> T {
    let cfg = parse(bed, config);
    bed.ns.run(|| {
        let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)
            .unwrap_or_else(|e| panic!("load {}: {e}", object.display()));
        println!(
            "verifier: lb_xdp processed {:?} instructions, lb_udp {:?}, lb_v6 {:?}, lb_v6_udp {:?}, lb_to_v4 {:?}, lb_to_v6 {:?}",
            dp.verified_insns(),
            dp.verified_insns_of(lb_common::UDP_PROGRAM_NAME),
            dp.verified_insns_of(lb_common::V6_PROGRAM_NAME),
            dp.verified_insns_of(lb_common::V6_UDP_PROGRAM_NAME),
            dp.verified_insns_of(lb_common::TO_V4_PROGRAM_NAME),
            dp.verified_insns_of(lb_common::TO_V6_PROGRAM_NAME),
        );
        let mut rec = Reconciler::adopt(dp.take_maps().expect("maps")).expect("adopt");
        rec.apply(&cfg, &HealthTable::default()).expect("apply");
        for side in [Side::A, Side::B] {
            let i = bed.ifindex(side);
            rec.maps.tx_ports.insert(i, i, None, 0).expect("tx port");
        }
        let before = rec.maps.event_totals().expect("events");
        let mut loaded = Loaded {
            bed,
            dp,
            rec,
            before,
            expected: BTreeMap::new(),
        };
        f(&mut loaded)
    })
}

fn parse(bed: &FibBed, config: &str) -> Config {
    let text = config.replace("@PIN@", bed.pin_dir.to_str().expect("utf8"));
    Config::parse(&text, Path::new("fixture.toml"))
        .unwrap_or_else(|e| panic!("fixture config: {e}\n{text}"))
}

/// The loaded program, its maps (through the reconciler) and the events the cases run so
/// far must have counted.
pub struct Loaded<'b> {
    pub bed: &'b FibBed,
    pub dp: Dataplane,
    pub rec: Reconciler,
    before: Vec<u64>,
    expected: BTreeMap<u32, u64>,
}

impl Loaded<'_> {
    pub fn prog(&mut self) -> &mut Xdp {
        self.dp.program().expect("program")
    }

    pub fn maps(&self) -> &Maps {
        &self.rec.maps
    }

    /// Applies another config (`@PIN@` as in `with_loaded`), as a reload would.
    pub fn apply(&mut self, config: &str) {
        let cfg = parse(self.bed, config);
        self.rec
            .apply(&cfg, &HealthTable::default())
            .expect("apply");
    }

    /// Runs one frame arriving on `side`: (verdict, output frame).
    pub fn run1(&mut self, side: Side, input: &[u8]) -> (u32, Vec<u8>) {
        let ctx = self.bed.ctx(side, input.len());
        let mut out = vec![0u8; input.len() + 256];
        let r = self
            .prog()
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs `cases` in order, checking each verdict, output frame and its checksums; adds
    /// the events they must count to the expected totals.
    pub fn run(&mut self, cases: Vec<Case>) {
        for c in cases {
            let (verdict, out) = self.run1(c.ingress, &c.input);
            assert_eq!(verdict, c.verdict, "{}: verdict", c.desc);
            match &c.output {
                Some(want) => {
                    assert_eq!(&out, want, "{}: output frame", c.desc);
                    assert_checksums(c.desc, &out);
                }
                None => assert_eq!(out, c.input, "{}: frame must be unchanged", c.desc),
            }
            self.expect_events(c.events);
            println!("fixture ok: {}", c.desc);
        }
    }

    /// Adds events counted by frames run outside `run`.
    pub fn expect_events(&mut self, events: &[u32]) {
        for e in events {
            *self.expected.entry(*e).or_default() += 1;
        }
    }

    pub fn events(&self) -> Vec<u64> {
        self.rec.maps.event_totals().expect("events")
    }

    /// Every event counter moved since the load exactly as the cases said (except
    /// `fib_lookup`, a note on the next-hop cache that `next_hop.rs` checks, and
    /// `flow_synced`, a note on the conntrack fast path that depends on the clock's second
    /// and that `fixtures.rs` checks on its own).
    pub fn assert_events(&self) {
        let after = self.events();
        for (i, name) in event::NAMES.iter().enumerate() {
            if i == event::FIB_LOOKUP as usize || i == event::FLOW_SYNCED as usize {
                continue;
            }
            let want = self
                .expected
                .get(&u32::try_from(i).expect("small"))
                .copied()
                .unwrap_or(0);
            assert_eq!(after[i] - self.before[i], want, "event counter {name}");
        }
    }

    /// The id of origin `name` of pool `pool`.
    pub fn origin_id(&self, pool: &str, name: &str) -> u32 {
        self.rec
            .assignment
            .origins
            .iter()
            .find(|(k, _)| k.pool == pool && k.name == name)
            .map(|(_, id)| *id)
            .unwrap_or_else(|| panic!("no id for {pool}/{name}"))
    }
}

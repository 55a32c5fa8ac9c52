//! `lb-bench`: the measurements behind `cargo xtask bench`, which builds it in release mode
//! and runs it as root. It measures per-packet cost (BPF_PROG_TEST_RUN), the control plane,
//! established flows with a million flows in the table, end-to-end throughput against direct
//! and HAProxy, and packet rate, then writes
//! `report.json`, `report.md` and SVG charts. Figures that come from other tools (criterion's
//! Maglev build times, the health tests' detection-to-drain) are passed in as files.
//!
//! Usage: `lb-bench --object <lb-ebpf object> --agent <lb-agent> [--out DIR] [--criterion DIR]
//! [--failover FILE] [--quick] [--only per-packet|many-flows|rate|e2e|control-plane|scale]`
//! (`--only` runs one part and prints it without writing a report). Set `LB_BENCH_DEBUG=1` to print the data path's
//! counters after the packet-rate and end-to-end runs.

mod e2e;
mod many_flows;
mod packet;
mod report;
mod scale;
mod tables;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_agent::{
    config::Config,
    dataplane::Dataplane,
    health::{self, HealthTable, Outcome},
    reconcile::Reconciler,
};
use lb_common::FlowKey;
use lb_testbed::{FibBed, Flags, Side};
use serde::Serialize;

pub const CLIENT: [u8; 4] = [10, 0, 1, 2];
pub const MAC_CLIENT: [u8; 6] = [2, 0, 0, 0, 1, 2];
pub const VIP: [u8; 4] = [10, 0, 0, 10];
pub const SNAT: [u8; 4] = [10, 0, 0, 1];
/// The geo-steered VIP of the per-packet bench; its `DE` clients (`CLIENT`) go to pool "geo".
const GEO_VIP: [u8; 4] = [10, 0, 0, 11];
/// Origins (indices for `origin`) of the per-packet bench's pools "web" and "geo".
const WEB_ORIGINS: std::ops::Range<u8> = 0..3;
const GEO_ORIGINS: std::ops::Range<u8> = 3..6;
/// Prefixes of the synthetic MaxMind database: about a GeoLite2-Country's IPv4 networks.
const BIG_TRIE_PREFIXES: usize = 600_000;

/// The IPv6 rows' addresses: the client and origins on the `FibBed::add_ipv6` links
/// (`2001:db8:1::/64` on side a, `2001:db8:11::/64` on side b), a VIP and a SNAT address
/// routed nowhere (the data path owns them).
const CLIENT6: [u8; 16] = v6(1, 2);
const VIP6: [u8; 16] = v6(0xa, 0x10);
const SNAT6: [u8; 16] = v6(5, 1);
/// Origins of pool "web6": `2001:db8:11::2` and on.
const WEB6_ORIGINS: std::ops::Range<u8> = 0..3;

/// `2001:db8:<net>::<host>`.
const fn v6(net: u8, host: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}

fn origin6(i: u8) -> ([u8; 16], [u8; 6]) {
    (v6(0x11, 2 + i), [2, 0, 0, 6, 11, 2 + i])
}

fn origin(i: u8) -> ([u8; 4], [u8; 6]) {
    ([10, 0, 11, 2 + i], [2, 0, 0, 0, 11, 2 + i])
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Report {
    pub date: String,
    pub machine: BTreeMap<String, String>,
    pub per_packet: Vec<PacketCost>,
    pub per_packet_method: String,
    /// Established packets with a million flows in the tables (`many_flows`); empty when
    /// that part did not run.
    #[serde(default)]
    pub many_flows: BTreeMap<String, f64>,
    pub control: BTreeMap<String, f64>,
    pub maglev_build_us: BTreeMap<String, f64>,
    pub e2e: Vec<e2e::Row>,
    pub packet_rate: Vec<packet::Rate>,
    pub failover: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PacketCost {
    pub case: String,
    /// Median nanoseconds of one run, as the kernel timed it (repeat = 1).
    pub median_ns: f64,
    /// Same for the bare XDP_TX program on the same frame, measured in the same run.
    pub floor_ns: f64,
    pub ratio_to_floor: f64,
    /// Median minus floor: the program's own work.
    pub net_ns: f64,
    /// The spread of the runs: 10th and 90th percentiles, ns.
    #[serde(default)]
    pub p10_ns: f64,
    #[serde(default)]
    pub p90_ns: f64,
    pub verdict: u32,
    /// Geo rows: this median minus the same path's median on the VIP without geo steering,
    /// i.e. what the client lookup adds. Absent for the other rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_overhead_ns: Option<f64>,
}

/// A TCP frame with TTL 64 and no payload: SYN, SYN-ACK or ACK.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
fn tcp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
) -> Vec<u8> {
    let flags = match (syn, ack) {
        (true, true) => Flags::SynAck,
        (true, false) => Flags::Syn,
        (false, _) => Flags::Ack,
    };
    lb_testbed::tcp_frame(smac, dmac, src, dst, 64, sport, dport, flags, &[])
}

/// The origin of the flow `key` (address, MAC, port) and its SNAT port, host order.
fn flow_origin(
    maps: &lb_agent::dataplane::Maps,
    key: &FlowKey,
) -> Result<([u8; 4], [u8; 6], u16, u16)> {
    let flow = maps
        .flows
        .get(key, 0)
        .with_context(|| format!("no flow for {key:?}"))?;
    let o: [u8; 4] = flow.origin_addr[12..16].try_into()?;
    let omac = (WEB_ORIGINS.start..GEO_ORIGINS.end)
        .map(origin)
        .find(|(a, _)| *a == o)
        .map(|(_, m)| m)
        .context("origin mac")?;
    Ok((
        o,
        omac,
        u16::from_be(flow.origin_port),
        u16::from_be(flow.snat_port),
    ))
}

/// A UDP datagram with TTL 64 and a 32-byte payload.
fn udp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    addrs: ([u8; 4], [u8; 4]),
    ports: (u16, u16),
) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv4(addrs.0, addrs.1, 64)
        .udp(ports.0, ports.1)
        .write(&mut v, &[0x42; 32])
        .expect("udp frame");
    v
}

/// The UDP flow of `CLIENT:sport` to the VIP's port 53 (made by a datagram already run):
/// its next datagram, and its origin's answer.
fn udp_flow(
    maps: &lb_agent::dataplane::Maps,
    bed: &FibBed,
    sport: u16,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let key = FlowKey {
        proto: lb_common::IPPROTO_UDP,
        ..FlowKey::tcp_v4(CLIENT, sport, VIP, 53)
    };
    let (o, omac, oport, snat_port) = flow_origin(maps, &key)?;
    Ok((
        udp_frame(MAC_CLIENT, bed.mac_a, (CLIENT, VIP), (sport, 53)),
        udp_frame(omac, bed.mac_b, (o, SNAT), (oport, snat_port)),
    ))
}

/// A UDP datagram over IPv6 with hop limit 64 and a 32-byte payload.
fn udp6_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    addrs: ([u8; 16], [u8; 16]),
    ports: (u16, u16),
) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv6(addrs.0, addrs.1, 64)
        .udp(ports.0, ports.1)
        .write(&mut v, &[0x42; 32])
        .expect("udp6 frame");
    v
}

/// The flow key of `CLIENT6:sport -> VIP6:dport` in protocol `proto`.
fn key6(sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: CLIENT6,
        dst: VIP6,
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// `flow_origin` for an IPv6 flow: the origin (address, MAC, port) and the SNAT port.
fn flow_origin6(
    maps: &lb_agent::dataplane::Maps,
    key: &FlowKey,
) -> Result<([u8; 16], [u8; 6], u16, u16)> {
    let flow = maps
        .flows
        .get(key, 0)
        .with_context(|| format!("no IPv6 flow for {key:?}"))?;
    let (o, omac) = WEB6_ORIGINS
        .map(origin6)
        .find(|(a, _)| *a == flow.origin_addr)
        .context("IPv6 origin mac")?;
    Ok((
        o,
        omac,
        u16::from_be(flow.origin_port),
        u16::from_be(flow.snat_port),
    ))
}

/// `establish` over IPv6: the flow `CLIENT6:sport -> VIP6:80` that a SYN (seq 1000) made
/// gets its origin's SYN-ACK and the client's ACK, must then be established, and the
/// client's next segment and the origin's are returned.
fn establish6(
    prog: &aya::programs::Xdp,
    maps: &lb_agent::dataplane::Maps,
    bed: &FibBed,
    sport: u16,
) -> Result<(Vec<u8>, Vec<u8>)> {
    use lb_testbed::{tcp6_segment, tcp_flags::ACK, tcp_flags::SYN};
    let (o, omac, oport, snat_port) = flow_origin6(maps, &key6(sport, 80, lb_common::IPPROTO_TCP))?;
    let from_origin = |flags, seq_ack| {
        tcp6_segment(
            omac,
            bed.mac_b,
            o,
            SNAT6,
            64,
            (oport, snat_port),
            flags,
            seq_ack,
            &[],
        )
    };
    let synack = from_origin(SYN | ACK, (1999, 1001));
    let client = tcp6_segment(
        MAC_CLIENT,
        bed.mac_a,
        CLIENT6,
        VIP6,
        64,
        (sport, 80),
        ACK,
        (1001, 2000),
        &[],
    );
    run_each(prog, std::slice::from_ref(&synack), &|l| {
        bed.ctx(Side::B, l)
    })?;
    run_each(prog, std::slice::from_ref(&client), &|l| {
        bed.ctx(Side::A, l)
    })?;
    let rkey = FlowKey {
        src: o,
        dst: SNAT6,
        sport: oport.to_be(),
        dport: snat_port.to_be(),
        proto: lb_common::IPPROTO_TCP,
        _pad: [0; 3],
    };
    let rev = maps
        .rev_flows
        .get(&rkey, 0)
        .with_context(|| format!("no IPv6 reverse entry for port {sport}"))?;
    anyhow::ensure!(
        rev.flags & lb_common::CT_ESTABLISHED != 0,
        "IPv6 flow of port {sport}: not established after its handshake (flags {:#x})",
        rev.flags
    );
    Ok((client, from_origin(ACK, (2000, 1001))))
}

/// `plain` (the per-packet config) with an IPv6 SNAT address beside the IPv4 one, a UDP
/// budget above the runs' new flows, pool "web6" (`WEB6_ORIGINS`) and two load balancers
/// on `VIP6`: TCP 80 and UDP 53.
fn per_packet_v6_config(plain: &str) -> String {
    let mut c = plain
        .replace(
            "snat_address = \"10.0.0.1\"",
            &format!(
                "snat_address = [\"10.0.0.1\", \"{}\"]",
                std::net::Ipv6Addr::from(SNAT6)
            ),
        )
        .replace("[dataplane]\n", "[dataplane]\nudp_budget = 1000000\n");
    c.push_str("\n[[pools]]\nname = \"web6\"\norigins = [\n");
    for i in WEB6_ORIGINS {
        c.push_str(&format!(
            "  {{ name = \"v6o{i}\", address = \"{}\", port = 8080 }},\n",
            std::net::Ipv6Addr::from(origin6(i).0)
        ));
    }
    let vip = std::net::Ipv6Addr::from(VIP6);
    c.push_str(&format!(
        "]\n\n[[load_balancers]]\nname = \"www6\"\naddress = \"{vip}\"\nport = 80\ndefault_pools = [\"web6\"]\n\n[[load_balancers]]\nname = \"dns6\"\nprotocol = \"udp\"\naddress = \"{vip}\"\nport = 53\ndefault_pools = [\"web6\"]\n"
    ));
    c
}

/// The NAT64 rows' VIP port (on `VIP6`).
const NAT64_PORT: u16 = 8064;

/// `v6` (`per_packet_v6_config`) with pool "web4" (the IPv4 origins of "web") behind a TCP
/// load balancer on `VIP6`:`NAT64_PORT`.
fn per_packet_nat64_config(v6: &str) -> String {
    let mut c = v6.to_owned();
    c.push_str("\n[[pools]]\nname = \"web4\"\norigins = [\n");
    for i in WEB_ORIGINS {
        c.push_str(&format!(
            "  {{ name = \"v4o{i}\", address = \"{}\", port = 8080 }},\n",
            std::net::Ipv4Addr::from(origin(i).0)
        ));
    }
    let vip = std::net::Ipv6Addr::from(VIP6);
    c.push_str(&format!(
        "]\n\n[[load_balancers]]\nname = \"www64\"\naddress = \"{vip}\"\nport = {NAT64_PORT}\ndefault_pools = [\"web4\"]\n"
    ));
    c
}

/// `establish6` for the NAT64 VIP: the flow `CLIENT6:sport -> VIP6:NAT64_PORT` gets its
/// IPv4 origin's SYN-ACK (translated to the client) and the client's ACK, must then be
/// established; the client's next segment and the origin's are returned.
fn establish64(
    prog: &aya::programs::Xdp,
    maps: &lb_agent::dataplane::Maps,
    bed: &FibBed,
    sport: u16,
) -> Result<(Vec<u8>, Vec<u8>)> {
    use lb_testbed::{tcp6_segment, tcp_flags::ACK, tcp_flags::SYN, tcp_segment};
    let key = key6(sport, NAT64_PORT, lb_common::IPPROTO_TCP);
    let flow = maps
        .flows
        .get(&key, 0)
        .with_context(|| format!("no NAT64 flow for {key:?}"))?;
    let (o, omac) = WEB_ORIGINS
        .map(origin)
        .find(|(a, _)| lb_common::v4_mapped(*a) == flow.origin_addr)
        .context("NAT64 origin (an IPv4 origin of pool web4)")?;
    let (oport, snat_port) = (u16::from_be(flow.origin_port), u16::from_be(flow.snat_port));
    let from_origin = |flags, seq_ack| {
        tcp_segment(
            omac,
            bed.mac_b,
            o,
            SNAT,
            64,
            (oport, snat_port),
            flags,
            seq_ack,
            &[],
        )
    };
    let client = tcp6_segment(
        MAC_CLIENT,
        bed.mac_a,
        CLIENT6,
        VIP6,
        64,
        (sport, NAT64_PORT),
        ACK,
        (1001, 2000),
        &[],
    );
    run_each(prog, &[from_origin(SYN | ACK, (1999, 1001))], &|l| {
        bed.ctx(Side::B, l)
    })?;
    run_each(prog, std::slice::from_ref(&client), &|l| {
        bed.ctx(Side::A, l)
    })?;
    let rkey = FlowKey {
        src: lb_common::v4_mapped(o),
        dst: lb_common::v4_mapped(SNAT),
        sport: oport.to_be(),
        dport: snat_port.to_be(),
        proto: lb_common::IPPROTO_TCP,
        _pad: [0; 3],
    };
    let rev = maps
        .rev_flows
        .get(&rkey, 0)
        .with_context(|| format!("no NAT64 reverse entry for port {sport}"))?;
    anyhow::ensure!(
        rev.flags & lb_common::CT_ESTABLISHED != 0,
        "NAT64 flow of port {sport}: not established after its handshake (flags {:#x})",
        rev.flags
    );
    Ok((client, from_origin(ACK, (2000, 1001))))
}

/// `n` pseudo-random numbers below `modulo` (xorshift64, a fixed sequence, so every run and
/// every table sees the same picks).
fn picks(n: usize, modulo: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % modulo
        })
        .collect()
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
    let m = v[v.len() / 2] as f64;
    m
}

/// Runs `prog` once per frame (repeat = 1, so every run sees the frame as given) and returns
/// the kernel's per-run times.
fn run_each(
    prog: &aya::programs::Xdp,
    frames: &[Vec<u8>],
    ctx_of: &dyn Fn(usize) -> Vec<u8>,
) -> Result<(Vec<u64>, u32)> {
    let mut times = Vec::with_capacity(frames.len());
    let mut verdict = 0;
    let mut out = vec![0u8; 256];
    for f in frames {
        let ctx = ctx_of(f.len());
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .context("test_run")?;
        #[expect(clippy::cast_possible_truncation, reason = "nanoseconds of one run")]
        times.push(r.duration.as_nanos() as u64);
        verdict = r.return_value;
    }
    Ok((times, verdict))
}

fn per_packet_config(pin_dir: &std::path::Path, origins: usize, monitor: bool) -> String {
    let mut c = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\nsnat_address = \"10.0.0.1\"\nsnat_ports = [1024, 65535]\nsyn_cookies = \"off\"\npin_dir = \"{}\"\n\n",
        pin_dir.display()
    );
    if monitor {
        c.push_str("[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 1\ntimeout = 0.5\n\n");
    }
    c.push_str("[[pools]]\nname = \"web\"\n");
    if monitor {
        c.push_str("monitor = \"tcp\"\n");
    }
    c.push_str("origins = [\n");
    for i in 0..origins {
        c.push_str(&format!(
            "  {{ name = \"o{i}\", address = \"10.0.{}.{}\", port = 8080 }},\n",
            11 + i / 250,
            2 + i % 250
        ));
    }
    c.push_str("]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n");
    c
}

/// `per_packet_config` plus a second pool, "geo" (origins `GEO_ORIGINS`), and a VIP at
/// `GEO_VIP` under `geo` steering that sends `DE` clients there and everyone else to "web";
/// `geo` is the body of the `[geo]` section.
fn per_packet_geo_config(pin_dir: &std::path::Path, geo: &str) -> String {
    let mut c = per_packet_config(pin_dir, WEB_ORIGINS.len(), false);
    c.push_str("\n[[pools]]\nname = \"geo\"\norigins = [\n");
    for i in GEO_ORIGINS {
        let (a, _) = origin(i);
        c.push_str(&format!(
            "  {{ name = \"g{i}\", address = \"{}\", port = 8080 }},\n",
            std::net::Ipv4Addr::from(a)
        ));
    }
    c.push_str(&format!(
        "]\n\n[[load_balancers]]\nname = \"geo\"\naddress = \"{}\"\nport = 80\ndefault_pools = [\"web\"]\nsteering_policy = \"geo\"\ncountry_pools = {{ DE = [\"geo\"] }}\n\n[geo]\n{geo}\n",
        std::net::Ipv4Addr::from(GEO_VIP)
    ));
    c
}

/// A file removed when dropped, also when the bench fails or panics.
struct TempFile(PathBuf);

impl TempFile {
    /// A fresh path under the temp directory, unique per process and call.
    fn new(stem: &str, ext: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self(std::env::temp_dir().join(format!("{stem}-{}-{nanos}.{ext}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes a GeoLite2-Country-sized MaxMind database to `path`: `count` IPv4 prefixes of mixed
/// lengths (mostly /24 to /20, some longer), packed from 1.0.0.0 up, in 16 countries other
/// than DE, none of them covering `CLIENT`'s /24; plus that /24 as DE. The prefixes run
/// densely through 10.0.0.0/8 too, so the client's prefix sits as deep in the trie as a real
/// client's would, not alone in an empty corner. Returns the number of prefixes written.
fn write_big_geo_db(path: &std::path::Path, count: usize) -> Result<usize> {
    const COUNTRIES: [&str; 16] = [
        "US", "CN", "JP", "GB", "FR", "BR", "IN", "RU", "KR", "IT", "CA", "AU", "ES", "NL", "PL",
        "SE",
    ];
    const LENS: [u8; 16] = [
        24, 24, 24, 24, 24, 24, 24, 23, 23, 22, 22, 21, 20, 25, 26, 28,
    ];
    let client = u64::from(u32::from_be_bytes(CLIENT)) & !0xff;
    let mut entries: Vec<(std::net::Ipv4Addr, u8, Option<&str>)> = Vec::with_capacity(count + 1);
    let mut cursor: u64 = 1 << 24;
    // xorshift64: a fixed sequence, so every run builds the same trie.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while entries.len() < count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = LENS[(x % 16) as usize];
        let size = 1u64 << (32 - len);
        cursor = cursor.div_ceil(size) * size;
        anyhow::ensure!(
            cursor + size <= 224 << 24,
            "synthetic geo database: address space ran out at {} prefixes",
            entries.len()
        );
        // Neither covering nor inside the client's /24.
        if cursor < client + 256 && client < cursor + size {
            cursor += size;
            continue;
        }
        #[expect(clippy::cast_possible_truncation, reason = "below 2^32, checked above")]
        let net = std::net::Ipv4Addr::from(cursor as u32);
        entries.push((net, len, Some(COUNTRIES[((x >> 8) % 16) as usize])));
        cursor += size;
        // A gap now and then, as between allocations.
        if x >> 61 == 0 {
            cursor += size;
        }
    }
    #[expect(clippy::cast_possible_truncation, reason = "an IPv4 address")]
    entries.push((std::net::Ipv4Addr::from(client as u32), 24, Some("DE")));
    lb_testbed::mmdb::write_country_db(path, &entries)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(entries.len())
}

/// Empties `FLOWS` and `REV_FLOWS`, so a new-flow case starts from the tables the first one
/// met (and its SNAT port probes meet the same occupancy).
fn clear_flows(maps: &mut lb_agent::dataplane::Maps) -> Result<()> {
    let keys = maps.flows.keys().collect::<Result<Vec<_>, _>>()?;
    for k in &keys {
        maps.flows.remove(k)?;
    }
    let keys = maps.rev_flows.keys().collect::<Result<Vec<_>, _>>()?;
    for k in &keys {
        maps.rev_flows.remove(k)?;
    }
    Ok(())
}

/// `frames` (distinct SYNs from `CLIENT` to `GEO_VIP`) through `prog` as `run_each` does,
/// from empty flow tables; then checks that every one matched the geo trie (`GEO_MATCH` grew by
/// one per frame) and took an origin of pool "geo", and that a further SYN's output frame is
/// addressed to such an origin.
fn geo_new_flows(
    prog: &aya::programs::Xdp,
    maps: &mut lb_agent::dataplane::Maps,
    frames: &[Vec<u8>],
    ctx_of: &dyn Fn(usize) -> Vec<u8>,
    lb_mac: [u8; 6],
    case: &str,
) -> Result<(Vec<u64>, u32)> {
    use lb_common::event::GEO_MATCH;
    clear_flows(maps)?;
    let before = maps.event_totals()?[GEO_MATCH as usize];
    let (t, v) = run_each(prog, frames, ctx_of)?;
    let matched = maps.event_totals()?[GEO_MATCH as usize] - before;
    anyhow::ensure!(
        matched == frames.len() as u64,
        "{case}: geo_match grew by {matched} over {} SYNs; the client did not match the trie",
        frames.len()
    );
    let geo_addrs: Vec<[u8; 4]> = GEO_ORIGINS.map(|i| origin(i).0).collect();
    for i in 0..frames.len() {
        #[expect(clippy::cast_possible_truncation, reason = "below 65536 - 1024")]
        let key = FlowKey::tcp_v4(CLIENT, 1024 + i as u16, GEO_VIP, 80);
        let flow = maps
            .flows
            .get(&key, 0)
            .with_context(|| format!("{case}: no flow for SYN {i}"))?;
        let o: [u8; 4] = flow.origin_addr[12..16].try_into()?;
        anyhow::ensure!(
            geo_addrs.contains(&o),
            "{case}: SYN {i} went to {o:?}, not to an origin of pool geo"
        );
    }
    #[expect(clippy::cast_possible_truncation, reason = "below 65536 - 1024")]
    let sport = 1024 + frames.len() as u16;
    let f = tcp_frame(MAC_CLIENT, lb_mac, CLIENT, GEO_VIP, sport, 80, true, false);
    let mut out = vec![0u8; 256];
    let ctx = ctx_of(f.len());
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&f),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .context("test_run")?;
    let (dmac, dst) = (&out[..6], &out[30..34]);
    anyhow::ensure!(
        r.return_value == v
            && GEO_ORIGINS
                .map(origin)
                .any(|(a, m)| a[..] == *dst && m[..] == *dmac),
        "{case}: a SYN's output frame went to {dst:?} ({dmac:02x?}, verdict {}), not to an origin of pool geo",
        r.return_value
    );
    Ok((t, v))
}

/// Completes the handshake of the flow `CLIENT:sport -> vip:80` that a SYN (seq 1000)
/// made: the origin's SYN-ACK (seq 1999, so the client acknowledges 2000) and the client's
/// ACK go through `prog`, and the flow must then be established in `REV_FLOWS`. Returns an
/// established segment of each direction: the client's ACK (seq 1001, ack 2000) and the
/// origin's (seq 2000, ack 1001), as a connection's packets look after its handshake.
fn establish(
    prog: &aya::programs::Xdp,
    maps: &lb_agent::dataplane::Maps,
    bed: &FibBed,
    (sport, vip): (u16, [u8; 4]),
) -> Result<(Vec<u8>, Vec<u8>)> {
    use lb_testbed::{tcp_flags::ACK, tcp_flags::SYN, tcp_segment};
    let key = FlowKey::tcp_v4(CLIENT, sport, vip, 80);
    let (o, omac, oport, snat_port) = flow_origin(maps, &key)?;
    let synack = tcp_segment(
        omac,
        bed.mac_b,
        o,
        SNAT,
        64,
        (oport, snat_port),
        SYN | ACK,
        (1999, 1001),
        &[],
    );
    let client = tcp_segment(
        MAC_CLIENT,
        bed.mac_a,
        CLIENT,
        vip,
        64,
        (sport, 80),
        ACK,
        (1001, 2000),
        &[],
    );
    let origin_ack = tcp_segment(
        omac,
        bed.mac_b,
        o,
        SNAT,
        64,
        (oport, snat_port),
        ACK,
        (2000, 1001),
        &[],
    );
    run_each(prog, std::slice::from_ref(&synack), &|l| {
        bed.ctx(Side::B, l)
    })?;
    run_each(prog, std::slice::from_ref(&client), &|l| {
        bed.ctx(Side::A, l)
    })?;
    let rkey = FlowKey::tcp_v4(o, oport, SNAT, snat_port);
    let rev = maps
        .rev_flows
        .get(&rkey, 0)
        .with_context(|| format!("no reverse entry for port {sport}"))?;
    anyhow::ensure!(
        rev.flags & lb_common::CT_ESTABLISHED != 0,
        "flow of port {sport}: not established after its handshake (flags {:#x})",
        rev.flags
    );
    Ok((client, origin_ack))
}

/// Per-packet cost of each path, beside the XDP_TX floor, and control-plane figures that
/// need the same loaded program.
fn per_packet(object: &std::path::Path, report: &mut Report) -> Result<()> {
    const N: usize = 20_000;
    let neighbours: Vec<([u8; 4], [u8; 6], Side)> = std::iter::once((CLIENT, MAC_CLIENT, Side::A))
        .chain((WEB_ORIGINS.start..GEO_ORIGINS.end).map(|i| {
            let (a, m) = origin(i);
            (a, m, Side::B)
        }))
        .collect();
    let bed = FibBed::new("bp", &neighbours);
    let neighbours6: Vec<([u8; 16], [u8; 6], Side)> =
        std::iter::once((CLIENT6, MAC_CLIENT, Side::A))
            .chain(WEB6_ORIGINS.map(|i| {
                let (a, m) = origin6(i);
                (a, m, Side::B)
            }))
            .collect();
    bed.add_ipv6(&neighbours6);
    let cfg = Config::parse(
        &per_packet_config(&bed.pin_dir, WEB_ORIGINS.len(), false),
        std::path::Path::new("bench.toml"),
    )?;
    // Geo steering: the client's /24 as DE in a 2-prefix trie, then in a GeoLite2-sized one.
    let small_geo = Config::parse(
        &per_packet_geo_config(
            &bed.pin_dir,
            "prefixes = [\n  { prefix = \"10.0.1.0/24\", country = \"DE\" },\n  { prefix = \"192.0.2.0/24\", country = \"FR\" },\n]",
        ),
        std::path::Path::new("bench-geo-small.toml"),
    )?;
    let db = TempFile::new("lb-bench-geo", "mmdb");
    let written = write_big_geo_db(&db.0, BIG_TRIE_PREFIXES)?;
    let t = Instant::now();
    let big_geo = Config::parse(
        &per_packet_geo_config(&bed.pin_dir, &format!("database = \"{}\"", db.0.display())),
        std::path::Path::new("bench-geo-big.toml"),
    )?;
    let db_load_ms = t.elapsed().as_secs_f64() * 1e3;
    // Loaded: the agent holds the prefixes, not the file.
    drop(db);
    let (small_n, big_n) = (small_geo.geo.merged().len(), big_geo.geo.merged().len());
    anyhow::ensure!(
        big_n == written,
        "geo database: wrote {written} prefixes, the agent loaded {big_n}"
    );
    let (costs, control) = bed
        .ns
        .run(|| -> Result<(Vec<PacketCost>, BTreeMap<String, f64>)> {
            let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)?;
            let mut rec = Reconciler::adopt(dp.take_maps()?)?;
            let t = Instant::now();
            rec.apply(&cfg, &HealthTable::default())?;
            let mut control = BTreeMap::new();
            control.insert(
                "config_apply_3_origins_ms".into(),
                t.elapsed().as_secs_f64() * 1e3,
            );
            for i in [bed.ifindex_a, bed.ifindex_b] {
                rec.maps.tx_ports.insert(i, i, None, 0)?;
            }
            // As the agent does: the host's own addresses, so traffic for the host (the "not a
            // VIP" case) passes without the no-open-router FIB lookup.
            rec.sync_local_addrs(&lb_agent::netwatch::local_addrs()?)?;
            let ctx_a = |len: usize| bed.ctx(Side::A, len);
            let ctx_b = |len: usize| bed.ctx(Side::B, len);
            let syns: Vec<Vec<u8>> = (0..N)
                .map(|i| {
                    tcp_frame(
                        MAC_CLIENT,
                        bed.mac_a,
                        CLIENT,
                        VIP,
                        1024 + i as u16,
                        80,
                        true,
                        false,
                    )
                })
                .collect();
            let pass = vec![
                tcp_frame(
                    MAC_CLIENT,
                    bed.mac_a,
                    CLIENT,
                    [10, 0, 1, 1],
                    40000,
                    22,
                    true,
                    false
                );
                N
            ];
            let (mut syn_t, syn_v) = run_each(dp.program()?, &syns, &ctx_a)?;
            // An established connection's packets, both ways (not handshake segments).
            let (est, reply) = establish(dp.program()?, &rec.maps, &bed, (1024, VIP))?;
            let (est, reply) = (vec![est; N], vec![reply; N]);
            let (mut est_t, est_v) = run_each(dp.program()?, &est, &ctx_a)?;
            let (mut rep_t, rep_v, mut pass_t, pass_v) = {
                let prog = dp.program()?;
                let (rep_t, rep_v) = run_each(prog, &reply, &ctx_b)?;
                let (pass_t, pass_v) = run_each(prog, &pass, &ctx_a)?;
                (rep_t, rep_v, pass_t, pass_v)
            };
            // The same SYNs (new tuples) answered with SYN cookies instead of flows.
            let always = Config::parse(
                &per_packet_config(&bed.pin_dir, 3, false)
                    .replace("syn_cookies = \"off\"", "syn_cookies = \"always\""),
                std::path::Path::new("bench-cookies.toml"),
            )?;
            rec.apply(&always, &HealthTable::default())?;
            let cookie_syns: Vec<Vec<u8>> = (0..N)
                .map(|i| {
                    tcp_frame(
                        MAC_CLIENT,
                        bed.mac_a,
                        [10, 0, 1, 3],
                        VIP,
                        1024 + i as u16,
                        80,
                        true,
                        false,
                    )
                })
                .collect();
            let (mut cookie_t, cookie_v) = run_each(dp.program()?, &cookie_syns, &ctx_a)?;
            rec.apply(&cfg, &HealthTable::default())?;
            let mut aux = aya::Ebpf::load_file(lb_agent::dataplane::test_object(object))?;
            let floor: &mut aya::programs::Xdp = aux
                .program_mut("xdp_tx_floor")
                .context("xdp_tx_floor")?
                .try_into()?;
            floor.load()?;
            let (mut floor_t, _) = run_each(floor, &est, &ctx_a)?;
            let floor_ns = median(&mut floor_t);
            let cost = |case: &str, t: &mut Vec<u64>, verdict: u32| {
                let m = median(t);
                #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
                let pct = |p: usize| t[(t.len() - 1) * p / 100] as f64;
                PacketCost {
                    case: case.into(),
                    median_ns: m,
                    floor_ns,
                    ratio_to_floor: m / floor_ns,
                    net_ns: m - floor_ns,
                    p10_ns: pct(10),
                    p90_ns: pct(90),
                    verdict,
                    geo_overhead_ns: None,
                }
            };
            let mut costs = vec![
                cost("new flow (SYN, distinct 5-tuples)", &mut syn_t, syn_v),
                cost("established (flow-table hit)", &mut est_t, est_v),
                cost("reply (reverse NAT)", &mut rep_t, rep_v),
                cost("not a VIP (pass)", &mut pass_t, pass_v),
                cost("SYN answered with a SYN cookie", &mut cookie_t, cookie_v),
            ];

            // The same new flows and established packets on the geo VIP: LPM lookup of the
            // client in GEO, then GEO_PLAN, per new flow.
            let geo_syns: Vec<Vec<u8>> = (0..N)
                .map(|i| {
                    tcp_frame(
                        MAC_CLIENT,
                        bed.mac_a,
                        CLIENT,
                        GEO_VIP,
                        1024 + i as u16,
                        80,
                        true,
                        false,
                    )
                })
                .collect();
            let small_case = format!("new flow, geo VIP ({small_n}-prefix trie)");
            let big_trie = format!("{}k-prefix trie", big_n / 1000);
            let big_case = format!("new flow, geo VIP ({big_trie})");
            let est_case = format!("established, geo VIP ({big_trie})");
            rec.apply(&small_geo, &HealthTable::default())?;
            let (mut small_t, small_v) = geo_new_flows(
                dp.program()?,
                &mut rec.maps,
                &geo_syns,
                &ctx_a,
                bed.mac_a,
                &small_case,
            )?;
            let t = Instant::now();
            rec.apply(&big_geo, &HealthTable::default())?;
            control.insert(
                format!("geo_trie_apply_{big_n}_prefixes_ms"),
                t.elapsed().as_secs_f64() * 1e3,
            );
            control.insert(format!("geo_database_load_{big_n}_prefixes_ms"), db_load_ms);
            let (mut big_t, big_v) = geo_new_flows(
                dp.program()?,
                &mut rec.maps,
                &geo_syns,
                &ctx_a,
                bed.mac_a,
                &big_case,
            )?;
            // Packets of the first of those flows: a flow-table hit, no geo lookup.
            let (geo_est, _) = establish(dp.program()?, &rec.maps, &bed, (1024, GEO_VIP))?;
            let geo_est = vec![geo_est; N];
            let (mut gest_t, gest_v) = run_each(dp.program()?, &geo_est, &ctx_a)?;
            anyhow::ensure!(
                (small_v, big_v, gest_v) == (syn_v, syn_v, est_v),
                "geo VIP verdicts {small_v}/{big_v}/{gest_v}, plain VIP {syn_v}/{est_v}"
            );
            // The plain VIP's new flows again, from empty tables, right after the geo cases:
            // the kernel's per-run time drifts by tens of ns over a run, so the geo rows are
            // compared with this adjacent baseline rather than with the first row.
            clear_flows(&mut rec.maps)?;
            let (mut again_t, _) = run_each(dp.program()?, &syns, &ctx_a)?;
            let (plain_new, plain_est) = (median(&mut again_t), costs[1].median_ns);
            for (case, t, v, plain) in [
                (&small_case, &mut small_t, small_v, plain_new),
                (&big_case, &mut big_t, big_v, plain_new),
                (&est_case, &mut gest_t, gest_v, plain_est),
            ] {
                let mut c = cost(case, t, v);
                c.geo_overhead_ns = Some(c.median_ns - plain);
                costs.push(c);
            }

            // The plain VIP with session affinity, then with least-connections origin
            // steering: new flows (affinity: the client's entry is found after the first)
            // and an established flow's packets, each from empty flow tables.
            let plain_text = per_packet_config(&bed.pin_dir, WEB_ORIGINS.len(), false);
            let variants = [
                (
                    "affinity VIP (session_affinity = \"ip\")",
                    plain_text.replace(
                        "default_pools = [\"web\"]",
                        "default_pools = [\"web\"]\nsession_affinity = \"ip\"",
                    ),
                ),
                (
                    "least-connections pool",
                    plain_text.replace(
                        "name = \"web\"\n",
                        "name = \"web\"\norigin_steering = { policy = \"least_connections\" }\n",
                    ),
                ),
            ];
            for (what, text) in variants {
                anyhow::ensure!(text != plain_text, "{what}: config edit applied");
                let c = Config::parse(&text, std::path::Path::new("bench-variant.toml"))?;
                rec.apply(&c, &HealthTable::default())?;
                clear_flows(&mut rec.maps)?;
                let (mut new_t, new_v) = run_each(dp.program()?, &syns, &ctx_a)?;
                let (est1, _) = establish(dp.program()?, &rec.maps, &bed, (1024, VIP))?;
                let (mut e_t, e_v) = run_each(dp.program()?, &vec![est1; N], &ctx_a)?;
                anyhow::ensure!(
                    (new_v, e_v) == (syn_v, est_v),
                    "{what}: verdicts {new_v}/{e_v}, plain VIP {syn_v}/{est_v}"
                );
                costs.push(cost(&format!("new flow, {what}"), &mut new_t, new_v));
                costs.push(cost(&format!("established, {what}"), &mut e_t, e_v));
            }

            // A UDP VIP on the same pool (53/udp): new flows (one datagram each, distinct
            // 5-tuples; a budget above N so none is refused), a flow's datagrams, and its
            // origin's answers (lb_xdp tail-calls lb_udp for each).
            let udp_text = format!(
                "{}\n[[load_balancers]]\nname = \"dns\"\nprotocol = \"udp\"\naddress = \"10.0.0.10\"\nport = 53\ndefault_pools = [\"web\"]\n",
                plain_text.replace("[dataplane]\n", "[dataplane]\nudp_budget = 1000000\n")
            );
            let udp_cfg = Config::parse(&udp_text, std::path::Path::new("bench-udp.toml"))?;
            rec.apply(&udp_cfg, &HealthTable::default())?;
            clear_flows(&mut rec.maps)?;
            let datagram = |sport: u16| udp_frame(MAC_CLIENT, bed.mac_a, (CLIENT, VIP), (sport, 53));
            let udp_new: Vec<Vec<u8>> = (0..N).map(|i| datagram(1024 + i as u16)).collect();
            let (mut unew_t, unew_v) = run_each(dp.program()?, &udp_new, &ctx_a)?;
            let (uest, ureply) = udp_flow(&rec.maps, &bed, 1024)?;
            let (mut uest_t, uest_v) = run_each(dp.program()?, &vec![uest; N], &ctx_a)?;
            let (mut urep_t, urep_v) = run_each(dp.program()?, &vec![ureply; N], &ctx_b)?;
            anyhow::ensure!(
                (unew_v, uest_v, urep_v) == (syn_v, est_v, rep_v),
                "UDP verdicts {unew_v}/{uest_v}/{urep_v}, TCP {syn_v}/{est_v}/{rep_v}"
            );
            costs.push(cost("new flow, UDP VIP (distinct 5-tuples)", &mut unew_t, unew_v));
            costs.push(cost("established, UDP VIP (flow-table hit)", &mut uest_t, uest_v));
            costs.push(cost("reply, UDP VIP (reverse NAT)", &mut urep_t, urep_v));

            // IPv6 (lb_xdp tail-calls lb_v6 / lb_v6_udp): a TCP and a UDP load balancer on
            // VIP6 with pool "web6", the same cases as IPv4. Their floor is the bare XDP_TX
            // program on the IPv6 established frame (74 bytes, not 54).
            let v6_cfg = Config::parse(
                &per_packet_v6_config(&plain_text),
                std::path::Path::new("bench-v6.toml"),
            )?;
            rec.apply(&v6_cfg, &HealthTable::default())?;
            clear_flows(&mut rec.maps)?;
            let syns6: Vec<Vec<u8>> = (0..N)
                .map(|i| {
                    lb_testbed::tcp6_segment(
                        MAC_CLIENT,
                        bed.mac_a,
                        CLIENT6,
                        VIP6,
                        64,
                        (1024 + i as u16, 80),
                        lb_testbed::tcp_flags::SYN,
                        (1000, 0),
                        &[],
                    )
                })
                .collect();
            let (mut syn6_t, syn6_v) = run_each(dp.program()?, &syns6, &ctx_a)?;
            let (est6, reply6) = establish6(dp.program()?, &rec.maps, &bed, 1024)?;
            let (mut est6_t, est6_v) = run_each(dp.program()?, &vec![est6.clone(); N], &ctx_a)?;
            let (mut rep6_t, rep6_v) = run_each(dp.program()?, &vec![reply6; N], &ctx_b)?;
            let datagram6 =
                |sport: u16| udp6_frame(MAC_CLIENT, bed.mac_a, (CLIENT6, VIP6), (sport, 53));
            let udp6_new: Vec<Vec<u8>> = (0..N).map(|i| datagram6(1024 + i as u16)).collect();
            let (mut unew6_t, unew6_v) = run_each(dp.program()?, &udp6_new, &ctx_a)?;
            let (o, omac, oport, snat_port) =
                flow_origin6(&rec.maps, &key6(1024, 53, lb_common::IPPROTO_UDP))?;
            let uans6 = udp6_frame(omac, bed.mac_b, (o, SNAT6), (oport, snat_port));
            let (mut uest6_t, uest6_v) =
                run_each(dp.program()?, &vec![datagram6(1024); N], &ctx_a)?;
            let (mut urep6_t, urep6_v) = run_each(dp.program()?, &vec![uans6; N], &ctx_b)?;
            anyhow::ensure!(
                (syn6_v, est6_v, rep6_v, unew6_v, uest6_v, urep6_v)
                    == (syn_v, est_v, rep_v, syn_v, est_v, rep_v),
                "IPv6 verdicts TCP {syn6_v}/{est6_v}/{rep6_v} UDP {unew6_v}/{uest6_v}/{urep6_v}, \
                 IPv4 {syn_v}/{est_v}/{rep_v}"
            );
            let (mut floor6_t, _) = run_each(floor, &vec![est6; N], &ctx_a)?;
            let floor6 = median(&mut floor6_t);
            let cost6 = |case: &str, t: &mut Vec<u64>, verdict: u32| PacketCost {
                floor_ns: floor6,
                ratio_to_floor: median(t) / floor6,
                net_ns: median(t) - floor6,
                ..cost(case, t, verdict)
            };
            costs.push(cost6("IPv6 new flow (SYN, distinct 5-tuples)", &mut syn6_t, syn6_v));
            costs.push(cost6("IPv6 established (flow-table hit)", &mut est6_t, est6_v));
            costs.push(cost6("IPv6 reply (reverse NAT)", &mut rep6_t, rep6_v));
            costs.push(cost6("IPv6 new flow, UDP VIP (distinct 5-tuples)", &mut unew6_t, unew6_v));
            costs.push(cost6("IPv6 established, UDP VIP (flow-table hit)", &mut uest6_t, uest6_v));
            costs.push(cost6("IPv6 reply, UDP VIP (reverse NAT)", &mut urep6_t, urep6_v));

            // NAT64: a TCP load balancer on VIP6 port NAT64_PORT whose pool holds the IPv4
            // origins of "web": the client's rows pass lb_v6 then lb_to_v4 (floor: the
            // IPv6 frame's), the reply row lb_xdp then lb_to_v6 (floor: the IPv4 frame's).
            let n64_cfg = Config::parse(
                &per_packet_nat64_config(&per_packet_v6_config(&plain_text)),
                std::path::Path::new("bench-nat64.toml"),
            )?;
            rec.apply(&n64_cfg, &HealthTable::default())?;
            clear_flows(&mut rec.maps)?;
            let syns64: Vec<Vec<u8>> = (0..N)
                .map(|i| {
                    lb_testbed::tcp6_segment(
                        MAC_CLIENT,
                        bed.mac_a,
                        CLIENT6,
                        VIP6,
                        64,
                        (1024 + i as u16, NAT64_PORT),
                        lb_testbed::tcp_flags::SYN,
                        (1000, 0),
                        &[],
                    )
                })
                .collect();
            let (mut syn64_t, syn64_v) = run_each(dp.program()?, &syns64, &ctx_a)?;
            let (est64, reply64) = establish64(dp.program()?, &rec.maps, &bed, 1024)?;
            let (mut est64_t, est64_v) = run_each(dp.program()?, &vec![est64; N], &ctx_a)?;
            let (mut rep64_t, rep64_v) = run_each(dp.program()?, &vec![reply64; N], &ctx_b)?;
            anyhow::ensure!(
                (syn64_v, est64_v, rep64_v) == (syn_v, est_v, rep_v),
                "NAT64 verdicts {syn64_v}/{est64_v}/{rep64_v}, IPv4 {syn_v}/{est_v}/{rep_v}"
            );
            costs.push(cost6("NAT64 new flow (SYN, distinct 5-tuples)", &mut syn64_t, syn64_v));
            costs.push(cost6("NAT64 established (flow-table hit)", &mut est64_t, est64_v));
            costs.push(cost("NAT64 reply (reverse NAT)", &mut rep64_t, rep64_v));
            rec.apply(&cfg, &HealthTable::default())?;

            // Health change -> maps written, on a 10-origin monitored pool.
            drop(rec);
            drop(dp);
            Ok((costs, control))
        })?;
    report.per_packet = costs;
    report.control.extend(control);
    report.per_packet_method = format!(
        "BPF_PROG_TEST_RUN with repeat = 1, {N} runs per case, median of the kernel's per-run time; \
         each run is given its frame afresh, so rewritten frames are never re-run. The established \
         and reply rows time the segments of a connection after its handshake (SYN, the origin's \
         SYN-ACK, the client's ACK): they take the connection-tracking fast path, all but the first \
         of each second (about one in 20,000 here). The floor is \
         the bare XDP_TX program on the same frames in the same process; ratios divide by it. The \
         kernel's timer overhead is inside every figure (and so inside the floor). Geo rows: a \
         second VIP with steering_policy = \"geo\" sends the client's country (DE) to its own \
         pool, so each new flow does the GEO trie lookup and the GEO_PLAN lookup; the trie holds \
         either 2 prefixes from the config or {big_n} from a synthetic MaxMind database (mixed \
         /20 to /28, densely packed; the client's /24 among them). The flow tables are emptied \
         before each geo new-flow case, as they were empty for the first; every run is checked \
         to have matched (geo_match counter) and gone to the geo pool. \"geo overhead\" is the \
         difference to the same path's median on the VIP without geo steering (for new flows, \
         re-measured from empty tables right after the geo cases, since the per-run time drifts \
         by tens of ns over a run). All runs use one \
         client address, so the trie walk is cache-warm: a live mix of clients would miss more. \
         IPv6 rows: a TCP (80) and a UDP (53) load balancer on an IPv6 VIP with three IPv6 \
         origins and an IPv6 SNAT address (`snat_address` per family), the same cases as \
         IPv4 from emptied flow tables: `lb_xdp` reads the EtherType and tail-calls `lb_v6` \
         (TCP) or `lb_v6_udp` (UDP) through `TAILS`; their floor is the bare XDP_TX program \
         on the IPv6 established frame. NAT64 rows: a TCP load balancer on the IPv6 VIP, port \
         8064, whose pool holds the three IPv4 origins: the client's IPv6 segments take \
         `lb_v6` then `lb_to_v4` (IPv4 out, IPv6 floor), the origin's IPv4 segments `lb_xdp` \
         then `lb_to_v6` (IPv6 out, IPv4 floor)."
    );
    Ok(())
}

/// Control-plane figures: map memory of a full-size flow table, config apply and
/// health-change-to-map-write latency with 10 monitored origins.
/// A health table with every target of `targets` up (one check each), and the outcomes
/// that mark one up or down.
fn all_up(targets: &BTreeMap<health::Target, String>) -> (HealthTable, Outcome, Outcome) {
    let mut health = HealthTable::default();
    health.retain(&targets.keys().map(|t| (t.clone(), (1, 1))).collect());
    let ok = Outcome {
        ok: true,
        reason: "ok".into(),
        rtt: Some(Duration::from_micros(100)),
    };
    let down = Outcome {
        ok: false,
        reason: "down".into(),
        rtt: None,
    };
    for t in targets.keys() {
        health.record(t, &ok);
    }
    (health, ok, down)
}

fn control_plane(object: &std::path::Path, report: &mut Report) -> Result<()> {
    let neighbours: Vec<([u8; 4], [u8; 6], Side)> = vec![(CLIENT, MAC_CLIENT, Side::A)];
    let bed = FibBed::new("bc", &neighbours);
    let cfg = Config::parse(
        &per_packet_config(&bed.pin_dir, 10, true),
        std::path::Path::new("bench.toml"),
    )?;
    let figures = bed.ns.run(|| -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)?;
        let mut rec = Reconciler::adopt(dp.take_maps()?)?;
        let targets = health::targets(&cfg);
        let (mut health, ok, down) = all_up(&targets);
        let t0 = Instant::now();
        let first = rec.apply(&cfg, &health)?;
        out.insert(
            "config_apply_10_origins_first_ms".into(),
            t0.elapsed().as_secs_f64() * 1e3,
        );
        out.insert(
            "config_apply_10_origins_slots".into(),
            first.slots_written as f64,
        );
        let t0 = Instant::now();
        rec.apply(&cfg, &health)?;
        out.insert(
            "config_reapply_unchanged_ms".into(),
            t0.elapsed().as_secs_f64() * 1e3,
        );
        let mut lat = Vec::new();
        let mut slots = Vec::new();
        let mut compute = Vec::new();
        let mut writes = Vec::new();
        for (i, t) in targets.keys().cycle().take(20).enumerate() {
            health.record(t, if i % 2 == 0 { &down } else { &ok });
            let t0 = Instant::now();
            let r = rec.apply(&cfg, &health)?;
            #[expect(clippy::cast_possible_truncation, reason = "microseconds")]
            lat.push(t0.elapsed().as_micros() as u64);
            slots.push(r.slots_written as u64);
            #[expect(clippy::cast_possible_truncation, reason = "microseconds")]
            compute.push(r.compute.as_micros() as u64);
            #[expect(clippy::cast_possible_truncation, reason = "microseconds")]
            writes.push(r.ring_writes.as_micros() as u64);
            health.record(t, &ok);
            rec.apply(&cfg, &health)?;
        }
        out.insert(
            "health_change_to_maps_written_median_ms".into(),
            median(&mut lat) / 1e3,
        );
        out.insert(
            "health_change_slots_written_median".into(),
            median(&mut slots),
        );
        out.insert(
            "health_change_ring_compute_median_ms".into(),
            median(&mut compute) / 1e3,
        );
        out.insert(
            "health_change_ring_writes_median_ms".into(),
            median(&mut writes) / 1e3,
        );
        drop(rec);
        drop(dp);
        Ok(out)
    })?;
    report.control.extend(figures);
    // Map memory of the full-size flow tables, as the kernel accounts it.
    for name in ["FLOWS", "REV_FLOWS", "RINGS"] {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(bed.pin_dir.join(name))
            .output()
            .context("bpftool")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(b) = v.get("bytes_memlock").and_then(serde_json::Value::as_f64) {
            report
                .control
                .insert(format!("map_memory_{name}_mib"), b / (1024.0 * 1024.0));
        }
    }
    report.control.insert(
        "flow_table_entries".into(),
        f64::from(lb_common::DEFAULT_FLOW_TABLE_SIZE),
    );
    Ok(())
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let sh = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    m.insert("kernel".into(), sh("uname", &["-r"]));
    m.insert("cores".into(), sh("nproc", &[]));
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(l) = cpu.lines().find(|l| l.starts_with("model name")) {
        m.insert(
            "cpu".into(),
            l.split(':').nth(1).unwrap_or("").trim().to_owned(),
        );
    }
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(l) = mem.lines().next() {
        m.insert(
            "memory".into(),
            l.split_whitespace()
                .nth(1)
                .map(|kb| format!("{:.1} GiB", kb.parse::<f64>().unwrap_or(0.0) / 1048576.0))
                .unwrap_or_default(),
        );
    }
    m
}

struct Args {
    out: PathBuf,
    object: PathBuf,
    agent: PathBuf,
    criterion: Option<PathBuf>,
    failover: Option<PathBuf>,
    quick: bool,
    /// Run one part and print it (no report): per-packet, many-flows, rate, e2e,
    /// control-plane or scale.
    only: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        out: "target/bench".into(),
        object: PathBuf::new(),
        agent: PathBuf::new(),
        criterion: None,
        failover: None,
        quick: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = val()?.into(),
            "--object" => a.object = val()?.into(),
            "--agent" => a.agent = val()?.into(),
            "--criterion" => a.criterion = Some(val()?.into()),
            "--failover" => a.failover = Some(val()?.into()),
            "--quick" => a.quick = true,
            "--only" => a.only = Some(val()?),
            other => anyhow::bail!("unknown argument {other}; see cargo xtask bench"),
        }
    }
    anyhow::ensure!(
        a.object.is_file(),
        "--object: {} is not the XDP object (cargo xtask build-ebpf)",
        a.object.display()
    );
    anyhow::ensure!(
        a.agent.is_file(),
        "--agent: {} is not the lb-agent binary",
        a.agent.display()
    );
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    lb_testbed::require_prerequisites();
    let mut report = Report {
        date: report::today(),
        machine: machine(),
        ..Report::default()
    };
    match a.only.as_deref() {
        None => {}
        Some("per-packet") => {
            per_packet(&a.object, &mut report)?;
            println!("{:#?}", report.per_packet);
            for l in report::geo_overhead_lines(&report.per_packet) {
                println!("{l}");
            }
            for l in report::v6_lines(&report.per_packet) {
                println!("{l}");
            }
            for l in report::nat64_lines(&report.per_packet) {
                println!("{l}");
            }
            for (k, v) in report.control.iter().filter(|(k, _)| k.starts_with("geo_")) {
                println!("{k}: {v:.1}");
            }
            return Ok(());
        }
        Some("many-flows") => {
            many_flows::run(&a.object, &mut report)?;
            for l in report::many_flows_lines(&report.many_flows) {
                println!("{l}");
            }
            println!("{:#?}", report.many_flows);
            return Ok(());
        }
        Some("rate") => {
            println!("{:#?}", packet::rates(&a.object, 1)?);
            return Ok(());
        }
        Some("e2e") => {
            println!("{:#?}", e2e::run(&a.agent, 2)?);
            return Ok(());
        }
        Some("control-plane") => {
            control_plane(&a.object, &mut report)?;
            println!("{:#?}", report.control);
            return Ok(());
        }
        Some("tables") => {
            tables::run(&a.object, &mut report)?;
            for l in tables::lines(&report.control) {
                println!("{l}");
            }
            return Ok(());
        }
        Some("scale") => {
            scale::run(&a.object, scale::FULL, &mut report)?;
            for l in report::scale_lines(&report.control) {
                println!("{l}");
            }
            println!("{:#?}", report.control);
            return Ok(());
        }
        Some(other) => {
            anyhow::bail!(
                "--only {other}: use per-packet, many-flows, tables, rate, e2e, control-plane or scale"
            )
        }
    }
    eprintln!("lb-bench: per-packet cost (BPF_PROG_TEST_RUN)");
    per_packet(&a.object, &mut report)?;
    eprintln!(
        "lb-bench: established flows with {} flows in the table",
        many_flows::FLOWS
    );
    many_flows::run(&a.object, &mut report)?;
    eprintln!("lb-bench: flow-table layouts (hash, LRU, per-CPU LRU)");
    tables::run(&a.object, &mut report)?;
    eprintln!("lb-bench: control plane");
    control_plane(&a.object, &mut report)?;
    eprintln!(
        "lb-bench: control plane at scale (1000 VIPs, 1000 pools, 10k origins, or what fits)"
    );
    scale::run(&a.object, scale::FULL, &mut report)?;
    if let Some(dir) = &a.criterion {
        report.maglev_build_us = report::criterion_means(dir, "maglev_build");
    }
    if let Some(f) = &a.failover {
        report.failover = std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("detection-to-drain"))
            .map(str::to_owned)
            .collect();
    }
    eprintln!("lb-bench: packet rate (AF_PACKET generator)");
    report.packet_rate = packet::rates(&a.object, if a.quick { 1 } else { 3 })?;
    eprintln!("lb-bench: end to end (wrk, iperf3; direct, lb, haproxy)");
    let (rows, rss, api) = e2e::run(&a.agent, if a.quick { 2 } else { 4 })?;
    report.e2e = rows;
    report
        .control
        .insert("api_change_to_maps_written_median_ms".into(), api.0);
    report
        .control
        .insert("api_change_to_maps_written_max_ms".into(), api.1);
    report
        .control
        .insert("agent_rss_mib_incl_shared_rings_mapping".into(), rss.0);
    report
        .control
        .insert("agent_private_memory_mib".into(), rss.1);
    report::write(&a.out, &mut report)?;
    Ok(())
}

//! A fuzzer for the data path: the real XDP program, loaded as the packet fixtures load it
//! (a `FibBed` namespace with permanent neighbours, `Dataplane::load`, a `Reconciler` applying
//! a config), driven through `BPF_PROG_TEST_RUN` with mutated frames, and checked after
//! every frame.
//!
//! # Layout
//! - `frame`: the seeded PRNG, TCP and UDP frame builders, structured mutations, checksum
//!   verifier (TCP, UDP with "no checksum", UDP quoted in ICMP errors).
//! - this module: the bed and config (TCP and UDP load balancers, one of each on the same
//!   address and port), flows established by clean handshakes or first datagrams first,
//!   the frame generator, the invariants and the report. The generator's TCP frames: client
//!   segments and origin replies of known flows, SYNs, forged segments, non-VIP traffic,
//!   random bytes. Its UDP frames (a quarter): datagrams of known flows from either side
//!   (payloads of 0 to 1472 bytes, one in five without a checksum), forged answers (another
//!   SNAT port, origin address or origin port), new flows from known and spoofed clients in
//!   floods that meet the UDP budget, flows left idle past their timeout and then revisited,
//!   UDP to TCP-only VIPs and TCP to UDP-only ports, and ICMP errors (unreachable,
//!   fragmentation needed, time exceeded) about known UDP and TCP flows from either side,
//!   quoting a whole datagram or 28 bytes. Every frame of either protocol may then be
//!   mutated (header fields including the UDP length and checksum, IP options, truncation,
//!   junk, VLAN tags, fragments, payload sizes).
//! - `v6`: a fifth of the frames: IPv6 TCP, UDP and ICMPv6 to an IPv6 VIP and SNAT address
//!   (known and forged flows, echo, neighbour discovery, errors quoting known and forged
//!   tuples, IPv4-mapped addresses), mutated with extension header chains, truncation, a
//!   wrong version, payload length lies; its own pseudo-header checksum verifier, and the
//!   IPv6 rewrite check (`check_rewrite6`: no extension headers left, only hop limit,
//!   addresses, ports and checksum changed, the tuple in the flow tables, checksums
//!   verifying as the input's did).
//! - `nat64`: a tenth of the frames: IPv6 clients of the NAT64 load balancers (an IPv6 VIP,
//!   pools of IPv4 origins), the origins' IPv4 answers, forged ones, ICMPv4 errors from the
//!   origin side and ICMPv6 errors from the client side about translated flows, mutated by
//!   their family's mutator; the translation check (`check_translated`: the flow's tuple as
//!   the tables name it, TTL and hop limit, DF above 1260 bytes, transport bytes and the
//!   checksum's verdict kept, translated ICMP errors with valid checksums, a reversed
//!   quote, and a quoted UDP checksum that verifies with the quoted payload as before).
//!
//! # Invariants
//! After every frame: the verdict is DROP, PASS, TX or REDIRECT (never ABORTED); exactly one
//! verdict event (`event::is_verdict`) was counted, and it agrees with the verdict; a frame
//! addressed neither to a VIP address nor the SNAT address passes unchanged; a PASS leaves
//! the frame unchanged unless it is a rewritten frame handed to the stack (`pass_no_neigh`);
//! a rewritten frame changes only MACs, TTL (by one), addresses, ports and checksums, and
//! its checksums verify when the input's did (and stay wrong when the input's were wrong:
//! a forwarder must not launder a corrupted segment; a zero UDP checksum stays zero); a
//! translated ICMP error quoting a whole UDP datagram keeps the quoted checksum's verdict;
//! a RST built for an origin has valid checksums. Every `check_every` frames and at the
//! end, the flow tables are paired as the README promises, per protocol (see
//! `check_tables`), and `ORIGIN_FLOWS` counts the open flows of both protocols. A pairing
//! violation is pinned to its frame by restoring the tables as they were at the last good
//! check and replaying the frames since, checking after each.

pub mod frame;
pub mod nat64;
pub mod v6;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    maps::MapData,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_agent::{dataplane, reconcile::Reconciler};
use lb_common::{
    event, Flow, FlowKey, RevFlow, Settings, CT_COOKIE, CT_ESTABLISHED, CT_FIN_CLIENT,
    CT_FIN_ORIGIN, CT_RST, CT_STALE, CT_SYNACK, CT_UDP, CT_UDP_STREAM, FLOW_F_FAST, IPPROTO_TCP,
    IPPROTO_UDP, REV_F_CLOSING,
};
use lb_testbed::{
    fixture::{
        self, mac_of, C1, C2, C3, C4, C5, C6, LB_ONE_ARMED, LB_WWW, LOCAL_ORIGIN, O1, O2, O3,
        POOL_LOCAL, R_CLIENT, R_ORIGIN, SNAT, VIP, VIP2,
    },
    FibBed, Side,
};

use crate::frame::{hex, mutate, Dgram, Rng, Seg, UdpSum, ACK, FIN, IP, PSH, RST, SYN, TCP, UDP};

pub use lb_testbed::fixture::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
const VERDICT_NAMES: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Addresses and MACs are the packet fixtures' (`lb_testbed::fixture`); this run has
/// sixteen SNAT ports.
const SNAT_MIN: u16 = 61000;
const SNAT_MAX: u16 = 61015;
/// Clients (side A, permanent neighbours).
const CLIENTS: [[u8; 4]; 6] = [C1, C2, C3, C4, C5, C6];
const O4: [u8; 4] = O3;
/// The one-armed VIP's origin, behind the client side (XDP_TX).
const LOCAL: [u8; 4] = LOCAL_ORIGIN;
/// (address, port, side) of every origin in `config()`.
const ORIGINS: [([u8; 4], u16, Side); 9] = [
    (O1, 8080, Side::B),
    (O2, 8080, Side::B),
    (O1, 8081, Side::B),
    (O4, 8443, Side::B),
    (O1, 8443, Side::B),
    (O1, 8444, Side::B),
    (LOCAL, 8080, Side::A),
    (O1, 5353, Side::B),
    (O2, 5353, Side::B),
];
/// (VIP, port) pairs of `config()`'s TCP load balancers.
const VIPS: [([u8; 4], u16); 3] = [(VIP, 80), (VIP, 443), (VIP2, 80)];
/// (VIP, port) pairs of its UDP load balancers: VIP:80 is also a TCP VIP (same address and
/// port, other protocol, same pool).
const UDP_VIPS: [([u8; 4], u16); 3] = [(VIP, 53), (VIP, 80), (VIP2, 53)];
/// VIP address and port pairs with no UDP load balancer (TCP only).
const TCP_ONLY: [([u8; 4], u16); 2] = [(VIP, 443), (VIP2, 80)];

/// Timeouts short enough that flows expire, close and give up their ports during a run.
const SYN_SECS: u32 = 1;
const HALF_CLOSED_SECS: u32 = 2;
const ESTABLISHED_SECS: u32 = 3;
const REUSE_CLOSED_SECS: u32 = 1;
const UDP_SECS: u32 = 2;
/// Frames in each stretch of the UDP generator's phases (flood of new flows, or not).
const FLOOD_FRAMES: u64 = 60_000;
/// Percent of generated frames drawn from the UDP generator (`udp_base`).
const UDP_SHARE: u32 = 25;
const UDP_UNREPLIED_SECS: u32 = 1;
/// Percent of generated frames drawn from the IPv6 generator (`v6::generate6`).
const V6_SHARE: u32 = 20;
/// Percent of generated frames drawn from the NAT64 generator (`nat64::generate64`).
const NAT64_SHARE: u32 = 10;

/// Two VIP addresses, three VIPs; pool `web` has two origins on one address (o1:8080 and
/// o1:8081: same address, other port), pool `lc` uses least connections (o5 and o6 share an
/// address too, and one client tuple may meet either), pool `local` sits
/// behind the client-side interface. Sixteen SNAT ports, so ports run out and are recycled.
/// Three UDP VIPs: `dns` (pool `dns`), `www-udp` on the TCP VIP's own address and port
/// (pool `web`, so one origin holds flows of both protocols), `one-armed-udp` (pool
/// `local`); UDP flows expire within seconds and the UDP budget is small.
fn config() -> String {
    let dataplane = fixture::dataplane(
        (SNAT_MIN, SNAT_MAX),
        "snat_port_reuse_after_close = 1
tcp_timeouts = { syn = 1, half_closed = 2, established = 3 }
# Few handshakes in flight before SYN cookies, so the cookie paths are fuzzed too.
syn_budget = 8
# UDP flows expire during a run, and floods of new ones meet the budget.
udp_timeout = 2
udp_unreplied_timeout = 1
udp_budget = 8",
    );
    let dataplane = dataplane.replace("snat_address = \"10.0.0.1\"", v6::SNAT_ADDRESSES);
    format!(
        "{dataplane}{POOLS}{POOL_LOCAL}{LB_WWW}{LB_TLS}{LB_ONE_ARMED}{POOL_DNS}{LBS_UDP}{}{}",
        v6::CONFIG,
        nat64::CONFIG
    )
}

const POOL_DNS: &str = r#"
[[pools]]
name = "dns"
origins = [
  { name = "d1", address = "10.0.11.2", port = 5353 },
  { name = "d2", address = "10.0.11.3", port = 5353 },
]
"#;

const LBS_UDP: &str = r#"
[[load_balancers]]
name = "dns"
protocol = "udp"
address = "10.0.0.10"
port = 53
default_pools = ["dns"]

[[load_balancers]]
name = "www-udp"
protocol = "udp"
address = "10.0.0.10"
port = 80
default_pools = ["web"]

[[load_balancers]]
name = "one-armed-udp"
protocol = "udp"
address = "10.0.0.11"
port = 53
default_pools = ["local"]
"#;

const POOLS: &str = r#"
[[pools]]
name = "web"
origins = [
  { name = "o1", address = "10.0.11.2", port = 8080 },
  { name = "o2", address = "10.0.11.3", port = 8080 },
  { name = "o3", address = "10.0.11.2", port = 8081 },
]

[[pools]]
name = "lc"
origin_steering = { policy = "least_connections" }
origins = [
  { name = "o4", address = "10.0.11.4", port = 8443 },
  { name = "o5", address = "10.0.11.2", port = 8443 },
  { name = "o6", address = "10.0.11.2", port = 8444 },
]
"#;

const LB_TLS: &str = r#"
[[load_balancers]]
name = "tls"
address = "10.0.0.10"
port = 443
default_pools = ["lc"]
"#;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// Frames between checks of the flow tables (the last frame is always followed by one).
    pub check_every: u64,
    /// The XDP object; `None`: the workspace build output.
    pub object: Option<PathBuf>,
    /// Print progress lines.
    pub progress: bool,
    /// Print each of the first `trace` frames' description and outcome.
    pub trace: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            frames: 1_000_000,
            seed: 1,
            check_every: 1000,
            object: None,
            progress: false,
            trace: 0,
        }
    }
}

/// One broken invariant, with what it takes to turn it into a fixture.
#[derive(Clone, Debug)]
pub struct Violation {
    pub seed: u64,
    /// Index of the frame (0-based, counting the set-up frames); `None` for a table check
    /// that replay could not pin to a frame.
    pub frame: Option<u64>,
    pub invariant: String,
    pub detail: String,
    pub ingress: Option<Side>,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub verdict: Option<u32>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "VIOLATION: {}", self.invariant)?;
        writeln!(
            f,
            "  seed {} frame {}",
            self.seed,
            self.frame.map_or_else(|| "?".into(), |i| i.to_string())
        )?;
        writeln!(f, "  {}", self.detail)?;
        if let Some(side) = self.ingress {
            let side = if side == Side::A {
                "a (client side)"
            } else {
                "b (origin side)"
            };
            writeln!(f, "  ingress: {side}")?;
        }
        if let Some(v) = self.verdict {
            writeln!(
                f,
                "  verdict: {}",
                VERDICT_NAMES.get(v as usize).copied().unwrap_or("?")
            )?;
        }
        if !self.input.is_empty() {
            writeln!(
                f,
                "  input  ({} bytes): {}",
                self.input.len(),
                hex(&self.input)
            )?;
        }
        if !self.output.is_empty() {
            writeln!(
                f,
                "  output ({} bytes): {}",
                self.output.len(),
                hex(&self.output)
            )?;
        }
        Ok(())
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Frames run, the set-up handshakes included.
    pub frames: u64,
    pub secs: f64,
    /// Frames per verdict (index = XDP action).
    pub verdicts: [u64; 5],
    /// Verdict events counted during the run, by name.
    pub events: BTreeMap<&'static str, u64>,
    /// Table checks done.
    pub table_checks: u64,
    /// Most `FLOWS` and `REV_FLOWS` entries a check saw.
    pub max_entries: (usize, usize),
    /// Rewritten frames whose input TCP or UDP checksum was wrong (forwarded with the error
    /// kept).
    pub forwarded_bad_checksum: u64,
    /// Rewritten UDP datagrams without a checksum (0, kept 0).
    pub forwarded_zero_udp_checksum: u64,
    /// Rewritten frames whose IPv4 total length disagrees with the frame's length.
    pub forwarded_bad_length: u64,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn frames_per_sec(&self) -> f64 {
        self.frames as f64 / self.secs.max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fuzz: seed {}: {} frames in {:.1} s ({:.0} frames/s), {} table checks (up to {} FLOWS and {} REV_FLOWS entries), {} violations",
            self.seed,
            self.frames,
            self.secs,
            self.frames_per_sec(),
            self.table_checks,
            self.max_entries.0,
            self.max_entries.1,
            self.violations.len()
        )?;
        let v: Vec<String> = (1..5)
            .map(|i| format!("{} {}", VERDICT_NAMES[i], self.verdicts[i]))
            .collect();
        writeln!(f, "fuzz: verdicts: {}", v.join(", "))?;
        let e: Vec<String> = self
            .events
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "fuzz: events: {}", e.join(", "))?;
        let mut by = BTreeMap::<&str, usize>::new();
        for v in &self.violations {
            *by.entry(v.invariant.as_str()).or_default() += 1;
        }
        for (inv, n) in by {
            writeln!(f, "fuzz: violations of \"{inv}\": {n}")?;
        }
        write!(
            f,
            "fuzz: rewritten frames with a wrong input TCP/UDP checksum (kept wrong): {}; UDP without a checksum (kept 0): {}; with an IPv4 total length or IPv6 payload length that disagrees with the frame: {}",
            self.forwarded_bad_checksum, self.forwarded_zero_udp_checksum, self.forwarded_bad_length
        )
    }
}

/// A flow the generator knows, from a clean handshake (TCP) or a first datagram (UDP; the
/// sequence numbers unused).
#[derive(Clone, Debug)]
struct Known {
    client: [u8; 4],
    cport: u16,
    vip: [u8; 4],
    vport: u16,
    origin: [u8; 4],
    oport: u16,
    oside: Side,
    snat_port: u16,
    /// Next sequence number of the client and of the origin.
    cseq: u32,
    oseq: u32,
}

/// Reads the per-CPU `EVENTS` totals with one `BPF_MAP_LOOKUP_BATCH` (Linux 5.6), falling
/// back to one lookup per counter.
struct Events {
    map: MapData,
    ncpu: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
    batch: bool,
}

#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

impl Events {
    fn open(pin_dir: &Path) -> Self {
        let map = MapData::from_pin(pin_dir.join(lb_common::map_names::EVENTS))
            .expect("open pinned EVENTS");
        let ncpu = aya::util::nr_cpus().expect("possible CPUs");
        let n = event::COUNT as usize;
        Self {
            map,
            ncpu,
            keys: vec![0; n],
            values: vec![0; n * ncpu],
            batch: true,
        }
    }

    fn totals(&mut self, maps: &dataplane::Maps) -> Vec<u64> {
        let n = event::COUNT as usize;
        if self.batch {
            let mut out_batch = 0u32;
            let attr = BatchAttr {
                in_batch: 0,
                out_batch: (&raw mut out_batch) as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: event::COUNT,
                map_fd: u32::try_from(self.map.fd().as_fd().as_raw_fd()).expect("fd"),
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: attr points at buffers of the sizes the kernel writes (count keys of
            // 4 bytes, count values of 8 bytes per possible CPU).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw const attr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = std::io::Error::last_os_error().raw_os_error();
            if (rc == 0 || err == Some(libc::ENOENT)) && attr.count == event::COUNT {
                let mut t = vec![0u64; n];
                for (i, &k) in self.keys.iter().enumerate() {
                    let v: u64 = self.values[i * self.ncpu..(i + 1) * self.ncpu].iter().sum();
                    t[k as usize] = v;
                }
                return t;
            }
            self.batch = false;
        }
        maps.event_totals().expect("events")
    }
}

/// Both flow tables' entries.
type Tables = (Vec<(FlowKey, Flow)>, Vec<(FlowKey, RevFlow)>);

/// The flow tables as they were at a check that found nothing new.
struct Snapshot {
    flows: Vec<(FlowKey, Flow)>,
    revs: Vec<(FlowKey, RevFlow)>,
    origin_flows: Vec<(u32, u64)>,
}

struct Fuzzer<'a> {
    opts: &'a Options,
    rng: Rng,
    prog: &'a mut Xdp,
    rec: &'a mut Reconciler,
    events: Events,
    last: Vec<u64>,
    ifindex_a: u32,
    ifindex_b: u32,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
    known: Vec<Known>,
    known_udp: Vec<Known>,
    /// IPv6 flows (TCP and UDP).
    known6: Vec<v6::Known6>,
    /// NAT64 flows (`nat64`): IPv6 clients, IPv4 origins (IPv4-mapped in `origin`).
    known64: Vec<v6::Known6>,
    /// UDP flows dropped from `known_udp`, with when: revisited once idle past both UDP
    /// timeouts, so that flows expire (and their ports are taken) during a run.
    dormant: std::collections::VecDeque<(Known, Instant)>,
    /// Frames run so far (the next frame's index).
    index: u64,
    report: Report,
    /// Frames since the last good table check: (frame, ingress, index).
    window: Vec<(Vec<u8>, Side, u64)>,
    snapshot: Option<Snapshot>,
    /// Table problems already reported (they persist until their entries are met again).
    reported: BTreeSet<String>,
    settings: Settings,
    origin_ids: Vec<u32>,
    out: Vec<u8>,
    next_cport: u16,
    seen: std::cell::Cell<(usize, usize)>,
}

fn now_coarse() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own. The kernel's coarse clock
    // (bpf_ktime_get_coarse_ns) is CLOCK_MONOTONIC_COARSE.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u32::try_from(ts.tv_sec).unwrap_or(u32::MAX)
}

fn show_key(k: &FlowKey) -> String {
    let a = |x: &[u8; 16]| lb_common::ip_of(x);
    let p = match k.proto {
        IPPROTO_TCP => "tcp".to_string(),
        IPPROTO_UDP => "udp".to_string(),
        n => format!("proto {n}"),
    };
    format!(
        "{p} {}:{} -> {}:{}",
        a(&k.src),
        u16::from_be(k.sport),
        a(&k.dst),
        u16::from_be(k.dport)
    )
}

fn rev_key(f: &Flow) -> FlowKey {
    f.rev_key()
}

/// The `FLOWS` key a `REV_FLOWS` entry (key `rk`) names: its client tuple, in the
/// protocol of its own key (as the data path's `check_client_half` reads it).
fn client_key(rk: &FlowKey, r: &RevFlow) -> FlowKey {
    FlowKey {
        src: r.client_addr,
        dst: r.vip_addr,
        sport: r.client_port,
        dport: r.vip_port,
        proto: rk.proto,
        _pad: [0; 3],
    }
}

/// `RevFlow` bits only a UDP flow may carry.
const CT_UDP_ONLY: u32 = CT_UDP | CT_UDP_STREAM;
/// `RevFlow` bits only a TCP flow may carry.
const CT_TCP_ONLY: u32 = CT_SYNACK | CT_FIN_CLIENT | CT_FIN_ORIGIN | CT_RST | CT_COOKIE | CT_STALE;

/// The part of a `FLOWS` or `REV_FLOWS` entry's protocol story that is wrong (`None`:
/// nothing): the key is TCP or UDP; a `FLOWS` half's `udp` says its key's protocol; a
/// `REV_FLOWS` entry of a UDP key has `CT_UDP` and no TCP state bits, and a conversation
/// (`CT_UDP_STREAM`) only once answered (`CT_ESTABLISHED`); one of a TCP key has neither
/// UDP bit.
fn proto_problem(k: &FlowKey, f: Option<&Flow>, r: Option<&RevFlow>) -> Option<String> {
    if k.proto != IPPROTO_TCP && k.proto != IPPROTO_UDP {
        return Some(format!("key {} has protocol {}", show_key(k), k.proto));
    }
    let udp = k.proto == IPPROTO_UDP;
    if let Some(f) = f {
        if f.udp > 1 || (f.udp == 1) != udp {
            return Some(format!(
                "FLOWS {} (protocol {}) has udp = {}",
                show_key(k),
                k.proto,
                f.udp
            ));
        }
    }
    if let Some(r) = r {
        let bad = if udp {
            r.flags & CT_UDP == 0
                || r.flags & CT_TCP_ONLY != 0
                || (r.flags & CT_UDP_STREAM != 0 && r.flags & CT_ESTABLISHED == 0)
        } else {
            r.flags & CT_UDP_ONLY != 0
        };
        if bad {
            return Some(format!(
                "REV_FLOWS {} (protocol {}) has flags {:#x}",
                show_key(k),
                k.proto,
                r.flags
            ));
        }
    }
    None
}

/// Is the frame addressed to a VIP address or the SNAT address (as the data path reads it)?
fn addressed_to_us(f: &[u8]) -> bool {
    if f.len() >= v6::L4 && f[12..14] == [0x86, 0xdd] {
        let dst = &f[v6::IP6 + 24..v6::IP6 + 40];
        return dst == v6::VIP6 || dst == v6::SNAT6;
    }
    if f.len() < IP + 20 || f[12..14] != [0x08, 0x00] {
        return false;
    }
    let dst = [f[IP + 16], f[IP + 17], f[IP + 18], f[IP + 19]];
    dst == VIP || dst == VIP2 || dst == SNAT
}

impl Fuzzer<'_> {
    fn ifindex(&self, side: Side) -> u32 {
        if side == Side::A {
            self.ifindex_a
        } else {
            self.ifindex_b
        }
    }

    fn lb_mac(&self, side: Side) -> [u8; 6] {
        if side == Side::A {
            self.mac_a
        } else {
            self.mac_b
        }
    }

    /// Runs one frame; `None` when the kernel refuses to run it (shorter than an Ethernet
    /// header or longer than a page allows).
    fn run(&mut self, input: &[u8], side: Side) -> Option<(u32, Vec<u8>)> {
        let len = u32::try_from(input.len()).expect("len");
        let ctx: Vec<u8> = [0u32, len, 0, self.ifindex(side), 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        self.out.clear();
        self.out.resize(input.len() + 256, 0);
        let r = self
            .prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut self.out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .ok()?;
        let n = (r.data_size_out as usize).min(self.out.len());
        Some((r.return_value, self.out[..n].to_vec()))
    }

    fn violation(
        &mut self,
        invariant: &str,
        detail: String,
        input: &[u8],
        side: Side,
        verdict: u32,
        output: &[u8],
    ) {
        let v = Violation {
            seed: self.opts.seed,
            frame: Some(self.index),
            invariant: invariant.into(),
            detail,
            ingress: Some(side),
            input: input.to_vec(),
            output: output.to_vec(),
            verdict: Some(verdict),
        };
        if self.report.violations.len() < 50 {
            eprintln!("{v}");
        }
        self.report.violations.push(v);
    }

    /// Runs one frame and checks every per-frame invariant; returns the verdict and output.
    fn step(&mut self, input: &[u8], side: Side, what: &str) -> Option<(u32, Vec<u8>)> {
        let Some((verdict, output)) = self.run(input, side) else {
            if input.len() >= 14 && input.len() <= 3000 {
                self.violation(
                    "test_run refused a frame of a runnable length",
                    what.into(),
                    input,
                    side,
                    0,
                    &[],
                );
            }
            return None;
        };
        let idx = self.index;
        self.index += 1;
        self.window.push((input.to_vec(), side, idx));
        let totals = self.events.totals(&self.rec.maps);
        let mut verdict_events = Vec::new();
        let mut notes = Vec::new();
        for (e, (now, before)) in totals.iter().zip(&self.last).enumerate() {
            let d = now - before;
            let e = u32::try_from(e).expect("few events");
            if d > 0 {
                *self
                    .report
                    .events
                    .entry(event::NAMES[e as usize])
                    .or_default() += d;
                if event::is_verdict(e) {
                    for _ in 0..d {
                        verdict_events.push(e);
                    }
                } else {
                    notes.push(event::NAMES[e as usize]);
                }
            }
        }
        self.last = totals;
        if let Some(c) = self.report.verdicts.get_mut(verdict as usize) {
            *c += 1;
        }
        let what = format!("frame: {what}");
        if !(XDP_DROP..=XDP_REDIRECT).contains(&verdict) {
            self.violation(
                "verdict is DROP, PASS, TX or REDIRECT",
                format!("{what}; return value {verdict}"),
                input,
                side,
                verdict,
                &output,
            );
            return Some((verdict, output));
        }
        let ev = match verdict_events.as_slice() {
            [e] => *e,
            _ => {
                let names: Vec<&str> = verdict_events
                    .iter()
                    .map(|e| event::NAMES[*e as usize])
                    .collect();
                self.violation(
                    "exactly one verdict event per frame",
                    format!("{what}; verdict events counted: {names:?}"),
                    input,
                    side,
                    verdict,
                    &output,
                );
                return Some((verdict, output));
            }
        };
        let name = event::NAMES[ev as usize];
        if idx < self.opts.trace {
            println!(
                "fuzz: frame {idx}: {what} -> {} ({name}{}{})",
                VERDICT_NAMES[verdict as usize],
                if notes.is_empty() { "" } else { ", " },
                notes.join(", ")
            );
        }
        // Segments built in place (RSTs, cookie answers) leave by a redirect to the ingress
        // interface (XDP_TX if that interface is not in TX_PORTS), or are dropped when the
        // frame cannot be reshaped.
        let built = matches!(
            ev,
            event::RST_TO_ORIGIN
                | event::SYN_COOKIE_SENT
                | event::COOKIE_ORIGIN_ACK
                | event::ICMP_ECHO_REPLY
                | event::ICMP_FRAG_NEEDED_SENT
        );
        let agrees = match verdict {
            XDP_DROP => name.starts_with("drop_") || built,
            XDP_PASS => name.starts_with("pass_"),
            XDP_TX => ev == event::FWD_TX || built,
            _ => ev == event::FWD_REDIRECT || built,
        };
        if !agrees {
            self.violation(
                "the verdict event agrees with the verdict",
                format!("{what}; event {name}"),
                input,
                side,
                verdict,
                &output,
            );
        }
        // No open router: traffic for neither a VIP nor the SNAT address passes unchanged,
        // or is dropped as transit (the kernel would have routed it on).
        let transit_drop = verdict == XDP_DROP && ev == event::DROP_TRANSIT;
        if !addressed_to_us(input) && !transit_drop && (verdict != XDP_PASS || output != input) {
            self.violation(
                "a frame for neither a VIP address nor the SNAT address passes unchanged",
                format!("{what}; event {name}"),
                input,
                side,
                verdict,
                &output,
            );
            return Some((verdict, output));
        }
        if verdict == XDP_DROP || output == input {
            if verdict == XDP_TX || verdict == XDP_REDIRECT {
                self.violation(
                    "a forwarded frame is rewritten",
                    format!("{what}; event {name}"),
                    input,
                    side,
                    verdict,
                    &output,
                );
            }
            return Some((verdict, output));
        }
        if verdict == XDP_PASS && ev != event::PASS_NO_NEIGH && ev != event::PASS_TOO_BIG_NO_DF {
            self.violation(
                "a passed frame is unchanged (unless handed to the stack rewritten: pass_no_neigh, pass_too_big_no_df)",
                format!("{what}; event {name}"),
                input,
                side,
                verdict,
                &output,
            );
            return Some((verdict, output));
        }
        if let Some(problem) = self.check_rewrite(input, &output, ev) {
            self.violation(
                "a rewritten frame is a correct rewrite with correct checksums",
                format!("{what}; event {name}; {problem}"),
                input,
                side,
                verdict,
                &output,
            );
        }
        Some((verdict, output))
    }

    /// What is wrong with `out` as the rewrite of `input` (`None`: nothing).
    fn check_rewrite(&mut self, input: &[u8], out: &[u8], ev: u32) -> Option<String> {
        let v6 = |f: &[u8]| f.get(12..14) == Some(&[0x86, 0xdd]);
        if v6(input) != v6(out) {
            return self.check_translated(input, out, ev);
        }
        if v6(input) || v6(out) {
            return self.check_rewrite6(input, out, ev);
        }
        let Some(after) = frame::verify(out) else {
            return Some("output is not IPv4".into());
        };
        if out.get(IP + 9) == Some(&1) {
            // ICMP out (an error translated, a too-big answer, an echo reply): correct IPv4
            // and ICMP checksums whenever the input's were correct (checksums are updated
            // incrementally, so a wrong one stays wrong, as for TCP).
            let input_ok = if input.get(IP + 9) == Some(&1) {
                frame::icmp_problem(input).is_none()
            } else {
                frame::verify(input).is_some_and(|v| {
                    v.ip && (v.tcp == Some(true)
                        || matches!(v.udp, Some(UdpSum::Good | UdpSum::Zero)))
                })
            };
            if input_ok {
                if let Some(p) = frame::icmp_problem(out) {
                    return Some(p);
                }
            }
            // A translated error quoting a whole UDP datagram: the quoted checksum is
            // translated too, so it verifies as the quote in the input did (0 stays 0).
            if let Some(q) = frame::quoted_udp(input) {
                let after = frame::quoted_udp(out);
                if after != Some(q) {
                    return Some(format!(
                        "quoted UDP checksum before: {q:?}, after: {after:?}"
                    ));
                }
            }
            return None;
        }
        if ev == event::RST_TO_ORIGIN
            || ev == event::SYN_COOKIE_SENT
            || ev == event::COOKIE_ORIGIN_ACK
            || out.len() != input.len()
        {
            // A segment built in place: a bare RST or ACK, a SYN-ACK or SYN with one MSS
            // option (a cookie answer, or the SYN a cookie ACK becomes), full checksums.
            let flags = out.get(TCP + 13).copied().unwrap_or(0);
            let ok_shape = match out.len() {
                l if l == TCP + 20 => flags == RST || flags == 0x10,
                l if l == TCP + 24 => flags == 0x02 || flags == 0x12,
                _ => false,
            };
            if !ok_shape {
                return Some(format!(
                    "a segment built in place ({} bytes, flags {flags:#04x}) is a bare RST/ACK or a SYN/SYN-ACK with an MSS option",
                    out.len()
                ));
            }
            if after
                != (frame::Sums {
                    ip: true,
                    tcp: Some(true),
                    udp: None,
                })
            {
                return Some(format!("RST checksums: {after:?}"));
            }
            return None;
        }
        if out.len() != input.len() {
            return Some(format!(
                "length changed from {} to {}",
                input.len(),
                out.len()
            ));
        }
        // Only MACs, TTL, the IPv4 checksum, addresses, ports and the TCP or UDP checksum
        // change.
        let check = if input[IP + 9] == IPPROTO_UDP {
            UDP + 6
        } else {
            TCP + 16
        };
        let allowed = |i: usize| {
            i < 12
                || i == IP + 8
                || (IP + 10..IP + 20).contains(&i)
                || (TCP..TCP + 4).contains(&i)
                || (check..check + 2).contains(&i)
        };
        if let Some(i) = (0..input.len()).find(|&i| input[i] != out[i] && !allowed(i)) {
            return Some(format!(
                "byte {i} changed ({:02x} -> {:02x})",
                input[i], out[i]
            ));
        }
        if out[IP + 8].wrapping_add(1) != input[IP + 8] {
            return Some(format!("TTL {} -> {}", input[IP + 8], out[IP + 8]));
        }
        let src = [out[IP + 12], out[IP + 13], out[IP + 14], out[IP + 15]];
        if src != SNAT && src != VIP && src != VIP2 {
            return Some("source is neither the SNAT address nor a VIP".into());
        }
        let before = frame::verify(input)?;
        if after.ip != before.ip {
            return Some(format!(
                "IPv4 header checksum valid before: {}, after: {}",
                before.ip, after.ip
            ));
        }
        let tot = usize::from(u16::from_be_bytes([input[IP + 2], input[IP + 3]]));
        if tot + IP != input.len() {
            self.report.forwarded_bad_length += 1;
        }
        if before.tcp == Some(false) || before.udp == Some(UdpSum::Bad) {
            self.report.forwarded_bad_checksum += 1;
        }
        if before.udp == Some(UdpSum::Zero) {
            self.report.forwarded_zero_udp_checksum += 1;
        }
        if after.udp != before.udp {
            return Some(format!(
                "UDP checksum before: {:?}, after: {:?}",
                before.udp, after.udp
            ));
        }
        if after.tcp != before.tcp {
            return Some(format!(
                "TCP checksum valid before: {:?}, after: {:?}",
                before.tcp, after.tcp
            ));
        }
        None
    }

    /// A clean segment of a known flow: from the client (`from_client`) or the origin.
    fn known_seg(
        &mut self,
        k: &Known,
        from_client: bool,
        flags: u8,
        payload: Vec<u8>,
    ) -> (Seg, Side) {
        if from_client {
            (
                Seg {
                    smac: mac_of(k.client),
                    dmac: self.mac_a,
                    src: k.client,
                    dst: k.vip,
                    ttl: 64,
                    sport: k.cport,
                    dport: k.vport,
                    seq: k.cseq,
                    ack: k.oseq,
                    flags,
                    win: 64240,
                    options: Vec::new(),
                    payload,
                },
                Side::A,
            )
        } else {
            (
                Seg {
                    smac: mac_of(k.origin),
                    dmac: self.lb_mac(k.oside),
                    src: k.origin,
                    dst: SNAT,
                    ttl: 64,
                    sport: k.oport,
                    dport: k.snat_port,
                    seq: k.oseq,
                    ack: k.cseq,
                    flags,
                    win: 65160,
                    options: Vec::new(),
                    payload,
                },
                k.oside,
            )
        }
    }

    /// Runs a new flow's first packet (a SYN or a datagram from `client`:`cport` to `vip`)
    /// and learns the flow from what it became (sequence numbers left 0): `None` if it was
    /// not forwarded to a known origin.
    fn first_packet(
        &mut self,
        first: &[u8],
        what: &str,
        client: [u8; 4],
        cport: u16,
        vip: ([u8; 4], u16),
    ) -> Option<Known> {
        let (v, out) = self.step(first, Side::A, what)?;
        // TCP and UDP ports are at the same offsets.
        if !(v == XDP_TX || v == XDP_REDIRECT) || out.len() < TCP + 4 {
            return None;
        }
        let origin = [out[IP + 16], out[IP + 17], out[IP + 18], out[IP + 19]];
        let oport = u16::from_be_bytes([out[TCP + 2], out[TCP + 3]]);
        let &(_, _, oside) = ORIGINS
            .iter()
            .find(|(a, p, _)| *a == origin && *p == oport)?;
        Some(Known {
            client,
            cport,
            vip: vip.0,
            vport: vip.1,
            origin,
            oport,
            oside,
            snat_port: u16::from_be_bytes([out[TCP], out[TCP + 1]]),
            cseq: 0,
            oseq: 0,
        })
    }

    /// A clean handshake of a new flow, taken to `stage`: 0 SYN only, 1 SYN-ACK, 2
    /// established, 3 established and closed by FINs from both sides, 4 reset by the client.
    fn establish(&mut self, client: [u8; 4], cport: u16, vip: ([u8; 4], u16), stage: u32) {
        let isn = self.rng.u32();
        let syn = Seg {
            smac: mac_of(client),
            dmac: self.mac_a,
            src: client,
            dst: vip.0,
            ttl: 64,
            sport: cport,
            dport: vip.1,
            seq: isn,
            ack: 0,
            flags: SYN,
            win: 64240,
            options: frame::syn_options(&mut self.rng),
            payload: Vec::new(),
        }
        .build();
        let Some(mut k) = self.first_packet(&syn, "handshake: SYN", client, cport, vip) else {
            return;
        };
        k.cseq = isn.wrapping_add(1);
        k.oseq = self.rng.u32();
        if stage >= 1 {
            let (mut s, side) = self.known_seg(&k.clone(), false, SYN | ACK, Vec::new());
            s.options = frame::syn_options(&mut self.rng);
            self.step(&s.build(), side, "handshake: SYN-ACK");
            k.oseq = k.oseq.wrapping_add(1);
        }
        if stage >= 2 {
            let (s, side) = self.known_seg(&k.clone(), true, ACK, Vec::new());
            self.step(&s.build(), side, "handshake: ACK");
        }
        if stage == 3 {
            let (s, side) = self.known_seg(&k.clone(), true, FIN | ACK, Vec::new());
            self.step(&s.build(), side, "close: client FIN");
            k.cseq = k.cseq.wrapping_add(1);
            let (s, side) = self.known_seg(&k.clone(), false, FIN | ACK, Vec::new());
            self.step(&s.build(), side, "close: origin FIN");
            k.oseq = k.oseq.wrapping_add(1);
        }
        if stage == 4 {
            let (s, side) = self.known_seg(&k.clone(), true, RST | ACK, Vec::new());
            self.step(&s.build(), side, "close: client RST");
        }
        if self.known.len() < 32 {
            self.known.push(k);
        } else {
            let i = self.rng.below(self.known.len());
            self.known[i] = k;
        }
    }

    /// A clean first datagram of a new UDP flow, answered by its origin if `answer`.
    fn open_udp(&mut self, client: [u8; 4], cport: u16, vip: ([u8; 4], u16), answer: bool) {
        let mut d = self.dgram((client, cport), vip, Side::A);
        d.checksum = true;
        let Some(k) = self.first_packet(&d.build(), "UDP: first datagram", client, cport, vip)
        else {
            return;
        };
        if answer {
            let (d, side) = self.known_dgram(&k, false);
            self.step(&d.build(), side, "UDP: the origin's answer");
        }
        if self.rng.chance(30) {
            // Left alone until it expires, then revisited (`udp_base`).
            self.sleep(k);
        } else if self.known_udp.len() < 16 {
            self.known_udp.push(k);
        } else {
            let i = self.rng.below(self.known_udp.len());
            let old = std::mem::replace(&mut self.known_udp[i], k);
            self.sleep(old);
        }
    }

    fn sleep(&mut self, k: Known) {
        if self.dormant.len() >= 1024 {
            self.dormant.pop_front();
        }
        self.dormant.push_back((k, Instant::now()));
    }

    /// A UDP payload: empty, DNS-sized, or up to a full MTU.
    fn udp_payload(&mut self) -> Vec<u8> {
        let n = self.rng.pick(&[0, 1, 12, 40, 512, 1200, 1472]);
        self.rng.bytes(n)
    }

    /// A datagram from `src` (at its fixture MAC) to `dst`, arriving on `side`: TTL 64, a
    /// `udp_payload`, one in five without a checksum.
    fn dgram(&mut self, src: ([u8; 4], u16), dst: ([u8; 4], u16), side: Side) -> Dgram {
        Dgram {
            smac: mac_of(src.0),
            dmac: self.lb_mac(side),
            src: src.0,
            dst: dst.0,
            ttl: 64,
            sport: src.1,
            dport: dst.1,
            checksum: !self.rng.chance(20),
            payload: self.udp_payload(),
        }
    }

    /// A clean datagram of a known UDP flow: from the client (`from_client`) or the origin
    /// (to its SNAT port).
    fn known_dgram(&mut self, k: &Known, from_client: bool) -> (Dgram, Side) {
        if from_client {
            let d = self.dgram((k.client, k.cport), (k.vip, k.vport), Side::A);
            (d, Side::A)
        } else {
            let d = self.dgram((k.origin, k.oport), (SNAT, k.snat_port), k.oside);
            (d, k.oside)
        }
    }

    /// An ICMP error about a known flow (`udp`: a UDP one, else TCP), quoting what the load
    /// balancer sent: from the origin's side (the origin or a router, about the packet to
    /// the origin) or from the client's side (about the packet to the client).
    fn icmp_error(&mut self, udp: bool) -> Option<(Vec<u8>, Side, String)> {
        let pool = if udp { &self.known_udp } else { &self.known };
        if pool.is_empty() {
            return None;
        }
        let k = pool[self.rng.below(pool.len())].clone();
        let origin_side = self.rng.chance(60);
        let (lb_src, lb_sport, dst, dport) = if origin_side {
            (SNAT, k.snat_port, k.origin, k.oport)
        } else {
            (k.vip, k.vport, k.client, k.cport)
        };
        let whole_tcp = self.rng.chance(50);
        let sent = if udp {
            let mut d = self.dgram((lb_src, lb_sport), (dst, dport), Side::A);
            d.ttl = 63;
            d.build()
        } else {
            Seg {
                smac: [0; 6],
                dmac: [0; 6],
                src: lb_src,
                dst,
                ttl: 63,
                sport: lb_sport,
                dport,
                seq: if origin_side { k.cseq } else { k.oseq },
                ack: if origin_side { k.oseq } else { k.cseq },
                flags: ACK,
                win: 64240,
                options: Vec::new(),
                payload: vec![0x61; if whole_tcp { 100 } else { 0 }],
            }
            .build()
        };
        let mut quote = sent[IP..].to_vec();
        let whole = self.rng.chance(50);
        if !whole {
            quote.truncate(28);
        }
        let (kind, code, rest) = self.rng.pick(&[
            (3u8, 3u8, [0u8; 4]),
            (3, 1, [0; 4]),
            (3, 4, [0, 0, 0x05, 0x78]),
            (3, 4, [0, 0, 0x02, 0x40]),
            (11, 0, [0; 4]),
        ]);
        let (from, side, lb) = if origin_side {
            let from = if kind == 3 && code == 3 {
                k.origin
            } else {
                R_ORIGIN
            };
            (from, k.oside, SNAT)
        } else {
            let from = if kind == 3 && code == 3 {
                k.client
            } else {
                R_CLIENT
            };
            (from, Side::A, k.vip)
        };
        let f = frame::icmp(
            mac_of(from),
            self.lb_mac(side),
            from,
            lb,
            kind,
            code,
            rest,
            &quote,
        );
        let proto = if udp { "UDP" } else { "TCP" };
        let dir = if origin_side { "origin" } else { "client" };
        let q = if whole { "whole" } else { "28 bytes" };
        Some((
            f,
            side,
            format!("ICMP {kind}/{code} from the {dir} side about a known {proto} flow, quote {q}"),
        ))
    }

    /// A UDP frame: datagrams of known flows from either side (some forged: another SNAT
    /// port, origin or origin port), new flows from known and spoofed clients, UDP to
    /// TCP-only VIPs and TCP to UDP-only ports, ICMP errors about known flows.
    fn udp_base(&mut self) -> (Vec<u8>, Side, String) {
        // Datagrams that make new flows come in floods (one stretch of frames in three),
        // which meet the UDP budget; between them, new flows are mostly `open_udp`'s, which
        // then get through.
        let new = if (self.index / FLOOD_FRAMES).is_multiple_of(3) {
            15
        } else {
            1
        };
        let r = self.rng.below(85 + new);
        if r < 50 && !self.known_udp.is_empty() {
            let idle = u64::from(UDP_SECS.max(UDP_UNREPLIED_SECS) + 1);
            let woken = match self.dormant.front() {
                Some((_, t)) if r.is_multiple_of(4) && t.elapsed().as_secs() >= idle => {
                    self.dormant.pop_front().map(|(k, _)| k)
                }
                _ => None,
            };
            let k = woken
                .clone()
                .unwrap_or_else(|| self.known_udp[self.rng.below(self.known_udp.len())].clone());
            let from_client = r < 28;
            let (mut d, side) = self.known_dgram(&k, from_client);
            let mut what = format!(
                "UDP {} datagram of a known{} flow ({} bytes{})",
                if from_client { "client" } else { "origin" },
                if woken.is_some() { ", long idle," } else { "" },
                d.payload.len(),
                if d.checksum { "" } else { ", no checksum" }
            );
            if !from_client && r >= 43 {
                // From a real origin endpoint, a forged answer answers (and keeps alive)
                // whatever flow holds that SNAT port: rarely that, mostly from an address
                // or port that is no origin's, so that flows still expire.
                match self.rng.below(6) {
                    0 => {
                        d.dport =
                            SNAT_MIN + self.rng.below(usize::from(SNAT_MAX - SNAT_MIN) + 1) as u16;
                        what.push_str("; to another SNAT port");
                    }
                    1 => {
                        let (o, _, _) = self.rng.pick(&ORIGINS);
                        d.src = o;
                        d.smac = mac_of(o);
                        what.push_str("; from an origin address, maybe another");
                    }
                    2 | 3 => {
                        let a = self.rng.pick(&[O4, R_ORIGIN, [10, 0, 11, 9], C1]);
                        d.src = a;
                        d.smac = mac_of(a);
                        what.push_str("; from an address that is no origin's");
                    }
                    _ => {
                        let x = self.rng.u16();
                        d.sport = self.rng.pick(&[53, 5354, 8443, x]);
                        what.push_str("; from another port");
                    }
                }
            }
            return (d.build(), side, what);
        }
        if r < 75 {
            if let Some(e) = self.icmp_error(r < 68) {
                return e;
            }
        }
        let client = if self.rng.chance(70) {
            self.rng.pick(&CLIENTS)
        } else {
            [198, 18, self.rng.u8(), self.rng.u8()]
        };
        let sport = if self.rng.chance(50) {
            self.fresh_cport()
        } else {
            self.rng.u16()
        };
        if r < 75 + new {
            let vip = self.rng.pick(&UDP_VIPS);
            let d = self.dgram((client, sport), vip, Side::A);
            return (d.build(), Side::A, "UDP datagram, new flow".into());
        }
        if r < 81 + new {
            let (dst, dport) = if self.rng.chance(70) {
                self.rng.pick(&TCP_ONLY)
            } else {
                (
                    self.rng.pick(&[VIP, VIP2, SNAT]),
                    self.rng.pick(&[22, 123, 8080]),
                )
            };
            let d = self.dgram((client, sport), (dst, dport), Side::A);
            return (
                d.build(),
                Side::A,
                "UDP to a VIP address, a port with no UDP load balancer".into(),
            );
        }
        let vip = self.rng.pick(&UDP_VIPS);
        let flags = self.rng.pick(&[SYN, ACK, SYN | ACK]);
        let s = Seg {
            smac: mac_of(client),
            dmac: self.mac_a,
            src: client,
            dst: vip.0,
            ttl: 64,
            sport,
            dport: vip.1,
            seq: self.rng.u32(),
            ack: self.rng.u32(),
            flags,
            win: 64240,
            options: Vec::new(),
            payload: Vec::new(),
        };
        (
            s.build(),
            Side::A,
            format!("TCP (flags {flags:02x}) to a UDP VIP's port"),
        )
    }

    fn fresh_cport(&mut self) -> u16 {
        self.next_cport = if self.next_cport >= 60000 {
            32768
        } else {
            self.next_cport + 1
        };
        self.next_cport
    }

    /// Addresses mutations try.
    const ADDRS: [[u8; 4]; 10] = [
        VIP,
        VIP2,
        SNAT,
        CLIENTS[0],
        CLIENTS[1],
        O1,
        O2,
        O4,
        LOCAL,
        [10, 0, 1, 1],
    ];

    /// The next fuzz frame: a base frame, then mutations. Returns frame, ingress, description.
    fn generate(&mut self) -> (Vec<u8>, Side, String) {
        if self.rng.chance(NAT64_SHARE) {
            return self.generate64();
        }
        if self.rng.chance(V6_SHARE) {
            return self.generate6();
        }
        let r = self.rng.below(100);
        let udp = self.rng.chance(UDP_SHARE);
        let (mut f, mut side, mut what) = match r {
            _ if udp => self.udp_base(),
            0..=44 if !self.known.is_empty() => {
                let k = self.known[self.rng.below(self.known.len())].clone();
                let from_client = r < 25;
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
                let payload = if self.rng.chance(40) {
                    let n = self.rng.pick(&[1, 18, 100, 1400]);
                    self.rng.bytes(n)
                } else {
                    Vec::new()
                };
                let (mut s, side) = self.known_seg(&k, from_client, flags, payload);
                if self.rng.chance(30) {
                    s.seq = s
                        .seq
                        .wrapping_add(self.rng.below(131_072) as u32)
                        .wrapping_sub(65536);
                }
                if self.rng.chance(10) {
                    s.options = frame::random_options(&mut self.rng);
                }
                let dir = if from_client { "client" } else { "origin" };
                (
                    s.build(),
                    side,
                    format!("{dir} segment of a known flow, flags {flags:02x}"),
                )
            }
            45..=47 if !self.known.is_empty() => {
                // A SYN on a known tuple: a retransmission, a reused closed tuple, a SYN on
                // an established flow.
                let k = self.known[self.rng.below(self.known.len())].clone();
                let (mut s, side) = self.known_seg(&k, true, SYN, Vec::new());
                s.seq = self.rng.u32();
                s.options = frame::syn_options(&mut self.rng);
                (s.build(), side, "SYN on a known tuple".to_string())
            }
            0..=59 => {
                let vip = self.rng.pick(&VIPS);
                let client = if self.rng.chance(80) {
                    self.rng.pick(&CLIENTS)
                } else {
                    [198, 18, self.rng.u8(), self.rng.u8()]
                };
                let cport = if self.rng.chance(50) {
                    self.fresh_cport()
                } else {
                    self.rng.u16()
                };
                let isn = self.rng.u32();
                let s = Seg {
                    smac: mac_of(client),
                    dmac: self.mac_a,
                    src: client,
                    dst: vip.0,
                    ttl: 64,
                    sport: cport,
                    dport: vip.1,
                    seq: isn,
                    ack: 0,
                    flags: SYN,
                    win: 64240,
                    options: if self.rng.chance(70) {
                        frame::syn_options(&mut self.rng)
                    } else {
                        frame::random_options(&mut self.rng)
                    },
                    payload: Vec::new(),
                };
                (s.build(), Side::A, "SYN".to_string())
            }
            60..=67 => {
                let (o, op, side) = self.rng.pick(&ORIGINS);
                let s = Seg {
                    smac: mac_of(o),
                    dmac: self.lb_mac(side),
                    src: o,
                    dst: SNAT,
                    ttl: 64,
                    sport: op,
                    dport: SNAT_MIN + self.rng.below(usize::from(SNAT_MAX - SNAT_MIN) + 1) as u16,
                    seq: self.rng.u32(),
                    ack: self.rng.u32(),
                    flags: self
                        .rng
                        .pick(&[SYN | ACK, ACK, RST, RST | ACK, FIN | ACK, ACK | PSH]),
                    win: 65160,
                    options: Vec::new(),
                    payload: Vec::new(),
                };
                (s.build(), side, "origin segment to a SNAT port".to_string())
            }
            68..=77 => self.non_vip(),
            78..=84 => {
                let n = 14 + self.rng.below(200);
                let mut f = self.rng.bytes(n);
                if self.rng.chance(50) {
                    f[12..14].copy_from_slice(&[0x08, 0x00]);
                    if n > IP + 20 && self.rng.chance(50) {
                        f[IP] = 0x45;
                        f[IP + 9] = 6;
                        let d = self.rng.pick(&Self::ADDRS);
                        f[IP + 16..IP + 20].copy_from_slice(&d);
                    }
                }
                let side = if self.rng.chance(50) {
                    Side::A
                } else {
                    Side::B
                };
                return (f, side, format!("{n} random bytes"));
            }
            _ => {
                let vip = self.rng.pick(&VIPS);
                let client = self.rng.pick(&CLIENTS);
                let s = Seg {
                    smac: mac_of(client),
                    dmac: self.mac_a,
                    src: client,
                    dst: vip.0,
                    ttl: 64,
                    sport: self.rng.u16(),
                    dport: vip.1,
                    seq: self.rng.u32(),
                    ack: self.rng.u32(),
                    flags: self.rng.u8(),
                    win: self.rng.u16(),
                    options: Vec::new(),
                    payload: Vec::new(),
                };
                (s.build(), Side::A, "forged client segment".to_string())
            }
        };
        if self.rng.chance(85) {
            let n = 1 + self.rng.below(3);
            let mut fix = self.rng.chance(75);
            for _ in 0..n {
                let m = mutate(&mut self.rng, &mut f, &Self::ADDRS);
                if m.contains("check") {
                    fix = false;
                }
                what.push_str("; ");
                what.push_str(&m);
            }
            if f.len() < 14 {
                f.resize(14, 0);
                what.push_str("; padded to 14");
            }
            if fix {
                frame::fix_checksums(&mut f);
                what.push_str("; checksums fixed");
            }
        }
        if self.rng.chance(10) {
            side = if side == Side::A { Side::B } else { Side::A };
            what.push_str("; other interface");
        }
        (f, side, what)
    }

    /// Traffic that is not the load balancer's: other addresses, a VIP address on another
    /// port or protocol, ARP, IPv6, a VLAN-tagged segment.
    fn non_vip(&mut self) -> (Vec<u8>, Side, String) {
        let client = self.rng.pick(&CLIENTS);
        let base = Seg {
            smac: mac_of(client),
            dmac: self.mac_a,
            src: client,
            dst: self
                .rng
                .pick(&[[10, 0, 1, 1], [10, 0, 11, 2], [8, 8, 8, 8], [10, 0, 0, 12]]),
            ttl: 64,
            sport: self.rng.u16(),
            dport: self.rng.pick(&[22, 80, 443, 8080]),
            seq: self.rng.u32(),
            ack: self.rng.u32(),
            flags: self.rng.pick(&[SYN, ACK, SYN | ACK, FIN | ACK]),
            win: 64240,
            options: Vec::new(),
            payload: Vec::new(),
        };
        match self.rng.below(6) {
            0 => (base.build(), Side::A, "TCP to another address".into()),
            1 => {
                let mut s = base;
                s.dst = self.rng.pick(&[VIP, VIP2, SNAT]);
                s.dport = self.rng.pick(&[22, 81, 8080]);
                (
                    s.build(),
                    Side::A,
                    "TCP to a VIP address (or SNAT), other port".into(),
                )
            }
            2 => {
                let mut f = base.build();
                f[IP + 16..IP + 20].copy_from_slice(&self.rng.pick(&[VIP, SNAT, [10, 0, 1, 1]]));
                f[IP + 9] = self.rng.pick(&[17, 1, 47]);
                frame::fix_checksums(&mut f);
                (f, Side::A, "UDP/ICMP/GRE to a VIP or other address".into())
            }
            3 => {
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&mac_of(client));
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&mac_of(client));
                f.extend_from_slice(&client);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&VIP);
                (f, Side::A, "ARP request for the VIP".into())
            }
            4 => {
                let mut f = base.build();
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                (f, Side::A, "IPv6 ethertype".into())
            }
            _ => {
                let mut s = base;
                s.dst = VIP;
                s.dport = 80;
                let mut f = s.build();
                f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
                (f, Side::A, "VLAN-tagged segment to the VIP".into())
            }
        }
    }

    fn dump(&self) -> Tables {
        let flows = self.rec.maps.flows.iter().filter_map(Result::ok).collect();
        let revs = self
            .rec
            .maps
            .rev_flows
            .iter()
            .filter_map(Result::ok)
            .collect();
        (flows, revs)
    }

    /// The pairing the README promises ("`FLOWS` and `REV_FLOWS` name each other"), as the
    /// data path keeps it with no sweeper and no evictions:
    /// - every `FLOWS` entry's `REV_FLOWS` entry exists and names that client tuple;
    /// - every `REV_FLOWS` entry is named by its client's `FLOWS` entry, unless it is closed
    ///   (a closed flow keeps its port through the grace period while its client tuple moves
    ///   on to a new flow) or expired (removal is lazy);
    /// - `ORIGIN_FLOWS[o]` is the number of `REV_FLOWS` entries of `o` not marked closing,
    ///   of both protocols (a UDP entry is open until it is replaced or its port taken);
    /// - keys are TCP or UDP, and a pair is of one protocol: a `FLOWS` half's `udp` is 1
    ///   exactly when its key is UDP, so it names a reverse entry of its own protocol (whose
    ///   client tuple is read in the reverse key's protocol); a UDP `REV_FLOWS` entry has
    ///   `CT_UDP` and no TCP state bit (SYN-ACK, FIN, RST, cookie, stale), and
    ///   `CT_UDP_STREAM` only with `CT_ESTABLISHED`; a TCP one neither UDP bit.
    ///
    /// Returns one line per problem.
    fn check_tables(&self) -> Vec<String> {
        /// Is sequence number `a` behind `b` (modulo 2^32)?
        #[expect(
            clippy::cast_possible_wrap,
            reason = "sequence arithmetic is modulo 2^32"
        )]
        fn seq_behind(a: u32, b: u32) -> bool {
            (a.wrapping_sub(b) as i32) < 0
        }
        let (flows, revs) = self.dump();
        self.seen.set((
            self.seen.get().0.max(flows.len()),
            self.seen.get().1.max(revs.len()),
        ));
        let now = now_coarse();
        let expired = |r: &RevFlow| {
            now.wrapping_sub(r.last_seen) >= RevFlow::timeout(r.flags, &self.settings)
        };
        let rev_map: std::collections::HashMap<FlowKey, RevFlow> = revs.iter().copied().collect();
        let flow_map: std::collections::HashMap<FlowKey, Flow> = flows.iter().copied().collect();
        let mut problems = Vec::new();
        problems.extend(
            flows
                .iter()
                .filter_map(|(k, f)| proto_problem(k, Some(f), None))
                .chain(
                    revs.iter()
                        .filter_map(|(k, r)| proto_problem(k, None, Some(r))),
                ),
        );
        for (k, f) in &flows {
            let rk = rev_key(f);
            match rev_map.get(&rk) {
                None => problems.push(format!("FLOWS {} names reverse entry {}, which does not exist", show_key(k), show_key(&rk))),
                Some(r) if client_key(&rk, r) != *k => problems.push(format!(
                    "FLOWS {} names reverse entry {}, which names client {} (flags {:#x}, idle {} s)",
                    show_key(k),
                    show_key(&rk),
                    show_key(&client_key(&rk, r)),
                    r.flags,
                    now.wrapping_sub(r.last_seen)
                )),
                // The fast path only moves the client's edge forward in its half, and the
                // slow path moves it into the tracking entry before it tracks anything: a
                // fast half is never behind its entry.
                Some(r)
                    if f.flags & FLOW_F_FAST != 0
                        && seq_behind(f.client_end, r.client_end) =>
                {
                    problems.push(format!(
                        "FLOWS {} (fast path) holds the client's edge {}, behind its tracking entry's {}",
                        show_key(k),
                        f.client_end,
                        r.client_end
                    ));
                }
                Some(_) => {}
            }
        }
        for (rk, r) in &revs {
            let ck = client_key(rk, r);
            let paired = flow_map.get(&ck).is_some_and(|f| rev_key(f) == *rk);
            // A UDP flow never closes: an entry marked closing (left `ORIGIN_FLOWS`) is
            // removed at once, so one left behind unpaired is a leak.
            if !paired && !RevFlow::closed(r.flags) && !expired(r) {
                let other = flow_map.get(&ck).map_or_else(
                    || "missing".to_string(),
                    |f| format!("names {}", show_key(&rev_key(f))),
                );
                problems.push(format!(
                    "open, unexpired REV_FLOWS {} (flags {:#x}, idle {} s): its client half {} is {other}",
                    show_key(rk),
                    r.flags,
                    now.wrapping_sub(r.last_seen),
                    show_key(&ck)
                ));
            }
        }
        for &id in &self.origin_ids {
            let open = revs
                .iter()
                .filter(|(_, r)| r.origin_id == id && r.flags & REV_F_CLOSING == 0)
                .count() as u64;
            let counted = self.rec.maps.origin_flows.get(&id, 0).unwrap_or(0);
            if open != counted {
                #[expect(
                    clippy::cast_possible_wrap,
                    reason = "a wrapped count reads as negative"
                )]
                let c = counted as i64;
                problems.push(format!(
                    "ORIGIN_FLOWS[{id}] = {c}, but {open} open REV_FLOWS entries name origin {id}"
                ));
            }
        }
        problems
    }

    fn snapshot(&self) -> Snapshot {
        let (flows, revs) = self.dump();
        let origin_flows = self
            .origin_ids
            .iter()
            .map(|&id| (id, self.rec.maps.origin_flows.get(&id, 0).unwrap_or(0)))
            .collect();
        Snapshot {
            flows,
            revs,
            origin_flows,
        }
    }

    fn restore(&mut self, s: &Snapshot) {
        let (flows, revs) = self.dump();
        for (k, _) in flows {
            let _ = self.rec.maps.flows.remove(&k);
        }
        for (k, _) in revs {
            let _ = self.rec.maps.rev_flows.remove(&k);
        }
        for (k, v) in &s.flows {
            let _ = self.rec.maps.flows.insert(k, v, 0);
        }
        for (k, v) in &s.revs {
            let _ = self.rec.maps.rev_flows.insert(k, v, 0);
        }
        for (id, n) in &s.origin_flows {
            let _ = self.rec.maps.origin_flows.set(*id, n, 0);
        }
    }

    /// The periodic check; new problems are pinned to a frame by replaying the window.
    fn check(&mut self) {
        self.report.table_checks += 1;
        let fresh: Vec<String> = self
            .check_tables()
            .into_iter()
            .filter(|p| !self.reported.contains(p))
            .collect();
        if fresh.is_empty() {
            self.snapshot = Some(self.snapshot());
            self.window.clear();
            return;
        }
        let mut pinned = None;
        if let Some(s) = self.snapshot.take() {
            let window = std::mem::take(&mut self.window);
            self.restore(&s);
            let base: BTreeSet<String> = self.check_tables().into_iter().collect();
            for (f, side, idx) in &window {
                let Some((v, out)) = self.run(f, *side) else {
                    continue;
                };
                let now: Vec<String> = self
                    .check_tables()
                    .into_iter()
                    .filter(|p| !base.contains(p) && !self.reported.contains(p))
                    .collect();
                if !now.is_empty() {
                    pinned = Some((f.clone(), *side, *idx, v, out, now));
                    break;
                }
            }
            // The replayed frames counted events again: take the totals as the new base.
            self.last = self.events.totals(&self.rec.maps);
        }
        let after = self.check_tables();
        let v = match pinned {
            Some((input, side, idx, verdict, output, problems)) => Violation {
                seed: self.opts.seed,
                frame: Some(idx),
                invariant: "flow tables stay paired (pinned by replay from the last good check)"
                    .into(),
                detail: problems.join("\n  "),
                ingress: Some(side),
                input,
                output,
                verdict: Some(verdict),
            },
            None => Violation {
                seed: self.opts.seed,
                frame: None,
                invariant: "flow tables stay paired (not reproduced by replay; the clock moved on)"
                    .into(),
                detail: format!(
                    "between frames {} and {}: {}",
                    self.index.saturating_sub(self.opts.check_every),
                    self.index,
                    fresh.join("\n  ")
                ),
                ingress: None,
                input: Vec::new(),
                output: Vec::new(),
                verdict: None,
            },
        };
        if self.report.violations.len() < 50 {
            eprintln!("{v}");
        }
        self.report.violations.push(v);
        self.reported.extend(fresh);
        self.reported.extend(after);
        self.snapshot = Some(self.snapshot());
        self.window.clear();
    }
}

/// Runs the fuzzer: builds the bed, loads the program, applies the config, establishes
/// flows, then drives `opts.frames` frames (set-up included). Needs root.
pub fn run(opts: &Options) -> Report {
    lb_testbed::require_prerequisites();
    let neighbours = fixture::neighbours(&[C1, C2, C3, C4, C5, C6, LOCAL], &[O1, O2, O4]);
    let bed = FibBed::new("fz", &neighbours);
    let neighbours6: Vec<([u8; 16], [u8; 6], Side)> = v6::CLIENTS6
        .iter()
        .chain([&v6::OTHER6])
        .map(|&a| (a, v6::mac6(a), Side::A))
        .chain(
            v6::O6
                .iter()
                .chain([&v6::R6])
                .map(|&a| (a, v6::mac6(a), Side::B)),
        )
        .collect();
    bed.add_ipv6(&neighbours6);
    let pin_dir = bed.pin_dir.clone();
    let (ifindex_a, ifindex_b, mac_a, mac_b) = (
        bed.ifindex(Side::A),
        bed.ifindex(Side::B),
        bed.mac_a,
        bed.mac_b,
    );
    let object = opts
        .object
        .clone()
        .unwrap_or_else(|| lb_testbed::ebpf_object().to_path_buf());
    fixture::with_loaded_in(&bed, &object, &config(), |loaded| {
        let rec = &mut loaded.rec;
        let prog = loaded.dp.program().expect("program");
        let origin_ids = rec.assignment.origins.values().copied().collect();
        let mut events = Events::open(&pin_dir);
        let last = events.totals(&rec.maps);
        let mut fz = Fuzzer {
            opts,
            rng: Rng::new(opts.seed),
            prog,
            rec,
            events,
            last,
            ifindex_a,
            ifindex_b,
            mac_a,
            mac_b,
            known: Vec::new(),
            known_udp: Vec::new(),
            known6: Vec::new(),
            known64: Vec::new(),
            dormant: std::collections::VecDeque::new(),
            index: 0,
            report: Report {
                seed: opts.seed,
                ..Report::default()
            },
            window: Vec::new(),
            snapshot: None,
            reported: BTreeSet::new(),
            settings: Settings {
                udp_secs: UDP_SECS,
                udp_unreplied_secs: UDP_UNREPLIED_SECS,
                reuse_closed_secs: REUSE_CLOSED_SECS,
                established_secs: ESTABLISHED_SECS,
                syn_secs: SYN_SECS,
                half_closed_secs: HALF_CLOSED_SECS,
                ..Settings::default()
            },
            origin_ids,
            out: Vec::new(),
            next_cport: 32768,
            seen: std::cell::Cell::new((0, 0)),
        };
        let start = Instant::now();
        // IPv6 flows first, and taken past their SYN (stages 2 to 4), so that they do not
        // meet the small SYN budget that the IPv4 set-up's half-open flows fill; a later
        // IPv6 SYN is answered with a cookie most of the time.
        for c in v6::CLIENTS6 {
            for st in [2, 2, 2, 3, 4] {
                let p = fz.fresh_cport();
                fz.establish6(c, p, st);
            }
            for answer in [true, false] {
                let p = fz.fresh_cport();
                fz.open_udp6(c, p, answer);
            }
            for st in [2, 2, 3, 4] {
                let p = fz.fresh_cport();
                fz.open64(c, p, IPPROTO_TCP, st);
            }
            for st in [1, 0] {
                let p = fz.fresh_cport();
                fz.open64(c, p, IPPROTO_UDP, st);
            }
        }
        // Real state first: flows in every state, on every VIP.
        let mut stage = 0;
        for c in CLIENTS {
            for vip in VIPS {
                let p = fz.fresh_cport();
                fz.establish(c, p, vip, stage % 5);
                stage += 1;
            }
            for vip in UDP_VIPS {
                let p = fz.fresh_cport();
                fz.open_udp(c, p, vip, stage % 2 == 0);
                stage += 1;
            }
        }
        fz.check();
        let mut next_check = fz.index + opts.check_every;
        let mut next_progress = 100_000;
        let mut since_flow = 0;
        while fz.index < opts.frames {
            since_flow += 1;
            if since_flow >= 200 {
                since_flow = 0;
                let c = fz.rng.pick(&CLIENTS);
                let p = fz.fresh_cport();
                let vip = fz.rng.pick(&VIPS);
                let st = fz.rng.below(5) as u32;
                fz.establish(c, p, vip, st);
                let c = fz.rng.pick(&CLIENTS);
                let p = fz.fresh_cport();
                let vip = fz.rng.pick(&UDP_VIPS);
                let answer = fz.rng.chance(70);
                fz.open_udp(c, p, vip, answer);
                let c = fz.rng.pick(&v6::CLIENTS6);
                let p = fz.fresh_cport();
                let st = fz.rng.below(5) as u32;
                fz.establish6(c, p, st);
                let p = fz.fresh_cport();
                let answer = fz.rng.chance(70);
                fz.open_udp6(c, p, answer);
                let p = fz.fresh_cport();
                let proto = fz.rng.pick(&[IPPROTO_TCP, IPPROTO_UDP]);
                let st = fz.rng.below(5) as u32;
                fz.open64(c, p, proto, st);
            }
            let (f, side, what) = fz.generate();
            fz.step(&f, side, &what);
            if fz.index >= next_check {
                fz.check();
                next_check = fz.index + opts.check_every;
            }
            if opts.progress && fz.index >= next_progress {
                next_progress += 100_000;
                let rate = fz.index as f64 / start.elapsed().as_secs_f64();
                println!(
                    "fuzz: {} frames, {rate:.0} frames/s, {} violations",
                    fz.index,
                    fz.report.violations.len()
                );
            }
        }
        fz.check();
        let mut report = std::mem::take(&mut fz.report);
        report.frames = fz.index;
        report.max_entries = fz.seen.get();
        report.secs = start.elapsed().as_secs_f64();
        report
    })
}

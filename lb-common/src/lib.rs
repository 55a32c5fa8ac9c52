//! Types shared by the XDP program (`lb-ebpf`) and the agent (`lb-agent`): map keys and
//! values, map names and sizes, counter indices, and the flow hash both sides must agree on.
//!
//! Every type is `#[repr(C)]` with explicit padding and a size assertion, because the kernel
//! and user space read the same bytes. Addresses are always 16 bytes wide: an IPv4 address
//! is stored IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) so IPv6 fits without a redesign.
//! "NBO" marks a field in network byte order (as on the wire), "host" one in host order.
#![no_std]

pub mod hash;

/// Slots of the largest Maglev ring. Prime, as Maglev requires; 65537 keeps the per-origin
/// share error below 0.01 % for a few hundred origins.
pub const MAGLEV_M: u32 = 65537;
/// The ring sizes a pool may get, smallest first (all prime, as Maglev requires): a pool gets
/// the smallest with at least `RING_SLOTS_PER_ORIGIN` slots per origin, so that 1000 pools of
/// 10 origins take 4093 slots each and fit in `RING_SLOTS`, while large pools keep 65537
/// (Cilium offers 1021 to 131071).
pub const RING_SIZES: [u32; 4] = [1021, 4093, 16381, MAGLEV_M];
/// Slots per origin a ring size must give, at least. At 400, removing one of N equal origins
/// moves at most 1/N + 1 % of the slots and shares stay within 1 % of each other, as with
/// 65537 slots (`maglev` tests each size); at 100, a 10-origin pool on 1021 slots moved 12.5 %.
pub const RING_SLOTS_PER_ORIGIN: u32 = 400;
/// The ring size for a pool of `origins` origins (see `RING_SIZES`).
pub const fn ring_size(origins: usize) -> u32 {
    let mut i = 0;
    while i < RING_SIZES.len() - 1 {
        if RING_SIZES[i] as usize >= origins * RING_SLOTS_PER_ORIGIN as usize {
            return RING_SIZES[i];
        }
        i += 1;
    }
    MAGLEV_M
}
/// Rings (one per pool and origin port in use) `RING_META` describes.
pub const MAX_RINGS: u32 = 1024;
/// Slots of `RINGS`, shared by all rings: each ring holds `RingMeta::size` of them from
/// `RingMeta::base`. The kernel keeps array elements 8 bytes apart, so 2^23 slots take
/// 64 MiB: 1000 pools of up to 10 origins (4093 slots each) and 64 pools of over 40 origins
/// (65537 each) at once, or 2048 small pools.
pub const RING_SLOTS: u32 = 1 << 23;
/// Entries of the `ORIGINS` and `ORIGIN_STATS` arrays (an origin id indexes both).
pub const MAX_ORIGINS: u32 = 16384;
/// Entries of `VIPS` and `VIP_STATS`.
pub const MAX_VIPS: u32 = 1024;
/// Default size of `FLOWS` and `REV_FLOWS` (plain hashes). The agent may change it when it
/// creates the maps (`dataplane.flow_table_size`).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Entries of the `TX_PORTS` device map (interfaces the agent attached to).
pub const MAX_INTERFACES: u32 = 64;
/// `map_flags` of `RINGS`: BPF_F_MMAPABLE, so user space can write slots through mmap.
pub const RINGS_MAP_FLAGS: u32 = 1024;
/// A ring slot that holds no origin: packets that land on it are dropped (`NO_ORIGIN`).
pub const NO_ORIGIN: u32 = u32::MAX;
/// How many SNAT ports a new flow tries before it is dropped as `SNAT_EXHAUSTED`.
pub const SNAT_PROBES: u32 = 16;
/// Slots per VIP in `POOL_SEL`, the weighted pool table of `random` steering. Prime, for the
/// same Maglev construction as the rings; a pool's share is exact to 1/1021.
pub const POOL_SEL_M: u32 = 1021;
/// Most origins a `least_connections` pool may have: the data path compares them all.
pub const MAX_LC_MEMBERS: usize = 32;
/// Entries of the `GEO` trie (client prefixes); a GeoLite2-Country has about 400k IPv4 ones.
pub const GEO_MAX_PREFIXES: u32 = 1 << 20;
/// Entries of `GEO_PLAN`.
pub const GEO_PLAN_SIZE: u32 = 1 << 16;
/// Entries of `AFFINITY` (clients remembered by session affinity, LRU).
pub const AFFINITY_SIZE: u32 = 1 << 18;
/// Entries of `LOCAL_ADDRS` (the host's own addresses).
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// A `POOL_SEL` slot without a ring: the VIP's own ring is used.
pub const NO_RING: u32 = u32::MAX;
/// One-second buckets of `HANDSHAKES`; `dataplane.tcp_timeouts.syn` may not exceed it.
pub const HANDSHAKE_BUCKETS: u32 = 16;

/// One second of `Handshakes`. Host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeBucket {
    /// The second (coarse CLOCK_MONOTONIC) the counts belong to.
    pub sec: u32,
    pub _pad: u32,
    /// Flows created by a SYN (not by a cookie) in that second.
    pub started: u64,
    /// Handshakes that finished (established, or reset) in that second.
    pub done: u64,
}
const _: () = assert!(core::mem::size_of::<HandshakeBucket>() == 24);

/// Value of `HANDSHAKES[0]`, shared by all CPUs: handshakes started and finished per second
/// over the last `HANDSHAKE_BUCKETS` seconds. Started minus finished over the SYN timeout is
/// the number in flight; above `Settings::syn_budget` new SYNs get SYN cookies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshakes {
    pub buckets: [HandshakeBucket; HANDSHAKE_BUCKETS as usize],
    /// The last second a SYN cookie was sent: ACKs without a flow are checked for cookies
    /// only within `COOKIE_LIFETIME` of it.
    pub last_cookie: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Handshakes>() == 24 * HANDSHAKE_BUCKETS as usize + 8);

/// Seconds a SYN cookie stays valid in the kernel's check (its counter advances every 64 s
/// and two steps are accepted): past this, no ACK can carry a valid one.
pub const COOKIE_LIFETIME: u32 = 130;

/// Map names as they appear in the object file and under the pin directory.
pub mod map_names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const VIPS: &str = "VIPS";
    pub const RINGS: &str = "RINGS";
    pub const ORIGINS: &str = "ORIGINS";
    pub const FLOWS: &str = "FLOWS";
    pub const REV_FLOWS: &str = "REV_FLOWS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const ORIGIN_STATS: &str = "ORIGIN_STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const RING_META: &str = "RING_META";
    pub const POOL_SEL: &str = "POOL_SEL";
    pub const GEO: &str = "GEO";
    pub const GEO_PLAN: &str = "GEO_PLAN";
    pub const AFFINITY: &str = "AFFINITY";
    pub const ORIGIN_FLOWS: &str = "ORIGIN_FLOWS";
    pub const HANDSHAKES: &str = "HANDSHAKES";
    pub const ORIGIN_NH: &str = "ORIGIN_NH";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const VIP_IDS: &str = "VIP_IDS";
    pub const UDP_PENDING: &str = "UDP_PENDING";
    pub const TAILS: &str = "TAILS";
    /// Every map, in the order the agent pins and checks them.
    pub const ALL: [&str; 22] = [
        SETTINGS,
        VIPS,
        RINGS,
        ORIGINS,
        FLOWS,
        REV_FLOWS,
        TX_PORTS,
        VIP_STATS,
        ORIGIN_STATS,
        EVENTS,
        RING_META,
        POOL_SEL,
        GEO,
        GEO_PLAN,
        AFFINITY,
        ORIGIN_FLOWS,
        HANDSHAKES,
        ORIGIN_NH,
        LOCAL_ADDRS,
        VIP_IDS,
        UDP_PENDING,
        TAILS,
    ];
}

/// Name of the load-balancing XDP program in the object file.
pub const PROGRAM_NAME: &str = "lb_xdp";
/// Name of the UDP program, which `lb_xdp` tail-calls (`TAILS[TAIL_UDP]`) for every UDP
/// datagram: a program of its own is verified on its own, so the TCP path's verifier budget
/// does not pay for UDP.
pub const UDP_PROGRAM_NAME: &str = "lb_udp";
/// `TAILS` slot of `UDP_PROGRAM_NAME`.
pub const TAIL_UDP: u32 = 0;
/// Name of the IPv6 program, which `lb_xdp` tail-calls (`TAILS[TAIL_V6]`) for every IPv6
/// frame: TCP to IPv6 VIPs and from origins to IPv6 SNAT addresses, ICMPv6 (neighbour
/// discovery and router messages passed untouched, echo to VIP addresses, errors about our
/// flows), extension headers.
pub const V6_PROGRAM_NAME: &str = "lb_v6";
/// `TAILS` slot of `V6_PROGRAM_NAME`.
pub const TAIL_V6: u32 = 1;
/// Name of the IPv6 UDP program, which `lb_v6` tail-calls (`TAILS[TAIL_V6_UDP]`).
pub const V6_UDP_PROGRAM_NAME: &str = "lb_v6_udp";
/// `TAILS` slot of `V6_UDP_PROGRAM_NAME`.
pub const TAIL_V6_UDP: u32 = 2;
/// Name of the IPv6-to-IPv4 translator (NAT64, RFC 7915), tail-called (`TAILS[TAIL_TO_V4]`)
/// by `lb_v6` and `lb_v6_udp` for a client's packet rewritten towards an IPv4 origin, and
/// for an ICMPv6 error about such a flow.
pub const TO_V4_PROGRAM_NAME: &str = "lb_to_v4";
/// `TAILS` slot of `TO_V4_PROGRAM_NAME`.
pub const TAIL_TO_V4: u32 = 3;
/// Name of the IPv4-to-IPv6 translator, tail-called (`TAILS[TAIL_TO_V6]`) by `lb_xdp` and
/// `lb_udp` for an IPv4 origin's reply to an IPv6 client, and for an ICMP error about such a
/// flow.
pub const TO_V6_PROGRAM_NAME: &str = "lb_to_v6";
/// `TAILS` slot of `TO_V6_PROGRAM_NAME`.
pub const TAIL_TO_V6: u32 = 4;
/// Every program the agent loads besides `PROGRAM_NAME`, with its `TAILS` slot.
pub const TAIL_PROGRAMS: [(&str, u32); 5] = [
    (UDP_PROGRAM_NAME, TAIL_UDP),
    (V6_PROGRAM_NAME, TAIL_V6),
    (V6_UDP_PROGRAM_NAME, TAIL_V6_UDP),
    (TO_V4_PROGRAM_NAME, TAIL_TO_V4),
    (TO_V6_PROGRAM_NAME, TAIL_TO_V6),
];
/// Slots of `TAILS` (program array). Pinned: the kernel empties a program array when its
/// last user-space reference goes, so an unpinned one would stop UDP while the agent is
/// down.
pub const TAIL_SLOTS: u32 = 8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// `addr` is IPv4-mapped (`::ffff:a.b.c.d`): the IPv4 address `a.b.c.d` in a 16-byte field.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]])
        | u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]])
        == 0
        && u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]])
            == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Key of `VIPS`: which (address, port, protocol) is a virtual IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// IPv4-mapped or IPv6 address, NBO.
    pub addr: [u8; 16],
    /// TCP or UDP port, NBO. Port 0 with `IPPROTO_TCP` is the marker entry of a VIP
    /// address (any protocol): "some VIP lives at this address".
    pub port: u16,
    /// IP protocol number (6 = TCP, 17 = UDP).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

impl VipKey {
    /// `self == other`, without a branch per byte (see `Settings::is_snat_addr`).
    #[inline(always)]
    pub fn same(&self, other: &Self) -> bool {
        let mut diff = 0u8;
        let mut i = 0;
        while i < 16 {
            diff |= self.addr[i] ^ other.addr[i];
            i += 1;
        }
        diff == 0 && self.port == other.port && self.proto == other.proto
    }
}

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS`, host order.
    pub vip_id: u32,
    /// Which ring new flows use (`RING_META[ring_id]` says where its slots are), host.
    /// Moving a VIP to another pool is one write of this field.
    pub ring_id: u32,
    /// `VIP_F_*` bits, host order: how new flows pick their ring and origin.
    pub flags: u32,
    /// With `VIP_F_AFFINITY`: a client keeps its origin while its last new connection is
    /// younger than this many seconds, host order.
    pub affinity_ttl: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);

/// Value of `VIP_IDS`, indexed by VIP id: the `VIPS` entry of that id, key and value. An
/// established flow's packet finds its VIP here by the flow's `vip_id` (an array read)
/// instead of hashing the VIP key again; the key tells a live VIP from one whose id the
/// agent gave to another VIP since. An all-zero entry is no VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipById {
    pub key: VipKey,
    pub meta: VipMeta,
}
const _: () = assert!(core::mem::size_of::<VipById>() == 36);

/// `VipMeta::flags`: geo steering; the client's prefix (`GEO`) and `GEO_PLAN` pick the ring.
pub const VIP_F_GEO: u32 = 1;
/// `VipMeta::flags`: random steering; `POOL_SEL[vip_id * POOL_SEL_M + hash % POOL_SEL_M]`
/// picks the ring (by client address when `VIP_F_AFFINITY` is set, else by 5-tuple).
pub const VIP_F_RANDOM: u32 = 2;
/// `VipMeta::flags`: session affinity by client IP (`AFFINITY`).
pub const VIP_F_AFFINITY: u32 = 4;

/// Value of `ORIGINS`, indexed by origin id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginMeta {
    /// Origin address (IPv4-mapped or IPv6), NBO.
    pub addr: [u8; 16],
    /// Origin TCP port, NBO.
    pub port: u16,
    pub _pad: u16,
    /// `ORIGIN_F_*` bits, host order.
    pub flags: u32,
    /// The ring (pool) this origin belongs to, host order.
    pub ring_id: u32,
    /// Its weight in that ring in 1/10000, host order; 0 = takes no new flows (drained, down,
    /// disabled). A SYN or an affinity entry naming this origin keeps it only while
    /// `ring_id` is the ring the VIP picks for the client and `weight > 0`.
    pub weight: u32,
}
const _: () = assert!(core::mem::size_of::<OriginMeta>() == 32);

/// Scale of `OriginMeta::weight` and `RingMeta::weights`: 1.0 = 10000.
pub const WEIGHT_SCALE: f64 = 10000.0;

/// Value of `RING_META`, indexed by ring id: how a ring picks an origin for a new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingMeta {
    /// `RING_STEER_*`, host order.
    pub steering: u32,
    /// Used entries of `ids`/`weights` (`least_connections` rings only), host order.
    pub count: u32,
    /// First slot of the ring in `RINGS`, host order.
    pub base: u32,
    /// Slots of the ring (one of `RING_SIZES`; 0 = no ring yet), host order.
    pub size: u32,
    /// Origin ids with weight > 0, host order.
    pub ids: [u32; MAX_LC_MEMBERS],
    /// Their weights in 1/10000, host order.
    pub weights: [u32; MAX_LC_MEMBERS],
}
const _: () = assert!(core::mem::size_of::<RingMeta>() == 272);

impl Default for RingMeta {
    fn default() -> Self {
        Self {
            steering: RING_STEER_RANDOM,
            count: 0,
            base: 0,
            size: 0,
            ids: [0; MAX_LC_MEMBERS],
            weights: [0; MAX_LC_MEMBERS],
        }
    }
}

/// `RingMeta::steering`: Maglev slot by 5-tuple hash (Cloudflare's weighted `random`).
pub const RING_STEER_RANDOM: u32 = 0;
/// `RingMeta::steering`: Maglev slot by client-address hash (`hash`).
pub const RING_STEER_HASH: u32 = 1;
/// `RingMeta::steering`: the member with the fewest open flows per weight
/// (`least_connections`); ties go to the member the 5-tuple hash names first.
pub const RING_STEER_LEAST_CONN: u32 = 2;

/// Key of `AFFINITY`: a VIP and a client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Host order.
    pub vip_id: u32,
    /// Client address (IPv4-mapped), NBO.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 20);

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// Origin id the client's last new connection went to, host order.
    pub origin_id: u32,
    /// When, in coarse CLOCK_MONOTONIC seconds, host order.
    pub last_used: u32,
}
const _: () = assert!(core::mem::size_of::<Affinity>() == 8);

/// `OriginMeta::flags`: the slot is in use.
pub const ORIGIN_F_PRESENT: u32 = 1;

/// Key of `FLOWS` and `REV_FLOWS`: a TCP 5-tuple exactly as it appears in a packet.
/// In `FLOWS` it is client -> VIP; in `REV_FLOWS` it is origin -> SNAT address, i.e. the
/// tuple of a reply, so the reply path builds the key straight from the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, NBO.
    pub src: [u8; 16],
    /// Destination address, NBO.
    pub dst: [u8; 16],
    /// Source port, NBO.
    pub sport: u16,
    /// Destination port, NBO.
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of an IPv4 TCP tuple; ports in host order (stored NBO).
    pub const fn tcp_v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            src: v4_mapped(src),
            dst: v4_mapped(dst),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        }
    }
}

/// Value of `FLOWS`: where an established client flow goes and how it is rewritten.
/// The origin address is copied here (not only its id) so that a flow keeps its origin even
/// after the agent removes or re-numbers that origin: draining never breaks a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Origin address, NBO.
    pub origin_addr: [u8; 16],
    /// LB address used as source towards the origin, NBO.
    pub snat_addr: [u8; 16],
    /// Origin port, NBO.
    pub origin_port: u16,
    /// SNAT source port, NBO.
    pub snat_port: u16,
    /// Origin id at the time the flow was created (for counters), host order.
    pub origin_id: u32,
    /// VIP id (for counters), host order.
    pub vip_id: u32,
    /// `FLOW_F_*` bits, host order. Written by the slow path only.
    pub flags: u32,
    /// Coarse second at which the slow path last checked the flow against its `REV_FLOWS`
    /// half and refreshed the copies below, host order. The client's plain segments take
    /// the fast path (no `REV_FLOWS` lookup) only within that second.
    pub synced: u32,
    /// One past the highest sequence number seen from the client, host order: while
    /// `FLOW_F_FAST` is set, the fast path advances it here and the slow path moves it into
    /// `RevFlow::client_end` at the next sync.
    pub client_end: u32,
    /// `RevFlow::origin_win` at the sync (the window the client's segments must fall in),
    /// host order. It only grows there, so the copy is never wider than the truth.
    pub peer_win: u32,
    /// `RevFlow::client_win` at the sync, host order: a segment that advertises more takes
    /// the slow path, which records it.
    pub client_win: u32,
    /// Added to the client's acknowledgement numbers (`RevFlow::seq_delta` of a SYN-cookie
    /// flow; 0 for every other flow), host order.
    pub ack_shift: u32,
    /// `RevFlow::client_wscale` and `origin_wscale` at the sync.
    pub client_wscale: u8,
    pub origin_wscale: u8,
    /// 1: a UDP flow (its keys carry `IPPROTO_UDP`); 0: TCP (also every entry written
    /// before this field existed, so pinned flows of an older agent stay TCP).
    pub udp: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 72);

impl Flow {
    /// The `REV_FLOWS` key of this flow: the tuple its replies carry (origin -> SNAT).
    #[inline(always)]
    pub const fn rev_key(&self) -> FlowKey {
        FlowKey {
            src: self.origin_addr,
            dst: self.snat_addr,
            sport: self.origin_port,
            dport: self.snat_port,
            proto: self.proto(),
            _pad: [0; 3],
        }
    }

    /// The flow's IP protocol (`udp` says which). Without a branch: every branch is more
    /// paths for the verifier to walk in each caller.
    #[inline(always)]
    pub const fn proto(&self) -> u8 {
        IPPROTO_TCP + (IPPROTO_UDP - IPPROTO_TCP) * (self.udp & 1)
    }
}

/// `Flow::flags`: the flow was established and open (no FIN, RST or stale answer, not a
/// cookie flow waiting for its origin) at the last sync, so the client's segments without
/// SYN, FIN or RST may take the fast path in the second `Flow::synced`.
pub const FLOW_F_FAST: u32 = 1;

/// A flow direction's next hop, as the last `bpf_fib_lookup` for it found it: kept in the
/// flow entry so that a flow's packets skip the FIB lookup (about 150 ns each) while the
/// entry is fresh. Fresh means: filled under the current `Settings::nh_gen` (the agent bumps
/// it when the kernel's links, routes or neighbours change) and within `NH_MAX_AGE` seconds,
/// and the packet is no longer than one the lookup already passed (`ok_len`: the lookup is
/// also the MTU check). Anything else takes the FIB lookup and refills the entry, so
/// correctness never depends on the cache. Written by the data path only; all zero = empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface, host order; 0 = empty.
    pub ifindex: u32,
    /// Coarse monotonic second of the fill, host order.
    pub filled: u32,
    /// `Settings::nh_gen` at the fill, host order.
    pub gen: u32,
    /// Largest IPv4 total length the lookup passed for this egress (its MTU check), host
    /// order.
    pub ok_len: u16,
    pub _pad: u16,
    /// Source MAC (the egress interface's).
    pub smac: [u8; 6],
    /// Destination MAC (the next hop's).
    pub dmac: [u8; 6],
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 32);

/// Value of `ORIGIN_NH` (array, by origin id): the next hop towards an origin, shared by
/// every flow to it (their packets differ only in ports: the same source, the SNAT
/// address, and the same destination), so a new flow's first packet already skips the FIB.
/// `addr` is the destination the entry was filled for: a flow whose origin id now names
/// another origin (the agent reassigned it) does not match and looks up its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginNextHop {
    /// Destination address (IPv4-mapped), NBO.
    pub addr: [u8; 16],
    pub nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<OriginNextHop>() == 48);

/// A cached next hop older than this many whole seconds is looked up again, even without a
/// generation bump: the bound on staleness if a change notification is missed.
pub const NH_MAX_AGE: u32 = 1;

/// Value of `REV_FLOWS`: the connection-tracking entry of a flow. It owns the flow's SNAT
/// port (the key), says how a reply is rewritten back to the client, and holds the TCP state
/// both directions update: state bits, last activity and each side's sequence window.
/// Its client tuple is the back-reference to the `FLOWS` entry; the data path checks it
/// before it rewrites, marks or frees anything (a half pair is never trusted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevFlow {
    /// Client address, NBO.
    pub client_addr: [u8; 16],
    /// VIP address, NBO.
    pub vip_addr: [u8; 16],
    /// Client port, NBO.
    pub client_port: u16,
    /// VIP port, NBO.
    pub vip_port: u16,
    /// Host order.
    pub vip_id: u32,
    /// Host order.
    pub origin_id: u32,
    /// When either side last sent a packet that belongs to the flow, in whole seconds of
    /// CLOCK_MONOTONIC (coarse), host order. Written only when the second changes.
    pub last_seen: u32,
    /// `CT_*` state bits, host order. Bits are only ever added (atomic OR), except when a SYN
    /// replaces the whole entry.
    pub flags: u32,
    pub _pad: u32,
    /// One past the highest sequence number seen from the client (SYN and FIN count one),
    /// host order. Advanced only by in-window packets.
    pub client_end: u32,
    /// The same for the origin (in the origin's sequence space), host order.
    pub origin_end: u32,
    /// Largest receive window the client advertised, in bytes (scaled), host order.
    pub client_win: u32,
    /// Largest receive window the origin advertised, in bytes (scaled), host order.
    pub origin_win: u32,
    /// SYN-cookie flows (`CT_COOKIE`): origin ISN minus the cookie ISN the client got, host
    /// order. Added to the client's acknowledgement numbers, subtracted from the origin's
    /// sequence numbers.
    pub seq_delta: u32,
    /// Window scale the client offered in its SYN (`WSCALE_NONE` = none), host order.
    pub client_wscale: u8,
    /// Window scale the origin offered in its SYN-ACK (`WSCALE_NONE` = none).
    pub origin_wscale: u8,
    pub _pad2: [u8; 2],
    /// Interface the client's SYN arrived on, host order: FINs and RSTs from the client
    /// side are honoured only from there.
    pub client_if: u32,
    /// Interface the origin's SYN-ACK arrived on (0 until then), host order.
    pub origin_if: u32,
    /// Next hop towards the client (replies).
    pub nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<RevFlow>() == 120);
// The data path sets state bits with a 64-bit atomic on `flags` and `_pad` together.
const _: () = assert!(core::mem::offset_of!(RevFlow, flags) % 8 == 0);
const _: () =
    assert!(core::mem::offset_of!(RevFlow, _pad) == core::mem::offset_of!(RevFlow, flags) + 4);

/// `RevFlow::flags`: the flow has left `ORIGIN_FLOWS` (closed, or replaced). Set once, by
/// whichever CPU saw the closing packet first.
pub const REV_F_CLOSING: u32 = 1;
/// `RevFlow::flags`: the origin answered the client's SYN with a SYN-ACK that acknowledges it.
pub const CT_SYNACK: u32 = 2;
/// `RevFlow::flags`: the client acknowledged the SYN-ACK; the flow is established.
pub const CT_ESTABLISHED: u32 = 4;
/// `RevFlow::flags`: an in-window FIN from the client.
pub const CT_FIN_CLIENT: u32 = 8;
/// `RevFlow::flags`: an in-window FIN from the origin.
pub const CT_FIN_ORIGIN: u32 = 16;
/// `RevFlow::flags`: an in-window RST from either side.
pub const CT_RST: u32 = 32;
/// `RevFlow::flags`: during the handshake, the origin answered for the SNAT port's previous
/// connection; `origin_end` holds that answer's ACK, the sequence number of the client's RST.
pub const CT_STALE: u32 = 128;
/// `RevFlow::flags`: opened through a SYN cookie; sequence numbers are translated by
/// `seq_delta`. Until the origin answers (`CT_SYNACK`), `seq_delta` holds the cookie.
pub const CT_COOKIE: u32 = 64;
/// `RevFlow::flags`: a UDP flow. Of the other bits only `CT_ESTABLISHED` (the origin has
/// answered), `CT_UDP_STREAM` and `REV_F_CLOSING` apply; it never closes, it expires.
pub const CT_UDP: u32 = 256;
/// `RevFlow::flags` of a UDP flow: the client sent again after the origin's answer (a
/// conversation, not a one-shot exchange), so the flow lives `udp_secs` idle; until then
/// `udp_unreplied_secs`, as Linux conntrack keeps its long UDP timeout for flows that have
/// seen traffic both ways more than once. A DNS query from a spoofed source is answered
/// once and never continued: it gives its port back after the short timeout.
pub const CT_UDP_STREAM: u32 = 512;
/// `RevFlow::client_wscale` / `origin_wscale`: no window-scale option was offered.
pub const WSCALE_NONE: u8 = 0xff;

impl RevFlow {
    /// Closed: a valid RST, or FINs from both sides.
    pub const fn closed(flags: u32) -> bool {
        flags & CT_RST != 0
            || flags & (CT_FIN_CLIENT | CT_FIN_ORIGIN) == CT_FIN_CLIENT | CT_FIN_ORIGIN
    }

    /// The idle timeout of a flow in state `flags`, in seconds.
    pub const fn timeout(flags: u32, s: &Settings) -> u32 {
        if flags & CT_UDP != 0 {
            Self::udp_timeout(flags, s)
        } else {
            Self::tcp_timeout(flags, s)
        }
    }

    /// The idle timeout of a UDP flow in state `flags`, in seconds.
    pub const fn udp_timeout(flags: u32, s: &Settings) -> u32 {
        if flags & CT_UDP_STREAM != 0 {
            s.udp_secs
        } else {
            s.udp_unreplied_secs
        }
    }

    /// The idle timeout of a TCP flow in state `flags`, in seconds.
    pub const fn tcp_timeout(flags: u32, s: &Settings) -> u32 {
        if Self::closed(flags) {
            s.reuse_closed_secs
        } else if flags & CT_ESTABLISHED == 0 {
            s.syn_secs
        } else if flags & (CT_FIN_CLIENT | CT_FIN_ORIGIN) != 0 {
            s.half_closed_secs
        } else {
            s.established_secs
        }
    }
}

/// Value of `SETTINGS[0]`: data-path settings the agent writes at start and on reload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The first source address for traffic towards origins (IPv4-mapped), NBO; with
    /// `snat_count`, the first of a run of addresses (a prefix).
    pub snat_addr: [u8; 16],
    /// First SNAT source port, host order.
    pub snat_port_min: u16,
    /// Last SNAT source port (inclusive), host order.
    pub snat_port_max: u16,
    /// `SETTINGS_F_*` bits, host order. Bit 0 set = settings valid (agent has configured us).
    pub flags: u32,
    /// A closed flow is kept this many idle seconds (retransmitted FINs and ACKs still pass),
    /// then its SNAT port may be taken by a new flow (keep it above the origins' TIME_WAIT,
    /// 60 s on Linux), host order.
    pub reuse_closed_secs: u32,
    /// An established flow idle this long is dead; its SNAT port may be taken, host order.
    pub established_secs: u32,
    /// A flow whose handshake has not completed (SYN seen, no ACK of the SYN-ACK yet) idle
    /// this long is dead, host order.
    pub syn_secs: u32,
    /// A flow with a FIN from one side only (half-closed) idle this long is dead, host order.
    pub half_closed_secs: u32,
    /// Handshakes (flows not yet established) allowed in flight, counted over the last
    /// `syn_secs`; above it new SYNs are answered with SYN cookies. 0 = always cookies.
    /// Host order.
    pub syn_budget: u32,
    /// Next-hop generation: cached next hops (`NextHop`) filled under another value are
    /// looked up again. The agent bumps it when links, routes or neighbours change. Host
    /// order.
    pub nh_gen: u32,
    /// SNAT addresses: `snat_addr` and the `snat_count - 1` addresses after it (0 counts as
    /// 1): a prefix, so a power of two (at most `MAX_SNAT_ADDRS`) and `snat_addr` its first
    /// address. A new flow takes one by its hash, so the ports of all multiply. Host order.
    pub snat_count: u32,
    /// A UDP flow with a conversation (`CT_UDP_STREAM`: the client spoke again after the
    /// origin's answer) is dead after this many idle seconds; its SNAT port may then be
    /// taken (`dataplane.udp_timeout`), host order.
    pub udp_secs: u32,
    /// Any other UDP flow (never answered, or answered once and not continued) is dead
    /// after this many idle seconds (`dataplane.udp_unreplied_timeout`), host order.
    pub udp_unreplied_secs: u32,
    /// New UDP flows still waiting for their origin's first answer, counted over the last
    /// `udp_unreplied_secs` (at most `HANDSHAKE_BUCKETS`) seconds (`UDP_PENDING`), above which a datagram that would make a
    /// new flow is dropped (`DROP_UDP_BUDGET`): UDP has no SYN cookie
    /// (`dataplane.udp_budget`). Host order.
    pub udp_budget: u32,
    /// The first IPv6 source address for traffic towards IPv6 origins, NBO; with
    /// `snat_count6`, the first of a run of addresses (a prefix, as `snat_addr`).
    pub snat_addr6: [u8; 16],
    /// IPv6 SNAT addresses: `snat_addr6` and the `snat_count6 - 1` addresses after it in its
    /// last 32 bits. 0 = none (no IPv6 origins). Host order.
    pub snat_count6: u32,
    pub _pad6: [u32; 3],
}
const _: () = assert!(core::mem::size_of::<Settings>() == 96);

/// SNAT addresses one agent may use (`Settings::snat_count`): a /24 at most.
pub const MAX_SNAT_ADDRS: u32 = 256;

impl Settings {
    /// Is `a` (IPv4-mapped) one of the SNAT addresses?
    #[inline(always)]
    pub fn is_snat_addr(&self, a: &[u8; 16]) -> bool {
        // Differences folded without a branch per byte: each branch is more paths for the
        // verifier to walk in every caller.
        let b = &self.snat_addr;
        let mut diff = 0u8;
        let mut i = 0;
        while i < 12 {
            diff |= a[i] ^ b[i];
            i += 1;
        }
        diff == 0 && self.is_snat_v4([a[12], a[13], a[14], a[15]])
    }

    /// Is IPv6 address `a` one of the IPv6 SNAT addresses (`snat_addr6`, `snat_count6`)?
    #[inline(always)]
    pub fn is_snat_v6(&self, a: &[u8; 16]) -> bool {
        let b = &self.snat_addr6;
        let mut diff = 0u8;
        let mut i = 0;
        while i < 12 {
            diff |= a[i] ^ b[i];
            i += 1;
        }
        let off = u32::from_be_bytes([a[12], a[13], a[14], a[15]])
            .wrapping_sub(u32::from_be_bytes([b[12], b[13], b[14], b[15]]));
        diff == 0 && off < self.snat_count6
    }

    /// Is IPv4 address `a` one of the SNAT addresses (which are IPv4)?
    #[inline(always)]
    pub fn is_snat_v4(&self, a: [u8; 4]) -> bool {
        let b = &self.snat_addr;
        let off =
            u32::from_be_bytes(a).wrapping_sub(u32::from_be_bytes([b[12], b[13], b[14], b[15]]));
        off < self.snat_count.max(1)
    }
}

pub const SETTINGS_F_READY: u32 = 1;
/// `Settings::flags`: answer ICMP echo requests to a VIP address (`[dataplane] answer_ping`);
/// clear: they are dropped (`DROP_PING`).
pub const SETTINGS_F_ANSWER_PING: u32 = 2;
/// `Settings::flags`: pass traffic that is neither ours nor the host's to the stack, which
/// routes it (`[dataplane] route_other`); clear: the data path drops it (`DROP_TRANSIT`).
pub const SETTINGS_F_ROUTE_OTHER: u32 = 4;

/// Per-CPU counters of one VIP or one origin (`VIP_STATS`, `ORIGIN_STATS`). All host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client -> origin packets forwarded.
    pub packets: u64,
    /// Client -> origin bytes forwarded (frame length as received).
    pub bytes: u64,
    /// Flows created (flow-table inserts).
    pub new_flows: u64,
    /// Origin -> client packets reverse-NATed.
    pub reply_packets: u64,
    /// Origin -> client bytes reverse-NATed.
    pub reply_bytes: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 48);

/// Indices of the per-CPU `EVENTS` array: one u64 count per verdict reason.
/// Each odd case the data path meets has its own counter, and its verdict is documented
/// here (and in ARCHITECTURE.md).
pub mod event {
    /// Neither IPv4 nor IPv6 (ARP, VLAN-tagged, LLDP ...), or IPv6 while no agent has filled
    /// the IPv6 program's slot: XDP_PASS. (The name is kept for dashboards.)
    pub const PASS_NOT_IPV4: u32 = 0;
    /// IPv4 but not TCP (UDP, ICMP ...), not addressed to a VIP address and not an ICMP
    /// error about one of our flows, for the host itself (or routed, see `DROP_TRANSIT`):
    /// XDP_PASS.
    pub const PASS_NOT_TCP: u32 = 1;
    /// TCP neither to a VIP nor a reply to one of our SNAT flows, for the host itself (or
    /// routed, see `DROP_TRANSIT`): XDP_PASS.
    pub const PASS_NOT_VIP: u32 = 2;
    /// Frame too short for an Ethernet or IPv4 header, or IPv4 header invalid
    /// (IHL < 5, version != 4): XDP_PASS, the stack counts and drops it as it would anyway.
    pub const PASS_MALFORMED: u32 = 3;
    /// To a VIP but the TCP header is truncated or its data offset is < 5: XDP_DROP.
    pub const DROP_MALFORMED_TCP: u32 = 4;
    /// To a VIP with IPv4 options: XDP_DROP (we never need them, and they are an attack surface).
    pub const DROP_IP_OPTIONS: u32 = 5;
    /// To a VIP and fragmented (MF set or offset != 0): XDP_DROP; non-first fragments carry
    /// no ports, so they cannot be steered consistently.
    pub const DROP_FRAGMENT: u32 = 6;
    /// New flow but the VIP's ring slot holds no origin (pool empty or all drained): XDP_DROP.
    pub const DROP_NO_ORIGIN: u32 = 7;
    /// Flow-table insert failed: XDP_DROP.
    pub const DROP_FLOW_INSERT: u32 = 8;
    /// Every SNAT port probed for this flow was taken: XDP_DROP.
    pub const DROP_SNAT_EXHAUSTED: u32 = 9;
    /// TTL would reach 0: XDP_DROP.
    pub const DROP_TTL: u32 = 10;
    /// The FIB has no route to the rewritten destination (unreachable, blackhole ...): XDP_DROP.
    pub const DROP_NO_ROUTE: u32 = 11;
    /// The FIB knows the route but not the neighbour's MAC yet: the rewritten packet is
    /// handed to the stack (XDP_PASS), which resolves ARP and forwards it (needs forwarding on).
    pub const PASS_NO_NEIGH: u32 = 12;
    /// Forwarded out of the ingress interface: XDP_TX.
    pub const FWD_TX: u32 = 13;
    /// Forwarded to another interface through `TX_PORTS`: XDP_REDIRECT.
    pub const FWD_REDIRECT: u32 = 14;
    /// Egress interface is not in `TX_PORTS` (the agent did not attach to it): XDP_DROP.
    pub const DROP_NO_TX_PORT: u32 = 15;
    /// Agent has not written `SETTINGS` yet: XDP_PASS (we do nothing before we are configured).
    pub const PASS_NOT_READY: u32 = 16;
    /// A new flow took over the SNAT port of a closed or abandoned one.
    pub const SNAT_RECYCLED: u32 = 20;
    /// A client packet matched an existing flow.
    pub const FLOW_HIT: u32 = 17;
    /// A reply matched `REV_FLOWS` and was rewritten back to the client.
    pub const REPLY_NAT: u32 = 18;
    /// The FIB refuses to forward because IPv4 forwarding is off on the ingress interface
    /// (`net.ipv4.conf.<if>.forwarding = 0`): XDP_DROP. The agent checks this at start.
    pub const DROP_FWD_DISABLED: u32 = 19;
    /// A SYN for a 5-tuple the flow table knows whose flow is closed, expired, or a
    /// handshake to an origin that has since left the ring: the old pair is removed and the
    /// SYN makes a new flow by the ring, counted like any new flow.
    pub const SYN_REHASHED: u32 = 21;
    /// Every probed SNAT port was held, none past its grace period: the port of the oldest
    /// closed flow among them was taken (Linux origins accept a SYN on a TIME_WAIT tuple when
    /// its timestamp is newer, RFC 6191). Open flows are never taken.
    pub const SNAT_REUSED_EARLY: u32 = 22;
    /// A new flow of a geo VIP found its client's prefix in `GEO`.
    pub const GEO_MATCH: u32 = 23;
    /// A new flow went to the origin its client's affinity entry names.
    pub const AFFINITY_HIT: u32 = 24;
    /// A packet to a VIP that is not a SYN and matches no flow (an ACK, FIN, RST or data
    /// segment of a connection we do not know, or a forged one): XDP_DROP. No state is made.
    pub const DROP_NO_FLOW: u32 = 25;
    /// TCP flags no valid segment carries (no ACK outside SYN and RST; SYN with FIN or RST;
    /// none at all): XDP_DROP.
    pub const DROP_BAD_FLAGS: u32 = 26;
    /// A RST outside the flow's sequence window, or from an interface that side of the flow
    /// does not use: XDP_DROP, the flow is unchanged (RFC 5961 §3).
    pub const DROP_RST_INVALID: u32 = 27;
    /// A FIN outside the flow's sequence window, or from the wrong interface: XDP_DROP.
    pub const DROP_FIN_INVALID: u32 = 28;
    /// A SYN on an established, open flow: forwarded to its origin, which answers with a
    /// challenge ACK (RFC 5961 §4); the flow is unchanged.
    pub const SYN_ON_ESTABLISHED: u32 = 29;
    /// A reply found its `FLOWS` half missing; it was restored from the `REV_FLOWS` entry.
    pub const PAIR_RESTORED: u32 = 30;
    /// A flow half whose other half names a different flow: the stale half is removed and
    /// the packet dropped (XDP_DROP); never rewritten with another client's state.
    pub const DROP_PAIR_BROKEN: u32 = 31;
    /// A packet of a flow idle past its state's timeout: both halves are removed, XDP_DROP
    /// (a SYN instead starts a new flow).
    pub const DROP_EXPIRED: u32 = 32;
    /// A SYN from the origin side that does not acknowledge the client's SYN, or arrives
    /// after the handshake: XDP_DROP.
    pub const DROP_SYNACK_INVALID: u32 = 33;
    /// An origin segment during the handshake that acknowledges something other than the
    /// client's SYN (the origin still holds the SNAT port's previous connection, in
    /// TIME_WAIT or half-open, and answered for that one): answered with a RST to the origin
    /// (redirected back out of the ingress), as the client's TCP would (RFC 793 §3.4), so the client's next SYN
    /// retransmission gets through.
    pub const RST_TO_ORIGIN: u32 = 34;
    /// A SYN with no flow while more handshakes are in flight than `Settings::syn_budget`:
    /// answered with a SYN cookie (a SYN-ACK redirected back out of the ingress interface);
    /// nothing is stored.
    pub const SYN_COOKIE_SENT: u32 = 35;
    /// An ACK with no flow carried a valid SYN cookie: a flow was made and the ACK became
    /// the SYN to the origin (counted with its forwarding verdict).
    pub const SYN_COOKIE_OK: u32 = 36;
    /// An ACK with no flow while cookies are in use, whose cookie is not valid: XDP_DROP.
    pub const DROP_COOKIE_INVALID: u32 = 37;
    /// The origin's SYN-ACK of a cookie flow, turned into the ACK that completes the origin
    /// side's handshake, redirected back out of the ingress interface.
    pub const COOKIE_ORIGIN_ACK: u32 = 38;
    /// A client segment of a cookie flow that arrived before the origin answered: it
    /// becomes the SYN to the origin again (the first may have been lost; the client
    /// retransmits its data), counted with its forwarding verdict.
    pub const COOKIE_SYN_RESENT: u32 = 39;
    /// The origin refused a cookie flow's SYN with a RST: the client gets a RST in its own
    /// sequence space (forwarded).
    pub const COOKIE_REFUSED: u32 = 40;
    /// An ICMP error (unreachable, fragmentation needed, time exceeded) to the SNAT address
    /// quoting one of our origin-bound packets (`REV_FLOWS` hit): translated to VIP -> client,
    /// inner packet client -> VIP, and forwarded (the forwarding outcome is counted too).
    pub const ICMP_FROM_ORIGIN: u32 = 41;
    /// An ICMP error to a VIP address quoting one of our client-bound packets (`FLOWS` hit):
    /// translated to SNAT address -> origin, inner packet origin -> SNAT, and forwarded.
    pub const ICMP_FROM_CLIENT: u32 = 42;
    /// An ICMP error to a VIP address about a flow we do not know: XDP_DROP. (To any other
    /// address, such errors are the host's: XDP_PASS, `PASS_NOT_TCP`.)
    pub const DROP_ICMP_UNKNOWN_FLOW: u32 = 43;
    /// An ICMP error to a VIP address whose quoted packet is truncated, carries IPv4 options
    /// or is not TCP: XDP_DROP.
    pub const DROP_ICMP_MALFORMED: u32 = 44;
    /// A rewritten TCP packet with DF set is larger than the egress MTU: answered with ICMP
    /// "fragmentation needed" (type 3 code 4, next-hop MTU) built from the original headers,
    /// back to its sender from the address it was sent to: XDP_TX.
    pub const ICMP_FRAG_NEEDED_SENT: u32 = 45;
    /// A rewritten TCP packet without DF is larger than the egress MTU: handed to the stack,
    /// which fragments and forwards it (XDP_PASS; needs forwarding on, and a SNAT address
    /// that is the host's own is dropped there as a martian, as for `PASS_NO_NEIGH`).
    pub const PASS_TOO_BIG_NO_DF: u32 = 46;
    /// A translated ICMP error is larger than the egress MTU: XDP_DROP (no ICMP about ICMP
    /// errors, RFC 1122 §3.2.2).
    pub const DROP_TOO_BIG: u32 = 47;
    /// An ICMP echo request to a VIP address answered in place: XDP_TX.
    pub const ICMP_ECHO_REPLY: u32 = 48;
    /// An ICMP echo request to a VIP address with `answer_ping = false`: XDP_DROP.
    pub const DROP_PING: u32 = 49;
    /// Anything but TCP and the ICMP handled above to a VIP address (UDP, other ICMP types,
    /// other protocols, non-TCP fragments): XDP_DROP instead of the host's stack.
    pub const DROP_VIP_OTHER_PROTO: u32 = 50;
    /// No open router: an IPv4 unicast packet for neither a VIP, a SNAT flow nor the host
    /// itself, that the kernel would forward (`bpf_fib_lookup` says SUCCESS, NO_NEIGH or
    /// FRAG_NEEDED): XDP_DROP. With `route_other = true` it is passed instead.
    pub const DROP_TRANSIT: u32 = 51;
    /// During a handshake the origin answered for the SNAT port's previous connection
    /// (TIME_WAIT, or half-open): forwarded to the client, whose TCP resets it and retries
    /// its SYN at once (RFC 793 §3.4); counted with the forwarding verdict.
    pub const ORIGIN_STALE_ANSWER: u32 = 52;
    /// `bpf_fib_lookup` was consulted: for a frame's next hop, because its flow direction
    /// had no cached one (`NextHop`: a new flow, a frame built in place), or it was stale,
    /// or it had passed only shorter packets; or for traffic that is not ours and not to an
    /// address in `LOCAL_ADDRS` (no open router). A note, counted with the verdict; a high
    /// rate against `fwd_tx` + `fwd_redirect` means the cache is not working.
    pub const FIB_LOOKUP: u32 = 53;
    /// A client's segment of an established flow took the slow path: both halves of the
    /// pair were looked up and checked, and the flow-table half's copies refreshed
    /// (`Flow::synced`). The flow's other segments in that second take the fast path (one
    /// lookup). A note, counted with the verdict: `flow_hit` minus this is the fast path's
    /// share.
    pub const FLOW_SYNCED: u32 = 54;
    /// A UDP datagram to a VIP would have made a new flow while more new UDP flows than
    /// `dataplane.udp_budget` are waiting for their origin's first answer (a flood of
    /// spoofed sources: UDP has no cookie to tell them apart): XDP_DROP. Flows that exist
    /// are not affected.
    pub const DROP_UDP_BUDGET: u32 = 55;
    /// A UDP datagram met its flow expired (idle past `udp_timeout`, or
    /// `udp_unreplied_timeout` if the origin never answered): the flow was replaced by a new
    /// one, chosen afresh. A note, counted with the verdict.
    pub const UDP_FLOW_EXPIRED: u32 = 56;
    /// A UDP datagram to a VIP whose header is cut short, whose length field disagrees
    /// with the IPv4 length, or whose source port is 0: XDP_DROP.
    pub const DROP_MALFORMED_UDP: u32 = 57;
    /// An IPv6 packet to a VIP or SNAT address whose extension headers we do not pass: a
    /// routing header with segments left, AH or ESP (NAT would break them), more than
    /// `lb_ebpf`'s bound of headers, or one cut short: XDP_DROP.
    pub const DROP_EXT_HEADER: u32 = 58;
    /// Hop-by-hop, destination-options or spent routing headers of an IPv6 packet to a VIP
    /// or SNAT address were consumed (the load balancer is the packet's destination, as a
    /// proxy is) and removed before forwarding. A note, counted with the verdict.
    pub const EXT_HEADERS_REMOVED: u32 = 59;
    /// ICMPv6 neighbour discovery or router messages (RFC 4861: types 133-137): passed to
    /// the host's stack untouched, whatever their destination.
    pub const PASS_ND: u32 = 60;
    /// A packet of an IPv6 client's flow to an IPv4 origin (NAT64) was translated to IPv4
    /// (RFC 7915 §5), or an ICMPv6 error about such a flow to ICMPv4 (§5.2). A note,
    /// counted with the verdict.
    pub const XLAT_6TO4: u32 = 61;
    /// An IPv4 origin's packet to an IPv6 client was translated to IPv6 (RFC 7915 §4), or
    /// an ICMP error about such a flow to ICMPv6 (§4.2). A note, counted with the verdict.
    pub const XLAT_4TO6: u32 = 62;
    /// A packet of a translated (NAT64) flow that the translation does not carry: an ICMP
    /// error type with no counterpart in the other family (RFC 7915 §4.2, §5.2), an origin's
    /// reply without DF too big for the IPv6 link (it would need IPv6 fragments), a reset
    /// for a SYN-cookie client, or a translator program the agent has not loaded: XDP_DROP.
    pub const DROP_XLAT: u32 = 63;
    pub const COUNT: u32 = 64;

    /// Is `e` a verdict (each frame counts exactly one), not a note on the way?
    pub const fn is_verdict(e: u32) -> bool {
        !matches!(
            e,
            FLOW_HIT
                | REPLY_NAT
                | SNAT_RECYCLED
                | SYN_REHASHED
                | SNAT_REUSED_EARLY
                | GEO_MATCH
                | AFFINITY_HIT
                | SYN_ON_ESTABLISHED
                | PAIR_RESTORED
                | SYN_COOKIE_OK
                | COOKIE_REFUSED
                | COOKIE_SYN_RESENT
                | ICMP_FROM_ORIGIN
                | ICMP_FROM_CLIENT
                | ORIGIN_STALE_ANSWER
                | FIB_LOOKUP
                | FLOW_SYNCED
                | UDP_FLOW_EXPIRED
                | EXT_HEADERS_REMOVED
                | XLAT_6TO4
                | XLAT_4TO6
        )
    }

    /// Names in index order, for `lb-agent stats` and tests.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ipv4",
        "pass_not_tcp",
        "pass_not_vip",
        "pass_malformed",
        "drop_malformed_tcp",
        "drop_ip_options",
        "drop_fragment",
        "drop_no_origin",
        "drop_flow_insert",
        "drop_snat_exhausted",
        "drop_ttl",
        "drop_no_route",
        "pass_no_neigh",
        "fwd_tx",
        "fwd_redirect",
        "drop_no_tx_port",
        "pass_not_ready",
        "flow_hit",
        "reply_nat",
        "drop_fwd_disabled",
        "snat_recycled",
        "syn_rehashed",
        "snat_reused_early",
        "geo_match",
        "affinity_hit",
        "drop_no_flow",
        "drop_bad_flags",
        "drop_rst_invalid",
        "drop_fin_invalid",
        "syn_on_established",
        "pair_restored",
        "drop_pair_broken",
        "drop_expired",
        "drop_synack_invalid",
        "rst_to_origin",
        "syn_cookie_sent",
        "syn_cookie_ok",
        "drop_cookie_invalid",
        "cookie_origin_ack",
        "cookie_syn_resent",
        "cookie_refused",
        "icmp_from_origin",
        "icmp_from_client",
        "drop_icmp_unknown_flow",
        "drop_icmp_malformed",
        "icmp_frag_needed_sent",
        "pass_too_big_no_df",
        "drop_too_big",
        "icmp_echo_reply",
        "drop_ping",
        "drop_vip_other_proto",
        "drop_transit",
        "origin_stale_answer",
        "fib_lookup",
        "flow_synced",
        "drop_udp_budget",
        "udp_flow_expired",
        "drop_malformed_udp",
        "drop_ext_header",
        "ext_headers_removed",
        "pass_nd",
        "xlat_6to4",
        "xlat_4to6",
        "drop_xlat",
    ];
}

/// Key of `GEO` (LPM trie): a client prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GeoKey {
    /// Leading bits of `addr` that count, host order; an IPv4 /n is 96 + n (IPv4-mapped).
    pub prefixlen: u32,
    /// Prefix, IPv4-mapped or IPv6, NBO; bits past `prefixlen` are zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<GeoKey>() == 20);

/// Value of `GEO`: where clients of a prefix are, as Cloudflare's geo steering sees them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GeoValue {
    /// `region << 16 | country[0] << 8 | country[1]`, host order: the second half of a
    /// `GEO_PLAN` key. Derived from the two fields below, so it needs no allocation and is
    /// the same in every agent.
    pub geo_id: u32,
    /// ISO 3166-1 alpha-2 country code in ASCII, or zeros when only the region is known.
    pub country: [u8; 2],
    /// Cloudflare region, 1..=13 in the order of `lb_agent::geo::Region` (0 = unknown).
    pub region: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<GeoValue>() == 8);

impl GeoValue {
    pub const fn new(country: [u8; 2], region: u8) -> Self {
        Self {
            geo_id: (region as u32) << 16 | (country[0] as u32) << 8 | country[1] as u32,
            country,
            region,
            _pad: 0,
        }
    }
}

/// Key of `GEO_PLAN`: a geo VIP and a client location (`GeoValue::geo_id`); the value is the
/// ring new flows of those clients use. Absent = the VIP's own ring (`VipMeta::ring_id`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GeoPlanKey {
    /// Host order.
    pub vip_id: u32,
    /// Host order.
    pub geo_id: u32,
}
const _: () = assert!(core::mem::size_of::<GeoPlanKey>() == 8);

/// Stores an IPv4 address as an IPv4-mapped IPv6 address.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// The 16-byte map form of an address: IPv4 IPv4-mapped (`v4_mapped`), IPv6 as is. For the
/// agent and tools (the data path works on bytes).
pub const fn addr16(ip: core::net::IpAddr) -> [u8; 16] {
    match ip {
        core::net::IpAddr::V4(a) => v4_mapped(a.octets()),
        core::net::IpAddr::V6(a) => a.octets(),
    }
}

/// The address a 16-byte map field holds: IPv4 when it is IPv4-mapped, else IPv6. The
/// inverse of `addr16`.
pub const fn ip_of(addr: &[u8; 16]) -> core::net::IpAddr {
    if is_v4_mapped(addr) {
        core::net::IpAddr::V4(core::net::Ipv4Addr::new(
            addr[12], addr[13], addr[14], addr[15],
        ))
    } else {
        core::net::IpAddr::V6(core::net::Ipv6Addr::from_octets(*addr))
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        Affinity, AffinityKey, Counters, Flow, FlowKey, GeoKey, GeoPlanKey, GeoValue, Handshakes,
        NextHop, OriginMeta, OriginNextHop, RevFlow, RingMeta, Settings, VipById, VipKey, VipMeta,
    };
    // SAFETY: all are repr(C), made only of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for VipById {}
    unsafe impl aya::Pod for OriginMeta {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for RevFlow {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for RingMeta {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for GeoKey {}
    unsafe impl aya::Pod for GeoValue {}
    unsafe impl aya::Pod for GeoPlanKey {}
    unsafe impl aya::Pod for Handshakes {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for OriginNextHop {}
}

#[cfg(test)]
mod tests {
    use super::{
        Flow, RevFlow, Settings, CT_ESTABLISHED, CT_FIN_CLIENT, CT_UDP, CT_UDP_STREAM, IPPROTO_TCP,
        IPPROTO_UDP,
    };

    #[test]
    fn addresses_round_trip_through_their_map_form() {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(super::addr16(v4), super::v4_mapped([192, 0, 2, 7]));
        assert_eq!(super::ip_of(&super::addr16(v4)), v4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert!(!super::is_v4_mapped(&super::addr16(v6)));
        assert_eq!(super::ip_of(&super::addr16(v6)), v6);
    }

    #[test]
    fn ipv6_snat_addresses_are_a_run_in_the_last_32_bits() {
        let mut s = Settings::default();
        let first = [0x20, 1, 0xd, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        s.snat_addr6 = first;
        assert!(!s.is_snat_v6(&first), "snat_count6 0 = none");
        s.snat_count6 = 4;
        let mut a = first;
        a[15] = 0x13;
        assert!(s.is_snat_v6(&first) && s.is_snat_v6(&a));
        a[15] = 0x14;
        assert!(!s.is_snat_v6(&a));
        a[15] = 0x10;
        a[3] = 0xb9;
        assert!(!s.is_snat_v6(&a));
    }

    #[test]
    fn a_flow_half_knows_its_protocol_and_its_reverse_key_carries_it() {
        let tcp = Flow::default();
        let udp = Flow { udp: 1, ..tcp };
        assert_eq!((tcp.proto(), udp.proto()), (IPPROTO_TCP, IPPROTO_UDP));
        assert_eq!(udp.rev_key().proto, IPPROTO_UDP);
        assert_eq!(tcp.rev_key().proto, IPPROTO_TCP);
    }

    #[test]
    fn udp_flows_take_the_long_timeout_only_as_conversations() {
        let s = Settings {
            udp_secs: 120,
            udp_unreplied_secs: 30,
            established_secs: 86_400,
            half_closed_secs: 300,
            ..Settings::default()
        };
        assert_eq!(RevFlow::timeout(CT_UDP, &s), 30, "never answered");
        assert_eq!(
            RevFlow::timeout(CT_UDP | CT_ESTABLISHED, &s),
            30,
            "answered once"
        );
        assert_eq!(
            RevFlow::timeout(CT_UDP | CT_ESTABLISHED | CT_UDP_STREAM, &s),
            120,
            "a conversation"
        );
        assert_eq!(RevFlow::timeout(CT_ESTABLISHED, &s), 86_400, "TCP");
        assert_eq!(RevFlow::timeout(CT_ESTABLISHED | CT_FIN_CLIENT, &s), 300);
    }
}

//! The maps of the data path. BTF-defined, so `bpftool map dump` prints typed keys and
//! values; the agent pins each under its pin directory by name (see `lb_common::map_names`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::{
        lpm_trie::Key, Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray,
    },
    macros::btf_map,
};
use lb_common::{
    event, Affinity, AffinityKey, Counters, Flow, FlowKey, GeoPlanKey, GeoValue, Handshakes,
    OriginMeta, OriginNextHop, RevFlow, RingMeta, Settings, VipById, VipKey, VipMeta,
    AFFINITY_SIZE, DEFAULT_FLOW_TABLE_SIZE, GEO_MAX_PREFIXES, GEO_PLAN_SIZE, MAX_INTERFACES,
    MAX_LOCAL_ADDRS, MAX_ORIGINS, MAX_RINGS, MAX_VIPS, POOL_SEL_M, RING_SLOTS, TAIL_SLOTS,
};

/// `[0]`: SNAT address and port range; the data path passes everything until it is set.
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

/// VIP (address, port, TCP) -> ring and id. The agent also writes one entry with port 0 per
/// VIP address, so that packets we cannot read a port from (fragments, options, truncated
/// TCP) can still be recognised as addressed to a VIP. Twice MAX_VIPS for those markers.
#[btf_map]
pub static VIPS: HashMap<VipKey, VipMeta, { 2 * MAX_VIPS as usize }> = HashMap::new();

/// VIP id -> its `VIPS` entry (`lb_common::VipById`), written with it by the agent: how an
/// established flow's packet finds its VIP without a second hash lookup.
#[btf_map]
pub static VIP_IDS: Array<VipById, { MAX_VIPS as usize }> = Array::new();

/// The slots of every Maglev ring (`RING_META` says where each ring's are); a slot holds an
/// origin id or NO_ORIGIN.
/// Mmapable: the agent writes changed slots with plain stores into a shared mapping instead
/// of one bpf() syscall per slot.
#[btf_map]
pub static RINGS: Array<u32, { RING_SLOTS as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Origin id -> address and port.
#[btf_map]
pub static ORIGINS: Array<OriginMeta, { MAX_ORIGINS as usize }> = Array::new();

/// Ring id -> how the ring picks an origin (5-tuple, client address, least connections).
#[btf_map]
pub static RING_META: Array<RingMeta, { MAX_RINGS as usize }> = Array::new();

/// `random` steering: per VIP, `POOL_SEL_M` slots of ring ids, filled by weighted Maglev over
/// the VIP's healthy pools.
#[btf_map]
pub static POOL_SEL: Array<u32, { (MAX_VIPS * POOL_SEL_M) as usize }> = Array::new();

/// Client prefix -> country and region (from config lists and a MaxMind database).
#[btf_map]
pub static GEO: LpmTrie<[u8; 16], GeoValue, { GEO_MAX_PREFIXES as usize }> = LpmTrie::new();

/// (geo VIP, client location) -> ring, where that differs from the VIP's own ring.
#[btf_map]
pub static GEO_PLAN: HashMap<GeoPlanKey, u32, { GEO_PLAN_SIZE as usize }> = HashMap::new();

/// (VIP, client address) -> the origin of the client's last new connection (session affinity).
#[btf_map]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity, { AFFINITY_SIZE as usize }> =
    LruHashMap::new();

/// Origin id -> open flows: +1 when a flow is created, -1 once when it closes (valid FIN
/// from both sides, or a valid RST) or is removed while open (expired and its SNAT port
/// taken, or replaced by a SYN). Shared by all CPUs (atomic adds), read by
/// `least_connections` and by the agent.
#[btf_map]
pub static ORIGIN_FLOWS: Array<u64, { MAX_ORIGINS as usize }> = Array::new();

/// The host's own addresses (IPv4-mapped) -> 1, kept by the agent from the kernel's
/// address list: traffic to them passes without the FIB lookup that tells transit from
/// local (no open router). A miss only means that lookup is made.
#[btf_map]
pub static LOCAL_ADDRS: HashMap<[u8; 16], u32, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

/// Origin id -> the next hop towards it, as the FIB last said (`OriginNextHop`). Shared by
/// all CPUs: written about once a second per origin, read by every packet to it.
#[btf_map]
pub static ORIGIN_NH: Array<OriginNextHop, { MAX_ORIGINS as usize }> = Array::new();

/// Client -> VIP 5-tuple -> origin and SNAT rewrite: the index half of a flow pair; its
/// state lives in the `REV_FLOWS` entry it names. A plain hash, not an LRU: the kernel
/// never evicts half a pair. Entries leave only with their pair: when a SYN replaces the
/// flow, when an expired flow's packet or SNAT port is met, or by the agent's sweep.
#[btf_map]
pub static FLOWS: HashMap<FlowKey, Flow, { DEFAULT_FLOW_TABLE_SIZE as usize }> = HashMap::new();

/// Origin -> SNAT 5-tuple (as a reply carries it) -> the flow's tracking entry: client and
/// VIP to rewrite back to, TCP state, sequence windows. Doubles as the SNAT port allocator:
/// a port is taken while its entry exists and has not expired. A plain hash, as `FLOWS`.
#[btf_map]
pub static REV_FLOWS: HashMap<FlowKey, RevFlow, { DEFAULT_FLOW_TABLE_SIZE as usize }> =
    HashMap::new();

/// `[0]`: handshakes started and finished per second, shared by all CPUs; decides when
/// SYNs are answered with cookies.
#[btf_map]
pub static HANDSHAKES: Array<Handshakes, 1> = Array::new();

/// Programs `lb_xdp` tail-calls, by `lb_common::TAIL_*` slot; filled by the agent.
#[btf_map]
pub static TAILS: ProgramArray<{ TAIL_SLOTS as usize }> = ProgramArray::new();

/// `[0]`: new UDP flows started per second, and those whose origin answered (`done`),
/// shared by all CPUs; above `Settings::udp_budget` waiting, no new UDP flow is made.
/// (`last_cookie` is unused.)
#[btf_map]
pub static UDP_PENDING: Array<Handshakes, 1> = Array::new();

/// Interfaces we may redirect to, keyed by ifindex.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_INTERFACES as usize }> = DevMapHash::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<Counters, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
pub static ORIGIN_STATS: PerCpuArray<Counters, { MAX_ORIGINS as usize }> = PerCpuArray::new();

/// Working space for building a new flow: BPF stacks are 512 bytes for a whole call chain,
/// too small to hold these next to the hot path's own locals. One entry per CPU.
#[repr(C)]
pub struct Scratch {
    /// The TCP fields of the frame being handled.
    pub seg: crate::parse::Seg,
    /// Copies of a SYN's IP and TCP headers (with options) for the cookie helper, which
    /// wants the TCP header's whole length readable.
    pub ck_ip: [u8; 40],
    pub ck_th: [u8; 60],
    /// How the flow `snat::new_flow` is about to make starts.
    pub init: crate::snat::CtInit,
    /// A segment `reply::write_segment` is about to write over the frame.
    pub out: crate::reply::Segment,
    pub rev: RevFlow,
    /// Client key of a flow being checked or restored from its reverse half.
    pub ckey: FlowKey,
    pub rkey: FlowKey,
    pub flow: Flow,
    pub old_flow: FlowKey,
    /// Reverse key of a flow a SYN replaces (its SNAT port is released).
    pub old_rkey: FlowKey,
    pub geo_key: Key<[u8; 16]>,
    pub plan_key: GeoPlanKey,
    pub aff_key: AffinityKey,
    pub aff: Affinity,
    /// The TCP segment's flow key (`tcp_packet`).
    pub tkey: FlowKey,
    /// The UDP datagram's flow key, and the reverse key of its flow (`udp`).
    pub ukey: FlowKey,
    pub urkey: FlowKey,
    /// For the translators (`xlat`), across the tail call: the origin whose `ORIGIN_NH`
    /// entry caches the next hop of a packet to translate to IPv4 (`u32::MAX`: none).
    pub xlat_origin: u32,
    /// `xlat`: the reverse key of a reply to translate to IPv6, and the start of the frame
    /// (Ethernet, IPv4 header, 8 bytes of transport) as the origin sent it, restored to
    /// answer "fragmentation needed" when the translation is too big for the IPv6 link.
    pub xkey: FlowKey,
    pub xsave: [u16; 21],
}

#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// One counter per verdict reason, indexed by `lb_common::event::*`.
#[btf_map]
pub static EVENTS: PerCpuArray<u64, { event::COUNT as usize }> = PerCpuArray::new();

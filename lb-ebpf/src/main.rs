//! The XDP load balancer: full NAT for TCP to virtual IPs, weighted Maglev for new flows,
//! a flow table for established ones, reverse NAT for replies.
//!
//! ```text
//! frame -> eth -> IPv4 -> TCP  (anything else: edge.rs — ICMP for our flows in icmp.rs,
//!                               other traffic to VIPs dropped, transit dropped)
//!   dst is a VIP:  flow hit? -> rewrite.  miss: RINGS[ring][hash % M] -> origin, take a SNAT
//!                  port (REV_FLOWS insert, NOEXIST), insert FLOWS -> rewrite
//!   dst is our SNAT address and port range: REV_FLOWS hit -> rewrite back to client
//!   rewrite = DNAT + SNAT + TTL-1 with incremental checksums, then FIB lookup ->
//!             XDP_TX (same interface) or redirect through TX_PORTS; too big for the egress
//!             MTU: ICMP "fragmentation needed" back to the sender (icmp.rs)
//!   neither: not_ours (edge.rs): for the host, XDP_PASS; would be routed on, XDP_DROP
//! ```
//! Nothing is logged per packet: every outcome increments a per-CPU counter.
#![no_std]
#![no_main]
// Atomic add/or on map values: core's atomic types lack read-modify-write operations on the
// BPF target (no compare-and-swap in its spec), but the instructions exist (BPF_ATOMIC).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod csum;
mod edge;
mod icmp;
mod maps;

use core::{
    intrinsics::{atomic_or, atomic_xadd, AtomicOrdering},
    mem::{self, size_of},
};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_ANY, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_NOEXIST,
    },
    btf_maps::{lpm_trie::Key, PerCpuArray},
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    event,
    hash::{addr_hash, flow_hash, SEED_POOL, SEED_RING, SEED_SNAT},
    v4_mapped, Affinity, AffinityKey, Counters, Flow, FlowKey, GeoPlanKey, RevFlow, RingMeta,
    Settings, VipKey, VipMeta, IPPROTO_TCP, MAGLEV_M, MAX_LC_MEMBERS, NO_ORIGIN, NO_RING,
    ORIGIN_F_PRESENT, POOL_SEL_M, REV_F_CLOSING, RING_STEER_HASH, RING_STEER_LEAST_CONN,
    SETTINGS_F_READY, SNAT_PROBES, VIP_F_AFFINITY, VIP_F_GEO, VIP_F_RANDOM,
};
use maps::{
    Scratch, AFFINITY, EVENTS, FLOWS, GEO, GEO_PLAN, ORIGINS, ORIGIN_FLOWS, ORIGIN_STATS, POOL_SEL,
    REV_FLOWS, RINGS, RING_META, SCRATCH, SETTINGS, TX_PORTS, VIPS, VIP_STATS,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
const IP_MF: u8 = 0x20;
const IP_OFFSET_HI: u8 = 0x1f;

/// The load balancer. Verdict discipline: helpers return `Result<_, u32>` and `Err` carries an
/// early verdict, so every path ends in exactly one verdict and one counter.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let v = match try_lb(&ctx) {
        Ok(v) | Err(v) => v,
    };
    // Work requested from deep in the call chain (ICMP), run here for the stack's sake.
    edge::finish(&ctx, v)
}

/// Passes everything. Tests and the demo attach it to the far ends of veth pairs: native XDP
/// on a veth needs a program on the peer before XDP_TX/XDP_REDIRECT frames are delivered.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: a sink for packet-rate benchmarks (the origin side must not answer).
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Bounces every frame unchanged: the floor the benchmarks compare `lb_xdp` against.
#[xdp]
pub fn xdp_tx_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[inline(always)]
fn count(reason: u32) {
    if let Some(c) = EVENTS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// Counts `reason` and yields `verdict`, for `Err(...)` early exits.
#[inline(always)]
fn verdict(reason: u32, verdict: u32) -> u32 {
    count(reason);
    verdict
}

#[inline(always)]
fn pass(reason: u32) -> u32 {
    verdict(reason, xdp_action::XDP_PASS)
}

#[inline(always)]
fn drop(reason: u32) -> u32 {
    verdict(reason, xdp_action::XDP_DROP)
}

/// Coarse monotonic seconds, for flow idleness (wraps after 136 years).
#[inline(always)]
fn now_secs() -> u32 {
    // SAFETY: helper without arguments.
    #[expect(clippy::cast_possible_truncation, reason = "seconds fit in u32")]
    let s = (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32;
    s
}

/// FIN or RST: the connection is ending, its SNAT port can be recycled after a grace period.
#[inline(always)]
fn closing(tcp: *const TcpHdr) -> bool {
    // SAFETY: bounds-checked by the caller.
    unsafe { (*tcp).fin() != 0 || (*tcp).rst() != 0 }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Is `addr` (IPv4-mapped) the address of some VIP? Uses the port-0 marker entries.
#[inline(always)]
fn is_vip_addr(addr: [u8; 16]) -> bool {
    let key = VipKey {
        addr,
        port: 0,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    VIPS.get_ptr(key).is_some()
}

/// Adds one packet to the counters of VIP or origin `id`; `new_flow` also counts a flow.
#[inline(always)]
fn add<const N: usize>(
    map: &PerCpuArray<Counters, N>,
    id: u32,
    len: u64,
    reply: bool,
    new_flow: bool,
) {
    if let Some(c) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            if reply {
                (*c).reply_packets += 1;
                (*c).reply_bytes += len;
            } else {
                (*c).packets += 1;
                (*c).bytes += len;
                if new_flow {
                    (*c).new_flows += 1;
                }
            }
        }
    }
}

fn try_lb(ctx: &XdpContext) -> Result<u32, u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or_else(|| pass(event::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != ETH_P_IP.to_be() {
        return Err(pass(event::PASS_NOT_IPV4));
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or_else(|| pass(event::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, proto, frags, dst4) =
        unsafe { ((*ip).vihl, (*ip).proto, (*ip).frags, (*ip).dst_addr) };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(pass(event::PASS_MALFORMED));
    }
    if proto != IPPROTO_TCP {
        return Err(edge::not_tcp(ctx));
    }
    let settings: &Settings = match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_READY != 0 => s,
        _ => return Err(pass(event::PASS_NOT_READY)),
    };
    let dst = v4_mapped(dst4);
    if vihl & 0x0f != 5 || frags[0] & (IP_MF | IP_OFFSET_HI) != 0 || frags[1] != 0 {
        if !is_vip_addr(dst) {
            return Err(edge::not_ours(ctx, event::PASS_NOT_VIP));
        }
        return Err(drop(if vihl & 0x0f != 5 {
            event::DROP_IP_OPTIONS
        } else {
            event::DROP_FRAGMENT
        }));
    }
    let tcp: *mut TcpHdr = match ptr_at::<TcpHdr>(ctx, EthHdr::LEN + Ipv4Hdr::LEN) {
        // SAFETY: bounds checked by ptr_at.
        Some(t) if unsafe { (*t).doff() } >= 5 => t,
        _ => {
            return Err(if is_vip_addr(dst) {
                drop(event::DROP_MALFORMED_TCP)
            } else {
                pass(event::PASS_MALFORMED)
            })
        }
    };
    // SAFETY: bounds checked above.
    let (src4, sport, dport) = unsafe { ((*ip).src_addr, (*tcp).source, (*tcp).dest) };
    let key = FlowKey {
        src: v4_mapped(src4),
        dst,
        sport: u16::from_ne_bytes(sport),
        dport: u16::from_ne_bytes(dport),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;

    let vip_key = VipKey {
        addr: dst,
        port: key.dport,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: bounds-checked above.
    let ttl = unsafe { (*ip).ttl };
    // SAFETY: a map value only the agent writes; read in place (not copied) because the hot
    // path's frame shares the 512-byte stack budget with new_flow's.
    if let Some(vip) = unsafe { VIPS.get(vip_key) } {
        // Refused before a flow is created: forwarding would send it out with TTL 0.
        if ttl <= 1 {
            return Err(drop(event::DROP_TTL));
        }
        // The flow is read in place too (flow-table value, or the scratch entry new_flow
        // filled), for the same reason.
        //
        // A pure SYN is always hashed (as in Katran): it keeps its flow-table entry only if
        // the ring still names the same origin. Otherwise a client reusing the tuple of a
        // closed connection would be sent to wherever that connection went, even to an
        // origin that has since been drained or died.
        // SAFETY: bounds-checked above.
        let syn_only = unsafe { (*tcp).syn() != 0 && (*tcp).ack() == 0 };
        let existing = FLOWS.get_ptr(key);
        let keep = match existing {
            // SAFETY: map value pointer, read once.
            Some(f) if syn_only => still_chosen(&key, vip, unsafe { (*f).origin_id }),
            Some(_) => true,
            None => false,
        };
        let (flow, is_new): (*const Flow, bool) = match existing {
            Some(f) if keep => {
                count(event::FLOW_HIT);
                (f, false)
            }
            _ => {
                if existing.is_some() {
                    count(event::SYN_REHASHED);
                }
                new_flow(&key, vip, settings, existing.unwrap_or(core::ptr::null()))?;
                match SCRATCH.get_ptr(0) {
                    // SAFETY: offset computation inside the scratch entry, no read.
                    Some(sc) => (unsafe { &raw const (*sc).flow }, true),
                    None => return Err(drop(event::DROP_FLOW_INSERT)),
                }
            }
        };
        // SAFETY: a map value pointer, valid for this program run; an entry evicted under us
        // would at worst be read stale, never freed memory (BPF hash maps are RCU-protected).
        let flow = unsafe { &*flow };
        if closing(tcp) {
            let rkey = FlowKey {
                src: flow.origin_addr,
                dst: flow.snat_addr,
                sport: flow.origin_port,
                dport: flow.snat_port,
                proto: IPPROTO_TCP,
                _pad: [0; 3],
            };
            if let Some(r) = REV_FLOWS.get_ptr_mut(rkey) {
                if mark_closing(r) {
                    flows_add(flow.origin_id, DEC);
                }
            }
        }
        rewrite(
            ip,
            tcp,
            flow.snat_addr,
            flow.snat_port,
            flow.origin_addr,
            flow.origin_port,
        );
        add(&VIP_STATS, flow.vip_id, frame_len, false, is_new);
        add(&ORIGIN_STATS, flow.origin_id, frame_len, false, is_new);
        return forward(ctx, eth, ip);
    }

    // A reply from an origin to one of our SNAT ports? Only the reverse table decides: a flow
    // keeps its SNAT port when a reload narrows `snat_ports`, and its replies must still
    // come back (an earlier range check here broke them).
    if dst == settings.snat_addr {
        if let Some(rp) = REV_FLOWS.get_ptr_mut(key) {
            if ttl <= 1 {
                return Err(drop(event::DROP_TTL));
            }
            let now = now_secs();
            // SAFETY: map value pointer; we copy it out and write back a plain word.
            let rev: RevFlow = unsafe {
                if (*rp).last_seen != now {
                    (*rp).last_seen = now;
                }
                *rp
            };
            if closing(tcp) && mark_closing(rp) {
                flows_add(rev.origin_id, DEC);
            }
            rewrite(
                ip,
                tcp,
                rev.vip_addr,
                rev.vip_port,
                rev.client_addr,
                rev.client_port,
            );
            count(event::REPLY_NAT);
            add(&VIP_STATS, rev.vip_id, frame_len, true, false);
            add(&ORIGIN_STATS, rev.origin_id, frame_len, true, false);
            return forward(ctx, eth, ip);
        }
    }
    Err(edge::not_ours(ctx, event::PASS_NOT_VIP))
}

/// Picks an origin for a flow the table does not know, reserves a SNAT port for it and
/// records both directions; the new flow is left in `SCRATCH.flow`. Non-SYN packets take this
/// path too (after an LRU eviction, say): the ring and the first SNAT port probe are
/// deterministic, so they usually land where the connection already was.
///
/// Not inlined, and working in the per-CPU scratch entry: a BPF subprogram keeps its stack
/// frame apart from the hot path's, which keeps the call chain under the 512-byte limit.
#[inline(never)]
fn new_flow(
    key: &FlowKey,
    vip: &VipMeta,
    settings: &Settings,
    replaces: *const Flow,
) -> Result<(), u32> {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return Err(drop(event::DROP_FLOW_INSERT));
    };
    // A raw pointer (null = none), not an Option: BPF calls take at most five arguments.
    if !replaces.is_null() {
        let old = replaces;
        // SAFETY: sc is this CPU's scratch entry; old is a live flow-table value.
        unsafe {
            (*sc).old_rkey = FlowKey {
                src: (*old).origin_addr,
                dst: (*old).snat_addr,
                sport: (*old).origin_port,
                dport: (*old).snat_port,
                proto: IPPROTO_TCP,
                _pad: [0; 3],
            };
            if let Some(r) = REV_FLOWS.get_ptr_mut(&(*sc).old_rkey) {
                if mark_closing(r) {
                    flows_add((*r).origin_id, DEC);
                }
            }
            let _ = REV_FLOWS.remove(&(*sc).old_rkey);
        }
    }
    // SAFETY: sc points at this CPU's scratch entry; nothing else uses it while we run.
    let sc = unsafe { &mut *sc };
    let origin_id = pick(key, vip, sc);
    let origin = match ORIGINS.get(origin_id) {
        Some(o) if o.flags & ORIGIN_F_PRESENT != 0 => o,
        _ => return Err(drop(event::DROP_NO_ORIGIN)),
    };
    sc.rev = RevFlow {
        client_addr: key.src,
        vip_addr: key.dst,
        client_port: key.sport,
        vip_port: key.dport,
        vip_id: vip.vip_id,
        origin_id,
        last_seen: now_secs(),
        flags: 0,
        _pad: 0,
    };
    sc.rkey = FlowKey {
        src: origin.addr,
        dst: settings.snat_addr,
        sport: origin.port,
        dport: 0,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let range = u32::from(settings.snat_port_max - settings.snat_port_min) + 1;
    let first = flow_hash(key, SEED_SNAT);
    let mut found = false;
    // Under pressure, the oldest closed flow among the probed ports is the next best choice.
    let mut best_port: u16 = 0;
    let mut best_score: u32 = 0;
    let mut i = 0;
    while i < SNAT_PROBES {
        #[expect(clippy::cast_possible_truncation, reason = "below range <= 65536")]
        let port = settings.snat_port_min + (first.wrapping_add(i) % range) as u16;
        sc.rkey.dport = port.to_be();
        if REV_FLOWS
            .insert(&sc.rkey, &sc.rev, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            found = true;
            break;
        }
        let r = recycle(sc, settings, false);
        if r == TAKEN {
            count(event::SNAT_RECYCLED);
            found = true;
            break;
        }
        if r > best_score {
            best_score = r;
            best_port = sc.rkey.dport;
        }
        i += 1;
    }
    if !found && best_score > 0 {
        sc.rkey.dport = best_port;
        if recycle(sc, settings, true) == TAKEN {
            count(event::SNAT_REUSED_EARLY);
            found = true;
        }
    }
    if !found {
        return Err(drop(event::DROP_SNAT_EXHAUSTED));
    }
    sc.flow = Flow {
        origin_addr: origin.addr,
        snat_addr: settings.snat_addr,
        origin_port: origin.port,
        snat_port: sc.rkey.dport,
        origin_id,
        vip_id: vip.vip_id,
        _pad: 0,
    };
    if FLOWS.insert(key, &sc.flow, 0).is_err() {
        let _ = REV_FLOWS.remove(&sc.rkey);
        return Err(drop(event::DROP_FLOW_INSERT));
    }
    flows_add(origin_id, 1);
    if vip.flags & VIP_F_AFFINITY != 0 {
        sc.aff = Affinity {
            origin_id,
            last_used: sc.rev.last_seen,
        };
        let _ = AFFINITY.insert(&sc.aff_key, &sc.aff, 0);
    }
    Ok(())
}

/// -1 for `flows_add`.
const DEC: u64 = u64::MAX;

/// Adds `delta` (wrapping: `DEC` subtracts one) to origin `id`'s open-flow count.
#[inline(always)]
fn flows_add(id: u32, delta: u64) {
    if let Some(p) = ORIGIN_FLOWS.get_ptr_mut(id) {
        // SAFETY: an array value shared by all CPUs and changed only by atomic adds.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// Sets `REV_F_CLOSING`; true for the one caller that set it first (client and origin may
/// send their FINs on two CPUs at once), so each flow leaves `ORIGIN_FLOWS` once.
#[inline(always)]
fn mark_closing(r: *mut RevFlow) -> bool {
    // SAFETY: a live map value; the flags word is only changed atomically or by whole-entry
    // replacement.
    unsafe {
        if (*r).flags & REV_F_CLOSING != 0 {
            return false;
        }
        // On the 8-byte word `flags` shares with `_pad` (offset 48, 8-aligned; little-endian:
        // flags is the low half): LLVM lowers a 32-bit fetch-or to an OR without BPF_FETCH.
        let word = (&raw mut (*r).flags).cast::<u64>();
        let old =
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, u64::from(REV_F_CLOSING));
        old & u64::from(REV_F_CLOSING) == 0
    }
}

/// The ring new flows of `key` take on `vip`: the geo plan's ring for the client's location,
/// the `random` pool table's ring, or the VIP's own ring. Deterministic for a client (geo) or
/// a 5-tuple (random), so a SYN retransmission meets the same choice.
#[inline(always)]
fn select_ring(key: &FlowKey, vip: &VipMeta, sc: &mut Scratch) -> u32 {
    if vip.flags & VIP_F_GEO != 0 {
        sc.geo_key = Key::new(128, key.src);
        if let Some(g) = GEO.get(&sc.geo_key) {
            count(event::GEO_MATCH);
            sc.plan_key = GeoPlanKey {
                vip_id: vip.vip_id,
                geo_id: g.geo_id,
            };
            // SAFETY: a map value only the agent writes, copied out.
            if let Some(r) = unsafe { GEO_PLAN.get(&sc.plan_key) } {
                return *r;
            }
        }
    } else if vip.flags & VIP_F_RANDOM != 0 {
        let h = if vip.flags & VIP_F_AFFINITY != 0 {
            addr_hash(&key.src, SEED_POOL)
        } else {
            flow_hash(key, SEED_POOL)
        };
        if let Some(r) = POOL_SEL.get(vip.vip_id * POOL_SEL_M + h % POOL_SEL_M) {
            if *r != NO_RING {
                return *r;
            }
        }
    }
    vip.ring_id
}

/// May `origin_id` take new flows from the ring `ring`? (It belongs to that ring and has
/// weight there: not down, drained or disabled.)
#[inline(always)]
fn usable(origin_id: u32, ring: u32) -> bool {
    ORIGINS
        .get(origin_id)
        .is_some_and(|o| o.flags & ORIGIN_F_PRESENT != 0 && o.ring_id == ring && o.weight > 0)
}

/// Would a new flow of `key` still go to `origin_id`? Asked for a SYN that meets an existing
/// flow (a retransmission, or a client reusing a closed connection's tuple): it keeps its
/// flow while its origin is usable in the ring the VIP now picks for it.
#[inline(never)]
fn still_chosen(key: &FlowKey, vip: &VipMeta, origin_id: u32) -> bool {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry; new_flow has not started using it.
    let sc = unsafe { &mut *sc };
    usable(origin_id, select_ring(key, vip, sc))
}

/// The origin for a new flow (NO_ORIGIN when the ring has none): the client's affinity origin
/// while it is fresh and usable, else the ring's choice by its steering.
#[inline(never)]
fn pick(key: &FlowKey, vip: &VipMeta, sc: &mut Scratch) -> u32 {
    let ring = select_ring(key, vip, sc);
    if vip.flags & VIP_F_AFFINITY != 0 {
        sc.aff_key = AffinityKey {
            vip_id: vip.vip_id,
            addr: key.src,
        };
        if let Some(a) = AFFINITY.get_ptr(&sc.aff_key) {
            // SAFETY: map value pointer, copied out.
            let a = unsafe { *a };
            if now_secs().wrapping_sub(a.last_used) < vip.affinity_ttl && usable(a.origin_id, ring)
            {
                count(event::AFFINITY_HIT);
                return a.origin_id;
            }
        }
    }
    let Some(meta) = RING_META.get(ring) else {
        return NO_ORIGIN;
    };
    let h = if meta.steering == RING_STEER_HASH {
        addr_hash(&key.src, SEED_RING)
    } else {
        flow_hash(key, SEED_RING)
    };
    if meta.steering == RING_STEER_LEAST_CONN {
        return least_conn(meta, h);
    }
    RINGS
        .get(ring * MAGLEV_M + h % MAGLEV_M)
        .copied()
        .unwrap_or(NO_ORIGIN)
}

/// The member with the fewest open flows per unit of weight, counting the new one
/// ((flows + 1) / weight); the scan starts at a hash-chosen member so ties spread.
#[inline(always)]
fn least_conn(meta: &RingMeta, h: u32) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "32 members")]
    let n = meta.count.min(MAX_LC_MEMBERS as u32);
    if n == 0 {
        return NO_ORIGIN;
    }
    let start = h % n;
    let mut best = NO_ORIGIN;
    let mut best_load: u64 = 0;
    let mut best_w: u64 = 1;
    let mut i: u32 = 0;
    while i < n {
        let mut j = start + i;
        if j >= n {
            j -= n;
        }
        let idx = j as usize & (MAX_LC_MEMBERS - 1);
        let (id, w) = (meta.ids[idx], u64::from(meta.weights[idx]));
        // Counts can dip below zero for a moment (an eviction we never saw, then a FIN).
        #[expect(
            clippy::cast_possible_wrap,
            clippy::cast_sign_loss,
            reason = "clamped at 0"
        )]
        let flows = ORIGIN_FLOWS
            .get(id)
            .map_or(0, |f| (*f as i64).max(0) as u64);
        let load = flows + 1;
        if w > 0 && (best == NO_ORIGIN || load * best_w < best_load * w) {
            best = id;
            best_load = load;
            best_w = w;
        }
        i += 1;
    }
    best
}

/// `recycle` took the port over.
const TAKEN: u32 = u32::MAX;

/// Takes over the SNAT port of `sc.rkey` when its flow is closed and idle past the grace
/// period (`force`: closed at all), or abandoned; the old client flow is forgotten so it
/// cannot use the port any more. Returns TAKEN, or for a closed flow not yet reusable a
/// score (1 + idle seconds: the older the better), or 0 for an open flow (never taken).
#[inline(never)]
fn recycle(sc: &mut Scratch, settings: &Settings, force: bool) -> u32 {
    // SAFETY: map value pointer, read field by field.
    let Some(old) = (unsafe { REV_FLOWS.get(&sc.rkey) }) else {
        // Freed since the insert failed: take it the normal way.
        let ok = REV_FLOWS
            .insert(&sc.rkey, &sc.rev, u64::from(BPF_NOEXIST))
            .is_ok();
        return if ok { TAKEN } else { 0 };
    };
    let idle = sc.rev.last_seen.wrapping_sub(old.last_seen);
    let closing = old.flags & REV_F_CLOSING != 0;
    let reusable = (closing && (force || idle >= settings.reuse_closed_secs))
        || idle >= settings.reuse_idle_secs;
    if !reusable {
        return if closing {
            idle.saturating_add(1).min(TAKEN - 1)
        } else {
            0
        };
    }
    if !closing {
        flows_add(old.origin_id, DEC);
    }
    sc.old_flow = FlowKey {
        src: old.client_addr,
        dst: old.vip_addr,
        sport: old.client_port,
        dport: old.vip_port,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let _ = FLOWS.remove(&sc.old_flow);
    if REV_FLOWS
        .insert(&sc.rkey, &sc.rev, u64::from(BPF_ANY))
        .is_ok()
    {
        TAKEN
    } else {
        0
    }
}

/// Rewrites source and destination (address and port), decrements the TTL (the caller has
/// refused TTL <= 1) and patches both checksums incrementally. Addresses are IPv4-mapped; their last four bytes are the IPv4 ones.
#[inline(always)]
fn rewrite(
    ip: *mut Ipv4Hdr,
    tcp: *mut TcpHdr,
    new_src: [u8; 16],
    new_sport: u16,
    new_dst: [u8; 16],
    new_dport: u16,
) {
    let src4 = [new_src[12], new_src[13], new_src[14], new_src[15]];
    let dst4 = [new_dst[12], new_dst[13], new_dst[14], new_dst[15]];
    // SAFETY: both headers were bounds-checked by the caller and stay valid (no adjust_head).
    unsafe {
        let old_src = (*ip).src_addr;
        let old_dst = (*ip).dst_addr;
        // TTL and protocol share one 16-bit word (RFC 791): update it as a word.
        let ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);

        let mut ipc = u16::from_ne_bytes((*ip).check);
        ipc = csum::replace32(ipc, old_src, src4);
        ipc = csum::replace32(ipc, old_dst, dst4);
        ipc = csum::replace16(ipc, ttl_word, new_ttl_word);
        (*ip).check = ipc.to_ne_bytes();
        (*ip).src_addr = src4;
        (*ip).dst_addr = dst4;

        // The TCP checksum covers the pseudo-header addresses (RFC 793) and the ports.
        let old_sport = u16::from_ne_bytes((*tcp).source);
        let old_dport = u16::from_ne_bytes((*tcp).dest);
        let mut tc = u16::from_ne_bytes((*tcp).check);
        tc = csum::replace32(tc, old_src, src4);
        tc = csum::replace32(tc, old_dst, dst4);
        tc = csum::replace16(tc, old_sport, new_sport);
        tc = csum::replace16(tc, old_dport, new_dport);
        (*tcp).check = tc.to_ne_bytes();
        (*tcp).source = new_sport.to_ne_bytes();
        (*tcp).dest = new_dport.to_ne_bytes();
    }
}

/// Sends a rewritten frame on: next hop and MACs from the kernel FIB, then XDP_TX when it
/// leaves where it came in, a TX_PORTS redirect otherwise. Its own subprogram (stack frame).
#[inline(never)]
fn forward(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Result<u32, u32> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut p: FibParams = unsafe { mem::zeroed() };
    #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: headers bounds-checked by the caller.
    unsafe {
        p.family = AF_INET;
        p.l4_protocol = IPPROTO_TCP;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        p.ifindex = ingress;
        p.__bindgen_anon_2.tos = (*ip).tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src_addr);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).dst_addr);
    }
    // SAFETY: p is a valid, fully initialised request of the size we pass.
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx.cast(), &raw mut p, size_of::<FibParams>() as i32, 0) };
    #[expect(
        clippy::cast_sign_loss,
        reason = "return codes are small and non-negative"
    )]
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Ok(pass(event::PASS_NO_NEIGH)),
        // SAFETY: the helper wrote the egress MTU into the union for this return code.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Err(edge::DO_TOO_BIG | u32::from(unsafe { p.__bindgen_anon_1.mtu_result }))
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(drop(event::DROP_FWD_DISABLED)),
        _ => return Err(drop(event::DROP_NO_ROUTE)),
    }
    // SAFETY: eth bounds-checked by the caller.
    unsafe {
        (*eth).dst_addr = p.dmac;
        (*eth).src_addr = p.smac;
    }
    if p.ifindex == ingress {
        return Ok(verdict(event::FWD_TX, xdp_action::XDP_TX));
    }
    match TX_PORTS.redirect(p.ifindex, 0) {
        Ok(v) => Ok(verdict(event::FWD_REDIRECT, v)),
        Err(_) => Err(drop(event::DROP_NO_TX_PORT)),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_fib_lookup` is GPL-only, so the kernel side is dual-licensed (MIT/GPL).
#[unsafe(link_section = "license")]
#[used]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

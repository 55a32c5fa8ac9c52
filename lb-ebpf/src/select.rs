//! Choosing an origin for a new flow: the ring (geo plan, `random` pool table or the VIP's
//! own), then the origin in it (session affinity, Maglev slot by 5-tuple or client address,
//! or least connections).

use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{
    event,
    hash::{addr_hash, flow_hash, SEED_POOL, SEED_RING},
    AffinityKey, FlowKey, GeoPlanKey, RingMeta, VipMeta, MAX_LC_MEMBERS, NO_ORIGIN, NO_RING,
    ORIGIN_F_PRESENT, POOL_SEL_M, RING_STEER_HASH, RING_STEER_LEAST_CONN, VIP_F_AFFINITY,
    VIP_F_GEO, VIP_F_RANDOM,
};

use crate::{
    maps::{Scratch, AFFINITY, GEO, GEO_PLAN, ORIGINS, ORIGIN_FLOWS, POOL_SEL, RINGS, RING_META},
    stats::{count, now_secs},
};

/// The ring new flows of `key` take on `vip`: the geo plan's ring for the client's location,
/// the `random` pool table's ring, or the VIP's own ring. Deterministic for a client (geo) or
/// a 5-tuple (random), so a SYN retransmission meets the same choice.
#[inline(always)]
pub fn select_ring(key: &FlowKey, vip: &VipMeta, sc: &mut Scratch) -> u32 {
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
pub fn usable(origin_id: u32, ring: u32) -> bool {
    ORIGINS
        .get(origin_id)
        .is_some_and(|o| o.flags & ORIGIN_F_PRESENT != 0 && o.ring_id == ring && o.weight > 0)
}

/// The origin for a new flow (NO_ORIGIN when the ring has none): the client's affinity origin
/// while it is fresh and usable, else the ring's choice by its steering.
#[inline(never)]
pub fn pick(key: &FlowKey, vip: &VipMeta, sc: &mut Scratch) -> u32 {
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
    // A ring the agent has not placed yet (size 0) holds no origin; BPF's `x % 0` is `x`.
    if meta.size == 0 {
        return NO_ORIGIN;
    }
    RINGS
        .get(meta.base + h % meta.size)
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

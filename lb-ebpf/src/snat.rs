//! Making and unmaking flow pairs: a new flow takes an origin and a SNAT port (the
//! `REV_FLOWS` entry, inserted NOEXIST, is the reservation), then its `FLOWS` entry. Ports of
//! expired flows are taken over with their pair; a pair is always removed whole.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    event,
    hash::{flow_hash, SEED_SNAT},
    is_v4_mapped, Affinity, Flow, FlowKey, NextHop, RevFlow, Settings, VipMeta, IPPROTO_TCP,
    IPPROTO_UDP, ORIGIN_F_PRESENT, REV_F_CLOSING, SNAT_PROBES, VIP_F_AFFINITY,
};

use crate::{
    conntrack::{mark_closing, tcp_expired, udp_expired},
    maps::{Scratch, AFFINITY, FLOWS, ORIGINS, REV_FLOWS, SCRATCH, SETTINGS},
    select::pick,
    stats::{count, drop, flows_add, handshake, DEC},
};

/// The connection-tracking fields a new flow starts with (from the client's SYN, or from a
/// cookie-validated ACK).
pub struct CtInit {
    pub flags: u32,
    pub client_end: u32,
    pub client_win: u32,
    pub client_wscale: u8,
    pub client_if: u32,
    pub seq_delta: u32,
    pub now: u32,
}

/// The fast-path fields of a client half the slow path has not synced yet: its first
/// segments all look `REV_FLOWS` up (`Flow::flags` clear).
const NEW_HALF: Flow = Flow {
    origin_addr: [0; 16],
    snat_addr: [0; 16],
    origin_port: 0,
    snat_port: 0,
    origin_id: 0,
    vip_id: 0,
    flags: 0,
    synced: 0,
    client_end: 0,
    peer_win: 0,
    client_win: 0,
    ack_shift: 0,
    client_wscale: 0,
    origin_wscale: 0,
    udp: 0,
    _pad: 0,
};

/// The `REV_FLOWS` key of `flow` (the tuple its replies carry).
#[inline(always)]
pub fn rev_key(flow: &Flow) -> FlowKey {
    flow.rev_key()
}

/// Writes the first SNAT address of `origin`'s family (IPv4-mapped or IPv6) to `dst`;
/// returns how many there are (0: none of that family, which validation prevents). A
/// subprogram: inlined, its choice stays live in new_flow's frame, which is at its limit.
#[inline(never)]
fn snat_base(dst: *mut [u8; 16], origin: &[u8; 16]) -> u32 {
    let Some(s) = SETTINGS.get(0) else {
        return 0;
    };
    // SAFETY: `dst` is a field of this CPU's scratch entry.
    unsafe {
        if is_v4_mapped(origin) {
            *dst = s.snat_addr;
            s.snat_count.max(1)
        } else {
            *dst = s.snat_addr6;
            s.snat_count6
        }
    }
}

/// Does the tracking entry `r` belong to the client flow `key`? (The back-reference.)
#[inline(always)]
pub fn names_client(r: *const RevFlow, key: &FlowKey) -> bool {
    // SAFETY: a live map value, read field by field.
    unsafe {
        (*r).client_port == key.sport
            && (*r).vip_port == key.dport
            && (*r).client_addr == key.src
            && (*r).vip_addr == key.dst
    }
}

/// Removes a flow pair: its open-flow count, then both halves.
#[inline(always)]
pub fn remove_pair(key: &FlowKey, rkey: &FlowKey, r: *mut RevFlow) {
    mark_closing(r);
    let _ = REV_FLOWS.remove(rkey);
    let _ = FLOWS.remove(key);
}

/// Picks an origin for a SYN (or a cookie-validated ACK) of `key`, reserves a SNAT port and
/// records both halves; the new flow is left in `SCRATCH.flow`. `replaces` (null = none) is
/// the flow-table entry of a closed or expired flow on the same tuple: its pair is removed
/// first, and counted out of `ORIGIN_FLOWS` if it was still open.
///
/// Not inlined, and working in the per-CPU scratch entry: a BPF subprogram keeps its stack
/// frame apart from the hot path's, which keeps the call chain under the 512-byte limit.
///
/// `UDP`: the flow is UDP (`key.proto` is `IPPROTO_UDP`). A copy per protocol, so that
/// neither pays the verifier for the other's expiry rules in its port-probing loop.
#[inline(never)]
pub fn new_flow<const UDP: bool>(
    key: &FlowKey,
    vip: &VipMeta,
    init: &CtInit,
    replaces: *const Flow,
) -> Result<(), u32> {
    // Read here, not passed: a BPF call takes at most five arguments (the result is one).
    let Some(settings) = SETTINGS.get(0) else {
        return Err(drop(event::DROP_FLOW_INSERT));
    };
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return Err(drop(event::DROP_FLOW_INSERT));
    };
    if !replaces.is_null() {
        // SAFETY: sc is this CPU's scratch entry; replaces is a live flow-table value.
        unsafe {
            (*sc).old_rkey = rev_key(&*replaces);
            if let Some(r) = REV_FLOWS.get_ptr_mut(&(*sc).old_rkey) {
                if names_client(r, key) {
                    mark_closing(r);
                    // The port goes with the tuple: the new flow's first probe is the same
                    // port (the same hash), so a client reusing its source port usually
                    // keeps its SNAT port too, and the origin sees the client's own tuple
                    // reused, as without a load balancer. It accepts the SYN on its
                    // TIME_WAIT entry by the client's newer sequence number or timestamp
                    // (RFC 6191). Holding the port instead made the new flow take another
                    // port whose TIME_WAIT belongs to a stranger, refused half the time.
                    let _ = REV_FLOWS.remove(&(*sc).old_rkey);
                }
            }
        }
    }
    // SAFETY: sc points at this CPU's scratch entry; nothing else uses it while we run.
    let sc = unsafe { &mut *sc };
    let origin_id = pick(key, vip, sc);
    let origin = match ORIGINS.get(origin_id) {
        Some(o) if o.flags & ORIGIN_F_PRESENT != 0 => o,
        _ => {
            if !replaces.is_null() {
                let _ = FLOWS.remove(key);
            }
            return Err(drop(event::DROP_NO_ORIGIN));
        }
    };
    sc.rev = RevFlow {
        client_addr: key.src,
        vip_addr: key.dst,
        client_port: key.sport,
        vip_port: key.dport,
        vip_id: vip.vip_id,
        origin_id,
        last_seen: init.now,
        flags: init.flags,
        _pad: 0,
        client_end: init.client_end,
        origin_end: 0,
        client_win: init.client_win,
        origin_win: 0,
        seq_delta: init.seq_delta,
        client_wscale: init.client_wscale,
        origin_wscale: lb_common::WSCALE_NONE,
        _pad2: [0; 2],
        client_if: init.client_if,
        origin_if: 0,
        nh: NextHop::default(),
    };
    sc.rkey = FlowKey {
        src: origin.addr,
        dst: [0; 16],
        sport: origin.port,
        dport: 0,
        // TCP and UDP ports are separate spaces, as in the kernel.
        proto: proto::<UDP>(),
        _pad: [0; 3],
    };
    let snat_count = snat_base(&raw mut sc.rkey.dst, &origin.addr);
    if snat_count == 0 {
        if !replaces.is_null() {
            let _ = FLOWS.remove(key);
        }
        return Err(drop(event::DROP_SNAT_EXHAUSTED));
    }
    let range = u32::from(settings.snat_port_max - settings.snat_port_min) + 1;
    let first = flow_hash(key, SEED_SNAT);
    // The hash's SNAT address (its high half: the port takes it modulo the range). The
    // addresses are a prefix of at most 256, so the count is a power of two and the first
    // address's last byte has those low bits clear: one OR in place, no carry (and no stack:
    // new_flow's frame is at its limit).
    #[expect(clippy::cast_possible_truncation, reason = "below snat_count <= 256")]
    let n = ((first >> 16) & (snat_count - 1)) as u8;
    sc.rkey.dst[15] |= n;
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
        let r = recycle::<UDP>(sc, settings, false);
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
        if recycle::<UDP>(sc, settings, true) == TAKEN {
            count(event::SNAT_REUSED_EARLY);
            found = true;
        }
    }
    if !found {
        if !replaces.is_null() {
            let _ = FLOWS.remove(key);
        }
        return Err(drop(event::DROP_SNAT_EXHAUSTED));
    }
    sc.flow = Flow {
        origin_addr: origin.addr,
        snat_addr: sc.rkey.dst,
        origin_port: origin.port,
        snat_port: sc.rkey.dport,
        origin_id,
        vip_id: vip.vip_id,
        udp: u8::from(UDP),
        ..NEW_HALF
    };
    if FLOWS.insert(key, &sc.flow, u64::from(BPF_ANY)).is_err() {
        let _ = REV_FLOWS.remove(&sc.rkey);
        return Err(drop(event::DROP_FLOW_INSERT));
    }
    flows_add(origin_id, 1);
    if init.flags == 0 {
        handshake(init.now, false);
    }
    if vip.flags & VIP_F_AFFINITY != 0 {
        sc.aff = Affinity {
            origin_id,
            last_used: init.now,
        };
        let _ = AFFINITY.insert(&sc.aff_key, &sc.aff, 0);
    }
    Ok(())
}

/// `recycle` took the port over.
const TAKEN: u32 = u32::MAX;

/// Takes over the SNAT port of `sc.rkey` when its flow has expired (`force`: or is closed at
/// all); the old pair is removed, so its client cannot use the port any more. Returns TAKEN,
/// or for a closed flow not yet reusable a score (1 + idle seconds: the older the better),
/// or 0 for an open flow (never taken).
#[inline(never)]
fn recycle<const UDP: bool>(sc: &mut Scratch, settings: &Settings, force: bool) -> u32 {
    let Some(old) = REV_FLOWS.get_ptr_mut(&sc.rkey) else {
        // Freed since the insert failed: take it the normal way.
        let ok = REV_FLOWS
            .insert(&sc.rkey, &sc.rev, u64::from(BPF_NOEXIST))
            .is_ok();
        return if ok { TAKEN } else { 0 };
    };
    let now = sc.rev.last_seen;
    // SAFETY: a live map value, read field by field.
    let (last, flags) = unsafe { ((*old).last_seen, (*old).flags) };
    let closed = RevFlow::closed(flags);
    let expired = if UDP {
        udp_expired(old, now, settings)
    } else {
        tcp_expired(old, now, settings)
    };
    if !(expired || (force && closed)) {
        return if closed {
            now.wrapping_sub(last).saturating_add(1).min(TAKEN - 1)
        } else {
            0
        };
    }
    if flags & REV_F_CLOSING == 0 {
        // SAFETY: as above.
        flows_add(unsafe { (*old).origin_id }, DEC);
    }
    // SAFETY: as above.
    unsafe {
        sc.old_flow = FlowKey {
            src: (*old).client_addr,
            dst: (*old).vip_addr,
            sport: (*old).client_port,
            dport: (*old).vip_port,
            proto: proto::<UDP>(),
            _pad: [0; 3],
        };
    }
    // The client half goes only if it still names this port (its tuple may have a newer
    // flow by now).
    if let Some(f) = FLOWS.get_ptr(&sc.old_flow) {
        // SAFETY: a live map value.
        if unsafe {
            (*f).snat_port == sc.rkey.dport
                && (*f).origin_port == sc.rkey.sport
                && (*f).origin_addr == sc.rkey.src
        } {
            let _ = FLOWS.remove(&sc.old_flow);
        }
    }
    if REV_FLOWS
        .insert(&sc.rkey, &sc.rev, u64::from(BPF_ANY))
        .is_ok()
    {
        TAKEN
    } else {
        0
    }
}

/// Restores the client half of the pair whose reverse half `r` (key `rkey`) a reply met,
/// when that half is missing. Returns false when the client tuple has another flow: then
/// `r` is stale and the caller drops it.
#[inline(never)]
pub fn check_client_half(rkey: &FlowKey, r: *const RevFlow) -> bool {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry; r is a live map value read field by field.
    let sc = unsafe { &mut *sc };
    unsafe {
        sc.ckey = FlowKey {
            src: (*r).client_addr,
            dst: (*r).vip_addr,
            sport: (*r).client_port,
            dport: (*r).vip_port,
            proto: rkey.proto,
            _pad: [0; 3],
        };
    }
    if let Some(f) = FLOWS.get_ptr(&sc.ckey) {
        // SAFETY: a live map value.
        return unsafe {
            (*f).snat_port == rkey.dport
                && (*f).origin_port == rkey.sport
                && (*f).origin_addr == rkey.src
                && (*f).snat_addr == rkey.dst
        };
    }
    // SAFETY: as above.
    unsafe {
        sc.flow = Flow {
            origin_addr: rkey.src,
            snat_addr: rkey.dst,
            origin_port: rkey.sport,
            snat_port: rkey.dport,
            origin_id: (*r).origin_id,
            vip_id: (*r).vip_id,
            udp: is_udp(rkey.proto),
            ..NEW_HALF
        };
    }
    if FLOWS
        .insert(&sc.ckey, &sc.flow, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        count(event::PAIR_RESTORED);
    }
    true
}

/// The IP protocol of `new_flow::<UDP>`'s flows.
#[inline(always)]
const fn proto<const UDP: bool>() -> u8 {
    if UDP {
        IPPROTO_UDP
    } else {
        IPPROTO_TCP
    }
}

/// `Flow::udp` for protocol `proto` (TCP or UDP), without a branch: 17 has bit 4 set, 6 not.
#[inline(always)]
fn is_udp(proto: u8) -> u8 {
    const _: () = assert!(IPPROTO_UDP & 0x10 != 0 && IPPROTO_TCP & 0x10 == 0);
    (proto >> 4) & 1
}

//! The XDP load balancer: full NAT for TCP to virtual IPs, weighted Maglev for new flows,
//! connection tracking for established ones, reverse NAT for replies.
//!
//! ```text
//! frame -> parse: eth -> IPv4 -> TCP   (anything else: edge.rs: ICMP for our flows in
//!                                       icmp.rs, other traffic to VIPs dropped, transit
//!                                       dropped, the host's own traffic passed)
//!   dst is a VIP:   flags sane? -> FLOWS hit -> its REV_FLOWS half names us? -> conntrack
//!                   (expiry, window-checked FIN/RST, handshake) -> NAT -> forward
//!                   miss: only a SYN makes a flow: select (ring, origin) -> SNAT port
//!                   (REV_FLOWS NOEXIST) -> FLOWS -> NAT -> forward; anything else: drop
//!   dst is our SNAT address: REV_FLOWS hit -> FLOWS half names us (restored if missing)?
//!                   -> conntrack -> NAT back to the client -> forward
//!   forward: too big for the egress MTU -> ICMP "fragmentation needed" back (icmp.rs)
//!   neither: edge::not_ours: for the host, XDP_PASS; would be routed on, XDP_DROP
//! ```
//! One module per stage, as Katran keeps one header per concern: `parse`, `conntrack`,
//! `select`, `snat` (pairs and ports), `nat` (rewrite), `forward` (FIB and redirect),
//! `cookie` (SYN cookies), `reply` (segments built in place), `edge` (not TCP for us,
//! transit), `icmp` (errors, too-big answers, ping), `stats` (counters), `csum`; `udp`,
//! `v6`/`icmp6` and `xlat` (NAT64) hold the tail-called programs' bodies, `family` the
//! IPv4/IPv6 trait. Nothing is logged per packet: every outcome increments a
//! per-CPU counter (`lb_common::event`), exactly one verdict per frame.
#![no_std]
#![no_main]
// Atomic add/or on map values: core's atomic types lack read-modify-write operations on the
// BPF target (no compare-and-swap in its spec), but the instructions exist (BPF_ATOMIC).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod conntrack;
mod cookie;
mod csum;
mod edge;
mod family;
mod forward;
mod icmp;
mod icmp6;
mod maps;
mod nat;
mod parse;
mod reply;
mod select;
mod snat;
mod stats;
mod udp;
mod v6;
mod xlat;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    event, is_v4_mapped, v4_mapped, Flow, FlowKey, NextHop, RevFlow, Settings, VipKey, VipMeta,
    CT_COOKIE, CT_ESTABLISHED, CT_SYNACK, IPPROTO_TCP, IPPROTO_UDP, SETTINGS_F_READY, TAIL_TO_V4,
    TAIL_TO_V6, TAIL_UDP, TAIL_V6, TAIL_V6_UDP,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::family::{Family, ETH_P_IP, ETH_P_IPV6, V4, V6};

use crate::{
    conntrack::{tcp_expired, track},
    forward::forward,
    maps::{FLOWS, ORIGIN_NH, REV_FLOWS, SCRATCH, SETTINGS, TAILS, VIPS, VIP_IDS},
    nat::{rewrite, SeqShift, NO_SHIFT},
    parse::{ptr_at, seg, Seg, ACK, FIN, RST, SYN},
    select::usable,
    snat::{check_client_half, names_client, new_flow, remove_pair, rev_key, CtInit},
    stats::{add_frame, cookies_recent, count, drop, now_secs, pass, verdict},
};

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
    let v = edge::finish::<V4>(&ctx, v);
    translate(&ctx, v, xlat::DO_TO_V6, TAIL_TO_V6)
}

/// UDP datagrams, tail-called from `lb_xdp` (`TAILS[TAIL_UDP]`): see `udp`.
#[xdp]
pub fn lb_udp(ctx: XdpContext) -> u32 {
    let v = udp::packet(&ctx);
    let v = edge::finish::<V4>(&ctx, v);
    translate(&ctx, v, xlat::DO_TO_V6, TAIL_TO_V6)
}

/// IPv6 frames, tail-called from `lb_xdp` (`TAILS[TAIL_V6]`): see `v6`.
#[xdp]
pub fn lb_v6(ctx: XdpContext) -> u32 {
    let mut v = v6::packet(&ctx);
    if v & !1 == v6::DO_UDP {
        // SAFETY: returns only when the slot is empty (no agent has filled it).
        unsafe { TAILS.tail_call(&ctx, TAIL_V6_UDP) };
        v = v6::udp_missing(v);
    }
    let v = edge::finish::<V6>(&ctx, v);
    translate(&ctx, v, xlat::DO_TO_V4, TAIL_TO_V4)
}

/// IPv6 UDP datagrams, tail-called from `lb_v6` (`TAILS[TAIL_V6_UDP]`): see `udp`.
#[xdp]
pub fn lb_v6_udp(ctx: XdpContext) -> u32 {
    let v = udp::packet6(&ctx);
    let v = edge::finish::<V6>(&ctx, v);
    translate(&ctx, v, xlat::DO_TO_V4, TAIL_TO_V4)
}

/// NAT64: packets of IPv6 clients' flows to IPv4 origins, translated to IPv4, tail-called
/// from `lb_v6` and `lb_v6_udp` (`TAILS[TAIL_TO_V4]`): see `xlat`.
#[xdp]
pub fn lb_to_v4(ctx: XdpContext) -> u32 {
    xlat::to_v4(&ctx)
}

/// NAT64: IPv4 origins' packets to IPv6 clients, translated to IPv6, tail-called from
/// `lb_xdp` and `lb_udp` (`TAILS[TAIL_TO_V6]`): see `xlat`.
#[xdp]
pub fn lb_to_v6(ctx: XdpContext) -> u32 {
    xlat::to_v6(&ctx)
}

/// `v`, or, for the translation request `request`, a tail call to the translator in
/// `slot`: a frame of a translated flow that finds no translator (an agent that has not
/// filled the slot) is dropped, never sent on half-translated.
#[inline(always)]
fn translate(ctx: &XdpContext, v: u32, request: u32, slot: u32) -> u32 {
    if v != request {
        return v;
    }
    // SAFETY: returns only when the slot is empty.
    unsafe { TAILS.tail_call(ctx, slot) };
    no_translator()
}

/// The verdict for a frame whose translator is missing. A subprogram: inlined, its counter
/// key would give the entry point a stack frame, on top of the deepest call chain's.
#[inline(never)]
fn no_translator() -> u32 {
    drop(event::DROP_XLAT)
}

/// Is `addr` (IPv4-mapped, or IPv6) the address of some VIP? Uses the port-0 marker entries.
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

fn try_lb(ctx: &XdpContext) -> Result<u32, u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or_else(|| pass(event::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != ETH_P_IP.to_be() {
        if ether_type == ETH_P_IPV6.to_be() {
            // SAFETY: as for UDP below: returns only when the slot is empty (no agent has
            // filled it), and then IPv6 passes as it did before IPv6 load balancing.
            unsafe { TAILS.tail_call(ctx, TAIL_V6) };
        }
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
        if proto == IPPROTO_UDP {
            // SAFETY: a tail call either does not return or returns because the slot is
            // empty: then (an agent that has not filled it) UDP is treated as any protocol
            // but TCP, as before UDP load balancing.
            unsafe { TAILS.tail_call(ctx, TAIL_UDP) };
        }
        return Err(edge::not_tcp(ctx));
    }
    let settings: &Settings = match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_READY != 0 => s,
        _ => return Err(pass(event::PASS_NOT_READY)),
    };
    let dst = v4_mapped(dst4);
    if vihl & 0x0f != 5 || frags[0] & (IP_MF | IP_OFFSET_HI) != 0 || frags[1] != 0 {
        if !is_vip_addr(dst) {
            return Err(edge::not_ours::<V4>(ctx, event::PASS_NOT_VIP));
        }
        return Err(drop(if vihl & 0x0f != 5 {
            event::DROP_IP_OPTIONS
        } else {
            event::DROP_FRAGMENT
        }));
    }
    tcp_packet::<V4>(ctx, ip, settings)
}

/// A TCP segment whose IP header `ip` (at `EthHdr::LEN`, transport at `F::L4_OFF`) the
/// caller checked: a client's to a VIP, an origin's to a SNAT address, or not ours.
#[inline(always)]
fn tcp_packet<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    settings: &Settings,
) -> Result<u32, u32> {
    let tcp: *mut TcpHdr = match ptr_at::<TcpHdr>(ctx, F::L4_OFF) {
        // SAFETY: bounds checked by ptr_at.
        Some(t) if unsafe { (*t).doff() } >= 5 => t,
        _ => {
            // SAFETY: bounds-checked by the caller.
            return Err(if is_vip_addr(unsafe { F::addrs(ip).1 }) {
                drop(event::DROP_MALFORMED_TCP)
            } else {
                pass(event::PASS_MALFORMED)
            });
        }
    };
    // Read here, where few verifier states meet: the SYN option walk inside is explored
    // once per state that reaches it.
    // Kept in the per-CPU scratch entry: the stack is shared with new_flow's frame.
    let sc = SCRATCH
        .get_ptr_mut(0)
        .ok_or_else(|| pass(event::PASS_NOT_READY))?;
    // SAFETY: this CPU's scratch entry; `seg` is a field nothing else writes.
    let s: &Seg = unsafe {
        (*sc).seg = seg::<F>(ctx, ip, tcp);
        &(*sc).seg
    };
    // SAFETY: bounds checked above.
    let (sport, dport, ttl) = unsafe { ((*tcp).source, (*tcp).dest, F::ttl(ip)) };
    // The key lives in the scratch entry (IPv6's stack frame has no room for it), its
    // addresses read only now, straight into it: held across the calls above, or loaded
    // ahead of their stores, IPv6's would be spilled byte by byte.
    // SAFETY: this CPU's scratch entry; `tkey` is a field only this path writes; the IP
    // header bounds-checked by the caller.
    let key: &FlowKey = unsafe {
        (*sc).tkey.sport = u16::from_ne_bytes(sport);
        (*sc).tkey.dport = u16::from_ne_bytes(dport);
        (*sc).tkey.proto = IPPROTO_TCP;
        (*sc).tkey._pad = [0; 3];
        F::key_addrs(ip, &raw mut (*sc).tkey.src, &raw mut (*sc).tkey.dst);
        &(*sc).tkey
    };
    let vip_key = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // Replies first, by the reverse table alone (validation keeps VIPs off the SNAT addresses).
    // A flow keeps its SNAT port when a reload narrows `snat_ports`, and its replies must
    // still come back (an earlier range check here broke them).
    let to_snat = F::is_snat(settings, &key.dst);
    let rev = if to_snat {
        REV_FLOWS.get_ptr_mut(key)
    } else {
        None
    };
    // Then an established flow: one flow-table lookup, and its VIP read by id (an array
    // read, no second hash). Only a SYN or a miss looks the VIP up by address and port.
    let mut vip: Option<&VipMeta> = None;
    let mut hit: *mut Flow = core::ptr::null_mut();
    let mut looked = false;
    // A SNAT address holds no VIP: a tuple the reverse table does not know is not ours
    // (one lookup for a flood aimed at it, not three).
    if !to_snat && s.flags & SYN == 0 {
        match FLOWS.get_ptr_mut(key) {
            // SAFETY: a live map value.
            Some(f) => match VIP_IDS.get(unsafe { (*f).vip_id }) {
                Some(v) if v.key.same(&vip_key) => {
                    vip = Some(&v.meta);
                    hit = f;
                    looked = true;
                }
                // A flow of a VIP that is gone, or whose id another VIP has now: the VIP
                // lookup below decides, as for any packet.
                _ => {}
            },
            None => looked = true,
        }
    }
    if !to_snat && vip.is_none() {
        // SAFETY: a map value only the agent writes; read in place (not copied) because the
        // hot path's frame shares the 512-byte stack budget with new_flow's.
        vip = unsafe { VIPS.get(vip_key) };
    }
    if vip.is_none() && rev.is_none() {
        return Err(edge::not_ours::<F>(ctx, event::PASS_NOT_VIP));
    }
    // Refused before anything changes: forwarding would send it out with TTL 0.
    if ttl <= 1 {
        return Err(drop(event::DROP_TTL));
    }
    match (vip, rev) {
        (Some(vip), _) => client_packet::<F>(ctx, ip, tcp, key, vip, settings, s, hit, looked),
        (None, Some(r)) => origin_packet::<F>(ctx, ip, tcp, key, r, settings, s),
        (None, None) => Err(pass(event::PASS_NOT_VIP)),
    }
}

/// Flags no valid segment to a VIP carries: SYN with FIN or RST, SYN-ACK (we never sent a
/// SYN to the client), or no ACK outside SYN and RST (RFC 793 §3.1: every segment after the
/// SYN carries ACK; a lone FIN, or no flags at all, is a scan or a forgery).
#[inline(always)]
fn bad_client_flags(f: u8) -> bool {
    if f & SYN != 0 {
        f & (FIN | RST | ACK) != 0
    } else {
        f & (ACK | RST) == 0
    }
}

/// A packet from a client to a VIP.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined: no BPF call limit applies"
)]
#[inline(always)]
fn client_packet<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    tcp: *mut TcpHdr,
    key: &FlowKey,
    vip: &VipMeta,
    settings: &Settings,
    s: &Seg,
    hit: *mut Flow,
    looked: bool,
) -> Result<u32, u32> {
    if bad_client_flags(s.flags) {
        return Err(drop(event::DROP_BAD_FLAGS));
    }
    let syn = s.flags & SYN != 0;
    let now = now_secs();
    // The flow read in place (flow-table value, or the scratch entry new_flow filled): the
    // hot path's stack frame is shared with new_flow's.
    let mut flow: *const Flow = core::ptr::null();
    let mut replaces: *const Flow = core::ptr::null();
    let mut shift = NO_SHIFT;
    let mut syn_on_established = false;
    // The flow `try_lb` found (or found missing), else the flow-table lookup.
    let found = if looked {
        (!hit.is_null()).then_some(hit)
    } else {
        FLOWS.get_ptr_mut(key)
    };
    let fast = !syn && found.is_some_and(|f| conntrack::fast(f, s, now));
    if fast {
        // SAFETY: `fast` is true only for a live map value.
        let f = found.unwrap_or(core::ptr::null_mut());
        // SAFETY: a live map value (found above).
        shift.ack = unsafe { (*f).ack_shift };
        flow = f;
    } else if let Some(f) = found {
        // SAFETY: a live map value.
        let rkey = rev_key(unsafe { &*f });
        match REV_FLOWS.get_ptr_mut(&rkey) {
            Some(r) if names_client(r, key) => {
                // SAFETY: a live map value, read field by field.
                let (flags, origin_id, delta) =
                    unsafe { ((*r).flags, (*r).origin_id, (*r).seq_delta) };
                if flags & (CT_COOKIE | CT_SYNACK) == CT_COOKIE && !tcp_expired(r, now, settings) {
                    // A cookie flow whose origin has not answered yet: send the SYN again.
                    // SAFETY: a live map value.
                    let (isn, win) = unsafe { ((*r).client_end.wrapping_sub(1), (*r).client_win) };
                    #[expect(clippy::cast_possible_truncation, reason = "unscaled window")]
                    // SAFETY: a live map value (the flow-table half).
                    cookie::syn_to_origin::<F>(ctx, unsafe { &*f }, isn, win.min(65535) as u16)?;
                    count(event::COOKIE_SYN_RESENT);
                    return forward_rebuilt::<F>(ctx);
                }
                if tcp_expired(r, now, settings) {
                    if !syn {
                        remove_pair(key, &rkey, r);
                        return Err(drop(event::DROP_EXPIRED));
                    }
                    replaces = f;
                } else if syn {
                    if RevFlow::closed(flags) {
                        // A client reusing a closed connection's tuple.
                        replaces = f;
                    } else if flags & CT_ESTABLISHED != 0 {
                        syn_on_established = true;
                        flow = f;
                    } else if usable(origin_id, vip_ring(key, vip)) {
                        // A retransmitted SYN of a handshake in progress.
                        flow = f;
                    } else {
                        replaces = f;
                    }
                } else {
                    conntrack::sync_in(f, r);
                    track(r, s, true, now)?;
                    conntrack::sync_out(f, r, now);
                    if flags & CT_COOKIE != 0 {
                        shift.ack = delta;
                    }
                    flow = f;
                }
            }
            _ => {
                // Half a pair: the client half names a port another flow holds, or none.
                let _ = FLOWS.remove(key);
                if !syn {
                    return Err(drop(event::DROP_PAIR_BROKEN));
                }
            }
        }
    } else if !syn {
        if s.flags & (ACK | RST | FIN) == ACK && cookies_recent(now) {
            if !cookie::valid::<F>(ip, tcp) {
                return Err(drop(event::DROP_COOKIE_INVALID));
            }
            let sc = SCRATCH.get_ptr_mut(0).ok_or(xdp_action::XDP_DROP)?;
            // SAFETY: this CPU's scratch entry; `init` is a field new_flow only reads.
            let init = unsafe {
                (*sc).init = cookie::init(s, now);
                &(*sc).init
            };
            new_flow::<false>(key, vip, init, core::ptr::null())?;
            count(event::SYN_COOKIE_OK);
            // SAFETY: the flow new_flow left in the scratch entry.
            let (vip_id, origin_id) = unsafe { ((*sc).flow.vip_id, (*sc).flow.origin_id) };
            add_frame(ctx, vip_id, origin_id, false, true);
            // SAFETY: the flow new_flow left in the scratch entry.
            let f = unsafe { &(*sc).flow };
            cookie::syn_to_origin::<F>(ctx, f, s.seq.wrapping_sub(1), s.win)?;
            return forward_rebuilt::<F>(ctx);
        }
        return Err(drop(event::DROP_NO_FLOW));
    } else if cookie::admit_by_cookie(settings, now) {
        if let Some(v) = cookie::send_cookie::<F>(ctx, s) {
            return Ok(v);
        }
    }
    let is_new = flow.is_null();
    if is_new {
        if !replaces.is_null() {
            count(event::SYN_REHASHED);
        }
        let sc = SCRATCH.get_ptr_mut(0).ok_or(xdp_action::XDP_DROP)?;
        // SAFETY: this CPU's scratch entry; `init` is a field new_flow only reads.
        let init = unsafe {
            (*sc).init = CtInit {
                flags: 0,
                client_end: s.seq.wrapping_add(s.len),
                client_win: u32::from(s.win),
                client_wscale: s.wscale,
                client_if: s.ifindex,
                seq_delta: 0,
                now,
            };
            &(*sc).init
        };
        new_flow::<false>(key, vip, init, replaces)?;
        match SCRATCH.get_ptr(0) {
            // SAFETY: offset computation inside the scratch entry, no read.
            Some(sc) => flow = unsafe { &raw const (*sc).flow },
            None => return Err(drop(event::DROP_FLOW_INSERT)),
        }
    } else if syn_on_established {
        count(event::SYN_ON_ESTABLISHED);
    } else {
        count(event::FLOW_HIT);
    }
    // SAFETY: a map value pointer (or this CPU's scratch entry), valid for this program run.
    let flow = unsafe { &*flow };
    let nh = origin_next_hop(flow);
    rewrite::<F>(
        ip,
        tcp,
        &flow.snat_addr,
        flow.snat_port,
        &flow.origin_addr,
        flow.origin_port,
        shift,
    );
    add_frame(ctx, flow.vip_id, flow.origin_id, false, is_new);
    xlat::forward_or_to_v4::<F>(ctx, ip, nh, &flow.origin_addr, flow.origin_id, now)
}

/// The cached next hop towards `flow`'s origin (`ORIGIN_NH`), claimed for its address if it
/// was filled for another (an origin id the agent reassigned while flows of the old origin
/// live on): emptied, so that `forward` looks it up and fills it.
#[inline(always)]
fn origin_next_hop(flow: &Flow) -> *mut NextHop {
    let Some(o) = ORIGIN_NH.get_ptr_mut(flow.origin_id) else {
        return core::ptr::null_mut();
    };
    // SAFETY: a live map value shared by all CPUs, read and written field by field.
    unsafe {
        if (*o).addr != flow.origin_addr {
            (*o).nh.ifindex = 0;
            (*o).addr = flow.origin_addr;
        }
        &raw mut (*o).nh
    }
}

/// Forwards a frame `reply` rebuilt in place (its header pointers are new).
#[inline(always)]
fn forward_rebuilt<F: Family>(ctx: &XdpContext) -> Result<u32, u32> {
    match ptr_at::<F::Ip>(ctx, EthHdr::LEN) {
        // A SYN to an IPv4 origin of an IPv6 VIP is translated as the flow's packets are.
        // SAFETY: bounds-checked by ptr_at.
        Some(ip) => xlat::forward_or_to_v4::<F>(
            ctx,
            ip,
            core::ptr::null_mut(),
            &unsafe { F::addrs(ip) }.1,
            u32::MAX,
            0,
        ),
        None => Err(drop(event::DROP_MALFORMED_TCP)),
    }
}

/// The ring a new flow of `key` would take now (for a retransmitted SYN's check).
#[inline(never)]
fn vip_ring(key: &FlowKey, vip: &VipMeta) -> u32 {
    let Some(sc) = SCRATCH.get_ptr_mut(0) else {
        return vip.ring_id;
    };
    // SAFETY: this CPU's scratch entry; new_flow has not started using it.
    select::select_ring(key, vip, unsafe { &mut *sc })
}

/// A packet from an origin to one of our SNAT ports, whose tracking entry is `r`.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined: no BPF call limit applies"
)]
#[inline(always)]
fn origin_packet<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    tcp: *mut TcpHdr,
    key: &FlowKey,
    r: *mut RevFlow,
    settings: &Settings,
    s: &Seg,
) -> Result<u32, u32> {
    let now = now_secs();
    if tcp_expired(r, now, settings) {
        // SAFETY: a live map value.
        let handshake = unsafe { (*r).flags } & CT_ESTABLISHED == 0;
        if handshake && s.flags & (SYN | ACK | RST) == SYN | ACK {
            // The origin still retransmits its SYN-ACK to a client that never answered:
            // reset its half-open connection, so the port's next flow starts clean.
            count(event::RST_TO_ORIGIN);
            return Ok(reply::rst_back::<F>(ctx));
        }
        return Err(drop(event::DROP_EXPIRED));
    }
    // The pair is checked (and a missing client half restored) once per second of the
    // flow's life: when it was seen this second by an open flow's slow path, the check ran.
    // SAFETY: a live map value, read field by field.
    let checked = unsafe { (*r).last_seen == now && conntrack::open((*r).flags) };
    if !checked && !check_client_half(key, r) {
        // The client's tuple has moved on to another flow: this half is stale.
        conntrack::mark_closing(r);
        let _ = REV_FLOWS.remove(key);
        return Err(drop(event::DROP_PAIR_BROKEN));
    }
    // SAFETY: a live map value.
    if unsafe { (*r).flags } & (CT_COOKIE | CT_SYNACK) == CT_COOKIE {
        return match cookie::origin_answer::<F>(ctx, r, s)? {
            cookie::Pending::AckToOrigin => Ok(reply::bounce(ctx)),
            // A reset in IPv4 to an IPv6 client (NAT64) cannot be sent from here: its
            // connection times out.
            // SAFETY: a live map value.
            cookie::Pending::RstToClient
                if !F::V6 && !is_v4_mapped(unsafe { &(*r).client_addr }) =>
            {
                Err(drop(event::DROP_XLAT))
            }
            cookie::Pending::RstToClient => forward_rebuilt::<F>(ctx),
            cookie::Pending::ResetOrigin => {
                count(event::RST_TO_ORIGIN);
                Ok(reply::rst_back::<F>(ctx))
            }
        };
    }
    track(r, s, false, now)?;
    // SAFETY: a live map value; copied out field by field.
    let (client_port, vip_port, vip_id, origin_id, flags, delta, translated) = unsafe {
        (
            (*r).client_port,
            (*r).vip_port,
            (*r).vip_id,
            (*r).origin_id,
            (*r).flags,
            (*r).seq_delta,
            !F::V6 && !is_v4_mapped(&(*r).client_addr),
        )
    };
    if translated {
        // An IPv4 origin's answer to an IPv6 client: `lb_to_v6` translates and NATs it.
        count(event::REPLY_NAT);
        add_frame(ctx, vip_id, origin_id, true, false);
        return Err(xlat::DO_TO_V6);
    }
    let shift = if flags & CT_COOKIE != 0 {
        SeqShift {
            seq: 0u32.wrapping_sub(delta),
            ack: 0,
        }
    } else {
        NO_SHIFT
    };
    // SAFETY: a live map value; the addresses read in place.
    let (vip_addr, client_addr) = unsafe { (&(*r).vip_addr, &(*r).client_addr) };
    rewrite::<F>(ip, tcp, vip_addr, vip_port, client_addr, client_port, shift);
    count(event::REPLY_NAT);
    add_frame(ctx, vip_id, origin_id, true, false);
    // SAFETY: a live map value; the field's address, no read.
    forward::<F>(ctx, ip, unsafe { &raw mut (*r).nh }, now)
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

//! UDP load balancing: full NAT of datagrams to UDP VIPs, flows keyed by the 5-tuple as for
//! TCP (same rings, steering, affinity, SNAT ports and counters), kept alive by traffic and
//! ended by idleness alone.
//!
//! ```text
//! UDP -> fragment or IPv4 options: to a VIP address dropped and counted, else not ours
//!     -> to a SNAT address: REV_FLOWS hit -> expired? drop -> pair checked (client half
//!        restored if missing) -> first answer marks the flow answered -> NAT back -> forward
//!     -> to a UDP VIP: header sane? -> FLOWS hit -> pair checked once a second, expired?
//!        -> NAT -> forward
//!        miss (or expired: replaced, `udp_flow_expired`): under the UDP budget? -> select
//!        -> SNAT port -> FLOWS -> NAT -> forward; over it: drop (`drop_udp_budget`)
//! ```
//!
//! There is no handshake to prove a source address, so every datagram without a flow makes
//! one: at most `udp_budget` unanswered ones within `udp_unreplied_timeout` (at most 16 s). A flow lives `udp_timeout` idle
//! seconds (conntrack's "stream" timeout, 120 s) once it is a conversation: answered, and
//! the client spoke again after the answer (`CT_UDP_STREAM`, noted at the next once-a-second
//! check); every other flow, unanswered or a one-shot exchange, `udp_unreplied_timeout`
//! (conntrack's 30 s), so a spoofed flood the origins answer gives its ports back soon.
//! A SNAT port is reused only after its flow's timeout (`snat::recycle`).
//!
//! A program of its own (`lb_udp`, tail-called by `lb_xdp`), verified on its own.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    event, is_v4_mapped, v4_mapped, Flow, FlowKey, RevFlow, Settings, VipKey, VipMeta,
    CT_ESTABLISHED, CT_UDP, CT_UDP_STREAM, HANDSHAKE_BUCKETS, IPPROTO_UDP, SETTINGS_F_READY,
    WSCALE_NONE,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    conntrack::{mark_closing, set_flags, udp_expired},
    edge::DO_NOT_OURS,
    family::{Family, V4, V6},
    forward::forward,
    is_vip_addr,
    maps::{FLOWS, REV_FLOWS, SCRATCH, SETTINGS, VIPS, VIP_IDS},
    nat::rewrite_udp,
    origin_next_hop,
    parse::ptr_at,
    snat::{check_client_half, names_client, new_flow, remove_pair, CtInit},
    stats::{add_frame, count, drop, now_secs, pass, udp_in_flight, udp_pending},
    IP_MF, IP_OFFSET_HI,
};

/// An IPv4 UDP datagram (version and header length checked by `lb_xdp`): a verdict, or a
/// request for `edge::finish` (`DO_NOT_OURS`, `DO_TOO_BIG`).
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> u32 {
    match try_packet(ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_packet(ctx: &XdpContext) -> Result<u32, u32> {
    let settings: &Settings = match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_READY != 0 => s,
        _ => return Err(pass(event::PASS_NOT_READY)),
    };
    // Packet pointers do not survive a BPF function call: derive them again.
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or_else(|| pass(event::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let (vihl, frags, src4, dst4) =
        unsafe { ((*ip).vihl, (*ip).frags, (*ip).src_addr, (*ip).dst_addr) };
    let dst = v4_mapped(dst4);
    let to_snat = settings.is_snat_addr(&dst);
    if vihl != 0x45 || frags[0] & (IP_MF | IP_OFFSET_HI) != 0 || frags[1] != 0 {
        // Non-first fragments carry no ports: they could not be steered with their first.
        if is_vip_addr(dst) {
            return Err(drop(if vihl != 0x45 {
                event::DROP_IP_OPTIONS
            } else {
                event::DROP_FRAGMENT
            }));
        }
        // The first fragment of an origin's answer on one of our flows: dropped too, so the
        // host's stack never reassembles it and answers "port unreachable" for a port it
        // has no socket on. (The later fragments reach the stack and expire there quietly:
        // without the first, no ICMP is sent.)
        if to_snat && vihl == 0x45 && frags[0] & IP_OFFSET_HI == 0 && frags[1] == 0 {
            if let Some(udp) = ptr_at::<UdpHdr>(ctx, V4::L4_OFF) {
                let key = FlowKey {
                    src: v4_mapped(src4),
                    dst,
                    // SAFETY: bounds checked by ptr_at.
                    sport: u16::from_ne_bytes(unsafe { (*udp).src }),
                    // SAFETY: as above.
                    dport: u16::from_ne_bytes(unsafe { (*udp).dst }),
                    proto: IPPROTO_UDP,
                    _pad: [0; 3],
                };
                if REV_FLOWS.get_ptr(&key).is_some() {
                    return Err(drop(event::DROP_FRAGMENT));
                }
            }
        }
        return Err(DO_NOT_OURS);
    }
    datagram::<V4>(ctx, ip, settings)
}

/// An IPv6 UDP datagram (`lb_v6_udp`: `lb_v6` found the UDP header right after the IPv6
/// header, extension headers removed). A subprogram, so that `lb_v6_udp`'s own frame, under
/// which `edge::finish` runs the ICMPv6 work, stays small.
#[inline(never)]
pub fn packet6(ctx: &XdpContext) -> u32 {
    let settings: &Settings = match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_READY != 0 => s,
        _ => return pass(event::PASS_NOT_READY),
    };
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return pass(event::PASS_MALFORMED);
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*ip).next_hdr } != IPPROTO_UDP {
        return pass(event::PASS_MALFORMED);
    }
    match datagram::<V6>(ctx, ip, settings) {
        Ok(v) | Err(v) => v,
    }
}

/// A UDP datagram whose IP header `ip` the caller checked (no options or extension headers,
/// not a fragment): a client's to a VIP, an origin's to a SNAT address, or not ours.
#[inline(always)]
fn datagram<F: Family>(ctx: &XdpContext, ip: *mut F::Ip, settings: &Settings) -> Result<u32, u32> {
    // SAFETY: bounds-checked by the caller.
    let (ttl, l4_len) = unsafe { (F::ttl(ip), F::l4_len(ip)) };
    let sc = SCRATCH
        .get_ptr_mut(0)
        .ok_or_else(|| pass(event::PASS_NOT_READY))?;
    // The key is built in the scratch entry, its addresses read straight into it (held in
    // registers, IPv6's would be spilled byte by byte).
    // SAFETY: this CPU's scratch entry; `ukey` is a field only this module writes; the IP
    // header bounds-checked by the caller.
    let key: &mut FlowKey = unsafe {
        F::key_addrs(ip, &raw mut (*sc).ukey.src, &raw mut (*sc).ukey.dst);
        (*sc).ukey.proto = IPPROTO_UDP;
        (*sc).ukey._pad = [0; 3];
        &mut (*sc).ukey
    };
    let to_snat = F::is_snat(settings, &key.dst);
    let Some(udp) = ptr_at::<UdpHdr>(ctx, F::L4_OFF) else {
        return Err(if is_vip_addr(key.dst) {
            drop(event::DROP_MALFORMED_UDP)
        } else {
            DO_NOT_OURS
        });
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        key.sport = u16::from_ne_bytes((*udp).src);
        key.dport = u16::from_ne_bytes((*udp).dst);
    }
    let key: &FlowKey = key;
    if to_snat {
        // Replies by the reverse table alone (validation keeps VIPs off the SNAT addresses).
        let Some(r) = REV_FLOWS.get_ptr_mut(key) else {
            return Err(DO_NOT_OURS);
        };
        if ttl <= 1 {
            return Err(drop(event::DROP_TTL));
        }
        return origin_datagram::<F>(ctx, ip, udp, key, r, settings);
    }
    let vip_key = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: IPPROTO_UDP,
        _pad: 0,
    };
    // An established flow finds its VIP by id (an array read), as TCP's do.
    let found = FLOWS.get_ptr_mut(key);
    let mut vip: Option<&VipMeta> = None;
    if let Some(f) = found {
        // SAFETY: a live map value.
        if let Some(v) = VIP_IDS.get(unsafe { (*f).vip_id }) {
            if v.key.same(&vip_key) {
                vip = Some(&v.meta);
            }
        }
    }
    if vip.is_none() {
        // SAFETY: a map value only the agent writes, read in place.
        vip = unsafe { VIPS.get(vip_key) };
    }
    let Some(vip) = vip else {
        return Err(if is_vip_addr(key.dst) {
            drop(event::DROP_VIP_OTHER_PROTO)
        } else {
            DO_NOT_OURS
        });
    };
    // The UDP length covers header and payload; less than the IP payload is padding
    // (RFC 768), more is a lie. Source port 0 (RFC 768's "no reply") cannot be answered.
    // IPv6 has no checksum-less datagrams (RFC 8200 §8.1).
    // SAFETY: bounds checked by ptr_at.
    let (ulen, check) = unsafe { (u16::from_be_bytes((*udp).len), (*udp).check) };
    if ulen < UdpHdr::LEN as u16
        || u32::from(ulen) > l4_len
        || key.sport == 0
        || (F::V6 && check == [0, 0])
    {
        return Err(drop(event::DROP_MALFORMED_UDP));
    }
    if ttl <= 1 {
        return Err(drop(event::DROP_TTL));
    }
    client_datagram::<F>(ctx, ip, udp, key, vip, settings, found)
}

/// Is `r`'s flow answered (`CT_ESTABLISHED`)?
#[inline(always)]
fn answered(r: *const RevFlow) -> bool {
    // SAFETY: a live map value.
    unsafe { (*r).flags & CT_ESTABLISHED != 0 }
}

/// Moves `r`'s clock to `now` (written only when the second changed).
#[inline(always)]
fn touch(r: *mut RevFlow, now: u32) {
    // SAFETY: a live map value; a plain store of one word.
    unsafe {
        if (*r).last_seen != now {
            (*r).last_seen = now;
        }
    }
}

/// A datagram from a client to the UDP VIP `vip`; `found` is its flow-table entry, if any.
#[inline(always)]
fn client_datagram<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    udp: *mut UdpHdr,
    key: &FlowKey,
    vip: &VipMeta,
    settings: &Settings,
    found: Option<*mut Flow>,
) -> Result<u32, u32> {
    let now = now_secs();
    let mut flow: *const Flow = core::ptr::null();
    let mut replaces: *const Flow = core::ptr::null();
    // The tracking entry of the expired flow `replaces`.
    let mut expired_rev: *mut RevFlow = core::ptr::null_mut();
    if let Some(f) = found {
        // SAFETY: a live map value.
        if unsafe { (*f).synced } == now {
            // The pair was checked, and found unexpired, this second (below).
            flow = f;
        } else {
            let sc = SCRATCH
                .get_ptr_mut(0)
                .ok_or_else(|| drop(event::DROP_FLOW_INSERT))?;
            // SAFETY: this CPU's scratch entry; `urkey` is a field only this module writes.
            let rkey = unsafe {
                (*sc).urkey = (*f).rev_key();
                &(*sc).urkey
            };
            match REV_FLOWS.get_ptr_mut(rkey) {
                Some(r) if names_client(r, key) => {
                    if udp_expired(r, now, settings) {
                        count(event::UDP_FLOW_EXPIRED);
                        replaces = f;
                        expired_rev = r;
                    } else {
                        touch(r, now);
                        // Speaking again after an answer makes it a conversation.
                        // SAFETY: a live map value.
                        let flags = unsafe { (*r).flags };
                        if flags & (CT_ESTABLISHED | CT_UDP_STREAM) == CT_ESTABLISHED {
                            set_flags(r, CT_UDP_STREAM);
                        }
                        // SAFETY: a live map value; a plain store of one word.
                        unsafe { (*f).synced = now };
                        flow = f;
                    }
                }
                _ => {
                    // Half a pair (its port was taken by another flow): start afresh.
                    let _ = FLOWS.remove(key);
                }
            }
        }
    }
    let is_new = flow.is_null();
    if is_new {
        if udp_in_flight(now, settings.udp_unreplied_secs.min(HANDSHAKE_BUCKETS))
            >= u64::from(settings.udp_budget)
        {
            if !expired_rev.is_null() {
                // The expired pair goes now, not at the next datagram's expiry check.
                if let Some(sc) = SCRATCH.get_ptr(0) {
                    // SAFETY: this CPU's scratch entry: `urkey` still holds the expired
                    // flow's reverse key, whose entry is `expired_rev`.
                    remove_pair(key, unsafe { &(*sc).urkey }, expired_rev);
                }
            }
            return Err(drop(event::DROP_UDP_BUDGET));
        }
        let sc = SCRATCH
            .get_ptr_mut(0)
            .ok_or_else(|| drop(event::DROP_FLOW_INSERT))?;
        #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
        let ifindex = ctx.ingress_ifindex() as u32;
        // SAFETY: this CPU's scratch entry; `init` is a field new_flow only reads.
        let init = unsafe {
            (*sc).init = CtInit {
                flags: CT_UDP,
                client_end: 0,
                client_win: 0,
                client_wscale: WSCALE_NONE,
                client_if: ifindex,
                seq_delta: 0,
                now,
            };
            &(*sc).init
        };
        new_flow::<true>(key, vip, init, replaces)?;
        udp_pending(now, false);
        // SAFETY: offset computation inside the scratch entry, no read.
        flow = unsafe { &raw const (*sc).flow };
    } else {
        count(event::FLOW_HIT);
    }
    // SAFETY: a map value pointer (or this CPU's scratch entry), valid for this program run.
    let flow = unsafe { &*flow };
    let nh = origin_next_hop(flow);
    rewrite_udp::<F>(
        ip,
        udp,
        &flow.snat_addr,
        flow.snat_port,
        &flow.origin_addr,
        flow.origin_port,
    );
    add_frame(ctx, flow.vip_id, flow.origin_id, false, is_new);
    crate::xlat::forward_or_to_v4::<F>(ctx, ip, nh, &flow.origin_addr, flow.origin_id, now)
}

/// A datagram from an origin to one of our SNAT ports, whose tracking entry is `r`.
#[inline(always)]
fn origin_datagram<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    udp: *mut UdpHdr,
    key: &FlowKey,
    r: *mut RevFlow,
    settings: &Settings,
) -> Result<u32, u32> {
    let now = now_secs();
    if udp_expired(r, now, settings) {
        return Err(drop(event::DROP_EXPIRED));
    }
    // The pair is checked once per second of an answered flow's life, as for TCP.
    // SAFETY: a live map value.
    let checked = unsafe { (*r).last_seen } == now && answered(r);
    if !checked && !check_client_half(key, r) {
        // The client's tuple has moved on to another flow: this half is stale.
        mark_closing(r);
        let _ = REV_FLOWS.remove(key);
        return Err(drop(event::DROP_PAIR_BROKEN));
    }
    if !answered(r) && set_flags(r, CT_ESTABLISHED) & CT_ESTABLISHED == 0 {
        udp_pending(now, true);
        // The client's next datagram takes the slow path, which notes the conversation
        // (`CT_UDP_STREAM`) even within this second. `ckey` is the client key
        // check_client_half just looked up (it ran: the flow was not answered).
        if let Some(sc) = SCRATCH.get_ptr(0) {
            // SAFETY: this CPU's scratch entry; a live map value, one word stored.
            unsafe {
                if let Some(f) = FLOWS.get_ptr_mut(&(*sc).ckey) {
                    (*f).synced = 0;
                }
            }
        }
    }
    touch(r, now);
    // SAFETY: a live map value.
    if !F::V6 && !is_v4_mapped(unsafe { &(*r).client_addr }) {
        // An IPv4 origin's answer to an IPv6 client: `lb_to_v6` translates and NATs it.
        count(event::REPLY_NAT);
        // SAFETY: a live map value.
        add_frame(
            ctx,
            unsafe { (*r).vip_id },
            unsafe { (*r).origin_id },
            true,
            false,
        );
        return Err(crate::xlat::DO_TO_V6);
    }
    // SAFETY: a live map value; copied out field by field.
    let (client_addr, client_port, vip_addr, vip_port, vip_id, origin_id) = unsafe {
        (
            &(*r).client_addr,
            (*r).client_port,
            &(*r).vip_addr,
            (*r).vip_port,
            (*r).vip_id,
            (*r).origin_id,
        )
    };
    rewrite_udp::<F>(ip, udp, vip_addr, vip_port, client_addr, client_port);
    count(event::REPLY_NAT);
    add_frame(ctx, vip_id, origin_id, true, false);
    // SAFETY: a live map value; the field's address, no read.
    forward::<F>(ctx, ip, unsafe { &raw mut (*r).nh }, now)
}

//! ICMP for NATed flows: errors translated in both directions (so path-MTU discovery and
//! unreachables reach the real endpoints), "fragmentation needed" answered for rewritten
//! packets too big for the egress link, and echo requests to VIP addresses answered.
//!
//! ```text
//! origin side: ICMP error to SNAT, quoting SNAT:sp -> origin:op   (REV_FLOWS, reply key)
//!   -> VIP -> client, quoting client:cp -> VIP:vp                  ICMP_FROM_ORIGIN
//! client side: ICMP error to VIP, quoting VIP:vp -> client:cp      (FLOWS, client key)
//!   -> SNAT -> origin, quoting origin:op -> SNAT:sp                ICMP_FROM_CLIENT
//! ```
//! Checksums are updated incrementally (RFC 1624), as Cilium's
//! `snat_v4_rev_nat_handle_icmp_error` does: the outer IPv4 header, the ICMP checksum (which
//! covers the quoted bytes), the quoted IPv4 header, and the quoted TCP checksum when the
//! quote reaches it (RFC 792 asks for 8 bytes of it only, but Linux quotes up to 576 bytes
//! and some stacks check it).

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::PerCpuArray,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    event, is_v4_mapped, v4_mapped, Flow, FlowKey, CT_COOKIE, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, SETTINGS_F_ANSWER_PING,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    count, csum, drop,
    edge::{DO_ECHO, DO_FORWARD, DO_ICMP_ERROR},
    maps::{FLOWS, REV_FLOWS, SETTINGS},
    nat, pass, ptr_at, verdict,
};

/// The flow-table key of the packet being handled: BPF stacks are 512 bytes for the whole
/// call chain, and `too_big` runs three calls deep under the hot path. Not pinned.
#[btf_map]
static ICMP_SCRATCH: PerCpuArray<FlowKey, 1> = PerCpuArray::new();

/// The IPv4 address in an IPv4-mapped one.
#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// This CPU's scratch key, set to the reverse of the tuple `src:sport -> dst:dport`, which
/// is the key the flow tables know a quoted (or rewritten) packet by.
#[inline(always)]
fn reverse_key(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    proto: u8,
) -> Option<&'static FlowKey> {
    let k = ICMP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry; nothing else uses it while we run.
    unsafe {
        (*k).src = v4_mapped(dst);
        (*k).dst = v4_mapped(src);
        (*k).sport = dport;
        (*k).dport = sport;
        (*k).proto = proto;
        (*k)._pad = [0; 3];
        Some(&*k)
    }
}

/// How far the origin's sequence numbers are ahead of the ones its client sees, for the
/// flow `f` (a SYN-cookie flow's `seq_delta`; 0 for every other flow). A quoted packet that
/// went origin -> client carries the client's numbering; the origin must see its own
/// (RFC 5927 §4.1: an ICMP error whose quoted sequence number is not in flight may be
/// ignored). Uses `ICMP_SCRATCH` for the reverse key.
#[inline(always)]
pub fn cookie_delta(f: &Flow) -> u32 {
    if f.udp != 0 {
        return 0;
    }
    let Some(k) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch entry; the key it held before was only used for the lookup
    // that gave `f` (a map value, unaffected).
    unsafe {
        (*k).src = f.origin_addr;
        (*k).dst = f.snat_addr;
        (*k).sport = f.origin_port;
        (*k).dport = f.snat_port;
        (*k).proto = IPPROTO_TCP;
        (*k)._pad = [0; 3];
        match REV_FLOWS.get(&*k) {
            Some(r) if r.flags & CT_COOKIE != 0 => r.seq_delta,
            _ => 0,
        }
    }
}

const ICMP_ECHOREPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_FRAG_NEEDED: u8 = 4;
const IP_DF: u8 = 0x40;
/// TTL of the ICMP messages we originate (Linux's default).
const ICMP_TTL: u8 = 64;
/// TOS of the errors we originate: precedence "internetwork control", as Linux sets it.
const ICMP_ERROR_TOS: u8 = 0xc0;

/// An ICMP header: type, code, checksum, and the type-specific word (unused + next-hop MTU
/// for "fragmentation needed", RFC 1191; identifier and sequence for echo).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

/// The first 8 bytes of a quoted TCP (or UDP) header: all RFC 792 guarantees.
#[repr(C)]
pub struct Quoted {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
}

const ICMP_OFF: usize = EthHdr::LEN + Ipv4Hdr::LEN;
const INNER_IP_OFF: usize = ICMP_OFF + 8;
const INNER_L4_OFF: usize = INNER_IP_OFF + Ipv4Hdr::LEN;
/// The quoted TCP checksum: offset 16 of the quoted TCP header.
const INNER_TCP_CHECK_OFF: usize = INNER_L4_OFF + 16;
/// Bytes of an ICMP error we originate after the Ethernet header: IPv4 + ICMP + quoted
/// IPv4 header + 8 bytes of TCP.
const ERROR_IP_LEN: usize = Ipv4Hdr::LEN + 8 + Ipv4Hdr::LEN + 8;

/// An ICMP packet (no options, not a fragment) to a VIP address (`to_vip`) or to the SNAT
/// address: the request for `edge::finish` (echo, error), or `None`: not ours to handle
/// (the caller drops it for a VIP, passes it otherwise).
#[inline(always)]
pub fn handle(ctx: &XdpContext, to_vip: bool) -> Option<u32> {
    let icmp: *mut IcmpHdr = ptr_at(ctx, ICMP_OFF)?;
    // SAFETY: bounds-checked by ptr_at.
    let kind = unsafe { (*icmp).kind };
    if kind == ICMP_ECHO && to_vip {
        return Some(DO_ECHO);
    }
    if kind == ICMP_DEST_UNREACH || kind == ICMP_TIME_EXCEEDED {
        return Some(DO_ICMP_ERROR | u32::from(to_vip));
    }
    None
}

/// Answers an echo request to a VIP address in place (XDP_TX), or drops it when
/// `answer_ping` is off.
#[inline(never)]
pub fn echo(ctx: &XdpContext) -> u32 {
    match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_ANSWER_PING != 0 => {}
        _ => return drop(event::DROP_PING),
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<IcmpHdr>(ctx, ICMP_OFF),
    ) else {
        return drop(event::DROP_VIP_OTHER_PROTO);
    };
    // SAFETY: all three bounds-checked above.
    unsafe {
        let old = u16::from_ne_bytes([(*icmp).kind, (*icmp).code]);
        (*icmp).kind = ICMP_ECHOREPLY;
        let new = u16::from_ne_bytes([(*icmp).kind, (*icmp).code]);
        (*icmp).check = csum::replace16(u16::from_ne_bytes((*icmp).check), old, new).to_ne_bytes();

        // Swapping the addresses leaves the header sum alone; the TTL changes.
        let src = (*ip).src_addr;
        (*ip).src_addr = (*ip).dst_addr;
        (*ip).dst_addr = src;
        let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl = ICMP_TTL;
        let new = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).check = csum::replace16(u16::from_ne_bytes((*ip).check), old, new).to_ne_bytes();

        let mac = (*eth).src_addr;
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = mac;
    }
    verdict(event::ICMP_ECHO_REPLY, xdp_action::XDP_TX)
}

/// Translates an ICMP error about one of our flows and asks for it to be forwarded
/// (`DO_FORWARD`). Errors about no flow of ours are dropped when they are to a VIP address,
/// and passed when to the SNAT address (the host's own connections may have caused them).
#[inline(never)]
pub fn error(ctx: &XdpContext, to_vip: bool) -> u32 {
    let not_ours = |reason: u32| {
        if to_vip {
            drop(reason)
        } else {
            pass(event::PASS_NOT_TCP)
        }
    };
    let (Some(ip), Some(icmp), Some(inner), Some(l4)) = (
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<IcmpHdr>(ctx, ICMP_OFF),
        ptr_at::<Ipv4Hdr>(ctx, INNER_IP_OFF),
        ptr_at::<Quoted>(ctx, INNER_L4_OFF),
    ) else {
        return not_ours(event::DROP_ICMP_MALFORMED);
    };
    // SAFETY: all bounds-checked above.
    let (ivihl, iproto, isrc, idst, sport, dport, ttl, tot_len) = unsafe {
        (
            (*inner).vihl,
            (*inner).proto,
            (*inner).src_addr,
            (*inner).dst_addr,
            u16::from_ne_bytes((*l4).sport),
            u16::from_ne_bytes((*l4).dport),
            (*ip).ttl,
            u16::from_be_bytes((*ip).tot_len),
        )
    };
    // RFC 792: an error quotes the IP header and at least 8 bytes of the transport header.
    // A shorter message (by its length, whatever the frame holds) would leave words we
    // update outside what its checksum covers.
    if ivihl != 0x45
        || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP)
        || usize::from(tot_len) < ERROR_IP_LEN
    {
        return not_ours(event::DROP_ICMP_MALFORMED);
    }
    // The quoted packet is one we sent, so its reverse is the key the flow tables know.
    let Some(key) = reverse_key(isrc, sport, idst, dport, iproto) else {
        return not_ours(event::DROP_ICMP_UNKNOWN_FLOW);
    };
    // The outer packet goes where the quoted one's new source is, from its new destination:
    // (new quoted src, sport, new quoted dst, dport).
    // The quoted sequence number moves into the origin's numbering only for a packet that
    // went origin -> client (a client's sequence numbers are never translated).
    let mut delta = 0;
    let (nisrc, nsport, nidst, ndport) = if to_vip {
        // Quoted: VIP:vp -> client:cp, as we sent it for the origin.
        // SAFETY: map value pointer, read in place.
        let Some(f) = (unsafe { FLOWS.get(key) }) else {
            return drop(event::DROP_ICMP_UNKNOWN_FLOW);
        };
        delta = cookie_delta(f);
        (
            v4(&f.origin_addr),
            f.origin_port,
            v4(&f.snat_addr),
            f.snat_port,
        )
    } else {
        // Quoted: SNAT:sp -> origin:op, as we sent it for the client.
        // SAFETY: map value pointer, read in place.
        let Some(r) = (unsafe { REV_FLOWS.get(key) }) else {
            return pass(event::PASS_NOT_TCP);
        };
        if !is_v4_mapped(&r.client_addr) {
            // About an IPv6 client's flow: `lb_to_v6` makes it an ICMPv6 error.
            return crate::xlat::DO_TO_V6;
        }
        (
            v4(&r.client_addr),
            r.client_port,
            v4(&r.vip_addr),
            r.vip_port,
        )
    };
    if ttl <= 1 {
        return drop(event::DROP_TTL);
    }
    count(if to_vip {
        event::ICMP_FROM_CLIENT
    } else {
        event::ICMP_FROM_ORIGIN
    });
    let (osrc, odst) = (nidst, nisrc);

    // SAFETY: every pointer bounds-checked above; the quoted TCP checksum is checked below.
    unsafe {
        // Outer IPv4: addresses and TTL.
        let (old_src, old_dst) = ((*ip).src_addr, (*ip).dst_addr);
        let ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let mut c = u16::from_ne_bytes((*ip).check);
        c = csum::replace32(c, old_src, osrc);
        c = csum::replace32(c, old_dst, odst);
        c = csum::replace16(c, ttl_word, new_ttl_word);
        (*ip).check = c.to_ne_bytes();
        (*ip).src_addr = osrc;
        (*ip).dst_addr = odst;

        // Quoted IPv4 header: addresses.
        let old_ic = u16::from_ne_bytes((*inner).check);
        let mut ic = csum::replace32(old_ic, isrc, nisrc);
        ic = csum::replace32(ic, idst, nidst);
        (*inner).check = ic.to_ne_bytes();
        (*inner).src_addr = nisrc;
        (*inner).dst_addr = nidst;
        (*l4).sport = nsport.to_ne_bytes();
        (*l4).dport = ndport.to_ne_bytes();
        let old_seq = (*l4).seq;
        let new_seq = u32::from_be_bytes(old_seq)
            .wrapping_add(delta)
            .to_be_bytes();
        (*l4).seq = new_seq;

        // The ICMP checksum covers every quoted word we changed (all at even offsets).
        let mut cc = u16::from_ne_bytes((*icmp).check);
        cc = csum::replace32(cc, old_seq, new_seq);
        cc = csum::replace32(cc, isrc, nisrc);
        cc = csum::replace32(cc, idst, nidst);
        cc = csum::replace16(cc, old_ic, ic);
        cc = csum::replace16(cc, sport, nsport);
        cc = csum::replace16(cc, dport, ndport);

        // The quoted UDP checksum is in the 8 bytes every error quotes (the "sequence
        // number" above was its length and checksum, unchanged with a delta of 0).
        if iproto == IPPROTO_UDP {
            if let Some(uc) = ptr_at::<[u8; 2]>(ctx, INNER_L4_OFF + 6) {
                let old_uc = u16::from_ne_bytes(*uc);
                let n = nat::udp_check(
                    old_uc,
                    (isrc, idst),
                    (nisrc, nidst),
                    (sport, dport),
                    (nsport, ndport),
                );
                *uc = n.to_ne_bytes();
                cc = csum::replace16(cc, old_uc, n);
            }
        // The quoted TCP checksum (pseudo-header addresses and ports), when quoted: inside
        // the frame and inside the outer packet's length (not Ethernet padding).
        } else if usize::from(tot_len) >= INNER_TCP_CHECK_OFF + 2 - EthHdr::LEN {
            if let Some(tc) = ptr_at::<[u8; 2]>(ctx, INNER_TCP_CHECK_OFF) {
                let old_tc = u16::from_ne_bytes(*tc);
                let mut n = csum::replace32(old_tc, isrc, nisrc);
                n = csum::replace32(n, idst, nidst);
                n = csum::replace16(n, sport, nsport);
                n = csum::replace16(n, dport, ndport);
                n = csum::replace32(n, old_seq, new_seq);
                *tc = n.to_ne_bytes();
                cc = csum::replace16(cc, old_tc, n);
            }
        }
        (*icmp).check = cc.to_ne_bytes();
    }
    DO_FORWARD
}

/// The rewritten TCP packet in `ctx` is larger than the egress MTU `mtu` (FIB lookup said
/// FRAG_NEEDED). With DF set, it becomes, in place, an ICMP "fragmentation needed" with the
/// next-hop MTU (RFC 1191) quoting the packet as its sender sent it (IPv4 header + 8 bytes
/// of TCP, RFC 792), from the address the sender sent it to (the VIP for a client's packet,
/// the SNAT address for an origin's reply), bounced out of the ingress interface (XDP_TX).
/// Without DF the stack gets the packet to fragment it (XDP_PASS).
#[inline(never)]
pub fn too_big(ctx: &XdpContext, mtu: u16) -> u32 {
    let (Some(ip), Some(l4), Some(s)) = (
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Quoted>(ctx, EthHdr::LEN + Ipv4Hdr::LEN),
        SETTINGS.get(0),
    ) else {
        return drop(event::DROP_TOO_BIG);
    };
    // SAFETY: bounds-checked above.
    let (proto, df, src4, dst4, sport, dport) = unsafe {
        (
            (*ip).proto,
            (*ip).frags[0] & IP_DF != 0,
            (*ip).src_addr,
            (*ip).dst_addr,
            (*l4).sport,
            (*l4).dport,
        )
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return drop(event::DROP_TOO_BIG);
    }
    if !df {
        return pass(event::PASS_TOO_BIG_NO_DF);
    }
    // Undo the rewrite: find what the sender sent from the flow tables.
    let from_client = s.is_snat_v4(src4);
    let Some(key) = reverse_key(
        src4,
        u16::from_ne_bytes(sport),
        dst4,
        u16::from_ne_bytes(dport),
        proto,
    ) else {
        return drop(event::DROP_TOO_BIG);
    };
    let mut delta = 0;
    // (original src, sport, dst, dport)
    let (osrc, osport, odst, odport) = if from_client {
        // A client's packet, now SNAT -> origin: the reverse entry names client and VIP.
        // SAFETY: map value pointer, read in place.
        match unsafe { REV_FLOWS.get(key) } {
            Some(r) => (
                v4(&r.client_addr),
                r.client_port,
                v4(&r.vip_addr),
                r.vip_port,
            ),
            None => return drop(event::DROP_TOO_BIG),
        }
    } else {
        // An origin's reply, now VIP -> client: the flow names origin and SNAT port. Its
        // sequence number goes back into the origin's numbering (SYN-cookie flows).
        // SAFETY: map value pointer, read in place.
        match unsafe { FLOWS.get(key) } {
            Some(f) => {
                delta = cookie_delta(f);
                (
                    v4(&f.origin_addr),
                    f.origin_port,
                    v4(&f.snat_addr),
                    f.snat_port,
                )
            }
            None => return drop(event::DROP_TOO_BIG),
        }
    };

    // Restore the quoted header where it is: addresses, ports, TTL (the rewrite took one).
    // SAFETY: bounds-checked above; no packet pointer is used after adjust_head below.
    unsafe {
        let ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl = (*ip).ttl.wrapping_add(1);
        let new_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let mut c = u16::from_ne_bytes((*ip).check);
        c = csum::replace32(c, src4, osrc);
        c = csum::replace32(c, dst4, odst);
        c = csum::replace16(c, ttl_word, new_ttl_word);
        (*ip).check = c.to_ne_bytes();
        (*ip).src_addr = osrc;
        (*ip).dst_addr = odst;
        if proto == IPPROTO_UDP {
            // The UDP checksum is inside the quote: back to what the sender computed.
            let [l0, l1, c0, c1] = (*l4).seq;
            let c = nat::udp_check(
                u16::from_ne_bytes([c0, c1]),
                (src4, dst4),
                (osrc, odst),
                (u16::from_ne_bytes(sport), u16::from_ne_bytes(dport)),
                (osport, odport),
            )
            .to_ne_bytes();
            (*l4).seq = [l0, l1, c[0], c[1]];
        } else {
            // Not covered by any checksum kept: the quote's TCP checksum is cut off below.
            (*l4).seq = u32::from_be_bytes((*l4).seq)
                .wrapping_add(delta)
                .to_be_bytes();
        }
        (*l4).sport = osport.to_ne_bytes();
        (*l4).dport = odport.to_ne_bytes();
    }
    frag_needed(ctx, mtu)
}

/// The IPv4 packet in the context (TCP or UDP, no options), as its sender sent it, cannot
/// take the next link's MTU `mtu`: it becomes, in place, an ICMP "fragmentation needed"
/// (RFC 1191) to its sender from the address it was sent to, quoting its header and 8
/// bytes of the transport header, bounced out of the ingress interface (XDP_TX).
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, mtu: u16) -> u32 {
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
    ) else {
        return drop(event::DROP_TOO_BIG);
    };
    // SAFETY: bounds-checked above.
    let (peer_mac, our_mac, osrc, odst) = unsafe {
        (
            (*eth).src_addr,
            (*eth).dst_addr,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };

    // Room in front for a new Ethernet + IPv4 + ICMP header: the old IPv4 header then sits
    // exactly where the quote goes. Then cut the frame after 8 bytes of TCP.
    let grow = (Ipv4Hdr::LEN + 8) as i32;
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return drop(event::DROP_TOO_BIG);
    }
    let want = EthHdr::LEN + ERROR_IP_LEN;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "frame lengths fit in i32"
    )]
    let shrink = want as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: ctx is this program's context; shrink <= 0 (the packet was too big).
    if shrink > 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        return drop(event::DROP_TOO_BIG);
    }
    let (Some(eth), Some(ip), Some(icmp), Some(body)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<IcmpHdr>(ctx, ICMP_OFF),
        ptr_at::<[u16; (ERROR_IP_LEN - Ipv4Hdr::LEN) / 2]>(ctx, ICMP_OFF),
    ) else {
        return drop(event::DROP_TOO_BIG);
    };
    // SAFETY: all bounds-checked above (after both adjustments).
    unsafe {
        (*eth).dst_addr = peer_mac;
        (*eth).src_addr = our_mac;
        (*eth).ether_type = crate::family::ETH_P_IP.to_be();

        (*ip).vihl = 0x45;
        (*ip).tos = ICMP_ERROR_TOS;
        #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
        let len = ERROR_IP_LEN as u16;
        (*ip).tot_len = len.to_be_bytes();
        (*ip).id = [0; 2];
        (*ip).frags = [0; 2];
        (*ip).ttl = ICMP_TTL;
        (*ip).proto = IPPROTO_ICMP;
        (*ip).check = [0; 2];
        (*ip).src_addr = odst;
        (*ip).dst_addr = osrc;
        let words = ip.cast::<[u16; Ipv4Hdr::LEN / 2]>();
        (*ip).check = full_csum(&*words).to_ne_bytes();

        (*icmp).kind = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_FRAG_NEEDED;
        (*icmp).check = [0; 2];
        let m = mtu.to_be_bytes();
        (*icmp).rest = [0, 0, m[0], m[1]];
        (*icmp).check = full_csum(&*body).to_ne_bytes();
    }
    verdict(event::ICMP_FRAG_NEEDED_SENT, xdp_action::XDP_TX)
}

/// The Internet checksum (RFC 1071) of a fixed number of 16-bit words, as stored.
#[inline(always)]
fn full_csum<const N: usize>(words: &[u16; N]) -> u16 {
    let mut s: u32 = 0;
    let mut i = 0;
    while i < N {
        s += u32::from(words[i]);
        i += 1;
    }
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let r = !(s as u16);
    r
}

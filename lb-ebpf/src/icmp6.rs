//! ICMPv6 for NATed IPv6 flows, as `icmp` does for IPv4: errors (destination unreachable,
//! packet too big, time exceeded, parameter problem) translated in both directions, "packet
//! too big" answered for rewritten packets too big for the egress link (IPv6 routers never
//! fragment, RFC 8200 §5), and echo requests to VIP addresses answered.
//!
//! ```text
//! origin side: error to a SNAT address, quoting SNAT:sp -> origin:op   (REV_FLOWS)
//!   -> VIP -> client, quoting client:cp -> VIP:vp                        ICMP_FROM_ORIGIN
//! client side: error to a VIP address, quoting VIP:vp -> client:cp      (FLOWS)
//!   -> SNAT -> origin, quoting origin:op -> SNAT:sp                      ICMP_FROM_CLIENT
//! ```
//! The ICMPv6 checksum covers a pseudo-header (RFC 4443 §2.3), so the outer addresses move
//! it too; all updates are incremental (RFC 1624). The quoted packet must be IPv6 with TCP
//! or UDP right behind it (a quote with extension headers is dropped to a VIP address).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    event, is_v4_mapped, FlowKey, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, SETTINGS_F_ANSWER_PING,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    count, csum,
    edge::{DO_ECHO, DO_FORWARD, DO_ICMP_ERROR},
    family::{fold, sum_words, ETH_P_IPV6},
    icmp::{cookie_delta, IcmpHdr, Quoted},
    maps::{FLOWS, REV_FLOWS, SCRATCH, SETTINGS},
    pass, ptr_at, verdict,
    xlat::DO_TO_V4,
};

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Hop limit of the ICMPv6 messages we originate (Linux's default).
const HOP_LIMIT: u8 = 64;
/// The smallest MTU every IPv6 link has (RFC 8200 §5): a "packet too big" never says less.
const IPV6_MIN_MTU: u16 = 1280;

const ICMP_OFF: usize = EthHdr::LEN + Ipv6Hdr::LEN;
const INNER_IP_OFF: usize = ICMP_OFF + 8;
const INNER_L4_OFF: usize = INNER_IP_OFF + Ipv6Hdr::LEN;
/// The quoted TCP checksum: offset 16 of the quoted TCP header.
const INNER_TCP_CHECK_OFF: usize = INNER_L4_OFF + 16;
/// The ICMPv6 message of a "packet too big" we originate: ICMPv6 header, quoted IPv6
/// header, 8 bytes of the transport header.
const TOO_BIG_ICMP_LEN: usize = 8 + Ipv6Hdr::LEN + 8;

/// An ICMPv6 message (after any extension headers were removed) to a VIP address (`to_vip`)
/// or a SNAT address: the request for `edge::finish` (echo, error), or `None`: not ours.
#[inline(always)]
pub fn handle(ctx: &XdpContext, to_vip: bool) -> Option<u32> {
    let icmp: *mut IcmpHdr = ptr_at(ctx, ICMP_OFF)?;
    // SAFETY: bounds-checked by ptr_at.
    let kind = unsafe { (*icmp).kind };
    if kind == ICMPV6_ECHO_REQUEST && to_vip {
        return Some(DO_ECHO);
    }
    if matches!(
        kind,
        ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB
    ) {
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
        _ => return crate::drop(event::DROP_PING),
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<IcmpHdr>(ctx, ICMP_OFF),
    ) else {
        return crate::drop(event::DROP_VIP_OTHER_PROTO);
    };
    // SAFETY: all three bounds-checked above.
    unsafe {
        // Swapped addresses leave the pseudo-header's sum alone; the type changes.
        let old = u16::from_ne_bytes([(*icmp).kind, (*icmp).code]);
        (*icmp).kind = ICMPV6_ECHO_REPLY;
        let new = u16::from_ne_bytes([(*icmp).kind, (*icmp).code]);
        (*icmp).check = csum::replace16(u16::from_ne_bytes((*icmp).check), old, new).to_ne_bytes();
        let src = (*ip).src_addr;
        (*ip).src_addr = (*ip).dst_addr;
        (*ip).dst_addr = src;
        (*ip).hop_limit = HOP_LIMIT;
        let mac = (*eth).src_addr;
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = mac;
    }
    verdict(event::ICMP_ECHO_REPLY, xdp_action::XDP_TX)
}

/// This CPU's scratch key set to the reverse of the quoted tuple `src:sport -> dst:dport`:
/// the key the flow tables know the quoted packet by.
#[inline(always)]
fn reverse_key(
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
    proto: u8,
) -> Option<&'static FlowKey> {
    let sc = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry; `rkey` is free outside the TCP path.
    unsafe {
        (*sc).rkey = FlowKey {
            src: *dst,
            dst: *src,
            sport: dport,
            dport: sport,
            proto,
            _pad: [0; 3],
        };
        Some(&(*sc).rkey)
    }
}

/// Translates an ICMPv6 error about one of our flows and asks for it to be forwarded
/// (`DO_FORWARD`). Errors about no flow of ours are dropped when they are to a VIP address,
/// and passed when to a SNAT address (the host's own connections may have caused them).
#[inline(never)]
pub fn error(ctx: &XdpContext, to_vip: bool) -> u32 {
    let not_ours = |reason: u32| {
        if to_vip {
            crate::drop(reason)
        } else {
            pass(event::PASS_NOT_TCP)
        }
    };
    let (Some(ip), Some(icmp), Some(inner), Some(l4)) = (
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<IcmpHdr>(ctx, ICMP_OFF),
        ptr_at::<Ipv6Hdr>(ctx, INNER_IP_OFF),
        ptr_at::<Quoted>(ctx, INNER_L4_OFF),
    ) else {
        return not_ours(event::DROP_ICMP_MALFORMED);
    };
    // SAFETY: all bounds-checked above.
    let (iproto, sport, dport, hop, plen) = unsafe {
        (
            (*inner).next_hdr,
            u16::from_ne_bytes((*l4).sport),
            u16::from_ne_bytes((*l4).dport),
            (*ip).hop_limit,
            usize::from(u16::from_be_bytes((*ip).payload_len)),
        )
    };
    // RFC 4443 §2.4: an error quotes the IPv6 header and at least 8 bytes of the transport
    // header; a shorter message would leave words we update outside what its sum covers.
    if (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP) || plen < TOO_BIG_ICMP_LEN {
        return not_ours(event::DROP_ICMP_MALFORMED);
    }
    // SAFETY: bounds-checked above.
    let Some(key) = reverse_key(
        unsafe { &(*inner).src_addr },
        sport,
        unsafe { &(*inner).dst_addr },
        dport,
        iproto,
    ) else {
        return not_ours(event::DROP_ICMP_UNKNOWN_FLOW);
    };
    // The quoted addresses as they were, kept in the key (reversed) while the frame changes.
    let (isrc, idst) = (&key.dst, &key.src);
    let mut delta = 0;
    // The quoted packet's new (src, sport, dst, dport).
    let (nisrc, nsport, nidst, ndport) = if to_vip {
        // Quoted: VIP:vp -> client:cp, as we sent it for the origin.
        // SAFETY: map value pointer, read in place.
        let Some(f) = (unsafe { FLOWS.get(key) }) else {
            return crate::drop(event::DROP_ICMP_UNKNOWN_FLOW);
        };
        if is_v4_mapped(&f.origin_addr) {
            // About a flow to an IPv4 origin: `lb_to_v4` makes it an ICMPv4 error.
            return DO_TO_V4;
        }
        delta = cookie_delta(f);
        (&f.origin_addr, f.origin_port, &f.snat_addr, f.snat_port)
    } else {
        // Quoted: SNAT:sp -> origin:op, as we sent it for the client.
        // SAFETY: map value pointer, read in place.
        let Some(r) = (unsafe { REV_FLOWS.get(key) }) else {
            return pass(event::PASS_NOT_TCP);
        };
        (&r.client_addr, r.client_port, &r.vip_addr, r.vip_port)
    };
    if hop <= 1 {
        return crate::drop(event::DROP_TTL);
    }
    count(if to_vip {
        event::ICMP_FROM_CLIENT
    } else {
        event::ICMP_FROM_ORIGIN
    });
    // SAFETY: every pointer bounds-checked above; the quoted checksums are checked below.
    unsafe {
        // Outer header: from the quoted packet's new destination to its new source. The
        // ICMPv6 checksum's pseudo-header has both.
        let mut cc = u16::from_ne_bytes((*icmp).check);
        cc = csum::replace128(cc, &(*ip).src_addr, nidst);
        cc = csum::replace128(cc, &(*ip).dst_addr, nisrc);
        (*ip).src_addr = *nidst;
        (*ip).dst_addr = *nisrc;
        (*ip).hop_limit = hop - 1;

        // The quoted header and ports, all inside the ICMPv6 message.
        cc = csum::replace128(cc, isrc, nisrc);
        cc = csum::replace128(cc, idst, nidst);
        cc = csum::replace16(cc, sport, nsport);
        cc = csum::replace16(cc, dport, ndport);
        (*inner).src_addr = *nisrc;
        (*inner).dst_addr = *nidst;
        (*l4).sport = nsport.to_ne_bytes();
        (*l4).dport = ndport.to_ne_bytes();

        if iproto == IPPROTO_UDP {
            // The quoted UDP checksum is in the 8 bytes every error quotes.
            if let Some(uc) = ptr_at::<[u8; 2]>(ctx, INNER_L4_OFF + 6) {
                let old = u16::from_ne_bytes(*uc);
                let mut n = csum::replace128(old, isrc, nisrc);
                n = csum::replace128(n, idst, nidst);
                n = csum::replace16(n, sport, nsport);
                n = csum::replace16(n, dport, ndport);
                if n == 0 {
                    n = 0xffff;
                }
                *uc = n.to_ne_bytes();
                cc = csum::replace16(cc, old, n);
            }
        } else {
            let old_seq = (*l4).seq;
            let new_seq = u32::from_be_bytes(old_seq)
                .wrapping_add(delta)
                .to_be_bytes();
            (*l4).seq = new_seq;
            cc = csum::replace32(cc, old_seq, new_seq);
            // The quoted TCP checksum, when quoted (inside the payload, not padding).
            if plen + EthHdr::LEN + Ipv6Hdr::LEN >= INNER_TCP_CHECK_OFF + 2 {
                if let Some(tc) = ptr_at::<[u8; 2]>(ctx, INNER_TCP_CHECK_OFF) {
                    let old = u16::from_ne_bytes(*tc);
                    let mut n = csum::replace128(old, isrc, nisrc);
                    n = csum::replace128(n, idst, nidst);
                    n = csum::replace16(n, sport, nsport);
                    n = csum::replace16(n, dport, ndport);
                    n = csum::replace32(n, old_seq, new_seq);
                    *tc = n.to_ne_bytes();
                    cc = csum::replace16(cc, old, n);
                }
            }
        }
        (*icmp).check = cc.to_ne_bytes();
    }
    DO_FORWARD
}

/// The rewritten packet in `ctx` is larger than the egress MTU `mtu` (the FIB lookup said
/// FRAG_NEEDED): it becomes, in place, an ICMPv6 "packet too big" (RFC 4443 §3.2) with that
/// MTU, quoting the packet as its sender sent it (IPv6 header and 8 bytes of the transport
/// header, which is what a receiving stack reads), from the address the sender sent it to,
/// back out of the ingress interface (XDP_TX).
#[inline(never)]
pub fn too_big(ctx: &XdpContext, mtu: u16) -> u32 {
    let (Some(ip), Some(l4), Some(s)) = (
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Quoted>(ctx, EthHdr::LEN + Ipv6Hdr::LEN),
        SETTINGS.get(0),
    ) else {
        return crate::drop(event::DROP_TOO_BIG);
    };
    // SAFETY: bounds-checked above.
    let (proto, sport, dport) = unsafe {
        (
            (*ip).next_hdr,
            u16::from_ne_bytes((*l4).sport),
            u16::from_ne_bytes((*l4).dport),
        )
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return crate::drop(event::DROP_TOO_BIG);
    }
    // SAFETY: bounds-checked above.
    // A client's packet translated for an IPv4 origin (`lb_to_v4`) comes back here with
    // its IPv4-mapped SNAT address.
    let from_client = s.is_snat_v6(unsafe { &(*ip).src_addr })
        // SAFETY: bounds-checked above.
        || s.is_snat_addr(unsafe { &(*ip).src_addr });
    // SAFETY: bounds-checked above.
    let Some(key) = reverse_key(
        unsafe { &(*ip).src_addr },
        sport,
        unsafe { &(*ip).dst_addr },
        dport,
        proto,
    ) else {
        return crate::drop(event::DROP_TOO_BIG);
    };
    // The rewritten packet's addresses, kept in the key (reversed) while the frame changes.
    let (src, dst) = (&key.dst, &key.src);
    let mut delta = 0;
    // What the sender sent: (src, sport, dst, dport).
    let (osrc, osport, odst, odport) = if from_client {
        // SAFETY: map value pointer, read in place.
        match unsafe { REV_FLOWS.get(key) } {
            Some(r) => (&r.client_addr, r.client_port, &r.vip_addr, r.vip_port),
            None => return crate::drop(event::DROP_TOO_BIG),
        }
    } else {
        // SAFETY: map value pointer, read in place.
        match unsafe { FLOWS.get(key) } {
            Some(f) => {
                delta = cookie_delta(f);
                (&f.origin_addr, f.origin_port, &f.snat_addr, f.snat_port)
            }
            None => return crate::drop(event::DROP_TOO_BIG),
        }
    };
    // Restore the quoted header where it is (the rewrite took one from the hop limit).
    // SAFETY: bounds-checked above; no packet pointer is used after adjust_head below.
    unsafe {
        (*ip).hop_limit = (*ip).hop_limit.wrapping_add(1);
        if proto == IPPROTO_UDP {
            // The UDP checksum is inside the quote: back to what the sender computed.
            let [l0, l1, c0, c1] = (*l4).seq;
            let mut c = csum::replace128(u16::from_ne_bytes([c0, c1]), src, osrc);
            c = csum::replace128(c, dst, odst);
            c = csum::replace16(c, sport, osport);
            c = csum::replace16(c, dport, odport);
            let c = c.to_ne_bytes();
            (*l4).seq = [l0, l1, c[0], c[1]];
        } else {
            (*l4).seq = u32::from_be_bytes((*l4).seq)
                .wrapping_add(delta)
                .to_be_bytes();
        }
        (*ip).src_addr = *osrc;
        (*ip).dst_addr = *odst;
        (*l4).sport = osport.to_ne_bytes();
        (*l4).dport = odport.to_ne_bytes();
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return crate::drop(event::DROP_TOO_BIG);
    };
    // SAFETY: bounds-checked above.
    let (peer_mac, our_mac) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    // Room in front for a new IPv6 + ICMPv6 header: the old IPv6 header then sits where
    // the quote goes. Then cut the frame after 8 bytes of the transport header.
    let grow = (Ipv6Hdr::LEN + 8) as i32;
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return crate::drop(event::DROP_TOO_BIG);
    }
    let want = ICMP_OFF + TOO_BIG_ICMP_LEN;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "frame lengths fit in i32"
    )]
    let shrink = want as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: ctx is this program's context; shrink <= 0 (the packet was too big).
    if shrink > 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        return crate::drop(event::DROP_TOO_BIG);
    }
    let (Some(eth), Some(ip), Some(icmp), Some(body)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<IcmpHdr>(ctx, ICMP_OFF),
        ptr_at::<[u8; TOO_BIG_ICMP_LEN]>(ctx, ICMP_OFF),
    ) else {
        return crate::drop(event::DROP_TOO_BIG);
    };
    // SAFETY: all bounds-checked above (after both adjustments).
    unsafe {
        (*eth).dst_addr = peer_mac;
        (*eth).src_addr = our_mac;
        (*eth).ether_type = ETH_P_IPV6.to_be();
        #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
        let len = TOO_BIG_ICMP_LEN as u16;
        (*ip).vcf = [0x60, 0, 0, 0];
        (*ip).payload_len = len.to_be_bytes();
        (*ip).next_hdr = IPPROTO_ICMPV6;
        (*ip).hop_limit = HOP_LIMIT;
        (*ip).src_addr = *odst;
        (*ip).dst_addr = *osrc;
        (*icmp).kind = ICMPV6_PKT_TOOBIG;
        (*icmp).code = 0;
        (*icmp).check = [0; 2];
        (*icmp).rest = u32::from(mtu.max(IPV6_MIN_MTU)).to_be_bytes();
        // Pseudo-header (RFC 8200 §8.1): addresses, length, next header 58; then the message.
        let mut sum = sum_words::<16>((&raw const (*ip).src_addr).cast(), 0);
        sum += u32::from(len.to_be()) + u32::from(u16::from(IPPROTO_ICMPV6).to_be());
        sum = sum_words::<{ TOO_BIG_ICMP_LEN / 2 }>(body.cast(), sum);
        (*icmp).check = fold(sum).to_ne_bytes();
    }
    verdict(event::ICMP_FRAG_NEEDED_SENT, xdp_action::XDP_TX)
}

//! NAT64: IPv6 clients of an IPv6 VIP served by IPv4 origins, with stateless IP/ICMP
//! translation (RFC 7915) on top of the NAT the flow tables already do. Two programs of
//! their own, tail-called, so that no other program's verification pays for them:
//!
//! ```text
//! lb_v6, lb_v6_udp: the client's packet, rewritten to SNAT(v4) -> origin(v4) with both
//!   addresses IPv4-mapped, asks for DO_TO_V4 -> lb_to_v4: IPv6 header -> IPv4 header
//!   (§5.1), forward; too big for the IPv4 link: back to IPv6, "packet too big" to the
//!   client with the MTU + 20 (icmp6::too_big)
//! lb_xdp, lb_udp: an origin's reply to an IPv6 client asks for DO_TO_V6 -> lb_to_v6:
//!   IPv4 header -> IPv6 header (§4.1), NAT to VIP(v6) -> client(v6), forward; too big
//!   for the IPv6 link: the origin's packet restored, "fragmentation needed" with the
//!   MTU - 20 (icmp::frag_needed)
//! ICMP errors about translated flows: ICMPv4 from the origin side -> ICMPv6 to the client
//!   (§4.2), ICMPv6 from the client side -> ICMPv4 to the origin (§5.2), quotes rebuilt
//!   from the flow tables
//! ```
//!
//! Checksums need no full recompute: `::ffff:0:0/96` sums to 0xffff, one's-complement
//! zero, so a TCP or UDP checksum over an IPv6 pseudo-header with IPv4-mapped addresses is
//! the checksum over the IPv4 pseudo-header of the embedded addresses (the length and
//! protocol words sum alike). The NAT rewrite runs in the client's family with the flow's
//! mapped addresses, and the header translation only swaps the IP header.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_get_prandom_u32, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    event, is_v4_mapped, v4_mapped, FlowKey, CT_COOKIE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    csum,
    edge::DO_TOO_BIG,
    family::{copy16, fold, sum_words, v4, Family, ETH_P_IP, ETH_P_IPV6, V4, V6},
    forward::forward,
    icmp, icmp6,
    maps::{FLOWS, ORIGIN_NH, REV_FLOWS, SCRATCH},
    nat::{rewrite, rewrite_udp, SeqShift, NO_SHIFT},
    parse::ptr_at,
    stats::{count, drop, now_secs, pass},
};

/// Request: translate the rewritten IPv6 packet in the context (IPv4-mapped addresses) to
/// IPv4 and forward it (`lb_to_v4`), or the ICMPv6 error in it to ICMPv4.
pub const DO_TO_V4: u32 = 0x0100_0000;
/// Request: NAT the IPv4 origin's packet in the context back to its IPv6 client, in IPv6
/// (`lb_to_v6`), or the ICMP error in it to ICMPv6.
pub const DO_TO_V6: u32 = 0x0200_0000;

/// Translated IPv4 packets up to this size leave DF clear, so an IPv4 link narrower than
/// IPv6's minimum MTU fragments them (RFC 7915 §5.1).
const DF_MAX_CLEAR: u16 = 1260;
const IP_DF: u8 = 0x40;
/// Our header's size difference: IPv6 40 bytes, IPv4 20.
const DIFF: u16 = (Ipv6Hdr::LEN - Ipv4Hdr::LEN) as u16;
/// The smallest MTU every IPv6 link has (RFC 8200 §5).
const IPV6_MIN_MTU: u16 = 1280;

/// An error message we build: outer IP header, ICMP header, quoted IP header, 8 bytes of
/// the quoted transport header.
const ERR4_LEN: usize = EthHdr::LEN + Ipv4Hdr::LEN + 8 + Ipv4Hdr::LEN + 8;
const ERR6_LEN: usize = EthHdr::LEN + Ipv6Hdr::LEN + 8 + Ipv6Hdr::LEN + 8;
/// The ICMPv6 message of `ERR6_LEN` (header, quote): what its checksum covers after the
/// pseudo-header.
const ICMP6_BODY: usize = 8 + Ipv6Hdr::LEN + 8;
const ICMP4_BODY: usize = 8 + Ipv4Hdr::LEN + 8;

/// Offsets in a frame that holds an ICMP error over IPv4 / IPv6 (both in the input, with
/// the quote's transport header at `L4Q_*`, and in what we build).
const ICMP4_OFF: usize = EthHdr::LEN + Ipv4Hdr::LEN;
const ICMP6_OFF: usize = EthHdr::LEN + Ipv6Hdr::LEN;
const L4Q4: usize = ICMP4_OFF + 8 + Ipv4Hdr::LEN;
const L4Q6: usize = ICMP6_OFF + 8 + Ipv6Hdr::LEN;

/// The ICMP header (type, code, checksum, the 4 bytes that depend on the type).
#[repr(C)]
struct Icmp {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

/// The first 8 bytes of a quoted transport header: ports, then the TCP sequence number or
/// the UDP length and checksum.
#[repr(C)]
struct Ports {
    sport: [u8; 2],
    dport: [u8; 2],
    word: [u8; 4],
}

/// `forward`, or, in an IPv6 program, a request for `lb_to_v4` when the destination (the
/// flow's origin, `origin_id`) is IPv4: the packet was rewritten with the flow's
/// IPv4-mapped addresses and only its IP header is left to translate.
#[inline(always)]
pub fn forward_or_to_v4<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    nh: *mut lb_common::NextHop,
    origin: &[u8; 16],
    origin_id: u32,
    now: u32,
) -> Result<u32, u32> {
    if F::V6 && is_v4_mapped(origin) {
        if let Some(sc) = SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch entry, read by `lb_to_v4` in this same run.
            unsafe { (*sc).xlat_origin = origin_id };
        }
        return Err(DO_TO_V4);
    }
    forward::<F>(ctx, ip, nh, now)
}

/// `lb_to_v4`'s body (see the module docs).
#[inline(always)]
pub fn to_v4(ctx: &XdpContext) -> u32 {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return drop(event::DROP_XLAT);
    };
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*ip).next_hdr } == IPPROTO_ICMPV6 {
        return icmp6_to_4(ctx);
    }
    let Some(df) = header_to_v4(ctx) else {
        return drop(event::DROP_XLAT);
    };
    count(event::XLAT_6TO4);
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return drop(event::DROP_XLAT);
    };
    let origin = SCRATCH.get_ptr(0).map_or(u32::MAX, |sc| {
        // SAFETY: this CPU's scratch entry, written by the caller of the tail call.
        unsafe { (*sc).xlat_origin }
    });
    let (nh, now) = match ORIGIN_NH.get_ptr_mut(origin) {
        // SAFETY: a live map value; the field's address, no read.
        Some(o) => (unsafe { &raw mut (*o).nh }, now_secs()),
        None => (core::ptr::null_mut(), 0),
    };
    match forward::<V4>(ctx, ip, nh, now) {
        Ok(v) => v,
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        Err(v) if v & DO_TOO_BIG != 0 => {
            if !df {
                // The stack fragments it, as an IPv4 router would (RFC 7915 §5.1).
                return pass(event::PASS_TOO_BIG_NO_DF);
            }
            // Back to the client's family, rewritten: too_big restores the client's packet
            // from the flow tables and tells the client the IPv6 size that fits.
            if header_to_v6(ctx).is_none() {
                return drop(event::DROP_TOO_BIG);
            }
            icmp6::too_big(ctx, (v as u16).saturating_add(DIFF))
        }
        Err(v) => v,
    }
}

/// `lb_to_v6`'s body (see the module docs).
#[inline(always)]
pub fn to_v6(ctx: &XdpContext) -> u32 {
    let (Some(ip), Some(ports), Some(sc)) = (
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Ports>(ctx, V4::L4_OFF),
        SCRATCH.get_ptr_mut(0),
    ) else {
        return drop(event::DROP_XLAT);
    };
    // SAFETY: bounds-checked by ptr_at.
    let (proto, frags, src, dst) =
        unsafe { ((*ip).proto, (*ip).frags, (*ip).src_addr, (*ip).dst_addr) };
    if proto == IPPROTO_ICMP {
        return icmp4_to_6(ctx);
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return drop(event::DROP_XLAT);
    }
    // SAFETY: this CPU's scratch entry; `xkey` and `xsave` are this module's. The frame's
    // first 42 bytes (Ethernet, IPv4, 8 bytes of transport) bounds-checked by `ports`.
    let key: &FlowKey = unsafe {
        (*sc).xkey = FlowKey {
            src: v4_mapped(src),
            dst: v4_mapped(dst),
            sport: u16::from_ne_bytes((*ports).sport),
            dport: u16::from_ne_bytes((*ports).dport),
            proto,
            _pad: [0; 3],
        };
        if let Some(head) = ptr_at::<[u16; 21]>(ctx, 0) {
            (*sc).xsave = *head;
        }
        &(*sc).xkey
    };
    let Some(r) = REV_FLOWS.get_ptr_mut(key) else {
        return drop(event::DROP_XLAT);
    };
    if header_to_v6(ctx).is_none() {
        return drop(event::DROP_XLAT);
    }
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return drop(event::DROP_XLAT);
    };
    // SAFETY: a live map value, read in place.
    let (vip, vport, client, cport, flags, delta) = unsafe {
        (
            &(*r).vip_addr,
            (*r).vip_port,
            &(*r).client_addr,
            (*r).client_port,
            (*r).flags,
            (*r).seq_delta,
        )
    };
    if proto == IPPROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, V6::L4_OFF) else {
            return drop(event::DROP_XLAT);
        };
        let shift = if flags & CT_COOKIE != 0 {
            SeqShift {
                seq: 0u32.wrapping_sub(delta),
                ack: 0,
            }
        } else {
            NO_SHIFT
        };
        rewrite::<V6>(ip, tcp, vip, vport, client, cport, shift);
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, V6::L4_OFF) else {
            return drop(event::DROP_XLAT);
        };
        // SAFETY: bounds-checked by ptr_at.
        if unsafe { (*udp).check } == [0, 0] {
            // IPv6 has no checksum-less UDP (RFC 8200 §8.1), and computing one means
            // reading the whole payload: Linux origins always send one.
            return drop(event::DROP_XLAT);
        }
        rewrite_udp::<V6>(ip, udp, vip, vport, client, cport);
    }
    count(event::XLAT_4TO6);
    // SAFETY: a live map value; the field's address, no read.
    match forward::<V6>(ctx, ip, unsafe { &raw mut (*r).nh }, now_secs()) {
        Ok(v) => v,
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        Err(v) if v & DO_TOO_BIG != 0 => {
            if frags[0] & IP_DF == 0 {
                // It would need IPv6 fragments (RFC 7915 §4.1), which we do not make.
                return drop(event::DROP_XLAT);
            }
            // The origin's packet as it came, then "fragmentation needed" to the origin.
            // SAFETY: ctx is this program's context.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, DIFF.into()) } != 0 {
                return drop(event::DROP_TOO_BIG);
            }
            let Some(head) = ptr_at::<[u16; 21]>(ctx, 0) else {
                return drop(event::DROP_TOO_BIG);
            };
            // SAFETY: bounds-checked by ptr_at; saved above in this run.
            unsafe { *head = (*sc).xsave };
            icmp::frag_needed(ctx, (v as u16).saturating_sub(DIFF))
        }
        Err(v) => v,
    }
}

/// The IPv6 header in the context, with IPv4-mapped addresses, becomes an IPv4 header (RFC
/// 7915 §5.1: TOS from the traffic class, TTL from the hop limit, DF above 1260 bytes). The
/// transport checksum stays valid (see the module docs). `Some(df)`, or `None` if the
/// addresses are not IPv4-mapped or the frame cannot change.
#[inline(always)]
fn header_to_v4(ctx: &XdpContext) -> Option<bool> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by ptr_at.
    let (dmac, smac, vcf, plen, proto, hop, src, dst) = unsafe {
        (
            (*eth).dst_addr,
            (*eth).src_addr,
            (*ip).vcf,
            u16::from_be_bytes((*ip).payload_len),
            (*ip).next_hdr,
            (*ip).hop_limit,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    if !is_v4_mapped(&src) || !is_v4_mapped(&dst) {
        return None;
    }
    let len = plen.checked_add(Ipv4Hdr::LEN as u16)?;
    let df = len > DF_MAX_CLEAR;
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, DIFF.into()) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by ptr_at (after the adjustment).
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
        (*eth).ether_type = ETH_P_IP.to_be();
        (*ip).vihl = 0x45;
        (*ip).tos = (vcf[0] << 4) | (vcf[1] >> 4);
        (*ip).tot_len = len.to_be_bytes();
        // An identification only where a router may fragment (RFC 6864 §4.1).
        #[expect(clippy::cast_possible_truncation, reason = "16 random bits")]
        let id = if df { 0 } else { bpf_get_prandom_u32() as u16 };
        (*ip).id = id.to_ne_bytes();
        (*ip).frags = [if df { IP_DF } else { 0 }, 0];
        (*ip).ttl = hop;
        (*ip).proto = proto;
        (*ip).check = [0, 0];
        (*ip).src_addr = v4(&src);
        (*ip).dst_addr = v4(&dst);
        (*ip).check = fold(sum_words::<10>(ip.cast(), 0)).to_ne_bytes();
    }
    Some(df)
}

/// The IPv4 header in the context (no options) becomes an IPv6 header with the same
/// addresses IPv4-mapped (RFC 7915 §4.1: traffic class from the TOS, hop limit from the
/// TTL, flow label 0). The transport checksum stays valid.
#[inline(always)]
fn header_to_v6(ctx: &XdpContext) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by ptr_at.
    let (dmac, smac, tos, len, ttl, proto, src, dst) = unsafe {
        (
            (*eth).dst_addr,
            (*eth).src_addr,
            (*ip).tos,
            u16::from_be_bytes((*ip).tot_len),
            (*ip).ttl,
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let plen = len.checked_sub(Ipv4Hdr::LEN as u16)?;
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(DIFF)) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN)?;
    // SAFETY: bounds-checked by ptr_at (after the adjustment).
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
        (*eth).ether_type = ETH_P_IPV6.to_be();
        (*ip).vcf = [0x60 | (tos >> 4), tos << 4, 0, 0];
        (*ip).payload_len = plen.to_be_bytes();
        (*ip).next_hdr = proto;
        (*ip).hop_limit = ttl;
        (*ip).src_addr = v4_mapped(src);
        (*ip).dst_addr = v4_mapped(dst);
    }
    Some(())
}

/// ICMPv4 error type and code -> ICMPv6 (RFC 7915 §4.2), with the 4 bytes that follow the
/// checksum; `None`: not translated (dropped).
#[inline(always)]
fn icmp_type_4to6(kind: u8, code: u8, rest: [u8; 4]) -> Option<(u8, u8, [u8; 4])> {
    match (kind, code) {
        // Destination unreachable.
        (3, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => Some((1, 0, [0; 4])),
        (3, 3) => Some((1, 4, [0; 4])),
        (3, 9 | 10 | 13 | 15) => Some((1, 1, [0; 4])),
        // Protocol unreachable: a parameter problem pointing at the next-header field.
        (3, 2) => Some((4, 1, [0, 0, 0, 6])),
        // Fragmentation needed: "packet too big" with the MTU grown by the header
        // difference (a router that gives no MTU, RFC 1191's old ones: the IPv6 minimum).
        (3, 4) => {
            let mtu = u16::from_be_bytes([rest[2], rest[3]]);
            let mtu = if mtu == 0 {
                IPV6_MIN_MTU
            } else {
                mtu.saturating_add(DIFF).max(IPV6_MIN_MTU)
            };
            let m = u32::from(mtu).to_be_bytes();
            Some((2, 0, m))
        }
        // Time exceeded: same codes.
        (11, 0 | 1) => Some((3, code, [0; 4])),
        _ => None,
    }
}

/// ICMPv6 error type and code -> ICMPv4 (RFC 7915 §5.2); `None`: not translated.
#[inline(always)]
fn icmp_type_6to4(kind: u8, code: u8, rest: [u8; 4]) -> Option<(u8, u8, [u8; 4])> {
    match (kind, code) {
        (1, 0 | 2 | 3) => Some((3, 1, [0; 4])),
        (1, 1) => Some((3, 10, [0; 4])),
        (1, 4) => Some((3, 3, [0; 4])),
        (2, _) => {
            let mtu = u32::from_be_bytes(rest).saturating_sub(u32::from(DIFF));
            #[expect(clippy::cast_possible_truncation, reason = "clamped to 16 bits")]
            let m = (mtu.min(0xffff) as u16).to_be_bytes();
            Some((3, 4, [0, 0, m[0], m[1]]))
        }
        (3, 0 | 1) => Some((11, code, [0; 4])),
        (4, 1) => Some((3, 2, [0; 4])),
        _ => None,
    }
}

/// An ICMPv4 error from the origin side about a translated flow (`icmp::error` found the
/// flow): rebuilt as an ICMPv6 error from the VIP to the client, quoting the client's packet
/// as the client sent it (its IPv6 header and 8 bytes of transport, from the flow tables),
/// and forwarded.
#[inline(never)]
fn icmp4_to_6(ctx: &XdpContext) -> u32 {
    let (Some(eth), Some(ip), Some(ic), Some(inner), Some(q), Some(sc)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Icmp>(ctx, ICMP4_OFF),
        ptr_at::<Ipv4Hdr>(ctx, ICMP4_OFF + 8),
        ptr_at::<Ports>(ctx, L4Q4),
        SCRATCH.get_ptr_mut(0),
    ) else {
        return drop(event::DROP_XLAT);
    };
    // SAFETY: bounds-checked by ptr_at.
    let (dmac, smac, ttl, kind, code, rest, itos, ilen, ittl, iproto, isrc, idst) = unsafe {
        (
            (*eth).dst_addr,
            (*eth).src_addr,
            (*ip).ttl,
            (*ic).kind,
            (*ic).code,
            (*ic).rest,
            (*inner).tos,
            u16::from_be_bytes((*inner).tot_len),
            (*inner).ttl,
            (*inner).proto,
            (*inner).src_addr,
            (*inner).dst_addr,
        )
    };
    let Some((kind, code, rest)) = icmp_type_4to6(kind, code, rest) else {
        return drop(event::DROP_XLAT);
    };
    if ttl <= 1 {
        return drop(event::DROP_TTL);
    }
    // The quoted packet went SNAT -> origin: the reverse entry is keyed by its reverse.
    // SAFETY: this CPU's scratch entry; bounds-checked by ptr_at.
    let key: &FlowKey = unsafe {
        (*sc).xkey = FlowKey {
            src: v4_mapped(idst),
            dst: v4_mapped(isrc),
            sport: u16::from_ne_bytes((*q).dport),
            dport: u16::from_ne_bytes((*q).sport),
            proto: iproto,
            _pad: [0; 3],
        };
        &(*sc).xkey
    };
    let Some(r) = REV_FLOWS.get_ptr(key) else {
        return drop(event::DROP_XLAT);
    };
    // Room for the longer headers in front (the quote's transport bytes stay where they
    // are), and the rest cut off.
    if !resize(ctx, -(2 * i32::from(DIFF)), ERR6_LEN) {
        return drop(event::DROP_XLAT);
    }
    let (Some(eth), Some(ip), Some(ic), Some(inner), Some(q), Some(body)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Icmp>(ctx, ICMP6_OFF),
        ptr_at::<Ipv6Hdr>(ctx, ICMP6_OFF + 8),
        ptr_at::<Ports>(ctx, L4Q6),
        ptr_at::<[u8; ICMP6_BODY]>(ctx, ICMP6_OFF),
    ) else {
        return drop(event::DROP_XLAT);
    };
    // SAFETY: bounds-checked by ptr_at; `r` a live map value, read in place.
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
        (*eth).ether_type = ETH_P_IPV6.to_be();
        (*ip).vcf = [0x60, 0, 0, 0];
        #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
        let len = ICMP6_BODY as u16;
        (*ip).payload_len = len.to_be_bytes();
        (*ip).next_hdr = IPPROTO_ICMPV6;
        (*ip).hop_limit = ttl - 1;
        copy16(
            (&raw const (*r).vip_addr).cast(),
            (&raw mut (*ip).src_addr).cast(),
        );
        copy16(
            (&raw const (*r).client_addr).cast(),
            (&raw mut (*ip).dst_addr).cast(),
        );
        (*ic).kind = kind;
        (*ic).code = code;
        (*ic).check = [0, 0];
        (*ic).rest = rest;
        (*inner).vcf = [0x60 | (itos >> 4), itos << 4, 0, 0];
        (*inner).payload_len = ilen.saturating_sub(Ipv4Hdr::LEN as u16).to_be_bytes();
        (*inner).next_hdr = iproto;
        (*inner).hop_limit = ittl;
        copy16(
            (&raw const (*r).client_addr).cast(),
            (&raw mut (*inner).src_addr).cast(),
        );
        copy16(
            (&raw const (*r).vip_addr).cast(),
            (&raw mut (*inner).dst_addr).cast(),
        );
        let (sport, dport) = (
            u16::from_ne_bytes((*q).sport),
            u16::from_ne_bytes((*q).dport),
        );
        (*q).sport = (*r).client_port.to_ne_bytes();
        (*q).dport = (*r).vip_port.to_ne_bytes();
        if iproto == IPPROTO_UDP {
            // The quoted UDP checksum, back to what the client computed.
            let [l0, l1, c0, c1] = (*q).word;
            let mut c = u16::from_ne_bytes([c0, c1]);
            if c != 0 {
                c = csum::replace128(c, &v4_mapped(isrc), &(*r).client_addr);
                c = csum::replace128(c, &v4_mapped(idst), &(*r).vip_addr);
                c = csum::replace16(c, sport, (*r).client_port);
                c = csum::replace16(c, dport, (*r).vip_port);
            }
            let c = c.to_ne_bytes();
            (*q).word = [l0, l1, c[0], c[1]];
        }
        // Pseudo-header (RFC 4443 §2.3), then the message.
        let mut sum = sum_words::<16>((&raw const (*ip).src_addr).cast(), 0);
        sum += u32::from(len.to_be()) + u32::from(u16::from(IPPROTO_ICMPV6).to_be());
        sum = sum_words::<{ ICMP6_BODY / 2 }>(body.cast(), sum);
        (*ic).check = fold(sum).to_ne_bytes();
    }
    count(event::ICMP_FROM_ORIGIN);
    count(event::XLAT_4TO6);
    match forward::<V6>(ctx, ip, core::ptr::null_mut(), 0) {
        Ok(v) | Err(v) if v <= xdp_action::XDP_REDIRECT => v,
        // An error about an error is never sent (RFC 4443 §2.4).
        Ok(_) | Err(_) => drop(event::DROP_TOO_BIG),
    }
}

/// An ICMPv6 error from the client side about a translated flow (`icmp6::error` found the
/// flow): rebuilt as an ICMPv4 error from the SNAT address to the origin, quoting the
/// origin's packet as it sent it (from the flow tables), and forwarded.
#[inline(never)]
fn icmp6_to_4(ctx: &XdpContext) -> u32 {
    let (Some(eth), Some(ip), Some(ic), Some(inner), Some(q), Some(sc)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Icmp>(ctx, ICMP6_OFF),
        ptr_at::<Ipv6Hdr>(ctx, ICMP6_OFF + 8),
        ptr_at::<Ports>(ctx, L4Q6),
        SCRATCH.get_ptr_mut(0),
    ) else {
        return drop(event::DROP_XLAT);
    };
    // SAFETY: bounds-checked by ptr_at.
    let (dmac, smac, hop, kind, code, rest, ivcf, iplen, ihop, iproto) = unsafe {
        (
            (*eth).dst_addr,
            (*eth).src_addr,
            (*ip).hop_limit,
            (*ic).kind,
            (*ic).code,
            (*ic).rest,
            (*inner).vcf,
            u16::from_be_bytes((*inner).payload_len),
            (*inner).hop_limit,
            (*inner).next_hdr,
        )
    };
    let Some((kind, code, rest)) = icmp_type_6to4(kind, code, rest) else {
        return drop(event::DROP_XLAT);
    };
    if hop <= 1 {
        return drop(event::DROP_TTL);
    }
    // The quoted packet went VIP -> client: the flow is keyed by its reverse.
    // SAFETY: this CPU's scratch entry; bounds-checked by ptr_at.
    let key: &FlowKey = unsafe {
        copy16(
            (&raw const (*inner).dst_addr).cast(),
            (&raw mut (*sc).xkey.src).cast(),
        );
        copy16(
            (&raw const (*inner).src_addr).cast(),
            (&raw mut (*sc).xkey.dst).cast(),
        );
        (*sc).xkey.sport = u16::from_ne_bytes((*q).dport);
        (*sc).xkey.dport = u16::from_ne_bytes((*q).sport);
        (*sc).xkey.proto = iproto;
        (*sc).xkey._pad = [0; 3];
        &(*sc).xkey
    };
    // SAFETY: a map value, read in place.
    let Some(f) = (unsafe { FLOWS.get(key) }) else {
        return drop(event::DROP_XLAT);
    };
    let delta = icmp::cookie_delta(f);
    if !resize(ctx, 2 * i32::from(DIFF), ERR4_LEN) {
        return drop(event::DROP_XLAT);
    }
    let (Some(eth), Some(ip), Some(ic), Some(inner), Some(q), Some(body)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<Icmp>(ctx, ICMP4_OFF),
        ptr_at::<Ipv4Hdr>(ctx, ICMP4_OFF + 8),
        ptr_at::<Ports>(ctx, L4Q4),
        ptr_at::<[u8; ICMP4_BODY]>(ctx, ICMP4_OFF),
    ) else {
        return drop(event::DROP_XLAT);
    };
    let (origin, snat) = (v4(&f.origin_addr), v4(&f.snat_addr));
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
        (*eth).ether_type = ETH_P_IP.to_be();
        (*inner).vihl = 0x45;
        (*inner).tos = (ivcf[0] << 4) | (ivcf[1] >> 4);
        (*inner).tot_len = iplen.saturating_add(Ipv4Hdr::LEN as u16).to_be_bytes();
        (*inner).id = [0, 0];
        (*inner).frags = [IP_DF, 0];
        (*inner).ttl = ihop;
        (*inner).proto = iproto;
        (*inner).check = [0, 0];
        (*inner).src_addr = origin;
        (*inner).dst_addr = snat;
        (*inner).check = fold(sum_words::<10>(inner.cast(), 0)).to_ne_bytes();
        let (sport, dport) = (
            u16::from_ne_bytes((*q).sport),
            u16::from_ne_bytes((*q).dport),
        );
        (*q).sport = f.origin_port.to_ne_bytes();
        (*q).dport = f.snat_port.to_ne_bytes();
        if iproto == IPPROTO_UDP {
            let [l0, l1, c0, c1] = (*q).word;
            let mut c = u16::from_ne_bytes([c0, c1]);
            if c != 0 {
                // The quote's old addresses are the reverse entry's VIP and client, which
                // the flow key holds reversed.
                c = csum::replace128(c, &key.dst, &f.origin_addr);
                c = csum::replace128(c, &key.src, &f.snat_addr);
                c = csum::replace16(c, sport, f.origin_port);
                c = csum::replace16(c, dport, f.snat_port);
            }
            let c = c.to_ne_bytes();
            (*q).word = [l0, l1, c[0], c[1]];
        } else {
            // Back into the origin's numbering (SYN-cookie flows).
            (*q).word = u32::from_be_bytes((*q).word)
                .wrapping_add(delta)
                .to_be_bytes();
        }
        (*ic).kind = kind;
        (*ic).code = code;
        (*ic).check = [0, 0];
        (*ic).rest = rest;
        (*ic).check = fold(sum_words::<{ ICMP4_BODY / 2 }>(body.cast(), 0)).to_ne_bytes();
        (*ip).vihl = 0x45;
        (*ip).tos = 0xc0;
        #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
        let len = (ERR4_LEN - EthHdr::LEN) as u16;
        (*ip).tot_len = len.to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0, 0];
        (*ip).ttl = hop - 1;
        (*ip).proto = IPPROTO_ICMP;
        (*ip).check = [0, 0];
        (*ip).src_addr = snat;
        (*ip).dst_addr = origin;
        (*ip).check = fold(sum_words::<10>(ip.cast(), 0)).to_ne_bytes();
    }
    count(event::ICMP_FROM_CLIENT);
    count(event::XLAT_6TO4);
    match forward::<V4>(ctx, ip, core::ptr::null_mut(), 0) {
        Ok(v) | Err(v) if v <= xdp_action::XDP_REDIRECT => v,
        Ok(_) | Err(_) => drop(event::DROP_TOO_BIG),
    }
}

/// Moves the frame's start by `head` bytes (negative: room in front), then cuts it to
/// `len` bytes; false if it cannot.
#[inline(always)]
fn resize(ctx: &XdpContext, head: i32, len: usize) -> bool {
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, head) } != 0 {
        return false;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "frame lengths fit in i32"
    )]
    let shrink = len as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: ctx is this program's context; shrink <= 0 is checked.
    shrink <= 0 && (shrink == 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } == 0)
}

//! IPv6: the entry of `lb_v6`, tail-called by `lb_xdp` for every IPv6 frame. It finds the
//! transport header behind the extension headers, then runs the same TCP path as IPv4
//! (`tcp_packet::<V6>`), tail-calls `lb_v6_udp` for UDP, and handles ICMPv6 (`icmp6`).
//!
//! ```text
//! IPv6 -> src or dst IPv4-mapped (::ffff:0:0/96, never on the wire, RFC 4291 §2.5.5.2): not ours
//!      -> walk at most MAX_EXT extension headers (within EXT_MAX_BYTES) to the transport
//!      -> ICMPv6 neighbour discovery / router messages (133-137): XDP_PASS, untouched
//!      -> neither a VIP nor a SNAT address: edge::not_ours (the host's, or no open router)
//!      -> AH, ESP, a routing header with segments left, too many or cut short: drop
//!         (DROP_EXT_HEADER); a fragment: drop (DROP_FRAGMENT), as for IPv4
//!      -> hop-by-hop, destination options, spent routing headers: removed (the load
//!         balancer is the packet's destination, as a proxy is: EXT_HEADERS_REMOVED)
//!      -> TCP: tcp_packet::<V6>; UDP: lb_v6_udp; ICMPv6: icmp6; else: drop for a VIP
//! ```

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    event, is_v4_mapped, FlowKey, Settings, VipKey, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    SETTINGS_F_READY,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr, udp::UdpHdr};

use crate::{
    edge::{self, DO_NOT_OURS},
    family::{Family, V6},
    icmp6, is_vip_addr,
    maps::{REV_FLOWS, SETTINGS, VIPS},
    parse::ptr_at,
    stats::{count, drop, pass},
    tcp_packet,
};

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (hop-by-hop, routing, destination options
/// twice, fragment: RFC 8200 §4.1's order has at most five).
const MAX_EXT: usize = 5;
/// Bytes of extension headers we remove at most (more is dropped, `DROP_EXT_HEADER`).
const EXT_MAX_BYTES: usize = 512;

/// Where the extension-header walk ended.
struct Walk {
    /// The transport protocol (or the header the walk stopped at).
    proto: u8,
    /// Offset of the transport header in the frame.
    off: usize,
    /// A fragment header was met: bit 0 = more fragments, the rest the offset (RFC 8200
    /// §4.5's 16-bit field); `u32::MAX` = none.
    frag: u32,
    /// An extension header we cannot pass (AH, ESP, routing with segments left, too many,
    /// too long, cut short).
    bad: bool,
}

/// Request from `packet`: tail-call `lb_v6_udp` (a UDP datagram to a SNAT address).
pub const DO_UDP: u32 = 0x0400_0000;
/// Request from `packet`: tail-call `lb_v6_udp` (a UDP datagram to a VIP address).
pub const DO_UDP_VIP: u32 = 0x0400_0001;

/// The program's body: a verdict, or a request for `lb_v6` (`DO_UDP`, `DO_UDP_VIP`) or
/// for `edge::finish::<V6>`. A subprogram, so that `lb_v6`'s own frame, under which
/// `finish` runs the ICMPv6 work, stays small (and the tail call is made from it).
#[inline(never)]
pub fn packet(ctx: &XdpContext) -> u32 {
    match try_packet(ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// What a UDP datagram becomes when `lb_v6_udp` is not there (an older agent filled the
/// slots): dropped to a VIP address, the host's otherwise.
#[inline(always)]
pub fn udp_missing(v: u32) -> u32 {
    other(v == DO_UDP_VIP)
}

#[inline(always)]
fn try_packet(ctx: &XdpContext) -> Result<u32, u32> {
    let settings: &Settings = match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_READY != 0 => s,
        _ => return Err(pass(event::PASS_NOT_READY)),
    };
    let found = prepare(ctx, settings)?;
    if found == NOT_OURS {
        // Called from here, not from `prepare`: the two frames would not fit under this one.
        return Err(edge::not_ours::<V6>(ctx, event::PASS_NOT_VIP));
    }
    #[expect(clippy::cast_possible_truncation, reason = "the low byte")]
    let (proto, to_vip, ext_len) = (found as u8, found & TO_VIP != 0, found >> 16);
    if ext_len != 0 {
        // Called from here, not from `prepare`: the two frames would not fit under this one.
        strip(ctx, ext_len as usize, proto)?;
        count(event::EXT_HEADERS_REMOVED);
    }
    // Packet pointers do not survive a call or adjust_head: derive them again.
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or_else(|| pass(event::PASS_MALFORMED))?;
    match proto {
        IPPROTO_TCP => tcp_packet::<V6>(ctx, ip, settings),
        IPPROTO_UDP => Err(if to_vip { DO_UDP_VIP } else { DO_UDP }),
        IPPROTO_ICMPV6 => Err(icmp6::handle(ctx, to_vip).unwrap_or_else(|| other(to_vip))),
        _ => Err(other(to_vip)),
    }
}

/// `prepare`'s answer: the packet is to a VIP address (else to a SNAT address).
const TO_VIP: u32 = 0x100;
/// `prepare`'s answer: neither to a VIP nor to a SNAT address (`edge::not_ours`).
const NOT_OURS: u32 = 0x200;

/// Everything before the transport: version, addresses, extension headers (removed when
/// allowed), neighbour discovery. `Ok`: `NOT_OURS`, or the transport protocol in the low byte,
/// `TO_VIP`, and in the high 16 bits the bytes of extension headers to remove (`strip`)
/// before the transport header sits at `V6::L4_OFF`. Its own subprogram, so the TCP path's
/// stack frame does not hold the walk's.
#[inline(never)]
fn prepare(ctx: &XdpContext, settings: &Settings) -> Result<u32, u32> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or_else(|| pass(event::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at. The addresses are read in place, not copied: the
    // byte-wise copies crowd the stack frame.
    let (vcf0, next, src, dst) = unsafe {
        (
            (*ip).vcf[0],
            (*ip).next_hdr,
            &(*ip).src_addr,
            &(*ip).dst_addr,
        )
    };
    if vcf0 >> 4 != 6 {
        return Err(pass(event::PASS_MALFORMED));
    }
    // IPv4-mapped addresses would alias IPv4 VIPs and flows in the tables.
    if is_v4_mapped(src) || is_v4_mapped(dst) {
        return Err(pass(event::PASS_NOT_VIP));
    }
    let w = walk(ctx, next);
    if w.proto == IPPROTO_ICMPV6 && !w.bad && w.frag == u32::MAX {
        // Four bytes (type, code, checksum) rather than one: the verifier loses the bound of
        // a one-byte check at a variable offset once LLVM rewrites it as `>=`.
        if let Some(t) = ptr_at::<[u8; 4]>(ctx, w.off) {
            // SAFETY: bounds checked by ptr_at.
            if (133..=137).contains(&unsafe { (*t)[0] }) {
                return Err(pass(event::PASS_ND));
            }
        }
    }
    let to_vip = is_vip_addr(*dst);
    let to_snat = !to_vip && settings.is_snat_v6(dst);
    if !to_vip && !to_snat {
        return Ok(NOT_OURS);
    }
    if w.bad {
        return Err(drop(event::DROP_EXT_HEADER));
    }
    if w.frag != u32::MAX {
        if to_vip {
            return Err(drop(event::DROP_FRAGMENT));
        }
        // The first fragment of an origin's UDP answer on one of our flows: dropped, as for
        // IPv4 (udp.rs), so the host's stack does not answer "port unreachable" for it.
        if w.frag & !1 == 0 && w.proto == IPPROTO_UDP && answer_on_our_flow(ctx, &w, src, dst) {
            return Err(drop(event::DROP_FRAGMENT));
        }
        return Err(DO_NOT_OURS);
    }
    if w.off != V6::L4_OFF {
        // Extension headers are removed only from packets that are ours to forward or
        // answer: a packet that ends up passed to the host must reach it as it came.
        if let Some(v) = not_to_strip(ctx, &w, src, dst, to_vip) {
            return v;
        }
    }
    // At most EXT_MAX_BYTES + 2048 (the walk stops past EXT_MAX_BYTES): fits 16 bits.
    #[expect(clippy::cast_possible_truncation, reason = "bounded by the walk")]
    let ext_len = (w.off - V6::L4_OFF) as u32;
    Ok(u32::from(w.proto) | if to_vip { TO_VIP } else { 0 } | ext_len << 16)
}

/// Anything we do not handle: dropped to a VIP address, the host's to a SNAT address.
#[inline(always)]
fn other(to_vip: bool) -> u32 {
    if to_vip {
        drop(event::DROP_VIP_OTHER_PROTO)
    } else {
        DO_NOT_OURS
    }
}

/// Walks the extension headers after the IPv6 header, whose next header is `next`.
#[inline(always)]
fn walk(ctx: &XdpContext, mut next: u8) -> Walk {
    let mut off = V6::L4_OFF;
    let mut frag = u32::MAX;
    let mut i = 0;
    while i < MAX_EXT {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT => {}
            // AH (51) and ESP (50) cover or hide the ports NAT rewrites; the rest is a
            // transport (or "no next header", 59, which nothing forwards either).
            50 | 51 => return bad(next, off),
            _ => {
                return Walk {
                    proto: next,
                    off,
                    frag,
                    bad: false,
                }
            }
        }
        if off > V6::L4_OFF + EXT_MAX_BYTES {
            return bad(next, off);
        }
        let Some(h) = ptr_at::<[u8; 4]>(ctx, off) else {
            return bad(next, off);
        };
        // SAFETY: bounds checked by ptr_at.
        let [nh, len, b2, b3] = unsafe { *h };
        if next == NEXTHDR_FRAGMENT {
            // Fragment offset (13 bits) and the M flag, as they sit in bytes 2-3.
            frag = u32::from(u16::from_be_bytes([b2, b3]) & 0xfff9);
            off += 8;
        } else {
            // A routing header with segments left (byte 3) asks us to route it on to the
            // next segment: a VIP does not.
            if next == NEXTHDR_ROUTING && b3 != 0 {
                return bad(next, off);
            }
            off += (usize::from(len) + 1) * 8;
        }
        next = nh;
        i += 1;
    }
    bad(next, off)
}

#[inline(always)]
fn bad(proto: u8, off: usize) -> Walk {
    Walk {
        proto,
        off,
        frag: u32::MAX,
        bad: true,
    }
}

/// Removes `len` bytes of extension headers between the IPv6 header and the transport
/// header `proto`: the Ethernet and IPv6 headers move forward over them, the payload length
/// shrinks and the next header names the transport. The transport checksum does not
/// change (its pseudo-header has the upper-layer length, RFC 8200 §8.1).
#[inline(never)]
fn strip(ctx: &XdpContext, len: usize, proto: u8) -> Result<(), u32> {
    if len == 0 || len > EXT_MAX_BYTES + 2048 {
        return Err(drop(event::DROP_EXT_HEADER));
    }
    let head = ptr_at::<[u8; EthHdr::LEN + Ipv6Hdr::LEN]>(ctx, 0)
        .ok_or_else(|| drop(event::DROP_EXT_HEADER))?;
    // SAFETY: bounds checked by ptr_at; copied before the head moves.
    let mut copy = unsafe { *head };
    #[expect(clippy::cast_possible_truncation, reason = "bounded above")]
    let len16 = len as u16;
    let plen = u16::from_be_bytes([copy[18], copy[19]]);
    if plen < len16 {
        return Err(drop(event::DROP_EXT_HEADER));
    }
    [copy[18], copy[19]] = (plen - len16).to_be_bytes();
    copy[20] = proto;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "bounded above"
    )]
    // SAFETY: ctx is this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, len as i32) } != 0 {
        return Err(drop(event::DROP_EXT_HEADER));
    }
    let head = ptr_at::<[u8; EthHdr::LEN + Ipv6Hdr::LEN]>(ctx, 0)
        .ok_or_else(|| drop(event::DROP_EXT_HEADER))?;
    // SAFETY: bounds checked by ptr_at (after the adjustment).
    unsafe { *head = copy };
    Ok(())
}

/// For a packet with extension headers (transport at `w.off`): `None` when it is ours to
/// forward or answer (the headers may go), else what becomes of it untouched, as the
/// paths behind would decide without the headers: TCP or UDP to a port no VIP or flow of
/// ours has is the host's (TCP) or dropped (UDP to a VIP address, as `datagram`); ICMPv6 to
/// a SNAT address, which may be the host's, is the host's (an error about one of our flows
/// that carries extension headers is not translated); anything else to a VIP address is
/// dropped, to a SNAT address the host's.
#[inline(always)]
fn not_to_strip(
    ctx: &XdpContext,
    w: &Walk,
    src: &[u8; 16],
    dst: &[u8; 16],
    to_vip: bool,
) -> Option<Result<u32, u32>> {
    if w.proto == IPPROTO_TCP || w.proto == IPPROTO_UDP {
        // The whole transport header must be there (TCP's 20 bytes with a sane data offset,
        // UDP's 8): else the paths behind drop it for a VIP (malformed) and pass it
        // otherwise.
        let whole = if w.proto == IPPROTO_TCP {
            // SAFETY: bounds checked by ptr_at; byte 12 holds the data offset.
            ptr_at::<[u8; 20]>(ctx, w.off).is_some_and(|t| unsafe { (*t)[12] } >> 4 >= 5)
        } else {
            ptr_at::<[u8; 8]>(ctx, w.off).is_some()
        };
        let (true, Some(ports)) = (whole, ptr_at::<[u8; 4]>(ctx, w.off)) else {
            return Some(if to_vip {
                Err(drop(event::DROP_EXT_HEADER))
            } else {
                Ok(NOT_OURS)
            });
        };
        // SAFETY: bounds checked by ptr_at.
        let [s0, s1, d0, d1] = unsafe { *ports };
        let (sport, dport) = (u16::from_ne_bytes([s0, s1]), u16::from_ne_bytes([d0, d1]));
        let ours = if to_vip {
            let vip_key = VipKey {
                addr: *dst,
                port: dport,
                proto: w.proto,
                _pad: 0,
            };
            VIPS.get_ptr(vip_key).is_some()
        } else {
            let key = FlowKey {
                src: *src,
                dst: *dst,
                sport,
                dport,
                proto: w.proto,
                _pad: [0; 3],
            };
            REV_FLOWS.get_ptr(&key).is_some()
        };
        return match (ours, w.proto == IPPROTO_TCP, to_vip) {
            (true, _, _) => None,
            (false, true, _) => Some(Ok(NOT_OURS)),
            (false, false, true) => Some(Err(drop(event::DROP_VIP_OTHER_PROTO))),
            (false, false, false) => Some(Err(DO_NOT_OURS)),
        };
    }
    if w.proto == IPPROTO_ICMPV6 && to_vip {
        // Answered, translated or dropped: never passed.
        return None;
    }
    Some(Err(other(to_vip)))
}

/// Is the first fragment's UDP header (at `w.off`) an answer on one of our flows?
#[inline(always)]
fn answer_on_our_flow(ctx: &XdpContext, w: &Walk, src: &[u8; 16], dst: &[u8; 16]) -> bool {
    let Some(udp) = ptr_at::<UdpHdr>(ctx, w.off) else {
        return false;
    };
    let key = FlowKey {
        src: *src,
        dst: *dst,
        // SAFETY: bounds checked by ptr_at.
        sport: u16::from_ne_bytes(unsafe { (*udp).src }),
        // SAFETY: as above.
        dport: u16::from_ne_bytes(unsafe { (*udp).dst }),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    REV_FLOWS.get_ptr(&key).is_some()
}

//! The NAT rewrite of TCP and UDP: addresses, ports, TTL and (for SYN-cookie flows) sequence
//! numbers, with incremental checksum updates (RFC 1624).

use network_types::{tcp::TcpHdr, udp::UdpHdr};

use crate::{csum, family::Family};

/// Sequence-number translation of a SYN-cookie flow: added to the segment's sequence and
/// acknowledgement numbers (0 = none).
#[derive(Clone, Copy)]
pub struct SeqShift {
    pub seq: u32,
    pub ack: u32,
}

pub const NO_SHIFT: SeqShift = SeqShift { seq: 0, ack: 0 };

/// Rewrites a TCP segment's source and destination (address and port), decrements the TTL
/// (the caller has refused TTL <= 1) and patches the checksums incrementally.
#[inline(always)]
pub fn rewrite<F: Family>(
    ip: *mut F::Ip,
    tcp: *mut TcpHdr,
    new_src: &[u8; 16],
    new_sport: u16,
    new_dst: &[u8; 16],
    new_dport: u16,
    shift: SeqShift,
) {
    // SAFETY: bounds-checked by the caller and valid (no adjust_head).
    unsafe {
        // The TCP checksum covers the pseudo-header addresses (RFC 793, RFC 8200 §8.1) and
        // the ports.
        let mut tc = F::rewrite(ip, new_src, new_dst, u16::from_ne_bytes((*tcp).check));
        let old_sport = u16::from_ne_bytes((*tcp).source);
        let old_dport = u16::from_ne_bytes((*tcp).dest);
        tc = csum::replace16(tc, old_sport, new_sport);
        tc = csum::replace16(tc, old_dport, new_dport);
        if shift.seq != 0 {
            let old = (*tcp).seq;
            let new = u32::from_be_bytes(old)
                .wrapping_add(shift.seq)
                .to_be_bytes();
            tc = csum::replace32(tc, old, new);
            (*tcp).seq = new;
        }
        if shift.ack != 0 {
            let old = (*tcp).ack_seq;
            let new = u32::from_be_bytes(old)
                .wrapping_add(shift.ack)
                .to_be_bytes();
            tc = csum::replace32(tc, old, new);
            (*tcp).ack_seq = new;
        }
        (*tcp).check = tc.to_ne_bytes();
        (*tcp).source = new_sport.to_ne_bytes();
        (*tcp).dest = new_dport.to_ne_bytes();
    }
}

/// The UDP checksum after the pseudo-header addresses and the ports changed (RFC 1624).
/// 0 means "no checksum" (RFC 768, IPv4) and stays 0; a computed 0 is sent as 0xffff.
#[inline(always)]
pub fn udp_check(
    check: u16,
    (old_src, old_dst): ([u8; 4], [u8; 4]),
    (src4, dst4): ([u8; 4], [u8; 4]),
    (old_sport, old_dport): (u16, u16),
    (sport, dport): (u16, u16),
) -> u16 {
    if check == 0 {
        return 0;
    }
    let mut c = csum::replace32(check, old_src, src4);
    c = csum::replace32(c, old_dst, dst4);
    c = csum::replace16(c, old_sport, sport);
    c = csum::replace16(c, old_dport, dport);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Rewrites a UDP datagram's source and destination (address and port), decrements the TTL
/// (the caller has refused TTL <= 1) and patches the checksums incrementally. An IPv4
/// checksum of 0 ("none", RFC 768) stays 0; IPv6 has none such (RFC 8200 §8.1: the caller
/// drops them).
#[inline(always)]
pub fn rewrite_udp<F: Family>(
    ip: *mut F::Ip,
    udp: *mut UdpHdr,
    new_src: &[u8; 16],
    new_sport: u16,
    new_dst: &[u8; 16],
    new_dport: u16,
) {
    // SAFETY: bounds-checked by the caller and valid (no adjust_head).
    unsafe {
        let old = u16::from_ne_bytes((*udp).check);
        let mut c = F::rewrite(ip, new_src, new_dst, old);
        c = csum::replace16(c, u16::from_ne_bytes((*udp).src), new_sport);
        c = csum::replace16(c, u16::from_ne_bytes((*udp).dst), new_dport);
        if old == 0 && !F::V6 {
            c = 0;
        } else if c == 0 {
            c = 0xffff;
        }
        (*udp).check = c.to_ne_bytes();
        (*udp).src = new_sport.to_ne_bytes();
        (*udp).dst = new_dport.to_ne_bytes();
    }
}

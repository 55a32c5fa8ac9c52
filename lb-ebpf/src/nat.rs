//! The NAT rewrite of TCP and UDP: addresses, ports, TTL and (for SYN-cookie flows) sequence
//! numbers, with incremental checksum updates (RFC 1624).

use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::csum;

/// Sequence-number translation of a SYN-cookie flow: added to the segment's sequence and
/// acknowledgement numbers (0 = none).
#[derive(Clone, Copy)]
pub struct SeqShift {
    pub seq: u32,
    pub ack: u32,
}

pub const NO_SHIFT: SeqShift = SeqShift { seq: 0, ack: 0 };

/// Rewrites the IPv4 addresses, decrements the TTL (the caller has refused TTL <= 1) and
/// patches the header checksum; returns the old (source, destination) for the transport
/// checksum, whose pseudo-header covers them.
#[inline(always)]
fn rewrite_ip(ip: *mut Ipv4Hdr, src4: [u8; 4], dst4: [u8; 4]) -> ([u8; 4], [u8; 4]) {
    // SAFETY: bounds-checked by the caller and valid (no adjust_head).
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
        (old_src, old_dst)
    }
}

/// The IPv4 address in an IPv4-mapped one.
#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// Rewrites a TCP segment's source and destination (address and port), decrements the TTL
/// (the caller has refused TTL <= 1) and patches both checksums incrementally. Addresses are
/// IPv4-mapped; their last four bytes are the IPv4 ones.
#[inline(always)]
pub fn rewrite(
    ip: *mut Ipv4Hdr,
    tcp: *mut TcpHdr,
    new_src: [u8; 16],
    new_sport: u16,
    new_dst: [u8; 16],
    new_dport: u16,
    shift: SeqShift,
) {
    let (src4, dst4) = (v4(&new_src), v4(&new_dst));
    let (old_src, old_dst) = rewrite_ip(ip, src4, dst4);
    // SAFETY: bounds-checked by the caller and valid (no adjust_head).
    unsafe {
        // The TCP checksum covers the pseudo-header addresses (RFC 793) and the ports.
        let old_sport = u16::from_ne_bytes((*tcp).source);
        let old_dport = u16::from_ne_bytes((*tcp).dest);
        let mut tc = u16::from_ne_bytes((*tcp).check);
        tc = csum::replace32(tc, old_src, src4);
        tc = csum::replace32(tc, old_dst, dst4);
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
/// (the caller has refused TTL <= 1) and patches both checksums incrementally.
#[inline(always)]
pub fn rewrite_udp(
    ip: *mut Ipv4Hdr,
    udp: *mut UdpHdr,
    new_src: [u8; 16],
    new_sport: u16,
    new_dst: [u8; 16],
    new_dport: u16,
) {
    let new = (v4(&new_src), v4(&new_dst));
    let old = rewrite_ip(ip, new.0, new.1);
    // SAFETY: bounds-checked by the caller and valid (no adjust_head).
    unsafe {
        let ports = (
            u16::from_ne_bytes((*udp).src),
            u16::from_ne_bytes((*udp).dst),
        );
        let c = udp_check(
            u16::from_ne_bytes((*udp).check),
            old,
            new,
            ports,
            (new_sport, new_dport),
        );
        (*udp).check = c.to_ne_bytes();
        (*udp).src = new_sport.to_ne_bytes();
        (*udp).dst = new_dport.to_ne_bytes();
    }
}

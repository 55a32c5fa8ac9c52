//! The NAT rewrite: addresses, ports, TTL and (for SYN-cookie flows) sequence numbers, with
//! incremental checksum updates (RFC 1624).

use network_types::{ip::Ipv4Hdr, tcp::TcpHdr};

use crate::csum;

/// Sequence-number translation of a SYN-cookie flow: added to the segment's sequence and
/// acknowledgement numbers (0 = none).
#[derive(Clone, Copy)]
pub struct SeqShift {
    pub seq: u32,
    pub ack: u32,
}

pub const NO_SHIFT: SeqShift = SeqShift { seq: 0, ack: 0 };

/// Rewrites source and destination (address and port), decrements the TTL (the caller has
/// refused TTL <= 1) and patches both checksums incrementally. Addresses are IPv4-mapped; their last four bytes are the IPv4 ones.
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
    let src4 = [new_src[12], new_src[13], new_src[14], new_src[15]];
    let dst4 = [new_dst[12], new_dst[13], new_dst[14], new_dst[15]];
    // SAFETY: both headers were bounds-checked by the caller and stay valid (no adjust_head).
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

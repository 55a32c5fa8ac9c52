//! Answers built in place from the frame that asked for them, sent back out of the
//! interface it came in on (XDP_TX).

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::parse::{ptr_at, RST, TCP_OFF};

/// Length of a bare RST: Ethernet, IPv4 without options, TCP without options.
const RST_LEN: usize = TCP_OFF + TcpHdr::LEN;

/// One's-complement sum of `N` 16-bit words at `p` (as they sit in memory).
#[inline(always)]
fn sum_words<const N: usize>(p: *const u8, mut acc: u32) -> u32 {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller bounds-checked N * 2 bytes at p.
        acc += u32::from(unsafe { p.add(i * 2).cast::<u16>().read_unaligned() });
        i += 1;
    }
    acc
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let v = !(s as u16);
    v
}

/// Turns the frame, a TCP segment with the ACK flag, into the RST its receiver would send
/// for an unacceptable ACK (RFC 793 §3.4: sequence number = the segment's ACK, no ACK
/// flag), addressed back to its sender. Returns XDP_TX, or XDP_DROP if the frame cannot be
/// reshaped.
#[inline(never)]
pub fn rst_back(ctx: &XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    if len > RST_LEN {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "frames are < 64 KiB"
        )]
        let shrink = -((len - RST_LEN) as i32);
        // SAFETY: shrinking the tail of the frame this program owns.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
            return xdp_action::XDP_DROP;
        }
    }
    let (Some(eth), Some(ip), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
        ptr_at::<TcpHdr>(ctx, TCP_OFF),
    ) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: all three headers bounds-checked just above.
    unsafe {
        let mac = (*eth).dst_addr;
        (*eth).dst_addr = (*eth).src_addr;
        (*eth).src_addr = mac;

        let a = (*ip).src_addr;
        (*ip).src_addr = (*ip).dst_addr;
        (*ip).dst_addr = a;
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        #[expect(clippy::cast_possible_truncation, reason = "40")]
        let tot = ((Ipv4Hdr::LEN + TcpHdr::LEN) as u16).to_be_bytes();
        (*ip).tot_len = tot;
        (*ip).id = [0, 0];
        (*ip).frags = [0x40, 0];
        (*ip).ttl = 64;
        (*ip).check = [0, 0];
        (*ip).check = fold(sum_words::<10>(ip.cast(), 0)).to_ne_bytes();

        let p = (*tcp).source;
        (*tcp).source = (*tcp).dest;
        (*tcp).dest = p;
        (*tcp).seq = (*tcp).ack_seq;
        (*tcp).ack_seq = [0; 4];
        let b = tcp.cast::<u8>();
        *b.add(12) = 0x50; // data offset 5 words
        *b.add(13) = RST;
        (*tcp).window = [0, 0];
        (*tcp).urg_ptr = [0, 0];
        (*tcp).check = [0, 0];
        // Pseudo-header (RFC 793 §3.1): addresses, protocol 6, TCP length 20.
        let mut s = sum_words::<4>((&raw const (*ip).src_addr).cast(), 0);
        s += u32::from(u16::from_be_bytes([0, 6]).to_be()) + u32::from(20u16.to_be());
        s = sum_words::<10>(tcp.cast(), s);
        (*tcp).check = fold(s).to_ne_bytes();
    }
    xdp_action::XDP_TX
}

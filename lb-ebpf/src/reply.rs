//! Segments built in place from the frame that caused them: RSTs and SYN-cookie answers sent
//! back out of the interface the frame came in on (`bounce`), and the SYN a cookie-validated
//! ACK becomes on its way to the origin.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use network_types::{eth::EthHdr, tcp::TcpHdr};

use crate::{
    family::{fold, sum_words, Family},
    parse::{ptr_at, ACK, RST, SYN},
};

/// A TCP segment to write over the frame: addresses as flow tables hold them (IPv4-mapped
/// for IPv4), ports in network byte order, the rest in host order. `mss` 0 = no options.
pub struct Segment {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub win: u16,
    pub mss: u16,
    /// Swap the Ethernet addresses (the segment goes back where the frame came from).
    pub back: bool,
}

/// Rewrites the whole frame as `seg` (Ethernet addresses swapped if `seg.back`, the IP
/// header alone, TCP with an MSS option if asked, no payload), with full checksums. False if
/// the frame cannot be resized.
#[inline(never)]
pub fn write_segment<F: Family>(ctx: &XdpContext, seg: &Segment) -> bool {
    let tcp_len = if seg.mss != 0 {
        TcpHdr::LEN + 4
    } else {
        TcpHdr::LEN
    };
    let want = F::L4_OFF + tcp_len;
    let len = ctx.data_end() - ctx.data();
    if len != want {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "frames are < 64 KiB"
        )]
        let d = want as i32 - len as i32;
        // SAFETY: resizing the tail of the frame this program owns.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, d) } != 0 {
            return false;
        }
    }
    let (Some(eth), Some(ip), Some(tcp), Some(opt)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<F::Ip>(ctx, EthHdr::LEN),
        ptr_at::<TcpHdr>(ctx, F::L4_OFF),
        ptr_at::<[u8; 4]>(ctx, F::L4_OFF + TcpHdr::LEN),
    ) else {
        // A bare segment (no option) still fits, checked below.
        return seg.mss == 0 && write_bare::<F>(ctx, seg);
    };
    // SAFETY: all four bounds-checked just above.
    unsafe {
        let pseudo = fill::<F>(eth, ip, tcp, seg, tcp_len);
        *opt = [2, 4, (seg.mss >> 8) as u8, seg.mss as u8];
        checksum(tcp, opt.cast(), tcp_len, pseudo);
    }
    true
}

/// `write_segment` for a frame with no room for an option.
#[inline(always)]
fn write_bare<F: Family>(ctx: &XdpContext, seg: &Segment) -> bool {
    let (Some(eth), Some(ip), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<F::Ip>(ctx, EthHdr::LEN),
        ptr_at::<TcpHdr>(ctx, F::L4_OFF),
    ) else {
        return false;
    };
    // SAFETY: all three bounds-checked just above.
    unsafe {
        let pseudo = fill::<F>(eth, ip, tcp, seg, TcpHdr::LEN);
        checksum(tcp, core::ptr::null(), TcpHdr::LEN, pseudo);
    }
    true
}

/// Writes every header field of `seg` (the TCP checksum zeroed); returns the TCP
/// pseudo-header's sum.
///
/// # Safety
/// `eth`, `ip` and `tcp` point at bounds-checked headers of the frame.
#[inline(always)]
unsafe fn fill<F: Family>(
    eth: *mut EthHdr,
    ip: *mut F::Ip,
    tcp: *mut TcpHdr,
    seg: &Segment,
    tcp_len: usize,
) -> u32 {
    if seg.back {
        let mac = (*eth).dst_addr;
        (*eth).dst_addr = (*eth).src_addr;
        (*eth).src_addr = mac;
    }
    #[expect(clippy::cast_possible_truncation, reason = "20 or 24")]
    let pseudo = F::fill_tcp(ip, &seg.src, &seg.dst, tcp_len as u16);
    (*tcp).source = seg.sport;
    (*tcp).dest = seg.dport;
    (*tcp).seq = seg.seq.to_be_bytes();
    (*tcp).ack_seq = seg.ack.to_be_bytes();
    let b = tcp.cast::<u8>();
    #[expect(clippy::cast_possible_truncation, reason = "5 or 6 words")]
    let words = (tcp_len / 4) as u8;
    *b.add(12) = words << 4;
    *b.add(13) = seg.flags;
    (*tcp).window = seg.win.to_be_bytes();
    (*tcp).urg_ptr = [0, 0];
    (*tcp).check = [0, 0];
    pseudo
}

/// Fills in the TCP checksum: the pseudo-header's sum, the 20-byte header, and the 4-byte
/// option at `opt` when `tcp_len` is 24.
///
/// # Safety
/// As for `fill`; `opt` is bounds-checked when `tcp_len` is 24.
#[inline(always)]
unsafe fn checksum(tcp: *mut TcpHdr, opt: *const u8, tcp_len: usize, pseudo: u32) {
    let mut s = sum_words::<10>(tcp.cast(), pseudo);
    if tcp_len > TcpHdr::LEN {
        s = sum_words::<2>(opt, s);
    }
    (*tcp).check = fold(s).to_ne_bytes();
}

/// Answers a SYN with a SYN-ACK carrying `cookie` as its sequence number and an MSS option;
/// no window scaling, SACK or timestamps (the cookie cannot carry them), sent back (`bounce`).
#[inline(always)]
pub fn cookie_syn_ack<F: Family>(
    ctx: &XdpContext,
    ip: *const F::Ip,
    tcp: *const TcpHdr,
    cookie: u32,
    client_seq: u32,
    mss: u16,
) -> u32 {
    let Some(sc) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: this CPU's scratch entry; headers bounds-checked by the caller, copied before
    // the frame is rewritten.
    let seg = unsafe {
        let (src, dst) = F::addrs(ip);
        (*sc).out = Segment {
            src: dst,
            dst: src,
            sport: (*tcp).dest,
            dport: (*tcp).source,
            seq: cookie,
            ack: client_seq.wrapping_add(1),
            flags: SYN | ACK,
            win: 65535,
            mss,
            back: true,
        };
        &(*sc).out
    };
    if write_segment::<F>(ctx, seg) {
        bounce(ctx)
    } else {
        xdp_action::XDP_DROP
    }
}

/// Sends the rebuilt frame back out of the interface it came in on: a `TX_PORTS` redirect
/// to the ingress interface. (A plain XDP_TX from a veth is dropped by its peer unless the
/// peer runs an XDP program of its own; the redirect is delivered like forwarded frames.)
#[inline(always)]
pub fn bounce(ctx: &XdpContext) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
    let ingress = ctx.ingress_ifindex() as u32;
    crate::maps::TX_PORTS
        .redirect(ingress, 0)
        .unwrap_or(xdp_action::XDP_TX)
}

/// Turns the frame, a TCP segment with the ACK flag, into the RST its receiver would send
/// for an unacceptable ACK (RFC 793 §3.4: sequence number = the segment's ACK, no ACK
/// flag), addressed back to its sender. Returns the verdict that sends it back (`bounce`),
/// or XDP_DROP if the frame cannot be reshaped.
#[inline(never)]
pub fn rst_back<F: Family>(ctx: &XdpContext) -> u32 {
    let rst_len = F::L4_OFF + TcpHdr::LEN;
    let len = ctx.data_end() - ctx.data();
    if len > rst_len {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "frames are < 64 KiB"
        )]
        let shrink = -((len - rst_len) as i32);
        // SAFETY: shrinking the tail of the frame this program owns.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
            return xdp_action::XDP_DROP;
        }
    }
    let (Some(eth), Some(ip), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<F::Ip>(ctx, EthHdr::LEN),
        ptr_at::<TcpHdr>(ctx, F::L4_OFF),
    ) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: all three headers bounds-checked just above.
    unsafe {
        let mac = (*eth).dst_addr;
        (*eth).dst_addr = (*eth).src_addr;
        (*eth).src_addr = mac;

        #[expect(clippy::cast_possible_truncation, reason = "20")]
        let pseudo = F::fill_tcp_back(ip, TcpHdr::LEN as u16);

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
        (*tcp).check = fold(sum_words::<10>(tcp.cast(), pseudo)).to_ne_bytes();
    }
    bounce(ctx)
}

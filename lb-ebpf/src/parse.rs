//! Header access: bounds-checked pointers into the frame and the TCP fields the rest of the
//! program reads. The TCP header of a frame we handle always sits at `Family::L4_OFF`
//! (Ethernet, then the IP header alone: IPv4 options are refused and IPv6 extension headers
//! removed or refused before this point).

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use lb_common::WSCALE_NONE;
use network_types::tcp::TcpHdr;

use crate::family::Family;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The TCP fields connection tracking reads, in host order.
#[derive(Clone, Copy)]
pub struct Seg {
    /// FIN, SYN, RST, PSH, ACK, ... (byte 13 of the header).
    pub flags: u8,
    /// Window scale offered (SYN and SYN-ACK only; `WSCALE_NONE` otherwise or when absent).
    pub wscale: u8,
    pub win: u16,
    pub seq: u32,
    pub ack: u32,
    /// Sequence space the segment takes: payload bytes, plus one for SYN and for FIN.
    pub len: u32,
    /// Interface the frame arrived on.
    pub ifindex: u32,
    /// TCP header length in bytes (data offset * 4).
    pub hlen: u32,
}

/// Reads the segment's fields; `ip` and `tcp` are bounds-checked by the caller.
#[inline(always)]
pub fn seg<F: Family>(ctx: &XdpContext, ip: *const F::Ip, tcp: *const TcpHdr) -> Seg {
    // SAFETY: both headers bounds-checked by the caller; byte 13 is inside the TCP header.
    let (flags, doff, win, seq, ack, l4) = unsafe {
        (
            *tcp.cast::<u8>().add(13),
            (*tcp).doff(),
            u16::from_be_bytes((*tcp).window),
            u32::from_be_bytes((*tcp).seq),
            u32::from_be_bytes((*tcp).ack_seq),
            F::l4_len(ip),
        )
    };
    let mut len = l4.saturating_sub(u32::from(doff) * 4);
    if flags & SYN != 0 {
        len += 1;
    }
    if flags & FIN != 0 {
        len += 1;
    }
    let wscale = if flags & SYN != 0 {
        #[expect(clippy::cast_possible_truncation, reason = "doff is 4 bits")]
        window_scale::<F>(ctx, doff as u8)
    } else {
        WSCALE_NONE
    };
    #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
    let ifindex = ctx.ingress_ifindex() as u32;
    Seg {
        flags,
        wscale,
        win,
        seq,
        ack,
        len,
        ifindex,
        hlen: u32::from(doff & 0x0f) * 4,
    }
}

/// The window-scale option (RFC 7323 §2) of a SYN whose header is `doff` words long, capped
/// at 14 as the RFC says; `WSCALE_NONE` when absent or unreadable. Its own subprogram: the
/// option walk is a bounded loop the verifier explores once.
#[inline(never)]
fn window_scale<F: Family>(ctx: &XdpContext, doff: u8) -> u8 {
    let end = F::L4_OFF + usize::from(doff & 0x0f) * 4;
    let mut off = F::L4_OFF + TcpHdr::LEN;
    let mut i = 0;
    // Eight steps reach the window scale in the SYNs of Linux (MSS, SACK-permitted,
    // timestamps, NOP, WS), Windows (MSS, NOP, WS, NOP, NOP, SACK-permitted) and macOS
    // (MSS, NOP, WS, ...): each NOP is a step. A SYN that hides it deeper is treated as not
    // scaling, which only makes our window checks stricter for that flow.
    while i < 8 {
        if off + 1 >= end {
            break;
        }
        let Some(k) = ptr_at::<[u8; 2]>(ctx, off) else {
            break;
        };
        // SAFETY: bounds checked by ptr_at.
        let [kind, len] = unsafe { *k };
        match kind {
            0 => break,
            1 => off += 1,
            _ => {
                if kind == 3 && len == 3 {
                    // Read as three bytes from the option's start: the verifier tracks one
                    // bounds check better than two.
                    return match ptr_at::<[u8; 3]>(ctx, off) {
                        // SAFETY: bounds checked by ptr_at.
                        Some(v) if off + 2 < end => unsafe { (*v)[2] }.min(14),
                        _ => WSCALE_NONE,
                    };
                }
                if len < 2 {
                    break;
                }
                off += usize::from(len);
            }
        }
        i += 1;
    }
    WSCALE_NONE
}

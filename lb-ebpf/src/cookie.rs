//! SYN cookies, when more handshakes are in flight than `Settings::syn_budget` allows: a
//! SYN without a flow is answered with a SYN-ACK whose sequence number is a kernel SYN
//! cookie (`bpf_tcp_raw_gen_syncookie_ipv4`/`_ipv6`, as the kernel's xdp_synproxy sample), and
//! nothing is stored. Only a client that returns a valid cookie (so one that receives at
//! its address) gets a flow: its ACK becomes the SYN to the origin, the origin's SYN-ACK
//! becomes the ACK that completes the origin side, and from then on the flow's sequence
//! numbers are translated (`RevFlow::seq_delta`) between the cookie and the origin's ISN.
//!
//! What a cookie cannot carry is left out on both sides: no window scaling, SACK or
//! timestamps; the origin is told an MSS of `COOKIE_MSS`. A client segment that arrives
//! before the origin has answered becomes the SYN again (so a lost SYN is retried at the
//! client's pace); its data is retransmitted by the client.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_load_bytes, programs::XdpContext,
};
use lb_common::{
    event, Flow, RevFlow, Settings, CT_COOKIE, CT_ESTABLISHED, CT_SYNACK, WSCALE_NONE,
};
use network_types::{eth::EthHdr, tcp::TcpHdr};

use crate::{
    conntrack::{mark_closing, set_flags},
    family::Family,
    maps::SCRATCH,
    parse::{ptr_at, Seg, ACK, RST, SYN},
    reply::{cookie_syn_ack, write_segment, Segment},
    snat::CtInit,
    stats::{cookie_sent, count, drop, handshakes_in_flight},
};

/// MSS announced to the origin for a cookie flow (the client's own is not recoverable from
/// a kernel cookie): Ethernet's 1460. A client behind a smaller MTU is reached through
/// path-MTU discovery.
pub const COOKIE_MSS: u16 = 1460;

/// Should a SYN without a flow get a cookie instead of a flow?
#[inline(always)]
pub fn admit_by_cookie(settings: &Settings, now: u32) -> bool {
    settings.syn_budget != u32::MAX
        && (settings.syn_budget == 0
            || handshakes_in_flight(now, settings.syn_secs + 1) >= u64::from(settings.syn_budget))
}

/// Answers the SYN in the frame with a cookie SYN-ACK. `None` when the kernel cannot make a
/// cookie for it (then the caller makes a flow as usual).
#[inline(never)]
pub fn send_cookie<F: Family>(ctx: &XdpContext, s: &Seg) -> Option<u32> {
    let sc = SCRATCH.get_ptr_mut(0)?;
    let hlen = s.hlen & 0x3c;
    if hlen < 20 {
        return None;
    }
    // SAFETY: this CPU's scratch entry; the loads are bounded by the buffers' sizes.
    let value = unsafe {
        #[expect(clippy::cast_possible_truncation, reason = "20 or 40")]
        let ip_len = F::IP_LEN as u32;
        #[expect(clippy::cast_possible_truncation, reason = "34 or 54")]
        let l4_off = F::L4_OFF as u32;
        if bpf_xdp_load_bytes(
            ctx.ctx,
            EthHdr::LEN as u32,
            (&raw mut (*sc).ck_ip).cast(),
            ip_len,
        ) != 0
            || bpf_xdp_load_bytes(ctx.ctx, l4_off, (&raw mut (*sc).ck_th).cast(), hlen) != 0
        {
            return None;
        }
        F::gen_cookie(
            (&raw mut (*sc).ck_ip).cast(),
            (&raw mut (*sc).ck_th).cast(),
            hlen,
        )
    };
    if value < 0 {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "cookie | mss << 32"
    )]
    let (cookie, mss) = (value as u32, (value >> 32) as u16);
    let ip = ptr_at::<F::Ip>(ctx, EthHdr::LEN)?;
    let tcp = ptr_at::<TcpHdr>(ctx, F::L4_OFF)?;
    let now = crate::stats::now_secs();
    cookie_sent(now);
    count(event::SYN_COOKIE_SENT);
    Some(cookie_syn_ack::<F>(
        ctx,
        ip,
        tcp,
        cookie,
        s.seq,
        mss.min(COOKIE_MSS),
    ))
}

/// Does the ACK (headers `ip`, `tcp`, bounds-checked by the caller) carry a valid SYN cookie?
#[inline(never)]
pub fn valid<F: Family>(ip: *mut F::Ip, tcp: *mut TcpHdr) -> bool {
    // SAFETY: both headers bounds-checked (the IP header and 20 bytes of TCP, as the helper
    // reads).
    unsafe { F::check_cookie(ip, tcp.cast()) }
}

/// The flow-tracking start of a cookie-validated ACK `s`.
#[inline(always)]
pub fn init(s: &Seg, now: u32) -> CtInit {
    CtInit {
        flags: CT_COOKIE,
        client_end: s.seq,
        client_win: u32::from(s.win),
        client_wscale: WSCALE_NONE,
        client_if: s.ifindex,
        // The cookie (our ISN towards the client) until the origin's ISN is known.
        seq_delta: s.ack.wrapping_sub(1),
        now,
    }
}

/// Turns the frame, a client segment of cookie flow `f` whose client ISN is `isn`, into the
/// SYN to the origin, addressed and checksummed; the caller forwards it.
#[inline(never)]
pub fn syn_to_origin<F: Family>(ctx: &XdpContext, f: &Flow, isn: u32, win: u16) -> Result<(), u32> {
    let sc = SCRATCH.get_ptr_mut(0).ok_or(xdp_action::XDP_DROP)?;
    // SAFETY: this CPU's scratch entry: the segment to write.
    let seg = unsafe {
        (*sc).out = Segment {
            src: f.snat_addr,
            dst: f.origin_addr,
            sport: f.snat_port.to_ne_bytes(),
            dport: f.origin_port.to_ne_bytes(),
            seq: isn,
            ack: 0,
            flags: SYN,
            win,
            mss: COOKIE_MSS,
            back: false,
        };
        &(*sc).out
    };
    if write_segment::<F>(ctx, seg) {
        Ok(())
    } else {
        Err(drop(event::DROP_MALFORMED_TCP))
    }
}

/// What to do with an origin segment on a cookie flow the origin has not answered yet.
pub enum Pending {
    /// The frame is now the ACK to the origin: XDP_TX.
    AckToOrigin,
    /// The frame is now a RST to the client (the origin refused): forward it.
    RstToClient,
    /// Answer the frame with a RST to the origin (`reply::rst_back`).
    ResetOrigin,
}

/// The origin's answer to a cookie flow's SYN: a SYN-ACK completes the flow (and becomes
/// our ACK to the origin); a RST that acknowledges the SYN becomes a RST to the client.
#[inline(never)]
pub fn origin_answer<F: Family>(
    ctx: &XdpContext,
    r: *mut RevFlow,
    s: &Seg,
) -> Result<Pending, u32> {
    // SAFETY: a live map value, fields read one by one.
    let (client_end, cookie, client_win) =
        unsafe { ((*r).client_end, (*r).seq_delta, (*r).client_win) };
    if s.flags & ACK == 0 {
        return Err(drop(event::DROP_SYNACK_INVALID));
    }
    if s.ack != client_end {
        if s.flags & RST != 0 {
            return Err(drop(event::DROP_SYNACK_INVALID));
        }
        // The origin answered for the SNAT port's previous connection (TIME_WAIT): reset
        // it, as for any flow; the client's next segment sends the SYN again.
        return Ok(Pending::ResetOrigin);
    }
    let (Some(ip), Some(tcp)) = (
        ptr_at::<F::Ip>(ctx, EthHdr::LEN),
        ptr_at::<TcpHdr>(ctx, F::L4_OFF),
    ) else {
        return Err(drop(event::DROP_MALFORMED_TCP));
    };
    if s.flags & RST != 0 {
        mark_closing(r);
        set_flags(r, lb_common::CT_RST);
        let sc = SCRATCH.get_ptr_mut(0).ok_or(xdp_action::XDP_DROP)?;
        // SAFETY: this CPU's scratch entry; a live map value; headers bounds-checked above.
        let seg = unsafe {
            (*sc).out = Segment {
                src: (*r).vip_addr,
                dst: (*r).client_addr,
                sport: (*r).vip_port.to_ne_bytes(),
                dport: (*r).client_port.to_ne_bytes(),
                seq: cookie.wrapping_add(1),
                ack: 0,
                flags: RST,
                win: 0,
                mss: 0,
                back: false,
            };
            &(*sc).out
        };
        count(event::COOKIE_REFUSED);
        return if write_segment::<F>(ctx, seg) {
            Ok(Pending::RstToClient)
        } else {
            Err(drop(event::DROP_MALFORMED_TCP))
        };
    }
    if s.flags & SYN == 0 {
        return Err(drop(event::DROP_SYNACK_INVALID));
    }
    // SAFETY: a live map value: the origin side's window edge and the translation.
    unsafe {
        (*r).origin_end = s.seq.wrapping_add(1);
        (*r).origin_win = u32::from(s.win);
        (*r).origin_if = s.ifindex;
        (*r).seq_delta = s.seq.wrapping_sub(cookie);
    }
    set_flags(r, CT_SYNACK | CT_ESTABLISHED);
    let sc = SCRATCH.get_ptr_mut(0).ok_or(xdp_action::XDP_DROP)?;
    // SAFETY: this CPU's scratch entry; headers bounds-checked above, copied before the
    // frame is rewritten.
    let seg = unsafe {
        let (src, dst) = F::addrs(ip);
        (*sc).out = Segment {
            src: dst,
            dst: src,
            sport: (*tcp).dest,
            dport: (*tcp).source,
            seq: client_end,
            ack: s.seq.wrapping_add(1),
            flags: ACK,
            #[expect(clippy::cast_possible_truncation, reason = "unscaled: at most 65535")]
            win: client_win.min(65535) as u16,
            mss: 0,
            back: true,
        };
        &(*sc).out
    };
    count(event::COOKIE_ORIGIN_ACK);
    if write_segment::<F>(ctx, seg) {
        Ok(Pending::AckToOrigin)
    } else {
        Err(drop(event::DROP_MALFORMED_TCP))
    }
}

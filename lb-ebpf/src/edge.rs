//! Everything that is not TCP for a VIP or a SNAT flow: ICMP and other protocols to a VIP
//! address, and the "no open router" rule for traffic that is neither ours nor the host's.
//!
//! ```text
//! not TCP -> ICMP error to a VIP address or the SNAT address: icmp::error (translate)
//!            ICMP echo to a VIP address: icmp::echo (answer, or drop)
//!            anything else to a VIP address: XDP_DROP
//!            anything else: not_ours()
//! not_ours -> route_other, broadcast/multicast, SNAT address: XDP_PASS
//!             bpf_fib_lookup: local (NOT_FWDED), forwarding off, no route: XDP_PASS
//!                             the kernel would forward it: XDP_DROP (DROP_TRANSIT)
//! finish   -> runs what deeper code asked for (DO_*): translate, forward, answer too-big
//! ```

use core::mem::{self, size_of};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    event, v4_mapped, Settings, IPPROTO_ICMP, SETTINGS_F_READY, SETTINGS_F_ROUTE_OTHER,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    drop,
    family::Family,
    forward, icmp, icmp6, is_vip_addr,
    maps::{LOCAL_ADDRS, SETTINGS},
    pass, ptr_at,
    stats::count,
    IP_MF, IP_OFFSET_HI,
};

// Requests. Verdicts are 0..=4; values with these bits ask `finish`, called by `lb_xdp`, to
// run the work at the top of the call chain: BPF stacks are 512 bytes for the whole chain,
// and `forward` or `too_big` three calls below the hot path's frame would not fit.

/// Forward the (rewritten) packet in the context.
pub const DO_FORWARD: u32 = 0x4000_0000;
/// Pass or drop a packet that is not ours (`not_ours` with `PASS_NOT_TCP`).
pub const DO_NOT_OURS: u32 = 0x2000_0000;
/// Answer the echo request in the context (`icmp::echo`).
pub const DO_ECHO: u32 = 0x1000_0000;
/// Translate the ICMP error in the context (`icmp::error`); bit 0: it is to a VIP address.
pub const DO_ICMP_ERROR: u32 = 0x0800_0000;
/// The rewritten packet is too big for the egress MTU in the low 16 bits: `icmp::too_big`.
pub const DO_TOO_BIG: u32 = 0x8000_0000;

/// Turns a request left by the data path into a verdict; verdicts pass through.
#[inline(always)]
pub fn finish<F: Family>(ctx: &XdpContext, mut v: u32) -> u32 {
    if v <= xdp_action::XDP_REDIRECT {
        return v;
    }
    if v == DO_NOT_OURS {
        return not_ours::<F>(ctx, event::PASS_NOT_TCP);
    }
    if v == DO_ECHO {
        return if F::V6 {
            icmp6::echo(ctx)
        } else {
            icmp::echo(ctx)
        };
    }
    if v & DO_ICMP_ERROR != 0 {
        v = if F::V6 {
            icmp6::error(ctx, v & 1 != 0)
        } else {
            icmp::error(ctx, v & 1 != 0)
        };
    }
    if v == DO_FORWARD {
        v = forward_again::<F>(ctx);
    }
    if v & DO_TOO_BIG != 0 {
        #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
        return if F::V6 {
            icmp6::too_big(ctx, v as u16)
        } else {
            icmp::too_big(ctx, v as u16)
        };
    }
    v
}

/// `forward` for a packet rewritten further down the call chain.
#[inline(never)]
fn forward_again<F: Family>(ctx: &XdpContext) -> u32 {
    match ptr_at::<F::Ip>(ctx, EthHdr::LEN) {
        Some(ip) => match forward::<F>(ctx, ip, core::ptr::null_mut(), 0) {
            Ok(v) | Err(v) => v,
        },
        None => drop(event::DROP_ICMP_MALFORMED),
    }
}

/// An IPv4 packet that is not TCP (the header was checked by the caller). Its own BPF
/// subprogram, so the TCP hot path's verification does not grow with it.
#[inline(never)]
pub fn not_tcp(ctx: &XdpContext) -> u32 {
    let settings: &Settings = match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_F_READY != 0 => s,
        _ => return pass(event::PASS_NOT_TCP),
    };
    // Packet pointers do not survive a BPF function call: derive them again.
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return pass(event::PASS_MALFORMED);
    };
    // SAFETY: bounds-checked by the caller.
    let (vihl, proto, frags, dst4) =
        unsafe { ((*ip).vihl, (*ip).proto, (*ip).frags, (*ip).dst_addr) };
    let dst = v4_mapped(dst4);
    let to_vip = is_vip_addr(dst);
    let whole = vihl == 0x45 && frags[0] & (IP_MF | IP_OFFSET_HI) == 0 && frags[1] == 0;
    if proto == IPPROTO_ICMP && whole && (to_vip || settings.is_snat_addr(&dst)) {
        if let Some(v) = icmp::handle(ctx, to_vip) {
            return v;
        }
    }
    if to_vip {
        return drop(event::DROP_VIP_OTHER_PROTO);
    }
    DO_NOT_OURS
}

/// A packet that is no VIP's and no SNAT flow's: passed (counted as `reason`) when it is for
/// the host itself or `route_other` is set; dropped when the kernel would only route it on
/// (no open router: an edge host must not forward traffic somebody aimed at its MAC).
#[inline(never)]
pub fn not_ours<F: Family>(ctx: &XdpContext, reason: u32) -> u32 {
    let settings = match SETTINGS.get(0) {
        Some(s) => s,
        None => return pass(reason),
    };
    if settings.flags & SETTINGS_F_ROUTE_OTHER != 0 {
        return pass(reason);
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<F::Ip>(ctx, EthHdr::LEN))
    else {
        return pass(reason);
    };
    // SAFETY: bounds-checked by the caller.
    let (dmac0, dst) = unsafe { ((*eth).dst_addr[0], F::addrs(ip).1) };
    // Broadcast and multicast (group bit of the destination MAC, 224/4 and 255.255.255.255,
    // ff00::/8) are never forwarded by the FIB helper's answer; leave them to the stack.
    // IPv6 link-local destinations (fe80::/10) are never routed either.
    let multicast = if F::V6 {
        dst[0] == 0xff || (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80)
    } else {
        dst[12] >= 224
    };
    if dmac0 & 1 != 0 || multicast || F::is_snat(settings, &dst) {
        return pass(reason);
    }
    // The host's own address: no need to ask the FIB.
    if LOCAL_ADDRS.get_ptr(&dst).is_some() {
        return pass(reason);
    }
    count(event::FIB_LOOKUP);
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut p: FibParams = unsafe { mem::zeroed() };
    // The length is passed so an oversized transit packet answers FRAG_NEEDED: transit too.
    // SAFETY: bounds-checked above.
    unsafe { F::fib(&mut p, ip) };
    #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    // SAFETY: p is a valid, fully initialised request of the size we pass.
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx.cast(), &raw mut p, size_of::<FibParams>() as i32, 0) };
    #[expect(
        clippy::cast_sign_loss,
        reason = "return codes are small and non-negative"
    )]
    match rc as u32 {
        // A unicast route out of this host: the stack would forward it.
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            drop(event::DROP_TRANSIT)
        }
        // NOT_FWDED (local, broadcast), FWD_DISABLED (forwarding off on the ingress device:
        // the stack will not route it either), no route, blackhole, prohibit: the stack's.
        _ => pass(reason),
    }
}

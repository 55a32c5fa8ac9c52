//! Sending a rewritten frame on: next hop and MACs from the kernel FIB, then XDP_TX when it
//! leaves where it came in, a `TX_PORTS` redirect otherwise.

use core::mem::{self, size_of};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{event, NextHop, NH_MAX_AGE};
use network_types::eth::EthHdr;

use crate::{
    family::Family,
    maps::{SETTINGS, TX_PORTS},
    parse::ptr_at,
    stats::{count, drop, pass, verdict},
};

/// Sends a rewritten frame on: next hop and MACs from `nh` when it is fresh (see
/// `lb_common::NextHop`), else from the kernel FIB, whose answer then refills `nh`; then
/// XDP_TX when it leaves where it came in, a TX_PORTS redirect otherwise. `nh` is the
/// direction's cache (the origin's `ORIGIN_NH` entry, or the flow's `REV_FLOWS` entry), or
/// null for frames built in place. Its own subprogram (stack frame).
#[inline(never)]
pub fn forward<F: Family>(
    ctx: &XdpContext,
    ip: *mut F::Ip,
    nh: *mut NextHop,
    now: u32,
) -> Result<u32, u32> {
    // Found again here rather than passed: a BPF call takes at most five arguments, the
    // verdict's return slot included.
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or_else(|| drop(event::DROP_MALFORMED_TCP))?;
    #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
    let ingress = ctx.ingress_ifindex() as u32;
    let gen = SETTINGS.get(0).map_or(0, |s| s.nh_gen);
    // SAFETY: bounds-checked by the caller.
    let tot_len = unsafe { F::wire_len(ip) };
    if !nh.is_null() {
        // SAFETY: a live map value, read field by field; another CPU may refill it meanwhile,
        // with the same values unless the next hop changed.
        let (ifindex, filled, cached_gen, ok_len) =
            unsafe { ((*nh).ifindex, (*nh).filled, (*nh).gen, (*nh).ok_len) };
        if ifindex != 0
            && cached_gen == gen
            && now.wrapping_sub(filled) <= NH_MAX_AGE
            && tot_len <= ok_len
        {
            // SAFETY: as above; eth bounds-checked by the caller.
            unsafe {
                (*eth).dst_addr = (*nh).dmac;
                (*eth).src_addr = (*nh).smac;
            }
            return send(ifindex, ingress);
        }
    }
    count(event::FIB_LOOKUP);
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut p: FibParams = unsafe { mem::zeroed() };
    // SAFETY: headers bounds-checked by the caller.
    unsafe { F::fib(&mut p, ip) };
    p.ifindex = ingress;
    // SAFETY: p is a valid, fully initialised request of the size we pass.
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx.cast(), &raw mut p, size_of::<FibParams>() as i32, 0) };
    #[expect(
        clippy::cast_sign_loss,
        reason = "return codes are small and non-negative"
    )]
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Ok(pass(event::PASS_NO_NEIGH)),
        // SAFETY: the helper wrote the egress MTU into the union for this return code.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Err(
                crate::edge::DO_TOO_BIG | u32::from(unsafe { p.__bindgen_anon_1.mtu_result })
            )
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(drop(event::DROP_FWD_DISABLED)),
        _ => return Err(drop(event::DROP_NO_ROUTE)),
    }
    // SAFETY: eth bounds-checked by the caller.
    unsafe {
        (*eth).dst_addr = p.dmac;
        (*eth).src_addr = p.smac;
    }
    if !nh.is_null() {
        // SAFETY: as above. The same next hop under the same generation keeps the largest
        // length it has passed; a different one starts again from this packet's.
        unsafe {
            let same = (*nh).ifindex == p.ifindex
                && (*nh).gen == gen
                && (*nh).dmac == p.dmac
                && (*nh).smac == p.smac;
            if !same || (*nh).ok_len < tot_len {
                (*nh).ok_len = tot_len;
            }
            (*nh).ifindex = p.ifindex;
            (*nh).smac = p.smac;
            (*nh).dmac = p.dmac;
            (*nh).gen = gen;
            (*nh).filled = now;
        }
    }
    send(p.ifindex, ingress)
}

/// The verdict for a frame whose MACs are set, leaving on `ifindex`.
#[inline(always)]
fn send(ifindex: u32, ingress: u32) -> Result<u32, u32> {
    if ifindex == ingress {
        return Ok(verdict(event::FWD_TX, xdp_action::XDP_TX));
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(v) => Ok(verdict(event::FWD_REDIRECT, v)),
        Err(_) => Err(drop(event::DROP_NO_TX_PORT)),
    }
}

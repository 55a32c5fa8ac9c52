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
use lb_common::{event, IPPROTO_TCP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::TX_PORTS,
    stats::{drop, pass, verdict},
};

use crate::AF_INET;

/// Sends a rewritten frame on: next hop and MACs from the kernel FIB, then XDP_TX when it
/// leaves where it came in, a TX_PORTS redirect otherwise. Its own subprogram (stack frame).
#[inline(never)]
pub fn forward(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Result<u32, u32> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut p: FibParams = unsafe { mem::zeroed() };
    #[expect(clippy::cast_possible_truncation, reason = "ifindex fits in u32")]
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: headers bounds-checked by the caller.
    unsafe {
        p.family = AF_INET;
        p.l4_protocol = IPPROTO_TCP;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        p.ifindex = ingress;
        p.__bindgen_anon_2.tos = (*ip).tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src_addr);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).dst_addr);
    }
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
    if p.ifindex == ingress {
        return Ok(verdict(event::FWD_TX, xdp_action::XDP_TX));
    }
    match TX_PORTS.redirect(p.ifindex, 0) {
        Ok(v) => Ok(verdict(event::FWD_REDIRECT, v)),
        Err(_) => Err(drop(event::DROP_NO_TX_PORT)),
    }
}

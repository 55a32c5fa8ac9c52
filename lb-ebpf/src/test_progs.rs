//! XDP programs for tests and benchmarks only, built into their own object
//! (`lb-test-progs`) so the production object holds nothing but the load balancer.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes everything. Tests attach it to the far ends of veth pairs: a veth delivers frames
/// bounced to it with XDP_TX only when it runs an XDP program itself.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: a sink for packet-rate benchmarks (the origin side must not answer).
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Bounces every frame unchanged: the floor the benchmarks compare `lb_xdp` against.
#[xdp]
pub fn xdp_tx_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[used]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

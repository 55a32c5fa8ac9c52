//! Counters and the clock: per-CPU verdict reasons (`EVENTS`), per-VIP and per-origin
//! traffic, open flows per origin (`ORIGIN_FLOWS`), handshakes in flight (`HANDSHAKES`) and
//! new UDP flows waiting for an answer (`UDP_PENDING`).
//! Nothing is logged per packet; every outcome increments one of these.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::xdp_action, btf_maps::PerCpuArray, helpers::generated::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use lb_common::{Counters, Handshakes, HANDSHAKE_BUCKETS};

use crate::maps::{EVENTS, HANDSHAKES, ORIGIN_FLOWS, ORIGIN_STATS, UDP_PENDING, VIP_STATS};

#[inline(always)]
pub fn count(reason: u32) {
    if let Some(c) = EVENTS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// Counts `reason` and yields `verdict`, for `Err(...)` early exits.
#[inline(always)]
pub fn verdict(reason: u32, verdict: u32) -> u32 {
    count(reason);
    verdict
}

#[inline(always)]
pub fn pass(reason: u32) -> u32 {
    verdict(reason, xdp_action::XDP_PASS)
}

#[inline(always)]
pub fn drop(reason: u32) -> u32 {
    verdict(reason, xdp_action::XDP_DROP)
}

/// Coarse monotonic seconds, for flow idleness (wraps after 136 years).
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: helper without arguments.
    #[expect(clippy::cast_possible_truncation, reason = "seconds fit in u32")]
    let s = (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32;
    s
}

/// Adds one packet to the counters of VIP or origin `id`; `new_flow` also counts a flow.
#[inline(always)]
fn add<const N: usize>(
    map: &PerCpuArray<Counters, N>,
    id: u32,
    len: u64,
    reply: bool,
    new_flow: bool,
) {
    if let Some(c) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            if reply {
                (*c).reply_packets += 1;
                (*c).reply_bytes += len;
            } else {
                (*c).packets += 1;
                (*c).bytes += len;
                if new_flow {
                    (*c).new_flows += 1;
                }
            }
        }
    }
}

/// Adds the frame in `ctx` to the counters of VIP `vip_id` and origin `origin_id`: a
/// client packet (`new_flow`: its flow's first) or an origin's answer (`reply`).
#[inline(always)]
pub fn add_frame(ctx: &XdpContext, vip_id: u32, origin_id: u32, reply: bool, new_flow: bool) {
    let len = (ctx.data_end() - ctx.data()) as u64;
    add(&VIP_STATS, vip_id, len, reply, new_flow);
    add(&ORIGIN_STATS, origin_id, len, reply, new_flow);
}

/// -1 for `flows_add`.
pub const DEC: u64 = u64::MAX;

/// Adds `delta` (wrapping: `DEC` subtracts one) to origin `id`'s open-flow count.
#[inline(always)]
pub fn flows_add(id: u32, delta: u64) {
    if let Some(p) = ORIGIN_FLOWS.get_ptr_mut(id) {
        // SAFETY: an array value shared by all CPUs and changed only by atomic adds.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// Counts a handshake started (`done` false) or finished (true) in this second's bucket of
/// `HANDSHAKES`.
#[inline(always)]
pub fn handshake(now: u32, done: bool) {
    if let Some(h) = HANDSHAKES.get_ptr_mut(0) {
        bucket_add(h, now, done);
    }
}

/// Counts a new UDP flow (`done` false), or the first answer of one (true), in this second's
/// bucket of `UDP_PENDING`.
#[inline(always)]
pub fn udp_pending(now: u32, done: bool) {
    if let Some(h) = UDP_PENDING.get_ptr_mut(0) {
        bucket_add(h, now, done);
    }
}

/// Counts one start or finish in this second's bucket of `h`. A bucket still holding an
/// older second is reset first (two CPUs may both reset it at a second boundary and lose a
/// count or two: an estimate is all we need).
#[inline(always)]
fn bucket_add(h: *mut Handshakes, now: u32, done: bool) {
    let i = (now % HANDSHAKE_BUCKETS) as usize;
    // SAFETY: a shared array value; counters change only by atomic adds, the second stamp
    // by plain stores (a race there costs accuracy, never memory safety).
    unsafe {
        let Some(b) = (*h).buckets.get_mut(i) else {
            return;
        };
        if b.sec != now {
            b.sec = now;
            b.started = 0;
            b.done = 0;
        }
        let c = if done {
            &raw mut b.done
        } else {
            &raw mut b.started
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, 1);
    }
}

/// Handshakes started and not finished over the last `window` seconds (at most
/// `HANDSHAKE_BUCKETS`): the load SYN cookies protect against.
#[inline(always)]
pub fn handshakes_in_flight(now: u32, window: u32) -> u64 {
    HANDSHAKES
        .get_ptr(0)
        .map_or(0, |h| in_flight(h, now, window))
}

/// New UDP flows not answered yet, over the last `window` seconds (at most
/// `HANDSHAKE_BUCKETS`): what `Settings::udp_budget` limits.
#[inline(always)]
pub fn udp_in_flight(now: u32, window: u32) -> u64 {
    UDP_PENDING
        .get_ptr(0)
        .map_or(0, |h| in_flight(h, now, window))
}

/// Started minus finished in the buckets of `h` younger than `window` seconds.
#[inline(never)]
fn in_flight(h: *const Handshakes, now: u32, window: u32) -> u64 {
    let mut started: u64 = 0;
    let mut done: u64 = 0;
    let mut i = 0;
    while i < HANDSHAKE_BUCKETS as usize {
        // SAFETY: a shared array value, read word by word.
        if let Some(b) = unsafe { (*h).buckets.get(i) } {
            if now.wrapping_sub(b.sec) < window {
                started += b.started;
                done += b.done;
            }
        }
        i += 1;
    }
    started.saturating_sub(done)
}

/// Notes that a SYN cookie was sent at `now`.
#[inline(always)]
pub fn cookie_sent(now: u32) {
    if let Some(h) = HANDSHAKES.get_ptr_mut(0) {
        // SAFETY: a shared array value; a plain store of one word.
        unsafe {
            if (*h).last_cookie != now {
                (*h).last_cookie = now;
            }
        }
    }
}

/// Could an ACK without a flow carry a valid cookie now? (One was sent within the cookie
/// lifetime.)
#[inline(always)]
pub fn cookies_recent(now: u32) -> bool {
    HANDSHAKES.get_ptr(0).is_some_and(|h| {
        // SAFETY: a shared array value, one word read.
        let last = unsafe { (*h).last_cookie };
        last != 0 && now.wrapping_sub(last) <= lb_common::COOKIE_LIFETIME
    })
}

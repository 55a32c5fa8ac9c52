//! TCP connection tracking, in the spirit of Linux conntrack's `tcp_in_window` and Cilium's
//! CT: the state of each flow (handshake, established, FIN from one side or both, RST)
//! lives in its `REV_FLOWS` entry and is advanced by the packets of both directions.
//!
//! - Only a SYN makes a flow (see `main.rs`); here flows only advance.
//! - FIN and RST count only from the interface their side uses and inside the flow's
//!   sequence window (RFC 5961 §3 is the model; a middlebox sees packets before the
//!   endpoint, so "inside the window" rather than "exactly the next sequence number").
//! - Each side's window edge (`*_end`) and largest advertised window (`*_win`) advance only
//!   with in-window packets, so a blind spoofer cannot widen the window it must hit.
//! - Each state has an idle timeout (`RevFlow::timeout`); expiry is lazy, checked on use.
//! - Fast path: a client segment without SYN, FIN or RST of an open, established flow is
//!   tracked in its `FLOWS` half alone (`fast`) when the slow path checked that half against
//!   `REV_FLOWS` in the same second (`sync_in`, `sync_out`): one hash lookup, not two. The
//!   result is the one `track` would give; everything else takes `track`.

use core::intrinsics::{atomic_or, AtomicOrdering};

use lb_common::{
    event, Flow, RevFlow, Settings, CT_COOKIE, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_ORIGIN,
    CT_RST, CT_STALE, CT_SYNACK, FLOW_F_FAST, REV_F_CLOSING, WSCALE_NONE,
};

use crate::{
    parse::{Seg, ACK, FIN, RST, SYN},
    stats::{count, drop, flows_add, handshake, DEC},
};

/// Has the TCP flow been idle past its state's timeout at `now`? (One function per
/// protocol: the verifier walks each inlined copy's branches, and a TCP flow is never UDP.)
#[inline(always)]
pub fn tcp_expired(r: *const RevFlow, now: u32, s: &Settings) -> bool {
    // SAFETY: a live map value, read field by field.
    let (last, flags) = unsafe { ((*r).last_seen, (*r).flags) };
    idle_past(now, last, RevFlow::tcp_timeout(flags, s))
}

/// Has the UDP flow been idle past its state's timeout at `now`?
#[inline(always)]
pub fn udp_expired(r: *const RevFlow, now: u32, s: &Settings) -> bool {
    // SAFETY: a live map value, read field by field.
    let (last, flags) = unsafe { ((*r).last_seen, (*r).flags) };
    idle_past(now, last, RevFlow::udp_timeout(flags, s))
}

/// Strictly more whole seconds than the timeout `t`: the clock ticks in whole seconds, so
/// this means at least `t` seconds idle (at most one more), never fewer. A timeout of 0
/// means at once.
#[inline(always)]
fn idle_past(now: u32, last: u32, t: u32) -> bool {
    t == 0 || now.wrapping_sub(last) > t
}

/// Sets `bits` in the flags word; returns the bits that were set before (so exactly one of
/// two CPUs racing to set a bit sees it clear).
#[inline(always)]
pub fn set_flags(r: *mut RevFlow, bits: u32) -> u32 {
    // SAFETY: a live map value; flags shares an 8-byte-aligned word with `_pad` (asserted in
    // lb_common), little-endian so flags is the low half. LLVM lowers a 32-bit fetch-or to an
    // OR without BPF_FETCH, hence the 64-bit operation.
    unsafe {
        let word = (&raw mut (*r).flags).cast::<u64>();
        #[expect(clippy::cast_possible_truncation, reason = "flags is the low half")]
        let old = atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, u64::from(bits)) as u32;
        old
    }
}

/// Marks the flow as gone from `ORIGIN_FLOWS` and subtracts it there, once.
#[inline(always)]
pub fn mark_closing(r: *mut RevFlow) {
    // SAFETY: a live map value.
    if unsafe { (*r).flags } & REV_F_CLOSING != 0 {
        return;
    }
    if set_flags(r, REV_F_CLOSING) & REV_F_CLOSING == 0 {
        // SAFETY: as above.
        flows_add(unsafe { (*r).origin_id }, DEC);
    }
}

/// Is `seq` within `win` bytes of `end`, either way, modulo 2^32?
#[inline(always)]
fn in_window(seq: u32, end: u32, win: u32) -> bool {
    #[expect(
        clippy::cast_possible_wrap,
        reason = "sequence arithmetic is modulo 2^32"
    )]
    let d = seq.wrapping_sub(end) as i32;
    d.unsigned_abs() <= win
}

/// A window field in bytes: scaled when both sides offered window scaling (RFC 7323 §2.2;
/// never in SYN segments).
#[inline(always)]
fn scaled(win: u16, own: u8, peer: u8, syn: bool) -> u32 {
    if syn || own == WSCALE_NONE || peer == WSCALE_NONE {
        u32::from(win)
    } else {
        u32::from(win) << (own & 0x0f)
    }
}

/// Is the segment ahead of `end` (modulo 2^32)?
#[inline(always)]
fn ahead(new_end: u32, end: u32) -> bool {
    #[expect(
        clippy::cast_possible_wrap,
        reason = "sequence arithmetic is modulo 2^32"
    )]
    let d = new_end.wrapping_sub(end) as i32;
    d > 0
}

/// Is flow state `flags` established and open: no FIN, RST or stale answer seen, and not a
/// cookie flow whose origin has not answered?
#[inline(always)]
pub fn open(flags: u32) -> bool {
    flags & (CT_ESTABLISHED | CT_FIN_CLIENT | CT_FIN_ORIGIN | CT_RST | CT_STALE) == CT_ESTABLISHED
        && flags & (CT_COOKIE | CT_SYNACK) != CT_COOKIE
}

/// Tracks a client segment in the flow's `FLOWS` half `f` alone, when it may (see the
/// module's doc): then it is what `track` would do with it (the window edge advanced by an
/// in-window segment; nothing for one outside, which is forwarded as `track` forwards it)
/// and true. False: the segment takes the slow path. `now` within `Flow::synced` means the
/// slow path checked the pair, refreshed `RevFlow::last_seen` and found the flow unexpired
/// this second.
#[inline(always)]
pub fn fast(f: *mut Flow, seg: &Seg, now: u32) -> bool {
    // SAFETY: a live map value, read and written field by field (the slow path may refresh
    // it on another CPU; its copies only ever narrow what this accepts).
    let fl = unsafe { &mut *f };
    if fl.flags & FLOW_F_FAST == 0 || fl.synced != now || seg.flags & (SYN | FIN | RST) != 0 {
        return false;
    }
    let end = fl.client_end;
    if !in_window(seg.seq, end, fl.peer_win) {
        return true;
    }
    // A wider window than `REV_FLOWS` knows is recorded there (the origin's segments are
    // checked against it).
    if scaled(seg.win, fl.client_wscale, fl.origin_wscale, false) > fl.client_win {
        return false;
    }
    let new_end = seg.seq.wrapping_add(seg.len);
    if ahead(new_end, end) {
        fl.client_end = new_end;
    }
    true
}

/// Before `track` on the slow path: the window edge the fast path advanced in `f` moves into
/// `r`, the pair's tracking entry.
#[inline(always)]
pub fn sync_in(f: *const Flow, r: *mut RevFlow) {
    // SAFETY: live map values, read and written field by field.
    unsafe {
        if (*f).flags & FLOW_F_FAST != 0 && ahead((*f).client_end, (*r).client_end) {
            (*r).client_end = (*f).client_end;
        }
    }
}

/// After `track` on the slow path: `f` takes the copies the fast path reads this second.
#[inline(always)]
pub fn sync_out(f: *mut Flow, r: *const RevFlow, now: u32) {
    // SAFETY: live map values, read and written field by field.
    unsafe {
        let flags = (*r).flags;
        (*f).client_end = (*r).client_end;
        (*f).peer_win = (*r).origin_win;
        (*f).client_win = (*r).client_win;
        (*f).client_wscale = (*r).client_wscale;
        (*f).origin_wscale = (*r).origin_wscale;
        (*f).ack_shift = if flags & CT_COOKIE != 0 {
            (*r).seq_delta
        } else {
            0
        };
        (*f).synced = now;
        (*f).flags = if open(flags) { FLOW_F_FAST } else { 0 };
    }
    count(event::FLOW_SYNCED);
}

/// Advances the flow `r` with a non-SYN segment from the client, or any segment from the
/// origin (`from_client` false). `Err` carries the drop verdict
/// for a segment the flow refuses (its state is then unchanged).
#[inline(never)]
pub fn track(r: *mut RevFlow, seg: &Seg, from_client: bool, now: u32) -> Result<(), u32> {
    let ifindex = seg.ifindex;
    // SAFETY: a live map value; fields are read and written one at a time (the other
    // direction may update its own fields on another CPU; flags change atomically).
    let rv = unsafe { &mut *r };
    let flags = rv.flags;
    // Only the client keeps a handshake alive: an origin retransmitting its SYN-ACK to a
    // spoofed client that never answers must not hold the SNAT port past the SYN timeout.
    if rv.last_seen != now && (from_client || flags & CT_ESTABLISHED != 0) {
        rv.last_seen = now;
    }
    if !from_client && seg.flags & SYN != 0 {
        // The origin's SYN-ACK: it must acknowledge the client's SYN, during the handshake.
        if seg.flags & ACK == 0 || flags & CT_ESTABLISHED != 0 {
            return Err(drop(event::DROP_SYNACK_INVALID));
        }
        if seg.ack != rv.client_end {
            if flags & CT_SYNACK != 0 {
                return Err(drop(event::DROP_SYNACK_INVALID));
            }
            // It acknowledges an older SYN on this port: the origin still holds a half-open
            // connection of the port's previous (expired) flow.
            stale_answer(r, seg);
            return Ok(());
        }
        rv.origin_end = seg.seq.wrapping_add(seg.len);
        rv.origin_win = u32::from(seg.win);
        rv.origin_wscale = seg.wscale;
        rv.origin_if = ifindex;
        set_flags(r, CT_SYNACK);
        return Ok(());
    }
    if !from_client && flags & CT_SYNACK == 0 {
        // Before its SYN-ACK the origin may only refuse the SYN: a RST that acknowledges it
        // (RFC 793, SYN-SENT).
        if seg.flags & RST != 0 && seg.flags & ACK != 0 && seg.ack == rv.client_end {
            close(r, CT_RST, flags, now);
            return Ok(());
        }
        if seg.flags & (RST | ACK) == ACK {
            // An ACK that does not answer our SYN: the origin still holds the port's
            // previous connection (TIME_WAIT) and answered the new SYN for that one.
            stale_answer(r, seg);
            return Ok(());
        }
        return Err(drop(event::DROP_SYNACK_INVALID));
    }
    let (end, peer_win, own_ws, peer_ws, expected_if) = if from_client {
        (
            rv.client_end,
            rv.origin_win,
            rv.client_wscale,
            rv.origin_wscale,
            rv.client_if,
        )
    } else {
        (
            rv.origin_end,
            rv.client_win,
            rv.origin_wscale,
            rv.client_wscale,
            rv.origin_if,
        )
    };
    if from_client
        && seg.flags & RST != 0
        && flags & (CT_STALE | CT_SYNACK) == CT_STALE
        && seg.seq == rv.origin_end
        && ifindex == expected_if
    {
        // The client resets the origin's stale connection (its own SYN is still pending):
        // forwarded, the flow is unchanged.
        return Ok(());
    }
    let inside = in_window(seg.seq, end, peer_win);
    if seg.flags & RST != 0 {
        if !inside || ifindex != expected_if {
            return Err(drop(event::DROP_RST_INVALID));
        }
        close(r, CT_RST, flags, now);
        return Ok(());
    }
    if seg.flags & FIN != 0 {
        if !inside || ifindex != expected_if {
            return Err(drop(event::DROP_FIN_INVALID));
        }
        let bit = if from_client {
            CT_FIN_CLIENT
        } else {
            CT_FIN_ORIGIN
        };
        if flags & bit == 0 {
            close(r, bit, flags, now);
        }
    }
    if inside {
        let new_end = seg.seq.wrapping_add(seg.len);
        let ahead = ahead(new_end, end);
        let win = scaled(seg.win, own_ws, peer_ws, false);
        if from_client {
            if ahead {
                rv.client_end = new_end;
            }
            if win > rv.client_win {
                rv.client_win = win;
            }
        } else {
            if ahead {
                rv.origin_end = new_end;
            }
            if win > rv.origin_win {
                rv.origin_win = win;
            }
        }
    }
    // The client's ACK of the SYN-ACK completes the handshake.
    if from_client
        && flags & (CT_SYNACK | CT_ESTABLISHED) == CT_SYNACK
        && seg.flags & ACK != 0
        && seg.ack == rv.origin_end
        && set_flags(r, CT_ESTABLISHED) & CT_ESTABLISHED == 0
    {
        handshake(now, true);
    }
    Ok(())
}

/// The origin answered the client's SYN for the SNAT port's previous connection (TIME_WAIT,
/// or half-open after an expired handshake): the answer goes on to the client, whose TCP
/// resets it (RFC 793 §3.4, SYN-SENT: the reset takes its sequence number from the
/// answer's ACK) and retries its SYN at once (Linux re-arms the SYN timer at its minimum
/// for this case). The ACK is kept (`origin_end`, free until the SYN-ACK) so that this one
/// RST from the client is let through.
#[inline(always)]
fn stale_answer(r: *mut RevFlow, seg: &Seg) {
    // SAFETY: a live map value.
    unsafe { (*r).origin_end = seg.ack };
    set_flags(r, CT_STALE);
    count(event::ORIGIN_STALE_ANSWER);
}

/// Records a FIN (`CT_FIN_*`) or RST: a flow closed by it leaves `ORIGIN_FLOWS`, and a
/// handshake reset before it completed counts as finished.
#[inline(always)]
fn close(r: *mut RevFlow, bit: u32, flags: u32, now: u32) {
    let before = set_flags(r, bit) | flags;
    if RevFlow::closed(before | bit) {
        mark_closing(r);
    }
    if bit == CT_RST && before & (CT_ESTABLISHED | CT_RST) == 0 {
        handshake(now, true);
    }
}

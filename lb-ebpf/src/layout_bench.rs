//! Flow-table layouts side by side, for `cargo xtask bench` only (its own object, so that
//! nothing else allocates these maps): the same 72-byte `Flow` values under the same keys
//! in a plain hash (what `FLOWS` and `REV_FLOWS` are), a shared LRU hash, and a per-CPU LRU
//! hash (`BPF_F_NO_COMMON_LRU`, as Katran's flow table). `table_lookup` looks up tuple `i`
//! of the table the frame names: the frame's first four bytes are `i` (little-endian), the
//! fifth the table (0 hash, 1 LRU, 2 per-CPU LRU).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_COMMON_LRU},
    btf_maps::{HashMap, LruHashMap},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{v4_mapped, Flow, FlowKey, IPPROTO_TCP};

/// Entries per table: the data path's default flow table.
const ENTRIES: usize = 1 << 20;

#[btf_map]
static LAYOUT_HASH: HashMap<FlowKey, Flow, ENTRIES> = HashMap::new();

#[btf_map]
static LAYOUT_LRU: LruHashMap<FlowKey, Flow, ENTRIES> = LruHashMap::new();

#[btf_map]
static LAYOUT_LRU_PERCPU: LruHashMap<FlowKey, Flow, ENTRIES, { BPF_F_NO_COMMON_LRU as usize }> =
    LruHashMap::new();

/// Tuple `i`: client 10.128.0.0 + i / 4, source port 10000 + i % 4, to 10.0.0.10:80 (the
/// bench writes the same keys).
#[inline(always)]
fn key(i: u32) -> FlowKey {
    #[expect(clippy::cast_possible_truncation, reason = "below 10004")]
    let port = (10_000 + (i & 3)) as u16;
    FlowKey {
        src: v4_mapped((0x0a80_0000u32 + (i >> 2)).to_be_bytes()),
        dst: v4_mapped([10, 0, 0, 10]),
        sport: port.to_be(),
        dport: 80u16.to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// XDP_TX when tuple `i` is in the named table (and its value is read), XDP_DROP when not,
/// XDP_ABORTED for a frame too short or a table that does not exist.
#[xdp]
pub fn table_lookup(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 5 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: five bytes bounds-checked above.
    let (i, table) = unsafe {
        let p = start as *const u8;
        (
            u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]),
            *p.add(4),
        )
    };
    let k = key(i);
    let found = match table {
        0 => LAYOUT_HASH.get_ptr(&k),
        1 => LAYOUT_LRU.get_ptr(&k),
        2 => LAYOUT_LRU_PERCPU.get_ptr(&k),
        _ => return xdp_action::XDP_ABORTED,
    };
    match found {
        // SAFETY: a live map value; one field read, as the fast path reads its flow.
        Some(f) if unsafe { (*f).origin_port } != 0 => xdp_action::XDP_TX,
        _ => xdp_action::XDP_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[used]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

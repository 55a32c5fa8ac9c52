//! The address family a packet handler is written for: IPv4 (`V4`, in `lb_xdp` and `lb_udp`)
//! or IPv6 (`V6`, in `lb_v6` and `lb_v6_udp`). The TCP and UDP paths are generic over it and
//! monomorphized once per program, so both families run the same connection tracking, SNAT,
//! cookies and counters, and neither program's verification pays for the other family.
//!
//! Flow tables hold 16-byte addresses: IPv4 ones IPv4-mapped, IPv6 ones as they are. A
//! frame's transport header always sits at `L4_OFF` (Ethernet, then the IP header without
//! options: `lb_xdp` refuses IPv4 options, `lb_v6` removes or refuses extension headers
//! before these paths run).

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, iphdr, ipv6hdr, tcphdr},
    helpers::generated::{
        bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
    },
};
use lb_common::{v4_mapped, Settings};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::csum;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the generic packet paths need to know about an IP header.
///
/// # Safety
/// Every `unsafe fn` takes a header pointer the caller bounds-checked (`Self::Ip` fits in
/// the frame at `EthHdr::LEN`).
pub trait Family {
    /// The IP header (without options or extension headers).
    type Ip;
    /// Length of `Ip`.
    const IP_LEN: usize;
    /// Offset of the transport header in the frame.
    const L4_OFF: usize = EthHdr::LEN + Self::IP_LEN;
    /// The IPv6 family: no header checksum, a checksum-less UDP datagram is invalid.
    const V6: bool;

    /// (source, destination) as flow-table addresses.
    unsafe fn addrs(ip: *const Self::Ip) -> ([u8; 16], [u8; 16]);
    /// Writes (source, destination) into a flow key's address fields, in place.
    unsafe fn key_addrs(ip: *const Self::Ip, src: *mut [u8; 16], dst: *mut [u8; 16]);
    /// TTL or hop limit.
    unsafe fn ttl(ip: *const Self::Ip) -> u8;
    /// Bytes after the IP header that the header counts (the transport segment).
    unsafe fn l4_len(ip: *const Self::Ip) -> u32;
    /// The whole IP packet's length, as the FIB helper and next-hop caches take it.
    unsafe fn wire_len(ip: *const Self::Ip) -> u16;
    /// Writes new addresses and takes one from the TTL (the caller refused TTL <= 1); returns
    /// `l4_check`, a transport checksum, updated for the pseudo-header's addresses.
    unsafe fn rewrite(ip: *mut Self::Ip, src: &[u8; 16], dst: &[u8; 16], l4_check: u16) -> u16;
    /// Writes a fresh header for a TCP segment of `l4_len` bytes from `src` to `dst`; returns
    /// the one's-complement sum of the TCP pseudo-header (unfolded).
    unsafe fn fill_tcp(ip: *mut Self::Ip, src: &[u8; 16], dst: &[u8; 16], l4_len: u16) -> u32;
    /// `fill_tcp` for a segment back to the packet's sender: the addresses swapped in place.
    unsafe fn fill_tcp_back(ip: *mut Self::Ip, l4_len: u16) -> u32;
    /// Fills the FIB helper's request for the packet.
    unsafe fn fib(p: &mut FibParams, ip: *const Self::Ip);
    /// Is `a` one of this family's SNAT addresses?
    fn is_snat(s: &Settings, a: &[u8; 16]) -> bool;
    /// A kernel SYN cookie for the SYN whose IP and TCP headers (`th_len` bytes) are at `ip`
    /// and `th` (copies on the stack or in a map): `cookie | mss << 32`, or negative.
    unsafe fn gen_cookie(ip: *mut u8, th: *mut u8, th_len: u32) -> i64;
    /// Does the ACK at `ip`, `tcp` carry a valid kernel SYN cookie?
    unsafe fn check_cookie(ip: *mut Self::Ip, th: *mut u8) -> bool;
}

/// IPv4 (`lb_xdp`, `lb_udp`).
pub struct V4;
/// IPv6 (`lb_v6`, `lb_v6_udp`).
pub struct V6;

/// The IPv4 address in an IPv4-mapped one.
#[inline(always)]
pub fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// One's-complement sum of `N` 16-bit words at `p` (as they sit in memory).
#[inline(always)]
pub fn sum_words<const N: usize>(p: *const u8, mut acc: u32) -> u32 {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller bounds-checked N * 2 bytes at p.
        acc += u32::from(unsafe { p.add(i * 2).cast::<u16>().read_unaligned() });
        i += 1;
    }
    acc
}

/// `sum_words` with each word added as it is loaded (volatile loads keep their order): an
/// unrolled sum of many words otherwise loads them all first, and spills them.
#[inline(always)]
pub fn sum_words_seq<const N: usize>(p: *const u8, mut acc: u32) -> u32 {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller bounds-checked N * 2 bytes at p (2-byte aligned in the frame).
        acc += u32::from(unsafe { p.add(i * 2).cast::<u16>().read_volatile() });
        i += 1;
    }
    acc
}

/// Folds a one's-complement sum and complements it: the checksum field's value.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let v = !(s as u16);
    v
}

impl Family for V4 {
    type Ip = Ipv4Hdr;
    const IP_LEN: usize = Ipv4Hdr::LEN;
    const V6: bool = false;

    #[inline(always)]
    unsafe fn addrs(ip: *const Ipv4Hdr) -> ([u8; 16], [u8; 16]) {
        (v4_mapped((*ip).src_addr), v4_mapped((*ip).dst_addr))
    }

    #[inline(always)]
    unsafe fn key_addrs(ip: *const Ipv4Hdr, src: *mut [u8; 16], dst: *mut [u8; 16]) {
        *src = v4_mapped((*ip).src_addr);
        *dst = v4_mapped((*ip).dst_addr);
    }

    #[inline(always)]
    unsafe fn ttl(ip: *const Ipv4Hdr) -> u8 {
        (*ip).ttl
    }

    #[inline(always)]
    unsafe fn l4_len(ip: *const Ipv4Hdr) -> u32 {
        u32::from(u16::from_be_bytes((*ip).tot_len)).saturating_sub(Ipv4Hdr::LEN as u32)
    }

    #[inline(always)]
    unsafe fn wire_len(ip: *const Ipv4Hdr) -> u16 {
        u16::from_be_bytes((*ip).tot_len)
    }

    #[inline(always)]
    unsafe fn rewrite(ip: *mut Ipv4Hdr, src: &[u8; 16], dst: &[u8; 16], l4_check: u16) -> u16 {
        let (src4, dst4) = (v4(src), v4(dst));
        let old_src = (*ip).src_addr;
        let old_dst = (*ip).dst_addr;
        // TTL and protocol share one 16-bit word (RFC 791): update it as a word.
        let ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let mut ipc = u16::from_ne_bytes((*ip).check);
        ipc = csum::replace32(ipc, old_src, src4);
        ipc = csum::replace32(ipc, old_dst, dst4);
        ipc = csum::replace16(ipc, ttl_word, new_ttl_word);
        (*ip).check = ipc.to_ne_bytes();
        (*ip).src_addr = src4;
        (*ip).dst_addr = dst4;
        let c = csum::replace32(l4_check, old_src, src4);
        csum::replace32(c, old_dst, dst4)
    }

    #[inline(always)]
    unsafe fn fill_tcp(ip: *mut Ipv4Hdr, src: &[u8; 16], dst: &[u8; 16], l4_len: u16) -> u32 {
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = (Ipv4Hdr::LEN as u16 + l4_len).to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0x40, 0];
        (*ip).ttl = 64;
        (*ip).proto = 6;
        (*ip).check = [0, 0];
        (*ip).src_addr = v4(src);
        (*ip).dst_addr = v4(dst);
        (*ip).check = fold(sum_words::<10>(ip.cast(), 0)).to_ne_bytes();
        // Pseudo-header (RFC 793 §3.1): addresses, protocol 6, TCP length.
        sum_words::<4>((&raw const (*ip).src_addr).cast(), 0)
            + u32::from(6u16.to_be())
            + u32::from(l4_len.to_be())
    }

    #[inline(always)]
    unsafe fn fill_tcp_back(ip: *mut Ipv4Hdr, l4_len: u16) -> u32 {
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        Self::fill_tcp(ip, &v4_mapped(dst), &v4_mapped(src), l4_len)
    }

    #[inline(always)]
    unsafe fn fib(p: &mut FibParams, ip: *const Ipv4Hdr) {
        p.family = AF_INET;
        p.l4_protocol = (*ip).proto;
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes((*ip).tot_len);
        p.__bindgen_anon_2.tos = (*ip).tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).src_addr);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).dst_addr);
    }

    #[inline(always)]
    fn is_snat(s: &Settings, a: &[u8; 16]) -> bool {
        s.is_snat_addr(a)
    }

    #[inline(always)]
    unsafe fn gen_cookie(ip: *mut u8, th: *mut u8, th_len: u32) -> i64 {
        bpf_tcp_raw_gen_syncookie_ipv4(ip.cast::<iphdr>(), th.cast::<tcphdr>(), th_len)
    }

    #[inline(always)]
    unsafe fn check_cookie(ip: *mut Ipv4Hdr, th: *mut u8) -> bool {
        bpf_tcp_raw_check_syncookie_ipv4(ip.cast::<iphdr>(), th.cast::<tcphdr>()) == 0
    }
}

/// Copies 16 bytes word by word, each word stored before the next is loaded: a plain copy
/// of an unaligned array is loaded byte by byte ahead of the stores, and spilled.
#[inline(always)]
pub unsafe fn copy16(from: *const u16, to: *mut u16) {
    let mut i = 0;
    while i < 8 {
        to.add(i).write_unaligned(from.add(i).read_unaligned());
        i += 1;
    }
}

/// The rest of a fresh IPv6 header for a TCP segment of `l4_len` bytes (addresses written);
/// the pseudo-header's sum (RFC 8200 §8.1: addresses, upper-layer length, next header 6).
#[inline(always)]
unsafe fn v6_tcp_header(ip: *mut Ipv6Hdr, l4_len: u16) -> u32 {
    (*ip).vcf = [0x60, 0, 0, 0];
    (*ip).payload_len = l4_len.to_be_bytes();
    (*ip).next_hdr = 6;
    (*ip).hop_limit = 64;
    sum_words_seq::<16>((&raw const (*ip).src_addr).cast(), 0)
        + u32::from(6u16.to_be())
        + u32::from(l4_len.to_be())
}

impl Family for V6 {
    type Ip = Ipv6Hdr;
    const IP_LEN: usize = Ipv6Hdr::LEN;
    const V6: bool = true;

    #[inline(always)]
    unsafe fn addrs(ip: *const Ipv6Hdr) -> ([u8; 16], [u8; 16]) {
        ((*ip).src_addr, (*ip).dst_addr)
    }

    #[inline(always)]
    unsafe fn key_addrs(ip: *const Ipv6Hdr, src: *mut [u8; 16], dst: *mut [u8; 16]) {
        copy16((&raw const (*ip).src_addr).cast(), src.cast());
        copy16((&raw const (*ip).dst_addr).cast(), dst.cast());
    }

    #[inline(always)]
    unsafe fn ttl(ip: *const Ipv6Hdr) -> u8 {
        (*ip).hop_limit
    }

    #[inline(always)]
    unsafe fn l4_len(ip: *const Ipv6Hdr) -> u32 {
        u32::from(u16::from_be_bytes((*ip).payload_len))
    }

    #[inline(always)]
    unsafe fn wire_len(ip: *const Ipv6Hdr) -> u16 {
        u16::from_be_bytes((*ip).payload_len).saturating_add(Ipv6Hdr::LEN as u16)
    }

    /// A subprogram of its own: four 128-bit checksum updates are too much for the stack
    /// frame of the path that inlines them.
    #[inline(never)]
    unsafe fn rewrite(ip: *mut Ipv6Hdr, src: &[u8; 16], dst: &[u8; 16], l4_check: u16) -> u16 {
        // No header checksum in IPv6 (RFC 8200 §3); the hop limit is not in any checksum.
        (*ip).hop_limit -= 1;
        let c = csum::replace128(l4_check, &(*ip).src_addr, src);
        let c = csum::replace128(c, &(*ip).dst_addr, dst);
        (*ip).src_addr = *src;
        (*ip).dst_addr = *dst;
        c
    }

    /// A subprogram of its own (as `fill_tcp_back`): 32 address bytes inlined into a caller
    /// crowd its stack frame.
    #[inline(never)]
    unsafe fn fill_tcp(ip: *mut Ipv6Hdr, src: &[u8; 16], dst: &[u8; 16], l4_len: u16) -> u32 {
        (*ip).src_addr = *src;
        (*ip).dst_addr = *dst;
        v6_tcp_header(ip, l4_len)
    }

    #[inline(never)]
    unsafe fn fill_tcp_back(ip: *mut Ipv6Hdr, l4_len: u16) -> u32 {
        // Word by word, each pair loaded and stored before the next.
        let a = (&raw mut (*ip).src_addr).cast::<u16>();
        let b = (&raw mut (*ip).dst_addr).cast::<u16>();
        let mut i = 0;
        while i < 8 {
            let t = a.add(i).read_unaligned();
            a.add(i).write_unaligned(b.add(i).read_unaligned());
            b.add(i).write_unaligned(t);
            i += 1;
        }
        v6_tcp_header(ip, l4_len)
    }

    #[inline(always)]
    unsafe fn fib(p: &mut FibParams, ip: *const Ipv6Hdr) {
        p.family = AF_INET6;
        p.l4_protocol = (*ip).next_hdr;
        p.__bindgen_anon_1.tot_len = Self::wire_len(ip);
        // Traffic class and flow label, as the kernel's own forwarding passes them.
        p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes((*ip).vcf) & 0x0fff_ffffu32.to_be();
        p.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>((*ip).src_addr);
        p.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>((*ip).dst_addr);
    }

    #[inline(always)]
    fn is_snat(s: &Settings, a: &[u8; 16]) -> bool {
        s.is_snat_v6(a)
    }

    #[inline(always)]
    unsafe fn gen_cookie(ip: *mut u8, th: *mut u8, th_len: u32) -> i64 {
        bpf_tcp_raw_gen_syncookie_ipv6(ip.cast::<ipv6hdr>(), th.cast::<tcphdr>(), th_len)
    }

    #[inline(always)]
    unsafe fn check_cookie(ip: *mut Ipv6Hdr, th: *mut u8) -> bool {
        bpf_tcp_raw_check_syncookie_ipv6(ip.cast::<ipv6hdr>(), th.cast::<tcphdr>()) == 0
    }
}

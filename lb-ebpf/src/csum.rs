//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Values are the raw 16-bit words as they sit in the packet (loaded in host order without a
//! byte swap): one's-complement sums are byte-order independent (RFC 1071 §2(B)), so no
//! conversion is needed as long as old, new and checksum are all taken the same way.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    // Two folds always suffice for the sums built here (at most a few dozen 16-bit words).
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// Checksum after a 4-byte field (an IPv4 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace32(csum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let o0 = u16::from_ne_bytes([old[0], old[1]]);
    let o1 = u16::from_ne_bytes([old[2], old[3]]);
    let n0 = u16::from_ne_bytes([new[0], new[1]]);
    let n1 = u16::from_ne_bytes([new[2], new[3]]);
    !fold(u32::from(!csum) + u32::from(!o0) + u32::from(!o1) + u32::from(n0) + u32::from(n1))
}

/// Checksum after a 16-byte field (an IPv6 address) changed from `old` to `new`. A
/// subprogram: eight words each side, inlined at every call, crowd the caller's stack.
#[inline(never)]
pub fn replace128(csum: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut s = u32::from(!csum);
    let mut i = 0;
    while i < 16 {
        s += u32::from(!u16::from_ne_bytes([old[i], old[i + 1]]));
        s += u32::from(u16::from_ne_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(s)
}

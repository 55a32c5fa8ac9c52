//! The hashes: the flow hash, MurmurHash3 (x86, 32-bit) rounds over the words of a
//! 5-tuple, and FNV-1a 64 over bytes.
//!
//! The XDP program uses the flow hash to pick a Maglev slot and a first SNAT port for a new
//! flow; the agent and the tests use the same function to predict those choices exactly.
//! FNV-1a is user space's: Maglev backend keys, file-object ids, digests, test transfers.

use crate::FlowKey;

/// Seed for the Maglev slot of a new flow.
pub const SEED_RING: u32 = 0x9747_b28c;
/// Seed for the first SNAT port a new flow tries.
pub const SEED_SNAT: u32 = 0x2545_f491;
/// Seed for the pool a new flow of a `random` VIP takes (`POOL_SEL`).
pub const SEED_POOL: u32 = 0x6c8e_9cf5;

#[inline(always)]
const fn round(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a 5-tuple. Ports enter as the bytes seen on the wire, so the result does not depend
/// on byte-order conversions on either side.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = round(h, word(&key.src, 0));
    h = round(h, word(&key.src, 4));
    h = round(h, word(&key.src, 8));
    h = round(h, word(&key.src, 12));
    h = round(h, word(&key.dst, 0));
    h = round(h, word(&key.dst, 4));
    h = round(h, word(&key.dst, 8));
    h = round(h, word(&key.dst, 12));
    h = round(h, (key.sport as u32) | ((key.dport as u32) << 16));
    h = round(h, key.proto as u32);
    finish(h, 40)
}

/// Hash of a client address alone: `hash` origin steering and client-keyed pool choice, so
/// that every connection of one client lands on the same slot.
#[inline(always)]
pub const fn addr_hash(addr: &[u8; 16], seed: u32) -> u32 {
    let mut h = seed;
    h = round(h, word(addr, 0));
    h = round(h, word(addr, 4));
    h = round(h, word(addr, 8));
    h = round(h, word(addr, 12));
    finish(h, 16)
}

/// FNV-1a's 64-bit offset basis: the usual starting value of `fnv1a64`.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `data`, continuing from `h` (`FNV_OFFSET` to start; another value gives an
/// independent hash, or continues one over several pieces).
#[must_use]
pub fn fnv1a64(data: &[u8], mut h: u64) -> u64 {
    let mut i = 0;
    while i < data.len() {
        h ^= u64::from(data[i]);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a", and "foobar".
        assert_eq!(fnv1a64(b"", FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar", FNV_OFFSET), 0x8594_4171_f739_67e8);
        // Continuing over pieces is hashing the whole.
        assert_eq!(
            fnv1a64(b"bar", fnv1a64(b"foo", FNV_OFFSET)),
            fnv1a64(b"foobar", FNV_OFFSET)
        );
    }
}

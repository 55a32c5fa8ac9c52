//! A small MaxMind DB writer for tests: builds GeoLite2-Country-shaped databases from a
//! list of IPv4 prefixes, so the agent's geo loader is tested without shipping MaxMind data.
//!
//! Written from the format spec, <https://maxmind.github.io/MaxMind-DB/> (version 2.0):
//! a binary search tree of 24-bit records, 16 zero bytes, the data section, then
//! `"\xAB\xCD\xEFMaxMind.com"` and the metadata map. Like the real GeoLite2 files the tree
//! is IPv6 (`ip_version` 6) and IPv4 networks live under `::/96`. `write_country_db` leaves
//! out the aliases MaxMind also writes (readers find IPv4 through `::/96`);
//! `country_db_ip` takes IPv6 networks too and can write the aliases (`::ffff:0:0/96`,
//! `2001::/32` Teredo, `2002::/16` 6to4: each points at the IPv4 subtree's node, as in
//! MaxMind's files).

use std::{
    collections::HashMap,
    io::{Error, ErrorKind, Result},
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

/// Bits per search-tree record; 24 keeps nodes at 6 bytes and is plenty for test data.
const RECORD_BITS: u32 = 24;
/// Bytes of zeros between the search tree and the data section.
const DATA_SEPARATOR: usize = 16;
/// Start of the metadata section.
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// Depth of the IPv4 subtree in an IPv6 tree: `::a.b.c.d` is 96 zero bits, then the address.
const IPV4_DEPTH: u32 = 96;
/// The continent written for records without a country, so they are maps that are not empty
/// (GeoLite2 has such records for anycast and satellite networks).
const NO_COUNTRY_CONTINENT: &str = "EU";

/// Writes a GeoLite2-Country-shaped database to `path`.
///
/// Each entry is (network, prefix length, ISO country code). A code makes the record
/// `{"country": {"iso_code": CODE}}`; `None` makes a record with no country,
/// `{"continent": {"code": "EU"}}`. A more specific prefix overrides a less specific one that
/// contains it, whatever the order of `entries`; for equal prefixes the later entry wins.
///
/// Fails with `InvalidInput` when a prefix is longer than 32 or has host bits set, or when
/// the database would not fit 24-bit records.
pub fn write_country_db(path: &Path, entries: &[(Ipv4Addr, u8, Option<&str>)]) -> Result<()> {
    std::fs::write(path, country_db(entries)?)
}

/// The bytes of the database `write_country_db` writes.
pub fn country_db(entries: &[(Ipv4Addr, u8, Option<&str>)]) -> Result<Vec<u8>> {
    let entries: Vec<(IpAddr, u8, Option<&str>)> = entries
        .iter()
        .map(|&(net, len, country)| (IpAddr::V4(net), len, country))
        .collect();
    country_db_ip(&entries, false)
}

/// Writes `country_db_ip(entries, aliases)` to `path`.
pub fn write_country_db_ip(
    path: &Path,
    entries: &[(IpAddr, u8, Option<&str>)],
    aliases: bool,
) -> Result<()> {
    std::fs::write(path, country_db_ip(entries, aliases)?)
}

/// A database of IPv4 networks (under `::/96`) and IPv6 networks (at their own prefix),
/// each (network, prefix length in its family, country) as in `write_country_db`. With
/// `aliases`, the records of `::ffff:0:0/96`, `2001::/32` and `2002::/16` point at the IPv4
/// subtree (the node at `::/96`), as MaxMind's databases do; an IPv6 entry inside an alias
/// is then unreachable, as in theirs.
pub fn country_db_ip(entries: &[(IpAddr, u8, Option<&str>)], aliases: bool) -> Result<Vec<u8>> {
    // The data section: one record per distinct country, shared by every network that has it.
    let mut data = Vec::new();
    let mut record_offsets: HashMap<Option<&str>, usize> = HashMap::new();
    let mut tree = Tree::default();
    // Shorter prefixes first (in 128-bit terms), so a longer one splits the leaf it lands in
    // instead of being overwritten by it; the sort is stable, so equal prefixes keep their
    // order.
    let depth_of = |net: &IpAddr, len: u8| match net {
        IpAddr::V4(_) => IPV4_DEPTH + u32::from(len),
        IpAddr::V6(_) => u32::from(len),
    };
    let mut ordered: Vec<&(IpAddr, u8, Option<&str>)> = entries.iter().collect();
    ordered.sort_by_key(|(net, len, _)| depth_of(net, *len));
    for &&(net, len, country) in &ordered {
        let bits = match net {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(invalid(format!("{net}/{len}: prefix longer than 32")));
                }
                if u32::from(a) & !prefix_mask(len) != 0 {
                    return Err(invalid(format!("{net}/{len}: host bits set")));
                }
                u128::from(u32::from(a))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(invalid(format!("{net}/{len}: prefix longer than 128")));
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                if u128::from(a) & !mask != 0 {
                    return Err(invalid(format!("{net}/{len}: host bits set")));
                }
                u128::from(a)
            }
        };
        let offset = *record_offsets.entry(country).or_insert_with(|| {
            let offset = data.len();
            encode_record(&mut data, country);
            offset
        });
        tree.insert(bits, depth_of(&net, len), offset);
    }
    if aliases {
        let ipv4 = tree.node_at(0, IPV4_DEPTH);
        for (net, len) in [
            (0xffff_u128 << 32, 96),
            (0x2001_u128 << 112, 32),
            (0x2002_u128 << 112, 16),
        ] {
            tree.link(net, len, ipv4);
        }
    }

    let node_count = tree.nodes.len();
    // Data records are addressed as node_count + 16 + offset; all of it must fit a record.
    let max_record = node_count + DATA_SEPARATOR + data.len();
    if max_record >= 1 << RECORD_BITS {
        return Err(invalid(format!(
            "{node_count} nodes and {} data bytes do not fit {RECORD_BITS}-bit records",
            data.len()
        )));
    }
    let record = |child: Child| -> u32 {
        let value = match child {
            Child::Empty => node_count,
            Child::Node(i) => i,
            Child::Data(offset) => node_count + DATA_SEPARATOR + offset,
        };
        u32::try_from(value).expect("checked against 1 << RECORD_BITS above")
    };

    let mut out = Vec::with_capacity(node_count * 6 + DATA_SEPARATOR + data.len() + 256);
    for node in &tree.nodes {
        for child in node {
            // 24-bit records are stored big-endian, left record then right record.
            out.extend_from_slice(&record(*child).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; DATA_SEPARATOR]);
    out.extend_from_slice(&data);
    out.extend_from_slice(METADATA_MARKER);
    encode_metadata(&mut out, u32::try_from(node_count).expect("checked above"));
    Ok(out)
}

/// Where a search-tree record points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    /// No data for this network.
    Empty,
    /// Another node, by index.
    Node(usize),
    /// A data record, by offset in the data section.
    Data(usize),
}

/// The search tree under construction: node 0 is the root, children are [0 bit, 1 bit].
struct Tree {
    nodes: Vec<[Child; 2]>,
}

impl Default for Tree {
    fn default() -> Self {
        Self {
            nodes: vec![[Child::Empty; 2]],
        }
    }
}

impl Tree {
    /// Points the network `addr/depth` (of a 128-bit address) at `data`.
    ///
    /// A leaf on the way down is split into a node whose two children keep the leaf's value,
    /// so the rest of the less specific network keeps its data.
    fn insert(&mut self, addr: u128, depth: u32, data: usize) {
        let bit = |i: u32| usize::from(addr >> (127 - i) & 1 == 1);
        if depth == 0 {
            // The whole address space is one network: both halves get it.
            self.nodes[0] = [Child::Data(data); 2];
            return;
        }
        let mut node = 0;
        for i in 0..depth - 1 {
            let b = bit(i);
            node = match self.nodes[node][b] {
                Child::Node(next) => next,
                leaf => {
                    let next = self.nodes.len();
                    self.nodes.push([leaf; 2]);
                    self.nodes[node][b] = Child::Node(next);
                    next
                }
            };
        }
        self.nodes[node][bit(depth - 1)] = Child::Data(data);
    }

    /// The node at `addr/depth` (`depth` > 0), made (splitting leaves) if missing.
    fn node_at(&mut self, addr: u128, depth: u32) -> usize {
        let bit = |i: u32| usize::from(addr >> (127 - i) & 1 == 1);
        let mut node = 0;
        for i in 0..depth {
            let b = bit(i);
            node = match self.nodes[node][b] {
                Child::Node(next) => next,
                leaf => {
                    let next = self.nodes.len();
                    self.nodes.push([leaf; 2]);
                    self.nodes[node][b] = Child::Node(next);
                    next
                }
            };
        }
        node
    }

    /// Points the record of `addr/depth` at node `target` (an alias).
    fn link(&mut self, addr: u128, depth: u32, target: usize) {
        let parent = self.node_at(addr, depth - 1);
        self.nodes[parent][usize::from(addr >> (128 - depth) & 1 == 1)] = Child::Node(target);
    }
}

/// Writes a GeoLite2-Country-shaped record.
fn encode_record(out: &mut Vec<u8>, country: Option<&str>) {
    let (outer, inner, value) = match country {
        Some(code) => ("country", "iso_code", code),
        None => ("continent", "code", NO_COUNTRY_CONTINENT),
    };
    map_header(out, 1);
    string(out, outer);
    map_header(out, 1);
    string(out, inner);
    string(out, value);
}

/// Writes the metadata map that follows the marker.
fn encode_metadata(out: &mut Vec<u8>, node_count: u32) {
    map_header(out, 9);
    string(out, "node_count");
    uint(out, TYPE_UINT32, u64::from(node_count));
    string(out, "record_size");
    uint(out, TYPE_UINT16, u64::from(RECORD_BITS));
    string(out, "ip_version");
    uint(out, TYPE_UINT16, 6);
    string(out, "database_type");
    string(out, "GeoLite2-Country");
    string(out, "languages");
    control(out, TYPE_ARRAY, 1);
    string(out, "en");
    string(out, "binary_format_major_version");
    uint(out, TYPE_UINT16, 2);
    string(out, "binary_format_minor_version");
    uint(out, TYPE_UINT16, 0);
    string(out, "build_epoch");
    // A fixed epoch keeps the output reproducible; readers only check it is representable.
    uint(out, TYPE_UINT64, 1_700_000_000);
    string(out, "description");
    map_header(out, 1);
    string(out, "en");
    string(out, "lb-testbed test database");
}

// Data-section type numbers (spec, "Output Data Types"); 8 and up are "extended" types.
const TYPE_UTF8: u8 = 2;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;

/// Writes a control byte (+ extended type byte + size bytes) for `kind` with payload `size`.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    // The size is < 29 inline, else 29/30/31 say one/two/three more bytes follow, each form
    // starting where the previous one ends (29, 285, 65_821).
    let (inline, extra): (u8, Vec<u8>) = match size {
        0..29 => (u8::try_from(size).expect("< 29"), Vec::new()),
        29..285 => (29, vec![u8::try_from(size - 29).expect("< 256")]),
        285..65_821 => (
            30,
            u16::try_from(size - 285)
                .expect("< 65536")
                .to_be_bytes()
                .to_vec(),
        ),
        _ => (
            31,
            u32::try_from(size - 65_821).expect("small").to_be_bytes()[1..].to_vec(),
        ),
    };
    if kind < 8 {
        out.push(kind << 5 | inline);
    } else {
        // Extended type: type bits 0, then a byte holding type - 7, then the size bytes.
        out.push(inline);
        out.push(kind - 7);
    }
    out.extend_from_slice(&extra);
}

fn map_header(out: &mut Vec<u8>, pairs: usize) {
    control(out, TYPE_MAP, pairs);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, TYPE_UTF8, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Unsigned integers are big-endian with leading zero bytes left out (0 has no bytes).
fn uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_byte_sizes_follow_the_spec() {
        let encode = |kind, size| {
            let mut out = Vec::new();
            control(&mut out, kind, size);
            out
        };
        assert_eq!(encode(TYPE_UTF8, 2), [0x42]);
        assert_eq!(encode(TYPE_UTF8, 28), [0x5c]);
        assert_eq!(encode(TYPE_UTF8, 29), [0x5d, 0]);
        assert_eq!(encode(TYPE_UTF8, 284), [0x5d, 255]);
        assert_eq!(encode(TYPE_UTF8, 285), [0x5e, 0, 0]);
        assert_eq!(encode(TYPE_UTF8, 65_821), [0x5f, 0, 0, 0]);
        assert_eq!(encode(TYPE_ARRAY, 1), [0x01, 0x04]);
        assert_eq!(encode(TYPE_UINT64, 4), [0x04, 0x02]);
    }

    #[test]
    fn uints_drop_leading_zero_bytes() {
        let mut out = Vec::new();
        uint(&mut out, TYPE_UINT16, 0);
        uint(&mut out, TYPE_UINT16, 24);
        uint(&mut out, TYPE_UINT32, 0x01_02_03);
        assert_eq!(out, [0xa0, 0xa1, 24, 0xc3, 1, 2, 3]);
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        let host_bits = country_db(&[(Ipv4Addr::new(10, 0, 0, 1), 8, Some("DE"))]);
        assert_eq!(
            host_bits.expect_err("host bits").kind(),
            ErrorKind::InvalidInput
        );
        let too_long = country_db(&[(Ipv4Addr::new(10, 0, 0, 0), 33, Some("DE"))]);
        assert_eq!(too_long.expect_err("/33").kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn one_record_per_country_and_ends_with_metadata() {
        let db = country_db(&[
            (Ipv4Addr::new(10, 0, 0, 0), 8, Some("DE")),
            (Ipv4Addr::new(11, 0, 0, 0), 8, Some("DE")),
        ])
        .expect("valid entries");
        let record = b"\xe1\x47country\xe1\x48iso_code\x42DE";
        let found = db.windows(record.len()).filter(|w| w == record).count();
        assert_eq!(found, 1, "the DE record is written once");
        let marker_at = db
            .windows(METADATA_MARKER.len())
            .rposition(|w| w == METADATA_MARKER)
            .expect("metadata marker");
        assert_eq!(
            db[marker_at + METADATA_MARKER.len()],
            0xe9,
            "a map of 9 pairs"
        );
    }
}

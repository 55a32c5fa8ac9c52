//! Client geography for `geo` steering: Cloudflare's 13 load-balancing regions, the
//! country -> region table, and a MaxMind DB loader that turns a GeoIP2/GeoLite2 Country or
//! City database into the IPv4 and IPv6 prefixes of the `GEO` LPM trie.
//!
//! Pure code: the loader reads one file and returns values; writing maps is the
//! reconciler's job.

use std::{
    collections::{hash_map::Entry, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use lb_common::{addr16, GeoKey, GeoValue};
use maxminddb::{MaxMindDbError, Reader, WithinOptions};

/// One of Cloudflare's load-balancing regions, as used in `region_pools`.
///
/// `index()` is the `region` byte of `GeoValue` (1..=13, 0 = unknown) that the XDP program
/// sees, so the order is part of the map format: append, never reorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Region {
    /// WNAM, Western North America.
    Wnam = 1,
    /// ENAM, Eastern North America.
    Enam = 2,
    /// WEU, Western Europe.
    Weu = 3,
    /// EEU, Eastern Europe.
    Eeu = 4,
    /// NSAM, Northern South America.
    Nsam = 5,
    /// SSAM, Southern South America.
    Ssam = 6,
    /// OC, Oceania.
    Oc = 7,
    /// ME, Middle East.
    Me = 8,
    /// NAF, Northern Africa.
    Naf = 9,
    /// SAF, Southern Africa.
    Saf = 10,
    /// SAS, Southern Asia.
    Sas = 11,
    /// SEAS, Southeast Asia.
    Seas = 12,
    /// NEAS, Northeast Asia.
    Neas = 13,
}

impl Region {
    /// Every region, in `index()` order.
    pub const ALL: [Region; 13] = [
        Region::Wnam,
        Region::Enam,
        Region::Weu,
        Region::Eeu,
        Region::Nsam,
        Region::Ssam,
        Region::Oc,
        Region::Me,
        Region::Naf,
        Region::Saf,
        Region::Sas,
        Region::Seas,
        Region::Neas,
    ];

    /// The region with Cloudflare code `code` ("WNAM", ...); exact, uppercase only, as the
    /// Cloudflare API accepts them.
    pub fn parse(code: &str) -> Option<Region> {
        Self::ALL.into_iter().find(|region| region.code() == code)
    }

    /// Cloudflare's code for the region, e.g. "WNAM".
    pub fn code(self) -> &'static str {
        match self {
            Region::Wnam => "WNAM",
            Region::Enam => "ENAM",
            Region::Weu => "WEU",
            Region::Eeu => "EEU",
            Region::Nsam => "NSAM",
            Region::Ssam => "SSAM",
            Region::Oc => "OC",
            Region::Me => "ME",
            Region::Naf => "NAF",
            Region::Saf => "SAF",
            Region::Sas => "SAS",
            Region::Seas => "SEAS",
            Region::Neas => "NEAS",
        }
    }

    /// 1..=13: the `region` byte of `GeoValue`.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The region whose `index()` is `index`; `None` for 0 (unknown) and above 13.
    pub fn from_index(index: u8) -> Option<Region> {
        Self::ALL.get(usize::from(index).checked_sub(1)?).copied()
    }

    /// Cloudflare's name for the region, e.g. "Western North America".
    pub fn description(self) -> &'static str {
        match self {
            Region::Wnam => "Western North America",
            Region::Enam => "Eastern North America",
            Region::Weu => "Western Europe",
            Region::Eeu => "Eastern Europe",
            Region::Nsam => "Northern South America",
            Region::Ssam => "Southern South America",
            Region::Oc => "Oceania",
            Region::Me => "Middle East",
            Region::Naf => "Northern Africa",
            Region::Saf => "Southern Africa",
            Region::Sas => "Southern Asia",
            Region::Seas => "Southeast Asia",
            Region::Neas => "Northeast Asia",
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The Cloudflare region of country `cc` (ISO 3166-1 alpha-2, uppercase, as MaxMind and
/// Cloudflare write it); `None` for anything else.
pub fn country_region(cc: &str) -> Option<Region> {
    COUNTRIES
        .binary_search_by_key(&cc, |(code, _)| code)
        .ok()
        .map(|i| COUNTRIES[i].1)
}

/// Whether `cc` is a country code this module knows (every ISO 3166-1 alpha-2 code, plus XK).
pub fn is_country(cc: &str) -> bool {
    country_region(cc).is_some()
}

/// The countries `country_region` puts in `region`, in code order.
pub fn region_countries(region: Region) -> impl Iterator<Item = &'static str> {
    COUNTRIES
        .iter()
        .filter(move |(_, r)| *r == region)
        .map(|(code, _)| *code)
}

// Country -> region, sorted by code for binary search.
//
// Source: Cloudflare's Regions API, https://developers.cloudflare.com/load-balancing/reference/region-mapping-api/
// (GET /accounts/{id}/load_balancers/regions). It needs an account, so the table was taken
// from a published snapshot of its answer (github.com/troymjones/cloudflare-colo-list,
// regions.json) and the 200 example of the API reference (which adds HT to WNAM). That answer
// lists only the ~130 countries where Cloudflare has data centres:
//   WNAM CA(AB BC) HT MX US(AK AZ CA CO HI MO NE NM NV OK OR TX UT WA)
//   ENAM BB CA(MB NS ON QC SK) DO HN JM PR US(FL GA IL IN MA ME MI MN MO NC NJ NY OH PA SD TN VA)
//   WEU  BE CH DE ES FR GB IE IS IT LU NL PT
//   EEU  AL AT BG BY CZ DE DK EE FI GR HR HU IT LT LV MD MK NO PL RO RS RU SE SK TR UA
//   NSAM BR CO CR EC GD GT GY PA PE SR TT          SSAM AR BO BR CL PY
//   OC   AU FJ NC NZ PF                            ME   AE AM AZ BH CY GE IL IQ JO KW LB OM PS QA SA
//   NAF  BF CI DJ DZ EG GH NG SN TN                SAF  AO BW CD KE MG MU MZ NA RE RW TZ UG ZA ZM ZW
//   SAS  IN KZ LK MV NP PK RU                      SEAS BD BN BT GU ID KH LA MY PH SG TH VN
//   NEAS CN HK JP KR MN MO TW
// Countries it lists under two regions are split by subdivision (US, CA) or by data centre
// (BR, DE, IT, RU); a country-level table has to pick one, the region of most of the
// country's population: US -> ENAM (most people live in ENAM states), CA -> ENAM
// (Ontario, Quebec), BR -> SSAM (the south-east), DE -> WEU, IT -> WEU (the north), RU -> EEU
// (Moscow, St Petersburg). Every other code is put where its listed neighbours are: the
// Caribbean with BB/DO/JM in ENAM except the islands off Venezuela (NSAM, with GD/TT);
// Central America with GT/CR in NSAM; West and Horn of Africa in NAF like GH/NG/DJ, central,
// east and southern Africa in SAF like CD/KE/ZA; the Nordics' and Balkans' neighbours in EEU;
// the western micro-states in WEU; Central Asia and AF in SAS like KZ/PK; IR, SY, YE in ME;
// Greenland in ENAM with Canada; the western Pacific next to GU in SEAS; the rest of the
// Pacific and Antarctica in OC. XK (Kosovo) is not ISO 3166-1 but MaxMind uses it.
use Region::{Eeu, Enam, Me, Naf, Neas, Nsam, Oc, Saf, Sas, Seas, Ssam, Weu, Wnam};
#[rustfmt::skip]
const COUNTRIES: [(&str, Region); 250] = [
    ("AD", Weu), ("AE", Me), ("AF", Sas), ("AG", Enam), ("AI", Enam), ("AL", Eeu), ("AM", Me),
    ("AO", Saf), ("AQ", Oc), ("AR", Ssam), ("AS", Oc), ("AT", Eeu), ("AU", Oc), ("AW", Nsam),
    ("AX", Eeu), ("AZ", Me),
    ("BA", Eeu), ("BB", Enam), ("BD", Seas), ("BE", Weu), ("BF", Naf), ("BG", Eeu), ("BH", Me),
    ("BI", Saf), ("BJ", Naf), ("BL", Enam), ("BM", Enam), ("BN", Seas), ("BO", Ssam),
    ("BQ", Nsam), ("BR", Ssam), ("BS", Enam), ("BT", Seas), ("BV", Saf), ("BW", Saf), ("BY", Eeu),
    ("BZ", Nsam),
    ("CA", Enam), ("CC", Seas), ("CD", Saf), ("CF", Saf), ("CG", Saf), ("CH", Weu), ("CI", Naf),
    ("CK", Oc), ("CL", Ssam), ("CM", Naf), ("CN", Neas), ("CO", Nsam), ("CR", Nsam), ("CU", Enam),
    ("CV", Naf), ("CW", Nsam), ("CX", Seas), ("CY", Me), ("CZ", Eeu),
    ("DE", Weu), ("DJ", Naf), ("DK", Eeu), ("DM", Enam), ("DO", Enam), ("DZ", Naf),
    ("EC", Nsam), ("EE", Eeu), ("EG", Naf), ("EH", Naf), ("ER", Naf), ("ES", Weu), ("ET", Naf),
    ("FI", Eeu), ("FJ", Oc), ("FK", Ssam), ("FM", Seas), ("FO", Weu), ("FR", Weu),
    ("GA", Saf), ("GB", Weu), ("GD", Nsam), ("GE", Me), ("GF", Nsam), ("GG", Weu), ("GH", Naf),
    ("GI", Weu), ("GL", Enam), ("GM", Naf), ("GN", Naf), ("GP", Enam), ("GQ", Naf), ("GR", Eeu),
    ("GS", Ssam), ("GT", Nsam), ("GU", Seas), ("GW", Naf), ("GY", Nsam),
    ("HK", Neas), ("HM", Oc), ("HN", Enam), ("HR", Eeu), ("HT", Wnam), ("HU", Eeu),
    ("ID", Seas), ("IE", Weu), ("IL", Me), ("IM", Weu), ("IN", Sas), ("IO", Sas), ("IQ", Me),
    ("IR", Me), ("IS", Weu), ("IT", Weu),
    ("JE", Weu), ("JM", Enam), ("JO", Me), ("JP", Neas),
    ("KE", Saf), ("KG", Sas), ("KH", Seas), ("KI", Oc), ("KM", Saf), ("KN", Enam), ("KP", Neas),
    ("KR", Neas), ("KW", Me), ("KY", Enam), ("KZ", Sas),
    ("LA", Seas), ("LB", Me), ("LC", Enam), ("LI", Weu), ("LK", Sas), ("LR", Naf), ("LS", Saf),
    ("LT", Eeu), ("LU", Weu), ("LV", Eeu), ("LY", Naf),
    ("MA", Naf), ("MC", Weu), ("MD", Eeu), ("ME", Eeu), ("MF", Enam), ("MG", Saf), ("MH", Oc),
    ("MK", Eeu), ("ML", Naf), ("MM", Seas), ("MN", Neas), ("MO", Neas), ("MP", Seas),
    ("MQ", Enam), ("MR", Naf), ("MS", Enam), ("MT", Weu), ("MU", Saf), ("MV", Sas), ("MW", Saf),
    ("MX", Wnam), ("MY", Seas), ("MZ", Saf),
    ("NA", Saf), ("NC", Oc), ("NE", Naf), ("NF", Oc), ("NG", Naf), ("NI", Nsam), ("NL", Weu),
    ("NO", Eeu), ("NP", Sas), ("NR", Oc), ("NU", Oc), ("NZ", Oc),
    ("OM", Me),
    ("PA", Nsam), ("PE", Nsam), ("PF", Oc), ("PG", Oc), ("PH", Seas), ("PK", Sas), ("PL", Eeu),
    ("PM", Enam), ("PN", Oc), ("PR", Enam), ("PS", Me), ("PT", Weu), ("PW", Seas), ("PY", Ssam),
    ("QA", Me),
    ("RE", Saf), ("RO", Eeu), ("RS", Eeu), ("RU", Eeu), ("RW", Saf),
    ("SA", Me), ("SB", Oc), ("SC", Saf), ("SD", Naf), ("SE", Eeu), ("SG", Seas), ("SH", Saf),
    ("SI", Eeu), ("SJ", Eeu), ("SK", Eeu), ("SL", Naf), ("SM", Weu), ("SN", Naf), ("SO", Naf),
    ("SR", Nsam), ("SS", Saf), ("ST", Naf), ("SV", Nsam), ("SX", Enam), ("SY", Me), ("SZ", Saf),
    ("TC", Enam), ("TD", Naf), ("TF", Saf), ("TG", Naf), ("TH", Seas), ("TJ", Sas), ("TK", Oc),
    ("TL", Seas), ("TM", Sas), ("TN", Naf), ("TO", Oc), ("TR", Eeu), ("TT", Nsam), ("TV", Oc),
    ("TW", Neas), ("TZ", Saf),
    ("UA", Eeu), ("UG", Saf), ("UM", Oc), ("US", Enam), ("UY", Ssam), ("UZ", Sas),
    ("VA", Weu), ("VC", Enam), ("VE", Nsam), ("VG", Enam), ("VI", Enam), ("VN", Seas), ("VU", Oc),
    ("WF", Oc), ("WS", Oc),
    ("XK", Eeu),
    ("YE", Me), ("YT", Saf),
    ("ZA", Saf), ("ZM", Saf), ("ZW", Saf),
];

/// One IPv4 or IPv6 prefix of the client geography: what the agent writes into the `GEO`
/// trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GeoPrefix {
    /// The network, host bits zero.
    pub net: IpAddr,
    /// Prefix length in the network's family: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
    /// ISO 3166-1 alpha-2 country code in uppercase ASCII, if known.
    pub country: Option<[u8; 2]>,
    /// The Cloudflare region; when `None`, `value()` derives it from `country`.
    pub region: Option<Region>,
}

impl GeoPrefix {
    /// The `GEO` value: the country (zeros when unknown) and the region index (0 when unknown),
    /// the region taken from `country_region(country)` when `region` is `None`.
    pub fn value(&self) -> GeoValue {
        let region = self.region.or_else(|| {
            self.country
                .and_then(|cc| std::str::from_utf8(&cc).ok().and_then(country_region))
        });
        GeoValue::new(
            self.country.unwrap_or([0, 0]),
            region.map_or(0, Region::index),
        )
    }

    /// The `GEO` key. IPv4: the prefix as an IPv4-mapped IPv6 prefix
    /// (`::ffff:a.b.c.d/96+len`), the form the XDP program looks IPv4 clients up in. IPv6:
    /// the prefix itself (`len` bits of the native address). Host bits are cleared here too,
    /// and a `len` above the family's width counts as the width, so a hand-made prefix
    /// cannot produce a key the trie rejects.
    pub fn key(&self) -> GeoKey {
        match self.net {
            IpAddr::V4(net) => {
                let len = self.len.min(32);
                let net = u32::from(net) & prefix_mask(len);
                GeoKey {
                    prefixlen: 96 + u32::from(len),
                    addr: addr16(IpAddr::V4(Ipv4Addr::from(net))),
                }
            }
            IpAddr::V6(net) => {
                let len = self.len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                GeoKey {
                    prefixlen: u32::from(len),
                    addr: (u128::from(net) & mask).to_be_bytes(),
                }
            }
        }
    }
}

fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Does the IPv6 prefix `net/len` overlap `other/other_len` (one contains the other)?
pub fn v6_overlaps(net: Ipv6Addr, len: u8, other: Ipv6Addr, other_len: u8) -> bool {
    let l = u32::from(len.min(other_len).min(128));
    let mask = u128::MAX.checked_shl(128 - l).unwrap_or(0);
    u128::from(net) & mask == u128::from(other) & mask
}

/// `::ffff:0:0/96`, where the trie keeps IPv4 prefixes (IPv4-mapped): an IPv6 prefix that
/// overlaps it would be matched by, or shadow, IPv4 clients.
pub const V4_MAPPED_NET: (Ipv6Addr, u8) = (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

/// `::/96`, the IPv4 subtree of an `ip_version` 6 MaxMind DB (IPv4-compatible addresses,
/// deprecated by RFC 4291 §2.5.5.1; no client sends from them).
const V4_COMPAT_NET: (Ipv6Addr, u8) = (Ipv6Addr::UNSPECIFIED, 96);

/// Why a geo database could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read (missing, permissions).
    #[error("cannot read MaxMind DB {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The file was read but is not a MaxMind DB, is corrupt, or has no country data.
    #[error("{path} is not a usable MaxMind DB: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Reads every IPv4 network, and for an `ip_version` 6 database every IPv6 network, of a
/// MaxMind DB shaped like GeoIP2/GeoLite2 Country or City (`country.iso_code`, else
/// `registered_country.iso_code`) and returns them sorted by (net, len), each with its
/// country and that country's region.
///
/// Networks whose record has no two-letter country code are left out (clients there get the
/// VIP's default pools). A database in which no network has a country is an error: it is
/// almost certainly another kind of database (ASN, ISP), and an empty table would quietly turn
/// geo steering off.
///
/// IPv6 databases restate the IPv4 tree under other prefixes: `::ffff:0:0/96` (IPv4-mapped),
/// `2001::/32` (Teredo) and `2002::/16` (6to4) point at the IPv4 subtree (`::/96`). The IPv4
/// networks are read once, as IPv4 (keys `::ffff:a.b.c.d/96+n`, where the data path looks
/// IPv4 clients up). The aliases are skipped (the reader's default): 6to4 relays are
/// deprecated (RFC 7526) and Teredo is rare, so clients with such source addresses get the
/// default pools unless a `geo.prefixes` entry lists them. Real records (not aliases) inside
/// `::ffff:0:0/96` are skipped too, since IPv4 clients are looked up there; other IPv6
/// networks keep their native prefix.
pub fn load_mmdb(path: &Path) -> Result<Vec<GeoPrefix>, GeoError> {
    let reader = Reader::open_readfile(path).map_err(|error| match error {
        MaxMindDbError::Io(io) => GeoError::Read {
            path: path.to_owned(),
            reason: io.to_string(),
        },
        other => format_error(path, other.to_string()),
    })?;
    let prefixes = prefixes(&reader).map_err(|error| format_error(path, error.to_string()))?;
    if prefixes.is_empty() {
        return Err(format_error(
            path,
            format!(
                "no network has a country (database_type {:?}); expected a GeoIP2 or \
                 GeoLite2 Country or City database",
                reader.metadata().database_type
            ),
        ));
    }
    Ok(prefixes)
}

fn format_error(path: &Path, reason: String) -> GeoError {
    GeoError::Format {
        path: path.to_owned(),
        reason,
    }
}

/// The part of a GeoIP2 record the loader reads; serde skips every other field.
#[derive(serde::Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Place<'a>>,
    #[serde(borrow)]
    registered_country: Option<Place<'a>>,
}

#[derive(serde::Deserialize)]
struct Place<'a> {
    iso_code: Option<&'a str>,
}

fn prefixes(reader: &Reader<Vec<u8>>) -> Result<Vec<GeoPrefix>, MaxMindDbError> {
    // Databases with ip_version 6 keep IPv4 under ::/96 (and alias it at ::ffff:0:0/96,
    // 2001::/32 and 2002::/16). Iterating ::/0 yields the ::/96 subtree as IPv4 networks, and
    // the default options skip the aliases, so each IPv4 network comes once. An ip_version 4
    // database has only IPv4.
    let all = if reader.metadata().ip_version == 6 {
        "::/0".parse()?
    } else {
        "0.0.0.0/0".parse()?
    };
    // Many networks share one record (GeoLite2-Country has a few hundred records for hundreds
    // of thousands of networks), so each record is decoded once, keyed by its data offset.
    let mut countries: HashMap<usize, Option<[u8; 2]>> = HashMap::new();
    let mut prefixes = Vec::new();
    for item in reader.within(all, WithinOptions::default())? {
        let lookup = item?;
        let Some(offset) = lookup.offset() else {
            continue;
        };
        let country = match countries.entry(offset) {
            Entry::Occupied(known) => *known.get(),
            Entry::Vacant(new) => {
                let record: Option<Record<'_>> = lookup.decode()?;
                *new.insert(record.and_then(|r| record_country(&r)))
            }
        };
        let Some(country) = country else {
            continue;
        };
        let network = lookup.network()?;
        let Some((net, len)) = network_prefix(network.ip(), network.prefix()) else {
            continue;
        };
        prefixes.push(GeoPrefix {
            net,
            len,
            country: Some(country),
            region: std::str::from_utf8(&country).ok().and_then(country_region),
        });
    }
    prefixes.sort_by_key(|p| (p.net, p.len));
    prefixes.dedup_by_key(|p| (p.net, p.len));
    Ok(prefixes)
}

/// The trie prefix of a network the reader yields, `None` to leave it out. IPv4 networks
/// are IPv4. An IPv6 network over the IPv4 subtree (`::/96` or a record above it, when a
/// database keeps all of IPv4 in one record) is IPv4: all of it, or the part inside
/// `::/96`. One inside or over `::ffff:0:0/96` is left out (IPv4 clients are looked up
/// there, from the IPv4 networks). Any other is native IPv6.
fn network_prefix(ip: IpAddr, len: u8) -> Option<(IpAddr, u8)> {
    let net = match ip {
        IpAddr::V4(net) => return Some((IpAddr::V4(net), len)),
        IpAddr::V6(net) => net,
    };
    if v6_overlaps(net, len, V4_COMPAT_NET.0, V4_COMPAT_NET.1) {
        if len <= 96 {
            return Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        }
        let low = u32::try_from(u128::from(net) & u128::from(u32::MAX)).unwrap_or(0);
        return Some((IpAddr::V4(Ipv4Addr::from(low)), len - 96));
    }
    if v6_overlaps(net, len, V4_MAPPED_NET.0, V4_MAPPED_NET.1) {
        return None;
    }
    Some((IpAddr::V6(net), len))
}

/// The record's country code as uppercase ASCII; `None` when it has none or it is not two
/// letters (no GeoIP2 database has such codes, but a bad one must not reach the map).
fn record_country(record: &Record<'_>) -> Option<[u8; 2]> {
    let code = record
        .country
        .as_ref()
        .and_then(|place| place.iso_code)
        .or_else(|| {
            record
                .registered_country
                .as_ref()
                .and_then(|place| place.iso_code)
        })?;
    match code.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::v4_mapped;
    use lb_testbed::mmdb::{write_country_db, write_country_db_ip};

    #[test]
    fn region_codes_and_indices_round_trip() {
        for (i, region) in Region::ALL.into_iter().enumerate() {
            assert_eq!(
                usize::from(region.index()),
                i + 1,
                "{region} is in index order"
            );
            assert_eq!(Region::parse(region.code()), Some(region));
            assert_eq!(Region::from_index(region.index()), Some(region));
            assert_eq!(region.to_string(), region.code());
            assert!(!region.description().is_empty());
        }
        let codes: Vec<&str> = Region::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [
                "WNAM", "ENAM", "WEU", "EEU", "NSAM", "SSAM", "OC", "ME", "NAF", "SAF", "SAS",
                "SEAS", "NEAS"
            ]
        );
        assert_eq!(Region::Wnam.description(), "Western North America");
        assert_eq!(Region::from_index(0), None);
        assert_eq!(Region::from_index(14), None);
        assert_eq!(Region::parse("wnam"), None, "codes are exact");
        assert_eq!(Region::parse("IN"), None, "the old India code is gone");
        assert_eq!(Region::parse(""), None);
    }

    #[test]
    fn country_table_is_sorted_and_complete() {
        assert!(
            COUNTRIES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no duplicates: binary search depends on it"
        );
        assert!(COUNTRIES
            .iter()
            .all(|(cc, _)| cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_uppercase())));
        // 249 ISO 3166-1 codes plus XK.
        assert_eq!(COUNTRIES.len(), 250);
        for region in Region::ALL {
            assert!(
                region_countries(region).next().is_some(),
                "{region} has no country"
            );
        }
        assert_eq!(
            region_countries(Region::Wnam).collect::<Vec<_>>(),
            ["HT", "MX"]
        );
    }

    #[test]
    fn country_spot_checks() {
        for (cc, region) in [
            ("DE", Region::Weu),
            ("JP", Region::Neas),
            ("BR", Region::Ssam),
            ("AU", Region::Oc),
            ("ZA", Region::Saf),
            ("IN", Region::Sas),
            ("SG", Region::Seas),
            ("EG", Region::Naf),
            ("AE", Region::Me),
            ("PL", Region::Eeu),
            ("US", Region::Enam),
            ("CA", Region::Enam),
            ("MX", Region::Wnam),
            ("CO", Region::Nsam),
            ("XK", Region::Eeu),
        ] {
            assert_eq!(country_region(cc), Some(region), "{cc}");
            assert!(is_country(cc), "{cc}");
        }
        for not_a_country in ["", "D", "DEU", "de", "ZZ", "EU", "A1"] {
            assert_eq!(country_region(not_a_country), None, "{not_a_country:?}");
            assert!(!is_country(not_a_country), "{not_a_country:?}");
        }
    }

    #[test]
    fn key_is_ipv4_mapped_with_host_bits_cleared() {
        let prefix = GeoPrefix {
            net: Ipv4Addr::new(192, 0, 2, 77).into(),
            len: 24,
            country: None,
            region: None,
        };
        let key = prefix.key();
        assert_eq!(key.prefixlen, 120);
        assert_eq!(
            key.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 0]
        );
        let everything = GeoPrefix {
            net: Ipv4Addr::new(1, 2, 3, 4).into(),
            len: 0,
            ..prefix
        };
        assert_eq!(everything.key().prefixlen, 96);
        assert_eq!(everything.key().addr, v4_mapped([0, 0, 0, 0]));
        let host = GeoPrefix { len: 40, ..prefix };
        assert_eq!(host.key().prefixlen, 128, "len above 32 counts as 32");
        assert_eq!(host.key().addr, v4_mapped([192, 0, 2, 77]));
    }

    #[test]
    fn value_carries_country_and_region() {
        let de = GeoPrefix {
            net: Ipv4Addr::new(10, 0, 0, 0).into(),
            len: 8,
            country: Some(*b"DE"),
            region: None,
        };
        let value = de.value();
        assert_eq!(
            value,
            GeoValue::new(*b"DE", 3),
            "region from the country table"
        );
        assert_eq!(value.region, Region::Weu.index());
        assert_eq!(value.country, *b"DE");
        assert_eq!(
            value.geo_id,
            3 << 16 | u32::from(b'D') << 8 | u32::from(b'E')
        );

        let overridden = GeoPrefix {
            region: Some(Region::Eeu),
            ..de
        };
        assert_eq!(
            overridden.value(),
            GeoValue::new(*b"DE", Region::Eeu.index())
        );

        let region_only = GeoPrefix {
            country: None,
            region: Some(Region::Oc),
            ..de
        };
        assert_eq!(region_only.value(), GeoValue::new([0, 0], 7));

        let unknown = GeoPrefix {
            country: Some(*b"ZZ"),
            region: None,
            ..de
        };
        assert_eq!(unknown.value(), GeoValue::new(*b"ZZ", 0));
        let nothing = GeoPrefix {
            country: None,
            region: None,
            ..de
        };
        assert_eq!(nothing.value(), GeoValue::default());
    }

    /// A file under the temp dir, unique per process and test, removed on drop (also when
    /// the test panics).
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            Self(
                std::env::temp_dir()
                    .join(format!("lb-agent-geo-{}-{name}.mmdb", std::process::id())),
            )
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn prefix(net: [u8; 4], len: u8, country: &[u8; 2]) -> GeoPrefix {
        GeoPrefix {
            net: Ipv4Addr::from(net).into(),
            len,
            country: Some(*country),
            region: std::str::from_utf8(country).ok().and_then(country_region),
        }
    }

    #[test]
    fn load_mmdb_reads_what_the_testbed_writer_wrote() {
        let file = TempFile::new("roundtrip");
        write_country_db(
            &file.0,
            &[
                // The /16 comes first on purpose: the writer must still let it win.
                (Ipv4Addr::new(10, 1, 0, 0), 16, Some("JP")),
                (Ipv4Addr::new(10, 0, 0, 0), 8, Some("DE")),
                (Ipv4Addr::new(192, 0, 2, 0), 24, None),
                (Ipv4Addr::new(198, 51, 100, 0), 24, Some("US")),
                (Ipv4Addr::new(203, 0, 113, 128), 25, Some("AU")),
            ],
        )
        .expect("write test database");

        // The database itself is valid for the reference reader, not only for our loader.
        let reader = Reader::open_readfile(&file.0).expect("maxminddb opens it");
        reader.verify().expect("maxminddb verifies it");
        assert_eq!(reader.metadata().database_type, "GeoLite2-Country");
        assert_eq!(reader.metadata().ip_version, 6);
        let lookup = |ip: [u8; 4]| -> Option<String> {
            reader
                .lookup(IpAddr::from(ip))
                .expect("lookup")
                .decode_path(&maxminddb::path!["country", "iso_code"])
                .expect("decode")
        };
        assert_eq!(lookup([10, 1, 2, 3]).as_deref(), Some("JP"));
        assert_eq!(lookup([10, 2, 0, 1]).as_deref(), Some("DE"));
        assert_eq!(lookup([192, 0, 2, 1]), None);
        assert_eq!(lookup([8, 8, 8, 8]), None);

        let prefixes = load_mmdb(&file.0).expect("load test database");
        assert!(
            prefixes
                .windows(2)
                .all(|w| (w[0].net, w[0].len) < (w[1].net, w[1].len)),
            "sorted by (net, len)"
        );
        // 10.0.0.0/8 comes back as the pieces of it outside 10.1.0.0/16, all DE, which
        // together with the JP /16 cover exactly the /8.
        let in_10 = |p: &&GeoPrefix| matches!(p.net, IpAddr::V4(a) if a.octets()[0] == 10);
        let de_addresses: u64 = prefixes
            .iter()
            .filter(in_10)
            .filter(|p| p.country == Some(*b"DE"))
            .map(|p| 1u64 << (32 - p.len))
            .sum();
        assert_eq!(de_addresses, (1 << 24) - (1 << 16));
        assert!(prefixes.contains(&prefix([10, 0, 0, 0], 16, b"DE")));
        assert!(prefixes.contains(&prefix([10, 128, 0, 0], 9, b"DE")));
        assert!(prefixes.contains(&prefix([10, 1, 0, 0], 16, b"JP")));
        assert_eq!(
            prefixes.iter().filter(in_10).count(),
            9,
            "/16 JP + 8 DE pieces"
        );
        assert!(prefixes.contains(&prefix([198, 51, 100, 0], 24, b"US")));
        assert!(prefixes.contains(&prefix([203, 0, 113, 128], 25, b"AU")));
        assert!(
            !prefixes
                .iter()
                .any(|p| matches!(p.net, IpAddr::V4(a) if a.octets()[0] == 192)),
            "the record without a country is skipped"
        );
        assert_eq!(prefixes.len(), 11);
        let jp = prefixes
            .iter()
            .find(|p| p.country == Some(*b"JP"))
            .expect("JP");
        assert_eq!(jp.region, Some(Region::Neas));
        assert_eq!(jp.value(), GeoValue::new(*b"JP", Region::Neas.index()));
        assert_eq!(jp.key().prefixlen, 96 + 16);
    }

    #[test]
    fn load_mmdb_takes_the_whole_ipv4_space() {
        let file = TempFile::new("default-route");
        write_country_db(&file.0, &[(Ipv4Addr::UNSPECIFIED, 0, Some("ZA"))]).expect("write");
        let prefixes = load_mmdb(&file.0).expect("load");
        assert_eq!(prefixes, [prefix([0, 0, 0, 0], 0, b"ZA")]);
    }

    #[test]
    fn ipv6_keys_are_native_with_host_bits_cleared() {
        let p = GeoPrefix {
            net: "2001:db8:1:2::77".parse().expect("ip"),
            len: 48,
            country: Some(*b"DE"),
            region: None,
        };
        let k = p.key();
        assert_eq!(k.prefixlen, 48);
        assert_eq!(
            k.addr,
            "2001:db8:1::".parse::<Ipv6Addr>().expect("ip").octets()
        );
        let all = GeoPrefix { len: 0, ..p };
        assert_eq!((all.key().prefixlen, all.key().addr), (0, [0; 16]));
        let over = GeoPrefix { len: 200, ..p };
        assert_eq!(over.key().prefixlen, 128, "clamped to the family's width");
    }

    #[test]
    fn load_mmdb_reads_ipv6_networks_and_skips_the_ipv4_aliases() {
        let file = TempFile::new("v6");
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        write_country_db_ip(
            &file.0,
            &[
                (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)), 24, Some("US")),
                (v6("2001:db8:100::"), 48, Some("DE")),
                (v6("2400:cb00::"), 32, Some("JP")),
                (v6("2001:db8:200::"), 48, None),
            ],
            true,
        )
        .expect("write");
        let prefixes = load_mmdb(&file.0).expect("load");
        let v6_prefix = |net: &str, len: u8, cc: &[u8; 2]| GeoPrefix {
            net: v6(net),
            len,
            country: Some(*cc),
            region: std::str::from_utf8(cc).ok().and_then(country_region),
        };
        assert_eq!(
            prefixes,
            [
                prefix([198, 51, 100, 0], 24, b"US"),
                v6_prefix("2001:db8:100::", 48, b"DE"),
                v6_prefix("2400:cb00::", 32, b"JP"),
            ],
            "IPv4 once (not again under ::ffff:0:0/96, 2001::/32 or 2002::/16), IPv6 natively"
        );
        let keys: Vec<(u32, [u8; 16])> = prefixes
            .iter()
            .map(|p| (p.key().prefixlen, p.key().addr))
            .collect();
        assert_eq!(keys[0], (96 + 24, v4_mapped([198, 51, 100, 0])));
        assert_eq!(keys[2].0, 32);
        // The aliases are in the file: a reader asked for them finds 198.51.100.0/24 again
        // under ::ffff:0:0/96, 2001::/32 and 2002::/16.
        let reader = Reader::open_readfile(&file.0).expect("open");
        let all = reader
            .within(
                "::/0".parse().expect("net"),
                WithinOptions::default().include_aliased_networks(),
            )
            .expect("within")
            .filter_map(Result::ok)
            .filter_map(|l| l.network().ok())
            .map(|n| n.to_string())
            .collect::<Vec<_>>();
        for alias in ["::ffff:198.51.100.0/120", "2002:c633:6400::/40"] {
            assert!(all.iter().any(|n| n == alias), "{alias} in {all:?}");
        }
    }

    #[test]
    fn database_networks_over_the_mapped_space_are_left_out() {
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Real records (not aliases) inside ::ffff:0:0/96 would shadow IPv4 clients.
        assert_eq!(network_prefix(v6("::ffff:192.0.2.0"), 120), None);
        assert_eq!(network_prefix(v6("::ffff:0:0"), 96), None);
        // Over ::/96: the IPv4 space.
        assert_eq!(
            network_prefix(v6("::"), 64),
            Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        );
        assert_eq!(
            network_prefix(v6("::c000:200"), 120),
            Some((IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)), 24))
        );
        // 6to4 data that is not an alias is an IPv6 network like any other.
        assert_eq!(
            network_prefix(v6("2002:c000:200::"), 40),
            Some((v6("2002:c000:200::"), 40))
        );
    }

    #[test]
    fn load_mmdb_errors_name_the_file() {
        let missing = TempFile::new("missing");
        let error = load_mmdb(&missing.0).expect_err("missing file");
        assert!(matches!(error, GeoError::Read { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&missing.0.display().to_string()),
            "{message}"
        );
        assert!(message.contains("No such file"), "{message}");

        let garbage = TempFile::new("garbage");
        std::fs::write(&garbage.0, b"this is not a MaxMind database\n").expect("write garbage");
        let error = load_mmdb(&garbage.0).expect_err("garbage file");
        assert!(matches!(error, GeoError::Format { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&garbage.0.display().to_string()),
            "{message}"
        );
        assert!(message.contains("metadata"), "{message}");

        let no_country = TempFile::new("no-country");
        write_country_db(&no_country.0, &[(Ipv4Addr::new(192, 0, 2, 0), 24, None)]).expect("write");
        let error = load_mmdb(&no_country.0).expect_err("no country anywhere");
        let message = error.to_string();
        assert!(
            message.contains(&no_country.0.display().to_string()),
            "{message}"
        );
        assert!(message.contains("no network has a country"), "{message}");
    }

    /// A real database, when one is at hand: `LB_TEST_GEOLITE2=/path/GeoLite2-Country.mmdb
    /// cargo test -p lb-agent --release --lib geo -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a GeoLite2 database in $LB_TEST_GEOLITE2"]
    fn load_mmdb_real_geolite2() {
        let path = PathBuf::from(std::env::var_os("LB_TEST_GEOLITE2").expect("LB_TEST_GEOLITE2"));
        let start = std::time::Instant::now();
        let prefixes = load_mmdb(&path).expect("load");
        let elapsed = start.elapsed();
        let with_region = prefixes.iter().filter(|p| p.region.is_some()).count();
        println!(
            "{} IPv4 prefixes ({with_region} with a region) in {elapsed:?}",
            prefixes.len()
        );
        assert!(prefixes.len() > 100_000);
        let find = |ip: Ipv4Addr| {
            prefixes
                .iter()
                .rev()
                .find(|p| p.net == IpAddr::V4(Ipv4Addr::from(u32::from(ip) & prefix_mask(p.len))))
                .and_then(|p| p.country)
        };
        // Google's public resolver is registered in the US in every GeoLite2 release.
        assert_eq!(find(Ipv4Addr::new(8, 8, 8, 8)), Some(*b"US"));
    }
}

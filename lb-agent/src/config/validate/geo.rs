//! `[geo]`: the client prefixes listed in the config (country and/or region each).

use super::FieldErrors;
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use super::country_code;
use crate::{
    config::{
        raw::{RawGeo, RawGeoPrefix},
        types::Geo,
    },
    geo::{v6_overlaps, GeoPrefix, Region, V4_MAPPED_NET},
};

/// The `[geo]` section; the database itself is read by `Geo::load_database`.
pub(super) fn validate(raw: &RawGeo, errors: &mut FieldErrors) -> Geo {
    let mut prefixes = Vec::new();
    let mut seen = HashMap::new();
    for (i, p) in raw.prefixes.iter().enumerate() {
        prefixes.extend(prefix(i, p, &mut seen, errors));
    }
    Geo {
        database: raw.database.clone(),
        database_prefixes: Arc::default(),
        prefixes,
    }
}

/// `geo.prefixes[i]`: a network address/length, listed once, with a country and/or region.
fn prefix(
    i: usize,
    p: &RawGeoPrefix,
    seen: &mut HashMap<(IpAddr, u8), usize>,
    errors: &mut FieldErrors,
) -> Option<GeoPrefix> {
    let f = format!("geo.prefixes[{i}]");
    let net = match p.prefix.split_once('/') {
        Some((a, l)) => match (a.parse::<IpAddr>(), l.parse::<u8>()) {
            (Ok(a @ IpAddr::V4(_)), Ok(l)) if l <= 32 => Some((a, l)),
            (Ok(a @ IpAddr::V6(_)), Ok(l)) if l <= 128 => Some((a, l)),
            _ => None,
        },
        None => None,
    };
    let Some((addr, len)) = net else {
        errors.invalid(
            format!("{f}.prefix"),
            format!("\"{}\" is not an IPv4 or IPv6 prefix", p.prefix),
            "write it as address/length, e.g. \"198.51.100.0/24\" or \"2001:db8:100::/48\"",
        );
        return None;
    };
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    if network != addr {
        errors.invalid(
            format!("{f}.prefix"),
            format!("\"{}\" has host bits set", p.prefix),
            format!("write the network address, \"{network}/{len}\""),
        );
    }
    if let IpAddr::V6(a) = addr {
        // IPv4 clients are looked up as ::ffff:a.b.c.d: an IPv6 prefix over that space
        // would catch them (::/0 would be every IPv4 client without a prefix of its own).
        if v6_overlaps(a, len, V4_MAPPED_NET.0, V4_MAPPED_NET.1) {
            let fix = match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => format!("write it as IPv4, \"{v4}/{}\"", len - 96),
                _ => "list IPv4 prefixes as IPv4, and IPv6 ones outside ::ffff:0:0/96 (\"2000::/3\" is all of global unicast IPv6)".to_owned(),
            };
            errors.invalid(
                format!("{f}.prefix"),
                format!(
                    "\"{}\" overlaps ::ffff:0:0/96, where IPv4 clients are looked up",
                    p.prefix
                ),
                fix,
            );
        }
    }
    if let Some(first) = seen.insert((addr, len), i) {
        errors.conflict(
            format!("{f}.prefix"),
            format!(
                "\"{}\" is listed twice (also geo.prefixes[{first}])",
                p.prefix
            ),
            "list each prefix once",
        );
    }
    let country = p.country.as_deref().and_then(|c| {
        let cc = country_code(c);
        if cc.is_none() {
            errors.invalid(
                format!("{f}.country"),
                format!("\"{c}\" is not an ISO 3166-1 alpha-2 country code"),
                "write it like \"US\" or \"DE\"",
            );
        }
        cc
    });
    let region = p.region.as_deref().and_then(|r| {
        let reg = Region::parse(r);
        if reg.is_none() {
            errors.invalid(
                format!("{f}.region"),
                format!("unknown region \"{r}\""),
                format!(
                    "use one of Cloudflare's region codes: {}",
                    Region::ALL.map(Region::code).join(", ")
                ),
            );
        }
        reg
    });
    if p.country.is_none() && p.region.is_none() {
        errors.invalid(
            f,
            "neither country nor region",
            "give country = \"DE\" (its region follows) or region = \"WEU\" or both",
        );
    }
    Some(GeoPrefix {
        net: addr,
        len,
        country,
        region,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn geo_prefixes_are_checked() {
        let one = |p: &str| geo_with(&format!("prefixes = [{p}]"));
        assert_one(
            &one("{ prefix = \"10.0.0.0\", country = \"DE\" }"),
            "geo.prefixes[0].prefix",
        );
        assert_one(
            &one("{ prefix = \"10.0.0.0/33\", country = \"DE\" }"),
            "geo.prefixes[0].prefix",
        );
        let e = one("{ prefix = \"10.0.0.1/24\", country = \"DE\" }");
        assert_one(&e, "geo.prefixes[0].prefix");
        assert!(e[0].contains("10.0.0.0/24"), "suggests the network: {e:?}");
        assert_one(&one("{ prefix = \"10.0.0.0/24\" }"), "geo.prefixes[0]");
        assert_one(
            &one("{ prefix = \"10.0.0.0/24\", country = \"Germany\" }"),
            "geo.prefixes[0].country",
        );
        assert_one(
            &one("{ prefix = \"10.0.0.0/24\", region = \"EU\" }"),
            "geo.prefixes[0].region",
        );
        assert_one(
            &one("{ prefix = \"10.0.0.0/24\", country = \"DE\" }, { prefix = \"10.0.0.0/24\", country = \"FR\" }"),
            "geo.prefixes[1].prefix",
        );
    }

    #[test]
    fn geo_prefixes_may_be_ipv6() {
        let c = crate::config::Config::parse(
            &format!("{GOOD}\n[geo]\nprefixes = [{{ prefix = \"2001:db8:100::/48\", country = \"DE\" }}, {{ prefix = \"198.51.100.0/24\", region = \"WNAM\" }}]\n"),
            std::path::Path::new("t"),
        )
        .expect("valid");
        let p = &c.geo.prefixes[0];
        assert_eq!((p.net.to_string(), p.len), ("2001:db8:100::".into(), 48));
        assert_eq!(p.key().prefixlen, 48);
        assert_eq!(c.geo.prefixes[1].key().prefixlen, 96 + 24);
    }

    #[test]
    fn ipv6_geo_prefixes_are_checked() {
        let one = |p: &str| {
            geo_with(&format!(
                "prefixes = [{{ prefix = \"{p}\", country = \"DE\" }}]"
            ))
        };
        assert_one(&one("2001:db8::/129"), "geo.prefixes[0].prefix");
        let e = one("2001:db8:100::1/48");
        assert_one(&e, "geo.prefixes[0].prefix");
        assert!(
            e[0].contains("\"2001:db8:100::/48\""),
            "suggests the network: {e:?}"
        );
        // ::/0 would also be every IPv4 client (looked up as ::ffff:a.b.c.d).
        let e = one("::/0");
        assert_one(&e, "geo.prefixes[0].prefix");
        assert!(e[0].contains("2000::/3"), "{e:?}");
        let e = one("::ffff:198.51.100.0/120");
        assert_one(&e, "geo.prefixes[0].prefix");
        assert!(e[0].contains("\"198.51.100.0/24\""), "{e:?}");
    }
}

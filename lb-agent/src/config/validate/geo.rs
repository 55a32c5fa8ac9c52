//! `[geo]`: the client prefixes listed in the config (country and/or region each).

use super::FieldErrors;
use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use super::country_code;
use crate::{
    config::{
        raw::{RawGeo, RawGeoPrefix},
        types::Geo,
    },
    geo::{GeoPrefix, Region},
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
    seen: &mut HashMap<(Ipv4Addr, u8), usize>,
    errors: &mut FieldErrors,
) -> Option<GeoPrefix> {
    let f = format!("geo.prefixes[{i}]");
    let net = match p.prefix.split_once('/') {
        Some((a, l)) => match (a.parse::<Ipv4Addr>(), l.parse::<u8>()) {
            (Ok(a), Ok(l)) if l <= 32 => Some((a, l)),
            _ => None,
        },
        None => None,
    };
    let Some((addr, len)) = net else {
        errors.invalid(
            format!("{f}.prefix"),
            format!("\"{}\" is not an IPv4 prefix", p.prefix),
            "write it as address/length, e.g. \"198.51.100.0/24\"",
        );
        return None;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(addr) & !mask != 0 {
        errors.invalid(
            format!("{f}.prefix"),
            format!("\"{}\" has host bits set", p.prefix),
            format!(
                "write the network address, \"{}/{len}\"",
                Ipv4Addr::from(u32::from(addr) & mask)
            ),
        );
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
}

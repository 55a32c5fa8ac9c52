//! Validation: `RawConfig` -> `Config`, pure. Every rule adds to one list of errors, each
//! naming its field, the problem, the fix and the kind of rule broken (`FieldErrors::invalid`,
//! `missing`, `conflict`); nothing stops at the first error. One module per section, run in the file's order, so errors come in that
//! order; the checks several sections share are here.

mod agent;
mod api;
mod dataplane;
mod geo;
mod load_balancers;
mod monitors;
mod pools;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use super::{raw::RawConfig, types::Config, ErrorKind, FieldError};
use crate::geo as geodata;

/// Validates a parsed config. Every rule adds to the list; nothing stops at the first error.
pub fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errors = FieldErrors::default();
    let (dataplane, snat) = dataplane::validate(&raw.dataplane, &mut errors);
    let agent = agent::validate(&raw.agent, &mut errors);
    let geo = geo::validate(&raw.geo, &mut errors);
    let api = api::validate(&raw.api, &mut errors);
    let (monitors, monitor_names) = monitors::validate(&raw.monitors, &mut errors);
    let (pools, pool_names) = pools::validate(&raw.pools, &monitor_names, &mut errors);
    let ctx = load_balancers::Context {
        pool_names: &pool_names,
        pools: &pools,
        snat,
        host_position: agent.position,
        geo_is_empty: geo.is_empty(),
    };
    let load_balancers = load_balancers::validate(&raw, &ctx, &mut errors);
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    let Some(dataplane) = dataplane else {
        unreachable!("every None above pushed an error")
    };
    Ok(Config {
        names: super::types::Names::of(&pools, &monitors, &load_balancers),
        dataplane,
        agent,
        monitors,
        pools,
        load_balancers,
        geo,
        api,
    })
}

/// The list every rule adds to.
#[derive(Debug, Default)]
pub(super) struct FieldErrors(pub(super) Vec<FieldError>);

impl FieldErrors {
    /// A value at `path` that is out of range, malformed or does not fit the other
    /// settings: the problem, and the fix (`""` when there is none to say).
    pub(super) fn invalid(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0
            .push(FieldError::new(ErrorKind::Invalid, path, problem, fix));
    }

    /// A name at `path` that no monitor or pool has.
    pub(super) fn missing(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(FieldError::new(
            ErrorKind::MissingReference,
            path,
            problem,
            fix,
        ));
    }

    /// A name, address or listing at `path` that something else already has.
    pub(super) fn conflict(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0
            .push(FieldError::new(ErrorKind::Conflict, path, problem, fix));
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Duplicate names in the file as written. The store merges the file's objects by name, so
/// a second `[[pools]]` named like the first would silently replace it: this runs on the file
/// before the merge (on start, reload and `lb-agent check`).
pub fn file_name_errors(raw: &RawConfig) -> Vec<FieldError> {
    fn dups<'a>(list: &str, names: impl Iterator<Item = &'a String>, errors: &mut FieldErrors) {
        let mut first = HashMap::new();
        for (i, n) in names.enumerate() {
            if n.is_empty() {
                continue;
            }
            if let Some(f) = first.get(n) {
                errors.conflict(
                    format!("{list}[{i}].name"),
                    format!("\"{n}\" is already the name of {list}[{f}]"),
                    "names must be unique: rename or remove one of them",
                );
            } else {
                first.insert(n, i);
            }
        }
    }
    let mut errors = FieldErrors::default();
    dups(
        "monitors",
        raw.monitors.iter().map(|m| &m.name),
        &mut errors,
    );
    dups("pools", raw.pools.iter().map(|p| &p.name), &mut errors);
    dups(
        "load_balancers",
        raw.load_balancers.iter().map(|l| &l.name),
        &mut errors,
    );
    errors.0
}

/// An address for a VIP, an origin or SNAT: IPv4, or IPv6 that can be forwarded to and
/// from (`ipv6_refusal`). IPv4-mapped IPv6 text (`::ffff:192.0.2.1`) is refused with the
/// IPv4 spelling as the fix: it means the IPv4 address, and writing it one way keeps VIPs
/// and origins comparable.
fn ip(s: &str, field: &str, errors: &mut FieldErrors) -> Option<IpAddr> {
    if s.is_empty() {
        errors.invalid(
            field,
            "missing",
            "set it to an IP address such as \"10.0.0.10\" or \"2001:db8::10\"",
        );
        return None;
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Some(IpAddr::V4(a)),
        Ok(IpAddr::V6(a)) => match ipv6_refusal(a) {
            None => Some(IpAddr::V6(a)),
            Some((problem, fix)) => {
                errors.invalid(field, format!("\"{s}\" {problem}"), fix);
                None
            }
        },
        Err(_) => {
            errors.invalid(
                field,
                format!("\"{s}\" is not an IP address"),
                "write it as IPv4 (\"10.0.0.10\") or IPv6 (\"2001:db8::10\")",
            );
            None
        }
    }
}

/// `s` as an address `ip` accepts, without building an error (the fast path of a file
/// with thousands of origins); `None` sends the caller to `ip` for the error.
fn usable_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(a) if ipv6_refusal(a).is_some() => None,
        a => Some(a),
    }
}

/// Why IPv6 address `a` cannot be a VIP, origin or SNAT address (problem, fix), if it
/// cannot: unspecified, loopback, multicast and link-local (fe80::/10) addresses are not
/// forwarded between links (link-local ones also need a zone the config has no field
/// for); an IPv4-mapped one is the IPv4 address, to be written as such.
fn ipv6_refusal(a: Ipv6Addr) -> Option<(String, String)> {
    const FIX: &str = "use a global or unique-local (fd00::/8) IPv6 address, or IPv4";
    let why = if let Some(v4) = a.to_ipv4_mapped() {
        return Some((
            "is an IPv4-mapped IPv6 address".to_owned(),
            format!("write the IPv4 address, \"{v4}\""),
        ));
    } else if a.is_unspecified() {
        "is the unspecified address"
    } else if a.is_loopback() {
        "is the loopback address"
    } else if a.is_multicast() {
        "is a multicast address"
    } else if a.segments()[0] & 0xffc0 == 0xfe80 {
        "is link-local (fe80::/10), which is not forwarded between links"
    } else {
        return None;
    };
    Some((why.to_owned(), FIX.to_owned()))
}

fn port(p: u32, field: &str, errors: &mut FieldErrors) -> Option<u16> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errors.invalid(field, format!("{p} is not a port"), "use 1-65535");
            None
        }
    }
}

fn name_ok(name: &str, field: &str, errors: &mut FieldErrors) {
    if name.is_empty() {
        errors.invalid(field, "missing", "give it a unique name");
    }
}

/// A PoP name as Cloudflare writes them: 3 letters (IATA airport code), upper case; longer
/// names are accepted for sites of your own (letters, digits, '-').
fn pop_ok(pop: &str, field: &str, errors: &mut FieldErrors) {
    let ok = !pop.is_empty()
        && pop.len() <= 32
        && pop
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        errors.invalid(
            field,
            format!("\"{pop}\" is not a PoP name"),
            "use upper-case letters, digits and '-', e.g. \"AMS\"",
        );
    }
}

fn country_code(code: &str) -> Option<[u8; 2]> {
    match code.as_bytes() {
        [a, b] if geodata::is_country(code) => Some([*a, *b]),
        _ => None,
    }
}

/// Latitude and longitude, both or neither.
fn position(
    lat: Option<f64>,
    lon: Option<f64>,
    f: &str,
    errors: &mut FieldErrors,
) -> Option<(f64, f64)> {
    match (lat, lon) {
        (None, None) => None,
        (Some(lat), Some(lon)) => {
            let mut ok = true;
            if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                errors.invalid(
                    format!("{f}.latitude"),
                    format!("{lat} is out of range"),
                    "use degrees between -90 and 90",
                );
                ok = false;
            }
            if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                errors.invalid(
                    format!("{f}.longitude"),
                    format!("{lon} is out of range"),
                    "use degrees between -180 and 180",
                );
                ok = false;
            }
            ok.then_some((lat, lon))
        }
        (Some(_), None) => {
            errors.invalid(
                format!("{f}.longitude"),
                "missing",
                "latitude and longitude go together",
            );
            None
        }
        (None, Some(_)) => {
            errors.invalid(
                format!("{f}.latitude"),
                "missing",
                "latitude and longitude go together",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{file_name_errors, validate};
    use crate::config::testing::*;
    use crate::config::{Config, ErrorKind, OriginSteering, RawConfig, SteeringPolicy};
    use crate::geo::Region;
    use std::path::Path;

    #[test]
    fn every_error_is_reported_at_once() {
        let text = GOOD
            .replace("weight = 0.5", "weight = 1.5")
            .replace("address = \"10.0.3.2\"", "address = \"ten\"")
            .replace("default_pools = [\"web\"]", "default_pools = [\"nope\"]");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn each_error_says_its_kind() {
        let text = GOOD
            .replace("weight = 0.5", "weight = 1.5")
            .replace("default_pools = [\"web\"]", "default_pools = [\"nope\"]")
            .replace("address = \"10.0.0.10\"", "address = \"10.0.0.1\"");
        let raw = RawConfig::parse(&text, Path::new("t.toml")).expect("parses");
        let errors = validate(raw).expect_err("invalid");
        let kinds: Vec<(&str, ErrorKind)> =
            errors.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("pools[0].origins[0].weight", ErrorKind::Invalid),
                ("load_balancers[0].address", ErrorKind::Conflict),
                (
                    "load_balancers[0].default_pools[0]",
                    ErrorKind::MissingReference
                ),
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "pools[0].origins[0].weight: 1.5 is out of range; use a number between 0 and 1 (0 drains the origin)"
        );
        assert_eq!(
            (errors[2].problem.as_str(), errors[2].fix.as_str()),
            (
                "no pool is named \"nope\"",
                "define it under [[pools]] or fix the name"
            )
        );
    }

    #[test]
    fn steering_fields_parse_into_typed_values() {
        // GEO_GOOD's pools and load balancer come first, then GOOD's; [geo] is moved last.
        let (head, geo) = GEO_GOOD.split_once("[geo]").expect("geo section");
        let text = format!(
            "{}\n[geo]{geo}",
            GOOD.replacen("[[pools]]", &format!("{head}\n[[pools]]"), 1)
        );
        let c = Config::parse(&text, Path::new("t.toml")).expect("valid");
        assert_eq!(c.agent.pop.as_deref(), Some("AMS"));
        assert_eq!(c.agent.position, Some((52.37, 4.9)));
        assert_eq!(c.agent.rtt_smoothing, 0.5);
        let eu = c.pool("eu").expect("eu");
        assert_eq!(eu.origin_steering, OriginSteering::LeastConnections);
        assert_eq!(eu.position, Some((50.1, 8.7)));
        assert_eq!(
            c.pool("us").expect("us").origin_steering,
            OriginSteering::Hash
        );
        assert_eq!(
            c.pool("web").expect("web").origin_steering,
            OriginSteering::Random
        );
        let lb = c
            .load_balancers
            .iter()
            .find(|l| l.name == "geo")
            .expect("geo lb");
        assert_eq!(lb.steering_policy, SteeringPolicy::Geo);
        assert_eq!(
            lb.region_pools[&Region::parse("WEU").expect("WEU")],
            vec!["eu", "web"]
        );
        assert_eq!(lb.country_pools[b"JP"], vec!["us"]);
        assert_eq!(lb.pop_pools["LAX"], vec!["us"]);
        assert_eq!(lb.affinity_ttl, Some(600));
        assert_eq!(lb.pool_weights["eu"].get(), 0.2);
        assert_eq!(lb.default_weight.get(), 0.5);
        let www = c
            .load_balancers
            .iter()
            .find(|l| l.name == "www")
            .expect("www");
        assert_eq!(www.affinity_ttl, None, "session_affinity defaults to none");
        assert_eq!(c.geo.prefixes.len(), 3);
        let us = &c.geo.prefixes[2];
        assert_eq!(
            (us.country, us.region),
            (Some(*b"US"), Region::parse("WNAM"))
        );
    }

    #[test]
    fn positions_are_pairs_in_range() {
        assert_one(&agent_with("latitude = 10.0"), "agent.longitude");
        assert_one(
            &agent_with("latitude = 91.0\nlongitude = 0.0"),
            "agent.latitude",
        );
        assert_one(
            &pool_with("latitude = 0.0\nlongitude = 181.0"),
            "pools[0].longitude",
        );
        assert_one(&pool_with("longitude = 1.0"), "pools[0].latitude");
    }

    #[test]
    fn pop_names_are_checked() {
        assert_one(&agent_with("pop = \"ams 1\""), "agent.pop");
        assert_one(
            &lb_with("pop_pools = { ams = [\"web\"] }"),
            "load_balancers[0].pop_pools.ams",
        );
        assert_one(
            &lb_with("pop_pools = { AMS = [] }"),
            "load_balancers[0].pop_pools.AMS",
        );
    }

    #[test]
    fn file_names_unique_before_merging() {
        let text = format!(
            "{GOOD}\n[[monitors]]\nname = \"m\"\ntype = \"tcp\"\n\n[[monitors]]\nname = \"m\"\ntype = \"tcp\"\n\n[[pools]]\nname = \"spare\"\norigins = [{{ name = \"c\", address = \"10.0.4.2\" }}]\n\n[[pools]]\nname = \"web\"\norigins = [{{ name = \"d\", address = \"10.0.5.2\" }}]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.11\"\nport = 80\ndefault_pools = [\"web\"]\n"
        );
        let raw = RawConfig::parse(&text, Path::new("t.toml")).expect("parses");
        assert_eq!(
            file_name_errors(&raw),
            [
                "monitors[1].name: \"m\" is already the name of monitors[0]; names must be unique: rename or remove one of them",
                "pools[2].name: \"web\" is already the name of pools[0]; names must be unique: rename or remove one of them",
                "load_balancers[1].name: \"www\" is already the name of load_balancers[0]; names must be unique: rename or remove one of them",
            ]
        );
        let good = RawConfig::parse(GOOD, Path::new("t.toml")).expect("parses");
        assert!(file_name_errors(&good).is_empty());
    }
}

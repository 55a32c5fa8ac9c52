//! `[[load_balancers]]`: name, protocol, VIP (address, port and protocol unique, not the
//! SNAT address, not one of its own origins), pool lists, steering policy and its settings,
//! session affinity.
//!
//! A UDP load balancer may use pools with any monitor: monitors probe origins, not the VIP,
//! so an http or tcp check of a service that also speaks UDP is a fair health signal.
//! `udp_icmp` is the natural one (it probes the origin's UDP port itself).

use super::FieldErrors;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::MAX_VIPS;

use super::{country_code, dataplane::Snat, ip, name_ok, pop_ok, port, usable_ip};
use crate::{
    config::{
        defaults::{DEFAULT_AFFINITY_TTL, MAX_AFFINITY_TTL},
        raw::{RawConfig, RawLoadBalancer},
        types::{LoadBalancer, Pool, Protocol, SteeringPolicy},
        units::Weight,
    },
    geo::Region,
};

/// A VIP as the data path keys it: address, port, protocol.
type Vip = (IpAddr, u16, Protocol);

/// The fix of a pool list naming no pool.
const DEFINE_POOL: &str = "define it under [[pools]] or fix the name";

/// What load balancers are checked against, from the sections validated before them.
pub(super) struct Context<'a> {
    /// Every pool's name, with its index.
    pub pool_names: &'a HashMap<String, usize>,
    /// The pools, validated (their index is the one in `pool_names`).
    pub pools: &'a [Pool],
    /// The SNAT addresses of each family.
    pub snat: Snat,
    /// This host's position (`agent.latitude/longitude`).
    pub host_position: Option<(f64, f64)>,
    /// No client location data (`[geo]`) is configured.
    pub geo_is_empty: bool,
}

pub(super) fn validate(
    raw: &RawConfig,
    ctx: &Context<'_>,
    errors: &mut FieldErrors,
) -> Vec<LoadBalancer> {
    let mut lbs = Vec::new();
    let mut names = HashMap::new();
    let mut vips: HashMap<Vip, usize> = HashMap::new();
    for (li, l) in raw.load_balancers.iter().enumerate() {
        if let Some(lb) = load_balancer(li, l, ctx, &mut names, &mut vips, errors) {
            lbs.push(lb);
        }
    }
    vip_is_not_an_origin(raw, &vips, errors);
    if raw.load_balancers.len() > MAX_VIPS as usize {
        errors.invalid(
            "load_balancers",
            format!("{} load balancers", raw.load_balancers.len()),
            format!("at most {MAX_VIPS} are supported"),
        );
    }
    lbs
}

fn load_balancer(
    li: usize,
    l: &RawLoadBalancer,
    ctx: &Context<'_>,
    names: &mut HashMap<String, usize>,
    vips: &mut HashMap<Vip, usize>,
    errors: &mut FieldErrors,
) -> Option<LoadBalancer> {
    let f = format!("load_balancers[{li}]");
    name_ok(&l.name, &format!("{f}.name"), errors);
    if !l.name.is_empty() {
        if let Some(first) = names.insert(l.name.clone(), li) {
            errors.conflict(
                format!("{f}.name"),
                format!(
                    "\"{}\" is already the name of load_balancers[{first}]",
                    l.name
                ),
                "names must be unique",
            );
        }
    }
    let address = ip(&l.address, &format!("{f}.address"), errors);
    let vport = port(l.port, &format!("{f}.port"), errors);
    let protocol = protocol(&f, &l.protocol, errors);
    let origin_port = match l.origin_port {
        Some(p) => port(p, &format!("{f}.origin_port"), errors),
        None => vport,
    };
    if let (Some(a), Some(p)) = (address, vport) {
        // An unknown protocol has its own error and no VIP to conflict with.
        if let Some(proto) = protocol {
            if let Some(first) = vips.insert((a, p, proto), li) {
                errors.conflict(
                    &f,
                    format!("{proto} {a}:{p} is already the VIP of load_balancers[{first}]"),
                    "each address, port and protocol can serve one load balancer (a tcp and a udp one may share an address and port)",
                );
            }
        }
        if ctx.snat.contains(a) {
            errors.conflict(
                format!("{f}.address"),
                format!("{a} is also dataplane.snat_address"),
                "use a separate SNAT address",
            );
        }
    }
    if let Some(a) = address {
        origin_families(&f, l, a, ctx, errors);
    }
    default_and_fallback_pools(&f, l, ctx.pool_names, errors);
    let steering_policy = steering_policy(&f, &l.steering_policy, errors);
    let (region_pools, country_pools) = geo_pools(&f, l, ctx.pool_names, errors);
    let (pool_weights, default_weight) = random_steering(&f, l, errors);
    match steering_policy {
        Some(SteeringPolicy::Proximity) if ctx.host_position.is_none() => errors.invalid(
            format!("{f}.steering_policy"),
            "\"proximity\" needs this host's position",
            "set agent.latitude and agent.longitude",
        ),
        Some(SteeringPolicy::Geo)
            if ctx.geo_is_empty && (!region_pools.is_empty() || !country_pools.is_empty()) =>
        {
            errors.invalid(
                format!("{f}.region_pools / country_pools"),
                "set, but no client location data is configured, so no client would match",
                "add [geo] database = \"/path/GeoLite2-Country.mmdb\" and/or [[geo.prefixes]]",
            );
        }
        _ => {}
    }
    let affinity_ttl = session_affinity(&f, l, errors);
    let fallback_pool = l
        .fallback_pool
        .clone()
        .or_else(|| l.default_pools.last().cloned())
        .unwrap_or_default();
    Some(LoadBalancer {
        name: l.name.clone(),
        description: l.description.clone(),
        address: address?,
        port: vport?,
        protocol: protocol?,
        origin_port: origin_port?,
        default_pools: l.default_pools.clone(),
        fallback_pool,
        steering_policy: steering_policy?,
        enabled: l.enabled,
        pool_weights,
        default_weight,
        region_pools,
        country_pools,
        pop_pools: l.pop_pools.clone(),
        affinity_ttl,
    })
}

/// Which origin families a VIP of `vip`'s family can forward to, and why not: the one
/// place that says so. An IPv6 VIP serves IPv4 origins too (NAT64, `lb-ebpf/src/xlat.rs`);
/// an IPv4 VIP with IPv6 origins (NAT46) is not built. `None`: allowed.
pub(super) fn family_refusal(vip: IpAddr, origin: IpAddr) -> Option<&'static str> {
    match (vip, origin) {
        // IPv6 VIP, IPv4 origins: NAT64 (RFC 7915) in the data path (`lb-ebpf/src/xlat.rs`).
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), _) => None,
        (IpAddr::V4(_), IpAddr::V6(_)) => {
            Some("IPv4 VIP with IPv6 origins (NAT46) is not supported yet")
        }
    }
}

/// The origins of every pool `l` may use (`all_pools`, `random_steering` pools are default
/// pools) against its VIP address `vip` (`family_refusal`, one error per pool) and against
/// the SNAT addresses: origins of a family are reached from a SNAT address of that family.
fn origin_families(
    f: &str,
    l: &RawLoadBalancer,
    vip: IpAddr,
    ctx: &Context<'_>,
    errors: &mut FieldErrors,
) {
    let mut seen = HashSet::new();
    // The first pool with origins of each family (IPv4, IPv6), for the SNAT errors.
    let mut family_pool: [Option<&str>; 2] = [None, None];
    let used = l
        .default_pools
        .iter()
        .chain(l.fallback_pool.iter())
        .chain(l.region_pools.values().flatten())
        .chain(l.country_pools.values().flatten())
        .chain(l.pop_pools.values().flatten());
    for name in used {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let Some(pool) = ctx.pool_names.get(name).and_then(|i| ctx.pools.get(*i)) else {
            continue; // a missing pool has its own error
        };
        for o in &pool.origins {
            family_pool[usize::from(o.address.is_ipv6())].get_or_insert(name.as_str());
        }
        if let Some((o, why)) = pool
            .origins
            .iter()
            .find_map(|o| family_refusal(vip, o.address).map(|why| (o, why)))
        {
            errors.invalid(
                format!("{f}.address"),
                format!(
                    "{why}: pool \"{name}\" has origin \"{}\" ({})",
                    o.name, o.address
                ),
                "give this load balancer an IPv6 address (an IPv6 VIP serves IPv4 and IPv6 origins), or use pools of IPv4 origins",
            );
        }
    }
    if !ctx.snat.complete {
        return; // no snat_address, or a bad entry: that error says enough
    }
    let missing = [
        (family_pool[0], ctx.snat.v4.is_none(), "IPv4"),
        (family_pool[1], ctx.snat.v6.is_none(), "IPv6"),
    ];
    for (pool, none, family) in missing {
        if let (Some(pool), true) = (pool, none) {
            errors.invalid(
                "dataplane.snat_address",
                format!(
                    "load balancer \"{}\" has {family} origins (pool \"{pool}\") but no {family} SNAT address is configured",
                    l.name
                ),
                "add one: snat_address = [\"198.51.100.1\", \"2001:db8::1\"]",
            );
        }
    }
}

fn default_and_fallback_pools(
    f: &str,
    l: &RawLoadBalancer,
    pool_names: &HashMap<String, usize>,
    errors: &mut FieldErrors,
) {
    if l.default_pools.is_empty() {
        errors.invalid(
            format!("{f}.default_pools"),
            "empty",
            "list the pools to send traffic to, in failover order",
        );
    }
    for (i, name) in l.default_pools.iter().enumerate() {
        if !pool_names.contains_key(name) {
            errors.missing(
                format!("{f}.default_pools[{i}]"),
                format!("no pool is named \"{name}\""),
                DEFINE_POOL,
            );
        }
    }
    if let Some(fb) = &l.fallback_pool {
        if !pool_names.contains_key(fb) {
            errors.missing(
                format!("{f}.fallback_pool"),
                format!("no pool is named \"{fb}\""),
                DEFINE_POOL,
            );
        }
    }
}

fn protocol(f: &str, protocol: &str, errors: &mut FieldErrors) -> Option<Protocol> {
    let p = Protocol::parse(protocol);
    if p.is_none() {
        errors.invalid(
            format!("{f}.protocol"),
            format!("unknown protocol \"{protocol}\""),
            "use \"tcp\" (the default) or \"udp\" (lowercase)",
        );
    }
    p
}

fn steering_policy(f: &str, policy: &str, errors: &mut FieldErrors) -> Option<SteeringPolicy> {
    match policy {
        "off" | "" => Some(SteeringPolicy::Off),
        "random" => Some(SteeringPolicy::Random),
        "dynamic_latency" => Some(SteeringPolicy::DynamicLatency),
        "geo" => Some(SteeringPolicy::Geo),
        "proximity" => Some(SteeringPolicy::Proximity),
        "least_connections" | "least_outstanding_requests" => {
            errors.invalid(
                format!("{f}.steering_policy"),
                format!("\"{policy}\" across pools is not supported"),
                "set origin_steering = { policy = \"least_connections\" } on the pools instead",
            );
            None
        }
        other => {
            errors.invalid(
                format!("{f}.steering_policy"),
                format!("unknown policy \"{other}\""),
                "use \"off\" (standard failover), \"random\", \"dynamic_latency\", \"geo\" or \"proximity\"",
            );
            None
        }
    }
}

/// A list of pool names in `field`: not empty, each one defined.
fn pool_list(
    list: &[String],
    field: &str,
    pool_names: &HashMap<String, usize>,
    errors: &mut FieldErrors,
) {
    if list.is_empty() {
        errors.invalid(field, "empty", "list at least one pool, in failover order");
    }
    for (i, name) in list.iter().enumerate() {
        if !pool_names.contains_key(name) {
            errors.missing(
                format!("{field}[{i}]"),
                format!("no pool is named \"{name}\""),
                DEFINE_POOL,
            );
        }
    }
}

type RegionPools = BTreeMap<Region, Vec<String>>;
type CountryPools = BTreeMap<[u8; 2], Vec<String>>;

/// `region_pools`, `country_pools` (typed keys) and `pop_pools` (checked only).
fn geo_pools(
    f: &str,
    l: &RawLoadBalancer,
    pool_names: &HashMap<String, usize>,
    errors: &mut FieldErrors,
) -> (RegionPools, CountryPools) {
    let mut region_pools = BTreeMap::new();
    for (code, list) in &l.region_pools {
        let field = format!("{f}.region_pools.{code}");
        pool_list(list, &field, pool_names, errors);
        match Region::parse(code) {
            Some(r) => {
                region_pools.insert(r, list.clone());
            }
            None => errors.invalid(
                field,
                format!("unknown region \"{code}\""),
                format!(
                    "use one of Cloudflare's region codes: {}",
                    Region::ALL.map(Region::code).join(", ")
                ),
            ),
        }
    }
    let mut country_pools = BTreeMap::new();
    for (code, list) in &l.country_pools {
        let field = format!("{f}.country_pools.{code}");
        pool_list(list, &field, pool_names, errors);
        match country_code(code) {
            Some(c) => {
                country_pools.insert(c, list.clone());
            }
            None => errors.invalid(
                field,
                format!("\"{code}\" is not an ISO 3166-1 alpha-2 country code"),
                "write it like \"US\" or \"DE\"",
            ),
        }
    }
    for (code, list) in &l.pop_pools {
        let field = format!("{f}.pop_pools.{code}");
        pool_list(list, &field, pool_names, errors);
        pop_ok(code, &field, errors);
    }
    (region_pools, country_pools)
}

/// `random_steering`: per-pool weights (on default pools only) and the default weight. A
/// weight out of range is left out (or 1 for the default) after its error.
fn random_steering(
    f: &str,
    l: &RawLoadBalancer,
    errors: &mut FieldErrors,
) -> (BTreeMap<String, Weight>, Weight) {
    let rs = l.random_steering.as_ref();
    let default_weight = Weight::check(
        rs.map_or(1.0, |r| r.default_weight),
        &format!("{f}.random_steering.default_weight"),
        "",
        errors,
    )
    .unwrap_or(Weight::ONE);
    let mut pool_weights = BTreeMap::new();
    for (name, w) in rs.iter().flat_map(|r| &r.pool_weights) {
        let field = format!("{f}.random_steering.pool_weights.{name}");
        if !l.default_pools.contains(name) {
            errors.invalid(
                &field,
                format!("\"{name}\" is not one of this load balancer's default_pools"),
                "random steering spreads over default_pools: add it there or remove its weight",
            );
        }
        if let Some(w) = Weight::check(*w, &field, " (0 sends no new connections there)", errors) {
            pool_weights.insert(name.clone(), w);
        }
    }
    (pool_weights, default_weight)
}

/// `session_affinity` and its TTL: `Some(ttl)` for `ip`.
fn session_affinity(f: &str, l: &RawLoadBalancer, errors: &mut FieldErrors) -> Option<u32> {
    let affinity_ttl = match l.session_affinity.as_str() {
        "none" | "" => None,
        "ip" => {
            let ttl = l.session_affinity_ttl.unwrap_or(DEFAULT_AFFINITY_TTL);
            if !(1..=MAX_AFFINITY_TTL).contains(&ttl) {
                errors.invalid(
                    format!("{f}.session_affinity_ttl"),
                    format!("{ttl} is out of range"),
                    format!("use 1-{MAX_AFFINITY_TTL} seconds (default {DEFAULT_AFFINITY_TTL})"),
                );
            }
            Some(ttl)
        }
        "cookie" | "ip_cookie" | "header" => {
            errors.invalid(
                format!("{f}.session_affinity"),
                format!(
                    "\"{}\" needs HTTP, which a layer-4 load balancer does not parse",
                    l.session_affinity
                ),
                "use \"ip\" (the client address) or \"none\"",
            );
            None
        }
        other => {
            errors.invalid(
                format!("{f}.session_affinity"),
                format!("unknown value \"{other}\""),
                "use \"none\" or \"ip\"",
            );
            None
        }
    };
    if l.session_affinity_ttl.is_some() && affinity_ttl.is_none() && l.session_affinity == "none" {
        errors.invalid(
            format!("{f}.session_affinity_ttl"),
            "set, but session_affinity is \"none\"",
            "set session_affinity = \"ip\" or remove the TTL",
        );
    }
    affinity_ttl
}

/// A VIP that is also an origin's address, port and protocol would send the load balancer's
/// own forwarded packets back into itself. An origin is reached with the protocol of each
/// load balancer that uses its pool, and an origin without a `port` on that load balancer's
/// `origin_port`. A TCP VIP on a UDP origin's address and port (or the other way round) is
/// another socket.
fn vip_is_not_an_origin(raw: &RawConfig, vips: &HashMap<Vip, usize>, errors: &mut FieldErrors) {
    // Pool -> (origin port, protocol) of each load balancer that uses it.
    let mut users_of_pool: HashMap<&str, HashSet<(u32, Protocol)>> = HashMap::new();
    for l in &raw.load_balancers {
        let origin_port = l.origin_port.unwrap_or(l.port);
        let proto = Protocol::parse(&l.protocol).unwrap_or_default();
        let used = l
            .default_pools
            .iter()
            .chain(l.fallback_pool.iter())
            .chain(l.region_pools.values().flatten())
            .chain(l.country_pools.values().flatten())
            .chain(l.pop_pools.values().flatten());
        for name in used {
            users_of_pool
                .entry(name.as_str())
                .or_default()
                .insert((origin_port, proto));
        }
    }
    let mut found: Vec<(usize, String, String)> = Vec::new();
    let fix = "a VIP cannot be one of the origins it forwards to: give the load balancer another address or port, or fix the origin";
    for (pi, p) in raw.pools.iter().enumerate() {
        let users = users_of_pool.get(p.name.as_str());
        for (oi, o) in p.origins.iter().enumerate() {
            let Some(address) = usable_ip(&o.address) else {
                continue;
            };
            let targets: HashSet<(u32, Protocol)> = match (o.port, users) {
                (Some(port), Some(users)) => {
                    users.iter().map(|(_, proto)| (port, *proto)).collect()
                }
                // A pool nobody uses yet: its origin's own port, as TCP.
                (Some(port), None) => HashSet::from([(port, Protocol::Tcp)]),
                (None, users) => users.cloned().unwrap_or_default(),
            };
            for (port, proto) in targets {
                let Ok(port) = u16::try_from(port) else {
                    continue;
                };
                if let Some(&li) = vips.get(&(address, port, proto)) {
                    found.push((
                        li,
                        format!("load_balancers[{li}].address"),
                        format!(
                            "{address} with {proto} port {port} is also the address and port of pools[{pi}].origins[{oi}] (origin \"{}\" of pool \"{}\")",
                            o.name, p.name
                        ),
                    ));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    for (_, path, problem) in found {
        errors.conflict(path, problem, fix);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::{Config, Protocol};
    use std::path::Path;

    #[test]
    fn lb_name_required() {
        assert_one(
            &errors_with("name = \"www\"", "name = \"\""),
            "load_balancers[0].name",
        );
    }

    #[test]
    fn lb_names_unique() {
        let text = format!("{GOOD}\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.11\"\nport = 80\ndefault_pools = [\"web\"]\n");
        assert_one(&errors_of(&text), "load_balancers[1].name");
    }

    #[test]
    fn lb_address_must_parse() {
        assert_one(
            &errors_with("\"10.0.0.10\"", "\"vip\""),
            "load_balancers[0].address",
        );
    }

    #[test]
    fn lb_port_required() {
        assert_one(&errors_with("port = 80\n", ""), "load_balancers[0].port");
    }

    #[test]
    fn lb_origin_port_valid() {
        assert_one(
            &errors_with("port = 80\n", "port = 80\norigin_port = 99999\n"),
            "load_balancers[0].origin_port",
        );
    }

    #[test]
    fn vip_address_port_unique() {
        let text = format!("{GOOD}\n[[load_balancers]]\nname = \"two\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n");
        assert_one(&errors_of(&text), "load_balancers[1]");
    }

    #[test]
    fn protocol_defaults_to_tcp_and_takes_udp() {
        let c = Config::parse(GOOD, Path::new("t")).expect("valid");
        assert_eq!(c.load_balancers[0].protocol, Protocol::Tcp);
        let c = Config::parse(
            &GOOD.replacen("port = 80\n", "port = 80\nprotocol = \"udp\"\n", 1),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(c.load_balancers[0].protocol, Protocol::Udp);
    }

    #[test]
    fn protocol_must_be_tcp_or_udp() {
        for bad in ["UDP", "sctp", ""] {
            let e = errors_with("port = 80\n", &format!("port = 80\nprotocol = \"{bad}\"\n"));
            assert_one(&e, "load_balancers[0].protocol");
            assert!(e[0].contains("\"udp\""), "the fix names the choices: {e:?}");
        }
    }

    #[test]
    fn vip_address_port_and_protocol_unique() {
        // The same address and port with the other protocol is another VIP.
        let two = |proto: &str| {
            format!("{GOOD}\n[[load_balancers]]\nname = \"two\"\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"{proto}\"\ndefault_pools = [\"web\"]\n")
        };
        Config::parse(&two("udp"), Path::new("t")).expect("tcp and udp on 10.0.0.10:80");
        let e = errors_of(&two("tcp"));
        assert_one(&e, "load_balancers[1]");
        assert!(e[0].contains("tcp 10.0.0.10:80"), "{e:?}");
        let both_udp = two("udp").replacen("port = 80\n", "port = 80\nprotocol = \"udp\"\n", 1);
        let e = errors_of(&both_udp);
        assert_one(&e, "load_balancers[1]");
        assert!(e[0].contains("udp 10.0.0.10:80"), "{e:?}");
    }

    #[test]
    fn vip_is_not_an_origin_of_its_own_protocol() {
        // Origin b has no port: www reaches it on 80 with www's protocol. A UDP VIP on its
        // address and port loops; a TCP VIP there does not (another socket).
        let text = GOOD.replacen("\"10.0.3.2\"", "\"10.0.0.10\"", 1);
        let udp = text.replacen("port = 80\n", "port = 80\nprotocol = \"udp\"\n", 1);
        let e = errors_of(&udp);
        assert_one(&e, "load_balancers[0].address");
        assert!(e[0].contains("udp port 80"), "{e:?}");
        let other = format!("{text}\n[[load_balancers]]\nname = \"dns\"\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"udp\"\norigin_port = 53\ndefault_pools = [\"web\"]\n");
        let e = errors_of(&other);
        assert_one(&e, "load_balancers[0].address");
        assert!(e[0].contains("tcp port 80"), "only www loops: {e:?}");
        // A UDP VIP on an origin's address and port that only TCP load balancers use is
        // another socket.
        let fine = format!("{GOOD}\n[[pools]]\nname = \"dns\"\norigins = [{{ name = \"c\", address = \"10.0.4.2\" }}]\n\n[[load_balancers]]\nname = \"dns\"\naddress = \"10.0.2.2\"\nport = 8080\nprotocol = \"udp\"\ndefault_pools = [\"dns\"]\n");
        Config::parse(&fine, Path::new("t")).expect("udp 10.0.2.2:8080 is not tcp 10.0.2.2:8080");
    }

    #[test]
    fn a_udp_load_balancer_may_use_any_monitor() {
        for kind in ["http", "https", "tcp", "smtp", "udp_icmp", "icmp_ping"] {
            let text = with_monitor(&format!("type = \"{kind}\""))
                .replacen("name = \"web\"\n", "name = \"web\"\nmonitor = \"m\"\n", 1)
                .replacen("port = 80\n", "port = 80\nprotocol = \"udp\"\n", 1);
            Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }

    #[test]
    fn vip_is_not_an_origin_with_its_own_port() {
        let e = errors_with(
            "address = \"10.0.2.2\", port = 8080",
            "address = \"10.0.0.10\", port = 80",
        );
        assert_one(&e, "load_balancers[0].address");
        assert!(
            e[0].contains("pools[0].origins[0]") && e[0].contains("\"a\""),
            "{e:?}"
        );
    }

    #[test]
    fn vip_is_not_an_origin_on_the_origin_port() {
        // Origin b has no port, so it is reached on www's origin_port (80, its VIP port).
        let e = errors_with("\"10.0.3.2\"", "\"10.0.0.10\"");
        assert_one(&e, "load_balancers[0].address");
        assert!(e[0].contains("pools[0].origins[1]"), "{e:?}");
        // The same address on another port is fine.
        let text = GOOD.replacen("\"10.0.3.2\"", "\"10.0.0.10\"", 1).replacen(
            "port = 80\n",
            "port = 80\norigin_port = 8080\n",
            1,
        );
        Config::parse(&text, Path::new("t.toml")).expect("another port is another socket");
    }

    #[test]
    fn vip_is_not_snat_address() {
        assert_one(
            &errors_with("\"10.0.0.10\"", "\"10.0.0.1\""),
            "load_balancers[0].address",
        );
        // Nor any address of a SNAT prefix (10.0.0.16-23 here).
        let text = GOOD.replace(
            "snat_address = \"10.0.0.1\"",
            "snat_address = \"10.0.0.16/29\"",
        );
        assert!(
            crate::config::Config::parse(&text, std::path::Path::new("t")).is_ok(),
            "10.0.0.10 is outside the prefix"
        );
        let e = errors_of(&text.replacen("\"10.0.0.10\"", "\"10.0.0.23\"", 1));
        assert_one(&e, "load_balancers[0].address");
    }

    #[test]
    fn ipv6_vip_with_ipv6_origins_is_valid() {
        let c = Config::parse(GOOD6, Path::new("t")).expect("valid");
        let lb = &c.load_balancers[1];
        assert_eq!(
            lb.address,
            "2001:db8::10".parse::<std::net::IpAddr>().unwrap()
        );
        let s6 = c.dataplane.snat6.expect("an IPv6 SNAT address");
        assert_eq!(
            (s6.address.to_string(), s6.count),
            ("2001:db8:ff::1".into(), 1)
        );
        assert_eq!(c.dataplane.snat_count, 1);
    }

    #[test]
    fn ipv6_vip_with_ipv4_origins_is_nat64() {
        let text = GOOD6.replacen("default_pools = [\"web6\"]", "default_pools = [\"web\"]", 1);
        let c = Config::parse(&text, Path::new("t")).expect("an IPv6 VIP may have IPv4 origins");
        let lb = &c.load_balancers[1];
        assert!(lb.address.is_ipv6());
        assert_eq!(lb.default_pools, ["web"]);
    }

    #[test]
    fn nat64_needs_an_ipv4_snat_address() {
        let text = GOOD6
            .replacen("default_pools = [\"web6\"]", "default_pools = [\"web\"]", 1)
            .replacen(
                "snat_address = [\"10.0.0.1\", \"2001:db8:ff::1\"]",
                "snat_address = \"2001:db8:ff::1\"",
                1,
            );
        // Without the IPv4 load balancer: only the NAT64 one needs the IPv4 SNAT address.
        let text = text.replacen(
            "[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n",
            "",
            1,
        );
        assert!(
            !text.contains("name = \"www\""),
            "the IPv4 load balancer removed"
        );
        let e = errors_of(&text);
        assert_one(&e, "dataplane.snat_address");
        assert!(e[0].contains("\"www6\" has IPv4 origins"), "{e:?}");
    }

    #[test]
    fn ipv4_vip_with_ipv6_origins_is_refused_for_now() {
        let e = errors6_with("default_pools = [\"web\"]", "default_pools = [\"web6\"]");
        assert_one(&e, "load_balancers[0].address");
        assert!(e[0].contains("NAT46"), "{e:?}");
    }

    #[test]
    fn origin_families_are_checked_in_every_pool_list() {
        for extra in [
            "fallback_pool = \"POOL\"",
            "steering_policy = \"geo\"\nregion_pools = { WEU = [\"POOL\"] }",
            "steering_policy = \"geo\"\ncountry_pools = { DE = [\"POOL\"] }",
            "pop_pools = { AMS = [\"POOL\"] }",
        ] {
            let with = |lb_pools: &str, pool: &str| {
                format!(
                    "{}\n[geo]\nprefixes = [{{ prefix = \"2001:db8:100::/48\", country = \"DE\" }}]\n",
                    GOOD6.replacen(
                        lb_pools,
                        &format!("{lb_pools}\n{}", extra.replace("POOL", pool)),
                        1
                    )
                )
            };
            // IPv4 origins in any pool list of the IPv6 VIP: NAT64, allowed.
            Config::parse(&with("default_pools = [\"web6\"]", "web"), Path::new("t"))
                .unwrap_or_else(|e| panic!("{extra}: NAT64 allowed: {e}"));
            // IPv6 origins in any pool list of the IPv4 VIP: NAT46, refused.
            let e = errors_of(&with("default_pools = [\"web\"]", "web6"));
            assert_one(&e, "load_balancers[0].address");
            assert!(e[0].contains("NAT46"), "{extra}: {e:?}");
        }
    }

    #[test]
    fn ipv6_origins_need_an_ipv6_snat_address() {
        let e = errors6_with(
            "snat_address = [\"10.0.0.1\", \"2001:db8:ff::1\"]",
            "snat_address = \"10.0.0.1\"",
        );
        assert_one(&e, "dataplane.snat_address");
        assert!(
            e[0].contains("load balancer \"www6\" has IPv6 origins (pool \"web6\") but no IPv6 SNAT address is configured")
                && e[0].contains("snat_address = [\"198.51.100.1\", \"2001:db8::1\"]"),
            "{e:?}"
        );
    }

    #[test]
    fn ipv4_origins_need_an_ipv4_snat_address_only_when_there_are_some() {
        let e = errors6_with(
            "snat_address = [\"10.0.0.1\", \"2001:db8:ff::1\"]",
            "snat_address = \"2001:db8:ff::1\"",
        );
        assert_one(&e, "dataplane.snat_address");
        assert!(e[0].contains("\"www\" has IPv4 origins"), "{e:?}");
        // Without the IPv4 load balancer, an IPv6 SNAT address alone will do.
        let v6_only = GOOD6
            .replacen("snat_address = [\"10.0.0.1\", \"2001:db8:ff::1\"]", "snat_address = \"2001:db8:ff::1\"", 1)
            .replacen("[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n", "", 1);
        let c = Config::parse(&v6_only, Path::new("t")).expect("valid without IPv4 SNAT");
        assert_eq!(c.dataplane.snat_count, 0, "no IPv4 SNAT address");
        assert_eq!(c.load_balancers.len(), 1);
    }

    #[test]
    fn vip_is_not_an_ipv6_snat_address() {
        let e = errors6_with("\"2001:db8::10\"", "\"2001:db8:ff::1\"");
        assert_one(&e, "load_balancers[1].address");
        assert!(e[0].contains("dataplane.snat_address"), "{e:?}");
        // Nor any address of an IPv6 SNAT prefix.
        let e = errors_of(
            &GOOD6
                .replacen("\"2001:db8:ff::1\"]", "\"2001:db8:ff::/126\"]", 1)
                .replacen("\"2001:db8::10\"", "\"2001:db8:ff::3\"", 1),
        );
        assert_one(&e, "load_balancers[1].address");
    }

    #[test]
    fn vip_address_not_link_local_multicast_loopback_unspecified_or_mapped() {
        for bad in ["fe80::10", "ff05::10", "::1", "::", "::ffff:10.0.0.10"] {
            let e = errors6_with("\"2001:db8::10\"", &format!("\"{bad}\""));
            assert_one(&e, "load_balancers[1].address");
        }
    }

    #[test]
    fn ipv6_vip_is_not_one_of_its_origins() {
        let e = errors6_with(
            "address = \"2001:db8::10\"\nport = 443",
            "address = \"2001:db8:2::2\"\nport = 8080",
        );
        assert_one(&e, "load_balancers[1].address");
        assert!(e[0].contains("2001:db8:2::2 with tcp port 8080"), "{e:?}");
    }

    #[test]
    fn default_pools_required() {
        assert_one(
            &errors_with("default_pools = [\"web\"]", "default_pools = []"),
            "load_balancers[0].default_pools",
        );
    }

    #[test]
    fn default_pools_must_exist() {
        let e = errors_with(
            "default_pools = [\"web\"]",
            "default_pools = [\"web\", \"gone\"]",
        );
        assert_one(&e, "load_balancers[0].default_pools[1]");
        assert!(e[0].contains("gone"), "{e:?}");
    }

    #[test]
    fn fallback_pool_must_exist() {
        assert_one(
            &errors_with(
                "default_pools = [\"web\"]",
                "default_pools = [\"web\"]\nfallback_pool = \"gone\"",
            ),
            "load_balancers[0].fallback_pool",
        );
    }

    #[test]
    fn fallback_pool_defaults_to_last_default_pool() {
        let c = Config::parse(GOOD, Path::new("t")).expect("valid");
        assert_eq!(c.load_balancers[0].fallback_pool, "web");
    }

    #[test]
    fn steering_policy_must_be_known() {
        assert_one(
            &lb_with("steering_policy = \"fastest\""),
            "load_balancers[0].steering_policy",
        );
        let e = lb_with("steering_policy = \"least_connections\"");
        assert_one(&e, "load_balancers[0].steering_policy");
        assert!(e[0].contains("origin_steering"), "{e:?}");
        for ok in ["off", "random", "dynamic_latency", "geo"] {
            let text = GOOD.replacen(
                "default_pools = [\"web\"]",
                &format!("default_pools = [\"web\"]\nsteering_policy = \"{ok}\""),
                1,
            );
            Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn region_pools_need_known_regions_and_pools() {
        let mut text = GOOD.replacen("default_pools = [\"web\"]", "default_pools = [\"web\"]\nsteering_policy = \"geo\"\nregion_pools = { MARS = [\"web\"], WEU = [\"nope\"] }", 1);
        text.push_str("\n[geo]\nprefixes = [{ prefix = \"10.9.0.0/16\", country = \"DE\" }]\n");
        let e = errors_of(&text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].starts_with("load_balancers[0].region_pools.MARS: unknown region"),
            "{e:?}"
        );
        assert!(e[0].contains("WNAM, ENAM"), "lists the codes: {e:?}");
        assert!(
            e[1].starts_with("load_balancers[0].region_pools.WEU[0]: no pool is named \"nope\""),
            "{e:?}"
        );
    }

    #[test]
    fn country_pools_need_iso_codes() {
        let mut text = GOOD.replacen("default_pools = [\"web\"]", "default_pools = [\"web\"]\nsteering_policy = \"geo\"\ncountry_pools = { XX = [\"web\"], de = [\"web\"] }", 1);
        text.push_str("\n[geo]\nprefixes = [{ prefix = \"10.9.0.0/16\", country = \"DE\" }]\n");
        let e = errors_of(&text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e.iter().all(|e| e.contains("is not an ISO 3166-1 alpha-2")),
            "{e:?}"
        );
    }

    #[test]
    fn geo_lists_need_geo_data() {
        assert_one(
            &lb_with("steering_policy = \"geo\"\nregion_pools = { WEU = [\"web\"] }"),
            "load_balancers[0].region_pools / country_pools",
        );
        // pop_pools alone need no client data.
        let text = GOOD.replacen(
            "default_pools = [\"web\"]",
            "default_pools = [\"web\"]\nsteering_policy = \"geo\"\npop_pools = { AMS = [\"web\"] }",
            1,
        );
        Config::parse(&text, Path::new("t")).expect("pop_pools alone are fine");
    }

    #[test]
    fn random_steering_weights_in_range_and_on_default_pools() {
        assert_one(
            &lb_with("random_steering = { pool_weights = { web = 1.5 } }"),
            "load_balancers[0].random_steering.pool_weights.web",
        );
        assert_one(
            &lb_with("random_steering = { pool_weights = { other = 0.5 } }"),
            "load_balancers[0].random_steering.pool_weights.other",
        );
        assert_one(
            &lb_with("random_steering = { default_weight = -0.1 }"),
            "load_balancers[0].random_steering.default_weight",
        );
    }

    #[test]
    fn proximity_needs_this_hosts_position() {
        assert_one(
            &lb_with("steering_policy = \"proximity\""),
            "load_balancers[0].steering_policy",
        );
        let text = GOOD
            .replacen(
                "[[pools]]",
                "[agent]\nlatitude = 1.0\nlongitude = 2.0\n\n[[pools]]",
                1,
            )
            .replacen(
                "default_pools = [\"web\"]",
                "default_pools = [\"web\"]\nsteering_policy = \"proximity\"",
                1,
            );
        Config::parse(&text, Path::new("t")).expect("with a position it is fine");
    }

    #[test]
    fn session_affinity_is_ip_or_none_with_a_ttl_in_range() {
        let e = lb_with("session_affinity = \"cookie\"");
        assert_one(&e, "load_balancers[0].session_affinity");
        assert!(e[0].contains("\"ip\""), "{e:?}");
        assert_one(
            &lb_with("session_affinity = \"sticky\""),
            "load_balancers[0].session_affinity",
        );
        assert_one(
            &lb_with("session_affinity = \"ip\"\nsession_affinity_ttl = 0"),
            "load_balancers[0].session_affinity_ttl",
        );
        assert_one(
            &lb_with("session_affinity = \"ip\"\nsession_affinity_ttl = 604801"),
            "load_balancers[0].session_affinity_ttl",
        );
        assert_one(
            &lb_with("session_affinity_ttl = 60"),
            "load_balancers[0].session_affinity_ttl",
        );
    }
}

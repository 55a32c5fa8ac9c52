//! `[[pools]]`: names, origins (address, port, weight), monitor, minimum origins, position,
//! origin steering, webhooks, and the data path's limits on pools and origins.

use super::FieldErrors;
use std::collections::{HashMap, HashSet};

use lb_common::{MAX_LC_MEMBERS, MAX_ORIGINS, MAX_RINGS};

use super::{ip, name_ok, port, position, usable_ip};
use crate::config::{
    raw::{RawOrigin, RawPool},
    types::{Origin, OriginSteering, Pool},
    units::Weight,
};

/// The pools, and the name of every pool with its index, which load balancers refer to.
/// `monitor_names` are the names pools may use.
pub(super) fn validate(
    raw: &[RawPool],
    monitor_names: &HashMap<String, usize>,
    errors: &mut FieldErrors,
) -> (Vec<Pool>, HashMap<String, usize>) {
    let mut pools = Vec::new();
    let mut names = HashMap::new();
    let mut origin_count = 0usize;
    for (pi, p) in raw.iter().enumerate() {
        pools.push(pool(pi, p, &mut names, monitor_names, errors));
        origin_count += p.origins.len();
    }
    if raw.len() > MAX_RINGS as usize {
        errors.invalid(
            "pools",
            format!("{} pools", raw.len()),
            format!("at most {MAX_RINGS} are supported"),
        );
    }
    if origin_count > MAX_ORIGINS as usize {
        errors.invalid(
            "pools",
            format!("{origin_count} origins in all"),
            format!("at most {MAX_ORIGINS} are supported"),
        );
    }
    (pools, names)
}

fn pool(
    pi: usize,
    p: &RawPool,
    names: &mut HashMap<String, usize>,
    monitor_names: &HashMap<String, usize>,
    errors: &mut FieldErrors,
) -> Pool {
    let f = format!("pools[{pi}]");
    name_ok(&p.name, &format!("{f}.name"), errors);
    if !p.name.is_empty() {
        if let Some(first) = names.insert(p.name.clone(), pi) {
            errors.conflict(
                format!("{f}.name"),
                format!("\"{}\" is already the name of pools[{first}]", p.name),
                "pool names must be unique",
            );
        }
    }
    if p.origins.is_empty() {
        errors.invalid(
            format!("{f}.origins"),
            "empty",
            "a pool needs at least one origin",
        );
    }
    let origins = origins(&f, &p.origins, errors);
    if let Some(m) = &p.monitor {
        if !monitor_names.contains_key(m) {
            errors.missing(
                format!("{f}.monitor"),
                format!("no monitor is named \"{m}\""),
                "define it under [[monitors]] or fix the name",
            );
        }
    }
    if p.minimum_origins == 0 {
        errors.invalid(
            format!("{f}.minimum_origins"),
            "0",
            "a pool needs at least 1 healthy origin to be healthy",
        );
    } else if !p.origins.is_empty() && p.minimum_origins as usize > p.origins.len() {
        errors.invalid(
            format!("{f}.minimum_origins"),
            format!(
                "{} but the pool has {} origin(s), so it could never be healthy",
                p.minimum_origins,
                p.origins.len()
            ),
            "lower it or add origins",
        );
    }
    let pool_position = position(p.latitude, p.longitude, &f, errors);
    let origin_steering = origin_steering(&f, p, errors);
    for (i, url) in p.notification_webhooks.iter().enumerate() {
        if let Err(e) = crate::notify::validate_url(url) {
            // The message already says the fix (`notify` words it for every caller).
            errors.invalid(format!("{f}.notification_webhooks[{i}]"), e, "");
        }
    }
    Pool {
        notification_webhooks: p.notification_webhooks.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        enabled: p.enabled,
        monitor: p.monitor.clone(),
        minimum_origins: p.minimum_origins,
        origins,
        position: pool_position,
        origin_steering,
    }
}

/// The origins of the pool `f`: names unique within it, address, port, weight.
fn origins(f: &str, raw: &[RawOrigin], errors: &mut FieldErrors) -> Vec<Origin> {
    let mut origins = Vec::new();
    let mut origin_names = HashSet::new();
    for (oi, o) in raw.iter().enumerate() {
        // A field's path is written only for an error: five paths per origin were a third
        // of the time a reload of 10,000 origins spent validating. Good values take the
        // checks' own fast path; a bad one goes through the check that words its error.
        let at = |leaf: &str| format!("{f}.origins[{oi}].{leaf}");
        if o.name.is_empty() {
            name_ok(&o.name, &at("name"), errors);
        } else if !origin_names.insert(o.name.as_str()) {
            errors.conflict(
                at("name"),
                format!("\"{}\" appears twice in this pool", o.name),
                "origin names must be unique within a pool",
            );
        }
        let address = usable_ip(&o.address).or_else(|| ip(&o.address, &at("address"), errors));
        let port = o.port.and_then(|p| match u16::try_from(p) {
            Ok(p) if p != 0 => Some(p),
            _ => port(p, &at("port"), errors),
        });
        let weight = Weight::new(o.weight)
            .or_else(|| Weight::check(o.weight, &at("weight"), " (0 drains the origin)", errors));
        if let (Some(address), Some(weight)) = (address, weight) {
            origins.push(Origin {
                name: o.name.clone(),
                address,
                port,
                weight,
                enabled: o.enabled,
            });
        }
    }
    origins
}

fn origin_steering(f: &str, p: &RawPool, errors: &mut FieldErrors) -> OriginSteering {
    match p.origin_steering.as_ref().map(|o| o.policy.as_str()) {
        None | Some("random" | "") => OriginSteering::Random,
        Some("hash") => OriginSteering::Hash,
        Some("least_connections") => {
            if p.origins.len() > MAX_LC_MEMBERS {
                errors.invalid(
                    format!("{f}.origin_steering.policy"),
                    format!(
                        "least_connections compares every origin per new connection, so a pool may have at most {MAX_LC_MEMBERS}; this one has {}",
                        p.origins.len()
                    ),
                    "split the pool or use \"random\"",
                );
            }
            OriginSteering::LeastConnections
        }
        Some("least_outstanding_requests") => {
            errors.invalid(
                format!("{f}.origin_steering.policy"),
                "least_outstanding_requests counts HTTP requests, which a layer-4 load balancer cannot see",
                "use \"least_connections\"",
            );
            OriginSteering::Random
        }
        Some(other) => {
            errors.invalid(
                format!("{f}.origin_steering.policy"),
                format!("unknown policy \"{other}\""),
                "use \"random\", \"hash\" or \"least_connections\"",
            );
            OriginSteering::Random
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn pool_webhooks_must_be_http_urls() {
        assert_one(
            &errors_with(
                "name = \"web\"\n",
                "name = \"web\"\nnotification_webhooks = [\"ftp://hooks.example.com/x\"]\n",
            ),
            "pools[0].notification_webhooks[0]",
        );
    }

    #[test]
    fn pool_name_required() {
        // Renaming the pool away also leaves default_pools pointing at nothing: two errors.
        let e = errors_with("name = \"web\"", "name = \"\"");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("pools[0].name"), "{e:#?}");
    }

    #[test]
    fn pool_names_unique() {
        let text = format!("{GOOD}\n[[pools]]\nname = \"web\"\norigins = [{{ name = \"c\", address = \"10.0.4.2\" }}]\n");
        assert_one(&errors_of(&text), "pools[1].name");
    }

    #[test]
    fn pool_needs_origins() {
        let text = format!("{GOOD}\n[[pools]]\nname = \"empty\"\n");
        assert_one(&errors_of(&text), "pools[1].origins");
    }

    #[test]
    fn origin_name_required() {
        assert_one(
            &errors_with("name = \"a\"", "name = \"\""),
            "pools[0].origins[0].name",
        );
    }

    #[test]
    fn origin_names_unique_in_pool() {
        assert_one(
            &errors_with("name = \"b\"", "name = \"a\""),
            "pools[0].origins[1].name",
        );
    }

    #[test]
    fn origin_address_must_parse() {
        assert_one(
            &errors_with("\"10.0.2.2\"", "\"10.0.2\""),
            "pools[0].origins[0].address",
        );
    }

    #[test]
    fn origin_address_may_be_ipv6() {
        let c = Config::parse(GOOD6, Path::new("t")).expect("valid");
        let addrs: Vec<String> = c.pools[1]
            .origins
            .iter()
            .map(|o| o.address.to_string())
            .collect();
        assert_eq!(addrs, ["2001:db8:2::2", "fd00:3::2"]);
    }

    #[test]
    fn origin_address_not_link_local_multicast_loopback_or_unspecified() {
        for (bad, why) in [
            ("fe80::2", "link-local"),
            ("ff02::1", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
        ] {
            let e = errors6_with("\"2001:db8:2::2\"", &format!("\"{bad}\""));
            assert_one(&e, "pools[1].origins[0].address");
            assert!(e[0].contains(why), "{bad}: {e:?}");
        }
    }

    #[test]
    fn origin_address_ipv4_mapped_is_written_as_ipv4() {
        let e = errors_with("\"10.0.2.2\"", "\"::ffff:10.0.2.2\"");
        assert_one(&e, "pools[0].origins[0].address");
        assert!(
            e[0].contains("write the IPv4 address, \"10.0.2.2\""),
            "{e:?}"
        );
    }

    #[test]
    fn origin_port_nonzero() {
        assert_one(
            &errors_with("port = 8080", "port = 0"),
            "pools[0].origins[0].port",
        );
    }

    #[test]
    fn origin_weight_between_0_and_1() {
        let e = errors_with("weight = 0.5", "weight = 1.5");
        assert_one(&e, "pools[0].origins[0].weight");
        assert!(e[0].contains("between 0 and 1"), "{e:?}");
    }

    #[test]
    fn origin_weight_not_negative() {
        assert_one(
            &errors_with("weight = 0.5", "weight = -0.1"),
            "pools[0].origins[0].weight",
        );
    }

    #[test]
    fn pool_monitor_must_exist() {
        assert_one(
            &errors_with("name = \"web\"", "name = \"web\"\nmonitor = \"nope\""),
            "pools[0].monitor",
        );
    }

    #[test]
    fn minimum_origins_at_least_one() {
        assert_one(
            &errors_with("name = \"web\"", "name = \"web\"\nminimum_origins = 0"),
            "pools[0].minimum_origins",
        );
    }

    #[test]
    fn minimum_origins_not_above_origin_count() {
        assert_one(
            &errors_with("name = \"web\"", "name = \"web\"\nminimum_origins = 3"),
            "pools[0].minimum_origins",
        );
    }

    #[test]
    fn origin_steering_policy_is_checked() {
        assert_one(
            &pool_with("origin_steering = { policy = \"fastest\" }"),
            "pools[0].origin_steering.policy",
        );
        let e = pool_with("origin_steering = { policy = \"least_outstanding_requests\" }");
        assert_one(&e, "pools[0].origin_steering.policy");
        let many: Vec<String> = (0..33)
            .map(|i| format!("{{ name = \"m{i}\", address = \"10.1.{i}.2\" }}"))
            .collect();
        let text = GOOD.replacen(
            "name = \"web\"\norigins = [",
            &format!("name = \"web\"\norigin_steering = {{ policy = \"least_connections\" }}\norigins = [{},", many.join(", ")),
            1,
        );
        let e = errors_of(&text);
        assert_one(&e, "pools[0].origin_steering.policy");
        assert!(e[0].contains("at most 32"), "{e:?}");
    }
}

//! Fixtures of the config's unit tests: a good config (`GOOD`) and helpers that change one
//! thing in it and return the errors.

use std::path::Path;

use super::{Config, ConfigError};

pub(crate) const GOOD: &str = r#"
[dataplane]
interfaces = ["eth0", "eth1"]
snat_address = "10.0.0.1"
snat_ports = [40000, 40100]
pin_dir = "/sys/fs/bpf/lbtest"

[[pools]]
name = "web"
origins = [
  { name = "a", address = "10.0.2.2", port = 8080, weight = 0.5 },
  { name = "b", address = "10.0.3.2" },
]

[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web"]
"#;

/// An IPv6 load balancer beside GOOD's IPv4 one: an IPv6 VIP, a pool of IPv6 origins, and
/// one SNAT address per family.
pub(crate) const GOOD6: &str = r#"
[dataplane]
interfaces = ["eth0"]
snat_address = ["10.0.0.1", "2001:db8:ff::1"]
pin_dir = "/sys/fs/bpf/lbtest"

[[pools]]
name = "web"
origins = [{ name = "a", address = "10.0.2.2" }]

[[pools]]
name = "web6"
origins = [
  { name = "a6", address = "2001:db8:2::2", port = 8080 },
  { name = "b6", address = "fd00:3::2" },
]

[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web"]

[[load_balancers]]
name = "www6"
address = "2001:db8::10"
port = 443
default_pools = ["web6"]
"#;

/// Replaces `from` (which must occur) in GOOD6 and returns the errors of the result.
pub(crate) fn errors6_with(from: &str, to: &str) -> Vec<String> {
    assert!(GOOD6.contains(from), "fixture lacks {from:?}");
    errors_of(&GOOD6.replacen(from, to, 1))
}

pub(crate) fn errors_of(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("t.toml")) {
        Err(ConfigError::Invalid { errors, .. }) => {
            errors.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
}

/// Replaces `from` (which must occur) in GOOD and returns the errors of the result.
pub(crate) fn errors_with(from: &str, to: &str) -> Vec<String> {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    errors_of(&GOOD.replacen(from, to, 1))
}

pub(crate) fn assert_one(errors: &[String], field: &str) {
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert!(
        errors[0].starts_with(field),
        "error {:?} should name {field}",
        errors[0]
    );
}

/// GOOD with `section` appended (an `[api]` table, say).
pub(crate) fn errors_plus(section: &str) -> Vec<String> {
    errors_of(&format!("{GOOD}\n{section}\n"))
}

pub(crate) const MON: &str = "\n[[monitors]]\nname = \"m\"\ntype = \"tcp\"\n";

pub(crate) fn with_monitor(monitor_body: &str) -> String {
    GOOD.replacen(
        "[[pools]]",
        &format!("[[monitors]]\nname = \"m\"\n{monitor_body}\n[[pools]]"),
        1,
    )
}

pub(crate) fn monitor_errors(monitor_body: &str) -> Vec<String> {
    errors_of(&with_monitor(monitor_body))
}

pub(crate) fn lb_with(extra: &str) -> Vec<String> {
    errors_with(
        "default_pools = [\"web\"]",
        &format!("default_pools = [\"web\"]\n{extra}"),
    )
}

pub(crate) fn pool_with(extra: &str) -> Vec<String> {
    errors_with("name = \"web\"\n", &format!("name = \"web\"\n{extra}\n"))
}

pub(crate) fn agent_with(extra: &str) -> Vec<String> {
    errors_with("[[pools]]", &format!("[agent]\n{extra}\n\n[[pools]]"))
}

pub(crate) fn geo_with(extra: &str) -> Vec<String> {
    errors_of(&format!("{GOOD}\n[geo]\n{extra}\n"))
}

pub(crate) const GEO_GOOD: &str = r#"
[agent]
pop = "AMS"
latitude = 52.37
longitude = 4.9
rtt_smoothing = 0.5

[[pools]]
name = "eu"
latitude = 50.1
longitude = 8.7
origin_steering = { policy = "least_connections" }
origins = [{ name = "e1", address = "10.0.4.2" }]

[[pools]]
name = "us"
origin_steering = { policy = "hash" }
origins = [{ name = "u1", address = "10.0.5.2" }]

[[load_balancers]]
name = "geo"
address = "10.0.0.11"
port = 80
default_pools = ["web", "eu", "us"]
steering_policy = "geo"
region_pools = { WEU = ["eu", "web"], ENAM = ["us"] }
country_pools = { JP = ["us"] }
pop_pools = { LAX = ["us"] }
session_affinity = "ip"
session_affinity_ttl = 600
random_steering = { pool_weights = { eu = 0.2 }, default_weight = 0.5 }

[geo]
prefixes = [
  { prefix = "198.51.100.0/24", country = "DE" },
  { prefix = "203.0.113.0/25", region = "ENAM" },
  { prefix = "203.0.113.128/25", country = "US", region = "WNAM" },
]
"#;

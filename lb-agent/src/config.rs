//! Configuration: the TOML file as written (`RawConfig`, serde) and the validated, typed form
//! the rest of the agent uses (`Config`). Validation is pure and reports every error at once,
//! each naming its field (`pools[1].origins[0].weight: ...`) and the fix.
//!
//! Field names and defaults follow Cloudflare Load Balancing (pools of weighted origins,
//! load balancers with ordered `default_pools`), so its users feel at home.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use lb_common::{MAX_INTERFACES, MAX_ORIGINS, MAX_RINGS, MAX_VIPS};
use serde::Deserialize;

/// Where pinned maps and links live unless the config says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
/// Default SNAT port range: above Linux's default ephemeral range (32768-60999), so SNAT
/// ports never collide with the host's own connections (health probes among them).
pub const DEFAULT_SNAT_PORTS: [u16; 2] = [61000, 65535];
pub const MIN_FLOW_TABLE: u32 = 1024;
/// Above Linux's TIME_WAIT (60 s) with margin, so an origin never sees a port reused while
/// it still remembers the previous connection on it.
pub const DEFAULT_REUSE_AFTER_CLOSE: u32 = 120;
/// One day, as generous as conntrack towards idle connections without keepalives.
pub const DEFAULT_REUSE_AFTER_IDLE: u32 = 86_400;
pub const MAX_FLOW_TABLE: u32 = 1 << 26;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for lb-agent: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} error(s):\n{}", .errors.len(), Errors(.errors))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

struct Errors<'a>(&'a [String]);
impl fmt::Display for Errors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub dataplane: RawDataplane,
    #[serde(default)]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub load_balancers: Vec<RawLoadBalancer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataplane {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    pub pin_dir: Option<PathBuf>,
    pub snat_address: Option<String>,
    pub snat_ports: Option<[u32; 2]>,
    pub flow_table_size: Option<u32>,
    pub snat_port_reuse_after_close: Option<u32>,
    pub snat_port_reuse_after_idle: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub origins: Vec<RawOrigin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    pub port: Option<u32>,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadBalancer {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u32,
    /// Port on the origins when an origin does not name its own; defaults to `port`.
    pub origin_port: Option<u32>,
    #[serde(default)]
    pub default_pools: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

const fn yes() -> bool {
    true
}
const fn one() -> f64 {
    1.0
}

/// How XDP is attached: `native` (in the driver, fastest), `generic` (in the stack, works on
/// any device), `auto` (native where the driver supports it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Native,
    Generic,
    Auto,
}

// ---------------------------------------------------------------------------------------------
// The validated form.

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dataplane: Dataplane,
    pub pools: Vec<Pool>,
    pub load_balancers: Vec<LoadBalancer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataplane {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub snat_address: Ipv4Addr,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub flow_table_size: u32,
    /// Seconds a closed (FIN/RST) flow must be idle before a new flow may take its SNAT port.
    pub snat_port_reuse_after_close: u32,
    /// Seconds any flow must be idle before its SNAT port counts as abandoned.
    pub snat_port_reuse_after_idle: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub origins: Vec<Origin>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub name: String,
    pub address: Ipv4Addr,
    /// `None`: the load balancer's `origin_port` (or its `port`).
    pub port: Option<u16>,
    pub weight: f64,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancer {
    pub name: String,
    pub description: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub origin_port: u16,
    pub default_pools: Vec<String>,
    pub enabled: bool,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        validate(raw).map_err(|errors| ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

fn ipv4(s: &str, field: &str, errors: &mut Vec<String>) -> Option<Ipv4Addr> {
    if s.is_empty() {
        errors.push(format!(
            "{field}: missing; set it to an IPv4 address such as \"10.0.0.10\""
        ));
        return None;
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => Some(a),
        Ok(std::net::IpAddr::V6(_)) => {
            errors.push(format!(
                "{field}: \"{s}\" is IPv6, which this version does not forward yet; use an IPv4 address"
            ));
            None
        }
        Err(_) => {
            errors.push(format!(
                "{field}: \"{s}\" is not an IP address; write it as dotted IPv4, e.g. \"10.0.0.10\""
            ));
            None
        }
    }
}

fn port(p: u32, field: &str, errors: &mut Vec<String>) -> Option<u16> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errors.push(format!("{field}: {p} is not a TCP port; use 1-65535"));
            None
        }
    }
}

fn name_ok(name: &str, field: &str, errors: &mut Vec<String>) {
    if name.is_empty() {
        errors.push(format!("{field}: missing; give it a unique name"));
    }
}

/// Validates a parsed config. Every rule adds to the list; nothing stops at the first error.
pub fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let dp = &raw.dataplane;

    // --- dataplane
    if dp.interfaces.is_empty() {
        errors.push(
            "dataplane.interfaces: empty; list the interfaces to attach XDP to, e.g. [\"eth0\"]"
                .to_owned(),
        );
    }
    let mut seen_if = HashSet::new();
    for (i, name) in dp.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            errors.push(format!(
                "dataplane.interfaces[{i}]: \"{name}\" is not an interface name (1-15 characters, no '/' or spaces)"
            ));
        }
        if !seen_if.insert(name) {
            errors.push(format!(
                "dataplane.interfaces[{i}]: \"{name}\" is listed twice; list each interface once"
            ));
        }
    }
    if dp.interfaces.len() > MAX_INTERFACES as usize {
        errors.push(format!(
            "dataplane.interfaces: {} interfaces; at most {MAX_INTERFACES} are supported",
            dp.interfaces.len()
        ));
    }
    let pin_dir = dp
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    if !pin_dir.is_absolute() {
        errors.push(format!(
            "dataplane.pin_dir: \"{}\" is relative; use an absolute path on a bpffs, e.g. \"{DEFAULT_PIN_DIR}\"",
            pin_dir.display()
        ));
    }
    let snat_address = match &dp.snat_address {
        Some(s) => ipv4(s, "dataplane.snat_address", &mut errors),
        None => {
            errors.push(
                "dataplane.snat_address: missing; set it to an address of this host that origins route back to"
                    .to_owned(),
            );
            None
        }
    };
    let [smin, smax] = dp.snat_ports.unwrap_or(DEFAULT_SNAT_PORTS.map(u32::from));
    let snat_min = port(smin, "dataplane.snat_ports[0]", &mut errors);
    let snat_max = port(smax, "dataplane.snat_ports[1]", &mut errors);
    if let (Some(a), Some(b)) = (snat_min, snat_max) {
        if a > b {
            errors.push(format!(
                "dataplane.snat_ports: [{a}, {b}] is empty; write [first, last] with first <= last"
            ));
        } else if a < 1024 {
            errors.push(format!(
                "dataplane.snat_ports: starts at {a}, inside the well-known ports; start at 1024 or above"
            ));
        }
    }
    let flow_table_size = dp
        .flow_table_size
        .unwrap_or(lb_common::DEFAULT_FLOW_TABLE_SIZE);
    if !(MIN_FLOW_TABLE..=MAX_FLOW_TABLE).contains(&flow_table_size) {
        errors.push(format!(
            "dataplane.flow_table_size: {flow_table_size} is out of range; use {MIN_FLOW_TABLE}-{MAX_FLOW_TABLE}"
        ));
    }

    let reuse_close = dp
        .snat_port_reuse_after_close
        .unwrap_or(DEFAULT_REUSE_AFTER_CLOSE);
    let reuse_idle = dp
        .snat_port_reuse_after_idle
        .unwrap_or(DEFAULT_REUSE_AFTER_IDLE);
    if reuse_idle < reuse_close {
        errors.push(format!(
            "dataplane.snat_port_reuse_after_idle: {reuse_idle} s is shorter than snat_port_reuse_after_close ({reuse_close} s); an open flow must be kept at least as long as a closed one"
        ));
    }

    // --- pools
    let mut pools = Vec::new();
    let mut pool_names = HashMap::new();
    let mut origin_count = 0usize;
    for (pi, p) in raw.pools.iter().enumerate() {
        let f = format!("pools[{pi}]");
        name_ok(&p.name, &format!("{f}.name"), &mut errors);
        if !p.name.is_empty() {
            if let Some(first) = pool_names.insert(p.name.clone(), pi) {
                errors.push(format!(
                    "{f}.name: \"{}\" is already the name of pools[{first}]; pool names must be unique",
                    p.name
                ));
            }
        }
        if p.origins.is_empty() {
            errors.push(format!(
                "{f}.origins: empty; a pool needs at least one origin"
            ));
        }
        let mut origins = Vec::new();
        let mut origin_names = HashSet::new();
        for (oi, o) in p.origins.iter().enumerate() {
            let f = format!("{f}.origins[{oi}]");
            name_ok(&o.name, &format!("{f}.name"), &mut errors);
            if !o.name.is_empty() && !origin_names.insert(o.name.as_str()) {
                errors.push(format!(
                    "{f}.name: \"{}\" appears twice in this pool; origin names must be unique within a pool",
                    o.name
                ));
            }
            let address = ipv4(&o.address, &format!("{f}.address"), &mut errors);
            let port = o
                .port
                .and_then(|p| port(p, &format!("{f}.port"), &mut errors));
            if !(o.weight.is_finite() && (0.0..=1.0).contains(&o.weight)) {
                errors.push(format!(
                    "{f}.weight: {} is out of range; use a number between 0 and 1 (0 drains the origin)",
                    o.weight
                ));
            }
            if let Some(address) = address {
                origins.push(Origin {
                    name: o.name.clone(),
                    address,
                    port,
                    weight: o.weight,
                    enabled: o.enabled,
                });
            }
        }
        origin_count += p.origins.len();
        pools.push(Pool {
            name: p.name.clone(),
            description: p.description.clone(),
            enabled: p.enabled,
            origins,
        });
    }
    if raw.pools.len() > MAX_RINGS as usize {
        errors.push(format!(
            "pools: {} pools; at most {MAX_RINGS} are supported",
            raw.pools.len()
        ));
    }
    if origin_count > MAX_ORIGINS as usize {
        errors.push(format!(
            "pools: {origin_count} origins in all; at most {MAX_ORIGINS} are supported"
        ));
    }

    // --- load balancers
    let mut lbs = Vec::new();
    let mut lb_names = HashMap::new();
    let mut vips: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
    for (li, l) in raw.load_balancers.iter().enumerate() {
        let f = format!("load_balancers[{li}]");
        name_ok(&l.name, &format!("{f}.name"), &mut errors);
        if !l.name.is_empty() {
            if let Some(first) = lb_names.insert(l.name.clone(), li) {
                errors.push(format!(
                    "{f}.name: \"{}\" is already the name of load_balancers[{first}]; names must be unique",
                    l.name
                ));
            }
        }
        let address = ipv4(&l.address, &format!("{f}.address"), &mut errors);
        let vport = port(l.port, &format!("{f}.port"), &mut errors);
        let origin_port = match l.origin_port {
            Some(p) => port(p, &format!("{f}.origin_port"), &mut errors),
            None => vport,
        };
        if let (Some(a), Some(p)) = (address, vport) {
            if let Some(first) = vips.insert((a, p), li) {
                errors.push(format!(
                    "{f}: {a}:{p} is already the VIP of load_balancers[{first}]; each address:port can serve one load balancer"
                ));
            }
            if Some(a) == snat_address {
                errors.push(format!(
                    "{f}.address: {a} is also dataplane.snat_address; use a separate SNAT address"
                ));
            }
        }
        if l.default_pools.is_empty() {
            errors.push(format!(
                "{f}.default_pools: empty; list the pools to send traffic to, in failover order"
            ));
        }
        for (i, name) in l.default_pools.iter().enumerate() {
            if !pool_names.contains_key(name) {
                errors.push(format!(
                    "{f}.default_pools[{i}]: no pool is named \"{name}\"; define it under [[pools]] or fix the name"
                ));
            }
        }
        if let (Some(address), Some(port), Some(origin_port)) = (address, vport, origin_port) {
            lbs.push(LoadBalancer {
                name: l.name.clone(),
                description: l.description.clone(),
                address,
                port,
                origin_port,
                default_pools: l.default_pools.clone(),
                enabled: l.enabled,
            });
        }
    }
    if raw.load_balancers.len() > MAX_VIPS as usize {
        errors.push(format!(
            "load_balancers: {} load balancers; at most {MAX_VIPS} are supported",
            raw.load_balancers.len()
        ));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(snat_address), Some(snat_port_min), Some(snat_port_max)) =
        (snat_address, snat_min, snat_max)
    else {
        unreachable!("every None above pushed an error")
    };
    Ok(Config {
        dataplane: Dataplane {
            interfaces: dp.interfaces.clone(),
            xdp_mode: dp.xdp_mode,
            pin_dir,
            snat_address,
            snat_port_min,
            snat_port_max,
            flow_table_size,
            snat_port_reuse_after_close: reuse_close,
            snat_port_reuse_after_idle: reuse_idle,
        },
        pools,
        load_balancers: lbs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
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

    fn errors_of(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("t.toml")) {
            Err(ConfigError::Invalid { errors, .. }) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    /// Replaces `from` (which must occur) in GOOD and returns the errors of the result.
    fn errors_with(from: &str, to: &str) -> Vec<String> {
        assert!(GOOD.contains(from), "fixture lacks {from:?}");
        errors_of(&GOOD.replacen(from, to, 1))
    }

    fn assert_one(errors: &[String], field: &str) {
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        assert!(
            errors[0].starts_with(field),
            "error {:?} should name {field}",
            errors[0]
        );
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("t.toml")).expect("valid");
        assert_eq!(c.dataplane.snat_port_min, 40000);
        assert_eq!(
            c.dataplane.flow_table_size,
            lb_common::DEFAULT_FLOW_TABLE_SIZE
        );
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Native);
        assert_eq!(c.dataplane.snat_port_reuse_after_close, 120);
        assert_eq!(c.dataplane.snat_port_reuse_after_idle, 86_400);
        let b = &c.pools[0].origins[1];
        assert_eq!((b.weight, b.enabled, b.port), (1.0, true, None));
        assert_eq!(c.load_balancers[0].origin_port, 80);
    }

    #[test]
    fn shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lb.toml");
        let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.pools[0].origins.len(), 3);
    }

    #[test]
    fn unknown_field_is_a_parse_error_naming_it() {
        let text = GOOD.replace("port = 80\n", "port = 80\nprot = 1\n");
        match Config::parse(&text, Path::new("t.toml")) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("prot"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

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
    fn interfaces_required() {
        assert_one(
            &errors_with("interfaces = [\"eth0\", \"eth1\"]", "interfaces = []"),
            "dataplane.interfaces",
        );
    }

    #[test]
    fn interface_listed_twice() {
        assert_one(
            &errors_with("\"eth0\", \"eth1\"", "\"eth0\", \"eth0\""),
            "dataplane.interfaces[1]",
        );
    }

    #[test]
    fn interface_name_too_long() {
        assert_one(
            &errors_with("\"eth1\"", "\"an-interface-name-too-long\""),
            "dataplane.interfaces[1]",
        );
    }

    #[test]
    fn pin_dir_must_be_absolute() {
        assert_one(
            &errors_with("\"/sys/fs/bpf/lbtest\"", "\"lbtest\""),
            "dataplane.pin_dir",
        );
    }

    #[test]
    fn snat_address_required() {
        assert_one(
            &errors_with("snat_address = \"10.0.0.1\"\n", ""),
            "dataplane.snat_address",
        );
    }

    #[test]
    fn snat_address_must_be_ipv4() {
        assert_one(
            &errors_with("\"10.0.0.1\"", "\"fd00::1\""),
            "dataplane.snat_address",
        );
    }

    #[test]
    fn snat_ports_must_be_ordered() {
        assert_one(
            &errors_with("[40000, 40100]", "[40100, 40000]"),
            "dataplane.snat_ports",
        );
    }

    #[test]
    fn snat_ports_must_be_ports() {
        assert_one(
            &errors_with("[40000, 40100]", "[40000, 70000]"),
            "dataplane.snat_ports[1]",
        );
    }

    #[test]
    fn snat_ports_not_well_known() {
        assert_one(
            &errors_with("[40000, 40100]", "[80, 40100]"),
            "dataplane.snat_ports",
        );
    }

    #[test]
    fn flow_table_size_in_range() {
        assert_one(
            &errors_with("pin_dir", "flow_table_size = 10\npin_dir"),
            "dataplane.flow_table_size",
        );
    }

    #[test]
    fn snat_reuse_idle_not_below_close() {
        assert_one(
            &errors_with(
                "pin_dir",
                "snat_port_reuse_after_close = 300\nsnat_port_reuse_after_idle = 60\npin_dir",
            ),
            "dataplane.snat_port_reuse_after_idle",
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
    fn origin_address_ipv6_not_yet() {
        let e = errors_with("\"10.0.2.2\"", "\"fd00::2\"");
        assert_one(&e, "pools[0].origins[0].address");
        assert!(e[0].contains("IPv6"), "{e:?}");
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
    fn vip_is_not_snat_address() {
        assert_one(
            &errors_with("\"10.0.0.10\"", "\"10.0.0.1\""),
            "load_balancers[0].address",
        );
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
    fn xdp_mode_must_be_known() {
        match Config::parse(
            &GOOD.replace("pin_dir", "xdp_mode = \"fast\"\npin_dir"),
            Path::new("t"),
        ) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("xdp_mode"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}

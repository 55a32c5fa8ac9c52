//! Configuration: the TOML file as written (`RawConfig`, serde) and the validated, typed form
//! the rest of the agent uses (`Config`). Validation is pure and reports every error at once,
//! each naming its field (`pools[1].origins[0].weight: ...`) and the fix.
//!
//! Field names and defaults follow Cloudflare Load Balancing (pools of weighted origins,
//! load balancers with ordered `default_pools`), so its users feel at home.
//!
//! # Layout
//! - `raw`: the file as written (serde types).
//! - `types`: the validated form.
//! - `defaults`: every default and limit, once.
//! - `units`: `Weight` and `Seconds`, numbers that carry their own range check.
//! - `validate/`: the driver and one validator per section (dataplane, agent, geo, api,
//!   monitors, pools, load balancers).
//! - `geo_database`: reading the `[geo]` database (the one step that does I/O).
//! - here: loading and parsing (`Config::load`, `parse`, `from_raw`), `ConfigError`, and
//!   `FieldError` (path, problem, fix and `ErrorKind`), the shape of every validation error.
//!
//! Everything is re-exported here, so users name `config::Config`, `config::RawPool`,
//! `config::DEFAULT_PIN_DIR`, whatever module it lives in.

mod defaults;
mod geo_database;
mod raw;
mod types;
mod units;
mod validate;

#[cfg(test)]
mod testing;

use std::{
    fmt,
    path::{Path, PathBuf},
};

pub use defaults::*;
pub use raw::*;
pub use types::*;
pub use units::{Seconds, Weight};
pub use validate::{file_name_errors, validate};

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
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

/// What kind of rule an error breaks; the API derives each error's code from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A value is out of range, malformed, or does not fit the other settings.
    Invalid,
    /// The field names a monitor or pool that is not defined.
    MissingReference,
    /// Two things claim one name, address or listing (a duplicate name or VIP, a VIP that
    /// is also the SNAT address or an origin).
    Conflict,
}

/// One validation error: the field it is about, in the file's naming
/// (`pools[1].origins[0].weight`), the problem, the fix (empty when there is none to say)
/// and the kind of rule broken. It shows as `path: problem; fix`, the line `lb-agent check`
/// prints; the API names the field its own way. A message about no one field (a file
/// conflict) has an empty path and shows as `problem; fix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub problem: String,
    pub fix: String,
    pub kind: ErrorKind,
}

impl FieldError {
    pub fn new(
        kind: ErrorKind,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
            kind,
        }
    }

    /// An `Invalid` message about no one field, its fix (if any) already in `text`.
    pub fn message(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, "", text, "")
    }

    /// The problem and its fix, without the path: `problem; fix`.
    pub fn text(&self) -> String {
        if self.fix.is_empty() {
            self.problem.clone()
        } else {
            format!("{}; {}", self.problem, self.fix)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

/// Compares the line as shown (`path: problem; fix`), as tests write it.
impl PartialEq<&str> for FieldError {
    fn eq(&self, other: &&str) -> bool {
        let rest = if self.path.is_empty() {
            Some(*other)
        } else {
            other
                .strip_prefix(self.path.as_str())
                .and_then(|r| r.strip_prefix(": "))
        };
        let rest = rest.and_then(|r| r.strip_prefix(self.problem.as_str()));
        if self.fix.is_empty() {
            rest == Some("")
        } else {
            rest.and_then(|r| r.strip_prefix("; ")) == Some(self.fix.as_str())
        }
    }
}

struct Errors<'a>(&'a [FieldError]);
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

impl RawConfig {
    /// Reads and parses a config file, without validating it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text, without validating it; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
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
        Self::from_raw(RawConfig::parse(text, path)?, path, None)
    }

    /// Validates `raw` and reads its geo database, unless `loaded` already holds the same
    /// database's prefixes (an API change does not re-read a file that did not change).
    /// Settings that depend on the host are resolved here: `snat_ports`, when unset, is
    /// narrowed if a SNAT address is one of this host's own (`Dataplane::resolve_snat_ports`).
    pub fn from_raw(
        raw: RawConfig,
        path: &Path,
        loaded: Option<&Geo>,
    ) -> Result<Self, ConfigError> {
        let invalid = |errors| ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        };
        let mut cfg = validate(raw).map_err(invalid)?;
        cfg.geo
            .load_database(path, loaded)
            .map_err(|e| invalid(vec![e]))?;
        // If the host's addresses cannot be read, assume the SNAT address is one of them:
        // the narrow range is the safe one.
        let local: Vec<std::net::IpAddr> = crate::netwatch::local_addrs().map_or_else(
            |_| cfg.dataplane.all_snat_addresses().take(1).collect(),
            |set| set.iter().map(lb_common::ip_of).collect(),
        );
        cfg.dataplane.resolve_snat_ports(&local);
        Ok(cfg)
    }

    /// Whether a load balancer's VIP or an origin is IPv6: the host then needs IPv6
    /// forwarding (`dataplane::check_host`).
    pub fn uses_ipv6(&self) -> bool {
        self.load_balancers.iter().any(|l| l.address.is_ipv6())
            || self
                .pools
                .iter()
                .any(|p| p.origins.iter().any(|o| o.address.is_ipv6()))
    }

    /// The pool named `name` (by the name index; a search if the index does not match).
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.names
            .pools
            .get(name)
            .and_then(|i| self.pools.get(*i))
            .filter(|p| p.name == name)
            .or_else(|| self.pools.iter().find(|p| p.name == name))
    }

    /// The load balancers that may use pool `name` (`LoadBalancer::all_pools`), in config
    /// order.
    pub fn users_of(&self, name: &str) -> impl Iterator<Item = &LoadBalancer> {
        self.names
            .pool_users
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|i| self.load_balancers.get(*i))
    }

    pub fn monitor(&self, name: &str) -> Option<&Monitor> {
        self.names
            .monitors
            .get(name)
            .and_then(|i| self.monitors.get(*i))
            .filter(|m| m.name == name)
            .or_else(|| self.monitors.iter().find(|m| m.name == name))
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, ConfigError, XdpMode};
    use crate::config::testing::*;
    use std::path::Path;

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
        assert!(c.dataplane.answer_ping, "pings are answered by default");
        assert!(!c.dataplane.route_other, "no open router by default");
        let b = &c.pools[0].origins[1];
        assert_eq!((b.weight.get(), b.enabled, b.port), (1.0, true, None));
        assert_eq!(c.load_balancers[0].origin_port, 80);
    }

    #[test]
    fn shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lb.toml");
        let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.pools[0].origins.len(), 3);
    }

    #[test]
    fn every_shipped_example_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("examples/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "lb.toml and udp.toml at least");
        let udp = Config::load(&dir.join("udp.toml")).expect("udp.toml");
        let protos: Vec<&str> = udp
            .load_balancers
            .iter()
            .map(|l| l.protocol.as_str())
            .collect();
        assert_eq!(protos, ["udp", "tcp", "udp"]);
        assert_eq!(udp.dataplane.udp_budget, 16384);
        let v6 = Config::load(&dir.join("ipv6.toml")).expect("ipv6.toml");
        assert!(v6.load_balancers[0].address.is_ipv6() && v6.uses_ipv6());
        assert_eq!(v6.dataplane.snat6.map(|s| s.count), Some(4));
        assert_eq!(v6.dataplane.snat_count, 1);
        let api6 = v6
            .load_balancers
            .iter()
            .find(|l| l.name == "api6")
            .expect("the NAT64 example");
        assert!(api6.address.is_ipv6(), "NAT64: an IPv6 VIP");
        let pool = v6.pools.iter().find(|p| p.name == "web4").expect("web4");
        assert!(
            pool.origins.iter().all(|o| o.address.is_ipv4()),
            "of IPv4 origins"
        );
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
}

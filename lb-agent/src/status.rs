//! The status model, declared once: what the agent writes to its status file, what
//! `GET /lb-agent/v1/status` serves, what `lbctl status` deserializes and whose field names
//! the dashboard reads. Built from the reconciler's `Plan` (the decisions) and the health
//! table (the measurements); the API adds the traffic figures.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    health::{HealthTable, OriginHealth, State},
    plan::Plan,
    steering::{self, Choice},
    store::Store,
};

/// The health of one origin as the status shows it.
/// `address:port` for display, with an IPv6 address in brackets (`[2001:db8::1]:443`, RFC
/// 3986), for addresses kept as text in the status and stats shapes.
pub fn join_host_port(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginState {
    Up,
    Down,
    /// Its pool has no monitor: counts as up.
    Unmonitored,
    /// Monitored, no verdict yet (counts as down). Also any state this build does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl OriginState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Unknown => "unknown",
            Self::Unmonitored => "unmonitored",
        }
    }
}

impl From<State> for OriginState {
    fn from(s: State) -> Self {
        match s {
            State::Up => Self::Up,
            State::Down => Self::Down,
            State::Unknown => Self::Unknown,
        }
    }
}

impl std::fmt::Display for OriginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Totals and per-second rates of one VIP or origin (the API fills them from its traffic
/// sampler; absent from the status file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rates {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub open_flows: i64,
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
    pub new_flows_per_sec: f64,
}

/// The agent's status: every load balancer, pool and origin. Fields missing from the input
/// (an older agent) take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Unix seconds.
    pub updated: u64,
    /// This host's PoP, if configured.
    pub pop: Option<String>,
    pub load_balancers: Vec<LbStatus>,
    pub pools: Vec<PoolStatus>,
    pub origins: Vec<OriginStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LbStatus {
    /// The store's id; `None` for a load balancer it does not hold.
    pub id: Option<String>,
    pub name: String,
    /// `address:port`.
    pub vip: String,
    /// `tcp` or `udp` (a status file of an agent before UDP has none: tcp).
    pub protocol: String,
    /// `steering_policy` as configured ("off", "geo", ...).
    pub steering_policy: String,
    pub active_pool: Option<String>,
    pub active_pool_id: Option<String>,
    /// Every default pool is down: traffic goes to the fallback pool.
    pub fallback: bool,
    pub enabled: bool,
    #[serde(flatten)]
    pub traffic: Option<Rates>,
}

impl Default for LbStatus {
    fn default() -> Self {
        Self {
            id: None,
            name: String::new(),
            vip: String::new(),
            protocol: crate::config::DEFAULT_PROTOCOL.to_owned(),
            steering_policy: String::new(),
            active_pool: None,
            active_pool_id: None,
            fallback: false,
            enabled: true,
            traffic: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolStatus {
    pub id: Option<String>,
    pub name: String,
    pub healthy: bool,
    pub healthy_origins: usize,
    pub enabled_origins: usize,
    pub minimum_origins: u32,
    /// Mean of the healthy origins' RTT averages.
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OriginStatus {
    pub pool: String,
    pub pool_id: Option<String>,
    pub origin: String,
    pub address: String,
    pub port: u16,
    pub state: OriginState,
    pub enabled: bool,
    pub weight: f64,
    /// The last probe's result; `None` before the first.
    pub last_ok: Option<bool>,
    pub reason: String,
    pub rtt_ms: Option<f64>,
    /// Unix seconds of the last state change.
    pub since: Option<u64>,
    #[serde(flatten)]
    pub traffic: Option<Rates>,
}

impl Default for OriginStatus {
    fn default() -> Self {
        Self {
            pool: String::new(),
            pool_id: None,
            origin: String::new(),
            address: String::new(),
            port: 0,
            state: OriginState::Unknown,
            enabled: true,
            weight: 1.0,
            last_ok: None,
            reason: String::new(),
            rtt_ms: None,
            since: None,
            traffic: None,
        }
    }
}

impl OriginStatus {
    /// Whether the status says the origin takes new connections: enabled, and up or without
    /// a monitor (weight is shown on its own).
    pub fn takes_new_connections(&self) -> bool {
        self.enabled && matches!(self.state, OriginState::Up | OriginState::Unmonitored)
    }
}

impl Status {
    /// The status of `plan` (decisions: pool health, the pools in use) with the health
    /// table's facts (each origin's state, last result and RTT; each pool's mean RTT).
    /// Ids are left empty: see `with_ids`.
    pub fn collect(cfg: &Config, plan: &Plan, health: &HealthTable) -> Self {
        let origins = plan
            .origins
            .iter()
            .map(|o| {
                let h: Option<&OriginHealth> = o.target.as_ref().and_then(|t| health.get(t));
                OriginStatus {
                    pool: o.pool.clone(),
                    pool_id: None,
                    origin: o.origin.clone(),
                    address: o.address.to_string(),
                    port: o.port,
                    state: match (&o.target, h) {
                        (None, _) => OriginState::Unmonitored,
                        (Some(_), Some(h)) => h.state.into(),
                        (Some(_), None) => OriginState::Unknown,
                    },
                    enabled: o.enabled,
                    weight: o.weight,
                    last_ok: h.and_then(|h| h.last_ok),
                    reason: h.map_or_else(String::new, |h| h.reason.clone()),
                    rtt_ms: h.and_then(|h| h.rtt_ms),
                    since: h.map(|h| h.since),
                    traffic: None,
                }
            })
            .collect();
        let pools = plan
            .pools
            .iter()
            .map(|p| PoolStatus {
                id: None,
                name: p.name.clone(),
                healthy: p.health.healthy,
                healthy_origins: p.health.healthy_origins,
                enabled_origins: p.health.enabled_origins,
                minimum_origins: p.health.minimum_origins,
                // A measurement that moves with every probe, not a decision: read now.
                rtt_ms: cfg
                    .pool(&p.name)
                    .and_then(|pool| steering::pool_rtt(cfg, health, pool, p.ring_port)),
            })
            .collect();
        let load_balancers = plan
            .load_balancers
            .iter()
            .map(|lb| LbStatus {
                id: None,
                name: lb.name.clone(),
                vip: lb.vip.clone(),
                protocol: lb.protocol.as_str().to_owned(),
                steering_policy: lb.steering_policy.as_str().to_owned(),
                active_pool: lb.choice.as_ref().map(|(p, _)| p.clone()),
                active_pool_id: None,
                fallback: matches!(lb.choice, Some((_, Choice::Fallback))),
                enabled: cfg
                    .load_balancers
                    .iter()
                    .find(|x| x.name == lb.name)
                    .is_some_and(|x| x.enabled),
                traffic: None,
            })
            .collect();
        Self {
            updated: std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            pop: cfg.agent.pop.clone(),
            origins,
            pools,
            load_balancers,
        }
    }

    /// Names every object by its id in `store` as well.
    #[must_use]
    pub fn with_ids(mut self, store: &Store) -> Self {
        let id = |i: Option<&str>| i.map(str::to_owned);
        for l in &mut self.load_balancers {
            l.id = id(store.load_balancer_id(&l.name));
            l.active_pool_id = id(l.active_pool.as_deref().and_then(|p| store.pool_id(p)));
        }
        for p in &mut self.pools {
            p.id = id(store.pool_id(&p.name));
        }
        for o in &mut self.origins {
            o.pool_id = id(store.pool_id(&o.pool));
        }
        self
    }

    /// Writes atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:<26} {:<16} {:<12}",
            "load balancer", "vip", "steering", "active pool"
        )?;
        for l in &self.load_balancers {
            writeln!(
                f,
                "{:<16} {:<26} {:<16} {:<12} {}",
                l.name,
                format!("{} {}", l.protocol, l.vip),
                l.steering_policy,
                l.active_pool.as_deref().unwrap_or("-"),
                if l.fallback {
                    "(fallback: every default pool is down)"
                } else {
                    ""
                }
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<16} {:<8} {:>8} {:>8} {:>9}",
            "pool", "state", "healthy", "minimum", "rtt"
        )?;
        for p in &self.pools {
            writeln!(
                f,
                "{:<16} {:<8} {:>4}/{:<3} {:>8} {:>9}",
                p.name,
                if p.healthy { "healthy" } else { "down" },
                p.healthy_origins,
                p.enabled_origins,
                p.minimum_origins,
                p.rtt_ms.map_or_else(|| "-".into(), |r| format!("{r:.2}ms"))
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:<22} {:<12} {:>9}  last result",
            "origin", "address", "state", "rtt"
        )?;
        for o in &self.origins {
            writeln!(
                f,
                "{:<24} {:<22} {:<12} {:>9}  {}",
                format!("{}/{}", o.pool, o.origin),
                join_host_port(&o.address, o.port),
                if o.enabled {
                    o.state.to_string()
                } else {
                    format!("{} (disabled)", o.state)
                },
                o.rtt_ms.map_or_else(|| "-".into(), |r| format!("{r:.2}ms")),
                o.reason
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn ipv6_addresses_are_shown_in_brackets_with_their_port() {
        assert_eq!(join_host_port("2001:db8::1", 443), "[2001:db8::1]:443");
        assert_eq!(join_host_port("[2001:db8::1]", 443), "[2001:db8::1]:443");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
        let cfg = Config::parse(
            "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"2001:db8:ff::1\"\n\n[[pools]]\nname = \"p\"\norigins = [{ name = \"o\", address = \"2001:db8:2::2\", port = 8080 }]\n\n[[load_balancers]]\nname = \"www6\"\naddress = \"2001:db8::10\"\nport = 443\ndefault_pools = [\"p\"]\n",
            std::path::Path::new("t"),
        )
        .expect("valid");
        let health = HealthTable::default();
        let plan = crate::plan::plan(&cfg, &health, &[]);
        let status = Status::collect(&cfg, &plan, &health);
        assert_eq!(status.load_balancers[0].vip, "[2001:db8::10]:443");
        let text = status.to_string();
        assert!(text.contains("[2001:db8:2::2]:8080"), "{text}");
        assert!(text.contains("[2001:db8::10]:443"), "{text}");
    }

    #[test]
    fn origin_states_are_the_lower_case_words_and_unknown_words_read_as_unknown() {
        for s in [
            OriginState::Up,
            OriginState::Down,
            OriginState::Unmonitored,
            OriginState::Unknown,
        ] {
            assert_eq!(json!(s), json!(s.as_str()));
            assert_eq!(
                serde_json::from_value::<OriginState>(json!(s)).ok(),
                Some(s)
            );
        }
        assert_eq!(
            serde_json::from_value::<OriginState>(json!("draining")).ok(),
            Some(OriginState::Unknown)
        );
    }

    /// The API's field names (API.md, the dashboard and `lbctl` read them): traffic fields
    /// flattened into each load balancer and origin.
    #[test]
    fn the_served_shape_has_the_documented_fields() {
        let s = Status {
            updated: 7,
            pop: Some("AMS".into()),
            load_balancers: vec![LbStatus {
                traffic: Some(Rates::default()),
                ..LbStatus::default()
            }],
            pools: vec![PoolStatus::default()],
            origins: vec![OriginStatus {
                traffic: Some(Rates::default()),
                ..OriginStatus::default()
            }],
        };
        let v = json!(s);
        let traffic = [
            "bytes",
            "bytes_per_sec",
            "new_flows",
            "new_flows_per_sec",
            "open_flows",
            "packets",
            "packets_per_sec",
        ];
        let with = |mut k: Vec<&'static str>| {
            k.extend(traffic);
            k.sort_unstable();
            k
        };
        assert_eq!(
            keys(&v),
            ["load_balancers", "origins", "pools", "pop", "updated"]
        );
        assert_eq!(
            keys(&v["load_balancers"][0]),
            with(vec![
                "active_pool",
                "active_pool_id",
                "enabled",
                "fallback",
                "id",
                "name",
                "protocol",
                "steering_policy",
                "vip"
            ])
        );
        assert_eq!(
            keys(&v["pools"][0]),
            [
                "enabled_origins",
                "healthy",
                "healthy_origins",
                "id",
                "minimum_origins",
                "name",
                "rtt_ms"
            ]
        );
        assert_eq!(
            keys(&v["origins"][0]),
            with(vec![
                "address", "enabled", "last_ok", "origin", "pool", "pool_id", "port", "reason",
                "rtt_ms", "since", "state", "weight"
            ])
        );
        let back: Status = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, s);
        // The status file has no traffic, and reads back without it.
        let file = Status {
            load_balancers: vec![LbStatus::default()],
            ..Status::default()
        };
        let v = json!(file);
        assert!(v["load_balancers"][0].get("packets").is_none(), "{v}");
    }
}

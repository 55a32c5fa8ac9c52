//! Steering, pure: which origins are usable, which pools are healthy, which pool each load
//! balancer sends new connections to, and what every ring holds. Cloudflare's semantics:
//!
//! - an origin of a monitored pool is healthy only once its monitor says so (unknown = down);
//!   an origin of a pool without a monitor counts as healthy;
//! - a disabled origin, or one with weight 0, gets no new connections (established ones
//!   continue: the flow table pins them);
//! - a pool is healthy while it is enabled and at least `minimum_origins` of its enabled
//!   origins are healthy;
//! - `steering_policy = "off"`: the first healthy pool of `default_pools`; when none is
//!   healthy, `fallback_pool`, whatever its health.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use crate::{
    config::{Config, LoadBalancer, Origin, Pool},
    health::{HealthTable, Target},
};

/// The health target of `origin` when `pool` is used with default origin port `ring_port`;
/// `None` when the pool has no monitor.
pub fn target(cfg: &Config, pool: &Pool, origin: &Origin, ring_port: u16) -> Option<Target> {
    let m = cfg.monitor(pool.monitor.as_deref()?)?;
    let port = if m.port != 0 {
        m.port
    } else {
        origin.port.unwrap_or(ring_port)
    };
    Some(Target {
        pool: pool.name.clone(),
        origin: origin.name.clone(),
        address: origin.address,
        port,
    })
}

pub fn origin_healthy(
    cfg: &Config,
    health: &HealthTable,
    pool: &Pool,
    origin: &Origin,
    ring_port: u16,
) -> bool {
    match target(cfg, pool, origin, ring_port) {
        None => true,
        Some(t) => health.get(&t).is_some_and(|h| h.state.healthy()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolHealth {
    pub healthy: bool,
    /// Enabled origins that are healthy.
    pub healthy_origins: usize,
    pub enabled_origins: usize,
    pub minimum_origins: u32,
}

pub fn pool_health(cfg: &Config, health: &HealthTable, pool: &Pool, ring_port: u16) -> PoolHealth {
    let enabled: Vec<&Origin> = pool.origins.iter().filter(|o| o.enabled).collect();
    let healthy_origins = enabled
        .iter()
        .filter(|o| origin_healthy(cfg, health, pool, o, ring_port))
        .count();
    PoolHealth {
        healthy: pool.enabled && healthy_origins >= pool.minimum_origins as usize,
        healthy_origins,
        enabled_origins: enabled.len(),
        minimum_origins: pool.minimum_origins,
    }
}

/// Why a load balancer uses the pool it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The first healthy pool of `default_pools` (index given).
    Healthy { index: usize },
    /// No default pool is healthy: the fallback pool, whatever its health.
    Fallback,
}

/// The pool new connections of `lb` go to, and why.
pub fn choose_pool<'a>(
    cfg: &'a Config,
    health: &HealthTable,
    lb: &LoadBalancer,
) -> Option<(&'a Pool, Choice)> {
    for (index, name) in lb.default_pools.iter().enumerate() {
        let Some(pool) = cfg.pool(name) else { continue };
        if pool_health(cfg, health, pool, lb.origin_port).healthy {
            return Some((pool, Choice::Healthy { index }));
        }
    }
    cfg.pool(&lb.fallback_pool).map(|p| (p, Choice::Fallback))
}

/// An origin as a ring member: one pool member with its effective port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub pool: String,
    pub name: String,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// The members of a pool's ring with their Maglev weights: the enabled, healthy origins with
/// weight > 0. When none is healthy (a fallback pool used regardless of health), the enabled
/// origins with weight > 0, so that traffic still has somewhere to go.
pub fn ring_members(
    cfg: &Config,
    health: &HealthTable,
    pool: &Pool,
    ring_port: u16,
) -> Vec<(Member, f64)> {
    let member = |o: &Origin| Member {
        pool: pool.name.clone(),
        name: o.name.clone(),
        addr: o.address,
        port: o.port.unwrap_or(ring_port),
    };
    let candidates: Vec<&Origin> = pool
        .origins
        .iter()
        .filter(|o| o.enabled && o.weight > 0.0)
        .collect();
    let healthy: Vec<&&Origin> = candidates
        .iter()
        .filter(|o| origin_healthy(cfg, health, pool, o, ring_port))
        .collect();
    let chosen: Vec<&Origin> = if healthy.is_empty() {
        candidates
    } else {
        healthy.into_iter().copied().collect()
    };
    // Every origin of the pool is listed (weight 0 when not chosen) so that ids stay stable
    // while origins come and go.
    pool.origins
        .iter()
        .map(|o| {
            let w = if chosen.iter().any(|c| std::ptr::eq(*c, o)) {
                o.weight
            } else {
                0.0
            };
            (member(o), w)
        })
        .collect()
}

/// Every health target the config asks for, with its monitor's hysteresis thresholds.
/// Enabled origins of monitored pools; the port comes from the monitor, else the origin,
/// else each load balancer that uses the pool.
pub fn targets(cfg: &Config) -> BTreeMap<Target, String> {
    let mut out = BTreeMap::new();
    for pool in &cfg.pools {
        let Some(mname) = pool.monitor.as_deref() else {
            continue;
        };
        let mut ring_ports: Vec<u16> = cfg
            .load_balancers
            .iter()
            .filter(|l| {
                l.enabled && (l.default_pools.contains(&pool.name) || l.fallback_pool == pool.name)
            })
            .map(|l| l.origin_port)
            .collect();
        ring_ports.sort_unstable();
        ring_ports.dedup();
        for o in pool.origins.iter().filter(|o| o.enabled) {
            for port in &ring_ports {
                if let Some(t) = target(cfg, pool, o, *port) {
                    out.insert(t, mname.to_owned());
                }
            }
            if ring_ports.is_empty() {
                if let Some(t) = o.port.and_then(|p| target(cfg, pool, o, p)) {
                    out.insert(t, mname.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::health::{Outcome, State};

    const CFG: &str = r#"
[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"

[[monitors]]
name = "tcp"
type = "tcp"

[[pools]]
name = "a"
monitor = "tcp"
minimum_origins = 2
origins = [
  { name = "a1", address = "10.1.0.1" },
  { name = "a2", address = "10.1.0.2" },
  { name = "a3", address = "10.1.0.3", enabled = false },
]

[[pools]]
name = "b"
monitor = "tcp"
origins = [{ name = "b1", address = "10.2.0.1" }, { name = "b2", address = "10.2.0.2", weight = 0.0 }]

[[pools]]
name = "fb"
monitor = "tcp"
origins = [{ name = "f1", address = "10.3.0.1" }]

[[pools]]
name = "plain"
origins = [{ name = "p1", address = "10.4.0.1" }]

[[load_balancers]]
name = "x"
address = "10.0.0.10"
port = 80
default_pools = ["a", "b"]
fallback_pool = "fb"
"#;

    fn cfg() -> Config {
        Config::parse(CFG, Path::new("t")).expect("valid")
    }

    fn set(h: &mut HealthTable, c: &Config, pool: &str, origin: &str, up: bool) {
        let p = c.pool(pool).expect("pool");
        let o = p.origins.iter().find(|o| o.name == origin).expect("origin");
        let t = target(c, p, o, 80).expect("monitored");
        h.record(
            &t,
            &Outcome {
                ok: up,
                reason: String::new(),
                rtt: Some(Duration::from_millis(1)),
            },
        );
    }

    fn table(c: &Config) -> HealthTable {
        let mut h = HealthTable::default();
        h.retain(&targets(c).into_keys().map(|t| (t, (1, 1))).collect());
        h
    }

    fn chosen(c: &Config, h: &HealthTable) -> (String, Choice) {
        let (p, why) = choose_pool(c, h, &c.load_balancers[0]).expect("a pool");
        (p.name.clone(), why)
    }

    #[test]
    fn unknown_origins_count_as_down() {
        let c = cfg();
        let h = table(&c);
        let a = c.pool("a").expect("a");
        assert_eq!(pool_health(&c, &h, a, 80).healthy_origins, 0);
        assert_eq!(chosen(&c, &h), ("fb".into(), Choice::Fallback));
    }

    #[test]
    fn first_healthy_default_pool_wins() {
        let c = cfg();
        let mut h = table(&c);
        for (p, o) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            set(&mut h, &c, p, o, true);
        }
        assert_eq!(chosen(&c, &h), ("a".into(), Choice::Healthy { index: 0 }));
    }

    #[test]
    fn pool_below_minimum_origins_is_down_and_the_next_pool_takes_over() {
        let c = cfg();
        let mut h = table(&c);
        set(&mut h, &c, "a", "a1", true);
        set(&mut h, &c, "a", "a2", false);
        set(&mut h, &c, "b", "b1", true);
        let a = c.pool("a").expect("a");
        let ph = pool_health(&c, &h, a, 80);
        assert_eq!(
            (ph.healthy, ph.healthy_origins, ph.enabled_origins),
            (false, 1, 2)
        );
        assert_eq!(chosen(&c, &h), ("b".into(), Choice::Healthy { index: 1 }));
    }

    #[test]
    fn everything_down_goes_to_fallback_regardless_of_its_health() {
        let c = cfg();
        let mut h = table(&c);
        set(&mut h, &c, "fb", "f1", false);
        assert_eq!(chosen(&c, &h), ("fb".into(), Choice::Fallback));
        // The fallback ring still has its (down) origin: traffic has somewhere to go.
        let fb = c.pool("fb").expect("fb");
        assert!(ring_members(&c, &h, fb, 80).iter().any(|(_, w)| *w > 0.0));
    }

    #[test]
    fn disabled_pool_is_skipped() {
        let text = CFG.replacen("name = \"a\"\n", "name = \"a\"\nenabled = false\n", 1);
        let c = Config::parse(&text, Path::new("t")).expect("valid");
        let mut h = table(&c);
        for (p, o) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            set(&mut h, &c, p, o, true);
        }
        assert_eq!(chosen(&c, &h).0, "b");
    }

    #[test]
    fn pool_without_monitor_uses_its_enabled_origins() {
        let c = cfg();
        let h = table(&c);
        let p = c.pool("plain").expect("plain");
        assert!(pool_health(&c, &h, p, 80).healthy);
        assert_eq!(ring_members(&c, &h, p, 80)[0].1, 1.0);
    }

    #[test]
    fn ring_holds_only_healthy_enabled_weighted_origins() {
        let c = cfg();
        let mut h = table(&c);
        set(&mut h, &c, "a", "a1", true);
        set(&mut h, &c, "a", "a2", false);
        let a = c.pool("a").expect("a");
        let m: Vec<(String, f64)> = ring_members(&c, &h, a, 80)
            .into_iter()
            .map(|(m, w)| (m.name, w))
            .collect();
        assert_eq!(
            m,
            vec![("a1".into(), 1.0), ("a2".into(), 0.0), ("a3".into(), 0.0)]
        );
        let b = c.pool("b").expect("b");
        set(&mut h, &c, "b", "b1", true);
        set(&mut h, &c, "b", "b2", true);
        let m: Vec<f64> = ring_members(&c, &h, b, 80)
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(m, vec![1.0, 0.0], "weight 0 drains even when healthy");
    }

    #[test]
    fn targets_cover_enabled_origins_of_monitored_pools_on_the_right_port() {
        let c = cfg();
        let t = targets(&c);
        let names: Vec<&str> = t.keys().map(|t| t.origin.as_str()).collect();
        assert_eq!(
            names,
            vec!["a1", "a2", "b1", "b2", "f1"],
            "a3 is disabled, plain has no monitor"
        );
        assert!(t.keys().all(|t| t.port == 80));
        let text = CFG.replacen("type = \"tcp\"", "type = \"tcp\"\nport = 2048", 1);
        let c = Config::parse(&text, Path::new("t")).expect("valid");
        assert!(
            targets(&c).keys().all(|t| t.port == 2048),
            "monitor port overrides"
        );
        let _ = State::Up;
    }
}

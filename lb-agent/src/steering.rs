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
//! - the other policies only change the order the pools are tried in (`pool_order`):
//!   `dynamic_latency` by probe RTT, `proximity` by distance from this host, `geo` by this
//!   host's PoP list or, per client location, the country or region list (`geo_choice`);
//!   `random` spreads new connections over all healthy pools by weight (`random_pools`).
//!   Unhealthy pools are skipped in every list, and the fallback rule holds for all.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    config::{Config, LoadBalancer, Origin, Pool, SteeringPolicy},
    geo::Region,
    health::{target, HealthTable},
};

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
    /// The first healthy pool of the policy's order (`pool_order`; index given).
    Healthy { index: usize },
    /// No pool of the order is healthy: the fallback pool, whatever its health.
    Fallback,
}

/// Mean of the RTT averages of a pool's healthy origins, in milliseconds: what
/// `dynamic_latency` compares. `None` until a healthy origin has been measured.
pub fn pool_rtt(cfg: &Config, health: &HealthTable, pool: &Pool, ring_port: u16) -> Option<f64> {
    let rtts: Vec<f64> = pool
        .origins
        .iter()
        .filter(|o| o.enabled)
        .filter_map(|o| target(cfg, pool, o, ring_port))
        .filter_map(|t| health.get(&t))
        .filter(|h| h.state.healthy())
        .filter_map(|h| h.rtt_ms)
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "few origins")]
    let n = rtts.len() as f64;
    (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / n)
}

/// `dynamic_latency`: pools with an RTT, fastest first, then those without data in their
/// configured order (ties keep the configured order too).
pub fn latency_order(pools: &[String], rtt: impl Fn(&str) -> Option<f64>) -> Vec<&String> {
    let mut known: Vec<(f64, &String)> = pools
        .iter()
        .filter_map(|p| rtt(p).map(|r| (r, p)))
        .collect();
    known.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<&String> = known.into_iter().map(|(_, p)| p).collect();
    out.extend(pools.iter().filter(|p| rtt(p).is_none()));
    out
}

/// Great-circle distance in kilometres (haversine, mean Earth radius 6371 km) between two
/// (latitude, longitude) points in degrees.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// `proximity`: pools with coordinates, nearest to `host` first, then those without
/// coordinates in their configured order.
pub fn proximity_order(
    pools: &[String],
    host: (f64, f64),
    position: impl Fn(&str) -> Option<(f64, f64)>,
) -> Vec<&String> {
    let mut known: Vec<(f64, &String)> = pools
        .iter()
        .filter_map(|p| position(p).map(|pos| (distance_km(host, pos), p)))
        .collect();
    known.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<&String> = known.into_iter().map(|(_, p)| p).collect();
    out.extend(pools.iter().filter(|p| position(p).is_none()));
    out
}

/// The order in which `lb` tries its pools (for every client, before any per-client geo
/// list): `default_pools` reordered by the policy, or this PoP's `pop_pools` list under `geo`.
pub fn pool_order<'a>(
    cfg: &'a Config,
    health: &HealthTable,
    lb: &'a LoadBalancer,
) -> Vec<&'a String> {
    match lb.steering_policy {
        SteeringPolicy::Off | SteeringPolicy::Random => lb.default_pools.iter().collect(),
        SteeringPolicy::DynamicLatency => latency_order(&lb.default_pools, |name| {
            cfg.pool(name)
                .and_then(|p| pool_rtt(cfg, health, p, lb.origin_port))
        }),
        SteeringPolicy::Proximity => match cfg.agent.position {
            Some(host) => proximity_order(&lb.default_pools, host, |name| {
                cfg.pool(name).and_then(|p| p.position)
            }),
            None => lb.default_pools.iter().collect(),
        },
        SteeringPolicy::Geo => match pop_list(cfg, lb) {
            Some(list) => list.iter().collect(),
            None => lb.default_pools.iter().collect(),
        },
    }
}

/// Under `geo`, the `pop_pools` list of this host's PoP, which applies to every client.
pub fn pop_list<'a>(cfg: &Config, lb: &'a LoadBalancer) -> Option<&'a Vec<String>> {
    lb.pop_pools.get(cfg.agent.pop.as_deref()?)
}

/// The first healthy pool of `order`, else the fallback pool whatever its health.
pub fn first_healthy<'a>(
    cfg: &'a Config,
    health: &HealthTable,
    lb: &LoadBalancer,
    order: &[&String],
) -> Option<(&'a Pool, Choice)> {
    for (index, name) in order.iter().enumerate() {
        let Some(pool) = cfg.pool(name) else { continue };
        if pool_health(cfg, health, pool, lb.origin_port).healthy {
            return Some((pool, Choice::Healthy { index }));
        }
    }
    cfg.pool(&lb.fallback_pool).map(|p| (p, Choice::Fallback))
}

/// The pool new connections of `lb` go to (clients without a geo list of their own), and why.
pub fn choose_pool<'a>(
    cfg: &'a Config,
    health: &HealthTable,
    lb: &'a LoadBalancer,
) -> Option<(&'a Pool, Choice)> {
    first_healthy(cfg, health, lb, &pool_order(cfg, health, lb))
}

/// Under `geo`, the list for clients of a location: the country's list, else the region's
/// (Cloudflare's precedence: PoP, then country, then region). `None`: no list for them.
pub fn geo_list(
    lb: &LoadBalancer,
    country: Option<[u8; 2]>,
    region: Option<Region>,
) -> Option<&Vec<String>> {
    country
        .and_then(|c| lb.country_pools.get(&c))
        .or_else(|| region.and_then(|r| lb.region_pools.get(&r)))
}

/// Under `geo`, the pool for clients whose location has `list`: its first healthy pool, else
/// `otherwise`, what every other client gets (`choose_pool`: default pools, then the
/// fallback; passed in, so that it is decided once per load balancer).
pub fn geo_choice<'a>(
    cfg: &'a Config,
    health: &HealthTable,
    lb: &LoadBalancer,
    list: &[String],
    otherwise: Option<&'a Pool>,
) -> Option<&'a Pool> {
    list.iter()
        .filter_map(|n| cfg.pool(n))
        .find(|p| pool_health(cfg, health, p, lb.origin_port).healthy)
        .or(otherwise)
}

/// Under `random`, the healthy default pools with a positive weight, with their weights
/// (`random_steering.pool_weights`, else `default_weight`). Empty: use `choose_pool`.
pub fn random_pools<'a>(
    cfg: &'a Config,
    health: &HealthTable,
    lb: &LoadBalancer,
) -> Vec<(&'a Pool, f64)> {
    lb.default_pools
        .iter()
        .filter_map(|n| cfg.pool(n))
        .filter(|p| pool_health(cfg, health, p, lb.origin_port).healthy)
        .map(|p| {
            let w = lb
                .pool_weights
                .get(&p.name)
                .copied()
                .unwrap_or(lb.default_weight)
                .get();
            (p, w)
        })
        .filter(|(_, w)| *w > 0.0)
        .collect()
}

/// An origin as a ring member: one pool member with its effective port, in the ring of
/// `ring_port` (a pool used with two origin ports has two rings, and an origin id per ring).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub pool: String,
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub ring_port: u16,
}

/// Whether the config lets `origin` take new connections at all: enabled, with a positive
/// weight. A disabled or weight-0 origin is drained: it stays in its rings with weight 0
/// (no new flows; established ones keep going) so its id stays stable. This is the one
/// place that rule is decided; the plan's ring weights carry it to the maps.
pub fn takes_new_connections(origin: &Origin) -> bool {
    origin.enabled && origin.weight.get() > 0.0
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
        ring_port,
    };
    let candidates: Vec<&Origin> = pool
        .origins
        .iter()
        .filter(|o| takes_new_connections(o))
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
                o.weight.get()
            } else {
                0.0
            };
            (member(o), w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::health::{targets, Outcome, State};

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

    fn names(v: &[&String]) -> Vec<String> {
        v.iter().map(|s| (*s).clone()).collect()
    }

    #[test]
    fn latency_order_fastest_first_then_unmeasured_in_config_order() {
        let pools: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let rtt = |p: &str| match p {
            "b" => Some(30.0),
            "c" => Some(10.0),
            _ => None,
        };
        assert_eq!(names(&latency_order(&pools, rtt)), ["c", "b", "a", "d"]);
        // Equal RTTs keep the configured order.
        assert_eq!(
            names(&latency_order(&pools, |_| Some(5.0))),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn distance_is_great_circle() {
        // Amsterdam - New York, about 5860 km.
        let d = distance_km((52.37, 4.90), (40.71, -74.01));
        assert!((5800.0..5920.0).contains(&d), "{d}");
        assert!(distance_km((1.0, 2.0), (1.0, 2.0)).abs() < 1e-9);
        // Across the antimeridian: Tokyo - San Francisco, about 8280 km.
        let d = distance_km((35.68, 139.69), (37.77, -122.42));
        assert!((8200.0..8350.0).contains(&d), "{d}");
    }

    #[test]
    fn proximity_order_nearest_first_then_pools_without_coordinates() {
        let pools: Vec<String> = ["far", "none", "near", "mid"].map(String::from).to_vec();
        let host = (52.37, 4.90); // Amsterdam
        let pos = |p: &str| match p {
            "far" => Some((35.68, 139.69)), // Tokyo
            "near" => Some((50.11, 8.68)),  // Frankfurt
            "mid" => Some((40.71, -74.01)), // New York
            _ => None,
        };
        assert_eq!(
            names(&proximity_order(&pools, host, pos)),
            ["near", "mid", "far", "none"]
        );
    }

    fn policy_cfg(lb_extra: &str, agent: &str) -> Config {
        let text = CFG
            .replacen("[[monitors]]", &format!("{agent}\n[[monitors]]"), 1)
            .replacen(
                "fallback_pool = \"fb\"",
                &format!("fallback_pool = \"fb\"\n{lb_extra}"),
                1,
            )
            + "\n[geo]\nprefixes = [{ prefix = \"10.9.0.0/16\", country = \"DE\" }]\n";
        Config::parse(&text, Path::new("t")).expect("valid")
    }

    fn all_up(c: &Config) -> HealthTable {
        let mut h = table(c);
        for (p, o) in [
            ("a", "a1"),
            ("a", "a2"),
            ("b", "b1"),
            ("b", "b2"),
            ("fb", "f1"),
        ] {
            set(&mut h, c, p, o, true);
        }
        h
    }

    #[test]
    fn dynamic_latency_picks_the_fastest_healthy_pool() {
        let c = policy_cfg("steering_policy = \"dynamic_latency\"", "");
        let mut h = table(&c);
        let rtt = |h: &mut HealthTable, p: &str, o: &str, ms: u64| {
            let pool = c.pool(p).expect("pool");
            let org = pool.origins.iter().find(|x| x.name == o).expect("origin");
            h.record(
                &target(&c, pool, org, 80).expect("monitored"),
                &Outcome {
                    ok: true,
                    reason: String::new(),
                    rtt: Some(Duration::from_millis(ms)),
                },
            );
        };
        // Without data: failover order.
        for (p, o) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            set(&mut h, &c, p, o, true);
        }
        let mut h2 = h.clone();
        // a's origins measured at 1 ms by `set`; b at 1 ms too: ties keep the order.
        assert_eq!(chosen(&c, &h2).0, "a");
        for _ in 0..20 {
            rtt(&mut h2, "a", "a1", 50);
            rtt(&mut h2, "a", "a2", 50);
            rtt(&mut h2, "b", "b1", 5);
        }
        assert_eq!(chosen(&c, &h2), ("b".into(), Choice::Healthy { index: 0 }));
        // The fastest pool goes down: the next fastest healthy one.
        set(&mut h2, &c, "b", "b1", false);
        assert_eq!(chosen(&c, &h2).0, "a");
        let _ = &mut h;
    }

    #[test]
    fn proximity_skips_unhealthy_pools() {
        let c = Config::parse(
            &CFG.replacen(
                "[[monitors]]",
                "[agent]\nlatitude = 52.37\nlongitude = 4.9\n\n[[monitors]]",
                1,
            )
            .replacen(
                "name = \"a\"\n",
                "name = \"a\"\nlatitude = 35.68\nlongitude = 139.69\n",
                1,
            )
            .replacen(
                "name = \"b\"\n",
                "name = \"b\"\nlatitude = 50.11\nlongitude = 8.68\n",
                1,
            )
            .replacen(
                "fallback_pool = \"fb\"",
                "fallback_pool = \"fb\"\nsteering_policy = \"proximity\"",
                1,
            ),
            Path::new("t"),
        )
        .expect("valid");
        let mut h = all_up(&c);
        assert_eq!(
            chosen(&c, &h),
            ("b".into(), Choice::Healthy { index: 0 }),
            "b is nearer"
        );
        set(&mut h, &c, "b", "b1", false);
        set(&mut h, &c, "b", "b2", false);
        assert_eq!(chosen(&c, &h), ("a".into(), Choice::Healthy { index: 1 }));
        set(&mut h, &c, "a", "a1", false);
        assert_eq!(chosen(&c, &h), ("fb".into(), Choice::Fallback));
    }

    #[test]
    fn geo_lists_country_over_region_and_skip_unhealthy_pools() {
        let c = policy_cfg(
            "steering_policy = \"geo\"\nregion_pools = { WEU = [\"b\", \"a\"] }\ncountry_pools = { FR = [\"fb\"] }",
            "",
        );
        let lb = &c.load_balancers[0];
        let weu = Region::parse("WEU");
        let de = geo_list(lb, Some(*b"DE"), weu).expect("region list");
        assert_eq!(de, &vec!["b".to_owned(), "a".to_owned()]);
        assert_eq!(
            geo_list(lb, Some(*b"FR"), weu).expect("country list"),
            &vec!["fb".to_owned()]
        );
        assert_eq!(geo_list(lb, Some(*b"JP"), Region::parse("NEAS")), None);
        let mut h = all_up(&c);
        assert_eq!(
            geo_choice(&c, &h, lb, de, choose_pool(&c, &h, lb).map(|(p, _)| p))
                .expect("pool")
                .name,
            "b"
        );
        set(&mut h, &c, "b", "b1", false);
        set(&mut h, &c, "b", "b2", false);
        assert_eq!(
            geo_choice(&c, &h, lb, de, choose_pool(&c, &h, lb).map(|(p, _)| p))
                .expect("pool")
                .name,
            "a",
            "next in the region's list"
        );
        set(&mut h, &c, "a", "a1", false);
        // The whole list is down: what everyone else gets (default pools are down: fallback).
        assert_eq!(
            geo_choice(&c, &h, lb, de, choose_pool(&c, &h, lb).map(|(p, _)| p))
                .expect("pool")
                .name,
            "fb"
        );
    }

    #[test]
    fn geo_pop_list_applies_to_every_client() {
        let c = policy_cfg(
            "steering_policy = \"geo\"\npop_pools = { AMS = [\"b\"] }",
            "[agent]\npop = \"AMS\"\n",
        );
        let h = all_up(&c);
        assert_eq!(chosen(&c, &h).0, "b");
        let other = policy_cfg(
            "steering_policy = \"geo\"\npop_pools = { LAX = [\"b\"] }",
            "[agent]\npop = \"AMS\"\n",
        );
        assert_eq!(
            chosen(&other, &all_up(&other)).0,
            "a",
            "another PoP's list does not apply"
        );
    }

    #[test]
    fn random_spreads_over_healthy_weighted_default_pools() {
        let c = policy_cfg(
            "steering_policy = \"random\"\nrandom_steering = { pool_weights = { a = 0.2 }, default_weight = 0.6 }",
            "",
        );
        let lb = &c.load_balancers[0];
        let mut h = all_up(&c);
        let got: Vec<(String, f64)> = random_pools(&c, &h, lb)
            .into_iter()
            .map(|(p, w)| (p.name.clone(), w))
            .collect();
        assert_eq!(got, vec![("a".into(), 0.2), ("b".into(), 0.6)]);
        set(&mut h, &c, "a", "a1", false);
        let got: Vec<String> = random_pools(&c, &h, lb)
            .into_iter()
            .map(|(p, _)| p.name.clone())
            .collect();
        assert_eq!(got, vec!["b"], "unhealthy pools are skipped");
    }
}

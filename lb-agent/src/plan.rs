//! The plan: one pure function turns the config, the health table and this host's facts
//! into everything the agent decides, once per change. The reconciler writes it to the
//! maps; the log, the status (and with it the API, `/metrics` and webhooks) and the traffic
//! counters read it. Nothing else asks `steering` the same questions again.
//!
//! Per load balancer: the pool order, the chosen pool and why. Per ring: its members and
//! their Maglev weights (0 = drained: `steering::takes_new_connections` is the one rule),
//! and how it picks among them. Per VIP: its ring, affinity, and the geo and random pool
//! tables. Per pool and origin: what the status shows (health at the pool's status port).

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::{
    v4_mapped, GeoValue, Settings, VipKey, IPPROTO_TCP, SETTINGS_F_ANSWER_PING, SETTINGS_F_READY,
    SETTINGS_F_ROUTE_OTHER, VIP_F_AFFINITY, VIP_F_GEO, VIP_F_RANDOM,
};

use crate::{
    config::{Config, LoadBalancer, OriginSteering, SteeringPolicy},
    geo::Region,
    health::{HealthTable, Target},
    steering::{self, Choice, Member, PoolHealth},
};

/// An origin as the data path knows it: one pool member with its effective port.
pub type OriginKey = Member;

/// A ring: a pool's members with one default origin port. `pool` empty = the empty ring
/// (used by a load balancer with no usable pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingKey {
    pub pool: String,
    pub port: u16,
}

/// Everything decided for one config under one health table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The data path's settings; `nh_gen` is 0 here (the reconciler owns it).
    pub settings: Settings,
    pub rings: BTreeMap<RingKey, RingPlan>,
    /// Enabled load balancers.
    pub vips: Vec<VipPlan>,
    /// Every load balancer, in config order.
    pub load_balancers: Vec<LbPlan>,
    /// Every pool, in config order.
    pub pools: Vec<PoolPlan>,
    /// Every origin of every pool, in config order.
    pub origins: Vec<OriginPlan>,
}

/// One ring: every origin of the pool with its Maglev weight (0 = drained: no new flows),
/// and how the ring picks among them.
#[derive(Debug, Clone, PartialEq)]
pub struct RingPlan {
    pub members: Vec<(OriginKey, f64)>,
    pub steering: OriginSteering,
    /// Slots of the ring (`lb_common::ring_size` of the pool's origins in the config, so
    /// that health and enabling change weights, never the size).
    pub size: u32,
}

/// One VIP: its own ring and how new flows may be sent elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct VipPlan {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub key: VipKey,
    /// The ring for clients nothing else applies to (the load balancer's chosen pool).
    pub ring: RingKey,
    /// Every ring the load balancer may use (default pools, fallback, geo lists), each once,
    /// in `LoadBalancer::all_pools` order.
    pub rings: Vec<RingKey>,
    /// `VIP_F_*`.
    pub flags: u32,
    pub affinity_ttl: u32,
    /// `geo`: client location (`GeoValue::geo_id`) -> ring, where it differs from `ring`.
    pub geo: BTreeMap<u32, RingKey>,
    /// `random`: the rings new connections spread over, with weights.
    pub pool_sel: Vec<(RingKey, f64)>,
}

/// One load balancer's pool decision, for the log and the status.
#[derive(Debug, Clone, PartialEq)]
pub struct LbPlan {
    pub name: String,
    /// `address:port`.
    pub vip: String,
    pub enabled: bool,
    pub steering_policy: SteeringPolicy,
    /// The order its pools are tried in (`steering::pool_order`).
    pub order: Vec<String>,
    /// The pool new connections go to and why (`None`: disabled, or no pool at all).
    pub choice: Option<(String, Choice)>,
    /// `choice` in words, for the log.
    pub reason: String,
}

/// A pool's health as the status shows it: at the origin port of the first load balancer
/// that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    pub name: String,
    pub ring_port: u16,
    pub health: PoolHealth,
}

/// An origin as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginPlan {
    pub pool: String,
    pub origin: String,
    pub address: Ipv4Addr,
    /// The port its health is checked on (the monitor's), else the one it serves on.
    pub port: u16,
    /// Its health target; `None` when its pool has no monitor.
    pub target: Option<Target>,
    pub enabled: bool,
    pub weight: f64,
}

pub fn vip_key(addr: Ipv4Addr, port: u16) -> VipKey {
    VipKey {
        addr: v4_mapped(addr.octets()),
        port: port.to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

fn ring_key(lb: &LoadBalancer, pool: &str) -> RingKey {
    RingKey {
        pool: pool.to_owned(),
        port: lb.origin_port,
    }
}

fn settings(cfg: &Config) -> Settings {
    let dp = &cfg.dataplane;
    Settings {
        snat_addr: v4_mapped(dp.snat_address.octets()),
        snat_count: dp.snat_count,
        _pad: 0,
        snat_port_min: dp.snat_port_min,
        snat_port_max: dp.snat_port_max,
        flags: SETTINGS_F_READY
            | if dp.answer_ping {
                SETTINGS_F_ANSWER_PING
            } else {
                0
            }
            | if dp.route_other {
                SETTINGS_F_ROUTE_OTHER
            } else {
                0
            },
        reuse_closed_secs: dp.snat_port_reuse_after_close,
        established_secs: dp.snat_port_reuse_after_idle,
        syn_secs: dp.syn_timeout,
        half_closed_secs: dp.half_closed_timeout,
        syn_budget: dp.syn_budget,
        // The reconciler's own counter (Reconciler::next_hops_changed); not config.
        nh_gen: 0,
    }
}

/// The plan for `cfg` under `health`. `locations` is this host's fact that the config does
/// not hold: the distinct client locations of the geo trie (`reconcile::geo_locations`).
/// Every pool an enabled load balancer may use (default pools, fallback, geo lists) has a
/// ring, kept current, so failing over is one write of a VIP's ring id (or of a geo plan
/// entry).
pub fn plan(cfg: &Config, health: &HealthTable, locations: &[GeoValue]) -> Plan {
    let mut rings = BTreeMap::new();
    let mut vips = Vec::new();
    let mut load_balancers = Vec::new();
    for lb in &cfg.load_balancers {
        let order: Vec<&String> = steering::pool_order(cfg, health, lb);
        let choice = lb
            .enabled
            .then(|| steering::first_healthy(cfg, health, lb, &order))
            .flatten();
        load_balancers.push(LbPlan {
            name: lb.name.clone(),
            vip: format!("{}:{}", lb.address, lb.port),
            enabled: lb.enabled,
            steering_policy: lb.steering_policy,
            order: order.iter().map(|s| (*s).clone()).collect(),
            choice: choice.as_ref().map(|(p, c)| (p.name.clone(), c.clone())),
            reason: choice
                .as_ref()
                .map(|(_, c)| choice_reason(cfg, health, lb, &order, c))
                .unwrap_or_default(),
        });
        if !lb.enabled {
            continue;
        }
        let mut own_rings = Vec::new();
        for name in lb.all_pools() {
            if let Some(pool) = cfg.pool(name) {
                let key = ring_key(lb, &pool.name);
                if !own_rings.contains(&key) {
                    own_rings.push(key.clone());
                }
                rings.entry(key).or_insert_with(|| RingPlan {
                    members: steering::ring_members(cfg, health, pool, lb.origin_port),
                    steering: pool.origin_steering,
                    size: lb_common::ring_size(pool.origins.len()),
                });
            }
        }
        let chosen = choice.as_ref().map(|(p, _)| *p);
        let ring = match chosen {
            Some(pool) => ring_key(lb, &pool.name),
            None => {
                let key = RingKey {
                    pool: String::new(),
                    port: 0,
                };
                rings.entry(key.clone()).or_insert_with(|| RingPlan {
                    members: Vec::new(),
                    steering: OriginSteering::Random,
                    size: lb_common::ring_size(0),
                });
                key
            }
        };
        let mut flags = 0;
        let mut geo = BTreeMap::new();
        let mut pool_sel = Vec::new();
        match lb.steering_policy {
            SteeringPolicy::Geo if steering::pop_list(cfg, lb).is_none() => {
                for loc in locations {
                    let country = (loc.country != [0, 0]).then_some(loc.country);
                    let region = Region::from_index(loc.region);
                    let Some(list) = steering::geo_list(lb, country, region) else {
                        continue;
                    };
                    if let Some(pool) = steering::geo_choice(cfg, health, lb, list, chosen) {
                        let r = ring_key(lb, &pool.name);
                        if r != ring {
                            geo.insert(loc.geo_id, r);
                        }
                    }
                }
                if !lb.country_pools.is_empty() || !lb.region_pools.is_empty() {
                    flags |= VIP_F_GEO;
                }
            }
            SteeringPolicy::Random => {
                pool_sel = steering::random_pools(cfg, health, lb)
                    .into_iter()
                    .map(|(p, w)| (ring_key(lb, &p.name), w))
                    .collect();
                flags |= VIP_F_RANDOM;
            }
            _ => {}
        }
        if lb.affinity_ttl.is_some() {
            flags |= VIP_F_AFFINITY;
        }
        vips.push(VipPlan {
            name: lb.name.clone(),
            address: lb.address,
            port: lb.port,
            key: vip_key(lb.address, lb.port),
            ring,
            rings: own_rings,
            flags,
            affinity_ttl: lb.affinity_ttl.unwrap_or(0),
            geo,
            pool_sel,
        });
    }
    let (pools, origins) = pools_and_origins(cfg, health);
    Plan {
        settings: settings(cfg),
        rings,
        vips,
        load_balancers,
        pools,
        origins,
    }
}

/// The status side of the plan: each pool judged at the origin port of the first load
/// balancer that uses it (else the origin's own port, else 0), and its origins.
fn pools_and_origins(cfg: &Config, health: &HealthTable) -> (Vec<PoolPlan>, Vec<OriginPlan>) {
    let mut pools = Vec::new();
    let mut origins = Vec::new();
    for pool in &cfg.pools {
        let lb_port = cfg.users_of(&pool.name).next().map(|l| l.origin_port);
        let port_of = |o: &crate::config::Origin| {
            lb_port.map_or(o.port.unwrap_or(0), |p| o.port.unwrap_or(p))
        };
        for o in &pool.origins {
            let ring_port = port_of(o);
            let target = crate::health::target(cfg, pool, o, ring_port);
            origins.push(OriginPlan {
                pool: pool.name.clone(),
                origin: o.name.clone(),
                address: o.address,
                port: target.as_ref().map_or(ring_port, |t| t.port),
                target,
                enabled: o.enabled,
                weight: o.weight.get(),
            });
        }
        let ring_port = pool.origins.first().map_or(0, port_of);
        pools.push(PoolPlan {
            name: pool.name.clone(),
            ring_port,
            health: steering::pool_health(cfg, health, pool, ring_port),
        });
    }
    (pools, origins)
}

/// Why `lb` uses the pool `choice` describes, in words for the log.
fn choice_reason(
    cfg: &Config,
    health: &HealthTable,
    lb: &LoadBalancer,
    order: &[&String],
    choice: &Choice,
) -> String {
    let list = |n: usize| {
        order[..n]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let basis = match lb.steering_policy {
        SteeringPolicy::Off | SteeringPolicy::Random => "default_pools order".to_owned(),
        SteeringPolicy::DynamicLatency => {
            let rtts: Vec<String> = order
                .iter()
                .map(|n| {
                    let rtt = cfg
                        .pool(n)
                        .and_then(|p| steering::pool_rtt(cfg, health, p, lb.origin_port));
                    rtt.map_or_else(|| format!("{n} (no RTT yet)"), |r| format!("{n} {r:.2} ms"))
                })
                .collect();
            format!("fastest first: {}", rtts.join(", "))
        }
        SteeringPolicy::Proximity => "nearest first".to_owned(),
        SteeringPolicy::Geo => match steering::pop_list(cfg, lb) {
            Some(_) => format!(
                "pop_pools of this PoP ({})",
                cfg.agent.pop.as_deref().unwrap_or("-")
            ),
            None => "default_pools order, for clients without a country or region list".to_owned(),
        },
    };
    match choice {
        Choice::Healthy { index: 0 } => format!("first healthy pool by {basis}"),
        Choice::Healthy { index } => format!("{} down; by {basis}", list(*index)),
        Choice::Fallback => format!(
            "every pool of the order is down ({basis}): fallback pool, regardless of its health"
        ),
    }
}

impl Plan {
    /// The pool each enabled load balancer sends new connections to, by name.
    pub fn chosen(&self) -> impl Iterator<Item = (&LbPlan, &str)> {
        self.load_balancers
            .iter()
            .filter_map(|l| l.choice.as_ref().map(|(p, _)| (l, p.as_str())))
    }
}

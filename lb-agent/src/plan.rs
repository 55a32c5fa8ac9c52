//! The plan: one pure function turns the config, the health table and this host's facts
//! into everything the agent decides, once per change. The reconciler writes it to the
//! maps; the log, the status (and with it the API, `/metrics` and webhooks) and the traffic
//! counters read it. Nothing else asks `steering` the same questions again.
//!
//! Per load balancer: the pool order, the chosen pool and why. Per ring: its members and
//! their Maglev weights (0 = drained: `steering::takes_new_connections` is the one rule),
//! and how it picks among them. Per VIP: its ring, affinity, and the geo and random pool
//! tables. Per pool and origin: what the status shows (health at the pool's status port).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{
    addr16, GeoValue, Settings, VipKey, IPPROTO_TCP, SETTINGS_F_ANSWER_PING, SETTINGS_F_READY,
    SETTINGS_F_ROUTE_OTHER, VIP_F_AFFINITY, VIP_F_GEO, VIP_F_RANDOM,
};

use crate::{
    config::{Config, Geo, LoadBalancer, OriginSteering, Pool, Protocol, SteeringPolicy},
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
///
/// The entries are shared (`Arc`): the agent publishes the plan to the API while the
/// reconciler patches its own copy, and a copy then costs a few thousand reference counts
/// rather than every string of 10,000 origins again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The data path's settings; `nh_gen` is 0 here (the reconciler owns it).
    pub settings: Settings,
    pub rings: BTreeMap<RingKey, Arc<RingPlan>>,
    /// Enabled load balancers.
    pub vips: Vec<Arc<VipPlan>>,
    /// Every load balancer, in config order.
    pub load_balancers: Vec<Arc<LbPlan>>,
    /// Every pool, in config order.
    pub pools: Vec<PoolPlan>,
    /// Every origin of every pool, in config order.
    pub origins: Vec<Arc<OriginPlan>>,
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
    pub address: IpAddr,
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
    /// `tcp` or `udp`.
    pub protocol: Protocol,
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
    pub address: IpAddr,
    /// The port its health is checked on (the monitor's), else the one it serves on.
    pub port: u16,
    /// Its health target; `None` when its pool has no monitor.
    pub target: Option<Target>,
    pub enabled: bool,
    pub weight: f64,
}

/// `tcp` or `udp` for an IP protocol number of a `VipKey` (the data path knows no other).
pub fn protocol_name(proto: u8) -> &'static str {
    if proto == lb_common::IPPROTO_UDP {
        Protocol::Udp.as_str()
    } else {
        Protocol::Tcp.as_str()
    }
}

/// The `VIPS` key of a TCP VIP.
pub fn vip_key(addr: impl Into<IpAddr>, port: u16) -> VipKey {
    vip_key_of(addr, port, IPPROTO_TCP)
}

/// The `VIPS` key of a VIP of IP protocol `proto` (`Protocol::ip_proto`).
pub fn vip_key_of(addr: impl Into<IpAddr>, port: u16, proto: u8) -> VipKey {
    VipKey {
        addr: addr16(addr.into()),
        port: port.to_be(),
        proto,
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
        snat_addr: addr16(dp.snat_address.into()),
        snat_count: dp.snat_count,
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
        udp_secs: dp.udp_timeout,
        udp_unreplied_secs: dp.udp_unreplied_timeout,
        udp_budget: dp.udp_budget,
        // The reconciler's own counter (Reconciler::next_hops_changed); not config.
        nh_gen: 0,
        snat_addr6: dp.snat6.map_or([0; 16], |s| s.address.octets()),
        snat_count6: dp.snat6.map_or(0, |s| s.count),
        _pad6: [0; 3],
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
        let (lb_plan, vip) = lb_plan(cfg, health, locations, lb);
        load_balancers.push(Arc::new(lb_plan));
        let Some(vip) = vip else { continue };
        for key in vip.rings.iter().chain(std::iter::once(&vip.ring)) {
            if !rings.contains_key(key) {
                rings.insert(key.clone(), Arc::new(ring_plan(cfg, health, key)));
            }
        }
        vips.push(Arc::new(vip));
    }
    let mut pools = Vec::new();
    let mut origins = Vec::new();
    for pool in &cfg.pools {
        let (p, o) = pool_status(cfg, health, pool);
        pools.push(p);
        origins.extend(o.into_iter().map(Arc::new));
    }
    Plan {
        settings: settings(cfg),
        rings,
        vips,
        load_balancers,
        pools,
        origins,
    }
}

/// The ring `key` (a pool used at one origin port; the empty ring when `key.pool` is
/// empty): the pool's members under `health`, its origin steering and its size.
fn ring_plan(cfg: &Config, health: &HealthTable, key: &RingKey) -> RingPlan {
    match cfg.pool(&key.pool) {
        Some(pool) => RingPlan {
            members: steering::ring_members(cfg, health, pool, key.port),
            steering: pool.origin_steering,
            size: lb_common::ring_size(pool.origins.len()),
        },
        None => RingPlan {
            members: Vec::new(),
            steering: OriginSteering::Random,
            size: lb_common::ring_size(0),
        },
    }
}

/// One load balancer's decision, and for an enabled one its VIP: its ring (the empty ring
/// when it has no pool at all) and every ring it may use.
fn lb_plan(
    cfg: &Config,
    health: &HealthTable,
    locations: &[GeoValue],
    lb: &LoadBalancer,
) -> (LbPlan, Option<VipPlan>) {
    let order: Vec<&String> = steering::pool_order(cfg, health, lb);
    let choice = lb
        .enabled
        .then(|| steering::first_healthy(cfg, health, lb, &order))
        .flatten();
    let lb_plan = LbPlan {
        name: lb.name.clone(),
        vip: std::net::SocketAddr::new(lb.address, lb.port).to_string(),
        protocol: lb.protocol,
        enabled: lb.enabled,
        steering_policy: lb.steering_policy,
        order: order.iter().map(|s| (*s).clone()).collect(),
        choice: choice.as_ref().map(|(p, c)| (p.name.clone(), c.clone())),
        reason: choice
            .as_ref()
            .map(|(_, c)| choice_reason(cfg, health, lb, &order, c))
            .unwrap_or_default(),
    };
    if !lb.enabled {
        return (lb_plan, None);
    }
    let mut own_rings = Vec::new();
    for name in lb.all_pools() {
        if let Some(pool) = cfg.pool(name) {
            let key = ring_key(lb, &pool.name);
            if !own_rings.contains(&key) {
                own_rings.push(key);
            }
        }
    }
    let chosen = choice.as_ref().map(|(p, _)| *p);
    let ring = match chosen {
        Some(pool) => ring_key(lb, &pool.name),
        None => RingKey {
            pool: String::new(),
            port: 0,
        },
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
    let vip = VipPlan {
        name: lb.name.clone(),
        address: lb.address,
        port: lb.port,
        key: vip_key_of(lb.address, lb.port, lb.protocol.ip_proto()),
        ring,
        rings: own_rings,
        flags,
        affinity_ttl: lb.affinity_ttl.unwrap_or(0),
        geo,
        pool_sel,
    };
    (lb_plan, Some(vip))
}

/// The status side of one pool: judged at the origin port of the first load balancer that
/// uses it (else the origin's own port, else 0), and its origins.
fn pool_status(cfg: &Config, health: &HealthTable, pool: &Pool) -> (PoolPlan, Vec<OriginPlan>) {
    let lb_port = cfg.users_of(&pool.name).next().map(|l| l.origin_port);
    let port_of =
        |o: &crate::config::Origin| lb_port.map_or(o.port.unwrap_or(0), |p| o.port.unwrap_or(p));
    let origins = pool
        .origins
        .iter()
        .map(|o| {
            let ring_port = port_of(o);
            let target = crate::health::target(cfg, pool, o, ring_port);
            OriginPlan {
                pool: pool.name.clone(),
                origin: o.name.clone(),
                address: o.address,
                port: target.as_ref().map_or(ring_port, |t| t.port),
                target,
                enabled: o.enabled,
                weight: o.weight.get(),
            }
        })
        .collect();
    let ring_port = pool.origins.first().map_or(0, port_of);
    let p = PoolPlan {
        name: pool.name.clone(),
        ring_port,
        health: steering::pool_health(cfg, health, pool, ring_port),
    };
    (p, origins)
}

/// What must be planned again: pools and load balancers, by index in the config. A pool's
/// entries are its rings (at every port), its status and its origins'; a load balancer's
/// are its decision and its VIP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub pools: BTreeSet<usize>,
    pub load_balancers: BTreeSet<usize>,
}

impl Dirty {
    /// Pool `pool` changed (its config or an origin's health): it and every load balancer
    /// that may use it.
    pub fn pool(&mut self, cfg: &Config, pool: usize) {
        self.pools.insert(pool);
        if let Some(p) = cfg.pools.get(pool) {
            self.load_balancers
                .extend(cfg.names.pool_users.get(&p.name).into_iter().flatten());
        }
    }

    /// An RTT average of pool `pool` changed: only `dynamic_latency` reads those.
    pub fn pool_rtt(&mut self, cfg: &Config, pool: usize) {
        if let Some(p) = cfg.pools.get(pool) {
            let users = cfg.names.pool_users.get(&p.name).into_iter().flatten();
            self.load_balancers.extend(users.filter(|i| {
                cfg.load_balancers
                    .get(**i)
                    .is_some_and(|l| l.steering_policy == SteeringPolicy::DynamicLatency)
            }));
        }
    }
}

/// Adds to `dirty` what differs between `old` and `new`, if a plan of `old` can be patched
/// into one of `new` (`patch`): only pools' and load balancers' settings changed, not who
/// is what. Returns false when the whole plan must be made again: another section changed
/// (the plan's settings, monitors, PoP, position, geo data), pools or load balancers were
/// added, removed, renamed or reordered, a pool's origins were added, removed or
/// re-addressed (ring members and ids), or a load balancer changed its VIP (address, port or
/// protocol: another `VIPS` key, so the old entry goes and a new one is written), origin
/// port, enabled state or the pools it may use (its rings, and which pools' status port it
/// sets).
pub fn config_dirty(old: &Config, new: &Config, dirty: &mut Dirty) -> bool {
    let same_sections = old.dataplane == new.dataplane
        && old.agent == new.agent
        && old.monitors == new.monitors
        && old.api == new.api
        && same_geo(&old.geo, &new.geo)
        && old.pools.len() == new.pools.len()
        && old.load_balancers.len() == new.load_balancers.len();
    if !same_sections {
        return false;
    }
    for (i, (a, b)) in old.pools.iter().zip(&new.pools).enumerate() {
        if a == b {
            continue;
        }
        let same_members = a.name == b.name
            && a.origins.len() == b.origins.len()
            && a.origins
                .iter()
                .zip(&b.origins)
                .all(|(x, y)| x.name == y.name && x.address == y.address && x.port == y.port);
        if !same_members {
            return false;
        }
        dirty.pool(new, i);
    }
    for (i, (a, b)) in old
        .load_balancers
        .iter()
        .zip(&new.load_balancers)
        .enumerate()
    {
        if a == b {
            continue;
        }
        let same_vip = a.name == b.name
            && a.address == b.address
            && a.port == b.port
            && a.protocol == b.protocol
            && a.origin_port == b.origin_port
            && a.enabled == b.enabled
            && a.all_pools().eq(b.all_pools());
        if !same_vip {
            return false;
        }
        dirty.load_balancers.insert(i);
    }
    true
}

/// Equal geo data; the database's prefixes compared by identity (they are loaded once per
/// config load and shared, and a full database has ~400k of them), or both empty (a config
/// without a database has its own empty list).
pub fn same_geo(a: &Geo, b: &Geo) -> bool {
    a.database == b.database
        && a.prefixes == b.prefixes
        && (std::sync::Arc::ptr_eq(&a.database_prefixes, &b.database_prefixes)
            || a.database_prefixes.is_empty() && b.database_prefixes.is_empty())
}

/// The entries of a plan made again for what is `Dirty` (`patch`), with their places in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    pub rings: Vec<(RingKey, RingPlan)>,
    pub load_balancers: Vec<PatchedLb>,
    pub pools: Vec<PatchedPool>,
}

/// A load balancer's entries: `Plan::load_balancers[index]` and, when it is enabled,
/// `Plan::vips[vip.0]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchedLb {
    pub index: usize,
    pub plan: LbPlan,
    pub vip: Option<(usize, VipPlan)>,
}

/// A pool's entries: `Plan::pools[index]`, and its origins from `Plan::origins[first_origin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchedPool {
    pub index: usize,
    pub plan: PoolPlan,
    pub first_origin: usize,
    pub origins: Vec<OriginPlan>,
}

/// The entries of `plan(cfg, health, locations)` that may differ from `prev` (a plan of the
/// same config, or of one `config_dirty` compared with it) for what is `dirty`; the rest of
/// `prev` stands. `None` when the patch would change which rings or VIPs exist (a load
/// balancer that now has no pool at all): then the whole plan must be made.
pub fn patch(
    prev: &Plan,
    cfg: &Config,
    health: &HealthTable,
    locations: &[GeoValue],
    dirty: &Dirty,
) -> Option<Patch> {
    let mut out = Patch::default();
    for &i in &dirty.pools {
        let pool = cfg.pools.get(i)?;
        let from = RingKey {
            pool: pool.name.clone(),
            port: 0,
        };
        let to = RingKey {
            pool: pool.name.clone(),
            port: u16::MAX,
        };
        for key in prev.rings.range(from..=to).map(|(k, _)| k) {
            out.rings.push((key.clone(), ring_plan(cfg, health, key)));
        }
        let first_origin: usize = cfg.pools[..i].iter().map(|p| p.origins.len()).sum();
        let (p, o) = pool_status(cfg, health, pool);
        let fits = prev.pools.get(i).is_some_and(|q| q.name == p.name)
            && prev.origins.len() >= first_origin + o.len();
        if !fits {
            return None;
        }
        out.pools.push(PatchedPool {
            index: i,
            plan: p,
            first_origin,
            origins: o,
        });
    }
    let mut vip_index = 0;
    let mut dirty_lbs = dirty.load_balancers.iter().peekable();
    for (i, lb) in cfg.load_balancers.iter().enumerate() {
        if dirty_lbs.next_if_eq(&&i).is_some() {
            let (l, vip) = lb_plan(cfg, health, locations, lb);
            let vip = match vip {
                Some(v) => {
                    let old = prev.vips.get(vip_index)?;
                    let same_rings = old.key == v.key
                        && old.rings == v.rings
                        && prev.rings.contains_key(&v.ring);
                    if !same_rings {
                        return None;
                    }
                    Some((vip_index, v))
                }
                None => None,
            };
            if prev.load_balancers.get(i)?.enabled != l.enabled {
                return None;
            }
            out.load_balancers.push(PatchedLb {
                index: i,
                plan: l,
                vip,
            });
        }
        if lb.enabled {
            vip_index += 1;
        }
    }
    Some(out)
}

impl Plan {
    /// Puts a patch's entries in their places: with the patch of `patch(self, cfg, health,
    /// ..)`, the plan is then `plan(cfg, health, ..)`.
    pub fn apply_patch(&mut self, patch: Patch) {
        for (key, ring) in patch.rings {
            self.rings.insert(key, Arc::new(ring));
        }
        for l in patch.load_balancers {
            self.load_balancers[l.index] = Arc::new(l.plan);
            if let Some((v, vip)) = l.vip {
                self.vips[v] = Arc::new(vip);
            }
        }
        for p in patch.pools {
            self.pools[p.index] = p.plan;
            for (k, o) in p.origins.into_iter().enumerate() {
                self.origins[p.first_origin + k] = Arc::new(o);
            }
        }
    }
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
            .filter_map(|l| l.choice.as_ref().map(|(p, _)| (&**l, p.as_str())))
    }
}

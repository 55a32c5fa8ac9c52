//! The reconciler: the one writer of BPF maps. It turns a validated `Config` into the
//! entries the data path needs and writes only what differs from what the maps hold.
//!
//! Write order keeps every packet's view consistent: origins first, then ring slots, then the
//! VIP entries that point at rings (a VIP moves to another ring with one write), and only
//! then the removal of stale VIPs and origins. Ids are stable: a VIP, ring or origin that
//! already exists in the maps (from this agent or a previous one) keeps its id, so a restart
//! or reload rewrites nothing that did not change.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{
    v4_mapped, Counters, GeoPlanKey, GeoValue, OriginMeta, RingMeta, Settings, VipKey, VipMeta,
    IPPROTO_TCP, MAGLEV_M, MAX_LC_MEMBERS, MAX_ORIGINS, MAX_RINGS, MAX_VIPS, NO_ORIGIN, NO_RING,
    ORIGIN_F_PRESENT, POOL_SEL_M, RING_STEER_HASH, RING_STEER_LEAST_CONN, RING_STEER_RANDOM,
    SETTINGS_F_ANSWER_PING, SETTINGS_F_READY, SETTINGS_F_ROUTE_OTHER, VIP_F_AFFINITY, VIP_F_GEO,
    VIP_F_RANDOM, WEIGHT_SCALE,
};

use crate::{
    config::{Config, Geo, LoadBalancer, OriginSteering, SteeringPolicy},
    dataplane::Maps,
    geo::Region,
    health::HealthTable,
    maglev, steering,
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("out of {what} ids: {needed} needed, {max} available")]
    Capacity {
        what: &'static str,
        needed: usize,
        max: u32,
    },
}

type Result<T> = std::result::Result<T, ReconcileError>;

fn werr(map: &'static str) -> impl Fn(aya::maps::MapError) -> ReconcileError {
    move |e| ReconcileError::Map {
        map,
        reason: e.to_string(),
    }
}

/// An origin as the data path knows it: one pool member with its effective port.
pub type OriginKey = crate::steering::Member;

/// A ring: a pool's members with one default origin port. `pool` empty = the empty ring
/// (used by a load balancer with no usable pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingKey {
    pub pool: String,
    pub port: u16,
}

/// What the maps should hold, before ids are assigned. Pure function of the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub settings: Settings,
    pub rings: BTreeMap<RingKey, RingPlan>,
    /// Enabled load balancers.
    pub vips: Vec<VipPlan>,
}

/// One ring: every origin of the pool with its Maglev weight (0 = drained: no new flows),
/// and how the ring picks among them.
#[derive(Debug, Clone, PartialEq)]
pub struct RingPlan {
    pub members: Vec<(OriginKey, f64)>,
    pub steering: OriginSteering,
}

/// One VIP: its own ring and how new flows may be sent elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct VipPlan {
    pub name: String,
    pub key: VipKey,
    /// The ring for clients nothing else applies to (`steering::choose_pool`).
    pub ring: RingKey,
    /// `VIP_F_*`.
    pub flags: u32,
    pub affinity_ttl: u32,
    /// `geo`: client location (`GeoValue::geo_id`) -> ring, where it differs from `ring`.
    pub geo: BTreeMap<u32, RingKey>,
    /// `random`: the rings new connections spread over, with weights.
    pub pool_sel: Vec<(RingKey, f64)>,
}

pub fn vip_key(addr: Ipv4Addr, port: u16) -> VipKey {
    VipKey {
        addr: v4_mapped(addr.octets()),
        port: port.to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// The marker entry (port 0) that tells the data path an address belongs to some VIP.
pub fn vip_addr_marker(addr: [u8; 16]) -> VipKey {
    VipKey {
        addr,
        port: 0,
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// The client locations the geo trie holds (distinct values), for `desired`.
pub fn geo_locations(geo: &Geo) -> Vec<GeoValue> {
    let set: std::collections::BTreeSet<(u32, [u8; 2], u8)> = geo
        .merged()
        .values()
        .map(|p| {
            let v = p.value();
            (v.geo_id, v.country, v.region)
        })
        .collect();
    set.into_iter()
        .map(|(_, country, region)| GeoValue::new(country, region))
        .collect()
}

fn ring_key(lb: &LoadBalancer, pool: &str) -> RingKey {
    RingKey {
        pool: pool.to_owned(),
        port: lb.origin_port,
    }
}

/// What the maps should hold for `cfg` under `health`, with `locations` the distinct client
/// locations of the geo trie. Every pool an enabled load balancer may use (default pools,
/// fallback, geo lists) has a ring, kept current, so failing over is one write of a VIP's
/// ring id (or of a geo plan entry).
pub fn desired(cfg: &Config, health: &HealthTable, locations: &[GeoValue]) -> Desired {
    let dp = &cfg.dataplane;
    let settings = Settings {
        snat_addr: v4_mapped(dp.snat_address.octets()),
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
    };
    let mut rings = BTreeMap::new();
    let mut vips = Vec::new();
    for lb in cfg.load_balancers.iter().filter(|l| l.enabled) {
        for name in lb.all_pools() {
            if let Some(pool) = cfg.pool(name) {
                rings
                    .entry(ring_key(lb, &pool.name))
                    .or_insert_with(|| RingPlan {
                        members: steering::ring_members(cfg, health, pool, lb.origin_port),
                        steering: pool.origin_steering,
                    });
            }
        }
        let ring = match steering::choose_pool(cfg, health, lb) {
            Some((pool, _)) => ring_key(lb, &pool.name),
            None => {
                let key = RingKey {
                    pool: String::new(),
                    port: 0,
                };
                rings.entry(key.clone()).or_insert_with(|| RingPlan {
                    members: Vec::new(),
                    steering: OriginSteering::Random,
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
                    if let Some(pool) = steering::geo_choice(cfg, health, lb, list) {
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
            key: vip_key(lb.address, lb.port),
            ring,
            flags,
            affinity_ttl: lb.affinity_ttl.unwrap_or(0),
            geo,
            pool_sel,
        });
    }
    Desired {
        settings,
        rings,
        vips,
    }
}

/// Smallest id below `max` in neither set.
fn free_id(used: &HashSet<u32>, taken: &HashSet<u32>, max: u32) -> Option<u32> {
    (0..max).find(|i| !used.contains(i) && !taken.contains(i))
}

/// Ids for everything in `Desired`, reusing the ids the maps already hold where the same
/// thing is there (matched by VIP key, by the ring a kept VIP points at, and by origin
/// address and port).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    pub vips: HashMap<VipKey, u32>,
    pub rings: HashMap<RingKey, u32>,
    pub origins: HashMap<OriginKey, u32>,
}

/// What the maps hold now (read at start, then tracked by the reconciler).
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub vips: HashMap<VipKey, VipMeta>,
    pub origins: BTreeMap<u32, OriginMeta>,
}

/// `prev` is this reconciler's previous assignment (empty right after start): ring keys keep
/// the ids they had, so a VIP that moves to another pool moves to another ring with one write
/// instead of having its live ring rewritten under it.
pub fn assign(want: &Desired, cur: &Current, prev: &Assignment) -> Result<Assignment> {
    let mut a = Assignment::default();
    // VIPs: by key.
    let mut taken = HashSet::new();
    for key in want.vips.iter().map(|v| &v.key) {
        if let Some(m) = cur.vips.get(key) {
            a.vips.insert(*key, m.vip_id);
            taken.insert(m.vip_id);
        }
    }
    let used: HashSet<u32> = HashSet::new();
    for key in want.vips.iter().map(|v| &v.key) {
        if !a.vips.contains_key(key) {
            let id = free_id(&used, &taken, MAX_VIPS).ok_or(ReconcileError::Capacity {
                what: "VIP",
                needed: want.vips.len(),
                max: MAX_VIPS,
            })?;
            taken.insert(id);
            a.vips.insert(*key, id);
        }
    }
    // Rings: a kept VIP keeps its ring id for its (possibly new) ring key; new ring keys get
    // ids no live VIP entry points at, so no ring in use is overwritten.
    let in_use: HashSet<u32> = cur
        .vips
        .iter()
        .filter(|(k, _)| k.port != 0)
        .map(|(_, m)| m.ring_id)
        .collect();
    let mut taken = HashSet::new();
    for ring in want.rings.keys() {
        if let Some(id) = prev.rings.get(ring) {
            a.rings.insert(ring.clone(), *id);
            taken.insert(*id);
        }
    }
    // Right after start there is no previous assignment: infer it from the VIPs in the maps.
    for (key, ring) in want
        .vips
        .iter()
        .filter(|_| prev.rings.is_empty())
        .map(|v| (&v.key, &v.ring))
    {
        if let Some(m) = cur.vips.get(key) {
            if !a.rings.contains_key(ring) && !taken.contains(&m.ring_id) {
                a.rings.insert(ring.clone(), m.ring_id);
                taken.insert(m.ring_id);
            }
        }
    }
    // Rings no VIP points at directly (geo and random targets): the ring their origins say
    // they belong to in the maps.
    for (ring, plan) in want.rings.iter().filter(|_| prev.rings.is_empty()) {
        if a.rings.contains_key(ring) {
            continue;
        }
        let found = cur.origins.values().find(|m| {
            plan.members
                .iter()
                .any(|(k, _)| m.addr == v4_mapped(k.addr.octets()) && m.port == k.port.to_be())
                && !taken.contains(&m.ring_id)
                && m.ring_id < MAX_RINGS
        });
        if let Some(m) = found {
            a.rings.insert(ring.clone(), m.ring_id);
            taken.insert(m.ring_id);
        }
    }
    for ring in want.rings.keys() {
        if !a.rings.contains_key(ring) {
            let id = free_id(&in_use, &taken, MAX_RINGS).ok_or(ReconcileError::Capacity {
                what: "ring",
                needed: want.rings.len(),
                max: MAX_RINGS,
            })?;
            taken.insert(id);
            a.rings.insert(ring.clone(), id);
        }
    }
    // Origins: by (address, port), first match wins.
    let mut by_addr: HashMap<([u8; 16], u16), Vec<u32>> = HashMap::new();
    for (id, m) in &cur.origins {
        if m.flags & ORIGIN_F_PRESENT != 0 {
            by_addr.entry((m.addr, m.port)).or_default().push(*id);
        }
    }
    let present: HashSet<u32> = by_addr.values().flatten().copied().collect();
    let mut taken = HashSet::new();
    let all: Vec<&OriginKey> = want
        .rings
        .values()
        .flat_map(|r| &r.members)
        .map(|(k, _)| k)
        .collect();
    for k in &all {
        let addr_key = (v4_mapped(k.addr.octets()), k.port.to_be());
        if a.origins.contains_key(*k) {
            continue;
        }
        if let Some(ids) = by_addr.get_mut(&addr_key) {
            if let Some(pos) = ids.iter().position(|i| !taken.contains(i)) {
                let id = ids.remove(pos);
                taken.insert(id);
                a.origins.insert((*k).clone(), id);
            }
        }
    }
    for k in &all {
        if !a.origins.contains_key(*k) {
            let id = free_id(&present, &taken, MAX_ORIGINS).ok_or(ReconcileError::Capacity {
                what: "origin",
                needed: all.len(),
                max: MAX_ORIGINS,
            })?;
            taken.insert(id);
            a.origins.insert((*k).clone(), id);
        }
    }
    Ok(a)
}

/// The slots of one ring: Maglev over the members with positive weight, as origin ids.
pub fn ring_slots(members: &[(OriginKey, f64)], ids: &HashMap<OriginKey, u32>) -> Vec<u32> {
    let backends: Vec<maglev::Backend> = members
        .iter()
        .map(|(k, w)| maglev::Backend {
            key: maglev::backend_key(&format!("{}:{}", k.addr, k.port)),
            weight: *w,
        })
        .collect();
    // One id lookup per member, not per slot (65537 string-keyed lookups cost milliseconds).
    let member_ids: Vec<u32> = members.iter().map(|(k, _)| ids[k]).collect();
    maglev::build(&backends, MAGLEV_M)
        .into_iter()
        .map(|s| s.map_or(NO_ORIGIN, |i| member_ids[i as usize]))
        .collect()
}

/// All-zero per-CPU counters, to reset the stats slot of a newly assigned id.
fn zero_counters(map: &'static str) -> Result<aya::maps::PerCpuValues<Counters>> {
    let err = |reason: String| ReconcileError::Map { map, reason };
    let n = aya::util::nr_cpus().map_err(|(_, e)| err(e.to_string()))?;
    aya::maps::PerCpuValues::try_from(vec![Counters::default(); n]).map_err(|e| err(e.to_string()))
}

/// What one apply did, for logs and the benchmarks.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub slots_written: usize,
    pub origins_written: usize,
    pub origins_removed: usize,
    pub vips_written: usize,
    pub vips_removed: usize,
    /// Time spent computing rings (Maglev builds) and diffing them.
    pub compute: Duration,
    /// Time spent writing ring slots.
    pub ring_writes: Duration,
    pub elapsed: Duration,
}

/// Owns the map handles and what it last wrote.
pub struct Reconciler {
    pub maps: Maps,
    current: Current,
    /// Ring id -> slots as last written or read.
    rings: HashMap<u32, Vec<u32>>,
    settings: Option<Settings>,
    /// `Settings::nh_gen` to write: bumped when links, routes or neighbours change.
    nh_gen: u32,
    /// What `LOCAL_ADDRS` holds, read on first use.
    local_addrs: Option<BTreeSet<[u8; 16]>>,
    pub assignment: Assignment,
    ring_meta: HashMap<u32, RingMeta>,
    geo_plan: HashMap<GeoPlanKey, u32>,
    /// VIP id -> `POOL_SEL` slots, read on first use.
    pool_sel: HashMap<u32, Vec<u32>>,
    /// What the `GEO` trie holds, read on first use.
    geo_trie: Option<HashMap<(u32, [u8; 16]), GeoValue>>,
    geo_applied: Option<Geo>,
    geo_locations: Vec<GeoValue>,
}

impl Reconciler {
    /// Takes over maps that may already hold state from an earlier agent.
    pub fn adopt(maps: Maps) -> Result<Self> {
        let mut current = Current::default();
        for item in maps.vips.iter() {
            let (k, v) = item.map_err(werr("VIPS"))?;
            current.vips.insert(k, v);
        }
        for id in 0..MAX_ORIGINS {
            let m = maps.origins.get(&id, 0).map_err(werr("ORIGINS"))?;
            if m.flags & ORIGIN_F_PRESENT != 0 {
                current.origins.insert(id, m);
            }
        }
        let settings = maps.settings.get(&0, 0).ok();
        // Changes may have happened while no agent watched: the next hops the data path
        // cached under the old generation are looked up again.
        let nh_gen = settings.map_or(0, |s| s.nh_gen.wrapping_add(1));
        let mut ring_meta = HashMap::new();
        for id in 0..MAX_RINGS {
            ring_meta.insert(id, maps.ring_meta.get(&id, 0).map_err(werr("RING_META"))?);
        }
        let mut geo_plan = HashMap::new();
        for item in maps.geo_plan.iter() {
            let (k, v) = item.map_err(werr("GEO_PLAN"))?;
            geo_plan.insert(k, v);
        }
        Ok(Self {
            maps,
            current,
            rings: HashMap::new(),
            settings,
            nh_gen,
            local_addrs: None,
            assignment: Assignment::default(),
            ring_meta,
            geo_plan,
            pool_sel: HashMap::new(),
            geo_trie: None,
            geo_applied: None,
            geo_locations: Vec::new(),
        })
    }

    fn ring(&mut self, id: u32) -> Result<&mut Vec<u32>> {
        if !self.rings.contains_key(&id) {
            let base = id * MAGLEV_M;
            let slots = match &self.maps.rings_mem {
                Some(mem) => (0..MAGLEV_M).map(|s| mem.get(base + s)).collect(),
                None => (0..MAGLEV_M)
                    .map(|s| self.maps.rings.get(&(base + s), 0).map_err(werr("RINGS")))
                    .collect::<Result<Vec<u32>>>()?,
            };
            self.rings.insert(id, slots);
        }
        Ok(self.rings.get_mut(&id).expect("inserted above"))
    }

    /// The kernel's links, routes or neighbours changed: next hops the data path cached in
    /// its flow entries are looked up again (one `bpf_fib_lookup` per flow direction).
    /// Before the first apply there are no settings yet; the new generation goes out with
    /// them.
    pub fn next_hops_changed(&mut self) -> Result<()> {
        self.nh_gen = self.nh_gen.wrapping_add(1);
        if let Some(mut s) = self.settings {
            s.nh_gen = self.nh_gen;
            self.maps.settings.set(0, s, 0).map_err(werr("SETTINGS"))?;
            self.settings = Some(s);
        }
        Ok(())
    }

    /// Makes `LOCAL_ADDRS` hold `want` (the host's own addresses), writing only
    /// differences. A full map leaves some out: their traffic only costs a FIB lookup.
    pub fn sync_local_addrs(&mut self, want: &BTreeSet<[u8; 16]>) -> Result<()> {
        let have = match self.local_addrs.take() {
            Some(h) => h,
            None => self
                .maps
                .local_addrs
                .keys()
                .collect::<std::result::Result<BTreeSet<_>, _>>()
                .map_err(werr("LOCAL_ADDRS"))?,
        };
        let mut now = have.clone();
        for gone in have.difference(want) {
            self.maps
                .local_addrs
                .remove(gone)
                .map_err(werr("LOCAL_ADDRS"))?;
            now.remove(gone);
        }
        for new in want.difference(&have) {
            if self.maps.local_addrs.insert(new, 1, 0).is_ok() {
                now.insert(*new);
            }
        }
        self.local_addrs = Some(now);
        Ok(())
    }

    /// Makes the maps hold exactly what `cfg` asks for under `health`, writing only
    /// differences.
    pub fn apply(&mut self, cfg: &Config, health: &HealthTable) -> Result<ApplyReport> {
        let start = Instant::now();
        self.sync_geo(&cfg.geo)?;
        let mut want = desired(cfg, health, &self.geo_locations);
        // New settings (a SNAT address, say) may route differently: cached next hops go.
        if self
            .settings
            .is_some_and(|s| Settings { nh_gen: 0, ..s } != want.settings)
        {
            self.nh_gen = self.nh_gen.wrapping_add(1);
        }
        want.settings.nh_gen = self.nh_gen;
        let a = assign(&want, &self.current, &self.assignment)?;
        let mut r = ApplyReport::default();

        if self.settings != Some(want.settings) {
            self.maps
                .settings
                .set(0, want.settings, 0)
                .map_err(werr("SETTINGS"))?;
            self.settings = Some(want.settings);
        }

        // 1. Origins (new ones start with zeroed counters), with their ring and weight.
        let mut place: HashMap<&OriginKey, (u32, u32)> = HashMap::new();
        for (key, plan) in &want.rings {
            for (k, w) in &plan.members {
                place.insert(k, (a.rings[key], scaled(*w)));
            }
        }
        let mut wanted_origins = HashSet::new();
        for (k, id) in &a.origins {
            wanted_origins.insert(*id);
            let (ring_id, weight) = place.get(k).copied().unwrap_or((NO_RING, 0));
            let meta = OriginMeta {
                addr: v4_mapped(k.addr.octets()),
                port: k.port.to_be(),
                _pad: 0,
                flags: ORIGIN_F_PRESENT,
                ring_id,
                weight,
            };
            let cur = self.current.origins.get(id);
            if cur != Some(&meta) {
                // A new origin, or another one than before under this id: fresh counters.
                if cur.is_none_or(|c| c.addr != meta.addr || c.port != meta.port) {
                    let zero = zero_counters("ORIGIN_STATS")?;
                    self.maps
                        .origin_stats
                        .set(*id, zero, 0)
                        .map_err(werr("ORIGIN_STATS"))?;
                    self.maps
                        .origin_flows
                        .set(*id, 0, 0)
                        .map_err(werr("ORIGIN_FLOWS"))?;
                }
                self.maps
                    .origins
                    .set(*id, meta, 0)
                    .map_err(werr("ORIGINS"))?;
                self.current.origins.insert(*id, meta);
                r.origins_written += 1;
            }
        }

        // 2. Ring slots that changed, and each ring's steering.
        for (key, plan) in &want.rings {
            let id = a.rings[key];
            let t = Instant::now();
            let slots = ring_slots(&plan.members, &a.origins);
            r.compute += t.elapsed();
            let t = Instant::now();
            let base = id * MAGLEV_M;
            let old = self.ring(id)?.clone();
            for (i, (new, old)) in slots.iter().zip(old.iter()).enumerate() {
                if new != old {
                    #[expect(clippy::cast_possible_truncation, reason = "i < MAGLEV_M")]
                    let slot = base + i as u32;
                    match &self.maps.rings_mem {
                        Some(mem) => mem.set(slot, *new),
                        None => self.maps.rings.set(slot, *new, 0).map_err(werr("RINGS"))?,
                    }
                    r.slots_written += 1;
                }
            }
            self.rings.insert(id, slots);
            r.ring_writes += t.elapsed();
            let meta = ring_meta(plan, &a.origins);
            if self.ring_meta.get(&id) != Some(&meta) {
                self.maps
                    .ring_meta
                    .set(id, meta, 0)
                    .map_err(werr("RING_META"))?;
                self.ring_meta.insert(id, meta);
            }
        }

        // 3. Geo plans and random pool tables, before the VIPs that use them.
        let mut wanted_plan: HashMap<GeoPlanKey, u32> = HashMap::new();
        for v in &want.vips {
            for (geo_id, ring) in &v.geo {
                let k = GeoPlanKey {
                    vip_id: a.vips[&v.key],
                    geo_id: *geo_id,
                };
                wanted_plan.insert(k, a.rings[ring]);
            }
        }
        for (k, ring) in &wanted_plan {
            if self.geo_plan.get(k) != Some(ring) {
                self.maps
                    .geo_plan
                    .insert(k, ring, 0)
                    .map_err(werr("GEO_PLAN"))?;
                self.geo_plan.insert(*k, *ring);
            }
        }
        for v in want.vips.iter().filter(|v| v.flags & VIP_F_RANDOM != 0) {
            let vip_id = a.vips[&v.key];
            let slots = pool_sel_slots(&v.pool_sel, &a.rings);
            let old = self.pool_sel(vip_id)?.clone();
            for (i, (new, old)) in slots.iter().zip(old.iter()).enumerate() {
                if new != old {
                    #[expect(clippy::cast_possible_truncation, reason = "i < POOL_SEL_M")]
                    let slot = vip_id * POOL_SEL_M + i as u32;
                    self.maps
                        .pool_sel
                        .set(slot, *new, 0)
                        .map_err(werr("POOL_SEL"))?;
                }
            }
            self.pool_sel.insert(vip_id, slots);
        }

        // 4. VIPs (and address markers) pointing at their rings.
        let mut wanted_vips: HashMap<VipKey, VipMeta> = HashMap::new();
        for v in &want.vips {
            let meta = VipMeta {
                vip_id: a.vips[&v.key],
                ring_id: a.rings[&v.ring],
                flags: v.flags,
                affinity_ttl: v.affinity_ttl,
            };
            wanted_vips.insert(v.key, meta);
            wanted_vips
                .entry(vip_addr_marker(v.key.addr))
                .or_insert(VipMeta {
                    vip_id: u32::MAX,
                    ring_id: u32::MAX,
                    flags: 0,
                    affinity_ttl: 0,
                });
        }
        for (key, meta) in &wanted_vips {
            if self.current.vips.get(key) != Some(meta) {
                if !self.current.vips.contains_key(key) && key.port != 0 {
                    let zero = zero_counters("VIP_STATS")?;
                    self.maps
                        .vip_stats
                        .set(meta.vip_id, zero, 0)
                        .map_err(werr("VIP_STATS"))?;
                }
                self.maps.vips.insert(key, meta, 0).map_err(werr("VIPS"))?;
                self.current.vips.insert(*key, *meta);
                r.vips_written += 1;
            }
        }

        // 5. Removals: VIPs first (nothing points at stale plans, rings or origins afterwards).
        let stale: Vec<VipKey> = self
            .current
            .vips
            .keys()
            .filter(|k| !wanted_vips.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.maps.vips.remove(&k).map_err(werr("VIPS"))?;
            self.current.vips.remove(&k);
            r.vips_removed += 1;
        }
        let stale: Vec<GeoPlanKey> = self
            .geo_plan
            .keys()
            .filter(|k| !wanted_plan.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.maps.geo_plan.remove(&k).map_err(werr("GEO_PLAN"))?;
            self.geo_plan.remove(&k);
        }
        let stale: Vec<u32> = self
            .current
            .origins
            .keys()
            .filter(|id| !wanted_origins.contains(id))
            .copied()
            .collect();
        for id in stale {
            // Established flows keep working: they carry the origin's address themselves.
            self.maps
                .origins
                .set(id, OriginMeta::default(), 0)
                .map_err(werr("ORIGINS"))?;
            self.current.origins.remove(&id);
            r.origins_removed += 1;
        }
        self.assignment = a;
        r.elapsed = start.elapsed();
        Ok(r)
    }

    /// A VIP's `POOL_SEL` slots as last written or read.
    fn pool_sel(&mut self, vip_id: u32) -> Result<&mut Vec<u32>> {
        if !self.pool_sel.contains_key(&vip_id) {
            let base = vip_id * POOL_SEL_M;
            let slots = (0..POOL_SEL_M)
                .map(|s| {
                    self.maps
                        .pool_sel
                        .get(&(base + s), 0)
                        .map_err(werr("POOL_SEL"))
                })
                .collect::<Result<Vec<u32>>>()?;
            self.pool_sel.insert(vip_id, slots);
        }
        Ok(self.pool_sel.get_mut(&vip_id).expect("inserted above"))
    }

    /// Makes the `GEO` trie hold `geo`'s prefixes (only when they changed since the last call:
    /// a full database has ~400k of them).
    fn sync_geo(&mut self, geo: &Geo) -> Result<()> {
        if self.geo_applied.as_ref().is_some_and(|g| same_geo(g, geo)) {
            return Ok(());
        }
        if self.geo_trie.is_none() {
            let mut cur = HashMap::new();
            for item in self.maps.geo.iter() {
                let (k, v) = item.map_err(werr("GEO"))?;
                cur.insert((k.prefix_len(), k.data()), v);
            }
            self.geo_trie = Some(cur);
        }
        let cur = self.geo_trie.as_mut().expect("read above");
        let want: HashMap<(u32, [u8; 16]), GeoValue> = geo
            .merged()
            .values()
            .map(|p| {
                let k = p.key();
                ((k.prefixlen, k.addr), p.value())
            })
            .collect();
        for (k, v) in &want {
            if cur.get(k) != Some(v) {
                let key = aya::maps::lpm_trie::Key::new(k.0, k.1);
                self.maps.geo.insert(&key, *v, 0).map_err(werr("GEO"))?;
                cur.insert(*k, *v);
            }
        }
        let stale: Vec<(u32, [u8; 16])> = cur
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            let key = aya::maps::lpm_trie::Key::new(k.0, k.1);
            self.maps.geo.remove(&key).map_err(werr("GEO"))?;
            cur.remove(&k);
        }
        self.geo_locations = geo_locations(geo);
        self.geo_applied = Some(geo.clone());
        Ok(())
    }
}

/// Equal geo data; the database's prefixes compared by identity (they are loaded once per
/// config load and shared).
fn same_geo(a: &Geo, b: &Geo) -> bool {
    a.database == b.database
        && a.prefixes == b.prefixes
        && std::sync::Arc::ptr_eq(&a.database_prefixes, &b.database_prefixes)
}

/// A Maglev weight in the data path's fixed point; a positive weight never rounds to 0.
fn scaled(w: f64) -> u32 {
    if w <= 0.0 {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "0 < w <= 1"
    )]
    let v = (w * WEIGHT_SCALE).round() as u32;
    v.max(1)
}

/// `RING_META` of a ring: its steering and, for least connections, its usable members.
pub fn ring_meta(plan: &RingPlan, ids: &HashMap<OriginKey, u32>) -> RingMeta {
    let mut m = RingMeta {
        steering: match plan.steering {
            OriginSteering::Random => RING_STEER_RANDOM,
            OriginSteering::Hash => RING_STEER_HASH,
            OriginSteering::LeastConnections => RING_STEER_LEAST_CONN,
        },
        ..RingMeta::default()
    };
    if plan.steering == OriginSteering::LeastConnections {
        let mut n = 0;
        for (k, w) in plan.members.iter().filter(|(_, w)| *w > 0.0) {
            if n == MAX_LC_MEMBERS {
                break;
            }
            m.ids[n] = ids[k];
            m.weights[n] = scaled(*w);
            n += 1;
        }
        m.count = u32::try_from(n).expect("at most 32");
    }
    m
}

/// A `random` VIP's `POOL_SEL` slots: weighted Maglev over its healthy pools' rings
/// (`NO_RING` everywhere when it has none: the VIP's own ring is used).
pub fn pool_sel_slots(pools: &[(RingKey, f64)], rings: &HashMap<RingKey, u32>) -> Vec<u32> {
    let backends: Vec<maglev::Backend> = pools
        .iter()
        .map(|(k, w)| maglev::Backend {
            key: maglev::backend_key(&k.pool),
            weight: *w,
        })
        .collect();
    let ids: Vec<u32> = pools.iter().map(|(k, _)| rings[k]).collect();
    maglev::build(&backends, POOL_SEL_M)
        .into_iter()
        .map(|s| s.map_or(NO_RING, |i| ids[i as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(pools: &str, lbs: &str) -> Config {
        let text = format!(
            "[dataplane]\ninterfaces=[\"eth0\"]\nsnat_address=\"10.0.0.1\"\n{pools}\n{lbs}"
        );
        Config::parse(&text, Path::new("t")).expect("valid config")
    }

    const POOLS: &str = r#"
[[pools]]
name = "a"
origins = [{ name = "a1", address = "10.1.0.1" }, { name = "a2", address = "10.1.0.2", port = 8080 }]
[[pools]]
name = "b"
origins = [{ name = "b1", address = "10.2.0.1", enabled = false }, { name = "b2", address = "10.2.0.2", weight = 0.0 }]
"#;
    const LBS: &str = r#"
[[load_balancers]]
name = "x"
address = "10.0.0.10"
port = 80
default_pools = ["a", "b"]
[[load_balancers]]
name = "y"
address = "10.0.0.10"
port = 443
origin_port = 8443
default_pools = ["b"]
"#;

    #[test]
    fn desired_uses_first_enabled_pool_and_origin_ports() {
        let d = desired(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
        assert_eq!(d.vips.len(), 2);
        let ring_x = &d.vips[0].ring;
        assert_eq!(
            ring_x,
            &RingKey {
                pool: "a".into(),
                port: 80
            }
        );
        let members = &d.rings[ring_x].members;
        assert_eq!(members[0].0.port, 80, "origin without port takes the LB's");
        assert_eq!(members[1].0.port, 8080, "origin port wins");
        let ring_y = &d.vips[1].ring;
        assert_eq!(ring_y.port, 8443);
        // b1 disabled and b2 weight 0: both present with weight 0 (drained).
        assert!(d.rings[ring_y].members.iter().all(|(_, w)| *w == 0.0));
    }

    #[test]
    fn disabled_pool_is_skipped_and_disabled_lb_is_absent() {
        let pools = POOLS.replacen("name = \"a\"", "name = \"a\"\nenabled = false", 1);
        let lbs = LBS.replacen("port = 443", "port = 443\nenabled = false", 1);
        let d = desired(&cfg(&pools, &lbs), &HealthTable::default(), &[]);
        assert_eq!(d.vips.len(), 1);
        assert_eq!(d.vips[0].ring.pool, "b");
    }

    #[test]
    fn drained_ring_has_no_origins() {
        let d = desired(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
        let a = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        let ring_y = &d.vips[1].ring;
        assert!(ring_slots(&d.rings[ring_y].members, &a.origins)
            .iter()
            .all(|s| *s == NO_ORIGIN));
    }

    #[test]
    fn fresh_assignment_is_dense_and_unique() {
        let d = desired(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
        let a = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        let mut ids: Vec<u32> = a.origins.values().copied().collect();
        ids.sort_unstable();
        // Rings a:80 and b:80 (x, with b as its fallback) and b:8443 (y): six origin entries.
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
        let mut rings: Vec<u32> = a.rings.values().copied().collect();
        rings.sort_unstable();
        assert_eq!(rings, vec![0, 1, 2]);
    }

    #[test]
    fn assignment_is_stable_against_what_maps_hold() {
        let c = cfg(POOLS, LBS);
        let d = desired(&c, &HealthTable::default(), &[]);
        let first = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        // Simulate the maps after applying `first`.
        let mut cur = Current::default();
        for v in &d.vips {
            cur.vips.insert(
                v.key,
                VipMeta {
                    vip_id: first.vips[&v.key],
                    ring_id: first.rings[&v.ring],
                    flags: 0,
                    affinity_ttl: 0,
                },
            );
        }
        for (k, id) in &first.origins {
            cur.origins.insert(
                *id,
                OriginMeta {
                    addr: v4_mapped(k.addr.octets()),
                    port: k.port.to_be(),
                    _pad: 0,
                    flags: ORIGIN_F_PRESENT,
                    ring_id: 0,
                    weight: 0,
                },
            );
        }
        assert_eq!(assign(&d, &cur, &Assignment::default()).unwrap(), first);
        assert_eq!(assign(&d, &cur, &first).unwrap(), first);
    }

    #[test]
    fn new_ring_never_overwrites_a_ring_a_live_vip_uses() {
        // Maps hold VIP x on ring 0; the new config moves x to pool b (a new ring key).
        let c = cfg(POOLS, LBS);
        let d = desired(&c, &HealthTable::default(), &[]);
        let mut cur = Current::default();
        let other = vip_key(Ipv4Addr::new(10, 9, 9, 9), 80); // a VIP being removed, on ring 1
        cur.vips.insert(
            other,
            VipMeta {
                vip_id: 7,
                ring_id: 1,
                flags: 0,
                affinity_ttl: 0,
            },
        );
        let a = assign(&d, &cur, &Assignment::default()).unwrap();
        assert!(
            !a.rings.values().any(|r| *r == 1),
            "ring 1 still serves a live VIP: {a:?}"
        );
    }
}

#[cfg(test)]
mod steering_tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"

[[pools]]
name = "a"
origins = [{ name = "a1", address = "10.1.0.1" }]
[[pools]]
name = "b"
origin_steering = { policy = "least_connections" }
origins = [{ name = "b1", address = "10.2.0.1" }, { name = "b2", address = "10.2.0.2", weight = 0.5 }, { name = "b3", address = "10.2.0.3", enabled = false }]

[geo]
prefixes = [{ prefix = "10.9.0.0/16", country = "DE" }, { prefix = "10.8.0.0/16", country = "JP" }]
"#;

    fn cfg(lb: &str) -> Config {
        Config::parse(&format!("{BASE}\n[[load_balancers]]\nname = \"x\"\naddress = \"10.0.0.10\"\nport = 80\n{lb}\n"), Path::new("t"))
            .expect("valid")
    }

    #[test]
    fn geo_plan_holds_only_locations_whose_ring_differs() {
        let c = cfg("default_pools = [\"a\"]\nsteering_policy = \"geo\"\nregion_pools = { WEU = [\"b\"], NEAS = [\"a\"] }");
        let locs = geo_locations(&c.geo);
        assert_eq!(locs.len(), 2);
        let d = desired(&c, &HealthTable::default(), &locs);
        let v = &d.vips[0];
        assert_eq!(v.flags, VIP_F_GEO);
        assert_eq!(v.ring.pool, "a");
        let de = locs.iter().find(|l| l.country == *b"DE").expect("DE");
        assert_eq!(
            v.geo.len(),
            1,
            "JP's list names the VIP's own ring: no entry"
        );
        assert_eq!(v.geo[&de.geo_id].pool, "b");
        assert!(
            d.rings.keys().any(|k| k.pool == "b"),
            "a ring for every pool a list names"
        );
    }

    #[test]
    fn pop_list_replaces_per_client_geo() {
        let text = format!(
            "{BASE}\n[agent]\npop = \"AMS\"\n\n[[load_balancers]]\nname = \"x\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"a\"]\nsteering_policy = \"geo\"\npop_pools = {{ AMS = [\"b\"] }}\nregion_pools = {{ WEU = [\"a\"] }}\n"
        );
        let c = Config::parse(&text, Path::new("t")).expect("valid");
        let d = desired(&c, &HealthTable::default(), &geo_locations(&c.geo));
        let v = &d.vips[0];
        assert_eq!(v.ring.pool, "b", "this PoP's list");
        assert_eq!(
            v.flags & VIP_F_GEO,
            0,
            "no per-client lookup: the PoP list applies to all"
        );
        assert!(v.geo.is_empty());
    }

    #[test]
    fn random_vip_gets_a_weighted_pool_table() {
        let c = cfg("default_pools = [\"a\", \"b\"]\nsteering_policy = \"random\"\nrandom_steering = { pool_weights = { a = 0.2, b = 0.8 } }\nsession_affinity = \"ip\"\nsession_affinity_ttl = 30");
        let d = desired(&c, &HealthTable::default(), &[]);
        let v = &d.vips[0];
        assert_eq!(v.flags, VIP_F_RANDOM | VIP_F_AFFINITY);
        assert_eq!(v.affinity_ttl, 30);
        let a = assign(&d, &Current::default(), &Assignment::default()).expect("ids");
        let slots = pool_sel_slots(&v.pool_sel, &a.rings);
        assert_eq!(slots.len(), POOL_SEL_M as usize);
        let ra = a.rings[&RingKey {
            pool: "a".into(),
            port: 80,
        }];
        let share = slots.iter().filter(|s| **s == ra).count();
        assert!(
            (200..=210).contains(&share),
            "pool a holds {share} of 1021 slots (20 %)"
        );
        assert!(pool_sel_slots(&[], &a.rings).iter().all(|s| *s == NO_RING));
    }

    #[test]
    fn least_connections_ring_lists_usable_members_with_weights() {
        let c = cfg("default_pools = [\"b\"]");
        let d = desired(&c, &HealthTable::default(), &[]);
        let a = assign(&d, &Current::default(), &Assignment::default()).expect("ids");
        let plan = &d.rings[&RingKey {
            pool: "b".into(),
            port: 80,
        }];
        let m = ring_meta(plan, &a.origins);
        assert_eq!(m.steering, RING_STEER_LEAST_CONN);
        assert_eq!(m.count, 2, "the disabled origin is not a member");
        assert_eq!(&m.weights[..2], &[10000, 5000]);
        assert_eq!(scaled(0.00001), 1, "a positive weight never rounds to zero");
        let ra = ring_meta(
            &d.rings[&RingKey {
                pool: "b".into(),
                port: 80,
            }],
            &a.origins,
        );
        assert_eq!(ra, m);
    }
}

#[cfg(test)]
mod move_tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn vip_moving_to_another_pool_gets_another_ring() {
        let base = "[dataplane]\ninterfaces=[\"eth0\"]\nsnat_address=\"10.0.0.1\"\n[[pools]]\nname=\"a\"\norigins=[{name=\"a1\",address=\"10.1.0.1\"}]\n[[pools]]\nname=\"b\"\norigins=[{name=\"b1\",address=\"10.2.0.1\"}]\n[[load_balancers]]\nname=\"x\"\naddress=\"10.0.0.10\"\nport=80\n";
        let c1 = Config::parse(&format!("{base}default_pools=[\"a\"]\n"), Path::new("t")).unwrap();
        let c2 = Config::parse(&format!("{base}default_pools=[\"b\"]\n"), Path::new("t")).unwrap();
        let d1 = desired(&c1, &HealthTable::default(), &[]);
        let a1 = assign(&d1, &Current::default(), &Assignment::default()).unwrap();
        let mut cur = Current::default();
        let (key, ring) = (&d1.vips[0].key, &d1.vips[0].ring);
        cur.vips.insert(
            *key,
            VipMeta {
                vip_id: a1.vips[key],
                ring_id: a1.rings[ring],
                flags: 0,
                affinity_ttl: 0,
            },
        );
        let d2 = desired(&c2, &HealthTable::default(), &[]);
        let a2 = assign(&d2, &cur, &a1).unwrap();
        let ring2 = &d2.vips[0].ring;
        assert_ne!(
            a2.rings[ring2], a1.rings[ring],
            "the live ring of x must not be rewritten in place"
        );
    }
}

//! The reconciler: the one writer of BPF maps. It turns a validated `Config` into the
//! entries the data path needs and writes only what differs from what the maps hold.
//!
//! Write order keeps every packet's view consistent: origins first, then ring slots, then the
//! VIP entries that point at rings (a VIP moves to another ring with one write), and only
//! then the removal of stale VIPs and origins. Ids are stable: a VIP, ring or origin that
//! already exists in the maps (from this agent or a previous one) keeps its id, so a restart
//! or reload rewrites nothing that did not change.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{
    v4_mapped, Counters, OriginMeta, Settings, VipKey, VipMeta, IPPROTO_TCP, MAGLEV_M, MAX_ORIGINS,
    MAX_RINGS, MAX_VIPS, NO_ORIGIN, ORIGIN_F_PRESENT, SETTINGS_F_READY,
};

use crate::{config::Config, dataplane::Maps, health::HealthTable, maglev, steering};

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
    /// Every origin of every ring, with its Maglev weight (0 = drained: no new flows).
    pub rings: BTreeMap<RingKey, Vec<(OriginKey, f64)>>,
    /// Enabled load balancers: name, VIP key, ring.
    pub vips: Vec<(String, VipKey, RingKey)>,
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

/// What the maps should hold for `cfg` under `health`. Every pool an enabled load balancer
/// may use (its default pools and its fallback) has a ring, kept current, so failing over is
/// one write of the VIP's ring id.
pub fn desired(cfg: &Config, health: &HealthTable) -> Desired {
    let dp = &cfg.dataplane;
    let settings = Settings {
        snat_addr: v4_mapped(dp.snat_address.octets()),
        snat_port_min: dp.snat_port_min,
        snat_port_max: dp.snat_port_max,
        flags: SETTINGS_F_READY,
        reuse_closed_secs: dp.snat_port_reuse_after_close,
        reuse_idle_secs: dp.snat_port_reuse_after_idle,
    };
    let mut rings = BTreeMap::new();
    let mut vips = Vec::new();
    for lb in cfg.load_balancers.iter().filter(|l| l.enabled) {
        for name in lb
            .default_pools
            .iter()
            .chain(std::iter::once(&lb.fallback_pool))
        {
            if let Some(pool) = cfg.pool(name) {
                let key = RingKey {
                    pool: pool.name.clone(),
                    port: lb.origin_port,
                };
                rings
                    .entry(key)
                    .or_insert_with(|| steering::ring_members(cfg, health, pool, lb.origin_port));
            }
        }
        let ring = match steering::choose_pool(cfg, health, lb) {
            Some((pool, _)) => RingKey {
                pool: pool.name.clone(),
                port: lb.origin_port,
            },
            None => {
                let key = RingKey {
                    pool: String::new(),
                    port: 0,
                };
                rings.entry(key.clone()).or_insert_with(Vec::new);
                key
            }
        };
        vips.push((lb.name.clone(), vip_key(lb.address, lb.port), ring));
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
    for (_, key, _) in &want.vips {
        if let Some(m) = cur.vips.get(key) {
            a.vips.insert(*key, m.vip_id);
            taken.insert(m.vip_id);
        }
    }
    let used: HashSet<u32> = HashSet::new();
    for (_, key, _) in &want.vips {
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
    for (_, key, ring) in want.vips.iter().filter(|_| prev.rings.is_empty()) {
        if let Some(m) = cur.vips.get(key) {
            if !a.rings.contains_key(ring) && !taken.contains(&m.ring_id) {
                a.rings.insert(ring.clone(), m.ring_id);
                taken.insert(m.ring_id);
            }
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
    let all: Vec<&OriginKey> = want.rings.values().flatten().map(|(k, _)| k).collect();
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
    pub assignment: Assignment,
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
        Ok(Self {
            maps,
            current,
            rings: HashMap::new(),
            settings,
            assignment: Assignment::default(),
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

    /// Makes the maps hold exactly what `cfg` asks for under `health`, writing only
    /// differences.
    pub fn apply(&mut self, cfg: &Config, health: &HealthTable) -> Result<ApplyReport> {
        let start = Instant::now();
        let want = desired(cfg, health);
        let a = assign(&want, &self.current, &self.assignment)?;
        let mut r = ApplyReport::default();

        if self.settings != Some(want.settings) {
            self.maps
                .settings
                .set(0, want.settings, 0)
                .map_err(werr("SETTINGS"))?;
            self.settings = Some(want.settings);
        }

        // 1. Origins (new ones start with zeroed counters).
        let mut wanted_origins = HashSet::new();
        for (k, id) in &a.origins {
            wanted_origins.insert(*id);
            let meta = OriginMeta {
                addr: v4_mapped(k.addr.octets()),
                port: k.port.to_be(),
                _pad: 0,
                flags: ORIGIN_F_PRESENT,
            };
            if self.current.origins.get(id) != Some(&meta) {
                if !self.current.origins.contains_key(id) {
                    let zero = zero_counters("ORIGIN_STATS")?;
                    self.maps
                        .origin_stats
                        .set(*id, zero, 0)
                        .map_err(werr("ORIGIN_STATS"))?;
                }
                self.maps
                    .origins
                    .set(*id, meta, 0)
                    .map_err(werr("ORIGINS"))?;
                self.current.origins.insert(*id, meta);
                r.origins_written += 1;
            }
        }

        // 2. Ring slots that changed.
        for (key, members) in &want.rings {
            let id = a.rings[key];
            let t = Instant::now();
            let slots = ring_slots(members, &a.origins);
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
        }

        // 3. VIPs (and address markers) pointing at their rings.
        let mut wanted_vips: HashMap<VipKey, VipMeta> = HashMap::new();
        for (_, key, ring) in &want.vips {
            let meta = VipMeta {
                vip_id: a.vips[key],
                ring_id: a.rings[ring],
                flags: 0,
                _pad: 0,
            };
            wanted_vips.insert(*key, meta);
            wanted_vips
                .entry(vip_addr_marker(key.addr))
                .or_insert(VipMeta {
                    vip_id: u32::MAX,
                    ring_id: u32::MAX,
                    flags: 0,
                    _pad: 0,
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

        // 4. Removals: VIPs first (nothing points at stale rings or origins afterwards).
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
        let d = desired(&cfg(POOLS, LBS), &HealthTable::default());
        assert_eq!(d.vips.len(), 2);
        let (_, _, ring_x) = &d.vips[0];
        assert_eq!(
            ring_x,
            &RingKey {
                pool: "a".into(),
                port: 80
            }
        );
        let members = &d.rings[ring_x];
        assert_eq!(members[0].0.port, 80, "origin without port takes the LB's");
        assert_eq!(members[1].0.port, 8080, "origin port wins");
        let (_, _, ring_y) = &d.vips[1];
        assert_eq!(ring_y.port, 8443);
        // b1 disabled and b2 weight 0: both present with weight 0 (drained).
        assert!(d.rings[ring_y].iter().all(|(_, w)| *w == 0.0));
    }

    #[test]
    fn disabled_pool_is_skipped_and_disabled_lb_is_absent() {
        let pools = POOLS.replacen("name = \"a\"", "name = \"a\"\nenabled = false", 1);
        let lbs = LBS.replacen("port = 443", "port = 443\nenabled = false", 1);
        let d = desired(&cfg(&pools, &lbs), &HealthTable::default());
        assert_eq!(d.vips.len(), 1);
        assert_eq!(d.vips[0].2.pool, "b");
    }

    #[test]
    fn drained_ring_has_no_origins() {
        let d = desired(&cfg(POOLS, LBS), &HealthTable::default());
        let a = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        let ring_y = &d.vips[1].2;
        assert!(ring_slots(&d.rings[ring_y], &a.origins)
            .iter()
            .all(|s| *s == NO_ORIGIN));
    }

    #[test]
    fn fresh_assignment_is_dense_and_unique() {
        let d = desired(&cfg(POOLS, LBS), &HealthTable::default());
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
        let d = desired(&c, &HealthTable::default());
        let first = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        // Simulate the maps after applying `first`.
        let mut cur = Current::default();
        for (_, key, ring) in &d.vips {
            cur.vips.insert(
                *key,
                VipMeta {
                    vip_id: first.vips[key],
                    ring_id: first.rings[ring],
                    flags: 0,
                    _pad: 0,
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
        let d = desired(&c, &HealthTable::default());
        let mut cur = Current::default();
        let other = vip_key(Ipv4Addr::new(10, 9, 9, 9), 80); // a VIP being removed, on ring 1
        cur.vips.insert(
            other,
            VipMeta {
                vip_id: 7,
                ring_id: 1,
                flags: 0,
                _pad: 0,
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
mod move_tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn vip_moving_to_another_pool_gets_another_ring() {
        let base = "[dataplane]\ninterfaces=[\"eth0\"]\nsnat_address=\"10.0.0.1\"\n[[pools]]\nname=\"a\"\norigins=[{name=\"a1\",address=\"10.1.0.1\"}]\n[[pools]]\nname=\"b\"\norigins=[{name=\"b1\",address=\"10.2.0.1\"}]\n[[load_balancers]]\nname=\"x\"\naddress=\"10.0.0.10\"\nport=80\n";
        let c1 = Config::parse(&format!("{base}default_pools=[\"a\"]\n"), Path::new("t")).unwrap();
        let c2 = Config::parse(&format!("{base}default_pools=[\"b\"]\n"), Path::new("t")).unwrap();
        let d1 = desired(&c1, &HealthTable::default());
        let a1 = assign(&d1, &Current::default(), &Assignment::default()).unwrap();
        let mut cur = Current::default();
        let (_, key, ring) = &d1.vips[0];
        cur.vips.insert(
            *key,
            VipMeta {
                vip_id: a1.vips[key],
                ring_id: a1.rings[ring],
                flags: 0,
                _pad: 0,
            },
        );
        let d2 = desired(&c2, &HealthTable::default());
        let a2 = assign(&d2, &cur, &a1).unwrap();
        let (_, _, ring2) = &d2.vips[0];
        assert_ne!(
            a2.rings[ring2], a1.rings[ring],
            "the live ring of x must not be rewritten in place"
        );
    }
}

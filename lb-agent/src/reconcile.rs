//! The reconciler: the one writer of BPF maps. It takes the `Plan` for a config and health
//! table (`plan::plan`), gives ids to its VIPs, rings and origins, and writes only what
//! differs from what the maps hold, through a `MapWriter` (the aya maps, or `MemMaps` in
//! tests).
//!
//! Write order keeps every packet's view consistent: origins first, then ring slots, then the
//! VIP entries that point at rings (a VIP moves to another ring with one write), and only
//! then the removal of stale VIPs and origins. Ids are stable: a VIP, ring or origin that
//! already exists in the maps (from this agent or a previous one) keeps its id, so a restart
//! or reload rewrites nothing that did not change. A ring's Maglev table is rebuilt only when
//! its members, weights or member ids changed since the last apply.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{
    addr16, GeoPlanKey, GeoValue, OriginMeta, RingMeta, Settings, VipKey, VipMeta, IPPROTO_TCP,
    MAX_LC_MEMBERS, MAX_ORIGINS, MAX_RINGS, MAX_VIPS, NO_ORIGIN, NO_RING, ORIGIN_F_PRESENT,
    POOL_SEL_M, RING_SLOTS, RING_STEER_HASH, RING_STEER_LEAST_CONN, RING_STEER_RANDOM,
    VIP_F_RANDOM, WEIGHT_SCALE,
};

pub use crate::plan::{vip_key, OriginKey, Plan, RingKey, RingPlan, VipPlan};
use crate::{
    config::{Config, Geo, OriginSteering},
    dataplane::Maps,
    health::{HealthMark, HealthTable},
    maglev, plan,
    writer::{GeoPrefix, MapWriter, WriteError},
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Map(#[from] WriteError),
    #[error("out of {what} ids: {needed} needed, {max} available")]
    Capacity {
        what: &'static str,
        needed: usize,
        max: u32,
    },
}

type Result<T> = std::result::Result<T, ReconcileError>;

/// The marker entry (port 0) that tells the data path an address belongs to some VIP.
pub fn vip_addr_marker(addr: [u8; 16]) -> VipKey {
    VipKey {
        addr,
        port: 0,
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// The client locations the geo trie holds (distinct values): the host fact `plan` needs.
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

/// Smallest id below `max` in neither set.
/// The lowest id below `max` neither `used` nor `taken`, at or above `*from`, which moves past
/// it. A caller that takes many ids in a row (and frees none meanwhile) starts at 0 and keeps
/// `from`: every id below it is known taken (10,000 new origins cost a scan each otherwise).
fn free_id(used: &HashSet<u32>, taken: &HashSet<u32>, max: u32, from: &mut u32) -> Option<u32> {
    let id = (*from..max).find(|i| !used.contains(i) && !taken.contains(i))?;
    *from = id + 1;
    Some(id)
}

/// Ids for everything in the plan, reusing the ids the maps already hold where the same
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
    /// `RING_META`: ring id -> steering, members, and where its slots are (size 0: not
    /// placed).
    pub ring_meta: HashMap<u32, RingMeta>,
}

/// May ring `id` serve a ring of `size` slots? Only if it has that size or none yet: a ring's
/// place and size never change while a VIP may read it (a size change takes another id, and
/// the VIP moves to it with one write).
fn fits(cur: &Current, id: u32, size: u32) -> bool {
    cur.ring_meta
        .get(&id)
        .is_none_or(|m| m.size == 0 || m.size == size)
}

/// `prev` is this reconciler's previous assignment (empty right after start): ring keys keep
/// the ids they had, so a VIP that moves to another pool moves to another ring with one write
/// instead of having its live ring rewritten under it.
pub fn assign(want: &Plan, cur: &Current, prev: &Assignment) -> Result<Assignment> {
    Ok(Assignment {
        vips: assign_vips(want, cur)?,
        rings: assign_rings(want, cur, prev)?,
        origins: assign_origins(want, cur)?,
    })
}

/// VIP ids: by key.
fn assign_vips(want: &Plan, cur: &Current) -> Result<HashMap<VipKey, u32>> {
    let mut vips = HashMap::new();
    let mut taken = HashSet::new();
    for key in want.vips.iter().map(|v| &v.key) {
        if let Some(m) = cur.vips.get(key) {
            vips.insert(*key, m.vip_id);
            taken.insert(m.vip_id);
        }
    }
    let used: HashSet<u32> = HashSet::new();
    let mut next_free = 0;
    for key in want.vips.iter().map(|v| &v.key) {
        if !vips.contains_key(key) {
            let id = free_id(&used, &taken, MAX_VIPS, &mut next_free).ok_or(
                ReconcileError::Capacity {
                    what: "VIP",
                    needed: want.vips.len(),
                    max: MAX_VIPS,
                },
            )?;
            taken.insert(id);
            vips.insert(*key, id);
        }
    }
    Ok(vips)
}

/// Ring ids: a kept VIP keeps its ring id for its (possibly new) ring key; new ring keys get
/// ids no live VIP entry points at, so no ring in use is overwritten.
fn assign_rings(want: &Plan, cur: &Current, prev: &Assignment) -> Result<HashMap<RingKey, u32>> {
    let mut rings = HashMap::new();
    let in_use: HashSet<u32> = cur
        .vips
        .iter()
        .filter(|(k, _)| k.port != 0)
        .map(|(_, m)| m.ring_id)
        .collect();
    let mut taken = HashSet::new();
    for (ring, plan) in &want.rings {
        if let Some(id) = prev.rings.get(ring).filter(|id| fits(cur, **id, plan.size)) {
            rings.insert(ring.clone(), *id);
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
        let size = want.rings.get(ring).map_or(0, |p| p.size);
        if let Some(m) = cur.vips.get(key) {
            if !rings.contains_key(ring)
                && !taken.contains(&m.ring_id)
                && fits(cur, m.ring_id, size)
            {
                rings.insert(ring.clone(), m.ring_id);
                taken.insert(m.ring_id);
            }
        }
    }
    // Rings no VIP points at directly (geo and random targets): the ring their origins say
    // they belong to in the maps.
    for (ring, plan) in want.rings.iter().filter(|_| prev.rings.is_empty()) {
        if rings.contains_key(ring) {
            continue;
        }
        let found = cur.origins.values().find(|m| {
            plan.members
                .iter()
                .any(|(k, _)| m.addr == addr16(k.addr) && m.port == k.port.to_be())
                && !taken.contains(&m.ring_id)
                && m.ring_id < MAX_RINGS
                && fits(cur, m.ring_id, plan.size)
        });
        if let Some(m) = found {
            rings.insert(ring.clone(), m.ring_id);
            taken.insert(m.ring_id);
        }
    }
    let mut next_free = 0;
    for ring in want.rings.keys() {
        if !rings.contains_key(ring) {
            let id = free_id(&in_use, &taken, MAX_RINGS, &mut next_free).ok_or(
                ReconcileError::Capacity {
                    what: "ring",
                    needed: want.rings.len(),
                    max: MAX_RINGS,
                },
            )?;
            taken.insert(id);
            rings.insert(ring.clone(), id);
        }
    }
    Ok(rings)
}

/// Origin ids: by (address, port), first match wins.
fn assign_origins(want: &Plan, cur: &Current) -> Result<HashMap<OriginKey, u32>> {
    let mut origins = HashMap::new();
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
        let addr_key = (addr16(k.addr), k.port.to_be());
        if origins.contains_key(*k) {
            continue;
        }
        if let Some(ids) = by_addr.get_mut(&addr_key) {
            if let Some(pos) = ids.iter().position(|i| !taken.contains(i)) {
                let id = ids.remove(pos);
                taken.insert(id);
                origins.insert((*k).clone(), id);
            }
        }
    }
    let mut next_free = 0;
    for k in &all {
        if !origins.contains_key(*k) {
            let id = free_id(&present, &taken, MAX_ORIGINS, &mut next_free).ok_or(
                ReconcileError::Capacity {
                    what: "origin",
                    needed: all.len(),
                    max: MAX_ORIGINS,
                },
            )?;
            taken.insert(id);
            origins.insert((*k).clone(), id);
        }
    }
    Ok(origins)
}

/// The first gap of `size` slots in `RINGS` that no range of `live` covers; the range is
/// added to `live`. None when `RING_SLOTS` has no such gap.
pub fn place(size: u32, live: &mut Vec<(u32, u32)>) -> Option<u32> {
    live.sort_unstable();
    let mut at: u32 = 0;
    for &(b, s) in live.iter() {
        if b >= at + size {
            break;
        }
        at = at.max(b + s);
    }
    (at + size <= RING_SLOTS).then(|| {
        live.push((at, size));
        at
    })
}

/// The slots of one ring: Maglev over the members with positive weight, as origin ids.
pub fn ring_slots(
    members: &[(OriginKey, f64)],
    ids: &HashMap<OriginKey, u32>,
    size: u32,
) -> Vec<u32> {
    let backends: Vec<maglev::Backend> = members
        .iter()
        .map(|(k, w)| maglev::Backend {
            key: maglev::backend_key(&std::net::SocketAddr::new(k.addr, k.port).to_string()),
            weight: *w,
        })
        .collect();
    // One id lookup per member, not per slot (65537 string-keyed lookups cost milliseconds).
    let member_ids: Vec<u32> = members.iter().map(|(k, _)| ids[k]).collect();
    maglev::build(&backends, size)
        .into_iter()
        .map(|s| s.map_or(NO_ORIGIN, |i| member_ids[i as usize]))
        .collect()
}

/// What one apply did, for logs and the benchmarks.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub slots_written: usize,
    pub origins_written: usize,
    pub origins_removed: usize,
    pub vips_written: usize,
    pub vips_removed: usize,
    /// Rings whose Maglev table was built (members, weights or ids changed).
    pub rings_rebuilt: usize,
    /// Whether the apply patched the last plan (only what changed was planned and
    /// written) rather than planning everything.
    pub patched: bool,
    /// Time spent in `plan::plan` (and syncing the geo trie).
    pub plan: Duration,
    /// Time spent computing rings (Maglev builds) and diffing them.
    pub compute: Duration,
    /// Time spent writing ring slots.
    pub ring_writes: Duration,
    pub elapsed: Duration,
}

/// What a ring's table was built from: each member's Maglev key, weight and origin id.
type RingInput = Vec<(IpAddr, u16, f64, u32)>;
/// What a `POOL_SEL` table was built from: each pool's name, weight and ring id.
type PoolSelInput = Vec<(String, f64, u32)>;

/// Owns the maps (through `M`) and what it last wrote.
pub struct Reconciler<M: MapWriter = Maps> {
    pub maps: M,
    current: Current,
    /// Ring id -> slots as last written or read.
    rings: HashMap<u32, Vec<u32>>,
    /// Ring id -> what its slots were last built from.
    ring_inputs: HashMap<u32, RingInput>,
    settings: Option<Settings>,
    /// `Settings::nh_gen` to write: bumped when links, routes or neighbours change.
    nh_gen: u32,
    /// What `LOCAL_ADDRS` holds, read on first use.
    local_addrs: Option<BTreeSet<[u8; 16]>>,
    pub assignment: Assignment,
    geo_plan: HashMap<GeoPlanKey, u32>,
    /// VIP id -> `POOL_SEL` slots, read on first use.
    pool_sel: HashMap<u32, Vec<u32>>,
    pool_sel_inputs: HashMap<u32, PoolSelInput>,
    /// What the `GEO` trie holds, read on first use.
    geo_trie: Option<HashMap<GeoPrefix, GeoValue>>,
    geo_applied: Option<Geo>,
    geo_locations: Vec<GeoValue>,
    /// The plan last written in full.
    plan: Arc<Plan>,
    /// The config and health the maps were last made to hold, so that the next apply plans
    /// and writes only what changed since (`None`: plan and write everything, as after a
    /// failed write or a `write` of someone else's plan).
    last: Option<(Config, HealthMark)>,
    /// Whether `assign` would give every origin the id it has now if the plan's keys stay
    /// the same (see `ids_are_settled`): then a patch keeps the assignment.
    settled: bool,
}

impl<M: MapWriter> Reconciler<M> {
    /// Takes over maps that may already hold state from an earlier agent.
    pub fn adopt(mut maps: M) -> Result<Self> {
        let mut current = Current::default();
        for (k, v) in maps.read_vips()? {
            // Pins of a build before `VIP_IDS` have none: established flows would take the
            // VIP hash lookup until each VIP changes.
            maps.index_vip(k, v)?;
            current.vips.insert(k, v);
        }
        for id in 0..MAX_ORIGINS {
            let m = maps.read_origin(id)?;
            if m.flags & ORIGIN_F_PRESENT != 0 {
                current.origins.insert(id, m);
            }
        }
        let settings = maps.read_settings();
        // Changes may have happened while no agent watched: the next hops the data path
        // cached under the old generation are looked up again.
        let nh_gen = settings.map_or(0, |s| s.nh_gen.wrapping_add(1));
        for id in 0..MAX_RINGS {
            current.ring_meta.insert(id, maps.read_ring_meta(id)?);
        }
        let geo_plan = maps.read_geo_plan()?.into_iter().collect();
        Ok(Self {
            maps,
            current,
            rings: HashMap::new(),
            ring_inputs: HashMap::new(),
            settings,
            nh_gen,
            local_addrs: None,
            assignment: Assignment::default(),
            geo_plan,
            pool_sel: HashMap::new(),
            pool_sel_inputs: HashMap::new(),
            geo_trie: None,
            geo_applied: None,
            geo_locations: Vec::new(),
            plan: Arc::default(),
            last: None,
            settled: false,
        })
    }

    /// The plan the maps hold (empty before the first apply). The log, the status and the
    /// traffic counters read it, with `assignment`, instead of deciding again.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    fn ring(&mut self, id: u32, base: u32, size: u32) -> Result<&mut Vec<u32>> {
        if !self.rings.contains_key(&id) {
            let slots = self.maps.read_ring(base, size)?;
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
            self.maps.write_settings(s)?;
            self.settings = Some(s);
        }
        Ok(())
    }

    /// Makes `LOCAL_ADDRS` hold `want` (the host's own addresses), writing only
    /// differences. A full map leaves some out: their traffic only costs a FIB lookup.
    pub fn sync_local_addrs(&mut self, want: &BTreeSet<[u8; 16]>) -> Result<()> {
        let have = match self.local_addrs.take() {
            Some(h) => h,
            None => self.maps.read_local_addrs()?,
        };
        let mut now = have.clone();
        for gone in have.difference(want) {
            self.maps.remove_local_addr(gone)?;
            now.remove(gone);
        }
        for new in want.difference(&have) {
            if self.maps.write_local_addr(*new).is_ok() {
                now.insert(*new);
            }
        }
        self.local_addrs = Some(now);
        Ok(())
    }

    /// Makes the maps hold exactly what `cfg` asks for under `health`: syncs the geo trie
    /// (this host's client locations), plans (`plan::plan`), then writes the plan's
    /// differences (`write`).
    ///
    /// When only pools' and load balancers' settings or origins' health changed since the
    /// last apply, only their entries are planned again and written (`apply_patch`); the
    /// maps end up the same as after a whole plan and `write`.
    pub fn apply(&mut self, cfg: &Config, health: &HealthTable) -> Result<ApplyReport> {
        let start = Instant::now();
        self.sync_geo(&cfg.geo)?;
        if let Some(mut r) = self.apply_patch(cfg, health, start)? {
            r.elapsed = start.elapsed();
            return Ok(r);
        }
        let want = plan::plan(cfg, health, &self.geo_locations);
        let planned = start.elapsed();
        let mut r = self.write(want)?;
        self.last = Some((cfg.clone(), health.mark()));
        r.plan = planned;
        r.elapsed = start.elapsed();
        Ok(r)
    }

    /// What `apply` would do, by patching the last plan (`plan::patch`) and writing only
    /// the entries of the patch; `None` when the whole plan must be made instead (see
    /// `plan::config_dirty`, `HealthTable::changed_since`).
    fn apply_patch(
        &mut self,
        cfg: &Config,
        health: &HealthTable,
        start: Instant,
    ) -> Result<Option<ApplyReport>> {
        let Some((old, mark)) = self.last.as_ref().filter(|_| self.settled) else {
            return Ok(None);
        };
        let mut dirty = plan::Dirty::default();
        if !plan::config_dirty(old, cfg, &mut dirty) {
            return Ok(None);
        }
        let config_changed = !dirty.pools.is_empty() || !dirty.load_balancers.is_empty();
        let Some(changed) = health.changed_since(*mark) else {
            return Ok(None);
        };
        for c in changed {
            let Some(&i) = cfg.names.pools.get(&c.target.pool) else {
                continue;
            };
            if c.state {
                dirty.pool(cfg, i);
            } else if c.rtt {
                dirty.pool_rtt(cfg, i);
            }
        }
        let Some(patch) = plan::patch(&self.plan, cfg, health, &self.geo_locations, &dirty) else {
            return Ok(None);
        };
        let planned = start.elapsed();
        // Until the patch is written, nothing is known of what the maps hold.
        let (mut old, _) = self.last.take().expect("checked above");
        let mut r = self.write_patch(&patch)?;
        r.plan = planned;
        r.patched = true;
        if config_changed {
            for &i in &dirty.pools {
                old.pools[i].clone_from(&cfg.pools[i]);
            }
            for &i in &dirty.load_balancers {
                old.load_balancers[i].clone_from(&cfg.load_balancers[i]);
            }
        }
        debug_assert!(old == *cfg, "the kept config is the one applied");
        let plan = Arc::make_mut(&mut self.plan);
        plan.apply_patch(patch);
        // As `write` stamps a whole plan: links may have changed since the last apply.
        plan.settings.nh_gen = self.nh_gen;
        self.last = Some((old, health.mark()));
        Ok(Some(r))
    }

    /// Writes a patch of the plan in the maps (`apply_patch`), in the order and with the
    /// rules of `write`: the origins of its rings, its rings, its VIPs' geo plans and pool
    /// tables, its VIPs. The assignment stands (the patch changes no key), and what the
    /// patch does not name is already as `write` would leave it.
    fn write_patch(&mut self, patch: &plan::Patch) -> Result<ApplyReport> {
        let start = Instant::now();
        let mut r = ApplyReport::default();
        let a = std::mem::take(&mut self.assignment);
        let result = self.write_patch_with(patch, &a, &mut r);
        self.assignment = a;
        result?;
        r.elapsed = start.elapsed();
        Ok(r)
    }

    fn write_patch_with(
        &mut self,
        patch: &plan::Patch,
        a: &Assignment,
        r: &mut ApplyReport,
    ) -> Result<()> {
        let mut origins = HashMap::new();
        for (key, ring) in &patch.rings {
            for (k, w) in &ring.members {
                origins.insert(a.origins[k], origin_meta(k, a.rings[key], *w));
            }
        }
        self.write_origins(&origins, r)?;
        for (key, ring) in &patch.rings {
            let id = a.rings[key];
            let base = self
                .placed(id, ring.size)
                .expect("a patched ring keeps its place: its size follows the config");
            self.write_ring(id, base, ring, &a.origins, r)?;
        }
        let vips: Vec<&VipPlan> = patch
            .load_balancers
            .iter()
            .filter_map(|l| l.vip.as_ref().map(|(_, v)| v))
            .collect();
        let mut geo = HashMap::new();
        for v in &vips {
            add_geo_plans(v, a, &mut geo);
        }
        self.write_geo_plans(&geo)?;
        for v in vips.iter().filter(|v| v.flags & VIP_F_RANDOM != 0) {
            self.write_pool_sel(v, a)?;
        }
        let entries: HashMap<VipKey, VipMeta> =
            vips.iter().map(|v| (v.key, vip_meta(v, a))).collect();
        self.write_vips(&entries, r)?;
        // Geo plan entries of these VIPs that their plans no longer name.
        let ids: HashSet<u32> = vips.iter().map(|v| a.vips[&v.key]).collect();
        let stale: Vec<GeoPlanKey> = self
            .geo_plan
            .keys()
            .filter(|k| ids.contains(&k.vip_id) && !geo.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.maps.remove_geo_plan(&k)?;
            self.geo_plan.remove(&k);
        }
        Ok(())
    }

    /// Makes the maps hold `want`, writing only differences; on success `want` becomes
    /// `plan()`. The steps run in the module's write order: settings, origins, rings, geo
    /// plans and pool tables, VIPs, then the removal of what is stale.
    pub fn write(&mut self, mut want: Plan) -> Result<ApplyReport> {
        let start = Instant::now();
        // `want` need not be the plan of any config: the next apply plans everything.
        self.last = None;
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
            self.maps.write_settings(want.settings)?;
            self.settings = Some(want.settings);
        }
        let wanted_origins = origin_metas(&want, &a);
        self.write_origins(&wanted_origins, &mut r)?;
        self.write_rings(&want, &a, &mut r)?;
        let wanted_plan = geo_plans(&want, &a);
        self.write_geo_plans(&wanted_plan)?;
        self.write_pool_sels(&want, &a)?;
        let wanted_vips = vip_entries(&want, &a);
        self.write_vips(&wanted_vips, &mut r)?;
        self.remove_stale(&wanted_vips, &wanted_plan, &wanted_origins, &mut r)?;

        self.settled = ids_are_settled(&want, &a);
        self.assignment = a;
        self.plan = Arc::new(want);
        r.elapsed = start.elapsed();
        Ok(r)
    }

    /// Step 1: origins (new ones start with zeroed counters), with their ring and weight.
    fn write_origins(
        &mut self,
        want: &HashMap<u32, OriginMeta>,
        r: &mut ApplyReport,
    ) -> Result<()> {
        for (id, meta) in want {
            let cur = self.current.origins.get(id);
            if cur != Some(meta) {
                // A new origin, or another one than before under this id: fresh counters.
                if cur.is_none_or(|c| c.addr != meta.addr || c.port != meta.port) {
                    self.maps.reset_origin_counters(*id)?;
                }
                self.maps.write_origin(*id, *meta)?;
                self.current.origins.insert(*id, *meta);
                r.origins_written += 1;
            }
        }
        Ok(())
    }

    /// Step 2: ring slots that changed (rings whose inputs changed), and each ring's
    /// steering.
    /// Where ring `id`'s slots are, if it has a place of `size` slots already.
    fn placed(&self, id: u32, size: u32) -> Option<u32> {
        self.current
            .ring_meta
            .get(&id)
            .filter(|m| m.size == size && m.size != 0)
            .map(|m| m.base)
    }

    /// A ring without a place of its size gets one (`place`), its slots are written there,
    /// then its `RING_META` entry points at them.
    fn write_rings(&mut self, want: &Plan, a: &Assignment, r: &mut ApplyReport) -> Result<()> {
        let mut live = self.live_ranges(want, a);
        for (key, plan) in &want.rings {
            let id = a.rings[key];
            let base = match self.placed(id, plan.size) {
                Some(b) => b,
                None => {
                    let b = place(plan.size, &mut live).ok_or(ReconcileError::Capacity {
                        what: "ring slot",
                        needed: want.rings.values().map(|p| p.size as usize).sum(),
                        max: RING_SLOTS,
                    })?;
                    // What the new place holds is another ring's leftovers: read it afresh.
                    self.rings.remove(&id);
                    self.ring_inputs.remove(&id);
                    b
                }
            };
            self.write_ring(id, base, plan, &a.origins, r)?;
        }
        Ok(())
    }

    /// One ring placed at `base`: its slots (`write_ring_slots`), then its `RING_META`.
    fn write_ring(
        &mut self,
        id: u32,
        base: u32,
        plan: &RingPlan,
        origins: &HashMap<OriginKey, u32>,
        r: &mut ApplyReport,
    ) -> Result<()> {
        self.write_ring_slots(id, base, plan, origins, r)?;
        let mut meta = ring_meta(plan, origins);
        meta.base = base;
        meta.size = plan.size;
        if self.current.ring_meta.get(&id) != Some(&meta) {
            self.maps.write_ring_meta(id, meta)?;
            self.current.ring_meta.insert(id, meta);
        }
        Ok(())
    }

    /// The `RINGS` ranges nothing may be placed over: those of rings the maps' VIPs, geo
    /// plans and pool selections point at now, and of the planned rings already placed at
    /// their size.
    fn live_ranges(&self, want: &Plan, a: &Assignment) -> Vec<(u32, u32)> {
        let mut ids: HashSet<u32> = self
            .current
            .vips
            .iter()
            .filter(|(k, _)| k.port != 0)
            .map(|(_, m)| m.ring_id)
            .chain(self.geo_plan.values().copied())
            .chain(self.pool_sel.values().flatten().copied())
            .collect();
        for (key, plan) in &want.rings {
            let id = a.rings[key];
            if self
                .current
                .ring_meta
                .get(&id)
                .is_some_and(|m| m.size == plan.size)
            {
                ids.insert(id);
            }
        }
        ids.iter()
            .filter_map(|id| self.current.ring_meta.get(id))
            .filter(|m| m.size != 0)
            .map(|m| (m.base, m.size))
            .collect()
    }

    /// Rebuilds ring `id`'s Maglev table when its members, weights or member ids changed,
    /// and writes the slots that differ.
    fn write_ring_slots(
        &mut self,
        id: u32,
        base: u32,
        plan: &RingPlan,
        origins: &HashMap<OriginKey, u32>,
        r: &mut ApplyReport,
    ) -> Result<()> {
        let input: RingInput = plan
            .members
            .iter()
            .map(|(k, w)| (k.addr, k.port, *w, origins[k]))
            .collect();
        if self.ring_inputs.get(&id) == Some(&input) {
            return Ok(());
        }
        let t = Instant::now();
        let slots = ring_slots(&plan.members, origins, plan.size);
        r.compute += t.elapsed();
        r.rings_rebuilt += 1;
        let t = Instant::now();
        let old = std::mem::take(self.ring(id, base, plan.size)?);
        for (i, (new, old)) in slots.iter().zip(old.iter()).enumerate() {
            if new != old {
                #[expect(clippy::cast_possible_truncation, reason = "i < ring size")]
                let slot = base + i as u32;
                if let Err(e) = self.maps.write_ring_slot(slot, *new) {
                    // What the ring holds is unknown now: read it again next time.
                    self.rings.remove(&id);
                    self.ring_inputs.remove(&id);
                    return Err(e.into());
                }
                r.slots_written += 1;
            }
        }
        self.rings.insert(id, slots);
        self.ring_inputs.insert(id, input);
        r.ring_writes += t.elapsed();
        Ok(())
    }

    /// Step 3a: geo plan entries that changed, before the VIPs that use them.
    fn write_geo_plans(&mut self, want: &HashMap<GeoPlanKey, u32>) -> Result<()> {
        for (k, ring) in want {
            if self.geo_plan.get(k) != Some(ring) {
                self.maps.write_geo_plan(*k, *ring)?;
                self.geo_plan.insert(*k, *ring);
            }
        }
        Ok(())
    }

    /// Step 3b: the `POOL_SEL` tables of `random` VIPs whose pools, weights or ring ids
    /// changed, before the VIPs that use them.
    fn write_pool_sels(&mut self, want: &Plan, a: &Assignment) -> Result<()> {
        for v in want.vips.iter().filter(|v| v.flags & VIP_F_RANDOM != 0) {
            self.write_pool_sel(v, a)?;
        }
        Ok(())
    }

    /// One `random` VIP's `POOL_SEL` table, if its pools, weights or ring ids changed.
    fn write_pool_sel(&mut self, v: &VipPlan, a: &Assignment) -> Result<()> {
        let vip_id = a.vips[&v.key];
        let input: PoolSelInput = v
            .pool_sel
            .iter()
            .map(|(k, w)| (k.pool.clone(), *w, a.rings[k]))
            .collect();
        if self.pool_sel_inputs.get(&vip_id) == Some(&input) {
            return Ok(());
        }
        let slots = pool_sel_slots(&v.pool_sel, &a.rings);
        let old = std::mem::take(self.pool_sel(vip_id)?);
        for (i, (new, old)) in slots.iter().zip(old.iter()).enumerate() {
            if new != old {
                #[expect(clippy::cast_possible_truncation, reason = "i < POOL_SEL_M")]
                let slot = vip_id * POOL_SEL_M + i as u32;
                if let Err(e) = self.maps.write_pool_sel_slot(slot, *new) {
                    self.pool_sel.remove(&vip_id);
                    self.pool_sel_inputs.remove(&vip_id);
                    return Err(e.into());
                }
            }
        }
        self.pool_sel.insert(vip_id, slots);
        self.pool_sel_inputs.insert(vip_id, input);
        Ok(())
    }

    /// Step 4: VIPs (and address markers) pointing at their rings; a new VIP starts with
    /// zeroed counters.
    fn write_vips(&mut self, want: &HashMap<VipKey, VipMeta>, r: &mut ApplyReport) -> Result<()> {
        for (key, meta) in want {
            if self.current.vips.get(key) != Some(meta) {
                if !self.current.vips.contains_key(key) && key.port != 0 {
                    self.maps.reset_vip_counters(meta.vip_id)?;
                }
                self.maps.write_vip(*key, *meta)?;
                self.current.vips.insert(*key, *meta);
                r.vips_written += 1;
            }
        }
        Ok(())
    }

    /// Step 5: removals, VIPs first (nothing points at stale plans, rings or origins
    /// afterwards), then geo plan entries, then origins.
    fn remove_stale(
        &mut self,
        vips: &HashMap<VipKey, VipMeta>,
        geo_plans: &HashMap<GeoPlanKey, u32>,
        origins: &HashMap<u32, OriginMeta>,
        r: &mut ApplyReport,
    ) -> Result<()> {
        let stale: Vec<VipKey> = self
            .current
            .vips
            .keys()
            .filter(|k| !vips.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            if let Some(m) = self.current.vips.remove(&k) {
                self.maps.remove_vip(&k, &m)?;
            }
            r.vips_removed += 1;
        }
        let stale: Vec<GeoPlanKey> = self
            .geo_plan
            .keys()
            .filter(|k| !geo_plans.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.maps.remove_geo_plan(&k)?;
            self.geo_plan.remove(&k);
        }
        let stale: Vec<u32> = self
            .current
            .origins
            .keys()
            .filter(|id| !origins.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            // Established flows keep working: they carry the origin's address themselves.
            self.maps.write_origin(id, OriginMeta::default())?;
            self.current.origins.remove(&id);
            r.origins_removed += 1;
        }
        Ok(())
    }

    /// A VIP's `POOL_SEL` slots as last written or read.
    fn pool_sel(&mut self, vip_id: u32) -> Result<&mut Vec<u32>> {
        if !self.pool_sel.contains_key(&vip_id) {
            let slots = self.maps.read_pool_sel(vip_id)?;
            self.pool_sel.insert(vip_id, slots);
        }
        Ok(self.pool_sel.get_mut(&vip_id).expect("inserted above"))
    }

    /// Makes the `GEO` trie hold `geo`'s prefixes (only when they changed since the last call:
    /// a full database has ~400k of them).
    fn sync_geo(&mut self, geo: &Geo) -> Result<()> {
        if self
            .geo_applied
            .as_ref()
            .is_some_and(|g| plan::same_geo(g, geo))
        {
            return Ok(());
        }
        if self.geo_trie.is_none() {
            self.geo_trie = Some(self.maps.read_geo()?);
        }
        let cur = self.geo_trie.as_mut().expect("read above");
        let want: HashMap<GeoPrefix, GeoValue> = geo
            .merged()
            .values()
            .map(|p| {
                let k = p.key();
                ((k.prefixlen, k.addr), p.value())
            })
            .collect();
        for (k, v) in &want {
            if cur.get(k) != Some(v) {
                self.maps.write_geo(*k, *v)?;
                cur.insert(*k, *v);
            }
        }
        let stale: Vec<GeoPrefix> = cur
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.maps.remove_geo(k)?;
            cur.remove(&k);
        }
        self.geo_locations = geo_locations(geo);
        self.geo_applied = Some(geo.clone());
        Ok(())
    }
}

/// The `ORIGINS` entries `want` asks for, by origin id: each origin present, with the ring
/// it is a member of and its Maglev weight (an origin of several rings takes the last one's,
/// in ring key order).
fn origin_metas(want: &Plan, a: &Assignment) -> HashMap<u32, OriginMeta> {
    let mut place: HashMap<&OriginKey, (u32, u32)> = HashMap::new();
    for (key, plan) in &want.rings {
        for (k, w) in &plan.members {
            place.insert(k, (a.rings[key], scaled(*w)));
        }
    }
    a.origins
        .iter()
        .map(|(k, id)| {
            let (ring_id, weight) = place.get(k).copied().unwrap_or((NO_RING, 0));
            let meta = OriginMeta {
                addr: addr16(k.addr),
                port: k.port.to_be(),
                _pad: 0,
                flags: ORIGIN_F_PRESENT,
                ring_id,
                weight,
            };
            (*id, meta)
        })
        .collect()
}

/// The `ORIGINS` entry of member `k` of ring `ring_id` with Maglev weight `w` (what
/// `origin_metas` gives it: a member key names one pool and port, so one ring).
fn origin_meta(k: &OriginKey, ring_id: u32, w: f64) -> OriginMeta {
    OriginMeta {
        addr: addr16(k.addr),
        port: k.port.to_be(),
        _pad: 0,
        flags: ORIGIN_F_PRESENT,
        ring_id,
        weight: scaled(w),
    }
}

/// Whether `assign` would give every origin of `want` the id `a` gives it, with the maps
/// holding `a` and the plan's keys unchanged. VIPs and rings keep theirs (matched by key and
/// by the previous assignment); origins are matched by address and port in `want`'s order,
/// each taking the lowest id of its address left, so two members at one address (one origin
/// in two pools or at two ports) keep theirs only if that order gives them rising ids. If it
/// does not, the next apply is a whole one, which settles them.
fn ids_are_settled(want: &Plan, a: &Assignment) -> bool {
    let mut last: HashMap<(IpAddr, u16), u32> = HashMap::new();
    for (k, _) in want.rings.values().flat_map(|r| &r.members) {
        let Some(&id) = a.origins.get(k) else {
            return false;
        };
        if let Some(prev) = last.insert((k.addr, k.port), id) {
            if prev >= id {
                return false;
            }
        }
    }
    true
}

/// The `GEO_PLAN` entries `want` asks for: (VIP id, client location) -> ring id.
fn geo_plans(want: &Plan, a: &Assignment) -> HashMap<GeoPlanKey, u32> {
    let mut out = HashMap::new();
    for v in &want.vips {
        add_geo_plans(v, a, &mut out);
    }
    out
}

/// VIP `v`'s `GEO_PLAN` entries.
fn add_geo_plans(v: &VipPlan, a: &Assignment, out: &mut HashMap<GeoPlanKey, u32>) {
    for (geo_id, ring) in &v.geo {
        let k = GeoPlanKey {
            vip_id: a.vips[&v.key],
            geo_id: *geo_id,
        };
        out.insert(k, a.rings[ring]);
    }
}

/// The `VIPS` entries `want` asks for: each VIP pointing at its ring, and one address
/// marker (`vip_addr_marker`, ids `u32::MAX`) per VIP address.
fn vip_entries(want: &Plan, a: &Assignment) -> HashMap<VipKey, VipMeta> {
    let mut out = HashMap::new();
    for v in &want.vips {
        out.insert(v.key, vip_meta(v, a));
        out.entry(vip_addr_marker(v.key.addr)).or_insert(VipMeta {
            vip_id: u32::MAX,
            ring_id: u32::MAX,
            flags: 0,
            affinity_ttl: 0,
        });
    }
    out
}

/// VIP `v`'s `VIPS` entry.
fn vip_meta(v: &VipPlan, a: &Assignment) -> VipMeta {
    VipMeta {
        vip_id: a.vips[&v.key],
        ring_id: a.rings[&v.ring],
        flags: v.flags,
        affinity_ttl: v.affinity_ttl,
    }
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
    use std::{net::Ipv4Addr, path::Path};

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
        let d = plan::plan(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
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
        let d = plan::plan(&cfg(&pools, &lbs), &HealthTable::default(), &[]);
        assert_eq!(d.vips.len(), 1);
        assert_eq!(d.vips[0].ring.pool, "b");
    }

    #[test]
    fn drained_ring_has_no_origins() {
        let d = plan::plan(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
        let a = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        let ring_y = &d.vips[1].ring;
        assert!(
            ring_slots(&d.rings[ring_y].members, &a.origins, d.rings[ring_y].size)
                .iter()
                .all(|s| *s == NO_ORIGIN)
        );
    }

    #[test]
    fn fresh_assignment_is_dense_and_unique() {
        let d = plan::plan(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
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
        let d = plan::plan(&c, &HealthTable::default(), &[]);
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
                    addr: addr16(k.addr),
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
    fn vip_entries_have_one_address_marker_per_address() {
        let d = plan::plan(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
        let a = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        let e = vip_entries(&d, &a);
        assert_eq!(e.len(), 3, "x, y and one marker for their address: {e:?}");
        let marker = e[&vip_addr_marker(d.vips[0].key.addr)];
        assert_eq!((marker.vip_id, marker.ring_id), (u32::MAX, u32::MAX));
        for v in &d.vips {
            assert_eq!(e[&v.key].vip_id, a.vips[&v.key]);
            assert_eq!(e[&v.key].ring_id, a.rings[&v.ring]);
        }
    }

    #[test]
    fn origin_entries_keep_drained_origins_present_with_weight_zero() {
        let d = plan::plan(&cfg(POOLS, LBS), &HealthTable::default(), &[]);
        let a = assign(&d, &Current::default(), &Assignment::default()).unwrap();
        let m = origin_metas(&d, &a);
        assert_eq!(m.len(), a.origins.len(), "one entry per origin id");
        let ring_y = &d.vips[1].ring;
        for (k, _) in &d.rings[ring_y].members {
            let e = m[&a.origins[k]];
            assert_eq!(e.flags, ORIGIN_F_PRESENT);
            assert_eq!((e.addr, e.port), (addr16(k.addr), k.port.to_be()));
            assert_eq!(
                (e.ring_id, e.weight),
                (a.rings[ring_y], 0),
                "drained: no weight"
            );
        }
    }

    #[test]
    fn new_ring_never_overwrites_a_ring_a_live_vip_uses() {
        // Maps hold VIP x on ring 0; the new config moves x to pool b (a new ring key).
        let c = cfg(POOLS, LBS);
        let d = plan::plan(&c, &HealthTable::default(), &[]);
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
    use lb_common::{VIP_F_AFFINITY, VIP_F_GEO};
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
        let d = plan::plan(&c, &HealthTable::default(), &locs);
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
        let d = plan::plan(&c, &HealthTable::default(), &geo_locations(&c.geo));
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
        let d = plan::plan(&c, &HealthTable::default(), &[]);
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
        let d = plan::plan(&c, &HealthTable::default(), &[]);
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
        let d1 = plan::plan(&c1, &HealthTable::default(), &[]);
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
        let d2 = plan::plan(&c2, &HealthTable::default(), &[]);
        let a2 = assign(&d2, &cur, &a1).unwrap();
        let ring2 = &d2.vips[0].ring;
        assert_ne!(
            a2.rings[ring2], a1.rings[ring],
            "the live ring of x must not be rewritten in place"
        );
    }
}

/// The reconciler against in-memory maps (`MemMaps`): no root, no kernel.
#[cfg(test)]
mod apply_tests {
    use std::{net::Ipv4Addr, path::Path, time::Duration};

    use lb_common::v4_mapped;

    use super::*;
    use crate::{
        health::{Outcome, Target},
        steering,
        writer::MemMaps,
    };

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
origins = [
  { name = "a1", address = "10.1.0.1" },
  { name = "a2", address = "10.1.0.2" },
  { name = "a3", address = "10.1.0.3" },
]

[[pools]]
name = "b"
monitor = "tcp"
origins = [{ name = "b1", address = "10.2.0.1" }, { name = "b2", address = "10.2.0.2" }]

[[load_balancers]]
name = "x"
address = "10.0.0.10"
port = 80
default_pools = ["a", "b"]
"#;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t")).expect("valid config")
    }

    /// A health table with every target of `c` up.
    fn all_up(c: &Config) -> HealthTable {
        let mut h = HealthTable::default();
        let targets = crate::health::targets(c);
        h.retain(&targets.keys().map(|t| (t.clone(), (1, 1))).collect());
        for t in targets.keys() {
            set(&mut h, t, true);
        }
        h
    }

    fn set(h: &mut HealthTable, t: &Target, up: bool) {
        h.record(
            t,
            &Outcome {
                ok: up,
                reason: String::new(),
                rtt: Some(Duration::from_millis(1)),
            },
        );
    }

    fn target(c: &Config, origin: &str) -> Target {
        crate::health::targets(c)
            .into_keys()
            .find(|t| t.origin == origin)
            .expect("monitored origin")
    }

    fn rec() -> Reconciler<MemMaps> {
        Reconciler::adopt(MemMaps::default()).expect("adopt in-memory maps")
    }

    fn key(pool: &str) -> RingKey {
        RingKey {
            pool: pool.into(),
            port: 80,
        }
    }

    fn origin_id(r: &Reconciler<MemMaps>, name: &str) -> u32 {
        r.assignment
            .origins
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, id)| *id)
            .expect("origin has an id")
    }

    /// The origin ids ring `pool` holds, and how many slots each has.
    fn ring_share(r: &Reconciler<MemMaps>, pool: &str) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for s in r.maps.ring(r.assignment.rings[&key(pool)]) {
            *out.entry(s).or_default() += 1;
        }
        out
    }

    fn vip(r: &Reconciler<MemMaps>) -> VipMeta {
        r.maps.vips[&vip_key(Ipv4Addr::new(10, 0, 0, 10), 80)]
    }

    #[test]
    fn a_pool_that_outgrows_its_ring_size_moves_to_another_ring_and_place() {
        let c = cfg(CFG);
        let mut r = rec();
        r.apply(&c, &all_up(&c)).expect("apply");
        let old_id = r.assignment.rings[&key("a")];
        let old = r.maps.ring_meta[&old_id];
        assert_eq!((old.base, old.size), (0, 4093), "ring a first: {old:?}");
        let before = r.maps.ring(old_id);
        // Eleven origins need more than 4093 slots at 400 per origin: 16381.
        let more: String = (4..=11)
            .map(|i| format!("  {{ name = \"a{i}\", address = \"10.1.0.{i}\" }},\n"))
            .collect();
        let c2 = cfg(&CFG.replace(
            "  { name = \"a3\", address = \"10.1.0.3\" },\n",
            &format!("  {{ name = \"a3\", address = \"10.1.0.3\" }},\n{more}"),
        ));
        r.apply(&c2, &all_up(&c2)).expect("apply");
        let new_id = r.assignment.rings[&key("a")];
        assert_ne!(new_id, old_id, "a size change takes another ring id");
        let m = r.maps.ring_meta[&new_id];
        assert_eq!(m.size, 16381, "{m:?}");
        assert!(
            m.base >= old.base + old.size || m.base + m.size <= old.base,
            "placed beside the old ring, which the VIP read until it moved: {m:?} {old:?}"
        );
        assert_eq!(
            r.maps.ring(old_id),
            before,
            "the old ring's slots were not written"
        );
        assert_eq!(vip(&r).ring_id, new_id, "the VIP moved to the new ring");
        assert_eq!(ring_share(&r, "a").len(), 11, "every origin has slots");
    }

    #[test]
    fn place_takes_the_first_gap_that_fits_and_refuses_when_none_does() {
        let mut live = vec![(1021, 1021), (0, 1021), (4093, 16381)];
        assert_eq!(
            place(1021, &mut live),
            Some(2042),
            "after the two first rings"
        );
        assert_eq!(
            place(1021, &mut live),
            Some(3063),
            "the gap before 4093 fits 1030"
        );
        assert_eq!(
            place(4093, &mut live),
            Some(4093 + 16381),
            "after the big ring"
        );
        let mut full = vec![(0, RING_SLOTS - 100)];
        assert_eq!(place(1021, &mut full), None, "100 slots left");
        assert_eq!(
            place(100, &mut full),
            Some(RING_SLOTS - 100),
            "exactly fits"
        );
    }

    /// The capacity the issue asks for, without root: 1000 load balancers, 1000 pools and
    /// 10,000 origins, each pool on its own ring, placed in `RING_SLOTS` without overlap.
    #[test]
    fn a_thousand_load_balancers_pools_and_ten_thousand_origins_fit() {
        let mut text =
            String::from("[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n\n");
        for p in 0..1000 {
            text.push_str(&format!("[[pools]]\nname = \"p{p}\"\norigins = [\n"));
            for o in 0..10 {
                let n = p * 10 + o;
                text.push_str(&format!(
                    "  {{ name = \"o{o}\", address = \"10.{}.{}.{}\" }},\n",
                    100 + n / 65536,
                    (n / 256) % 256,
                    n % 256
                ));
            }
            text.push_str("]\n\n");
        }
        for l in 0..1000 {
            text.push_str(&format!(
                "[[load_balancers]]\nname = \"lb{l}\"\naddress = \"10.0.{}.{}\"\nport = 80\ndefault_pools = [\"p{l}\"]\n\n",
                4 + l / 250,
                l % 250 + 1
            ));
        }
        let c = cfg(&text);
        let mut r = rec();
        let rep = r
            .apply(&c, &HealthTable::default())
            .expect("apply at full scale");
        assert_eq!(r.assignment.rings.len(), 1000);
        assert_eq!(r.assignment.origins.len(), 10_000);
        assert_eq!(
            rep.vips_written, 2000,
            "1000 VIPs and their address markers"
        );
        let mut ranges: Vec<(u32, u32)> = r
            .assignment
            .rings
            .values()
            .map(|id| (r.maps.ring_meta[id].base, r.maps.ring_meta[id].size))
            .collect();
        ranges.sort_unstable();
        assert!(
            ranges.iter().all(|(_, s)| *s == 4093),
            "10 origins: 4093 slots"
        );
        assert!(
            ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "no two rings overlap"
        );
    }

    #[test]
    fn the_first_apply_writes_every_entry_the_plan_asks_for() {
        let c = cfg(CFG);
        let mut r = rec();
        let rep = r.apply(&c, &all_up(&c)).expect("apply");
        assert_eq!(rep.origins_written, 5, "a1-a3 and b1-b2");
        assert_eq!(rep.rings_rebuilt, 2, "rings a:80 and b:80");
        assert_eq!(rep.vips_written, 2, "the VIP and its address marker");
        assert_eq!(
            vip(&r).ring_id,
            r.assignment.rings[&key("a")],
            "x uses its first healthy pool"
        );
        let a = ring_share(&r, "a");
        assert_eq!(a.len(), 3, "three origins share ring a: {a:?}");
        // A 3-origin pool gets a small ring (4093 slots): each origin holds M/3 rounded up
        // or down.
        let m = lb_common::ring_size(3) as usize;
        assert_eq!(m, 4093);
        assert!(a.values().all(|n| (m / 3..=m / 3 + 1).contains(n)), "{a:?}");
        assert_eq!(
            r.maps.counter_resets.len(),
            5 + 1,
            "fresh counters for new ids"
        );
        assert!(r
            .maps
            .settings
            .is_some_and(|s| s.snat_addr == v4_mapped([10, 0, 0, 1])));
        assert_eq!(r.plan().vips[0].ring, key("a"), "the plan is published");
    }

    #[test]
    fn a_protocol_change_removes_the_old_vip_and_writes_the_new_one() {
        let c = cfg(CFG);
        let h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let addr = Ipv4Addr::new(10, 0, 0, 10);
        let tcp = vip_key(addr, 80);
        let udp = plan::vip_key_of(addr, 80, lb_common::IPPROTO_UDP);
        let marker = vip_addr_marker(tcp.addr);
        assert!(r.maps.vips.contains_key(&tcp) && !r.maps.vips.contains_key(&udp));
        let ring = r.maps.vips[&tcp].ring_id;
        let udp_cfg = cfg(&CFG.replacen("port = 80\n", "port = 80\nprotocol = \"udp\"\n", 1));
        let rep = r.apply(&udp_cfg, &h).expect("reload as udp");
        assert!(!rep.patched, "another VIPS key: planned whole");
        assert_eq!((rep.vips_written, rep.vips_removed), (1, 1), "{rep:?}");
        assert!(!r.maps.vips.contains_key(&tcp), "the tcp entry is gone");
        assert_eq!(
            r.maps.vips[&udp].ring_id, ring,
            "the same ring, now for udp"
        );
        assert_eq!(
            r.maps.vips[&marker].vip_id,
            u32::MAX,
            "the address marker (proto tcp, port 0) stays for a udp VIP"
        );
        assert_eq!(
            rep.origins_written + rep.rings_rebuilt,
            0,
            "origins and rings stand"
        );
        // And a tcp and a udp load balancer on the same address and port: two VIPs, two
        // ids, one marker.
        let both = cfg(&format!(
            "{CFG}\n[[load_balancers]]\nname = \"x-udp\"\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"udp\"\ndefault_pools = [\"b\"]\n"
        ));
        r.apply(&both, &all_up(&both)).expect("tcp and udp");
        assert_eq!(r.maps.vips.len(), 3, "{:?}", r.maps.vips);
        assert_ne!(r.maps.vips[&tcp].vip_id, r.maps.vips[&udp].vip_id);
        assert_eq!(r.maps.vips[&udp].ring_id, r.assignment.rings[&key("b")]);
        assert_eq!(r.maps.vips[&tcp].ring_id, r.assignment.rings[&key("a")]);
    }

    #[test]
    fn ipv6_vips_origins_and_snat_addresses_are_written_natively() {
        let c = cfg(&(CFG
            .replacen(
                "snat_address = \"10.0.0.1\"",
                "snat_address = [\"10.0.0.1\", \"2001:db8:ff::/127\"]",
                1,
            )
            .replacen("\"10.2.0.1\"", "\"2001:db8:2::1\"", 1)
            .replacen("\"10.2.0.2\"", "\"2001:db8:2::2\"", 1)
            .replacen("default_pools = [\"a\", \"b\"]", "default_pools = [\"a\"]", 1)
            + "\n[[load_balancers]]\nname = \"y\"\naddress = \"2001:db8::10\"\nport = 443\norigin_port = 80\ndefault_pools = [\"b\"]\n"));
        let h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let vip6: std::net::IpAddr = "2001:db8::10".parse().expect("ip");
        let key6 = vip_key(vip6, 443);
        assert_eq!(key6.addr, lb_common::addr16(vip6));
        assert!(!lb_common::is_v4_mapped(&key6.addr));
        let meta = r.maps.vips[&key6];
        assert_eq!(meta.ring_id, r.assignment.rings[&key("b")]);
        assert_eq!(r.maps.vip_ids[&meta.vip_id].key, key6, "VIP_IDS names it");
        assert_eq!(
            r.maps.vips[&vip_addr_marker(key6.addr)].vip_id,
            u32::MAX,
            "the IPv6 address has its marker"
        );
        let origin6: Vec<[u8; 16]> = r
            .maps
            .origins
            .values()
            .filter(|m| m.ring_id == meta.ring_id)
            .map(|m| m.addr)
            .collect();
        let want: Vec<[u8; 16]> = ["2001:db8:2::1", "2001:db8:2::2"]
            .iter()
            .map(|a| a.parse::<std::net::Ipv6Addr>().expect("ip").octets())
            .collect();
        assert_eq!(origin6, want, "origins native, in id order");
        let s = r.maps.settings.expect("settings");
        assert_eq!(s.snat_addr, v4_mapped([10, 0, 0, 1]));
        assert_eq!(
            (s.snat_addr6, s.snat_count6),
            (
                "2001:db8:ff::"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("ip")
                    .octets(),
                2
            )
        );
        assert!(s.is_snat_v6(
            &"2001:db8:ff::1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets()
        ));
    }

    #[test]
    fn udp_settings_come_from_the_config() {
        let c = cfg(&CFG.replacen(
            "[dataplane]\n",
            "[dataplane]\nudp_timeout = 60\nudp_unreplied_timeout = 7\nudp_budget = 9000\n",
            1,
        ));
        let mut r = rec();
        r.apply(&c, &all_up(&c)).expect("apply");
        let s = r.maps.settings.expect("settings");
        assert_eq!(
            (s.udp_secs, s.udp_unreplied_secs, s.udp_budget),
            (60, 7, 9000)
        );
    }

    #[test]
    fn reapplying_the_same_plan_writes_nothing_and_builds_no_ring() {
        let c = cfg(CFG);
        let h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let writes = r.maps.writes;
        let rep = r.apply(&c, &h).expect("apply again");
        assert_eq!(rep.rings_rebuilt, 0);
        assert_eq!(
            rep.slots_written + rep.origins_written + rep.vips_written,
            0
        );
        assert_eq!(r.maps.writes, writes, "no map write at all");
    }

    #[test]
    fn a_health_change_rebuilds_only_its_ring_and_moves_only_its_slots() {
        let c = cfg(CFG);
        let mut h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let before = r.maps.ring(r.assignment.rings[&key("a")]);
        let ring_b = r.maps.ring(r.assignment.rings[&key("b")]);
        let a2 = origin_id(&r, "a2");
        set(&mut h, &target(&c, "a2"), false);
        let rep = r.apply(&c, &h).expect("apply");
        assert_eq!(rep.rings_rebuilt, 1, "ring b is unchanged and not rebuilt");
        assert_eq!(rep.origins_written, 1, "a2's weight");
        assert_eq!(rep.vips_written, 0, "x stays on pool a");
        assert_eq!(r.maps.origins[&a2].weight, 0, "a2 takes no new flows");
        assert_eq!(
            r.maps.origins[&a2].flags, ORIGIN_F_PRESENT,
            "but keeps its id"
        );
        let after = r.maps.ring(r.assignment.rings[&key("a")]);
        assert!(!after.contains(&a2), "a2 left ring a");
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(moved, rep.slots_written);
        let own = before.iter().filter(|s| **s == a2).count();
        assert!(
            (own..own + 100).contains(&moved),
            "a2's {own} slots moved, and few others ({moved}): Maglev's small disruption"
        );
        assert_eq!(r.maps.ring(r.assignment.rings[&key("b")]), ring_b);
        assert_eq!(origin_id(&r, "a2"), a2, "ids are stable");
    }

    #[test]
    fn a_failover_moves_the_vip_to_the_next_pool_with_one_write_and_back() {
        let c = cfg(CFG);
        let mut h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let (ring_a, ring_b) = (r.assignment.rings[&key("a")], r.assignment.rings[&key("b")]);
        let slots_a = r.maps.ring(ring_a);
        for o in ["a1", "a2", "a3"] {
            set(&mut h, &target(&c, o), false);
        }
        let writes = r.maps.writes;
        let rep = r.apply(&c, &h).expect("fail over");
        assert_eq!(vip(&r).ring_id, ring_b, "x now uses pool b");
        assert_eq!(rep.vips_written, 1, "one VIP write");
        assert_eq!(
            r.plan().load_balancers[0].choice,
            Some(("b".into(), steering::Choice::Healthy { index: 1 }))
        );
        // Ring a stays ready (all down: its enabled origins, as a fallback would use them),
        // so failing back is one write too.
        assert_eq!(r.maps.ring(ring_a), slots_a);
        assert_eq!(rep.rings_rebuilt, 0, "nothing in any ring changed");
        assert_eq!(r.maps.writes - writes, 1, "the VIP entry and nothing else");
        for o in ["a1", "a2", "a3"] {
            set(&mut h, &target(&c, o), true);
        }
        let rep = r.apply(&c, &h).expect("fail back");
        assert_eq!(vip(&r).ring_id, ring_a);
        assert_eq!(rep.vips_written, 1);
        assert_eq!(rep.slots_written, 0);
    }

    #[test]
    fn a_drain_keeps_the_origin_and_its_id_with_weight_zero() {
        let c = cfg(CFG);
        let h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let a3 = origin_id(&r, "a3");
        for drained in [
            CFG.replace(r#""10.1.0.3" }"#, r#""10.1.0.3", weight = 0.0 }"#),
            CFG.replace(r#""10.1.0.3" }"#, r#""10.1.0.3", enabled = false }"#),
        ] {
            let c2 = cfg(&drained);
            let rep = r.apply(&c2, &h).expect("drain");
            assert_eq!(origin_id(&r, "a3"), a3, "same id");
            assert_eq!(r.maps.origins[&a3].weight, 0);
            assert!(!ring_share(&r, "a").contains_key(&a3), "no slot left");
            assert!(rep.slots_written > 0 || rep.rings_rebuilt == 0);
            r.apply(&c, &h).expect("undrain");
            assert!(ring_share(&r, "a").contains_key(&a3));
        }
    }

    #[test]
    fn a_reload_that_adds_a_pool_and_moves_the_vip_keeps_every_id() {
        let c = cfg(CFG);
        let h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let before = r.assignment.clone();
        let text = format!(
            "{}\n[[pools]]\nname = \"c\"\norigins = [{{ name = \"c1\", address = \"10.3.0.1\" }}]\n",
            CFG.replace(r#"default_pools = ["a", "b"]"#, r#"default_pools = ["c", "a", "b"]"#)
        );
        let c2 = cfg(&text);
        let h2 = all_up(&c2);
        let rep = r.apply(&c2, &h2).expect("reload");
        assert_eq!(rep.rings_rebuilt, 1, "only the new ring c is built");
        assert_eq!(rep.origins_written, 1, "c1");
        for (k, id) in &before.origins {
            assert_eq!(r.assignment.origins[k], *id, "{k:?} keeps its id");
        }
        let ring_c = r.assignment.rings[&key("c")];
        assert_eq!(
            vip(&r).ring_id,
            ring_c,
            "x moved to the new ring with one write"
        );
        assert!(
            !before.rings.values().any(|id| *id == ring_c),
            "the new ring did not take a live ring's id"
        );
        // And back: pool c's origin is no longer wanted.
        let rep = r.apply(&c, &h).expect("reload back");
        assert_eq!(rep.origins_removed, 1);
        assert_eq!(vip(&r).ring_id, before.rings[&key("a")]);
    }

    #[test]
    fn a_restarted_agent_adopting_the_maps_writes_nothing() {
        let c = cfg(CFG);
        let h = all_up(&c);
        let mut r = rec();
        r.apply(&c, &h).expect("apply");
        let ids = r.assignment.clone();
        let mut maps = r.maps;
        maps.writes = 0;
        let mut r2 = Reconciler::adopt(maps).expect("adopt");
        let rep = r2.apply(&c, &h).expect("apply after restart");
        assert_eq!(r2.assignment, ids, "the same ids");
        assert_eq!(
            rep.slots_written + rep.origins_written + rep.vips_written,
            0
        );
        assert_eq!(
            r2.maps.writes, 1,
            "only the settings: a new next-hop generation after adoption"
        );
    }

    #[test]
    fn local_addresses_are_written_as_differences() {
        let mut r = rec();
        let set = |a: &[u8]| -> BTreeSet<[u8; 16]> {
            a.iter().map(|x| v4_mapped([10, 0, 0, *x])).collect()
        };
        r.sync_local_addrs(&set(&[1, 2])).expect("sync");
        assert_eq!(r.maps.local_addrs, set(&[1, 2]));
        let writes = r.maps.writes;
        r.sync_local_addrs(&set(&[2, 3])).expect("sync");
        assert_eq!(r.maps.local_addrs, set(&[2, 3]));
        assert_eq!(r.maps.writes - writes, 2, "one removal, one insert");
    }

    #[test]
    fn next_hop_generation_moves_on_changes_and_new_settings() {
        let c = cfg(CFG);
        let h = all_up(&c);
        let mut r = rec();
        r.next_hops_changed().expect("before the first apply");
        assert!(
            r.maps.settings.is_none(),
            "nothing written before the settings"
        );
        r.apply(&c, &h).expect("apply");
        let g0 = r.maps.settings.expect("settings").nh_gen;
        assert_eq!(g0, 1);
        r.next_hops_changed().expect("bump");
        assert_eq!(r.maps.settings.expect("settings").nh_gen, g0 + 1);
        r.apply(&c, &h).expect("same settings");
        assert_eq!(r.maps.settings.expect("settings").nh_gen, g0 + 1, "kept");
        let c2 = cfg(&CFG.replace("10.0.0.1\"", "10.0.0.2\""));
        r.apply(&c2, &h).expect("new SNAT address");
        let s = r.maps.settings.expect("settings");
        assert_eq!((s.nh_gen, s.snat_addr), (g0 + 2, v4_mapped([10, 0, 0, 2])));
    }
}

/// An apply that patches the last plan writes what a whole plan and write would have: two
/// reconcilers take the same random changes of health and config, one as patches, the other
/// planning everything each time, and their maps, plans and ids must stay equal.
#[cfg(test)]
mod patch_tests {
    use std::{fmt::Write as _, path::Path, time::Duration};

    use super::*;
    use crate::{
        health::{Outcome, Target},
        writer::MemMaps,
    };

    const POOLS: usize = 8;
    const ORIGINS: usize = 3;

    /// What the random steps change in the config.
    #[derive(Clone)]
    struct Knobs {
        weight: Vec<f64>,
        enabled: Vec<bool>,
        minimum: Vec<u32>,
        random_weight: f64,
        /// A structural change: load balancer 0 tries its pools in the other order.
        swapped: bool,
        /// Another structural change: load balancer 5 is a udp one (another VIPS key).
        udp: bool,
    }

    /// Pools of 3 origins (`p7` shares an address with `p0`; `p5` uses hash steering),
    /// and load balancers of every policy that reads health: failover, random, geo by
    /// country, dynamic latency, affinity, a second origin port on `p0`, and a disabled one.
    fn text(k: &Knobs) -> String {
        let mut c = String::from(
            "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n\n\
             [[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\n\n\
             [geo]\nprefixes = [{ prefix = \"10.9.0.0/16\", country = \"DE\" }, { prefix = \"10.8.0.0/16\", country = \"JP\" }]\n\n",
        );
        for p in 0..POOLS {
            let _ = write!(
                c,
                "[[pools]]\nname = \"p{p}\"\nmonitor = \"tcp\"\nminimum_origins = {}\n",
                k.minimum[p]
            );
            if p == 5 {
                c.push_str("origin_steering = { policy = \"hash\" }\n");
            }
            c.push_str("origins = [\n");
            for o in 0..ORIGINS {
                let i = p * ORIGINS + o;
                let host = if p == 7 { o } else { i };
                let _ = writeln!(
                    c,
                    "  {{ name = \"o{i}\", address = \"10.1.0.{}\", weight = {}, enabled = {} }},",
                    host + 1,
                    k.weight[i],
                    k.enabled[i]
                );
            }
            c.push_str("]\n\n");
        }
        let lbs = [
            if k.swapped {
                "default_pools = [\"p1\", \"p0\"]\nfallback_pool = \"p2\"\n"
            } else {
                "default_pools = [\"p0\", \"p1\"]\nfallback_pool = \"p2\"\n"
            },
            "default_pools = [\"p1\", \"p2\"]\nsteering_policy = \"random\"\n",
            "default_pools = [\"p3\", \"p4\"]\nsteering_policy = \"geo\"\ncountry_pools = { DE = [\"p5\", \"p6\"], JP = [\"p6\"] }\n",
            "default_pools = [\"p4\", \"p5\", \"p6\"]\nsteering_policy = \"dynamic_latency\"\n",
            "default_pools = [\"p6\", \"p7\"]\nsession_affinity = \"ip\"\n",
            "default_pools = [\"p0\", \"p3\"]\norigin_port = 8080\n",
            "default_pools = [\"p7\"]\nenabled = false\n",
        ];
        for (i, body) in lbs.iter().enumerate() {
            let _ = write!(
                c,
                "[[load_balancers]]\nname = \"lb{i}\"\naddress = \"10.0.0.{}\"\nport = 80\n{body}",
                10 + i
            );
            if i == 5 && k.udp {
                c.push_str("protocol = \"udp\"\n");
            }
            if i == 1 {
                let _ = writeln!(
                    c,
                    "random_steering = {{ pool_weights = {{ p1 = {}, p2 = 0.5 }} }}",
                    k.random_weight
                );
            }
            c.push('\n');
        }
        c
    }

    fn outcome(ok: bool, rtt_ms: u64) -> Outcome {
        Outcome {
            ok,
            reason: String::new(),
            rtt: ok.then(|| Duration::from_millis(rtt_ms)),
        }
    }

    /// Everything the maps hold.
    fn assert_same_maps(a: &MemMaps, b: &MemMaps, step: usize) {
        assert_eq!(a.settings, b.settings, "step {step}: settings");
        assert_eq!(a.vips, b.vips, "step {step}: VIPS");
        assert_eq!(a.vip_ids, b.vip_ids, "step {step}: VIP_IDS");
        assert_eq!(a.origins, b.origins, "step {step}: ORIGINS");
        assert_eq!(a.slots, b.slots, "step {step}: RINGS");
        assert_eq!(a.ring_meta, b.ring_meta, "step {step}: RING_META");
        assert_eq!(a.geo_plan, b.geo_plan, "step {step}: GEO_PLAN");
        assert_eq!(a.pool_sel, b.pool_sel, "step {step}: POOL_SEL");
        assert_eq!(a.geo, b.geo, "step {step}: GEO");
    }

    #[test]
    fn patched_applies_write_what_whole_applies_write() {
        let mut rng = fastrand::Rng::with_seed(12);
        let mut k = Knobs {
            weight: vec![1.0; POOLS * ORIGINS],
            enabled: vec![true; POOLS * ORIGINS],
            minimum: vec![1; POOLS],
            random_weight: 0.75,
            swapped: false,
            udp: false,
        };
        let mut cfg = Config::parse(&text(&k), Path::new("t")).expect("valid config");
        let targets: Vec<Target> = crate::health::targets(&cfg).into_keys().collect();
        let mut health = HealthTable::default();
        health.retain(&targets.iter().map(|t| (t.clone(), (1, 1))).collect());
        let (mut patching, mut whole) = (
            Reconciler::adopt(MemMaps::default()).expect("adopt"),
            Reconciler::adopt(MemMaps::default()).expect("adopt"),
        );
        let mut patched = 0;
        for step in 0..400 {
            match rng.u8(0..12) {
                // A target goes up or down, or only its RTT moves.
                0..=4 => {
                    let t = &targets[rng.usize(..targets.len())];
                    health.record(t, &outcome(rng.bool(), rng.u64(1..50)));
                }
                5 => {
                    let t = &targets[rng.usize(..targets.len())];
                    let up = health.get(t).is_some_and(|h| h.state.healthy());
                    health.record(t, &outcome(up, rng.u64(1..50)));
                }
                6 => {
                    let i = rng.usize(..k.weight.len());
                    k.weight[i] = [0.0, 0.25, 0.5, 1.0][rng.usize(..4)];
                }
                7 => {
                    let i = rng.usize(..k.enabled.len());
                    k.enabled[i] = !k.enabled[i];
                }
                8 => {
                    let p = rng.usize(..POOLS);
                    k.minimum[p] = rng.u32(1..=3);
                    k.random_weight = [0.0, 0.25, 0.75][rng.usize(..3)];
                }
                9 => k.swapped = !k.swapped,
                10 => k.udp = !k.udp,
                _ => {
                    patching.next_hops_changed().expect("next hops");
                    whole.next_hops_changed().expect("next hops");
                }
            }
            cfg = Config::parse(&text(&k), Path::new("t")).expect("valid config");
            let report = patching.apply(&cfg, &health).expect("patched apply");
            patched += usize::from(report.patched);
            whole.last = None;
            let full = whole.apply(&cfg, &health).expect("whole apply");
            assert!(!full.patched, "step {step}: the reference plans everything");
            assert_eq!(**patching.plan(), **whole.plan(), "step {step}: plans");
            assert_eq!(patching.assignment, whole.assignment, "step {step}: ids");
            assert_same_maps(&patching.maps, &whole.maps, step);
        }
        assert!(
            patched > 300,
            "most applies were patches ({patched} of 400)"
        );
    }

    #[test]
    fn a_health_change_patches_only_its_pool_and_users() {
        let k = Knobs {
            weight: vec![1.0; POOLS * ORIGINS],
            enabled: vec![true; POOLS * ORIGINS],
            minimum: vec![1; POOLS],
            random_weight: 0.75,
            swapped: false,
            udp: false,
        };
        let cfg = Config::parse(&text(&k), Path::new("t")).expect("valid config");
        let targets = crate::health::targets(&cfg);
        let mut health = HealthTable::default();
        health.retain(&targets.keys().map(|t| (t.clone(), (1, 1))).collect());
        for t in targets.keys() {
            health.record(t, &outcome(true, 1));
        }
        let mut r = Reconciler::adopt(MemMaps::default()).expect("adopt");
        assert!(
            !r.apply(&cfg, &health).expect("apply").patched,
            "first: whole"
        );
        let again = r.apply(&cfg, &health).expect("apply");
        assert!(again.patched, "nothing changed: an empty patch");
        assert_eq!(again.slots_written + again.origins_written, 0);
        let t = targets.keys().find(|t| t.origin == "o4").expect("o4 of p1");
        health.record(t, &outcome(false, 1));
        let down = r.apply(&cfg, &health).expect("apply");
        assert!(down.patched);
        assert_eq!(down.rings_rebuilt, 1, "p1's one ring");
        assert_eq!(down.origins_written, 1, "o4's weight");
        // Another table (a clone) has its own history: everything is planned again.
        let other = health.clone();
        assert!(!r.apply(&cfg, &other).expect("apply").patched);
    }
}

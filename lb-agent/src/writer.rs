//! The reconciler's hands on the maps: `MapWriter`, the few reads and writes it makes,
//! implemented by the aya map handles (`dataplane::Maps`) and by `MemMaps`, an in-memory
//! copy that lets the reconciler and the agent be tested without root or a kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{
    Counters, GeoPlanKey, GeoValue, OriginMeta, RingMeta, Settings, VipById, VipKey, VipMeta,
    MAX_ORIGINS, MAX_RINGS, POOL_SEL_M, RING_SLOTS,
};

use crate::dataplane::Maps;

/// A map read or write that failed. The writer owns it, so that the reconciler (which wraps
/// it in `ReconcileError::Map`) depends on the writer and not the other way round.
#[derive(Debug, thiserror::Error)]
#[error("writing map {map}: {reason}")]
pub struct WriteError {
    pub map: &'static str,
    pub reason: String,
}

type Result<T> = std::result::Result<T, WriteError>;

/// A geo trie key: prefix length and address (IPv4-mapped).
pub type GeoPrefix = (u32, [u8; 16]);

/// What the reconciler reads (once, when it adopts the maps or first touches a table) and
/// writes. Slots are absolute indexes (`RingMeta::base + i`, `vip_id * POOL_SEL_M + i`).
pub trait MapWriter {
    fn read_vips(&self) -> Result<Vec<(VipKey, VipMeta)>>;
    fn read_origin(&self, id: u32) -> Result<OriginMeta>;
    fn read_settings(&self) -> Option<Settings>;
    fn read_ring_meta(&self, id: u32) -> Result<RingMeta>;
    fn read_geo_plan(&self) -> Result<Vec<(GeoPlanKey, u32)>>;
    /// `size` slots of `RINGS` from `base` (one ring's).
    fn read_ring(&self, base: u32, size: u32) -> Result<Vec<u32>>;
    /// The `POOL_SEL_M` slots of VIP `vip_id`.
    fn read_pool_sel(&self, vip_id: u32) -> Result<Vec<u32>>;
    fn read_geo(&self) -> Result<HashMap<GeoPrefix, GeoValue>>;
    fn read_local_addrs(&self) -> Result<BTreeSet<[u8; 16]>>;

    fn write_settings(&mut self, s: Settings) -> Result<()>;
    fn write_origin(&mut self, id: u32, m: OriginMeta) -> Result<()>;
    /// Zeroes an origin id's counters (`ORIGIN_STATS`, `ORIGIN_FLOWS`): a new origin.
    fn reset_origin_counters(&mut self, id: u32) -> Result<()>;
    fn write_ring_slot(&mut self, slot: u32, origin: u32) -> Result<()>;
    fn write_ring_meta(&mut self, id: u32, m: RingMeta) -> Result<()>;
    fn write_geo_plan(&mut self, k: GeoPlanKey, ring: u32) -> Result<()>;
    fn remove_geo_plan(&mut self, k: &GeoPlanKey) -> Result<()>;
    fn write_pool_sel_slot(&mut self, slot: u32, ring: u32) -> Result<()>;
    /// Zeroes a VIP id's counters (`VIP_STATS`): a new VIP.
    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<()>;
    /// Writes `VIPS[k] = m`, and for a VIP (not an address marker) its `VIP_IDS` entry.
    fn write_vip(&mut self, k: VipKey, m: VipMeta) -> Result<()>;
    /// Writes VIP `k`'s `VIP_IDS` entry alone (pins adopted from a build without it).
    fn index_vip(&mut self, k: VipKey, m: VipMeta) -> Result<()>;
    /// Removes `VIPS[k]` (whose value is `m`), and `VIP_IDS[m.vip_id]` if it still names `k`.
    fn remove_vip(&mut self, k: &VipKey, m: &VipMeta) -> Result<()>;
    fn write_geo(&mut self, k: GeoPrefix, v: GeoValue) -> Result<()>;
    fn remove_geo(&mut self, k: GeoPrefix) -> Result<()>;
    /// Fails when the map is full (the caller leaves that address out).
    fn write_local_addr(&mut self, a: [u8; 16]) -> Result<()>;
    fn remove_local_addr(&mut self, a: &[u8; 16]) -> Result<()>;
}

fn werr(map: &'static str) -> impl Fn(aya::maps::MapError) -> WriteError {
    move |e| WriteError {
        map,
        reason: e.to_string(),
    }
}

/// All-zero per-CPU counters, to reset the stats slot of a newly assigned id.
fn zero_counters(map: &'static str) -> Result<aya::maps::PerCpuValues<Counters>> {
    let err = |reason: String| WriteError { map, reason };
    let n = aya::util::nr_cpus().map_err(|(_, e)| err(e.to_string()))?;
    aya::maps::PerCpuValues::try_from(vec![Counters::default(); n]).map_err(|e| err(e.to_string()))
}

impl MapWriter for Maps {
    fn read_vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        self.vips.iter().map(|i| i.map_err(werr("VIPS"))).collect()
    }

    fn read_origin(&self, id: u32) -> Result<OriginMeta> {
        self.origins.get(&id, 0).map_err(werr("ORIGINS"))
    }

    fn read_settings(&self) -> Option<Settings> {
        self.settings.get(&0, 0).ok()
    }

    fn read_ring_meta(&self, id: u32) -> Result<RingMeta> {
        self.ring_meta.get(&id, 0).map_err(werr("RING_META"))
    }

    fn read_geo_plan(&self) -> Result<Vec<(GeoPlanKey, u32)>> {
        self.geo_plan
            .iter()
            .map(|i| i.map_err(werr("GEO_PLAN")))
            .collect()
    }

    fn read_ring(&self, base: u32, size: u32) -> Result<Vec<u32>> {
        match &self.rings_mem {
            Some(mem) => Ok((0..size).map(|s| mem.get(base + s)).collect()),
            None => (0..size)
                .map(|s| self.rings.get(&(base + s), 0).map_err(werr("RINGS")))
                .collect(),
        }
    }

    fn read_pool_sel(&self, vip_id: u32) -> Result<Vec<u32>> {
        let base = vip_id * POOL_SEL_M;
        (0..POOL_SEL_M)
            .map(|s| self.pool_sel.get(&(base + s), 0).map_err(werr("POOL_SEL")))
            .collect()
    }

    fn read_geo(&self) -> Result<HashMap<GeoPrefix, GeoValue>> {
        let mut out = HashMap::new();
        for item in self.geo.iter() {
            let (k, v) = item.map_err(werr("GEO"))?;
            out.insert((k.prefix_len(), k.data()), v);
        }
        Ok(out)
    }

    fn read_local_addrs(&self) -> Result<BTreeSet<[u8; 16]>> {
        self.local_addrs
            .keys()
            .collect::<std::result::Result<BTreeSet<_>, _>>()
            .map_err(werr("LOCAL_ADDRS"))
    }

    fn write_settings(&mut self, s: Settings) -> Result<()> {
        self.settings.set(0, s, 0).map_err(werr("SETTINGS"))
    }

    fn write_origin(&mut self, id: u32, m: OriginMeta) -> Result<()> {
        self.origins.set(id, m, 0).map_err(werr("ORIGINS"))
    }

    fn reset_origin_counters(&mut self, id: u32) -> Result<()> {
        let zero = zero_counters("ORIGIN_STATS")?;
        self.origin_stats
            .set(id, zero, 0)
            .map_err(werr("ORIGIN_STATS"))?;
        self.origin_flows
            .set(id, 0, 0)
            .map_err(werr("ORIGIN_FLOWS"))
    }

    fn write_ring_slot(&mut self, slot: u32, origin: u32) -> Result<()> {
        match &self.rings_mem {
            Some(mem) => {
                mem.set(slot, origin);
                Ok(())
            }
            None => self.rings.set(slot, origin, 0).map_err(werr("RINGS")),
        }
    }

    fn write_ring_meta(&mut self, id: u32, m: RingMeta) -> Result<()> {
        self.ring_meta.set(id, m, 0).map_err(werr("RING_META"))
    }

    fn write_geo_plan(&mut self, k: GeoPlanKey, ring: u32) -> Result<()> {
        self.geo_plan.insert(k, ring, 0).map_err(werr("GEO_PLAN"))
    }

    fn remove_geo_plan(&mut self, k: &GeoPlanKey) -> Result<()> {
        self.geo_plan.remove(k).map_err(werr("GEO_PLAN"))
    }

    fn write_pool_sel_slot(&mut self, slot: u32, ring: u32) -> Result<()> {
        self.pool_sel.set(slot, ring, 0).map_err(werr("POOL_SEL"))
    }

    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<()> {
        let zero = zero_counters("VIP_STATS")?;
        self.vip_stats
            .set(vip_id, zero, 0)
            .map_err(werr("VIP_STATS"))
    }

    fn write_vip(&mut self, k: VipKey, m: VipMeta) -> Result<()> {
        // Index first: an established flow's packet that finds the index entry before the
        // VIPS entry exists takes the same decision the VIPS entry will give.
        self.index_vip(k, m)?;
        self.vips.insert(k, m, 0).map_err(werr("VIPS"))
    }

    fn index_vip(&mut self, k: VipKey, m: VipMeta) -> Result<()> {
        if k.port == 0 {
            return Ok(());
        }
        self.vip_ids
            .set(m.vip_id, VipById { key: k, meta: m }, 0)
            .map_err(werr("VIP_IDS"))
    }

    fn remove_vip(&mut self, k: &VipKey, m: &VipMeta) -> Result<()> {
        self.vips.remove(k).map_err(werr("VIPS"))?;
        if k.port != 0 && self.vip_ids.get(&m.vip_id, 0).is_ok_and(|e| e.key == *k) {
            self.vip_ids
                .set(m.vip_id, VipById::default(), 0)
                .map_err(werr("VIP_IDS"))?;
        }
        Ok(())
    }

    fn write_geo(&mut self, k: GeoPrefix, v: GeoValue) -> Result<()> {
        let key = aya::maps::lpm_trie::Key::new(k.0, k.1);
        self.geo.insert(&key, v, 0).map_err(werr("GEO"))
    }

    fn remove_geo(&mut self, k: GeoPrefix) -> Result<()> {
        let key = aya::maps::lpm_trie::Key::new(k.0, k.1);
        self.geo.remove(&key).map_err(werr("GEO"))
    }

    fn write_local_addr(&mut self, a: [u8; 16]) -> Result<()> {
        self.local_addrs
            .insert(a, 1, 0)
            .map_err(werr("LOCAL_ADDRS"))
    }

    fn remove_local_addr(&mut self, a: &[u8; 16]) -> Result<()> {
        self.local_addrs.remove(a).map_err(werr("LOCAL_ADDRS"))
    }
}

/// The maps the reconciler writes, in memory, as the kernel would hold them: arrays read
/// as zeros until written, hashes empty. `writes` counts every write and removal, and
/// `counter_resets` names the ids whose counters were zeroed, so tests can check that an
/// apply wrote only what changed.
#[derive(Debug, Clone, Default)]
pub struct MemMaps {
    pub settings: Option<Settings>,
    pub vips: HashMap<VipKey, VipMeta>,
    /// `VIP_IDS`: VIP id -> its entry (absent: all zero).
    pub vip_ids: BTreeMap<u32, VipById>,
    pub origins: BTreeMap<u32, OriginMeta>,
    /// `RINGS`: slot -> origin id (absent: zero).
    pub slots: HashMap<u32, u32>,
    pub ring_meta: HashMap<u32, RingMeta>,
    pub geo_plan: HashMap<GeoPlanKey, u32>,
    /// VIP id -> its `POOL_SEL_M` slots (absent: all zero).
    pub pool_sel: HashMap<u32, Vec<u32>>,
    pub geo: HashMap<GeoPrefix, GeoValue>,
    pub local_addrs: BTreeSet<[u8; 16]>,
    pub writes: usize,
    /// `("ORIGIN", id)` or `("VIP", id)`, in order.
    pub counter_resets: Vec<(&'static str, u32)>,
}

impl MemMaps {
    /// The slots of ring `ring_id`, where its `RING_META` entry places them (none when it
    /// has no place yet).
    pub fn ring(&self, ring_id: u32) -> Vec<u32> {
        let m = self.ring_meta.get(&ring_id).copied().unwrap_or_default();
        self.slots_at(m.base, m.size)
    }

    fn slots_at(&self, base: u32, size: u32) -> Vec<u32> {
        (base..base + size)
            .map(|s| self.slots.get(&s).copied().unwrap_or(0))
            .collect()
    }
}

fn split(slot: u32, m: u32) -> (u32, usize) {
    (slot / m, (slot % m) as usize)
}

impl MapWriter for MemMaps {
    fn read_vips(&self) -> Result<Vec<(VipKey, VipMeta)>> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn read_origin(&self, id: u32) -> Result<OriginMeta> {
        if id >= MAX_ORIGINS {
            return Err(WriteError {
                map: "ORIGINS",
                reason: format!("index {id} out of bounds"),
            });
        }
        Ok(self.origins.get(&id).copied().unwrap_or_default())
    }

    fn read_settings(&self) -> Option<Settings> {
        self.settings
    }

    fn read_ring_meta(&self, id: u32) -> Result<RingMeta> {
        if id >= MAX_RINGS {
            return Err(WriteError {
                map: "RING_META",
                reason: format!("index {id} out of bounds"),
            });
        }
        Ok(self.ring_meta.get(&id).copied().unwrap_or_default())
    }

    fn read_geo_plan(&self) -> Result<Vec<(GeoPlanKey, u32)>> {
        Ok(self.geo_plan.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn read_ring(&self, base: u32, size: u32) -> Result<Vec<u32>> {
        Ok(self.slots_at(base, size))
    }

    fn read_pool_sel(&self, vip_id: u32) -> Result<Vec<u32>> {
        Ok(self
            .pool_sel
            .get(&vip_id)
            .cloned()
            .unwrap_or_else(|| vec![0; POOL_SEL_M as usize]))
    }

    fn read_geo(&self) -> Result<HashMap<GeoPrefix, GeoValue>> {
        Ok(self.geo.clone())
    }

    fn read_local_addrs(&self) -> Result<BTreeSet<[u8; 16]>> {
        Ok(self.local_addrs.clone())
    }

    fn write_settings(&mut self, s: Settings) -> Result<()> {
        self.writes += 1;
        self.settings = Some(s);
        Ok(())
    }

    fn write_origin(&mut self, id: u32, m: OriginMeta) -> Result<()> {
        self.writes += 1;
        if m == OriginMeta::default() {
            self.origins.remove(&id);
        } else {
            self.origins.insert(id, m);
        }
        Ok(())
    }

    fn reset_origin_counters(&mut self, id: u32) -> Result<()> {
        self.counter_resets.push(("ORIGIN", id));
        Ok(())
    }

    fn write_ring_slot(&mut self, slot: u32, origin: u32) -> Result<()> {
        self.writes += 1;
        if slot >= RING_SLOTS {
            return Err(WriteError {
                map: "RINGS",
                reason: format!("index {slot} out of bounds"),
            });
        }
        self.slots.insert(slot, origin);
        Ok(())
    }

    fn write_ring_meta(&mut self, id: u32, m: RingMeta) -> Result<()> {
        self.writes += 1;
        self.ring_meta.insert(id, m);
        Ok(())
    }

    fn write_geo_plan(&mut self, k: GeoPlanKey, ring: u32) -> Result<()> {
        self.writes += 1;
        self.geo_plan.insert(k, ring);
        Ok(())
    }

    fn remove_geo_plan(&mut self, k: &GeoPlanKey) -> Result<()> {
        self.writes += 1;
        self.geo_plan.remove(k);
        Ok(())
    }

    fn write_pool_sel_slot(&mut self, slot: u32, ring: u32) -> Result<()> {
        self.writes += 1;
        let (vip, i) = split(slot, POOL_SEL_M);
        self.pool_sel
            .entry(vip)
            .or_insert_with(|| vec![0; POOL_SEL_M as usize])[i] = ring;
        Ok(())
    }

    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<()> {
        self.counter_resets.push(("VIP", vip_id));
        Ok(())
    }

    fn write_vip(&mut self, k: VipKey, m: VipMeta) -> Result<()> {
        self.writes += 1;
        self.index_vip(k, m)?;
        self.vips.insert(k, m);
        Ok(())
    }

    fn index_vip(&mut self, k: VipKey, m: VipMeta) -> Result<()> {
        if k.port != 0 {
            self.vip_ids.insert(m.vip_id, VipById { key: k, meta: m });
        }
        Ok(())
    }

    fn remove_vip(&mut self, k: &VipKey, m: &VipMeta) -> Result<()> {
        self.writes += 1;
        self.vips.remove(k);
        if self.vip_ids.get(&m.vip_id).is_some_and(|e| e.key == *k) {
            self.vip_ids.remove(&m.vip_id);
        }
        Ok(())
    }

    fn write_geo(&mut self, k: GeoPrefix, v: GeoValue) -> Result<()> {
        self.writes += 1;
        self.geo.insert(k, v);
        Ok(())
    }

    fn remove_geo(&mut self, k: GeoPrefix) -> Result<()> {
        self.writes += 1;
        self.geo.remove(&k);
        Ok(())
    }

    fn write_local_addr(&mut self, a: [u8; 16]) -> Result<()> {
        if self.local_addrs.len() >= lb_common::MAX_LOCAL_ADDRS as usize {
            return Err(WriteError {
                map: "LOCAL_ADDRS",
                reason: "map full".into(),
            });
        }
        self.writes += 1;
        self.local_addrs.insert(a);
        Ok(())
    }

    fn remove_local_addr(&mut self, a: &[u8; 16]) -> Result<()> {
        self.writes += 1;
        self.local_addrs.remove(a);
        Ok(())
    }
}

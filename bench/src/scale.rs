//! Control plane at scale (issue 12): a generated config of V VIPs over P pools with O
//! origins, applied to a loaded data path; times the first apply, one origin going down, a
//! reload with one changed weight and an unchanged reapply, and states the maps' memory.
//!
//! Full scale is 1000 VIPs, 1000 pools, 10 000 origins. Where `lb_common`'s capacities
//! (`MAX_VIPS`, `MAX_RINGS`, `MAX_ORIGINS`) are smaller it runs at the largest scale that
//! fits and says so in `scale_vips`, `scale_pools` and `scale_origins`, so the same bench
//! reads both before and after the capacities are raised.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_agent::{config::Config, dataplane::Dataplane, health, reconcile::Reconciler};
use lb_common::{MAX_LC_MEMBERS, MAX_ORIGINS, MAX_RINGS, MAX_VIPS};
use lb_testbed::{FibBed, Side};

use crate::{median, Report, CLIENT, MAC_CLIENT};

/// The scale: VIPs, pools, origins.
pub const FULL: Scale = Scale {
    vips: 1000,
    pools: 1000,
    origins: 10_000,
};
/// VIPs share an address in groups of this many ports (as a site serves 80, 443, ...).
const PORTS: [u16; 4] = [80, 443, 8000, 8443];
/// Origins taken down one at a time, and reloads with one changed weight.
const DOWN_SAMPLES: usize = 20;
const RELOAD_SAMPLES: usize = 10;
/// Every `MIX`th load balancer (at offsets below) uses geo steering, random steering, or
/// session affinity; every `MIX`th pool least-connections origin steering. The issue asks
/// that the figures hold with those present.
const MIX: usize = 50;
const GEO_AT: usize = 7;
const RANDOM_AT: usize = 17;
const AFFINITY_AT: usize = 27;
const LC_AT: usize = 5;
/// Maps whose memory the report states one by one.
const MAPS: [&str; 4] = ["RINGS", "VIPS", "ORIGINS", "RING_META"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub vips: usize,
    pub pools: usize,
    pub origins: usize,
}

impl Scale {
    /// `want`, cut to what the data path's maps hold: VIPs to `MAX_VIPS`, pools to
    /// `MAX_RINGS` (every pool in use has a ring: load balancers share one origin port), and
    /// origins to `MAX_ORIGINS`.
    pub fn fitting(want: Self) -> Self {
        Self {
            vips: want.vips.min(MAX_VIPS as usize),
            pools: want.pools.min(MAX_RINGS as usize),
            origins: want.origins.min(MAX_ORIGINS as usize),
        }
    }
}

fn is_lc_pool(p: usize) -> bool {
    p % MIX == LC_AT
}

/// Origins per pool: `origins` spread evenly, except that least-connections pools hold at
/// most `MAX_LC_MEMBERS` (the data path compares them all) and the rest go to the others.
fn origin_counts(s: Scale) -> Vec<usize> {
    let mut counts: Vec<usize> = (0..s.pools)
        .map(|p| s.origins / s.pools + usize::from(p < s.origins % s.pools))
        .collect();
    let mut spare = 0;
    for (p, c) in counts.iter_mut().enumerate() {
        if is_lc_pool(p) && *c > MAX_LC_MEMBERS {
            spare += *c - MAX_LC_MEMBERS;
            *c = MAX_LC_MEMBERS;
        }
    }
    let others: Vec<usize> = (0..s.pools).filter(|p| !is_lc_pool(*p)).collect();
    for i in 0..spare {
        counts[others[i % others.len()]] += 1;
    }
    counts
}

/// The address of origin `i` (all on port 8080): 10.2.0.1 up, 250 per /24.
fn origin_addr(i: usize) -> String {
    format!("10.2.{}.{}", i / 250, 1 + i % 250)
}

/// The config text at scale `s`: load balancer `i` listens on 10.1.x.y at one of `PORTS`,
/// fails over from pool `i` to pool `i + 1` (both default pools) with pool `i + 2` as
/// fallback; every pool is monitored over TCP. `weight`: (origin index, weight) to change
/// one origin's weight, as an edited file would.
pub fn config_text(pin_dir: &Path, s: Scale, weight: Option<(usize, f64)>) -> String {
    let mut c = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\nsnat_address = \"10.0.0.1\"\nsnat_ports = [1024, 65535]\nsyn_cookies = \"off\"\npin_dir = \"{}\"\n\n\
         [[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 1\ntimeout = 0.5\n\n\
         [geo]\nprefixes = [\n  {{ prefix = \"10.0.1.0/24\", country = \"DE\" }},\n  {{ prefix = \"192.0.2.0/24\", country = \"FR\" }},\n]\n\n",
        pin_dir.display()
    );
    let mut next = 0;
    for (p, n) in origin_counts(s).into_iter().enumerate() {
        let _ = write!(c, "[[pools]]\nname = \"p{p}\"\nmonitor = \"tcp\"\n");
        if is_lc_pool(p) {
            c.push_str("origin_steering = { policy = \"least_connections\" }\n");
        }
        c.push_str("origins = [\n");
        for _ in 0..n {
            let w = match weight {
                Some((i, w)) if i == next => format!(", weight = {w}"),
                _ => String::new(),
            };
            let _ = writeln!(
                c,
                "  {{ name = \"o{next}\", address = \"{}\", port = 8080{w} }},",
                origin_addr(next)
            );
            next += 1;
        }
        c.push_str("]\n\n");
    }
    let pool = |k: usize| format!("p{}", k % s.pools);
    for i in 0..s.vips {
        let host = i / PORTS.len();
        let _ = write!(
            c,
            "[[load_balancers]]\nname = \"lb{i}\"\naddress = \"10.1.{}.{}\"\nport = {}\norigin_port = 8080\ndefault_pools = [\"{}\", \"{}\"]\nfallback_pool = \"{}\"\n",
            host / 250,
            1 + host % 250,
            PORTS[i % PORTS.len()],
            pool(i),
            pool(i + 1),
            pool(i + 2)
        );
        match i % MIX {
            GEO_AT => {
                let _ = write!(
                    c,
                    "steering_policy = \"geo\"\ncountry_pools = {{ DE = [\"{}\"], FR = [\"{}\"] }}\n",
                    pool(i + 3),
                    pool(i + 4)
                );
            }
            RANDOM_AT => {
                let _ = write!(
                    c,
                    "steering_policy = \"random\"\nrandom_steering = {{ pool_weights = {{ {} = 0.75, {} = 0.25 }} }}\n",
                    pool(i),
                    pool(i + 1)
                );
            }
            AFFINITY_AT => c.push_str("session_affinity = \"ip\"\nsession_affinity_ttl = 300\n"),
            _ => {}
        }
        c.push('\n');
    }
    c
}

/// `bytes_memlock` of the map pinned at `pin`, as the kernel accounts it.
fn map_bytes(pin: &Path) -> Option<f64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("bytes_memlock").and_then(serde_json::Value::as_f64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the bench at `Scale::fitting(want)` and adds its `scale_*` figures to
/// `report.control`.
pub fn run(object: &Path, want: Scale, report: &mut Report) -> Result<()> {
    let s = Scale::fitting(want);
    eprintln!(
        "lb-bench: control plane at scale: {} VIPs, {} pools, {} origins{}",
        s.vips,
        s.pools,
        s.origins,
        if s == want {
            String::new()
        } else {
            format!(
                " (asked {}/{}/{}; the maps hold {MAX_VIPS} VIPs, {MAX_RINGS} rings, {MAX_ORIGINS} origins)",
                want.vips, want.pools, want.origins
            )
        }
    );
    let bed = FibBed::new("bs", &[(CLIENT, MAC_CLIENT, Side::A)]);
    let text = config_text(&bed.pin_dir, s, None);
    let path = Path::new("bench-scale.toml");
    let t0 = Instant::now();
    let cfg = Config::parse(&text, path)?;
    let parse_ms = ms(t0.elapsed());
    let origins_in_cfg: usize = cfg.pools.iter().map(|p| p.origins.len()).sum();
    anyhow::ensure!(
        cfg.load_balancers.len() == s.vips
            && cfg.pools.len() == s.pools
            && origins_in_cfg == s.origins,
        "generated config has {} load balancers, {} pools, {origins_in_cfg} origins; wanted {s:?}",
        cfg.load_balancers.len(),
        cfg.pools.len()
    );
    // The edited files of the reloads, written before the clock runs (the agent reads a
    // file it did not write).
    let reload_texts: Vec<(usize, String)> = (0..RELOAD_SAMPLES)
        .map(|k| {
            let i = (2 * k + 1) * s.origins / (2 * RELOAD_SAMPLES);
            (i, config_text(&bed.pin_dir, s, Some((i, 0.5))))
        })
        .collect();
    let mut out = bed.ns.run(|| -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)?;
        let mut rec = Reconciler::adopt(dp.take_maps()?)?;
        let targets = health::targets(&cfg);
        anyhow::ensure!(
            targets.len() == s.origins,
            "{} health targets for {} origins",
            targets.len(),
            s.origins
        );
        let (mut health, ok, down) = crate::all_up(&targets);

        let first = rec.apply(&cfg, &health)?;
        out.insert("scale_first_apply_ms".into(), ms(first.elapsed));
        out.insert("scale_first_apply_plan_ms".into(), ms(first.plan));
        out.insert(
            "scale_first_apply_ring_compute_ms".into(),
            ms(first.compute),
        );
        out.insert(
            "scale_first_apply_ring_writes_ms".into(),
            ms(first.ring_writes),
        );
        out.insert(
            "scale_first_apply_slots_written".into(),
            first.slots_written as f64,
        );
        out.insert("scale_rings".into(), rec.plan().rings.len() as f64);
        // (`vips_written` also counts one address marker per VIP address.)
        anyhow::ensure!(
            rec.assignment.vips.len() == s.vips && rec.assignment.origins.len() == s.origins,
            "first apply assigned {} VIPs and {} origins; wanted {} and {}",
            rec.assignment.vips.len(),
            rec.assignment.origins.len(),
            s.vips,
            s.origins
        );

        let again = rec.apply(&cfg, &health)?;
        out.insert("scale_reapply_unchanged_ms".into(), ms(again.elapsed));
        out.insert(
            "scale_reapply_unchanged_slots_written".into(),
            again.slots_written as f64,
        );

        // One origin down, then back up (untimed), for origins spread over the pools.
        let keys: Vec<_> = targets.keys().collect();
        let (mut lat, mut slots) = (Vec::new(), Vec::new());
        let (mut plan, mut compute, mut writes) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..DOWN_SAMPLES {
            let t = keys[(2 * k + 1) * keys.len() / (2 * DOWN_SAMPLES)];
            health.record(t, &down);
            let r = rec.apply(&cfg, &health)?;
            anyhow::ensure!(
                r.slots_written > 0,
                "origin {t:?} down: no ring slot written"
            );
            lat.push(u64::try_from(r.elapsed.as_nanos())?);
            slots.push(r.slots_written as u64);
            plan.push(u64::try_from(r.plan.as_nanos())?);
            compute.push(u64::try_from(r.compute.as_nanos())?);
            writes.push(u64::try_from(r.ring_writes.as_nanos())?);
            health.record(t, &ok);
            rec.apply(&cfg, &health)?;
        }
        let max = lat.iter().copied().max().unwrap_or(0) as f64 / 1e6;
        out.insert("scale_origin_down_median_ms".into(), median(&mut lat) / 1e6);
        out.insert("scale_origin_down_max_ms".into(), max);
        out.insert(
            "scale_origin_down_slots_written_median".into(),
            median(&mut slots),
        );
        for (k, v) in [
            ("plan", &mut plan),
            ("ring_compute", &mut compute),
            ("ring_writes", &mut writes),
        ] {
            out.insert(format!("scale_origin_down_{k}_median_ms"), median(v) / 1e6);
        }
        out.insert("scale_origin_down_samples".into(), DOWN_SAMPLES as f64);

        // A reload whose file changes one origin's weight: parse, validate, health targets,
        // apply. Back to the original after each (untimed), so each is one change.
        let (mut lat, mut parse, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (i, text) in &reload_texts {
            let t0 = Instant::now();
            let next = Config::parse(text, path)?;
            let parsed = t0.elapsed();
            let targets = health::targets(&next);
            health.retain(&targets.keys().map(|t| (t.clone(), (1, 1))).collect());
            let r = rec.apply(&next, &health)?;
            lat.push(u64::try_from(t0.elapsed().as_nanos())?);
            parse.push(u64::try_from(parsed.as_nanos())?);
            anyhow::ensure!(
                r.slots_written > 0,
                "origin o{i} weight 0.5: no ring slot written"
            );
            slots.push(r.slots_written as u64);
            rec.apply(&cfg, &health)?;
        }
        let max = lat.iter().copied().max().unwrap_or(0) as f64 / 1e6;
        out.insert(
            "scale_reload_one_change_median_ms".into(),
            median(&mut lat) / 1e6,
        );
        out.insert("scale_reload_one_change_max_ms".into(), max);
        out.insert(
            "scale_reload_one_change_parse_median_ms".into(),
            median(&mut parse) / 1e6,
        );
        out.insert("scale_reload_samples".into(), RELOAD_SAMPLES as f64);
        out.insert(
            "scale_reload_one_change_slots_written_median".into(),
            median(&mut slots),
        );
        drop(rec);
        drop(dp);
        Ok(out)
    })?;
    out.insert("scale_config_parse_ms".into(), parse_ms);
    out.insert("scale_config_bytes".into(), text.len() as f64);

    // Map memory, while the pins still exist (the bed removes them on drop).
    let mib = 1024.0 * 1024.0;
    for name in MAPS {
        let b = map_bytes(&bed.pin_dir.join(name))
            .with_context(|| format!("bpftool: no bytes_memlock for {name}"))?;
        out.insert(format!("scale_map_memory_{name}_mib"), b / mib);
    }
    let mut total = 0.0;
    for e in std::fs::read_dir(&bed.pin_dir)?.flatten() {
        total += map_bytes(&e.path()).unwrap_or(0.0);
    }
    out.insert("scale_map_memory_all_pins_mib".into(), total / mib);

    let lbs = |at: usize| ((0..s.vips).filter(|i| i % MIX == at).count()) as f64;
    out.insert("scale_vips".into(), s.vips as f64);
    out.insert("scale_pools".into(), s.pools as f64);
    out.insert("scale_origins".into(), s.origins as f64);
    out.insert("scale_geo_vips".into(), lbs(GEO_AT));
    out.insert("scale_random_vips".into(), lbs(RANDOM_AT));
    out.insert("scale_affinity_vips".into(), lbs(AFFINITY_AT));
    out.insert(
        "scale_least_connections_pools".into(),
        (0..s.pools).filter(|p| is_lc_pool(*p)).count() as f64,
    );
    out.insert("scale_is_full".into(), if s == FULL { 1.0 } else { 0.0 });
    report.control.extend(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_validates_at_the_scale_that_fits() {
        let s = Scale::fitting(FULL);
        let cfg = Config::parse(
            &config_text(Path::new("/sys/fs/bpf/t"), s, Some((3, 0.5))),
            Path::new("t.toml"),
        )
        .unwrap_or_else(|e| panic!("config at {s:?} does not validate: {e}"));
        assert_eq!(cfg.load_balancers.len(), s.vips, "load balancers");
        assert_eq!(cfg.pools.len(), s.pools, "pools");
        let origins: usize = cfg.pools.iter().map(|p| p.origins.len()).sum();
        assert_eq!(origins, s.origins, "origins in all");
        assert_eq!(
            health::targets(&cfg).len(),
            s.origins,
            "one target per origin"
        );
    }

    #[test]
    fn origins_spread_evenly_and_least_connections_pools_stay_small() {
        for s in [
            FULL,
            Scale {
                vips: 512,
                pools: 64,
                origins: 4096,
            },
        ] {
            let c = origin_counts(s);
            assert_eq!(c.iter().sum::<usize>(), s.origins, "{s:?}: total");
            for (p, n) in c.iter().enumerate() {
                if is_lc_pool(p) {
                    assert!(*n <= MAX_LC_MEMBERS, "{s:?}: pool {p} has {n}");
                }
            }
        }
        assert!(
            origin_counts(FULL).iter().all(|n| *n == 10),
            "10 per pool at full scale"
        );
    }
}

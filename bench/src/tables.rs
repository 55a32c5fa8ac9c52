//! Flow-table layouts side by side (issue 12: "per-CPU LRU, or another layout that avoids
//! cross-CPU cache-line traffic; measure both"): the same million 72-byte `Flow` values
//! under the same keys in a plain hash (the layout `FLOWS` and `REV_FLOWS` use), a shared
//! LRU hash and a per-CPU LRU hash (`BPF_F_NO_COMMON_LRU`, Katran's flow table). The
//! `table_lookup` program of the `lb-layout-bench` object looks up one tuple per run
//! (`BPF_PROG_TEST_RUN`, repeat = 1, as the per-packet rows): random tuples, so the lookups
//! miss the caches as the 1M-flow row's do, and one hot tuple. The tables are filled from
//! one thread per CPU, each pinned to its CPU: a per-CPU LRU hands each CPU its share of
//! the entries, and one CPU filling it alone would evict its own entries past that share.

use std::{collections::BTreeMap, os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, Map, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{Flow, FlowKey};

use crate::median;

/// Entries per table (the object's maps hold `1 << 20`).
pub const ENTRIES: u32 = 1_000_000;
const SAMPLES: usize = 20_000;
const ROUNDS: usize = 4;
const XDP_TX: u32 = 3;
/// (map, table number in the frame, report name).
const TABLES: [(&str, u8, &str); 3] = [
    ("LAYOUT_HASH", 0, "hash"),
    ("LAYOUT_LRU", 1, "lru"),
    ("LAYOUT_LRU_PERCPU", 2, "lru_percpu"),
];

/// Tuple `i`, as `table_lookup` builds it.
fn key(i: u32) -> FlowKey {
    let addr = (0x0a80_0000u32 + (i >> 2)).to_be_bytes();
    #[expect(clippy::cast_possible_truncation, reason = "below 10004")]
    let port = (10_000 + (i & 3)) as u16;
    FlowKey::tcp_v4(addr, port, [10, 0, 0, 10], 80)
}

fn value(i: u32) -> Flow {
    #[expect(clippy::cast_possible_truncation, reason = "below 64000")]
    let port = (1024 + i % 64_000) as u16;
    Flow {
        origin_addr: lb_common::v4_mapped([10, 0, 11, 2]),
        snat_addr: lb_common::v4_mapped([10, 0, 0, 1]),
        origin_port: 8080u16.to_be(),
        snat_port: port.to_be(),
        ..Flow::default()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) == 0,
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Fills map `fd` with tuples 0..ENTRIES, one pinned thread per CPU inserting its share.
fn fill(fd: &std::os::fd::OwnedFd, cpus: usize) -> Result<()> {
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..cpus)
            .map(|cpu| {
                let fd = fd.try_clone();
                s.spawn(move || -> Result<()> {
                    pin_to(cpu)?;
                    let map = Map::from_map_data(MapData::from_fd(fd?)?)?;
                    let mut h: HashMap<MapData, FlowKey, Flow> = HashMap::try_from(map)?;
                    #[expect(clippy::cast_possible_truncation, reason = "a handful of CPUs")]
                    let (first, step) = (cpu as u32, cpus as u32);
                    for i in (first..ENTRIES).step_by(step as usize) {
                        h.insert(key(i), value(i), 0)
                            .with_context(|| format!("insert {i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("fill thread panicked"))??;
        }
        Ok(())
    })
}

/// The five bytes `table_lookup` reads, in a frame long enough for `BPF_PROG_TEST_RUN`.
fn frame(i: u32, table: u8) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(&i.to_le_bytes());
    f[4] = table;
    f
}

fn run1(prog: &Xdp, f: &[u8]) -> Result<u64> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(f),
            ..TestRunOptions::default()
        })
        .context("test_run")?;
    anyhow::ensure!(
        r.return_value == XDP_TX,
        "table {}: tuple {} not found (verdict {})",
        f[4],
        u32::from_le_bytes([f[0], f[1], f[2], f[3]]),
        r.return_value
    );
    #[expect(clippy::cast_possible_truncation, reason = "nanoseconds of one run")]
    Ok(r.duration.as_nanos() as u64)
}

/// Times lookups in each layout; figures go to `control` as `layout_*`.
pub fn run(object: &Path, report: &mut crate::Report) -> Result<()> {
    let path = object.with_file_name("lb-layout-bench");
    let mut ebpf = aya::Ebpf::load_file(&path).with_context(|| format!("{}", path.display()))?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut m = BTreeMap::new();
    for (name, _, short) in TABLES {
        let fd = match ebpf.map(name).with_context(|| format!("map {name}"))? {
            Map::HashMap(d) | Map::LruHashMap(d) => d.fd().as_fd().try_clone_to_owned()?,
            _ => anyhow::bail!("{name} is not a hash map"),
        };
        let t = std::time::Instant::now();
        fill(&fd, cpus)?;
        m.insert(
            format!("layout_{short}_fill_ms"),
            t.elapsed().as_secs_f64() * 1e3,
        );
    }
    let prog: &mut Xdp = ebpf
        .program_mut("table_lookup")
        .context("table_lookup")?
        .try_into()?;
    prog.load()?;
    // Random tuples, the same for every table.
    let picks: Vec<u32> = crate::picks(SAMPLES, u64::from(ENTRIES))
        .into_iter()
        .map(|i| u32::try_from(i).expect("below ENTRIES"))
        .collect();
    // Per table: random and hot samples, the tables taking turns round by round so that
    // the drift of the kernel's per-run time hits all alike. A miss fails the bench (a
    // per-CPU LRU that evicted would show here).
    let mut times: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for round in picks.chunks(SAMPLES / ROUNDS) {
        for (_, table, short) in TABLES {
            for &i in round {
                let ns = run1(prog, &frame(i, table))?;
                times.entry((short, "random")).or_default().push(ns);
            }
            let hot = frame(ENTRIES / 2, table);
            for _ in round {
                let ns = run1(prog, &hot)?;
                times.entry((short, "hot")).or_default().push(ns);
            }
        }
    }
    for ((short, kind), mut t) in times {
        m.insert(format!("layout_{short}_{kind}_median_ns"), median(&mut t));
    }
    m.insert("layout_entries".into(), f64::from(ENTRIES));
    #[expect(clippy::cast_precision_loss, reason = "a handful of CPUs")]
    m.insert("layout_fill_cpus".into(), cpus as f64);
    report.control.extend(m);
    Ok(())
}

/// The report's lines for the layouts.
pub fn lines(c: &BTreeMap<String, f64>) -> Vec<String> {
    let g = |k: String| c.get(&k).copied().unwrap_or(f64::NAN);
    if !c.contains_key("layout_entries") {
        return Vec::new();
    }
    TABLES
        .iter()
        .map(|(_, _, short)| {
            format!(
                "{short}: lookup of a random tuple among {:.0}: {:.0} ns, of one hot tuple: {:.0} ns (fill {:.0} ms)",
                g("layout_entries".into()),
                g(format!("layout_{short}_random_median_ns")),
                g(format!("layout_{short}_hot_median_ns")),
                g(format!("layout_{short}_fill_ms")),
            )
        })
        .collect()
}

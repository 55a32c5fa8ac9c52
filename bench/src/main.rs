//! `lb-bench`: the measurements behind `cargo xtask bench`, which builds it in release mode
//! and runs it as root. It measures per-packet cost (BPF_PROG_TEST_RUN), the control plane,
//! end-to-end throughput against direct and HAProxy, and packet rate, then writes
//! `report.json`, `report.md` and SVG charts. Figures that come from other tools (criterion's
//! Maglev build times, the health tests' detection-to-drain) are passed in as files.
//!
//! Usage: `lb-bench --object <lb-ebpf object> --agent <lb-agent> [--out DIR] [--criterion DIR]
//! [--failover FILE] [--quick] [--only per-packet|rate|e2e]` (`--only` runs one part and
//! prints it without writing a report). Set `LB_BENCH_DEBUG=1` to print the data path's
//! counters after the packet-rate and end-to-end runs.

mod e2e;
mod packet;
mod report;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb_agent::{
    config::Config,
    dataplane::Dataplane,
    health::{HealthTable, Outcome},
    reconcile::Reconciler,
    steering,
};
use lb_common::FlowKey;
use lb_testbed::{FibBed, Flags, Side};
use serde::Serialize;

pub const CLIENT: [u8; 4] = [10, 0, 1, 2];
pub const MAC_CLIENT: [u8; 6] = [2, 0, 0, 0, 1, 2];
pub const VIP: [u8; 4] = [10, 0, 0, 10];
pub const SNAT: [u8; 4] = [10, 0, 0, 1];

fn origin(i: u8) -> ([u8; 4], [u8; 6]) {
    ([10, 0, 11, 2 + i], [2, 0, 0, 0, 11, 2 + i])
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Report {
    pub date: String,
    pub machine: BTreeMap<String, String>,
    pub per_packet: Vec<PacketCost>,
    pub per_packet_method: String,
    pub control: BTreeMap<String, f64>,
    pub maglev_build_us: BTreeMap<String, f64>,
    pub e2e: Vec<e2e::Row>,
    pub packet_rate: Vec<packet::Rate>,
    pub failover: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PacketCost {
    pub case: String,
    /// Median nanoseconds of one run, as the kernel timed it (repeat = 1).
    pub median_ns: f64,
    /// Same for the bare XDP_TX program on the same frame, measured in the same run.
    pub floor_ns: f64,
    pub ratio_to_floor: f64,
    /// Median minus floor: the program's own work.
    pub net_ns: f64,
    pub verdict: u32,
}

/// A TCP frame with TTL 64 and no payload: SYN, SYN-ACK or ACK.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
fn tcp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
) -> Vec<u8> {
    let flags = match (syn, ack) {
        (true, true) => Flags::SynAck,
        (true, false) => Flags::Syn,
        (false, _) => Flags::Ack,
    };
    lb_testbed::tcp_frame(smac, dmac, src, dst, 64, sport, dport, flags, &[])
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
    let m = v[v.len() / 2] as f64;
    m
}

/// Runs `prog` once per frame (repeat = 1, so every run sees the frame as given) and returns
/// the kernel's per-run times.
fn run_each(
    prog: &aya::programs::Xdp,
    frames: &[Vec<u8>],
    ctx_of: &dyn Fn(usize) -> Vec<u8>,
) -> Result<(Vec<u64>, u32)> {
    let mut times = Vec::with_capacity(frames.len());
    let mut verdict = 0;
    let mut out = vec![0u8; 256];
    for f in frames {
        let ctx = ctx_of(f.len());
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .context("test_run")?;
        #[expect(clippy::cast_possible_truncation, reason = "nanoseconds of one run")]
        times.push(r.duration.as_nanos() as u64);
        verdict = r.return_value;
    }
    Ok((times, verdict))
}

fn per_packet_config(pin_dir: &std::path::Path, origins: usize, monitor: bool) -> String {
    let mut c = format!(
        "[dataplane]\ninterfaces = [\"lo\"]\nsnat_address = \"10.0.0.1\"\nsnat_ports = [1024, 65535]\npin_dir = \"{}\"\n\n",
        pin_dir.display()
    );
    if monitor {
        c.push_str("[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 1\ntimeout = 0.5\n\n");
    }
    c.push_str("[[pools]]\nname = \"web\"\n");
    if monitor {
        c.push_str("monitor = \"tcp\"\n");
    }
    c.push_str("origins = [\n");
    for i in 0..origins {
        c.push_str(&format!(
            "  {{ name = \"o{i}\", address = \"10.0.{}.{}\", port = 8080 }},\n",
            11 + i / 250,
            2 + i % 250
        ));
    }
    c.push_str("]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n");
    c
}

/// Per-packet cost of each path, beside the XDP_TX floor, and control-plane figures that
/// need the same loaded program.
fn per_packet(object: &std::path::Path, report: &mut Report) -> Result<()> {
    const N: usize = 20_000;
    let neighbours: Vec<([u8; 4], [u8; 6], Side)> = std::iter::once((CLIENT, MAC_CLIENT, Side::A))
        .chain((0..3).map(|i| {
            let (a, m) = origin(i);
            (a, m, Side::B)
        }))
        .collect();
    let bed = FibBed::new("bp", &neighbours);
    let cfg = Config::parse(
        &per_packet_config(&bed.pin_dir, 3, false),
        std::path::Path::new("bench.toml"),
    )?;
    let (costs, control) = bed
        .ns
        .run(|| -> Result<(Vec<PacketCost>, BTreeMap<String, f64>)> {
            let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)?;
            let mut rec = Reconciler::adopt(dp.take_maps()?)?;
            let t = Instant::now();
            rec.apply(&cfg, &HealthTable::default())?;
            let mut control = BTreeMap::new();
            control.insert(
                "config_apply_3_origins_ms".into(),
                t.elapsed().as_secs_f64() * 1e3,
            );
            for i in [bed.ifindex_a, bed.ifindex_b] {
                rec.maps.tx_ports.insert(i, i, None, 0)?;
            }
            let ctx_a = |len: usize| bed.ctx(Side::A, len);
            let ctx_b = |len: usize| bed.ctx(Side::B, len);
            let syns: Vec<Vec<u8>> = (0..N)
                .map(|i| {
                    tcp_frame(
                        MAC_CLIENT,
                        bed.mac_a,
                        CLIENT,
                        VIP,
                        1024 + i as u16,
                        80,
                        true,
                        false,
                    )
                })
                .collect();
            let est = vec![tcp_frame(MAC_CLIENT, bed.mac_a, CLIENT, VIP, 1024, 80, false, true); N];
            let pass = vec![
                tcp_frame(
                    MAC_CLIENT,
                    bed.mac_a,
                    CLIENT,
                    [10, 0, 1, 1],
                    40000,
                    22,
                    true,
                    false
                );
                N
            ];
            let (mut syn_t, syn_v, mut est_t, est_v) = {
                let prog = dp.program()?;
                let (syn_t, syn_v) = run_each(prog, &syns, &ctx_a)?;
                let (est_t, est_v) = run_each(prog, &est, &ctx_a)?;
                (syn_t, syn_v, est_t, est_v)
            };
            // The reply frame needs the SNAT port the first flow got.
            let key = FlowKey::tcp_v4(CLIENT, 1024, VIP, 80);
            let flow = rec
                .maps
                .flows
                .get(&key, 0)
                .context("flow of the established case")?;
            let o = [
                flow.origin_addr[12],
                flow.origin_addr[13],
                flow.origin_addr[14],
                flow.origin_addr[15],
            ];
            let omac = (0..3)
                .map(origin)
                .find(|(a, _)| *a == o)
                .map(|(_, m)| m)
                .context("origin mac")?;
            let reply = vec![
                tcp_frame(
                    omac,
                    bed.mac_b,
                    o,
                    SNAT,
                    8080,
                    u16::from_be(flow.snat_port),
                    true,
                    true
                );
                N
            ];
            let (mut rep_t, rep_v, mut pass_t, pass_v) = {
                let prog = dp.program()?;
                let (rep_t, rep_v) = run_each(prog, &reply, &ctx_b)?;
                let (pass_t, pass_v) = run_each(prog, &pass, &ctx_a)?;
                (rep_t, rep_v, pass_t, pass_v)
            };
            let floor = dp.aux_program("xdp_tx_floor")?;
            let (mut floor_t, _) = run_each(floor, &est, &ctx_a)?;
            let floor_ns = median(&mut floor_t);
            let cost = |case: &str, t: &mut Vec<u64>, verdict: u32| {
                let m = median(t);
                PacketCost {
                    case: case.into(),
                    median_ns: m,
                    floor_ns,
                    ratio_to_floor: m / floor_ns,
                    net_ns: m - floor_ns,
                    verdict,
                }
            };
            let costs = vec![
                cost("new flow (SYN, distinct 5-tuples)", &mut syn_t, syn_v),
                cost("established (flow-table hit)", &mut est_t, est_v),
                cost("reply (reverse NAT)", &mut rep_t, rep_v),
                cost("not a VIP (pass)", &mut pass_t, pass_v),
            ];

            // Health change -> maps written, on a 10-origin monitored pool.
            drop(rec);
            drop(dp);
            Ok((costs, control))
        })?;
    report.per_packet = costs;
    report.control.extend(control);
    report.per_packet_method = format!(
        "BPF_PROG_TEST_RUN with repeat = 1, {N} runs per case, median of the kernel's per-run time; \
         each run is given its frame afresh, so rewritten frames are never re-run. The floor is \
         the bare XDP_TX program on the same frames in the same process; ratios divide by it. The \
         kernel's timer overhead is inside every figure (and so inside the floor)."
    );
    Ok(())
}

/// Control-plane figures: map memory of a full-size flow table, config apply and
/// health-change-to-map-write latency with 10 monitored origins.
fn control_plane(object: &std::path::Path, report: &mut Report) -> Result<()> {
    let neighbours: Vec<([u8; 4], [u8; 6], Side)> = vec![(CLIENT, MAC_CLIENT, Side::A)];
    let bed = FibBed::new("bc", &neighbours);
    let cfg = Config::parse(
        &per_packet_config(&bed.pin_dir, 10, true),
        std::path::Path::new("bench.toml"),
    )?;
    let figures = bed.ns.run(|| -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)?;
        let mut rec = Reconciler::adopt(dp.take_maps()?)?;
        let mut health = HealthTable::default();
        let targets = steering::targets(&cfg);
        health.retain(&targets.keys().map(|t| (t.clone(), (1, 1))).collect());
        let ok = Outcome {
            ok: true,
            reason: "ok".into(),
            rtt: Some(Duration::from_micros(100)),
        };
        let down = Outcome {
            ok: false,
            reason: "down".into(),
            rtt: None,
        };
        for t in targets.keys() {
            health.record(t, &ok);
        }
        let t0 = Instant::now();
        let first = rec.apply(&cfg, &health)?;
        out.insert(
            "config_apply_10_origins_first_ms".into(),
            t0.elapsed().as_secs_f64() * 1e3,
        );
        out.insert(
            "config_apply_10_origins_slots".into(),
            first.slots_written as f64,
        );
        let t0 = Instant::now();
        rec.apply(&cfg, &health)?;
        out.insert(
            "config_reapply_unchanged_ms".into(),
            t0.elapsed().as_secs_f64() * 1e3,
        );
        let mut lat = Vec::new();
        let mut slots = Vec::new();
        let mut compute = Vec::new();
        let mut writes = Vec::new();
        for (i, t) in targets.keys().cycle().take(20).enumerate() {
            health.record(t, if i % 2 == 0 { &down } else { &ok });
            let t0 = Instant::now();
            let r = rec.apply(&cfg, &health)?;
            #[expect(clippy::cast_possible_truncation, reason = "microseconds")]
            lat.push(t0.elapsed().as_micros() as u64);
            slots.push(r.slots_written as u64);
            #[expect(clippy::cast_possible_truncation, reason = "microseconds")]
            compute.push(r.compute.as_micros() as u64);
            #[expect(clippy::cast_possible_truncation, reason = "microseconds")]
            writes.push(r.ring_writes.as_micros() as u64);
            health.record(t, &ok);
            rec.apply(&cfg, &health)?;
        }
        out.insert(
            "health_change_to_maps_written_median_ms".into(),
            median(&mut lat) / 1e3,
        );
        out.insert(
            "health_change_slots_written_median".into(),
            median(&mut slots),
        );
        out.insert(
            "health_change_ring_compute_median_ms".into(),
            median(&mut compute) / 1e3,
        );
        out.insert(
            "health_change_ring_writes_median_ms".into(),
            median(&mut writes) / 1e3,
        );
        drop(rec);
        drop(dp);
        Ok(out)
    })?;
    report.control.extend(figures);
    // Map memory of the full-size flow tables, as the kernel accounts it.
    for name in ["FLOWS", "REV_FLOWS", "RINGS"] {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(bed.pin_dir.join(name))
            .output()
            .context("bpftool")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(b) = v.get("bytes_memlock").and_then(serde_json::Value::as_f64) {
            report
                .control
                .insert(format!("map_memory_{name}_mib"), b / (1024.0 * 1024.0));
        }
    }
    report.control.insert(
        "flow_table_entries".into(),
        f64::from(lb_common::DEFAULT_FLOW_TABLE_SIZE),
    );
    Ok(())
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let sh = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    m.insert("kernel".into(), sh("uname", &["-r"]));
    m.insert("cores".into(), sh("nproc", &[]));
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(l) = cpu.lines().find(|l| l.starts_with("model name")) {
        m.insert(
            "cpu".into(),
            l.split(':').nth(1).unwrap_or("").trim().to_owned(),
        );
    }
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(l) = mem.lines().next() {
        m.insert(
            "memory".into(),
            l.split_whitespace()
                .nth(1)
                .map(|kb| format!("{:.1} GiB", kb.parse::<f64>().unwrap_or(0.0) / 1048576.0))
                .unwrap_or_default(),
        );
    }
    m
}

struct Args {
    out: PathBuf,
    object: PathBuf,
    agent: PathBuf,
    criterion: Option<PathBuf>,
    failover: Option<PathBuf>,
    quick: bool,
    /// Run one part and print it (no report): per-packet, rate or e2e.
    only: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        out: "target/bench".into(),
        object: PathBuf::new(),
        agent: PathBuf::new(),
        criterion: None,
        failover: None,
        quick: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = val()?.into(),
            "--object" => a.object = val()?.into(),
            "--agent" => a.agent = val()?.into(),
            "--criterion" => a.criterion = Some(val()?.into()),
            "--failover" => a.failover = Some(val()?.into()),
            "--quick" => a.quick = true,
            "--only" => a.only = Some(val()?),
            other => anyhow::bail!("unknown argument {other}; see cargo xtask bench"),
        }
    }
    anyhow::ensure!(
        a.object.is_file(),
        "--object: {} is not the XDP object (cargo xtask build-ebpf)",
        a.object.display()
    );
    anyhow::ensure!(
        a.agent.is_file(),
        "--agent: {} is not the lb-agent binary",
        a.agent.display()
    );
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    lb_testbed::require_prerequisites();
    let mut report = Report {
        date: report::today(),
        machine: machine(),
        ..Report::default()
    };
    match a.only.as_deref() {
        None => {}
        Some("per-packet") => {
            per_packet(&a.object, &mut report)?;
            println!("{:#?}", report.per_packet);
            return Ok(());
        }
        Some("rate") => {
            println!("{:#?}", packet::rates(&a.object, 1)?);
            return Ok(());
        }
        Some("e2e") => {
            println!("{:#?}", e2e::run(&a.agent, 2)?);
            return Ok(());
        }
        Some(other) => anyhow::bail!("--only {other}: use per-packet, rate or e2e"),
    }
    eprintln!("lb-bench: per-packet cost (BPF_PROG_TEST_RUN)");
    per_packet(&a.object, &mut report)?;
    eprintln!("lb-bench: control plane");
    control_plane(&a.object, &mut report)?;
    if let Some(dir) = &a.criterion {
        report.maglev_build_us = report::criterion_means(dir, "maglev_build");
    }
    if let Some(f) = &a.failover {
        report.failover = std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("detection-to-drain"))
            .map(str::to_owned)
            .collect();
    }
    eprintln!("lb-bench: packet rate (AF_PACKET generator)");
    report.packet_rate = packet::rates(&a.object, if a.quick { 1 } else { 3 })?;
    eprintln!("lb-bench: end to end (wrk, iperf3; direct, lb, haproxy)");
    let (rows, rss) = e2e::run(&a.agent, if a.quick { 2 } else { 4 })?;
    report.e2e = rows;
    report
        .control
        .insert("agent_rss_mib_incl_shared_rings_mapping".into(), rss.0);
    report
        .control
        .insert("agent_private_memory_mib".into(), rss.1);
    report::write(&a.out, &mut report)?;
    Ok(())
}

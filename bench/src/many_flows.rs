//! Per-packet cost of established flows with a million of them in the flow tables: every
//! flow is made by the data path itself (client SYN, origin SYN-ACK, client ACK through
//! `BPF_PROG_TEST_RUN`), so each has real connection-tracking state, and the timed packets
//! are spread over random flows, so `FLOWS` and `REV_FLOWS` lookups miss the CPU caches as
//! they would under live traffic. One hot flow and the bare XDP_TX floor are timed in the
//! same run, interleaved with it, for comparison.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_agent::{config::Config, dataplane::Dataplane, health::HealthTable, reconcile::Reconciler};
use lb_common::{FlowKey, CT_ESTABLISHED};
use lb_testbed::{tcp_flags, tcp_segment, FibBed, Side};

use crate::{median, origin, per_packet_config, Report, SNAT, VIP};

/// Flows to make: the million (the flow table holds `1 << 20`).
pub const FLOWS: u32 = 1_000_000;
/// Clients sit behind a router (`GATEWAY`, a permanent neighbour of the bed) in
/// `CLIENT_NET`, so the SYN-ACKs are forwarded to them without a million neighbour entries:
/// 250,000 client addresses with `PORTS_PER_CLIENT` source ports each, as many clients with
/// a few connections each would be.
const CLIENT_NET: [u8; 4] = [10, 128, 0, 0];
const GATEWAY: ([u8; 4], [u8; 6]) = ([10, 0, 1, 254], [2, 0, 0, 0, 1, 254]);
const PORTS_PER_CLIENT: u32 = 4;
const FIRST_PORT: u32 = 10_000;
/// SYNs the data path may refuse for want of a SNAT port (`drop_snat_exhausted`) before the
/// bench gives up; each refused tuple is skipped.
const MAX_REFUSED: u32 = FLOWS / 100;
/// SNAT ports are per (origin, SNAT address), 64512 each with `snat_ports = [1024, 65535]`:
/// 64 origins give 4.1M, so a million flows fill a quarter and the 16 linear probes of a
/// new flow's port search never run out.
const ORIGINS: usize = 64;
/// Timed packets per case, and the rounds they are spread over (floor, hot flow and random
/// flows take turns, so the drift of the kernel's per-run time over a run hits all three).
const SAMPLES: usize = 20_000;
const ROUNDS: usize = 4;
/// Making flows stops here if the million is not reached by then.
const SETUP_BUDGET_SECS: f64 = 60.0;
/// The client's ISN is 1000 (SYN seq), the origin's too: after the handshake both sides'
/// next sequence number is 1001.
const ISN: u32 = 1000;
const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Tuple `i`'s client: address, MAC (the frame's source: the router's) and source port.
fn client(i: u32) -> ([u8; 4], [u8; 6], u16) {
    let addr = u32::from_be_bytes(CLIENT_NET) + i / PORTS_PER_CLIENT;
    #[expect(clippy::cast_possible_truncation, reason = "below 10004")]
    let port = (FIRST_PORT + i % PORTS_PER_CLIENT) as u16;
    (addr.to_be_bytes(), GATEWAY.1, port)
}

/// The config: `per_packet_config`'s VIP and SNAT settings with `ORIGINS` origins
/// (10.0.11.2 and up, `origin(i)`).
fn config(bed: &FibBed) -> Result<Config> {
    Ok(Config::parse(
        &per_packet_config(&bed.pin_dir, ORIGINS, false),
        std::path::Path::new("bench-many-flows.toml"),
    )?)
}

/// One run of `prog` on `frame`: the kernel's time, the verdict, and the output frame in `out`.
fn run1(prog: &Xdp, frame: &[u8], ctx: &[u8], out: &mut [u8]) -> Result<(u64, u32)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(ctx),
            ..TestRunOptions::default()
        })
        .context("test_run")?;
    #[expect(clippy::cast_possible_truncation, reason = "nanoseconds of one run")]
    Ok((r.duration.as_nanos() as u64, r.return_value))
}

/// The client's in-window ACK of flow `i` after its handshake (seq and ack 1001): the
/// handshake's last packet, and every timed packet.
fn ack(i: u32, lb_mac: [u8; 6]) -> Vec<u8> {
    let (addr, mac, port) = client(i);
    tcp_segment(
        mac,
        lb_mac,
        addr,
        VIP,
        64,
        (port, 80),
        tcp_flags::ACK,
        (ISN + 1, ISN + 1),
        &[],
    )
}

/// Makes a flow of tuple `i` through `prog`: SYN, the origin's SYN-ACK to the SNAT port the
/// flow got (read from the SYN's output frame), the client's ACK; each must be redirected,
/// the SYN to an origin from the SNAT address, the SYN-ACK to the client. `Ok(false)` when
/// the data path refused the SYN for want of a SNAT port (then no flow was made).
fn handshake(
    prog: &Xdp,
    maps: &lb_agent::dataplane::Maps,
    bed: &FibBed,
    i: u32,
    ctx: (&[u8], &[u8]),
    out: &mut [u8],
) -> Result<bool> {
    let exhausted = || -> Result<u64> {
        Ok(maps.event_totals()?[lb_common::event::DROP_SNAT_EXHAUSTED as usize])
    };
    let (addr, mac, port) = client(i);
    let syn = tcp_segment(
        mac,
        bed.mac_a,
        addr,
        VIP,
        64,
        (port, 80),
        tcp_flags::SYN,
        (ISN, 0),
        &[],
    );
    let (_, v) = run1(prog, &syn, ctx.0, out)?;
    if v == XDP_DROP {
        // Rare (a probe run of taken ports): read the counter only then.
        let before = exhausted()?;
        let (_, v) = run1(prog, &syn, ctx.0, out)?;
        if v == XDP_DROP && exhausted()? > before {
            return Ok(false);
        }
        anyhow::bail!(
            "tuple {i}: SYN dropped, then verdict {v}; data path events: {}",
            drops(maps)
        );
    }
    // The rewritten SYN: IPv4 source at 26, destination at 30, TCP source port at 34.
    let (src, dst) = (&out[26..30], &out[30..34]);
    anyhow::ensure!(
        v == XDP_REDIRECT && src == SNAT && dst[..3] == [10, 0, 11],
        "flow {i}: SYN verdict {v}, out {src:?} -> {dst:?}; not redirected to an origin"
    );
    let oi = dst[3].wrapping_sub(2);
    anyhow::ensure!(
        usize::from(oi) < ORIGINS,
        "flow {i}: SYN to {dst:?}, not an origin"
    );
    let (oaddr, omac) = origin(oi);
    let snat_port = u16::from_be_bytes([out[34], out[35]]);
    let synack = tcp_segment(
        omac,
        bed.mac_b,
        oaddr,
        SNAT,
        64,
        (8080, snat_port),
        tcp_flags::SYN | tcp_flags::ACK,
        (ISN, ISN + 1),
        &[],
    );
    let (_, v) = run1(prog, &synack, ctx.1, out)?;
    anyhow::ensure!(
        v == XDP_REDIRECT && out[30..34] == addr && out[36..38] == port.to_be_bytes(),
        "flow {i}: SYN-ACK verdict {v}, out to {:?}; not redirected to the client",
        &out[30..34]
    );
    let (_, v) = run1(prog, &ack(i, bed.mac_a), ctx.0, out)?;
    anyhow::ensure!(v == XDP_REDIRECT, "flow {i}: ACK verdict {v}");
    Ok(true)
}

/// The data path's drop and pass counters that are not zero, for an error message.
fn drops(maps: &lb_agent::dataplane::Maps) -> String {
    maps.event_totals().map_or_else(
        |e| format!("unreadable: {e}"),
        |t| {
            t.iter()
                .zip(lb_common::event::NAMES)
                .filter(|(n, name)| {
                    **n > 0 && (name.starts_with("drop") || name.starts_with("pass"))
                })
                .map(|(n, name)| format!("{name} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
}

/// `v[p %]` of a sorted slice.
#[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
fn pct(sorted: &[u64], p: usize) -> f64 {
    sorted[(sorted.len() - 1) * p / 100] as f64
}

/// Makes up to `FLOWS` established flows, then times established packets of `SAMPLES`
/// random ones, of one hot flow and of the floor; figures go to `report.many_flows`.
pub fn run(object: &std::path::Path, report: &mut Report) -> Result<()> {
    let neighbours: Vec<([u8; 4], [u8; 6], Side)> =
        std::iter::once((GATEWAY.0, GATEWAY.1, Side::A))
            .chain((0..ORIGINS).map(|i| {
                #[expect(clippy::cast_possible_truncation, reason = "below 64")]
                let (a, m) = origin(i as u8);
                (a, m, Side::B)
            }))
            .collect();
    let bed = FibBed::new("bm", &neighbours);
    bed.ns.ip(&[
        "route",
        "add",
        &format!("{}/9", std::net::Ipv4Addr::from(CLIENT_NET)),
        "via",
        &std::net::Ipv4Addr::from(GATEWAY.0).to_string(),
        "dev",
        &bed.a,
    ]);
    let cfg = config(&bed)?;
    let figures = bed.ns.run(|| -> Result<BTreeMap<String, f64>> {
        let mut dp = Dataplane::load(object, &bed.pin_dir, cfg.dataplane.flow_table_size)?;
        let mut rec = Reconciler::adopt(dp.take_maps()?)?;
        rec.apply(&cfg, &HealthTable::default())?;
        for i in [bed.ifindex_a, bed.ifindex_b] {
            rec.maps.tx_ports.insert(i, i, None, 0)?;
        }
        rec.sync_local_addrs(&lb_agent::netwatch::local_addrs()?)?;
        let mut out = vec![0u8; 256];
        let frame_len = ack(0, bed.mac_a).len();
        let (ctx_a, ctx_b) = (bed.ctx(Side::A, frame_len), bed.ctx(Side::B, frame_len));

        // The flows, until the million or the time budget: `made` holds their tuples.
        let t = Instant::now();
        let mut made: Vec<u32> = Vec::with_capacity(FLOWS as usize);
        let mut refused = 0u32;
        {
            let prog = dp.program()?;
            let mut i = 0;
            while made.len() < FLOWS as usize {
                if handshake(prog, &rec.maps, &bed, i, (&ctx_a, &ctx_b), &mut out)? {
                    made.push(i);
                    if made.len().is_multiple_of(100_000) {
                        eprintln!(
                            "many-flows: {} flows in {:.1} s",
                            made.len(),
                            t.elapsed().as_secs_f64()
                        );
                        if t.elapsed().as_secs_f64() > SETUP_BUDGET_SECS {
                            eprintln!("many-flows: setup budget spent");
                            break;
                        }
                    }
                } else {
                    refused += 1;
                    anyhow::ensure!(
                        refused <= MAX_REFUSED,
                        "{refused} SYNs refused for want of a SNAT port at {} flows",
                        made.len()
                    );
                }
                i += 1;
            }
        }
        let setup_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut in_table = 0u64;
        for k in rec.maps.flows.keys() {
            k?;
            in_table += 1;
        }
        let count_secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            in_table == made.len() as u64,
            "{} handshakes made, FLOWS holds {in_table}",
            made.len()
        );

        // Random flows (xorshift64, a fixed sequence), and one hot flow among them.
        let picks: Vec<u32> = crate::picks(SAMPLES, made.len() as u64)
            .into_iter()
            .map(|k| made[usize::try_from(k).expect("below FLOWS")])
            .collect();
        let many: Vec<Vec<u8>> = picks.iter().map(|&i| ack(i, bed.mac_a)).collect();
        let hot = ack(made[made.len() / 2], bed.mac_a);
        let mut aux = aya::Ebpf::load_file(lb_agent::dataplane::test_object(object))?;
        let floor: &mut Xdp = aux
            .program_mut("xdp_tx_floor")
            .context("xdp_tx_floor")?
            .try_into()?;
        floor.load()?;
        let hits_before = rec.maps.event_totals()?[lb_common::event::FLOW_HIT as usize];
        let (mut many_t, mut hot_t, mut floor_t) = (vec![], vec![], vec![]);
        let prog = dp.program()?;
        for round in many.chunks(SAMPLES / ROUNDS) {
            for f in round {
                let (ns, v) = run1(floor, f, &ctx_a, &mut out)?;
                anyhow::ensure!(v == XDP_TX, "floor verdict {v}");
                floor_t.push(ns);
            }
            for _ in round {
                let (ns, v) = run1(prog, &hot, &ctx_a, &mut out)?;
                anyhow::ensure!(v == XDP_REDIRECT, "hot flow: verdict {v}");
                hot_t.push(ns);
            }
            for f in round {
                let (ns, v) = run1(prog, f, &ctx_a, &mut out)?;
                anyhow::ensure!(v == XDP_REDIRECT, "random flow: verdict {v}");
                many_t.push(ns);
            }
        }
        let hits = rec.maps.event_totals()?[lb_common::event::FLOW_HIT as usize] - hits_before;
        anyhow::ensure!(
            hits == 2 * SAMPLES as u64,
            "flow_hit grew by {hits} over {} established packets",
            2 * SAMPLES
        );
        // Checked after timing: these lookups would bring the sampled entries into the cache.
        for &i in &picks {
            let (addr, _, port) = client(i);
            let flow = rec
                .maps
                .flows
                .get(&FlowKey::tcp_v4(addr, port, VIP, 80), 0)
                .with_context(|| format!("no flow for flow {i}"))?;
            let rkey = flow.rev_key();
            let rev = rec
                .maps
                .rev_flows
                .get(&rkey, 0)
                .with_context(|| format!("no tracking entry for flow {i}"))?;
            anyhow::ensure!(
                rev.flags & CT_ESTABLISHED != 0,
                "flow {i} is not established (flags {:#x})",
                rev.flags
            );
        }
        let mut m = BTreeMap::new();
        m.insert("flows_in_table".into(), in_table as f64);
        m.insert("setup_seconds".into(), setup_secs);
        m.insert("flow_count_seconds".into(), count_secs);
        m.insert(
            "clients".into(),
            f64::from(made.last().map_or(0, |l| l / PORTS_PER_CLIENT + 1)),
        );
        m.insert("syns_refused_snat_exhausted".into(), f64::from(refused));
        m.insert("origins".into(), ORIGINS as f64);
        m.insert("samples".into(), SAMPLES as f64);
        m.insert("rounds".into(), ROUNDS as f64);
        let floor_ns = median(&mut floor_t);
        m.insert("floor_ns".into(), floor_ns);
        m.insert("floor_p10_ns".into(), pct(&floor_t, 10));
        m.insert("floor_p90_ns".into(), pct(&floor_t, 90));
        for (name, t) in [
            ("established_1m_flows", &mut many_t),
            ("established_hot_flow", &mut hot_t),
        ] {
            let med = median(t);
            m.insert(format!("{name}_median_ns"), med);
            m.insert(format!("{name}_p10_ns"), pct(t, 10));
            m.insert(format!("{name}_p90_ns"), pct(t, 90));
            m.insert(format!("{name}_floor_ns"), floor_ns);
            m.insert(format!("{name}_ratio"), med / floor_ns);
        }
        drop(rec);
        drop(dp);
        Ok(m)
    })?;
    report.many_flows = figures;
    Ok(())
}

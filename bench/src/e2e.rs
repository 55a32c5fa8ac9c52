//! End to end, one topology, same run: client -> origin directly (through the LB namespace's
//! kernel forwarding, no XDP), client -> our VIP (XDP full NAT), client -> HAProxy in TCP mode
//! on the LB namespace. Real tools: wrk (keep-alive requests/s; `Connection: close`, i.e. new
//! connections/s), iperf3 (one stream, Gbit/s) and iperf3 -u (64-byte datagrams received
//! per second; no HAProxy column: it has no UDP mode). One origin, so the paths differ only
//! in the load balancer.

use std::{
    net::{SocketAddrV4, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_testbed::{origin_addr, Agent, NetNs, TempFile, Topology, SNAT, VIP};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub test: String,
    pub unit: String,
    pub direct: f64,
    pub lb: f64,
    pub haproxy: f64,
    pub lb_vs_direct: f64,
    pub lb_vs_haproxy: f64,
}

/// A process in a namespace, killed on drop.
struct Proc(Child);

impl Proc {
    fn spawn(ns: &NetNs, cmd: &str, args: &[&str]) -> Result<Self> {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd} (cargo xtask bench installs it)"))?;
        Ok(Self(child))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(ns: &NetNs, addr: SocketAddrV4) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    ns.run(|| loop {
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    })
}

fn wrk(ns: &NetNs, url: &str, secs: u32, close: bool) -> Result<f64> {
    let d = format!("{secs}s");
    let mut args = vec!["-t2", "-c32", "-d", &d];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = ns.exec("wrk", &args);
    out.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {out}"))
}

/// iperf3's JSON report of a test against `host:port` for `secs` seconds, with `extra`
/// options.
fn iperf_json(
    ns: &NetNs,
    host: &str,
    port: u16,
    secs: u32,
    extra: &[&str],
) -> Result<(serde_json::Value, String)> {
    let (port, secs) = (port.to_string(), secs.to_string());
    let mut args = vec!["-c", host, "-p", &port, "-t", &secs, "-J"];
    args.extend_from_slice(extra);
    let out = ns.exec("iperf3", &args);
    let v = serde_json::from_str(&out).context("iperf3 JSON")?;
    Ok((v, out))
}

fn iperf(ns: &NetNs, host: &str, port: u16, secs: u32) -> Result<f64> {
    let (v, _) = iperf_json(ns, host, port, secs, &[])?;
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|b| b / 1e9)
        .context("iperf3: no end.sum_received.bits_per_second")
}

/// UDP datagrams of 64 bytes per second received by the iperf3 server (thousands), the
/// client sending as fast as it can (`-b 0`): sent minus lost, over the test's seconds.
fn iperf_udp(ns: &NetNs, host: &str, port: u16, secs: u32) -> Result<f64> {
    let (v, out) = iperf_json(ns, host, port, secs, &["-u", "-b", "0", "-l", "64"])?;
    let f = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("iperf3 -u: no {p} in {out}"))
    };
    let (sent, lost, secs) = (
        f("/end/sum/packets")?,
        f("/end/sum/lost_packets")?,
        f("/end/sum/seconds")?,
    );
    anyhow::ensure!(secs > 0.0 && sent > 0.0, "iperf3 -u sent nothing: {out}");
    Ok((sent - lost) / secs / 1e3)
}

fn measure(
    topo: &Topology,
    host: &str,
    http_port: u16,
    iperf_port: u16,
    secs: u32,
) -> Result<[f64; 3]> {
    let url = format!("http://{host}:{http_port}/");
    Ok([
        wrk(&topo.client, &url, secs, false)?,
        wrk(&topo.client, &url, secs, true)?,
        iperf(&topo.client, host, iperf_port, secs)?,
    ])
}

const WIDE_SNAT: &str = "snat_ports = [1024, 65535]";

const ORIGIN_HTTP: &str = "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 0.0.0.0:8080\n  http-request return status 200 content-type text/plain string ok\n";

fn haproxy_lb(origin: std::net::Ipv4Addr) -> String {
    format!(
        "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend web\n  bind {VIP}:80\n  default_backend web\nbackend web\n  server o1 {origin}:8080\n\
         frontend iperf\n  bind {VIP}:5201\n  default_backend iperf\nbackend iperf\n  server o1 {origin}:5201\n"
    )
}

/// API changes timed from request to answer: the agent answers after the change is
/// validated, saved to the state file (fsync) and written to the maps. `n` PATCHes of pool
/// `web` alternate one origin's weight between 0.5 and 1 (it ends where it began). Returns
/// the median and the largest, in ms.
fn api_latency(ns: &NetNs, n: usize) -> Result<(f64, f64)> {
    ns.run(|| -> Result<(f64, f64)> {
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let auth = format!("Bearer {}", lb_testbed::API_TOKEN);
        let base = "http://127.0.0.1:8405/client/v4/user/load_balancers/pools";
        let list: serde_json::Value = http
            .get(base)
            .set("Authorization", &auth)
            .call()?
            .into_json()?;
        let pool = list["result"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == "web"))
            .context("pool web over the API")?;
        let id = pool["id"].as_str().context("pool id")?;
        let mut origins = pool["origins"].clone();
        let mut ms = Vec::with_capacity(n);
        for i in 0..n {
            origins[0]["weight"] = serde_json::json!(if i % 2 == 0 { 0.5 } else { 1.0 });
            let body = serde_json::json!({ "origins": origins });
            let t = Instant::now();
            let r: serde_json::Value = http
                .request("PATCH", &format!("{base}/{id}"))
                .set("Authorization", &auth)
                .send_json(body)?
                .into_json()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(r["success"] == true, "PATCH refused: {r}");
        }
        ms.sort_by(f64::total_cmp);
        Ok((ms[ms.len() / 2], ms[ms.len() - 1]))
    })
}

/// What `run` measures: the end-to-end rows, the agent's memory (RSS, private) in MiB
/// while it served, and the API change latency (median, max) in ms.
pub type Measured = (Vec<Row>, (f64, f64), (f64, f64));

/// Runs the end-to-end part; see `Measured`.
pub fn run(agent_bin: &Path, secs: u32) -> Result<Measured> {
    let topo = Topology::build(1);
    let o = origin_addr(1);
    let origin_cfg = TempFile::new("origin-haproxy.cfg", ORIGIN_HTTP);
    let _http = Proc::spawn(
        &topo.origins[0],
        "haproxy",
        &["-f", origin_cfg.path.to_str().context("path")?, "-db"],
    )?;
    let _iperf = Proc::spawn(&topo.origins[0], "iperf3", &["-s", "-p", "5201"])?;
    wait_port(&topo.lb, SocketAddrV4::new(o, 8080))?;
    wait_port(&topo.lb, SocketAddrV4::new(o, 5201))?;

    let direct = measure(&topo, &o.to_string(), 8080, 5201, secs)?;
    let direct_udp = iperf_udp(&topo.client, &o.to_string(), 5201, secs)?;

    // A dedicated SNAT address with the full port range, as recommended for production: the
    // new-connection rate a full-NAT LB sustains per origin is bounded by SNAT ports over
    // the origin's TIME_WAIT. The defaults (snat_ports unset) are measured below as separate
    // rows: first with the SNAT address on the LB's loopback (the host's own: 61000-65535),
    // then with it removed (a dedicated address: the full range).
    let mut cfg = topo.base_config(WIDE_SNAT);
    cfg.push_str(&format!(
        "[[pools]]\nname = \"web\"\norigins = [{{ name = \"o1\", address = \"{o}\", port = 8080 }}]\n\n\
         [[pools]]\nname = \"iperf\"\norigins = [{{ name = \"o1\", address = \"{o}\", port = 5201 }}]\n\n\
         [[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = 80\ndefault_pools = [\"web\"]\n\n\
         [[load_balancers]]\nname = \"iperf\"\naddress = \"{VIP}\"\nport = 5201\ndefault_pools = [\"iperf\"]\n\n\
         [[load_balancers]]\nname = \"iperf-udp\"\nprotocol = \"udp\"\naddress = \"{VIP}\"\nport = 5201\ndefault_pools = [\"iperf\"]\n"
    ));
    let default_range_cfg = cfg.replace(WIDE_SNAT, "");
    let cfg = TempFile::new("bench-lb.toml", &cfg);
    let mut agent = Agent::start(agent_bin, &topo.lb, &cfg.path, &[]);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    // RSS counts the 32 MiB RINGS mapping the agent shares with the kernel; RssAnon is the
    // agent's own memory.
    let rss = (field("VmRSS:"), field("RssAnon:"));
    let api = api_latency(&topo.lb, 50)?;
    let ours = measure(&topo, &VIP.to_string(), 80, 5201, secs)?;
    // iperf3's UDP test: its control connection through the TCP VIP, the datagrams through
    // the UDP VIP on the same port (one origin, so both reach the same server).
    let ours_udp = iperf_udp(&topo.client, &VIP.to_string(), 5201, secs)?;
    if std::env::var_os("LB_BENCH_DEBUG").is_some() {
        let out = Command::new(agent_bin)
            .arg("--config")
            .arg(&cfg.path)
            .arg("stats")
            .output()?;
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    // The default range, on a fresh data path (no flows left from the wide range).
    agent.stop();
    drop(agent);
    let teardown = |bin: &Path| -> Result<()> {
        let out = Command::new(bin)
            .arg("teardown")
            .arg("--pin-dir")
            .arg(&topo.pin_dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "teardown failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    teardown(agent_bin)?;
    std::fs::write(&cfg.path, &default_range_cfg)?;
    let mut agent = Agent::start(agent_bin, &topo.lb, &cfg.path, &[]);
    let ours_default_range = wrk(&topo.client, &format!("http://{VIP}:80/"), secs, true)?;
    if std::env::var_os("LB_BENCH_DEBUG").is_some() {
        let out = Command::new(agent_bin)
            .arg("--config")
            .arg(&cfg.path)
            .arg("stats")
            .output()?;
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    agent.stop();
    drop(agent);
    teardown(agent_bin)?;
    // The example config's SNAT settings: a dedicated SNAT address (none of the host's own:
    // the origins reach it through the LB, their gateway, and XDP answers for it) with
    // snat_ports unset, which is then the full range.
    topo.lb
        .ip(&["addr", "del", &format!("{SNAT}/32"), "dev", "lo"]);
    let mut agent = Agent::start(agent_bin, &topo.lb, &cfg.path, &[]);
    let ours_dedicated_default = wrk(&topo.client, &format!("http://{VIP}:80/"), secs, true)?;
    agent.stop();
    drop(agent);
    teardown(agent_bin)?;

    topo.lb
        .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let lb_cfg = TempFile::new("lb-haproxy.cfg", &haproxy_lb(o));
    let _haproxy = Proc::spawn(
        &topo.lb,
        "haproxy",
        &["-f", lb_cfg.path.to_str().context("path")?, "-db"],
    )?;
    wait_port(&topo.client, SocketAddrV4::new(VIP, 80))?;
    let hap = measure(&topo, &VIP.to_string(), 80, 5201, secs)?;

    let names = [
        ("HTTP keep-alive (wrk)", "requests/s"),
        ("new connections (wrk, Connection: close)", "connections/s"),
        ("bulk TCP, one stream (iperf3)", "Gbit/s"),
    ];
    let row = |test: &str, unit: &str, d: f64, l: f64, h: f64| Row {
        test: test.into(),
        unit: unit.into(),
        direct: d,
        lb: l,
        haproxy: h,
        lb_vs_direct: l / d,
        lb_vs_haproxy: if h > 0.0 { l / h } else { 0.0 },
    };
    let mut rows: Vec<Row> = names
        .iter()
        .enumerate()
        .map(|(i, (t, u))| row(t, u, direct[i], ours[i], hap[i]))
        .collect();
    // HAProxy has no UDP mode: 0 there (the report prints "n/a").
    rows.push(row(
        "UDP datagrams of 64 bytes, one flow, sender unthrottled (iperf3 -u -b 0)",
        "thousand datagrams/s received",
        direct_udp,
        ours_udp,
        0.0,
    ));
    rows.push(row(
        "new connections, example config's SNAT settings: dedicated SNAT address, snat_ports unset = 1024-65535 (wrk, Connection: close)",
        "connections/s",
        direct[1],
        ours_dedicated_default,
        hap[1],
    ));
    rows.push(row(
        "new connections, SNAT address shared with the host, snat_ports unset = 61000-65535 (wrk, Connection: close)",
        "connections/s",
        direct[1],
        ours_default_range,
        hap[1],
    ));
    Ok((rows, rss, api))
}

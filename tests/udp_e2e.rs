//! End to end, UDP load balancing: a client namespace, the LB namespace running the real
//! `lb-agent` with a `protocol = "udp"` load balancer, and origin namespaces with UDP echo
//! servers (written here) that answer each datagram with their own name. Shown: the
//! weighted split of 3000 exchanges from distinct source ports, the drain of a killed
//! origin by a `udp_icmp` monitor within its bound, a long-lived session that keeps its
//! origin across a reload that moves ring slots, the expiry of idle flows after
//! `udp_timeout` / `udp_unreplied_timeout` (the `udp_flow_expired` event), and an hping3
//! flood of datagrams from random sources that meets `udp_budget` while a session goes on.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_agent::{config::Config, dataplane::Maps, plan::vip_key_of, stats, status::Status};
use lb_common::IPPROTO_UDP;

use crate::health::RingWatch;
use lb_testbed::{
    enter_netns, origin_addr, require_prerequisites, serial, NetNs, Server, TempFile, Topology,
    CLIENT, VIP,
};

/// The UDP VIP's port (and the TCP one beside it in the split test).
pub(crate) const UDP_VIP_PORT: u16 = 53;
/// Where the origins' echo servers listen.
pub(crate) const ECHO_PORT: u16 = 5353;

fn udp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, UDP_VIP_PORT)
}

/// A UDP echo server in a namespace: answers every datagram with `<name> <payload>`, except
/// those starting with `SILENT` (a flow its origin never answers). Stopped on drop: the
/// socket closes, so later datagrams to the port get an ICMP port unreachable.
pub(crate) struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &NetNs, name: &str, port: u16) -> Self {
        Self::start_on(ns, name, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }

    /// `start` on address `bind`: `::` answers IPv4 and IPv6 (a dual-stack socket).
    pub(crate) fn start_on(ns: &NetNs, name: &str, bind: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (path, name, stop2) = (ns.path(), name.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let s = UdpSocket::bind((bind, port)).expect("bind echo server");
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("read timeout");
            tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let payload = String::from_utf8_lossy(&buf[..n]);
                if payload.starts_with("SILENT") {
                    continue;
                }
                let _ = s.send_to(format!("{name} {payload}").as_bytes(), from);
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("echo server did not start");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// One per origin namespace, named o1, o2, ...
    fn on_every_origin(topo: &Topology) -> Vec<Option<Self>> {
        topo.origins
            .iter()
            .enumerate()
            .map(|(i, ns)| Some(Self::start(ns, &format!("o{}", i + 1), ECHO_PORT)))
            .collect()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running UDP test bed: the agent under test (dropped first), the echo servers, the
/// config, the namespaces (last).
struct UdpBed {
    agent: lb_testbed::Agent,
    echo: Vec<Option<UdpEcho>>,
    cfg: TempFile,
    topo: Topology,
}

impl UdpBed {
    /// `weights.len()` origins with echo servers, and the agent on
    /// `udp_config(weights, extra_dataplane, monitor, extra)`. Origins rate-limit ICMP
    /// errors (1/s per destination after a burst): here they do not, so a `udp_icmp`
    /// monitor hears every port unreachable.
    fn start(weights: &[f64], extra_dataplane: &str, monitor: Option<&str>, extra: &str) -> Self {
        require_prerequisites();
        let topo = Topology::build(weights.len());
        for o in &topo.origins {
            o.sysctl("net.ipv4.icmp_ratelimit", "0");
        }
        let echo = UdpEcho::on_every_origin(&topo);
        let cfg = TempFile::new(
            "lb.toml",
            &udp_config(&topo, weights, extra_dataplane, monitor, extra),
        );
        let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
        Self {
            agent,
            echo,
            cfg,
            topo,
        }
    }
}

/// A client socket on the client's address and source port `port`, connected to the VIP.
/// Call inside the client namespace.
fn client_socket(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, port))
        .unwrap_or_else(|e| panic!("bind client port {port}: {e}"));
    s.connect(udp_vip()).expect("connect to the VIP");
    s
}

/// Sends `msg` (unique per call) and waits for its echo: the answering origin's name, or
/// `None` after `tries` sends without an answer (300 ms each). Stale answers to earlier
/// messages are skipped.
pub(crate) fn ask(s: &UdpSocket, msg: &str, tries: u32) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    let mut buf = [0u8; 2048];
    for _ in 0..tries {
        if s.send(msg.as_bytes()).is_err() {
            // An ICMP error from an earlier datagram (port unreachable) is reported here.
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if let Some((name, payload)) = text.split_once(' ') {
                        if payload == msg {
                            return Some(name.to_owned());
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => {} // ECONNREFUSED from an ICMP error: keep waiting
            }
        }
    }
    None
}

/// A config: pool `dns` of the topology's origins on the echo port at `weights`, monitored
/// by a `udp_icmp` monitor with `monitor` timings when given, and the UDP load balancer
/// `dns` on VIP:53. `extra` is appended (more objects).
fn udp_config(
    topo: &Topology,
    weights: &[f64],
    extra_dataplane: &str,
    monitor: Option<&str>,
    extra: &str,
) -> String {
    use std::fmt::Write as _;
    let mut c = topo.base_config(extra_dataplane);
    if let Some(timing) = monitor {
        let _ = write!(
            c,
            "[[monitors]]\nname = \"udp\"\ntype = \"udp_icmp\"\n{timing}\n\n"
        );
    }
    c.push_str("[[pools]]\nname = \"dns\"\n");
    if monitor.is_some() {
        c.push_str("monitor = \"udp\"\n");
    }
    c.push_str("origins = [\n");
    for (i, w) in weights.iter().enumerate() {
        let n = i + 1;
        let _ = writeln!(
            c,
            "  {{ name = \"o{n}\", address = \"{}\", port = {ECHO_PORT}, weight = {w} }},",
            origin_addr(n)
        );
    }
    let _ = write!(
        c,
        "]\n\n[[load_balancers]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = {UDP_VIP_PORT}\nprotocol = \"udp\"\ndefault_pools = [\"dns\"]\n\n{extra}"
    );
    c
}

fn read_stats(cfg: &Path) -> stats::Stats {
    let cfg = Config::load(cfg).expect("config");
    let maps = Maps::open_pinned(&cfg.dataplane.pin_dir).expect("pinned maps");
    stats::collect(&cfg, &maps).expect("stats")
}

/// The data path's view for a failure message: the non-zero event counters and the flows
/// by state.
fn dataplane_view(cfg: &Path) -> String {
    let s = read_stats(cfg);
    let events: BTreeMap<&String, &u64> = s.events.iter().filter(|(_, n)| **n > 0).collect();
    format!("events {events:?}; flows {:?}", s.flows)
}

/// The running agent's status file.
fn status(topo: &Topology) -> Option<Status> {
    Status::read(&topo.status_file).ok()
}

fn origin_up(topo: &Topology, origin: &str) -> bool {
    status(topo).is_some_and(|s| {
        s.origins
            .iter()
            .any(|o| o.origin == origin && o.state.to_string() == "up")
    })
}

/// The UDP VIP's ring and origin ids, read from the pinned maps.
fn ring_watch(topo: &Topology) -> RingWatch {
    RingWatch::open_vip(topo, &vip_key_of(VIP, UDP_VIP_PORT, IPPROTO_UDP))
}

/// Exchanges one datagram from each of `ports`: origin name -> answers ("lost" when none).
fn answers_from(topo: &Topology, ports: std::ops::Range<u16>) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut m = BTreeMap::new();
        for p in ports {
            let s = client_socket(p);
            let k = ask(&s, &format!("q{p}"), 3).unwrap_or_else(|| "lost".to_owned());
            *m.entry(k).or_insert(0) += 1;
            if m.len() == 1 && m.get("lost") == Some(&20) {
                break; // none of the first 20 answered: the data path does not forward UDP
            }
        }
        m
    })
}

#[test]
fn three_thousand_udp_exchanges_split_by_weight() {
    let _serial = serial();
    // A TCP load balancer on the same address and port, to TCP name servers on the same
    // origin port: another VIP, served alongside.
    let tcp_lb = format!(
        "[[load_balancers]]\nname = \"dns-tcp\"\naddress = \"{VIP}\"\nport = {UDP_VIP_PORT}\ndefault_pools = [\"dns\"]\n"
    );
    let b = UdpBed::start(&[1.0 / 3.0, 2.0 / 3.0, 1.0], "", None, &tcp_lb);
    let (topo, cfg) = (&b.topo, &b.cfg);
    let _tcp: Vec<Server> = topo
        .origins
        .iter()
        .enumerate()
        .map(|(i, ns)| Server::start(ns, &format!("o{}", i + 1), ECHO_PORT))
        .collect();

    const N: u16 = 3000;
    let counts = answers_from(topo, 20000..20000 + N);
    println!("udp answers: {counts:?}");
    assert_eq!(
        counts.get("lost"),
        None,
        "every exchange answered: {counts:?}; {}",
        dataplane_view(&cfg.path)
    );
    crate::e2e::assert_one_two_three(&counts, usize::from(N));
    // TCP on the same address and port still reaches the same origins.
    let tcp = topo.client.run(|| {
        (0..30)
            .map(|_| {
                lb_testbed::request(None, udp_vip(), "NAME")
                    .map(|r| r.trim().to_owned())
                    .unwrap_or_else(|e| format!("failed: {e}"))
            })
            .collect::<Vec<_>>()
    });
    assert!(tcp.iter().all(|n| n.starts_with('o')), "{tcp:?}");

    // The data path's counters tell the same story, per VIP and protocol.
    let s = read_stats(&cfg.path);
    let v = s
        .vips
        .iter()
        .find(|v| v.name == "dns")
        .expect("the udp VIP's stats");
    assert_eq!(v.protocol, "udp");
    let vt = s
        .vips
        .iter()
        .find(|v| v.name == "dns-tcp")
        .expect("the tcp VIP's stats");
    assert_eq!(vt.protocol, "tcp");
    assert_eq!(v.new_flows, u64::from(N), "one flow per source port");
    assert_eq!(
        vt.new_flows,
        tcp.len() as u64,
        "one flow per TCP connection"
    );
    assert!(
        v.reply_packets >= u64::from(N),
        "{} replies",
        v.reply_packets
    );
    // Both load balancers use pool dns on origin port 5353: one ring, one id per origin,
    // so the per-origin counters hold both protocols' flows (README, "What is shared").
    let flows: u64 = v.origins.iter().map(|o| o.new_flows).sum();
    assert_eq!(
        flows,
        v.new_flows + vt.new_flows,
        "per-origin flows add up to the two VIPs'"
    );
    for o in &v.origins {
        let tcp_here = tcp.iter().filter(|n| **n == o.name).count();
        assert_eq!(
            o.new_flows,
            (counts[&o.name] + tcp_here) as u64,
            "{}: flows and answers, udp and tcp",
            o.name
        );
    }
    let f = s.flows.expect("flow states");
    println!("flows: {f:?}");
    // One exchange per source port: answered, never continued.
    assert_eq!(f.udp_answered, u64::from(N), "{f:?}");
    for bad in [
        "drop_no_origin",
        "drop_snat_exhausted",
        "drop_flow_insert",
        "drop_no_route",
        "drop_udp_budget",
        "drop_malformed_udp",
        "drop_vip_other_proto",
    ] {
        assert_eq!(s.events[bad], 0, "{bad}: {:?}", s.events);
    }
}

#[test]
fn a_killed_udp_origin_is_drained_by_udp_icmp_within_the_bound() {
    let _serial = serial();
    let (interval, retries, timeout) = (0.5, 1u32, 0.25);
    let timing = format!("interval = {interval}\nretries = {retries}\ntimeout = {timeout}");
    let mut b = UdpBed::start(&[1.0, 1.0, 1.0], "", Some(&timing), "");
    let (topo, cfg) = (&b.topo, &b.cfg);
    let bound = Duration::from_secs_f64(interval * f64::from(retries + 1) + timeout);
    lb_testbed::wait_for(
        "o1-o3 up",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            ["o1", "o2", "o3"]
                .iter()
                .all(|o| origin_up(topo, o))
                .then_some(())
        },
    );
    let watch = ring_watch(topo);
    let o2 = watch.origin_id(origin_addr(2), ECHO_PORT);
    lb_testbed::wait_for(
        "o2 in the ring",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || (watch.slots_of(o2) > 0).then_some(()),
    );

    // Traffic through the kill: a new source port per exchange, every 5 ms.
    let stop = AtomicBool::new(false);
    // (when the exchange started, who answered or "lost").
    let log: Mutex<Vec<(Instant, String)>> = Mutex::new(Vec::new());
    let drained_after = std::thread::scope(|sc| {
        sc.spawn(|| {
            topo.client.run(|| {
                for p in 30000u16..40000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Logged with its start: the flow is made by its first datagram.
                    let start = Instant::now();
                    let s = client_socket(p);
                    let k = ask(&s, &format!("t{p}"), 1).unwrap_or_else(|| "lost".to_owned());
                    log.lock().expect("log").push((start, k));
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        });
        std::thread::sleep(Duration::from_millis(500));
        // Kill at a random phase of the probe schedule.
        std::thread::sleep(Duration::from_secs_f64(interval * fastrand::f64()));
        let t0 = Instant::now();
        b.echo[1] = None; // o2's echo server stops: its port answers with port unreachable
        lb_testbed::wait_for(
            "o2 drained from the ring",
            bound + Duration::from_secs(3),
            Duration::from_millis(1),
            || (watch.slots_of(o2) == 0).then_some(()),
        );
        let d = t0.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (t0, d)
    });
    let (t0, d) = drained_after;
    println!(
        "udp_icmp drain: o2 left the ring {:.0} ms after its echo server stopped (bound interval x (retries + 1) + timeout = {:.0} ms)",
        d.as_secs_f64() * 1000.0,
        bound.as_secs_f64() * 1000.0
    );
    assert!(
        d <= bound,
        "drained after {d:?}, more than interval x (retries + 1) + timeout = {bound:?}"
    );
    let log = log.into_inner().expect("log");
    let before: Vec<&String> = log
        .iter()
        // Done before the kill (an exchange waits 300 ms at most for its answer).
        .filter(|(t, _)| *t + Duration::from_millis(350) < t0)
        .map(|(_, k)| k)
        .collect();
    assert!(
        before.iter().any(|k| *k == "o2"),
        "o2 answered before the kill: {before:?}"
    );
    assert!(
        before.iter().all(|k| k.starts_with('o')),
        "no loss before the kill: {before:?}; {}",
        dataplane_view(&cfg.path)
    );
    let after: Vec<&String> = log
        .iter()
        // Started after the drain was seen in the maps.
        .filter(|(t, _)| *t > t0 + d + Duration::from_millis(50))
        .map(|(_, k)| k)
        .collect();
    assert!(!after.is_empty(), "traffic after the drain");
    assert!(
        after.iter().all(|k| *k == "o1" || *k == "o3"),
        "new flows after the drain reach o1 and o3 only: {after:?}"
    );
    let fresh = answers_from(topo, 41000..41300);
    assert_eq!(
        fresh.keys().map(String::as_str).collect::<Vec<_>>(),
        ["o1", "o3"],
        "{fresh:?}"
    );
    let s = read_stats(&cfg.path);
    println!(
        "events: udp_flow_expired {}, drop_udp_budget {}",
        s.events["udp_flow_expired"], s.events["drop_udp_budget"]
    );
}

#[test]
fn a_udp_session_keeps_its_origin_across_a_reload() {
    let _serial = serial();
    let b = UdpBed::start(&[1.0, 1.0, 1.0], "", None, "");
    let (topo, cfg, agent) = (&b.topo, &b.cfg, &b.agent);
    let watch = ring_watch(topo);

    // One source port, a datagram every 200 ms, for 6 s; the reload comes 2 s in.
    let answers: Mutex<Vec<(Instant, Option<String>)>> = Mutex::new(Vec::new());
    let (first_tx, first_rx) = mpsc::channel();
    let reloaded_at = std::thread::scope(|sc| {
        sc.spawn(|| {
            topo.client.run(|| {
                let s = client_socket(45000);
                for i in 0..30 {
                    let a = ask(&s, &format!("s{i}"), 1);
                    if i == 0 {
                        let _ = first_tx.send(a.clone());
                    }
                    answers.lock().expect("answers").push((Instant::now(), a));
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        });
        let first = first_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("first exchange")
            .unwrap_or_else(|| {
                panic!(
                    "the session's first datagram is unanswered; {}",
                    dataplane_view(&cfg.path)
                )
            });
        std::thread::sleep(Duration::from_secs(2));
        // The session's origin gets weight 0: every one of its ring slots moves to the
        // others, and new flows no longer reach it.
        let n: usize = first[1..].parse().expect("origin number");
        let mut w = [1.0, 1.0, 1.0];
        w[n - 1] = 0.0;
        let x = watch.origin_id(origin_addr(n), ECHO_PORT);
        assert!(watch.slots_of(x) > 0, "{first} holds ring slots before");
        std::fs::write(&cfg.path, udp_config(topo, &w, "", None, "")).expect("write config");
        agent.reload().expect("reload accepted");
        let at = Instant::now();
        assert_eq!(watch.slots_of(x), 0, "{first}'s slots all moved");
        (first, at)
    });
    let (first, at) = reloaded_at;
    let answers = answers.into_inner().expect("answers");
    let after = answers.iter().filter(|(t, _)| *t > at).count();
    println!(
        "udp session: {} datagrams, {after} after the reload, origin {first}",
        answers.len()
    );
    assert!(after >= 10, "the session went on after the reload");
    for (i, (_, a)) in answers.iter().enumerate() {
        assert_eq!(
            a.as_deref(),
            Some(first.as_str()),
            "datagram {i} of the session: {answers:?}"
        );
    }
    let fresh = answers_from(topo, 46000..46200);
    assert!(
        !fresh.contains_key(&first) && !fresh.contains_key("lost"),
        "new flows avoid {first}: {fresh:?}"
    );
}

#[test]
fn idle_udp_flows_expire_after_their_timeouts() {
    let _serial = serial();
    let b = UdpBed::start(
        &[1.0],
        "udp_timeout = 6\nudp_unreplied_timeout = 2",
        None,
        "",
    );
    let (topo, cfg) = (&b.topo, &b.cfg);
    let expired = || read_stats(&cfg.path).events["udp_flow_expired"];
    let e0 = expired();
    let (answered, silent) = topo
        .client
        .run(|| (client_socket(47000), client_socket(47001)));
    let ask_in = |s: &UdpSocket, msg: &str| topo.client.run(|| ask(s, msg, 3));

    // A conversation (answered, and continued after the answer): idle 3.5 s (under
    // udp_timeout, over udp_unreplied_timeout) is kept.
    assert_eq!(
        ask_in(&answered, "a1").as_deref(),
        Some("o1"),
        "{}",
        dataplane_view(&cfg.path)
    );
    assert_eq!(ask_in(&answered, "a1b").as_deref(), Some("o1"));
    // An unanswered flow: the origin ignores SILENT.
    assert_eq!(ask_in(&silent, "SILENT b1"), None);
    let f = read_stats(&cfg.path).flows.expect("flow states");
    assert_eq!(
        (f.udp_conversation, f.udp_unanswered),
        (1, 1),
        "{}",
        dataplane_view(&cfg.path)
    );
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(ask_in(&answered, "a2").as_deref(), Some("o1"));
    assert_eq!(
        expired(),
        e0,
        "3.5 s idle is within udp_timeout (6 s): the answered flow stands; {}",
        dataplane_view(&cfg.path)
    );
    // The unanswered flow, idle 3.5 s, is past udp_unreplied_timeout (2 s): replaced.
    assert_eq!(ask_in(&silent, "b2").as_deref(), Some("o1"));
    assert_eq!(
        expired(),
        e0 + 1,
        "the unanswered flow expired after udp_unreplied_timeout; {}",
        dataplane_view(&cfg.path)
    );
    // Idle 8 s, past udp_timeout: the answered flow is replaced too.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(ask_in(&answered, "a3").as_deref(), Some("o1"));
    let s = read_stats(&cfg.path);
    println!(
        "udp_flow_expired: {} (from {e0}); flows {:?}; VIP new flows {}",
        s.events["udp_flow_expired"], s.flows, s.vips[0].new_flows
    );
    assert_eq!(
        s.events["udp_flow_expired"],
        e0 + 2,
        "the answered flow expired after udp_timeout"
    );
    for bad in ["drop_udp_budget", "drop_malformed_udp", "drop_no_origin"] {
        assert_eq!(s.events[bad], 0, "{bad}");
    }
}

#[test]
fn a_spoofed_udp_flood_meets_the_budget_and_sessions_continue() {
    const BUDGET: u64 = 256;
    const FLOOD: Duration = Duration::from_secs(8);
    let _serial = serial();
    // Window of the budget: min(udp_unreplied_timeout, 16 s) = 3 s.
    let b = UdpBed::start(
        &[1.0, 1.0],
        &format!("udp_budget = {BUDGET}\nudp_unreplied_timeout = 3"),
        None,
        "",
    );
    let (topo, cfg) = (&b.topo, &b.cfg);
    let session = topo.client.run(|| client_socket(47200));
    let ask_in = |s: &UdpSocket, msg: &str| topo.client.run(|| ask(s, msg, 3));
    let origin = ask_in(&session, "s0").expect("the session is answered");
    assert_eq!(ask_in(&session, "s1").as_deref(), Some(origin.as_str()));
    let before = read_stats(&cfg.path);
    // hping3: UDP datagrams from random source addresses, as fast as it goes, whose payload
    // the echo servers never answer (SILENT): each would be a new, unanswered flow.
    let payload = TempFile::new("udp-flood-payload", "SILENT flood!");
    let mut hping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.client.name,
            "hping3",
            "-q",
            "--udp",
            "--flood",
            "--rand-source",
            "-p",
            &UDP_VIP_PORT.to_string(),
            "-d",
            "13",
            "-E",
        ])
        .arg(&payload.path)
        .arg(VIP.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hping3 (apt-get install hping3)");
    let t0 = Instant::now();
    let (mut ok, mut failed, mut i) = (0u32, 0u32, 2u32);
    while t0.elapsed() < FLOOD {
        match ask_in(&session, &format!("s{i}")) {
            Some(o) if o == origin => ok += 1,
            _ => failed += 1,
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = hping.kill();
    let _ = hping.wait();
    let secs = t0.elapsed().as_secs_f64();
    let after = read_stats(&cfg.path);
    let d = |e: &str| after.events[e] - before.events[e];
    let new_flows = after.vips[0].new_flows - before.vips[0].new_flows;
    let refused = d("drop_udp_budget");
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let rate = (refused + new_flows) as f64 / secs;
    println!(
        "UDP flood: {rate:.0} datagrams/s for {secs:.1} s from random sources; {new_flows} new flows, {refused} refused by the budget ({BUDGET} per 3 s); flows now {:?}; the session: {ok} answered by {origin}, {failed} not",
        after.flows
    );
    assert!(refused > 0, "the flood met the budget");
    // At most BUDGET unanswered new flows per 3 s window (a window boundary lets one more
    // budget in), so about BUDGET per 3 s over the flood.
    let bound = BUDGET * (FLOOD.as_secs() / 3 + 2);
    assert!(
        new_flows <= bound,
        "{new_flows} new flows during the flood, bound {bound}"
    );
    let share = f64::from(ok) / f64::from(ok + failed) * 100.0;
    assert!(
        share >= 99.0,
        "the existing session kept its origin through the flood: {share:.1} % ({failed} not)"
    );
    // The flood's flows expire after udp_unreplied_timeout and leave the budget's window:
    // a new client is served again.
    std::thread::sleep(Duration::from_millis(4500));
    let fresh = topo.client.run(|| client_socket(47300));
    assert!(
        ask_in(&fresh, "after").is_some(),
        "a new client after the flood; {}",
        dataplane_view(&cfg.path)
    );
}

//! Health monitors and failover, end to end: real servers in origin namespaces are killed,
//! revived and made to fail; the agent's probes notice and the maps follow.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lb_agent::{dataplane::Maps, reconcile::vip_key, status::Status};
use lb_common::{v4_mapped, MAX_ORIGINS, ORIGIN_F_PRESENT};
use lb_testbed::{
    connect, origin_addr, request, require_prerequisites, serial, vip, Http, Server, TempFile,
    Topology, API_TOKEN, ORIGIN_PORT, VIP, VIP_PORT,
};

/// `lb_testbed::wait_for`, polling every 1 ms.
fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    lb_testbed::wait_for(what, timeout, Duration::from_millis(1), f)
}

fn status(topo: &Topology) -> Option<Status> {
    Status::read(&topo.status_file).ok()
}

fn origin_state(s: &Status, pool: &str, origin: &str) -> (String, String) {
    let o = s
        .origins
        .iter()
        .find(|o| o.pool == pool && o.origin == origin)
        .unwrap_or_else(|| panic!("{pool}/{origin} not in status"));
    (o.state.to_string(), o.reason.clone())
}

fn wait_state(topo: &Topology, pool: &str, origin: &str, state: &str, timeout: Duration) -> String {
    wait_for(&format!("{pool}/{origin} {state}"), timeout, || {
        let s = status(topo)?;
        let (st, reason) = origin_state(&s, pool, origin);
        (st == state).then_some(reason)
    })
}

fn wait_active(topo: &Topology, lb: &str, pool: &str, timeout: Duration) -> bool {
    wait_for(&format!("{lb} on pool {pool}"), timeout, || {
        let s = status(topo)?;
        let l = s.load_balancers.iter().find(|l| l.name == lb)?;
        (l.active_pool.as_deref() == Some(pool)).then_some(l.fallback)
    })
}

/// Which origins answer `n` new connections (name -> count; failures under "failed").
fn answers(topo: &Topology, n: usize) -> std::collections::BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut m = std::collections::BTreeMap::new();
        for _ in 0..n {
            let k = request(None, vip(), "NAME")
                .map_or_else(|_| "failed".to_owned(), |r| r.trim().to_owned());
            *m.entry(k).or_insert(0) += 1;
        }
        m
    })
}

/// Like `answers`, one connection from each of `ports` on the client's address: the same
/// ports again later reuse the same 5-tuples.
fn answers_from(
    topo: &Topology,
    ports: std::ops::Range<u16>,
) -> std::collections::BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut m = std::collections::BTreeMap::new();
        for p in ports {
            let from = SocketAddrV4::new(lb_testbed::CLIENT, p);
            let k = request(Some(from), vip(), "NAME")
                .map_or_else(|e| format!("failed: {e}"), |r| r.trim().to_owned());
            *m.entry(k).or_insert(0) += 1;
        }
        m
    })
}

/// Origin id and a VIP's ring, read from the pinned maps (also used by `udp_e2e`).
pub(crate) struct RingWatch {
    maps: Maps,
    ring: u32,
}

impl RingWatch {
    /// The ring of the test bed's TCP VIP.
    fn open(topo: &Topology) -> Self {
        Self::open_vip(topo, &vip_key(VIP, VIP_PORT))
    }

    /// The ring of the VIP `key`.
    pub(crate) fn open_vip(topo: &Topology, key: &lb_common::VipKey) -> Self {
        let maps = Maps::open_pinned(&topo.pin_dir).expect("pins");
        let ring = maps.vips.get(key, 0).expect("VIP entry").ring_id;
        Self { maps, ring }
    }

    pub(crate) fn origin_id(&self, addr: Ipv4Addr, port: u16) -> u32 {
        (0..MAX_ORIGINS)
            .find(|id| {
                self.maps.origins.get(id, 0).is_ok_and(|m| {
                    m.flags & ORIGIN_F_PRESENT != 0
                        && m.addr == v4_mapped(addr.octets())
                        && m.port == port.to_be()
                })
            })
            .expect("origin in ORIGINS")
    }

    /// Where the ring's slots are and how many (`RING_META`).
    fn place(&self) -> (u32, u32) {
        let m = self.maps.ring_meta.get(&self.ring, 0).expect("ring meta");
        (m.base, m.size)
    }

    fn slot_at(&self, abs: u32) -> u32 {
        self.maps.rings.get(&abs, 0).expect("ring slot")
    }

    /// The highest slot (index into `RINGS`) holding `id`: the reconciler writes slots in ascending order, so when
    /// this one changes, the whole rewrite is done.
    fn last_slot_of(&self, id: u32) -> Option<u32> {
        let (base, size) = self.place();
        (base..base + size).rev().find(|s| self.slot_at(*s) == id)
    }

    /// How many of the ring's slots hold `id`.
    pub(crate) fn slots_of(&self, id: u32) -> usize {
        let (base, size) = self.place();
        (base..base + size)
            .filter(|s| self.slot_at(*s) == id)
            .count()
    }
}

fn tcp_monitor_config(topo: &Topology, interval: f64, retries: u32, timeout: f64) -> String {
    let mut c = topo.base_config("");
    c.push_str(&format!(
        "[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = {interval}\nretries = {retries}\ntimeout = {timeout}\n\n[[pools]]\nname = \"web\"\nmonitor = \"tcp\"\norigins = [\n"
    ));
    for i in 1..=topo.origins.len() {
        c.push_str(&format!(
            "  {{ name = \"o{i}\", address = \"{}\", port = {ORIGIN_PORT} }},\n",
            origin_addr(i)
        ));
    }
    c.push_str(&format!(
        "]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"web\"]\n"
    ));
    c
}

/// Kills origin o2 `kills` times and measures, each time, how long until the VIP's ring no
/// longer holds it; checks the documented bound, that established connections to the other
/// origins survive, and that no new connection reaches o2 after the drain.
fn measure_drains(interval: f64, retries: u32, timeout: f64, kills: usize) -> Vec<Duration> {
    require_prerequisites();
    let topo = Topology::build(3);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    let cfg = TempFile::new(
        "lb.toml",
        &tcp_monitor_config(&topo, interval, retries, timeout),
    );
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let bound = Duration::from_secs_f64(interval + timeout * f64::from(retries + 1));
    let watch = RingWatch::open(&topo);
    let o2 = watch.origin_id(origin_addr(2), ORIGIN_PORT);
    wait_for("o2 in the ring", Duration::from_secs(10), || {
        watch.last_slot_of(o2)
    });

    // Long-lived connections on o1 and o3 (bounded tries to land on each).
    let mut held = Vec::new();
    topo.client.run(|| {
        for _ in 0..200 {
            if held.len() == 2 {
                break;
            }
            let s = connect(None, vip(), Duration::from_secs(2)).expect("connect");
            let mut w = s.try_clone().expect("clone");
            w.write_all(b"ECHO\n").expect("echo");
            let mut r = BufReader::new(s);
            let mut name = String::new();
            r.read_line(&mut name).expect("name");
            let name = name.trim().to_owned();
            if name != "o2" && !held.iter().any(|(n, _, _): &(String, _, _)| *n == name) {
                held.push((name, w, r));
            }
        }
    });
    assert_eq!(held.len(), 2, "connections held on o1 and o3");
    // Fill the flow table with closed connections from known source ports: after a drain,
    // a client reusing those tuples must not be sent to the dead origin (SYNs are hashed).
    let warm = answers_from(&topo, 20000..21500);
    assert!(warm.keys().all(|k| k.starts_with('o')), "{warm:?}");
    assert!(
        warm.contains_key("o2"),
        "some warm-up flows went to o2: {warm:?}"
    );

    let mut drains = Vec::new();
    for k in 0..kills {
        let slot = wait_for("o2 back in the ring", Duration::from_secs(10), || {
            watch.last_slot_of(o2)
        });
        // Kill at a random phase of the probe schedule (the revival was just detected, so
        // killing at once would always land right after a check).
        std::thread::sleep(Duration::from_secs_f64(interval * fastrand::f64()));
        let t0 = Instant::now();
        servers[1] = None; // o2's listener closes: connections to it are refused
        wait_for("o2 drained", bound + Duration::from_secs(3), || {
            (watch.slot_at(slot) != o2).then_some(())
        });
        let d = t0.elapsed();
        drains.push(d);
        assert!(
            d <= bound + Duration::from_millis(300),
            "kill {k}: drained after {d:?}, more than interval x (retries + 1) + timeout = {bound:?}"
        );
        if k == 0 {
            assert!(
                watch.last_slot_of(o2).is_none(),
                "no ring slot holds o2 after the drain"
            );
            let a = answers_from(&topo, 20000..21500);
            assert_eq!(a.get("o2"), None, "{a:?}");
            assert!(
                a.keys().all(|k| k.starts_with('o')),
                "no new connection fails after the drain, reused tuples included: {a:?}"
            );
        }
        servers[1] = Some(Server::start(&topo.origins[1], "o2", ORIGIN_PORT));
    }
    for (name, w, r) in &mut held {
        w.write_all(b"still there\n")
            .expect("write on a held connection");
        let mut back = String::new();
        r.read_line(&mut back).expect("read on a held connection");
        assert_eq!(
            back, "still there\n",
            "connection on {name} survived every kill"
        );
    }
    drains
}

fn report(label: &str, mut d: Vec<Duration>) {
    d.sort_unstable();
    let pick = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "detection-to-drain ({label}, {} kills): p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
        d.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        d[0].as_secs_f64() * 1e3,
        d[d.len() - 1].as_secs_f64() * 1e3
    );
}

#[test]
fn killed_origin_drains_within_bound_interval_1s_retries_1() {
    let _serial = serial();
    report(
        "interval 1 s, retries 1, timeout 0.5 s",
        measure_drains(1.0, 1, 0.5, 20),
    );
}

#[test]
fn killed_origin_drains_within_bound_interval_250ms() {
    let _serial = serial();
    report(
        "interval 250 ms, retries 1, timeout 100 ms",
        measure_drains(0.25, 1, 0.1, 20),
    );
}

#[test]
fn pools_fail_over_in_order_and_back_then_to_fallback() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    let mut c = topo.base_config("");
    c.push_str("[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 0.25\nretries = 1\ntimeout = 0.1\n\n");
    for (pool, i) in [("a", 1), ("b", 2), ("f", 3)] {
        c.push_str(&format!(
            "[[pools]]\nname = \"{pool}\"\nmonitor = \"tcp\"\norigins = [{{ name = \"o{i}\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n",
            origin_addr(i)
        ));
    }
    c.push_str(&format!(
        "[[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"a\", \"b\"]\nfallback_pool = \"f\"\n"
    ));
    let cfg = TempFile::new("lb.toml", &c);
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let t = Duration::from_secs(5);
    let only = |name: &str| {
        let a = answers(&topo, 20);
        assert_eq!(
            a.get(name),
            Some(&20),
            "all new connections to {name}: {a:?}"
        );
    };

    assert!(!wait_active(&topo, "www", "a", t));
    only("o1");
    servers[0] = None;
    assert!(
        !wait_active(&topo, "www", "b", t),
        "a down: b is a healthy default pool"
    );
    only("o2");
    assert!(
        agent.wait_log(0, "now uses pool b", t).is_some(),
        "pool change logged"
    );
    servers[0] = Some(Server::start(&topo.origins[0], "o1", ORIGIN_PORT));
    assert!(!wait_active(&topo, "www", "a", t), "a recovered: back to a");
    only("o1");
    servers[0] = None;
    servers[1] = None;
    assert!(
        wait_active(&topo, "www", "f", t),
        "every default pool down: fallback"
    );
    only("o3");
    servers[2] = None;
    wait_state(&topo, "f", "o3", "down", t);
    assert!(
        wait_active(&topo, "www", "f", t),
        "fallback is used regardless of its health"
    );
    // Traffic still goes to o3 (which refuses it) rather than being dropped by the LB.
    let refused = topo.client.run(|| {
        connect(None, vip(), Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "o3 itself answers with a reset"
    );
}

#[test]
fn http_and_https_monitors_judge_codes_bodies_and_certificates() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let answers = [
        Http::new(200, "Service OK"),
        Http::new(500, "ok"),
        Http::new(200, "maintenance"),
    ];
    let _servers: Vec<Server> = topo
        .origins
        .iter()
        .zip(&answers)
        .flat_map(|(ns, h)| {
            [
                Server::http(ns, 8080, h, false),
                Server::http(ns, 8443, h, true),
            ]
        })
        .collect();
    let mut c = topo.base_config("");
    c.push_str(
        "[[monitors]]\nname = \"http\"\ntype = \"http\"\npath = \"/health\"\nexpected_codes = \"2xx\"\nexpected_body = \"ok\"\nheader = { Host = [\"origin.test\"] }\ninterval = 0.25\ntimeout = 0.2\nretries = 0\n\n\
         [[monitors]]\nname = \"https\"\ntype = \"https\"\nexpected_codes = \"2xx\"\ninterval = 0.25\ntimeout = 0.2\nretries = 0\n\n\
         [[monitors]]\nname = \"https-insecure\"\ntype = \"https\"\nexpected_codes = \"2xx\"\nallow_insecure = true\ninterval = 0.25\ntimeout = 0.2\nretries = 0\n\n",
    );
    c.push_str("[[pools]]\nname = \"web\"\nmonitor = \"http\"\norigins = [\n");
    for i in 1..=3 {
        c.push_str(&format!(
            "  {{ name = \"o{i}\", address = \"{}\", port = 8080 }},\n",
            origin_addr(i)
        ));
    }
    c.push_str("]\n\n");
    for (pool, mon) in [("strict", "https"), ("insecure", "https-insecure")] {
        c.push_str(&format!(
            "[[pools]]\nname = \"{pool}\"\nmonitor = \"{mon}\"\norigins = [{{ name = \"o1\", address = \"{}\", port = 8443 }}]\n\n",
            origin_addr(1)
        ));
    }
    c.push_str(&format!("[[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"web\"]\n"));
    let cfg = TempFile::new("lb.toml", &c);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let t = Duration::from_secs(5);

    let r = wait_state(&topo, "web", "o1", "up", t);
    assert_eq!(r, "HTTP 200");
    let r = wait_state(&topo, "web", "o2", "down", t);
    assert!(r.contains("HTTP 500 (expected 2xx)"), "{r}");
    let r = wait_state(&topo, "web", "o3", "down", t);
    assert!(r.contains("body does not contain"), "{r}");
    let r = wait_state(&topo, "strict", "o1", "down", t);
    assert!(
        r.contains("TLS") && r.to_lowercase().contains("certificate"),
        "{r}"
    );
    let r = wait_state(&topo, "insecure", "o1", "up", t);
    assert_eq!(r, "HTTP 200");
    // The body check is case-insensitive ("ok" in "Service OK") and o2 recovers when it does.
    answers[1].status.store(204, Ordering::Relaxed);
    wait_state(&topo, "web", "o2", "up", t);
    let s = status(&topo).expect("status");
    let o1 = s
        .origins
        .iter()
        .find(|o| o.pool == "web" && o.origin == "o1")
        .expect("web/o1");
    assert!(
        o1.rtt_ms.is_some_and(|r| r > 0.0),
        "RTT recorded for web/o1: {:?}",
        o1.rtt_ms
    );
    let web = s.pools.iter().find(|p| p.name == "web").expect("pool web");
    assert!(
        web.rtt_ms.is_some_and(|r| r > 0.0),
        "pool RTT recorded: {:?}",
        web.rtt_ms
    );
}

/// A tiny SMTP responder for `Server::with_handler`: `greeting`, then, if the client sends
/// `QUIT`, `bye`; an empty greeting closes at once. Reads are bounded by a timeout.
fn smtp_responder(
    greeting: &'static str,
    bye: &'static str,
) -> std::sync::Arc<dyn Fn(std::net::TcpStream) + Send + Sync> {
    std::sync::Arc::new(move |mut s: std::net::TcpStream| {
        if greeting.is_empty() {
            return;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(greeting.as_bytes()).is_err() {
            return;
        }
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        if line == "QUIT\r\n" {
            let _ = s.write_all(bye.as_bytes());
        }
    })
}

/// icmp_ping, udp_icmp and smtp monitors against targets this test starts in its own
/// namespaces: an origin's address answers pings and an unassigned address in its subnet
/// does not; a bound UDP port is up and a closed one is down by the origin's ICMP port
/// unreachable; an SMTP responder that greets with 220 and answers QUIT with 221 is up,
/// one that greets with 554 or closes at once is down.
#[test]
fn icmp_ping_udp_icmp_and_smtp_monitors_judge_targets_the_test_started() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let (o1, o2) = (&topo.origins[0], &topo.origins[1]);
    // Linux rate-limits ICMP errors per destination (1/s after a burst of 6): without this
    // some probes of the closed port would get no port unreachable and pass.
    o2.sysctl("net.ipv4.icmp_ratelimit", "0");
    let _udp = o1.run(|| std::net::UdpSocket::bind(("0.0.0.0", 5353)).expect("bind udp"));
    let _smtp = [
        Server::with_handler(
            o1,
            2525,
            smtp_responder("220-o1 ESMTP\r\n220 ready\r\n", "221 bye\r\n"),
        ),
        Server::with_handler(
            o2,
            2525,
            smtp_responder("554 no service here\r\n", "221 bye\r\n"),
        ),
        Server::with_handler(o2, 2526, smtp_responder("", "")),
    ];
    let ghost = Ipv4Addr::new(10, 0, 11, 99);
    let (a1, a2) = (origin_addr(1), origin_addr(2));
    let mut c = topo.base_config("");
    let timing = "interval = 0.25\ntimeout = 0.2\nretries = 0\n";
    c.push_str(&format!(
        "[[monitors]]\nname = \"ping\"\ntype = \"icmp_ping\"\n{timing}\n\
         [[monitors]]\nname = \"udp\"\ntype = \"udp_icmp\"\n{timing}\n\
         [[monitors]]\nname = \"mail\"\ntype = \"smtp\"\n{timing}\n\
         [[pools]]\nname = \"ping\"\nmonitor = \"ping\"\norigins = [\
         {{ name = \"o1\", address = \"{a1}\", port = {ORIGIN_PORT} }}, \
         {{ name = \"ghost\", address = \"{ghost}\", port = {ORIGIN_PORT} }}]\n\n\
         [[pools]]\nname = \"udp\"\nmonitor = \"udp\"\norigins = [\
         {{ name = \"open\", address = \"{a1}\", port = 5353 }}, \
         {{ name = \"closed\", address = \"{a2}\", port = 5353 }}]\n\n\
         [[pools]]\nname = \"mail\"\nmonitor = \"mail\"\norigins = [\
         {{ name = \"good\", address = \"{a1}\", port = 2525 }}, \
         {{ name = \"refuses\", address = \"{a2}\", port = 2525 }}, \
         {{ name = \"closes\", address = \"{a2}\", port = 2526 }}]\n\n\
         [[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"ping\"]\n"
    ));
    let cfg = TempFile::new("lb.toml", &c);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let t = Duration::from_secs(5);

    assert_eq!(wait_state(&topo, "ping", "o1", "up", t), "ICMP echo reply");
    let r = wait_state(&topo, "ping", "ghost", "down", t);
    assert!(r.contains("timed out") || r.contains("unreachable"), "{r}");
    assert_eq!(
        wait_state(&topo, "udp", "open", "up", t),
        "ICMP echo reply, no port unreachable"
    );
    let r = wait_state(&topo, "udp", "closed", "down", t);
    assert!(r.contains("ICMP port unreachable"), "{r}");
    assert_eq!(
        wait_state(&topo, "mail", "good", "up", t),
        "SMTP 220, 221 to QUIT"
    );
    let r = wait_state(&topo, "mail", "refuses", "down", t);
    assert!(
        r.contains("SMTP 554 no service here to the connection (expected 220)"),
        "{r}"
    );
    let r = wait_state(&topo, "mail", "closes", "down", t);
    assert!(
        r.contains("connection closed before the SMTP greeting"),
        "{r}"
    );
    // Verdicts hold over more rounds (no flapping from rate limits or stray replies):
    // 2 s is 8 checks per target.
    std::thread::sleep(Duration::from_secs(2));
    let s = status(&topo).expect("status");
    for (pool, origin, want) in [
        ("ping", "o1", "up"),
        ("ping", "ghost", "down"),
        ("udp", "open", "up"),
        ("udp", "closed", "down"),
        ("mail", "good", "up"),
        ("mail", "refuses", "down"),
        ("mail", "closes", "down"),
    ] {
        assert_eq!(origin_state(&s, pool, origin).0, want, "{pool}/{origin}");
    }
    // The RTT of an ICMP check is recorded like any other.
    let o1 = s
        .origins
        .iter()
        .find(|o| o.pool == "ping" && o.origin == "o1")
        .expect("ping/o1");
    assert!(o1.rtt_ms.is_some_and(|r| r > 0.0), "{:?}", o1.rtt_ms);
}

#[test]
fn tcp_monitor_port_override_and_hysteresis_against_flapping() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let _apps = topo.start_servers();
    let health_port = Server::tcp_port(&topo.origins[0], 9000);
    let flappy = Http::new(200, "ok");
    let _flappy_server = Server::http(&topo.origins[1], 9100, &flappy, false);
    let mut c = topo.base_config("");
    c.push_str(&format!(
        "[[monitors]]\nname = \"port9000\"\ntype = \"tcp\"\nport = 9000\ninterval = 0.1\ntimeout = 0.08\nretries = 0\n\n\
         [[monitors]]\nname = \"flappy\"\ntype = \"http\"\nport = 9100\ninterval = 0.1\ntimeout = 0.08\nretries = 0\nconsecutive_up = 2\nconsecutive_down = 2\n\n\
         [[pools]]\nname = \"p1\"\nmonitor = \"port9000\"\norigins = [{{ name = \"o1\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n\
         [[pools]]\nname = \"p2\"\nmonitor = \"flappy\"\norigins = [{{ name = \"o2\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n\
         [[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"p1\", \"p2\"]\n",
        origin_addr(1),
        origin_addr(2)
    ));
    let cfg = TempFile::new("lb.toml", &c);
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let t = Duration::from_secs(5);

    wait_state(&topo, "p1", "o1", "up", t);
    let s = status(&topo).expect("status");
    assert_eq!(
        s.origins.iter().find(|o| o.origin == "o1").map(|o| o.port),
        Some(9000),
        "probed on the override port"
    );
    drop(health_port);
    let r = wait_state(&topo, "p1", "o1", "down", t);
    assert!(r.contains("connection refused"), "{r}");
    let app = topo
        .lb
        .run(|| request(None, SocketAddrV4::new(origin_addr(1), ORIGIN_PORT), "NAME"));
    assert_eq!(app.expect("o1's app port still answers").trim(), "o1");
    wait_state(&topo, "p2", "o2", "up", t);
    assert_eq!(
        answers(&topo, 10).get("o2"),
        Some(&10),
        "o1's health port decides: traffic fails over to p2"
    );
    let skip = agent.log_len();
    flappy.alternate.store(true, Ordering::Relaxed);
    let before = flappy.requests.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let checks = flappy.requests.load(Ordering::Relaxed) - before;
    assert!(checks >= 10, "the monitor kept checking: {checks}");
    assert!(
        agent
            .wait_log(skip, "p2/o2", Duration::from_millis(1))
            .is_none(),
        "no transition while results alternate"
    );
    assert_eq!(
        origin_state(&status(&topo).expect("status"), "p2", "o2").0,
        "up"
    );
    flappy.alternate.store(false, Ordering::Relaxed);
    flappy.status.store(503, Ordering::Relaxed);
    let r = wait_state(&topo, "p2", "o2", "down", t);
    assert!(r.contains("503"), "{r}");
}

#[test]
fn reload_drains_a_disabled_origin_and_rejects_a_bad_config() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let _servers = topo.start_servers();
    let cfg = TempFile::new("lb.toml", &topo.config(&[1.0, 1.0, 1.0], ""));
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);

    // A connection on o2 (bounded tries).
    let (mut w, mut r) = topo.client.run(|| {
        for _ in 0..200 {
            let s = connect(None, vip(), Duration::from_secs(2)).expect("connect");
            let mut w = s.try_clone().expect("clone");
            w.write_all(b"ECHO\n").expect("echo");
            let mut r = BufReader::new(s);
            let mut name = String::new();
            r.read_line(&mut name).expect("name");
            if name.trim() == "o2" {
                return (w, r);
            }
        }
        panic!("no connection landed on o2 in 200 tries");
    });
    let drained = topo.config(&[1.0, 1.0, 1.0], "").replace(
        &format!(
            "name = \"o2\", address = \"{}\", port = {ORIGIN_PORT}, weight = 1",
            origin_addr(2)
        ),
        &format!(
            "name = \"o2\", address = \"{}\", port = {ORIGIN_PORT}, weight = 1, enabled = false",
            origin_addr(2)
        ),
    );
    assert!(drained.contains("enabled = false"), "config edit applied");
    std::fs::write(&cfg.path, &drained).expect("write config");
    agent.reload().expect("reload accepted");
    let a = answers(&topo, 300);
    assert_eq!(
        a.get("o2"),
        None,
        "no new connection reaches the disabled origin: {a:?}"
    );
    assert_eq!(a.get("failed"), None, "{a:?}");
    w.write_all(b"after drain\n").expect("write");
    let mut back = String::new();
    r.read_line(&mut back)
        .expect("established connection on o2 still works");
    assert_eq!(back, "after drain\n");

    // A bad config is rejected whole, naming the field, and nothing changes.
    std::fs::write(
        &cfg.path,
        drained.replace("weight = 1, enabled = false", "weight = 2, enabled = true"),
    )
    .expect("write");
    let e = agent.reload().expect_err("bad config rejected");
    assert!(e.contains("pools[0].origins[1].weight"), "{e}");
    let a = answers(&topo, 100);
    assert_eq!(a.get("o2"), None, "still drained: {a:?}");
    assert_eq!(a.get("failed"), None, "{a:?}");
}

/// One authorized request to the agent's API in the LB namespace; the envelope's `result`.
fn api(
    topo: &Topology,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    topo.lb.run(|| {
        let req = ureq::request(
            method,
            &format!("http://127.0.0.1:8405/client/v4/user/load_balancers{path}"),
        )
        .timeout(Duration::from_secs(10))
        .set("Authorization", &format!("Bearer {API_TOKEN}"));
        let resp = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v: serde_json::Value = resp.into_json().expect("JSON");
        assert_eq!(v["success"], true, "{method} {path}: {v}");
        v["result"].clone()
    })
}

#[test]
fn changed_thresholds_reach_tracked_origins_by_reload_and_by_api() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(1);
    let _apps = topo.start_servers();
    let mut health_port = Some(Server::tcp_port(&topo.origins[0], 9000));
    let config = |up: u32, down: u32| {
        let mut c = topo.base_config("");
        c.push_str(&format!(
            "[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\nport = 9000\ninterval = 0.1\ntimeout = 0.08\nretries = 0\nconsecutive_up = {up}\nconsecutive_down = {down}\n\n\
             [[pools]]\nname = \"web\"\nmonitor = \"tcp\"\norigins = [{{ name = \"o1\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n\
             [[load_balancers]]\nname = \"www\"\naddress = \"{VIP}\"\nport = {VIP_PORT}\ndefault_pools = [\"web\"]\n",
            origin_addr(1)
        ));
        c
    };
    let cfg = TempFile::new("lb.toml", &config(1, 100));
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let t = Duration::from_secs(5);
    wait_state(&topo, "web", "o1", "up", t);

    // By reload: failing checks pile up under consecutive_down = 100 (10 s at 0.1 s)...
    drop(health_port.take());
    wait_for("failed checks while up", t, || {
        let s = status(&topo)?;
        let o = s.origins.iter().find(|o| o.origin == "o1")?;
        (o.last_ok == Some(false)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        origin_state(&status(&topo).expect("status"), "web", "o1").0,
        "up",
        "a few failures are below consecutive_down = 100"
    );
    // ... and consecutive_down = 2 applies to the tracked origin at once, counting them.
    std::fs::write(&cfg.path, config(1, 2)).expect("write config");
    let reloaded = Instant::now();
    agent.reload().expect("reload accepted");
    wait_state(&topo, "web", "o1", "down", Duration::from_millis(1500));
    println!("down {:?} after the reload", reloaded.elapsed());

    // By the API: consecutive_up = 100 holds a recovered origin down...
    let monitors = api(&topo, "GET", "/monitors", None);
    let id = monitors[0]["id"].as_str().expect("monitor id").to_owned();
    api(
        &topo,
        "PATCH",
        &format!("/monitors/{id}"),
        Some(&serde_json::json!({"consecutive_up": 100})),
    );
    let _health_port = Server::tcp_port(&topo.origins[0], 9000);
    wait_for("successful checks while down", t, || {
        let s = status(&topo)?;
        let o = s.origins.iter().find(|o| o.origin == "o1")?;
        (o.last_ok == Some(true)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        origin_state(&status(&topo).expect("status"), "web", "o1").0,
        "down",
        "a few successes are below consecutive_up = 100"
    );
    // ... and consecutive_up = 2 brings it up at once.
    api(
        &topo,
        "PATCH",
        &format!("/monitors/{id}"),
        Some(&serde_json::json!({"consecutive_up": 2})),
    );
    wait_state(&topo, "web", "o1", "up", Duration::from_millis(1500));
}

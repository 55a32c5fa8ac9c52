//! Connection tracking under attack and on odd but legal traffic, end to end: the real
//! agent in a namespace topology, real clients and servers, and forged packets sent from a
//! raw socket inside the test's own namespaces (spoofed sources are from 198.18.0.0/15,
//! which no namespace routes anywhere).

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_agent::dataplane::Maps;
use lb_common::{event, FlowKey, RevFlow, CT_ESTABLISHED, CT_FIN_CLIENT, CT_FIN_ORIGIN, CT_RST};
use lb_testbed::{
    connect, origin_addr, request, require_prerequisites, serial,
    tcp_flags::{ACK, FIN, RST, SYN},
    vip, RawSender, Running, Server, TempFile, Topology, CLIENT,
};

fn events(maps: &Maps) -> Vec<u64> {
    maps.event_totals().expect("events")
}

fn delta(before: &[u64], after: &[u64], e: u32) -> u64 {
    after[e as usize] - before[e as usize]
}

/// A spoofed source: 198.18.x.y, port 1024 + i.
fn spoofed(i: u32) -> SocketAddrV4 {
    let [_, _, a, b] = i.to_be_bytes();
    SocketAddrV4::new(Ipv4Addr::new(198, 18, a, b), 1024 + (i % 60000) as u16)
}

#[test]
fn half_open_syns_free_their_ports_within_the_syn_timeout() {
    let _serial = serial();
    let b = Running::start_with(
        &[1.0],
        "snat_ports = [61000, 61031]\ntcp_timeouts = { syn = 2 }",
        "",
        |t| t.start_servers(),
    );
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    let before = events(&maps);
    // 200 SYNs from spoofed clients that never answer: more than the 32 SNAT ports.
    b.topo.client.run(|| {
        let raw = RawSender::new().expect("raw socket");
        for i in 0..200 {
            raw.send(spoofed(i), vip(), SYN, (1000 + i, 0), &[])
                .expect("send SYN");
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let flooded = events(&maps);
    assert!(
        delta(&before, &flooded, event::DROP_SNAT_EXHAUSTED) > 0,
        "the half-open SYNs should have held every port"
    );
    let refused = b
        .topo
        .client
        .run(|| connect(None, vip(), Duration::from_millis(500)).is_err());
    assert!(
        refused,
        "with every port held by half-open flows a new connection cannot get one"
    );
    // Within the SYN timeout (2 s) plus a second of clock granularity, ports are free again.
    std::thread::sleep(Duration::from_millis(3100));
    let t0 = Instant::now();
    let answers = b.topo.client.run(|| {
        (0..50)
            .map(|_| request(None, vip(), "NAME").map(|n| n.trim().to_owned()))
            .collect::<Vec<_>>()
    });
    let ok = answers
        .iter()
        .filter(|a| matches!(a.as_deref(), Ok("o1")))
        .count();
    println!(
        "after the SYN timeout: {ok}/50 connections succeeded in {:?}",
        t0.elapsed()
    );
    assert_eq!(
        ok, 50,
        "every connection after the SYN timeout: {answers:?}"
    );
    let after = events(&maps);
    assert!(
        delta(&flooded, &after, event::SNAT_RECYCLED) > 0,
        "ports of expired handshakes were taken over"
    );
}

#[test]
fn forged_segments_without_a_flow_make_no_state() {
    let _serial = serial();
    let b = Running::start(&[1.0], "");
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    let before = events(&maps);
    const N: u32 = 4000;
    // From the client's real address, one segment per source port: no flags, ACK only,
    // FIN+ACK and RST.
    b.topo.client.run(|| {
        let raw = RawSender::new().expect("raw socket");
        for i in 0..N {
            let src = SocketAddrV4::new(CLIENT, 20000 + (i as u16));
            let flags = [0, ACK, FIN | ACK, RST][(i % 4) as usize];
            raw.send(src, vip(), flags, (i, i), b"x").expect("send");
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = events(&maps);
    let bad = delta(&before, &after, event::DROP_BAD_FLAGS);
    let no_flow = delta(&before, &after, event::DROP_NO_FLOW);
    println!("forged: {bad} without flags dropped, {no_flow} without a flow dropped");
    assert!(
        bad >= u64::from(N / 4) * 95 / 100,
        "flag-less segments counted: {bad}"
    );
    assert!(
        no_flow >= u64::from(N / 2) * 95 / 100,
        "ACK/FIN/RST without a flow counted: {no_flow}"
    );
    assert_eq!(maps.flows.keys().count(), 0, "no flow was created");
    assert_eq!(maps.rev_flows.keys().count(), 0, "no SNAT port was taken");
    let ok = b.topo.client.run(|| {
        (0..100)
            .filter(|_| request(None, vip(), "NAME").is_ok_and(|n| n.trim() == "o1"))
            .count()
    });
    assert_eq!(ok, 100, "real clients are unaffected");
}

/// The tracking entry of the one open flow.
fn only_flow(maps: &Maps) -> (FlowKey, RevFlow) {
    let mut all: Vec<(FlowKey, RevFlow)> = maps
        .rev_flows
        .iter()
        .map(|e| e.expect("entry"))
        .filter(|(_, r)| !RevFlow::closed(r.flags))
        .collect();
    assert_eq!(all.len(), 1, "one open flow: {all:?}");
    all.remove(0)
}

#[test]
fn spoofed_rsts_and_fins_do_not_close_a_live_connection() {
    let _serial = serial();
    let b = Running::start(&[1.0], "");
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    let conn = b
        .topo
        .client
        .run(|| connect(None, vip(), Duration::from_secs(5)).expect("connect"));
    let mut w = conn.try_clone().expect("clone");
    let mut r = BufReader::new(conn.try_clone().expect("clone"));
    w.write_all(b"ECHO\n").expect("echo");
    let mut line = String::new();
    r.read_line(&mut line).expect("name");
    assert_eq!(line.trim(), "o1");
    let lport = conn.local_addr().expect("local").port();
    let client = SocketAddrV4::new(CLIENT, lport);
    let (rkey, rev) = only_flow(&maps);
    assert!(rev.flags & CT_ESTABLISHED != 0, "established: {rev:?}");
    let before = events(&maps);
    // Blind RSTs and FINs from the client's address and port, at sequence numbers outside
    // the window the tracker knows (the attacker does not know it; the test reads it so
    // that no forged packet lands inside by chance).
    let win = rev.origin_win.max(65535);
    let outside: Vec<u32> = (1..=400u32)
        .map(|i| rev.client_end.wrapping_add(win + 1 + i * 9_000_000))
        .filter(|s| (s.wrapping_sub(rev.client_end) as i32).unsigned_abs() > win)
        .collect();
    b.topo.client.run(|| {
        let raw = RawSender::new().expect("raw socket");
        for (i, seq) in outside.iter().enumerate() {
            let flags = if i % 2 == 0 { RST | ACK } else { FIN | ACK };
            raw.send(client, vip(), flags, (*seq, rev.origin_end), &[])
                .expect("send");
        }
    });
    // The right sequence number, but from the wrong side: sent from the origin's namespace.
    let origin_side = b.topo.origins[0].run(|| {
        let raw = RawSender::new().expect("raw socket");
        let mut sent = 0;
        for _ in 0..50 {
            raw.send(
                client,
                vip(),
                RST | ACK,
                (rev.client_end, rev.origin_end),
                &[],
            )
            .expect("send");
            sent += 1;
        }
        // And RSTs claiming to be the origin, outside its window.
        let origin = SocketAddrV4::new(origin_addr(1), u16::from_be(rkey.sport));
        let snat = SocketAddrV4::new(
            Ipv4Addr::from(<[u8; 4]>::try_from(&rkey.dst[12..]).expect("v4")),
            u16::from_be(rkey.dport),
        );
        for i in 0..50u32 {
            raw.send(
                origin,
                snat,
                RST | ACK,
                (
                    rev.origin_end.wrapping_add(win + 1 + i * 50_000_000),
                    rev.client_end,
                ),
                &[],
            )
            .expect("send");
            sent += 1;
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = events(&maps);
    let refused = delta(&before, &after, event::DROP_RST_INVALID)
        + delta(&before, &after, event::DROP_FIN_INVALID);
    let forged = outside.len() as u64 + origin_side;
    println!("forged closes: {forged} sent, {refused} refused");
    assert!(
        refused >= forged * 95 / 100,
        "forged closes refused: {refused} of {forged}"
    );
    let (_, now) = only_flow(&maps);
    assert_eq!(
        now.flags & (CT_RST | CT_FIN_CLIENT | CT_FIN_ORIGIN),
        0,
        "the flow is not closing: {now:?}"
    );
    // The connection still carries data both ways.
    for i in 0..20 {
        let msg = format!("still here {i}\n");
        w.write_all(msg.as_bytes()).expect("write");
        let mut back = String::new();
        r.read_line(&mut back)
            .expect("echo after the forged closes");
        assert_eq!(back, msg);
    }
}

#[test]
fn a_client_reuses_its_source_port_right_after_a_close() {
    let _serial = serial();
    let b = Running::start(&[1.0], "");
    b.topo.client.run(|| {
        // The same source port three times in a row: each connection is new to the LB.
        let from = SocketAddrV4::new(CLIENT, 45000);
        for i in 0..3 {
            let name = request(Some(from), vip(), "NAME")
                .unwrap_or_else(|e| panic!("connection {i} from port 45000: {e}"));
            assert_eq!(name.trim(), "o1");
        }
    });
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    let e = events(&maps);
    assert!(
        e[event::SYN_REHASHED as usize] >= 2,
        "the reused tuple made new flows"
    );
}

#[test]
fn a_half_closed_flow_outlives_the_half_closed_timeout() {
    let _serial = serial();
    let slow_lb = format!(
        "[[pools]]\nname = \"slow\"\norigins = [{{ name = \"s1\", address = \"{}\", port = 8081 }}]\n\n[[load_balancers]]\nname = \"slow\"\naddress = \"{}\"\nport = 8081\ndefault_pools = [\"slow\"]\n",
        origin_addr(1),
        vip().ip()
    );
    // The origin answers only after the client's FIN (half-close), slowly: 8 chunks 400 ms
    // apart, 3.2 s in all, past the 1 s half-closed timeout.
    let b = Running::start_with(
        &[1.0],
        "tcp_timeouts = { syn = 1, half_closed = 1 }",
        &slow_lb,
        |t| {
            let slow = std::sync::Arc::new(|mut s: std::net::TcpStream| {
                use std::io::Read as _;
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 1024];
                let mut got = 0;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                for i in 0..8u8 {
                    std::thread::sleep(Duration::from_millis(400));
                    if s.write_all(&[b'a' + i; 1000]).is_err() {
                        return;
                    }
                }
                let _ = writeln!(s, " after {got} bytes");
            });
            let mut v = t.start_servers();
            v.push(Server::with_handler(&t.origins[0], 8081, slow));
            v
        },
    );
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    let before = events(&maps);
    let got = b.topo.client.run(|| {
        use std::io::Read as _;
        let mut s = connect(
            None,
            SocketAddrV4::new(*vip().ip(), 8081),
            Duration::from_secs(10),
        )
        .expect("connect");
        s.write_all(b"upload then wait").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut body = Vec::new();
        let r = s.read_to_end(&mut body);
        (r.map_err(|e| e.to_string()), body)
    });
    let after = events(&maps);
    for (i, name) in event::NAMES.iter().enumerate() {
        if after[i] != before[i] {
            println!("event {name}: +{}", after[i] - before[i]);
        }
    }
    assert!(got.0.is_ok(), "read after the half-close: {:?}", got.0);
    let body = got.1;
    assert!(
        body.len() >= 8000,
        "all chunks arrived after the half-close: {} bytes",
        body.len()
    );
    assert!(String::from_utf8_lossy(&body).ends_with("after 16 bytes\n"));
}

/// Connect-and-request latencies in ms, and failures, of `n` requests (or until `until`).
fn probe_clients(until: Instant, max: usize) -> (Vec<f64>, usize) {
    let mut lat = Vec::new();
    let mut failed = 0;
    while Instant::now() < until && lat.len() + failed < max {
        let t = Instant::now();
        match request(None, vip(), "NAME") {
            Ok(n) if n.trim() == "o1" => lat.push(t.elapsed().as_secs_f64() * 1e3),
            other => {
                if failed < 5 {
                    println!("request failed after {:?}: {other:?}", t.elapsed());
                }
                failed += 1;
            }
        }
    }
    (lat, failed)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index"
    )]
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

#[test]
fn a_spoofed_syn_flood_leaves_real_clients_and_downloads_working() {
    let _serial = serial();
    let b = Running::start(&[1.0], "");
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    // Before the flood: latency of 200 plain requests.
    let (mut calm, calm_failed) = b
        .topo
        .client
        .run(|| probe_clients(Instant::now() + Duration::from_secs(20), 200));
    assert_eq!(calm_failed, 0, "requests before the flood");
    // 20 long downloads, read slowly so that they span the flood.
    const DL: usize = 4_000_000;
    let client_path = b.topo.client.path();
    let downloads: Vec<_> = (0..20)
        .map(|_| {
            let path = client_path.clone();
            std::thread::spawn(move || {
                lb_testbed::enter_netns(&path);
                let mut s =
                    connect(None, vip(), Duration::from_secs(60)).map_err(|e| e.to_string())?;
                s.write_all(format!("SEND {DL}\n").as_bytes())
                    .map_err(|e| e.to_string())?;
                let mut r = BufReader::new(s);
                let mut name = String::new();
                r.read_line(&mut name).map_err(|e| e.to_string())?;
                let mut body = Vec::with_capacity(DL);
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    use std::io::Read as _;
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => body.extend_from_slice(&buf[..n]),
                        Err(e) => return Err(format!("after {} bytes: {e}", body.len())),
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
                Ok::<bool, String>(body == lb_testbed::pattern(DL))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = events(&maps);
    // The flood: hping3, SYNs from random source addresses at the highest rate it reaches,
    // for 20 s, from the client namespace (its replies go nowhere: nothing routes them).
    let flood_secs = 20;
    let mut hping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &b.topo.client.name,
            "hping3",
            "-q",
            "-S",
            "--flood",
            "--rand-source",
            "-p",
            "80",
        ])
        .arg(vip().ip().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hping3 (apt-get install hping3)");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (mut during, failed) = b
        .topo
        .client
        .run(|| probe_clients(t0 + Duration::from_secs(flood_secs - 1), 100_000));
    let _ = hping.kill();
    let _ = hping.wait();
    let secs = t0.elapsed().as_secs_f64();
    let after = events(&maps);
    let syns = delta(&before, &after, event::SYN_COOKIE_SENT)
        + delta(&before, &after, event::FWD_REDIRECT)
        + delta(&before, &after, event::DROP_SNAT_EXHAUSTED);
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let rate = syns as f64 / secs;
    let ok = during.len();
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let success = ok as f64 / (ok + failed) as f64 * 100.0;
    println!(
        "flood: {rate:.0} SYN/s for {secs:.1} s ({} cookies sent, {} cookie flows); real clients: {ok} ok, {failed} failed ({success:.2} %); request latency p50/p99: {:.2}/{:.2} ms during, {:.2}/{:.2} ms before",
        delta(&before, &after, event::SYN_COOKIE_SENT),
        delta(&before, &after, event::SYN_COOKIE_OK),
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        pct(&mut calm, 0.5),
        pct(&mut calm, 0.99),
    );
    assert!(
        delta(&before, &after, event::SYN_COOKIE_SENT) > 0,
        "the flood met SYN cookies"
    );
    assert!(
        success >= 99.0,
        "real clients during the flood: {success:.2} % ({failed} failed)"
    );
    for (i, d) in downloads.into_iter().enumerate() {
        let r = d.join().expect("download thread");
        assert_eq!(r, Ok(true), "download {i} complete and byte-identical");
    }
    // After the flood: new connections work at once.
    let (mut after_lat, after_failed) = b
        .topo
        .client
        .run(|| probe_clients(Instant::now() + Duration::from_secs(20), 200));
    println!(
        "after the flood: 200 requests, {after_failed} failed, p50/p99 {:.2}/{:.2} ms",
        pct(&mut after_lat, 0.5),
        pct(&mut after_lat, 0.99)
    );
    assert_eq!(after_failed, 0, "requests right after the flood");
}

#[test]
fn real_clients_connect_through_syn_cookies() {
    let _serial = serial();
    let b = Running::start(&[1.0], "syn_cookies = \"always\"");
    let maps = Maps::open_pinned(&b.topo.pin_dir).expect("maps");
    let before = events(&maps);
    let (mut lat, failed) = b
        .topo
        .client
        .run(|| probe_clients(Instant::now() + Duration::from_secs(60), 100));
    let after = events(&maps);
    for (i, name) in event::NAMES.iter().enumerate() {
        if after[i] != before[i] {
            println!("event {name}: +{}", after[i] - before[i]);
        }
    }
    println!(
        "cookie flows: {} ok, {failed} failed, p50/p99 {:.2}/{:.2} ms",
        lat.len(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    assert_eq!(failed, 0, "every request through a cookie flow");
    assert_eq!(
        delta(&before, &after, event::SYN_COOKIE_OK),
        100,
        "each connection was a cookie flow"
    );
}

#[test]
fn a_recovered_origin_gets_its_share_at_once_under_tuple_reuse() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    let pool = "[[pools]]\nname = \"web\"\n";
    let text = topo.config(&[1.0, 1.0, 1.0], "").replacen(
        pool,
        &format!("[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 1\nretries = 0\ntimeout = 0.5\n\n{pool}monitor = \"tcp\"\n"),
        1,
    );
    let cfg = TempFile::new("reentry.toml", &text);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let state = |o: &str| {
        lb_agent::status::Status::read(&topo.status_file)
            .ok()
            .and_then(|s| {
                s.origins
                    .iter()
                    .find(|x| x.origin == o)
                    .map(|x| x.state.to_string())
            })
    };
    let wait = |o: &str, want: &str| {
        lb_testbed::wait_for(
            &format!("o{o} {want}"),
            Duration::from_secs(10),
            Duration::from_millis(5),
            || (state(o).as_deref() == Some(want)).then_some(()),
        );
    };
    wait("o3", "up");
    // Clients that reuse a small set of source ports (the server closes first, so a port is
    // free again at once), with Connection-close style requests: each SYN meets the closed
    // flow its tuple had before.
    let ports: Vec<u16> = (47000..47060).collect();
    let round = |n: usize| -> std::collections::BTreeMap<String, usize> {
        topo.client.run(|| {
            let mut m = std::collections::BTreeMap::new();
            for i in 0..n {
                let from = SocketAddrV4::new(CLIENT, ports[i % ports.len()]);
                let k = request(Some(from), vip(), "NAME")
                    .map_or_else(|e| format!("failed: {e}"), |r| r.trim().to_owned());
                *m.entry(k).or_default() += 1;
            }
            m
        })
    };
    let before = round(600);
    println!("all up: {before:?}");
    servers[2] = None;
    wait("o3", "down");
    let down = round(600);
    println!("o3 down: {down:?}");
    assert!(
        !down.contains_key("o3"),
        "no new connection to a down origin: {down:?}"
    );
    servers[2] = Some(Server::start(
        &topo.origins[2],
        "o3",
        lb_testbed::ORIGIN_PORT,
    ));
    wait("o3", "up");
    // Within one probe interval (1 s) of being marked up, o3 takes its third.
    let t = Instant::now();
    let back = round(600);
    println!(
        "o3 up again ({:?} for 600 connections): {back:?}",
        t.elapsed()
    );
    // The ring is the one from before the failure, so each reused tuple goes back to the
    // origin it had then: o3 takes its share (of these 60 tuples: whatever the hash gave it
    // with all up) at once.
    let o3 = back.get("o3").copied().unwrap_or(0);
    assert!(o3 > 0, "o3 takes new connections at once: {back:?}");
    assert_eq!(
        back, before,
        "every reused tuple goes back to its origin from before the failure"
    );
    assert!(back.keys().all(|k| !k.starts_with("failed")), "{back:?}");
}

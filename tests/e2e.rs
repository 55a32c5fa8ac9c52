//! End to end: a client namespace, the LB namespace running the real `lb-agent` binary, and
//! origin namespaces with TCP servers that answer with their own name (see lb-testbed).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lb_agent::{config::Config, dataplane::Maps, stats};
use lb_testbed::{
    connect, download, fnv64, pattern, request, require_prerequisites, serial, unique_id, upload,
    vip, NetNs, Running, TempFile, CLIENT, CLIENT2, FNV_INIT,
};

/// The counters `lb-agent stats` prints, read from the pinned maps (also used by `v6_e2e`).
pub(crate) fn read_stats(cfg: &Path) -> stats::Stats {
    let cfg = Config::load(cfg).expect("config");
    let maps = Maps::open_pinned(&cfg.dataplane.pin_dir).expect("pinned maps");
    stats::collect(&cfg, &maps).expect("stats")
}

/// `counts` (origin -> answers, `n` in all) are o1, o2 and o3's only, within 3 points of
/// 1/6, 2/6 and 3/6 (weights 1:2:3); prints each share. Also used by `udp_e2e`.
pub(crate) fn assert_one_two_three(counts: &BTreeMap<String, usize>, n: usize) {
    for (name, target) in [("o1", 1.0 / 6.0), ("o2", 2.0 / 6.0), ("o3", 3.0 / 6.0)] {
        let share = *counts.get(name).unwrap_or(&0) as f64 / n as f64;
        println!(
            "split: {name} {:.1}% (target {:.1}%)",
            share * 100.0,
            target * 100.0
        );
        assert!(
            (share - target).abs() <= 0.03,
            "{name}: {share:.3} vs {target:.3}; {counts:?}"
        );
    }
    assert_eq!(counts.len(), 3, "only the three origins answer: {counts:?}");
}

#[test]
fn three_thousand_connections_split_by_weight() {
    let _serial = serial();
    let b = Running::start(&[1.0 / 3.0, 2.0 / 3.0, 1.0], "");
    let (topo, cfg) = (&b.topo, &b.cfg);

    const N: usize = 3000;
    let counts: BTreeMap<String, usize> = topo.client.run(|| {
        let mut counts = BTreeMap::new();
        for i in 0..N {
            let reply = request(None, vip(), "NAME")
                .unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
            *counts.entry(reply.trim().to_owned()).or_insert(0) += 1;
        }
        counts
    });
    assert_eq!(
        counts.values().sum::<usize>(),
        N,
        "every connection answered: {counts:?}"
    );
    assert_one_two_three(&counts, N);

    // The data path's own counters tell the same story.
    let s = read_stats(&cfg.path);
    let v = &s.vips[0];
    let flows: u64 = v.origins.iter().map(|o| o.new_flows).sum();
    assert_eq!(flows, v.new_flows, "per-origin flows add up to the VIP's");
    // A client may reuse a source port, which is then the same flow: at most N flows.
    assert!(
        flows as usize <= N && flows as usize >= N * 9 / 10,
        "{flows} flows for {N} connections"
    );
    for o in &v.origins {
        let counted = counts[&o.name] as u64;
        assert!(
            o.new_flows <= counted && o.new_flows * 10 >= counted * 9,
            "{}: {} flows, {counted} answers",
            o.name,
            o.new_flows
        );
    }
    for bad in [
        "drop_no_origin",
        "drop_snat_exhausted",
        "drop_flow_insert",
        "drop_no_route",
        "drop_no_tx_port",
        "drop_fwd_disabled",
    ] {
        assert_eq!(s.events[bad], 0, "{bad}");
    }
}

#[test]
fn ten_megabytes_arrive_byte_identical_both_ways() {
    let _serial = serial();
    let b = Running::start(&[1.0, 1.0, 1.0], "");
    let topo = &b.topo;
    const LEN: usize = 10_000_000;
    let want = fnv64(&pattern(LEN), FNV_INIT);
    topo.client.run(|| {
        let (name, body) = download(vip(), LEN).expect("download");
        assert_eq!(body.len(), LEN, "download length from {name}");
        assert_eq!(fnv64(&body, FNV_INIT), want, "download content from {name}");
        let (name, got) = upload(vip(), &pattern(LEN)).expect("upload");
        assert_eq!(got, want, "upload content as {name} hashed it");
        println!("10 MB down and up through the VIP: byte-identical");
    });
}

#[test]
fn two_clients_with_the_same_source_port_both_work() {
    let _serial = serial();
    // One origin and two SNAT ports: the second client must get the other port.
    let b = Running::start(&[1.0], "snat_ports = [61000, 61001]");
    let topo = &b.topo;
    topo.client.run(|| {
        let mut conns = Vec::new();
        for (i, src) in [CLIENT, CLIENT2].into_iter().enumerate() {
            let s = connect(
                Some(SocketAddrV4::new(src, 40000)),
                vip(),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
            let mut w = s.try_clone().expect("clone");
            w.write_all(b"ECHO\n").expect("echo command");
            let mut r = BufReader::new(s);
            let mut name = String::new();
            r.read_line(&mut name).expect("name");
            assert_eq!(name.trim(), "o1");
            conns.push((w, r));
        }
        for round in 0..3 {
            for (i, (w, r)) in conns.iter_mut().enumerate() {
                let msg = format!("client {i} round {round}\n");
                w.write_all(msg.as_bytes()).expect("write");
                let mut back = String::new();
                r.read_line(&mut back).expect("read echo");
                assert_eq!(back, msg, "client {i} got someone else's bytes");
            }
        }
    });
    let maps = Maps::open_pinned(&topo.pin_dir).expect("maps");
    let mut ports: Vec<u16> = maps
        .rev_flows
        .keys()
        .map(|k| u16::from_be(k.expect("key").dport))
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![61000, 61001], "one SNAT port each");
}

#[test]
fn agent_restart_keeps_connections_and_forwarding() {
    let _serial = serial();
    let mut b = Running::start(&[1.0, 1.0, 1.0], "");
    let (topo, cfg) = (&b.topo, &b.cfg);

    // A long-lived connection, and clients connecting all through the restart.
    let (mut w, mut r) = topo.client.run(|| {
        let s = connect(None, vip(), Duration::from_secs(5)).expect("long-lived connect");
        let w = s.try_clone().expect("clone");
        (w, BufReader::new(s))
    });
    w.write_all(b"ECHO\n").expect("echo");
    let mut line = String::new();
    r.read_line(&mut line).expect("origin name");
    let mut echo = |msg: &str| {
        w.write_all(format!("{msg}\n").as_bytes())
            .expect("write on long-lived connection");
        let mut back = String::new();
        r.read_line(&mut back)
            .expect("read on long-lived connection");
        assert_eq!(back.trim(), msg);
    };
    echo("before restart");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let background = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let path = topo.client.path();
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).expect("netns");
            // SAFETY: this thread only.
            assert_eq!(
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
                0
            );
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match request(None, vip(), "NAME") {
                    Ok(r) if r.starts_with('o') => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        b.agent.stop(),
        "agent exits cleanly on SIGTERM:\n{}",
        b.agent.log_text()
    );
    assert!(
        b.agent.log_text().contains("XDP stays attached"),
        "{}",
        b.agent.log_text()
    );
    echo("while no agent runs");
    std::thread::sleep(Duration::from_millis(300));
    let second = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let log = second.log_text();
    assert!(
        log.contains("adopted_pins=true"),
        "second agent adopts the pins:\n{log}"
    );
    assert!(
        log.contains("replaced_running_program=true"),
        "links switched atomically:\n{log}"
    );
    echo("after restart");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    background.join().expect("background clients");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("restart: {ok} connections succeeded during the restart window, {failed} failed");
    assert!(ok > 50, "clients kept connecting: {ok}");
    assert_eq!(failed, 0, "no connection failed while the agent restarted");
}

/// systemd (or an operator's Ctrl-C) may stop the agent while it is still loading: the
/// signal is kept and the agent stops cleanly once it is up, instead of dying by the
/// signal's default action half-way through.
#[test]
fn a_sigterm_while_the_agent_starts_stops_it_cleanly() {
    let _serial = serial();
    let mut b = Running::start(&[1.0, 1.0, 1.0], "");
    assert!(b.agent.stop(), "first agent stops cleanly");
    // The first health round comes after the object is loaded: the signal lands mid-start.
    let mut agent =
        lb_testbed::start_agent_until(&b.topo.lb, &b.cfg.path, &[], "BPF object loaded");
    assert!(
        !agent.log_text().contains("data path ready"),
        "the signal must come before the agent is up:\n{}",
        agent.log_text()
    );
    let clean = agent.stop();
    let log = agent.log_text();
    assert!(
        clean,
        "SIGTERM during the start ends the agent cleanly:\n{log}"
    );
    assert!(log.contains("shutdown signal received"), "{log}");
    assert!(log.contains("XDP stays attached"), "{log}");
    b.agent = agent;
}

#[test]
fn host_traffic_passes_with_xdp_attached() {
    let _serial = serial();
    let b = Running::start(&[1.0], "");
    let (topo, cfg) = (&b.topo, &b.cfg);
    // The LB host's own TCP connection to an origin (as a health probe makes), and ICMP.
    let reply = topo.lb.run(|| {
        request(
            None,
            SocketAddrV4::new(lb_testbed::origin_addr(1), lb_testbed::ORIGIN_PORT),
            "NAME",
        )
    });
    assert_eq!(
        reply
            .expect("LB host connects to the origin directly")
            .trim(),
        "o1"
    );
    topo.client
        .exec("ping", &["-c", "1", "-W", "2", "10.0.1.1"]);
    let s = read_stats(&cfg.path);
    assert!(
        s.events["pass_not_vip"] > 0,
        "the probe's reply was passed: {:?}",
        s.events
    );
    assert!(
        s.events["pass_not_tcp"] > 0,
        "ICMP was passed: {:?}",
        s.events
    );
}

/// `lb-agent --config <cfg> check` in `ns`: (success, stdout, stderr).
fn check(ns: &NetNs, cfg: &Path) -> (bool, String, String) {
    lb_testbed::agent_check(lb_testbed::agent_bin(), ns, cfg)
}

#[test]
fn check_verifies_the_interfaces_like_a_start() {
    let _serial = serial();
    require_prerequisites();
    let ns = NetNs::new(&unique_id("chk"));
    ns.ip(&[
        "link", "add", "lbchk0", "type", "veth", "peer", "name", "lbchk1",
    ]);
    ns.sysctl("net.ipv4.conf.all.forwarding", "1");
    let state = TempFile::adopt(&std::env::temp_dir().join(format!("{}-state.json", ns.name)));
    let config = |interfaces: &str| {
        format!(
            "[dataplane]\ninterfaces = [{interfaces}]\nsnat_address = \"10.0.0.1\"\n\n[api]\nstate_file = \"{}\"\n\n\
             [[pools]]\nname = \"web\"\norigins = [{{ name = \"a\", address = \"10.0.2.2\" }}]\n\n\
             [[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n",
            state.path.display()
        )
    };
    let cfg = TempFile::new("lb.toml", &config("\"lbchk0\", \"lbchk1\""));
    let (ok, out, err) = check(&ns, &cfg.path);
    assert!(
        ok && out.contains("valid"),
        "existing interfaces pass: {out} {err}"
    );

    std::fs::write(&cfg.path, config("\"lbchk0\", \"lbnosuch0\"")).expect("write config");
    let (ok, out, err) = check(&ns, &cfg.path);
    assert!(!ok, "a missing interface fails the check: {out}");
    assert!(
        err.contains("dataplane.interfaces[1]: interface \"lbnosuch0\" does not exist in this network namespace")
            && err.contains("`ip link`"),
        "names the field and the fix: {err}"
    );
    assert!(!state.path.exists(), "check writes no state file");
}

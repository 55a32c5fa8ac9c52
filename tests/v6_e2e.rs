//! End to end over IPv6 (issue 13): the real `lb-agent` in a `Family::Dual` topology, real
//! clients and servers, every connection through the IPv6 VIP `[2001:db8::10]` to the
//! origins' IPv6 addresses (`lb_v6`, `lb_v6_udp`). The same things the IPv4 tests show, with
//! the same bounds: the 1:2:3 split of 3000 connections (and the counters of `lb-agent
//! stats` and `/metrics` for it), 10 MB each way, failover across pools, geo steering by
//! IPv6 client prefix, UDP, path-MTU discovery with ICMPv6 "packet too big", and pings.
//! Neighbour discovery is exercised by every test (nothing is forwarded without it) and
//! checked by its counter in the ping test.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb_agent::dataplane::Maps;
use lb_common::event;
use lb_testbed::{
    connect_ip, download_ip, fnv64, host_net6, origin_addr, origin_addr6, pattern, prom,
    request_ip, require_prerequisites, serial, upload_ip, vip6, Family, Running, Server, TempFile,
    Topology, CLIENT, CLIENT6, FNV_INIT, ORIGIN_PORT, VIP6,
};

use crate::{
    e2e::{assert_one_two_three, read_stats},
    icmp_e2e::{events, transfer_both_ways, transfer_counting, xdp_pass_on},
    steering::{answers_to, only, pools_at, wait_active, wait_checked},
    udp_e2e::{ask, UdpEcho, ECHO_PORT, UDP_VIP_PORT},
};

/// Which origins answer `n` new connections from `CLIENT6` to the IPv6 VIP.
fn answers6(topo: &Topology, n: usize) -> BTreeMap<String, usize> {
    answers_to(topo, CLIENT6.into(), vip6(), n)
}

/// `lb-agent --config <cfg> stats` in the LB namespace (what an operator reads).
fn agent_stats_text(topo: &Topology, cfg: &std::path::Path) -> String {
    topo.lb.exec(
        lb_testbed::agent_bin().to_str().expect("UTF-8 path"),
        &["--config", cfg.to_str().expect("UTF-8 path"), "stats"],
    )
}

/// The agent's `/metrics` in the LB namespace, parsed.
fn metrics(topo: &Topology) -> prom::Parsed {
    let text = topo.lb.run(|| {
        ureq::get("http://127.0.0.1:8405/metrics")
            .timeout(Duration::from_secs(5))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text")
    });
    prom::parse(&text).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"))
}

#[test]
fn v6_three_thousand_connections_split_by_weight() {
    let _serial = serial();
    let b = Running::start_dual(&[1.0 / 3.0, 2.0 / 3.0, 1.0], "");
    let (topo, cfg) = (&b.topo, &b.cfg);

    const N: usize = 3000;
    let t = Instant::now();
    let counts = answers6(topo, N);
    println!(
        "IPv6 split: {N} connections in {:.1} s: {counts:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        counts.values().sum::<usize>(),
        N,
        "every connection answered: {counts:?}"
    );
    assert_one_two_three(&counts, N);

    // The data path's counters, as `lb-agent stats` reads them: www6 made the flows, www
    // (the IPv4 VIP beside it) none.
    let s = read_stats(&cfg.path);
    let v = s
        .vips
        .iter()
        .find(|v| v.name == "www6")
        .expect("www6 in stats");
    let v4 = s.vips.iter().find(|v| v.name == "www").expect("www");
    assert_eq!(v4.new_flows, 0, "nothing went to the IPv4 VIP");
    let flows: u64 = v.origins.iter().map(|o| o.new_flows).sum();
    assert_eq!(flows, v.new_flows, "per-origin flows add up to the VIP's");
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
        assert!(
            o.address.parse::<Ipv6Addr>().is_ok(),
            "an IPv6 origin: {}",
            o.address
        );
    }
    for bad in [
        "drop_no_origin",
        "drop_snat_exhausted",
        "drop_flow_insert",
        "drop_no_route",
        "drop_no_tx_port",
        "drop_fwd_disabled",
        "drop_ext_header",
    ] {
        assert_eq!(s.events[bad], 0, "{bad}: {:?}", s.events);
    }

    // What the operator sees: `lb-agent stats` names the VIP as [2001:db8::10]:80 with its
    // flows, and /metrics counts them under the same label.
    let text = agent_stats_text(topo, &cfg.path);
    let want_line = format!(
        "load balancer www6 tcp [2001:db8::10]:80 (pool web6): {} new flows",
        v.new_flows
    );
    assert!(
        text.lines().any(|l| l.starts_with(&want_line)),
        "`lb-agent stats` shows {want_line:?}:\n{text}"
    );
    let want = v.new_flows as f64;
    let got = lb_testbed::wait_for(
        "/metrics to count www6's flows",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let m = metrics(topo);
            let s = m.samples.iter().find(|s| {
                s.name == "lb_vip_new_flows_total"
                    && s.label("load_balancer") == Some("www6")
                    && s.label("vip") == Some("[2001:db8::10]:80")
            })?;
            (s.value >= want).then_some(s.value)
        },
    );
    assert!((got - want).abs() < 0.5, "/metrics {got}, maps {want}");
}

#[test]
fn v6_ten_megabytes_arrive_byte_identical_both_ways() {
    let _serial = serial();
    let b = Running::start_dual(&[1.0, 1.0, 1.0], "");
    const LEN: usize = 10_000_000;
    let want = fnv64(&pattern(LEN), FNV_INIT);
    b.topo.client.run(|| {
        let t = Instant::now();
        let (name, body) = download_ip(vip6(), LEN).expect("download over IPv6");
        let down = t.elapsed();
        assert_eq!(body.len(), LEN, "download length from {name}");
        assert_eq!(fnv64(&body, FNV_INIT), want, "download content from {name}");
        let t = Instant::now();
        let (name, got) = upload_ip(vip6(), &pattern(LEN)).expect("upload over IPv6");
        assert_eq!(got, want, "upload content as {name} hashed it");
        println!(
            "IPv6: 10 MB down in {down:?}, up in {:?} through [2001:db8::10]:80, byte-identical",
            t.elapsed()
        );
    });
    let s = read_stats(&b.cfg.path);
    let v = s.vips.iter().find(|v| v.name == "www6").expect("www6");
    assert!(
        v.bytes >= LEN as u64 && v.reply_bytes >= LEN as u64,
        "both directions counted on www6: {} / {} bytes",
        v.bytes,
        v.reply_bytes
    );
}

/// The IPv4 `pools_fail_over_in_order_and_back_then_to_fallback`, over IPv6: the same
/// monitor timings and the same 5 s bounds.
#[test]
fn v6_pools_fail_over_in_order_and_back_then_to_fallback() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build_with(3, Family::Dual);
    let mut servers: Vec<Option<Server>> =
        topo.start_servers_dual().into_iter().map(Some).collect();
    let monitor = "interval = 0.25\nretries = 1\ntimeout = 0.1\n";
    let pools = pools_at(&[("a", 1, ""), ("b", 2, ""), ("f", 3, "")], |i| {
        origin_addr6(i).into()
    })
    .replace("interval = 0.25\ntimeout = 0.2\nretries = 0\n", monitor);
    assert!(pools.contains(monitor), "the IPv4 test's monitor timings");
    let cfg = TempFile::new(
        "lb.toml",
        &format!(
            "{}{pools}[[load_balancers]]\nname = \"www6\"\naddress = \"{VIP6}\"\nport = 80\ndefault_pools = [\"a\", \"b\"]\nfallback_pool = \"f\"\n",
            topo.base_config_dual("")
        ),
    );
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let t = Duration::from_secs(5);
    let only_to = |name: &str| {
        let a = answers6(&topo, 20);
        assert_eq!(a, only(name, 20), "all new connections to {name}");
    };
    // How long until new connections reach `name` (a connection every 5 ms, bounded by t).
    let moved_to = |name: &str, since: Instant| {
        lb_testbed::wait_for(
            &format!("new connections on {name}"),
            t,
            Duration::from_millis(5),
            || (answers6(&topo, 1) == only(name, 1)).then(|| since.elapsed()),
        )
    };

    wait_checked(&topo);
    wait_active(&topo, "www6", "a", t);
    only_to("o1");
    let t0 = Instant::now();
    servers[0] = None;
    let to_b = moved_to("o2", t0);
    wait_active(&topo, "www6", "b", t);
    only_to("o2");
    assert!(
        agent.wait_log(0, "now uses pool b", t).is_some(),
        "pool change logged"
    );
    let t0 = Instant::now();
    servers[0] = Some(Server::start_on(
        &topo.origins[0],
        "o1",
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ORIGIN_PORT,
    ));
    let back = moved_to("o1", t0);
    wait_active(&topo, "www6", "a", t);
    only_to("o1");
    let t0 = Instant::now();
    servers[0] = None;
    servers[1] = None;
    let to_f = moved_to("o3", t0);
    wait_active(&topo, "www6", "f", t);
    only_to("o3");
    println!(
        "IPv6 failover (interval 0.25 s, retries 1, timeout 0.1 s): a -> b {} ms, back to a {} ms, to fallback f {} ms",
        to_b.as_millis(),
        back.as_millis(),
        to_f.as_millis()
    );
    // The drain tests' bound (health.rs): interval + timeout x (retries + 1), plus 300 ms.
    let bound = Duration::from_millis(250 + 100 * 2 + 300);
    for (what, d) in [("a -> b", to_b), ("back to a", back), ("to f", to_f)] {
        assert!(d <= bound, "{what} took {d:?}, bound {bound:?}");
    }
    servers[2] = None;
    lb_testbed::wait_for("f/o3 down", t, Duration::from_millis(10), || {
        let s = lb_agent::status::Status::read(&topo.status_file).ok()?;
        s.origins
            .iter()
            .any(|o| o.pool == "f" && o.state.to_string() == "down")
            .then_some(())
    });
    wait_active(&topo, "www6", "f", t);
    // Traffic still goes to o3 (which refuses it) rather than being dropped by the LB.
    let refused = topo.client.run(|| {
        connect_ip(None, vip6(), Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "o3 itself answers with a reset"
    );
}

/// The IPv4 geo test's steps, with clients in IPv6 prefixes listed in `[geo] prefixes`.
#[test]
fn v6_geo_steering_by_client_prefix() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build_with(3, Family::Dual);
    let mut servers: Vec<Option<Server>> =
        topo.start_servers_dual().into_iter().map(Some).collect();
    let jp: Ipv6Addr = "2001:db8:100::2".parse().expect("address");
    let de: Ipv6Addr = "2001:db8:200::2".parse().expect("address");
    for a in [jp, de] {
        topo.add_client_address(a);
    }
    let cfg = TempFile::new(
        "geo6.toml",
        &format!(
            "{}{}[[load_balancers]]\nname = \"www6\"\naddress = \"{VIP6}\"\nport = 80\ndefault_pools = [\"other\"]\nsteering_policy = \"geo\"\nregion_pools = {{ WEU = [\"eu\", \"us\"] }}\ncountry_pools = {{ JP = [\"us\"] }}\n\n\
             [geo]\nprefixes = [\n  {{ prefix = \"2001:db8:100::/48\", country = \"JP\" }},\n  {{ prefix = \"2001:db8:200::/48\", country = \"DE\" }},\n]\n",
            topo.base_config_dual(""),
            pools_at(&[("eu", 1, ""), ("us", 2, ""), ("other", 3, "")], |i| {
                origin_addr6(i).into()
            }),
        ),
    );
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    wait_checked(&topo);
    wait_active(&topo, "www6", "other", Duration::from_secs(10));
    let from = |a: Ipv6Addr, n: usize| answers_to(&topo, a.into(), vip6(), n);

    // Germany is in WEU: eu. Japan has a country list: us. An unlisted client: other.
    assert_eq!(from(de, 20), only("o1", 20), "DE client (region WEU)");
    assert_eq!(from(jp, 20), only("o2", 20), "JP client (country list)");
    assert_eq!(from(CLIENT6, 20), only("o3", 20), "unlisted client");
    let maps = Maps::open_pinned(&topo.pin_dir).expect("pins");
    let matched = maps.event_totals().expect("events")[event::GEO_MATCH as usize];
    assert!(
        matched >= 40,
        "the data path matched the listed clients' IPv6 prefixes: {matched}"
    );

    // eu goes down: WEU's list continues with us.
    servers[0] = None;
    agent
        .wait_log(0, "origin eu/o1 (", Duration::from_secs(5))
        .expect("o1 down logged");
    lb_testbed::wait_for(
        "DE clients moved to us",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || (from(de, 1) == only("o2", 1)).then_some(()),
    );
    assert_eq!(from(de, 20), only("o2", 20), "DE client, eu down");
    assert_eq!(from(CLIENT6, 10), only("o3", 10), "others unchanged");
    // us goes down as well: both lists are exhausted, so default_pools.
    servers[1] = None;
    lb_testbed::wait_for(
        "DE clients moved to other",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || (from(de, 1) == only("o3", 1)).then_some(()),
    );
    assert_eq!(from(jp, 10), only("o3", 10), "JP list down: default_pools");
}

/// `n` request/answer exchanges from `CLIENT6`, each from its own source port (20000 and
/// up), to `vip`: the answering origins' names (or "lost") and how often.
pub(crate) fn udp6_exchanges(topo: &Topology, vip: SocketAddr, n: u16) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut m = BTreeMap::new();
        for p in 20000..20000 + n {
            let s = UdpSocket::bind(SocketAddr::new(CLIENT6.into(), p))
                .unwrap_or_else(|e| panic!("bind client port {p}: {e}"));
            s.connect(vip).expect("connect to the VIP");
            let k = ask(&s, &format!("q{p}"), 3).unwrap_or_else(|| "lost".to_owned());
            *m.entry(k).or_insert(0) += 1;
            if m.len() == 1 && m.get("lost") == Some(&20) {
                break; // none of the first 20 answered: the data path does not forward
            }
        }
        m
    })
}

#[test]
fn v6_udp_exchanges_split_by_weight() {
    let _serial = serial();
    require_prerequisites();
    let weights = [1.0 / 3.0, 2.0 / 3.0, 1.0];
    let topo = Topology::build_with(weights.len(), Family::Dual);
    let _echo: Vec<UdpEcho> = topo
        .origins
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            UdpEcho::start_on(
                ns,
                &format!("o{}", i + 1),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                ECHO_PORT,
            )
        })
        .collect();
    let origins: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "  {{ name = \"o{}\", address = \"{}\", port = {ECHO_PORT}, weight = {w} }},\n",
                i + 1,
                origin_addr6(i + 1)
            )
        })
        .collect();
    let cfg = TempFile::new(
        "udp6.toml",
        &format!(
            "{}[[pools]]\nname = \"dns6\"\norigins = [\n{}]\n\n[[load_balancers]]\nname = \"dns6\"\naddress = \"{VIP6}\"\nport = {UDP_VIP_PORT}\nprotocol = \"udp\"\ndefault_pools = [\"dns6\"]\n",
            topo.base_config_dual(""),
            origins.concat()
        ),
    );
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let vip = SocketAddr::new(VIP6.into(), UDP_VIP_PORT);

    const N: u16 = 3000;
    let t = Instant::now();
    let counts = udp6_exchanges(&topo, vip, N);
    println!(
        "IPv6 UDP: {N} exchanges in {:.1} s: {counts:?}",
        t.elapsed().as_secs_f64()
    );
    let s = read_stats(&cfg.path);
    assert_eq!(
        counts.get("lost"),
        None,
        "every exchange answered: {counts:?}; events {:?}",
        s.events
    );
    assert_one_two_three(&counts, usize::from(N));
    let v = s.vips.iter().find(|v| v.name == "dns6").expect("dns6");
    assert_eq!(v.protocol, "udp");
    assert_eq!(v.new_flows, u64::from(N), "one flow per source port");
    assert!(
        v.reply_packets >= u64::from(N),
        "{} replies",
        v.reply_packets
    );
    for o in &v.origins {
        assert_eq!(o.new_flows, counts[&o.name] as u64, "{}", o.name);
    }
    let f = s.flows.expect("flow states");
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

/// The IPv4 `pmtu_narrow_link_behind_the_lb_both_directions` over IPv6: the LB's route to
/// one side is 1280, the other 1500, and only the ICMPv6 "packet too big" the data path
/// sends (to a client from the VIP, to an origin from the SNAT address) lets 10 MB through.
#[test]
fn v6_pmtu_narrow_link_behind_the_lb_both_directions() {
    let _serial = serial();
    let b = Running::start_dual(&[1.0], "");
    let (topo, cfg) = (&b.topo, &b.cfg);
    let _pass = [
        xdp_pass_on(&topo.client, &format!("{}cx", topo.id)),
        xdp_pass_on(&topo.origins[0], &format!("{}1x", topo.id)),
    ];
    let ends = [&topo.client, &topo.origins[0]];

    // Origin side 1280, client side 1500: the client's full-size uploads are too big.
    topo.narrow_lb_route6(1, 1280);
    let sent = "icmp_frag_needed_sent";
    let what = "IPv6, origin side 1280, client side 1500";
    let (e, n) = transfer_counting(what, &topo.client, &ends, &cfg.path, vip6(), sent);
    assert!(n > 0, "the LB answered the client's too-big packets: {e:?}");

    // And the reverse: the origin's full-size replies are too big for the client side.
    topo.narrow_lb_route6(1, 0);
    topo.narrow_lb_route6(0, 1280);
    let what = "IPv6, client side 1280, origin side 1500";
    let (e, n) = transfer_counting(what, &topo.client, &ends, &cfg.path, vip6(), sent);
    assert!(n > 0, "the LB answered the origin's too-big replies: {e:?}");
    assert_eq!(e["drop_too_big"], 0, "{e:?}");
}

/// The IPv4 `pmtu_icmp_from_routers_is_translated_both_directions` over IPv6: routers
/// beyond the LB, one on each side, are the narrow hops (1280), and their ICMPv6 "packet
/// too big" names the flow as the LB rewrote it: only its translation back to the real
/// endpoint lets 10 MB through each way.
#[test]
fn v6_pmtu_icmp_from_routers_is_translated_both_directions() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build_with(1, Family::Dual);
    let server_ns = topo.add_host_behind(
        &topo.origins[0],
        origin_addr(1),
        Some(origin_addr6(1)),
        &topo.lb_ifaces[1],
        [10, 0, 21],
        1280,
    );
    let client_ns = topo.add_host_behind(
        &topo.client,
        CLIENT,
        Some(CLIENT6),
        &topo.lb_ifaces[0],
        [10, 0, 2],
        1280,
    );
    let _server = Server::start_on(
        &server_ns,
        "o1",
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ORIGIN_PORT,
    );
    let behind = format!("{}2", host_net6([10, 0, 21]));
    let text = topo.config_dual(&[1.0], "").replace(
        &format!("\"{}\"", origin_addr6(1)),
        &format!("\"{behind}\""),
    );
    assert!(text.contains(&behind), "origin moved behind its router");
    let cfg = TempFile::new("lb.toml", &text);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);

    transfer_both_ways(
        "IPv6, routers with 1280 beyond both sides",
        &client_ns,
        &[&client_ns, &server_ns],
        &cfg.path,
        vip6(),
    );
    let e = events(&cfg.path);
    println!(
        "IPv6 translated: icmp_from_origin {}, icmp_from_client {}",
        e["icmp_from_origin"], e["icmp_from_client"]
    );
    // Uploads meet the origin-side router, downloads the client-side one.
    assert!(
        e["icmp_from_origin"] > 0,
        "origin-side ICMPv6 translated: {e:?}"
    );
    assert!(
        e["icmp_from_client"] > 0,
        "client-side ICMPv6 translated: {e:?}"
    );
    assert_eq!(e["drop_icmp_unknown_flow"], 0, "{e:?}");
    assert_eq!(e["drop_icmp_malformed"], 0, "{e:?}");
}

/// `ping -6` to the VIP is answered by XDP; neighbour solicitations and advertisements
/// reach the host's stack (`pass_nd`), and requests through the VIP keep working.
#[test]
fn v6_ping_to_the_vip_is_answered_and_neighbour_discovery_passes() {
    let _serial = serial();
    let b = Running::start_dual(&[1.0], "");
    let (topo, cfg) = (&b.topo, &b.cfg);
    let _pass = xdp_pass_on(&topo.client, &format!("{}cx", topo.id));
    // The client forgets the LB's MAC address: the request below must solicit it again.
    let cx = format!("{}cx", topo.id);
    topo.client.ip(&["-6", "neigh", "flush", "dev", &cx]);
    let before = events(&cfg.path);
    topo.client.exec(
        "ping",
        &["-6", "-c", "3", "-i", "0.2", "-W", "2", &VIP6.to_string()],
    );
    let e = events(&cfg.path);
    assert!(
        e["icmp_echo_reply"] >= before["icmp_echo_reply"] + 3,
        "the three echo requests answered in XDP: {e:?}"
    );
    assert!(
        e["pass_nd"] > before["pass_nd"],
        "neighbour discovery passed to the host: {e:?}"
    );
    let reply = topo
        .client
        .run(|| request_ip(None, vip6(), "NAME"))
        .expect("request through the IPv6 VIP");
    assert_eq!(reply.trim(), "o1");
}

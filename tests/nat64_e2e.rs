//! End to end NAT64 (issue 13, item 3): the real `lb-agent` in a `Family::Dual` topology,
//! IPv6 clients of the IPv6 VIP `[2001:db8::10]` served by origins at their IPv4 addresses
//! (`lb_to_v4`, `lb_to_v6`): the 1:2:3 split of 3000 connections, 10 MB each way
//! byte-identical, path-MTU discovery across the translation (the LB's own narrow egress
//! in either family, and routers beyond it whose ICMP is translated between the families),
//! and UDP exchanges.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use lb_testbed::{
    origin_addr, origin_addr6, require_prerequisites, serial, vip6, Family, Running, Server,
    TempFile, Topology, CLIENT, CLIENT6, ORIGIN_PORT, VIP6,
};

use crate::{
    e2e::{assert_one_two_three, read_stats},
    icmp_e2e::{events, transfer_both_ways, transfer_counting, xdp_pass_on},
    steering::answers_to,
    udp_e2e::{UdpEcho, ECHO_PORT, UDP_VIP_PORT},
    v6_e2e::udp6_exchanges,
};

/// `config_dual` with the IPv6 load balancer `www6` sent to pool `web`: the origins' IPv4
/// addresses.
fn nat64_config(topo: &Topology, weights: &[f64]) -> String {
    let text = topo.config_dual(weights, "");
    let www6 = text
        .find("name = \"www6\"")
        .expect("www6 in the dual config");
    let (head, tail) = text.split_at(www6);
    let tail = tail.replacen("default_pools = [\"web6\"]", "default_pools = [\"web\"]", 1);
    assert!(
        tail.contains("default_pools = [\"web\"]"),
        "www6 now uses pool web"
    );
    format!("{head}{tail}")
}

fn start_nat64(weights: &[f64]) -> Running {
    require_prerequisites();
    let topo = Topology::build_with(weights.len(), Family::Dual);
    let servers = topo.start_servers_dual();
    let cfg = TempFile::new("nat64.toml", &nat64_config(&topo, weights));
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    Running {
        agent,
        servers,
        cfg,
        topo,
    }
}

/// The data path's faults that no NAT64 run may count.
const NEVER: [&str; 8] = [
    "drop_xlat",
    "drop_no_origin",
    "drop_snat_exhausted",
    "drop_flow_insert",
    "drop_no_route",
    "drop_no_tx_port",
    "drop_fwd_disabled",
    "drop_too_big",
];

#[test]
fn nat64_three_thousand_connections_split_by_weight() {
    let _serial = serial();
    let b = start_nat64(&[1.0 / 3.0, 2.0 / 3.0, 1.0]);
    let (topo, cfg) = (&b.topo, &b.cfg);
    const N: usize = 3000;
    let t = Instant::now();
    let counts = answers_to(topo, CLIENT6.into(), vip6(), N);
    println!(
        "NAT64 split: {N} connections in {:.1} s: {counts:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        counts.values().sum::<usize>(),
        N,
        "every connection answered: {counts:?}"
    );
    assert_one_two_three(&counts, N);

    let s = read_stats(&cfg.path);
    let v = s.vips.iter().find(|v| v.name == "www6").expect("www6");
    for o in &v.origins {
        assert!(
            o.address.parse::<Ipv4Addr>().is_ok(),
            "www6's origins are IPv4: {}",
            o.address
        );
    }
    let flows: u64 = v.origins.iter().map(|o| o.new_flows).sum();
    assert!(
        flows as usize <= N && flows as usize >= N * 9 / 10,
        "{flows} flows for {N} connections"
    );
    // Every connection is at least a SYN, a request and an ACK each way.
    let e = &s.events;
    println!(
        "NAT64 counters: xlat_6to4 {}, xlat_4to6 {}",
        e["xlat_6to4"], e["xlat_4to6"]
    );
    assert!(e["xlat_6to4"] >= 3 * N as u64, "{e:?}");
    assert!(e["xlat_4to6"] >= 2 * N as u64, "{e:?}");
    for bad in NEVER {
        assert_eq!(e[bad], 0, "{bad}: {e:?}");
    }
    let text = topo.lb.exec(
        lb_testbed::agent_bin().to_str().expect("UTF-8 path"),
        &["--config", cfg.path.to_str().expect("UTF-8 path"), "stats"],
    );
    let want = "load balancer www6 tcp [2001:db8::10]:80 (pool web)";
    assert!(
        text.lines().any(|l| l.starts_with(want)),
        "`lb-agent stats` shows {want:?}:\n{text}"
    );
}

/// 10 MB each way through the translation, then with the LB's own egress narrowed to 1280
/// on the IPv4 origin side (the client's uploads are too big once translated: ICMPv6
/// "packet too big" with 1300 tells the client) and on the IPv6 client side (the origin's
/// replies are too big once translated: "fragmentation needed" with 1260 tells the origin).
#[test]
fn nat64_ten_megabytes_both_ways_and_path_mtu_at_the_lb() {
    let _serial = serial();
    let b = start_nat64(&[1.0]);
    let (topo, cfg) = (&b.topo, &b.cfg);
    let _pass = [
        xdp_pass_on(&topo.client, &format!("{}cx", topo.id)),
        xdp_pass_on(&topo.origins[0], &format!("{}1x", topo.id)),
    ];
    let ends = [&topo.client, &topo.origins[0]];
    transfer_both_ways(
        "NAT64, 1500 both sides",
        &topo.client,
        &ends,
        &cfg.path,
        vip6(),
    );

    let sent = "icmp_frag_needed_sent";
    topo.narrow_lb_route(1, 1280);
    let what = "NAT64, IPv4 origin side 1280";
    let (e, n) = transfer_counting(what, &topo.client, &ends, &cfg.path, vip6(), sent);
    assert!(n > 0, "the LB answered the client's too-big packets: {e:?}");

    topo.narrow_lb_route(1, 0);
    topo.narrow_lb_route6(0, 1280);
    let what = "NAT64, IPv6 client side 1280";
    let (e, n) = transfer_counting(what, &topo.client, &ends, &cfg.path, vip6(), sent);
    assert!(n > 0, "the LB answered the origin's too-big replies: {e:?}");
    for bad in NEVER {
        assert_eq!(e[bad], 0, "{bad}: {e:?}");
    }
    let s = read_stats(&cfg.path);
    let v = s.vips.iter().find(|v| v.name == "www6").expect("www6");
    assert!(
        v.bytes >= 30_000_000 && v.reply_bytes >= 30_000_000,
        "three transfers each way counted on www6: {} / {} bytes",
        v.bytes,
        v.reply_bytes
    );
}

/// Routers beyond the LB are the narrow hops (1280): an IPv4 router towards the origin
/// sends ICMP "fragmentation needed" about the translated uploads, an IPv6 router towards
/// the client ICMPv6 "packet too big" about the translated downloads; only their
/// translation into the other family (RFC 7915 §4.2, §5.2) lets 10 MB through each way.
#[test]
fn nat64_pmtu_icmp_from_routers_is_translated_between_families() {
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
    let text =
        nat64_config(&topo, &[1.0]).replace(&format!("\"{}\"", origin_addr(1)), "\"10.0.21.2\"");
    assert!(
        text.contains("\"10.0.21.2\""),
        "origin moved behind its router"
    );
    let cfg = TempFile::new("nat64.toml", &text);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);

    transfer_both_ways(
        "NAT64, routers with 1280 beyond both sides",
        &client_ns,
        &[&client_ns, &server_ns],
        &cfg.path,
        vip6(),
    );
    let e = events(&cfg.path);
    println!(
        "NAT64 routers: icmp_from_origin {}, icmp_from_client {}",
        e["icmp_from_origin"], e["icmp_from_client"]
    );
    assert!(
        e["icmp_from_origin"] > 0,
        "IPv4 router's ICMP translated: {e:?}"
    );
    assert!(
        e["icmp_from_client"] > 0,
        "IPv6 router's ICMPv6 translated: {e:?}"
    );
    for bad in NEVER {
        assert_eq!(e[bad], 0, "{bad}: {e:?}");
    }
    assert_eq!(e["drop_icmp_unknown_flow"], 0, "{e:?}");
    assert_eq!(e["drop_icmp_malformed"], 0, "{e:?}");
}

#[test]
fn nat64_udp_exchanges_split_by_weight() {
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
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ECHO_PORT,
            )
        })
        .collect();
    let origins: String = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "  {{ name = \"o{}\", address = \"{}\", port = {ECHO_PORT}, weight = {w} }},\n",
                i + 1,
                origin_addr(i + 1)
            )
        })
        .collect();
    let cfg = TempFile::new(
        "udp64.toml",
        &format!(
            "{}[[pools]]\nname = \"dns4\"\norigins = [\n{origins}]\n\n[[load_balancers]]\nname = \"dns64\"\naddress = \"{VIP6}\"\nport = {UDP_VIP_PORT}\nprotocol = \"udp\"\ndefault_pools = [\"dns4\"]\n",
            topo.base_config_dual(""),
        ),
    );
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let vip = SocketAddr::new(VIP6.into(), UDP_VIP_PORT);
    const N: u16 = 3000;
    let t = Instant::now();
    let counts = udp6_exchanges(&topo, vip, N);
    println!(
        "NAT64 UDP: {N} exchanges in {:.1} s: {counts:?}",
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
    let v = s.vips.iter().find(|v| v.name == "dns64").expect("dns64");
    assert_eq!(v.new_flows, u64::from(N), "one flow per source port");
    assert!(s.events["xlat_6to4"] >= u64::from(N), "{:?}", s.events);
    assert!(s.events["xlat_4to6"] >= u64::from(N), "{:?}", s.events);
    for bad in NEVER {
        assert_eq!(s.events[bad], 0, "{bad}: {:?}", s.events);
    }
}

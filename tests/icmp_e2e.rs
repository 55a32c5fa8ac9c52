//! End to end, ICMP and the edge: path-MTU discovery through the load balancer in both
//! directions, pings to the VIP, and no open router. Namespaces as in e2e.rs (client, LB
//! running the real `lb-agent`, origins), with narrow hops added where the endpoints cannot
//! see them: only ICMP "fragmentation needed" that reaches the right endpoint (answered by
//! the LB itself, or translated by it) lets a 10 MB transfer finish.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use lb_agent::{config::Config, dataplane::Maps, stats};
use lb_testbed::{
    connect, download_ip, fnv64, origin_addr, pattern, require_prerequisites, serial, upload_ip,
    vip, NetNs, Server, TempFile, Topology, CLIENT, FNV_INIT, ORIGIN_PORT, VIP, VIP_PORT,
};

const LEN: usize = 10_000_000;

pub(crate) fn events(cfg: &Path) -> std::collections::BTreeMap<String, u64> {
    let cfg = Config::load(cfg).expect("config");
    let maps = Maps::open_pinned(&cfg.dataplane.pin_dir).expect("pinned maps");
    stats::collect(&cfg, &maps).expect("stats").events
}

/// Attaches `xdp_pass` (native) to `dev` in `ns`, for as long as the result lives. A veth
/// delivers frames another veth's program bounces back with XDP_TX only when it runs an
/// XDP program itself: `veth_xdp_flush` wakes the peer's NAPI only if the peer has one
/// (drivers/net/veth.c), unlike redirects, which are flushed regardless. The LB's ICMP
/// answers (echo replies, fragmentation needed) leave by XDP_TX.
pub(crate) fn xdp_pass_on(ns: &NetNs, dev: &str) -> aya::Ebpf {
    let object = lb_agent::dataplane::test_object(lb_testbed::ebpf_object());
    ns.run(|| {
        let mut ebpf = aya::Ebpf::load_file(&object)
            .unwrap_or_else(|e| panic!("load {}: {e} (cargo xtask build-ebpf)", object.display()));
        let p: &mut aya::programs::Xdp = ebpf
            .program_mut("xdp_pass")
            .expect("xdp_pass")
            .try_into()
            .expect("xdp");
        p.load().expect("load xdp_pass");
        p.attach(dev, aya::programs::XdpMode::Driver)
            .expect("attach xdp_pass");
        ebpf
    })
}

/// Forgets the path MTUs `ns` has learned (IPv4 and IPv6), so that the next connection
/// starts at 1500: a learned PMTU also lowers the MSS a host advertises, which would hide
/// the narrow hop from the other direction's transfer.
fn forget_pmtu(ns: &NetNs) {
    ns.ip(&["route", "flush", "cache"]);
    ns.ip(&["-6", "route", "flush", "cache"]);
}

/// 10 MB down and 10 MB up through the VIP `to` (either family) from `client`,
/// byte-identical; every endpoint forgets its learned path MTUs before each transfer. Also
/// used by `v6_e2e`.
pub(crate) fn transfer_both_ways(
    what: &str,
    client: &NetNs,
    endpoints: &[&NetNs],
    cfg: &Path,
    to: SocketAddr,
) {
    let want = fnv64(&pattern(LEN), FNV_INIT);
    endpoints.iter().for_each(|n| forget_pmtu(n));
    let t = std::time::Instant::now();
    let (name, body) = client
        .run(|| download_ip(to, LEN))
        .unwrap_or_else(|e| panic!("{what}: download: {e}; events {:?}", events(cfg)));
    assert_eq!(body.len(), LEN, "{what}: download length from {name}");
    assert_eq!(fnv64(&body, FNV_INIT), want, "{what}: download content");
    let down = t.elapsed();
    endpoints.iter().for_each(|n| forget_pmtu(n));
    let t = std::time::Instant::now();
    let (name, got) = client
        .run(|| upload_ip(to, &pattern(LEN)))
        .unwrap_or_else(|e| panic!("{what}: upload: {e}; events {:?}", events(cfg)));
    assert_eq!(got, want, "{what}: upload content as {name} hashed it");
    println!(
        "{what}: 10 MB down in {down:?}, up in {:?}, byte-identical",
        t.elapsed()
    );
}

/// `transfer_both_ways`, printing and returning how much `counter` grew during it, with
/// the events after it.
pub(crate) fn transfer_counting(
    what: &str,
    client: &NetNs,
    endpoints: &[&NetNs],
    cfg: &Path,
    to: SocketAddr,
    counter: &str,
) -> (std::collections::BTreeMap<String, u64>, u64) {
    let before = events(cfg)[counter];
    transfer_both_ways(what, client, endpoints, cfg, to);
    let e = events(cfg);
    let grew = e[counter] - before;
    println!("{what}: {counter} +{grew}");
    (e, grew)
}

/// The LB's own egress is the narrow hop: its FIB lookup says FRAG_NEEDED and it must
/// answer the sender itself (from the VIP to a client, from the SNAT address to an origin).
#[test]
fn pmtu_narrow_link_behind_the_lb_both_directions() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(1);
    let _servers = topo.start_servers();
    let cfg = TempFile::new("lb.toml", &topo.config(&[1.0], ""));
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let _pass = [
        xdp_pass_on(&topo.client, &format!("{}cx", topo.id)),
        xdp_pass_on(&topo.origins[0], &format!("{}1x", topo.id)),
    ];

    // Origin side 1280, client side 1500: the client's full-size uploads are too big.
    topo.narrow_lb_route(1, 1280);
    let ends = [&topo.client, &topo.origins[0]];
    let sent = "icmp_frag_needed_sent";
    let to = vip().into();
    let (e, n) = transfer_counting(
        "origin side 1280, client side 1500",
        &topo.client,
        &ends,
        &cfg.path,
        to,
        sent,
    );
    println!("pass_too_big_no_df {}", e["pass_too_big_no_df"]);
    assert!(n > 0, "the LB answered the client's too-big packets: {e:?}");

    // And the reverse: the origin's full-size replies are too big for the client side.
    topo.narrow_lb_route(1, 0);
    topo.narrow_lb_route(0, 1280);
    let (e, n) = transfer_counting(
        "client side 1280, origin side 1500",
        &topo.client,
        &ends,
        &cfg.path,
        to,
        sent,
    );
    assert!(n > 0, "the LB answered the origin's too-big replies: {e:?}");
    assert_eq!(e["drop_too_big"], 0, "{e:?}");
}

/// Routers beyond the LB are the narrow hops, one on each side: their ICMP errors name the
/// flow as the LB rewrote it, and must be translated back to reach the real endpoint.
#[test]
fn pmtu_icmp_from_routers_is_translated_both_directions() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(1);
    // The origin's server sits behind origin namespace o1 (a router, 1280 towards it); the
    // client behind the client namespace (a router, 1280 towards it).
    let server_ns = topo.add_host_behind(
        &topo.origins[0],
        origin_addr(1),
        None,
        &topo.lb_ifaces[1],
        [10, 0, 21],
        1280,
    );
    let client_ns = topo.add_host_behind(
        &topo.client,
        CLIENT,
        None,
        &topo.lb_ifaces[0],
        [10, 0, 2],
        1280,
    );
    let _server = Server::start(&server_ns, "o1", ORIGIN_PORT);
    let text = topo
        .config(&[1.0], "")
        .replace(&format!("\"{}\"", origin_addr(1)), "\"10.0.21.2\"");
    assert!(text.contains("10.0.21.2"), "origin moved behind its router");
    let cfg = TempFile::new("lb.toml", &text);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);

    transfer_both_ways(
        "routers with 1280 beyond both sides",
        &client_ns,
        &[&client_ns, &server_ns],
        &cfg.path,
        vip().into(),
    );
    let e = events(&cfg.path);
    println!(
        "translated: icmp_from_origin {}, icmp_from_client {}",
        e["icmp_from_origin"], e["icmp_from_client"]
    );
    // Uploads meet the origin-side router, downloads the client-side one.
    assert!(
        e["icmp_from_origin"] > 0,
        "origin-side ICMP translated: {e:?}"
    );
    assert!(
        e["icmp_from_client"] > 0,
        "client-side ICMP translated: {e:?}"
    );
    assert_eq!(e["drop_icmp_unknown_flow"], 0, "{e:?}");
    assert_eq!(e["drop_icmp_malformed"], 0, "{e:?}");
}

/// Pings to the VIP are answered by XDP; a client that aims at an origin address through
/// the LB's MAC is dropped (no open router) until `route_other = true`.
#[test]
fn ping_answered_and_no_open_router() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(1);
    let _servers = topo.start_servers();
    let cfg = TempFile::new("lb.toml", &topo.config(&[1.0], ""));
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let _pass = xdp_pass_on(&topo.client, &format!("{}cx", topo.id));

    topo.client.exec(
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "2", &VIP.to_string()],
    );
    let e = events(&cfg.path);
    assert!(e["icmp_echo_reply"] >= 2, "{e:?}");

    // The client namespace's default route is the LB: a connection straight to the origin
    // goes to the LB's MAC, and must not be routed on.
    let origin = SocketAddrV4::new(origin_addr(1), ORIGIN_PORT);
    let r = topo
        .client
        .run(|| connect(None, origin, Duration::from_millis(1500)));
    assert!(r.is_err(), "transit connection must fail: {r:?}");
    let e = events(&cfg.path);
    assert!(e["drop_transit"] > 0, "{e:?}");
    // The VIP still works meanwhile.
    let reply = topo
        .client
        .run(|| lb_testbed::request(None, SocketAddrV4::new(VIP, VIP_PORT), "NAME"))
        .expect("VIP request");
    assert_eq!(reply.trim(), "o1");

    // route_other = true (reload): the host routes it again.
    std::fs::write(
        &cfg.path,
        topo.config(&[1.0], "route_other = true\nanswer_ping = false"),
    )
    .expect("rewrite config");
    agent.reload().expect("reload with route_other");
    let reply = topo
        .client
        .run(|| lb_testbed::request(None, origin, "NAME"))
        .expect("routed to the origin with route_other");
    assert_eq!(reply.trim(), "o1");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", topo.client.path().display()))
        .args(["--", "ping", "-c", "1", "-W", "1", &VIP.to_string()])
        .output()
        .expect("ping");
    assert!(!out.status.success(), "answer_ping = false: no echo reply");
    let e = events(&cfg.path);
    assert!(e["drop_ping"] >= 1, "{e:?}");
}

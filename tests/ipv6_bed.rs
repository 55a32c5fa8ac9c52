//! The test bed's IPv6 plumbing, without the agent: a `Family::Dual` topology routes IPv6
//! from the client through the LB namespace's kernel to dual-stack origin servers, and
//! `config_dual` is a config the agent accepts. The IPv6 end-to-end tests through XDP build
//! on these helpers.

use std::{net::SocketAddr, path::Path};

use lb_testbed::{
    download_ip, origin_addr, origin_addr6, pattern, request_ip, require_prerequisites, serial,
    Family, Topology, CLIENT6_2, ORIGIN_PORT,
};

#[test]
fn a_dual_topology_routes_ipv6_to_dual_stack_origins() {
    let _s = serial();
    require_prerequisites();
    let topo = Topology::build_with(2, Family::Dual);
    let _servers = topo.start_servers_dual();
    let o1_v6 = SocketAddr::new(origin_addr6(1).into(), ORIGIN_PORT);
    let o2_v6 = SocketAddr::new(origin_addr6(2).into(), ORIGIN_PORT);
    let o1_v4 = SocketAddr::new(origin_addr(1).into(), ORIGIN_PORT);
    topo.client.run(|| {
        assert_eq!(request_ip(None, o1_v6, "NAME").expect("IPv6 to o1"), "o1\n");
        assert_eq!(
            request_ip(None, o1_v4, "NAME").expect("IPv4 to the same server"),
            "o1\n"
        );
        let from = SocketAddr::new(CLIENT6_2.into(), 0);
        assert_eq!(
            request_ip(Some(from), o2_v6, "NAME").expect("from the second client address"),
            "o2\n"
        );
        let (name, body) = download_ip(o2_v6, 200_000).expect("IPv6 download");
        assert_eq!(name, "o2");
        assert!(body == pattern(200_000), "the download arrives intact");
    });
    let cfg = lb_agent::config::Config::parse(&topo.config_dual(&[1.0, 0.5], ""), Path::new("t"))
        .expect("config_dual is valid");
    assert_eq!(cfg.load_balancers.len(), 2);
    assert!(cfg.load_balancers[1].address.is_ipv6());
    assert!(cfg.dataplane.snat6.is_some());
    assert!(cfg.uses_ipv6());
}

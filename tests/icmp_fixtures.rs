//! ICMP and edge packet fixtures: frames in, verdicts and frames out, through
//! `BPF_PROG_TEST_RUN`, in the fixture namespace of `lb_testbed::fixture` (clients and a
//! router on side a, origin o1 and a router on side b).
//!
//! ICMP errors for a NATed flow are translated both ways (outer and quoted headers, every
//! checksum); a rewritten packet too big for the egress link is answered with
//! "fragmentation needed"; pings to the VIP are answered; other protocols to the VIP and
//! transit traffic are dropped (unless `route_other`). Each test loads the program afresh,
//! opens client 1's flow, runs its cases and checks every event counter.

use lb_common::event;
use lb_testbed::{
    fixture::{
        dataplane, first_snat_port, frag_needed, icmp_frame, ip_of, mac_of, neighbours, udp_frame,
        with_loaded, without_df, Case, Loaded, C1, C2, LB_A, LB_WWW, O1, POOL_WEB, R_CLIENT,
        R_ORIGIN, SNAT, SNAT_MAX, SNAT_MIN, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    },
    serial, tcp_frame, Flags, Side,
};

const MAC_C1: [u8; 6] = mac_of(C1);
const MAC_C2: [u8; 6] = mac_of(C2);
const MAC_O1: [u8; 6] = mac_of(O1);
const MAC_RC: [u8; 6] = mac_of(R_CLIENT);
const MAC_RO: [u8; 6] = mac_of(R_ORIGIN);
const PAYLOAD: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const MTU1400: [u8; 4] = [0, 0, 0x05, 0x78];

fn config(extra_dataplane: &str) -> String {
    format!(
        "{}{POOL_WEB}{LB_WWW}",
        dataplane((SNAT_MIN, SNAT_MAX), extra_dataplane)
    )
}

/// Client 1's flow through the LB, and the frames routers quote in errors about it.
struct Flow {
    mac_a: [u8; 6],
    mac_b: [u8; 6],
    p1: u16,
    /// What we sent the origin and what we sent the client.
    snat_to_o: Vec<u8>,
    vip_to_c: Vec<u8>,
    /// Translated quotes keep the TTL they were quoted with.
    c_to_vip_63: Vec<u8>,
    o_to_snat_63: Vec<u8>,
    echo_req: Vec<u8>,
}

/// Loads the program, opens client 1's flow (SYN, SYN-ACK), runs `f`, then checks that
/// every event counter moved as the cases said.
fn with_flow(f: impl FnOnce(&mut Loaded<'_>, &Flow) + Send) {
    let _serial = serial();
    let hosts = neighbours(&[C1, C2, R_CLIENT], &[O1, R_ORIGIN]);
    with_loaded("ic", &hosts, &config(""), |fx| {
        let (mac_a, mac_b) = (fx.bed.mac_a, fx.bed.mac_b);
        let p1 = first_snat_port(C1, 40000, VIP, 80);
        let flow = Flow {
            mac_a,
            mac_b,
            p1,
            snat_to_o: tcp_frame(mac_b, MAC_O1, SNAT, O1, 63, p1, 8080, Flags::Ack, PAYLOAD),
            vip_to_c: tcp_frame(mac_a, MAC_C1, VIP, C1, 63, 80, 40000, Flags::Ack, PAYLOAD),
            c_to_vip_63: tcp_frame(MAC_C1, mac_a, C1, VIP, 63, 40000, 80, Flags::Ack, PAYLOAD),
            o_to_snat_63: tcp_frame(mac_b, MAC_O1, O1, SNAT, 63, 8080, p1, Flags::Ack, PAYLOAD),
            echo_req: icmp_frame(
                MAC_C1,
                mac_a,
                C1,
                VIP,
                64,
                8,
                0,
                [0x12, 0x34, 0, 1],
                b"ping!",
            ),
        };
        fx.run(vec![
            Case {
                desc: "SYN from client 1 to the VIP: the flow the ICMP errors below are about",
                ingress: Side::A,
                input: tcp_frame(MAC_C1, mac_a, C1, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(
                    mac_b,
                    MAC_O1,
                    SNAT,
                    O1,
                    63,
                    p1,
                    8080,
                    Flags::Syn,
                    &[],
                )),
                events: &[event::FWD_REDIRECT],
            },
            Case {
                desc: "o1's SYN-ACK: the handshake is answered (origin data is tracked from here)",
                ingress: Side::B,
                input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, p1, Flags::SynAck, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(
                    mac_a,
                    MAC_C1,
                    VIP,
                    C1,
                    63,
                    80,
                    40000,
                    Flags::SynAck,
                    &[],
                )),
                events: &[event::REPLY_NAT, event::FWD_REDIRECT],
            },
        ]);
        f(fx, &flow);
        fx.assert_events();
    });
}

#[test]
fn errors_from_the_origin_side_are_translated_to_the_client() {
    with_flow(|fx, fl| {
        let mut cases = Vec::new();
        for (desc, kind, code, rest, full) in [
            (
                "origin side: fragmentation needed (3/4, MTU 1400), whole segment quoted: to the client from the VIP",
                3,
                4,
                MTU1400,
                true,
            ),
            (
                "origin side: port unreachable (3/3): translated to the client",
                3,
                3,
                [0; 4],
                true,
            ),
            (
                "origin side: time exceeded (11/0), 8 bytes of TCP quoted (RFC 792): translated",
                11,
                0,
                [0; 4],
                false,
            ),
        ] {
            let n = if full { fl.snat_to_o.len() - 14 } else { 28 };
            cases.push(Case {
                desc,
                ingress: Side::B,
                input: icmp_frame(
                    MAC_RO,
                    fl.mac_b,
                    R_ORIGIN,
                    SNAT,
                    64,
                    kind,
                    code,
                    rest,
                    &ip_of(&fl.snat_to_o)[..n],
                ),
                verdict: XDP_REDIRECT,
                output: Some(icmp_frame(
                    fl.mac_a,
                    MAC_C1,
                    VIP,
                    C1,
                    63,
                    kind,
                    code,
                    rest,
                    &ip_of(&fl.c_to_vip_63)[..n],
                )),
                events: &[event::ICMP_FROM_ORIGIN, event::FWD_REDIRECT],
            });
        }
        fx.run(cases);
    });
}

#[test]
fn errors_from_the_client_side_are_translated_to_the_origin() {
    with_flow(|fx, fl| {
        let mut cases = Vec::new();
        for (desc, kind, code, rest, full) in [
            (
                "client side: fragmentation needed (3/4, MTU 1400) to the VIP: to the origin from the SNAT address",
                3,
                4,
                MTU1400,
                true,
            ),
            (
                "client side: host unreachable (3/1): translated to the origin",
                3,
                1,
                [0; 4],
                true,
            ),
            (
                "client side: time exceeded (11/0), 8 bytes of TCP quoted: translated",
                11,
                0,
                [0; 4],
                false,
            ),
        ] {
            let n = if full { fl.vip_to_c.len() - 14 } else { 28 };
            cases.push(Case {
                desc,
                ingress: Side::A,
                input: icmp_frame(
                    MAC_RC,
                    fl.mac_a,
                    R_CLIENT,
                    VIP,
                    64,
                    kind,
                    code,
                    rest,
                    &ip_of(&fl.vip_to_c)[..n],
                ),
                verdict: XDP_REDIRECT,
                output: Some(icmp_frame(
                    fl.mac_b,
                    MAC_O1,
                    SNAT,
                    O1,
                    63,
                    kind,
                    code,
                    rest,
                    &ip_of(&fl.o_to_snat_63)[..n],
                )),
                events: &[event::ICMP_FROM_CLIENT, event::FWD_REDIRECT],
            });
        }
        fx.run(cases);
    });
}

#[test]
fn errors_about_unknown_flows_expiring_ttls_or_cut_quotes_are_not_translated() {
    with_flow(|fx, fl| {
        let mac_a = fl.mac_a;
        let stranger = tcp_frame(mac_a, MAC_C2, VIP, C2, 63, 80, 41000, Flags::Ack, PAYLOAD);
        let stranger_out = tcp_frame(fl.mac_b, MAC_O1, SNAT, O1, 63, 61500, 8080, Flags::Ack, &[]);
        fx.run(vec![
            Case {
                desc: "ICMP error to the VIP about a flow we do not know: dropped",
                ingress: Side::A,
                input: icmp_frame(
                    MAC_RC,
                    mac_a,
                    R_CLIENT,
                    VIP,
                    64,
                    3,
                    4,
                    MTU1400,
                    &ip_of(&stranger),
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_ICMP_UNKNOWN_FLOW],
            },
            Case {
                desc: "ICMP error about our flow arriving with TTL 1: dropped, not forwarded",
                ingress: Side::A,
                input: icmp_frame(
                    MAC_RC,
                    mac_a,
                    R_CLIENT,
                    VIP,
                    1,
                    3,
                    4,
                    MTU1400,
                    &ip_of(&fl.vip_to_c),
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_TTL],
            },
            Case {
                desc: "ICMP error to the SNAT address about no flow of ours: the host's, passed",
                ingress: Side::B,
                input: icmp_frame(
                    MAC_RO,
                    fl.mac_b,
                    R_ORIGIN,
                    SNAT,
                    64,
                    3,
                    3,
                    [0; 4],
                    &ip_of(&stranger_out),
                ),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_TCP],
            },
            Case {
                desc: "ICMP error to the VIP with a quote cut inside the TCP ports: dropped",
                ingress: Side::A,
                input: icmp_frame(
                    MAC_RC,
                    mac_a,
                    R_CLIENT,
                    VIP,
                    64,
                    3,
                    4,
                    MTU1400,
                    &ip_of(&fl.vip_to_c)[..22],
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_ICMP_MALFORMED],
            },
        ]);
    });
}

#[test]
fn pings_to_the_vip_are_answered_and_other_protocols_to_it_dropped() {
    with_flow(|fx, fl| {
        let mac_a = fl.mac_a;
        fx.run(vec![
            Case {
                desc: "echo request to the VIP: answered in place (XDP_TX), TTL 64",
                ingress: Side::A,
                input: fl.echo_req.clone(),
                verdict: XDP_TX,
                output: Some(icmp_frame(
                    mac_a,
                    MAC_C1,
                    VIP,
                    C1,
                    64,
                    0,
                    0,
                    [0x12, 0x34, 0, 1],
                    b"ping!",
                )),
                events: &[event::ICMP_ECHO_REPLY],
            },
            Case {
                desc: "echo request to the host's own address: passed to the host",
                ingress: Side::A,
                input: icmp_frame(MAC_C1, mac_a, C1, LB_A, 64, 8, 0, [0, 1, 0, 1], b"x"),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_TCP],
            },
            Case {
                desc: "ICMP timestamp request to the VIP: dropped",
                ingress: Side::A,
                input: icmp_frame(MAC_C1, mac_a, C1, VIP, 64, 13, 0, [0, 1, 0, 1], &[0; 12]),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_VIP_OTHER_PROTO],
            },
            Case {
                desc: "UDP to the VIP: dropped",
                ingress: Side::A,
                input: udp_frame(MAC_C1, mac_a, (C1, VIP), (5000, 53), b"q"),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_VIP_OTHER_PROTO],
            },
        ]);
    });
}

#[test]
fn no_open_router_transit_is_dropped_host_traffic_passed() {
    with_flow(|fx, fl| {
        let mac_a = fl.mac_a;
        fx.run(vec![
            Case {
                desc: "no open router: TCP from a client to the origin's address via the LB's MAC: dropped",
                ingress: Side::A,
                input: tcp_frame(MAC_C1, mac_a, C1, O1, 64, 40001, 22, Flags::Syn, &[]),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_TRANSIT],
            },
            Case {
                desc: "no open router: UDP from a client to the origin's address: dropped",
                ingress: Side::A,
                input: udp_frame(MAC_C1, mac_a, (C1, O1), (5000, 53), b"q"),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_TRANSIT],
            },
            Case {
                desc: "TCP to the host's own address: passed",
                ingress: Side::A,
                input: tcp_frame(MAC_C1, mac_a, C1, LB_A, 64, 40002, 22, Flags::Syn, &[]),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "UDP to the subnet's broadcast address: passed",
                ingress: Side::A,
                input: udp_frame(MAC_C1, [0xff; 6], (C1, [10, 0, 1, 255]), (68, 67), b"b"),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_TCP],
            },
        ]);
    });
}

/// 1460 bytes of data: 1500-byte packets, too big for a 1280-byte link.
const BIG: [u8; 1460] = [0x5a; 1460];

#[test]
fn a_client_packet_too_big_for_the_origin_link_is_answered_or_fragmented() {
    with_flow(|fx, fl| {
        let mac_a = fl.mac_a;
        let big_in = tcp_frame(MAC_C1, mac_a, C1, VIP, 64, 40000, 80, Flags::Ack, &BIG);
        // The origin-side link narrows to 1280: a client's full-size packet is answered.
        fx.bed.ns.ip(&["link", "set", &fx.bed.b, "mtu", "1280"]);
        fx.run(vec![
            Case {
                desc: "client packet (DF) too big for the origin link: fragmentation needed (MTU 1280) to the client from the VIP, quoting what the client sent",
                ingress: Side::A,
                input: big_in.clone(),
                verdict: XDP_TX,
                output: Some(frag_needed(mac_a, MAC_C1, VIP, C1, 1280, &ip_of(&big_in))),
                events: &[event::FLOW_HIT, event::ICMP_FRAG_NEEDED_SENT],
            },
            Case {
                desc: "the same packet without DF: the rewritten packet goes to the stack to be fragmented",
                ingress: Side::A,
                input: without_df(big_in.clone()),
                verdict: XDP_PASS,
                output: Some(without_df(tcp_frame(
                    MAC_C1, mac_a, SNAT, O1, 63, fl.p1, 8080, Flags::Ack, &BIG,
                ))),
                events: &[event::FLOW_HIT, event::PASS_TOO_BIG_NO_DF],
            },
        ]);
    });
}

#[test]
fn an_origin_reply_too_big_for_the_client_link_is_answered() {
    with_flow(|fx, fl| {
        let big_reply = tcp_frame(
            MAC_O1,
            fl.mac_b,
            O1,
            SNAT,
            64,
            8080,
            fl.p1,
            Flags::Ack,
            &BIG,
        );
        // The client-side link narrows: the origin's full-size reply is answered.
        fx.bed.ns.ip(&["link", "set", &fx.bed.a, "mtu", "1280"]);
        fx.run(vec![Case {
            desc: "origin reply (DF) too big for the client link: fragmentation needed to the origin from the SNAT address, quoting what the origin sent",
            ingress: Side::B,
            input: big_reply.clone(),
            verdict: XDP_TX,
            output: Some(frag_needed(fl.mac_b, MAC_O1, SNAT, O1, 1280, &ip_of(&big_reply))),
            events: &[event::REPLY_NAT, event::ICMP_FRAG_NEEDED_SENT],
        }]);
    });
}

#[test]
fn route_other_passes_transit_and_answer_ping_off_drops_pings() {
    with_flow(|fx, fl| {
        fx.apply(&config("route_other = true\nanswer_ping = false"));
        fx.run(vec![
            Case {
                desc: "route_other: the transit packet is passed to the stack to be routed",
                ingress: Side::A,
                input: tcp_frame(MAC_C1, fl.mac_a, C1, O1, 64, 40001, 22, Flags::Syn, &[]),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "answer_ping = false: the echo request to the VIP is dropped",
                ingress: Side::A,
                input: fl.echo_req.clone(),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_PING],
            },
        ]);
    });
}

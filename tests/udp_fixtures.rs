//! UDP packet fixtures: datagrams in, verdicts and datagrams out, through
//! `BPF_PROG_TEST_RUN` (`lb_xdp`, which tail-calls `lb_udp`), in the fixture namespace of
//! `lb_testbed::fixture`. Expected frames are built by etherparse, so byte equality proves
//! the incremental checksum updates; every output's checksums are recomputed on top.
//!
//! New flow, established flow, reply, a datagram without checksum, malformed and
//! fragmented datagrams, the two idle timeouts (answered and never answered), the budget
//! of unanswered new flows, ICMP errors both ways and "fragmentation needed" for UDP.

use lb_common::event;
use lb_testbed::{
    fixture::{
        dataplane, first_snat_port_udp, frag_needed, icmp_frame, ip_of, mac_of, neighbours,
        next_second, udp_frame_ttl, with_loaded, Case, Loaded, C1, C2, C3, C4, O1, POOL_WEB,
        R_CLIENT, R_ORIGIN, SNAT, SNAT_MAX, SNAT_MIN, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX,
    },
    serial, Side,
};

const MAC_C1: [u8; 6] = mac_of(C1);
const MAC_C2: [u8; 6] = mac_of(C2);
const MAC_O1: [u8; 6] = mac_of(O1);
const MAC_RC: [u8; 6] = mac_of(R_CLIENT);
const MAC_RO: [u8; 6] = mac_of(R_ORIGIN);
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01 what is the answer";
const ANSWER: &[u8] = b"\x12\x34\x81\x80\x00\x01 forty-two";

/// Load balancer `dns`: UDP 10.0.0.10:53 -> pool `web` (o1, port 8080).
const LB_DNS: &str = r#"
[[load_balancers]]
name = "dns"
protocol = "udp"
address = "10.0.0.10"
port = 53
default_pools = ["web"]
"#;

fn config(udp: &str) -> String {
    format!("{}{POOL_WEB}{LB_DNS}", dataplane((SNAT_MIN, SNAT_MAX), udp))
}

/// A datagram of client `c` (port `cp`) to the VIP, with the TTL it has at that point.
fn to_vip(c: [u8; 4], cp: u16, dmac: [u8; 6], ttl: u8, payload: &[u8]) -> Vec<u8> {
    udp_frame_ttl(mac_of(c), dmac, (c, VIP), ttl, (cp, 53), payload)
}

/// What leaves towards o1 for it: SNAT port `p`, TTL one less.
fn to_origin(mac_b: [u8; 6], p: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    udp_frame_ttl(mac_b, MAC_O1, (SNAT, O1), ttl, (p, 8080), payload)
}

/// The same datagram with its UDP checksum field cleared (RFC 768: none).
fn no_checksum(mut v: Vec<u8>) -> Vec<u8> {
    v[40..42].copy_from_slice(&[0, 0]);
    v
}

/// The frame as a fragment at 8-byte `offset` with MF set (its header checksum fixed):
/// offset 0 is the first fragment of a larger datagram.
fn fragment(mut v: Vec<u8>, offset: u16) -> Vec<u8> {
    let w = (0x2000 | offset).to_be_bytes();
    v[20] = (v[20] & 0x40) | w[0];
    v[21] = w[1];
    v[24..26].copy_from_slice(&[0, 0]);
    let c = lb_testbed::fixture::csum(&v[14..34]);
    v[24..26].copy_from_slice(&c);
    v
}

/// A datagram of client `c` (port 40000) forwarded to o1 from SNAT port `p`, counting
/// `events`.
fn datagram_case(
    desc: &'static str,
    (mac_a, mac_b): ([u8; 6], [u8; 6]),
    (c, p): ([u8; 4], u16),
    payload: &[u8],
    events: &'static [u32],
) -> Case {
    Case {
        desc,
        ingress: Side::A,
        input: to_vip(c, 40000, mac_a, 64, payload),
        verdict: XDP_REDIRECT,
        output: Some(to_origin(mac_b, p, 63, payload)),
        events,
    }
}

/// o1's answer on SNAT port `p`, back to client `c` (port 40000) from the VIP.
fn answer_case(desc: &'static str, (mac_a, mac_b): ([u8; 6], [u8; 6]), p: u16, c: [u8; 4]) -> Case {
    Case {
        desc,
        ingress: Side::B,
        input: udp_frame_ttl(MAC_O1, mac_b, (O1, SNAT), 64, (8080, p), ANSWER),
        verdict: XDP_REDIRECT,
        output: Some(udp_frame_ttl(
            mac_a,
            mac_of(c),
            (VIP, c),
            63,
            (53, 40000),
            ANSWER,
        )),
        events: &[event::REPLY_NAT, event::FWD_REDIRECT],
    }
}

/// Runs `f` on a freshly loaded program with the `dns` load balancer and `udp` dataplane
/// lines, then checks every event counter.
fn with_udp(udp: &str, f: impl FnOnce(&mut Loaded<'_>) + Send) {
    let _serial = serial();
    let hosts = neighbours(&[C1, C2, C3, C4, R_CLIENT], &[O1, R_ORIGIN]);
    with_loaded("uf", &hosts, &config(udp), |fx| {
        f(fx);
        fx.assert_events();
    });
}

#[test]
fn datagrams_are_balanced_answered_and_checked() {
    with_udp("", |fx| {
        let (mac_a, mac_b) = (fx.bed.mac_a, fx.bed.mac_b);
        let p1 = first_snat_port_udp(C1, 40000, VIP, 53);
        let mut bad_len = to_vip(C1, 40001, mac_a, 64, QUERY);
        bad_len[38..40].copy_from_slice(&200u16.to_be_bytes());
        let frag = fragment(to_vip(C2, 40000, mac_a, 64, QUERY), 0);
        let answer = udp_frame_ttl(MAC_O1, mac_b, (O1, SNAT), 64, (8080, p1), ANSWER);
        fx.run(vec![
            datagram_case("client 1's first datagram to the UDP VIP: a new flow, to o1 from the SNAT address", (mac_a, mac_b), (C1, p1), QUERY, &[event::FWD_REDIRECT]),
            datagram_case("its second datagram: the same flow", (mac_a, mac_b), (C1, p1), b"again", &[event::FLOW_HIT, event::FWD_REDIRECT]),
            answer_case("o1's answer: back to client 1 from the VIP's address and port", (mac_a, mac_b), p1, C1),
            Case {
                desc: "a datagram without checksum (0): rewritten, still without one",
                ingress: Side::A,
                input: no_checksum(to_vip(C1, 40000, mac_a, 64, b"no sum")),
                verdict: XDP_REDIRECT,
                output: Some(no_checksum(to_origin(mac_b, p1, 63, b"no sum"))),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
            Case {
                desc: "a TCP SYN to the UDP VIP's port: no TCP load balancer there, not ours (no route in the fixture namespace: the stack's)",
                ingress: Side::A,
                input: lb_testbed::tcp_frame(
                    MAC_C1,
                    mac_a,
                    C1,
                    VIP,
                    64,
                    40000,
                    53,
                    lb_testbed::Flags::Syn,
                    &[],
                ),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "o1 answering from another port: no flow of ours, the SNAT address's (the host's)",
                ingress: Side::B,
                input: udp_frame_ttl(MAC_O1, mac_b, (O1, SNAT), 64, (8081, p1), ANSWER),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_TCP],
            },
            Case {
                desc: "a datagram to a port of the VIP address without a UDP load balancer: dropped",
                ingress: Side::A,
                input: udp_frame_ttl(MAC_C1, mac_a, (C1, VIP), 64, (40000, 54), QUERY),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_VIP_OTHER_PROTO],
            },
            Case {
                desc: "a UDP length longer than the packet: dropped, no flow",
                ingress: Side::A,
                input: bad_len,
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_MALFORMED_UDP],
            },
            Case {
                desc: "source port 0: dropped",
                ingress: Side::A,
                input: to_vip(C2, 0, mac_a, 64, QUERY),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_MALFORMED_UDP],
            },
            Case {
                desc: "a fragment (MF) to the VIP: counted and dropped, never steered",
                ingress: Side::A,
                input: frag,
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_FRAGMENT],
            },
            Case {
                desc: "the first fragment of an answer on client 1's flow: dropped, so the host's stack never reassembles it (and answers port unreachable)",
                ingress: Side::B,
                input: fragment(answer.clone(), 0),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_FRAGMENT],
            },
            Case {
                desc: "a later fragment to the SNAT address: no ports to know it by, the host's (where it expires unassembled)",
                ingress: Side::B,
                input: fragment(answer, 185),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_TCP],
            },
            Case {
                desc: "TTL 1: dropped before anything changes",
                ingress: Side::A,
                input: to_vip(C1, 40000, mac_a, 1, QUERY),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_TTL],
            },
        ]);
    });
}

#[test]
fn idle_flows_expire_after_their_timeouts_and_are_replaced() {
    with_udp("udp_timeout = 3\nudp_unreplied_timeout = 1\n", |fx| {
        let (mac_a, mac_b) = (fx.bed.mac_a, fx.bed.mac_b);
        let p1 = first_snat_port_udp(C1, 40000, VIP, 53);
        let p2 = first_snat_port_udp(C2, 40000, VIP, 53);
        assert_ne!(p1, p2, "the fixture needs the two flows on both SNAT ports");
        let c1 = |fx: &mut Loaded<'_>, desc, events| {
            fx.run(vec![Case {
                desc,
                ingress: Side::A,
                input: to_vip(C1, 40000, mac_a, 64, QUERY),
                verdict: XDP_REDIRECT,
                output: Some(to_origin(mac_b, p1, 63, QUERY)),
                events,
            }]);
        };
        c1(fx, "client 1: a new flow", &[event::FWD_REDIRECT]);
        fx.run(vec![
            answer_case("o1 answers it: the flow is answered, a one-shot exchange so far (udp_unreplied_timeout still applies)", (mac_a, mac_b), p1, C1),
            datagram_case("client 1 speaks again after the answer, in the same second: a conversation (udp_timeout applies)", (mac_a, mac_b), (C1, p1), QUERY, &[event::FLOW_HIT, event::FWD_REDIRECT]),
            datagram_case("client 2: a new flow o1 never answers (udp_unreplied_timeout applies)", (mac_a, mac_b), (C2, p2), QUERY, &[event::FWD_REDIRECT]),
        ]);
        let states = |fx: &Loaded<'_>| -> Vec<u32> {
            let mut v: Vec<u32> = fx
                .maps()
                .rev_flows
                .iter()
                .filter_map(Result::ok)
                .map(|(_, r)| r.flags)
                .collect();
            v.sort_unstable();
            v
        };
        use lb_common::{CT_ESTABLISHED, CT_UDP, CT_UDP_STREAM};
        assert_eq!(
            states(fx),
            vec![CT_UDP, CT_UDP | CT_ESTABLISHED | CT_UDP_STREAM],
            "client 2's flow unanswered, client 1's a conversation"
        );
        // Two whole seconds idle: past the unanswered flow's 1 s, within the conversation's 3 s.
        next_second();
        next_second();
        c1(
            fx,
            "client 1 after 2 s: its answered flow lives on",
            &[event::FLOW_HIT, event::FWD_REDIRECT],
        );
        fx.run(vec![datagram_case("client 2 after 2 s: its unanswered flow expired and is replaced (same port: it went with the old pair)", (mac_a, mac_b), (C2, p2), QUERY, &[event::UDP_FLOW_EXPIRED, event::FWD_REDIRECT])]);
        fx.run(vec![answer_case("o1's answer on client 2's port: the new flow's, forwarded (a one-shot exchange: never continued)", (mac_a, mac_b), p2, C2)]);
        next_second();
        next_second();
        fx.run(vec![datagram_case("client 2 after 2 s more: its answered but never continued flow expired after udp_unreplied_timeout, replaced", (mac_a, mac_b), (C2, p2), QUERY, &[event::UDP_FLOW_EXPIRED, event::FWD_REDIRECT])]);
        next_second();
        next_second();
        fx.run(vec![Case {
            desc: "o1 answering client 1 after 4 idle seconds: the flow expired, dropped",
            ingress: Side::B,
            input: udp_frame_ttl(MAC_O1, mac_b, (O1, SNAT), 64, (8080, p1), ANSWER),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_EXPIRED],
        }]);
        c1(
            fx,
            "client 1 after 4 idle seconds: past udp_timeout, a new flow",
            &[event::UDP_FLOW_EXPIRED, event::FWD_REDIRECT],
        );
        let flows = fx.maps().flows.iter().filter_map(Result::ok).count();
        assert_eq!(flows, 2, "one flow per client, the expired ones replaced");
    });
}

#[test]
fn new_flows_over_the_budget_of_unanswered_ones_are_dropped() {
    with_udp("udp_budget = 2\n", |fx| {
        let (mac_a, mac_b) = (fx.bed.mac_a, fx.bed.mac_b);
        let p1 = first_snat_port_udp(C1, 40000, VIP, 53);
        let p2 = first_snat_port_udp(C2, 40000, VIP, 53);
        let mut cases = Vec::new();
        for (desc, c, p) in [
            ("client 1: a new flow, 1 unanswered", C1, p1),
            ("client 2: a new flow, 2 unanswered", C2, p2),
        ] {
            cases.push(Case {
                desc,
                ingress: Side::A,
                input: to_vip(c, 40000, mac_a, 64, QUERY),
                verdict: XDP_REDIRECT,
                output: Some(to_origin(mac_b, p, 63, QUERY)),
                events: &[event::FWD_REDIRECT],
            });
        }
        cases.push(Case {
            desc: "client 3: the budget (2) is spent, no new flow",
            ingress: Side::A,
            input: to_vip(C3, 40000, mac_a, 64, QUERY),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_UDP_BUDGET],
        });
        cases.push(datagram_case(
            "client 1's flow is not affected",
            (mac_a, mac_b),
            (C1, p1),
            QUERY,
            &[event::FLOW_HIT, event::FWD_REDIRECT],
        ));
        cases.push(answer_case(
            "o1 answers client 1: one unanswered flow left",
            (mac_a, mac_b),
            p1,
            C1,
        ));
        fx.run(cases);
        // Client 4 (not 3: the two-port fixture range is taken by clients 1 and 2, so any
        // new flow now meets SNAT_EXHAUSTED after the budget lets it through).
        let (v, _) = fx.run1(Side::A, &to_vip(C4, 40000, mac_a, 64, QUERY));
        assert_eq!(
            v, XDP_DROP,
            "client 4: within the budget again, but both SNAT ports are held by live flows"
        );
        fx.expect_events(&[event::DROP_SNAT_EXHAUSTED]);
    });
}

#[test]
fn icmp_errors_about_udp_flows_are_translated_both_ways() {
    with_udp("", |fx| {
        let (mac_a, mac_b) = (fx.bed.mac_a, fx.bed.mac_b);
        let p1 = first_snat_port_udp(C1, 40000, VIP, 53);
        let sent = to_origin(mac_b, p1, 63, QUERY);
        let answer = udp_frame_ttl(MAC_O1, mac_b, (O1, SNAT), 64, (8080, p1), ANSWER);
        let answered = udp_frame_ttl(mac_a, MAC_C1, (VIP, C1), 63, (53, 40000), ANSWER);
        fx.run(vec![
            Case {
                desc: "client 1's datagram: the flow the errors are about",
                ingress: Side::A,
                input: to_vip(C1, 40000, mac_a, 64, QUERY),
                verdict: XDP_REDIRECT,
                output: Some(sent.clone()),
                events: &[event::FWD_REDIRECT],
            },
            Case {
                desc: "o1's answer",
                ingress: Side::B,
                input: answer,
                verdict: XDP_REDIRECT,
                output: Some(answered.clone()),
                events: &[event::REPLY_NAT, event::FWD_REDIRECT],
            },
            Case {
                desc: "o1: port unreachable (3/3) quoting the whole datagram we sent it: to client 1 from the VIP, quoting what client 1 sent (UDP checksum too)",
                ingress: Side::B,
                input: icmp_frame(
                    MAC_O1,
                    mac_b,
                    O1,
                    SNAT,
                    64,
                    3,
                    3,
                    [0; 4],
                    &ip_of(&sent),
                ),
                verdict: XDP_REDIRECT,
                output: Some(icmp_frame(
                    mac_a,
                    MAC_C1,
                    VIP,
                    C1,
                    63,
                    3,
                    3,
                    [0; 4],
                    &ip_of(&to_vip(C1, 40000, mac_a, 63, QUERY)),
                )),
                events: &[event::ICMP_FROM_ORIGIN, event::FWD_REDIRECT],
            },
            Case {
                desc: "a router on the origin side: fragmentation needed (3/4, MTU 1400), 8 bytes of UDP quoted",
                ingress: Side::B,
                input: icmp_frame(
                    MAC_RO,
                    mac_b,
                    R_ORIGIN,
                    SNAT,
                    64,
                    3,
                    4,
                    [0, 0, 0x05, 0x78],
                    &ip_of(&sent)[..28],
                ),
                verdict: XDP_REDIRECT,
                output: Some(icmp_frame(
                    mac_a,
                    MAC_C1,
                    VIP,
                    C1,
                    63,
                    3,
                    4,
                    [0, 0, 0x05, 0x78],
                    &ip_of(&to_vip(C1, 40000, mac_a, 63, QUERY))[..28],
                )),
                events: &[event::ICMP_FROM_ORIGIN, event::FWD_REDIRECT],
            },
            Case {
                desc: "client side: port unreachable (3/3) about the answer we sent: to o1 from the SNAT address, quoting what o1 sent",
                ingress: Side::A,
                input: icmp_frame(
                    MAC_RC,
                    mac_a,
                    R_CLIENT,
                    VIP,
                    64,
                    3,
                    3,
                    [0; 4],
                    &ip_of(&answered),
                ),
                verdict: XDP_REDIRECT,
                output: Some(icmp_frame(
                    mac_b,
                    MAC_O1,
                    SNAT,
                    O1,
                    63,
                    3,
                    3,
                    [0; 4],
                    &ip_of(&udp_frame_ttl(
                        MAC_O1,
                        mac_b,
                        (O1, SNAT),
                        63,
                        (8080, p1),
                        ANSWER,
                    )),
                )),
                events: &[event::ICMP_FROM_CLIENT, event::FWD_REDIRECT],
            },
            Case {
                desc: "port unreachable about a UDP flow we do not have: to the VIP, dropped",
                ingress: Side::A,
                input: icmp_frame(
                    MAC_RC,
                    mac_a,
                    R_CLIENT,
                    VIP,
                    64,
                    3,
                    3,
                    [0; 4],
                    &ip_of(&udp_frame_ttl(
                        mac_a,
                        MAC_C2,
                        (VIP, C2),
                        63,
                        (53, 40000),
                        ANSWER,
                    )),
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_ICMP_UNKNOWN_FLOW],
            },
        ]);
    });
}

#[test]
fn a_datagram_too_big_for_the_origin_link_is_answered_with_fragmentation_needed() {
    with_udp("", |fx| {
        let mac_a = fx.bed.mac_a;
        let big = vec![0x5a; 1400];
        // etherparse sets DF on IPv4.
        let big_in = to_vip(C1, 40000, mac_a, 64, &big);
        assert_eq!(big_in[20] & 0x40, 0x40, "DF");
        fx.bed.ns.ip(&["link", "set", &fx.bed.b, "mtu", "1280"]);
        fx.run(vec![Case {
            desc: "a new flow's first datagram (DF), too big for the origin link: fragmentation needed (MTU 1280) to the client from the VIP, quoting what it sent",
            ingress: Side::A,
            input: big_in.clone(),
            verdict: XDP_TX,
            output: Some(frag_needed(mac_a, MAC_C1, VIP, C1, 1280, &ip_of(&big_in))),
            events: &[event::ICMP_FRAG_NEEDED_SENT],
        }]);
    });
}

//! Packet fixtures: frames in, verdicts and frames out, through `BPF_PROG_TEST_RUN`, in the
//! fixture namespace of `lb_testbed::fixture` (clients on side a, origins on side b,
//! permanent neighbours so `bpf_fib_lookup` answers deterministically).
//!
//! One table, `phase_one`, walks NAT, SNAT ports, connection tracking and the edge cases in
//! order; each test replays the rows its rule needs (named ranges below) in a freshly
//! loaded program and checks every event counter. The later phases change the config
//! under live flows (a pool change, a grace period, a moved SNAT range, a lost half, a
//! timeout, SYN cookies); each of their tests replays the phases before it.

use std::ops::RangeInclusive;

use etherparse::PacketBuilder;
use lb_agent::dataplane::Maps;
use lb_common::{event, v4_mapped, FlowKey, VipKey, CT_ESTABLISHED, CT_FIN_CLIENT};
use lb_testbed::{
    fixture::{
        dataplane, first_snat_port, frag_needed, icmp_frame, ip_of, mac_of, neighbours,
        next_second, other_port, with_loaded, Case, Loaded, C1, C2, C3, C4, C5, C6, LB_A,
        LB_ONE_ARMED, LB_WWW, LOCAL_ORIGIN, O1, O2, POOL_LOCAL, POOL_WEB, R_CLIENT, SNAT, SNAT_MAX,
        SNAT_MIN, VIP, VIP2, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    },
    serial,
    tcp_flags::{ACK, FIN, PSH, RST, SYN},
    tcp_frame, tcp_segment, Flags, Side,
};

const MAC_C1: [u8; 6] = mac_of(C1);
const MAC_C2: [u8; 6] = mac_of(C2);
const MAC_C3: [u8; 6] = mac_of(C3);
const MAC_C4: [u8; 6] = mac_of(C4);
const MAC_C5: [u8; 6] = mac_of(C5);
const MAC_C6: [u8; 6] = mac_of(C6);
const MAC_O1: [u8; 6] = mac_of(O1);
const MAC_O2: [u8; 6] = mac_of(O2);
const MAC_LOCAL: [u8; 6] = mac_of(LOCAL_ORIGIN);

/// Pools `web` (o1) and `local`, VIPs `www` and `one-armed`; two SNAT ports, closed flows
/// free theirs at once.
fn config() -> String {
    format!(
        "{}{POOL_WEB}{POOL_LOCAL}{LB_WWW}{LB_ONE_ARMED}",
        dataplane((SNAT_MIN, SNAT_MAX), "snat_port_reuse_after_close = 0")
    )
}

/// Phase two: o1 has left pool `web`, o2 has joined it.
fn config2(c: &str) -> String {
    let out = c.replace(
        r#"origins = [{ name = "o1", address = "10.0.11.2", port = 8080 }]"#,
        r#"origins = [{ name = "o2", address = "10.0.11.3", port = 8080 }]"#,
    );
    assert_ne!(out, c, "phase-two edit applied");
    out
}

/// Loads the program in a fresh fixture namespace, runs `f`, checks every event counter.
fn fixture(f: impl FnOnce(&mut Loaded<'_>) + Send) {
    let _serial = serial();
    let hosts = neighbours(&[C1, C2, C3, C4, C5, C6, LOCAL_ORIGIN], &[O1, O2]);
    with_loaded("fx", &hosts, &config(), |fx| {
        f(fx);
        fx.assert_events();
    });
}

// Rows of `phase_one`, by what they set up or check (1-based, inclusive).
/// Client 1: SYN, o1's SYN-ACK, the client's ACK with a GET (client 1 holds SNAT port p1).
const OPEN_C1: RangeInclusive<usize> = 1..=3;
/// Client 2, same source port: SYN and reply on the other port, p2.
const OPEN_C2: RangeInclusive<usize> = 4..=5;
const EXHAUSTED: RangeInclusive<usize> = 6..=6;
const BAD_CLOSES: RangeInclusive<usize> = 7..=10;
/// Client 1 half-closes; client 3 still finds no port.
const HALF_CLOSE: RangeInclusive<usize> = 11..=12;
/// o1 closes client 1's flow; client 3 takes over p1; client 1's late ACK finds nothing.
const RECYCLE: RangeInclusive<usize> = 13..=16;
/// Client 3's ACK, then a SYN on its established flow.
const ESTABLISHED_SYN: RangeInclusive<usize> = 17..=18;
const NO_FLOW: RangeInclusive<usize> = 19..=22;
const ONE_ARMED: RangeInclusive<usize> = 23..=23;
const NOT_A_VIP: RangeInclusive<usize> = 24..=26;
const OTHER_PROTOCOLS: RangeInclusive<usize> = 27..=29;
const MALFORMED: RangeInclusive<usize> = 30..=34;

/// The frames of the flows below, from the bed's MACs.
#[derive(Clone, Copy)]
struct Frames {
    mac_a: [u8; 6],
    mac_b: [u8; 6],
    /// Client 1's SNAT port and the other one.
    p1: u16,
    p2: u16,
}

impl Frames {
    fn new(fx: &Loaded<'_>) -> Self {
        let p1 = first_snat_port(C1, 40000, VIP, 80);
        Self {
            mac_a: fx.bed.mac_a,
            mac_b: fx.bed.mac_b,
            p1,
            p2: other_port(p1),
        }
    }
}

/// Runs rows `ranges` of `phase_one`, in order.
fn rows(fx: &mut Loaded<'_>, ranges: &[RangeInclusive<usize>]) {
    let fr = Frames::new(fx);
    let mut all: Vec<Option<Case>> = phase_one(fr).into_iter().map(Some).collect();
    let picked = ranges
        .iter()
        .flat_map(|r| r.clone())
        .map(|i| all[i - 1].take().expect("each row once"))
        .collect();
    fx.run(picked);
}

/// The first table: NAT, SNAT ports, connection tracking, the edge.
#[expect(clippy::too_many_lines, reason = "one table")]
fn phase_one(fr: Frames) -> Vec<Case> {
    let Frames {
        mac_a,
        mac_b,
        p1,
        p2,
    } = fr;
    let lb_mac = mac_a; // clients send to the LB's client-side MAC
                        // Frames of the conntrack cases: client -> VIP, LB -> o1, o1 -> LB, LB -> client.
    let from_c = |mac: [u8; 6], src: [u8; 4], fl: u8, seq: u32, ack: u32, data: &[u8]| {
        tcp_segment(mac, lb_mac, src, VIP, 64, (40000, 80), fl, (seq, ack), data)
    };
    let to_o1 = |port: u16, fl: u8, seq: u32, ack: u32, data: &[u8]| {
        tcp_segment(
            mac_b,
            MAC_O1,
            SNAT,
            O1,
            63,
            (port, 8080),
            fl,
            (seq, ack),
            data,
        )
    };
    let from_o1 = |port: u16, fl: u8, seq: u32, ack: u32, data: &[u8]| {
        tcp_segment(
            MAC_O1,
            mac_b,
            O1,
            SNAT,
            64,
            (8080, port),
            fl,
            (seq, ack),
            data,
        )
    };
    let to_c = |mac: [u8; 6], dst: [u8; 4], fl: u8, seq: u32, ack: u32, data: &[u8]| {
        tcp_segment(mac_a, mac, VIP, dst, 63, (80, 40000), fl, (seq, ack), data)
    };
    const GET: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
    // Client ISN 1000, origin ISN 5000; GET is 18 bytes, so the client's FIN is at 1019.
    vec![
        Case {
            desc: "SYN to VIP: DNAT to o1:8080, SNAT to 10.0.0.1, TTL-1, out of fb by redirect",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40000, 80, Flags::Syn, &[]),
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
            desc: "SYN-ACK from o1 to the SNAT port: reverse NAT to VIP -> client, out of fa",
            ingress: Side::B,
            input: from_o1(p1, SYN | ACK, 5000, 1001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_c(MAC_C1, C1, SYN | ACK, 5000, 1001, &[])),
            events: &[event::REPLY_NAT, event::FWD_REDIRECT],
        },
        Case {
            desc: "the client's ACK with data: flow-table hit, same rewrite, establishes the flow",
            ingress: Side::A,
            input: from_c(MAC_C1, C1, ACK | PSH, 1001, 5001, GET),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, ACK | PSH, 1001, 5001, GET)),
            events: &[event::FLOW_HIT, event::FWD_REDIRECT],
        },
        Case {
            desc: "second client, same source port, same origin: gets the other SNAT port",
            ingress: Side::A,
            input: tcp_frame(MAC_C2, lb_mac, C2, VIP, 64, 40000, 80, Flags::Syn, &[]),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(
                mac_b,
                MAC_O1,
                SNAT,
                O1,
                63,
                p2,
                8080,
                Flags::Syn,
                &[],
            )),
            events: &[event::FWD_REDIRECT],
        },
        Case {
            desc: "reply to the second client's SNAT port reaches the second client",
            ingress: Side::B,
            input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, p2, Flags::SynAck, &[]),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(
                mac_a,
                MAC_C2,
                VIP,
                C2,
                63,
                80,
                40000,
                Flags::SynAck,
                &[],
            )),
            events: &[event::REPLY_NAT, event::FWD_REDIRECT],
        },
        Case {
            desc: "third client while both SNAT ports are held by open flows: dropped",
            ingress: Side::A,
            input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Syn, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_SNAT_EXHAUSTED],
        },
        Case {
            desc: "RST from the client far outside its sequence window: dropped, flow unchanged",
            ingress: Side::A,
            input: from_c(MAC_C1, C1, RST | ACK, 1019 + 10_000_000, 5001, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_RST_INVALID],
        },
        Case {
            desc: "RST in the client's window but arriving from the origin side: dropped",
            ingress: Side::B,
            input: from_c(MAC_C1, C1, RST | ACK, 1019, 5001, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_RST_INVALID],
        },
        Case {
            desc: "RST from the origin's address outside its window: dropped",
            ingress: Side::B,
            input: from_o1(p1, RST | ACK, 5001 + 3_000_000, 1019, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_RST_INVALID],
        },
        Case {
            desc: "FIN from the origin's address outside its window: dropped",
            ingress: Side::B,
            input: from_o1(p1, FIN | ACK, 5001 + 3_000_000, 1019, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_FIN_INVALID],
        },
        Case {
            desc: "FIN from the first client: forwarded; the flow is half-closed, not closed",
            ingress: Side::A,
            input: from_c(MAC_C1, C1, FIN | ACK, 1019, 5001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, FIN | ACK, 1019, 5001, &[])),
            events: &[event::FLOW_HIT, event::FWD_REDIRECT],
        },
        Case {
            desc: "third client again: a half-closed flow keeps its port, still exhausted",
            ingress: Side::A,
            input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Syn, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_SNAT_EXHAUSTED],
        },
        Case {
            desc: "the origin's answer and FIN after the client's half-close: reaches the client, closes the flow",
            ingress: Side::B,
            input: from_o1(p1, FIN | ACK | PSH, 5001, 1020, b"hello"),
            verdict: XDP_REDIRECT,
            output: Some(to_c(MAC_C1, C1, FIN | ACK | PSH, 5001, 1020, b"hello")),
            events: &[event::REPLY_NAT, event::FWD_REDIRECT],
        },
        Case {
            desc: "third client again: takes over the closed flow's SNAT port",
            ingress: Side::A,
            input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Syn, &[]),
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
            events: &[event::SNAT_RECYCLED, event::FWD_REDIRECT],
        },
        Case {
            desc: "reply on the recycled port goes to the third client, not the first",
            ingress: Side::B,
            input: from_o1(p1, SYN | ACK, 5000, 1001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_c(MAC_C3, C3, SYN | ACK, 5000, 1001, &[])),
            events: &[event::REPLY_NAT, event::FWD_REDIRECT],
        },
        Case {
            desc: "the first client's last ACK after its flow is gone: dropped, nothing created",
            ingress: Side::A,
            input: from_c(MAC_C1, C1, ACK, 1020, 5007, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_NO_FLOW],
        },
        Case {
            desc: "the third client's ACK establishes its flow",
            ingress: Side::A,
            input: from_c(MAC_C3, C3, ACK, 1001, 5001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, ACK, 1001, 5001, &[])),
            events: &[event::FLOW_HIT, event::FWD_REDIRECT],
        },
        Case {
            desc: "a SYN on the third client's established flow: to its origin (challenge ACK), flow kept",
            ingress: Side::A,
            input: from_c(MAC_C3, C3, SYN, 777_000, 0, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, SYN, 777_000, 0, &[])),
            events: &[event::SYN_ON_ESTABLISHED, event::FWD_REDIRECT],
        },
        Case {
            desc: "a segment without flags: dropped",
            ingress: Side::A,
            input: from_c(MAC_C4, C4, 0, 1, 0, b"x"),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_BAD_FLAGS],
        },
        Case {
            desc: "SYN with FIN: dropped",
            ingress: Side::A,
            input: from_c(MAC_C4, C4, SYN | FIN, 1, 0, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_BAD_FLAGS],
        },
        Case {
            desc: "an ACK of no known flow: dropped, no state (no SNAT port) is taken",
            ingress: Side::A,
            input: from_c(MAC_C4, C4, ACK, 1, 1, b"x"),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_NO_FLOW],
        },
        Case {
            desc: "a FIN of no known flow: dropped",
            ingress: Side::A,
            input: from_c(MAC_C4, C4, FIN | ACK, 1, 1, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_NO_FLOW],
        },
        Case {
            desc: "VIP whose origin sits behind the ingress interface: XDP_TX",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP2, 64, 40001, 80, Flags::Syn, &[]),
            verdict: XDP_TX,
            output: Some(tcp_frame(
                mac_a,
                MAC_LOCAL,
                SNAT,
                LOCAL_ORIGIN,
                63,
                first_snat_port(C1, 40001, VIP2, 80),
                8080,
                Flags::Syn,
                &[],
            )),
            events: &[event::FWD_TX],
        },
        Case {
            desc: "TCP to an address that is no VIP: passed untouched",
            ingress: Side::A,
            input: tcp_frame(
                MAC_C1,
                lb_mac,
                C1,
                LB_A,
                64,
                40002,
                22,
                Flags::Syn,
                &[],
            ),
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_VIP],
        },
        Case {
            desc: "TCP to the VIP address on a port that is no VIP: passed untouched",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40003, 443, Flags::Syn, &[]),
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_VIP],
        },
        Case {
            desc: "reply-shaped packet to a SNAT port no flow holds: passed (the stack resets it)",
            ingress: Side::B,
            input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, 61500, Flags::Ack, &[]),
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_VIP],
        },
        Case {
            desc: "UDP to the VIP: dropped, a VIP address serves TCP only",
            ingress: Side::A,
            input: {
                let b = PacketBuilder::ethernet2(MAC_C1, lb_mac)
                    .ipv4(C1, VIP, 64)
                    .udp(5000, 80);
                let mut v = Vec::new();
                b.write(&mut v, b"x").expect("udp");
                v
            },
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_VIP_OTHER_PROTO],
        },
        Case {
            desc: "ARP request: passed untouched",
            ingress: Side::A,
            input: {
                let mut v = vec![0xff; 6];
                v.extend_from_slice(&MAC_C1);
                v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                v.extend_from_slice(&MAC_C1);
                v.extend_from_slice(&C1);
                v.extend_from_slice(&[0; 6]);
                v.extend_from_slice(&LB_A);
                v
            },
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_IPV4],
        },
        Case {
            desc: "IPv6 TCP to an address that is no VIP: passed untouched (lb_v6: the host's)",
            ingress: Side::A,
            input: {
                let b = PacketBuilder::ethernet2(MAC_C1, lb_mac)
                    .ipv6(
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
                        64,
                    )
                    .tcp(40000, 80, 1, 1000)
                    .syn();
                let mut v = Vec::new();
                b.write(&mut v, &[]).expect("v6");
                v
            },
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_VIP],
        },
        Case {
            desc: "frame cut inside the IPv4 header: passed, the stack drops it",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40004, 80, Flags::Syn, &[])[..14 + 12]
                .to_vec(),
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_MALFORMED],
        },
        Case {
            desc: "to the VIP with the TCP header cut short: dropped",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40005, 80, Flags::Syn, &[])
                [..14 + 20 + 10]
                .to_vec(),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_MALFORMED_TCP],
        },
        Case {
            desc: "to the VIP with IPv4 options: dropped",
            ingress: Side::A,
            input: {
                let mut v = tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40006, 80, Flags::Syn, &[]);
                v[14] = 0x46; // IHL 6: four bytes of options
                v.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
                v
            },
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_IP_OPTIONS],
        },
        Case {
            desc: "to the VIP, a fragment (MF set): dropped",
            ingress: Side::A,
            input: {
                let mut v = tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40007, 80, Flags::Syn, &[]);
                v[14 + 6] |= 0x20;
                v
            },
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_FRAGMENT],
        },
        Case {
            desc: "to the VIP with TTL 1: dropped instead of forwarded with TTL 0",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 1, 40008, 80, Flags::Syn, &[]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_TTL],
        },
    ]
}

#[test]
fn a_syn_to_a_vip_is_nated_to_its_origin_and_the_flow_follows() {
    fixture(|fx| rows(fx, &[OPEN_C1]));
}

#[test]
fn a_second_client_on_the_same_source_port_gets_the_other_snat_port() {
    fixture(|fx| rows(fx, &[OPEN_C1, OPEN_C2]));
}

#[test]
fn a_new_flow_is_dropped_while_open_flows_hold_every_snat_port() {
    fixture(|fx| rows(fx, &[OPEN_C1, OPEN_C2, EXHAUSTED]));
}

#[test]
fn closes_outside_the_window_or_from_the_wrong_side_are_dropped() {
    fixture(|fx| rows(fx, &[OPEN_C1, BAD_CLOSES]));
}

#[test]
fn a_half_closed_flow_keeps_its_snat_port() {
    fixture(|fx| rows(fx, &[OPEN_C1, OPEN_C2, HALF_CLOSE]));
}

#[test]
fn a_closed_flows_port_is_taken_over_and_replies_follow_the_new_flow() {
    fixture(|fx| {
        rows(fx, &[OPEN_C1, OPEN_C2, HALF_CLOSE, RECYCLE]);
        assert!(
            fx.maps()
                .flows
                .get(&FlowKey::tcp_v4(C1, 40000, VIP, 80), 0)
                .is_err(),
            "client 1's flow is forgotten once its port is recycled"
        );
    });
}

#[test]
fn a_syn_on_an_established_flow_goes_to_its_origin() {
    fixture(|fx| {
        rows(
            fx,
            &[OPEN_C1, OPEN_C2, HALF_CLOSE, RECYCLE, ESTABLISHED_SYN],
        )
    });
}

#[test]
fn impossible_flags_and_segments_without_a_flow_are_dropped_and_make_no_state() {
    fixture(|fx| {
        rows(fx, &[NO_FLOW]);
        assert!(
            fx.maps()
                .flows
                .get(&FlowKey::tcp_v4(C4, 40000, VIP, 80), 0)
                .is_err(),
            "client 4's forged segments: no flow should exist"
        );
    });
}

#[test]
fn a_vip_whose_origin_is_behind_the_ingress_is_answered_with_xdp_tx() {
    fixture(|fx| rows(fx, &[ONE_ARMED]));
}

#[test]
fn tcp_not_for_a_vip_passes_untouched() {
    fixture(|fx| rows(fx, &[NOT_A_VIP]));
}

#[test]
fn other_protocols_to_a_vip_are_dropped_and_non_ipv4_passes() {
    fixture(|fx| rows(fx, &[OTHER_PROTOCOLS]));
}

#[test]
fn malformed_fragmented_or_expiring_frames_to_a_vip_are_dropped() {
    fixture(|fx| rows(fx, &[MALFORMED]));
}

/// What the later phases need from the ones before.
struct Later {
    fr: Frames,
    /// o1's id (o1 leaves the config in phase two).
    o1: u32,
    text: String,
    /// Client 2's port on o2, and client 4's (then 5's).
    p_c2: u16,
    p_c4: u16,
}

/// Runs all of `phase_one`, then phases 2..=`last` (each applies its config first).
#[expect(clippy::too_many_lines, reason = "the phases' tables")]
fn through(fx: &mut Loaded<'_>, last: u32) -> Later {
    let fr = Frames::new(fx);
    fx.run(phase_one(fr));
    let Frames {
        mac_a,
        mac_b,
        p1,
        p2,
    } = fr;
    let lb_mac = mac_a;
    let mut later = Later {
        fr,
        o1: fx.origin_id("web", "o1"),
        text: config(),
        p_c2: first_snat_port(C2, 40000, VIP, 80),
        p_c4: other_port(first_snat_port(C2, 40000, VIP, 80)),
    };
    let (p_c2, p_c4) = (later.p_c2, later.p_c4);
    if last < 2 {
        return later;
    }
    // Phase two: the pool changes under established flows.
    later.text = config2(&later.text);
    fx.apply(&later.text);
    let phase2 = vec![
            Case {
                desc: "SYN reusing client 2's tuple after o1 left the ring: rehashed to o2, old SNAT port released",
                ingress: Side::A,
                input: tcp_frame(MAC_C2, lb_mac, C2, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c2, 8080, Flags::Syn, &[])),
                events: &[event::SYN_REHASHED, event::FWD_REDIRECT],
            },
            Case {
                desc: "a retransmitted SYN keeps the new flow (the ring still names o2)",
                ingress: Side::A,
                input: tcp_frame(MAC_C2, lb_mac, C2, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c2, 8080, Flags::Syn, &[])),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
            Case {
                desc: "data on client 3's established flow still reaches o1, which left the config",
                ingress: Side::A,
                input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Ack, b"more"),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O1, SNAT, O1, 63, p1, 8080, Flags::Ack, b"more")),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
        ];
    fx.run(phase2);
    let released = FlowKey::tcp_v4(O1, 8080, SNAT, p2);
    assert!(
        fx.maps().rev_flows.get(&released, 0).is_err(),
        "client 2's old SNAT port on o1 was released"
    );
    if last < 3 {
        return later;
    }
    // Phase three: a long grace period for closed flows; o2's two SNAT ports fill up.
    let text3 = later.text.replace(
        "snat_port_reuse_after_close = 0",
        "snat_port_reuse_after_close = 3600",
    );
    assert_ne!(text3, later.text, "phase-three edit applied");
    later.text = text3;
    fx.apply(&later.text);
    let phase3 = vec![
            Case {
                desc: "client 4 takes o2's free SNAT port",
                ingress: Side::A,
                input: tcp_frame(MAC_C4, lb_mac, C4, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Syn, &[])),
                events: &[event::FWD_REDIRECT],
            },
            Case {
                desc: "o2 answers client 4",
                ingress: Side::B,
                input: tcp_frame(MAC_O2, mac_b, O2, SNAT, 64, 8080, p_c4, Flags::SynAck, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_a, MAC_C4, VIP, C4, 63, 80, 40000, Flags::SynAck, &[])),
                events: &[event::REPLY_NAT, event::FWD_REDIRECT],
            },
            Case {
                desc: "client 4 closes (FIN)",
                ingress: Side::A,
                input: tcp_frame(MAC_C4, lb_mac, C4, VIP, 64, 40000, 80, Flags::Fin, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Fin, &[])),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
            Case {
                desc: "o2 closes too: the flow is closed, within the grace period",
                ingress: Side::B,
                input: tcp_frame(MAC_O2, mac_b, O2, SNAT, 64, 8080, p_c4, Flags::Fin, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_a, MAC_C4, VIP, C4, 63, 80, 40000, Flags::Fin, &[])),
                events: &[event::REPLY_NAT, event::FWD_REDIRECT],
            },
            Case {
                desc: "client 5 with every port held: takes the closed flow's port early, not the open one",
                ingress: Side::A,
                input: tcp_frame(MAC_C5, lb_mac, C5, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Syn, &[])),
                events: &[event::SNAT_REUSED_EARLY, event::FWD_REDIRECT],
            },
            Case {
                desc: "client 6 with both ports held by open flows: dropped, open flows are never taken",
                ingress: Side::A,
                input: tcp_frame(MAC_C6, lb_mac, C6, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_SNAT_EXHAUSTED],
            },
        ];
    fx.run(phase3);
    if last < 4 {
        return later;
    }
    // Phase four: a reload narrows snat_ports away from the ports flows already hold;
    // their replies must still come back (the reverse table decides, not the range).
    let text4 = later
        .text
        .replace("snat_ports = [61000, 61001]", "snat_ports = [62000, 62001]");
    assert_ne!(text4, later.text, "phase-four edit applied");
    later.text = text4;
    fx.apply(&later.text);
    let phase4 = vec![Case {
        desc: "after the SNAT range moved, a reply on an old port still reaches its client",
        ingress: Side::B,
        input: tcp_frame(MAC_O2, mac_b, O2, SNAT, 64, 8080, p_c4, Flags::SynAck, &[]),
        verdict: XDP_REDIRECT,
        output: Some(tcp_frame(
            mac_a,
            MAC_C5,
            VIP,
            C5,
            63,
            80,
            40000,
            Flags::SynAck,
            &[],
        )),
        events: &[event::REPLY_NAT, event::FWD_REDIRECT],
    }];
    fx.run(phase4);
    if last < 5 {
        return later;
    }
    // Phase five: half a pair. Client 3's flow-table half is lost; o1's next reply
    // restores it from the reverse half and still reaches client 3. A reply checks its pair
    // once per second of the flow's life (the first reply in a second it was not yet seen
    // in), so the reply comes in a new second.
    let c3 = FlowKey::tcp_v4(C3, 40000, VIP, 80);
    fx.rec
        .maps
        .flows
        .remove(&c3)
        .expect("remove client 3's half");
    next_second();
    fx.run(vec![Case {
        desc: "a reply whose flow-table half is missing: restored, reaches client 3",
        ingress: Side::B,
        input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, p1, Flags::Ack, b"data"),
        verdict: XDP_REDIRECT,
        output: Some(tcp_frame(
            mac_a,
            MAC_C3,
            VIP,
            C3,
            63,
            80,
            40000,
            Flags::Ack,
            b"data",
        )),
        events: &[event::REPLY_NAT, event::PAIR_RESTORED, event::FWD_REDIRECT],
    }]);
    let f = fx
        .maps()
        .flows
        .get(&c3, 0)
        .expect("client 3's half restored");
    assert_eq!(
        (f.snat_port, f.origin_port),
        (p1.to_be(), 8080u16.to_be()),
        "restored half: {f:?}"
    );
    if last < 6 {
        return later;
    }
    // Phase six: timeouts. With a 1 s SYN timeout, client 5's unfinished handshake
    // (SYN and SYN-ACK, no ACK) expires: its next segment is dropped and the pair removed.
    let text6 = later.text.replace(
        "flow_table_size = 4096",
        "flow_table_size = 4096\ntcp_timeouts = { syn = 1, half_closed = 1 }",
    );
    assert_ne!(text6, later.text, "phase-six edit applied");
    later.text = text6;
    fx.apply(&later.text);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    fx.run(vec![Case {
        desc: "an ACK on a handshake idle past the SYN timeout: dropped, pair removed",
        ingress: Side::A,
        input: tcp_frame(MAC_C5, lb_mac, C5, VIP, 64, 40000, 80, Flags::Ack, &[]),
        verdict: XDP_DROP,
        output: None,
        events: &[event::DROP_EXPIRED],
    }]);
    assert!(
        fx.maps()
            .flows
            .get(&FlowKey::tcp_v4(C5, 40000, VIP, 80), 0)
            .is_err()
            && fx
                .maps()
                .rev_flows
                .get(&FlowKey::tcp_v4(O2, 8080, SNAT, p_c4), 0)
                .is_err(),
        "client 5's expired pair is removed"
    );
    later
}

#[test]
fn a_pool_change_rehashes_a_reused_tuple_and_keeps_established_flows() {
    fixture(|fx| {
        through(fx, 2);
    });
}

#[test]
fn a_closed_flow_in_its_grace_period_gives_its_port_only_when_every_port_is_held() {
    fixture(|fx| {
        through(fx, 3);
    });
}

#[test]
fn replies_on_ports_outside_a_narrowed_snat_range_still_return() {
    fixture(|fx| {
        through(fx, 4);
    });
}

#[test]
fn origin_counters_count_new_flows_forwarded_packets_and_replies() {
    fixture(|fx| {
        let o1 = through(fx, 4).o1;
        let c = Maps::counters(&fx.rec.maps.origin_stats, o1).expect("origin counters");
        // New flows on o1: clients 1, 2 and 3 (on the recycled port); the TTL-1 packet made none.
        assert_eq!(c.new_flows, 3, "o1 new flows: {c:?}");
        // C1: SYN, ACK+GET, FIN; C2: SYN; C3: SYN, ACK, SYN on established, data in phase 2.
        assert_eq!(c.packets, 8, "o1 forwarded packets: {c:?}");
        // SYN-ACKs to C1, C2 and C3, and o1's FIN to C1.
        assert_eq!(c.reply_packets, 4, "o1 reply packets: {c:?}");
    });
}

#[test]
fn a_lost_flow_half_is_restored_from_its_reverse_half() {
    fixture(|fx| {
        through(fx, 5);
    });
}

#[test]
fn a_handshake_idle_past_the_syn_timeout_expires_and_its_pair_is_removed() {
    fixture(|fx| {
        through(fx, 6);
    });
}

#[test]
fn syn_cookies_answer_without_state_and_translate_sequence_numbers() {
    fixture(|fx| {
        let later = through(fx, 6);
        let Frames { mac_a, mac_b, .. } = later.fr;
        let lb_mac = mac_a;
        let from_c = |mac: [u8; 6], src: [u8; 4], fl: u8, seq: u32, ack: u32, data: &[u8]| {
            tcp_segment(mac, lb_mac, src, VIP, 64, (40000, 80), fl, (seq, ack), data)
        };
        fx.assert_events();
        // Phase seven: SYN cookies for every SYN without a flow (syn_cookies = "always").
        let text7 = later.text.replace(
            "flow_table_size = 4096",
            "flow_table_size = 4096\nsyn_cookies = \"always\"",
        );
        assert_ne!(text7, later.text, "phase-seven edit applied");
        fx.apply(&text7);
        let before7 = fx.events();
        let tcp_of = |frame: &[u8]| -> etherparse::TcpHeader {
            lb_testbed::fixture::assert_checksums("cookie case", frame);
            let p = etherparse::SlicedPacket::from_ethernet(frame).expect("parses");
            match p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => t.to_header(),
                other => panic!("not TCP: {other:?}"),
            }
        };
        // The SYN is answered in place with a cookie SYN-ACK; no flow is made.
        let syn6 = tcp_segment(
            MAC_C6,
            lb_mac,
            C6,
            VIP,
            64,
            (40000, 80),
            SYN,
            (7000, 0),
            &[],
        );
        let (v, out) = fx.run1(Side::A, &syn6);
        assert_eq!(
            v, XDP_REDIRECT,
            "cookie SYN-ACK: verdict (a redirect back out of the ingress)"
        );
        let synack = tcp_of(&out);
        assert!(
            synack.syn && synack.ack && synack.acknowledgment_number == 7001,
            "cookie SYN-ACK: {synack:?}"
        );
        assert_eq!((synack.source_port, synack.destination_port), (80, 40000));
        assert_eq!(&out[0..6], &MAC_C6, "back to the client's MAC");
        assert!(
            fx.rec
                .maps
                .flows
                .get(&FlowKey::tcp_v4(C6, 40000, VIP, 80), 0)
                .is_err(),
            "no state for a cookie SYN"
        );
        let cookie = synack.sequence_number;
        // A forged ACK with a wrong cookie: dropped.
        let (v, _) = fx.run1(
            Side::A,
            &from_c(MAC_C5, C5, ACK, 7001, cookie.wrapping_add(77), &[]),
        );
        assert_eq!(v, XDP_DROP, "ACK with a wrong cookie");
        // The client's ACK returns the cookie: a flow, and the ACK becomes the SYN to o2.
        let (v, out) = fx.run1(
            Side::A,
            &from_c(MAC_C6, C6, ACK, 7001, cookie.wrapping_add(1), &[]),
        );
        assert_eq!(v, XDP_REDIRECT, "cookie ACK becomes the SYN to the origin");
        let syn_o = tcp_of(&out);
        assert!(
            syn_o.syn && !syn_o.ack && syn_o.sequence_number == 7000,
            "SYN to the origin: {syn_o:?}"
        );
        assert_eq!(syn_o.destination_port, 8080);
        let p7 = syn_o.source_port;
        // Data from the client before o2 has answered: becomes the SYN again (the first
        // may have been lost); the client retransmits its data.
        let (v, out) = fx.run1(
            Side::A,
            &from_c(MAC_C6, C6, ACK | PSH, 7001, cookie.wrapping_add(1), b"hi"),
        );
        assert_eq!(
            v, XDP_REDIRECT,
            "client data while the origin has not answered"
        );
        let again = tcp_of(&out);
        assert!(
            again.syn && !again.ack && again.sequence_number == 7000 && again.source_port == p7,
            "SYN sent again: {again:?}"
        );
        // o2's SYN-ACK becomes our ACK back to o2.
        let (v, out) = fx.run1(
            Side::B,
            &tcp_segment(
                MAC_O2,
                mac_b,
                O2,
                SNAT,
                64,
                (8080, p7),
                SYN | ACK,
                (9000, 7001),
                &[],
            ),
        );
        assert_eq!(
            v, XDP_REDIRECT,
            "origin SYN-ACK: answered with our ACK (back out of the ingress)"
        );
        assert_eq!(
            out,
            tcp_segment(
                mac_b,
                MAC_O2,
                SNAT,
                O2,
                64,
                (p7, 8080),
                ACK,
                (7001, 9001),
                &[]
            ),
            "ACK to the origin"
        );
        // From now on sequence numbers are translated between the cookie and o2's ISN.
        let (v, out) = fx.run1(
            Side::A,
            &from_c(MAC_C6, C6, ACK | PSH, 7001, cookie.wrapping_add(1), b"hi"),
        );
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            tcp_segment(
                mac_b,
                MAC_O2,
                SNAT,
                O2,
                63,
                (p7, 8080),
                ACK | PSH,
                (7001, 9001),
                b"hi"
            ),
            "client data, ack translated"
        );
        let (v, out) = fx.run1(
            Side::B,
            &tcp_segment(
                MAC_O2,
                mac_b,
                O2,
                SNAT,
                64,
                (8080, p7),
                ACK | PSH,
                (9001, 7003),
                b"yo",
            ),
        );
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            tcp_segment(
                mac_a,
                MAC_C6,
                VIP,
                C6,
                63,
                (80, 40000),
                ACK | PSH,
                (cookie.wrapping_add(1), 7003),
                b"yo"
            ),
            "origin data, seq translated"
        );
        // ICMP about the cookie flow quotes sequence numbers in the numbering of whoever it
        // goes to. A client-side router's "fragmentation needed" about the data just sent
        // to C6 (cookie numbering) reaches o2 quoting o2's own sequence number, 9001.
        let to_c6 = out;
        let quote_for_o2 = |ttl: u8| {
            ip_of(&tcp_segment(
                MAC_O2,
                mac_b,
                O2,
                SNAT,
                ttl,
                (8080, p7),
                ACK | PSH,
                (9001, 7003),
                b"yo",
            ))
        };
        let mtu1400 = [0, 0, 0x05, 0x78];
        let (v, out) = fx.run1(
            Side::A,
            &icmp_frame(
                mac_of(R_CLIENT),
                mac_a,
                R_CLIENT,
                VIP,
                64,
                3,
                4,
                mtu1400,
                &ip_of(&to_c6),
            ),
        );
        assert_eq!(v, XDP_REDIRECT, "ICMP error about the cookie flow: to o2");
        assert_eq!(
            out,
            icmp_frame(
                mac_b,
                MAC_O2,
                SNAT,
                O2,
                63,
                3,
                4,
                mtu1400,
                &quote_for_o2(63)
            ),
            "quoted sequence number in o2's numbering, checksums updated"
        );
        // o2's reply too big for a narrowed client link: answered to o2, quoting what o2
        // sent (its own sequence number, not the client's).
        fx.bed.ns.ip(&["link", "set", &fx.bed.a, "mtu", "1280"]);
        fx.rec.next_hops_changed().expect("generation bump");
        let big = tcp_segment(
            MAC_O2,
            mac_b,
            O2,
            SNAT,
            64,
            (8080, p7),
            ACK,
            (9003, 7003),
            &[0x5a; 1400],
        );
        let (v, out) = fx.run1(Side::B, &big);
        fx.bed.ns.ip(&["link", "set", &fx.bed.a, "mtu", "1500"]);
        assert_eq!(v, XDP_TX, "too big for the client link: answered");
        assert_eq!(
            out,
            frag_needed(mac_b, MAC_O2, SNAT, O2, 1280, &ip_of(&big)),
            "fragmentation needed quoting o2's own packet"
        );
        let after7 = fx.rec.maps.event_totals().expect("events");
        for (e, n) in [
            (event::SYN_COOKIE_SENT, 1),
            (event::DROP_COOKIE_INVALID, 1),
            (event::SYN_COOKIE_OK, 1),
            (event::COOKIE_SYN_RESENT, 1),
            (event::COOKIE_ORIGIN_ACK, 1),
        ] {
            assert_eq!(
                after7[e as usize] - before7[e as usize],
                n,
                "{}",
                event::NAMES[e as usize]
            );
        }

        // The cookie steps ran outside the table: count what they counted.
        let after = fx.events();
        let moved: Vec<u32> = (0..event::NAMES.len())
            .flat_map(|i| {
                let n = after[i] - before7[i];
                std::iter::repeat_n(u32::try_from(i).expect("small"), n as usize)
            })
            .collect();
        fx.expect_events(&moved);
    });
}

/// Established flows find their VIP by id (`VIP_IDS`), not by a second hash lookup: a flow
/// whose VIP is removed stops being forwarded, also when its id goes to another VIP, and
/// flows into that other VIP are forwarded.
#[test]
fn a_flow_of_a_removed_vip_is_not_forwarded_even_when_its_vip_id_is_reused() {
    fixture(|fx| {
        rows(fx, &[OPEN_C1]);
        let Frames {
            mac_a, mac_b, p1, ..
        } = Frames::new(fx);
        let key = |a: [u8; 4]| VipKey {
            addr: v4_mapped(a),
            port: 80u16.to_be(),
            proto: 6,
            _pad: 0,
        };
        let www = key(VIP);
        let www_id = fx.rec.assignment.vips[&www];
        let by_id = fx.maps().vip_ids.get(&www_id, 0).expect("VIP_IDS entry");
        assert_eq!(by_id.key, www, "VIP_IDS names www under its id");
        let data = |d: &[u8]| tcp_frame(MAC_C1, mac_a, C1, VIP, 64, 40000, 80, Flags::Ack, d);
        // www leaves; a new VIP on another address takes its id.
        let other = LB_WWW
            .replace("name = \"www\"", "name = \"other\"")
            .replace("10.0.0.10", "10.0.0.12");
        let text = config().replace(LB_WWW, &other);
        fx.apply(&text);
        let other_key = key([10, 0, 0, 12]);
        assert_eq!(
            fx.rec.assignment.vips[&other_key], www_id,
            "the new VIP took www's id (the test's premise)"
        );
        let (verdict, _) = fx.run1(Side::A, &data(b"late"));
        assert_ne!(
            verdict, XDP_REDIRECT,
            "client 1's flow into the removed www is not forwarded under the reused id"
        );
        // Whatever the edge did with it (FIB says), the flow was not hit.
        let ev = fx.events();
        let verdict_event = [event::PASS_NOT_VIP, event::DROP_TRANSIT]
            .into_iter()
            .find(|e| ev[*e as usize] > 0)
            .expect("counted as not a VIP");
        fx.expect_events(&[verdict_event]);
        // The other VIP forwards its own flows (on its first SNAT port unless client 1's
        // flow holds it: two ports in all).
        let first = first_snat_port(C2, 40001, [10, 0, 0, 12], 80);
        let port = if first == p1 { other_port(p1) } else { first };
        fx.run(vec![Case {
            desc: "a SYN to the VIP that took www's id goes to pool web",
            ingress: Side::A,
            input: tcp_frame(
                MAC_C2,
                mac_a,
                C2,
                [10, 0, 0, 12],
                64,
                40001,
                80,
                Flags::Syn,
                &[],
            ),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(
                mac_b,
                MAC_O1,
                SNAT,
                O1,
                63,
                port,
                8080,
                Flags::Syn,
                &[],
            )),
            events: &[event::FWD_REDIRECT],
        }]);
        // www back (a new id): client 1's old flow is found again and forwarded.
        fx.apply(&config());
        fx.run(vec![Case {
            desc: "www re-added: client 1's flow is forwarded again through the VIP lookup",
            ingress: Side::A,
            input: data(b"again"),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(
                mac_b,
                MAC_O1,
                SNAT,
                O1,
                63,
                p1,
                8080,
                Flags::Ack,
                b"again",
            )),
            events: &[event::FLOW_HIT, event::FWD_REDIRECT],
        }]);
    });
}

/// `snat_address` as a prefix: new flows spread over its addresses by their hash, and the
/// replies to each address come back to the client (the data path knows every address of
/// the prefix as a SNAT address).
#[test]
fn new_flows_spread_over_a_snat_prefix_and_replies_to_each_address_return() {
    fixture(|fx| {
        let text = config()
            .replace(
                "snat_address = \"10.0.0.1\"",
                "snat_address = \"10.0.0.4/30\"",
            )
            .replace("snat_ports = [61000, 61001]", "snat_ports = [61000, 61999]");
        assert_ne!(text, config(), "fixture edit applied");
        fx.apply(&text);
        let Frames { mac_a, mac_b, .. } = Frames::new(fx);
        let mut used = std::collections::BTreeSet::new();
        for port in 41000..41032u16 {
            let syn = tcp_frame(MAC_C1, mac_a, C1, VIP, 64, port, 80, Flags::Syn, &[]);
            let (v, out) = fx.run1(Side::A, &syn);
            assert_eq!(v, XDP_REDIRECT, "SYN from port {port}");
            fx.expect_events(&[event::FWD_REDIRECT]);
            let src = [out[26], out[27], out[28], out[29]];
            let sport = u16::from_be_bytes([out[34], out[35]]);
            assert!(
                src[..3] == [10, 0, 0] && (4..=7).contains(&src[3]),
                "SNAT source {src:?} is in 10.0.0.4/30"
            );
            assert_eq!(&out[30..34], &O1, "to o1");
            used.insert(src);
            let reply = tcp_segment(
                MAC_O1,
                mac_b,
                O1,
                src,
                64,
                (8080, sport),
                SYN | ACK,
                (5000, 1001),
                &[],
            );
            let (v, out) = fx.run1(Side::B, &reply);
            assert_eq!(v, XDP_REDIRECT, "o1's SYN-ACK to {src:?}:{sport}");
            fx.expect_events(&[event::REPLY_NAT, event::FWD_REDIRECT]);
            assert_eq!(&out[26..30], &VIP, "from the VIP");
            assert_eq!(&out[30..34], &C1, "to the client");
            assert_eq!(u16::from_be_bytes([out[36], out[37]]), port, "to its port");
        }
        assert!(
            used.len() >= 3,
            "32 flows spread over the prefix's 4 addresses: {used:?}"
        );
    });
}

/// The conntrack fast path (`lb_common::Flow::synced`): within the second of its last check
/// against `REV_FLOWS`, an established flow's segments without SYN, FIN or RST are tracked in
/// the flow-table half alone, and what they move reaches the tracking entry. The client's
/// edge moves 70,000 bytes, past the 64,240-byte window it had at the check, then its FIN
/// is accepted (the slow path takes the edge over first; without that it would be judged
/// outside the window and dropped); a wider advertised window takes the slow path and is
/// recorded; a forged RST past the window is still dropped.
#[test]
fn established_segments_skip_the_reverse_table_and_the_windows_they_move_still_hold() {
    fixture(|fx| {
        rows(fx, &[OPEN_C1]);
        let fr = Frames::new(fx);
        let from_c = |fl: u8, seq: u32, data: &[u8]| {
            tcp_segment(
                MAC_C1,
                fr.mac_a,
                C1,
                VIP,
                64,
                (40000, 80),
                fl,
                (seq, 5001),
                data,
            )
        };
        let to_o1 = |fl: u8, seq: u32, data: &[u8]| {
            tcp_segment(
                fr.mac_b,
                MAC_O1,
                SNAT,
                O1,
                63,
                (fr.p1, 8080),
                fl,
                (seq, 5001),
                data,
            )
        };
        let rkey = FlowKey::tcp_v4(O1, 8080, SNAT, fr.p1);
        let rev = |fx: &Loaded<'_>| fx.maps().rev_flows.get(&rkey, 0).expect("reverse half");
        assert!(
            rev(fx).flags & CT_ESTABLISHED != 0,
            "the flow is established"
        );
        // After the GET (18 bytes from ISN 1000) the client's edge is 1019.
        let chunk = [b'a'; 1000];
        let before = fx.events();
        fx.run(
            (0..70u32)
                .map(|i| Case {
                    desc: "a 1000-byte segment of the established flow: forwarded",
                    ingress: Side::A,
                    input: from_c(ACK | PSH, 1019 + i * 1000, &chunk),
                    verdict: XDP_REDIRECT,
                    output: Some(to_o1(ACK | PSH, 1019 + i * 1000, &chunk)),
                    events: &[event::FLOW_HIT, event::FWD_REDIRECT],
                })
                .collect(),
        );
        let after = fx.events();
        let d = |e: u32| after[e as usize] - before[e as usize];
        // One check per second of the flow's life: two at most, should the clock tick
        // during the 70 runs.
        assert!(
            d(event::FLOW_SYNCED) <= 2,
            "{} of 70 segments took the slow path",
            d(event::FLOW_SYNCED)
        );
        let wide = {
            let b = PacketBuilder::ethernet2(MAC_C1, fr.mac_a)
                .ipv4(C1, VIP, 64)
                .tcp(40000, 80, 71_019, 65_535)
                .ack(5001);
            let mut v = Vec::with_capacity(b.size(0));
            b.write(&mut v, &[]).expect("frame");
            v
        };
        let synced = fx.events()[event::FLOW_SYNCED as usize];
        let (verdict, _) = fx.run1(Side::A, &wide);
        assert_eq!(verdict, XDP_REDIRECT, "the segment with a wider window");
        fx.expect_events(&[event::FLOW_HIT, event::FWD_REDIRECT]);
        assert_eq!(
            fx.events()[event::FLOW_SYNCED as usize] - synced,
            1,
            "a wider window takes the slow path"
        );
        assert_eq!(rev(fx).client_win, 65_535, "the wider window is recorded");
        fx.run(vec![
            Case {
                desc: "a RST from the client 10 MB past its edge: dropped",
                ingress: Side::A,
                input: from_c(RST | ACK, 71_019 + 10_000_000, &[]),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_RST_INVALID],
            },
            Case {
                desc: "the client's FIN 70,000 bytes past the edge of the last check: accepted",
                ingress: Side::A,
                input: from_c(FIN | ACK, 71_019, &[]),
                verdict: XDP_REDIRECT,
                output: Some(to_o1(FIN | ACK, 71_019, &[])),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
        ]);
        let r = rev(fx);
        assert!(r.flags & CT_FIN_CLIENT != 0, "the FIN half-closed the flow");
        assert_eq!(
            r.client_end, 71_020,
            "the tracking entry holds the client's edge"
        );
    });
}

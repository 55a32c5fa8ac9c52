//! IPv6 packet fixtures: frames in, verdicts and frames out, through `BPF_PROG_TEST_RUN`
//! (`lb_xdp`, which tail-calls `lb_v6` and `lb_v6_udp`), in a fixture namespace whose veths
//! carry IPv6 addresses and neighbours. Expected frames are built by etherparse (or by hand
//! with checksums computed by the test bed), so byte equality proves the incremental
//! checksum updates; every output's checksums are recomputed on top.
//!
//! TCP: new flow, reply, established, extension headers removed or refused, fragments,
//! IPv4-mapped addresses, transit, SYN cookies (`bpf_tcp_raw_gen_syncookie_ipv6`) with
//! sequence translation; UDP: new flow, answer, a checksum-less datagram, idle expiry;
//! ICMPv6: neighbour discovery passed, echo answered, "packet too big" from the origin side
//! translated to the client, "unreachable" from the client side translated to the origin
//! (and dropped for no flow), "packet too big" originated for a rewritten packet too big
//! for the origin link.

use etherparse::PacketBuilder;
use lb_common::{event, FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use lb_testbed::{
    ebpf_object,
    fixture::{
        first_snat_port_of, icmp6_frame, net6, next_second, other_port, tcp_header_of,
        with_loaded_in, Case, Loaded, SNAT_MAX, SNAT_MIN, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    },
    serial, tcp6_segment, tcp_flags, FibBed, Side,
};

const VIP6: [u8; 16] = net6(0xa, 0x10);
const SNAT6: [u8; 16] = net6(5, 1);
const C1: [u8; 16] = net6(1, 2);
const C2: [u8; 16] = net6(1, 3);
const O1: [u8; 16] = net6(0x11, 2);
/// Routers on the origin and client sides, which send ICMPv6 errors.
const R_ORIGIN: [u8; 16] = net6(0x11, 0xfe);
const R_CLIENT: [u8; 16] = net6(1, 0xfe);
/// An address on the client side that is no VIP (the host's neighbour).
const OTHER: [u8; 16] = net6(1, 9);
/// The host's own address on the client side.
const LB_A: [u8; 16] = net6(1, 1);
const MAC_C1: [u8; 6] = [2, 0, 0, 1, 0, 2];
const MAC_C2: [u8; 6] = [2, 0, 0, 1, 0, 3];
const MAC_O1: [u8; 6] = [2, 0, 0, 0x11, 0, 2];
const MAC_RO: [u8; 6] = [2, 0, 0, 0x11, 0, 0xfe];
const MAC_RC: [u8; 6] = [2, 0, 0, 1, 0, 0xfe];
/// MTU of the origin side's link, for "packet too big".
const MTU_B: u16 = 1400;
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01 what is the answer";
const ANSWER: &[u8] = b"\x12\x34\x81\x80\x00\x01 forty-two";

/// Two load balancers on one IPv6 VIP: TCP port 80 and UDP port 53, both to o1.
fn config() -> String {
    format!(
        r#"[dataplane]
interfaces = ["lo"]
snat_address = ["10.0.0.1", "2001:db8:5::1"]
snat_ports = [{SNAT_MIN}, {SNAT_MAX}]
udp_unreplied_timeout = 2
pin_dir = "@PIN@"
flow_table_size = 4096

[[pools]]
name = "web6"
origins = [{{ name = "o1", address = "2001:db8:11::2", port = 8080 }}]

[[load_balancers]]
name = "www6"
address = "2001:db8:a::10"
port = 80
default_pools = ["web6"]

[[load_balancers]]
name = "dns6"
protocol = "udp"
address = "2001:db8:a::10"
port = 53
default_pools = ["web6"]
"#
    )
}

/// A fixture bed with IPv6 (`FibBed::add_ipv6`: 2001:db8:1::1/64 on side a, clients;
/// 2001:db8:11::1/64 on side b, origin and router; static neighbours, forwarding on), side
/// b's MTU `MTU_B`.
fn bed() -> FibBed {
    let bed = FibBed::new("v6fx", &[]);
    bed.add_ipv6(&[
        (C1, MAC_C1, Side::A),
        (C2, MAC_C2, Side::A),
        (OTHER, MAC_C2, Side::A),
        (O1, MAC_O1, Side::B),
        (R_ORIGIN, MAC_RO, Side::B),
    ]);
    bed.ns
        .ip(&["link", "set", &bed.b, "mtu", &MTU_B.to_string()]);
    bed
}

fn fixture(f: impl FnOnce(&mut Loaded<'_>, &FibBed) + Send) {
    let _serial = serial();
    let bed = bed();
    with_loaded_in(&bed, ebpf_object(), &config(), |fx| {
        f(fx, &bed);
        fx.assert_events();
    });
}

/// A TCP frame built by etherparse (`tcp6_segment`): a SYN if `syn`, an ACK of `ack`.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
fn tcp6(
    (smac, dmac): ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    hop: u8,
    ports: (u16, u16),
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let flags =
        if syn { tcp_flags::SYN } else { 0 } | if ack.is_some() { tcp_flags::ACK } else { 0 };
    tcp6_segment(
        smac,
        dmac,
        src,
        dst,
        hop,
        ports,
        flags,
        (seq, ack.unwrap_or(0)),
        payload,
    )
}

/// A UDP frame built by etherparse.
fn udp6(
    (smac, dmac): ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    hop: u8,
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src, dst, hop)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("udp6 frame");
    v
}

/// The frame with extension headers `ext` (each: its bytes, next header filled in here)
/// inserted after the IPv6 header.
fn with_ext(frame: &[u8], ext: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut v = frame[..54].to_vec();
    let transport = frame[20];
    let mut added = 0;
    for (i, (kind, bytes)) in ext.iter().enumerate() {
        let mut h = bytes.clone();
        h[0] = ext.get(i + 1).map_or(transport, |n| n.0);
        if i == 0 {
            v[20] = *kind;
        }
        added += h.len();
        v.extend(h);
    }
    v.extend_from_slice(&frame[54..]);
    let plen = u16::from_be_bytes([v[18], v[19]]) + u16::try_from(added).expect("small");
    v[18..20].copy_from_slice(&plen.to_be_bytes());
    v
}

/// Hop-by-hop options (0) or destination options (60) with one PadN: 8 bytes.
fn pad_options() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// The first SNAT port of a flow of `c:cp` to the VIP's `port` with `proto`.
fn snat_port(c: [u8; 16], cp: u16, port: u16, proto: u8) -> u16 {
    let key = FlowKey {
        src: c,
        dst: VIP6,
        sport: cp.to_be(),
        dport: port.to_be(),
        proto,
        _pad: [0; 3],
    };
    first_snat_port_of((SNAT_MIN, SNAT_MAX), &key)
}

#[test]
fn ipv6_tcp_flows_are_balanced_answered_and_checked() {
    fixture(|fx, bed| {
        let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
        let p = snat_port(C1, 40000, 80, IPPROTO_TCP);
        let to_vip = |seq, ack, syn, payload: &[u8]| {
            tcp6(
                (MAC_C1, mac_a),
                (C1, VIP6),
                64,
                (40000, 80),
                seq,
                ack,
                syn,
                payload,
            )
        };
        let to_o1 = |seq, ack, syn, payload: &[u8]| {
            tcp6(
                (mac_b, MAC_O1),
                (SNAT6, O1),
                63,
                (p, 8080),
                seq,
                ack,
                syn,
                payload,
            )
        };
        let syn = to_vip(1000, None, true, &[]);
        let ack = to_vip(1001, Some(5001), false, b"GET / HTTP/1.1\r\n\r\n");
        fx.run(vec![
            Case {
                desc: "a SYN to the IPv6 VIP: a new flow to o1 from the IPv6 SNAT address",
                ingress: Side::A,
                input: syn,
                verdict: XDP_REDIRECT,
                output: Some(to_o1(1000, None, true, &[])),
                events: &[event::FWD_REDIRECT],
            },
            Case {
                desc: "o1's SYN-ACK: back to the client from the VIP",
                ingress: Side::B,
                input: tcp6(
                    (MAC_O1, mac_b),
                    (O1, SNAT6),
                    64,
                    (8080, p),
                    5000,
                    Some(1001),
                    true,
                    &[],
                ),
                verdict: XDP_REDIRECT,
                output: Some(tcp6(
                    (mac_a, MAC_C1),
                    (VIP6, C1),
                    63,
                    (80, 40000),
                    5000,
                    Some(1001),
                    true,
                    &[],
                )),
                events: &[event::REPLY_NAT, event::FWD_REDIRECT],
            },
            Case {
                desc: "the client's ACK with a request: on the established flow",
                ingress: Side::A,
                input: ack.clone(),
                verdict: XDP_REDIRECT,
                output: Some(to_o1(1001, Some(5001), false, b"GET / HTTP/1.1\r\n\r\n")),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
            Case {
                desc: "hop-by-hop and destination options: removed, the segment forwarded",
                ingress: Side::A,
                input: with_ext(&ack, &[(0, pad_options()), (60, pad_options())]),
                verdict: XDP_REDIRECT,
                output: Some(to_o1(1001, Some(5001), false, b"GET / HTTP/1.1\r\n\r\n")),
                events: &[
                    event::EXT_HEADERS_REMOVED,
                    event::FLOW_HIT,
                    event::FWD_REDIRECT,
                ],
            },
            Case {
                desc: "a spent routing header (segments left 0): removed",
                ingress: Side::A,
                input: with_ext(&ack, &[(43, vec![0, 0, 4, 0, 0, 0, 0, 0])]),
                verdict: XDP_REDIRECT,
                output: Some(to_o1(1001, Some(5001), false, b"GET / HTTP/1.1\r\n\r\n")),
                events: &[
                    event::EXT_HEADERS_REMOVED,
                    event::FLOW_HIT,
                    event::FWD_REDIRECT,
                ],
            },
            Case {
                desc: "TCP with a hop-by-hop header to the SNAT address, no flow of ours: passed with it",
                ingress: Side::B,
                input: with_ext(
                    &tcp6((MAC_O1, mac_b), (O1, SNAT6), 64, (8080, 999), 1, Some(1), false, &[]),
                    &[(0, pad_options())],
                ),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "TCP with destination options to a VIP address on a port no VIP has: passed with them",
                ingress: Side::A,
                input: with_ext(
                    &tcp6((MAC_C1, mac_a), (C1, VIP6), 64, (40000, 81), 1, None, true, &[]),
                    &[(60, pad_options())],
                ),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "a routing header with segments left: dropped",
                ingress: Side::A,
                input: with_ext(
                    &ack,
                    &[(
                        43,
                        vec![
                            0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        ],
                    )],
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_EXT_HEADER],
            },
            Case {
                desc: "an AH header: dropped (NAT would break it)",
                ingress: Side::A,
                input: with_ext(&ack, &[(51, vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_EXT_HEADER],
            },
            Case {
                desc: "a fragment to the VIP: dropped",
                ingress: Side::A,
                input: with_ext(&ack, &[(44, vec![0, 0, 0, 1, 0, 0, 0, 7])]),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_FRAGMENT],
            },
            Case {
                desc: "an extension header cut short: dropped",
                ingress: Side::A,
                input: {
                    let mut v = with_ext(
                        &to_vip(1, None, true, &[]),
                        &[(0, vec![0, 20, 1, 4, 0, 0, 0, 0])],
                    );
                    v.truncate(70);
                    let plen = u16::try_from(v.len() - 54).expect("small").to_be_bytes();
                    v[18..20].copy_from_slice(&plen);
                    v
                },
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_EXT_HEADER],
            },
            Case {
                desc: "TCP to the host's own IPv6 address: passed untouched",
                ingress: Side::A,
                input: tcp6(
                    (MAC_C1, mac_a),
                    (C1, LB_A),
                    64,
                    (40000, 22),
                    1,
                    None,
                    true,
                    &[],
                ),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "TCP to another host through us (no open router): dropped",
                ingress: Side::A,
                input: tcp6(
                    (MAC_C1, mac_a),
                    (C1, OTHER),
                    64,
                    (40000, 80),
                    1,
                    None,
                    true,
                    &[],
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_TRANSIT],
            },
            Case {
                desc: "an IPv4-mapped destination: never the IPv4 VIP's, passed",
                ingress: Side::A,
                input: {
                    let mut mapped = [0u8; 16];
                    mapped[10..12].copy_from_slice(&[0xff, 0xff]);
                    mapped[12..].copy_from_slice(&[10, 0, 0, 10]);
                    tcp6(
                        (MAC_C1, mac_a),
                        (C1, mapped),
                        64,
                        (40000, 80),
                        1,
                        None,
                        true,
                        &[],
                    )
                },
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
        ]);
        // "Packet too big" from a router on the origin side, quoting what we sent to o1:
        // translated for the client, quoting what it sent.
        let sent = to_o1(1001, Some(5001), false, b"GET / HTTP/1.1\r\n\r\n");
        let quoted_client = to_vip(1001, Some(5001), false, b"GET / HTTP/1.1\r\n\r\n");
        let mut quoted_client_ip = quoted_client[14..].to_vec();
        // The quote is as the client sent it, hop limit one less (it passed us).
        quoted_client_ip[7] = 63;
        let mtu = 1280u32.to_be_bytes();
        fx.run(vec![Case {
            desc: "ICMPv6 packet too big about o1's flow: translated back to the client",
            ingress: Side::B,
            input: icmp6_frame(
                (MAC_RO, mac_b),
                (R_ORIGIN, SNAT6),
                64,
                (2, 0, mtu),
                &sent[14..],
            ),
            verdict: XDP_REDIRECT,
            output: Some(icmp6_frame(
                (mac_a, MAC_C1),
                (VIP6, C1),
                63,
                (2, 0, mtu),
                &quoted_client_ip,
            )),
            events: &[event::ICMP_FROM_ORIGIN, event::FWD_REDIRECT],
        }]);
        // "Destination unreachable" from a router on the client side, quoting what we sent
        // to the client (o1's SYN-ACK): translated for o1, quoting what o1 sent.
        let to_client = tcp6(
            (mac_a, MAC_C1),
            (VIP6, C1),
            63,
            (80, 40000),
            5000,
            Some(1001),
            true,
            &[],
        );
        let mut quoted_o1 = tcp6(
            (MAC_O1, mac_b),
            (O1, SNAT6),
            64,
            (8080, p),
            5000,
            Some(1001),
            true,
            &[],
        )[14..]
            .to_vec();
        quoted_o1[7] = 63;
        fx.run(vec![
            Case {
                desc: "ICMPv6 unreachable about a client of o1: translated back to o1",
                ingress: Side::A,
                input: icmp6_frame(
                    (MAC_RC, mac_a),
                    (R_CLIENT, VIP6),
                    64,
                    (1, 3, [0; 4]),
                    &to_client[14..],
                ),
                verdict: XDP_REDIRECT,
                output: Some(icmp6_frame(
                    (mac_b, MAC_O1),
                    (SNAT6, O1),
                    63,
                    (1, 3, [0; 4]),
                    &quoted_o1,
                )),
                events: &[event::ICMP_FROM_CLIENT, event::FWD_REDIRECT],
            },
            Case {
                desc: "ICMPv6 unreachable to the VIP about no flow of ours: dropped",
                ingress: Side::A,
                input: icmp6_frame(
                    (MAC_RC, mac_a),
                    (R_CLIENT, VIP6),
                    64,
                    (1, 3, [0; 4]),
                    &tcp6(
                        (mac_a, MAC_C2),
                        (VIP6, C2),
                        63,
                        (80, 41000),
                        5000,
                        Some(1001),
                        true,
                        &[],
                    )[14..],
                ),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_ICMP_UNKNOWN_FLOW],
            },
        ]);
        // A segment too big for side b's MTU: answered with "packet too big" quoting it.
        let big = vec![b'x'; usize::from(MTU_B)];
        let input = to_vip(1001, Some(5001), false, &big);
        let (verdict, out) = fx.run1(Side::A, &input);
        assert_eq!(verdict, XDP_TX, "too big: verdict");
        // The quote: the IPv6 header as the client sent it (its payload length that of the
        // whole packet) and the first 8 bytes of TCP.
        let want = icmp6_frame(
            (mac_a, MAC_C1),
            (VIP6, C1),
            64,
            (2, 0, u32::from(MTU_B).to_be_bytes()),
            &input[14..14 + 48],
        );
        assert_eq!(out, want, "too big: frame");
        lb_testbed::fixture::assert_checksums("too big", &out);
        fx.expect_events(&[event::FLOW_HIT, event::ICMP_FRAG_NEEDED_SENT]);
        println!("fixture ok: a segment too big for the origin link: packet too big, MTU {MTU_B}");
    });
}

#[test]
fn ipv6_udp_datagrams_icmpv6_echo_and_neighbour_discovery() {
    fixture(|fx, bed| {
        let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
        let p = snat_port(C2, 5353, 53, IPPROTO_UDP);
        let query = udp6((MAC_C2, mac_a), (C2, VIP6), 64, (5353, 53), QUERY);
        // Client 1's flow is never answered: it expires after udp_unreplied_timeout.
        let lone_port = {
            let first = snat_port(C1, 5000, 53, IPPROTO_UDP);
            if first == p {
                other_port(first)
            } else {
                first
            }
        };
        let lone = udp6((MAC_C1, mac_a), (C1, VIP6), 64, (5000, 53), QUERY);
        let lone_out = udp6((mac_b, MAC_O1), (SNAT6, O1), 63, (lone_port, 8080), QUERY);
        let forwarded = udp6((mac_b, MAC_O1), (SNAT6, O1), 63, (p, 8080), QUERY);
        let mut no_sum = query.clone();
        no_sum[54 + 6..54 + 8].copy_from_slice(&[0, 0]);
        // A neighbour solicitation for the VIP (to its solicited-node multicast address).
        let mut snm = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
        snm[13..].copy_from_slice(&VIP6[13..]);
        let mut ns_body = VIP6.to_vec();
        ns_body.extend_from_slice(&[1, 1]);
        ns_body.extend_from_slice(&MAC_C2);
        let solicit = {
            let b = PacketBuilder::ethernet2(MAC_C2, [0x33, 0x33, 0xff, 0, 0, 0x10])
                .ipv6(C2, snm, 255)
                .icmpv6_raw(135, 0, [0; 4]);
            let mut v = Vec::new();
            b.write(&mut v, &ns_body).expect("ns");
            v
        };
        let echo_body = b"ping payload";
        fx.run(vec![
            Case {
                desc: "a query to the IPv6 UDP VIP: a new flow to o1",
                ingress: Side::A,
                input: query.clone(),
                verdict: XDP_REDIRECT,
                output: Some(forwarded.clone()),
                events: &[event::FWD_REDIRECT],
            },
            Case {
                desc: "client 1's query: a new flow on the other SNAT port, never answered",
                ingress: Side::A,
                input: lone.clone(),
                verdict: XDP_REDIRECT,
                output: Some(lone_out.clone()),
                events: &[event::FWD_REDIRECT],
            },
            Case {
                desc: "o1's answer: back to the client from the VIP",
                ingress: Side::B,
                input: udp6((MAC_O1, mac_b), (O1, SNAT6), 64, (8080, p), ANSWER),
                verdict: XDP_REDIRECT,
                output: Some(udp6((mac_a, MAC_C2), (VIP6, C2), 63, (53, 5353), ANSWER)),
                events: &[event::REPLY_NAT, event::FWD_REDIRECT],
            },
            Case {
                desc: "the next query: on the flow",
                ingress: Side::A,
                input: query.clone(),
                verdict: XDP_REDIRECT,
                output: Some(forwarded.clone()),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
            Case {
                desc: "a datagram without checksum (invalid in IPv6): dropped",
                ingress: Side::A,
                input: no_sum,
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_MALFORMED_UDP],
            },
            Case {
                desc: "UDP with a destination-options header: removed, forwarded on the flow",
                ingress: Side::A,
                input: with_ext(&query, &[(60, pad_options())]),
                verdict: XDP_REDIRECT,
                output: Some(forwarded.clone()),
                events: &[
                    event::EXT_HEADERS_REMOVED,
                    event::FLOW_HIT,
                    event::FWD_REDIRECT,
                ],
            },
            Case {
                desc: "a neighbour solicitation for the VIP: passed untouched",
                ingress: Side::A,
                input: solicit,
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_ND],
            },
            Case {
                desc: "an echo request to the VIP: answered",
                ingress: Side::A,
                input: icmp6_frame(
                    (MAC_C2, mac_a),
                    (C2, VIP6),
                    64,
                    (128, 0, [0, 7, 0, 1]),
                    echo_body,
                ),
                verdict: XDP_TX,
                output: Some(icmp6_frame(
                    (mac_a, MAC_C2),
                    (VIP6, C2),
                    64,
                    (129, 0, [0, 7, 0, 1]),
                    echo_body,
                )),
                events: &[event::ICMP_ECHO_REPLY],
            },
        ]);
        // Idle past udp_unreplied_timeout (2 s): client 1's next query replaces its flow;
        // client 2's conversation (answered, then spoken again) lives udp_timeout.
        next_second();
        next_second();
        next_second();
        fx.run(vec![
            Case {
                desc: "client 1 after the idle timeout: the expired flow replaced, same port",
                ingress: Side::A,
                input: lone,
                verdict: XDP_REDIRECT,
                output: Some(lone_out),
                events: &[event::UDP_FLOW_EXPIRED, event::FWD_REDIRECT],
            },
            Case {
                desc: "client 2's conversation: still on its flow",
                ingress: Side::A,
                input: query,
                verdict: XDP_REDIRECT,
                output: Some(forwarded),
                events: &[event::FLOW_HIT, event::FWD_REDIRECT],
            },
        ]);
    });
}

#[test]
fn ipv6_syn_cookies_answer_without_state_and_translate_sequence_numbers() {
    let _serial = serial();
    let bed = bed();
    let config = config().replace(
        "flow_table_size = 4096",
        "flow_table_size = 4096\nsyn_cookies = \"always\"",
    );
    with_loaded_in(&bed, ebpf_object(), &config, |fx| {
        let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
        let from_c1 = |seq, ack: Option<u32>, syn, data: &[u8]| {
            tcp6(
                (MAC_C1, mac_a),
                (C1, VIP6),
                64,
                (40000, 80),
                seq,
                ack,
                syn,
                data,
            )
        };
        // The SYN is answered in place with a cookie SYN-ACK (bpf_tcp_raw_gen_syncookie_ipv6).
        let (v, out) = fx.run1(Side::A, &from_c1(7000, None, true, &[]));
        assert_eq!(v, XDP_REDIRECT, "cookie SYN-ACK: back out of the ingress");
        let synack = tcp_header_of(&out);
        assert!(
            synack.syn && synack.ack && synack.acknowledgment_number == 7001,
            "cookie SYN-ACK: {synack:?}"
        );
        assert_eq!((synack.source_port, synack.destination_port), (80, 40000));
        assert_eq!(
            (&out[0..6], &out[22..38], &out[38..54]),
            (&MAC_C1[..], &VIP6[..], &C1[..])
        );
        let key = FlowKey {
            src: C1,
            dst: VIP6,
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        assert!(
            fx.rec.maps.flows.get(&key, 0).is_err(),
            "no state for a cookie SYN"
        );
        let cookie = synack.sequence_number;
        fx.expect_events(&[event::SYN_COOKIE_SENT]);
        // A wrong cookie: dropped.
        let (v, _) = fx.run1(
            Side::A,
            &from_c1(7001, Some(cookie.wrapping_add(77)), false, &[]),
        );
        assert_eq!(v, XDP_DROP, "ACK with a wrong cookie");
        fx.expect_events(&[event::DROP_COOKIE_INVALID]);
        // The right one: a flow, and the ACK becomes the SYN to o1 from the IPv6 SNAT address.
        let (v, out) = fx.run1(
            Side::A,
            &from_c1(7001, Some(cookie.wrapping_add(1)), false, &[]),
        );
        assert_eq!(v, XDP_REDIRECT, "cookie ACK becomes the SYN to the origin");
        let syn_o = tcp_header_of(&out);
        assert!(
            syn_o.syn && !syn_o.ack && syn_o.sequence_number == 7000,
            "SYN to the origin: {syn_o:?}"
        );
        assert_eq!(
            (&out[22..38], &out[38..54]),
            (&SNAT6[..], &O1[..]),
            "SNAT -> o1"
        );
        assert_eq!(syn_o.destination_port, 8080);
        let p = syn_o.source_port;
        assert!(
            fx.rec.maps.flows.get(&key, 0).is_ok(),
            "a flow for the cookie ACK"
        );
        fx.expect_events(&[event::SYN_COOKIE_OK, event::FWD_REDIRECT]);
        // o1's SYN-ACK becomes our ACK back to o1.
        let (v, out) = fx.run1(
            Side::B,
            &tcp6(
                (MAC_O1, mac_b),
                (O1, SNAT6),
                64,
                (8080, p),
                9000,
                Some(7001),
                true,
                &[],
            ),
        );
        assert_eq!(v, XDP_REDIRECT, "origin SYN-ACK: answered with our ACK");
        assert_eq!(
            out,
            tcp6(
                (mac_b, MAC_O1),
                (SNAT6, O1),
                64,
                (p, 8080),
                7001,
                Some(9001),
                false,
                &[]
            ),
            "ACK to the origin"
        );
        fx.expect_events(&[event::COOKIE_ORIGIN_ACK]);
        // From now on sequence numbers are translated between the cookie and o1's ISN.
        let (v, out) = fx.run1(
            Side::A,
            &from_c1(7001, Some(cookie.wrapping_add(1)), false, b"hi"),
        );
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            tcp6(
                (mac_b, MAC_O1),
                (SNAT6, O1),
                63,
                (p, 8080),
                7001,
                Some(9001),
                false,
                b"hi"
            ),
            "client data, its ack translated"
        );
        fx.expect_events(&[event::FLOW_HIT, event::FWD_REDIRECT]);
        let (v, out) = fx.run1(
            Side::B,
            &tcp6(
                (MAC_O1, mac_b),
                (O1, SNAT6),
                64,
                (8080, p),
                9001,
                Some(7003),
                false,
                b"ok",
            ),
        );
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            tcp6(
                (mac_a, MAC_C1),
                (VIP6, C1),
                63,
                (80, 40000),
                cookie.wrapping_add(1),
                Some(7003),
                false,
                b"ok"
            ),
            "origin data, its sequence number translated"
        );
        fx.expect_events(&[event::REPLY_NAT, event::FWD_REDIRECT]);

        // A second cookie flow whose origin refuses the SYN: the client gets a RST in IPv6.
        let from_c1b = |seq, ack: Option<u32>, syn| {
            tcp6(
                (MAC_C1, mac_a),
                (C1, VIP6),
                64,
                (40001, 80),
                seq,
                ack,
                syn,
                &[],
            )
        };
        let (_, out) = fx.run1(Side::A, &from_c1b(8000, None, true));
        let cookie2 = tcp_header_of(&out).sequence_number;
        let (v, out) = fx.run1(
            Side::A,
            &from_c1b(8001, Some(cookie2.wrapping_add(1)), false),
        );
        assert_eq!(
            v, XDP_REDIRECT,
            "second cookie ACK becomes the SYN to the origin"
        );
        let p2 = tcp_header_of(&out).source_port;
        fx.expect_events(&[
            event::SYN_COOKIE_SENT,
            event::SYN_COOKIE_OK,
            event::FWD_REDIRECT,
        ]);
        let rst = tcp6_segment(
            MAC_O1,
            mac_b,
            O1,
            SNAT6,
            64,
            (8080, p2),
            tcp_flags::RST | tcp_flags::ACK,
            (0, 8001),
            &[],
        );
        let (v, out) = fx.run1(Side::B, &rst);
        assert_eq!(v, XDP_REDIRECT, "origin refused: a RST to the client");
        let r = tcp_header_of(&out);
        assert!(r.rst, "a RST: {r:?}");
        assert_eq!(
            (
                &out[22..38],
                &out[38..54],
                r.source_port,
                r.destination_port
            ),
            (&VIP6[..], &C1[..], 80, 40001),
            "from the VIP to the IPv6 client"
        );
        fx.expect_events(&[event::COOKIE_REFUSED, event::FWD_REDIRECT]);
        fx.assert_events();
        println!("fixture ok: IPv6 SYN cookies, cookie ACK, origin handshake, translation; origin refusal: RST to the client");
    });
}

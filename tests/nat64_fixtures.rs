//! NAT64 packet fixtures: an IPv6 VIP whose pool holds an IPv4 origin, through
//! `BPF_PROG_TEST_RUN` (`lb_xdp`, which tail-calls `lb_v6`, `lb_v6_udp`, `lb_to_v4` and
//! `lb_to_v6`). Expected frames are built by etherparse in the other family from scratch,
//! so byte equality proves the RFC 7915 translation and that the checksum carried across
//! it (the IPv4-mapped prefix is checksum-neutral) is the one a full computation gives;
//! every output's checksums are recomputed on top.
//!
//! 6→4: SYN, established data (DF clear up to 1260 bytes, set above, RFC 7915 §5.1), a
//! segment too big for the IPv4 link (ICMPv6 "packet too big" to the client with the MTU
//! plus 20), UDP. 4→6: SYN-ACK and data back to the client, a segment too big for the
//! IPv6 link ("fragmentation needed" to the origin with the MTU less 20), a checksum-less
//! UDP answer (dropped). SYN cookies: the rebuilt SYN to the origin is translated, and
//! sequence numbers are translated both ways. ICMP across: "fragmentation needed" from an IPv4 router becomes
//! "packet too big" for the client (§4.2), "packet too big" from an IPv6 router becomes
//! "fragmentation needed" for the origin (§5.2), a code without counterpart is dropped.

use etherparse::PacketBuilder;
use lb_common::{event, FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use lb_testbed::{
    ebpf_object,
    fixture::{
        assert_checksums, csum, first_snat_port_of, frag_needed, icmp6_frame, icmp_frame, ip_of,
        net6, tcp_header_of, with_loaded_in, Loaded, SNAT_MAX, SNAT_MIN, XDP_DROP, XDP_REDIRECT,
        XDP_TX,
    },
    serial, tcp6_segment, tcp_flags, tcp_segment, FibBed, Side,
};

const VIP6: [u8; 16] = net6(0xa, 0x10);
const C1: [u8; 16] = net6(1, 2);
/// A router on the client side, which sends ICMPv6 errors.
const R6: [u8; 16] = net6(1, 0xfe);
const SNAT4: [u8; 4] = [10, 0, 0, 1];
const O4: [u8; 4] = [10, 0, 11, 2];
/// A router on the origin side, which sends ICMP errors.
const R4: [u8; 4] = [10, 0, 11, 254];
const MAC_C1: [u8; 6] = [2, 0, 0, 1, 0, 2];
const MAC_R6: [u8; 6] = [2, 0, 0, 1, 0, 0xfe];
const MAC_O4: [u8; 6] = [2, 0, 0, 0x11, 0, 2];
const MAC_R4: [u8; 6] = [2, 0, 0, 0x11, 0, 0xfe];
/// MTU of the origin side's link.
const MTU_B: u16 = 1400;
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01 what is the answer";
const ANSWER: &[u8] = b"\x12\x34\x81\x80\x00\x01 forty-two";

/// An IPv6 VIP (TCP 80, UDP 53) whose pool holds one IPv4 origin.
fn config() -> String {
    format!(
        r#"[dataplane]
interfaces = ["lo"]
snat_address = ["10.0.0.1", "2001:db8:5::1"]
snat_ports = [{SNAT_MIN}, {SNAT_MAX}]
pin_dir = "@PIN@"
flow_table_size = 4096

[[pools]]
name = "web4"
origins = [{{ name = "o4", address = "10.0.11.2", port = 8080 }}]

[[load_balancers]]
name = "www6"
address = "2001:db8:a::10"
port = 80
default_pools = ["web4"]

[[load_balancers]]
name = "dns6"
protocol = "udp"
address = "2001:db8:a::10"
port = 53
default_pools = ["web4"]
"#
    )
}

fn fixture(f: impl FnOnce(&mut Loaded<'_>, &FibBed) + Send) {
    let _serial = serial();
    let bed = FibBed::new("n64fx", &[(O4, MAC_O4, Side::B), (R4, MAC_R4, Side::B)]);
    bed.add_ipv6(&[(C1, MAC_C1, Side::A), (R6, MAC_R6, Side::A)]);
    bed.ns
        .ip(&["link", "set", &bed.b, "mtu", &MTU_B.to_string()]);
    with_loaded_in(&bed, ebpf_object(), &config(), |fx| {
        f(fx, &bed);
        fx.assert_events();
    });
}

fn flags(syn: bool, ack: Option<u32>) -> u8 {
    let s = if syn { tcp_flags::SYN } else { 0 };
    s | if ack.is_some() { tcp_flags::ACK } else { 0 }
}

/// The client's TCP segment to the VIP (hop limit 64).
fn from_client(seq: u32, ack: Option<u32>, syn: bool, payload: &[u8], mac_a: [u8; 6]) -> Vec<u8> {
    tcp6_segment(
        MAC_C1,
        mac_a,
        C1,
        VIP6,
        64,
        (40000, 80),
        flags(syn, ack),
        (seq, ack.unwrap_or(0)),
        payload,
    )
}

/// An IPv4 frame's DF bit and identification set as the translator sets them (DF above
/// 1260 bytes, RFC 7915 §5.1; identification 0 then, else `id`), header checksum redone.
fn with_df(mut v: Vec<u8>, id: [u8; 2]) -> Vec<u8> {
    let len = u16::from_be_bytes([v[16], v[17]]);
    let df = len > 1260;
    v[18..20].copy_from_slice(if df { &[0, 0] } else { &id });
    v[20] = if df { 0x40 } else { 0 };
    v[21] = 0;
    v[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&v[14..34]);
    v[24..26].copy_from_slice(&c);
    v
}

/// Runs a frame that the translator turns into IPv4, and checks it against `want` (built
/// without DF): the identification of a DF-clear packet is random, so it is taken from the
/// output (and must then be what the checksum covers).
fn run_to_v4(
    fx: &mut Loaded<'_>,
    desc: &str,
    input: &[u8],
    want: Vec<u8>,
    events: &[u32],
) -> Vec<u8> {
    let (verdict, out) = fx.run1(Side::A, input);
    assert_eq!(verdict, XDP_REDIRECT, "{desc}: verdict");
    assert!(out.len() >= 34, "{desc}: output {out:?}");
    let want = with_df(want, [out[18], out[19]]);
    assert_eq!(out, want, "{desc}: output frame");
    assert_checksums(desc, &out);
    fx.expect_events(events);
    println!("fixture ok: {desc}");
    out
}

/// Runs a frame and checks the verdict, the exact output and its checksums.
fn run_exact(
    fx: &mut Loaded<'_>,
    desc: &str,
    side: Side,
    input: &[u8],
    verdict: u32,
    want: &[u8],
    events: &[u32],
) {
    let (v, out) = fx.run1(side, input);
    assert_eq!(v, verdict, "{desc}: verdict");
    assert_eq!(out, want, "{desc}: output frame");
    assert_checksums(desc, &out);
    fx.expect_events(events);
    println!("fixture ok: {desc}");
}

fn snat_port(proto: u8, cport: u16, vport: u16) -> u16 {
    first_snat_port_of(
        (SNAT_MIN, SNAT_MAX),
        &FlowKey {
            src: C1,
            dst: VIP6,
            sport: cport.to_be(),
            dport: vport.to_be(),
            proto,
            _pad: [0; 3],
        },
    )
}

#[test]
fn nat64_tcp_is_translated_both_ways_with_path_mtu_and_icmp() {
    fixture(|fx, bed| {
        let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
        let p = snat_port(IPPROTO_TCP, 40000, 80);
        let to_o4 = |seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]| {
            tcp_segment(
                mac_b,
                MAC_O4,
                SNAT4,
                O4,
                63,
                (p, 8080),
                flags(syn, ack),
                (seq, ack.unwrap_or(0)),
                payload,
            )
        };
        let from_o4 = |seq: u32, ack: u32, syn: bool, payload: &[u8]| {
            let v = tcp_segment(
                MAC_O4,
                mac_b,
                O4,
                SNAT4,
                64,
                (8080, p),
                flags(syn, Some(ack)),
                (seq, ack),
                payload,
            );
            // Linux origins set DF (path MTU discovery).
            with_df_always(v)
        };
        let to_c1 = |seq: u32, ack: u32, syn: bool, payload: &[u8]| {
            tcp6_segment(
                mac_a,
                MAC_C1,
                VIP6,
                C1,
                63,
                (80, 40000),
                flags(syn, Some(ack)),
                (seq, ack),
                payload,
            )
        };

        run_to_v4(
            fx,
            "a SYN to the IPv6 VIP: a new flow to the IPv4 origin, translated to IPv4 (DF clear)",
            &from_client(1000, None, true, &[], mac_a),
            to_o4(1000, None, true, &[]),
            &[event::XLAT_6TO4, event::FWD_REDIRECT],
        );
        run_exact(
            fx,
            "the origin's SYN-ACK: translated to IPv6 and NATed back to the client",
            Side::B,
            &from_o4(5000, 1001, true, &[]),
            XDP_REDIRECT,
            &to_c1(5000, 1001, true, &[]),
            &[event::REPLY_NAT, event::XLAT_4TO6, event::FWD_REDIRECT],
        );
        let request = b"GET / HTTP/1.1\r\n\r\n";
        run_to_v4(
            fx,
            "the client's ACK with a request: on the flow, translated",
            &from_client(1001, Some(5001), false, request, mac_a),
            to_o4(1001, Some(5001), false, request),
            &[event::FLOW_HIT, event::XLAT_6TO4, event::FWD_REDIRECT],
        );
        let big = vec![b'u'; 1300];
        let out = run_to_v4(
            fx,
            "a 1300-byte segment: DF set above 1260 bytes",
            &from_client(1019, Some(5001), false, &big, mac_a),
            to_o4(1019, Some(5001), false, &big),
            &[event::FLOW_HIT, event::XLAT_6TO4, event::FWD_REDIRECT],
        );
        assert_eq!(out[20] & 0x40, 0x40, "DF set on the 1340-byte packet");
        let data = vec![b'd'; 1000];
        run_exact(
            fx,
            "the origin's data: translated to the client",
            Side::B,
            &from_o4(5001, 2319, false, &data),
            XDP_REDIRECT,
            &to_c1(5001, 2319, false, &data),
            &[event::REPLY_NAT, event::XLAT_4TO6, event::FWD_REDIRECT],
        );

        // 6→4 too big: 1400 bytes of TCP make a 1440-byte IPv4 packet, over side b's 1400.
        let too_big = from_client(2319, Some(6001), false, &vec![b'x'; 1400], mac_a);
        run_exact(
            fx,
            "too big once translated for the IPv4 link: packet too big to the client, MTU 1420",
            Side::A,
            &too_big,
            XDP_TX,
            &icmp6_frame(
                (mac_a, MAC_C1),
                (VIP6, C1),
                64,
                (2, 0, u32::from(MTU_B + 20).to_be_bytes()),
                &too_big[14..14 + 48],
            ),
            &[
                event::FLOW_HIT,
                event::XLAT_6TO4,
                event::ICMP_FRAG_NEEDED_SENT,
            ],
        );

        // 4→6 too big: a 1490-byte IPv4 packet is 1510 bytes in IPv6, over side a's 1500.
        let huge = from_o4(6001, 2319, false, &vec![b'y'; 1450]);
        run_exact(
            fx,
            "too big once translated for the IPv6 link: fragmentation needed to the origin, MTU 1480",
            Side::B,
            &huge,
            XDP_TX,
            &frag_needed(mac_b, MAC_O4, SNAT4, O4, 1480, &ip_of(&huge)),
            &[
                event::REPLY_NAT,
                event::XLAT_4TO6,
                event::ICMP_FRAG_NEEDED_SENT,
            ],
        );

        // ICMP from an IPv4 router about what we sent to the origin: the client hears an
        // ICMPv6 "packet too big" about what it sent, MTU 1300 + 20.
        let sent = with_df(to_o4(2319, Some(6001), false, &[0; 1300]), [0, 0]);
        let icmp4 = icmp_frame(
            MAC_R4,
            mac_b,
            R4,
            SNAT4,
            64,
            3,
            4,
            [0, 0, 0x05, 0x14],
            &ip_of(&sent)[..28],
        );
        let client_sent = from_client(2319, Some(6001), false, &[0; 1300], mac_a);
        let mut quote = client_sent[14..14 + 48].to_vec();
        // The quoted hop limit is the quoted IPv4 TTL (63: what the router saw).
        quote[7] = 63;
        run_exact(
            fx,
            "fragmentation needed from an IPv4 router: packet too big to the client, MTU 1320",
            Side::B,
            &icmp4,
            XDP_REDIRECT,
            &icmp6_frame(
                (mac_a, MAC_C1),
                (VIP6, C1),
                63,
                (2, 0, 1320u32.to_be_bytes()),
                &quote,
            ),
            &[
                event::ICMP_FROM_ORIGIN,
                event::XLAT_4TO6,
                event::FWD_REDIRECT,
            ],
        );

        // ICMPv6 from a router on the client side about what we sent to the client: the
        // origin hears "fragmentation needed" about what it sent, MTU 1280 - 20.
        let replied = to_c1(6001, 2319, false, &[0; 1200]);
        let ptb = icmp6_frame(
            (MAC_R6, mac_a),
            (R6, VIP6),
            64,
            (2, 0, 1280u32.to_be_bytes()),
            &replied[14..14 + 48],
        );
        // What the origin sent, as the quote says it: IPv4 with DF, TTL = the hop limit.
        let origin_sent = {
            let mut v = from_o4(6001, 2319, false, &[0; 1200]);
            v[22] = 63;
            v[24..26].copy_from_slice(&[0, 0]);
            let c = csum(&v[14..34]);
            v[24..26].copy_from_slice(&c);
            v
        };
        let mut want = frag_needed(mac_b, MAC_O4, SNAT4, O4, 1260, &ip_of(&origin_sent));
        // Forwarded, not bounced: TTL 63 (the router's 64 less one).
        want[22] = 63;
        want[24..26].copy_from_slice(&[0, 0]);
        let c = csum(&want[14..34]);
        want[24..26].copy_from_slice(&c);
        run_exact(
            fx,
            "packet too big from an IPv6 router: fragmentation needed to the origin, MTU 1260",
            Side::A,
            &ptb,
            XDP_REDIRECT,
            &want,
            &[
                event::ICMP_FROM_CLIENT,
                event::XLAT_6TO4,
                event::FWD_REDIRECT,
            ],
        );

        // Unreachable, "host precedence violation" (3/14): no ICMPv6 counterpart, dropped.
        let pp = icmp_frame(
            MAC_R4,
            mac_b,
            R4,
            SNAT4,
            64,
            3,
            14,
            [0; 4],
            &ip_of(&sent)[..28],
        );
        let (v, _) = fx.run1(Side::B, &pp);
        assert_eq!(v, XDP_DROP, "host precedence violation: verdict");
        fx.expect_events(&[event::DROP_XLAT]);
        println!("fixture ok: an ICMP error without counterpart in ICMPv6: dropped");
    });
}

/// Sets DF (as Linux origins do) and fixes the header checksum.
fn with_df_always(mut v: Vec<u8>) -> Vec<u8> {
    v[20] |= 0x40;
    v[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&v[14..34]);
    v[24..26].copy_from_slice(&c);
    v
}

#[test]
fn nat64_udp_is_translated_both_ways() {
    fixture(|fx, bed| {
        let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
        let p = snat_port(IPPROTO_UDP, 5353, 53);
        let query = {
            let b = PacketBuilder::ethernet2(MAC_C1, mac_a)
                .ipv6(C1, VIP6, 64)
                .udp(5353, 53);
            let mut v = Vec::new();
            b.write(&mut v, QUERY).expect("query");
            v
        };
        let to_o4 =
            lb_testbed::fixture::udp_frame_ttl(mac_b, MAC_O4, (SNAT4, O4), 63, (p, 8080), QUERY);
        run_to_v4(
            fx,
            "a UDP query to the IPv6 VIP: translated to the IPv4 origin",
            &query,
            to_o4,
            &[event::XLAT_6TO4, event::FWD_REDIRECT],
        );
        let answer = with_df_always(lb_testbed::fixture::udp_frame(
            MAC_O4,
            mac_b,
            (O4, SNAT4),
            (8080, p),
            ANSWER,
        ));
        let back = {
            let b = PacketBuilder::ethernet2(mac_a, MAC_C1)
                .ipv6(VIP6, C1, 63)
                .udp(53, 5353);
            let mut v = Vec::new();
            b.write(&mut v, ANSWER).expect("answer");
            v
        };
        run_exact(
            fx,
            "the origin's answer: translated to IPv6 and NATed back to the client",
            Side::B,
            &answer,
            XDP_REDIRECT,
            &back,
            &[event::REPLY_NAT, event::XLAT_4TO6, event::FWD_REDIRECT],
        );
        let mut bare = answer.clone();
        bare[40..42].copy_from_slice(&[0, 0]);
        let (v, _) = fx.run1(Side::B, &bare);
        assert_eq!(v, XDP_DROP, "a checksum-less answer: verdict");
        fx.expect_events(&[event::REPLY_NAT, event::DROP_XLAT]);
        println!("fixture ok: a checksum-less UDP answer: dropped (IPv6 needs one)");
    });
}

#[test]
fn nat64_syn_cookies_translate_the_rebuilt_syn_and_sequence_numbers() {
    let _serial = serial();
    let bed = FibBed::new("n64ck", &[(O4, MAC_O4, Side::B)]);
    bed.add_ipv6(&[(C1, MAC_C1, Side::A)]);
    let config = config().replace(
        "flow_table_size = 4096",
        "flow_table_size = 4096\nsyn_cookies = \"always\"",
    );
    with_loaded_in(&bed, ebpf_object(), &config, |fx| {
        let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
        // The SYN is answered in place, in IPv6, with a cookie SYN-ACK.
        let (v, out) = fx.run1(Side::A, &from_client(7000, None, true, &[], mac_a));
        assert_eq!(v, XDP_REDIRECT, "cookie SYN-ACK");
        let synack = tcp_header_of(&out);
        assert!(synack.syn && synack.ack && synack.acknowledgment_number == 7001);
        let cookie = synack.sequence_number;
        fx.expect_events(&[event::SYN_COOKIE_SENT]);
        // The cookie ACK becomes the SYN to the IPv4 origin, rebuilt and translated.
        let (v, out) = fx.run1(
            Side::A,
            &from_client(7001, Some(cookie.wrapping_add(1)), false, &[], mac_a),
        );
        assert_eq!(v, XDP_REDIRECT, "cookie ACK becomes the SYN to the origin");
        assert_eq!(&out[12..14], &[8, 0], "an IPv4 SYN");
        assert_eq!((&out[26..30], &out[30..34]), (&SNAT4[..], &O4[..]));
        let syn_o = tcp_header_of(&out);
        assert!(syn_o.syn && !syn_o.ack && syn_o.sequence_number == 7000);
        assert_eq!(syn_o.destination_port, 8080);
        let p = syn_o.source_port;
        fx.expect_events(&[event::SYN_COOKIE_OK, event::XLAT_6TO4, event::FWD_REDIRECT]);
        // The origin's SYN-ACK is answered in IPv4 with our ACK.
        let (v, out) = fx.run1(
            Side::B,
            &tcp_segment(
                MAC_O4,
                mac_b,
                O4,
                SNAT4,
                64,
                (8080, p),
                tcp_flags::SYN | tcp_flags::ACK,
                (9000, 7001),
                &[],
            ),
        );
        assert_eq!(v, XDP_REDIRECT, "origin SYN-ACK: answered with our ACK");
        let ack = tcp_header_of(&out);
        assert!(
            ack.ack && !ack.syn && ack.sequence_number == 7001 && ack.acknowledgment_number == 9001
        );
        fx.expect_events(&[event::COOKIE_ORIGIN_ACK]);
        // Sequence numbers are translated between the cookie and the origin's ISN.
        let (v, out) = fx.run1(
            Side::A,
            &from_client(7001, Some(cookie.wrapping_add(1)), false, b"hi", mac_a),
        );
        assert_eq!(v, XDP_REDIRECT);
        let d = tcp_header_of(&out);
        assert_eq!(&out[12..14], &[8, 0]);
        assert_eq!(
            (d.sequence_number, d.acknowledgment_number),
            (7001, 9001),
            "client data, its ack translated"
        );
        fx.expect_events(&[event::FLOW_HIT, event::XLAT_6TO4, event::FWD_REDIRECT]);
        let (v, out) = fx.run1(
            Side::B,
            &with_df_always(tcp_segment(
                MAC_O4,
                mac_b,
                O4,
                SNAT4,
                64,
                (8080, p),
                tcp_flags::ACK,
                (9001, 7003),
                b"ok",
            )),
        );
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(
            out,
            tcp6_segment(
                mac_a,
                MAC_C1,
                VIP6,
                C1,
                63,
                (80, 40000),
                tcp_flags::ACK,
                (cookie.wrapping_add(1), 7003),
                b"ok"
            ),
            "origin data in IPv6, its sequence number translated"
        );
        fx.expect_events(&[event::REPLY_NAT, event::XLAT_4TO6, event::FWD_REDIRECT]);

        // A second cookie flow whose IPv4 origin refuses the SYN: its reset cannot be
        // relayed in IPv4 to the IPv6 client, and is dropped (the client times out).
        let from_c1b = |seq, ack: Option<u32>, syn| {
            tcp6_segment(
                MAC_C1,
                mac_a,
                C1,
                VIP6,
                64,
                (40001, 80),
                flags(syn, ack),
                (seq, ack.unwrap_or(0)),
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
            event::XLAT_6TO4,
            event::FWD_REDIRECT,
        ]);
        let rst = tcp_segment(
            MAC_O4,
            mac_b,
            O4,
            SNAT4,
            64,
            (8080, p2),
            tcp_flags::RST | tcp_flags::ACK,
            (0, 8001),
            &[],
        );
        let (v, _) = fx.run1(Side::B, &rst);
        assert_eq!(v, XDP_DROP, "the origin's refusal: dropped");
        fx.expect_events(&[event::COOKIE_REFUSED, event::DROP_XLAT]);
        fx.assert_events();
        println!("fixture ok: NAT64 with SYN cookies: rebuilt SYN translated, sequence numbers translated both ways");
    });
}

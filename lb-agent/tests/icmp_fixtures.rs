//! ICMP and edge packet fixtures: frames in, verdicts and frames out, through
//! `BPF_PROG_TEST_RUN`, in the same FibBed as `fixtures.rs`:
//! ```text
//!   a (10.0.1.1/24)  client side: clients 10.0.1.2/.3
//!   b (10.0.11.1/24) origin side: origin o1 10.0.11.2
//! ```
//! ICMP errors for a NATed flow are translated both ways (outer and quoted headers, every
//! checksum); a rewritten packet too big for the egress link is answered with
//! "fragmentation needed"; pings to the VIP are answered; other protocols to the VIP and
//! transit traffic are dropped (unless `route_other`).
//!
//! Expected frames are built independently (etherparse, or by hand with the checksum
//! computed here), so byte equality also proves the incremental checksum updates right;
//! every ICMP output's checksums are recomputed on top.

use std::{collections::BTreeMap, path::Path};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use lb_agent::{
    config::Config,
    dataplane::{self, Dataplane},
    reconcile::Reconciler,
};
use lb_common::{event, hash, FlowKey};
use lb_testbed::{require_prerequisites, serial, tcp_frame, FibBed, Flags, Side};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP: [u8; 4] = [10, 0, 0, 10];
const SNAT: [u8; 4] = [10, 0, 0, 1];
const C1: [u8; 4] = [10, 0, 1, 2];
const C2: [u8; 4] = [10, 0, 1, 3];
const O1: [u8; 4] = [10, 0, 11, 2];
/// A router on the client side and one on the origin side (sources of ICMP errors).
const R_CLIENT: [u8; 4] = [10, 0, 1, 254];
const R_ORIGIN: [u8; 4] = [10, 0, 11, 254];
const MAC_C1: [u8; 6] = [2, 0, 0, 0, 1, 2];
const MAC_C2: [u8; 6] = [2, 0, 0, 0, 1, 3];
const MAC_O1: [u8; 6] = [2, 0, 0, 0, 11, 2];
const MAC_RC: [u8; 6] = [2, 0, 0, 0, 1, 254];
const MAC_RO: [u8; 6] = [2, 0, 0, 0, 11, 254];
const SNAT_MIN: u16 = 61000;
const SNAT_MAX: u16 = 61001;

const CONFIG: &str = r#"
[dataplane]
interfaces = ["lo"]
snat_address = "10.0.0.1"
snat_ports = [61000, 61001]
pin_dir = "@PIN@"
flow_table_size = 4096

[[pools]]
name = "web"
origins = [{ name = "o1", address = "10.0.11.2", port = 8080 }]

[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web"]
"#;

fn first_snat_port(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> u16 {
    let key = FlowKey::tcp_v4(src, sport, dst, dport);
    let range = u32::from(SNAT_MAX - SNAT_MIN) + 1;
    SNAT_MIN + u16::try_from(hash::flow_hash(&key, hash::SEED_SNAT) % range).expect("range")
}

/// One's-complement sum of `b` (RFC 1071), folded; a valid checksummed block sums to 0xffff.
fn sum16(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    u16::try_from(s).expect("folded")
}

fn csum(b: &[u8]) -> [u8; 2] {
    (!sum16(b)).to_be_bytes()
}

/// The IPv4 packet of a frame built by `tcp_frame`, without its Ethernet header: the bytes
/// an ICMP error quotes.
fn ip_of(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

/// An ICMP frame built by etherparse: `kind`/`code`, the type-specific word `rest`, `body`.
#[expect(clippy::too_many_arguments, reason = "a frame has this many fields")]
fn icmp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, ttl)
        .icmpv4_raw(kind, code, rest);
    let mut v = Vec::new();
    b.write(&mut v, body).expect("icmp frame");
    v
}

/// The "fragmentation needed" the data path originates, built by hand: IPv4 (TOS 0xc0, no
/// DF, TTL 64) + ICMP 3/4 with `mtu` + the quoted IPv4 header and 8 bytes of TCP.
fn frag_needed(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    mtu: u16,
    quoted: &[u8],
) -> Vec<u8> {
    let quote = &quoted[..28];
    let mut ip = vec![0x45, 0xc0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c);
    let m = mtu.to_be_bytes();
    let mut icmp = vec![3, 4, 0, 0, 0, 0, m[0], m[1]];
    icmp.extend_from_slice(quote);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c);
    let mut v = dmac.to_vec();
    v.extend_from_slice(&smac);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend(ip);
    v.extend(icmp);
    v
}

/// Clears DF in a frame's IPv4 header and fixes its checksum.
fn without_df(mut v: Vec<u8>) -> Vec<u8> {
    v[14 + 6] &= !0x40;
    v[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&v[14..34]);
    v[24..26].copy_from_slice(&c);
    v
}

/// Recomputes every checksum of an output frame: IPv4; for ICMP the ICMP checksum (over the
/// quote too), the quoted IPv4 header and, when the whole quoted segment is there, its TCP
/// checksum.
fn assert_checksums(desc: &str, f: &[u8]) {
    assert_eq!(&f[12..14], &[8, 0], "{desc}: IPv4");
    assert_eq!(sum16(&f[14..34]), 0xffff, "{desc}: IPv4 header checksum");
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let l4 = &f[34..14 + tot];
    match f[23] {
        1 => {
            assert_eq!(sum16(l4), 0xffff, "{desc}: ICMP checksum");
            if l4[0] == 3 || l4[0] == 11 {
                let q = &l4[8..];
                assert_eq!(
                    sum16(&q[..20]),
                    0xffff,
                    "{desc}: quoted IPv4 header checksum"
                );
                let qlen = usize::from(u16::from_be_bytes([q[2], q[3]]));
                if q.len() >= qlen {
                    assert_eq!(
                        tcp_sum(&q[12..16], &q[16..20], &q[20..qlen]),
                        0xffff,
                        "{desc}: quoted TCP checksum"
                    );
                }
            }
        }
        6 => assert_eq!(
            tcp_sum(&f[26..30], &f[30..34], l4),
            0xffff,
            "{desc}: TCP checksum"
        ),
        p => panic!("{desc}: protocol {p}"),
    }
}

fn tcp_sum(src: &[u8], dst: &[u8], seg: &[u8]) -> u16 {
    let len = u16::try_from(seg.len()).expect("len").to_be_bytes();
    let mut b = src.to_vec();
    b.extend_from_slice(dst);
    b.extend_from_slice(&[0, 6, len[0], len[1]]);
    b.extend_from_slice(seg);
    sum16(&b)
}

struct Case {
    desc: &'static str,
    ingress: Side,
    input: Vec<u8>,
    verdict: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    /// Every event this case must count.
    events: &'static [u32],
}

fn run_cases(
    bed: &FibBed,
    prog: &mut aya::programs::Xdp,
    cases: Vec<Case>,
    expected: &mut BTreeMap<u32, u64>,
) {
    for c in cases {
        let ctx = bed.ctx(c.ingress, c.input.len());
        let mut out = vec![0u8; c.input.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&c.input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("{}: test_run: {e}", c.desc));
        out.truncate(r.data_size_out as usize);
        assert_eq!(r.return_value, c.verdict, "{}: verdict", c.desc);
        match &c.output {
            Some(want) => {
                assert_eq!(&out, want, "{}: output frame", c.desc);
                assert_checksums(c.desc, &out);
            }
            None => assert_eq!(out, c.input, "{}: frame must be unchanged", c.desc),
        }
        for e in c.events {
            *expected.entry(*e).or_default() += 1;
        }
        println!("fixture ok: {}", c.desc);
    }
}

#[test]
fn icmp_and_edge_fixtures() {
    let _serial = serial();
    require_prerequisites();
    let bed = FibBed::new(
        "ic",
        &[
            (C1, MAC_C1, Side::A),
            (C2, MAC_C2, Side::A),
            (R_CLIENT, MAC_RC, Side::A),
            (O1, MAC_O1, Side::B),
            (R_ORIGIN, MAC_RO, Side::B),
        ],
    );
    let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
    let pin = bed.pin_dir.to_str().expect("utf8").to_owned();
    let text = CONFIG.replace("@PIN@", &pin);
    let cfg = Config::parse(&text, Path::new("icmp.toml")).expect("config");
    let p1 = first_snat_port(C1, 40000, VIP, 80);
    let payload = b"GET / HTTP/1.0\r\n\r\n";

    // What we sent the origin and what we sent the client, as quoted by the routers.
    let snat_to_o = tcp_frame(mac_b, MAC_O1, SNAT, O1, 63, p1, 8080, Flags::Ack, payload);
    let vip_to_c = tcp_frame(mac_a, MAC_C1, VIP, C1, 63, 80, 40000, Flags::Ack, payload);
    // Translated quotes keep the TTL they were quoted with.
    let c_to_vip_63 = tcp_frame(MAC_C1, mac_a, C1, VIP, 63, 40000, 80, Flags::Ack, payload);
    let mtu1400 = [0, 0, 0x05, 0x78];

    let origin_side = |kind: u8, code: u8, rest: [u8; 4], quote: &[u8], want: &[u8]| {
        (
            icmp_frame(MAC_RO, mac_b, R_ORIGIN, SNAT, 64, kind, code, rest, quote),
            icmp_frame(mac_a, MAC_C1, VIP, C1, 63, kind, code, rest, want),
        )
    };
    let client_side = |kind: u8, code: u8, rest: [u8; 4], quote: &[u8], want: &[u8]| {
        (
            icmp_frame(MAC_RC, mac_a, R_CLIENT, VIP, 64, kind, code, rest, quote),
            icmp_frame(mac_b, MAC_O1, SNAT, O1, 63, kind, code, rest, want),
        )
    };
    let mut cases = vec![
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
    ];
    for (desc, kind, code, rest, full) in [
        (
            "origin side: fragmentation needed (3/4, MTU 1400), whole segment quoted: to the client from the VIP",
            3,
            4,
            mtu1400,
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
        let n = if full { snat_to_o.len() - 14 } else { 28 };
        let (input, output) = origin_side(
            kind,
            code,
            rest,
            &ip_of(&snat_to_o)[..n],
            &ip_of(&c_to_vip_63)[..n],
        );
        cases.push(Case {
            desc,
            ingress: Side::B,
            input,
            verdict: XDP_REDIRECT,
            output: Some(output),
            events: &[event::ICMP_FROM_ORIGIN, event::FWD_REDIRECT],
        });
    }
    let o_to_snat_63 = tcp_frame(mac_b, MAC_O1, O1, SNAT, 63, 8080, p1, Flags::Ack, payload);
    for (desc, kind, code, rest, full) in [
        (
            "client side: fragmentation needed (3/4, MTU 1400) to the VIP: to the origin from the SNAT address",
            3,
            4,
            mtu1400,
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
        let n = if full { vip_to_c.len() - 14 } else { 28 };
        let (input, output) = client_side(
            kind,
            code,
            rest,
            &ip_of(&vip_to_c)[..n],
            &ip_of(&o_to_snat_63)[..n],
        );
        cases.push(Case {
            desc,
            ingress: Side::A,
            input,
            verdict: XDP_REDIRECT,
            output: Some(output),
            events: &[event::ICMP_FROM_CLIENT, event::FWD_REDIRECT],
        });
    }
    let stranger = tcp_frame(mac_a, MAC_C2, VIP, C2, 63, 80, 41000, Flags::Ack, payload);
    let stranger_out = tcp_frame(mac_b, MAC_O1, SNAT, O1, 63, 61500, 8080, Flags::Ack, &[]);
    let echo_req = icmp_frame(
        MAC_C1,
        mac_a,
        C1,
        VIP,
        64,
        8,
        0,
        [0x12, 0x34, 0, 1],
        b"ping!",
    );
    cases.extend([
        Case {
            desc: "ICMP error to the VIP about a flow we do not know: dropped",
            ingress: Side::A,
            input: icmp_frame(MAC_RC, mac_a, R_CLIENT, VIP, 64, 3, 4, mtu1400, &ip_of(&stranger)),
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
                mtu1400,
                &ip_of(&vip_to_c),
            ),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_TTL],
        },
        Case {
            desc: "ICMP error to the SNAT address about no flow of ours: the host's, passed",
            ingress: Side::B,
            input: icmp_frame(MAC_RO, mac_b, R_ORIGIN, SNAT, 64, 3, 3, [0; 4], &ip_of(&stranger_out)),
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_TCP],
        },
        Case {
            desc: "ICMP error to the VIP with a quote cut inside the TCP ports: dropped",
            ingress: Side::A,
            input: icmp_frame(MAC_RC, mac_a, R_CLIENT, VIP, 64, 3, 4, mtu1400, &ip_of(&vip_to_c)[..22]),
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_ICMP_MALFORMED],
        },
        Case {
            desc: "echo request to the VIP: answered in place (XDP_TX), TTL 64",
            ingress: Side::A,
            input: echo_req.clone(),
            verdict: XDP_TX,
            output: Some(icmp_frame(mac_a, MAC_C1, VIP, C1, 64, 0, 0, [0x12, 0x34, 0, 1], b"ping!")),
            events: &[event::ICMP_ECHO_REPLY],
        },
        Case {
            desc: "echo request to the host's own address: passed to the host",
            ingress: Side::A,
            input: icmp_frame(MAC_C1, mac_a, C1, [10, 0, 1, 1], 64, 8, 0, [0, 1, 0, 1], b"x"),
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
            input: {
                let b = PacketBuilder::ethernet2(MAC_C1, mac_a).ipv4(C1, VIP, 64).udp(5000, 53);
                let mut v = Vec::new();
                b.write(&mut v, b"q").expect("udp");
                v
            },
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_VIP_OTHER_PROTO],
        },
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
            input: {
                let b = PacketBuilder::ethernet2(MAC_C1, mac_a).ipv4(C1, O1, 64).udp(5000, 53);
                let mut v = Vec::new();
                b.write(&mut v, b"q").expect("udp");
                v
            },
            verdict: XDP_DROP,
            output: None,
            events: &[event::DROP_TRANSIT],
        },
        Case {
            desc: "TCP to the host's own address: passed",
            ingress: Side::A,
            input: tcp_frame(MAC_C1, mac_a, C1, [10, 0, 1, 1], 64, 40002, 22, Flags::Syn, &[]),
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_VIP],
        },
        Case {
            desc: "UDP to the subnet's broadcast address: passed",
            ingress: Side::A,
            input: {
                let b = PacketBuilder::ethernet2(MAC_C1, [0xff; 6])
                    .ipv4(C1, [10, 0, 1, 255], 64)
                    .udp(68, 67);
                let mut v = Vec::new();
                b.write(&mut v, b"b").expect("udp");
                v
            },
            verdict: XDP_PASS,
            output: None,
            events: &[event::PASS_NOT_TCP],
        },
    ]);

    // Too big: 1460 bytes of data (1500-byte packets) against a 1280-byte link.
    let big = vec![0x5au8; 1460];
    let big_in = tcp_frame(MAC_C1, mac_a, C1, VIP, 64, 40000, 80, Flags::Ack, &big);
    let big_reply = tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, p1, Flags::Ack, &big);

    bed.ns.run(|| {
        let object = dataplane::find_object(None).expect("BPF object (cargo xtask build-ebpf)");
        let mut dp = Dataplane::load(&object, &bed.pin_dir, cfg.dataplane.flow_table_size)
            .expect("load");
        println!("verifier: lb_xdp processed {:?} instructions", dp.verified_insns());
        let mut rec = Reconciler::adopt(dp.take_maps().expect("maps")).expect("adopt");
        rec.apply(&cfg, &lb_agent::health::HealthTable::default())
            .expect("apply");
        for side in [Side::A, Side::B] {
            let i = bed.ifindex(side);
            rec.maps.tx_ports.insert(i, i, None, 0).expect("tx port");
        }
        let before = rec.maps.event_totals().expect("events");
        let mut expected: BTreeMap<u32, u64> = BTreeMap::new();
        run_cases(&bed, dp.program().expect("program"), std::mem::take(&mut cases), &mut expected);

        // The origin-side link narrows to 1280: a client's full-size packet is answered.
        bed.ns.ip(&["link", "set", &bed.b, "mtu", "1280"]);
        let too_big = vec![
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
                    MAC_C1, mac_a, SNAT, O1, 63, p1, 8080, Flags::Ack, &big,
                ))),
                events: &[event::FLOW_HIT, event::PASS_TOO_BIG_NO_DF],
            },
        ];
        run_cases(&bed, dp.program().expect("program"), too_big, &mut expected);
        bed.ns.ip(&["link", "set", &bed.b, "mtu", "1500"]);
        // The client-side link narrows instead: the origin's full-size reply is answered.
        bed.ns.ip(&["link", "set", &bed.a, "mtu", "1280"]);
        let reply_too_big = vec![Case {
            desc: "origin reply (DF) too big for the client link: fragmentation needed to the origin from the SNAT address, quoting what the origin sent",
            ingress: Side::B,
            input: big_reply.clone(),
            verdict: XDP_TX,
            output: Some(frag_needed(mac_b, MAC_O1, SNAT, O1, 1280, &ip_of(&big_reply))),
            events: &[event::REPLY_NAT, event::ICMP_FRAG_NEEDED_SENT],
        }];
        run_cases(&bed, dp.program().expect("program"), reply_too_big, &mut expected);
        bed.ns.ip(&["link", "set", &bed.a, "mtu", "1500"]);

        // route_other = true, answer_ping = false.
        let text2 = text.replace(
            "flow_table_size = 4096",
            "flow_table_size = 4096\nroute_other = true\nanswer_ping = false",
        );
        let cfg2 = Config::parse(&text2, Path::new("icmp2.toml")).expect("config 2");
        rec.apply(&cfg2, &lb_agent::health::HealthTable::default())
            .expect("apply 2");
        let phase2 = vec![
            Case {
                desc: "route_other: the transit packet is passed to the stack to be routed",
                ingress: Side::A,
                input: tcp_frame(MAC_C1, mac_a, C1, O1, 64, 40001, 22, Flags::Syn, &[]),
                verdict: XDP_PASS,
                output: None,
                events: &[event::PASS_NOT_VIP],
            },
            Case {
                desc: "answer_ping = false: the echo request to the VIP is dropped",
                ingress: Side::A,
                input: echo_req.clone(),
                verdict: XDP_DROP,
                output: None,
                events: &[event::DROP_PING],
            },
        ];
        run_cases(&bed, dp.program().expect("program"), phase2, &mut expected);

        let after = rec.maps.event_totals().expect("events");
        for (i, name) in event::NAMES.iter().enumerate() {
            if i == event::FIB_LOOKUP as usize {
                continue; // depends on the next-hop cache: next_hop.rs counts it
            }
            let want = expected
                .get(&u32::try_from(i).expect("small"))
                .copied()
                .unwrap_or(0);
            assert_eq!(after[i] - before[i], want, "event counter {name}");
        }
    });
}

//! Packet fixtures: frames in, verdicts and frames out, through `BPF_PROG_TEST_RUN`.
//!
//! The program runs inside a namespace of its own with a veth pair and permanent neighbour
//! entries, so `bpf_fib_lookup` answers deterministically:
//! ```text
//!   fa (10.0.1.1/24)  client side: clients 10.0.1.2/.3/.4, "local" origin 10.0.1.9
//!   fb (10.0.11.1/24) origin side: origin o1 10.0.11.2
//! ```
//! Expected frames are built from scratch with etherparse (which computes checksums in full),
//! so byte equality also proves the data path's incremental checksum updates right.

use std::{collections::BTreeMap, path::Path};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use lb_agent::{
    config::Config,
    dataplane::{self, Dataplane, Maps},
    reconcile::Reconciler,
};
use lb_common::{event, hash, FlowKey};
use lb_testbed::{
    require_prerequisites, serial,
    tcp_flags::{ACK, FIN, PSH, RST, SYN},
    tcp_frame, tcp_segment, FibBed, Flags, Side,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP: [u8; 4] = [10, 0, 0, 10];
const VIP2: [u8; 4] = [10, 0, 0, 11];
const SNAT: [u8; 4] = [10, 0, 0, 1];
const C1: [u8; 4] = [10, 0, 1, 2];
const C2: [u8; 4] = [10, 0, 1, 3];
const C3: [u8; 4] = [10, 0, 1, 4];
const O1: [u8; 4] = [10, 0, 11, 2];
const LOCAL_ORIGIN: [u8; 4] = [10, 0, 1, 9];
const MAC_C1: [u8; 6] = [2, 0, 0, 0, 1, 2];
const MAC_C2: [u8; 6] = [2, 0, 0, 0, 1, 3];
const MAC_C3: [u8; 6] = [2, 0, 0, 0, 1, 4];
const MAC_O1: [u8; 6] = [2, 0, 0, 0, 11, 2];
const O2: [u8; 4] = [10, 0, 11, 3];
const C4: [u8; 4] = [10, 0, 1, 5];
const C5: [u8; 4] = [10, 0, 1, 6];
const C6: [u8; 4] = [10, 0, 1, 7];
const MAC_C4: [u8; 6] = [2, 0, 0, 0, 1, 5];
const MAC_C5: [u8; 6] = [2, 0, 0, 0, 1, 6];
const MAC_C6: [u8; 6] = [2, 0, 0, 0, 1, 7];
const MAC_O2: [u8; 6] = [2, 0, 0, 0, 11, 3];
const MAC_LOCAL: [u8; 6] = [2, 0, 0, 0, 1, 9];
const SNAT_MIN: u16 = 61000;
const SNAT_MAX: u16 = 61001;

/// The SNAT port the data path tries first for a client flow (shared hash, see lb_common).
fn first_snat_port(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> u16 {
    let key = FlowKey::tcp_v4(src, sport, dst, dport);
    let range = u32::from(SNAT_MAX - SNAT_MIN) + 1;
    SNAT_MIN + u16::try_from(hash::flow_hash(&key, hash::SEED_SNAT) % range).expect("range")
}

fn other_port(p: u16) -> u16 {
    if p == SNAT_MIN {
        SNAT_MAX
    } else {
        SNAT_MIN
    }
}

/// Checks both checksums of an output frame by recomputing them independently.
fn assert_checksums(desc: &str, frame: &[u8]) {
    let p = SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("{desc}: output does not parse: {e}"));
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("{desc}: not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "{desc}: IPv4 header checksum"
    );
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("{desc}: not TCP")
    };
    let th = t.to_header();
    let want = th.calc_checksum_ipv4(&h, t.payload()).expect("checksum");
    assert_eq!(th.checksum, want, "{desc}: TCP checksum");
}

struct Case {
    desc: &'static str,
    ingress: &'static str,
    input: Vec<u8>,
    verdict: u32,
    /// `None`: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    /// The event this case must count.
    event: u32,
}

const CONFIG: &str = r#"
[dataplane]
interfaces = ["lo"]
snat_address = "10.0.0.1"
snat_ports = [61000, 61001]
snat_port_reuse_after_close = 0
pin_dir = "@PIN@"
flow_table_size = 4096

[[pools]]
name = "web"
origins = [{ name = "o1", address = "10.0.11.2", port = 8080 }]

[[pools]]
name = "local"
origins = [{ name = "l1", address = "10.0.1.9", port = 8080 }]

[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web"]

[[load_balancers]]
name = "one-armed"
address = "10.0.0.11"
port = 80
default_pools = ["local"]
"#;

/// Phase two: o1 has left pool `web`, o2 has joined it.
fn config2(c: &str) -> String {
    let out = c.replace(
        r#"origins = [{ name = "o1", address = "10.0.11.2", port = 8080 }]"#,
        r#"origins = [{ name = "o2", address = "10.0.11.3", port = 8080 }]"#,
    );
    assert_ne!(out, c, "phase-two edit applied");
    out
}

/// Runs `cases` in order; adds the events they must count to `expected`.
fn run_cases(
    prog: &mut aya::programs::Xdp,
    cases: Vec<Case>,
    ifindex: &dyn Fn(&str) -> u32,
    expected: &mut BTreeMap<u32, u64>,
) {
    for c in cases {
        let ingress = ifindex(c.ingress);
        let len = u32::try_from(c.input.len()).expect("len");
        let ctx: Vec<u8> = [0u32, len, 0, ingress, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; c.input.len() + 64];
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
        *expected.entry(c.event).or_default() += 1;
        if c.verdict == XDP_REDIRECT && c.event != event::FWD_REDIRECT {
            *expected.entry(event::FWD_REDIRECT).or_default() += 1;
        }
        println!("fixture ok: {}", c.desc);
    }
}

#[test]
fn packet_fixtures() {
    let _serial = serial();
    require_prerequisites();
    let bed = FibBed::new(
        "fx",
        &[
            (C1, MAC_C1, Side::A),
            (C2, MAC_C2, Side::A),
            (C3, MAC_C3, Side::A),
            (C4, MAC_C4, Side::A),
            (C5, MAC_C5, Side::A),
            (C6, MAC_C6, Side::A),
            (LOCAL_ORIGIN, MAC_LOCAL, Side::A),
            (O1, MAC_O1, Side::B),
            (O2, MAC_O2, Side::B),
        ],
    );
    let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
    let pin_dir = bed.pin_dir.clone();
    let cfg = Config::parse(
        &CONFIG.replace("@PIN@", pin_dir.to_str().expect("utf8")),
        Path::new("fixture.toml"),
    )
    .expect("fixture config");

    let lb_mac = mac_a; // clients send to the LB's client-side MAC
    let p1 = first_snat_port(C1, 40000, VIP, 80);
    let p2 = other_port(p1);
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
    let mut cases = vec![
        Case {
            desc: "SYN to VIP: DNAT to o1:8080, SNAT to 10.0.0.1, TTL-1, out of fb by redirect",
            ingress: "a",
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
            event: event::FWD_REDIRECT,
        },
        Case {
            desc: "SYN-ACK from o1 to the SNAT port: reverse NAT to VIP -> client, out of fa",
            ingress: "b",
            input: from_o1(p1, SYN | ACK, 5000, 1001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_c(MAC_C1, C1, SYN | ACK, 5000, 1001, &[])),
            event: event::REPLY_NAT,
        },
        Case {
            desc: "the client's ACK with data: flow-table hit, same rewrite, establishes the flow",
            ingress: "a",
            input: from_c(MAC_C1, C1, ACK | PSH, 1001, 5001, GET),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, ACK | PSH, 1001, 5001, GET)),
            event: event::FLOW_HIT,
        },
        Case {
            desc: "second client, same source port, same origin: gets the other SNAT port",
            ingress: "a",
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
            event: event::FWD_REDIRECT,
        },
        Case {
            desc: "reply to the second client's SNAT port reaches the second client",
            ingress: "b",
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
            event: event::REPLY_NAT,
        },
        Case {
            desc: "third client while both SNAT ports are held by open flows: dropped",
            ingress: "a",
            input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Syn, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_SNAT_EXHAUSTED,
        },
        Case {
            desc: "RST from the client far outside its sequence window: dropped, flow unchanged",
            ingress: "a",
            input: from_c(MAC_C1, C1, RST | ACK, 1019 + 10_000_000, 5001, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_RST_INVALID,
        },
        Case {
            desc: "RST in the client's window but arriving from the origin side: dropped",
            ingress: "b",
            input: from_c(MAC_C1, C1, RST | ACK, 1019, 5001, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_RST_INVALID,
        },
        Case {
            desc: "RST from the origin's address outside its window: dropped",
            ingress: "b",
            input: from_o1(p1, RST | ACK, 5001 + 3_000_000, 1019, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_RST_INVALID,
        },
        Case {
            desc: "FIN from the origin's address outside its window: dropped",
            ingress: "b",
            input: from_o1(p1, FIN | ACK, 5001 + 3_000_000, 1019, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_FIN_INVALID,
        },
        Case {
            desc: "FIN from the first client: forwarded; the flow is half-closed, not closed",
            ingress: "a",
            input: from_c(MAC_C1, C1, FIN | ACK, 1019, 5001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, FIN | ACK, 1019, 5001, &[])),
            event: event::FLOW_HIT,
        },
        Case {
            desc: "third client again: a half-closed flow keeps its port, still exhausted",
            ingress: "a",
            input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Syn, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_SNAT_EXHAUSTED,
        },
        Case {
            desc: "the origin's answer and FIN after the client's half-close: reaches the client, closes the flow",
            ingress: "b",
            input: from_o1(p1, FIN | ACK | PSH, 5001, 1020, b"hello"),
            verdict: XDP_REDIRECT,
            output: Some(to_c(MAC_C1, C1, FIN | ACK | PSH, 5001, 1020, b"hello")),
            event: event::REPLY_NAT,
        },
        Case {
            desc: "third client again: takes over the closed flow's SNAT port",
            ingress: "a",
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
            event: event::SNAT_RECYCLED,
        },
        Case {
            desc: "reply on the recycled port goes to the third client, not the first",
            ingress: "b",
            input: from_o1(p1, SYN | ACK, 5000, 1001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_c(MAC_C3, C3, SYN | ACK, 5000, 1001, &[])),
            event: event::REPLY_NAT,
        },
        Case {
            desc: "the first client's last ACK after its flow is gone: dropped, nothing created",
            ingress: "a",
            input: from_c(MAC_C1, C1, ACK, 1020, 5007, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_NO_FLOW,
        },
        Case {
            desc: "the third client's ACK establishes its flow",
            ingress: "a",
            input: from_c(MAC_C3, C3, ACK, 1001, 5001, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, ACK, 1001, 5001, &[])),
            event: event::FLOW_HIT,
        },
        Case {
            desc: "a SYN on the third client's established flow: to its origin (challenge ACK), flow kept",
            ingress: "a",
            input: from_c(MAC_C3, C3, SYN, 777_000, 0, &[]),
            verdict: XDP_REDIRECT,
            output: Some(to_o1(p1, SYN, 777_000, 0, &[])),
            event: event::SYN_ON_ESTABLISHED,
        },
        Case {
            desc: "a segment without flags: dropped",
            ingress: "a",
            input: from_c(MAC_C4, C4, 0, 1, 0, b"x"),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_BAD_FLAGS,
        },
        Case {
            desc: "SYN with FIN: dropped",
            ingress: "a",
            input: from_c(MAC_C4, C4, SYN | FIN, 1, 0, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_BAD_FLAGS,
        },
        Case {
            desc: "an ACK of no known flow: dropped, no state (no SNAT port) is taken",
            ingress: "a",
            input: from_c(MAC_C4, C4, ACK, 1, 1, b"x"),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_NO_FLOW,
        },
        Case {
            desc: "a FIN of no known flow: dropped",
            ingress: "a",
            input: from_c(MAC_C4, C4, FIN | ACK, 1, 1, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_NO_FLOW,
        },
        Case {
            desc: "VIP whose origin sits behind the ingress interface: XDP_TX",
            ingress: "a",
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
            event: event::FWD_TX,
        },
        Case {
            desc: "TCP to an address that is no VIP: passed untouched",
            ingress: "a",
            input: tcp_frame(
                MAC_C1,
                lb_mac,
                C1,
                [10, 0, 1, 1],
                64,
                40002,
                22,
                Flags::Syn,
                &[],
            ),
            verdict: XDP_PASS,
            output: None,
            event: event::PASS_NOT_VIP,
        },
        Case {
            desc: "TCP to the VIP address on a port that is no VIP: passed untouched",
            ingress: "a",
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40003, 443, Flags::Syn, &[]),
            verdict: XDP_PASS,
            output: None,
            event: event::PASS_NOT_VIP,
        },
        Case {
            desc: "reply-shaped packet to a SNAT port no flow holds: passed (the stack resets it)",
            ingress: "b",
            input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, 61500, Flags::Ack, &[]),
            verdict: XDP_PASS,
            output: None,
            event: event::PASS_NOT_VIP,
        },
        Case {
            desc: "UDP to the VIP: dropped, a VIP address serves TCP only",
            ingress: "a",
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
            event: event::DROP_VIP_OTHER_PROTO,
        },
        Case {
            desc: "ARP request: passed untouched",
            ingress: "a",
            input: {
                let mut v = vec![0xff; 6];
                v.extend_from_slice(&MAC_C1);
                v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                v.extend_from_slice(&MAC_C1);
                v.extend_from_slice(&C1);
                v.extend_from_slice(&[0; 6]);
                v.extend_from_slice(&[10, 0, 1, 1]);
                v
            },
            verdict: XDP_PASS,
            output: None,
            event: event::PASS_NOT_IPV4,
        },
        Case {
            desc: "IPv6 TCP: passed untouched (IPv6 is not forwarded yet)",
            ingress: "a",
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
            event: event::PASS_NOT_IPV4,
        },
        Case {
            desc: "frame cut inside the IPv4 header: passed, the stack drops it",
            ingress: "a",
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40004, 80, Flags::Syn, &[])[..14 + 12]
                .to_vec(),
            verdict: XDP_PASS,
            output: None,
            event: event::PASS_MALFORMED,
        },
        Case {
            desc: "to the VIP with the TCP header cut short: dropped",
            ingress: "a",
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40005, 80, Flags::Syn, &[])
                [..14 + 20 + 10]
                .to_vec(),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_MALFORMED_TCP,
        },
        Case {
            desc: "to the VIP with IPv4 options: dropped",
            ingress: "a",
            input: {
                let mut v = tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40006, 80, Flags::Syn, &[]);
                v[14] = 0x46; // IHL 6: four bytes of options
                v.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
                v
            },
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_IP_OPTIONS,
        },
        Case {
            desc: "to the VIP, a fragment (MF set): dropped",
            ingress: "a",
            input: {
                let mut v = tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40007, 80, Flags::Syn, &[]);
                v[14 + 6] |= 0x20;
                v
            },
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_FRAGMENT,
        },
        Case {
            desc: "to the VIP with TTL 1: dropped instead of forwarded with TTL 0",
            ingress: "a",
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 1, 40008, 80, Flags::Syn, &[]),
            verdict: XDP_DROP,
            output: None,
            event: event::DROP_TTL,
        },
    ];

    bed.ns.run(|| {
        let object = dataplane::find_object(None).expect("BPF object (cargo xtask build-ebpf)");
        let mut dp =
            Dataplane::load(&object, &pin_dir, cfg.dataplane.flow_table_size).expect("load");
        match dp.program().and_then(|p| {
            p.info()
                .map_err(|e| lb_agent::dataplane::DataplaneError::Host(e.to_string()))
        }) {
            Ok(info) => println!(
                "verifier: lb_xdp processed {:?} instructions",
                info.verified_instruction_count()
            ),
            Err(e) => println!("verifier: info failed: {e}"),
        }
        let mut rec = Reconciler::adopt(dp.take_maps().expect("maps")).expect("adopt");
        rec.apply(&cfg, &lb_agent::health::HealthTable::default())
            .expect("apply");
        let (ia, ib) = (bed.ifindex(Side::A), bed.ifindex(Side::B));
        for i in [ia, ib] {
            rec.maps.tx_ports.insert(i, i, None, 0).expect("tx port");
        }
        let before = rec.maps.event_totals().expect("events");
        let prog = dp.program().expect("program");
        let mut expected_events: BTreeMap<u32, u64> = BTreeMap::new();
        let by_side = |side: &str| if side == "a" { ia } else { ib };
        run_cases(prog, std::mem::take(&mut cases), &by_side, &mut expected_events);
        let o1 = rec
            .assignment
            .origins
            .iter()
            .find(|(k, _)| k.name == "o1")
            .map(|(_, id)| *id)
            .expect("o1 id");

        // Phase two: the pool changes under established flows.
        let text2 = config2(&CONFIG.replace("@PIN@", pin_dir.to_str().expect("utf8")));
        let cfg2 = Config::parse(&text2, Path::new("fixture2.toml")).expect("phase-two config");
        rec.apply(&cfg2, &lb_agent::health::HealthTable::default()).expect("apply phase two");
        let prog = dp.program().expect("program");
        let p_c2 = first_snat_port(C2, 40000, VIP, 80);
        let phase2 = vec![
            Case {
                desc: "SYN reusing client 2's tuple after o1 left the ring: rehashed to o2, old SNAT port released",
                ingress: "a",
                input: tcp_frame(MAC_C2, lb_mac, C2, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c2, 8080, Flags::Syn, &[])),
                event: event::SYN_REHASHED,
            },
            Case {
                desc: "a retransmitted SYN keeps the new flow (the ring still names o2)",
                ingress: "a",
                input: tcp_frame(MAC_C2, lb_mac, C2, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c2, 8080, Flags::Syn, &[])),
                event: event::FLOW_HIT,
            },
            Case {
                desc: "data on client 3's established flow still reaches o1, which left the config",
                ingress: "a",
                input: tcp_frame(MAC_C3, lb_mac, C3, VIP, 64, 40000, 80, Flags::Ack, b"more"),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O1, SNAT, O1, 63, p1, 8080, Flags::Ack, b"more")),
                event: event::FLOW_HIT,
            },
        ];
        run_cases(prog, phase2, &by_side, &mut expected_events);
        let released = FlowKey::tcp_v4(O1, 8080, SNAT, p2);
        assert!(rec.maps.rev_flows.get(&released, 0).is_err(), "client 2's old SNAT port on o1 was released");

        // Phase three: a long grace period for closed flows; o2's two SNAT ports fill up.
        let text3 = text2.replace("snat_port_reuse_after_close = 0", "snat_port_reuse_after_close = 3600");
        assert_ne!(text3, text2, "phase-three edit applied");
        let cfg3 = Config::parse(&text3, Path::new("fixture3.toml")).expect("phase-three config");
        rec.apply(&cfg3, &lb_agent::health::HealthTable::default()).expect("apply phase three");
        let prog = dp.program().expect("program");
        let p_c4 = other_port(p_c2);
        let phase3 = vec![
            Case {
                desc: "client 4 takes o2's free SNAT port",
                ingress: "a",
                input: tcp_frame(MAC_C4, lb_mac, C4, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Syn, &[])),
                event: event::FWD_REDIRECT,
            },
            Case {
                desc: "o2 answers client 4",
                ingress: "b",
                input: tcp_frame(MAC_O2, mac_b, O2, SNAT, 64, 8080, p_c4, Flags::SynAck, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_a, MAC_C4, VIP, C4, 63, 80, 40000, Flags::SynAck, &[])),
                event: event::REPLY_NAT,
            },
            Case {
                desc: "client 4 closes (FIN)",
                ingress: "a",
                input: tcp_frame(MAC_C4, lb_mac, C4, VIP, 64, 40000, 80, Flags::Fin, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Fin, &[])),
                event: event::FLOW_HIT,
            },
            Case {
                desc: "o2 closes too: the flow is closed, within the grace period",
                ingress: "b",
                input: tcp_frame(MAC_O2, mac_b, O2, SNAT, 64, 8080, p_c4, Flags::Fin, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_a, MAC_C4, VIP, C4, 63, 80, 40000, Flags::Fin, &[])),
                event: event::REPLY_NAT,
            },
            Case {
                desc: "client 5 with every port held: takes the closed flow's port early, not the open one",
                ingress: "a",
                input: tcp_frame(MAC_C5, lb_mac, C5, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Syn, &[])),
                event: event::SNAT_REUSED_EARLY,
            },
            Case {
                desc: "client 6 with both ports held by open flows: dropped, open flows are never taken",
                ingress: "a",
                input: tcp_frame(MAC_C6, lb_mac, C6, VIP, 64, 40000, 80, Flags::Syn, &[]),
                verdict: XDP_DROP,
                output: None,
                event: event::DROP_SNAT_EXHAUSTED,
            },
        ];
        run_cases(prog, phase3, &by_side, &mut expected_events);

        // Phase four: a reload narrows snat_ports away from the ports flows already hold;
        // their replies must still come back (the reverse table decides, not the range).
        let text4 = text3.replace("snat_ports = [61000, 61001]", "snat_ports = [62000, 62001]");
        assert_ne!(text4, text3, "phase-four edit applied");
        let cfg4 = Config::parse(&text4, Path::new("fixture4.toml")).expect("phase-four config");
        rec.apply(&cfg4, &lb_agent::health::HealthTable::default()).expect("apply phase four");
        let prog = dp.program().expect("program");
        let phase4 = vec![Case {
            desc: "after the SNAT range moved, a reply on an old port still reaches its client",
            ingress: "b",
            input: tcp_frame(MAC_O2, mac_b, O2, SNAT, 64, 8080, p_c4, Flags::SynAck, &[]),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(mac_a, MAC_C5, VIP, C5, 63, 80, 40000, Flags::SynAck, &[])),
            event: event::REPLY_NAT,
        }];
        run_cases(prog, phase4, &by_side, &mut expected_events);

        // Counters: every case counted exactly where the table says.
        let after = rec.maps.event_totals().expect("events");
        for (i, name) in event::NAMES.iter().enumerate() {
            let got = after[i] - before[i];
            let want = expected_events
                .get(&u32::try_from(i).expect("small"))
                .copied()
                .unwrap_or(0);
            assert_eq!(got, want, "event counter {name}");
        }
        let c = Maps::counters(&rec.maps.origin_stats, o1).expect("origin counters");
        // New flows on o1: clients 1, 2 and 3 (on the recycled port); the TTL-1 packet made none.
        assert_eq!(c.new_flows, 3, "o1 new flows: {c:?}");
        // C1: SYN, ACK+GET, FIN; C2: SYN; C3: SYN, ACK, SYN on established, data in phase 2.
        assert_eq!(c.packets, 8, "o1 forwarded packets: {c:?}");
        // SYN-ACKs to C1, C2 and C3, and o1's FIN to C1.
        assert_eq!(c.reply_packets, 4, "o1 reply packets: {c:?}");
        // Client 1's flow was forgotten when its port was recycled, and C4's never existed.
        for (gone, who) in [(C1, "client 1"), (C4, "client 4's forged segments")] {
            assert!(
                rec.maps.flows.get(&FlowKey::tcp_v4(gone, 40000, VIP, 80), 0).is_err(),
                "{who}: no flow should exist"
            );
        }

        // Phase five: half a pair. Client 3's flow-table half is lost; o1's next reply
        // restores it from the reverse half and still reaches client 3.
        let c3 = FlowKey::tcp_v4(C3, 40000, VIP, 80);
        rec.maps.flows.remove(&c3).expect("remove client 3's half");
        let prog = dp.program().expect("program");
        let mut restored = BTreeMap::new();
        run_cases(
            prog,
            vec![Case {
                desc: "a reply whose flow-table half is missing: restored, reaches client 3",
                ingress: "b",
                input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, p1, Flags::Ack, b"data"),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_a, MAC_C3, VIP, C3, 63, 80, 40000, Flags::Ack, b"data")),
                event: event::REPLY_NAT,
            }],
            &by_side,
            &mut restored,
        );
        let f = rec.maps.flows.get(&c3, 0).expect("client 3's half restored");
        assert_eq!((f.snat_port, f.origin_port), (p1.to_be(), 8080u16.to_be()), "restored half: {f:?}");

        // Phase six: timeouts. With a 1 s SYN timeout, client 5's unfinished handshake
        // (SYN and SYN-ACK, no ACK) expires: its next segment is dropped and the pair removed.
        let text6 = text4.replace("flow_table_size = 4096", "flow_table_size = 4096\ntcp_timeouts = { syn = 1, half_closed = 1 }");
        assert_ne!(text6, text4, "phase-six edit applied");
        let cfg6 = Config::parse(&text6, Path::new("fixture6.toml")).expect("phase-six config");
        rec.apply(&cfg6, &lb_agent::health::HealthTable::default()).expect("apply phase six");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let prog = dp.program().expect("program");
        run_cases(
            prog,
            vec![Case {
                desc: "an ACK on a handshake idle past the SYN timeout: dropped, pair removed",
                ingress: "a",
                input: tcp_frame(MAC_C5, lb_mac, C5, VIP, 64, 40000, 80, Flags::Ack, &[]),
                verdict: XDP_DROP,
                output: None,
                event: event::DROP_EXPIRED,
            }],
            &by_side,
            &mut restored,
        );
        assert!(
            rec.maps.flows.get(&FlowKey::tcp_v4(C5, 40000, VIP, 80), 0).is_err()
                && rec.maps.rev_flows.get(&FlowKey::tcp_v4(O2, 8080, SNAT, p_c4), 0).is_err(),
            "client 5's expired pair is removed"
        );
        // Phase seven: SYN cookies for every SYN without a flow (syn_cookies = "always").
        let text7 = text6.replace("flow_table_size = 4096", "flow_table_size = 4096\nsyn_cookies = \"always\"");
        assert_ne!(text7, text6, "phase-seven edit applied");
        let cfg7 = Config::parse(&text7, Path::new("fixture7.toml")).expect("phase-seven config");
        rec.apply(&cfg7, &lb_agent::health::HealthTable::default()).expect("apply phase seven");
        let before7 = rec.maps.event_totals().expect("events");
        let prog = dp.program().expect("program");
        let run1 = |prog: &mut aya::programs::Xdp, side: &str, input: &[u8]| -> (u32, Vec<u8>) {
            let len = u32::try_from(input.len()).expect("len");
            let ctx: Vec<u8> = [0u32, len, 0, by_side(side), 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect();
            let mut out = vec![0u8; input.len() + 64];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::default()
                })
                .expect("test_run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        let tcp_of = |frame: &[u8]| -> etherparse::TcpHeader {
            assert_checksums("cookie case", frame);
            let p = SlicedPacket::from_ethernet(frame).expect("parses");
            match p.transport {
                Some(TransportSlice::Tcp(t)) => t.to_header(),
                other => panic!("not TCP: {other:?}"),
            }
        };
        // The SYN is answered in place with a cookie SYN-ACK; no flow is made.
        let syn6 = tcp_segment(MAC_C6, lb_mac, C6, VIP, 64, (40000, 80), SYN, (7000, 0), &[]);
        let (v, out) = run1(prog, "a", &syn6);
        assert_eq!(v, XDP_REDIRECT, "cookie SYN-ACK: verdict (a redirect back out of the ingress)");
        let synack = tcp_of(&out);
        assert!(synack.syn && synack.ack && synack.acknowledgment_number == 7001, "cookie SYN-ACK: {synack:?}");
        assert_eq!((synack.source_port, synack.destination_port), (80, 40000));
        assert_eq!(&out[0..6], &MAC_C6, "back to the client's MAC");
        assert!(rec.maps.flows.get(&FlowKey::tcp_v4(C6, 40000, VIP, 80), 0).is_err(), "no state for a cookie SYN");
        let cookie = synack.sequence_number;
        // A forged ACK with a wrong cookie: dropped.
        let (v, _) = run1(prog, "a", &from_c(MAC_C5, C5, ACK, 7001, cookie.wrapping_add(77), &[]));
        assert_eq!(v, XDP_DROP, "ACK with a wrong cookie");
        // The client's ACK returns the cookie: a flow, and the ACK becomes the SYN to o2.
        let (v, out) = run1(prog, "a", &from_c(MAC_C6, C6, ACK, 7001, cookie.wrapping_add(1), &[]));
        assert_eq!(v, XDP_REDIRECT, "cookie ACK becomes the SYN to the origin");
        let syn_o = tcp_of(&out);
        assert!(syn_o.syn && !syn_o.ack && syn_o.sequence_number == 7000, "SYN to the origin: {syn_o:?}");
        assert_eq!(syn_o.destination_port, 8080);
        let p7 = syn_o.source_port;
        // Data from the client before o2 has answered: becomes the SYN again (the first
        // may have been lost); the client retransmits its data.
        let (v, out) = run1(prog, "a", &from_c(MAC_C6, C6, ACK | PSH, 7001, cookie.wrapping_add(1), b"hi"));
        assert_eq!(v, XDP_REDIRECT, "client data while the origin has not answered");
        let again = tcp_of(&out);
        assert!(again.syn && !again.ack && again.sequence_number == 7000 && again.source_port == p7, "SYN sent again: {again:?}");
        // o2's SYN-ACK becomes our ACK back to o2.
        let (v, out) = run1(prog, "b", &tcp_segment(MAC_O2, mac_b, O2, SNAT, 64, (8080, p7), SYN | ACK, (9000, 7001), &[]));
        assert_eq!(v, XDP_REDIRECT, "origin SYN-ACK: answered with our ACK (back out of the ingress)");
        assert_eq!(out, tcp_segment(mac_b, MAC_O2, SNAT, O2, 64, (p7, 8080), ACK, (7001, 9001), &[]), "ACK to the origin");
        // From now on sequence numbers are translated between the cookie and o2's ISN.
        let (v, out) = run1(prog, "a", &from_c(MAC_C6, C6, ACK | PSH, 7001, cookie.wrapping_add(1), b"hi"));
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(out, tcp_segment(mac_b, MAC_O2, SNAT, O2, 63, (p7, 8080), ACK | PSH, (7001, 9001), b"hi"), "client data, ack translated");
        let (v, out) = run1(prog, "b", &tcp_segment(MAC_O2, mac_b, O2, SNAT, 64, (8080, p7), ACK | PSH, (9001, 7003), b"yo"));
        assert_eq!(v, XDP_REDIRECT);
        assert_eq!(out, tcp_segment(mac_a, MAC_C6, VIP, C6, 63, (80, 40000), ACK | PSH, (cookie.wrapping_add(1), 7003), b"yo"), "origin data, seq translated");
        let after7 = rec.maps.event_totals().expect("events");
        for (e, n) in [
            (event::SYN_COOKIE_SENT, 1),
            (event::DROP_COOKIE_INVALID, 1),
            (event::SYN_COOKIE_OK, 1),
            (event::COOKIE_SYN_RESENT, 1),
            (event::COOKIE_ORIGIN_ACK, 1),
        ] {
            assert_eq!(after7[e as usize] - before7[e as usize], n, "{}", event::NAMES[e as usize]);
        }

        let last = before7;
        for (e, n) in [
            (event::PAIR_RESTORED, 1),
            (event::REPLY_NAT, 1),
            (event::FWD_REDIRECT, 1),
            (event::DROP_EXPIRED, 1),
        ] {
            assert_eq!(last[e as usize] - after[e as usize], n, "{}", event::NAMES[e as usize]);
        }
    });
}

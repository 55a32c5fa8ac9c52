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
use lb_testbed::{require_prerequisites, serial, tcp_frame, FibBed, Flags, Side};

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
            desc: "data on the established flow: flow-table hit, same rewrite",
            ingress: "a",
            input: tcp_frame(
                MAC_C1,
                lb_mac,
                C1,
                VIP,
                64,
                40000,
                80,
                Flags::Ack,
                b"GET / HTTP/1.0\r\n\r\n",
            ),
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
                b"GET / HTTP/1.0\r\n\r\n",
            )),
            event: event::FLOW_HIT,
        },
        Case {
            desc: "SYN-ACK from o1 to the SNAT port: reverse NAT to VIP -> client, out of fa",
            ingress: "b",
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
            event: event::REPLY_NAT,
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
            desc: "FIN from the first client: forwarded, marks its flow closing",
            ingress: "a",
            input: tcp_frame(MAC_C1, lb_mac, C1, VIP, 64, 40000, 80, Flags::Fin, &[]),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(
                mac_b,
                MAC_O1,
                SNAT,
                O1,
                63,
                p1,
                8080,
                Flags::Fin,
                &[],
            )),
            event: event::FLOW_HIT,
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
            input: tcp_frame(MAC_O1, mac_b, O1, SNAT, 64, 8080, p1, Flags::SynAck, &[]),
            verdict: XDP_REDIRECT,
            output: Some(tcp_frame(
                mac_a,
                MAC_C3,
                VIP,
                C3,
                63,
                80,
                40000,
                Flags::SynAck,
                &[],
            )),
            event: event::REPLY_NAT,
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
                desc: "client 4 closes (FIN): its port is closing, within the grace period",
                ingress: "a",
                input: tcp_frame(MAC_C4, lb_mac, C4, VIP, 64, 40000, 80, Flags::Fin, &[]),
                verdict: XDP_REDIRECT,
                output: Some(tcp_frame(mac_b, MAC_O2, SNAT, O2, 63, p_c4, 8080, Flags::Fin, &[])),
                event: event::FLOW_HIT,
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
        assert_eq!(c.packets, 6, "o1 forwarded packets: {c:?}");
        assert_eq!(c.reply_packets, 3, "o1 reply packets: {c:?}");
        // Client 1's flow was forgotten when its port was recycled.
        let gone = FlowKey::tcp_v4(C1, 40000, VIP, 80);
        assert!(
            rec.maps.flows.get(&gone, 0).is_err(),
            "client 1's flow should be gone after recycling"
        );
    });
}

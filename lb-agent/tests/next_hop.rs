//! The next-hop cache (`lb_common::NextHop`): a flow's packets reuse the next hop the FIB
//! gave an earlier packet of the same direction, and look it up again when it may be wrong:
//! a longer packet than any it passed (the FIB lookup is also the MTU check), a generation
//! bump from the agent (links, routes or neighbours changed), or age. Frames in, frames and
//! counters out, through `BPF_PROG_TEST_RUN` in a FibBed:
//! ```text
//!   a (10.0.1.1/24)  client side: client 10.0.1.2
//!   b (10.0.11.1/24) origin side: origin o1 10.0.11.2
//! ```

use aya::programs::{TestRun, TestRunOptions};
use lb_agent::{
    config::Config,
    dataplane::{self, Dataplane},
    reconcile::Reconciler,
};
use lb_common::{event, hash, v4_mapped, FlowKey, NH_MAX_AGE};
use lb_testbed::{
    require_prerequisites, serial, tcp_flags::ACK, tcp_flags::SYN, tcp_segment, FibBed, Side,
};

const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const VIP: [u8; 4] = [10, 0, 0, 10];
const SNAT: [u8; 4] = [10, 0, 0, 1];
const C1: [u8; 4] = [10, 0, 1, 2];
const O1: [u8; 4] = [10, 0, 11, 2];
const MAC_C1: [u8; 6] = [2, 0, 0, 0, 1, 2];
const MAC_O1: [u8; 6] = [2, 0, 0, 0, 11, 2];
/// o1's MAC after it "moves" (a replaced NIC, a failover of its gateway).
const MAC_O1_NEW: [u8; 6] = [2, 0, 0, 0, 11, 0x22];
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

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn next_hop_cache() {
    let _serial = serial();
    require_prerequisites();
    let bed = FibBed::new("nh", &[(C1, MAC_C1, Side::A), (O1, MAC_O1, Side::B)]);
    let cfg = Config::parse(
        &CONFIG.replace("@PIN@", &bed.pin_dir.display().to_string()),
        std::path::Path::new("next_hop.toml"),
    )
    .expect("config");
    let (mac_a, mac_b) = (bed.mac_a, bed.mac_b);
    let key = FlowKey::tcp_v4(C1, 40000, VIP, 80);
    let range = u32::from(SNAT_MAX - SNAT_MIN) + 1;
    let port =
        SNAT_MIN + u16::try_from(hash::flow_hash(&key, hash::SEED_SNAT) % range).expect("in range");
    // Client segments after the handshake, with `n` bytes of data.
    let from_client = |seq: u32, n: usize| {
        tcp_segment(
            MAC_C1,
            mac_a,
            C1,
            VIP,
            64,
            (40000, 80),
            ACK,
            (seq, 5001),
            &vec![b'c'; n],
        )
    };
    let to_origin = |dmac: [u8; 6], seq: u32, n: usize| {
        tcp_segment(
            mac_b,
            dmac,
            SNAT,
            O1,
            63,
            (port, 8080),
            ACK,
            (seq, 5001),
            &vec![b'c'; n],
        )
    };
    let from_origin = |seq: u32, n: usize| {
        tcp_segment(
            MAC_O1,
            mac_b,
            O1,
            SNAT,
            64,
            (8080, port),
            ACK,
            (seq, 1001),
            &vec![b'o'; n],
        )
    };
    let to_client = |seq: u32, n: usize| {
        tcp_segment(
            mac_a,
            MAC_C1,
            VIP,
            C1,
            63,
            (80, 40000),
            ACK,
            (seq, 1001),
            &vec![b'o'; n],
        )
    };

    bed.ns.run(|| {
        let object = dataplane::find_object(None).expect("BPF object (cargo xtask build-ebpf)");
        let mut dp =
            Dataplane::load(&object, &bed.pin_dir, cfg.dataplane.flow_table_size).expect("load");
        let mut rec = Reconciler::adopt(dp.take_maps().expect("maps")).expect("adopt");
        rec.apply(&cfg, &lb_agent::health::HealthTable::default())
            .expect("apply");
        for side in [Side::A, Side::B] {
            let i = bed.ifindex(side);
            rec.maps.tx_ports.insert(i, i, None, 0).expect("tx port");
        }
        let prog = dp.program().expect("program");
        // Runs one frame; returns the verdict, the frame out and how many FIB lookups it took.
        let run = |rec: &Reconciler, side: Side, input: &[u8]| {
            let before = rec.maps.event_totals().expect("events")[event::FIB_LOOKUP as usize];
            let mut out = vec![0u8; input.len() + 64];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ctx_in: Some(&bed.ctx(side, input.len())),
                    ..TestRunOptions::default()
                })
                .expect("test_run");
            out.truncate(r.data_size_out as usize);
            let after = rec.maps.event_totals().expect("events")[event::FIB_LOOKUP as usize];
            (r.return_value, out, after - before)
        };

        // The handshake: each direction's first packet looks up its next hop.
        let syn = tcp_segment(MAC_C1, mac_a, C1, VIP, 64, (40000, 80), SYN, (1000, 0), &[]);
        let (v, out, fib) = run(&rec, Side::A, &syn);
        assert_eq!(v, XDP_REDIRECT, "SYN forwarded");
        assert_eq!(
            out,
            tcp_segment(
                mac_b,
                MAC_O1,
                SNAT,
                O1,
                63,
                (port, 8080),
                SYN,
                (1000, 0),
                &[]
            )
        );
        assert_eq!(fib, 1, "a new flow has no cached next hop yet");
        let synack = tcp_segment(
            MAC_O1,
            mac_b,
            O1,
            SNAT,
            64,
            (8080, port),
            SYN | ACK,
            (5000, 1001),
            &[],
        );
        let (v, _, fib) = run(&rec, Side::B, &synack);
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "SYN-ACK: the reply direction's first lookup"
        );

        // Client -> origin: one lookup fills the flow entry's cache, the next packets use it.
        let (v, out, fib) = run(&rec, Side::A, &from_client(1001, 100));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "first packet on the flow entry"
        );
        assert_eq!(out, to_origin(MAC_O1, 1001, 100));
        let o1 = rec.maps.flows.get(&key, 0).expect("flow entry").origin_id;
        let c = rec.maps.origin_nh.get(&o1, 0).expect("ORIGIN_NH entry");
        assert_eq!(
            (c.addr, c.nh.ifindex, c.nh.smac, c.nh.dmac, c.nh.ok_len),
            (v4_mapped(O1), bed.ifindex_b, mac_b, MAC_O1, 20 + 20 + 100),
            "o1's cached next hop: {c:?}"
        );
        for (i, n) in [(1101u32, 100usize), (1201, 40), (1241, 0)] {
            let (v, out, fib) = run(&rec, Side::A, &from_client(i, n));
            assert_eq!((v, fib), (XDP_REDIRECT, 0), "{n} bytes: cached, no lookup");
            assert_eq!(
                out,
                to_origin(MAC_O1, i, n),
                "{n} bytes: the same frame as looked up"
            );
        }
        // Longer than any packet the lookup passed: looked up (the MTU check), then cached.
        let (v, out, fib) = run(&rec, Side::A, &from_client(1241, 1000));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "a longer packet is checked by the FIB"
        );
        assert_eq!(out, to_origin(MAC_O1, 1241, 1000));
        let (v, _, fib) = run(&rec, Side::A, &from_client(2241, 1000));
        assert_eq!((v, fib), (XDP_REDIRECT, 0), "the same length again: cached");

        // Another client's new flow to o1 shares o1's cached next hop: its SYN skips the FIB.
        let syn2 = tcp_segment(MAC_C1, mac_a, C1, VIP, 64, (40001, 80), SYN, (7000, 0), &[]);
        let (v, out, fib) = run(&rec, Side::A, &syn2);
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 0),
            "a new flow to a known origin: cached"
        );
        assert_eq!(
            &out[..12],
            &[MAC_O1, mac_b].concat()[..],
            "to o1's MAC from b's"
        );

        // An origin id the agent gave to another origin while this flow lives on: the entry
        // names the other address, so the flow looks up its own (and takes the entry).
        let mut stolen = rec.maps.origin_nh.get(&o1, 0).expect("ORIGIN_NH entry");
        stolen.addr = v4_mapped([10, 0, 11, 99]);
        stolen.nh.dmac = [2, 0, 0, 0, 11, 99];
        rec.maps
            .origin_nh
            .set(o1, stolen, 0)
            .expect("write ORIGIN_NH");
        let (v, out, fib) = run(&rec, Side::A, &from_client(2241, 0));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "another origin's entry: looked up"
        );
        assert_eq!(out, to_origin(MAC_O1, 2241, 0), "to o1's own MAC");
        let (v, out, fib) = run(&rec, Side::A, &from_client(2241, 1000));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "the entry restarted from a short packet"
        );
        assert_eq!(out, to_origin(MAC_O1, 2241, 1000));

        // Origin -> client the same way, in the reverse entry.
        let (v, out, fib) = run(&rec, Side::B, &from_origin(5001, 200));
        assert_eq!((v, fib), (XDP_REDIRECT, 1));
        assert_eq!(out, to_client(5001, 200));
        let (v, out, fib) = run(&rec, Side::B, &from_origin(5201, 200));
        assert_eq!((v, fib), (XDP_REDIRECT, 0), "reply: cached");
        assert_eq!(out, to_client(5201, 200));

        // o1 moves to another MAC. The agent bumps the generation when the kernel says a
        // neighbour changed (netwatch.rs); after that the new MAC is used at once.
        bed.ns.ip(&[
            "neigh",
            "replace",
            "10.0.11.2",
            "lladdr",
            &mac(MAC_O1_NEW),
            "dev",
            &bed.b,
            "nud",
            "permanent",
        ]);
        rec.next_hops_changed().expect("generation bump");
        let (v, out, fib) = run(&rec, Side::A, &from_client(3241, 100));
        assert_eq!((v, fib), (XDP_REDIRECT, 1), "after a bump: looked up again");
        assert_eq!(out, to_origin(MAC_O1_NEW, 3241, 100), "to o1's new MAC");
        let (v, out, fib) = run(&rec, Side::A, &from_client(3341, 100));
        assert_eq!((v, fib), (XDP_REDIRECT, 0));
        assert_eq!(out, to_origin(MAC_O1_NEW, 3341, 100));
        let (_, _, fib) = run(&rec, Side::B, &from_origin(5401, 200));
        assert_eq!(fib, 1, "the bump also reaches the reply direction's cache");

        // The client-side link narrows after the reply direction cached 240-byte packets at
        // MTU 1500: with the bump, a reply too big for it is answered, not sent.
        bed.ns.ip(&["link", "set", &bed.a, "mtu", "1280"]);
        rec.next_hops_changed().expect("generation bump");
        let (v, _, _) = run(&rec, Side::B, &from_origin(5601, 200));
        assert_eq!(v, XDP_REDIRECT, "a small reply still fits");
        let (v, out, _) = run(&rec, Side::B, &from_origin(5801, 1400));
        assert_eq!(
            v, XDP_TX,
            "a reply too big for the narrowed link: fragmentation needed"
        );
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert_eq!(
            (out[23], out[34], out[35]),
            (1, 3, 4),
            "ICMP 3/4: {out:02x?}"
        );
        bed.ns.ip(&["link", "set", &bed.a, "mtu", "1500"]);
        rec.next_hops_changed().expect("generation bump");

        // Without any bump, a cached next hop is looked up again once it is older than
        // NH_MAX_AGE seconds (the bound when a change notification is missed).
        let (_, _, fib) = run(&rec, Side::A, &from_client(3441, 100));
        assert_eq!(fib, 1, "after the last bump");
        let (_, _, fib) = run(&rec, Side::A, &from_client(3541, 100));
        assert_eq!(fib, 0, "fresh again");
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(NH_MAX_AGE) * 1000 + 1100,
        ));
        let (v, out, fib) = run(&rec, Side::A, &from_client(3641, 100));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "older than NH_MAX_AGE: looked up again"
        );
        assert_eq!(out, to_origin(MAC_O1_NEW, 3641, 100));
    });
}

//! The next-hop cache (`lb_common::NextHop`): a flow's packets reuse the next hop the FIB
//! gave an earlier packet of the same direction, and look it up again when it may be wrong:
//! a longer packet than any it passed (the FIB lookup is also the MTU check), a generation
//! bump from the agent (links, routes or neighbours changed), age, or an origin entry that
//! names another address. Frames in, frames and `fib_lookup` counts out, through
//! `BPF_PROG_TEST_RUN` in the fixture namespace of `lb_testbed::fixture`.

use lb_common::{event, v4_mapped, NH_MAX_AGE};
use lb_testbed::{
    fixture::{
        dataplane, first_snat_port, mac_of, neighbours, with_loaded, Loaded, C1, LB_A, LB_WWW, O1,
        POOL_WEB, SNAT, SNAT_MAX, SNAT_MIN, VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    },
    serial,
    tcp_flags::{ACK, SYN},
    tcp_segment, Side,
};

const MAC_C1: [u8; 6] = mac_of(C1);
const MAC_O1: [u8; 6] = mac_of(O1);
/// o1's MAC after it "moves" (a replaced NIC, a failover of its gateway).
const MAC_O1_NEW: [u8; 6] = [2, 0, 0, 0, 11, 0x22];

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs one frame; returns the verdict, the frame out and how many FIB lookups it took.
fn run(l: &mut Loaded<'_>, side: Side, input: &[u8]) -> (u32, Vec<u8>, u64) {
    let at = event::FIB_LOOKUP as usize;
    let before = l.events()[at];
    let (v, out) = l.run1(side, input);
    (v, out, l.events()[at] - before)
}

#[test]
fn next_hop_cache() {
    let _serial = serial();
    let config = format!("{}{POOL_WEB}{LB_WWW}", dataplane((SNAT_MIN, SNAT_MAX), ""));
    with_loaded("nh", &neighbours(&[C1], &[O1]), &config, |l| {
        let (mac_a, mac_b) = (l.bed.mac_a, l.bed.mac_b);
        let port = first_snat_port(C1, 40000, VIP, 80);
        // Segments after the handshake with `n` bytes of data: as the client sends them and
        // as they leave for the origin (to MAC `dmac`), as the origin sends them and as they
        // leave for the client.
        let data = |macs: ([u8; 6], [u8; 6]), addrs: ([u8; 4], [u8; 4]), ttl: u8, ports, sa, n| {
            let fill = if addrs.0 == O1 || addrs.0 == VIP {
                b'o'
            } else {
                b'c'
            };
            tcp_segment(
                macs.0,
                macs.1,
                addrs.0,
                addrs.1,
                ttl,
                ports,
                ACK,
                sa,
                &vec![fill; n],
            )
        };
        let from_client =
            |seq, n| data((MAC_C1, mac_a), (C1, VIP), 64, (40000, 80), (seq, 5001), n);
        let to_origin =
            |dmac, seq, n| data((mac_b, dmac), (SNAT, O1), 63, (port, 8080), (seq, 5001), n);
        let from_origin = |seq, n| {
            data(
                (MAC_O1, mac_b),
                (O1, SNAT),
                64,
                (8080, port),
                (seq, 1001),
                n,
            )
        };
        let to_client = |seq, n| data((mac_a, MAC_C1), (VIP, C1), 63, (80, 40000), (seq, 1001), n);

        // The handshake: each direction's first packet looks up its next hop.
        let syn = tcp_segment(MAC_C1, mac_a, C1, VIP, 64, (40000, 80), SYN, (1000, 0), &[]);
        let (v, out, fib) = run(l, Side::A, &syn);
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
        let (v, _, fib) = run(l, Side::B, &synack);
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "SYN-ACK: the reply direction's first lookup"
        );

        // Client -> origin: one lookup fills the flow entry's cache, the next packets use it.
        let (v, out, fib) = run(l, Side::A, &from_client(1001, 100));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "first packet on the flow entry"
        );
        assert_eq!(out, to_origin(MAC_O1, 1001, 100));
        let o1 = l
            .maps()
            .flows
            .get(&lb_common::FlowKey::tcp_v4(C1, 40000, VIP, 80), 0)
            .expect("flow entry")
            .origin_id;
        let c = l.rec.maps.origin_nh.get(&o1, 0).expect("ORIGIN_NH entry");
        assert_eq!(
            (c.addr, c.nh.ifindex, c.nh.smac, c.nh.dmac, c.nh.ok_len),
            (v4_mapped(O1), l.bed.ifindex_b, mac_b, MAC_O1, 20 + 20 + 100),
            "o1's cached next hop: {c:?}"
        );
        for (i, n) in [(1101u32, 100usize), (1201, 40), (1241, 0)] {
            let (v, out, fib) = run(l, Side::A, &from_client(i, n));
            assert_eq!((v, fib), (XDP_REDIRECT, 0), "{n} bytes: cached, no lookup");
            assert_eq!(
                out,
                to_origin(MAC_O1, i, n),
                "{n} bytes: the same frame as looked up"
            );
        }
        // Longer than any packet the lookup passed: looked up (the MTU check), then cached.
        let (v, out, fib) = run(l, Side::A, &from_client(1241, 1000));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "a longer packet is checked by the FIB"
        );
        assert_eq!(out, to_origin(MAC_O1, 1241, 1000));
        let (v, _, fib) = run(l, Side::A, &from_client(2241, 1000));
        assert_eq!((v, fib), (XDP_REDIRECT, 0), "the same length again: cached");

        // Another client's new flow to o1 shares o1's cached next hop: its SYN skips the FIB.
        let syn2 = tcp_segment(MAC_C1, mac_a, C1, VIP, 64, (40001, 80), SYN, (7000, 0), &[]);
        let (v, out, fib) = run(l, Side::A, &syn2);
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
        let mut stolen = l.rec.maps.origin_nh.get(&o1, 0).expect("ORIGIN_NH entry");
        stolen.addr = v4_mapped([10, 0, 11, 99]);
        stolen.nh.dmac = [2, 0, 0, 0, 11, 99];
        l.rec
            .maps
            .origin_nh
            .set(o1, stolen, 0)
            .expect("write ORIGIN_NH");
        let (v, out, fib) = run(l, Side::A, &from_client(2241, 0));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "another origin's entry: looked up"
        );
        assert_eq!(out, to_origin(MAC_O1, 2241, 0), "to o1's own MAC");
        let (v, out, fib) = run(l, Side::A, &from_client(2241, 1000));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "the entry restarted from a short packet"
        );
        assert_eq!(out, to_origin(MAC_O1, 2241, 1000));

        // Origin -> client the same way, in the reverse entry.
        let (v, out, fib) = run(l, Side::B, &from_origin(5001, 200));
        assert_eq!((v, fib), (XDP_REDIRECT, 1));
        assert_eq!(out, to_client(5001, 200));
        let (v, out, fib) = run(l, Side::B, &from_origin(5201, 200));
        assert_eq!((v, fib), (XDP_REDIRECT, 0), "reply: cached");
        assert_eq!(out, to_client(5201, 200));

        // o1 moves to another MAC. The agent bumps the generation when the kernel says a
        // neighbour changed (netwatch.rs); after that the new MAC is used at once.
        l.bed.ns.ip(&[
            "neigh",
            "replace",
            "10.0.11.2",
            "lladdr",
            &mac(MAC_O1_NEW),
            "dev",
            &l.bed.b,
            "nud",
            "permanent",
        ]);
        l.rec.next_hops_changed().expect("generation bump");
        let (v, out, fib) = run(l, Side::A, &from_client(3241, 100));
        assert_eq!((v, fib), (XDP_REDIRECT, 1), "after a bump: looked up again");
        assert_eq!(out, to_origin(MAC_O1_NEW, 3241, 100), "to o1's new MAC");
        let (v, out, fib) = run(l, Side::A, &from_client(3341, 100));
        assert_eq!((v, fib), (XDP_REDIRECT, 0));
        assert_eq!(out, to_origin(MAC_O1_NEW, 3341, 100));
        let (_, _, fib) = run(l, Side::B, &from_origin(5401, 200));
        assert_eq!(fib, 1, "the bump also reaches the reply direction's cache");

        // The client-side link narrows after the reply direction cached 240-byte packets at
        // MTU 1500: with the bump, a reply too big for it is answered, not sent.
        l.bed.ns.ip(&["link", "set", &l.bed.a, "mtu", "1280"]);
        l.rec.next_hops_changed().expect("generation bump");
        let (v, _, _) = run(l, Side::B, &from_origin(5601, 200));
        assert_eq!(v, XDP_REDIRECT, "a small reply still fits");
        let (v, out, _) = run(l, Side::B, &from_origin(5801, 1400));
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
        l.bed.ns.ip(&["link", "set", &l.bed.a, "mtu", "1500"]);
        l.rec.next_hops_changed().expect("generation bump");

        // Without any bump, a cached next hop is looked up again once it is older than
        // NH_MAX_AGE seconds (the bound when a change notification is missed).
        let (_, _, fib) = run(l, Side::A, &from_client(3441, 100));
        assert_eq!(fib, 1, "after the last bump");
        let (_, _, fib) = run(l, Side::A, &from_client(3541, 100));
        assert_eq!(fib, 0, "fresh again");
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(NH_MAX_AGE) * 1000 + 1100,
        ));
        let (v, out, fib) = run(l, Side::A, &from_client(3641, 100));
        assert_eq!(
            (v, fib),
            (XDP_REDIRECT, 1),
            "older than NH_MAX_AGE: looked up again"
        );
        assert_eq!(out, to_origin(MAC_O1_NEW, 3641, 100));
    });
}

/// Traffic for the host itself passes without asking the FIB once the agent has written the
/// host's addresses into `LOCAL_ADDRS`; transit is still looked up, and dropped.
#[test]
fn host_traffic_skips_the_fib_lookup() {
    let _serial = serial();
    let config = format!("{}{POOL_WEB}{LB_WWW}", dataplane((SNAT_MIN, SNAT_MAX), ""));
    with_loaded("nl", &neighbours(&[C1], &[O1]), &config, |l| {
        let mac_a = l.bed.mac_a;
        let to =
            |dst: [u8; 4]| tcp_segment(MAC_C1, mac_a, C1, dst, 64, (40000, 22), SYN, (1, 0), &[]);
        let (v, out, fib) = run(l, Side::A, &to(LB_A));
        assert_eq!(
            (v, fib),
            (XDP_PASS, 1),
            "before the sync: the FIB says local"
        );
        assert_eq!(out, to(LB_A), "passed untouched");
        let addrs = lb_agent::netwatch::local_addrs().expect("getifaddrs");
        assert!(addrs.contains(&v4_mapped(LB_A)), "{addrs:?}");
        l.rec.sync_local_addrs(&addrs).expect("LOCAL_ADDRS");
        let (v, out, fib) = run(l, Side::A, &to(LB_A));
        assert_eq!((v, fib), (XDP_PASS, 0), "a local address: no FIB lookup");
        assert_eq!(out, to(LB_A));
        let transit = [10, 0, 11, 50];
        let (v, _, fib) = run(l, Side::A, &to(transit));
        assert_eq!((v, fib), (XDP_DROP, 1), "transit: looked up and dropped");
        // An address the host no longer has is taken out again.
        let fewer: std::collections::BTreeSet<_> = addrs
            .into_iter()
            .filter(|a| *a != v4_mapped(LB_A))
            .collect();
        l.rec.sync_local_addrs(&fewer).expect("LOCAL_ADDRS");
        let (v, _, fib) = run(l, Side::A, &to(LB_A));
        assert_eq!((v, fib), (XDP_PASS, 1), "removed: the FIB decides again");
        l.expect_events(&[event::PASS_NOT_VIP; 3]);
        l.expect_events(&[event::DROP_TRANSIT]);
        l.assert_events();
    });
}

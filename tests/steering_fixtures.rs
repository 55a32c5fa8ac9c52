//! Steering in the data path, through `BPF_PROG_TEST_RUN`: the client's geo lookup, `random`
//! pool spreading, `hash` and `least_connections` origin steering, session affinity and its
//! expiry, and the open-flow counts `least_connections` relies on. Each case sends SYNs and
//! reads which origin the rewritten frame goes to.
//!
//! The same namespace layout as `fixtures.rs`: clients on side a (10.0.1.0/24), origins on
//! side b (10.0.11.0/24), permanent neighbours so the FIB answers deterministically.

use std::{collections::BTreeMap, path::Path};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::SlicedPacket;
use lb_agent::{config::Config, health::HealthTable, reconcile::Reconciler};
use lb_common::{event, Affinity, AffinityKey};
use lb_testbed::{
    fixture::{self, C1, C2, C3, O1, O2, O3, XDP_REDIRECT},
    require_prerequisites, serial, tcp_frame, FibBed, Flags, Side,
};

const MAC_C: [u8; 6] = fixture::mac_of(C1);

const CONFIG: &str = r#"
[dataplane]
interfaces = ["lo"]
snat_address = "10.0.0.1"
pin_dir = "@PIN@"
flow_table_size = 65536
syn_cookies = "off"

[[pools]]
name = "eu"
origins = [{ name = "e1", address = "10.0.11.2", port = 8080 }]

[[pools]]
name = "us"
origins = [{ name = "u1", address = "10.0.11.3", port = 8080 }]

[[pools]]
name = "pair"
origin_steering = { policy = "@PAIR@" }
origins = [
  { name = "p1", address = "10.0.11.2", port = 8080 },
  { name = "p2", address = "10.0.11.3", port = 8080 },
  { name = "p3", address = "10.0.11.4", port = 8080 },
]

# Clients of 10.0.1.2 are in Germany; 10.0.1.3 is in no listed prefix.
[geo]
prefixes = [{ prefix = "10.0.1.2/32", country = "DE" }, { prefix = "10.0.1.128/25", region = "ENAM" }]

[[load_balancers]]
name = "geo"
address = "10.0.0.10"
port = 80
default_pools = ["us"]
steering_policy = "geo"
country_pools = { DE = ["eu", "us"] }

[[load_balancers]]
name = "random"
address = "10.0.0.11"
port = 80
default_pools = ["eu", "us"]
steering_policy = "random"
random_steering = { pool_weights = { eu = 0.25, us = 0.75 } }

[[load_balancers]]
name = "pair"
address = "10.0.0.12"
port = 80
default_pools = ["pair"]
@AFFINITY@
"#;

fn config(pin: &Path, pair: &str, affinity: &str) -> Config {
    let text = CONFIG
        .replace("@PIN@", pin.to_str().expect("utf8"))
        .replace("@PAIR@", pair)
        .replace("@AFFINITY@", affinity);
    Config::parse(&text, Path::new("steering-fixture.toml")).expect("fixture config")
}

/// Sends one frame in on side a; returns the destination address of what comes out.
fn send(prog: &mut Xdp, bed: &FibBed, frame: &[u8]) -> [u8; 4] {
    let ctx = bed.ctx(Side::A, frame.len());
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("test_run");
    assert_eq!(r.return_value, XDP_REDIRECT, "forwarded to an origin");
    out.truncate(r.data_size_out as usize);
    let p = SlicedPacket::from_ethernet(&out).expect("output parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    ip.header().destination()
}

fn syn(client: [u8; 4], sport: u16, vip: [u8; 4]) -> Vec<u8> {
    tcp_frame(MAC_C, [0; 6], client, vip, 64, sport, 80, Flags::Syn, &[])
}

/// How many of the SYNs from `client` on `ports` reach each origin.
fn spread(
    prog: &mut Xdp,
    bed: &FibBed,
    client: [u8; 4],
    ports: std::ops::Range<u16>,
    vip: [u8; 4],
) -> BTreeMap<[u8; 4], usize> {
    let mut out = BTreeMap::new();
    for p in ports {
        *out.entry(send(prog, bed, &syn(client, p, vip)))
            .or_default() += 1;
    }
    out
}

fn origin_id(rec: &Reconciler, pool: &str, name: &str) -> u32 {
    rec.assignment
        .origins
        .iter()
        .find(|(k, _)| k.pool == pool && k.name == name)
        .map(|(_, id)| *id)
        .unwrap_or_else(|| panic!("no id for {pool}/{name}"))
}

fn open_flows(rec: &Reconciler, id: u32) -> u64 {
    rec.maps.origin_flows.get(&id, 0).expect("ORIGIN_FLOWS")
}

fn events(rec: &Reconciler) -> Vec<u64> {
    rec.maps.event_totals().expect("events")
}

fn bed() -> FibBed {
    FibBed::new("sf", &fixture::neighbours(&[C1, C2, C3], &[O1, O2, O3]))
}

/// Loads the program in `bed` with the config of `pair` and `affinity` applied (the shared
/// fixture loader); runs `f` with the program and reconciler.
fn with_dataplane(
    bed: &FibBed,
    (pair, affinity): (&str, &str),
    f: impl FnOnce(&mut Xdp, &mut Reconciler) + Send,
) {
    let text = CONFIG
        .replace("@PAIR@", pair)
        .replace("@AFFINITY@", affinity);
    fixture::with_loaded_in(bed, lb_testbed::ebpf_object(), &text, |fx| {
        let prog = fx.dp.program().expect("program");
        f(prog, &mut fx.rec);
    });
}

#[test]
fn geo_and_random_pool_steering() {
    let _serial = serial();
    require_prerequisites();
    let bed = bed();
    let cfg = config(&bed.pin_dir, "random", "");
    with_dataplane(&bed, ("random", ""), |prog, rec| {
        let vip = [10, 0, 0, 10];
        let before = events(rec);
        // A German client: country_pools.DE -> eu (o1), on every connection.
        let de = spread(prog, &bed, C1, 40000..40020, vip);
        assert_eq!(de, BTreeMap::from([(O1, 20)]), "German client to eu");
        // A client in no listed prefix: default_pools -> us (o2).
        let other = spread(prog, &bed, C2, 40000..40020, vip);
        assert_eq!(other, BTreeMap::from([(O2, 20)]), "unlisted client to us");
        let after = events(rec);
        let geo = event::GEO_MATCH as usize;
        assert_eq!(
            after[geo] - before[geo],
            20,
            "one trie match per new flow of the listed client"
        );

        // eu goes down (disabled here, like a failed monitor): DE's list falls to us.
        let down = CONFIG
            .replace("@PIN@", bed.pin_dir.to_str().expect("utf8"))
            .replace("@PAIR@", "random")
            .replace("@AFFINITY@", "")
            .replacen("name = \"eu\"\n", "name = \"eu\"\nenabled = false\n", 1);
        let cfg2 = Config::parse(&down, Path::new("t")).expect("config");
        rec.apply(&cfg2, &HealthTable::default()).expect("apply");
        let de = spread(prog, &bed, C1, 41000..41020, vip);
        assert_eq!(
            de,
            BTreeMap::from([(O2, 20)]),
            "eu down: next pool of DE's list"
        );
        rec.apply(&cfg, &HealthTable::default()).expect("apply");

        // random: 2000 new connections split 25/75 between eu and us.
        let vip = [10, 0, 0, 11];
        let mut split = spread(prog, &bed, C1, 20000..21000, vip);
        for (k, v) in spread(prog, &bed, C2, 20000..21000, vip) {
            *split.entry(k).or_default() += v;
        }
        let eu = split.get(&O1).copied().unwrap_or(0);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let share = eu as f64 / 2000.0;
        println!(
            "random steering: eu {eu} of 2000 ({:.1} %), target 25 %",
            share * 100.0
        );
        assert!(
            (0.22..=0.28).contains(&share),
            "eu share {share}: {split:?}"
        );
    });
}

#[test]
fn hash_origin_steering_keeps_a_client_on_one_origin() {
    let _serial = serial();
    require_prerequisites();
    let bed = bed();
    with_dataplane(&bed, ("hash", ""), |prog, _rec| {
        let vip = [10, 0, 0, 12];
        let mut seen = BTreeMap::new();
        for c in [C1, C2, C3] {
            let s = spread(prog, &bed, c, 30000..30050, vip);
            assert_eq!(s.len(), 1, "client {c:?} reached one origin: {s:?}");
            seen.extend(s);
        }
        println!(
            "hash steering: 3 clients on origins {:?}",
            seen.keys().collect::<Vec<_>>()
        );
    });
    // The same 3 clients with 5-tuple hashing: each spreads over the pool.
    let bed = self::bed();
    with_dataplane(&bed, ("random", ""), |prog, _rec| {
        let s = spread(prog, &bed, C1, 30000..30050, [10, 0, 0, 12]);
        assert_eq!(s.len(), 3, "5-tuple hashing spreads one client: {s:?}");
    });
}

#[test]
fn least_connections_counts_open_flows_and_picks_the_least_loaded() {
    let _serial = serial();
    require_prerequisites();
    let bed = bed();
    with_dataplane(&bed, ("least_connections", ""), |prog, rec| {
        let vip = [10, 0, 0, 12];
        let ids = [
            origin_id(rec, "pair", "p1"),
            origin_id(rec, "pair", "p2"),
            origin_id(rec, "pair", "p3"),
        ];
        // 30 new flows spread evenly: each goes to the origin with the fewest.
        let to: Vec<(u16, [u8; 4])> = (50000..50030)
            .map(|p| (p, send(prog, &bed, &syn(C1, p, vip))))
            .collect();
        let mut s: BTreeMap<[u8; 4], usize> = BTreeMap::new();
        for (_, o) in &to {
            *s.entry(*o).or_default() += 1;
        }
        assert_eq!(
            s,
            BTreeMap::from([(O1, 10), (O2, 10), (O3, 10)]),
            "even spread"
        );
        assert_eq!(
            ids.map(|i| open_flows(rec, i)),
            [10, 10, 10],
            "open flows counted"
        );
        // o1's clients give up (RST at their next sequence number, before any answer): its
        // count drops, so it takes the next 10 flows.
        for (p, _) in to.iter().filter(|(_, o)| *o == O1) {
            let f = lb_testbed::tcp_segment(
                MAC_C,
                [0; 6],
                C1,
                vip,
                64,
                (*p, 80),
                lb_testbed::tcp_flags::RST,
                (1001, 0),
                &[],
            );
            assert_eq!(send(prog, &bed, &f), O1);
            // A second RST (a retransmission) does not count again.
            assert_eq!(send(prog, &bed, &f), O1);
        }
        assert_eq!(
            ids.map(|i| open_flows(rec, i)),
            [0, 10, 10],
            "closing flows leave the count"
        );
        let s = spread(prog, &bed, C2, 50000..50010, vip);
        assert_eq!(
            s,
            BTreeMap::from([(O1, 10)]),
            "the emptied origin takes the new flows"
        );
        // Relative to weight: o3 at half weight takes half as many.
        let half = CONFIG
            .replace("@PIN@", bed.pin_dir.to_str().expect("utf8"))
            .replace("@PAIR@", "least_connections")
            .replace("@AFFINITY@", "")
            .replace(
                "{ name = \"p3\", address = \"10.0.11.4\", port = 8080 }",
                "{ name = \"p3\", address = \"10.0.11.4\", port = 8080, weight = 0.5 }",
            );
        rec.apply(
            &Config::parse(&half, Path::new("t")).expect("cfg"),
            &HealthTable::default(),
        )
        .expect("apply");
        let s = spread(prog, &bed, C3, 50000..50050, vip);
        let total: Vec<u64> = ids.map(|i| open_flows(rec, i)).to_vec();
        println!("least_connections with weights 1/1/0.5: new {s:?}, open flows {total:?}");
        // 30 open flows plus 50 new ones end up 2:2:1.
        assert_eq!(
            total,
            vec![32, 32, 16],
            "open flows follow the weights 1:1:0.5"
        );
    });
}

#[test]
fn session_affinity_keeps_the_origin_until_the_ttl() {
    let _serial = serial();
    require_prerequisites();
    let bed = bed();
    with_dataplane(
        &bed,
        (
            "random",
            "session_affinity = \"ip\"\nsession_affinity_ttl = 60",
        ),
        |prog, rec| {
            let vip = [10, 0, 0, 12];
            let before = events(rec);
            let s = spread(prog, &bed, C1, 45000..45040, vip);
            assert_eq!(
                s.len(),
                1,
                "every connection of the client on one origin: {s:?}"
            );
            let hits =
                events(rec)[event::AFFINITY_HIT as usize] - before[event::AFFINITY_HIT as usize];
            assert_eq!(
                hits, 39,
                "all but the first connection came from the affinity entry"
            );
            // Age the entry past its TTL: the client is balanced again (5-tuple hashing).
            let meta = rec
                .maps
                .vips
                .get(
                    &lb_agent::reconcile::vip_key(std::net::Ipv4Addr::from(vip), 80),
                    0,
                )
                .expect("VIP entry");
            let key = AffinityKey {
                vip_id: meta.vip_id,
                addr: lb_common::v4_mapped(C1),
            };
            let a = rec.maps.affinity.get(&key, 0).expect("affinity entry");
            let aged = Affinity {
                origin_id: a.origin_id,
                last_used: a.last_used.wrapping_sub(61),
            };
            rec.maps.affinity.insert(key, aged, 0).expect("age entry");
            let first = send(prog, &bed, &syn(C1, 46000, vip));
            let s = spread(prog, &bed, C1, 46001..46041, vip);
            assert_eq!(
                s,
                BTreeMap::from([(first, 40)]),
                "a new affinity entry after expiry"
            );
            // An origin that leaves the ring ends the affinity at once.
            let drained = CONFIG
                .replace("@PIN@", bed.pin_dir.to_str().expect("utf8"))
                .replace("@PAIR@", "random")
                .replace(
                    "@AFFINITY@",
                    "session_affinity = \"ip\"\nsession_affinity_ttl = 60",
                );
            let addr = format!("address = \"{}\"", std::net::Ipv4Addr::from(first));
            let pair_line = drained
                .lines()
                .find(|l| l.contains("name = \"p") && l.contains(&addr))
                .expect("the origin's line")
                .to_owned();
            let drained = drained.replace(
                &pair_line,
                &pair_line.replace("port = 8080", "port = 8080, weight = 0.0"),
            );
            rec.apply(
                &Config::parse(&drained, Path::new("t")).expect("cfg"),
                &HealthTable::default(),
            )
            .expect("apply");
            let s = spread(prog, &bed, C1, 47000..47020, vip);
            assert!(
                !s.contains_key(&first),
                "drained origin gets no affinity traffic: {s:?}"
            );
            assert_eq!(s.len(), 1, "and the client sticks to its new origin: {s:?}");
        },
    );
}

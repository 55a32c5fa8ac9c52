//! Steering policies end to end: the agent runs in the LB namespace, real servers answer in
//! origin namespaces, and clients connect from addresses in different prefixes. Each test
//! reads which origin answered (`NAME`) to see where the load balancer sent a connection.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lb_agent::{
    dataplane::Maps,
    status::{OriginState, Status},
};
use lb_common::event;
use lb_testbed::{
    mmdb, origin_addr, request_ip, require_prerequisites, serial, unique_id, vip, Http, Server,
    TempFile, Topology, CLIENT, ORIGIN_PORT,
};

/// `lb_testbed::wait_for`, polling every 10 ms.
fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    lb_testbed::wait_for(what, timeout, Duration::from_millis(10), f)
}

/// Which origins answer `n` new connections from `from` to `to` (name -> count), for either
/// family (also used by `v6_e2e`).
pub(crate) fn answers_to(
    topo: &Topology,
    from: IpAddr,
    to: SocketAddr,
    n: usize,
) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = request_ip(Some(SocketAddr::new(from, 0)), to, "NAME")
                .map_or_else(|e| format!("failed: {e}"), |r| r.trim().to_owned());
            *m.entry(k).or_insert(0) += 1;
        }
        m
    })
}

fn answers(topo: &Topology, from: Ipv4Addr, n: usize) -> BTreeMap<String, usize> {
    answers_to(topo, from.into(), vip().into(), n)
}

pub(crate) fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_owned(), n)])
}

fn active_pool(topo: &Topology, lb: &str) -> Option<String> {
    let s = Status::read(&topo.status_file).ok()?;
    s.load_balancers
        .iter()
        .find(|l| l.name == lb)
        .and_then(|l| l.active_pool.clone())
}

pub(crate) fn wait_active(topo: &Topology, lb: &str, pool: &str, timeout: Duration) {
    wait_for(&format!("{lb} on pool {pool}"), timeout, || {
        (active_pool(topo, lb).as_deref() == Some(pool)).then_some(())
    });
}

/// Waits until every monitored origin has a health state other than "unknown".
pub(crate) fn wait_checked(topo: &Topology) {
    wait_for("first health checks", Duration::from_secs(10), || {
        let s = Status::read(&topo.status_file).ok()?;
        s.origins
            .iter()
            .all(|o| o.state != OriginState::Unknown)
            .then_some(())
    });
}

/// One pool per origin namespace: `(pool name, origin index, extra lines)`; TCP monitor on
/// the origin port.
fn pools(list: &[(&str, usize, &str)]) -> String {
    pools_at(list, |i| origin_addr(i).into())
}

/// `pools` with the origins' addresses from `addr` (origin index -> address; `origin_addr6`
/// for IPv6 pools in `v6_e2e`).
pub(crate) fn pools_at(list: &[(&str, usize, &str)], addr: impl Fn(usize) -> IpAddr) -> String {
    let mut s = String::from(
        "[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 0.25\ntimeout = 0.2\nretries = 0\n\n",
    );
    for (name, i, extra) in list {
        s.push_str(&format!(
            "[[pools]]\nname = \"{name}\"\nmonitor = \"tcp\"\n{extra}\norigins = [{{ name = \"o{i}\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n",
            addr(*i)
        ));
    }
    s
}

fn lb(extra: &str) -> String {
    format!("[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\n{extra}\n\n")
}

#[test]
fn geo_steering_by_client_country_and_region_from_a_maxmind_database() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    let (de, jp, us) = (
        Ipv4Addr::new(10, 201, 0, 2),
        Ipv4Addr::new(10, 202, 0, 2),
        Ipv4Addr::new(10, 203, 0, 2),
    );
    for a in [de, jp, us] {
        topo.add_client_address(a);
    }
    // The region database: a small MaxMind DB written here, in GeoLite2-Country's shape.
    let db = std::env::temp_dir().join(format!("{}.mmdb", unique_id("geo")));
    let _db_guard = TempFile::adopt(&db);
    mmdb::write_country_db(
        &db,
        &[
            (Ipv4Addr::new(10, 201, 0, 0), 16, Some("DE")),
            (Ipv4Addr::new(10, 202, 0, 0), 16, Some("JP")),
            (Ipv4Addr::new(10, 203, 0, 0), 16, Some("US")),
        ],
    )
    .expect("write the test database");
    let cfg = TempFile::new(
        "geo.toml",
        &format!(
            "{}{}{}[geo]\ndatabase = \"{}\"\n",
            topo.base_config(""),
            pools(&[("eu", 1, ""), ("us", 2, ""), ("other", 3, "")]),
            lb("default_pools = [\"other\"]\nsteering_policy = \"geo\"\nregion_pools = { WEU = [\"eu\", \"us\"], ENAM = [\"us\"] }\ncountry_pools = { JP = [\"us\"] }"),
            db.display()
        ),
    );
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    wait_checked(&topo);
    wait_active(&topo, "www", "other", Duration::from_secs(10));

    // Germany is in WEU: eu. Japan has a country list: us. The US is in ENAM: us. A client
    // the database does not know: default_pools.
    assert_eq!(
        answers(&topo, de, 20),
        only("o1", 20),
        "DE client (region WEU)"
    );
    assert_eq!(
        answers(&topo, jp, 20),
        only("o2", 20),
        "JP client (country list)"
    );
    assert_eq!(
        answers(&topo, us, 20),
        only("o2", 20),
        "US client (region ENAM)"
    );
    assert_eq!(
        answers(&topo, CLIENT, 20),
        only("o3", 20),
        "unlisted client"
    );
    let maps = Maps::open_pinned(&topo.pin_dir).expect("pins");
    let matched = maps.event_totals().expect("events")[event::GEO_MATCH as usize];
    assert!(
        matched >= 60,
        "the data path matched the listed clients' prefixes: {matched}"
    );

    // eu goes down: WEU's list continues with us.
    servers[0] = None;
    agent
        .wait_log(0, "origin eu/o1 (", Duration::from_secs(5))
        .expect("o1 down logged");
    wait_for("DE clients moved to us", Duration::from_secs(5), || {
        (answers(&topo, de, 1) == only("o2", 1)).then_some(())
    });
    assert_eq!(answers(&topo, de, 20), only("o2", 20), "DE client, eu down");
    assert_eq!(
        answers(&topo, CLIENT, 10),
        only("o3", 10),
        "others unchanged"
    );
    // us goes down as well: WEU's list is exhausted, so default_pools.
    servers[1] = None;
    wait_for("DE clients moved to other", Duration::from_secs(5), || {
        (answers(&topo, de, 1) == only("o3", 1)).then_some(())
    });
    assert_eq!(
        answers(&topo, jp, 10),
        only("o3", 10),
        "JP list down: default_pools"
    );
    // eu is back: DE returns to it.
    servers[0] = Some(Server::start(&topo.origins[0], "o1", ORIGIN_PORT));
    wait_for("DE clients back on eu", Duration::from_secs(5), || {
        (answers(&topo, de, 1) == only("o1", 1)).then_some(())
    });
}

#[test]
fn dynamic_latency_prefers_the_faster_pool_and_follows_a_swap() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let _names = topo.start_servers();
    let (fast, slow) = (Http::new(200, "ok"), Http::new(200, "ok"));
    fast.delay_ms.store(2, Ordering::Relaxed);
    slow.delay_ms.store(80, Ordering::Relaxed);
    let _http: Vec<Server> = [(&topo.origins[0], &fast), (&topo.origins[1], &slow)]
        .iter()
        .map(|(ns, h)| Server::http(ns, 8081, h, false))
        .collect();
    let cfg = TempFile::new(
        "latency.toml",
        &format!(
            "{}rtt_smoothing = 0.5\n\n[[monitors]]\nname = \"http\"\ntype = \"http\"\nport = 8081\ninterval = 0.2\ntimeout = 0.15\nretries = 0\n\n\
             [[pools]]\nname = \"a\"\nmonitor = \"http\"\norigins = [{{ name = \"o1\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n\
             [[pools]]\nname = \"b\"\nmonitor = \"http\"\norigins = [{{ name = \"o2\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n{}",
            topo.base_config(""),
            origin_addr(1),
            origin_addr(2),
            // b first in the config: the order must come from the RTTs, not the list.
            lb("default_pools = [\"b\", \"a\"]\nsteering_policy = \"dynamic_latency\""),
        ),
    );
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    wait_active(&topo, "www", "a", Duration::from_secs(10));
    assert_eq!(
        answers(&topo, CLIENT, 20),
        only("o1", 20),
        "the faster pool a"
    );

    // Swap the delays; the choice must follow.
    let skip = agent.log_len();
    let swapped = Instant::now();
    fast.delay_ms.store(80, Ordering::Relaxed);
    slow.delay_ms.store(2, Ordering::Relaxed);
    wait_for("new connections on b", Duration::from_secs(10), || {
        (answers(&topo, CLIENT, 1) == only("o2", 1)).then_some(())
    });
    let took = swapped.elapsed();
    println!("dynamic_latency: switch observed {} ms after the delays swapped (interval 0.2 s, rtt_smoothing 0.5)", took.as_millis());
    assert!(
        agent
            .wait_log(
                skip,
                "probe latency changed the fastest pool",
                Duration::from_secs(1)
            )
            .is_some(),
        "the switch is logged with its cause"
    );
    assert_eq!(
        answers(&topo, CLIENT, 20),
        only("o2", 20),
        "the faster pool b"
    );
    // Bounded: the EWMA (alpha 0.5) crosses over within a few samples at 0.2 s each.
    assert!(took < Duration::from_secs(5), "switch took {took:?}");
}

#[test]
fn proximity_orders_pools_by_distance_and_skips_the_nearest_when_down() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    // This host is in Amsterdam. Pools in Frankfurt (o1), New York (o2) and Tokyo (o3),
    // listed farthest first so that the order must come from the coordinates.
    let cfg = TempFile::new(
        "proximity.toml",
        &format!(
            "{}latitude = 52.37\nlongitude = 4.90\n\n{}{}",
            topo.base_config(""),
            pools(&[
                ("fra", 1, "latitude = 50.11\nlongitude = 8.68"),
                ("nyc", 2, "latitude = 40.71\nlongitude = -74.01"),
                ("tyo", 3, "latitude = 35.68\nlongitude = 139.69"),
            ]),
            lb("default_pools = [\"tyo\", \"nyc\", \"fra\"]\nsteering_policy = \"proximity\""),
        ),
    );
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    wait_active(&topo, "www", "fra", Duration::from_secs(10));
    assert_eq!(
        answers(&topo, CLIENT, 20),
        only("o1", 20),
        "nearest: Frankfurt"
    );
    servers[0] = None;
    wait_active(&topo, "www", "nyc", Duration::from_secs(5));
    assert_eq!(
        answers(&topo, CLIENT, 20),
        only("o2", 20),
        "Frankfurt down: New York"
    );
    servers[1] = None;
    wait_active(&topo, "www", "tyo", Duration::from_secs(5));
    assert_eq!(answers(&topo, CLIENT, 20), only("o3", 20), "then Tokyo");
    servers[0] = Some(Server::start(&topo.origins[0], "o1", ORIGIN_PORT));
    wait_active(&topo, "www", "fra", Duration::from_secs(5));
}

#[test]
fn random_steering_splits_by_pool_weights() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let _servers = topo.start_servers();
    let cfg = TempFile::new(
        "random.toml",
        &format!(
            "{}{}{}",
            topo.base_config(""),
            pools(&[("a", 1, ""), ("b", 2, "")]),
            lb("default_pools = [\"a\", \"b\"]\nsteering_policy = \"random\"\nrandom_steering = { pool_weights = { a = 0.3 }, default_weight = 0.7 }"),
        ),
    );
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    wait_checked(&topo);
    let n = 3000;
    let got = answers(&topo, CLIENT, n);
    let a = got.get("o1").copied().unwrap_or(0);
    let b = got.get("o2").copied().unwrap_or(0);
    assert_eq!(a + b, n, "every connection answered: {got:?}");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let share = a as f64 / n as f64;
    println!(
        "random steering: pool a {a}, pool b {b} of {n} ({:.1} % / {:.1} %, target 30 / 70)",
        share * 100.0,
        100.0 - share * 100.0
    );
    assert!(
        (share - 0.3).abs() <= 0.03,
        "pool a share {share:.3} not within 3 points of 0.30"
    );
}

#[test]
fn hash_steering_and_session_affinity_keep_clients_on_one_origin() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(3);
    let _servers = topo.start_servers();
    let clients = [
        Ipv4Addr::new(10, 211, 0, 2),
        Ipv4Addr::new(10, 212, 0, 2),
        Ipv4Addr::new(10, 213, 0, 2),
        Ipv4Addr::new(10, 214, 0, 2),
    ];
    for c in clients {
        topo.add_client_address(c);
    }
    let origins: Vec<String> = (1..=3)
        .map(|i| {
            format!(
                "{{ name = \"o{i}\", address = \"{}\", port = {ORIGIN_PORT} }}",
                origin_addr(i)
            )
        })
        .collect();
    let origins = origins.join(", ");
    let cfg = TempFile::new(
        "hash.toml",
        &format!(
            "{}[[pools]]\nname = \"h\"\norigin_steering = {{ policy = \"hash\" }}\norigins = [{origins}]\n\n\
             [[pools]]\nname = \"r\"\norigins = [{origins}]\n\n{}\
             [[load_balancers]]\nname = \"sticky\"\naddress = \"10.0.0.10\"\nport = 81\norigin_port = {ORIGIN_PORT}\ndefault_pools = [\"r\"]\nsession_affinity = \"ip\"\nsession_affinity_ttl = 2\n",
            topo.base_config(""),
            lb("default_pools = [\"h\"]"),
        ),
    );
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    wait_active(&topo, "www", "h", Duration::from_secs(10));

    // hash: each client reaches one origin on every connection; clients differ.
    let mut used = BTreeMap::new();
    for c in clients {
        let got = answers(&topo, c, 20);
        assert_eq!(got.len(), 1, "client {c} on one origin: {got:?}");
        used.extend(got);
    }
    println!(
        "hash steering: 4 clients used origins {:?}",
        used.keys().collect::<Vec<_>>()
    );
    assert!(
        used.len() >= 2,
        "clients are spread over the pool: {used:?}"
    );

    // Session affinity on a pool with 5-tuple hashing: sticky within the TTL.
    let sticky = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 81);
    let maps = Maps::open_pinned(&topo.pin_dir).expect("pins");
    let hits = || maps.event_totals().expect("events")[event::AFFINITY_HIT as usize];
    let c = clients[0];
    let h0 = hits();
    let got = answers_to(&topo, c.into(), sticky.into(), 20);
    assert_eq!(
        got.len(),
        1,
        "affinity keeps the client on one origin: {got:?}"
    );
    assert_eq!(
        hits() - h0,
        19,
        "19 of 20 connections used the affinity entry"
    );
    // Past the TTL the first connection is balanced afresh (no affinity hit), then sticks again.
    std::thread::sleep(Duration::from_millis(3500));
    let h1 = hits();
    let again = answers_to(&topo, c.into(), sticky.into(), 20);
    assert_eq!(again.len(), 1, "sticky again: {again:?}");
    assert_eq!(
        hits() - h1,
        19,
        "the entry had expired: the first connection was not a hit"
    );
}

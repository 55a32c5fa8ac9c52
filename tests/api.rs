//! The HTTP API end to end: the real agent in the LB namespace, its API on that namespace's
//! loopback, requests from a thread inside the namespace. Conformance (routes, methods,
//! errors, pagination, auth, persistence across a restart), a change that moves real
//! traffic, `/metrics` against traffic the test sent, webhooks, the dashboard in headless
//! Chromium, and `lbctl`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use lb_testbed::{
    chromium_render, enter_netns, origin_addr, prom, request, require_prerequisites, serial, vip,
    NetNs, Server, TempFile, Topology, API_TOKEN, ORIGIN_PORT,
};
use serde_json::{json, Value};

const BASE: &str = "http://127.0.0.1:8405";
const ACCOUNT: &str = "/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/load_balancers";
const ORG: &str = "/client/v4/organizations/0a1b2c3d4e5f60718293a4b5c6d7e8f9/load_balancers";
const USER: &str = "/client/v4/user/load_balancers";
const ZONE: &str = "/client/v4/zones/699d98642c564d2e855e9661899b7252/load_balancers";
const EMAIL: &str = "ops@example.com";
const KEY: &str = "global-key-0123456789abcdef";

#[derive(Clone, Copy)]
enum Auth {
    None,
    Token(&'static str),
    Key(&'static str, &'static str),
}

/// `lb_testbed::wait_for`, polling every 20 ms.
fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    lb_testbed::wait_for(what, timeout, Duration::from_millis(20), f)
}

/// One request to the agent's API from inside `ns`: (status, body as JSON, or the text
/// wrapped in a JSON string when it is not JSON).
fn call(ns: &NetNs, auth: Auth, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    ns.run(|| {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let mut req = agent.request(method, &format!("{BASE}{path}"));
        match auth {
            Auth::None => {}
            Auth::Token(t) => req = req.set("Authorization", &format!("Bearer {t}")),
            Auth::Key(e, k) => req = req.set("X-Auth-Email", e).set("X-Auth-Key", k),
        }
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    })
}

fn ok(ns: &NetNs, method: &str, path: &str, body: Option<&str>) -> Value {
    let (st, v) = call(ns, Auth::Token(API_TOKEN), method, path, body);
    assert_eq!(st, 200, "{method} {path}: {v}");
    assert_eq!(v["success"], true, "{method} {path}: {v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert_eq!(v["messages"], json!([]), "{v}");
    v["result"].clone()
}

/// Asserts a refusal: status, the first error's code, and words its message must contain.
#[expect(
    clippy::too_many_arguments,
    reason = "a request and what its answer must hold"
)]
fn refused(
    ns: &NetNs,
    auth: Auth,
    method: &str,
    path: &str,
    body: Option<&str>,
    status: u16,
    code: u64,
    words: &[&str],
) -> String {
    let (st, v) = call(ns, auth, method, path, body);
    assert_eq!(st, status, "{method} {path} {body:?}: {v}");
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["result"], Value::Null, "{v}");
    assert_eq!(
        v["errors"][0]["code"], code,
        "{method} {path} {body:?}: {v}"
    );
    let msg = v["errors"][0]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    for w in words {
        assert!(
            msg.contains(w),
            "{method} {path}: message {msg:?} lacks {w:?}"
        );
    }
    msg
}

fn is_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

fn is_timestamp(v: &Value) -> bool {
    // 2026-11-25T20:01:02.123456Z
    v.as_str().is_some_and(|s| {
        s.len() == 27
            && s.as_bytes()[4] == b'-'
            && s.as_bytes()[10] == b'T'
            && s.as_bytes()[19] == b'.'
            && s.ends_with('Z')
    })
}

/// A config with one pool `web` of the topology's origins (no monitor) and VIP `www`.
fn config(topo: &Topology, n: usize, extra_pool: &str) -> String {
    let mut s = topo.base_config("");
    s.push_str(&format!(
        "[[api.keys]]\nemail = \"{EMAIL}\"\nkey = \"{KEY}\"\n\n[[pools]]\nname = \"web\"\n{extra_pool}\norigins = [\n"
    ));
    for i in 1..=n {
        s.push_str(&format!(
            "  {{ name = \"o{i}\", address = \"{}\", port = {ORIGIN_PORT} }},\n",
            origin_addr(i)
        ));
    }
    s.push_str("]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n");
    s
}

/// Every object of every kind, for "nothing changed" checks.
fn everything(ns: &NetNs) -> Value {
    json!({
        "monitors": ok(ns, "GET", &format!("{USER}/monitors?per_page=1000"), None),
        "pools": ok(ns, "GET", &format!("{USER}/pools?per_page=1000"), None),
        "lbs": ok(ns, "GET", &format!("{ZONE}?per_page=1000"), None),
    })
}

/// The agent under test with the config of `config(.., 2, "")`: two origins serving, the
/// API on the LB namespace's loopback. Holds the serial lock; everything goes on drop.
struct Api {
    agent: lb_testbed::Agent,
    cfg: TempFile,
    _servers: Vec<Server>,
    topo: Topology,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Api {
    fn start() -> Self {
        let serial = serial();
        require_prerequisites();
        let topo = Topology::build(2);
        let servers = topo.start_servers();
        let cfg = TempFile::new("api.toml", &config(&topo, 2, ""));
        let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
        Self {
            agent,
            cfg,
            _servers: servers,
            topo,
            _serial: serial,
        }
    }

    fn ns(&self) -> &NetNs {
        &self.topo.lb
    }
}

/// The objects the later cases work on, made through the API as a client would: the
/// seed's TCP monitor (`mid`), an HTTP monitor (`hid`), pool `api-pool` (`pid`, monitored
/// by `mid`) and load balancer `api-lb` (`lid`, pools `api-pool` then the file's `web`).
struct Seeded {
    /// The file's pool `web`.
    web_id: String,
    m: Value,
    mid: String,
    hid: String,
    pid: String,
    l: Value,
    lid: String,
}

const SEED_MONITOR: &str = r#"{"description":"Spectrum Health Check","type":"tcp","port":2048,"interval":30,"retries":2,"timeout":5,"method":"connection_established"}"#;

fn seed(ns: &NetNs) -> Seeded {
    let id = |v: &Value| v["id"].as_str().expect("id").to_owned();
    let web_id = id(&ok(ns, "GET", &format!("{ACCOUNT}/pools"), None)[0]);
    let m = ok(
        ns,
        "POST",
        &format!("{ACCOUNT}/monitors"),
        Some(SEED_MONITOR),
    );
    let h = ok(
        ns,
        "POST",
        &format!("{ORG}/monitors"),
        Some(r#"{"type":"http","description":"web"}"#),
    );
    let pool_body = json!({
        "name": "api-pool",
        "description": "made by the API",
        "monitor": id(&m),
        "origins": [{"name": "a", "address": origin_addr(1).to_string(), "port": ORIGIN_PORT, "weight": 0.5}],
        "check_regions": ["WEU"],
        "notification_email": "",
    });
    let p = ok(
        ns,
        "POST",
        &format!("{USER}/pools"),
        Some(&pool_body.to_string()),
    );
    let lb_body = json!({
        "name": "api-lb", "address": "10.0.0.20", "port": 8080,
        "default_pools": [id(&p), web_id], "fallback_pool": web_id,
        "steering_policy": "off", "ttl": 30, "proxied": false,
    });
    let l = ok(ns, "POST", ZONE, Some(&lb_body.to_string()));
    Seeded {
        mid: id(&m),
        hid: id(&h),
        pid: id(&p),
        lid: id(&l),
        web_id,
        m,
        l,
    }
}

#[test]
fn requests_without_valid_credentials_are_refused_and_both_schemes_work() {
    let api = Api::start();
    let ns = api.ns();
    // --- auth
    let mon_path = format!("{ACCOUNT}/monitors");
    refused(
        ns,
        Auth::None,
        "GET",
        &mon_path,
        None,
        401,
        10_000,
        &["Authorization"],
    );
    refused(
        ns,
        Auth::Token("wrong-token-0123456789"),
        "GET",
        &mon_path,
        None,
        403,
        9109,
        &["Invalid"],
    );
    refused(
        ns,
        Auth::Key(EMAIL, "wrong-key-0123456789"),
        "GET",
        &mon_path,
        None,
        403,
        9109,
        &[],
    );
    refused(
        ns,
        Auth::None,
        "POST",
        &mon_path,
        Some("{\"type\":\"tcp\"}"),
        401,
        10_000,
        &[],
    );
    refused(
        ns,
        Auth::Token("wrong-token-0123456789"),
        "DELETE",
        &format!("{ZONE}/00000000000000000000000000000000"),
        None,
        403,
        9109,
        &[],
    );
    let (st, v) = call(ns, Auth::Key(EMAIL, KEY), "GET", &mon_path, None);
    assert_eq!(
        (st, &v["success"]),
        (200, &json!(true)),
        "X-Auth-Email + X-Auth-Key: {v}"
    );
}

#[test]
fn the_files_objects_are_listed_with_ids_derived_from_their_names() {
    let api = Api::start();
    let ns = api.ns();
    // --- the file's objects are there, with ids derived from their names
    let pools = ok(ns, "GET", &format!("{ACCOUNT}/pools"), None);
    assert_eq!(pools.as_array().map(Vec::len), Some(1), "{pools}");
    let web = pools[0].clone();
    assert_eq!(web["name"], "web");
    assert!(
        is_id(&web["id"]) && is_timestamp(&web["created_on"]),
        "{web}"
    );
    let web_id = web["id"].as_str().expect("id").to_owned();
    let lbs = ok(ns, "GET", ZONE, None);
    assert_eq!(
        lbs[0]["default_pools"],
        json!([web_id]),
        "pools are referenced by id: {lbs}"
    );
    assert_eq!(
        lbs[0]["fallback_pool"],
        json!(web_id),
        "fallback filled in: {lbs}"
    );
}

#[test]
fn the_seed_request_makes_a_monitor_with_cloudflares_defaults_under_every_prefix() {
    let api = Api::start();
    let ns = api.ns();
    let mon_path = format!("{ACCOUNT}/monitors");
    // --- the seed's request, verbatim
    let m = ok(ns, "POST", &mon_path, Some(SEED_MONITOR));
    assert!(is_id(&m["id"]), "{m}");
    assert!(
        is_timestamp(&m["created_on"]) && m["created_on"] == m["modified_on"],
        "{m}"
    );
    for (k, want) in [
        ("description", json!("Spectrum Health Check")),
        ("type", json!("tcp")),
        ("port", json!(2048)),
        ("interval", json!(30)),
        ("retries", json!(2)),
        ("timeout", json!(5)),
        ("method", json!("connection_established")),
        ("consecutive_up", json!(0)),
        ("consecutive_down", json!(0)),
        ("follow_redirects", json!(false)),
        ("allow_insecure", json!(false)),
        ("header", json!({})),
    ] {
        assert_eq!(m[k], want, "created monitor's {k}: {m}");
    }
    let mid = m["id"].as_str().expect("id").to_owned();
    // The same object under all three prefixes.
    for prefix in [ACCOUNT, ORG, USER] {
        let got = ok(ns, "GET", &format!("{prefix}/monitors/{mid}"), None);
        assert_eq!(got, m, "GET under {prefix}");
    }
    // An HTTP monitor gets Cloudflare's HTTP defaults.
    let h = ok(
        ns,
        "POST",
        &format!("{ORG}/monitors"),
        Some(r#"{"type":"http","description":"web"}"#),
    );
    for (k, want) in [
        ("method", json!("GET")),
        ("path", json!("/")),
        ("expected_codes", json!("200")),
        ("interval", json!(60)),
        ("timeout", json!(5)),
        ("retries", json!(2)),
        ("port", json!(0)),
    ] {
        assert_eq!(h[k], want, "http monitor's {k}: {h}");
    }
}

#[test]
fn put_replaces_and_patch_merges_a_monitor() {
    let api = Api::start();
    let ns = api.ns();
    let Seeded { m, mid, .. } = seed(ns);
    // --- PUT replaces, PATCH merges; modified_on moves, created_on stays
    std::thread::sleep(Duration::from_millis(5));
    let put = ok(
        ns,
        "PUT",
        &format!("{USER}/monitors/{mid}"),
        Some(r#"{"type":"tcp","port":2049,"description":"replaced"}"#),
    );
    assert_eq!(
        (&put["port"], &put["description"], &put["interval"]),
        (&json!(2049), &json!("replaced"), &json!(60)),
        "PUT is a whole replacement: {put}"
    );
    assert_eq!(put["created_on"], m["created_on"]);
    assert_ne!(put["modified_on"], m["modified_on"]);
    let patched = ok(
        ns,
        "PATCH",
        &format!("{ACCOUNT}/monitors/{mid}"),
        Some(r#"{"interval":15}"#),
    );
    assert_eq!(
        (
            &patched["interval"],
            &patched["port"],
            &patched["description"]
        ),
        (&json!(15), &json!(2049), &json!("replaced")),
        "PATCH keeps other fields: {patched}"
    );
    // A client may send the object back whole, read-only fields included.
    let back = ok(
        ns,
        "PUT",
        &format!("{USER}/monitors/{mid}"),
        Some(&patched.to_string()),
    );
    assert_eq!(back["interval"], 15);
}

/// udp_icmp, icmp_ping and smtp monitors are made, read, replaced and patched like the
/// others, get the shared defaults and none of the http ones, and the fields Cloudflare
/// documents as http-only (and a port on icmp_ping) are refused, named.
#[test]
fn udp_icmp_icmp_ping_and_smtp_monitors_through_the_api() {
    let api = Api::start();
    let ns = api.ns();
    let path = format!("{ACCOUNT}/monitors");
    let mut ids = Vec::new();
    for body in [
        r#"{"type":"udp_icmp","port":53,"description":"dns"}"#,
        r#"{"type":"icmp_ping","description":"reachable"}"#,
        r#"{"type":"smtp","port":25,"consecutive_down":2,"description":"mail"}"#,
    ] {
        let m = ok(ns, "POST", &path, Some(body));
        for (k, want) in [
            ("interval", json!(60)),
            ("timeout", json!(5)),
            ("retries", json!(2)),
            ("header", json!({})),
        ] {
            assert_eq!(m[k], want, "{body}: {k}: {m}");
        }
        for absent in ["method", "path", "expected_codes", "expected_body"] {
            assert!(m.get(absent).is_none(), "{body}: no {absent}: {m}");
        }
        let id = m["id"].as_str().expect("id").to_owned();
        assert_eq!(ok(ns, "GET", &format!("{USER}/monitors/{id}"), None), m);
        ids.push(id);
    }
    let t = Auth::Token(API_TOKEN);
    let (udp, ping, smtp) = (&ids[0], &ids[1], &ids[2]);
    // PATCH merges a field Cloudflare keeps for http(s): refused, naming it and the fix.
    refused(
        ns,
        t,
        "PATCH",
        &format!("{path}/{smtp}"),
        Some(r#"{"expected_codes":"2xx"}"#),
        400,
        1001,
        &["expected_codes", "only http and https", "remove it"],
    );
    refused(
        ns,
        t,
        "PATCH",
        &format!("{path}/{udp}"),
        Some(r#"{"method":"GET"}"#),
        400,
        1001,
        &["method", "udp_icmp monitors", "remove it"],
    );
    refused(
        ns,
        t,
        "PUT",
        &format!("{path}/{ping}"),
        Some(r#"{"type":"icmp_ping","port":80}"#),
        400,
        1001,
        &["port", "udp_icmp"],
    );
    refused(
        ns,
        t,
        "POST",
        &path,
        Some(r#"{"type":"udp"}"#),
        400,
        1001,
        &["type", "udp_icmp", "icmp_ping", "smtp"],
    );
    // PUT changes the type; PATCH changes a shared field.
    let put = ok(
        ns,
        "PUT",
        &format!("{path}/{ping}"),
        Some(r#"{"type":"smtp","port":2525}"#),
    );
    assert_eq!((&put["type"], &put["port"]), (&json!("smtp"), &json!(2525)));
    let patched = ok(
        ns,
        "PATCH",
        &format!("{path}/{udp}"),
        Some(r#"{"interval":15,"timeout":2}"#),
    );
    assert_eq!(
        (&patched["type"], &patched["port"], &patched["interval"]),
        (&json!("udp_icmp"), &json!(53), &json!(15))
    );
}

#[test]
fn pools_and_load_balancers_are_made_and_read_by_id() {
    let api = Api::start();
    let ns = api.ns();
    let web_id = ok(ns, "GET", &format!("{ACCOUNT}/pools"), None)[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let m = ok(
        ns,
        "POST",
        &format!("{ACCOUNT}/monitors"),
        Some(SEED_MONITOR),
    );
    let mid = m["id"].as_str().expect("id").to_owned();
    // --- pools and load balancers by id
    let pool_body = json!({
        "name": "api-pool",
        "description": "made by the API",
        "monitor": mid,
        "origins": [{"name": "a", "address": origin_addr(1).to_string(), "port": ORIGIN_PORT, "weight": 0.5}],
        "check_regions": ["WEU"],
        "notification_email": "",
    });
    let p = ok(
        ns,
        "POST",
        &format!("{USER}/pools"),
        Some(&pool_body.to_string()),
    );
    let pid = p["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (
            &p["monitor"],
            &p["enabled"],
            &p["minimum_origins"],
            &p["origins"][0]["enabled"],
            &p["origin_steering"]["policy"]
        ),
        (
            &json!(mid),
            &json!(true),
            &json!(1),
            &json!(true),
            &json!("random")
        ),
        "{p}"
    );
    assert_eq!(
        p["check_regions"],
        json!(["WEU"]),
        "Cloudflare fields are kept: {p}"
    );
    let health = ok(ns, "GET", &format!("{ACCOUNT}/pools/{pid}/health"), None);
    assert_eq!(health["pool_id"], json!(pid), "{health}");
    let pops = health["pop_health"].as_object().expect("pop_health");
    assert_eq!(pops.len(), 1, "{health}");
    let ph = pops.values().next().expect("one pop");
    assert!(
        ph["origins"][0].get(origin_addr(1).to_string()).is_some(),
        "{health}"
    );
    let lb_body = json!({
        "name": "api-lb", "address": "10.0.0.20", "port": 8080,
        "default_pools": [pid, web_id], "fallback_pool": web_id,
        "steering_policy": "off", "ttl": 30, "proxied": false,
    });
    let l = ok(ns, "POST", ZONE, Some(&lb_body.to_string()));
    let lid = l["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (&l["origin_port"], &l["session_affinity"], &l["ttl"]),
        (&json!(8080), &json!("none"), &json!(30)),
        "{l}"
    );
    assert_eq!(ok(ns, "GET", &format!("{ZONE}/{lid}"), None), l);
}

#[test]
fn pages_cover_a_list_once_in_order() {
    let api = Api::start();
    let ns = api.ns();
    seed(ns);
    // --- pagination
    for i in 0..5 {
        ok(
            ns,
            "POST",
            &format!("{USER}/monitors"),
            Some(&format!(r#"{{"type":"tcp","description":"page {i}"}}"#)),
        );
    }
    let all = ok(ns, "GET", &format!("{USER}/monitors?per_page=1000"), None);
    let n = all.as_array().map_or(0, Vec::len);
    assert_eq!(n, 7, "{all}");
    let mut seen = Vec::new();
    for page in 1..=4 {
        let (st, v) = call(
            ns,
            Auth::Token(API_TOKEN),
            "GET",
            &format!("{USER}/monitors?page={page}&per_page=2"),
            None,
        );
        assert_eq!(st, 200);
        let info = &v["result_info"];
        let count = v["result"].as_array().map_or(0, Vec::len);
        assert_eq!(
            (
                info["page"].as_u64(),
                info["per_page"].as_u64(),
                info["total_count"].as_u64(),
                info["total_pages"].as_u64(),
                info["count"].as_u64()
            ),
            (Some(page), Some(2), Some(7), Some(4), Some(count as u64)),
            "{v}"
        );
        assert_eq!(count, if page < 4 { 2 } else { 1 });
        seen.extend(
            v["result"]
                .as_array()
                .expect("list")
                .iter()
                .map(|x| x["id"].clone()),
        );
    }
    let ids: Vec<Value> = all
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["id"].clone())
        .collect();
    assert_eq!(seen, ids, "pages cover the list once, in order");
    let (_, v) = call(
        ns,
        Auth::Token(API_TOKEN),
        "GET",
        &format!("{USER}/monitors"),
        None,
    );
    assert_eq!(v["result_info"]["per_page"], 20, "default page size");
    refused(
        ns,
        Auth::Token(API_TOKEN),
        "GET",
        &format!("{USER}/monitors?per_page=0"),
        None,
        400,
        1000,
        &["per_page"],
    );
}

#[test]
fn every_error_class_is_refused_and_changes_nothing() {
    let api = Api::start();
    let ns = api.ns();
    let topo = &api.topo;
    let Seeded {
        web_id, mid, pid, ..
    } = seed(ns);
    // --- every error class leaves everything as it was
    let state_before = std::fs::read(&topo.state_file).expect("state file");
    let before = everything(ns);
    let t = Auth::Token(API_TOKEN);
    let pools_path = format!("{USER}/pools");
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some("{\"name\": \"x\", "),
        400,
        1000,
        &["body", "JSON"],
    );
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some("[1, 2]"),
        400,
        1000,
        &["object"],
    );
    refused(ns, t, "POST", &pools_path, Some(""), 400, 1000, &["empty"]);
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some(r#"{"name":"x","origins":[{"name":"a","address":"10.0.11.2"}],"colour":"red"}"#),
        400,
        1000,
        &["colour"],
    );
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some(r#"{"name":"x","origins":[{"name":"a","address":"10.0.11.2","weight":"heavy"}]}"#),
        400,
        1000,
        &["origins[0].weight", "invalid type"],
    );
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some(r#"{"name":"x","origins":[{"name":"a","address":"10.0.11.2","weight":2}]}"#),
        400,
        1001,
        &["origins[0].weight", "between 0 and 1"],
    );
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some(r#"{"name":"x","origins":[{"name":"a","address":"not-an-ip"}]}"#),
        400,
        1001,
        &["origins[0].address"],
    );
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some(r#"{"name":"web","origins":[{"name":"a","address":"10.0.11.2"}]}"#),
        400,
        1001,
        &["name", "already"],
    );
    refused(
        ns,
        t,
        "POST",
        &pools_path,
        Some(
            r#"{"name":"x","monitor":"ffffffffffffffffffffffffffffffff","origins":[{"name":"a","address":"10.0.11.2"}]}"#,
        ),
        400,
        1002,
        &["monitor", "ffffffffffffffffffffffffffffffff"],
    );
    refused(
        ns,
        t,
        "POST",
        ZONE,
        Some(
            r#"{"name":"y","address":"10.0.0.30","port":80,"default_pools":["eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"]}"#,
        ),
        400,
        1002,
        &["pools", "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"],
    );
    refused(
        ns,
        t,
        "POST",
        ZONE,
        Some(
            &json!({"name":"y","address":"10.0.0.10","port":80,"default_pools":[pid]}).to_string(),
        ),
        400,
        1001,
        &["10.0.0.10:80", "www"],
    );
    refused(ns, t, "POST", ZONE, Some(&json!({"name":"y","address":"10.0.0.31","port":80,"default_pools":[pid],"steering_policy":"fastest"}).to_string()), 400, 1001, &["steering_policy", "fastest"]);
    refused(
        ns,
        t,
        "PATCH",
        &format!("{USER}/monitors/{mid}"),
        Some(r#"{"timeout":0}"#),
        400,
        1001,
        &["timeout"],
    );
    refused(
        ns,
        t,
        "PATCH",
        &format!("{USER}/monitors/{mid}"),
        Some(r#"{"id":"00000000000000000000000000000000"}"#),
        400,
        1000,
        &["id"],
    );
    refused(
        ns,
        t,
        "DELETE",
        &format!("{USER}/monitors/{mid}"),
        None,
        400,
        1003,
        &["api-pool"],
    );
    refused(
        ns,
        t,
        "DELETE",
        &format!("{USER}/pools/{web_id}"),
        None,
        400,
        1003,
        &["www", "api-lb"],
    );
    refused(
        ns,
        t,
        "GET",
        &format!("{USER}/pools/ffffffffffffffffffffffffffffffff"),
        None,
        404,
        1004,
        &["no pool"],
    );
    refused(
        ns,
        t,
        "PUT",
        &format!("{ZONE}/ffffffffffffffffffffffffffffffff"),
        Some("{}"),
        404,
        1004,
        &[],
    );
    refused(
        ns,
        t,
        "GET",
        "/client/v4/user/load_balancers/nothing",
        None,
        404,
        7003,
        &["Could not route"],
    );
    refused(
        ns,
        t,
        "POST",
        &format!("{USER}/pools/{pid}/health"),
        Some("{}"),
        405,
        7000,
        &[],
    );
    assert_eq!(everything(ns), before, "rejected requests changed nothing");
    assert_eq!(
        std::fs::read(&topo.state_file).expect("state file"),
        state_before,
        "nor the state file"
    );
}

#[test]
fn put_and_patch_of_a_load_balancer() {
    let api = Api::start();
    let ns = api.ns();
    let Seeded {
        web_id,
        pid,
        l,
        lid,
        ..
    } = seed(ns);
    // --- PUT and PATCH of a load balancer
    let l2 = ok(
        ns,
        "PATCH",
        &format!("{ZONE}/{lid}"),
        Some(r#"{"steering_policy":"random","description":"patched"}"#),
    );
    assert_eq!(
        (
            &l2["steering_policy"],
            &l2["description"],
            &l2["default_pools"]
        ),
        (&json!("random"), &json!("patched"), &json!([pid, web_id])),
        "{l2}"
    );
    let mut whole = l2.clone();
    whole["default_pools"] = json!([pid]);
    let l3 = ok(
        ns,
        "PUT",
        &format!("{ZONE}/{lid}"),
        Some(&whole.to_string()),
    );
    assert_eq!(
        (
            &l3["default_pools"],
            &l3["fallback_pool"],
            &l3["created_on"]
        ),
        (&json!([pid]), &json!(web_id), &l["created_on"]),
        "{l3}"
    );
}

#[test]
fn the_protocol_of_a_load_balancer_is_created_patched_replaced_and_checked() {
    let api = Api::start();
    let ns = api.ns();
    let Seeded { web_id, l, lid, .. } = seed(ns);
    let t = Auth::Token(API_TOKEN);
    let at = format!("{ZONE}/{lid}");
    assert_eq!(l["protocol"], json!("tcp"), "the default is shown: {l}");
    let l2 = ok(ns, "PATCH", &at, Some(r#"{"protocol":"udp"}"#));
    assert_eq!(
        (&l2["protocol"], &l2["port"]),
        (&json!("udp"), &json!(8080)),
        "{l2}"
    );
    assert_eq!(ok(ns, "GET", &at, None)["protocol"], json!("udp"));
    // Refused with HTTP 400, `code` and `words` in the message.
    let no = |method: &str, path: &str, body: &str, code: u64, words: &[&str]| {
        refused(ns, t, method, path, Some(body), 400, code, words);
    };
    no(
        "PATCH",
        &at,
        r#"{"protocol":"sctp"}"#,
        1001,
        &["protocol", "sctp", "\"udp\""],
    );
    no("PATCH", &at, r#"{"protocol":17}"#, 1000, &["protocol"]);
    // Another udp VIP on 10.0.0.20:8080 conflicts; a tcp one there is another VIP.
    let twin = |name: &str, proto: &str| {
        json!({"name": name, "address": "10.0.0.20", "port": 8080, "protocol": proto, "default_pools": [web_id]})
            .to_string()
    };
    no(
        "POST",
        ZONE,
        &twin("dup", "udp"),
        1001,
        &["udp 10.0.0.20:8080"],
    );
    let tcp_twin = ok(ns, "POST", ZONE, Some(&twin("tcp-twin", "tcp")));
    assert_eq!(tcp_twin["protocol"], json!("tcp"));
    // PUT replaces: a body without a protocol is tcp, which tcp-twin now holds.
    let mut whole = l2.clone();
    whole.as_object_mut().expect("object").remove("protocol");
    no(
        "PUT",
        &at,
        &whole.to_string(),
        1001,
        &["tcp 10.0.0.20:8080"],
    );
    let st = ok(ns, "GET", "/lb-agent/v1/status", None);
    let protos: BTreeMap<String, String> = st["load_balancers"]
        .as_array()
        .expect("load balancers")
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or("").to_owned(),
                l["protocol"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(protos["api-lb"], "udp", "{st}");
    assert_eq!(protos["tcp-twin"], "tcp", "{st}");
    assert_eq!(protos["www"], "tcp", "{st}");
}

#[test]
fn delete_removes_objects_of_every_kind() {
    let api = Api::start();
    let ns = api.ns();
    let t = Auth::Token(API_TOKEN);
    let Seeded {
        mid, hid, pid, lid, ..
    } = seed(ns);
    // --- DELETE, of every kind
    let d = ok(ns, "DELETE", &format!("{ZONE}/{lid}"), None);
    assert_eq!(d, json!({"id": lid}));
    ok(ns, "DELETE", &format!("{ACCOUNT}/monitors/{hid}"), None);
    refused(ns, t, "GET", &format!("{ZONE}/{lid}"), None, 404, 1004, &[]);
    ok(ns, "DELETE", &format!("{ORG}/pools/{pid}"), None);
    ok(ns, "DELETE", &format!("{USER}/monitors/{mid}"), None);
    refused(
        ns,
        t,
        "GET",
        &format!("{ACCOUNT}/pools/{pid}"),
        None,
        404,
        1004,
        &[],
    );
}

#[test]
fn a_restart_comes_back_with_every_change_and_api_listen_moves_the_api() {
    let mut api = Api::start();
    let ns = &api.topo.lb;
    seed(ns);
    // --- a restart comes back with every change
    let before = everything(ns);
    assert!(api.agent.stop(), "clean exit");
    let mut agent = lb_testbed::start_agent(ns, &api.cfg.path, &[]);
    assert_eq!(
        everything(ns),
        before,
        "same objects, ids and timestamps after a restart"
    );

    // --api-listen moves the API.
    assert!(agent.stop(), "clean exit");
    let _agent = lb_testbed::start_agent(ns, &api.cfg.path, &["--api-listen", "127.0.0.1:8406"]);
    let (moved, old) = ns.run(|| {
        let get = |port: u16| {
            ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
                .call()
                .map_or(0, |r| r.status())
        };
        (get(8406), get(8405))
    });
    assert_eq!(moved, 200, "the API answers on the new address");
    assert_eq!(old, 0, "and no longer on the default one");
}

/// Which origins answer `n` new connections through the VIP (name -> count).
fn answers(topo: &Topology, n: usize) -> BTreeMap<String, usize> {
    topo.client.run(|| {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = request(None, vip(), "NAME")
                .map_or_else(|e| format!("failed: {e}"), |r| r.trim().to_owned());
            *m.entry(k).or_insert(0) += 1;
        }
        m
    })
}

/// An HTTP endpoint on the LB namespace's loopback that records each POST body and answers
/// 204. Stops (with its thread) when dropped.
struct Webhook {
    port: u16,
    bodies: mpsc::Receiver<Value>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Webhook {
    fn start(ns: &NetNs) -> Self {
        let (tx, bodies) = mpsc::channel();
        let (port_tx, port_rx) = mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = ns.path();
        std::thread::spawn(move || {
            enter_netns(&path);
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            port_tx
                .send(l.local_addr().expect("addr").port())
                .expect("port");
            // Bounded: at most 10 minutes, at most 1000 requests.
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut served = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < deadline
                && served < 1000
            {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served += 1;
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut r = BufReader::new(s);
                let mut len = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok() {
                    let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("webhook port");
        Self { port, bodies, stop }
    }

    /// The next event that `want` accepts, within `timeout` (others are skipped).
    fn next(&self, timeout: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.bodies.recv_timeout(left) {
                Ok(v) if want(&v) => return v,
                Ok(_) => {}
                Err(_) => panic!("no matching webhook event within {timeout:?}"),
            }
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Scrapes `/metrics` (no credentials) and parses it strictly.
fn scrape(ns: &NetNs) -> prom::Parsed {
    let (st, v) = call(ns, Auth::None, "GET", "/metrics", None);
    assert_eq!(st, 200, "{v}");
    let text = v.as_str().expect("text");
    prom::parse(text).unwrap_or_else(|e| panic!("/metrics is not valid text format: {e}\n{text}"))
}

fn sample(p: &prom::Parsed, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    p.samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

fn sum(p: &prom::Parsed, name: &str) -> f64 {
    p.samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn api_changes_move_traffic_metrics_count_it_and_webhooks_report_health() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    let hook = Webhook::start(&topo.lb);
    let monitor = "[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 0.2\ntimeout = 0.2\nretries = 0\n\n";
    let text = config(
        &topo,
        2,
        &format!(
            "monitor = \"tcp\"\nnotification_webhooks = [\"http://127.0.0.1:{}/hook?token=x\"]",
            hook.port
        ),
    )
    .replace("[[pools]]", &format!("{monitor}[[pools]]"));
    let cfg = TempFile::new("api-traffic.toml", &text);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let ns = &topo.lb;

    // Traffic, then the counters in /metrics.
    let n = 300;
    let got = answers(&topo, n);
    assert_eq!(got.values().sum::<usize>(), n, "{got:?}");
    assert!(got.keys().all(|k| k == "o1" || k == "o2"), "{got:?}");
    let m = wait_for(
        "/metrics to count the connections",
        Duration::from_secs(10),
        || {
            let m = scrape(ns);
            (sample(&m, "lb_vip_new_flows_total", &[("load_balancer", "www")]) == Some(n as f64))
                .then_some(m)
        },
    );
    for (o, count) in &got {
        let addr = origin_addr(o[1..].parse().expect("o<n>")).to_string();
        let labels = [
            ("load_balancer", "www"),
            ("pool", "web"),
            ("origin", o.as_str()),
            ("address", addr.as_str()),
        ];
        assert_eq!(
            sample(&m, "lb_origin_new_flows_total", &labels),
            Some(*count as f64),
            "{o}"
        );
        assert!(
            sample(&m, "lb_origin_packets_total", &labels).unwrap_or(0.0) >= 3.0 * *count as f64,
            "{o}: SYN, ACK, data, FIN per connection"
        );
        assert_eq!(
            sample(
                &m,
                "lb_origin_healthy",
                &[("pool", "web"), ("origin", o.as_str())]
            ),
            Some(1.0)
        );
        assert!(
            sample(
                &m,
                "lb_origin_probe_rtt_seconds_count",
                &[("pool", "web"), ("origin", o.as_str())]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{o}: probe RTTs"
        );
    }
    assert_eq!(sum(&m, "lb_origin_new_flows_total"), n as f64);
    assert!(
        sample(&m, "lb_vip_packets_total", &[("load_balancer", "www")]).unwrap_or(0.0)
            >= 3.0 * n as f64
    );
    assert!(
        sample(&m, "lb_vip_reply_bytes_total", &[("load_balancer", "www")]).unwrap_or(0.0) > 0.0
    );
    assert_eq!(sample(&m, "lb_pool_healthy", &[("pool", "web")]), Some(1.0));
    assert_eq!(
        sample(
            &m,
            "lb_load_balancer_active_pool",
            &[("load_balancer", "www"), ("pool", "web")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "lb_flow_table_capacity", &[]), Some(65536.0));
    assert!(sample(&m, "lb_flow_table_entries", &[]).is_some());
    assert!(
        sample(
            &m,
            "lb_dataplane_events_total",
            &[("event", "fwd_redirect")]
        )
        .unwrap_or(0.0)
            > 0.0
            || sample(&m, "lb_dataplane_events_total", &[("event", "fwd_tx")]).unwrap_or(0.0) > 0.0,
        "forwarding events counted"
    );

    // Disable o1 through the API: no new connection reaches it afterwards.
    let web = ok(ns, "GET", &format!("{USER}/pools"), None)[0].clone();
    let pid = web["id"].as_str().expect("id").to_owned();
    let mut origins = web["origins"].clone();
    origins[0]["enabled"] = json!(false);
    let t = Instant::now();
    let p = ok(
        ns,
        "PATCH",
        &format!("{ACCOUNT}/pools/{pid}"),
        Some(&json!({"origins": origins}).to_string()),
    );
    let took = t.elapsed();
    println!(
        "API change applied (PATCH answered after the maps were written) in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(p["origins"][0]["enabled"], false);
    let got = answers(&topo, 200);
    assert_eq!(
        got,
        BTreeMap::from([("o2".to_owned(), 200)]),
        "no new connection reaches the disabled origin"
    );
    let st = ok(ns, "GET", "/lb-agent/v1/status", None);
    let o1 = st["origins"]
        .as_array()
        .expect("origins")
        .iter()
        .find(|o| o["origin"] == "o1")
        .expect("o1")
        .clone();
    assert_eq!(
        (&o1["enabled"], &o1["pool_id"]),
        (&json!(false), &json!(pid)),
        "{o1}"
    );
    // And back.
    origins[0]["enabled"] = json!(true);
    ok(
        ns,
        "PATCH",
        &format!("{ACCOUNT}/pools/{pid}"),
        Some(&json!({"origins": origins}).to_string()),
    );
    let got = answers(&topo, 200);
    assert!(
        got.get("o1").copied().unwrap_or(0) > 50,
        "o1 takes connections again: {got:?}"
    );

    // Health changes reach the pool's webhook.
    servers[1] = None; // o2's server stops: connections are refused
    let e = hook.next(Duration::from_secs(10), |e| {
        e["event"] == "origin_health" && e["origin"] == "o2"
    });
    assert_eq!(
        (
            &e["healthy"],
            &e["previous_healthy"],
            &e["pool"],
            &e["pool_id"]
        ),
        (&json!(false), &json!(true), &json!("web"), &json!(pid)),
        "{e}"
    );
    assert_eq!(
        e["address"],
        json!(format!("{}:{ORIGIN_PORT}", origin_addr(2))),
        "{e}"
    );
    assert_eq!(e["load_balancers"], json!(["www"]), "{e}");
    assert!(is_timestamp(&e["timestamp"]), "{e}");
    servers[0] = None;
    let e = hook.next(Duration::from_secs(10), |e| e["event"] == "pool_health");
    assert_eq!(
        (&e["healthy"], &e["previous_healthy"], &e["pool"]),
        (&json!(false), &json!(true), &json!("web")),
        "{e}"
    );
    let m = wait_for(
        "metrics to show the pool down",
        Duration::from_secs(5),
        || {
            let m = scrape(ns);
            (sample(&m, "lb_pool_healthy", &[("pool", "web")]) == Some(0.0)).then_some(m)
        },
    );
    assert!(sample(&m, "lb_notifications_total", &[("result", "sent")]).unwrap_or(0.0) >= 2.0);
}

/// New connections through the VIP from a thread in `ns`, 8 of them held open, until
/// dropped (at most 60 s, at most 100k connections).
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(ns: &NetNs) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let path = ns.path();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let held: Vec<_> = (0..8)
                .filter_map(|_| lb_testbed::connect(None, vip(), Duration::from_secs(2)).ok())
                .collect();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < deadline
                && n < 100_000
            {
                let _ = request(None, vip(), "NAME");
                n += 1;
            }
            drop(held);
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `data-state` of the dashboard row of `origin` ("pool/name") in a DOM dump.
fn row_state(dom: &str, origin: &str) -> Option<String> {
    let at = dom.find(&format!("data-origin=\"{origin}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let s = tag.split("data-state=\"").nth(1)?;
    Some(s[..s.find('"')?].to_owned())
}

fn lbctl(ns: &NetNs, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(lb_testbed::lbctl_bin())
        .args(["--token", API_TOKEN])
        .args(args)
        .env_remove("LB_API")
        .output()
        .expect("run lbctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dashboard_in_chromium_shows_a_killed_origin_and_lbctl_drives_the_api() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let mut servers: Vec<Option<Server>> = topo.start_servers().into_iter().map(Some).collect();
    let monitor = "[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 0.25\ntimeout = 0.2\nretries = 0\n\n";
    // A second pool, after web, whose monitor is an icmp_ping: the dashboard shows the type.
    let ping = format!(
        "[[monitors]]\nname = \"ping\"\ntype = \"icmp_ping\"\ninterval = 0.25\ntimeout = 0.2\nretries = 0\n\n\
         [[pools]]\nname = \"edge\"\nmonitor = \"ping\"\norigins = [{{ name = \"e1\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n",
        origin_addr(2)
    );
    let text = config(&topo, 2, "monitor = \"tcp\"")
        .replace("[[pools]]", &format!("{monitor}{ping}[[pools]]"))
        .replace(
            "default_pools = [\"web\"]",
            "default_pools = [\"web\", \"edge\"]",
        );
    let cfg = TempFile::new("api-dash.toml", &text);
    let _agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let ns = &topo.lb;
    let got = answers(&topo, 50);
    assert_eq!(got.values().sum::<usize>(), 50, "{got:?}");

    // The dashboard, with the token in the URL fragment (never sent to the server).
    let url = format!("{BASE}/#token={API_TOKEN}");
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let dom = chromium_render(Some(ns), &url, None, Duration::from_millis(3000));
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page loaded its data:\n{dom}"
    );
    assert!(dom.contains("data-lb=\"www\""), "{dom}");
    assert!(
        dom.contains("tcp 10.0.0.10:80"),
        "the VIP with its protocol: {dom}"
    );
    assert_eq!(row_state(&dom, "web/o1").as_deref(), Some("up"), "{dom}");
    assert_eq!(row_state(&dom, "web/o2").as_deref(), Some("up"), "{dom}");
    assert_eq!(row_state(&dom, "edge/e1").as_deref(), Some("up"), "{dom}");
    for (ty, label) in [("tcp", "tcp origin port"), ("icmp_ping", "icmp_ping")] {
        assert!(
            dom.contains(&format!("data-monitor-type=\"{ty}\"")) && dom.contains(label),
            "the pools show their monitor {ty}:\n{dom}"
        );
    }

    // Kill o1: the dashboard shows it down.
    servers[0] = None;
    wait_for("o1 down in the status", Duration::from_secs(10), || {
        let st = ok(ns, "GET", "/lb-agent/v1/status", None);
        st["origins"]
            .as_array()?
            .iter()
            .any(|o| o["origin"] == "o1" && o["state"] == "down")
            .then_some(())
    });
    let shot = artifacts.join("dashboard.png");
    // Traffic while the page renders, so that its rates and open flows show something.
    let traffic = Traffic::start(&topo.client);
    let dom = chromium_render(Some(ns), &url, Some(&shot), Duration::from_millis(3000));
    drop(traffic);
    assert_eq!(row_state(&dom, "web/o1").as_deref(), Some("down"), "{dom}");
    assert_eq!(row_state(&dom, "web/o2").as_deref(), Some("up"), "{dom}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    println!("dashboard screenshot: {}", shot.display());
    // Without a token, the page asks for one instead of showing data.
    let dom = chromium_render(Some(ns), BASE, None, Duration::from_millis(1500));
    assert!(
        dom.contains("data-auth=\"required\"") && row_state(&dom, "web/o2").is_none(),
        "{dom}"
    );

    // lbctl: the status tree, then changes over the API.
    let (okk, out, err) = lbctl(ns, &["status"]);
    assert!(okk, "{err}");
    for w in ["www", "tcp 10.0.0.10:80", "web", "o1", "o2", "down", "up"] {
        assert!(out.contains(w), "lbctl status lacks {w:?}:\n{out}");
    }
    let (okk, out, err) = lbctl(
        ns,
        &[
            "--json",
            "monitors",
            "create",
            "--data",
            r#"{"type":"tcp","port":2048,"description":"from lbctl"}"#,
        ],
    );
    assert!(okk, "{err}");
    let m: Value = serde_json::from_str(&out).expect("JSON");
    assert!(is_id(&m["id"]) && m["description"] == "from lbctl", "{m}");
    let (okk, out, _) = lbctl(ns, &["monitors", "list"]);
    assert!(okk && out.contains("from lbctl"), "{out}");
    let (okk, out, err) = lbctl(ns, &["origin", "disable", "web", "o2"]);
    assert!(okk, "{err}");
    assert!(out.contains("o2"), "{out}");
    let pools = ok(ns, "GET", &format!("{USER}/pools"), None);
    let web = pools
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "web"))
        .expect("pool web");
    assert_eq!(web["origins"][1]["enabled"], false, "{web}");
    let (okk, _, err) = lbctl(ns, &["pools", "delete", "web"]);
    assert!(
        !okk && err.contains("1003") && err.contains("www"),
        "a pool in use is refused: {err}"
    );
    let (okk, _, err) = lbctl(ns, &["--api", "http://127.0.0.1:1", "status"]);
    assert!(!okk && err.contains("cannot reach"), "{err}");
}

/// `lb-agent --config <cfg> check` in `ns`: (success, stdout, stderr).
fn check(ns: &NetNs, cfg: &Path) -> (bool, String, String) {
    lb_testbed::agent_check(lb_testbed::agent_bin(), ns, cfg)
}

#[test]
fn a_start_with_a_file_that_conflicts_with_api_objects_runs_the_stored_state() {
    let _serial = serial();
    require_prerequisites();
    let topo = Topology::build(2);
    let _servers = topo.start_servers();
    let spare = format!(
        "\n[[pools]]\nname = \"spare\"\norigins = [{{ name = \"s2\", address = \"{}\", port = {ORIGIN_PORT} }}]\n",
        origin_addr(2)
    );
    let text = format!("{}{spare}", config(&topo, 2, ""));
    let cfg = TempFile::new("api.toml", &text);
    let mut agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let ns = &topo.lb;

    // Through the API: a load balancer on the file's pool "spare", and a pool "extra".
    let pools = ok(ns, "GET", &format!("{USER}/pools"), None);
    let id_of = |name: &str| {
        pools
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .and_then(|p| p["id"].as_str())
            .unwrap_or_else(|| panic!("no pool {name}: {pools}"))
            .to_owned()
    };
    let (web_id, spare_id) = (id_of("web"), id_of("spare"));
    let lb = ok(
        ns,
        "POST",
        ZONE,
        Some(
            &json!({"name": "api-lb", "address": "10.0.0.11", "port": 80, "default_pools": [spare_id]})
                .to_string(),
        ),
    );
    let lb_id = lb["id"].as_str().expect("id").to_owned();
    let extra = ok(
        ns,
        "POST",
        &format!("{USER}/pools"),
        Some(
            &json!({"name": "extra", "origins": [{"name": "e1", "address": origin_addr(1).to_string(), "port": ORIGIN_PORT}]})
                .to_string(),
        ),
    );
    let extra_id = extra["id"].as_str().expect("id").to_owned();
    let before = everything(ns);
    assert!(agent.stop(), "clean exit");

    // The file now drops "spare" (which api-lb uses), defines a pool named "extra" (an API
    // pool's name) and drains o1: none of it may apply.
    let o1 = format!(
        "{{ name = \"o1\", address = \"{}\", port = {ORIGIN_PORT} }}",
        origin_addr(1)
    );
    let conflicting = config(&topo, 2, "")
        .replace(&o1, &o1.replace(" }", ", weight = 0 }"))
        .replace(
            "[[load_balancers]]",
            &format!(
                "[[pools]]\nname = \"extra\"\norigins = [{{ name = \"x\", address = \"{}\", port = {ORIGIN_PORT} }}]\n\n[[load_balancers]]",
                origin_addr(2)
            ),
        );
    assert!(conflicting.contains("weight = 0") && !conflicting.contains("spare"));
    std::fs::write(&cfg.path, &conflicting).expect("write config");

    // check reports the conflict as a start would meet it.
    let (passed, out, err) = check(ns, &cfg.path);
    assert!(!passed, "check fails: {out}");
    let lb_words = format!(
        "pool \"spare\" is no longer defined in the file, but load balancer \"api-lb\" (id {lb_id}, made through the API) uses it"
    );
    let pool_words = format!(
        "pools[1] \"extra\" in the file: a pool named \"extra\" (id {extra_id}) was made through the API"
    );
    for w in [&lb_words, &pool_words] {
        assert!(err.contains(w.as_str()), "check names both objects: {err}");
    }
    assert!(
        err.contains("would refuse its changes") && !err.contains("load_balancers[1]"),
        "{err}"
    );

    // The start runs, with the stored objects, and logs the refusal.
    let agent = lb_testbed::start_agent(&topo.lb, &cfg.path, &[]);
    let line = agent
        .wait_log(0, "config rejected at start", Duration::from_secs(1))
        .unwrap_or_else(|| panic!("refusal logged: {}", agent.log_text()));
    for w in [&lb_words, &pool_words] {
        assert!(
            line.contains(w.as_str()),
            "the log names both objects: {line}"
        );
    }
    assert_eq!(everything(ns), before, "the API serves the stored objects");
    let a = answers(&topo, 60);
    assert!(
        a.get("o1").is_some_and(|n| *n > 0) && !a.contains_key("failed"),
        "the stored web pool (o1 not drained) forwards: {a:?}"
    );
    let status = lb_agent::status::Status::read(&topo.status_file).expect("status file");
    let pools: Vec<&str> = status.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        pools,
        ["web", "spare", "extra"],
        "health covers the stored pools"
    );

    // Resolving the conflicts through the API lets the next reload apply the file.
    ok(
        ns,
        "PATCH",
        &format!("{ZONE}/{lb_id}"),
        Some(&json!({"default_pools": [web_id], "fallback_pool": web_id}).to_string()),
    );
    ok(ns, "DELETE", &format!("{USER}/pools/{extra_id}"), None);
    agent
        .reload()
        .expect("reload accepted once the conflicts are gone");
    let a = answers(&topo, 60);
    assert_eq!(a.get("o1"), None, "the file's drain applies now: {a:?}");
    let names: Vec<Value> = ok(ns, "GET", &format!("{USER}/pools"), None)
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("web"), json!("extra")],
        "spare gone, the file's extra in"
    );
}

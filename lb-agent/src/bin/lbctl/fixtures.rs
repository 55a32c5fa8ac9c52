//! Canned API answers shared by the unit tests of the client, commands and rendering.

use lb_agent::status::Status;
use serde_json::{json, Value};

pub(crate) const WEB_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub(crate) const WEB_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub(crate) const SORRY: &str = "cccccccccccccccccccccccccccccccc";
pub(crate) const SPARE: &str = "dddddddddddddddddddddddddddddddd";
pub(crate) const LB1: &str = "11111111111111111111111111111111";
pub(crate) const LB2: &str = "22222222222222222222222222222222";

/// Configured load balancers as `GET /client/v4/zones/-/load_balancers` returns them.
pub(crate) fn lbs_config() -> Vec<Value> {
    serde_json::from_value(json!([
        {"id": LB1, "name": "www", "address": "10.0.0.10", "port": 80, "enabled": true,
         "default_pools": [WEB_A, WEB_B], "fallback_pool": SORRY, "steering_policy": "off",
         "session_affinity": "ip", "session_affinity_ttl": 300},
        {"id": LB2, "name": "api", "address": "10.0.0.11", "port": 443, "protocol": "udp", "enabled": true,
         "default_pools": [WEB_B], "fallback_pool": SORRY, "steering_policy": "geo",
         "region_pools": {"WNAM": [WEB_A]}, "session_affinity": "none"}
    ]))
    .expect("canned lbs")
}

pub(crate) fn pools_config() -> Vec<Value> {
    serde_json::from_value(json!([
        {"id": WEB_A, "name": "web-a", "enabled": true, "minimum_origins": 1,
         "monitor": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "origin_steering": {"policy": "hash"},
         "origins": [
            {"name": "a1", "address": "10.0.1.1", "weight": 1, "enabled": true},
            {"name": "a2", "address": "10.0.1.2", "port": 8080, "weight": 0.5, "enabled": false}]},
        {"id": WEB_B, "name": "web-b", "enabled": true, "minimum_origins": 1, "monitor": null,
         "origins": [{"name": "b1", "address": "10.0.2.1", "weight": 1, "enabled": true}]},
        {"id": SORRY, "name": "sorry", "enabled": true, "minimum_origins": 1,
         "origins": [{"name": "s1", "address": "10.0.9.1", "weight": 1, "enabled": true}]}
    ]))
    .expect("canned pools")
}

/// `GET /lb-agent/v1/status` result: www on its first default pool, api on
/// its fallback because web-b is down, and a pool no load balancer uses; as served.
pub(crate) fn status_value() -> Value {
    json!({
        "updated": 1_000_000, "pop": "AMS",
        "load_balancers": [
            {"id": LB1, "name": "www", "vip": "10.0.0.10:80", "steering_policy": "off",
             "active_pool": "web-a", "active_pool_id": WEB_A, "fallback": false, "enabled": true,
             "packets": 1_234_567, "bytes": 3_400_000_000_u64, "new_flows": 45_000,
             "packets_per_sec": 1234.0, "bytes_per_sec": 3_400_000.0, "new_flows_per_sec": 12.0},
            {"id": LB2, "name": "api", "vip": "10.0.0.11:443", "protocol": "udp", "steering_policy": "geo",
             "active_pool": "sorry", "active_pool_id": SORRY, "fallback": true, "enabled": true,
             "packets": 0, "bytes": 0, "new_flows": 0,
             "packets_per_sec": 0.0, "bytes_per_sec": 0.0, "new_flows_per_sec": 0.0}
        ],
        "pools": [
            {"id": WEB_A, "name": "web-a", "healthy": true, "healthy_origins": 1,
             "enabled_origins": 1, "minimum_origins": 1, "rtt_ms": 0.8},
            {"id": WEB_B, "name": "web-b", "healthy": false, "healthy_origins": 0,
             "enabled_origins": 1, "minimum_origins": 1, "rtt_ms": null},
            {"id": SORRY, "name": "sorry", "healthy": true, "healthy_origins": 1,
             "enabled_origins": 1, "minimum_origins": 1, "rtt_ms": 12.4},
            {"id": SPARE, "name": "spare", "healthy": true, "healthy_origins": 0,
             "enabled_origins": 0, "minimum_origins": 0, "rtt_ms": null}
        ],
        "origins": [
            {"pool": "web-a", "pool_id": WEB_A, "origin": "a1", "address": "10.0.1.1", "port": 80,
             "state": "up", "enabled": true, "weight": 1.0, "reason": "connect ok", "rtt_ms": 0.42,
             "since": 999_700, "open_flows": 37, "packets": 10, "bytes": 10, "new_flows": 1,
             "packets_per_sec": 1234.0, "bytes_per_sec": 3_400_000.0, "new_flows_per_sec": 12.0},
            {"pool": "web-a", "pool_id": WEB_A, "origin": "a2", "address": "10.0.1.2", "port": 8080,
             "state": "unknown", "enabled": false, "weight": 0.5, "reason": "", "rtt_ms": null,
             "since": null, "open_flows": 0, "packets": 0, "bytes": 0, "new_flows": 0,
             "packets_per_sec": 0.0, "bytes_per_sec": 0.0, "new_flows_per_sec": 0.0},
            {"pool": "web-b", "pool_id": WEB_B, "origin": "b1", "address": "10.0.2.1", "port": 443,
             "state": "down", "enabled": true, "weight": 1.0, "reason": "connection refused",
             "rtt_ms": null, "since": 999_990, "open_flows": 0, "packets": 0, "bytes": 0,
             "new_flows": 0, "packets_per_sec": 0.0, "bytes_per_sec": 0.0, "new_flows_per_sec": 0.0},
            {"pool": "sorry", "pool_id": SORRY, "origin": "s1", "address": "10.0.9.1", "port": 80,
             "state": "up", "enabled": true, "weight": 1.0, "reason": "connect ok", "rtt_ms": 12.4,
             "since": 900_000, "open_flows": 2, "packets": 0, "bytes": 0, "new_flows": 0,
             "packets_per_sec": 0.4, "bytes_per_sec": 150.0, "new_flows_per_sec": 0.1}
        ]
    })
}

/// `status_value`, read as `lbctl status` reads it.
pub(crate) fn status() -> Status {
    serde_json::from_value(status_value()).expect("the fixture is a status")
}

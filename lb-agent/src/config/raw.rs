//! The file as written: serde types with `deny_unknown_fields`, Cloudflare's field names and
//! defaults. Nothing here is checked beyond its TOML type; `validate` does the rest.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::defaults::{
    DEFAULT_MONITOR_INTERVAL, DEFAULT_MONITOR_RETRIES, DEFAULT_MONITOR_TIMEOUT,
    DEFAULT_MONITOR_TYPE, DEFAULT_ORIGIN_STEERING, DEFAULT_PROTOCOL, DEFAULT_SESSION_AFFINITY,
    DEFAULT_STEERING_POLICY,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub dataplane: RawDataplane,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub monitors: Vec<RawMonitor>,
    #[serde(default)]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub load_balancers: Vec<RawLoadBalancer>,
    #[serde(default)]
    pub geo: RawGeo,
    #[serde(default)]
    pub api: RawApi,
}

/// The HTTP API: where it listens, who may use it, where its changes are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// `address:port`, or `"off"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Accepted as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Accepted as `X-Auth-Email` + `X-Auth-Key`.
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub email: String,
    pub key: String,
}

/// Where clients are: a MaxMind-format database and/or prefixes listed here (which win over
/// the database for the same prefix; a longer prefix always wins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<PathBuf>,
    #[serde(default)]
    pub prefixes: Vec<RawGeoPrefix>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoPrefix {
    #[serde(default)]
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataplane {
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
    /// One address or prefix (either family), or a list of at most one IPv4 and one IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_address: Option<RawSnatAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<[u32; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_table_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_port_reuse_after_close: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_port_reuse_after_idle: Option<u32>,
    /// Answer ICMP echo requests to VIP addresses in the data path (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_ping: Option<bool>,
    /// Pass traffic that is neither for a VIP, a SNAT flow nor the host to the stack, which
    /// routes it (default false: the data path drops it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_other: Option<bool>,
    #[serde(default, skip_serializing_if = "RawTcpTimeouts::is_empty")]
    pub tcp_timeouts: RawTcpTimeouts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_cookies: Option<SynCookies>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn_budget: Option<u32>,
    /// Idle seconds before a UDP flow the origin has answered is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<u32>,
    /// Idle seconds before a UDP flow the origin has never answered is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_unreplied_timeout: Option<u32>,
    /// New UDP flows waiting for their origin's first answer before new ones are dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_budget: Option<u32>,
}

/// `dataplane.snat_address` as written: one string (`"192.0.2.1"`, `"2001:db8::1"`, a
/// prefix), as before IPv6, or a list of them (`["192.0.2.1", "2001:db8::1"]`); which
/// entries make sense (one per family) is `validate`'s business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RawSnatAddress {
    One(String),
    List(Vec<String>),
}

impl RawSnatAddress {
    /// Each entry with its field path: `dataplane.snat_address` for the single form,
    /// `dataplane.snat_address[i]` in a list.
    pub fn entries(&self) -> Vec<(String, &str)> {
        const F: &str = "dataplane.snat_address";
        match self {
            Self::One(s) => vec![(F.to_owned(), s.as_str())],
            Self::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("{F}[{i}]"), s.as_str()))
                .collect(),
        }
    }
}

// By hand rather than `#[serde(untagged)]`, whose error ("data did not match any variant")
// names neither form.
impl<'de> Deserialize<'de> for RawSnatAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSnatAddress;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an address or prefix (\"192.0.2.1\"), or a list of at most one IPv4 and one IPv6 (\"[\"192.0.2.1\", \"2001:db8::1\"]\")",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawSnatAddress::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    list.push(s);
                }
                Ok(RawSnatAddress::List(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// `dataplane.syn_cookies`: when SYNs without a flow are answered with SYN cookies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// When more than `syn_budget` handshakes are in flight.
    #[default]
    Auto,
    /// Always (no handshake state before the client proves its address).
    Always,
    /// Never.
    Off,
}

/// `[dataplane.tcp_timeouts]`: idle seconds per TCP state before a flow is dead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpTimeouts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_closed: Option<u32>,
}

impl RawTcpTimeouts {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_concurrency: Option<u32>,
    /// This host's PoP (the key of `pop_pools`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pop: Option<String>,
    /// This host's position, for `proximity` steering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Weight of a new probe RTT in each origin's moving average (`dynamic_latency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_smoothing: Option<f64>,
}

/// A health monitor, with Cloudflare's field names. Durations are seconds (fractions allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type", default = "default_monitor_type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default)]
    pub port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub header: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default = "default_timeout", serialize_with = "whole_secs")]
    pub timeout: f64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_interval", serialize_with = "whole_secs")]
    pub interval: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_codes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_body: Option<String>,
    #[serde(default)]
    pub follow_redirects: bool,
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default)]
    pub consecutive_up: u32,
    #[serde(default)]
    pub consecutive_down: u32,
    /// Cloudflare's; accepted and kept, no effect here (probes run from this host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_zone: Option<String>,
}

/// Seconds as Cloudflare writes them: an integer when whole (`30`, not `30.0`), so clients
/// that read them into integers keep working.
#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with signature"
)]
fn whole_secs<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && (0.0..=1e15).contains(v) {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "whole, in range"
        )]
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    #[serde(default = "one_u32")]
    pub minimum_origins: u32,
    #[serde(default)]
    pub origins: Vec<RawOrigin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_steering: Option<RawOriginSteering>,
    /// URLs that receive a JSON event when an origin or the pool changes health.
    #[serde(default)]
    pub notification_webhooks: Vec<String>,
    /// Cloudflare's; accepted and kept, no effect here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_regions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_filter: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_shedding: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOriginSteering {
    #[serde(default = "default_origin_steering")]
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRandomSteering {
    #[serde(default)]
    pub pool_weights: BTreeMap<String, f64>,
    #[serde(default = "one")]
    pub default_weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Cloudflare's per-origin request headers; accepted and kept, no effect at layer 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadBalancer {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u32,
    /// `"tcp"` or `"udp"`: the protocol of the VIP (and of its traffic to the origins).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Port on the origins when an origin does not name its own; defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_port: Option<u32>,
    #[serde(default)]
    pub default_pools: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_pool: Option<String>,
    #[serde(default = "default_steering")]
    pub steering_policy: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_steering: Option<RawRandomSteering>,
    #[serde(default)]
    pub region_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub country_pools: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub pop_pools: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_affinity")]
    pub session_affinity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity_ttl: Option<u32>,
    /// Cloudflare's (DNS and proxy settings, HTTP-level rules); accepted and kept, no effect
    /// at layer 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity_attributes: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_routing: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location_strategy: Option<serde_json::Value>,
}

/// How XDP is attached: `native` (in the driver, fastest), `generic` (in the stack, works on
/// any device), `auto` (native where the driver supports it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Native,
    Generic,
    Auto,
}

// serde's `default = "..."` functions.

fn default_monitor_type() -> String {
    DEFAULT_MONITOR_TYPE.into()
}
const fn default_timeout() -> f64 {
    DEFAULT_MONITOR_TIMEOUT
}
const fn default_retries() -> u32 {
    DEFAULT_MONITOR_RETRIES
}
const fn default_interval() -> f64 {
    DEFAULT_MONITOR_INTERVAL
}
fn default_origin_steering() -> String {
    DEFAULT_ORIGIN_STEERING.into()
}
fn default_affinity() -> String {
    DEFAULT_SESSION_AFFINITY.into()
}
fn default_protocol() -> String {
    DEFAULT_PROTOCOL.into()
}
fn default_steering() -> String {
    DEFAULT_STEERING_POLICY.into()
}
const fn yes() -> bool {
    true
}
const fn one() -> f64 {
    1.0
}
const fn one_u32() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;
    use crate::config::{Config, ConfigError, RawMonitor};
    use std::path::Path;

    #[test]
    fn monitor_seconds_serialize_as_integers_when_whole() {
        let m: RawMonitor =
            toml::from_str("name = \"m\"\ninterval = 30\ntimeout = 0.5").expect("monitor");
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["interval"], serde_json::json!(30), "{v}");
        assert_eq!(v["timeout"], serde_json::json!(0.5), "{v}");
    }

    #[test]
    fn answer_ping_and_route_other_must_be_booleans() {
        for field in ["answer_ping", "route_other"] {
            match Config::parse(
                &GOOD.replace("pin_dir", &format!("{field} = \"yes\"\npin_dir")),
                Path::new("t"),
            ) {
                Err(ConfigError::Parse { message, .. }) => {
                    assert!(message.contains(field), "{message}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn xdp_mode_must_be_known() {
        match Config::parse(
            &GOOD.replace("pin_dir", "xdp_mode = \"fast\"\npin_dir"),
            Path::new("t"),
        ) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("xdp_mode"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}

//! Configuration: the TOML file as written (`RawConfig`, serde) and the validated, typed form
//! the rest of the agent uses (`Config`). Validation is pure and reports every error at once,
//! each naming its field (`pools[1].origins[0].weight: ...`) and the fix.
//!
//! Field names and defaults follow Cloudflare Load Balancing (pools of weighted origins,
//! load balancers with ordered `default_pools`), so its users feel at home.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use lb_common::{MAX_INTERFACES, MAX_LC_MEMBERS, MAX_ORIGINS, MAX_RINGS, MAX_VIPS};
use serde::{Deserialize, Serialize};

use crate::geo::{self, GeoPrefix, Region};

/// Where pinned maps and links live unless the config says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
/// Default SNAT port range: above Linux's default ephemeral range (32768-60999), so SNAT
/// ports never collide with the host's own connections (health probes among them).
pub const DEFAULT_SNAT_PORTS: [u16; 2] = [61000, 65535];
pub const MIN_FLOW_TABLE: u32 = 1024;
/// Above Linux's TIME_WAIT (60 s) with margin, so an origin never sees a port reused while
/// it still remembers the previous connection on it.
pub const DEFAULT_REUSE_AFTER_CLOSE: u32 = 120;
/// One day, as generous as conntrack towards idle connections without keepalives.
pub const DEFAULT_REUSE_AFTER_IDLE: u32 = 86_400;
/// Idle seconds before an unfinished handshake is dead: covers a client's first three SYN
/// retransmissions (1, 3 and 7 s into the attempt with Linux's backoff); a later
/// retransmission simply starts a new flow. Short, because a flood of SYNs that are never
/// completed holds SNAT ports for exactly this long.
pub const DEFAULT_SYN_TIMEOUT: u32 = 10;
/// Idle seconds before a half-closed flow (a FIN from one side only) is dead: longer than
/// conntrack's FIN_WAIT (120 s), so an idle half-close (a server still computing its answer
/// after the client's FIN) survives; any packet restarts the clock.
pub const DEFAULT_HALF_CLOSED_TIMEOUT: u32 = 300;
/// Handshakes in flight (over the SYN timeout) before SYNs are answered with cookies: far
/// above what legitimate clients keep in flight (connections per second times the
/// handshake's round trip: 12k/s at 1 ms is 12), and a small share of the SNAT ports a
/// flood of spoofed SYNs could otherwise hold for the SYN timeout.
pub const DEFAULT_SYN_BUDGET: u32 = 1024;
pub const MAX_FLOW_TABLE: u32 = 1 << 26;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for lb-agent: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} error(s):\n{}", .errors.len(), Errors(.errors))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

struct Errors<'a>(&'a [String]);
impl fmt::Display for Errors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_address: Option<String>,
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

fn default_monitor_type() -> String {
    "http".into()
}
const fn default_timeout() -> f64 {
    5.0
}
const fn default_retries() -> u32 {
    2
}
const fn default_interval() -> f64 {
    60.0
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

fn default_origin_steering() -> String {
    DEFAULT_ORIGIN_STEERING.into()
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

fn default_affinity() -> String {
    "none".into()
}

/// Cloudflare's default `session_affinity_ttl` (23 hours).
pub const DEFAULT_AFFINITY_TTL: u32 = 82_800;

/// Monitor defaults (Cloudflare's), which validation applies and the store fills in so the
/// API shows what is in force: the method of tcp monitors and of http(s) ones, the path
/// and the expected codes of http(s) ones.
pub const TCP_MONITOR_METHOD: &str = "connection_established";
pub const DEFAULT_HTTP_METHOD: &str = "GET";
pub const DEFAULT_MONITOR_PATH: &str = "/";
pub const DEFAULT_EXPECTED_CODES: &str = "200";
/// Origin steering when a pool names none.
pub const DEFAULT_ORIGIN_STEERING: &str = "random";
/// Cloudflare's longest `session_affinity_ttl` (7 days).
pub const MAX_AFFINITY_TTL: u32 = 604_800;

fn default_steering() -> String {
    "off".into()
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

// ---------------------------------------------------------------------------------------------
// The validated form.

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dataplane: Dataplane,
    pub agent: Agent,
    pub monitors: Vec<Monitor>,
    pub pools: Vec<Pool>,
    pub load_balancers: Vec<LoadBalancer>,
    pub geo: Geo,
    pub api: Api,
}

/// The HTTP API's settings (`[api]`). Credentials from the environment are added by the
/// agent at start (`LB_API_TOKEN`, `LB_API_EMAIL` + `LB_API_KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    /// `None`: the API is off.
    pub listen: Option<std::net::SocketAddr>,
    pub tokens: Vec<String>,
    /// (email, key) pairs.
    pub keys: Vec<(String, String)>,
    /// Where monitors, pools and load balancers (with the API's changes) are kept.
    pub state_file: PathBuf,
}

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8405";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/lb-agent/state.json";

/// Client geo data: the database's prefixes (loaded by `Config::load`/`parse`) and the
/// config's own, which win for the same prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geo {
    pub database: Option<PathBuf>,
    /// Loaded from `database`; shared, because a full database has ~400k prefixes.
    pub database_prefixes: Arc<Vec<GeoPrefix>>,
    pub prefixes: Vec<GeoPrefix>,
}

impl Geo {
    pub fn is_empty(&self) -> bool {
        self.database.is_none() && self.prefixes.is_empty()
    }

    /// Every prefix the trie should hold, the config's winning over the database's.
    pub fn merged(&self) -> BTreeMap<(Ipv4Addr, u8), GeoPrefix> {
        let mut out = BTreeMap::new();
        for p in self.database_prefixes.iter().chain(self.prefixes.iter()) {
            out.insert((p.net, p.len), *p);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataplane {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    pub snat_address: Ipv4Addr,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub flow_table_size: u32,
    /// Seconds a closed (FIN/RST) flow must be idle before a new flow may take its SNAT port.
    pub snat_port_reuse_after_close: u32,
    /// Idle seconds before an established flow is dead (`tcp_timeouts.established`, or its
    /// older name `snat_port_reuse_after_idle`).
    pub snat_port_reuse_after_idle: u32,
    /// Echo requests to VIP addresses are answered by XDP (else dropped).
    pub answer_ping: bool,
    /// Transit traffic (not ours, not the host's) is passed to the stack to be routed
    /// (else dropped in XDP: no open router).
    pub route_other: bool,
    /// Idle seconds before an unfinished handshake is dead (`tcp_timeouts.syn`).
    pub syn_timeout: u32,
    /// Idle seconds before a half-closed flow is dead (`tcp_timeouts.half_closed`).
    pub half_closed_timeout: u32,
    /// `Settings::syn_budget`: handshakes in flight before SYN cookies; 0 = always,
    /// `u32::MAX` = never.
    pub syn_budget: u32,
}

/// Where the agent publishes health and steering state, and how hard it may probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub status_file: PathBuf,
    pub probe_concurrency: u32,
    pub pop: Option<String>,
    /// (latitude, longitude) in degrees.
    pub position: Option<(f64, f64)>,
    pub rtt_smoothing: f64,
}

pub const DEFAULT_STATUS_FILE: &str = "/run/lb-agent/status.json";
pub const DEFAULT_PROBE_CONCURRENCY: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorKind {
    Tcp,
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
}

/// A status-code pattern: three characters, each a digit or `x` ("200", "2xx", "30x").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePattern(pub [Option<u8>; 3]);

impl CodePattern {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.trim().as_bytes();
        if b.len() != 3 {
            return None;
        }
        let mut out = [None; 3];
        for (i, c) in b.iter().enumerate() {
            out[i] = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'x' | b'X' => None,
                _ => return None,
            };
        }
        out[0]?; // the class digit must be given
        Some(Self(out))
    }

    pub fn matches(&self, code: u16) -> bool {
        let digits = [
            (code / 100 % 10) as u8,
            (code / 10 % 10) as u8,
            (code % 10) as u8,
        ];
        self.0
            .iter()
            .zip(digits)
            .all(|(p, d)| p.is_none_or(|p| p == d))
    }
}

impl fmt::Display for CodePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.0 {
            match d {
                Some(d) => write!(f, "{d}")?,
                None => f.write_str("x")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    pub name: String,
    pub description: String,
    pub kind: MonitorKind,
    /// HTTP(S) only.
    pub method: HttpMethod,
    /// 0 = the origin's port.
    pub port: u16,
    pub path: String,
    pub header: Vec<(String, String)>,
    pub timeout: std::time::Duration,
    pub retries: u32,
    pub interval: std::time::Duration,
    /// HTTP(S) only.
    pub expected_codes: CodePattern,
    /// Case-insensitive substring of the first 10 KB of the body; empty = any.
    pub expected_body: String,
    pub follow_redirects: bool,
    pub allow_insecure: bool,
    pub consecutive_up: u32,
    pub consecutive_down: u32,
}

impl Monitor {
    /// The longest delay before a target's first check: checks start spread over up to one
    /// interval (at most 1 s), so they do not fire in lockstep yet health is known soon.
    pub fn start_jitter_max(&self) -> std::time::Duration {
        self.interval.min(std::time::Duration::from_secs(1))
    }
}

/// Shortest accepted monitor interval and timeout.
pub const MIN_PROBE_SECS: f64 = 0.05;

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    /// Name of the monitor; `None`: enabled origins count as healthy.
    pub monitor: Option<String>,
    pub minimum_origins: u32,
    pub origins: Vec<Origin>,
    /// (latitude, longitude) in degrees, for `proximity` steering.
    pub position: Option<(f64, f64)>,
    pub origin_steering: OriginSteering,
    /// URLs notified of this pool's and its origins' health changes.
    pub notification_webhooks: Vec<String>,
}

/// How a pool picks an origin for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OriginSteering {
    /// Weighted Maglev over the 5-tuple (Cloudflare's weighted `random`).
    #[default]
    Random,
    /// Weighted Maglev over the client address: a client stays on one origin while it is up.
    Hash,
    /// Fewest open flows per weight, counted by the data path.
    LeastConnections,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub name: String,
    pub address: Ipv4Addr,
    /// `None`: the load balancer's `origin_port` (or its `port`).
    pub port: Option<u16>,
    pub weight: f64,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancer {
    pub name: String,
    pub description: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub origin_port: u16,
    pub default_pools: Vec<String>,
    /// Used when every default pool is down, whatever its own health. Defaults to the last
    /// of `default_pools`.
    pub fallback_pool: String,
    pub steering_policy: SteeringPolicy,
    pub enabled: bool,
    /// `random`: pool name -> weight; pools not listed take `default_weight`.
    pub pool_weights: BTreeMap<String, f64>,
    pub default_weight: f64,
    pub region_pools: BTreeMap<Region, Vec<String>>,
    /// ISO 3166-1 alpha-2 code -> pools.
    pub country_pools: BTreeMap<[u8; 2], Vec<String>>,
    pub pop_pools: BTreeMap<String, Vec<String>>,
    /// `Some(ttl seconds)`: session affinity by client IP.
    pub affinity_ttl: Option<u32>,
}

impl LoadBalancer {
    /// Every pool this load balancer may send traffic to.
    pub fn all_pools(&self) -> impl Iterator<Item = &String> {
        self.default_pools
            .iter()
            .chain(std::iter::once(&self.fallback_pool))
            .chain(self.region_pools.values().flatten())
            .chain(self.country_pools.values().flatten())
            .chain(self.pop_pools.values().flatten())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteeringPolicy {
    /// Standard failover: the first healthy pool of `default_pools`.
    Off,
    /// New connections spread over the healthy pools by `random_steering` weights.
    Random,
    /// The healthy pool with the lowest probe RTT (moving average) first.
    DynamicLatency,
    /// `pop_pools` for this host's PoP, else `country_pools` / `region_pools` by the client's
    /// location (looked up per new flow by the data path), else `default_pools`.
    Geo,
    /// The healthy pool nearest to this host (`agent.latitude/longitude`) first.
    Proximity,
}

impl SteeringPolicy {
    /// The name as written in the config (Cloudflare's).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Random => "random",
            Self::DynamicLatency => "dynamic_latency",
            Self::Geo => "geo",
            Self::Proximity => "proximity",
        }
    }
}

impl RawConfig {
    /// Reads and parses a config file, without validating it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text, without validating it; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::parse(text, path)?, path, None)
    }

    /// Validates `raw` and reads its geo database, unless `loaded` already holds the same
    /// database's prefixes (an API change does not re-read a file that did not change).
    pub fn from_raw(
        raw: RawConfig,
        path: &Path,
        loaded: Option<&Geo>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = validate(raw).map_err(|errors| ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        })?;
        if let Some(db) = &mut cfg.geo.database {
            // A relative path is relative to the config file, like an include.
            if db.is_relative() {
                if let Some(dir) = path.parent() {
                    *db = dir.join(&*db);
                }
            }
        }
        if let Some(g) = loaded.filter(|g| g.database.is_some() && g.database == cfg.geo.database) {
            cfg.geo.database_prefixes = g.database_prefixes.clone();
            return Ok(cfg);
        }
        if let Some(db) = &mut cfg.geo.database {
            let prefixes = geo::load_mmdb(db).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                errors: vec![format!(
                    "geo.database: {e}; give the path of a MaxMind DB file (GeoLite2-Country.mmdb or one in its format)"
                )],
            })?;
            cfg.geo.database_prefixes = Arc::new(prefixes);
        }
        Ok(cfg)
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn monitor(&self, name: &str) -> Option<&Monitor> {
        self.monitors.iter().find(|m| m.name == name)
    }
}

fn ipv4(s: &str, field: &str, errors: &mut Vec<String>) -> Option<Ipv4Addr> {
    if s.is_empty() {
        errors.push(format!(
            "{field}: missing; set it to an IPv4 address such as \"10.0.0.10\""
        ));
        return None;
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => Some(a),
        Ok(std::net::IpAddr::V6(_)) => {
            errors.push(format!(
                "{field}: \"{s}\" is IPv6, which this version does not forward yet; use an IPv4 address"
            ));
            None
        }
        Err(_) => {
            errors.push(format!(
                "{field}: \"{s}\" is not an IP address; write it as dotted IPv4, e.g. \"10.0.0.10\""
            ));
            None
        }
    }
}

fn port(p: u32, field: &str, errors: &mut Vec<String>) -> Option<u16> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errors.push(format!("{field}: {p} is not a TCP port; use 1-65535"));
            None
        }
    }
}

fn name_ok(name: &str, field: &str, errors: &mut Vec<String>) {
    if name.is_empty() {
        errors.push(format!("{field}: missing; give it a unique name"));
    }
}

/// Duplicate names in the file as written. The store merges the file's objects by name, so
/// a second `[[pools]]` named like the first would silently replace it: this runs on the file
/// before the merge (on start, reload and `lb-agent check`).
pub fn file_name_errors(raw: &RawConfig) -> Vec<String> {
    fn dups<'a>(list: &str, names: impl Iterator<Item = &'a String>, errors: &mut Vec<String>) {
        let mut first = HashMap::new();
        for (i, n) in names.enumerate() {
            if n.is_empty() {
                continue;
            }
            if let Some(f) = first.get(n) {
                errors.push(format!(
                    "{list}[{i}].name: \"{n}\" is already the name of {list}[{f}]; names must be unique: rename or remove one of them"
                ));
            } else {
                first.insert(n, i);
            }
        }
    }
    let mut errors = Vec::new();
    dups(
        "monitors",
        raw.monitors.iter().map(|m| &m.name),
        &mut errors,
    );
    dups("pools", raw.pools.iter().map(|p| &p.name), &mut errors);
    dups(
        "load_balancers",
        raw.load_balancers.iter().map(|l| &l.name),
        &mut errors,
    );
    errors
}

/// Validates a parsed config. Every rule adds to the list; nothing stops at the first error.
pub fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let dp = &raw.dataplane;

    // --- dataplane
    if dp.interfaces.is_empty() {
        errors.push(
            "dataplane.interfaces: empty; list the interfaces to attach XDP to, e.g. [\"eth0\"]"
                .to_owned(),
        );
    }
    let mut seen_if = HashSet::new();
    for (i, name) in dp.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            errors.push(format!(
                "dataplane.interfaces[{i}]: \"{name}\" is not an interface name (1-15 characters, no '/' or spaces)"
            ));
        }
        if !seen_if.insert(name) {
            errors.push(format!(
                "dataplane.interfaces[{i}]: \"{name}\" is listed twice; list each interface once"
            ));
        }
    }
    if dp.interfaces.len() > MAX_INTERFACES as usize {
        errors.push(format!(
            "dataplane.interfaces: {} interfaces; at most {MAX_INTERFACES} are supported",
            dp.interfaces.len()
        ));
    }
    let pin_dir = dp
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    if !pin_dir.is_absolute() {
        errors.push(format!(
            "dataplane.pin_dir: \"{}\" is relative; use an absolute path on a bpffs, e.g. \"{DEFAULT_PIN_DIR}\"",
            pin_dir.display()
        ));
    }
    let snat_address = match &dp.snat_address {
        Some(s) => ipv4(s, "dataplane.snat_address", &mut errors),
        None => {
            errors.push(
                "dataplane.snat_address: missing; set it to an address of this host that origins route back to"
                    .to_owned(),
            );
            None
        }
    };
    let [smin, smax] = dp.snat_ports.unwrap_or(DEFAULT_SNAT_PORTS.map(u32::from));
    let snat_min = port(smin, "dataplane.snat_ports[0]", &mut errors);
    let snat_max = port(smax, "dataplane.snat_ports[1]", &mut errors);
    if let (Some(a), Some(b)) = (snat_min, snat_max) {
        if a > b {
            errors.push(format!(
                "dataplane.snat_ports: [{a}, {b}] is empty; write [first, last] with first <= last"
            ));
        } else if a < 1024 {
            errors.push(format!(
                "dataplane.snat_ports: starts at {a}, inside the well-known ports; start at 1024 or above"
            ));
        }
    }
    let flow_table_size = dp
        .flow_table_size
        .unwrap_or(lb_common::DEFAULT_FLOW_TABLE_SIZE);
    if !(MIN_FLOW_TABLE..=MAX_FLOW_TABLE).contains(&flow_table_size) {
        errors.push(format!(
            "dataplane.flow_table_size: {flow_table_size} is out of range; use {MIN_FLOW_TABLE}-{MAX_FLOW_TABLE}"
        ));
    }

    let reuse_close = dp
        .snat_port_reuse_after_close
        .unwrap_or(DEFAULT_REUSE_AFTER_CLOSE);
    let tt = &dp.tcp_timeouts;
    if tt.established.is_some() && dp.snat_port_reuse_after_idle.is_some() {
        errors.push(
            "dataplane.snat_port_reuse_after_idle: set together with tcp_timeouts.established, which replaces it; keep only tcp_timeouts.established"
                .to_owned(),
        );
    }
    let (reuse_idle, idle_field) = match (tt.established, dp.snat_port_reuse_after_idle) {
        (Some(v), _) => (v, "dataplane.tcp_timeouts.established"),
        (None, Some(v)) => (v, "dataplane.snat_port_reuse_after_idle"),
        (None, None) => (
            DEFAULT_REUSE_AFTER_IDLE,
            "dataplane.tcp_timeouts.established",
        ),
    };
    if reuse_idle < reuse_close {
        errors.push(format!(
            "{idle_field}: {reuse_idle} s is shorter than snat_port_reuse_after_close ({reuse_close} s); an open flow must be kept at least as long as a closed one"
        ));
    }
    let syn_timeout = tt.syn.unwrap_or(DEFAULT_SYN_TIMEOUT);
    let max_syn = lb_common::HANDSHAKE_BUCKETS - 1;
    if !(1..=max_syn).contains(&syn_timeout) {
        errors.push(format!(
            "dataplane.tcp_timeouts.syn: {syn_timeout} s is out of range; use 1-{max_syn} (a handshake that takes longer is retried by the client's next SYN)"
        ));
    }
    let half_closed_timeout = tt
        .half_closed
        .unwrap_or(DEFAULT_HALF_CLOSED_TIMEOUT.min(reuse_idle));
    if half_closed_timeout < syn_timeout || half_closed_timeout > reuse_idle {
        errors.push(format!(
            "dataplane.tcp_timeouts.half_closed: {half_closed_timeout} s must lie between tcp_timeouts.syn ({syn_timeout} s) and the established timeout ({reuse_idle} s)"
        ));
    }

    let syn_budget = match (dp.syn_cookies.unwrap_or_default(), dp.syn_budget) {
        (SynCookies::Auto, b) => {
            let b = b.unwrap_or(DEFAULT_SYN_BUDGET);
            if b == 0 || b == u32::MAX {
                errors.push(format!(
                    "dataplane.syn_budget: {b} is out of range; use 1-4294967294 (or syn_cookies = \"always\" / \"off\")"
                ));
            }
            b
        }
        (SynCookies::Always, None) => 0,
        (SynCookies::Off, None) => u32::MAX,
        (c, Some(_)) => {
            errors.push(format!(
                "dataplane.syn_budget: only applies with syn_cookies = \"auto\" (it is \"{}\"); remove one of them",
                if c == SynCookies::Always { "always" } else { "off" }
            ));
            0
        }
    };

    // --- agent
    let status_file = raw
        .agent
        .status_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATUS_FILE));
    if !status_file.is_absolute() {
        errors.push(format!(
            "agent.status_file: \"{}\" is relative; use an absolute path such as \"{DEFAULT_STATUS_FILE}\"",
            status_file.display()
        ));
    }
    let probe_concurrency = raw
        .agent
        .probe_concurrency
        .unwrap_or(DEFAULT_PROBE_CONCURRENCY);
    if !(1..=65_536).contains(&probe_concurrency) {
        errors.push(format!(
            "agent.probe_concurrency: {probe_concurrency} is out of range; use 1-65536"
        ));
    }
    if let Some(pop) = &raw.agent.pop {
        pop_ok(pop, "agent.pop", &mut errors);
    }
    let host_position = position(
        raw.agent.latitude,
        raw.agent.longitude,
        "agent",
        &mut errors,
    );
    let rtt_smoothing = raw
        .agent
        .rtt_smoothing
        .unwrap_or(crate::health::RTT_EWMA_ALPHA);
    if !(rtt_smoothing > 0.0 && rtt_smoothing <= 1.0) {
        errors.push(format!(
            "agent.rtt_smoothing: {rtt_smoothing} is out of range; use a number above 0 and at most 1 (the weight of each new RTT sample; 1 = no smoothing)"
        ));
    }

    // --- geo
    let geo = validate_geo(&raw.geo, &mut errors);

    // --- api
    let api = validate_api(&raw.api, &mut errors);

    // --- monitors
    let mut monitors = Vec::new();
    let mut monitor_names = HashMap::new();
    for (mi, m) in raw.monitors.iter().enumerate() {
        if let Some(mon) = validate_monitor(mi, m, &mut monitor_names, &mut errors) {
            monitors.push(mon);
        }
    }

    // --- pools
    let mut pools = Vec::new();
    let mut pool_names = HashMap::new();
    let mut origin_count = 0usize;
    for (pi, p) in raw.pools.iter().enumerate() {
        let f = format!("pools[{pi}]");
        name_ok(&p.name, &format!("{f}.name"), &mut errors);
        if !p.name.is_empty() {
            if let Some(first) = pool_names.insert(p.name.clone(), pi) {
                errors.push(format!(
                    "{f}.name: \"{}\" is already the name of pools[{first}]; pool names must be unique",
                    p.name
                ));
            }
        }
        if p.origins.is_empty() {
            errors.push(format!(
                "{f}.origins: empty; a pool needs at least one origin"
            ));
        }
        let mut origins = Vec::new();
        let mut origin_names = HashSet::new();
        for (oi, o) in p.origins.iter().enumerate() {
            let f = format!("{f}.origins[{oi}]");
            name_ok(&o.name, &format!("{f}.name"), &mut errors);
            if !o.name.is_empty() && !origin_names.insert(o.name.as_str()) {
                errors.push(format!(
                    "{f}.name: \"{}\" appears twice in this pool; origin names must be unique within a pool",
                    o.name
                ));
            }
            let address = ipv4(&o.address, &format!("{f}.address"), &mut errors);
            let port = o
                .port
                .and_then(|p| port(p, &format!("{f}.port"), &mut errors));
            if !(o.weight.is_finite() && (0.0..=1.0).contains(&o.weight)) {
                errors.push(format!(
                    "{f}.weight: {} is out of range; use a number between 0 and 1 (0 drains the origin)",
                    o.weight
                ));
            }
            if let Some(address) = address {
                origins.push(Origin {
                    name: o.name.clone(),
                    address,
                    port,
                    weight: o.weight,
                    enabled: o.enabled,
                });
            }
        }
        if let Some(m) = &p.monitor {
            if !monitor_names.contains_key(m) {
                errors.push(format!(
                    "{f}.monitor: no monitor is named \"{m}\"; define it under [[monitors]] or fix the name"
                ));
            }
        }
        if p.minimum_origins == 0 {
            errors.push(format!(
                "{f}.minimum_origins: 0; a pool needs at least 1 healthy origin to be healthy"
            ));
        } else if !p.origins.is_empty() && p.minimum_origins as usize > p.origins.len() {
            errors.push(format!(
                "{f}.minimum_origins: {} but the pool has {} origin(s), so it could never be healthy; lower it or add origins",
                p.minimum_origins,
                p.origins.len()
            ));
        }
        origin_count += p.origins.len();
        let pool_position = position(p.latitude, p.longitude, &f, &mut errors);
        let origin_steering = match p.origin_steering.as_ref().map(|o| o.policy.as_str()) {
            None | Some("random" | "") => OriginSteering::Random,
            Some("hash") => OriginSteering::Hash,
            Some("least_connections") => {
                if p.origins.len() > MAX_LC_MEMBERS {
                    errors.push(format!(
                        "{f}.origin_steering.policy: least_connections compares every origin per new connection, so a pool may have at most {MAX_LC_MEMBERS}; this one has {}. Split the pool or use \"random\"",
                        p.origins.len()
                    ));
                }
                OriginSteering::LeastConnections
            }
            Some("least_outstanding_requests") => {
                errors.push(format!(
                    "{f}.origin_steering.policy: least_outstanding_requests counts HTTP requests, which a layer-4 load balancer cannot see; use \"least_connections\""
                ));
                OriginSteering::Random
            }
            Some(other) => {
                errors.push(format!(
                    "{f}.origin_steering.policy: unknown policy \"{other}\"; use \"random\", \"hash\" or \"least_connections\""
                ));
                OriginSteering::Random
            }
        };
        for (i, url) in p.notification_webhooks.iter().enumerate() {
            if let Err(e) = crate::notify::validate_url(url) {
                errors.push(format!("{f}.notification_webhooks[{i}]: {e}"));
            }
        }
        pools.push(Pool {
            notification_webhooks: p.notification_webhooks.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            enabled: p.enabled,
            monitor: p.monitor.clone(),
            minimum_origins: p.minimum_origins,
            origins,
            position: pool_position,
            origin_steering,
        });
    }
    if raw.pools.len() > MAX_RINGS as usize {
        errors.push(format!(
            "pools: {} pools; at most {MAX_RINGS} are supported",
            raw.pools.len()
        ));
    }
    if origin_count > MAX_ORIGINS as usize {
        errors.push(format!(
            "pools: {origin_count} origins in all; at most {MAX_ORIGINS} are supported"
        ));
    }

    // --- load balancers
    let mut lbs = Vec::new();
    let mut lb_names = HashMap::new();
    let mut vips: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
    for (li, l) in raw.load_balancers.iter().enumerate() {
        let f = format!("load_balancers[{li}]");
        name_ok(&l.name, &format!("{f}.name"), &mut errors);
        if !l.name.is_empty() {
            if let Some(first) = lb_names.insert(l.name.clone(), li) {
                errors.push(format!(
                    "{f}.name: \"{}\" is already the name of load_balancers[{first}]; names must be unique",
                    l.name
                ));
            }
        }
        let address = ipv4(&l.address, &format!("{f}.address"), &mut errors);
        let vport = port(l.port, &format!("{f}.port"), &mut errors);
        let origin_port = match l.origin_port {
            Some(p) => port(p, &format!("{f}.origin_port"), &mut errors),
            None => vport,
        };
        if let (Some(a), Some(p)) = (address, vport) {
            if let Some(first) = vips.insert((a, p), li) {
                errors.push(format!(
                    "{f}: {a}:{p} is already the VIP of load_balancers[{first}]; each address:port can serve one load balancer"
                ));
            }
            if Some(a) == snat_address {
                errors.push(format!(
                    "{f}.address: {a} is also dataplane.snat_address; use a separate SNAT address"
                ));
            }
        }
        if l.default_pools.is_empty() {
            errors.push(format!(
                "{f}.default_pools: empty; list the pools to send traffic to, in failover order"
            ));
        }
        for (i, name) in l.default_pools.iter().enumerate() {
            if !pool_names.contains_key(name) {
                errors.push(format!(
                    "{f}.default_pools[{i}]: no pool is named \"{name}\"; define it under [[pools]] or fix the name"
                ));
            }
        }
        if let Some(fb) = &l.fallback_pool {
            if !pool_names.contains_key(fb) {
                errors.push(format!(
                    "{f}.fallback_pool: no pool is named \"{fb}\"; define it under [[pools]] or fix the name"
                ));
            }
        }
        let steering_policy = match l.steering_policy.as_str() {
            "off" | "" => Some(SteeringPolicy::Off),
            "random" => Some(SteeringPolicy::Random),
            "dynamic_latency" => Some(SteeringPolicy::DynamicLatency),
            "geo" => Some(SteeringPolicy::Geo),
            "proximity" => Some(SteeringPolicy::Proximity),
            "least_connections" | "least_outstanding_requests" => {
                errors.push(format!(
                    "{f}.steering_policy: \"{}\" across pools is not supported; set origin_steering = {{ policy = \"least_connections\" }} on the pools instead",
                    l.steering_policy
                ));
                None
            }
            other => {
                errors.push(format!(
                    "{f}.steering_policy: unknown policy \"{other}\"; use \"off\" (standard failover), \"random\", \"dynamic_latency\", \"geo\" or \"proximity\""
                ));
                None
            }
        };
        let pool_ref = |list: &[String], field: &str, errors: &mut Vec<String>| {
            if list.is_empty() {
                errors.push(format!(
                    "{field}: empty; list at least one pool, in failover order"
                ));
            }
            for (i, name) in list.iter().enumerate() {
                if !pool_names.contains_key(name) {
                    errors.push(format!(
                        "{field}[{i}]: no pool is named \"{name}\"; define it under [[pools]] or fix the name"
                    ));
                }
            }
        };
        let mut region_pools = BTreeMap::new();
        for (code, list) in &l.region_pools {
            let field = format!("{f}.region_pools.{code}");
            pool_ref(list, &field, &mut errors);
            match Region::parse(code) {
                Some(r) => {
                    region_pools.insert(r, list.clone());
                }
                None => errors.push(format!(
                    "{field}: unknown region \"{code}\"; use one of Cloudflare's region codes: {}",
                    Region::ALL.map(Region::code).join(", ")
                )),
            }
        }
        let mut country_pools = BTreeMap::new();
        for (code, list) in &l.country_pools {
            let field = format!("{f}.country_pools.{code}");
            pool_ref(list, &field, &mut errors);
            match country_code(code) {
                Some(c) => {
                    country_pools.insert(c, list.clone());
                }
                None => errors.push(format!(
                    "{field}: \"{code}\" is not an ISO 3166-1 alpha-2 country code; write it like \"US\" or \"DE\""
                )),
            }
        }
        for (code, list) in &l.pop_pools {
            let field = format!("{f}.pop_pools.{code}");
            pool_ref(list, &field, &mut errors);
            pop_ok(code, &field, &mut errors);
        }
        let rs = l.random_steering.as_ref();
        let default_weight = rs.map_or(1.0, |r| r.default_weight);
        if !(default_weight.is_finite() && (0.0..=1.0).contains(&default_weight)) {
            errors.push(format!(
                "{f}.random_steering.default_weight: {default_weight} is out of range; use a number between 0 and 1"
            ));
        }
        let pool_weights = rs.map(|r| r.pool_weights.clone()).unwrap_or_default();
        for (name, w) in &pool_weights {
            let field = format!("{f}.random_steering.pool_weights.{name}");
            if !l.default_pools.contains(name) {
                errors.push(format!(
                    "{field}: \"{name}\" is not one of this load balancer's default_pools; random steering spreads over default_pools"
                ));
            }
            if !(w.is_finite() && (0.0..=1.0).contains(w)) {
                errors.push(format!(
                    "{field}: {w} is out of range; use a number between 0 and 1 (0 sends no new connections there)"
                ));
            }
        }
        match steering_policy {
            Some(SteeringPolicy::Proximity) if host_position.is_none() => errors.push(format!(
                "{f}.steering_policy: \"proximity\" needs this host's position; set agent.latitude and agent.longitude"
            )),
            Some(SteeringPolicy::Geo)
                if geo.is_empty() && (!region_pools.is_empty() || !country_pools.is_empty()) =>
            {
                errors.push(format!(
                    "{f}.region_pools / country_pools: set, but no client location data is configured, so no client would match; add [geo] database = \"/path/GeoLite2-Country.mmdb\" and/or [[geo.prefixes]]"
                ));
            }
            _ => {}
        }
        let affinity_ttl = match l.session_affinity.as_str() {
            "none" | "" => None,
            "ip" => {
                let ttl = l.session_affinity_ttl.unwrap_or(DEFAULT_AFFINITY_TTL);
                if !(1..=MAX_AFFINITY_TTL).contains(&ttl) {
                    errors.push(format!(
                        "{f}.session_affinity_ttl: {ttl} is out of range; use 1-{MAX_AFFINITY_TTL} seconds (default {DEFAULT_AFFINITY_TTL})"
                    ));
                }
                Some(ttl)
            }
            "cookie" | "ip_cookie" | "header" => {
                errors.push(format!(
                    "{f}.session_affinity: \"{}\" needs HTTP, which a layer-4 load balancer does not parse; use \"ip\" (the client address) or \"none\"",
                    l.session_affinity
                ));
                None
            }
            other => {
                errors.push(format!(
                    "{f}.session_affinity: unknown value \"{other}\"; use \"none\" or \"ip\""
                ));
                None
            }
        };
        if l.session_affinity_ttl.is_some()
            && affinity_ttl.is_none()
            && l.session_affinity == "none"
        {
            errors.push(format!(
                "{f}.session_affinity_ttl: set, but session_affinity is \"none\"; set session_affinity = \"ip\" or remove the TTL"
            ));
        }
        let fallback_pool = l
            .fallback_pool
            .clone()
            .or_else(|| l.default_pools.last().cloned())
            .unwrap_or_default();
        if let (Some(address), Some(port), Some(origin_port), Some(steering_policy)) =
            (address, vport, origin_port, steering_policy)
        {
            lbs.push(LoadBalancer {
                name: l.name.clone(),
                description: l.description.clone(),
                address,
                port,
                origin_port,
                default_pools: l.default_pools.clone(),
                fallback_pool,
                steering_policy,
                enabled: l.enabled,
                pool_weights,
                default_weight,
                region_pools,
                country_pools,
                pop_pools: l.pop_pools.clone(),
                affinity_ttl,
            });
        }
    }
    vip_is_not_an_origin(&raw, &vips, &mut errors);
    if raw.load_balancers.len() > MAX_VIPS as usize {
        errors.push(format!(
            "load_balancers: {} load balancers; at most {MAX_VIPS} are supported",
            raw.load_balancers.len()
        ));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(snat_address), Some(snat_port_min), Some(snat_port_max)) =
        (snat_address, snat_min, snat_max)
    else {
        unreachable!("every None above pushed an error")
    };
    Ok(Config {
        dataplane: Dataplane {
            interfaces: dp.interfaces.clone(),
            xdp_mode: dp.xdp_mode,
            pin_dir,
            snat_address,
            snat_port_min,
            snat_port_max,
            flow_table_size,
            snat_port_reuse_after_close: reuse_close,
            snat_port_reuse_after_idle: reuse_idle,
            answer_ping: dp.answer_ping.unwrap_or(true),
            route_other: dp.route_other.unwrap_or(false),
            syn_timeout,
            half_closed_timeout,
            syn_budget,
        },
        agent: Agent {
            status_file,
            probe_concurrency,
            pop: raw.agent.pop.clone(),
            position: host_position,
            rtt_smoothing,
        },
        monitors,
        pools,
        load_balancers: lbs,
        geo,
        api,
    })
}

/// A VIP that is also an origin's address and port would send the load balancer's own
/// forwarded packets back into itself. An origin without a `port` is reached on the
/// `origin_port` of each load balancer that uses its pool.
fn vip_is_not_an_origin(
    raw: &RawConfig,
    vips: &HashMap<(Ipv4Addr, u16), usize>,
    errors: &mut Vec<String>,
) {
    let mut ports_of_pool: HashMap<&str, HashSet<u32>> = HashMap::new();
    for l in &raw.load_balancers {
        let origin_port = l.origin_port.unwrap_or(l.port);
        let used = l
            .default_pools
            .iter()
            .chain(l.fallback_pool.iter())
            .chain(l.region_pools.values().flatten())
            .chain(l.country_pools.values().flatten())
            .chain(l.pop_pools.values().flatten());
        for name in used {
            ports_of_pool
                .entry(name.as_str())
                .or_default()
                .insert(origin_port);
        }
    }
    let mut found: Vec<(usize, String)> = Vec::new();
    for (pi, p) in raw.pools.iter().enumerate() {
        for (oi, o) in p.origins.iter().enumerate() {
            let Ok(address) = o.address.parse::<Ipv4Addr>() else {
                continue;
            };
            let ports: Vec<u32> = match o.port {
                Some(port) => vec![port],
                None => ports_of_pool
                    .get(p.name.as_str())
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default(),
            };
            for port in ports {
                let Ok(port) = u16::try_from(port) else {
                    continue;
                };
                if let Some(&li) = vips.get(&(address, port)) {
                    found.push((
                        li,
                        format!(
                            "load_balancers[{li}].address: {address} with port {port} is also the address and port of pools[{pi}].origins[{oi}] (origin \"{}\" of pool \"{}\"); a VIP cannot be one of the origins it forwards to: give the load balancer another address or port, or fix the origin",
                            o.name, p.name
                        ),
                    ));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    errors.extend(found.into_iter().map(|(_, e)| e));
}

fn validate_api(raw: &RawApi, errors: &mut Vec<String>) -> Api {
    let listen = match raw.listen.as_deref().unwrap_or(DEFAULT_API_LISTEN) {
        "off" => None,
        s => match s.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "api.listen: \"{s}\" is not address:port; write e.g. \"{DEFAULT_API_LISTEN}\", or \"off\" to turn the API off"
                ));
                None
            }
        },
    };
    for (i, t) in raw.tokens.iter().enumerate() {
        if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(format!(
                "api.tokens[{i}]: too short or contains spaces; use at least 16 printable characters, e.g. from `openssl rand -hex 20`"
            ));
        }
    }
    for (i, k) in raw.keys.iter().enumerate() {
        if !k.email.contains('@') {
            errors.push(format!(
                "api.keys[{i}].email: \"{}\" is not an email address; it is matched against X-Auth-Email",
                k.email
            ));
        }
        if k.key.len() < 16 || k.key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(format!(
                "api.keys[{i}].key: too short or contains spaces; use at least 16 printable characters"
            ));
        }
    }
    let state_file = raw
        .state_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
    if !state_file.is_absolute() {
        errors.push(format!(
            "api.state_file: \"{}\" is relative; use an absolute path such as \"{DEFAULT_STATE_FILE}\"",
            state_file.display()
        ));
    }
    Api {
        listen,
        tokens: raw.tokens.clone(),
        keys: raw
            .keys
            .iter()
            .map(|k| (k.email.clone(), k.key.clone()))
            .collect(),
        state_file,
    }
}

/// A PoP name as Cloudflare writes them: 3 letters (IATA airport code), upper case; longer
/// names are accepted for sites of your own (letters, digits, '-').
fn pop_ok(pop: &str, field: &str, errors: &mut Vec<String>) {
    let ok = !pop.is_empty()
        && pop.len() <= 32
        && pop
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        errors.push(format!(
            "{field}: \"{pop}\" is not a PoP name; use upper-case letters, digits and '-', e.g. \"AMS\""
        ));
    }
}

fn country_code(code: &str) -> Option<[u8; 2]> {
    match code.as_bytes() {
        [a, b] if geo::is_country(code) => Some([*a, *b]),
        _ => None,
    }
}

/// Latitude and longitude, both or neither.
fn position(
    lat: Option<f64>,
    lon: Option<f64>,
    f: &str,
    errors: &mut Vec<String>,
) -> Option<(f64, f64)> {
    match (lat, lon) {
        (None, None) => None,
        (Some(lat), Some(lon)) => {
            let mut ok = true;
            if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                errors.push(format!(
                    "{f}.latitude: {lat} is out of range; use degrees between -90 and 90"
                ));
                ok = false;
            }
            if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                errors.push(format!(
                    "{f}.longitude: {lon} is out of range; use degrees between -180 and 180"
                ));
                ok = false;
            }
            ok.then_some((lat, lon))
        }
        (Some(_), None) => {
            errors.push(format!(
                "{f}.longitude: missing; latitude and longitude go together"
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(format!(
                "{f}.latitude: missing; latitude and longitude go together"
            ));
            None
        }
    }
}

/// The `[geo]` section; the database itself is read by `Config::parse`.
fn validate_geo(raw: &RawGeo, errors: &mut Vec<String>) -> Geo {
    let mut prefixes = Vec::new();
    let mut seen = HashMap::new();
    for (i, p) in raw.prefixes.iter().enumerate() {
        let f = format!("geo.prefixes[{i}]");
        let net = match p.prefix.split_once('/') {
            Some((a, l)) => match (a.parse::<Ipv4Addr>(), l.parse::<u8>()) {
                (Ok(a), Ok(l)) if l <= 32 => Some((a, l)),
                _ => None,
            },
            None => None,
        };
        let Some((addr, len)) = net else {
            errors.push(format!(
                "{f}.prefix: \"{}\" is not an IPv4 prefix; write it as address/length, e.g. \"198.51.100.0/24\"",
                p.prefix
            ));
            continue;
        };
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        if u32::from(addr) & !mask != 0 {
            errors.push(format!(
                "{f}.prefix: \"{}\" has host bits set; write the network address, \"{}/{len}\"",
                p.prefix,
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        if let Some(first) = seen.insert((addr, len), i) {
            errors.push(format!(
                "{f}.prefix: \"{}\" is listed twice (also geo.prefixes[{first}]); list each prefix once",
                p.prefix
            ));
        }
        let country = p.country.as_deref().and_then(|c| {
            let cc = country_code(c);
            if cc.is_none() {
                errors.push(format!(
                    "{f}.country: \"{c}\" is not an ISO 3166-1 alpha-2 country code; write it like \"US\" or \"DE\""
                ));
            }
            cc
        });
        let region = p.region.as_deref().and_then(|r| {
            let reg = Region::parse(r);
            if reg.is_none() {
                errors.push(format!(
                    "{f}.region: unknown region \"{r}\"; use one of Cloudflare's region codes: {}",
                    Region::ALL.map(Region::code).join(", ")
                ));
            }
            reg
        });
        if p.country.is_none() && p.region.is_none() {
            errors.push(format!(
                "{f}: neither country nor region; give country = \"DE\" (its region follows) or region = \"WEU\" or both"
            ));
        }
        prefixes.push(GeoPrefix {
            net: addr,
            len,
            country,
            region,
        });
    }
    Geo {
        database: raw.database.clone(),
        database_prefixes: Arc::default(),
        prefixes,
    }
}

fn secs(v: f64, field: &str, errors: &mut Vec<String>) -> Option<std::time::Duration> {
    if (MIN_PROBE_SECS..=86_400.0).contains(&v) {
        Some(std::time::Duration::from_secs_f64(v))
    } else {
        errors.push(format!(
            "{field}: {v} is out of range; use seconds between {MIN_PROBE_SECS} and 86400 (fractions allowed, e.g. 0.25)"
        ));
        None
    }
}

fn validate_monitor(
    mi: usize,
    m: &RawMonitor,
    names: &mut HashMap<String, usize>,
    errors: &mut Vec<String>,
) -> Option<Monitor> {
    let f = format!("monitors[{mi}]");
    let before = errors.len();
    name_ok(&m.name, &format!("{f}.name"), errors);
    if !m.name.is_empty() {
        if let Some(first) = names.insert(m.name.clone(), mi) {
            errors.push(format!(
                "{f}.name: \"{}\" is already the name of monitors[{first}]; monitor names must be unique",
                m.name
            ));
        }
    }
    let kind = match m.kind.as_str() {
        "tcp" => Some(MonitorKind::Tcp),
        "http" => Some(MonitorKind::Http),
        "https" => Some(MonitorKind::Https),
        other => {
            errors.push(format!(
                "{f}.type: \"{other}\" is not a monitor type; use \"tcp\", \"http\" or \"https\""
            ));
            None
        }
    };
    let is_http = matches!(kind, Some(MonitorKind::Http | MonitorKind::Https));
    let method = match (kind, m.method.as_deref()) {
        (Some(MonitorKind::Tcp), None) => HttpMethod::Get,
        (Some(MonitorKind::Tcp), Some(TCP_MONITOR_METHOD)) => HttpMethod::Get,
        (Some(MonitorKind::Tcp), Some(other)) => {
            errors.push(format!("{f}.method: \"{other}\" does not apply to tcp monitors; use \"{TCP_MONITOR_METHOD}\""));
            HttpMethod::Get
        }
        (_, None | Some(DEFAULT_HTTP_METHOD)) => HttpMethod::Get,
        (_, Some("HEAD")) => HttpMethod::Head,
        (_, Some(other)) => {
            errors.push(format!(
                "{f}.method: \"{other}\" is not supported; use \"GET\" or \"HEAD\""
            ));
            HttpMethod::Get
        }
    };
    let port = if m.port == 0 {
        Some(0)
    } else {
        port(m.port, &format!("{f}.port"), errors)
    };
    let path = m
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_MONITOR_PATH.into());
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        errors.push(format!(
            "{f}.path: \"{path}\" must start with '/' and contain no spaces"
        ));
    }
    if !is_http && m.path.is_some() {
        errors.push(format!(
            "{f}.path: only http and https monitors send a path; remove it or change type"
        ));
    }
    let mut header = Vec::new();
    for (k, vs) in &m.header {
        if k.is_empty() || k.contains([':', ' ', '\r', '\n']) {
            errors.push(format!("{f}.header: \"{k}\" is not a header name"));
        }
        if !is_http {
            errors.push(format!(
                "{f}.header.{k}: only http and https monitors send headers"
            ));
        }
        for v in vs {
            if v.contains(['\r', '\n']) {
                errors.push(format!("{f}.header.{k}: values must be one line"));
            }
            header.push((k.clone(), v.clone()));
        }
    }
    let timeout = secs(m.timeout, &format!("{f}.timeout"), errors);
    let interval = secs(m.interval, &format!("{f}.interval"), errors);
    if let (Some(t), Some(i)) = (timeout, interval) {
        if t > i {
            errors.push(format!(
                "{f}.timeout: {}s is longer than the interval ({}s); checks would overlap. Lower the timeout or raise the interval",
                m.timeout, m.interval
            ));
        }
    }
    if m.retries > 5 {
        errors.push(format!(
            "{f}.retries: {} is out of range; use 0-5",
            m.retries
        ));
    }
    for (v, n) in [
        (m.consecutive_up, "consecutive_up"),
        (m.consecutive_down, "consecutive_down"),
    ] {
        if v > 100 {
            errors.push(format!(
                "{f}.{n}: {v} is out of range; use 0-100 (0 means 1)"
            ));
        }
    }
    let expected_codes = match (&m.expected_codes, is_http) {
        (Some(c), true) => CodePattern::parse(c).or_else(|| {
            errors.push(format!(
                "{f}.expected_codes: \"{c}\" is not a status pattern; use three characters, digits or x, e.g. \"200\" or \"2xx\""
            ));
            None
        }),
        (Some(_), false) => {
            errors.push(format!("{f}.expected_codes: only http and https monitors check status codes; remove it"));
            None
        }
        (None, _) => CodePattern::parse(DEFAULT_EXPECTED_CODES),
    };
    if m.expected_body.is_some() && !is_http {
        errors.push(format!(
            "{f}.expected_body: only http and https monitors read a body; remove it"
        ));
    }
    if m.follow_redirects && !is_http {
        errors.push(format!(
            "{f}.follow_redirects: only applies to http and https monitors"
        ));
    }
    if m.allow_insecure && kind != Some(MonitorKind::Https) {
        errors.push(format!(
            "{f}.allow_insecure: only applies to https monitors"
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(Monitor {
        name: m.name.clone(),
        description: m.description.clone(),
        kind: kind?,
        method,
        port: port?,
        path,
        header,
        timeout: timeout?,
        retries: m.retries,
        interval: interval?,
        expected_codes: expected_codes?,
        expected_body: m.expected_body.clone().unwrap_or_default(),
        follow_redirects: m.follow_redirects,
        allow_insecure: m.allow_insecure,
        consecutive_up: m.consecutive_up,
        consecutive_down: m.consecutive_down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interfaces = ["eth0", "eth1"]
snat_address = "10.0.0.1"
snat_ports = [40000, 40100]
pin_dir = "/sys/fs/bpf/lbtest"

[[pools]]
name = "web"
origins = [
  { name = "a", address = "10.0.2.2", port = 8080, weight = 0.5 },
  { name = "b", address = "10.0.3.2" },
]

[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web"]
"#;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("t.toml")) {
            Err(ConfigError::Invalid { errors, .. }) => errors,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    /// Replaces `from` (which must occur) in GOOD and returns the errors of the result.
    fn errors_with(from: &str, to: &str) -> Vec<String> {
        assert!(GOOD.contains(from), "fixture lacks {from:?}");
        errors_of(&GOOD.replacen(from, to, 1))
    }

    fn assert_one(errors: &[String], field: &str) {
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        assert!(
            errors[0].starts_with(field),
            "error {:?} should name {field}",
            errors[0]
        );
    }

    /// GOOD with `section` appended (an `[api]` table, say).
    fn errors_plus(section: &str) -> Vec<String> {
        errors_of(&format!("{GOOD}\n{section}\n"))
    }

    #[test]
    fn api_defaults() {
        let c = Config::parse(GOOD, Path::new("t.toml")).expect("valid");
        assert_eq!(
            c.api.listen,
            Some(DEFAULT_API_LISTEN.parse().expect("addr"))
        );
        assert_eq!(c.api.state_file, PathBuf::from(DEFAULT_STATE_FILE));
        assert!(c.api.tokens.is_empty() && c.api.keys.is_empty());
        let c = Config::parse(
            &format!("{GOOD}\n[api]\nlisten = \"off\"\n"),
            Path::new("t.toml"),
        )
        .expect("valid");
        assert_eq!(c.api.listen, None, "off turns the API off");
    }

    #[test]
    fn api_listen_must_be_address_and_port() {
        assert_one(&errors_plus("[api]\nlisten = \"localhost\""), "api.listen");
    }

    #[test]
    fn api_tokens_must_be_long_and_printable() {
        assert_one(&errors_plus("[api]\ntokens = [\"short\"]"), "api.tokens[0]");
        assert_one(
            &errors_plus("[api]\ntokens = [\"has a space in it, 12345678\"]"),
            "api.tokens[0]",
        );
    }

    #[test]
    fn api_keys_need_an_email_and_a_long_key() {
        assert_one(
            &errors_plus("[[api.keys]]\nemail = \"ops\"\nkey = \"0123456789abcdef0\""),
            "api.keys[0].email",
        );
        assert_one(
            &errors_plus("[[api.keys]]\nemail = \"ops@example.com\"\nkey = \"short\""),
            "api.keys[0].key",
        );
    }

    #[test]
    fn api_state_file_must_be_absolute() {
        assert_one(
            &errors_plus("[api]\nstate_file = \"state.json\""),
            "api.state_file",
        );
    }

    #[test]
    fn pool_webhooks_must_be_http_urls() {
        assert_one(
            &errors_with(
                "name = \"web\"\n",
                "name = \"web\"\nnotification_webhooks = [\"ftp://hooks.example.com/x\"]\n",
            ),
            "pools[0].notification_webhooks[0]",
        );
    }

    #[test]
    fn monitor_seconds_serialize_as_integers_when_whole() {
        let m: RawMonitor =
            toml::from_str("name = \"m\"\ninterval = 30\ntimeout = 0.5").expect("monitor");
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["interval"], serde_json::json!(30), "{v}");
        assert_eq!(v["timeout"], serde_json::json!(0.5), "{v}");
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("t.toml")).expect("valid");
        assert_eq!(c.dataplane.snat_port_min, 40000);
        assert_eq!(
            c.dataplane.flow_table_size,
            lb_common::DEFAULT_FLOW_TABLE_SIZE
        );
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Native);
        assert_eq!(c.dataplane.snat_port_reuse_after_close, 120);
        assert_eq!(c.dataplane.snat_port_reuse_after_idle, 86_400);
        assert!(c.dataplane.answer_ping, "pings are answered by default");
        assert!(!c.dataplane.route_other, "no open router by default");
        let b = &c.pools[0].origins[1];
        assert_eq!((b.weight, b.enabled, b.port), (1.0, true, None));
        assert_eq!(c.load_balancers[0].origin_port, 80);
    }

    #[test]
    fn shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lb.toml");
        let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.pools[0].origins.len(), 3);
    }

    #[test]
    fn unknown_field_is_a_parse_error_naming_it() {
        let text = GOOD.replace("port = 80\n", "port = 80\nprot = 1\n");
        match Config::parse(&text, Path::new("t.toml")) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.contains("prot"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = GOOD
            .replace("weight = 0.5", "weight = 1.5")
            .replace("address = \"10.0.3.2\"", "address = \"ten\"")
            .replace("default_pools = [\"web\"]", "default_pools = [\"nope\"]");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }

    #[test]
    fn interfaces_required() {
        assert_one(
            &errors_with("interfaces = [\"eth0\", \"eth1\"]", "interfaces = []"),
            "dataplane.interfaces",
        );
    }

    #[test]
    fn interface_listed_twice() {
        assert_one(
            &errors_with("\"eth0\", \"eth1\"", "\"eth0\", \"eth0\""),
            "dataplane.interfaces[1]",
        );
    }

    #[test]
    fn interface_name_too_long() {
        assert_one(
            &errors_with("\"eth1\"", "\"an-interface-name-too-long\""),
            "dataplane.interfaces[1]",
        );
    }

    #[test]
    fn pin_dir_must_be_absolute() {
        assert_one(
            &errors_with("\"/sys/fs/bpf/lbtest\"", "\"lbtest\""),
            "dataplane.pin_dir",
        );
    }

    #[test]
    fn snat_address_required() {
        assert_one(
            &errors_with("snat_address = \"10.0.0.1\"\n", ""),
            "dataplane.snat_address",
        );
    }

    #[test]
    fn snat_address_must_be_ipv4() {
        assert_one(
            &errors_with("\"10.0.0.1\"", "\"fd00::1\""),
            "dataplane.snat_address",
        );
    }

    #[test]
    fn snat_ports_must_be_ordered() {
        assert_one(
            &errors_with("[40000, 40100]", "[40100, 40000]"),
            "dataplane.snat_ports",
        );
    }

    #[test]
    fn snat_ports_must_be_ports() {
        assert_one(
            &errors_with("[40000, 40100]", "[40000, 70000]"),
            "dataplane.snat_ports[1]",
        );
    }

    #[test]
    fn snat_ports_not_well_known() {
        assert_one(
            &errors_with("[40000, 40100]", "[80, 40100]"),
            "dataplane.snat_ports",
        );
    }

    #[test]
    fn flow_table_size_in_range() {
        assert_one(
            &errors_with("pin_dir", "flow_table_size = 10\npin_dir"),
            "dataplane.flow_table_size",
        );
    }

    #[test]
    fn snat_reuse_idle_not_below_close() {
        assert_one(
            &errors_with(
                "pin_dir",
                "snat_port_reuse_after_close = 300\nsnat_port_reuse_after_idle = 60\npin_dir",
            ),
            "dataplane.snat_port_reuse_after_idle",
        );
    }

    #[test]
    fn tcp_timeouts_in_range() {
        assert_one(
            &errors_with("pin_dir", "tcp_timeouts = { syn = 60 }\npin_dir"),
            "dataplane.tcp_timeouts.syn",
        );
        assert_one(
            &errors_with("pin_dir", "tcp_timeouts = { half_closed = 5 }\npin_dir"),
            "dataplane.tcp_timeouts.half_closed",
        );
        assert_one(
            &errors_with(
                "pin_dir",
                "tcp_timeouts = { established = 3600 }\nsnat_port_reuse_after_idle = 3600\npin_dir",
            ),
            "dataplane.snat_port_reuse_after_idle",
        );
    }

    #[test]
    fn syn_cookie_settings() {
        assert_one(
            &errors_with("pin_dir", "syn_budget = 0\npin_dir"),
            "dataplane.syn_budget",
        );
        assert_one(
            &errors_with("pin_dir", "syn_cookies = \"off\"\nsyn_budget = 10\npin_dir"),
            "dataplane.syn_budget",
        );
        let c = Config::parse(
            &GOOD.replace("pin_dir", "syn_cookies = \"always\"\npin_dir"),
            Path::new("t.toml"),
        )
        .expect("valid");
        assert_eq!(c.dataplane.syn_budget, 0);
    }

    #[test]
    fn pool_name_required() {
        // Renaming the pool away also leaves default_pools pointing at nothing: two errors.
        let e = errors_with("name = \"web\"", "name = \"\"");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("pools[0].name"), "{e:#?}");
    }

    #[test]
    fn pool_names_unique() {
        let text = format!("{GOOD}\n[[pools]]\nname = \"web\"\norigins = [{{ name = \"c\", address = \"10.0.4.2\" }}]\n");
        assert_one(&errors_of(&text), "pools[1].name");
    }

    #[test]
    fn file_names_unique_before_merging() {
        let text = format!(
            "{GOOD}\n[[monitors]]\nname = \"m\"\ntype = \"tcp\"\n\n[[monitors]]\nname = \"m\"\ntype = \"tcp\"\n\n[[pools]]\nname = \"spare\"\norigins = [{{ name = \"c\", address = \"10.0.4.2\" }}]\n\n[[pools]]\nname = \"web\"\norigins = [{{ name = \"d\", address = \"10.0.5.2\" }}]\n\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.11\"\nport = 80\ndefault_pools = [\"web\"]\n"
        );
        let raw = RawConfig::parse(&text, Path::new("t.toml")).expect("parses");
        assert_eq!(
            file_name_errors(&raw),
            [
                "monitors[1].name: \"m\" is already the name of monitors[0]; names must be unique: rename or remove one of them",
                "pools[2].name: \"web\" is already the name of pools[0]; names must be unique: rename or remove one of them",
                "load_balancers[1].name: \"www\" is already the name of load_balancers[0]; names must be unique: rename or remove one of them",
            ]
        );
        let good = RawConfig::parse(GOOD, Path::new("t.toml")).expect("parses");
        assert!(file_name_errors(&good).is_empty());
    }

    #[test]
    fn pool_needs_origins() {
        let text = format!("{GOOD}\n[[pools]]\nname = \"empty\"\n");
        assert_one(&errors_of(&text), "pools[1].origins");
    }

    #[test]
    fn origin_name_required() {
        assert_one(
            &errors_with("name = \"a\"", "name = \"\""),
            "pools[0].origins[0].name",
        );
    }

    #[test]
    fn origin_names_unique_in_pool() {
        assert_one(
            &errors_with("name = \"b\"", "name = \"a\""),
            "pools[0].origins[1].name",
        );
    }

    #[test]
    fn origin_address_must_parse() {
        assert_one(
            &errors_with("\"10.0.2.2\"", "\"10.0.2\""),
            "pools[0].origins[0].address",
        );
    }

    #[test]
    fn origin_address_ipv6_not_yet() {
        let e = errors_with("\"10.0.2.2\"", "\"fd00::2\"");
        assert_one(&e, "pools[0].origins[0].address");
        assert!(e[0].contains("IPv6"), "{e:?}");
    }

    #[test]
    fn origin_port_nonzero() {
        assert_one(
            &errors_with("port = 8080", "port = 0"),
            "pools[0].origins[0].port",
        );
    }

    #[test]
    fn origin_weight_between_0_and_1() {
        let e = errors_with("weight = 0.5", "weight = 1.5");
        assert_one(&e, "pools[0].origins[0].weight");
        assert!(e[0].contains("between 0 and 1"), "{e:?}");
    }

    #[test]
    fn origin_weight_not_negative() {
        assert_one(
            &errors_with("weight = 0.5", "weight = -0.1"),
            "pools[0].origins[0].weight",
        );
    }

    #[test]
    fn lb_name_required() {
        assert_one(
            &errors_with("name = \"www\"", "name = \"\""),
            "load_balancers[0].name",
        );
    }

    #[test]
    fn lb_names_unique() {
        let text = format!("{GOOD}\n[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.11\"\nport = 80\ndefault_pools = [\"web\"]\n");
        assert_one(&errors_of(&text), "load_balancers[1].name");
    }

    #[test]
    fn lb_address_must_parse() {
        assert_one(
            &errors_with("\"10.0.0.10\"", "\"vip\""),
            "load_balancers[0].address",
        );
    }

    #[test]
    fn lb_port_required() {
        assert_one(&errors_with("port = 80\n", ""), "load_balancers[0].port");
    }

    #[test]
    fn lb_origin_port_valid() {
        assert_one(
            &errors_with("port = 80\n", "port = 80\norigin_port = 99999\n"),
            "load_balancers[0].origin_port",
        );
    }

    #[test]
    fn vip_address_port_unique() {
        let text = format!("{GOOD}\n[[load_balancers]]\nname = \"two\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n");
        assert_one(&errors_of(&text), "load_balancers[1]");
    }

    #[test]
    fn vip_is_not_an_origin_with_its_own_port() {
        let e = errors_with(
            "address = \"10.0.2.2\", port = 8080",
            "address = \"10.0.0.10\", port = 80",
        );
        assert_one(&e, "load_balancers[0].address");
        assert!(
            e[0].contains("pools[0].origins[0]") && e[0].contains("\"a\""),
            "{e:?}"
        );
    }

    #[test]
    fn vip_is_not_an_origin_on_the_origin_port() {
        // Origin b has no port, so it is reached on www's origin_port (80, its VIP port).
        let e = errors_with("\"10.0.3.2\"", "\"10.0.0.10\"");
        assert_one(&e, "load_balancers[0].address");
        assert!(e[0].contains("pools[0].origins[1]"), "{e:?}");
        // The same address on another port is fine.
        let text = GOOD.replacen("\"10.0.3.2\"", "\"10.0.0.10\"", 1).replacen(
            "port = 80\n",
            "port = 80\norigin_port = 8080\n",
            1,
        );
        Config::parse(&text, Path::new("t.toml")).expect("another port is another socket");
    }

    #[test]
    fn vip_is_not_snat_address() {
        assert_one(
            &errors_with("\"10.0.0.10\"", "\"10.0.0.1\""),
            "load_balancers[0].address",
        );
    }

    #[test]
    fn default_pools_required() {
        assert_one(
            &errors_with("default_pools = [\"web\"]", "default_pools = []"),
            "load_balancers[0].default_pools",
        );
    }

    #[test]
    fn default_pools_must_exist() {
        let e = errors_with(
            "default_pools = [\"web\"]",
            "default_pools = [\"web\", \"gone\"]",
        );
        assert_one(&e, "load_balancers[0].default_pools[1]");
        assert!(e[0].contains("gone"), "{e:?}");
    }

    #[test]
    fn answer_ping_and_route_other_are_read() {
        let c = Config::parse(
            &GOOD.replace(
                "pin_dir",
                "answer_ping = false\nroute_other = true\npin_dir",
            ),
            Path::new("t"),
        )
        .expect("valid");
        assert!(!c.dataplane.answer_ping);
        assert!(c.dataplane.route_other);
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

    // --- monitors, pool health settings, failover -------------------------------------

    const MON: &str = "\n[[monitors]]\nname = \"m\"\ntype = \"tcp\"\n";

    fn with_monitor(monitor_body: &str) -> String {
        GOOD.replacen(
            "[[pools]]",
            &format!("[[monitors]]\nname = \"m\"\n{monitor_body}\n[[pools]]"),
            1,
        )
    }

    fn monitor_errors(monitor_body: &str) -> Vec<String> {
        errors_of(&with_monitor(monitor_body))
    }

    #[test]
    fn monitor_defaults_follow_cloudflare() {
        let c = Config::parse(&with_monitor(""), Path::new("t")).expect("valid");
        let m = &c.monitors[0];
        assert_eq!(m.kind, MonitorKind::Http);
        assert_eq!(m.method, HttpMethod::Get);
        assert_eq!((m.port, m.path.as_str(), m.retries), (0, "/", 2));
        assert_eq!(m.timeout, std::time::Duration::from_secs(5));
        assert_eq!(m.interval, std::time::Duration::from_secs(60));
        assert_eq!(m.expected_codes.to_string(), "200");
        assert!(!m.follow_redirects && !m.allow_insecure && m.expected_body.is_empty());
    }

    #[test]
    fn cloudflare_spectrum_example_parses() {
        let body = "description = \"Spectrum Health Check\"\ntype = \"tcp\"\nport = 2048\ninterval = 30\nretries = 2\ntimeout = 5\nmethod = \"connection_established\"";
        let c = Config::parse(&with_monitor(body), Path::new("t")).expect("valid");
        assert_eq!(c.monitors[0].kind, MonitorKind::Tcp);
        assert_eq!(c.monitors[0].port, 2048);
    }

    #[test]
    fn sub_second_interval_allowed() {
        let c = Config::parse(
            &with_monitor("interval = 0.25\ntimeout = 0.2"),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(
            c.monitors[0].interval,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn monitor_name_required() {
        let text = GOOD.replacen("[[pools]]", "[[monitors]]\ntype = \"tcp\"\n[[pools]]", 1);
        assert_one(&errors_of(&text), "monitors[0].name");
    }

    #[test]
    fn monitor_names_unique() {
        let text = GOOD.replacen("[[pools]]", &format!("{MON}{MON}[[pools]]"), 1);
        assert_one(&errors_of(&text), "monitors[1].name");
    }

    #[test]
    fn monitor_type_known() {
        assert_one(&monitor_errors("type = \"icmp\""), "monitors[0].type");
    }

    #[test]
    fn tcp_method_is_connection_established() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nmethod = \"GET\""),
            "monitors[0].method",
        );
    }

    #[test]
    fn http_method_get_or_head() {
        assert_one(&monitor_errors("method = \"POST\""), "monitors[0].method");
        let c = Config::parse(&with_monitor("method = \"HEAD\""), Path::new("t")).expect("valid");
        assert_eq!(c.monitors[0].method, HttpMethod::Head);
    }

    #[test]
    fn monitor_port_valid() {
        assert_one(&monitor_errors("port = 70000"), "monitors[0].port");
    }

    #[test]
    fn interval_not_below_minimum() {
        // A timeout of 0.05 s fits the limit; the interval below it is the one error.
        let e = monitor_errors("interval = 0.01\ntimeout = 0.05");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("monitors[0].interval"), "{e:#?}");
    }

    #[test]
    fn timeout_not_below_minimum() {
        assert_one(
            &monitor_errors("interval = 1\ntimeout = 0.001"),
            "monitors[0].timeout",
        );
    }

    #[test]
    fn timeout_not_longer_than_interval() {
        assert_one(
            &monitor_errors("interval = 2\ntimeout = 5"),
            "monitors[0].timeout",
        );
    }

    #[test]
    fn retries_at_most_five() {
        assert_one(&monitor_errors("retries = 6"), "monitors[0].retries");
    }

    #[test]
    fn consecutive_counts_bounded() {
        assert_one(
            &monitor_errors("consecutive_down = 1000"),
            "monitors[0].consecutive_down",
        );
    }

    #[test]
    fn expected_codes_pattern() {
        assert_one(
            &monitor_errors("expected_codes = \"2xxx\""),
            "monitors[0].expected_codes",
        );
        assert_one(
            &monitor_errors("expected_codes = \"x00\""),
            "monitors[0].expected_codes",
        );
    }

    #[test]
    fn expected_codes_only_for_http() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nexpected_codes = \"200\""),
            "monitors[0].expected_codes",
        );
    }

    #[test]
    fn expected_body_only_for_http() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nexpected_body = \"ok\""),
            "monitors[0].expected_body",
        );
    }

    #[test]
    fn allow_insecure_only_for_https() {
        assert_one(
            &monitor_errors("allow_insecure = true"),
            "monitors[0].allow_insecure",
        );
    }

    #[test]
    fn follow_redirects_only_for_http() {
        assert_one(
            &monitor_errors("type = \"tcp\"\nfollow_redirects = true"),
            "monitors[0].follow_redirects",
        );
    }

    #[test]
    fn path_starts_with_slash() {
        assert_one(&monitor_errors("path = \"health\""), "monitors[0].path");
    }

    #[test]
    fn header_names_valid_and_host_allowed() {
        assert_one(
            &monitor_errors("header = { \"Bad Name\" = [\"x\"] }"),
            "monitors[0].header",
        );
        let c = Config::parse(
            &with_monitor("header = { Host = [\"example.com\"] }"),
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(
            c.monitors[0].header,
            vec![("Host".to_owned(), "example.com".to_owned())]
        );
    }

    #[test]
    fn code_patterns_match() {
        let p = CodePattern::parse("2xx").expect("pattern");
        assert!(p.matches(200) && p.matches(204) && !p.matches(500) && !p.matches(302));
        let p = CodePattern::parse("30x").expect("pattern");
        assert!(p.matches(301) && !p.matches(310));
        assert!(CodePattern::parse("200").expect("pattern").matches(200));
    }

    #[test]
    fn pool_monitor_must_exist() {
        assert_one(
            &errors_with("name = \"web\"", "name = \"web\"\nmonitor = \"nope\""),
            "pools[0].monitor",
        );
    }

    #[test]
    fn minimum_origins_at_least_one() {
        assert_one(
            &errors_with("name = \"web\"", "name = \"web\"\nminimum_origins = 0"),
            "pools[0].minimum_origins",
        );
    }

    #[test]
    fn minimum_origins_not_above_origin_count() {
        assert_one(
            &errors_with("name = \"web\"", "name = \"web\"\nminimum_origins = 3"),
            "pools[0].minimum_origins",
        );
    }

    #[test]
    fn fallback_pool_must_exist() {
        assert_one(
            &errors_with(
                "default_pools = [\"web\"]",
                "default_pools = [\"web\"]\nfallback_pool = \"gone\"",
            ),
            "load_balancers[0].fallback_pool",
        );
    }

    #[test]
    fn fallback_pool_defaults_to_last_default_pool() {
        let c = Config::parse(GOOD, Path::new("t")).expect("valid");
        assert_eq!(c.load_balancers[0].fallback_pool, "web");
    }

    fn lb_with(extra: &str) -> Vec<String> {
        errors_with(
            "default_pools = [\"web\"]",
            &format!("default_pools = [\"web\"]\n{extra}"),
        )
    }

    fn pool_with(extra: &str) -> Vec<String> {
        errors_with("name = \"web\"\n", &format!("name = \"web\"\n{extra}\n"))
    }

    fn agent_with(extra: &str) -> Vec<String> {
        errors_with("[[pools]]", &format!("[agent]\n{extra}\n\n[[pools]]"))
    }

    fn geo_with(extra: &str) -> Vec<String> {
        errors_of(&format!("{GOOD}\n[geo]\n{extra}\n"))
    }

    const GEO_GOOD: &str = r#"
[agent]
pop = "AMS"
latitude = 52.37
longitude = 4.9
rtt_smoothing = 0.5

[[pools]]
name = "eu"
latitude = 50.1
longitude = 8.7
origin_steering = { policy = "least_connections" }
origins = [{ name = "e1", address = "10.0.4.2" }]

[[pools]]
name = "us"
origin_steering = { policy = "hash" }
origins = [{ name = "u1", address = "10.0.5.2" }]

[[load_balancers]]
name = "geo"
address = "10.0.0.11"
port = 80
default_pools = ["web", "eu", "us"]
steering_policy = "geo"
region_pools = { WEU = ["eu", "web"], ENAM = ["us"] }
country_pools = { JP = ["us"] }
pop_pools = { LAX = ["us"] }
session_affinity = "ip"
session_affinity_ttl = 600
random_steering = { pool_weights = { eu = 0.2 }, default_weight = 0.5 }

[geo]
prefixes = [
  { prefix = "198.51.100.0/24", country = "DE" },
  { prefix = "203.0.113.0/25", region = "ENAM" },
  { prefix = "203.0.113.128/25", country = "US", region = "WNAM" },
]
"#;

    #[test]
    fn steering_fields_parse_into_typed_values() {
        // GEO_GOOD's pools and load balancer come first, then GOOD's; [geo] is moved last.
        let (head, geo) = GEO_GOOD.split_once("[geo]").expect("geo section");
        let text = format!(
            "{}\n[geo]{geo}",
            GOOD.replacen("[[pools]]", &format!("{head}\n[[pools]]"), 1)
        );
        let c = Config::parse(&text, Path::new("t.toml")).expect("valid");
        assert_eq!(c.agent.pop.as_deref(), Some("AMS"));
        assert_eq!(c.agent.position, Some((52.37, 4.9)));
        assert_eq!(c.agent.rtt_smoothing, 0.5);
        let eu = c.pool("eu").expect("eu");
        assert_eq!(eu.origin_steering, OriginSteering::LeastConnections);
        assert_eq!(eu.position, Some((50.1, 8.7)));
        assert_eq!(
            c.pool("us").expect("us").origin_steering,
            OriginSteering::Hash
        );
        assert_eq!(
            c.pool("web").expect("web").origin_steering,
            OriginSteering::Random
        );
        let lb = c
            .load_balancers
            .iter()
            .find(|l| l.name == "geo")
            .expect("geo lb");
        assert_eq!(lb.steering_policy, SteeringPolicy::Geo);
        assert_eq!(
            lb.region_pools[&Region::parse("WEU").expect("WEU")],
            vec!["eu", "web"]
        );
        assert_eq!(lb.country_pools[b"JP"], vec!["us"]);
        assert_eq!(lb.pop_pools["LAX"], vec!["us"]);
        assert_eq!(lb.affinity_ttl, Some(600));
        assert_eq!(lb.pool_weights["eu"], 0.2);
        assert_eq!(lb.default_weight, 0.5);
        let www = c
            .load_balancers
            .iter()
            .find(|l| l.name == "www")
            .expect("www");
        assert_eq!(www.affinity_ttl, None, "session_affinity defaults to none");
        assert_eq!(c.geo.prefixes.len(), 3);
        let us = &c.geo.prefixes[2];
        assert_eq!(
            (us.country, us.region),
            (Some(*b"US"), Region::parse("WNAM"))
        );
    }

    #[test]
    fn steering_policy_must_be_known() {
        assert_one(
            &lb_with("steering_policy = \"fastest\""),
            "load_balancers[0].steering_policy",
        );
        let e = lb_with("steering_policy = \"least_connections\"");
        assert_one(&e, "load_balancers[0].steering_policy");
        assert!(e[0].contains("origin_steering"), "{e:?}");
        for ok in ["off", "random", "dynamic_latency", "geo"] {
            let text = GOOD.replacen(
                "default_pools = [\"web\"]",
                &format!("default_pools = [\"web\"]\nsteering_policy = \"{ok}\""),
                1,
            );
            Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn region_pools_need_known_regions_and_pools() {
        let mut text = GOOD.replacen("default_pools = [\"web\"]", "default_pools = [\"web\"]\nsteering_policy = \"geo\"\nregion_pools = { MARS = [\"web\"], WEU = [\"nope\"] }", 1);
        text.push_str("\n[geo]\nprefixes = [{ prefix = \"10.9.0.0/16\", country = \"DE\" }]\n");
        let e = errors_of(&text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].starts_with("load_balancers[0].region_pools.MARS: unknown region"),
            "{e:?}"
        );
        assert!(e[0].contains("WNAM, ENAM"), "lists the codes: {e:?}");
        assert!(
            e[1].starts_with("load_balancers[0].region_pools.WEU[0]: no pool is named \"nope\""),
            "{e:?}"
        );
    }

    #[test]
    fn country_pools_need_iso_codes() {
        let mut text = GOOD.replacen("default_pools = [\"web\"]", "default_pools = [\"web\"]\nsteering_policy = \"geo\"\ncountry_pools = { XX = [\"web\"], de = [\"web\"] }", 1);
        text.push_str("\n[geo]\nprefixes = [{ prefix = \"10.9.0.0/16\", country = \"DE\" }]\n");
        let e = errors_of(&text);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e.iter().all(|e| e.contains("is not an ISO 3166-1 alpha-2")),
            "{e:?}"
        );
    }

    #[test]
    fn geo_lists_need_geo_data() {
        assert_one(
            &lb_with("steering_policy = \"geo\"\nregion_pools = { WEU = [\"web\"] }"),
            "load_balancers[0].region_pools / country_pools",
        );
        // pop_pools alone need no client data.
        let text = GOOD.replacen(
            "default_pools = [\"web\"]",
            "default_pools = [\"web\"]\nsteering_policy = \"geo\"\npop_pools = { AMS = [\"web\"] }",
            1,
        );
        Config::parse(&text, Path::new("t")).expect("pop_pools alone are fine");
    }

    #[test]
    fn pop_names_are_checked() {
        assert_one(&agent_with("pop = \"ams 1\""), "agent.pop");
        assert_one(
            &lb_with("pop_pools = { ams = [\"web\"] }"),
            "load_balancers[0].pop_pools.ams",
        );
        assert_one(
            &lb_with("pop_pools = { AMS = [] }"),
            "load_balancers[0].pop_pools.AMS",
        );
    }

    #[test]
    fn random_steering_weights_in_range_and_on_default_pools() {
        assert_one(
            &lb_with("random_steering = { pool_weights = { web = 1.5 } }"),
            "load_balancers[0].random_steering.pool_weights.web",
        );
        assert_one(
            &lb_with("random_steering = { pool_weights = { other = 0.5 } }"),
            "load_balancers[0].random_steering.pool_weights.other",
        );
        assert_one(
            &lb_with("random_steering = { default_weight = -0.1 }"),
            "load_balancers[0].random_steering.default_weight",
        );
    }

    #[test]
    fn proximity_needs_this_hosts_position() {
        assert_one(
            &lb_with("steering_policy = \"proximity\""),
            "load_balancers[0].steering_policy",
        );
        let text = GOOD
            .replacen(
                "[[pools]]",
                "[agent]\nlatitude = 1.0\nlongitude = 2.0\n\n[[pools]]",
                1,
            )
            .replacen(
                "default_pools = [\"web\"]",
                "default_pools = [\"web\"]\nsteering_policy = \"proximity\"",
                1,
            );
        Config::parse(&text, Path::new("t")).expect("with a position it is fine");
    }

    #[test]
    fn positions_are_pairs_in_range() {
        assert_one(&agent_with("latitude = 10.0"), "agent.longitude");
        assert_one(
            &agent_with("latitude = 91.0\nlongitude = 0.0"),
            "agent.latitude",
        );
        assert_one(
            &pool_with("latitude = 0.0\nlongitude = 181.0"),
            "pools[0].longitude",
        );
        assert_one(&pool_with("longitude = 1.0"), "pools[0].latitude");
    }

    #[test]
    fn origin_steering_policy_is_checked() {
        assert_one(
            &pool_with("origin_steering = { policy = \"fastest\" }"),
            "pools[0].origin_steering.policy",
        );
        let e = pool_with("origin_steering = { policy = \"least_outstanding_requests\" }");
        assert_one(&e, "pools[0].origin_steering.policy");
        let many: Vec<String> = (0..33)
            .map(|i| format!("{{ name = \"m{i}\", address = \"10.1.{i}.2\" }}"))
            .collect();
        let text = GOOD.replacen(
            "name = \"web\"\norigins = [",
            &format!("name = \"web\"\norigin_steering = {{ policy = \"least_connections\" }}\norigins = [{},", many.join(", ")),
            1,
        );
        let e = errors_of(&text);
        assert_one(&e, "pools[0].origin_steering.policy");
        assert!(e[0].contains("at most 32"), "{e:?}");
    }

    #[test]
    fn session_affinity_is_ip_or_none_with_a_ttl_in_range() {
        let e = lb_with("session_affinity = \"cookie\"");
        assert_one(&e, "load_balancers[0].session_affinity");
        assert!(e[0].contains("\"ip\""), "{e:?}");
        assert_one(
            &lb_with("session_affinity = \"sticky\""),
            "load_balancers[0].session_affinity",
        );
        assert_one(
            &lb_with("session_affinity = \"ip\"\nsession_affinity_ttl = 0"),
            "load_balancers[0].session_affinity_ttl",
        );
        assert_one(
            &lb_with("session_affinity = \"ip\"\nsession_affinity_ttl = 604801"),
            "load_balancers[0].session_affinity_ttl",
        );
        assert_one(
            &lb_with("session_affinity_ttl = 60"),
            "load_balancers[0].session_affinity_ttl",
        );
    }

    #[test]
    fn rtt_smoothing_in_range() {
        assert_one(&agent_with("rtt_smoothing = 0.0"), "agent.rtt_smoothing");
        assert_one(&agent_with("rtt_smoothing = 1.5"), "agent.rtt_smoothing");
    }

    #[test]
    fn geo_prefixes_are_checked() {
        let one = |p: &str| geo_with(&format!("prefixes = [{p}]"));
        assert_one(
            &one("{ prefix = \"10.0.0.0\", country = \"DE\" }"),
            "geo.prefixes[0].prefix",
        );
        assert_one(
            &one("{ prefix = \"10.0.0.0/33\", country = \"DE\" }"),
            "geo.prefixes[0].prefix",
        );
        let e = one("{ prefix = \"10.0.0.1/24\", country = \"DE\" }");
        assert_one(&e, "geo.prefixes[0].prefix");
        assert!(e[0].contains("10.0.0.0/24"), "suggests the network: {e:?}");
        assert_one(&one("{ prefix = \"10.0.0.0/24\" }"), "geo.prefixes[0]");
        assert_one(
            &one("{ prefix = \"10.0.0.0/24\", country = \"Germany\" }"),
            "geo.prefixes[0].country",
        );
        assert_one(
            &one("{ prefix = \"10.0.0.0/24\", region = \"EU\" }"),
            "geo.prefixes[0].region",
        );
        assert_one(
            &one("{ prefix = \"10.0.0.0/24\", country = \"DE\" }, { prefix = \"10.0.0.0/24\", country = \"FR\" }"),
            "geo.prefixes[1].prefix",
        );
    }

    #[test]
    fn geo_database_must_be_readable() {
        let e = geo_with("database = \"/nonexistent/lb-test.mmdb\"");
        assert_one(&e, "geo.database");
        assert!(e[0].contains("/nonexistent/lb-test.mmdb"), "{e:?}");
    }

    #[test]
    fn status_file_absolute() {
        let text = GOOD.replacen(
            "[[pools]]",
            "[agent]\nstatus_file = \"status.json\"\n\n[[pools]]",
            1,
        );
        assert_one(&errors_of(&text), "agent.status_file");
    }
}

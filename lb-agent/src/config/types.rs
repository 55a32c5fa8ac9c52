//! The validated, typed config the rest of the agent uses. Built only by `validate`, so
//! every value here is in range; weights and probe timings are `Weight` and `Seconds`, which
//! cannot hold an out-of-range value at all.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use crate::geo::{GeoPrefix, Region};

use super::{
    raw::XdpMode,
    units::{Seconds, Weight},
};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dataplane: Dataplane,
    pub agent: Agent,
    pub monitors: Vec<Monitor>,
    pub pools: Vec<Pool>,
    pub load_balancers: Vec<LoadBalancer>,
    pub geo: Geo,
    pub api: Api,
    /// Where each pool and monitor is in the lists above, by name (`Config::pool`).
    pub names: Names,
}

/// Pools and monitors by name: a plan over 1000 load balancers asks for pools by name
/// thousands of times, and a linear search over 1000 pools made that most of its cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Names {
    pub pools: std::collections::HashMap<String, usize>,
    pub monitors: std::collections::HashMap<String, usize>,
    /// Pool name -> the load balancers that may use it (`all_pools`), in config order.
    pub pool_users: std::collections::HashMap<String, Vec<usize>>,
}

impl Names {
    pub fn of(pools: &[Pool], monitors: &[Monitor], load_balancers: &[LoadBalancer]) -> Self {
        let mut pool_users: std::collections::HashMap<String, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, lb) in load_balancers.iter().enumerate() {
            for p in lb.all_pools() {
                let users = pool_users.entry(p.clone()).or_default();
                if users.last() != Some(&i) {
                    users.push(i);
                }
            }
        }
        Self {
            pool_users,
            pools: pools
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i))
                .collect(),
            monitors: monitors
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect(),
        }
    }
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

/// Client geo data: the database's prefixes (loaded by `Geo::load_database`) and the
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
    pub fn merged(&self) -> BTreeMap<(IpAddr, u8), GeoPrefix> {
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
    /// The first IPv4 SNAT address; with `snat_count` > 1, the first of a prefix.
    /// `0.0.0.0` when `snat_count` is 0.
    pub snat_address: Ipv4Addr,
    /// IPv4 SNAT addresses in all (1, or the size of the prefix); 0 = no IPv4 SNAT address
    /// (allowed when no load balancer has IPv4 origins).
    pub snat_count: u32,
    /// The IPv6 SNAT address or prefix, if one is configured (needed by IPv6 origins).
    pub snat6: Option<Snat6>,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `snat_ports` was not set: the full range, narrowed to `DEFAULT_SNAT_PORTS_SHARED` by
    /// `Dataplane::resolve_snat_ports` when a SNAT address is one of the host's own.
    pub snat_ports_auto: bool,
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
    /// Idle seconds before a UDP flow the origin has answered is dead (`udp_timeout`).
    pub udp_timeout: u32,
    /// Idle seconds before a UDP flow the origin never answered is dead
    /// (`udp_unreplied_timeout`).
    pub udp_unreplied_timeout: u32,
    /// `Settings::udp_budget`: new UDP flows waiting for an answer before new ones are
    /// dropped.
    pub udp_budget: u32,
}

/// The IPv6 SNAT addresses: `address` and the `count - 1` after it (a prefix of at most
/// `lb_common::MAX_SNAT_ADDRS`, so the run stays in the last 32 bits, as
/// `Settings::is_snat_v6` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snat6 {
    pub address: Ipv6Addr,
    pub count: u32,
}

impl Snat6 {
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        u128::from(a).wrapping_sub(u128::from(self.address)) < u128::from(self.count)
    }

    pub fn addresses(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        (0..self.count).map(|i| Ipv6Addr::from(u128::from(self.address) + u128::from(i)))
    }
}

impl Dataplane {
    /// Is `a` one of the IPv4 SNAT addresses?
    pub fn is_snat_address(&self, a: Ipv4Addr) -> bool {
        u32::from(a).wrapping_sub(u32::from(self.snat_address)) < self.snat_count
    }

    /// Is `a` one of the SNAT addresses of its family?
    pub fn is_snat_ip(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.is_snat_address(a),
            IpAddr::V6(a) => self.snat6.is_some_and(|s| s.contains(a)),
        }
    }

    /// The IPv4 SNAT addresses, in order.
    pub fn snat_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (0..self.snat_count).map(|i| Ipv4Addr::from(u32::from(self.snat_address) + i))
    }

    /// Every SNAT address, IPv4 first.
    pub fn all_snat_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.snat_addresses().map(IpAddr::V4).chain(
            self.snat6
                .iter()
                .flat_map(|s| s.addresses().collect::<Vec<_>>())
                .map(IpAddr::V6),
        )
    }

    /// With `snat_ports` unset: keeps the full range for SNAT addresses the host does not
    /// use itself, else narrows it to `DEFAULT_SNAT_PORTS_SHARED`, above the host's ephemeral
    /// ports, so that the host's own connections (health probes among them) never meet a
    /// SNAT flow's tuple. `local` holds the host's addresses, both families: the ports are
    /// one range for both, so one SNAT address of the host narrows it for all.
    pub fn resolve_snat_ports(&mut self, local: &[IpAddr]) {
        if self.snat_ports_auto && local.iter().any(|a| self.is_snat_ip(*a)) {
            let [lo, hi] = super::defaults::DEFAULT_SNAT_PORTS_SHARED;
            self.snat_port_min = lo;
            self.snat_port_max = hi;
        }
    }

    /// New connections per second each origin sustains with these SNAT ports: every port
    /// of every SNAT address, each held for `snat_port_reuse_after_close` seconds after its
    /// connection closes.
    /// An origin is reached from the SNAT addresses of its family, so this is for the family
    /// with fewer addresses (of those configured).
    pub fn sustained_rate_per_origin(&self) -> f64 {
        let ports = f64::from(self.snat_port_max - self.snat_port_min) + 1.0;
        let count = [Some(self.snat_count), self.snat6.map(|s| s.count)]
            .into_iter()
            .flatten()
            .filter(|c| *c > 0)
            .min()
            .unwrap_or(0);
        ports * f64::from(count) / f64::from(self.snat_port_reuse_after_close.max(1))
    }
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

/// A monitor's `type`: what one check sends and what counts as healthy (see `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorKind {
    /// A TCP connection to the port is established.
    Tcp,
    /// An HTTP/1.1 request over TCP; the status code and body are judged.
    Http,
    /// As `Http`, over TLS.
    Https,
    /// A UDP datagram to the port, then an ICMP echo: healthy when the echo reply comes back
    /// and no ICMP port unreachable came for the datagram.
    UdpIcmp,
    /// An ICMP echo request: healthy on the echo reply. No port.
    IcmpPing,
    /// A TCP connection to the port: healthy on a 220 greeting and a 221 answer to `QUIT`.
    Smtp,
}

impl MonitorKind {
    /// Every type, as the config and the API spell them.
    pub const ALL: [(&'static str, Self); 6] = [
        ("tcp", Self::Tcp),
        ("http", Self::Http),
        ("https", Self::Https),
        ("udp_icmp", Self::UdpIcmp),
        ("icmp_ping", Self::IcmpPing),
        ("smtp", Self::Smtp),
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("tcp", |(n, _)| n)
    }

    /// Sends an HTTP request (`method`, `path`, `header`, `expected_codes`, `expected_body`,
    /// `follow_redirects` apply).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Https)
    }

    /// Probes a port (`port` applies; 0 = the origin's). Only `icmp_ping` has none.
    pub fn has_port(self) -> bool {
        self != Self::IcmpPing
    }
}

impl fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub timeout: Seconds,
    pub retries: u32,
    pub interval: Seconds,
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
        self.interval.get().min(std::time::Duration::from_secs(1))
    }
}

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
    /// IPv4 or IPv6; a load balancer's origins are all of its VIP's family.
    pub address: IpAddr,
    /// `None`: the load balancer's `origin_port` (or its `port`).
    pub port: Option<u16>,
    pub weight: Weight,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancer {
    pub name: String,
    pub description: String,
    /// The VIP address, IPv4 or IPv6.
    pub address: IpAddr,
    pub port: u16,
    /// The VIP's protocol, also the one its flows use towards the origins.
    pub protocol: Protocol,
    pub origin_port: u16,
    pub default_pools: Vec<String>,
    /// Used when every default pool is down, whatever its own health. Defaults to the last
    /// of `default_pools`.
    pub fallback_pool: String,
    pub steering_policy: SteeringPolicy,
    pub enabled: bool,
    /// `random`: pool name -> weight; pools not listed take `default_weight`.
    pub pool_weights: BTreeMap<String, Weight>,
    pub default_weight: Weight,
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

/// A load balancer's `protocol`: what its VIP (address, port) listens for. A TCP and a UDP
/// load balancer may share an address and port; they are two VIPs (`lb_common::VipKey`
/// holds the protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// Every protocol, as the config and the API spell them.
    pub const ALL: [(&'static str, Self); 2] = [("tcp", Self::Tcp), ("udp", Self::Udp)];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, p)| *p)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// The IP protocol number (`lb_common::IPPROTO_*`).
    pub fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => lb_common::IPPROTO_TCP,
            Self::Udp => lb_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_patterns_match() {
        let p = CodePattern::parse("2xx").expect("pattern");
        assert!(p.matches(200) && p.matches(204) && !p.matches(500) && !p.matches(302));
        let p = CodePattern::parse("30x").expect("pattern");
        assert!(p.matches(301) && !p.matches(310));
        assert!(CodePattern::parse("200").expect("pattern").matches(200));
    }
}

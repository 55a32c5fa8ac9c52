//! Defaults and limits of the config, one definition each: what validation applies when a
//! field is absent, what the store fills in so the API shows what is in force, and the
//! ranges validation enforces. Monitor, pool and load balancer defaults are Cloudflare's.

// --- dataplane

/// Where pinned maps and links live unless the config says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
/// Default SNAT port range for SNAT addresses the host does not use itself: every port above
/// the well-known ones (ports are per SNAT address and origin, so nothing else competes).
pub const DEFAULT_SNAT_PORTS: [u16; 2] = [1024, 65535];
/// `snat_ports` when it is not set and a SNAT address is also the host's own: above Linux's
/// default ephemeral range (32768-60999), so the host's connections keep their tuples.
pub const DEFAULT_SNAT_PORTS_SHARED: [u16; 2] = [61000, 65535];
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
/// Idle seconds before a UDP flow the origin has answered is dead and its SNAT port free:
/// Linux conntrack's `nf_conntrack_udp_timeout_stream` (120 s), long enough for the
/// keepalives of UDP sessions (QUIC's idle pings, WireGuard's 25 s, SIP re-registrations)
/// and short enough that request/response traffic (DNS) gives its ports back soon.
pub const DEFAULT_UDP_TIMEOUT: u32 = 120;
/// Idle seconds before a UDP flow the origin has never answered is dead: conntrack's
/// `nf_conntrack_udp_timeout` (30 s), also AWS's default for UDP flows. Short, because
/// spoofed datagrams make exactly such flows and hold a SNAT port for this long.
pub const DEFAULT_UDP_UNREPLIED_TIMEOUT: u32 = 30;
/// Longest accepted `udp_timeout` (one day, as `tcp_timeouts.established` by default): UDP
/// has no close, so a longer one holds every idle flow's SNAT port for that long.
pub const MAX_UDP_TIMEOUT: u32 = 86_400;
/// New UDP flows still waiting for their origin's first answer (counted over the last
/// `lb_common::HANDSHAKE_BUCKETS` seconds) before datagrams that would make a new flow are
/// dropped. UDP has no handshake and no cookie to tell a spoofed source from a real one, so
/// this budget is what keeps a flood of spoofed sources from taking every SNAT port and
/// table entry. Request/response clients (DNS, QUIC, games) are answered within a round
/// trip, so they count only for milliseconds: 4096 is far above what they keep waiting
/// (10,000 new flows/s at 10 ms is 100), and a small share of the SNAT ports (64,512 per
/// address and origin). One-way protocols with many senders (syslog, NetFlow/IPFIX,
/// statsd) are never answered, so every sender that starts a flow in the window counts:
/// they may need a larger budget (more than about 256 new senders a second: the window is udp_unreplied_timeout, at most 16 s).
pub const DEFAULT_UDP_BUDGET: u32 = 4096;

// --- agent

pub const DEFAULT_STATUS_FILE: &str = "/run/lb-agent/status.json";
pub const DEFAULT_PROBE_CONCURRENCY: u32 = 256;

// --- api

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8405";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/lb-agent/state.json";

// --- monitors

/// Monitor defaults (Cloudflare's), which validation applies and the store fills in so the
/// API shows what is in force: the method of tcp monitors and of http(s) ones, the path
/// and the expected codes of http(s) ones.
pub const TCP_MONITOR_METHOD: &str = "connection_established";
pub const DEFAULT_HTTP_METHOD: &str = "GET";
pub const DEFAULT_MONITOR_PATH: &str = "/";
pub const DEFAULT_EXPECTED_CODES: &str = "200";
/// `type` when a monitor names none.
pub const DEFAULT_MONITOR_TYPE: &str = "http";
/// Seconds.
pub const DEFAULT_MONITOR_TIMEOUT: f64 = 5.0;
pub const DEFAULT_MONITOR_RETRIES: u32 = 2;
/// Seconds.
pub const DEFAULT_MONITOR_INTERVAL: f64 = 60.0;
/// Shortest accepted monitor interval and timeout.
pub const MIN_PROBE_SECS: f64 = 0.05;
/// Longest accepted monitor interval and timeout (one day).
pub const MAX_PROBE_SECS: f64 = 86_400.0;

// --- pools

/// Origin steering when a pool names none.
pub const DEFAULT_ORIGIN_STEERING: &str = "random";

// --- load balancers

/// `protocol` when a load balancer names none.
pub const DEFAULT_PROTOCOL: &str = "tcp";

/// `steering_policy` when a load balancer names none: standard failover.
pub const DEFAULT_STEERING_POLICY: &str = "off";
/// `session_affinity` when a load balancer names none.
pub const DEFAULT_SESSION_AFFINITY: &str = "none";
/// Cloudflare's default `session_affinity_ttl` (23 hours).
pub const DEFAULT_AFFINITY_TTL: u32 = 82_800;
/// Default weight of a new RTT sample in the moving average (`agent.rtt_smoothing`).
pub const DEFAULT_RTT_SMOOTHING: f64 = 0.3;
/// Cloudflare's longest `session_affinity_ttl` (7 days).
pub const MAX_AFFINITY_TTL: u32 = 604_800;

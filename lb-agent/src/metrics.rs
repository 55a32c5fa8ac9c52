//! Prometheus text exposition (format 0.0.4) of the agent's status, counters and probe RTTs,
//! for `GET /metrics`. Pure: the API layer gathers a [`MetricsInput`] and serves [`render`]'s
//! text with [`CONTENT_TYPE`]. The text (HELP/TYPE lines, escaping, `le` spelling, float
//! formatting) is written by the `prometheus-client` crate's encoder; this module decides
//! which families and samples there are.
//!
//! Families (all prefixed `lb_`; counters end in `_total`):
//!
//! | family | type | labels | from |
//! | --- | --- | --- | --- |
//! | `lb_vip_{packets,bytes,new_flows,reply_packets,reply_bytes}_total` | counter | load_balancer, vip, protocol | `Stats` |
//! | `lb_load_balancer_active_pool` | gauge (1) | load_balancer, pool | `Status` |
//! | `lb_load_balancer_fallback` | gauge 0/1 | load_balancer | `Status` |
//! | `lb_origin_{packets,bytes,new_flows,reply_packets,reply_bytes}_total` | counter | load_balancer, pool, origin, address | `Stats` |
//! | `lb_origin_open_flows` | gauge | load_balancer, pool, origin, address | `Stats` |
//! | `lb_origin_healthy`, `lb_origin_enabled`, `lb_origin_weight` | gauge | pool, origin, address | `Status` |
//! | `lb_pool_healthy`, `lb_pool_healthy_origins`, `lb_pool_minimum_origins` | gauge | pool | `Status` |
//! | `lb_origin_probe_rtt_seconds` | histogram | pool, origin | [`RttHistograms`] |
//! | `lb_dataplane_events_total` | counter | event | `Stats::events` |
//! | `lb_flow_table_entries`, `lb_flow_table_capacity` | gauge | - | [`FlowTableFill`] |
//! | `lb_flows` | gauge | protocol (tcp, udp), state (tcp: handshake, established, half_closed, closed, expired; udp: conversation, answered, unanswered, expired) | [`FlowTableFill`] |
//! | `lb_handshakes_in_flight`, `lb_syn_cookies_active`, `lb_syn_budget` | gauge | - | `Stats::syn_flood` |
//! | `lb_udp_unanswered_new_flows`, `lb_udp_budget` | gauge | - | `Stats::udp_budget` |
//! | `lb_notifications_total` | counter | result (sent, failed, dropped, retried) | notifier |
//!
//! Choices worth knowing when writing queries:
//! - `address` is the origin's IP without a port, in the traffic and the health families
//!   alike: the health port may be the monitor's, so an `ip:port` label would not join.
//! - The data path counts per origin *id*, and load balancers that use a pool with the same
//!   origin port share the ids. Such an origin's `lb_origin_*_total` series then carry the same
//!   numbers under each `load_balancer`: sum them by `load_balancer`, never across it.
//! - `lb_load_balancer_active_pool` has one series per load balancer, for the pool in use; a
//!   switch ends the old series and starts a new one. A disabled load balancer has none.
//! - `lb_origin_healthy` is 1 when the origin is enabled and its state is "up" or
//!   "unmonitored" (its pool has no monitor), the rule `lb_pool_healthy_origins` counts by.
//!   An origin of weight 0 is healthy but gets no new connections (see `lb_origin_weight`).
//! - A family without samples is left out, HELP and TYPE included; so are the optional inputs.
//! - A (name, labels) pair is written once: should the input repeat one, the first wins.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    stats::{OriginStats, Stats, VipStats},
    status::{OriginStatus, PoolStatus, Status},
};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds, inclusive, as Prometheus's `le`) of the probe RTT buckets: the
/// 1-2.5-5 series from 0.1 ms to 10 s, the range of a TCP connect or an HTTP(S) check from
/// the same rack to another continent; `+Inf` follows.
pub const RTT_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Probe RTT histograms, one per (pool, origin). The agent feeds every successful probe in
/// and calls [`RttHistograms::retain`] after a reload so that removed origins go away.
#[derive(Debug, Clone, Default)]
pub struct RttHistograms {
    /// pool -> origin -> histogram; nested so that `observe` looks up by `&str`.
    series: BTreeMap<String, BTreeMap<String, Histogram>>,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations per bucket, not cumulative; the last slot is `+Inf`'s own.
    counts: [u64; RTT_BUCKETS.len() + 1],
    /// Seconds.
    sum: f64,
    count: u64,
}

impl RttHistograms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one probe round trip of `origin` in `pool`.
    pub fn observe(&mut self, pool: &str, origin: &str, rtt: Duration) {
        let origins = match self.series.get_mut(pool) {
            Some(o) => o,
            None => self.series.entry(pool.to_owned()).or_default(),
        };
        let h = match origins.get_mut(origin) {
            Some(h) => h,
            None => origins.entry(origin.to_owned()).or_default(),
        };
        let secs = rtt.as_secs_f64();
        let slot = RTT_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(RTT_BUCKETS.len());
        h.counts[slot] += 1;
        h.sum += secs;
        h.count += 1;
    }

    /// Keeps the histograms of the (pool, origin) pairs for which `keep` holds.
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.series.retain(|pool, origins| {
            origins.retain(|origin, _| keep(pool, origin));
            !origins.is_empty()
        });
    }

    /// Number of (pool, origin) histograms.
    pub fn len(&self) -> usize {
        self.series.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// How full the flow table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTableFill {
    pub entries: u64,
    pub capacity: u64,
    /// The flows by protocol and state (`None`: not read).
    pub states: Option<crate::stats::FlowStates>,
}

/// Everything `GET /metrics` shows. `None` leaves the families of that input out (no data
/// path attached, no notifier configured, ...).
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    pub status: &'a Status,
    pub stats: Option<&'a Stats>,
    pub rtt: &'a RttHistograms,
    pub flow_table: Option<FlowTableFill>,
    /// Notifications sent, failed, dropped, and retries, in that order.
    pub notifications: Option<[u64; 4]>,
}

/// Renders `input` in the Prometheus text format 0.0.4, with `prometheus-client`'s encoder.
pub fn render(input: &MetricsInput<'_>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(families(input)));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// A label set in the order it is written.
type Labels = Vec<(&'static str, String)>;

/// A gauge value, integers kept exact (an `f64` would round past 2^53).
#[derive(Debug, Clone, Copy)]
enum Val {
    U(u64),
    I(i64),
    F(f64),
}

impl From<bool> for Val {
    fn from(b: bool) -> Self {
        Self::U(u64::from(b))
    }
}

#[derive(Debug)]
enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, Val)>),
    Histogram(Vec<(Labels, Histogram)>),
}

/// One family: its name (without `_total` for a counter: the encoder adds it), HELP text
/// and samples.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    samples: Samples,
}

/// One scrape's families, in the order they are written; the [`Collector`] the encoder
/// reads. Built from a [`MetricsInput`] per scrape: every value is a snapshot, so the
/// crate's const metrics fit and its live (atomic) metric types are not needed.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

/// The samples in input order, a repeated label set keeping its first value.
fn first_wins<V>(samples: impl IntoIterator<Item = (Labels, V)>) -> Vec<(Labels, V)> {
    let mut seen = HashSet::new();
    samples
        .into_iter()
        .filter(|(l, _)| seen.insert(l.clone()))
        .collect()
}

impl Families {
    /// Adds a family unless it has no samples: a family without samples is left out,
    /// HELP and TYPE included.
    fn push(&mut self, name: &str, help: &str, samples: Samples) {
        let empty = match &samples {
            Samples::Counter(s) => s.is_empty(),
            Samples::Gauge(s) => s.is_empty(),
            Samples::Histogram(s) => s.is_empty(),
        };
        if !empty {
            self.0.push(Family {
                name: name.to_owned(),
                help: help.to_owned(),
                samples,
            });
        }
    }

    /// A counter family; `stem` is the name without `_total`.
    fn counter(&mut self, stem: &str, help: &str, s: impl IntoIterator<Item = (Labels, u64)>) {
        self.push(stem, help, Samples::Counter(first_wins(s)));
    }

    fn gauge(&mut self, name: &str, help: &str, s: impl IntoIterator<Item = (Labels, Val)>) {
        self.push(name, help, Samples::Gauge(first_wins(s)));
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for f in &self.0 {
            let kind = match f.samples {
                Samples::Counter(_) => MetricType::Counter,
                Samples::Gauge(_) => MetricType::Gauge,
                Samples::Histogram(_) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            match &f.samples {
                Samples::Counter(samples) => {
                    for (l, v) in samples {
                        ConstCounter::new(*v).encode(metric.encode_family(l)?)?;
                    }
                }
                Samples::Gauge(samples) => {
                    for (l, v) in samples {
                        let m = metric.encode_family(l)?;
                        match *v {
                            Val::U(v) => ConstGauge::new(v).encode(m)?,
                            Val::I(v) => ConstGauge::new(v).encode(m)?,
                            Val::F(v) => ConstGauge::new(v).encode(m)?,
                        }
                    }
                }
                Samples::Histogram(samples) => {
                    for (l, h) in samples {
                        // Per-bucket (not cumulative) counts; the encoder sums them up.
                        let buckets: Vec<(f64, u64)> = RTT_BUCKETS
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(h.counts)
                            .collect();
                        metric
                            .encode_family(l)?
                            .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn l<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// The five data path counters of a VIP or an origin, with their family name stems and help.
const COUNTERS: [(&str, &str); 5] = [
    ("packets", "Client to origin packets forwarded"),
    (
        "bytes",
        "Client to origin bytes forwarded (frame length as received)",
    ),
    ("new_flows", "Flows created (flow table inserts)"),
    (
        "reply_packets",
        "Origin to client packets reverse-translated",
    ),
    (
        "reply_bytes",
        "Origin to client bytes reverse-translated (frame length)",
    ),
];

/// One scrape's families, in the order of the module's table.
fn families(input: &MetricsInput<'_>) -> Families {
    let mut out = Families::default();
    let vips = input.stats.map_or(&[][..], |s| s.vips.as_slice());
    out.vip_traffic(vips);
    out.load_balancers(input.status);
    out.origin_traffic(vips);
    out.origin_health(input.status);
    out.pools(input.status);
    out.probe_rtts(input.rtt);
    if let Some(stats) = input.stats {
        out.dataplane(stats);
    }
    if let Some(f) = input.flow_table {
        out.flow_table(f);
    }
    if let Some(n) = input.notifications {
        out.notifications(n);
    }
    out
}

fn origin_labels(lb: &str, o: &OriginStats) -> Labels {
    l([
        ("load_balancer", lb),
        ("pool", &o.pool),
        ("origin", &o.name),
        ("address", &o.address),
    ])
}

fn health_labels(o: &OriginStatus) -> Labels {
    l([
        ("pool", &o.pool),
        ("origin", &o.origin),
        ("address", &o.address),
    ])
}

fn pool_labels(p: &PoolStatus) -> Labels {
    l([("pool", &p.name)])
}

impl Families {
    /// `lb_vip_*_total`: the data path's counters per load balancer.
    fn vip_traffic(&mut self, vips: &[VipStats]) {
        for (i, (stem, help)) in COUNTERS.iter().enumerate() {
            self.counter(
                &format!("lb_vip_{stem}"),
                &format!("{help}, per load balancer."),
                vips.iter().map(|v| {
                    let vip = crate::status::join_host_port(&v.address, v.port);
                    let c = [
                        v.packets,
                        v.bytes,
                        v.new_flows,
                        v.reply_packets,
                        v.reply_bytes,
                    ];
                    (
                        l([
                            ("load_balancer", &v.name),
                            ("vip", &vip),
                            ("protocol", &v.protocol),
                        ]),
                        c[i],
                    )
                }),
            );
        }
    }

    /// `lb_load_balancer_*`: the pool each load balancer uses, and whether it is the fallback.
    fn load_balancers(&mut self, status: &Status) {
        self.gauge(
            "lb_load_balancer_active_pool",
            "1 for the pool a load balancer sends new connections to (absent while disabled or without a usable pool).",
            status.load_balancers.iter().filter_map(|lb| {
                let pool = lb.active_pool.as_deref()?;
                Some((l([("load_balancer", &lb.name), ("pool", pool)]), Val::U(1)))
            }),
        );
        self.gauge(
            "lb_load_balancer_fallback",
            "1 while a load balancer uses its fallback pool because no pool of its order is healthy.",
            status
                .load_balancers
                .iter()
                .map(|lb| (l([("load_balancer", &lb.name)]), lb.fallback.into())),
        );
    }

    /// `lb_origin_*_total` and `lb_origin_open_flows`: the data path's counters per origin.
    fn origin_traffic(&mut self, vips: &[VipStats]) {
        for (i, (stem, help)) in COUNTERS.iter().enumerate() {
            self.counter(
                &format!("lb_origin_{stem}"),
                &format!(
                    "{help}, per origin; load balancers with the same origin port share the numbers."
                ),
                vips.iter().flat_map(|v| {
                    v.origins.iter().map(|o| {
                        let c = [
                            o.packets,
                            o.bytes,
                            o.new_flows,
                            o.reply_packets,
                            o.reply_bytes,
                        ];
                        (origin_labels(&v.name, o), c[i])
                    })
                }),
            );
        }
        self.gauge(
            "lb_origin_open_flows",
            "Flows to the origin opened and not yet closed, as the data path counts them.",
            vips.iter().flat_map(|v| {
                v.origins
                    .iter()
                    .map(|o| (origin_labels(&v.name, o), Val::I(o.open_flows)))
            }),
        );
    }

    /// `lb_origin_healthy`, `_enabled`, `_weight`: each origin's status.
    fn origin_health(&mut self, status: &Status) {
        self.gauge(
            "lb_origin_healthy",
            "1 when the origin is enabled and up, or enabled in a pool without a monitor.",
            status
                .origins
                .iter()
                .map(|o| (health_labels(o), o.takes_new_connections().into())),
        );
        self.gauge(
            "lb_origin_enabled",
            "1 when the origin is enabled in the config.",
            status
                .origins
                .iter()
                .map(|o| (health_labels(o), o.enabled.into())),
        );
        self.gauge(
            "lb_origin_weight",
            "The origin's configured weight (0 to 1).",
            status
                .origins
                .iter()
                .map(|o| (health_labels(o), Val::F(o.weight))),
        );
    }

    /// `lb_pool_*`: each pool's health and the origin counts it is decided by.
    fn pools(&mut self, status: &Status) {
        self.gauge(
            "lb_pool_healthy",
            "1 while the pool is enabled and has at least minimum_origins healthy origins.",
            status
                .pools
                .iter()
                .map(|p| (pool_labels(p), p.healthy.into())),
        );
        self.gauge(
            "lb_pool_healthy_origins",
            "Enabled origins of the pool that are healthy.",
            status.pools.iter().map(|p| {
                (
                    pool_labels(p),
                    Val::U(u64::try_from(p.healthy_origins).unwrap_or(u64::MAX)),
                )
            }),
        );
        self.gauge(
            "lb_pool_minimum_origins",
            "Healthy origins the pool needs to be healthy.",
            status
                .pools
                .iter()
                .map(|p| (pool_labels(p), Val::U(u64::from(p.minimum_origins)))),
        );
    }

    /// `lb_origin_probe_rtt_seconds`.
    fn probe_rtts(&mut self, rtt: &RttHistograms) {
        self.push(
            "lb_origin_probe_rtt_seconds",
            "Round trip time of successful health probes, per origin.",
            Samples::Histogram(
                rtt.series
                    .iter()
                    .flat_map(|(pool, origins)| {
                        origins.iter().map(move |(origin, h)| {
                            (l([("pool", pool), ("origin", origin)]), h.clone())
                        })
                    })
                    .collect(),
            ),
        );
    }

    /// `lb_dataplane_events_total` and the SYN flood gauges.
    fn dataplane(&mut self, stats: &Stats) {
        self.counter(
            "lb_dataplane_events",
            "Data path events by reason (drops, passes, forwards, ...), from the EVENTS map.",
            stats.events.iter().map(|(e, n)| (l([("event", e)]), *n)),
        );
        let sf = &stats.syn_flood;
        self.gauge(
            "lb_handshakes_in_flight",
            "TCP handshakes started and not finished over the SYN timeout (the SYN-cookie trigger).",
            [(vec![], Val::U(sf.handshakes_in_flight))],
        );
        self.gauge(
            "lb_syn_cookies_active",
            "1 while SYNs are being answered with SYN cookies (one sent in the last 2 s).",
            [(vec![], sf.cookies_active.into())],
        );
        let ub = &stats.udp_budget;
        self.gauge(
            "lb_udp_unanswered_new_flows",
            "New UDP flows of the last 16 s their origin has not answered (the UDP budget's count).",
            [(vec![], Val::U(ub.unanswered_new_flows))],
        );
        self.gauge(
            "lb_udp_budget",
            "Unanswered new UDP flows above which datagrams that would make a new flow are dropped.",
            [(vec![], Val::U(u64::from(ub.udp_budget)))],
        );
        if let Some(b) = sf.syn_budget {
            self.gauge(
                "lb_syn_budget",
                "Handshakes in flight at which SYNs get cookies (0: always).",
                [(vec![], Val::U(u64::from(b)))],
            );
        }
    }

    /// `lb_flow_table_entries` and `_capacity`.
    fn flow_table(&mut self, f: FlowTableFill) {
        self.gauge(
            "lb_flow_table_entries",
            "Entries in the flow table.",
            [(vec![], Val::U(f.entries))],
        );
        self.gauge(
            "lb_flow_table_capacity",
            "Entries the flow table can hold.",
            [(vec![], Val::U(f.capacity))],
        );
        if let Some(states) = f.states {
            self.gauge(
                "lb_flows",
                "Flows in the tables by protocol and state; udp flows are answered (the origin replied) or unanswered; expired ones wait to be replaced.",
                states
                    .rows()
                    .into_iter()
                    .map(|(p, st, n)| (l([("protocol", p), ("state", st)]), Val::U(n))),
            );
        }
    }

    /// `lb_notifications_total`: sent, failed, dropped, retried.
    fn notifications(&mut self, [sent, failed, dropped, retried]: [u64; 4]) {
        self.counter(
            "lb_notifications",
            "Health notifications by result: sent, failed (gave up), dropped (queue full), retried (attempts after the first).",
            [
                ("sent", sent),
                ("failed", failed),
                ("dropped", dropped),
                ("retried", retried),
            ]
            .map(|(r, n)| (l([("result", r)]), n)),
        );
    }
}

#[cfg(test)]
mod tests {
    //! The output is checked by a strict parser of the text format written here:
    //! `prometheus-parse` 0.2.5 (crates.io) builds, but keeps label values escaped
    //! (`a\"b` stays `a\"b`), drops labels whose value holds `,` or `=`, and skips a line
    //! whose value holds `}` without an error.

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{
        stats::{OriginStats, VipStats},
        status::{LbStatus, OriginState, PoolStatus},
    };

    use lb_testbed::prom::{parse, parse_float, LabelSet, Parsed, Sample};

    // ---- fixture -------------------------------------------------------------------------

    /// An origin name with a quote and a backslash, to see escaping round-trip.
    const ODD: &str = "c \"q\" \\ d";

    fn origin(pool: &str, name: &str, addr: &str, state: OriginState, weight: f64) -> OriginStatus {
        OriginStatus {
            pool: pool.into(),
            origin: name.into(),
            address: addr.into(),
            port: 8080,
            state,
            weight,
            ..OriginStatus::default()
        }
    }

    /// Two load balancers: `www` uses pool `web`; `api` prefers `static` (one unmonitored
    /// origin, minimum 2, so unhealthy) and falls back to `web`. Pool `web` has `a` up and
    /// `b` down.
    fn status() -> Status {
        Status {
            updated: 1,
            pop: None,
            origins: vec![
                origin("web", "a", "10.0.0.1", OriginState::Up, 1.0),
                origin("web", "b", "10.0.0.2", OriginState::Down, 0.5),
                origin("static", ODD, "10.0.1.1", OriginState::Unmonitored, 1.0),
            ],
            pools: vec![
                PoolStatus {
                    name: "web".into(),
                    healthy: true,
                    healthy_origins: 1,
                    enabled_origins: 2,
                    minimum_origins: 1,
                    rtt_ms: Some(0.3),
                    ..PoolStatus::default()
                },
                PoolStatus {
                    name: "static".into(),
                    healthy: false,
                    healthy_origins: 1,
                    enabled_origins: 1,
                    minimum_origins: 2,
                    rtt_ms: None,
                    ..PoolStatus::default()
                },
            ],
            load_balancers: vec![
                LbStatus {
                    name: "www".into(),
                    vip: "192.0.2.1:80".into(),
                    steering_policy: "off".into(),
                    active_pool: Some("web".into()),
                    fallback: false,
                    ..LbStatus::default()
                },
                LbStatus {
                    name: "api".into(),
                    vip: "192.0.2.2:443".into(),
                    steering_policy: "off".into(),
                    active_pool: Some("web".into()),
                    fallback: true,
                    ..LbStatus::default()
                },
            ],
        }
    }

    /// Counters of an origin: packets = `n`, the others derived from it.
    fn ostats(pool: &str, name: &str, addr: &str, port: u16, n: u64) -> OriginStats {
        OriginStats {
            pool: pool.into(),
            name: name.into(),
            address: addr.into(),
            port,
            origin_id: 0,
            packets: n,
            bytes: n * 100,
            new_flows: n / 10,
            reply_packets: n * 2,
            reply_bytes: n * 1000,
            open_flows: i64::try_from(n % 7).expect("small"),
        }
    }

    fn stats() -> Stats {
        let vip = |name: &str, addr: &str, port: u16, n: u64, origins| VipStats {
            name: name.into(),
            address: addr.into(),
            port,
            protocol: if name == "api" { "udp" } else { "tcp" }.into(),
            vip_id: 0,
            pool: "web".into(),
            packets: n,
            bytes: n * 64,
            new_flows: n / 4,
            reply_packets: n + 1,
            reply_bytes: n * 128,
            origins,
        };
        Stats {
            vips: vec![
                vip(
                    "www",
                    "192.0.2.1",
                    80,
                    1000,
                    vec![
                        ostats("web", "a", "10.0.0.1", 8080, 600),
                        ostats("web", "b", "10.0.0.2", 8080, 400),
                    ],
                ),
                vip(
                    "api",
                    "192.0.2.2",
                    443,
                    50,
                    vec![
                        ostats("static", ODD, "10.0.1.1", 8443, 20),
                        ostats("web", "a", "10.0.0.1", 8443, 30),
                        ostats("web", "b", "10.0.0.2", 8443, 0),
                    ],
                ),
            ],
            events: [
                ("drop_no_origin", 3),
                ("fwd_tx", 1050),
                ("pass_not_vip", 7),
                ("drop_ttl", 0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            syn_flood: crate::stats::SynFlood {
                handshakes_in_flight: 1500,
                syn_budget: Some(1024),
                cookies_active: true,
            },
            udp_budget: crate::stats::UdpBudget {
                unanswered_new_flows: 12,
                udp_budget: 4096,
            },
            flows: None,
        }
    }

    fn rtts() -> RttHistograms {
        let mut h = RttHistograms::new();
        for us in [300, 2_000, 2_000, 7_000_000] {
            h.observe("web", "a", Duration::from_micros(us));
        }
        h.observe("web", "b", Duration::from_secs(20));
        // Exactly on the first bound: buckets are inclusive.
        h.observe("static", ODD, Duration::from_micros(100));
        h
    }

    fn full_text() -> String {
        let status = status();
        let stats = stats();
        let rtt = rtts();
        render(&MetricsInput {
            status: &status,
            stats: Some(&stats),
            rtt: &rtt,
            flow_table: Some(FlowTableFill {
                entries: 1234,
                capacity: 65536,
                states: Some(crate::stats::FlowStates {
                    tcp_established: 1200,
                    udp_answered: 30,
                    udp_unanswered: 4,
                    ..crate::stats::FlowStates::default()
                }),
            }),
            notifications: Some([5, 1, 2, 3]),
        })
    }

    /// The value of the one sample `name{labels}` (labels compared as a set).
    fn value(p: &Parsed, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeSet<(&str, &str)> = labels.iter().copied().collect();
        let found: Vec<&Sample> = p
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect::<BTreeSet<_>>()
                        == want
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    // ---- tests ---------------------------------------------------------------------------

    #[test]
    fn every_family_has_help_type_and_samples() {
        let text = full_text();
        let p = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let want: BTreeSet<&str> = [
            "lb_vip_packets_total",
            "lb_vip_bytes_total",
            "lb_vip_new_flows_total",
            "lb_vip_reply_packets_total",
            "lb_vip_reply_bytes_total",
            "lb_load_balancer_active_pool",
            "lb_load_balancer_fallback",
            "lb_origin_packets_total",
            "lb_origin_bytes_total",
            "lb_origin_new_flows_total",
            "lb_origin_reply_packets_total",
            "lb_origin_reply_bytes_total",
            "lb_origin_open_flows",
            "lb_origin_healthy",
            "lb_origin_enabled",
            "lb_origin_weight",
            "lb_pool_healthy",
            "lb_pool_healthy_origins",
            "lb_pool_minimum_origins",
            "lb_origin_probe_rtt_seconds",
            "lb_dataplane_events_total",
            "lb_handshakes_in_flight",
            "lb_syn_cookies_active",
            "lb_syn_budget",
            "lb_udp_unanswered_new_flows",
            "lb_udp_budget",
            "lb_flow_table_entries",
            "lb_flow_table_capacity",
            "lb_flows",
            "lb_notifications_total",
        ]
        .into_iter()
        .collect();
        let got: BTreeSet<&str> = p.families.keys().map(String::as_str).collect();
        assert_eq!(got, want);
        for (name, f) in &p.families {
            assert!(
                f.help.as_deref().is_some_and(|h| !h.is_empty()),
                "{name}: no HELP"
            );
            let kind = f
                .kind
                .as_deref()
                .unwrap_or_else(|| panic!("{name}: no TYPE"));
            assert!(f.samples > 0, "{name}: no samples");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
        }
        for s in &p.samples {
            if p.families[&s.family].kind.as_deref() == Some("counter") {
                assert!(s.value.is_finite() && s.value >= 0.0, "{s:?}");
            }
        }
    }

    #[test]
    fn no_name_and_labels_pair_repeats() {
        let p = parse(&full_text()).expect("parses");
        let mut seen = BTreeSet::new();
        for s in &p.samples {
            let mut labels = s.labels.clone();
            labels.sort();
            assert!(seen.insert((s.name.clone(), labels)), "repeated: {s:?}");
        }
        // The shared pool's origins appear once per load balancer.
        let a = p
            .samples
            .iter()
            .filter(|s| s.name == "lb_origin_packets_total" && s.label("origin") == Some("a"))
            .count();
        assert_eq!(a, 2);
    }

    #[test]
    fn per_load_balancer_and_per_origin_values() {
        let p = parse(&full_text()).expect("parses");
        let www = [
            ("load_balancer", "www"),
            ("vip", "192.0.2.1:80"),
            ("protocol", "tcp"),
        ];
        assert_eq!(value(&p, "lb_vip_packets_total", &www), 1000.0);
        assert_eq!(value(&p, "lb_vip_bytes_total", &www), 64000.0);
        assert_eq!(value(&p, "lb_vip_new_flows_total", &www), 250.0);
        assert_eq!(value(&p, "lb_vip_reply_packets_total", &www), 1001.0);
        let api = [
            ("load_balancer", "api"),
            ("vip", "192.0.2.2:443"),
            ("protocol", "udp"),
        ];
        assert_eq!(value(&p, "lb_vip_reply_bytes_total", &api), 6400.0);

        let lbp = |lb, pool| [("load_balancer", lb), ("pool", pool)];
        assert_eq!(
            value(&p, "lb_load_balancer_active_pool", &lbp("www", "web")),
            1.0
        );
        assert_eq!(
            value(&p, "lb_load_balancer_active_pool", &lbp("api", "web")),
            1.0
        );
        assert_eq!(
            value(&p, "lb_load_balancer_fallback", &[("load_balancer", "www")]),
            0.0
        );
        assert_eq!(
            value(&p, "lb_load_balancer_fallback", &[("load_balancer", "api")]),
            1.0
        );

        let o = |lb, pool, origin, addr| {
            [
                ("load_balancer", lb),
                ("pool", pool),
                ("origin", origin),
                ("address", addr),
            ]
        };
        let www_a = o("www", "web", "a", "10.0.0.1");
        let api_a = o("api", "web", "a", "10.0.0.1");
        let api_odd = o("api", "static", ODD, "10.0.1.1");
        assert_eq!(value(&p, "lb_origin_packets_total", &www_a), 600.0);
        assert_eq!(value(&p, "lb_origin_packets_total", &api_a), 30.0);
        assert_eq!(value(&p, "lb_origin_bytes_total", &api_odd), 2000.0);
        assert_eq!(value(&p, "lb_origin_new_flows_total", &www_a), 60.0);
        assert_eq!(value(&p, "lb_origin_reply_packets_total", &www_a), 1200.0);
        assert_eq!(value(&p, "lb_origin_reply_bytes_total", &api_odd), 20000.0);
        assert_eq!(value(&p, "lb_origin_open_flows", &www_a), 5.0);
        assert_eq!(value(&p, "lb_origin_open_flows", &api_odd), 6.0);
    }

    #[test]
    fn health_values() {
        let p = parse(&full_text()).expect("parses");
        let h = |pool, origin, addr| [("pool", pool), ("origin", origin), ("address", addr)];
        assert_eq!(
            value(&p, "lb_origin_healthy", &h("web", "a", "10.0.0.1")),
            1.0
        );
        assert_eq!(
            value(&p, "lb_origin_healthy", &h("web", "b", "10.0.0.2")),
            0.0
        );
        assert_eq!(
            value(&p, "lb_origin_healthy", &h("static", ODD, "10.0.1.1")),
            1.0
        );
        assert_eq!(
            value(&p, "lb_origin_enabled", &h("web", "b", "10.0.0.2")),
            1.0
        );
        assert_eq!(
            value(&p, "lb_origin_weight", &h("web", "b", "10.0.0.2")),
            0.5
        );
        assert_eq!(value(&p, "lb_pool_healthy", &[("pool", "web")]), 1.0);
        assert_eq!(value(&p, "lb_pool_healthy", &[("pool", "static")]), 0.0);
        assert_eq!(
            value(&p, "lb_pool_healthy_origins", &[("pool", "web")]),
            1.0
        );
        assert_eq!(
            value(&p, "lb_pool_minimum_origins", &[("pool", "static")]),
            2.0
        );
    }

    #[test]
    fn events_flow_table_and_notifications() {
        let p = parse(&full_text()).expect("parses");
        let ev = |e| value(&p, "lb_dataplane_events_total", &[("event", e)]);
        assert_eq!(ev("drop_no_origin"), 3.0);
        assert_eq!(ev("fwd_tx"), 1050.0);
        assert_eq!(ev("drop_ttl"), 0.0, "zero counters are shown too");
        assert_eq!(value(&p, "lb_flow_table_entries", &[]), 1234.0);
        assert_eq!(value(&p, "lb_handshakes_in_flight", &[]), 1500.0);
        assert_eq!(value(&p, "lb_syn_cookies_active", &[]), 1.0);
        assert_eq!(value(&p, "lb_syn_budget", &[]), 1024.0);
        assert_eq!(value(&p, "lb_flow_table_capacity", &[]), 65536.0);
        let flows = |p_: &str, st: &str| value(&p, "lb_flows", &[("protocol", p_), ("state", st)]);
        assert_eq!(flows("tcp", "established"), 1200.0);
        assert_eq!(flows("udp", "answered"), 30.0);
        assert_eq!(flows("udp", "expired"), 0.0, "every state has a series");
        let n = |r| value(&p, "lb_notifications_total", &[("result", r)]);
        assert_eq!(
            [n("sent"), n("failed"), n("dropped"), n("retried")],
            [5.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let text = full_text();
        assert!(
            text.contains(
                "lb_origin_healthy{pool=\"static\",origin=\"c \\\"q\\\" \\\\ d\",address=\"10.0.1.1\"} 1\n"
            ),
            "{text}"
        );
        // And a newline survives the round trip through the parser.
        let status = Status {
            origins: vec![origin("p\nq", "o", "10.0.0.9", OriginState::Up, 1.0)],
            ..status()
        };
        let text = render(&MetricsInput {
            status: &status,
            stats: None,
            rtt: &RttHistograms::new(),
            flow_table: None,
            notifications: None,
        });
        let p = parse(&text).expect("parses");
        let l = [("pool", "p\nq"), ("origin", "o"), ("address", "10.0.0.9")];
        assert_eq!(value(&p, "lb_origin_healthy", &l), 1.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        let p = parse(&full_text()).expect("parses");
        let name = "lb_origin_probe_rtt_seconds";
        let mut series: BTreeMap<LabelSet, Vec<(f64, f64)>> = BTreeMap::new();
        for s in p
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
        {
            let le = parse_float(s.label("le").expect("le")).expect("le is a float");
            let key: LabelSet = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            series.entry(key).or_default().push((le, s.value));
        }
        assert_eq!(series.len(), 3);
        for (labels, buckets) in &series {
            let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
            let want: Vec<f64> = RTT_BUCKETS.iter().copied().chain([f64::INFINITY]).collect();
            assert_eq!(les, want, "{labels:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{labels:?}: {buckets:?}"
            );
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = value(&p, &format!("{name}_count"), &l);
            assert_eq!(buckets.last().map(|b| b.1), Some(count), "{labels:?}");
            value(&p, &format!("{name}_sum"), &l);
        }

        let bucket = |pool, origin, le| {
            value(
                &p,
                &format!("{name}_bucket"),
                &[("pool", pool), ("origin", origin), ("le", le)],
            )
        };
        assert_eq!(bucket("web", "a", "0.00025"), 0.0);
        assert_eq!(bucket("web", "a", "0.0005"), 1.0);
        assert_eq!(bucket("web", "a", "0.0025"), 3.0);
        assert_eq!(bucket("web", "a", "5"), 3.0);
        assert_eq!(bucket("web", "a", "10"), 4.0);
        assert_eq!(bucket("web", "b", "10"), 0.0);
        assert_eq!(bucket("web", "b", "+Inf"), 1.0);
        assert_eq!(bucket("static", ODD, "0.0001"), 1.0, "bounds are inclusive");
        let a = [("pool", "web"), ("origin", "a")];
        let sum = value(&p, &format!("{name}_sum"), &a);
        assert!((sum - 7.0043).abs() < 1e-9, "{sum}");
        assert_eq!(value(&p, &format!("{name}_count"), &a), 4.0);
    }

    #[test]
    fn numbers_are_spelled_as_the_format_expects() {
        let text = full_text();
        for want in [
            "lb_origin_probe_rtt_seconds_bucket{pool=\"web\",origin=\"a\",le=\"0.0001\"} 0\n",
            "lb_origin_probe_rtt_seconds_bucket{pool=\"web\",origin=\"a\",le=\"10\"} 4\n",
            "lb_origin_probe_rtt_seconds_bucket{pool=\"web\",origin=\"a\",le=\"+Inf\"} 4\n",
            "lb_origin_weight{pool=\"web\",origin=\"b\",address=\"10.0.0.2\"} 0.5\n",
            "lb_vip_packets_total{load_balancer=\"www\",vip=\"192.0.2.1:80\",protocol=\"tcp\"} 1000\n",
            "lb_flows{protocol=\"udp\",state=\"unanswered\"} 4\n",
            "# TYPE lb_vip_packets_total counter\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn retain_drops_removed_origins() {
        let mut h = rtts();
        assert_eq!(h.len(), 3);
        h.retain(|pool, origin| !(pool == "web" && origin == "b"));
        assert_eq!(h.len(), 2);
        h.retain(|pool, _| pool == "web");
        assert_eq!(h.len(), 1);
        let status = status();
        let text = render(&MetricsInput {
            status: &status,
            stats: None,
            rtt: &h,
            flow_table: None,
            notifications: None,
        });
        let p = parse(&text).expect("parses");
        let origins: BTreeSet<&str> = p
            .samples
            .iter()
            .filter(|s| s.family == "lb_origin_probe_rtt_seconds")
            .filter_map(|s| s.label("origin"))
            .collect();
        assert_eq!(origins, ["a"].into_iter().collect());
        h.retain(|_, _| false);
        assert!(h.is_empty());
    }

    #[test]
    fn optional_inputs_leave_their_families_out() {
        let status = status();
        let text = render(&MetricsInput {
            status: &status,
            stats: None,
            rtt: &RttHistograms::new(),
            flow_table: None,
            notifications: None,
        });
        let p = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for name in p.families.keys() {
            assert!(
                !name.starts_with("lb_vip_")
                    && !name.ends_with("_total")
                    && name != "lb_origin_open_flows"
                    && name != "lb_origin_probe_rtt_seconds"
                    && !name.starts_with("lb_flow_table")
                    && name != "lb_flows",
                "{name} without its input"
            );
        }
        assert!(p.families.contains_key("lb_origin_healthy"));
        let empty = Status::default();
        let text = render(&MetricsInput {
            status: &empty,
            stats: None,
            rtt: &RttHistograms::new(),
            flow_table: None,
            notifications: None,
        });
        assert_eq!(text, "");
    }

    #[test]
    fn duplicate_input_is_written_once() {
        let mut stats = stats();
        let again = ostats("web", "a", "10.0.0.1", 8080, 9);
        stats.vips[0].origins.push(again);
        let status = status();
        let text = render(&MetricsInput {
            status: &status,
            stats: Some(&stats),
            rtt: &RttHistograms::new(),
            flow_table: None,
            notifications: None,
        });
        let p = parse(&text).expect("parses");
        let l = [
            ("load_balancer", "www"),
            ("pool", "web"),
            ("origin", "a"),
            ("address", "10.0.0.1"),
        ];
        assert_eq!(
            value(&p, "lb_origin_packets_total", &l),
            600.0,
            "first wins"
        );
    }

    #[test]
    fn healthy_means_takes_new_connections() {
        let cases = [
            (OriginState::Up, true, true),
            (OriginState::Up, false, false),
            (OriginState::Down, true, false),
            (OriginState::Unknown, true, false),
            (OriginState::Unmonitored, true, true),
            (OriginState::Unmonitored, false, false),
        ];
        for (state, enabled, want) in cases {
            let o = OriginStatus {
                enabled,
                ..origin("p", "o", "10.0.0.1", state, 1.0)
            };
            assert_eq!(o.takes_new_connections(), want, "{state} enabled={enabled}");
        }
    }
}

//! Traffic figures for the API: the data path's counters sampled once a second from the
//! pinned maps (read-only), with rates, and the flow table's fill every 30 seconds.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::View;
use crate::{
    dataplane::Maps,
    metrics::FlowTableFill,
    stats::{self, Stats},
    status::Rates,
};

/// One sample of every counter.
#[derive(Debug)]
pub struct Sample {
    pub at: Instant,
    pub stats: Stats,
    /// By load balancer name.
    pub vips: HashMap<String, Rates>,
    /// By (pool, origin) name: summed over the rings the origin is in.
    pub origins: HashMap<(String, String), Rates>,
    pub flow_table: Option<FlowTableFill>,
}

/// The sampling thread's output; cheap to clone. The thread ends when the view's sender
/// (the agent) is gone or the sampler is dropped.
#[derive(Clone, Default)]
pub struct Sampler {
    latest: Arc<Mutex<Option<Arc<Sample>>>>,
    stop: Arc<AtomicBool>,
}

pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Counting walks every key of the flow table (one syscall each), so it runs seldom.
const FLOW_COUNT_EVERY: Duration = Duration::from_secs(30);

impl Sampler {
    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.latest.lock().ok().and_then(|l| l.clone())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Starts the sampling thread.
    pub fn spawn(view: watch::Receiver<Arc<View>>) -> Self {
        let s = Self::default();
        let out = s.clone();
        std::thread::Builder::new()
            .name("lb-traffic".into())
            .spawn(move || out.run(view))
            .map_or_else(
                |e| {
                    tracing::warn!(
                        "cannot start the traffic sampler: {e}; the API shows no traffic"
                    );
                    Self::default()
                },
                |_| s,
            )
    }

    fn run(&self, view: watch::Receiver<Arc<View>>) {
        let mut maps: Option<(std::path::PathBuf, Maps)> = None;
        let mut flows: Option<(Instant, FlowTableFill)> = None;
        let mut warned = false;
        while !self.stop.load(Ordering::Relaxed) && view.has_changed().is_ok() {
            let v = view.borrow().clone();
            let pin_dir = &v.cfg.dataplane.pin_dir;
            if maps.as_ref().is_none_or(|(d, _)| d != pin_dir) {
                maps = Maps::open_pinned(pin_dir)
                    .ok()
                    .map(|m| (pin_dir.clone(), m));
            }
            if let Some((_, m)) = &maps {
                match stats::read(&v.plan, &v.ids, m) {
                    Ok(st) => {
                        if flows.is_none_or(|(t, _)| t.elapsed() >= FLOW_COUNT_EVERY) {
                            let entries = m
                                .flows
                                .keys()
                                .take(v.cfg.dataplane.flow_table_size as usize)
                                .filter(Result::is_ok)
                                .count() as u64;
                            flows = Some((
                                Instant::now(),
                                FlowTableFill {
                                    entries,
                                    capacity: u64::from(v.cfg.dataplane.flow_table_size),
                                    states: stats::FlowStates::read(
                                        m,
                                        v.cfg.dataplane.flow_table_size as usize,
                                    )
                                    .ok(),
                                },
                            ));
                        }
                        let prev = self.latest();
                        let s = sample(st, prev.as_deref(), flows.map(|(_, f)| f));
                        if let Ok(mut l) = self.latest.lock() {
                            *l = Some(Arc::new(s));
                        }
                    }
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!("reading counters for the API: {e}");
                    }
                    Err(_) => {}
                }
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
    }
}

/// Totals of `stats`, with rates against `prev`.
pub fn sample(stats: Stats, prev: Option<&Sample>, flow_table: Option<FlowTableFill>) -> Sample {
    let at = Instant::now();
    let dt = prev.map(|p| at.duration_since(p.at).as_secs_f64());
    let rate = |now: u64, before: Option<u64>| match (dt, before) {
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        (Some(dt), Some(b)) if dt > 0.0 && now >= b => (now - b) as f64 / dt,
        _ => 0.0,
    };
    let with_rates = |t: Rates, p: Option<&Rates>| Rates {
        packets_per_sec: rate(t.packets, p.map(|p| p.packets)),
        bytes_per_sec: rate(t.bytes, p.map(|p| p.bytes)),
        new_flows_per_sec: rate(t.new_flows, p.map(|p| p.new_flows)),
        ..t
    };
    let mut vips = HashMap::new();
    let mut origins: HashMap<(String, String), Rates> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for v in &stats.vips {
        let t = Rates {
            packets: v.packets + v.reply_packets,
            bytes: v.bytes + v.reply_bytes,
            new_flows: v.new_flows,
            ..Rates::default()
        };
        vips.insert(
            v.name.clone(),
            with_rates(t, prev.and_then(|p| p.vips.get(&v.name))),
        );
        for o in &v.origins {
            // An origin id (one pool member in one ring) may serve several load balancers.
            if !seen.insert(o.origin_id) {
                continue;
            }
            let e = origins.entry((o.pool.clone(), o.name.clone())).or_default();
            e.packets += o.packets + o.reply_packets;
            e.bytes += o.bytes + o.reply_bytes;
            e.new_flows += o.new_flows;
            e.open_flows += o.open_flows;
        }
    }
    let origins = origins
        .into_iter()
        .map(|(k, t)| {
            let r = with_rates(t, prev.and_then(|p| p.origins.get(&k)));
            (k, r)
        })
        .collect();
    Sample {
        at,
        stats,
        vips,
        origins,
        flow_table,
    }
}

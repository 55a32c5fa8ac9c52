//! Health monitoring: the pure state machine and table (`state`), what is probed
//! (`targets`), the checks (`probe` for tcp, http and https and the dispatch by type,
//! `icmp` for icmp_ping and udp_icmp, `smtp`) and the tokio tasks that run them
//! (`Monitors`).

pub mod icmp;
mod probe;
pub mod smtp;
mod state;
mod targets;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

pub use probe::check;
pub use state::{
    Changed, HealthMark, HealthTable, Hysteresis, OriginHealth, Outcome, State, Target, Transition,
};
pub use targets::{target, targets};
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};

use crate::{
    config::{Config, Monitor},
    http_client::HttpClient,
};

/// A check result on its way to the agent's main loop.
#[derive(Debug)]
pub struct Report {
    pub target: Target,
    pub outcome: Outcome,
}

/// The running probe tasks, one per target. Reconfigured on reload: a target whose monitor
/// settings did not change keeps its task (and its health).
pub struct Monitors {
    tasks: BTreeMap<Target, (Monitor, JoinHandle<()>)>,
    tx: mpsc::Sender<Report>,
    limit: Arc<Semaphore>,
    client: HttpClient,
}

impl Monitors {
    pub fn new(tx: mpsc::Sender<Report>, concurrency: u32) -> Self {
        Self {
            tasks: BTreeMap::new(),
            tx,
            limit: Arc::new(Semaphore::new(concurrency as usize)),
            client: HttpClient::new(),
        }
    }

    /// Starts, keeps or stops tasks so that exactly `cfg`'s targets are probed. Returns the
    /// targets with their hysteresis thresholds, for the health table.
    pub fn sync(&mut self, cfg: &Config) -> BTreeMap<Target, (u32, u32)> {
        let want: BTreeMap<Target, Monitor> = targets(cfg)
            .into_iter()
            .filter_map(|(t, m)| cfg.monitor(&m).map(|m| (t, m.clone())))
            .collect();
        self.tasks.retain(|t, (m, task)| {
            let keep = want.get(t) == Some(m);
            if !keep {
                task.abort();
            }
            keep
        });
        for (t, m) in &want {
            if !self.tasks.contains_key(t) {
                let task = tokio::spawn(run(
                    t.clone(),
                    m.clone(),
                    self.tx.clone(),
                    self.limit.clone(),
                    self.client.clone(),
                ));
                self.tasks.insert(t.clone(), (m.clone(), task));
            }
        }
        want.into_iter()
            .map(|(t, m)| (t, (m.consecutive_up, m.consecutive_down)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// Probes one target forever: a random first delay (within one interval, at most 1 s, so that
/// checks do not fire in lockstep yet health is known soon after start), then one check per
/// interval, measured start to start.
async fn run(
    target: Target,
    monitor: Monitor,
    tx: mpsc::Sender<Report>,
    limit: Arc<Semaphore>,
    client: HttpClient,
) {
    let addr = SocketAddr::new(target.address, target.port);
    let jitter = monitor.start_jitter_max().mul_f64(fastrand::f64());
    tokio::time::sleep(jitter).await;
    let mut tick = tokio::time::interval(monitor.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = {
            let Ok(_permit) = limit.acquire().await else {
                return;
            };
            check(&monitor, addr, &client).await
        };
        if tx
            .send(Report {
                target: target.clone(),
                outcome,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

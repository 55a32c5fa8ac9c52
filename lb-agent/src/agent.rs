//! The agent's lifecycle: load config, load or adopt the data path, reconcile, attach, then
//! serve until shutdown, re-applying the config on SIGHUP.

use std::{future::Future, path::PathBuf};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    dataplane::{self, Dataplane, DataplaneError},
    reconcile::{ReconcileError, Reconciler},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("installing signal handler: {0}")]
    Signal(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub bpf_object: Option<PathBuf>,
    /// Detach XDP and remove every pin on exit (default: leave the data path running).
    pub detach_on_exit: bool,
}

/// Runs the agent until `shutdown` completes.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let cfg = Config::load(&opts.config)?;
    for w in dataplane::check_host(&cfg.dataplane)? {
        warn!("{w}");
    }
    let object = dataplane::find_object(opts.bpf_object.as_deref())?;
    let dp_cfg = &cfg.dataplane;
    let adopting = dp_cfg.pin_dir.join(lb_common::map_names::FLOWS).exists();
    let mut dp = Dataplane::load(&object, &dp_cfg.pin_dir, dp_cfg.flow_table_size)?;
    info!(
        object = %object.display(),
        pin_dir = %dp_cfg.pin_dir.display(),
        adopted_pins = adopting,
        verified_insns = dp.verified_insns(),
        "BPF object loaded"
    );
    let mut rec = Reconciler::adopt(dp.take_maps()?)?;
    let report = rec.apply(&cfg)?;
    info!(?report, "maps reconciled");
    for o in dp.attach(&dp_cfg.interfaces, dp_cfg.xdp_mode, &mut rec.maps.tx_ports)? {
        info!(interface = %o.interface, ifindex = o.ifindex, replaced_running_program = o.replaced, "XDP attached");
    }
    let mut neighbours = crate::neigh::Neighbours::default();
    for w in neighbours.sync(origin_addresses(&cfg)) {
        warn!("{w}");
    }
    info!(
        load_balancers = cfg.load_balancers.len(),
        pools = cfg.pools.len(),
        "data path ready"
    );

    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    let mut running = cfg;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hup.recv() => {
                match reload(&opts, &running, &mut dp, &mut rec) {
                    Ok(next) => {
                        for w in neighbours.sync(origin_addresses(&next)) {
                            warn!("{w}");
                        }
                        running = next;
                    }
                    Err(e) => error!("config reload rejected, the running config stays in force: {e}"),
                }
            }
        }
    }
    if opts.detach_on_exit {
        neighbours.clear();
        drop(rec);
        drop(dp);
        let removed = dataplane::teardown(&running.dataplane.pin_dir)?;
        info!(?removed, "detached and unpinned (--detach-on-exit)");
    } else {
        info!(pin_dir = %running.dataplane.pin_dir.display(), "exiting; XDP stays attached and keeps forwarding (run `lb-agent teardown` to stop it)");
    }
    Ok(())
}

fn origin_addresses(cfg: &Config) -> Vec<std::net::Ipv4Addr> {
    cfg.pools
        .iter()
        .flat_map(|p| p.origins.iter().map(|o| o.address))
        .collect()
}

/// Validates the new config completely before touching anything.
fn reload(
    opts: &RunOptions,
    running: &Config,
    dp: &mut Dataplane,
    rec: &mut Reconciler,
) -> Result<Config, AgentError> {
    let next = Config::load(&opts.config)?;
    let (a, b) = (&running.dataplane, &next.dataplane);
    if a.pin_dir != b.pin_dir || a.flow_table_size != b.flow_table_size {
        return Err(DataplaneError::Host(
            "dataplane.pin_dir and dataplane.flow_table_size cannot change while running; restart the agent (after `lb-agent teardown` for a new flow table size)".into(),
        )
        .into());
    }
    for w in dataplane::check_host(b)? {
        warn!("{w}");
    }
    let report = rec.apply(&next)?;
    dp.attach(&b.interfaces, b.xdp_mode, &mut rec.maps.tx_ports)?;
    info!(?report, "config reloaded");
    Ok(next)
}

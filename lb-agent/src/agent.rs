//! The agent's lifecycle: load config, load or adopt the data path, start health monitors,
//! reconcile, attach, then serve until shutdown: health reports and SIGHUP reloads lead to
//! map updates.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::TcpListener,
    signal::unix::{signal, Signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    api::{self, Command, EnvCredentials, Sampler, View},
    config::{self, Config, ConfigError, FieldError, RawConfig, SteeringPolicy},
    dataplane::{self, Dataplane, DataplaneError},
    health::{HealthTable, Monitors, Report},
    metrics::RttHistograms,
    neigh::Neighbours,
    netwatch::{self, NetWatch},
    notify::{Event, Notifier, NotifyOptions},
    plan::Plan,
    reconcile::{Assignment, ReconcileError, Reconciler},
    refusal::{Reason, Refusal},
    status::Status,
    steering,
    store::{self, Op, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("installing signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Api(String),
    #[error("config {path}: its monitors, pools and load balancers conflict with objects made through the API (kept in api.state_file), so the file's changes to them are refused; change the file or those objects:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Conflict { path: PathBuf, errors: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub bpf_object: Option<PathBuf>,
    /// Detach XDP and remove every pin on exit (default: leave the data path running).
    pub detach_on_exit: bool,
    /// Overrides `[api] listen` (`address:port` or `off`).
    pub api_listen: Option<String>,
}

/// The config to start with, from the file and `api.state_file`.
#[derive(Debug)]
pub struct Effective {
    /// The file as read (its host sections are in force).
    pub raw: RawConfig,
    /// Monitors, pools and load balancers in force.
    pub store: Store,
    pub cfg: Config,
    /// Merging the file changed the store (it should be saved).
    pub merged: bool,
    /// Set when the file's objects conflict with objects made through the API: as on a
    /// reload, the file's changes to objects are refused and the state file's objects are
    /// in force, with the file's host sections.
    pub refused: Option<AgentError>,
}

/// The config in force: the file's host sections with the store's objects (the file's
/// objects merged in, see `store`), validated; `api_listen` overrides `[api] listen`.
pub fn load_effective(path: &Path, api_listen: Option<&str>) -> Result<Effective, AgentError> {
    let raw = RawConfig::load(path)?;
    let state_file = raw
        .api
        .state_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_STATE_FILE));
    let stored = Store::load(&state_file)?.unwrap_or_default();
    match merge_file(&stored, &raw, path, api_listen, None) {
        Ok((store, cfg, merged)) => Ok(Effective {
            raw,
            store,
            cfg,
            merged,
            refused: None,
        }),
        // Only objects made through the API can conflict, so the stored objects were in
        // force before: run with them, as a reload would, rather than not at all (nothing
        // would check health meanwhile). If they do not validate with the file's host
        // sections either, the conflict is what to fix first.
        Err(e @ AgentError::Conflict { .. }) => {
            match build(&stored, &raw, path, api_listen, None) {
                Ok(cfg) => Ok(Effective {
                    raw,
                    store: stored,
                    cfg,
                    merged: false,
                    refused: Some(e),
                }),
                Err(_) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Merges the file into a copy of `stored` and validates the result (see `store`): the
/// store and config to put in force, and whether the store changed. Duplicate names in the
/// file are refused before the merge (which matches objects by name and would keep only
/// the last), and errors name the file's objects by their index in the file and name, and
/// objects made through the API by name and id (`AgentError::Conflict` when any is involved).
fn merge_file(
    stored: &Store,
    raw: &RawConfig,
    path: &Path,
    api_listen: Option<&str>,
    loaded: Option<&crate::config::Geo>,
) -> Result<(Store, Config, bool), AgentError> {
    let dups = crate::config::file_name_errors(raw);
    if !dups.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            errors: dups,
        }
        .into());
    }
    let mut store = stored.clone();
    let changed = store.merge_file(raw, &now());
    let mut found = stored.file_conflicts(&store, raw);
    let errors = match build(&store, raw, path, api_listen, loaded) {
        Ok(cfg) if found.errors.is_empty() => return Ok((store, cfg, changed)),
        Ok(_) => Vec::new(),
        Err(AgentError::Config(ConfigError::Invalid { errors, .. })) => errors,
        Err(e) => return Err(e),
    };
    let rest = store.file_messages(raw, &errors, &found);
    found.errors.extend(rest.errors);
    let path = path.to_owned();
    Err(if found.conflict || rest.conflict {
        AgentError::Conflict {
            path,
            errors: found.errors,
        }
    } else {
        ConfigError::Invalid {
            path,
            errors: found.errors.into_iter().map(FieldError::message).collect(),
        }
        .into()
    })
}

fn now() -> String {
    store::rfc3339(std::time::SystemTime::now())
}

/// Validates the store's objects with the file's host sections.
fn build(
    store: &Store,
    raw: &RawConfig,
    path: &Path,
    api_listen: Option<&str>,
    loaded: Option<&crate::config::Geo>,
) -> Result<Config, AgentError> {
    let mut cfg = Config::from_raw(store.to_raw(raw), path, loaded)?;
    if let Some(l) = api_listen {
        cfg.api.listen = match l {
            "off" => None,
            l => Some(l.parse().map_err(|_| {
                AgentError::Api(format!(
                    "--api-listen: \"{l}\" is not address:port; write e.g. \"127.0.0.1:8405\", or \"off\""
                ))
            })?),
        };
    }
    Ok(cfg)
}

/// Everything the main loop owns.
struct Agent {
    opts: RunOptions,
    cfg: Config,
    dp: Dataplane,
    rec: Reconciler,
    monitors: Monitors,
    health: HealthTable,
    neighbours: Neighbours,
    /// Pool each load balancer used at the last apply, to log changes.
    chosen: BTreeMap<String, String>,
    /// The reconciler's id assignment at the last apply, published with its plan.
    ids: Arc<Assignment>,
    status_dirty: bool,
    /// The config file as read (host sections; its objects are merged into `store`).
    raw: RawConfig,
    /// Monitors, pools and load balancers with their ids, as the API sees them.
    store: Store,
    rtt: RttHistograms,
    view: tokio::sync::watch::Sender<Arc<View>>,
    notifier: Notifier,
    /// Each pool's health at the last status, to notify changes.
    pool_healthy: BTreeMap<String, bool>,
}

/// Runs the agent until `shutdown` completes: `start`, the main loop (`Running::serve`),
/// then `Running::stop`.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let mut running = start(opts).await?;
    running.serve(shutdown).await;
    running.stop()
}

/// What `start` leaves running: the main loop's state and what it listens to.
struct Running {
    agent: Agent,
    /// Health reports from the monitors.
    reports: mpsc::Receiver<Report>,
    /// API changes. `_commands_tx` keeps the channel open while the API is off.
    commands: mpsc::Receiver<Command>,
    _commands_tx: mpsc::Sender<Command>,
    hup: Signal,
    /// `None` when links, routes and neighbours cannot be watched (or no longer).
    netwatch: Option<NetWatch>,
    sampler: Sampler,
    /// The API server task, when `api.listen` is set.
    server: Option<JoinHandle<()>>,
}

/// Loads the config, binds the API's socket, loads or adopts the data path, waits for the
/// first health round, writes the maps and attaches; then installs the SIGHUP handler and
/// starts the API and the watch on links, routes and neighbours.
async fn start(opts: RunOptions) -> Result<Running, AgentError> {
    let (eff, listener) = prepare(&opts).await?;
    let (dp, rec) = load_dataplane(&eff.cfg, opts.bpf_object.as_deref())?;
    let (monitors, health, reports) = first_health_round(&eff.cfg).await;
    let (mut agent, view_rx) = Agent::new(opts, eff, dp, rec, monitors, health);
    agent.bring_up()?;
    // Before "data path ready": until the handler is installed SIGHUP keeps its default
    // action and ends the process, and whoever waits for that line may reload at once.
    let hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    info!(
        load_balancers = agent.cfg.load_balancers.len(),
        pools = agent.cfg.pools.len(),
        monitored_origins = agent.monitors.len(),
        "data path ready"
    );

    let (commands_tx, commands) = mpsc::channel::<Command>(64);
    let sampler = Sampler::spawn(view_rx.clone());
    let server = listener.map(|l| {
        let tx = commands_tx.clone();
        spawn_api(l, &agent.cfg.api, view_rx.clone(), tx, sampler.clone())
    });
    Ok(Running {
        agent,
        reports,
        commands,
        _commands_tx: commands_tx,
        hup,
        netwatch: open_netwatch(),
        sampler,
        server,
    })
}

/// The config in force (see `load_effective`), checked against the host, with the API's
/// socket bound and the state file saved. Binding comes before touching the data path, so
/// a taken port fails the start cleanly.
async fn prepare(opts: &RunOptions) -> Result<(Effective, Option<TcpListener>), AgentError> {
    let eff = load_effective(&opts.config, opts.api_listen.as_deref())?;
    if let Some(e) = &eff.refused {
        // One line, like a rejected reload, so that every error stays together.
        let e = e.to_string().replace('\n', " ");
        error!("config rejected at start, the objects of api.state_file stay in force: {e}");
    }
    for w in dataplane::check_host(&eff.cfg)? {
        warn!("{w}");
    }
    let listener = match eff.cfg.api.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            AgentError::Api(format!(
                "api.listen {addr}: {e}; choose another address with --api-listen or [api] listen, or \"off\""
            ))
        })?),
        None => None,
    };
    if eff.merged || !eff.cfg.api.state_file.exists() {
        eff.store.save(&eff.cfg.api.state_file)?;
    }
    Ok((eff, listener))
}

/// Loads the BPF object (adopting the maps an earlier agent pinned) and the reconciler
/// over its maps.
fn load_dataplane(
    cfg: &Config,
    bpf_object: Option<&Path>,
) -> Result<(Dataplane, Reconciler), AgentError> {
    let object = dataplane::find_object(bpf_object)?;
    let dp_cfg = &cfg.dataplane;
    let adopting = dp_cfg.pin_dir.join(lb_common::map_names::FLOWS).exists();
    let mut dp = Dataplane::load(&object, &dp_cfg.pin_dir, dp_cfg.flow_table_size)?;
    info!(
        object = %object.display(),
        pin_dir = %dp_cfg.pin_dir.display(),
        adopted_pins = adopting,
        verified_insns = dp.verified_insns(),
        verified_insns_udp = dp.verified_insns_of(lb_common::UDP_PROGRAM_NAME),
        verified_insns_v6 = dp.verified_insns_of(lb_common::V6_PROGRAM_NAME),
        verified_insns_v6_udp = dp.verified_insns_of(lb_common::V6_UDP_PROGRAM_NAME),
        verified_insns_to_v4 = dp.verified_insns_of(lb_common::TO_V4_PROGRAM_NAME),
        verified_insns_to_v6 = dp.verified_insns_of(lb_common::TO_V6_PROGRAM_NAME),
        "BPF object loaded"
    );
    let rec = Reconciler::adopt(dp.take_maps()?)?;
    Ok((dp, rec))
}

/// Starts the health monitors and waits for their first round of checks.
async fn first_health_round(cfg: &Config) -> (Monitors, HealthTable, mpsc::Receiver<Report>) {
    let (tx, mut rx) = mpsc::channel::<Report>(4096);
    let mut monitors = Monitors::new(tx, cfg.agent.probe_concurrency);
    let mut health = HealthTable::default();
    health.set_rtt_smoothing(cfg.agent.rtt_smoothing);
    health.retain(&monitors.sync(cfg));

    // Unknown health counts as down, so writing VIPs before the first checks complete would
    // send every monitored load balancer to its fallback pool for a moment. Wait (bounded)
    // for one round; an adopted data path keeps forwarding with its old state meanwhile.
    let first_round = first_round_deadline(cfg);
    let started = Instant::now();
    while health.iter().any(|(_, h)| h.last_ok.is_none()) {
        let left = first_round.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(r)) => {
                health.record(&r.target, &r.outcome);
            }
            _ => break,
        }
    }
    info!(
        targets = monitors.len(),
        waited_ms = started.elapsed().as_millis() as u64,
        "first health check round done"
    );
    (monitors, health, rx)
}

/// Serves the API, metrics and dashboard on `l`, in a task.
fn spawn_api(
    l: TcpListener,
    c: &config::Api,
    view: watch::Receiver<Arc<View>>,
    tx: mpsc::Sender<Command>,
    sampler: Sampler,
) -> JoinHandle<()> {
    let env = EnvCredentials::from_env();
    if c.tokens.is_empty() && c.keys.is_empty() && env.tokens.is_empty() && env.keys.is_empty() {
        warn!("no API credentials configured: the API refuses every request; set [api] tokens or LB_API_TOKEN");
    }
    info!(listen = %l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "API, metrics and dashboard served");
    let app = api::router(view, tx, env, sampler);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            error!("API server stopped: {e}");
        }
    })
}

fn open_netwatch() -> Option<NetWatch> {
    match NetWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!("cannot watch links, routes and neighbours ({e}): cached next hops are refreshed every {} s instead", lb_common::NH_MAX_AGE);
            None
        }
    }
}

impl Running {
    /// The main loop, until `shutdown` completes: SIGHUP reloads, health reports, API
    /// changes, changes of links, routes and neighbours, and the status once a second
    /// when something changed.
    async fn serve(&mut self, shutdown: impl Future<Output = ()>) {
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = self.hup.recv() => self.agent.on_hup(),
                Some(r) = self.reports.recv() => self.agent.on_report(&r),
                Some(c) = self.commands.recv() => self.agent.on_command(c),
                changed = next_hop_change(self.netwatch.as_mut()) => self.on_next_hop_change(changed),
                _ = status_tick.tick() => {
                    if self.agent.status_dirty {
                        self.agent.write_status();
                    }
                }
            }
        }
    }

    /// Links, routes or neighbours changed (or the watch failed: it stops, and the data
    /// path's next hop cache ages out instead).
    fn on_next_hop_change(&mut self, changed: std::io::Result<usize>) {
        if let Err(e) = changed {
            warn!("watching links, routes and neighbours stopped ({e}): cached next hops are refreshed every {} s instead", lb_common::NH_MAX_AGE);
            self.netwatch = None;
        }
        if let Err(e) = self.agent.rec.next_hops_changed() {
            error!("{e}");
        }
        self.agent.sync_local_addrs();
    }

    /// Stops the API and the sampler, writes the last status, then detaches and unpins
    /// (`--detach-on-exit`) or leaves XDP attached and forwarding.
    fn stop(self) -> Result<(), AgentError> {
        let Running {
            mut agent,
            sampler,
            server,
            ..
        } = self;
        if let Some(s) = server {
            s.abort();
        }
        sampler.stop();
        let pin_dir = agent.cfg.dataplane.pin_dir.clone();
        agent.write_status();
        if agent.opts.detach_on_exit {
            agent.neighbours.clear();
            drop(agent);
            let removed = dataplane::teardown(&pin_dir)?;
            info!(?removed, "detached and unpinned (--detach-on-exit)");
        } else {
            info!(pin_dir = %pin_dir.display(), "exiting; XDP stays attached and keeps forwarding (run `lb-agent teardown` to stop it)");
        }
        Ok(())
    }
}

/// Resolves when the kernel's links, routes or neighbours changed; never without a watch.
async fn next_hop_change(w: Option<&mut NetWatch>) -> std::io::Result<usize> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Longest first check among the configured monitors (all attempts), plus the start jitter.
fn first_round_deadline(cfg: &Config) -> Duration {
    cfg.monitors
        .iter()
        .map(|m| m.timeout.get() * (m.retries + 1) + m.start_jitter_max())
        .max()
        .unwrap_or_default()
        + Duration::from_millis(200)
}

/// The log lines for load balancers whose pool differs from `chosen` (which is updated),
/// read from the plan: the pool, the one before, and why.
fn pool_changes(plan: &Plan, chosen: &mut BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (lb, pool) in plan.chosen() {
        let before = chosen.insert(lb.name.clone(), pool.to_owned());
        if before.as_deref() != Some(pool) {
            out.push(format!(
                "load balancer {} now uses pool {pool} (was {}): {}",
                lb.name,
                before.as_deref().unwrap_or("none"),
                lb.reason
            ));
        }
    }
    out
}

fn origin_addresses(cfg: &Config) -> Vec<std::net::IpAddr> {
    cfg.pools
        .iter()
        .flat_map(|p| p.origins.iter().map(|o| o.address))
        .collect()
}

impl Agent {
    /// The main loop's state at start, and a receiver of the view it publishes. Nothing
    /// reads this first view: the API and the sampler start after the first apply and
    /// status, which publish the real plan.
    fn new(
        opts: RunOptions,
        eff: Effective,
        dp: Dataplane,
        rec: Reconciler,
        monitors: Monitors,
        health: HealthTable,
    ) -> (Self, watch::Receiver<Arc<View>>) {
        let Effective {
            raw, store, cfg, ..
        } = eff;
        let (view, view_rx) = watch::channel(Arc::new(View {
            store: store.clone(),
            status: Status::default(),
            cfg: Arc::new(cfg.clone()),
            plan: Arc::default(),
            ids: Arc::default(),
            rtt: RttHistograms::default(),
            notifications: [0; 4],
        }));
        let agent = Self {
            opts,
            cfg,
            dp,
            rec,
            monitors,
            health,
            neighbours: Neighbours::default(),
            chosen: BTreeMap::new(),
            ids: Arc::default(),
            status_dirty: true,
            raw,
            store,
            rtt: RttHistograms::default(),
            view,
            notifier: Notifier::spawn(NotifyOptions::default()),
            pool_healthy: BTreeMap::new(),
        };
        (agent, view_rx)
    }

    /// Puts the first config in force: logs the first health, writes the maps, attaches
    /// XDP, resolves the origins' next hops and writes the first status.
    fn bring_up(&mut self) -> Result<(), AgentError> {
        for (t, h) in self.health.iter() {
            info!(
                "origin {}/{} ({}) {}: {}",
                t.pool,
                t.origin,
                std::net::SocketAddr::new(t.address, t.port),
                h.state,
                h.reason
            );
        }
        self.apply("start")?;
        self.sync_local_addrs();
        let dp_cfg = self.cfg.dataplane.clone();
        for o in self.dp.attach(
            &dp_cfg.interfaces,
            dp_cfg.xdp_mode,
            &mut self.rec.maps.tx_ports,
        )? {
            info!(interface = %o.interface, ifindex = o.ifindex, replaced_running_program = o.replaced, "XDP attached");
        }
        for w in self.neighbours.sync(origin_addresses(&self.cfg)) {
            warn!("{w}");
        }
        self.write_status();
        Ok(())
    }

    /// SIGHUP: `reload`, logging a rejection.
    fn on_hup(&mut self) {
        if let Err(e) = self.reload() {
            // One line, so that every error (and the field it names) stays together.
            let e = e.to_string().replace('\n', " ");
            error!("config reload rejected, the running config stays in force: {e}");
        }
    }

    /// Tells the data path the host's own addresses (no FIB lookup for traffic to them).
    /// On failure the data path keeps asking the FIB, which is slower, not wrong.
    fn sync_local_addrs(&mut self) {
        match netwatch::local_addrs() {
            Ok(a) => {
                if let Err(e) = self.rec.sync_local_addrs(&a) {
                    warn!("writing the host's addresses to LOCAL_ADDRS: {e}");
                }
            }
            Err(e) => warn!("listing the host's addresses: {e}"),
        }
    }

    fn on_report(&mut self, r: &Report) {
        if let Some(rtt) = r.outcome.rtt {
            self.rtt.observe(&r.target.pool, &r.target.origin, rtt);
        }
        let Some(t) = self.health.record(&r.target, &r.outcome) else {
            self.status_dirty = true;
            // dynamic_latency: a new RTT sample may reorder the pools without any health change.
            if self.latency_choice_changed() {
                if let Err(e) = self.apply("probe latency changed the fastest pool") {
                    error!("applying latency change failed: {e}");
                }
            }
            return;
        };
        let tg = &r.target;
        self.notify(Event {
            event: "origin_health".into(),
            timestamp: now(),
            pool: tg.pool.clone(),
            pool_id: self.store.pool_id(&tg.pool).unwrap_or_default().to_owned(),
            origin: Some(tg.origin.clone()),
            address: Some(std::net::SocketAddr::new(tg.address, tg.port).to_string()),
            healthy: t.to.healthy(),
            previous_healthy: Some(t.from.healthy()),
            reason: r.outcome.reason.clone(),
            pop: self.cfg.agent.pop.clone(),
            load_balancers: Vec::new(),
        });
        if t.to.healthy() {
            info!(
                "origin {}/{} ({}) up: {}",
                tg.pool,
                tg.origin,
                std::net::SocketAddr::new(tg.address, tg.port),
                r.outcome.reason
            );
        } else {
            warn!(
                "origin {}/{} ({}) {}: {}",
                tg.pool,
                tg.origin,
                std::net::SocketAddr::new(tg.address, tg.port),
                t.to,
                r.outcome.reason
            );
        }
        if let Err(e) = self.apply(&format!("origin {}/{} {}", tg.pool, tg.origin, t.to)) {
            error!("applying health change failed: {e}");
        }
        self.write_status();
    }

    /// Would a `dynamic_latency` load balancer now choose another pool than it uses?
    fn latency_choice_changed(&self) -> bool {
        self.cfg
            .load_balancers
            .iter()
            .filter(|l| l.enabled && l.steering_policy == SteeringPolicy::DynamicLatency)
            .any(|lb| {
                let now = steering::choose_pool(&self.cfg, &self.health, lb).map(|(p, _)| &p.name);
                now != self.chosen.get(&lb.name)
            })
    }

    /// Reconciles the maps with the config and current health; logs pool changes.
    fn apply(&mut self, why: &str) -> Result<(), ReconcileError> {
        let report = self.rec.apply(&self.cfg, &self.health)?;
        info!(
            cause = why,
            slots_written = report.slots_written,
            vips_written = report.vips_written,
            elapsed_us = report.elapsed.as_micros() as u64,
            "maps updated"
        );
        for line in pool_changes(self.rec.plan(), &mut self.chosen) {
            info!("{line}");
        }
        self.ids = Arc::new(self.rec.assignment.clone());
        self.status_dirty = true;
        Ok(())
    }

    /// SIGHUP: re-reads the file, merges its changed objects into the store, validates the
    /// result completely, saves it, then applies it.
    fn reload(&mut self) -> Result<(), AgentError> {
        let raw = RawConfig::load(&self.opts.config)?;
        let (store, next, changed) = merge_file(
            &self.store,
            &raw,
            &self.opts.config,
            self.opts.api_listen.as_deref(),
            None,
        )?;
        if next.api.listen != self.cfg.api.listen || next.api.state_file != self.cfg.api.state_file
        {
            warn!("api.listen and api.state_file take effect at the next start");
        }
        if changed {
            store.save(&self.cfg.api.state_file)?;
        }
        if let Err(e) = self.replace(next, "config reload", true) {
            if changed {
                if let Err(e) = self.store.save(&self.cfg.api.state_file) {
                    error!("restoring the state file: {e}");
                }
            }
            return Err(e);
        }
        self.raw = raw;
        self.store = store;
        info!("config reloaded");
        self.write_status();
        Ok(())
    }

    /// An API change: applied to a copy of the store, validated as a whole, saved, applied
    /// to the maps; answered only then. A rejected change leaves everything as it was.
    fn on_command(&mut self, c: Command) {
        let kind = c.op.kind();
        let what = match &c.op {
            Op::Create(..) => "created",
            Op::Replace(..) | Op::Patch(..) => "updated",
            Op::Delete(..) => "deleted",
        };
        let result = self.mutate(c.op);
        match &result {
            Ok(v) => info!(
                "API: {} {} {what}",
                kind.singular(),
                v.get("name")
                    .and_then(|n| n.as_str())
                    .or_else(|| v.get("id").and_then(|n| n.as_str()))
                    .unwrap_or("-")
            ),
            Err(r) => info!(
                "API: {} change rejected ({:?}): {r}",
                kind.singular(),
                r.reason,
            ),
        }
        let _ = c.reply.send(result);
    }

    fn mutate(&mut self, op: Op) -> Result<serde_json::Value, Refusal> {
        let kind = op.kind();
        let (store, done) = self.store.mutate(op, &now())?;
        let next = build(
            &store,
            &self.raw,
            &self.opts.config,
            self.opts.api_listen.as_deref(),
            Some(&self.cfg.geo),
        )
        .map_err(|e| match e {
            AgentError::Config(ConfigError::Invalid { errors, .. }) => {
                Refusal::invalid(kind, done.id.clone(), store.clone(), errors)
            }
            other => Refusal::message(Reason::Invalid, other.to_string().replace('\n', " ")),
        })?;
        store
            .save(&self.cfg.api.state_file)
            .map_err(|e| Refusal::message(Reason::Internal, format!("{e}; nothing changed")))?;
        let why = format!("API: {} {}", kind.singular(), done.id);
        if let Err(e) = self.replace(next, &why, false) {
            if let Err(e) = self.store.save(&self.cfg.api.state_file) {
                error!("restoring the state file: {e}");
            }
            return Err(Refusal::message(
                Reason::Internal,
                format!("{}; nothing changed", e.to_string().replace('\n', " ")),
            ));
        }
        self.store = store;
        self.write_status();
        Ok(api::done_result(&self.store, &done))
    }

    /// Puts `next` in force: probes, maps, links, neighbours. On failure the previous
    /// config is put back. `full` (SIGHUP) re-checks the host, re-attaches and re-resolves
    /// every neighbour; otherwise (API changes) only what the change touches, so that an
    /// API call is answered within milliseconds.
    fn replace(&mut self, next: Config, why: &str, full: bool) -> Result<(), AgentError> {
        let dp_changed = full || self.cfg.dataplane != next.dataplane;
        let hops_changed = dp_changed || origin_addresses(&self.cfg) != origin_addresses(&next);
        let (a, b) = (&self.cfg.dataplane, &next.dataplane);
        if a.pin_dir != b.pin_dir || a.flow_table_size != b.flow_table_size {
            return Err(DataplaneError::Host(
                "dataplane.pin_dir and dataplane.flow_table_size cannot change while running; restart the agent (after `lb-agent teardown` for a new flow table size)".into(),
            )
            .into());
        }
        // The first IPv6 VIP or origin needs IPv6 forwarding, wherever it came from.
        if dp_changed || (next.uses_ipv6() && !self.cfg.uses_ipv6()) {
            for w in dataplane::check_host(&next)? {
                warn!("{w}");
            }
        }
        self.health.retain(&self.monitors.sync(&next));
        self.health.set_rtt_smoothing(next.agent.rtt_smoothing);
        let previous = std::mem::replace(&mut self.cfg, next);
        if let Err(e) = self.apply(why) {
            // Put the old config back; the maps hold a mix that the next apply repairs.
            self.cfg = previous;
            self.health.retain(&self.monitors.sync(&self.cfg));
            self.health.set_rtt_smoothing(self.cfg.agent.rtt_smoothing);
            return Err(e.into());
        }
        if dp_changed {
            // The maps already hold the new config, so it is in force either way: a failed
            // attach is reported, not rolled back (the interfaces attached so far forward).
            let dp_cfg = self.cfg.dataplane.clone();
            if let Err(e) = self.dp.attach(
                &dp_cfg.interfaces,
                dp_cfg.xdp_mode,
                &mut self.rec.maps.tx_ports,
            ) {
                error!("config applied to the maps, but attaching XDP failed: {e}");
            }
        }
        if hops_changed {
            for w in self.neighbours.sync(origin_addresses(&self.cfg)) {
                warn!("{w}");
            }
        }
        let cfg = &self.cfg;
        self.rtt.retain(|pool, origin| {
            cfg.pool(pool)
                .is_some_and(|p| p.origins.iter().any(|o| o.name == origin))
        });
        Ok(())
    }

    /// Sends `e` to its pool's webhooks (never blocks; see `notify`).
    fn notify(&self, mut e: Event) {
        let Some(pool) = self.cfg.pool(&e.pool) else {
            return;
        };
        if pool.notification_webhooks.is_empty() {
            return;
        }
        e.load_balancers = self
            .cfg
            .load_balancers
            .iter()
            .filter(|l| l.all_pools().any(|p| *p == e.pool))
            .map(|l| l.name.clone())
            .collect();
        self.notifier.notify(&pool.notification_webhooks, e);
    }

    /// Notifies pools whose health changed since the last status.
    fn notify_pools(&mut self, s: &Status) {
        for p in &s.pools {
            let before = self.pool_healthy.insert(p.name.clone(), p.healthy);
            if let Some(before) = before.filter(|b| *b != p.healthy) {
                self.notify(Event {
                    event: "pool_health".into(),
                    timestamp: now(),
                    pool: p.name.clone(),
                    pool_id: self.store.pool_id(&p.name).unwrap_or_default().to_owned(),
                    origin: None,
                    address: None,
                    healthy: p.healthy,
                    previous_healthy: Some(before),
                    reason: format!(
                        "{} of {} enabled origins healthy, minimum {}",
                        p.healthy_origins, p.enabled_origins, p.minimum_origins
                    ),
                    pop: self.cfg.agent.pop.clone(),
                    load_balancers: Vec::new(),
                });
            }
        }
        self.pool_healthy
            .retain(|name, _| s.pools.iter().any(|p| &p.name == name));
    }

    fn write_status(&mut self) {
        let s = Status::collect(&self.cfg, self.rec.plan(), &self.health).with_ids(&self.store);
        self.notify_pools(&s);
        if let Err(e) = s.write(&self.cfg.agent.status_file) {
            warn!(path = %self.cfg.agent.status_file.display(), "cannot write status file: {e}");
        }
        self.view.send_replace(Arc::new(View {
            store: self.store.clone(),
            status: s,
            cfg: Arc::new(self.cfg.clone()),
            plan: self.rec.plan().clone(),
            ids: self.ids.clone(),
            rtt: self.rtt.clone(),
            notifications: {
                let c = self.notifier.counters();
                [c.sent, c.failed, c.dropped, c.retries]
            },
        }));
        self.status_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A config file and its state file in a fresh directory (removed on drop).
    struct Files {
        dir: PathBuf,
        config: PathBuf,
    }

    impl Files {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("lb-agent-merge-{}", store::new_id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let config = dir.join("lb.toml");
            Self { dir, config }
        }

        fn state_file(&self) -> PathBuf {
            self.dir.join("state.json")
        }

        /// Writes the config: host sections pointing at this directory's state file, then
        /// `objects`.
        fn write(&self, objects: &str) {
            let text = format!(
                "[dataplane]\ninterfaces = [\"eth0\"]\nsnat_address = \"10.0.0.1\"\n\n[api]\nstate_file = \"{}\"\n\n{objects}",
                self.state_file().display()
            );
            std::fs::write(&self.config, text).expect("write config");
        }

        /// Starts from `objects`, then applies `ops` as the API would and saves the state.
        fn seed(&self, objects: &str, ops: impl FnOnce(&Store) -> Store) -> Store {
            self.write(objects);
            let eff = load_effective(&self.config, None).expect("seed config valid");
            assert!(eff.refused.is_none());
            let s = ops(&eff.store);
            build(&s, &eff.raw, &self.config, None, None).expect("API changes valid");
            s.save(&self.state_file()).expect("save state");
            Store::load(&self.state_file())
                .expect("load state")
                .expect("saved")
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const WEB: &str = "[[pools]]\nname = \"web\"\norigins = [{ name = \"a\", address = \"10.0.2.2\", port = 8080 }]\n\n";
    const SPARE: &str = "[[pools]]\nname = \"spare\"\norigins = [{ name = \"c\", address = \"10.0.4.2\", port = 8080 }]\n\n";
    const WWW: &str = "[[load_balancers]]\nname = \"www\"\naddress = \"10.0.0.10\"\nport = 80\ndefault_pools = [\"web\"]\n\n";

    fn create(s: &Store, kind: store::Kind, body: serde_json::Value) -> Store {
        s.mutate(Op::Create(kind, body), "2026-11-25T20:00:00.000000Z")
            .expect("API change")
            .0
    }

    fn refused(eff: &Effective) -> String {
        match &eff.refused {
            Some(e @ AgentError::Conflict { .. }) => e.to_string(),
            other => panic!("expected a refused conflict, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_names_in_the_file_are_refused_before_merging() {
        let f = Files::new();
        let second = WEB.replace("10.0.2.2", "10.0.3.2");
        f.write(&format!("{WEB}{SPARE}{second}{WWW}"));
        let e = load_effective(&f.config, None).expect_err("two pools named web");
        let AgentError::Config(ConfigError::Invalid { errors, .. }) = &e else {
            panic!("expected validation errors, got {e:?}");
        };
        assert_eq!(
            errors,
            &["pools[2].name: \"web\" is already the name of pools[0]; names must be unique: rename or remove one of them"]
        );
        // The same check on reload, where the store already holds the file's objects.
        f.write(&format!("{WEB}{SPARE}{WWW}"));
        let eff = load_effective(&f.config, None).expect("valid");
        f.write(&format!("{WEB}{SPARE}{WWW}{WWW}"));
        let raw = RawConfig::load(&f.config).expect("parses");
        let e = merge_file(&eff.store, &raw, &f.config, None, None).expect_err("two www");
        assert!(
            e.to_string().contains(
                "load_balancers[1].name: \"www\" is already the name of load_balancers[0]"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_removed_file_pool_that_an_api_load_balancer_uses_is_refused_and_the_state_stays() {
        let f = Files::new();
        let seeded = f.seed(&format!("{WEB}{SPARE}{WWW}"), |s| {
            let spare = s.pool_id("spare").expect("spare").to_owned();
            create(
                s,
                store::Kind::LoadBalancer,
                json!({"name": "api-lb", "address": "10.0.0.11", "port": 80, "default_pools": [spare]}),
            )
        });
        let api_id = seeded
            .load_balancer_id("api-lb")
            .expect("api-lb")
            .to_owned();
        // Remove spare from the file, and change web (a change that must not apply either).
        f.write(&format!("{}{WWW}", WEB.replace("8080", "8081")));
        let eff = load_effective(&f.config, None).expect("runs with the stored objects");
        let msg = refused(&eff);
        assert!(
            msg.contains(&format!("pool \"spare\" is no longer defined in the file, but load balancer \"api-lb\" (id {api_id}, made through the API) uses it (default_pools[0], fallback_pool); put [[pools]] \"spare\" back in the file")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("`lbctl lbs patch {api_id}`")),
            "{msg}"
        );
        assert_eq!(msg.matches("spare").count(), 2, "one error: {msg}");
        assert!(!msg.contains("load_balancers[1]"), "no store index: {msg}");
        assert_eq!(eff.store, seeded, "the stored objects are in force");
        assert!(!eff.merged);
        let names: Vec<&str> = eff.cfg.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web", "spare"]);
        assert_eq!(eff.cfg.pools[0].origins[0].port, Some(8080), "old web");
    }

    #[test]
    fn a_file_pool_named_like_an_api_pool_is_refused_naming_both() {
        let f = Files::new();
        let seeded = f.seed(&format!("{WEB}{WWW}"), |s| {
            create(
                s,
                store::Kind::Pool,
                json!({"name": "spare", "origins": [{"name": "x", "address": "10.0.5.2"}]}),
            )
        });
        let api_id = seeded.pool_id("spare").expect("spare").to_owned();
        f.write(&format!("{WEB}{SPARE}{WWW}"));
        let eff = load_effective(&f.config, None).expect("runs with the stored objects");
        let msg = refused(&eff);
        assert!(
            msg.contains(&format!("pools[1] \"spare\" in the file: a pool named \"spare\" (id {api_id}) was made through the API")),
            "{msg}"
        );
        assert_eq!(
            msg.matches("is already the name").count(),
            0,
            "said once: {msg}"
        );
        assert_eq!(eff.store, seeded);
    }

    #[test]
    fn a_file_vip_that_an_api_load_balancer_has_names_the_api_object() {
        let f = Files::new();
        let seeded = f.seed(&format!("{WEB}{WWW}"), |s| {
            let web = s.pool_id("web").expect("web").to_owned();
            create(
                s,
                store::Kind::LoadBalancer,
                json!({"name": "api-lb", "address": "10.0.0.11", "port": 80, "default_pools": [web]}),
            )
        });
        let api_id = seeded
            .load_balancer_id("api-lb")
            .expect("api-lb")
            .to_owned();
        f.write(&format!("{WEB}{}", WWW.replace("10.0.0.10", "10.0.0.11")));
        let eff = load_effective(&f.config, None).expect("runs with the stored objects");
        let msg = refused(&eff);
        assert!(
            msg.contains("the VIP of load_balancers[0] \"www\""),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "load balancer \"api-lb\" (id {api_id}, made through the API)"
            )),
            "{msg}"
        );
    }

    #[test]
    fn a_mistake_in_the_file_alone_still_stops_the_start_with_file_indexes() {
        let f = Files::new();
        f.seed(&format!("{WEB}{WWW}"), |s| {
            create(
                s,
                store::Kind::Pool,
                json!({"name": "api-pool", "origins": [{"name": "x", "address": "10.0.5.2"}]}),
            )
        });
        // web is pools[0] in the file but pools[0] in the store too; add a pool after the
        // API's so that store and file indexes differ.
        let bad = SPARE.replace("port = 8080", "port = 8080, weight = 2");
        f.write(&format!("{WEB}{bad}{WWW}"));
        let e = load_effective(&f.config, None).expect_err("weight 2");
        let AgentError::Config(ConfigError::Invalid { errors, .. }) = &e else {
            panic!("expected validation errors, got {e:?}");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("pools[1].origins[0].weight: "),
            "the file's index, not the store's (2): {errors:?}"
        );
    }
}

/// The main loop's apply, log and status path against in-memory maps: no root, no kernel.
#[cfg(test)]
mod apply_tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        health::{Outcome, Target},
        reconcile::vip_key,
        writer::MemMaps,
    };

    const CFG: &str = r#"
[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"

[[monitors]]
name = "tcp"
type = "tcp"

[[pools]]
name = "a"
monitor = "tcp"
origins = [{ name = "a1", address = "10.1.0.1" }, { name = "a2", address = "10.1.0.2", weight = 0.0 }]

[[pools]]
name = "b"
monitor = "tcp"
origins = [{ name = "b1", address = "10.2.0.1" }]

[[load_balancers]]
name = "x"
address = "10.0.0.10"
port = 80
default_pools = ["a"]
fallback_pool = "b"

[[load_balancers]]
name = "off"
address = "10.0.0.11"
port = 80
protocol = "udp"
default_pools = ["b"]
enabled = false
"#;

    /// The main loop's state that `Agent::apply` and `write_status` use.
    struct Loop {
        cfg: Config,
        health: HealthTable,
        rec: Reconciler<MemMaps>,
        chosen: BTreeMap<String, String>,
    }

    impl Loop {
        fn new(text: &str) -> Self {
            let cfg = Config::parse(text, Path::new("t")).expect("valid config");
            let mut health = HealthTable::default();
            health.retain(
                &crate::health::targets(&cfg)
                    .into_keys()
                    .map(|t| (t, (1, 1)))
                    .collect(),
            );
            Self {
                cfg,
                health,
                rec: Reconciler::adopt(MemMaps::default()).expect("adopt"),
                chosen: BTreeMap::new(),
            }
        }

        fn set(&mut self, origin: &str, up: bool) {
            let t: Target = crate::health::targets(&self.cfg)
                .into_keys()
                .find(|t| t.origin == origin)
                .expect("monitored");
            self.health.record(
                &t,
                &Outcome {
                    ok: up,
                    reason: if up { "ok" } else { "refused" }.into(),
                    rtt: up.then_some(Duration::from_millis(2)),
                },
            );
        }

        /// What `Agent::apply` does and logs.
        fn apply(&mut self) -> Vec<String> {
            self.rec.apply(&self.cfg, &self.health).expect("apply");
            pool_changes(self.rec.plan(), &mut self.chosen)
        }

        fn status(&self) -> Status {
            Status::collect(&self.cfg, self.rec.plan(), &self.health)
        }

        fn vip_ring(&self) -> u32 {
            self.rec.maps.vips[&vip_key(std::net::Ipv4Addr::new(10, 0, 0, 10), 80)].ring_id
        }

        fn ring_of(&self, pool: &str) -> u32 {
            self.rec.assignment.rings[&crate::plan::RingKey {
                pool: pool.into(),
                port: 80,
            }]
        }
    }

    #[test]
    fn a_health_change_fails_over_logs_once_and_the_status_follows() {
        let mut l = Loop::new(CFG);
        l.set("a1", true);
        l.set("b1", true);
        assert_eq!(
            l.apply(),
            ["load balancer x now uses pool a (was none): first healthy pool by default_pools order"]
        );
        assert_eq!(l.vip_ring(), l.ring_of("a"));
        assert!(l.apply().is_empty(), "no change, no line");
        l.set("a1", false);
        assert_eq!(
            l.apply(),
            ["load balancer x now uses pool b (was a): every pool of the order is down (default_pools order): fallback pool, regardless of its health"]
        );
        assert_eq!(l.vip_ring(), l.ring_of("b"), "the maps moved with the log");
        let s = l.status();
        let x = &s.load_balancers[0];
        assert_eq!((x.active_pool.as_deref(), x.fallback), (Some("b"), true));
        let a = &s.pools[0];
        assert_eq!(
            (
                a.name.as_str(),
                a.healthy,
                a.healthy_origins,
                a.enabled_origins
            ),
            ("a", false, 0, 2)
        );
        let a1 = &s.origins[0];
        assert_eq!(
            (a1.origin.as_str(), a1.state.as_str(), a1.reason.as_str()),
            ("a1", "down", "refused")
        );
        assert!(!a1.takes_new_connections());
    }

    #[test]
    fn the_status_reads_the_plan_of_every_load_balancer_pool_and_origin() {
        let mut l = Loop::new(CFG);
        l.set("a1", true);
        l.apply();
        let s = l.status();
        let names: Vec<(&str, Option<&str>)> = s
            .load_balancers
            .iter()
            .map(|b| (b.name.as_str(), b.active_pool.as_deref()))
            .collect();
        assert_eq!(
            names,
            [("x", Some("a")), ("off", None)],
            "disabled: no pool"
        );
        assert_eq!(s.load_balancers[0].vip, "10.0.0.10:80");
        assert_eq!(
            (
                s.load_balancers[0].protocol.as_str(),
                s.load_balancers[1].protocol.as_str()
            ),
            ("tcp", "udp")
        );
        assert!(
            s.to_string().contains("udp 10.0.0.11:80"),
            "the text shows the protocol with the VIP:\n{s}"
        );
        assert_eq!(s.load_balancers[0].steering_policy, "off");
        assert_eq!(s.origins.len(), 3);
        let a2 = &s.origins[1];
        assert_eq!(
            (a2.state.as_str(), a2.weight, a2.port),
            ("unknown", 0.0, 80)
        );
        assert_eq!(
            s.pools[0].rtt_ms,
            Some(2.0),
            "a's healthy origins' mean RTT"
        );
        assert_eq!(s.pools[1].rtt_ms, None, "b1 not measured yet");
        // The RTT is read at status time: a new sample shows without an apply.
        l.set("b1", true);
        assert_eq!(l.status().pools[1].rtt_ms, Some(2.0));
    }

    #[test]
    fn a_drained_origin_keeps_its_id_but_no_slot() {
        let mut l = Loop::new(CFG);
        l.set("a1", true);
        l.set("a2", true);
        l.apply();
        let a2 = l
            .rec
            .assignment
            .origins
            .iter()
            .find(|(k, _)| k.name == "a2" && k.pool == "a")
            .map(|(_, id)| *id)
            .expect("a2 has an id");
        assert_eq!(l.rec.maps.origins[&a2].weight, 0, "weight 0: drained");
        assert!(!l.rec.maps.ring(l.ring_of("a")).contains(&a2));
        let s = l.status();
        assert!(
            s.origins[1].takes_new_connections(),
            "healthy, shown with weight 0"
        );
        assert_eq!(s.origins[1].weight, 0.0);
    }

    #[test]
    fn a_reload_applies_the_new_order_and_logs_it() {
        let mut l = Loop::new(CFG);
        l.set("a1", true);
        l.set("b1", true);
        l.apply();
        let next =
            Loop::new(&CFG.replace(r#"default_pools = ["a"]"#, r#"default_pools = ["b", "a"]"#));
        l.cfg = next.cfg;
        assert_eq!(
            l.apply(),
            ["load balancer x now uses pool b (was a): first healthy pool by default_pools order"]
        );
        assert_eq!(l.vip_ring(), l.ring_of("b"));
        assert_eq!(
            l.status().load_balancers[0].active_pool.as_deref(),
            Some("b")
        );
    }
}

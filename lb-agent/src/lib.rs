//! lb-agent: loads the XDP load balancer, turns the config into BPF map contents and keeps
//! them current. See ARCHITECTURE.md for the bird's-eye view.
//!
//! # Layout
//! - `config`: TOML -> validated `Config` (pure).
//! - `maglev`: weighted Maglev tables (pure).
//! - `health`: hysteresis and health table, the targets a config asks for (pure), probes and
//!   their tasks.
//! - `steering`: origin/pool health and pool choice (pure).
//! - `geo`: Cloudflare regions and country -> region table (pure), MaxMind DB loader.
//! - `plan`: config + health + host facts -> the `Plan`: every decision, made once (pure).
//! - `reconcile`: the plan -> map entries with stable ids, the one writer of maps.
//! - `writer`: `MapWriter`, the reconciler's reads and writes (aya maps, or in memory), and
//!   `WriteError`.
//! - `dataplane`: loading, pinning, attaching; typed map handles.
//! - `agent`: the lifecycle (`run` with injected shutdown: start, main loop, stop; SIGHUP
//!   reload).
//! - `status`: the one status model (file, API, `lbctl`, dashboard), built from the plan.
//! - `stats`: counters read back from the pinned maps.
//! - `store`: monitors, pools and load balancers with ids, the file merged in, persisted.
//! - `api`: the HTTP API (Cloudflare's v4 shapes), status view, metrics, dashboard.
//! - `metrics`: Prometheus text exposition of status, counters and probe RTTs (pure).
//! - `notify`: health-notification webhooks (bounded queue, one task per delivery, retries).
//! - `http_client`: the one outbound HTTP(S) client (hyper + rustls) of probes and webhooks.
pub mod agent;
pub mod api;
pub mod config;
pub mod dataplane;
pub mod geo;
pub mod health;
pub mod http_client;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod netwatch;
pub mod notify;
pub mod plan;
pub mod reconcile;
pub mod refusal;
pub mod stats;
pub mod status;
pub mod steering;
pub mod store;
pub mod writer;

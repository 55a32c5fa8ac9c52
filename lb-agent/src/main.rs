//! `lb-agent`: command-line entry point.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_agent::{
    agent::{self, RunOptions},
    config::Config,
    dataplane::{self, Maps},
    stats,
};

/// Kernel-accelerated TCP and UDP load balancer agent.
///
/// Without a subcommand it runs: loads the XDP program, pins its maps and links under
/// `dataplane.pin_dir`, writes the load balancers of the config, attaches to the
/// configured interfaces and serves until SIGINT/SIGTERM. SIGHUP reloads the config; a
/// config that fails validation is rejected and the running one stays in force.
///
/// It serves Cloudflare's v4 load-balancing API (monitors, pools, load balancers; changes
/// are live and kept in `api.state_file`), Prometheus metrics at /metrics and a dashboard
/// at / on 127.0.0.1:8405 (`--api-listen`). `lbctl` is the API's command-line client.
///
/// On exit the XDP program stays attached and keeps forwarding with the last state (a
/// restarted agent adopts it without dropping connections); `lb-agent teardown` or
/// `--detach-on-exit` removes it.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Path of the TOML config.
    #[arg(short, long, global = true, default_value = "/etc/lb-agent/lb.toml")]
    config: PathBuf,
    /// Path of the XDP object (default: lb-ebpf.o next to this binary, then the workspace
    /// build output of `cargo xtask build-ebpf`).
    #[arg(long)]
    bpf_object: Option<PathBuf>,
    /// On exit, detach XDP and remove every pinned map and link (drops established flows).
    #[arg(long)]
    detach_on_exit: bool,
    /// Where the HTTP API, /metrics and the dashboard listen (`address:port`, or `off`);
    /// overrides `[api] listen` (default 127.0.0.1:8405).
    #[arg(long, value_name = "ADDR:PORT")]
    api_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config, with the objects kept in `api.state_file` (made through the
    /// API), and print a summary; changes nothing.
    Check,
    /// Print the running agent's view: each load balancer's active pool, each pool's health,
    /// each origin's state, last result and RTT (read from `agent.status_file`).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print per-load-balancer and per-origin counters and data-path events, read from the
    /// pinned maps (names come from the config).
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach XDP from every interface and remove all pinned maps and links under the pin
    /// directory (`--pin-dir`, else the config's `dataplane.pin_dir`). Drops established flows.
    Teardown {
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                // The handlers are installed before anything starts: a SIGTERM that comes
                // while the agent loads and attaches is kept and stops it cleanly once it
                // is up, instead of killing it with the default action half-way.
                let shutdown = shutdown_signal()?;
                agent::run(
                    RunOptions {
                        config: cli.config,
                        bpf_object: cli.bpf_object,
                        detach_on_exit: cli.detach_on_exit,
                        api_listen: cli.api_listen,
                    },
                    shutdown,
                )
                .await
                .map_err(anyhow::Error::from)
            })?;
        }
        Some(Command::Check) => {
            let eff = agent::load_effective(&cli.config, cli.api_listen.as_deref())?;
            if let Some(e) = eff.refused {
                return Err(anyhow::Error::new(e).context(format!(
                    "a start with {} would refuse its changes to monitors, pools and load balancers and run with the objects of {}",
                    cli.config.display(),
                    eff.cfg.api.state_file.display()
                )));
            }
            let cfg = eff.cfg;
            // The same host checks as a start: interfaces exist, forwarding is on.
            for w in dataplane::check_host(&cfg)? {
                eprintln!("warning: {w}");
            }
            println!(
                "{} (with the objects of {}): valid; {} load balancer(s), {} pool(s), {} origin(s), interfaces {:?}",
                cli.config.display(),
                cfg.api.state_file.display(),
                cfg.load_balancers.len(),
                cfg.pools.len(),
                cfg.pools.iter().map(|p| p.origins.len()).sum::<usize>(),
                cfg.dataplane.interfaces
            );
            println!("{}", snat_summary(&cfg.dataplane));
        }
        Some(Command::Status { json }) => {
            let cfg = Config::load(&cli.config)?;
            let path = &cfg.agent.status_file;
            let status = lb_agent::status::Status::read(path).with_context(|| {
                format!(
                    "reading {} (is the agent running with this config?)",
                    path.display()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Some(Command::Stats { json }) => {
            let cfg = agent::load_effective(&cli.config, None)?.cfg;
            let maps = Maps::open_pinned(&cfg.dataplane.pin_dir)?;
            let s = stats::collect(&cfg, &maps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
        }
        Some(Command::Teardown { pin_dir }) => {
            let dir = match pin_dir {
                Some(d) => d,
                None => {
                    Config::load(&cli.config)
                        .context("teardown needs --pin-dir or a readable --config")?
                        .dataplane
                        .pin_dir
                }
            };
            let removed = dataplane::teardown(&dir)?;
            println!(
                "{}: removed {} pinned object(s): {}",
                dir.display(),
                removed.len(),
                removed.join(" ")
            );
        }
    }
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now (inside the runtime) and returns a future
/// that completes at the first of them, also one that arrived before it is polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

/// What `check` says about SNAT: the addresses and ports in use, and the connection rate
/// each origin sustains with them.
fn snat_summary(dp: &lb_agent::config::Dataplane) -> String {
    fn run<A: std::fmt::Display>(family: &str, count: u32, first: A, last: Option<A>) -> String {
        match (count, last) {
            (1, _) | (_, None) => format!("{family} SNAT address {first}"),
            (n, Some(last)) => format!("{n} {family} SNAT addresses {first}-{last}"),
        }
    }
    let mut families = Vec::new();
    if dp.snat_count > 0 {
        families.push(run(
            "IPv4",
            dp.snat_count,
            dp.snat_address,
            dp.snat_addresses().last(),
        ));
    }
    if let Some(s6) = dp.snat6 {
        families.push(run("IPv6", s6.count, s6.address, s6.addresses().last()));
    }
    let addrs = families.join(" and ");
    let how = if !dp.snat_ports_auto {
        "as set"
    } else if dp.snat_port_min == lb_agent::config::DEFAULT_SNAT_PORTS[0] {
        "the default full range: no SNAT address is the host's own"
    } else {
        "the default for a SNAT address the host also uses, above its ephemeral ports; a dedicated SNAT address gets [1024, 65535]"
    };
    format!(
        "{addrs}, ports [{}, {}] ({how}): each origin sustains about {:.0} new connections/s (ports x addresses / snat_port_reuse_after_close = {} s); bursts use every free port at once",
        dp.snat_port_min,
        dp.snat_port_max,
        dp.sustained_rate_per_origin(),
        dp.snat_port_reuse_after_close
    )
}

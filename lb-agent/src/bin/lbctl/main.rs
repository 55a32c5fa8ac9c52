//! `lbctl`: command-line client of the agent's HTTP API (`/client/v4` objects and the
//! `/lb-agent/v1/status` live view), for operators and scripts.
//!
//! # Layout
//! - `main.rs`: the command line (clap types, help texts), `run` and the exit status.
//! - `api`: the HTTP client: authentication, the v4 envelope, paths, paging, errors.
//! - `commands`: one `Ctx` method per subcommand; name lookup and the origin flip (pure).
//! - `render`: list tables, pool health, number formats; `render::status`: the `status`
//!   tree (pure).

mod api;
mod commands;
#[cfg(test)]
mod fixtures;
mod render;

use std::{io::Read as _, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::{
    api::{Auth, Client, CtlError, Kind, DEFAULT_API},
    commands::Ctx,
};

const TOP_EXAMPLES: &str = "\
Examples:
  lbctl --token $T status
  lbctl --token $T pools list
  lbctl --token $T --json lbs list | jq '.[].name'
  lbctl --token $T monitors create --data '{\"type\":\"tcp\",\"port\":2048,\"interval\":5,\"timeout\":2,\"retries\":1}'
  lbctl --token $T origin disable web-pool origin-a
  LB_API_EMAIL=ops@example.com LB_API_KEY=$K lbctl pools health web-pool

Exit status: 0 on success; 1 when the API answered with an error (each `errors[]` entry is
printed to stderr as `error <code>: <message>`) or the input was unusable; 2 when the API
could not be reached or on a command-line usage error.";

const MONITOR_EXAMPLES: &str = "\
Examples:
  lbctl --token $T monitors list
  lbctl --token $T monitors create --data '{\"type\":\"tcp\",\"port\":2048,\"interval\":5,\"timeout\":2,\"retries\":1}'
  lbctl --token $T monitors create --data '{\"type\":\"http\",\"method\":\"GET\",\"path\":\"/health\",\"expected_codes\":\"2xx\"}'
  lbctl --token $T monitors create --data '{\"type\":\"smtp\",\"port\":25}'   (also udp_icmp, icmp_ping)
  lbctl --token $T monitors patch 0123456789abcdef0123456789abcdef --data '{\"interval\":10}'
  lbctl --token $T monitors delete 0123456789abcdef0123456789abcdef";

const POOL_EXAMPLES: &str = "\
Examples:
  lbctl --token $T pools list
  lbctl --token $T pools create --file pool.json
  lbctl --token $T pools patch web-pool --data '{\"minimum_origins\":2}'
  lbctl --token $T pools get web-pool --json | jq .origins
  lbctl --token $T pools health web-pool
  cat pool.json | lbctl --token $T pools update web-pool --file -";

const LB_EXAMPLES: &str = "\
Examples:
  lbctl --token $T lbs list
  lbctl --token $T --zone example.com lbs create --data '{\"name\":\"www\",\"address\":\"10.0.0.10\",\"port\":80,\"default_pools\":[\"0123456789abcdef0123456789abcdef\"],\"fallback_pool\":\"0123456789abcdef0123456789abcdef\"}'
  lbctl --token $T lbs patch www --data '{\"session_affinity\":\"ip\",\"session_affinity_ttl\":300}'
  lbctl --token $T lbs create --protocol udp --data '{\"name\":\"dns\",\"address\":\"10.0.0.10\",\"port\":53,\"default_pools\":[\"dns-pool\"]}'
  lbctl --token $T lbs patch dns --protocol tcp";

const ORIGIN_EXAMPLES: &str = "\
Examples:
  lbctl --token $T origin disable web-pool origin-a      # by origin name
  lbctl --token $T origin disable web-pool 10.0.1.2      # by address
  lbctl --token $T origin enable 0123456789abcdef0123456789abcdef 10.0.1.2:8080";

/// Client of the lb-agent HTTP API.
///
/// Talks plain HTTP to the agent's API (`lb-agent --api-listen`, by default 127.0.0.1:8405,
/// loopback only). The API carries credentials and changes the forwarding state, so it is not
/// meant to be exposed as is: for remote use put it behind a TLS-terminating proxy and reach
/// that from lbctl through a local tunnel (e.g. `ssh -L 8405:127.0.0.1:8405 lb-host`), since
/// lbctl itself does not speak TLS.
///
/// Authenticate with `--token` (sent as `Authorization: Bearer`) or with `--email` and `--key`
/// (sent as `X-Auth-Email` / `X-Auth-Key`). Identifiers given as ID may also be an object's
/// name; a name that matches several objects is refused.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about, long_about, after_long_help = TOP_EXAMPLES)]
struct Cli {
    /// Base URL of the agent's API.
    #[arg(long, global = true, env = "LB_API", default_value = DEFAULT_API)]
    api: String,
    /// API token, sent as `Authorization: Bearer <token>`; takes precedence over --email/--key.
    #[arg(long, global = true, env = "LB_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Account email, sent as `X-Auth-Email` (with --key).
    #[arg(long, global = true, env = "LB_API_EMAIL")]
    email: Option<String>,
    /// API key, sent as `X-Auth-Key` (with --email).
    #[arg(long, global = true, env = "LB_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print the raw `result` JSON (for lists: all pages joined into one array) instead of
    /// tables and summaries.
    #[arg(long, global = true)]
    json: bool,
    /// Account identifier used in monitor and pool paths
    /// (/client/v4/accounts/{account}/load_balancers/...); the agent is single tenant.
    #[arg(long, global = true, default_value = "-")]
    account: String,
    /// Zone identifier used in load balancer paths (/client/v4/zones/{zone}/load_balancers).
    #[arg(long, global = true, default_value = "-")]
    zone: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live view: each load balancer, the pools it may use (default pools, geo pools, fallback)
    /// with the active one marked `*`, and each pool's origins with health, RTT, open flows and
    /// packet, byte and new-flow rates.
    ///
    /// Reads GET /lb-agent/v1/status, plus the load balancer and pool lists to know which
    /// pools belong to which load balancer. With --json prints only the status result.
    #[command(after_long_help = "Example:\n  lbctl --token $T status")]
    Status,
    /// Health monitors (/client/v4/accounts/{account}/load_balancers/monitors).
    #[command(after_long_help = MONITOR_EXAMPLES)]
    Monitors {
        #[command(subcommand)]
        cmd: CrudCmd,
    },
    /// Origin pools (/client/v4/accounts/{account}/load_balancers/pools).
    #[command(after_long_help = POOL_EXAMPLES)]
    Pools {
        #[command(subcommand)]
        cmd: PoolsCmd,
    },
    /// Load balancers (/client/v4/zones/{zone}/load_balancers).
    #[command(after_long_help = LB_EXAMPLES)]
    Lbs {
        #[command(subcommand)]
        cmd: CrudCmd,
    },
    /// Enable or disable one origin of a pool (GET the pool, flip the origin's `enabled`,
    /// PATCH the pool's full `origins` list) and print what changed.
    #[command(after_long_help = ORIGIN_EXAMPLES)]
    Origin {
        #[command(subcommand)]
        cmd: OriginCmd,
    },
}

#[derive(Debug, Subcommand)]
enum CrudCmd {
    /// List all objects as a table (every page is fetched).
    List,
    /// Print one object as JSON.
    Get {
        /// Object id (32 hex characters) or name.
        id: String,
    },
    /// Create an object from a JSON body (POST).
    Create {
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Replace a whole object with a JSON body (PUT).
    Update {
        /// Object id (32 hex characters) or name.
        id: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Replace only the top-level fields given in a JSON body (PATCH).
    Patch {
        /// Object id (32 hex characters) or name.
        id: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Delete an object.
    Delete {
        /// Object id (32 hex characters) or name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PoolsCmd {
    #[command(flatten)]
    Crud(CrudCmd),
    /// Health of a pool's origins as seen by the agent (GET /pools/{id}/health).
    Health {
        /// Pool id (32 hex characters) or name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum OriginCmd {
    /// Stop sending new flows to an origin (sets its `enabled` to false).
    Disable {
        /// Pool id or name.
        pool: String,
        /// Origin name, address, or address:port.
        origin: String,
    },
    /// Send flows to an origin again (sets its `enabled` to true).
    Enable {
        /// Pool id or name.
        pool: String,
        /// Origin name, address, or address:port.
        origin: String,
    },
}

/// The JSON body of create/update/patch.
#[derive(Debug, Args)]
#[group(multiple = false)]
struct BodySource {
    /// The JSON body inline, e.g. --data '{"type":"tcp","port":2048}'.
    #[arg(long, required_unless_present_any = ["file", "protocol"])]
    data: Option<String>,
    /// Read the JSON body from a file (`-` = standard input).
    #[arg(long)]
    file: Option<PathBuf>,
}

/// The JSON body of create/update/patch, and the fields flags may set in it.
#[derive(Debug, Args)]
struct BodyArgs {
    #[command(flatten)]
    source: BodySource,
    /// Load balancers only: the VIP's protocol, set in the body (`"protocol"`); with it the
    /// body may be left out (`lbctl lbs patch dns --protocol udp`).
    #[arg(long, value_parser = ["tcp", "udp"])]
    protocol: Option<String>,
}

impl BodyArgs {
    /// The body, with the flags' fields set; `lb`: the object is a load balancer.
    fn read_for(&self, lb: bool) -> Result<Value, CtlError> {
        let Some(p) = &self.protocol else {
            return self.source.read();
        };
        if !lb {
            return Err(CtlError::Input(
                "--protocol applies to load balancers (lbctl lbs ...) only".to_owned(),
            ));
        }
        let mut body = if self.source.data.is_none() && self.source.file.is_none() {
            Value::Object(serde_json::Map::new())
        } else {
            self.source.read()?
        };
        body["protocol"] = Value::String(p.clone());
        Ok(body)
    }
}

impl BodySource {
    fn read(&self) -> Result<Value, CtlError> {
        let (text, from) = match (&self.data, &self.file) {
            (Some(d), _) => (d.clone(), "--data".to_owned()),
            (None, Some(p)) if p.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(|e| {
                    CtlError::input("reading the JSON body from standard input", &e)
                })?;
                (s, "standard input".to_owned())
            }
            (None, Some(p)) => (
                std::fs::read_to_string(p).map_err(|e| {
                    CtlError::input(&format!("reading the JSON body from {}", p.display()), &e)
                })?,
                p.display().to_string(),
            ),
            (None, None) => {
                return Err(CtlError::Input(
                    "give the JSON body with --data '<json>' or --file PATH".to_owned(),
                ))
            }
        };
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| CtlError::input(&format!("the body from {from} is not valid JSON"), &e))?;
        if !v.is_object() {
            return Err(CtlError::Input(format!(
                "the body from {from} must be a JSON object"
            )));
        }
        Ok(v)
    }
}

impl Auth {
    fn from_cli(cli: &Cli) -> Result<Self, CtlError> {
        let nonempty = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        Ok(
            match (
                nonempty(&cli.token),
                nonempty(&cli.email),
                nonempty(&cli.key),
            ) {
                (Some(t), _, _) => Auth::Bearer(t),
                (None, Some(email), Some(key)) => Auth::Key { email, key },
                (None, Some(_), None) => {
                    return Err(CtlError::Input(
                        "--email needs --key (or LB_API_KEY)".to_owned(),
                    ))
                }
                (None, None, Some(_)) => {
                    return Err(CtlError::Input(
                        "--key needs --email (or LB_API_EMAIL)".to_owned(),
                    ))
                }
                (None, None, None) => Auth::None,
            },
        )
    }
}

fn run(cli: &Cli) -> Result<(), CtlError> {
    let ctx = Ctx {
        // An empty LB_API counts as unset.
        client: Client::new(
            if cli.api.is_empty() {
                DEFAULT_API
            } else {
                &cli.api
            },
            Auth::from_cli(cli)?,
        ),
        json: cli.json,
        account: cli.account.clone(),
        zone: cli.zone.clone(),
    };
    match &cli.command {
        Command::Status => ctx.status(),
        Command::Monitors { cmd } => ctx.crud(Kind::Monitor, cmd),
        Command::Pools {
            cmd: PoolsCmd::Crud(cmd),
        } => ctx.crud(Kind::Pool, cmd),
        Command::Pools {
            cmd: PoolsCmd::Health { id },
        } => ctx.pool_health(id),
        Command::Lbs { cmd } => ctx.crud(Kind::Lb, cmd),
        Command::Origin {
            cmd: OriginCmd::Disable { pool, origin },
        } => ctx.origin(pool, origin, false),
        Command::Origin {
            cmd: OriginCmd::Enable { pool, origin },
        } => ctx.origin(pool, origin, true),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CtlError::Api { lines }) => {
            for l in lines {
                eprintln!("{l}");
            }
            ExitCode::from(1)
        }
        Err(CtlError::Unreachable(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(CtlError::Input(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use serde_json::json;

    use super::*;

    /// The body `args` (a create, update or patch) would send, for a load balancer (`lb`)
    /// or another object.
    fn sent_body(args: &[&str], lb: bool) -> Result<Value, CtlError> {
        let cli = Cli::try_parse_from(args).expect("parses");
        let (Command::Monitors { cmd } | Command::Lbs { cmd }) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        match cmd {
            CrudCmd::Create { body }
            | CrudCmd::Update { body, .. }
            | CrudCmd::Patch { body, .. } => body.read_for(lb),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "lbctl",
            "--api",
            "http://h:1/",
            "--token",
            "t",
            "pools",
            "health",
            "web",
            "--json",
        ])
        .expect("pools health");
        assert!(cli.json);
        assert!(
            matches!(cli.command, Command::Pools { cmd: PoolsCmd::Health { ref id } } if id == "web")
        );
        assert_eq!(
            Auth::from_cli(&cli).expect("auth"),
            Auth::Bearer("t".into())
        );
        assert_eq!(cli.api, "http://h:1/");

        let cli =
            Cli::try_parse_from(["lbctl", "pools", "list", "--account", "acc"]).expect("crud");
        assert!(matches!(
            cli.command,
            Command::Pools {
                cmd: PoolsCmd::Crud(CrudCmd::List)
            }
        ));
        assert_eq!(cli.account, "acc");

        // create needs exactly one of --data / --file.
        assert!(Cli::try_parse_from(["lbctl", "monitors", "create"]).is_err());
        assert!(Cli::try_parse_from([
            "lbctl", "monitors", "create", "--data", "{}", "--file", "x.json"
        ])
        .is_err());
        assert_eq!(
            sent_body(
                &[
                    "lbctl",
                    "monitors",
                    "create",
                    "--data",
                    r#"{"type":"tcp","port":2048}"#
                ],
                false
            )
            .expect("body"),
            json!({"type": "tcp", "port": 2048})
        );
        let bad = BodySource {
            data: Some("[1]".into()),
            file: None,
        };
        assert!(bad.read().is_err(), "a body must be an object");

        // --protocol sets the load balancer's protocol, with or without a body.
        let create = [
            "lbctl",
            "lbs",
            "create",
            "--protocol",
            "udp",
            "--data",
            r#"{"name":"dns","port":53}"#,
        ];
        assert_eq!(
            sent_body(&create, true).expect("body"),
            json!({"name": "dns", "port": 53, "protocol": "udp"})
        );
        assert!(
            sent_body(&create, false).is_err(),
            "--protocol on a monitor or pool"
        );
        assert_eq!(
            sent_body(&["lbctl", "lbs", "patch", "dns", "--protocol", "tcp"], true)
                .expect("patch with --protocol alone"),
            json!({"protocol": "tcp"})
        );
        assert!(
            Cli::try_parse_from(["lbctl", "lbs", "patch", "dns", "--protocol", "sctp"]).is_err()
        );

        let cli =
            Cli::try_parse_from(["lbctl", "origin", "disable", "web-a", "a1"]).expect("origin");
        assert!(matches!(
            cli.command,
            Command::Origin {
                cmd: OriginCmd::Disable { .. }
            }
        ));
    }

    #[test]
    fn auth_needs_email_and_key_together() {
        let parse = |args: &[&str]| {
            let mut v = vec!["lbctl"];
            v.extend_from_slice(args);
            v.push("status");
            let mut cli = Cli::try_parse_from(v).expect("parse");
            // Only what the test passed, whatever LB_API_* the environment has.
            if !args.contains(&"--token") {
                cli.token = None;
            }
            if !args.contains(&"--email") {
                cli.email = None;
            }
            if !args.contains(&"--key") {
                cli.key = None;
            }
            Auth::from_cli(&cli)
        };
        assert_eq!(
            parse(&["--email", "e@x", "--key", "k"]).expect("key auth"),
            Auth::Key {
                email: "e@x".into(),
                key: "k".into()
            }
        );
        assert!(parse(&["--email", "e@x"]).is_err());
        assert!(parse(&["--key", "k"]).is_err());
        assert_eq!(parse(&[]).expect("none"), Auth::None);
        assert_eq!(
            parse(&["--token", "t", "--email", "e@x", "--key", "k"]).expect("token wins"),
            Auth::Bearer("t".into())
        );
    }
}

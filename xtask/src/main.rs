//! `cargo xtask`: the project's commands. Each installs what it needs first, so the README's
//! two commands (`cargo xtask demo`, `cargo xtask test`) work on a fresh machine.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo the load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install prerequisites: Debian packages (iproute2, bpftool, ethtool, ping, chromium),
    /// the nightly rust-src component and bpf-linker 0.10.0; mount bpffs if needed. Idempotent.
    Setup,
    /// Build the XDP object (nightly, build-std, bpf-linker) into
    /// lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf.
    BuildEbpf,
    /// Run every test: formatting, clippy, unit tests, packet fixtures and end-to-end tests
    /// in network namespaces (needs root).
    Test,
    /// Run the benchmarks (per-packet cost, packet rate, end to end against direct and
    /// HAProxy, control plane, failover) and write target/bench/report.{md,json} and charts.
    Bench {
        /// Shorter runs (for a quick look; figures are noisier).
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz the data path: the real XDP program through BPF_PROG_TEST_RUN with mutated
    /// frames, every frame checked against the data path's invariants (needs root).
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// PRNG seed; the same seed generates the same frames.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Build everything, create a demo topology in namespaces, run the agent, drive client
    /// traffic through the VIP, print the per-origin split from the BPF counters, fail over,
    /// drain an origin through the HTTP API with lbctl, clean up.
    Demo {
        /// Connections the demo client opens.
        #[arg(long, default_value_t = 3000)]
        connections: usize,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command, streaming its output; fails with the command line on error.
fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !st.success() {
        bail!("{line} failed ({st})");
    }
    Ok(())
}

/// Is the Debian package installed? (`dpkg -s` also succeeds for a removed package whose
/// configuration files remain, so the status itself is checked.)
fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
}

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A cargo command free of the outer cargo's environment (which pins its own toolchain).
fn cargo(toolchain: Option<&str>) -> Command {
    let mut c = Command::new("cargo");
    if let Some(t) = toolchain {
        c.arg(format!("+{t}"));
    }
    for v in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        c.env_remove(v);
    }
    c
}

const BENCH_PACKAGES: [&str; 3] = ["wrk", "iperf3", "haproxy"];

const DEB_PACKAGES: [(&str, &str); 8] = [
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    // The SYN-flood test's attacker.
    ("hping3", "hping3"),
    // Headless, to render the agent's dashboard in the end-to-end tests.
    ("chromium", "chromium"),
];

fn setup() -> Result<()> {
    setup_with(&[])
}

fn setup_with(extra: &[&str]) -> Result<()> {
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .map(|(_, pkg)| *pkg)
        .chain(extra.iter().copied())
        .filter(|pkg| !installed(pkg))
        .collect();
    if !missing.is_empty() {
        println!("xtask: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !ok(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    ) || !String::from_utf8_lossy(
        &Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", "nightly"])
            .output()?
            .stdout,
    )
    .contains("rust-src")
    {
        println!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("0.10.0"));
    if !linker_ok {
        println!("xtask: installing bpf-linker 0.10.0 (about two minutes)");
        run(cargo(None).args(["install", "bpf-linker", "--version", "0.10.0", "--locked"]))?;
    }
    let bpffs = String::from_utf8_lossy(
        &Command::new("stat")
            .args(["-f", "-c", "%T", "/sys/fs/bpf"])
            .output()?
            .stdout,
    )
    .trim()
    .to_owned();
    if bpffs != "bpf_fs" {
        println!("xtask: mounting bpffs on /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

fn build_ebpf() -> Result<PathBuf> {
    let dir = root().join("lb-ebpf");
    run(cargo(Some("nightly"))
        .current_dir(&dir)
        .args(["build", "--release"]))
    .context(
        "building the XDP object (run `cargo xtask setup` if rust-src or bpf-linker is missing)",
    )?;
    let obj = dir.join("target/bpfel-unknown-none/release/lb-ebpf");
    println!("xtask: XDP object at {}", obj.display());
    Ok(obj)
}

/// Every source file of the eBPF crate (all of them, so a new module is never left out of
/// the format check).
fn ebpf_sources(r: &Path) -> Result<Vec<PathBuf>> {
    let dir = r.join("lb-ebpf/src");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "rs") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Passes the binaries under test to the integration tests (see `lb_testbed::built`).
fn with_built<'c>(cmd: &'c mut Command, bin_dir: &Path, obj: &Path) -> &'c mut Command {
    cmd.env("LB_AGENT_BIN", bin_dir.join("lb-agent"))
        .env("LB_LBCTL_BIN", bin_dir.join("lbctl"))
        .env("LB_EBPF_OBJ", obj)
}

fn test() -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    let r = root();
    run(cargo(None)
        .current_dir(&r)
        .args(["fmt", "--all", "--check"]))?;
    // The eBPF crate is outside the workspace; stable rustfmt checks its sources directly.
    run(Command::new("rustfmt")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["--edition", "2021", "--check"])
        .args(ebpf_sources(&r)?))?;
    run(cargo(None).current_dir(&r).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The integration tests get the binaries under test from here, not by guessing paths.
    run(cargo(None)
        .current_dir(&r)
        .args(["build", "-p", "lb-agent", "--bins"]))?;
    // Kernel-touching tests serialise themselves (lb_testbed::serial) and clean up on drop.
    run(with_built(
        cargo(None)
            .current_dir(&r)
            .args(["test", "--workspace", "--", "--nocapture"]),
        &r.join("target/debug"),
        &obj,
    ))?;
    println!("xtask: all tests passed");
    Ok(())
}

fn demo(connections: usize) -> Result<()> {
    use lb_testbed::{fnv64, pattern, request, vip, Agent, TempFile, Topology, FNV_INIT};
    setup()?;
    let obj = build_ebpf()?;
    let r = root();
    run(cargo(None)
        .current_dir(&r)
        .args(["build", "--release", "-p", "lb-agent"]))?;
    let agent_bin = r.join("target/release/lb-agent");
    lb_testbed::require_prerequisites();

    println!(
        "\n== topology: client ns -> LB ns (XDP on every veth) -> 3 origin ns, servers on :8080"
    );
    let topo = Topology::build(3);
    let mut servers: Vec<Option<lb_testbed::Server>> =
        topo.start_servers().into_iter().map(Some).collect();
    let pool = "[[pools]]\nname = \"web\"\n";
    let config = topo.config(&[1.0 / 3.0, 2.0 / 3.0, 1.0], "").replacen(
        pool,
        &format!("[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\ninterval = 1\nretries = 1\ntimeout = 0.5\n\n{pool}monitor = \"tcp\"\n"),
        1,
    );
    assert!(
        config.contains("monitor = \"tcp\""),
        "demo config has its monitor"
    );
    let cfg = TempFile::new("demo-lb.toml", &config);
    println!("== config ({}):\n{config}", cfg.path.display());
    let obj_arg = obj.to_string_lossy().into_owned();
    let agent = Agent::start(&agent_bin, &topo.lb, &cfg.path, &["--bpf-object", &obj_arg]);
    println!(
        "== agent running in namespace {} (pid {})",
        topo.lb.name,
        agent.pid()
    );
    if let Some(line) = agent
        .log_text()
        .lines()
        .find(|l| l.contains("verified_insns"))
    {
        println!("   agent: {}", line.trim());
    }

    println!("== client: {connections} short connections to {}", vip());
    let start = Instant::now();
    let (answers, failures) = topo.client.run(|| {
        let mut answers = std::collections::BTreeMap::<String, usize>::new();
        let mut failures = 0usize;
        for _ in 0..connections {
            match request(None, vip(), "NAME") {
                Ok(name) => *answers.entry(name.trim().to_owned()).or_default() += 1,
                Err(_) => failures += 1,
            }
        }
        (answers, failures)
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "   answered by: {answers:?}, failed: {failures}, {:.0} connections/s",
        connections as f64 / secs
    );
    print!("== client: 10 MB download through the VIP ... ");
    std::io::stdout().flush()?;
    let same = topo.client.run(|| {
        lb_testbed::download(vip(), 10_000_000)
            .map(|(_, body)| fnv64(&body, FNV_INIT) == fnv64(&pattern(10_000_000), FNV_INIT))
    });
    println!(
        "{}",
        if matches!(same, Ok(true)) {
            "byte-identical"
        } else {
            "MISMATCH"
        }
    );

    println!("\n== per-origin split, read from the BPF counters (`lb-agent stats`):");
    run(Command::new(&agent_bin)
        .args(["--config"])
        .arg(&cfg.path)
        .arg("stats"))?;
    println!(
        "\n== typed map entries (`bpftool map dump pinned {}/VIPS`):",
        topo.pin_dir.display()
    );
    run(Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(topo.pin_dir.join("VIPS")))?;
    println!("\n== health (`lb-agent status`):");
    run(Command::new(&agent_bin)
        .arg("--config")
        .arg(&cfg.path)
        .arg("status"))?;

    println!("\n== failover: stopping o3's server (monitor: tcp, interval 1 s, retries 1, timeout 0.5 s)");
    servers[2] = None;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(5);
    let drained = loop {
        let text = std::fs::read_to_string(&topo.status_file).unwrap_or_default();
        if text.contains("\"origin\": \"o3\"")
            && text
                .split("\"origin\": \"o3\"")
                .nth(1)
                .is_some_and(|t| t.contains("\"state\": \"down\""))
        {
            break Some(t0.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    match drained {
        Some(d) => println!("   o3 marked down and drained after {} ms", d.as_millis()),
        None => println!("   o3 was not marked down within 5 s"),
    }
    let after = topo.client.run(|| {
        let mut answers = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..300 {
            let k = request(None, vip(), "NAME")
                .map_or_else(|_| "failed".to_owned(), |r| r.trim().to_owned());
            *answers.entry(k).or_default() += 1;
        }
        answers
    });
    println!("   next 300 connections answered by: {after:?}");
    run(Command::new(&agent_bin)
        .arg("--config")
        .arg(&cfg.path)
        .arg("status"))?;

    // The API, as an operator would use it on the LB host (its loopback is in the LB
    // namespace here).
    let lbctl = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net={}", topo.lb.path().display()))
            .arg("--")
            .arg(r.join("target/release/lbctl"))
            .args(["--token", lb_testbed::API_TOKEN])
            .args(args)
            .env_remove("LB_API")
            .status()
            .map(|s| s.success())
    };
    println!(
        "\n== the HTTP API: draining o1 with `lbctl origin disable web o1` (a PATCH of the pool)"
    );
    let drained_by_api = lbctl(&["origin", "disable", "web", "o1"])?;
    let after_api = topo.client.run(|| {
        let mut answers = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..300 {
            let k = request(None, vip(), "NAME")
                .map_or_else(|_| "failed".to_owned(), |r| r.trim().to_owned());
            *answers.entry(k).or_default() += 1;
        }
        answers
    });
    println!("   next 300 connections answered by: {after_api:?}");
    println!("\n== `lbctl status` (GET /lb-agent/v1/status):");
    let status_ok = lbctl(&["status"])?;
    drop(agent);
    println!("\n== cleaning up: agent stopped, namespaces and pins removed");
    drop(topo);
    std::thread::sleep(Duration::from_millis(100));
    if failures > 0
        || !matches!(same, Ok(true))
        || drained.is_none()
        || after.contains_key("o3")
        || after.contains_key("failed")
        || !drained_by_api
        || !status_ok
        || after_api.keys().any(|k| k != "o2")
    {
        bail!("demo traffic had failures");
    }
    Ok(())
}

fn fuzz(frames: u64, seed: u64) -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    let r = root();
    run(cargo(None)
        .current_dir(&r)
        .args(["build", "--release", "-p", "lb-fuzz"]))?;
    run(Command::new(r.join("target/release/lb-fuzz"))
        .args(["--frames", &frames.to_string(), "--seed", &seed.to_string()])
        .arg("--object")
        .arg(&obj))
}

fn bench(quick: bool) -> Result<()> {
    let started = Instant::now();
    setup_with(&BENCH_PACKAGES)?;
    let obj = build_ebpf()?;
    let r = root();
    run(cargo(None).current_dir(&r).args([
        "build",
        "--release",
        "-p",
        "lb-agent",
        "-p",
        "lb-bench",
    ]))?;
    let out = r.join("target/bench");
    std::fs::create_dir_all(&out)?;
    println!("xtask: Maglev build times (criterion)");
    let mut crit = cargo(None);
    crit.current_dir(&r)
        .args(["bench", "-p", "lb-agent", "--bench", "maglev", "--"]);
    if quick {
        crit.args(["--warm-up-time", "0.5", "--measurement-time", "1"]);
    }
    run(&mut crit)?;
    println!("xtask: detection-to-drain (the health tests' 20-kill measurements)");
    let failover = with_built(
        Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(&r)
            .args([
                "test",
                "--release",
                "-p",
                "lb-tests",
                "--test",
                "integration",
                "health::killed_origin",
                "--",
                "--nocapture",
            ]),
        &r.join("target/release"),
        &obj,
    )
    .output()?;
    let text = String::from_utf8_lossy(&failover.stdout).into_owned();
    anyhow::ensure!(
        failover.status.success(),
        "failover measurement failed:\n{text}\n{}",
        String::from_utf8_lossy(&failover.stderr)
    );
    std::fs::write(out.join("failover.txt"), &text)?;
    let mut b = Command::new(r.join("target/release/lb-bench"));
    b.arg("--out")
        .arg(&out)
        .arg("--object")
        .arg(&obj)
        .arg("--agent")
        .arg(r.join("target/release/lb-agent"));
    b.arg("--criterion")
        .arg(r.join("target/criterion"))
        .arg("--failover")
        .arg(out.join("failover.txt"));
    if quick {
        b.arg("--quick");
    }
    run(&mut b)?;
    println!(
        "xtask: bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => build_ebpf().map(|_| ()),
        Cmd::Test => test(),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Fuzz { frames, seed } => fuzz(frames, seed),
        Cmd::Demo { connections } => demo(connections),
    }
}

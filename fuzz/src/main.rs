//! `lb-fuzz`: runs the data-path fuzzer (see the library) and prints its report; exits
//! non-zero on any violation. `cargo xtask fuzz` builds the XDP object and runs this.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Fuzz the XDP data path through BPF_PROG_TEST_RUN (needs root)")]
struct Cli {
    /// Frames to run (the set-up handshakes included).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// PRNG seed; the same seed generates the same frames.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Frames between checks of the flow tables.
    #[arg(long, default_value_t = 1000)]
    check_every: u64,
    /// Print the description and outcome of each of the first N frames.
    #[arg(long, default_value_t = 0)]
    trace: u64,
    /// The XDP object (default: the workspace build output).
    #[arg(long)]
    object: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let report = lb_fuzz::run(&lb_fuzz::Options {
        frames: cli.frames,
        seed: cli.seed,
        check_every: cli.check_every.max(1),
        object: cli.object,
        progress: true,
        trace: cli.trace,
    });
    println!("{report}");
    if !report.violations.is_empty() {
        eprintln!(
            "fuzz: {} invariant violations (the first ones are printed above with their frames)",
            report.violations.len()
        );
        std::process::exit(1);
    }
}

//! The binaries under test. `cargo xtask test` builds them and passes their paths in
//! `LB_AGENT_BIN`, `LB_LBCTL_BIN` and `LB_EBPF_OBJ`. A test run by name with plain cargo
//! falls back to the workspace's default build outputs, and fails with what to build when
//! one is missing or older than its sources (a stale agent would test old code).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::SystemTime,
};

/// The workspace root (this crate is `tests/bed`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where cargo put this test binary's package binaries: a test binary is
/// target/<profile>/deps/<name>-<hash>, binaries are in target/<profile>.
fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workspace_root().join("target/debug"))
}

const BUILD_AGENT: &str = "cargo build -p lb-agent --bins";

fn agent_sources() -> [PathBuf; 2] {
    let root = workspace_root();
    [root.join("lb-agent/src"), root.join("lb-common/src")]
}

/// The `lb-agent` binary under test (`LB_AGENT_BIN`).
pub fn agent_bin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        resolve(
            "LB_AGENT_BIN",
            profile_dir().join("lb-agent"),
            &agent_sources(),
            BUILD_AGENT,
        )
    })
}

/// The `lbctl` binary under test (`LB_LBCTL_BIN`).
pub fn lbctl_bin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        resolve(
            "LB_LBCTL_BIN",
            profile_dir().join("lbctl"),
            &agent_sources(),
            BUILD_AGENT,
        )
    })
}

/// The XDP object under test (`LB_EBPF_OBJ`); the test-only programs, `lb-test-progs`,
/// sit beside it.
pub fn ebpf_object() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let root = workspace_root();
        resolve(
            "LB_EBPF_OBJ",
            root.join("lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf"),
            &[root.join("lb-ebpf/src"), root.join("lb-common/src")],
            "cargo xtask build-ebpf",
        )
    })
}

/// `$var` if set (taken as given: xtask built it just now), else `default`, which must
/// exist and be newer than every file under `sources`.
fn resolve(var: &str, default: PathBuf, sources: &[PathBuf], build: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} is not a file", p.display());
        return p;
    }
    let built_at = std::fs::metadata(&default)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `{build}` (or `cargo xtask test`, which builds everything \
                 and passes {var}), or set {var}",
                default.display()
            )
        });
    if let Some((newest, path)) = sources.iter().filter_map(|d| newest_file(d)).max() {
        assert!(
            newest <= built_at,
            "{} is older than {}: run `{build}` (or set {var})",
            default.display(),
            path.display()
        );
    }
    default
}

/// The most recently modified file under `dir` (bounded by the tree's size).
fn newest_file(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                todo.push(path);
            } else if let Ok(t) = meta.modified() {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, path));
                }
            }
        }
    }
    newest
}

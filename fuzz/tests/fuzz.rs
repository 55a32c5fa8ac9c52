//! The short fuzz run of the normal test suite: 50,000 frames through the real program
//! (`cargo xtask fuzz` runs a million).

#[test]
fn fuzz_50k_frames() {
    let _serial = lb_testbed::serial();
    let report = lb_fuzz::run(&lb_fuzz::Options {
        frames: 50_000,
        seed: 0x5eed,
        ..lb_fuzz::Options::default()
    });
    println!("{report}");
    assert!(
        report.violations.is_empty(),
        "{} invariant violations; the first:\n{}",
        report.violations.len(),
        report.violations[0]
    );
}

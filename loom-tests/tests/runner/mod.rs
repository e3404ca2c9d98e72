//! What the model files share: the model runner (a preemption bound and a count of the
//! interleavings explored) and the check that every mutant fails its model.

/// The preemption bound when `LOOM_MAX_PREEMPTIONS` is not set: the whole suite explores
/// about 1.2 million interleavings in about a minute on the project's 2-core machine.
pub const DEFAULT_BOUND: usize = 3;

/// Runs `f` under loom with `LOOM_MAX_PREEMPTIONS` if set, else [`DEFAULT_BOUND`], and says how
/// many interleavings it explored.
pub fn model<F: Fn() + Sync + Send + 'static>(name: &str, f: F) {
    use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&runs);
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_BOUND);
    }
    let bound = builder.preemption_bound;
    let t0 = std::time::Instant::now();
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    println!(
        "model {name}: {} interleavings, preemption bound {bound:?}, {:?}",
        runs.load(StdOrdering::Relaxed),
        t0.elapsed()
    );
}

/// Runs each `(test, expected)` of this test binary in a child process (loom reports some
/// failures by aborting) and checks that it fails, with one of the `|`-separated `expected`
/// texts in its output.
pub fn mutants_fail(cases: &[(&str, &str)]) {
    for &(name, expected) in cases {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--ignored", "--test-threads", "1"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "{name}: the bug went unnoticed\n{text}"
        );
        assert!(
            expected.split('|').any(|e| text.contains(e)),
            "{name}: failed, but not as expected ({expected}):\n{text}"
        );
        println!("{name}: caught ({})", out.status);
    }
}

//! Crash points inside storage jobs, for tests that kill the process between the steps of a
//! flush. The names to trip are read from the `KALAMDB_FAILPOINTS` environment variable
//! (comma-separated) once per process.
//!
//! They are compiled into every build, not behind a cargo feature: a feature that only tests
//! enable gives the test build and the shipped binary different code, so the image users get
//! would be a second compile of the workspace and not the binary the suite tested (issue 16).
//! Unarmed, a crash point is one load of an initialized `OnceLock` and an empty-slice scan,
//! and it runs a handful of times per flush, never per row.

use std::sync::OnceLock;

/// The environment variable that arms crash points, comma-separated.
pub const FAILPOINTS_ENV: &str = "KALAMDB_FAILPOINTS";

/// The crash points armed in this process (empty in normal operation); the server logs them
/// at startup so an armed production process is never a surprise.
pub fn armed_points() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_ENV)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    })
}

/// Abort the process (as a crash would: no unwinding, no destructors) if `name` is armed.
pub fn hit(name: &str) {
    if armed_points().iter().any(|a| a == name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}

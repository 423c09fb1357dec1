//! Crash points inside storage jobs, for tests that kill the process between the steps of a
//! flush. Compiled in only with the `failpoints` feature; the names to trip are read from the
//! `KALAMDB_FAILPOINTS` environment variable (comma-separated) once per process.

/// Abort the process (as a crash would: no unwinding, no destructors) if `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("KALAMDB_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|a| a == name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}

/// Without the `failpoints` feature every crash point compiles to nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

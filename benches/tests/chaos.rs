//! A pinned chaos run: seed 7, 25 s, 8 clients, against three real server processes. The
//! schedule of this seed kills, partitions and pauses nodes; the run must pass every check
//! (linearizability, lost appends, tail, digests). The long run is `scripts/chaos.sh`.

use std::process::Command;

/// The server binary is built by `kalamdb-node`'s integration tests in the same
/// `cargo test --workspace` (or nextest) build, next to this package's binaries.
fn server_bin() -> std::path::PathBuf {
    let chaos = std::path::Path::new(env!("CARGO_BIN_EXE_kalamdb-chaos"));
    let server = chaos.with_file_name("kalamdb-server");
    assert!(server.exists(), "{} is missing: build the workspace (`cargo test --workspace`)", server.display());
    server
}

#[test]
fn seed_7_passes_every_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kalamdb-chaos"))
        .args(["--seed", "7", "--seconds", "25", "--concurrency", "8", "--check-seconds", "60"])
        .arg("--dir")
        .arg(dir.path().join("chaos"))
        .arg("--server-bin")
        .arg(server_bin())
        .output()
        .expect("run kalamdb-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chaos run failed:\n{stdout}\n{stderr}");
    // The schedule of seed 7 has faults of more than one kind, and each was checked.
    assert!(stdout.contains("check nemesis: ok"), "{stdout}");
    for check in
        ["digests", "acknowledged appends", "tail subscriber 1", "linearizable registers", "linearizable lists"]
    {
        assert!(stdout.contains(&format!("check {check}: ok")), "{check} missing:\n{stdout}");
    }
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

//! Ports for test servers, reserved across the suite's processes.
//!
//! A port found free by binding port 0 came from the kernel's ephemeral range, which every
//! outgoing connection of every other test draws from too, and another test process could be
//! handed the same one before our server bound it: the server then failed with "Address
//! already in use" while the healthcheck reached the other process, and a cluster test waited
//! for a quorum that could not form. So ports come from below the ephemeral range, and each
//! one is reserved by creating a file with `create_new` (atomic across processes) that keeps
//! it from every other test process for [`RESERVATION_SECS`].

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

/// Test ports are drawn from `PORT_LOW..PORT_HIGH`: below Linux's default ephemeral range
/// (32768-60999), above the well-known and registered ports servers usually take.
const PORT_LOW: u16 = 20_000;
const PORT_HIGH: u16 = 32_000;
/// How long a reservation keeps a port from other test processes; older reservation files
/// (earlier runs) are taken over.
const RESERVATION_SECS: u64 = 900;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn reservations() -> PathBuf {
    let dir = std::env::temp_dir().join("kalamdb-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port reservation folder");
    dir
}

/// Whether this process now holds the reservation of `port`.
fn reserve(port: u16) -> bool {
    let path = reservations().join(port.to_string());
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            // A stale reservation goes to whoever removes it first (only one remove can
            // succeed), if that process then also wins the `create_new`.
            if age.is_some_and(|a| a > Duration::from_secs(RESERVATION_SECS)) && std::fs::remove_file(&path).is_ok() {
                return reserve(port);
            }
            false
        }
        Err(e) => panic!("cannot reserve test port {port}: {e}"),
    }
}

/// A port nobody listens on (checked with `free`), reserved for this process.
pub fn pick(free: impl Fn(u16) -> bool) -> u16 {
    let span = u32::from(PORT_HIGH - PORT_LOW);
    // Processes start at different offsets, so they rarely even look at the same ports.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_LOW + ((start + n) % span) as u16;
        if free(port) && reserve(port) {
            return port;
        }
    }
    panic!("no free test port in {PORT_LOW}..{PORT_HIGH}");
}

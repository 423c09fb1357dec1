//! Password hashing (argon2id, PHC strings). Hashes are computed where a statement is
//! planned, before its op enters the log, so the log and every replica only ever hold hashes.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::{Error, Result};

/// Shortest accepted password.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// Longest accepted password (argon2 accepts more; nothing needs more).
pub const PASSWORD_BYTES_MAX: usize = 1024;

pub fn check_policy(password: &str) -> Result<()> {
    if !(PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        return Err(Error::InvalidSql(format!(
            "a password is {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes long"
        )));
    }
    Ok(())
}

/// The argon2id PHC string of `password`, with a fresh random salt. CPU-heavy (tens of
/// milliseconds): call it off the async executor.
pub fn hash(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

/// Does `password` match the PHC string `phc`? A malformed hash never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// argon2 runs at once, process-wide (each takes ~19 MiB and tens of milliseconds of CPU).
pub const PASSWORD_HASHES_CONCURRENT_MAX: usize = 2;
/// argon2 runs waiting for a slot; more are refused at once, so a login flood queues no memory.
pub const PASSWORD_HASHES_QUEUED_MAX: usize = 32;
/// How long an argon2 run waits for a slot before it is refused.
pub const PASSWORD_HASH_WAIT_MS: u64 = 2_000;

static HASH_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PASSWORD_HASHES_CONCURRENT_MAX);
static HASHES_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Run `f` (an argon2 run) on tokio's blocking pool once one of the few hashing slots is
/// free. Refused as [`Error::Busy`] when the queue is full or the wait too long.
async fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    use std::sync::atomic::Ordering;
    let busy = || Error::Busy("too many password checks in progress; retry shortly".into());
    if HASHES_WAITING.fetch_add(1, Ordering::AcqRel) >= PASSWORD_HASHES_QUEUED_MAX {
        HASHES_WAITING.fetch_sub(1, Ordering::AcqRel);
        return Err(busy());
    }
    let slot =
        tokio::time::timeout(std::time::Duration::from_millis(PASSWORD_HASH_WAIT_MS), HASH_SLOTS.acquire()).await;
    HASHES_WAITING.fetch_sub(1, Ordering::AcqRel);
    let _slot = match slot {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return Err(busy()),
    };
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("password hashing task failed: {e}")))
}

/// [`hash`] on tokio's blocking pool, bounded like every argon2 run.
pub async fn hash_blocking(password: String) -> Result<String> {
    bounded(move || hash(&password)).await?
}

/// [`verify`] on tokio's blocking pool, bounded like every argon2 run. A password longer than
/// any accepted one never matches and costs no hashing.
pub async fn verify_blocking(password: &str, phc: &str) -> Result<bool> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Ok(false);
    }
    let (password, phc) = (password.to_string(), phc.to_string());
    bounded(move || verify(&password, &phc)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(hash("correct horse").unwrap(), h, "salted");
        assert!(check_policy("short").is_err() && check_policy("long enough").is_ok());
    }
}

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

/// [`hash`] on tokio's blocking pool.
pub async fn hash_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| Error::Internal(format!("password hashing task failed: {e}")))?
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

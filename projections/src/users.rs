//! The users projection: every user of the database, persisted in the `catalog` column family
//! under the users meta group's prefix and mirrored in memory for authentication.
//!
//! Keys: `group | 'u' | username` → [`UserDef`] JSON. Passwords are only ever stored as the
//! argon2id hash the proposing node computed. `group | 'r' | token id` → [`Revoked`] JSON: a
//! revoked token id (a used refresh token, a logged-out session) until its tokens expire.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{GroupId, OpResult, Role, UserDef};
use rocksdb::{DB, WriteBatch};

use crate::CF_CATALOG;
use crate::error::{Error, Result};
use crate::keys::prefix_end;

/// Revoked token ids kept at most; a revocation beyond it fails (`QuotaExceeded`) until
/// expired ones are dropped. Bounds what a client refreshing in a loop can make every node hold.
pub const REVOKED_TOKENS_MAX: usize = 200_000;
/// Expired revocations dropped by one revocation at most (bounded apply work).
pub const REVOKED_PURGE_PER_OP_MAX: usize = 64;

/// A revoked token id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    pub user_id: String,
    pub expires_at_secs: u64,
}

/// The node's in-memory view of the users group. Written only by that group's apply.
#[derive(Debug, Default)]
pub struct Users {
    by_name: RwLock<BTreeMap<String, Arc<UserDef>>>,
    revoked: RwLock<Revocations>,
}

#[derive(Debug, Default)]
struct Revocations {
    by_id: std::collections::HashMap<String, Revoked>,
    /// (expiry, id), oldest first: what a purge drops.
    by_expiry: std::collections::BTreeSet<(u64, String)>,
}

fn revoked_key(group: GroupId, token_id: &str) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(b'r');
    k.extend_from_slice(token_id.as_bytes());
    k
}

fn user_key(group: GroupId, username: &str) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(b'u');
    k.extend_from_slice(username.as_bytes());
    k
}

fn not_found(username: &str) -> OpResult {
    OpResult::Failed { code: ApplyErrorCode::UserNotFound, message: format!("User '{username}' does not exist") }
}

impl Users {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<UserDef>>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<UserDef>>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, username: &str) -> Option<Arc<UserDef>> {
        self.read().get(username).cloned()
    }

    pub fn by_id(&self, user_id: &str) -> Option<Arc<UserDef>> {
        self.read().values().find(|u| u.user_id == user_id).cloned()
    }

    /// Every user, by name.
    pub fn all(&self) -> Vec<Arc<UserDef>> {
        self.read().values().cloned().collect()
    }

    /// Reload the in-memory view from the users group's records.
    pub fn load(&self, db: &DB, group: GroupId) -> Result<()> {
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let prefix = group.prefix();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        let mut out = BTreeMap::new();
        let mut revoked = Revocations::default();
        for item in db.iterator_cf_opt(cf, opts, rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            match k.get(4) {
                Some(b'u') => {
                    let u: UserDef = serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
                    out.insert(u.username.clone(), Arc::new(u));
                }
                Some(b'r') => {
                    let id = String::from_utf8(k[5..].to_vec()).map_err(|e| Error::Corrupt(e.to_string()))?;
                    let r: Revoked = serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
                    revoked.by_expiry.insert((r.expires_at_secs, id.clone()));
                    revoked.by_id.insert(id, r);
                }
                Some(&crate::format::KEY_FORMAT) => {}
                _ => return Err(Error::Corrupt("unknown users key".into())),
            }
        }
        *self.write() = out;
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked;
        Ok(())
    }

    fn put(&self, db: &DB, batch: &mut WriteBatch, group: GroupId, user: UserDef) -> Result<()> {
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let bytes = serde_json::to_vec(&user).map_err(|e| Error::Corrupt(e.to_string()))?;
        batch.put_cf(cf, user_key(group, &user.username), bytes);
        self.write().insert(user.username.clone(), Arc::new(user));
        Ok(())
    }

    pub fn create(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        user: &UserDef,
        if_not_exists: bool,
    ) -> Result<OpResult> {
        if self.get(&user.username).is_some() {
            return Ok(if if_not_exists {
                OpResult::Skipped
            } else {
                OpResult::Failed {
                    code: ApplyErrorCode::AlreadyExists,
                    message: format!("User '{}' already exists", user.username),
                }
            });
        }
        self.put(db, batch, group, user.clone())?;
        Ok(OpResult::Done { affected: 1 })
    }

    pub fn alter(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        username: &str,
        password_hash: Option<&str>,
        role: Option<Role>,
        updated_at_micros: i64,
    ) -> Result<OpResult> {
        let Some(old) = self.get(username) else { return Ok(not_found(username)) };
        let mut user = (*old).clone();
        if let Some(h) = password_hash {
            user.password_hash = h.to_string();
        }
        if let Some(r) = role {
            user.role = r;
        }
        user.updated_at_micros = updated_at_micros;
        self.put(db, batch, group, user)?;
        Ok(OpResult::Done { affected: 1 })
    }

    pub fn drop_user(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        username: &str,
        if_exists: bool,
    ) -> Result<OpResult> {
        if self.get(username).is_none() {
            return Ok(if if_exists { OpResult::Skipped } else { not_found(username) });
        }
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        batch.delete_cf(cf, user_key(group, username));
        self.write().remove(username);
        Ok(OpResult::Done { affected: 1 })
    }

    /// Whether this token id was revoked (and the revocation is still kept).
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).by_id.contains_key(token_id)
    }

    /// Revoked token ids kept now.
    pub fn revoked_count(&self) -> usize {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).by_id.len()
    }

    /// Apply `Op::RevokeToken`: drop up to [`REVOKED_PURGE_PER_OP_MAX`] revocations expired by
    /// `now_secs`, then record this one (`Conflict` if it already is).
    pub fn revoke(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        token_id: &str,
        revoked: Revoked,
        now_secs: u64,
    ) -> Result<OpResult> {
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let mut r = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        if r.by_id.contains_key(token_id) {
            return Ok(OpResult::Failed {
                code: ApplyErrorCode::Conflict,
                message: "this token was already used or revoked".into(),
            });
        }
        let expired: Vec<(u64, String)> = r
            .by_expiry
            .iter()
            .take_while(|(exp, _)| *exp <= now_secs)
            .take(REVOKED_PURGE_PER_OP_MAX)
            .cloned()
            .collect();
        if r.by_id.len() - expired.len() >= REVOKED_TOKENS_MAX {
            return Ok(OpResult::Failed {
                code: ApplyErrorCode::QuotaExceeded,
                message: format!("{REVOKED_TOKENS_MAX} revoked tokens are kept already; retry once some expired"),
            });
        }
        // Only an op that succeeds changes state: a failed op leaves nothing behind.
        for (exp, id) in expired {
            batch.delete_cf(cf, revoked_key(group, &id));
            r.by_expiry.remove(&(exp, id.clone()));
            r.by_id.remove(&id);
        }
        let bytes = serde_json::to_vec(&revoked).map_err(|e| Error::Corrupt(e.to_string()))?;
        batch.put_cf(cf, revoked_key(group, token_id), bytes);
        r.by_expiry.insert((revoked.expires_at_secs, token_id.to_string()));
        r.by_id.insert(token_id.to_string(), revoked);
        Ok(OpResult::Done { affected: 1 })
    }
}

//! What keeps tail subscriptions bounded and entitled: subscriber caps per node and per user,
//! the byte bound of the shared record cache, and the re-check that ends a subscription whose
//! user was dropped, lost the right to read what it follows, or whose token expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kalamdb_log::{Role, TableDef, Value};
use kalamdb_projections::changes::ChangeEntry;

use crate::auth::{Auth, Identity};

/// Subscribers of this node, in all and per user.
#[derive(Debug, Default)]
pub struct Slots {
    active: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
}

/// Why a subscriber was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Node(usize),
    User(usize),
}

impl Slots {
    /// Take a slot for `user`, within `node_max` subscribers in all and `user_max` per user.
    pub fn acquire(&self, user: &str, node_max: usize, user_max: usize) -> Result<(), Refusal> {
        if self.active.fetch_add(1, Ordering::SeqCst) >= node_max {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::Node(node_max));
        }
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_user.entry(user.to_string()).or_insert(0);
        if *n >= user_max {
            drop(per_user);
            self.active.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::User(user_max));
        }
        *n += 1;
        Ok(())
    }

    /// Give back `user`'s slot; returns the subscribers left on this node.
    pub fn release(&self, user: &str) -> usize {
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_user.remove(user);
            }
        }
        self.active.fetch_sub(1, Ordering::SeqCst).saturating_sub(1)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// Who a subscription streams for, as established when it started.
#[derive(Debug, Clone)]
pub struct Entitlement {
    pub who: Identity,
    /// Expiry of the bearer token it was opened with (Unix seconds).
    pub expires_at_secs: Option<u64>,
    /// The password hash that Basic credentials were checked against when it was opened:
    /// a password change ends it, as it would refuse the same credentials on a new request.
    pub basic_password_hash: Option<String>,
    /// Ids whose revocation (logout) ends it: its token's and that token's session's.
    pub token_ids: Vec<String>,
}

impl Entitlement {
    /// The caller's role now, or why the subscription must end: the token expired, the
    /// password its Basic credentials matched changed, the user was dropped (or dropped and
    /// re-created: another id), or it may no longer read `table`
    /// (or tail a whole group, when `table` is `None` and `whole_group`).
    pub fn recheck(&self, auth: &Auth, table: Option<&TableDef>, whole_group: bool) -> Result<Role, String> {
        if self.expires_at_secs.is_some_and(|exp| exp <= crate::auth::unix_secs()) {
            return Err("the subscription's token expired; log in again and resume".into());
        }
        if auth.any_revoked(&self.token_ids) {
            return Err("the subscription's token was revoked (logged out)".into());
        }
        let now =
            auth.confirm(self.who.clone()).map_err(|_| format!("user '{}' no longer exists", self.who.username))?;
        if let Some(opened_with) = &self.basic_password_hash
            && auth.password_hash_of(&self.who.user_id).as_ref() != Some(opened_with)
        {
            return Err(format!("the password of user '{}' changed; log in again and resume", self.who.username));
        }
        if let Some(def) = table {
            kalamdb_query::access::check_read(now.role, def).map_err(|e| e.to_string())?;
        }
        if whole_group {
            kalamdb_query::access::require(now.role, Role::Dba, "tailing a whole group").map_err(|e| e.to_string())?;
        }
        Ok(now.role)
    }
}

/// Approximate bytes a cached entry holds: its decoded values, up to two rendered frames per
/// change (SSE and NDJSON), which are about the values' size again, and a joined block.
pub fn entry_cost_bytes(record: Option<&ChangeEntry>) -> usize {
    const ENTRY_OVERHEAD_BYTES: usize = 256;
    const CHANGE_OVERHEAD_BYTES: usize = 160;
    let Some(r) = record else { return ENTRY_OVERHEAD_BYTES };
    let values: usize = r
        .changes
        .iter()
        .map(|c| {
            let row: usize = c.row.iter().map(value_bytes).sum();
            let old: usize = c.old_row.iter().flatten().map(value_bytes).sum();
            CHANGE_OVERHEAD_BYTES + c.scope.len() + c.namespace.len() + row + old
        })
        .sum();
    // The values, a frame per format, and a format's frames once more joined in a block.
    ENTRY_OVERHEAD_BYTES + values * 5
}

fn value_bytes(v: &Value) -> usize {
    let inline = std::mem::size_of::<Value>();
    match v {
        Value::Text(s) | Value::Json(s) => inline + s.len(),
        Value::Bytes(b) => inline + b.len(),
        _ => inline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_node_and_per_user() {
        let s = Slots::default();
        assert_eq!(s.acquire("a", 3, 2), Ok(()));
        assert_eq!(s.acquire("a", 3, 2), Ok(()));
        assert_eq!(s.acquire("a", 3, 2), Err(Refusal::User(2)));
        assert_eq!(s.acquire("b", 3, 2), Ok(()));
        assert_eq!(s.acquire("c", 3, 2), Err(Refusal::Node(3)));
        assert_eq!(s.active(), 3);
        assert_eq!(s.release("a"), 2);
        assert_eq!(s.acquire("a", 3, 2), Ok(()));
        for u in ["a", "a", "b"] {
            s.release(u);
        }
        assert_eq!(s.active(), 0);
        assert!(s.per_user.lock().unwrap().is_empty(), "no entry kept for users without subscribers");
    }
}

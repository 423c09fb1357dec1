//! The chaos workload: `concurrency` clients, each a closed loop of reads, writes,
//! compare-and-sets and creates on registers (rows of one table) and appends and reads on
//! per-key lists (rows of another), sent to random nodes. Every invocation and completion is
//! recorded, in real-time order, for the checker.
//!
//! Keys rotate: each key receives `ops_per_key` operations and then the clients move to a
//! fresh one, which keeps each key's history short enough for an exhaustive search.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Mutex;

use super::api::{Api, Reply, row_count, rows, uint};
use super::check::{Event, ListOp, ListRet, Outcome, RegOp, RegRet};

/// Register keys in use at any time; list keys likewise.
pub const REGISTER_SLOTS: u64 = 8;
pub const LIST_SLOTS: u64 = 4;
/// A list key's rows are ids `key << LIST_KEY_SHIFT ..`, so a list read is a primary-key range
/// scan and ids never collide across keys.
pub const LIST_KEY_SHIFT: u32 = 20;

pub struct Tables {
    pub registers: String,
    pub lists: String,
}

#[derive(Default)]
pub struct History {
    pub registers: Vec<Event<RegOp, RegRet>>,
    pub lists: Vec<Event<ListOp, ListRet>>,
}

/// Counts for the report.
#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub unknown: AtomicU64,
}

pub struct Workload {
    pub api: Api,
    pub urls: Vec<String>,
    pub tables: Tables,
    pub ops_per_key: u64,
    pub history: Mutex<History>,
    pub counts: Counts,
    next_op: AtomicU64,
    register_ops: Vec<AtomicU64>,
    list_ops: Vec<AtomicU64>,
}

/// Which key of a slot an operation goes to, and its number within that key.
fn rotate(slot: u64, slots: u64, n: u64, ops_per_key: u64) -> (u64, u64) {
    let generation = n / ops_per_key;
    (generation * slots + slot + 1, n % ops_per_key)
}

impl Workload {
    pub fn new(api: Api, urls: Vec<String>, tables: Tables, ops_per_key: u64) -> Workload {
        assert!(ops_per_key > 0 && ops_per_key < (1 << LIST_KEY_SHIFT));
        Workload {
            api,
            urls,
            tables,
            ops_per_key,
            history: Mutex::new(History::default()),
            counts: Counts::default(),
            next_op: AtomicU64::new(1),
            register_ops: (0..REGISTER_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            list_ops: (0..LIST_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn create_sql(&self) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (k BIGINT PRIMARY KEY, v BIGINT) WITH (TYPE = 'SHARED')",
                self.tables.registers
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id BIGINT PRIMARY KEY, k BIGINT, v BIGINT) WITH (TYPE = 'SHARED')",
                self.tables.lists
            ),
        ]
    }

    fn count(&self, o: &Outcome<impl Sized>) {
        let c = match o {
            Outcome::Ok(_) => &self.counts.ok,
            Outcome::Failed => &self.counts.failed,
            Outcome::Unknown => &self.counts.unknown,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One client until `stop`. Its process id changes after every operation of unknown
    /// outcome: that operation stays in flight in the history for good.
    pub async fn client(self: Arc<Self>, worker: u64, seed: u64, stop: Arc<AtomicBool>) {
        let mut rng = fastrand::Rng::with_seed(seed ^ (worker.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let mut incarnation = 0u64;
        let mut value_seq = 0u64;
        // The last value this client saw per register key: what its CAS expects.
        let mut seen: HashMap<u64, u64> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let process = (incarnation << 16) | worker;
            let url = self.urls[rng.usize(..self.urls.len())].clone();
            let op_id = self.next_op.fetch_add(1, Ordering::Relaxed);
            value_seq += 1;
            let unique = ((worker + 1) << 40) | value_seq;
            let unknown = if rng.u8(0..10) < 7 {
                let slot = rng.u64(..REGISTER_SLOTS);
                let n = self.register_ops[slot as usize].fetch_add(1, Ordering::Relaxed);
                let (key, _) = rotate(slot, REGISTER_SLOTS, n, self.ops_per_key);
                let op = match rng.u8(0..20) {
                    0..=7 => RegOp::Read,
                    8..=10 => RegOp::Create(unique),
                    11..=13 => RegOp::Write(unique),
                    _ => RegOp::Cas { old: seen.get(&key).copied().unwrap_or(0), new: unique },
                };
                self.history.lock().await.registers.push(Event::Invoke { op_id, process, key, op: op.clone() });
                let outcome = self.register_op(&url, key, &op).await;
                match (&op, &outcome) {
                    (_, Outcome::Ok(RegRet::Value(Some(v)))) => {
                        seen.insert(key, *v);
                    }
                    (RegOp::Create(v) | RegOp::Write(v), Outcome::Ok(RegRet::Created | RegRet::Updated(true))) => {
                        seen.insert(key, *v);
                    }
                    (RegOp::Cas { new, .. }, Outcome::Ok(RegRet::Updated(true))) => {
                        seen.insert(key, *new);
                    }
                    _ => {}
                }
                self.count(&outcome);
                let unknown = outcome == Outcome::Unknown;
                self.history.lock().await.registers.push(Event::Complete { op_id, outcome });
                unknown
            } else {
                let slot = rng.u64(..LIST_SLOTS);
                let n = self.list_ops[slot as usize].fetch_add(1, Ordering::Relaxed);
                let (key, index) = rotate(slot, LIST_SLOTS, n, self.ops_per_key);
                let op = if rng.bool() {
                    ListOp::Append { value: (key << LIST_KEY_SHIFT) | index, at: None }
                } else {
                    ListOp::Read
                };
                self.history.lock().await.lists.push(Event::Invoke { op_id, process, key, op: op.clone() });
                let outcome = self.list_op(&url, key, &op).await;
                self.count(&outcome);
                let unknown = outcome == Outcome::Unknown;
                self.history.lock().await.lists.push(Event::Complete { op_id, outcome });
                unknown
            };
            if unknown {
                incarnation += 1;
            }
        }
    }

    async fn register_op(&self, url: &str, key: u64, op: &RegOp) -> Outcome<RegRet> {
        let t = &self.tables.registers;
        match op {
            RegOp::Read => match self.api.sql(url, &format!("SELECT v FROM {t} WHERE k = {key}"), false).await {
                Reply::Ok(v) => match rows(&v) {
                    [] => Outcome::Ok(RegRet::Value(None)),
                    [r] => uint(&r[0]).map_or(Outcome::Failed, |x| Outcome::Ok(RegRet::Value(Some(x)))),
                    _ => Outcome::Failed,
                },
                // A read that did not answer changed nothing.
                _ => Outcome::Failed,
            },
            RegOp::Create(v) => {
                match self.api.sql(url, &format!("INSERT INTO {t} (k, v) VALUES ({key}, {v})"), false).await {
                    Reply::Ok(_) => Outcome::Ok(RegRet::Created),
                    // Apply refused it deterministically: the row exists.
                    Reply::Error { code, .. } if code == "CONSTRAINT_VIOLATION" || code == "ALREADY_EXISTS" => {
                        Outcome::Ok(RegRet::Exists)
                    }
                    Reply::NotSent(_) => Outcome::Failed,
                    _ => Outcome::Unknown,
                }
            }
            RegOp::Write(v) => self.update(url, &format!("UPDATE {t} SET v = {v} WHERE k = {key}")).await,
            RegOp::Cas { old, new } => {
                self.update(url, &format!("UPDATE {t} SET v = {new} WHERE k = {key} AND v = {old}")).await
            }
        }
    }

    async fn update(&self, url: &str, sql: &str) -> Outcome<RegRet> {
        match self.api.sql(url, sql, false).await {
            Reply::Ok(v) => match row_count(&v) {
                Some(0) => Outcome::Ok(RegRet::Updated(false)),
                Some(1) => Outcome::Ok(RegRet::Updated(true)),
                _ => Outcome::Unknown,
            },
            Reply::NotSent(_) => Outcome::Failed,
            _ => Outcome::Unknown,
        }
    }

    async fn list_op(&self, url: &str, key: u64, op: &ListOp) -> Outcome<ListRet> {
        let t = &self.tables.lists;
        match op {
            ListOp::Append { value: id, .. } => {
                match self.api.sql(url, &format!("INSERT INTO {t} (id, k, v) VALUES ({id}, {key}, {id})"), false).await
                {
                    Reply::Ok(_) => Outcome::Ok(ListRet::Appended),
                    Reply::NotSent(_) => Outcome::Failed,
                    _ => Outcome::Unknown,
                }
            }
            ListOp::Read => {
                let lo = key << LIST_KEY_SHIFT;
                let hi = (key + 1) << LIST_KEY_SHIFT;
                let sql = format!("SELECT v FROM {t} WHERE id >= {lo} AND id < {hi} ORDER BY _seq");
                match self.api.sql(url, &sql, false).await {
                    Reply::Ok(v) => {
                        let vals: Option<Vec<u64>> = rows(&v).iter().map(|r| uint(&r[0])).collect();
                        vals.map_or(Outcome::Failed, |v| Outcome::Ok(ListRet::Values(v)))
                    }
                    _ => Outcome::Failed,
                }
            }
        }
    }

    /// Appends attempted and appends acknowledged, by id.
    pub async fn appends(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let h = self.history.lock().await;
        let mut attempted = BTreeMap::new();
        let mut acked = BTreeSet::new();
        for e in &h.lists {
            match e {
                Event::Invoke { op_id, op: ListOp::Append { value: v, .. }, .. } => {
                    attempted.insert(*op_id, *v);
                }
                Event::Complete { op_id, outcome: Outcome::Ok(ListRet::Appended) } => {
                    if let Some(v) = attempted.get(op_id) {
                        acked.insert(*v);
                    }
                }
                _ => {}
            }
        }
        (attempted.into_values().collect(), acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_exactly_its_budget_and_slots_never_share_keys() {
        let mut per_key: HashMap<u64, u64> = HashMap::new();
        for slot in 0..REGISTER_SLOTS {
            for n in 0..100 {
                *per_key.entry(rotate(slot, REGISTER_SLOTS, n, 10).0).or_default() += 1;
            }
        }
        assert_eq!(per_key.len(), (REGISTER_SLOTS * 10) as usize);
        assert!(per_key.values().all(|c| *c == 10));
    }
}

//! The chaos run's batch workload: clients move amounts between the rows of one accounts
//! table, each transfer a `BEGIN; UPDATE; UPDATE; COMMIT;` request, and read the total. A
//! batch applies all or nothing, so every answered read of the total, and the final state,
//! must show the starting total; and the transfer counter must account for every
//! acknowledged transfer (and no more than those plus the ones of unknown outcome).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::api::{Api, Reply, int, rows, uint};

/// Accounts in the table, and what each starts with.
pub const ACCOUNTS: u64 = 8;
pub const START_BALANCE: i64 = 1000;

/// What the transfer clients saw.
#[derive(Debug, Default)]
pub struct TransferCounts {
    /// Transfers the cluster acknowledged.
    pub committed: AtomicU64,
    /// Transfers refused with no effect (write conflict after retries, unavailable before
    /// anything was proposed is not distinguishable, so those count as unknown).
    pub refused: AtomicU64,
    /// Transfers without a definite answer: they may or may not have applied.
    pub unknown: AtomicU64,
    /// Reads of the total that answered, and those that saw a wrong total.
    pub reads: AtomicU64,
    pub bad_reads: AtomicU64,
}

pub struct Transfers {
    pub api: Api,
    pub urls: Vec<String>,
    pub table: String,
    pub counts: TransferCounts,
    /// The first wrong total seen, for the report.
    pub first_bad: std::sync::Mutex<Option<String>>,
}

impl Transfers {
    pub fn new(api: Api, urls: Vec<String>, table: String) -> Transfers {
        Transfers { api, urls, table, counts: TransferCounts::default(), first_bad: std::sync::Mutex::new(None) }
    }

    pub fn create_sql(&self) -> Vec<String> {
        let values: Vec<String> = (0..ACCOUNTS).map(|i| format!("({i}, {START_BALANCE}, 0)")).collect();
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id BIGINT PRIMARY KEY, bal BIGINT NOT NULL, moves BIGINT NOT NULL) \
                 WITH (TYPE = 'SHARED')",
                self.table
            ),
            format!("INSERT INTO {} (id, bal, moves) VALUES {}", self.table, values.join(", ")),
        ]
    }

    /// The total every read must see.
    pub fn total() -> i64 {
        ACCOUNTS as i64 * START_BALANCE
    }

    /// One client until `stop`: mostly transfers, sometimes a read of the total.
    pub async fn client(self: Arc<Self>, worker: u64, seed: u64, stop: Arc<AtomicBool>) {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x7A5F ^ worker.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let t = &self.table;
        while !stop.load(Ordering::Relaxed) {
            let url = &self.urls[rng.usize(..self.urls.len())];
            if rng.u8(0..5) == 0 {
                let sql = format!("SELECT sum(bal), count(*) FROM {t}");
                if let Reply::Ok(v) = self.api.sql(url, &sql, false).await {
                    self.counts.reads.fetch_add(1, Ordering::Relaxed);
                    let seen = rows(&v).first().map(|r| (int(&r[0]), uint(&r[1])));
                    if seen != Some((Some(Self::total()), Some(ACCOUNTS))) {
                        self.counts.bad_reads.fetch_add(1, Ordering::Relaxed);
                        let mut first = self.first_bad.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        first.get_or_insert_with(|| format!("{url}: {v}"));
                    }
                }
                continue;
            }
            let from = rng.u64(..ACCOUNTS);
            let to = (from + 1 + rng.u64(..ACCOUNTS - 1)) % ACCOUNTS;
            let amount = rng.i64(1..50);
            let sql = format!(
                "BEGIN; UPDATE {t} SET bal = bal - {amount}, moves = moves + 1 WHERE id = {from}; \
                 UPDATE {t} SET bal = bal + {amount}, moves = moves + 1 WHERE id = {to}; COMMIT;"
            );
            let counter = match self.api.sql(url, &sql, false).await {
                Reply::Ok(_) => &self.counts.committed,
                // Refused before its entry was proposed, or rejected by apply: no effect.
                Reply::Error { code, .. } if code == "WRITE_CONFLICT" || code == "INVALID_SQL" => &self.counts.refused,
                Reply::NotSent(_) => &self.counts.refused,
                _ => &self.counts.unknown,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The final state against what the clients saw: `(sum of balances, rows, sum of moves)`.
    pub fn check_final(&self, sum: i64, accounts: u64, moves: u64) -> Result<String, String> {
        let c = &self.counts;
        let (committed, unknown) = (c.committed.load(Ordering::SeqCst), c.unknown.load(Ordering::SeqCst));
        let (reads, bad) = (c.reads.load(Ordering::SeqCst), c.bad_reads.load(Ordering::SeqCst));
        let summary = format!(
            "{committed} committed, {} refused, {unknown} unknown; {reads} reads of the total",
            c.refused.load(Ordering::SeqCst)
        );
        if bad > 0 {
            let first = self.first_bad.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            return Err(format!("{bad} reads saw a total other than {} (first: {first:?}); {summary}", Self::total()));
        }
        if (sum, accounts) != (Self::total(), ACCOUNTS) {
            return Err(format!(
                "final total {sum} over {accounts} rows, expected {} over {ACCOUNTS}; {summary}",
                Self::total()
            ));
        }
        // Each applied transfer counts one move on each of its two rows.
        let applied = moves / 2;
        if !moves.is_multiple_of(2) || applied < committed || applied > committed + unknown {
            return Err(format!(
                "{moves} moves recorded: not 2 per transfer for {committed}..={} transfers; {summary}",
                committed + unknown
            ));
        }
        Ok(format!("{summary}; {applied} applied, total conserved"))
    }
}

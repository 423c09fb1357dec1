//! The verdicts of a chaos run: per-key linearizability of registers and lists (stateright's
//! `LinearizabilityTester` over a history recorded by the workload), lost acknowledged
//! appends, and gaps or duplicates in what tail subscribers received.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// A register that starts absent (its row does not exist yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Register(pub Option<u64>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    /// `SELECT v ... WHERE k = K`
    Read,
    /// `INSERT (k, v)`: fails with a constraint violation when the row exists.
    Create(u64),
    /// `UPDATE ... SET v = x WHERE k = K`: one row, or none when absent.
    Write(u64),
    /// `UPDATE ... SET v = new WHERE k = K AND v = old`: compare-and-set.
    Cas { old: u64, new: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegRet {
    Value(Option<u64>),
    Created,
    Exists,
    /// Whether the UPDATE changed the row (`row_count` 1 or 0).
    Updated(bool),
}

impl SequentialSpec for Register {
    type Op = RegOp;
    type Ret = RegRet;

    fn invoke(&mut self, op: &RegOp) -> RegRet {
        match *op {
            RegOp::Read => RegRet::Value(self.0),
            RegOp::Create(v) => {
                if self.0.is_some() {
                    RegRet::Exists
                } else {
                    self.0 = Some(v);
                    RegRet::Created
                }
            }
            RegOp::Write(v) => {
                let present = self.0.is_some();
                if present {
                    self.0 = Some(v);
                }
                RegRet::Updated(present)
            }
            RegOp::Cas { old, new } => {
                let hit = self.0 == Some(old);
                if hit {
                    self.0 = Some(new);
                }
                RegRet::Updated(hit)
            }
        }
    }
}

/// A list of appended values in commit order (rows of one key, ordered by `_seq`).
///
/// Each append carries the position its value holds in the table's final commit order (see
/// [`place_appends`]), so the search places it there or nowhere: without that, the search
/// tries every order of concurrent appends before a read decides, and a few dozen operations
/// take longer than any budget. The final order is the system's own answer, like a position
/// returned by the append; a read that saw any other order still fails to match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct List {
    items: Vec<u64>,
    /// An in-flight append was placed off its position: this branch of the search is dead.
    misplaced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListOp {
    /// `at`: the value's index in the key's final list; `None` when it is not there.
    Append {
        value: u64,
        at: Option<usize>,
    },
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListRet {
    Appended,
    Values(Vec<u64>),
}

impl SequentialSpec for List {
    type Op = ListOp;
    type Ret = ListRet;

    fn invoke(&mut self, op: &ListOp) -> ListRet {
        match op {
            ListOp::Append { value, at } => {
                if *at != Some(self.items.len()) {
                    self.misplaced = true;
                }
                self.items.push(*value);
                ListRet::Appended
            }
            ListOp::Read => ListRet::Values(self.items.clone()),
        }
    }

    fn is_valid_step(&mut self, op: &ListOp, ret: &ListRet) -> bool {
        if self.misplaced {
            return false;
        }
        // Compare in place: a read of a long list is not cloned just to be compared.
        match (op, ret) {
            (ListOp::Read, ListRet::Values(v)) => &self.items == v,
            (ListOp::Append { value, at }, ListRet::Appended) => {
                let here = *at == Some(self.items.len());
                self.items.push(*value);
                here
            }
            _ => false,
        }
    }
}

/// Give every append of a list history its position in `final_lists` (per key, the values in
/// commit order, as read after the run). An append of unknown outcome whose value is not in
/// the final list certainly did not happen (rows are never removed): it becomes `Failed`.
pub fn place_appends(
    history: &[Event<ListOp, ListRet>],
    final_lists: &BTreeMap<u64, Vec<u64>>,
) -> Vec<Event<ListOp, ListRet>> {
    let positions: BTreeMap<(u64, u64), usize> =
        final_lists.iter().flat_map(|(k, vals)| vals.iter().enumerate().map(move |(i, v)| ((*k, *v), i))).collect();
    let mut absent = BTreeSet::new();
    let mut out: Vec<Event<ListOp, ListRet>> = history
        .iter()
        .map(|e| match e {
            Event::Invoke { op_id, process, key, op: ListOp::Append { value, .. } } => {
                let at = positions.get(&(*key, *value)).copied();
                if at.is_none() {
                    absent.insert(*op_id);
                }
                Event::Invoke { op_id: *op_id, process: *process, key: *key, op: ListOp::Append { value: *value, at } }
            }
            other => other.clone(),
        })
        .collect();
    for e in &mut out {
        if let Event::Complete { op_id, outcome } = e
            && absent.contains(op_id)
            && *outcome == Outcome::Unknown
        {
            *outcome = Outcome::Failed;
        }
    }
    out
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<Ret> {
    /// A definite answer.
    Ok(Ret),
    /// Certainly no effect (a failed read, a request that never left the client): left out
    /// of the history.
    Failed,
    /// Maybe applied, maybe not (timeout, connection lost, "outcome unknown"). The process
    /// that issued it never issues another operation.
    Unknown,
}

/// One line of a recorded history, in real-time order.
#[derive(Clone, Debug)]
pub enum Event<Op, Ret> {
    Invoke { op_id: u64, process: u64, key: u64, op: Op },
    Complete { op_id: u64, outcome: Outcome<Ret> },
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. The history of the key, one line per event.
    Violation(Vec<String>),
    /// The history could not be recorded consistently (a process with two operations in flight).
    Malformed(String),
    /// The search did not finish within the time given.
    Inconclusive,
}

/// Per-key results of a linearizability check.
#[derive(Clone, Debug, Default)]
pub struct LinReport {
    pub keys: usize,
    pub ops: usize,
    /// Operations with a definite answer (what the search has to explain).
    pub answered: usize,
    pub unknown_ops: usize,
    pub verdicts: BTreeMap<u64, Verdict>,
    pub seconds: f64,
}

impl LinReport {
    pub fn failures(&self) -> impl Iterator<Item = (&u64, &Verdict)> {
        self.verdicts.iter().filter(|(_, v)| !matches!(v, Verdict::Linearizable))
    }
}

/// Operations of one key, split out of a history (failed ones dropped).
fn split_by_key<Op: Clone + Debug, Ret: Clone + Debug>(
    history: &[Event<Op, Ret>],
) -> (BTreeMap<u64, Vec<Event<Op, Ret>>>, usize) {
    let mut key_of = BTreeMap::new();
    let mut failed = BTreeSet::new();
    let mut unknown = 0;
    for e in history {
        match e {
            Event::Invoke { op_id, key, .. } => {
                key_of.insert(*op_id, *key);
            }
            Event::Complete { op_id, outcome: Outcome::Failed } => {
                failed.insert(*op_id);
            }
            Event::Complete { outcome: Outcome::Unknown, .. } => unknown += 1,
            Event::Complete { .. } => {}
        }
    }
    let mut per_key: BTreeMap<u64, Vec<Event<Op, Ret>>> = BTreeMap::new();
    for e in history {
        let id = match e {
            Event::Invoke { op_id, .. } | Event::Complete { op_id, .. } => *op_id,
        };
        if failed.contains(&id) {
            continue;
        }
        if let Some(k) = key_of.get(&id) {
            per_key.entry(*k).or_default().push(e.clone());
        }
    }
    (per_key, unknown)
}

/// Feed one key's events to a fresh tester and search for a linearization.
fn check_key<S>(init: S, events: &[Event<S::Op, S::Ret>]) -> Verdict
where
    S: SequentialSpec + Clone,
    S::Op: Clone + Debug,
    S::Ret: Clone + Debug + PartialEq,
{
    let mut t: LinearizabilityTester<u64, S> = LinearizabilityTester::new(init);
    let mut process_of = BTreeMap::new();
    for e in events {
        let r = match e {
            Event::Invoke { op_id, process, op, .. } => {
                process_of.insert(*op_id, *process);
                t.on_invoke(*process, op.clone()).map(|_| ())
            }
            Event::Complete { op_id, outcome: Outcome::Ok(ret) } => match process_of.get(op_id) {
                Some(p) => t.on_return(*p, ret.clone()).map(|_| ()),
                None => Err(format!("completion of op {op_id} that was never invoked")),
            },
            // Unknown: stays in flight for good (it may or may not have taken effect).
            Event::Complete { .. } => Ok(()),
        };
        if let Err(m) = r {
            return Verdict::Malformed(m);
        }
    }
    if t.serialized_history().is_some() {
        Verdict::Linearizable
    } else {
        Verdict::Violation(events.iter().map(|e| format!("{e:?}")).collect())
    }
}

/// Check every key of `history` for linearizability against `init`, on `threads` threads,
/// giving up on keys not decided within `budget` (they are reported `Inconclusive`).
pub fn check_linearizable<S>(init: S, history: &[Event<S::Op, S::Ret>], threads: usize, budget: Duration) -> LinReport
where
    S: SequentialSpec + Clone + Send + 'static,
    S::Op: Clone + Debug + Send + 'static,
    S::Ret: Clone + Debug + PartialEq + Send + 'static,
{
    let started = Instant::now();
    let (per_key, unknown_ops) = split_by_key(history);
    let ops = history.iter().filter(|e| matches!(e, Event::Invoke { .. })).count();
    let answered = history.iter().filter(|e| matches!(e, Event::Complete { outcome: Outcome::Ok(_), .. })).count();
    let keys: Vec<u64> = per_key.keys().copied().collect();
    let mut report = LinReport { keys: keys.len(), ops, answered, unknown_ops, ..LinReport::default() };
    let work = std::sync::Arc::new(std::sync::Mutex::new(per_key.into_iter().collect::<Vec<_>>()));
    let (tx, rx) = mpsc::channel();
    for _ in 0..threads.max(1) {
        let (work, tx, init) = (work.clone(), tx.clone(), init.clone());
        // Detached: a search that outlives the budget is abandoned (the process exits soon).
        std::thread::spawn(move || {
            loop {
                let next = work.lock().map(|mut w| w.pop()).unwrap_or(None);
                let Some((key, events)) = next else { break };
                let v = check_key(init.clone(), &events);
                if tx.send((key, v)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = started + budget;
    while report.verdicts.len() < keys.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((k, v)) => {
                report.verdicts.insert(k, v);
            }
            Err(_) => break,
        }
    }
    for k in keys {
        report.verdicts.entry(k).or_insert(Verdict::Inconclusive);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Acknowledged appends that are missing from the final state, and values present that no
/// client ever tried to append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendReport {
    pub acknowledged: usize,
    pub present: usize,
    pub lost: Vec<u64>,
    pub unexpected: Vec<u64>,
    pub duplicated: Vec<u64>,
}

pub fn check_appends(acknowledged: &BTreeSet<u64>, attempted: &BTreeSet<u64>, present: &[u64]) -> AppendReport {
    let mut seen = BTreeSet::new();
    let mut duplicated = Vec::new();
    for v in present {
        if !seen.insert(*v) {
            duplicated.push(*v);
        }
    }
    AppendReport {
        acknowledged: acknowledged.len(),
        present: seen.len(),
        lost: acknowledged.difference(&seen).copied().collect(),
        unexpected: seen.difference(attempted).copied().collect(),
        duplicated,
    }
}

/// One row change as a tail subscriber received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailEvent {
    /// Log position: index and change offset within the entry.
    pub index: u64,
    pub offset: u32,
    pub id: u64,
}

/// A subscriber must have received exactly the rows of the table, in commit order: positions
/// strictly increasing, no id twice, none missing, none extra.
pub fn check_tail(received: &[TailEvent], committed_ids_in_order: &[u64]) -> Result<(), String> {
    for w in received.windows(2) {
        if (w[1].index, w[1].offset) <= (w[0].index, w[0].offset) {
            return Err(format!("position went backwards or repeated: {:?} then {:?}", w[0], w[1]));
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(d) = received.iter().find(|e| !seen.insert(e.id)) {
        return Err(format!("row {} delivered twice (second at index {})", d.id, d.index));
    }
    let got: Vec<u64> = received.iter().map(|e| e.id).collect();
    if got == committed_ids_in_order {
        return Ok(());
    }
    let want: BTreeSet<u64> = committed_ids_in_order.iter().copied().collect();
    let missing: Vec<u64> = want.difference(&seen).take(5).copied().collect();
    let extra: Vec<u64> = seen.difference(&want).take(5).copied().collect();
    Err(format!(
        "received {} rows, the table has {}; missing (first 5) {missing:?}, extra {extra:?}{}",
        got.len(),
        committed_ids_in_order.len(),
        if missing.is_empty() && extra.is_empty() { ", same rows in another order" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv<O, R>(op_id: u64, process: u64, op: O) -> Event<O, R> {
        Event::Invoke { op_id, process, key: 1, op }
    }
    fn ok<O, R>(op_id: u64, ret: R) -> Event<O, R> {
        Event::Complete { op_id, outcome: Outcome::Ok(ret) }
    }
    fn verdict<S>(init: S, h: &[Event<S::Op, S::Ret>]) -> Verdict
    where
        S: SequentialSpec + Clone + Send + 'static,
        S::Op: Clone + Debug + Send + 'static,
        S::Ret: Clone + Debug + PartialEq + Send + 'static,
    {
        let r = check_linearizable(init, h, 1, Duration::from_secs(10));
        r.verdicts.get(&1).cloned().expect("key 1 checked")
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let h = vec![
            inv(1, 1, RegOp::Create(5)),
            ok(1, RegRet::Created),
            inv(2, 1, RegOp::Write(6)),
            ok(2, RegRet::Updated(true)),
            // Invoked after the write returned: must see 6.
            inv(3, 2, RegOp::Read),
            ok(3, RegRet::Value(Some(5))),
        ];
        assert!(matches!(verdict(Register::default(), &h), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = vec![
            inv(1, 1, RegOp::Create(5)),
            inv(2, 2, RegOp::Read),
            ok(2, RegRet::Value(None)),
            ok(1, RegRet::Created),
            inv(3, 1, RegOp::Cas { old: 5, new: 7 }),
            inv(4, 2, RegOp::Cas { old: 5, new: 8 }),
            ok(4, RegRet::Updated(false)),
            ok(3, RegRet::Updated(true)),
            inv(5, 2, RegOp::Read),
            ok(5, RegRet::Value(Some(7))),
        ];
        assert_eq!(verdict(Register::default(), &h), Verdict::Linearizable);
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_a_violation() {
        let h = vec![
            inv(1, 1, RegOp::Create(5)),
            ok(1, RegRet::Created),
            inv(2, 1, RegOp::Cas { old: 5, new: 7 }),
            inv(3, 2, RegOp::Cas { old: 5, new: 8 }),
            ok(2, RegRet::Updated(true)),
            ok(3, RegRet::Updated(true)),
        ];
        assert!(matches!(verdict(Register::default(), &h), Verdict::Violation(_)));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened_but_failed_reads_are_ignored() {
        let seen_it = vec![
            inv(1, 1, RegOp::Create(5)),
            ok(1, RegRet::Created),
            inv(2, 1, RegOp::Write(6)),
            Event::Complete { op_id: 2, outcome: Outcome::Unknown },
            inv(3, 2, RegOp::Read),
            ok(3, RegRet::Value(Some(6))),
            inv(4, 3, RegOp::Read),
            Event::Complete { op_id: 4, outcome: Outcome::Failed },
        ];
        assert_eq!(verdict(Register::default(), &seen_it), Verdict::Linearizable);
        let mut not_seen = seen_it.clone();
        not_seen[5] = ok(3, RegRet::Value(Some(5)));
        assert_eq!(verdict(Register::default(), &not_seen), Verdict::Linearizable);
        // A value nobody wrote is never explained by an unknown outcome.
        let mut invented = seen_it;
        invented[5] = ok(3, RegRet::Value(Some(9)));
        assert!(matches!(verdict(Register::default(), &invented), Verdict::Violation(_)));
    }

    #[test]
    fn a_second_operation_of_a_process_with_one_in_flight_is_malformed() {
        let h = vec![inv(1, 1, RegOp::Read), inv(2, 1, RegOp::Read)];
        assert!(matches!(verdict(Register::default(), &h), Verdict::Malformed(_)));
    }

    fn append(v: u64) -> ListOp {
        ListOp::Append { value: v, at: None }
    }

    /// Positions from a final list of key 1.
    fn placed(h: &[Event<ListOp, ListRet>], final_list: &[u64]) -> Vec<Event<ListOp, ListRet>> {
        place_appends(h, &BTreeMap::from([(1, final_list.to_vec())]))
    }

    #[test]
    fn list_reads_must_show_acknowledged_appends_in_the_committed_order() {
        let good = vec![
            inv(1, 1, append(1)),
            inv(2, 2, append(2)),
            ok(1, ListRet::Appended),
            ok(2, ListRet::Appended),
            inv(3, 1, ListOp::Read),
            ok(3, ListRet::Values(vec![2, 1])),
        ];
        assert_eq!(verdict(List::default(), &placed(&good, &[2, 1])), Verdict::Linearizable);
        // A read that saw another order than the one committed.
        assert!(matches!(verdict(List::default(), &placed(&good, &[1, 2])), Verdict::Violation(_)));
        // Two readers that disagree on the order of the same two appends.
        let mut split = good.clone();
        split.push(inv(4, 2, ListOp::Read));
        split.push(ok(4, ListRet::Values(vec![1, 2])));
        assert!(matches!(verdict(List::default(), &placed(&split, &[2, 1])), Verdict::Violation(_)));
        // An acknowledged append missing from a later read, and from the final list.
        let mut lost = good;
        lost[5] = ok(3, ListRet::Values(vec![2]));
        assert!(matches!(verdict(List::default(), &placed(&lost, &[2])), Verdict::Violation(_)));
    }

    #[test]
    fn an_unknown_append_counts_where_it_was_committed_or_not_at_all() {
        let h = vec![
            inv(1, 1, append(1)),
            Event::Complete { op_id: 1, outcome: Outcome::Unknown },
            inv(2, 2, append(2)),
            ok(2, ListRet::Appended),
            inv(3, 2, ListOp::Read),
            ok(3, ListRet::Values(vec![2])),
            inv(4, 2, ListOp::Read),
            ok(4, ListRet::Values(vec![2, 1])),
        ];
        // Committed after 2: it took effect between the two reads.
        assert_eq!(verdict(List::default(), &placed(&h, &[2, 1])), Verdict::Linearizable);
        // Not committed: it never happened, so the second read invented it.
        let p = placed(&h, &[2]);
        assert!(matches!(p[1], Event::Complete { outcome: Outcome::Failed, .. }));
        assert!(matches!(verdict(List::default(), &p), Verdict::Violation(_)));
    }

    #[test]
    fn many_concurrent_appends_are_checked_quickly() {
        // 30 appends in flight together, then one read: without positions the search would
        // try orders of 30 appends.
        let mut h = Vec::new();
        for i in 0..30u64 {
            h.push(inv(i + 1, i + 1, append(i)));
        }
        for i in 0..30u64 {
            h.push(ok(i + 1, ListRet::Appended));
        }
        let order: Vec<u64> = (0..30).rev().collect();
        h.push(inv(100, 100, ListOp::Read));
        h.push(ok(100, ListRet::Values(order.clone())));
        let started = std::time::Instant::now();
        assert_eq!(verdict(List::default(), &placed(&h, &order)), Verdict::Linearizable);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h: Vec<Event<RegOp, RegRet>> = Vec::new();
        for key in 1..=3u64 {
            h.push(Event::Invoke { op_id: key * 10, process: key, key, op: RegOp::Create(key) });
            h.push(ok(key * 10, RegRet::Created));
        }
        h.push(Event::Invoke { op_id: 99, process: 9, key: 2, op: RegOp::Read });
        h.push(ok(99, RegRet::Value(Some(3))));
        let r = check_linearizable(Register::default(), &h, 2, Duration::from_secs(10));
        assert_eq!(r.keys, 3);
        let bad: Vec<u64> = r.failures().map(|(k, _)| *k).collect();
        assert_eq!(bad, vec![2]);
    }

    #[test]
    fn lost_unexpected_and_duplicated_appends_are_reported() {
        let acked: BTreeSet<u64> = [1, 2, 3].into();
        let attempted: BTreeSet<u64> = [1, 2, 3, 4].into();
        let r = check_appends(&acked, &attempted, &[1, 3, 4, 4, 7]);
        assert_eq!(r.lost, vec![2]);
        assert_eq!(r.unexpected, vec![7]);
        assert_eq!(r.duplicated, vec![4]);
        assert_eq!(
            check_appends(&acked, &attempted, &[3, 2, 1]),
            AppendReport { acknowledged: 3, present: 3, ..AppendReport::default() }
        );
    }

    #[test]
    fn tail_gaps_duplicates_and_reordering_are_caught() {
        let e = |index, id| TailEvent { index, offset: 0, id };
        assert_eq!(check_tail(&[e(5, 1), e(9, 2)], &[1, 2]), Ok(()));
        assert!(check_tail(&[e(5, 1)], &[1, 2]).unwrap_err().contains("missing"));
        assert!(check_tail(&[e(5, 1), e(9, 1)], &[1]).unwrap_err().contains("twice"));
        assert!(check_tail(&[e(9, 2), e(5, 1)], &[1, 2]).unwrap_err().contains("backwards"));
        assert!(check_tail(&[e(5, 2), e(9, 1)], &[1, 2]).unwrap_err().contains("another order"));
    }
}

//! Read leases: a leader that confirmed its leadership with a quorum at time `t` serves
//! linearizable reads of the group without another round until shortly before
//! `t + leader_lease`, so a statement's read barrier on a group this node leads costs no round
//! trip (every statement's catalog barrier included: a write then pays one quorum round, its
//! own, as in etcd).
//!
//! Why no other leader can exist meanwhile: each voter that acknowledged the round's
//! heartbeats (sent after `t`) refuses to vote for anyone until `leader_lease` after it received
//! them (openraft's leader lease), and a majority acknowledged it, so no candidate can gather a
//! majority before `t + leader_lease`. openraft leaves three gaps, closed here:
//! - a voter that restarts forgets when it last heard from the leader: a node neither votes
//!   nor stands for election for `leader_lease` after it starts (`Groups::may_vote`,
//!   `watch_leadership`);
//! - a leader's own vote is not covered by its lease: while it holds a read lease it refuses
//!   other candidates' vote requests (`Groups::may_vote`);
//! - a leadership handover asks the leader for its vote on purpose: closing the write gate
//!   for a handover ends the lease, and no lease is taken or used while the gate is closed.
//!
//! A membership or term change also ends the lease (the quorum it was confirmed by may no
//! longer be one). The lease is [`LEASE_SHARE_PCT`] of openraft's, for clock rate differences
//! between machines. `raft.lease_reads = false` turns leases off: every read then confirms
//! leadership with a round, as before.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use kalamdb_log::types::{LogId, NodeId};

/// The share of openraft's leader lease a read lease lasts, in percent.
pub const LEASE_SHARE_PCT: u32 = 80;

/// A group leader's read lease on this node.
#[derive(Debug, Default)]
pub struct ReadLease(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    held: Option<Held>,
    /// Bumped by every [`ReadLease::end`]: a round that started before an end cannot renew.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    until: Instant,
    term: u64,
    membership: Option<LogId>,
}

/// What a leader knows of itself when a round starts or a read is served (from its metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leading {
    pub term: u64,
    pub membership: Option<LogId>,
    pub last_log_index: u64,
}

impl Leading {
    /// This node's view of the group if it leads it, else `None`.
    pub fn of(raft: &kalamdb_log::types::Raft, me: NodeId) -> Option<Leading> {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_leader == Some(me)).then(|| Leading {
            term: m.current_term,
            membership: m.membership_config.log_id().as_ref().copied(),
            last_log_index: m.last_log_index.unwrap_or(0),
        })
    }
}

impl ReadLease {
    /// The generation a round starting now must present to [`ReadLease::renew`].
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A round started at `started` (generation `generation`, while leading as `at`) was
    /// confirmed by a quorum: hold the lease until `started + length`.
    pub fn renew(&self, generation: u64, started: Instant, length: Duration, at: Leading) {
        let mut s = self.lock();
        if s.generation == generation {
            s.held = Some(Held { until: started + length, term: at.term, membership: at.membership });
        }
    }

    /// The read index a read may use without a round: every entry this leader holds (those
    /// committed before the read began are among them), when the lease still holds for the
    /// term and membership it was confirmed in.
    pub fn read_index(&self, now: Instant, at: Leading) -> Option<u64> {
        let s = self.lock();
        let h = s.held?;
        (now < h.until && h.term == at.term && h.membership == at.membership).then_some(at.last_log_index)
    }

    /// Whether a lease is held at `now` (for any term: a vote request is refused meanwhile).
    pub fn held(&self, now: Instant) -> bool {
        self.lock().held.is_some_and(|h| now < h.until)
    }

    /// End the lease now (a handover begins); rounds already started cannot renew it.
    pub fn end(&self) {
        let mut s = self.lock();
        s.held = None;
        s.generation += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The length of a read lease given openraft's leader lease.
pub fn lease_length(leader_lease: Duration) -> Duration {
    leader_lease * LEASE_SHARE_PCT / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(term: u64, last: u64) -> Leading {
        Leading { term, membership: None, last_log_index: last }
    }

    #[test]
    fn a_lease_serves_reads_until_it_runs_out() {
        let lease = ReadLease::default();
        let t0 = Instant::now();
        let len = lease_length(Duration::from_millis(600));
        assert_eq!(len, Duration::from_millis(480));
        assert_eq!(lease.read_index(t0, at(3, 10)), None, "no round yet");
        lease.renew(lease.generation(), t0, len, at(3, 10));
        // The index is the leader's newest entry at read time, not at the round.
        assert_eq!(lease.read_index(t0 + Duration::from_millis(100), at(3, 12)), Some(12));
        assert!(lease.held(t0 + Duration::from_millis(479)));
        assert_eq!(lease.read_index(t0 + len, at(3, 12)), None, "expired");
        assert!(!lease.held(t0 + len));
    }

    #[test]
    fn term_membership_and_handovers_end_it() {
        let lease = ReadLease::default();
        let t0 = Instant::now();
        let len = Duration::from_millis(480);
        lease.renew(lease.generation(), t0, len, at(3, 10));
        assert_eq!(lease.read_index(t0, at(4, 10)), None, "another term");
        let moved = Leading { membership: Some(LogId::default()), ..at(3, 10) };
        assert_eq!(lease.read_index(t0, moved), None, "another membership");
        // A round that began before a handover's end does not bring the lease back.
        let before = lease.generation();
        lease.end();
        assert!(!lease.held(t0));
        lease.renew(before, t0, len, at(3, 10));
        assert_eq!(lease.read_index(t0, at(3, 10)), None);
        lease.renew(lease.generation(), t0, len, at(3, 10));
        assert_eq!(lease.read_index(t0, at(3, 10)), Some(10));
    }
}

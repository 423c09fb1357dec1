//! Prometheus metrics: the recorder (histogram buckets), a description of every metric the
//! node exports (so `promtool check metrics` finds help text for each), the per-group Raft
//! gauges sampled from openraft, the HTTP request layer, and process memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::groups::Groups;

/// How often the Raft gauges are refreshed from openraft's metrics.
pub const RAFT_SAMPLE_MS: u64 = 1_000;

/// Buckets of latency histograms (seconds): 50 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Buckets of count histograms (ops per entry, reads per round, appends per fsync).
const COUNT_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// Install the process-wide recorder (once; a second call, as in tests that start several
/// servers in one process, returns `None`) and describe every metric.
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets(&COUNT_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS))
        .ok()?;
    let handle = builder.install_recorder().ok()?;
    describe();
    Some(handle)
}

fn describe() {
    describe_counter!("kalamdb_http_requests_total", "HTTP requests answered, by route, method and status.");
    describe_histogram!(
        "kalamdb_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (to the response head for streams), by route."
    );
    describe_counter!("kalamdb_sql_statements_total", "SQL statements executed successfully, by kind.");
    describe_counter!("kalamdb_sql_errors_total", "API errors returned, by error code.");
    describe_counter!("kalamdb_auth_failures_total", "Requests refused for bad credentials.");
    describe_gauge!("kalamdb_raft_term", "Current Raft term of the group on this node.");
    describe_gauge!("kalamdb_raft_is_leader", "1 if this node leads the group, else 0.");
    describe_gauge!("kalamdb_raft_commit_index", "Commit index of the group as this node knows it.");
    describe_gauge!("kalamdb_raft_applied_index", "Last log index this node applied to the group's projection.");
    describe_gauge!("kalamdb_raft_last_log_index", "Last log index in this node's log of the group.");
    describe_gauge!(
        "kalamdb_group_apply_format",
        "The group's apply format as this node applied it (see storage.apply_format_max)."
    );
    describe_gauge!(
        "kalamdb_raft_snapshot_index",
        "Last log index the group's current snapshot on this node covers (0: none yet)."
    );
    describe_gauge!(
        "kalamdb_raft_purged_index",
        "Last log index purged from this node's log of the group (0: none yet)."
    );
    describe_gauge!(
        "kalamdb_raft_replication_lag_entries",
        "Entries a follower is behind the leader's last log index (reported by the leader), by peer."
    );
    describe_counter!(
        "kalamdb_raft_elections_total",
        "Term changes this node has seen in the group (each is an election)."
    );
    describe_counter!(
        "kalamdb_leader_transfers_total",
        "Leadership handovers this node started as leader, by outcome (done, timeout, refused, unreachable)."
    );
    describe_counter!("kalamdb_log_appended_entries_total", "Log entries appended to this node's log.");
    describe_counter!("kalamdb_log_appended_bytes_total", Unit::Bytes, "Bytes of log entries appended.");
    describe_histogram!("kalamdb_log_fsync_seconds", Unit::Seconds, "Duration of one WAL fsync.");
    describe_histogram!(
        "kalamdb_log_append_seconds",
        Unit::Seconds,
        "Time from a log append until the fsync that makes it durable."
    );
    describe_histogram!("kalamdb_log_fsync_batch_appends", "Appends made durable by one fsync (group commit).");
    describe_histogram!("kalamdb_group_commit_ops", "Client ops carried by one proposed log entry.");
    describe_histogram!("kalamdb_read_index_batch", "Linearizable reads answered by one read-index round.");
    describe_counter!(
        "kalamdb_read_index_rounds_total",
        "Read indexes this node answered as a group's leader: kind=quorum after a round, kind=lease under its read lease."
    );
    describe_counter!("kalamdb_storage_jobs_total", "Flush and compaction jobs applied on this node, per scope.");
    describe_counter!("kalamdb_storage_job_rows_total", "Rows written to Parquet by flush and compaction jobs.");
    describe_counter!(
        "kalamdb_storage_job_bytes_total",
        Unit::Bytes,
        "Parquet bytes written by flush and compaction jobs."
    );
    describe_counter!("kalamdb_storage_job_files_total", "Parquet files written by flush and compaction jobs.");
    describe_histogram!("kalamdb_storage_job_seconds", Unit::Seconds, "Duration of applying a flush or compaction.");
    describe_histogram!(
        "kalamdb_storage_prepare_seconds",
        Unit::Seconds,
        "Duration of writing a prepared flush's files, off apply (PrepareFlush)."
    );
    describe_histogram!(
        "kalamdb_storage_prepare_wait_seconds",
        Unit::Seconds,
        "Time a FlushUpto held apply waiting for this node's preparation to finish."
    );
    describe_counter!(
        "kalamdb_storage_flushes_total",
        "FlushUpto entries applied, by whether they named a preparation's files (read=prepared) or read their rows inside apply (read=in_apply)."
    );
    describe_histogram!(
        "kalamdb_storage_reclaim_seconds",
        Unit::Seconds,
        "Duration of compacting a settled table's hot-row range and writing out the memtables, off apply."
    );
    describe_counter!(
        "kalamdb_storage_reclaims_skipped_total",
        "Settled tables whose space reclaim was skipped because the reclaim queue was full."
    );
    describe_counter!(
        "kalamdb_storage_settled_rows_total",
        "Flushed hot rows replaced by their key stubs by Settle ops (bounded, after each flush)."
    );
    describe_counter!("kalamdb_storage_uploaded_bytes_total", Unit::Bytes, "Cold file bytes uploaded to the bucket.");
    describe_counter!(
        "kalamdb_storage_upload_errors_total",
        "Failed passes of the bucket uploader (files stay queued)."
    );
    describe_gauge!("kalamdb_storage_upload_queue_files", "Cold files written locally and not yet in the bucket.");
    describe_gauge!("kalamdb_storage_cache_bytes", Unit::Bytes, "Bytes of bucket files cached on this node.");
    describe_counter!("kalamdb_storage_cache_fetches_total", "Cold files fetched from the bucket into the cache.");
    describe_counter!(
        "kalamdb_cold_lookup_manifests_total",
        "Scope file lists keyed reads of flushed rows took from the lookup cache (hit) or read (read)."
    );
    describe_counter!(
        "kalamdb_cold_lookup_pages_total",
        "Pages keyed reads of flushed rows took from the lookup cache (hit) or decoded from their file (read)."
    );
    describe_counter!(
        "kalamdb_storage_cache_fetched_bytes_total",
        Unit::Bytes,
        "Bytes fetched from the bucket into the cache."
    );
    describe_counter!(
        "kalamdb_storage_cache_evicted_bytes_total",
        Unit::Bytes,
        "Bytes of uploaded files evicted from the cache."
    );
    describe_counter!("kalamdb_stream_evictions_total", "TTL evictions of STREAM table rows proposed by this node.");
    describe_gauge!("kalamdb_tail_subscribers", "Open tail subscriptions on this node.");
    describe_counter!("kalamdb_tail_events_total", "Change events queued to tail subscribers.");
    describe_histogram!(
        "kalamdb_tail_delivery_lag_seconds",
        Unit::Seconds,
        "Time from the leader's commit stamp of a chunk's oldest change to its hand-over to the subscriber's connection."
    );
    describe_histogram!(
        "kalamdb_apply_lag_seconds",
        Unit::Seconds,
        "Time from the leader's commit stamp of an entry to its apply on this node (on a follower, plus the clock offset)."
    );
    describe_counter!(
        "kalamdb_tail_dropped_total",
        "Tail subscribers disconnected: overflow (too slow) or gone (position trimmed)."
    );
    describe_counter!("kalamdb_tail_refused_total", "Tail subscriptions refused: gone (410) or limit (503).");
    describe_counter!("kalamdb_transport_requests_total", "Node-to-node requests sent, by kind.");
    describe_histogram!(
        "kalamdb_transport_call_seconds",
        Unit::Seconds,
        "A node-to-node request answered, by kind: stream opened, request sent, answer read."
    );
    describe_histogram!(
        "kalamdb_transport_serve_seconds",
        Unit::Seconds,
        "Time the receiving node spent handling a request, by kind (network time excluded)."
    );
    describe_counter!("kalamdb_transport_frames_total", "Transport frames sent and received.");
    describe_counter!("kalamdb_transport_frame_bytes_total", Unit::Bytes, "Transport frame bytes sent and received.");
    describe_counter!(
        "kalamdb_transport_frames_rejected_total",
        "Transport frames refused (decode errors), by reason."
    );
    describe_counter!("kalamdb_transport_auth_failures_total", "Peer connections refused at the Hello handshake.");
    describe_gauge!("kalamdb_process_resident_memory_bytes", Unit::Bytes, "Resident memory of this process.");
    describe_gauge!("kalamdb_transport_peer_rtt_seconds", Unit::Seconds, "QUIC's smoothed round-trip time to a peer.");
    describe_gauge!(
        "kalamdb_transport_peer_datagrams",
        "UDP datagrams on the connection to a peer since it was dialed, by direction."
    );
    describe_gauge!("kalamdb_transport_peer_lost_packets", "Packets QUIC declared lost on the connection to a peer.");
}

/// Resident set size from `/proc/self/status` (Linux); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refresh what is sampled rather than counted, right before a scrape renders.
pub fn before_render() {
    if let Some(rss) = rss_bytes() {
        metrics::gauge!("kalamdb_process_resident_memory_bytes").set(rss as f64);
    }
}

/// Sample every group's Raft state into gauges until the process ends; also runs the
/// exporter's upkeep (histogram housekeeping).
pub async fn run_raft_sampler(groups: Arc<Groups>, handle: Option<PrometheusHandle>) {
    let mut tick = tokio::time::interval(Duration::from_millis(RAFT_SAMPLE_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terms: HashMap<u32, u64> = HashMap::new();
    loop {
        tick.tick().await;
        let status = groups.local_status();
        for g in &status.groups {
            let Some(id) = kalamdb_log::GroupId::from_u32(g.group) else { continue };
            let name = id.to_string();
            metrics::gauge!("kalamdb_raft_term", "group" => name.clone()).set(g.term as f64);
            let leads = g.leader == Some(status.node_id);
            metrics::gauge!("kalamdb_raft_is_leader", "group" => name.clone()).set(if leads { 1.0 } else { 0.0 });
            metrics::gauge!("kalamdb_raft_commit_index", "group" => name.clone()).set(g.commit_index as f64);
            metrics::gauge!("kalamdb_raft_applied_index", "group" => name.clone()).set(g.applied_index as f64);
            metrics::gauge!("kalamdb_raft_last_log_index", "group" => name.clone()).set(g.last_log_index as f64);
            for (peer, matched) in &g.matched {
                if *peer == status.node_id {
                    continue;
                }
                let lag = g.last_log_index.saturating_sub(*matched);
                metrics::gauge!("kalamdb_raft_replication_lag_entries", "group" => name.clone(), "peer" => peer.to_string())
                    .set(lag as f64);
            }
            // The first sample is the baseline: elections counted are the ones since start.
            let seen = terms.entry(g.group).or_insert(g.term);
            let counter = metrics::counter!("kalamdb_raft_elections_total", "group" => name);
            counter.increment(g.term.saturating_sub(*seen));
            *seen = (*seen).max(g.term);
        }
        for (id, g) in &groups.groups {
            let m = g.raft.metrics().borrow().clone();
            let name = id.to_string();
            metrics::gauge!("kalamdb_raft_snapshot_index", "group" => name.clone())
                .set(m.snapshot.map_or(0, |l| l.index) as f64);
            metrics::gauge!("kalamdb_raft_purged_index", "group" => name).set(m.purged.map_or(0, |l| l.index) as f64);
        }
        if let Some(transport) = &groups.transport {
            sample_peers(transport);
        }
        if let Some(h) = &handle {
            h.run_upkeep();
        }
    }
}

/// Round-trip time and packet counts of the connection to each peer this node dialed. The
/// counts restart with a new connection, so they are gauges, not counters.
fn sample_peers(transport: &kalamdb_transport::Transport) {
    for peer in transport.peers() {
        let Some(s) = transport.peer_stats(peer) else { continue };
        let peer = peer.to_string();
        metrics::gauge!("kalamdb_transport_peer_rtt_seconds", "peer" => peer.clone()).set(s.rtt.as_secs_f64());
        metrics::gauge!("kalamdb_transport_peer_datagrams", "peer" => peer.clone(), "direction" => "sent")
            .set(s.datagrams_sent as f64);
        metrics::gauge!("kalamdb_transport_peer_datagrams", "peer" => peer.clone(), "direction" => "received")
            .set(s.datagrams_received as f64);
        metrics::gauge!("kalamdb_transport_peer_lost_packets", "peer" => peer).set(s.lost_packets as f64);
    }
}

/// The route label of a request: the matched route pattern, so label values stay bounded.
fn route_of(req: &Request) -> String {
    req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string())
}

/// Count every request and time it (axum middleware).
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = route_of(&req);
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("kalamdb_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("kalamdb_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    resp
}

/// The method label: the standard methods by name, anything else as `other`, so junk methods
/// cannot add series without bound.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    /// Every metric the shipped Grafana dashboard queries is one this module describes.
    #[test]
    fn the_dashboard_queries_only_exported_metrics() {
        let dashboard = include_str!("../../deploy/grafana/dashboards/kalamdb.json");
        let source = include_str!("metrics.rs");
        let v: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is JSON");
        let mut checked = 0;
        for panel in v["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for (i, _) in expr.match_indices("kalamdb_") {
                    let name: String =
                        expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name)
                        .to_string();
                    assert!(source.contains(&format!("\"{base}\"")), "dashboard uses undescribed metric {name}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} metric references found");
    }
}

//! The log-tailing endpoint, `GET /v1/api/tail`: committed changes of a table, a namespace or
//! a whole group, as Server-Sent Events or NDJSON, read from this node's change records.
//!
//! Positions are log positions, the same on every node (apply is deterministic), so a client
//! resumes on any node with the id of the last event it saw (`Last-Event-ID` or `?from=`).
//! An event id is the subscription's *cursor* after that event, one `group@index[.change]`
//! per group, comma-separated: `group@i` means every change of the entries up to `i` was
//! seen; `group@i.k` means the entries before `i` and changes `0..=k` of entry `i` (see [`Pos`]).
//!
//! Memory is bounded: each subscriber reads records in chunks straight from RocksDB into a
//! channel of `tail.subscriber_buffer_events` events. A subscriber whose channel stays full
//! for `tail.stall_ms` has fallen behind: the events already queued are delivered, then a
//! final `overflow` event with the cursor to resume from, and the stream ends.

mod cache;
pub mod guard;

pub use cache::{RECORD_CACHE_BYTES_MAX, RECORD_CACHE_ENTRIES_MAX, TailState};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kalamdb_log::{GroupId, MetaGroup, Role, TableDef, TableType};
use kalamdb_projections::changes::{self, Change, ChangeEntry, ChangeKind};
use kalamdb_query::{ExecContext, QueryResult, RowFilter, access};
use serde::Deserialize;
use serde_json::{Map, Value as J, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{App, error_response};
use crate::config::TailConfig;

/// Change records read from RocksDB per step of a subscriber.
pub const READ_ENTRIES_MAX: usize = 256;
/// Events sent to a subscriber in one chunk at most; the subscriber's channel holds
/// `tail.subscriber_buffer_events / EVENTS_PER_CHUNK_MAX` chunks (at least one).
pub const EVENTS_PER_CHUNK_MAX: u64 = 64;
/// Rows `last_rows` may ask for.
pub const LAST_ROWS_MAX: u64 = 10_000;
/// Attempts at reading `last_rows` with no write applied meanwhile (an exact snapshot).
const LAST_ROWS_ATTEMPTS_MAX: usize = 5;
/// Largest log index a position may name: far past any real log, and `index + 1` cannot
/// overflow.
pub const POSITION_INDEX_MAX: u64 = i64::MAX as u64;
/// Longest `from` / `Last-Event-ID` accepted.
pub const POSITION_BYTES_MAX: usize = 1024;

/// Where a subscriber is in one group: every change of entries `< index` is delivered, and
/// of entry `index` the changes up to `offset` (all of them when `offset` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub index: u64,
    pub offset: Option<u32>,
}

impl Pos {
    /// The first entry that may still hold undelivered changes.
    fn next_entry(self) -> u64 {
        if self.offset.is_some() { self.index } else { self.index + 1 }
    }
}

/// A subscription's position in each of its groups.
pub type Cursor = BTreeMap<GroupId, Pos>;

pub fn format_cursor(c: &Cursor) -> String {
    let mut out = String::new();
    for (i, (g, p)) in c.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{g}@{}", p.index);
        if let Some(o) = p.offset {
            let _ = write!(out, ".{o}");
        }
    }
    out
}

/// Parse a cursor; a bare number is accepted for single-group subscriptions.
pub fn parse_cursor(text: &str, groups: &[GroupId]) -> Result<Cursor, String> {
    let text = text.trim();
    if text.len() > POSITION_BYTES_MAX {
        return Err(format!("a position is at most {POSITION_BYTES_MAX} bytes"));
    }
    let parse_pos = |s: &str| -> Result<Pos, String> {
        let (index, offset) = match s.split_once('.') {
            Some((i, o)) => (i, Some(o.parse::<u32>().map_err(|_| format!("bad change offset in '{s}'"))?)),
            None => (s, None),
        };
        let index: u64 = index.parse().map_err(|_| format!("bad log index in '{s}'"))?;
        if index > POSITION_INDEX_MAX {
            return Err(format!("log index {index} in '{s}' is out of range (at most {POSITION_INDEX_MAX})"));
        }
        Ok(Pos { index, offset })
    };
    let mut c = Cursor::new();
    if !text.contains('@') {
        let [g] = groups else {
            return Err("this subscription spans several groups: give group@index for each".into());
        };
        c.insert(*g, parse_pos(text)?);
        return Ok(c);
    }
    for part in text.split(',') {
        let (g, p) = part.split_once('@').ok_or_else(|| format!("expected group@index, got '{part}'"))?;
        let g = GroupId::parse(g.trim()).ok_or_else(|| format!("unknown group '{g}'"))?;
        if !groups.contains(&g) {
            return Err(format!("group {g} is not part of this subscription"));
        }
        c.insert(g, parse_pos(p.trim())?);
    }
    if let Some(missing) = groups.iter().find(|g| !c.contains_key(g)) {
        return Err(format!("the position names no index for group {missing}"));
    }
    Ok(c)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    table: Option<String>,
    namespace: Option<String>,
    group: Option<String>,
    from: Option<String>,
    last_rows: Option<u64>,
    #[serde(rename = "where")]
    filter: Option<String>,
    /// `sse` or `ndjson`; the `Accept` header decides when absent.
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

/// What a subscription selects.
enum Target {
    Table { def: Arc<TableDef>, scope: String, filter: Option<RowFilter> },
    Namespace { name: String },
    Group,
}

struct Subscription {
    app: Arc<App>,
    target: Target,
    /// The caller, for access checks per event; `role` follows changes of the user's role.
    user_id: String,
    role: Role,
    entitlement: guard::Entitlement,
    format: Format,
    cursor: Cursor,
    /// Per group, the position of the last event queued: the overflow notice names it (the
    /// id the client saw last) rather than the equal entry-level cursor after it.
    delivered: Cursor,
}

/// Query-component characters kept as they are: RFC 3986's unreserved set.
const URL_COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encode a URL query component (everything but RFC 3986 unreserved characters).
pub fn url_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_COMPONENT).to_string()
}

/// A `SUBSCRIBE TO` answer in KalamDB's shape, which its CLI turns into a `/v1/ws`
/// subscription: `status` `subscription_required`, the `ws_url` to connect to (from the
/// request's `Host`), the `subscription` (`id`, `sql`, `options`) and a `message`; then ours:
/// the tail endpoint's URL for the same subscription (`stream_url`), the table and the filter.
pub fn subscription_result(sub: &kalamdb_query::Subscription, host: Option<&str>) -> QueryResult {
    let mut url = format!("/v1/api/tail?table={}", url_component(&sub.table));
    if let Some(f) = &sub.filter {
        url.push_str(&format!("&where={}", url_component(f)));
    }
    if let Some(n) = sub.last_rows {
        url.push_str(&format!("&last_rows={n}"));
    }
    if let Some(f) = &sub.from {
        url.push_str(&format!("&from={}", url_component(f)));
    }
    // The live query the WebSocket subscription runs: built from the table's quoted name and
    // the filter as the engine re-rendered it from its parsed form.
    let quoted: Vec<String> = sub.table.splitn(2, '.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect();
    let mut sql = format!("SELECT * FROM {}", quoted.join("."));
    if let Some(f) = &sub.filter {
        sql.push_str(&format!(" WHERE {f}"));
    }
    let mut options = Map::new();
    if let Some(n) = sub.last_rows {
        options.insert("last_rows".into(), J::from(n));
        options.insert("batch_size".into(), J::from(n.max(1)));
    }
    let id = format!("sub-{}", sub.table.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    let ws_url = host.map_or_else(|| "/v1/ws".to_string(), |h| format!("ws://{h}/v1/ws"));
    let cols = vec![
        ("status".into(), "Text".into()),
        ("ws_url".into(), "Text".into()),
        ("subscription".into(), "Json".into()),
        ("message".into(), "Text".into()),
        ("stream_url".into(), "Text".into()),
        ("table".into(), "Text".into()),
        ("filter".into(), "Text".into()),
    ];
    let row = vec![
        J::String("subscription_required".into()),
        J::String(ws_url),
        json!({"id": id, "sql": sql, "options": options}),
        J::String("Connect to ws_url and send this subscription, or follow stream_url (SSE/NDJSON).".into()),
        J::String(url),
        J::String(sub.table.clone()),
        sub.filter.clone().map_or(J::Null, J::String),
    ];
    QueryResult::rows(cols, vec![row])
}

fn bad_request(code: &str, message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, code, message, Instant::now())
}

/// `GET /v1/api/tail`.
pub async fn tail(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let start = Instant::now();
    let (who, _) = match crate::api::identify(&app, &headers, client, start).await {
        Ok(w) => w,
        Err(resp) => return resp,
    };
    let q = match axum::extract::Query::<TailQuery>::try_from_uri(&uri) {
        Ok(q) => q.0,
        Err(e) => return bad_request("INVALID_REQUEST", &format!("tail query: {}", e.body_text())),
    };
    let format = match q.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("sse") => Format::Sse,
        Some("ndjson") => Format::Ndjson,
        Some(other) => return bad_request("INVALID_REQUEST", &format!("format must be sse or ndjson, got '{other}'")),
        None => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            if accept.contains("application/x-ndjson") || accept.contains("application/jsonl") {
                Format::Ndjson
            } else {
                Format::Sse
            }
        }
    };
    let groups = &app.groups;
    // A table created through another node a moment ago exists here too: the catalog is read
    // at (at least) its committed position, as a linearizable SELECT would.
    if groups.is_cluster()
        && let Err(e) = groups.read_barrier(GroupId::Meta(MetaGroup::Catalog)).await
    {
        return crate::api::query_error_response(&kalamdb_query::Error::from(e), start);
    }
    let chosen = [q.table.is_some(), q.namespace.is_some(), q.group.is_some()].iter().filter(|b| **b).count();
    if chosen != 1 {
        return bad_request("INVALID_REQUEST", "give exactly one of ?table=ns.t, ?namespace=ns or ?group=<group>");
    }
    if q.filter.is_some() && q.table.is_none() {
        return bad_request("INVALID_REQUEST", "?where= filters a table subscription (?table=ns.t)");
    }
    if q.last_rows.is_some() && q.table.is_none() {
        return bad_request("INVALID_REQUEST", "?last_rows= applies to a table subscription (?table=ns.t)");
    }
    let (target, group_ids): (Target, Vec<GroupId>) = if let Some(t) = &q.table {
        let (ns, name) = t.split_once('.').unwrap_or((kalamdb_query::engine::DEFAULT_NAMESPACE, t.as_str()));
        let Some(def) = groups.catalog.table(ns, name) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "TABLE_NOT_FOUND",
                &format!("Table '{ns}.{name}' does not exist"),
                start,
            );
        };
        if let Err(e) = access::check_read(who.role, &def) {
            return error_response(StatusCode::FORBIDDEN, e.code(), &e.to_string(), start);
        }
        let filter = match q.filter.as_deref().map(|f| RowFilter::parse(f, &def)).transpose() {
            Ok(f) => f,
            Err(e) => return bad_request(e.code(), &e.to_string()),
        };
        let (group, scope) = groups.layout.table_location(&def, &who.user_id);
        (Target::Table { def, scope, filter }, vec![group])
    } else if let Some(ns) = &q.namespace {
        if !groups.catalog.namespace_exists(ns) {
            return error_response(
                StatusCode::NOT_FOUND,
                "NAMESPACE_NOT_FOUND",
                &format!("Namespace '{ns}' does not exist"),
                start,
            );
        }
        let mut ids = vec![GroupId::Meta(MetaGroup::Catalog)];
        ids.extend(groups.layout.all().into_iter().filter(|g| matches!(g, GroupId::SharedShard(_))));
        ids.push(groups.layout.user_shard(&who.user_id));
        (Target::Namespace { name: ns.clone() }, ids)
    } else {
        let text = q.group.as_deref().unwrap_or_default();
        let Some(g) = GroupId::parse(text).filter(|g| groups.groups.contains_key(g)) else {
            return bad_request(
                "INVALID_REQUEST",
                &format!("unknown group '{text}' (e.g. meta:catalog, user:0, shared:0)"),
            );
        };
        // A whole group holds every user's rows: change data capture for administrators.
        if let Err(e) = access::require(who.role, Role::Dba, "tailing a whole group") {
            return error_response(StatusCode::FORBIDDEN, e.code(), &e.to_string(), start);
        }
        (Target::Group, vec![g])
    };

    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let from = last_event_id.or(q.from.clone());
    if from.is_some() && q.last_rows.is_some() {
        return bad_request(
            "INVALID_REQUEST",
            "?last_rows= starts from the newest rows: it cannot be combined with a position",
        );
    }
    if q.last_rows.is_some_and(|n| n > LAST_ROWS_MAX) {
        return bad_request("INVALID_REQUEST", &format!("last_rows is at most {LAST_ROWS_MAX}"));
    }
    let db = groups.rows.db().clone();
    let applied_of = |g: &GroupId| groups.groups.get(g).map_or(0, |x| *x.applied.borrow());
    let mut cursor: Cursor = match from.as_deref().map(str::trim) {
        None | Some("latest") => group_ids.iter().map(|g| (*g, Pos { index: applied_of(g), offset: None })).collect(),
        Some("earliest") => {
            let mut c = Cursor::new();
            for g in &group_ids {
                match changes::floor(&db, *g) {
                    Ok(f) => c.insert(*g, Pos { index: f.saturating_sub(1), offset: None }),
                    Err(e) => {
                        return error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "INTERNAL_ERROR",
                            &e.to_string(),
                            start,
                        );
                    }
                };
            }
            c
        }
        Some(text) => match parse_cursor(text, &group_ids) {
            Ok(c) => c,
            Err(m) => return bad_request("INVALID_POSITION", &m),
        },
    };
    // Positions this node no longer has: 410 with the oldest it can serve.
    let mut gone = Vec::new();
    for (g, p) in &cursor {
        let floor = changes::floor(&db, *g).unwrap_or(1);
        if p.next_entry() < floor {
            gone.push((*g, floor));
        }
    }
    if !gone.is_empty() {
        let mut oldest = cursor.clone();
        for (g, floor) in &gone {
            oldest.insert(*g, Pos { index: floor.saturating_sub(1), offset: None });
        }
        let oldest = format_cursor(&oldest);
        let what: Vec<String> = gone.iter().map(|(g, f)| format!("{g} keeps changes from index {f}")).collect();
        metrics::counter!("kalamdb_tail_refused_total", "reason" => "gone").increment(1);
        let body = json!({
            "status": "error",
            "results": [],
            "took": 0.0,
            "error": {
                "code": "POSITION_GONE",
                "message": format!("the requested position is older than this node retains ({}); resume from {oldest}", what.join(", ")),
                "details": {"oldest": oldest},
            },
        });
        return (StatusCode::GONE, axum::Json(body)).into_response();
    }

    let state = &app.tail_state;
    let cfg = app.tail.clone();
    match state.slots.acquire(&who.user_id, cfg.subscribers_max, cfg.subscribers_per_user_max) {
        Ok(()) => {}
        Err(guard::Refusal::Node(max)) => {
            metrics::counter!("kalamdb_tail_refused_total", "reason" => "limit").increment(1);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOO_MANY_SUBSCRIBERS",
                &format!("this node serves at most {max} subscribers"),
                start,
            );
        }
        Err(guard::Refusal::User(max)) => {
            metrics::counter!("kalamdb_tail_refused_total", "reason" => "user_limit").increment(1);
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_SUBSCRIBERS",
                &format!(
                    "a user may have at most {max} subscriptions open on one node (tail.subscribers_per_user_max)"
                ),
                start,
            );
        }
    }
    let guard = ActiveGuard(app.clone(), who.user_id.clone());
    metrics::gauge!("kalamdb_tail_subscribers").set(state.slots.active() as f64);

    let chunks = (cfg.subscriber_buffer_events / EVENTS_PER_CHUNK_MAX as usize).max(1);
    let (tx, rx) = mpsc::channel::<Out>(chunks);
    let (last_tx, last_rx) = oneshot::channel::<Bytes>();
    let mut initial = Vec::new();
    if let (Some(n), Target::Table { def, filter, .. }) = (q.last_rows, &target) {
        match last_rows(&app, def, filter.as_ref(), n, &who.user_id, who.role, group_ids[0]).await {
            Ok((at, rows)) => {
                cursor.insert(group_ids[0], Pos { index: at, offset: None });
                initial = rows;
            }
            Err(resp) => return resp,
        }
    }
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let basic = authorization.is_some_and(|a| a.len() > 6 && a[..6].eq_ignore_ascii_case(b"basic "));
    let entitlement = guard::Entitlement {
        who: who.clone(),
        expires_at_secs: app.auth.bearer_expiry(authorization),
        basic_password_hash: if basic { app.auth.password_hash_of(&who.user_id) } else { None },
        token_ids: bearer_token(authorization).map(|t| app.auth.token_ids(t)).unwrap_or_default(),
    };
    let sub = Subscription {
        app: app.clone(),
        target,
        user_id: who.user_id.clone(),
        role: who.role,
        entitlement,
        format,
        cursor,
        delivered: Cursor::new(),
    };
    tokio::spawn(async move {
        let _guard = guard;
        run(sub, tx, last_tx, initial, cfg).await;
    });
    // Everything queued, then the final notice if there is one.
    let stream = futures::stream::unfold((rx, Some(last_rx)), |(mut rx, last)| async move {
        if let Some(out) = rx.recv().await {
            // The body writer takes the chunk now: the end of the server's part of the delay.
            if out.committed_at_micros > 0 {
                let lag_micros = kalamdb_log::command::now_micros().saturating_sub(out.committed_at_micros).max(0);
                metrics::histogram!("kalamdb_tail_delivery_lag_seconds").record(lag_micros as f64 / 1e6);
            }
            return Some((Ok::<_, Infallible>(out.bytes), (rx, last)));
        }
        let notice = last?.await.ok()?;
        Some((Ok(notice), (rx, None)))
    });
    let content_type = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    };
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies must not buffer a stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer_token(authorization: Option<&[u8]>) -> Option<&str> {
    let text = std::str::from_utf8(authorization?).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// A subscriber's slot (node and user caps, shared by tail streams and `/v1/ws`
/// subscriptions), given back when it ends.
pub(crate) struct ActiveGuard(pub(crate) Arc<App>, pub(crate) String);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let left = self.0.tail_state.slots.release(&self.1);
        metrics::gauge!("kalamdb_tail_subscribers").set(left as f64);
    }
}

/// The newest `n` rows of the table (oldest first) and the log index they are a snapshot of.
/// Read with the caller's identity through the query engine (hot and cold rows alike).
async fn last_rows(
    app: &App,
    def: &TableDef,
    filter: Option<&RowFilter>,
    n: u64,
    user_id: &str,
    role: Role,
    group: GroupId,
) -> Result<(u64, Vec<J>), Response> {
    let Some(applied) = app.groups.applied_watch(group) else {
        return Err(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "group not hosted",
            Instant::now(),
        ));
    };
    let ctx = ExecContext {
        user_id: user_id.to_string(),
        role,
        namespace: None,
        params: Vec::new(),
        barrier: None,
        impersonated_by: None,
        batch: None,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = *applied.borrow();
        let result = app.engine.last_rows(def, filter, n, &ctx).await;
        let after = *applied.borrow();
        let results = match result {
            Ok(r) => r,
            Err(e) => {
                return Err(crate::api::query_error_response(&e, Instant::now()));
            }
        };
        // Nothing applied during the read: the rows are exactly the state at `before`.
        // Otherwise retry; at the last attempt keep only versions written by `before`
        // (newer ones arrive as events).
        if before != after && attempt < LAST_ROWS_ATTEMPTS_MAX {
            continue;
        }
        let rows = results.rows.unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().rev() {
            // `_seq` is a BIGINT cell: a string.
            let seq = row.last().and_then(J::as_str).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            if seq >> kalamdb_projections::stored::SEQ_ORDINAL_BITS > before {
                continue;
            }
            let mut obj = Map::new();
            for ((_, c), v) in def.visible_columns().zip(row) {
                obj.insert(c.name.clone(), v);
            }
            out.push(json!({"type": "initial", "table": format!("{}.{}", def.namespace, def.name), "op": "initial", "row": obj, "_seq": seq.to_string()}));
        }
        return Ok((before, out));
    }
}

impl Subscription {
    /// End the subscription if its caller may no longer follow it; else take up a changed role.
    fn recheck(&mut self) -> Result<(), Stop> {
        let (table, whole_group) = match &self.target {
            Target::Table { def, .. } => (Some(def.as_ref()), false),
            Target::Namespace { .. } => (None, false),
            Target::Group => (None, true),
        };
        self.role = self.entitlement.recheck(&self.app.auth, table, whole_group).map_err(Stop::Revoked)?;
        Ok(())
    }

    /// Where to resume if the next event cannot be queued: the last event queued when the
    /// cursor only moved to the end of that event's entry since (the same position, written as
    /// the id the client last saw), else the cursor.
    fn resume_point(&self, g: GroupId) -> Pos {
        let cursor = self.cursor[&g];
        match self.delivered.get(&g) {
            Some(d) if d.index == cursor.index && cursor.offset.is_none() => *d,
            _ => cursor,
        }
    }

    /// The table and scope of an unfiltered table subscription: every subscriber of that
    /// scope sees the same changes, so they share one rendered block per entry.
    fn unfiltered_table(&self) -> Option<(&Arc<TableDef>, &str)> {
        match &self.target {
            Target::Table { def, scope, filter: None } => Some((def, scope)),
            _ => None,
        }
    }

    /// May this subscriber see the change, and under which table name?
    fn visible(&self, group: GroupId, c: &Change) -> Option<Option<Arc<TableDef>>> {
        match &self.target {
            Target::Table { def, scope, filter } => {
                if !in_table_scope(c, def.table_id, scope) {
                    return None;
                }
                if let Some(f) = filter {
                    let new_ok = !c.row.is_empty() && f.matches(&c.row);
                    let old_ok = c.old_row.as_deref().is_some_and(|r| f.matches(r));
                    if is_row_change(c) && !new_ok && !old_ok {
                        return None;
                    }
                }
                Some(Some(def.clone()))
            }
            Target::Namespace { name } => {
                if group == GroupId::Meta(MetaGroup::Catalog) {
                    return (c.namespace == *name).then_some(None);
                }
                let def = self.app.groups.catalog.table_by_id(c.table_id)?;
                if def.namespace != *name || !access::can_read(self.role, &def) {
                    return None;
                }
                if def.table_type != TableType::Shared && is_row_change(c) && c.scope != self.user_id {
                    return None;
                }
                Some(Some(def))
            }
            Target::Group => Some(self.app.groups.catalog.table_by_id(c.table_id)),
        }
    }

    fn frame(&self, event: &str, id: Option<&str>, body: &J) -> Bytes {
        match self.format {
            Format::Sse => {
                let mut s = String::new();
                if let Some(id) = id {
                    let _ = writeln!(s, "id: {id}");
                }
                let _ = write!(s, "event: {event}\ndata: {body}\n\n");
                Bytes::from(s)
            }
            Format::Ndjson => Bytes::from(format!("{body}\n")),
        }
    }

    fn heartbeat(&self) -> Bytes {
        let applied: Map<String, J> = self.cursor.keys().map(|g| (g.to_string(), J::from(self.applied(*g)))).collect();
        let body = json!({"type": "heartbeat", "position": format_cursor(&self.cursor), "applied": applied});
        match self.format {
            Format::Sse => Bytes::from(format!(": heartbeat {body}\n\n")),
            Format::Ndjson => Bytes::from(format!("{body}\n")),
        }
    }

    fn applied(&self, g: GroupId) -> u64 {
        self.app.groups.applied_index(g)
    }
}

fn is_row_change(c: &Change) -> bool {
    matches!(c.kind, ChangeKind::Insert | ChangeKind::Update | ChangeKind::Delete)
}

/// A change of the table that a subscriber of `scope` sees: its rows in that scope, and
/// every change that is not a row's (DDL, flush).
fn in_table_scope(c: &Change, table_id: u64, scope: &str) -> bool {
    c.table_id == table_id && (!is_row_change(c) || c.scope == scope)
}

fn row_json(def: Option<&TableDef>, values: &[kalamdb_log::Value]) -> J {
    let mut obj = Map::new();
    for (i, v) in values.iter().enumerate() {
        let column = def.and_then(|d| d.columns.get(i));
        if column.is_some_and(|c| c.dropped) {
            continue;
        }
        let name = column.map_or_else(|| format!("column{}", i + 1), |c| c.name.clone());
        obj.insert(name, kalamdb_query::values::value_to_json(v));
    }
    // A row written before columns were added: they read their backfill.
    for c in def.map_or(&[][..], |d| d.columns.get(values.len()..).unwrap_or_default()).iter().filter(|c| !c.dropped) {
        let v = c.backfill.as_ref().unwrap_or(&kalamdb_log::Value::Null);
        obj.insert(c.name.clone(), kalamdb_query::values::value_to_json(v));
    }
    J::Object(obj)
}

fn event_json(
    group: GroupId,
    index: u64,
    offset: u32,
    id: &str,
    record: &ChangeEntry,
    c: &Change,
    def: Option<&TableDef>,
) -> J {
    let table = def.map(|d| format!("{}.{}", d.namespace, d.name));
    let committed_at = chrono::DateTime::from_timestamp_micros(record.committed_at_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let mut e = json!({
        "type": "change",
        "id": id,
        "position": {"group": group.to_string(), "index": index, "offset": offset},
        "table": table,
        "op": c.kind.name(),
        "committed_at": committed_at,
        "committed_at_micros": record.committed_at_micros,
    });
    let obj = e.as_object_mut().expect("an object literal");
    match c.kind {
        ChangeKind::Insert | ChangeKind::Update | ChangeKind::Delete => {
            let row = if c.kind == ChangeKind::Delete { J::Null } else { row_json(def, &c.row) };
            obj.insert("row".into(), row);
            obj.insert("old_row".into(), c.old_row.as_deref().map_or(J::Null, |r| row_json(def, r)));
            // BIGINT encoding, as in the rows: a `_seq` can pass 2^53.
            obj.insert("_seq".into(), J::String(c.seq.to_string()));
            if let Some(s) = c.old_seq {
                obj.insert("old_seq".into(), J::String(s.to_string()));
            }
            if c.expired {
                obj.insert("expired".into(), J::Bool(true));
            }
        }
        ChangeKind::Ddl | ChangeKind::Flush => {
            obj.insert("detail".into(), J::String(c.detail.clone()));
            if !c.namespace.is_empty() {
                obj.insert("namespace".into(), J::String(c.namespace.clone()));
            }
        }
    }
    e
}

/// Why a subscriber's stream ends early.
enum Stop {
    /// The client went away.
    Closed,
    /// The buffer is full: the client is too slow.
    Overflow,
    /// Records the subscriber still needs were trimmed.
    Gone(GroupId, u64),
    /// The subscriber may no longer follow: user dropped, right lost, token expired.
    Revoked(String),
}

/// What a subscriber's channel carries: frames for the body, and the commit stamp of the
/// oldest change among them (0: no change, e.g. a heartbeat) for the delivery-lag histogram.
struct Out {
    bytes: Bytes,
    committed_at_micros: i64,
}

impl From<Bytes> for Out {
    fn from(bytes: Bytes) -> Out {
        Out { bytes, committed_at_micros: 0 }
    }
}

/// Queue one frame; a channel that stays full for `stall` means the client fell behind.
async fn offer(tx: &mpsc::Sender<Out>, out: Out, stall: Duration) -> Result<(), Stop> {
    match tx.send_timeout(out, stall).await {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Stop::Overflow),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Closed),
    }
}

/// One subscriber: the initial rows, then every visible change after the cursor, live. The
/// final notice (overflow, gone) goes through `last`, after everything queued in `tx`.
async fn run(
    mut sub: Subscription,
    tx: mpsc::Sender<Out>,
    last: oneshot::Sender<Bytes>,
    initial: Vec<J>,
    cfg: TailConfig,
) {
    let stall = Duration::from_millis(cfg.stall_ms);
    let hello = json!({"type": "subscribed", "position": format_cursor(&sub.cursor)});
    let first = match sub.format {
        Format::Sse => Bytes::from(format!("retry: 1000\n: subscribed {hello}\n\n")),
        Format::Ndjson => Bytes::from(format!("{hello}\n")),
    };
    let mut outcome = offer(&tx, first.into(), stall).await;
    let id = format_cursor(&sub.cursor);
    for row in &initial {
        if outcome.is_err() {
            break;
        }
        outcome = offer(&tx, sub.frame("initial", Some(&id), row).into(), stall).await;
    }
    if outcome.is_ok() {
        outcome = follow(&mut sub, &tx, &cfg).await;
    }
    drop(tx);
    match outcome {
        Ok(()) | Err(Stop::Closed) => {}
        Err(Stop::Overflow) => {
            metrics::counter!("kalamdb_tail_dropped_total", "reason" => "overflow").increment(1);
            let resume = format_cursor(&sub.cursor);
            let body = json!({
                "type": "overflow",
                "resume_from": resume,
                "message": format!("this subscriber fell {} events behind and was disconnected; reconnect with Last-Event-ID: {resume}", cfg.subscriber_buffer_events),
            });
            let _ = last.send(sub.frame("overflow", Some(&resume), &body));
        }
        Err(Stop::Gone(g, floor)) => {
            metrics::counter!("kalamdb_tail_dropped_total", "reason" => "gone").increment(1);
            let mut oldest = sub.cursor.clone();
            oldest.insert(g, Pos { index: floor - 1, offset: None });
            let body = json!({
                "type": "gone",
                "oldest": format_cursor(&oldest),
                "message": format!("group {g} no longer keeps the changes this subscriber needs (it keeps from index {floor})"),
            });
            let _ = last.send(sub.frame("gone", None, &body));
        }
        Err(Stop::Revoked(why)) => {
            metrics::counter!("kalamdb_tail_dropped_total", "reason" => "revoked").increment(1);
            let body = json!({"type": "revoked", "message": why});
            let _ = last.send(sub.frame("revoked", None, &body));
        }
    }
}

/// Events gathered for one channel message: one body write for many.
struct Chunk {
    /// Frames copied in, after `shared` when that is set.
    bytes: bytes::BytesMut,
    /// A block taken as it is while the chunk was empty (no copy: it is shared by every
    /// subscriber of the table).
    shared: Option<Bytes>,
    events: u64,
    /// The cursor before the chunk's first event: where to resume if it cannot be queued.
    start: Pos,
    /// The commit stamp of the chunk's first (oldest) event.
    committed_at_micros: i64,
    /// The position of the chunk's last event.
    last: Pos,
}

impl Chunk {
    /// An empty chunk of a subscriber whose cursor is at `at`.
    fn new(at: Pos) -> Chunk {
        Chunk { bytes: bytes::BytesMut::new(), shared: None, events: 0, start: at, committed_at_micros: 0, last: at }
    }

    fn push(&mut self, frame: &[u8], before: Pos, at: Pos, committed_at_micros: i64) {
        self.append(frame);
        self.started(before, committed_at_micros);
        self.last = at;
        self.events += 1;
    }

    /// Add a block of `events` frames: kept by reference when it comes first, else copied.
    fn push_block(&mut self, block: &Bytes, events: u64, before: Pos, last: Pos, committed_at_micros: i64) {
        if self.events == 0 {
            self.shared = Some(block.clone());
        } else {
            self.append(block);
        }
        self.started(before, committed_at_micros);
        self.last = last;
        self.events += events;
    }

    /// Copy frames in after everything gathered so far (a shared block first moves into the
    /// copy, so events stay in order).
    fn append(&mut self, frames: &[u8]) {
        if let Some(first) = self.shared.take() {
            self.bytes.extend_from_slice(&first);
        }
        self.bytes.extend_from_slice(frames);
    }

    fn started(&mut self, before: Pos, committed_at_micros: i64) {
        if self.events == 0 {
            self.start = before;
            self.committed_at_micros = committed_at_micros;
        }
    }

    /// Queue the events gathered so far. When they cannot be queued, the cursor goes back to
    /// where the chunk started: the last event queued, which is where the overflow notice
    /// (sent after everything queued) tells the client to resume.
    async fn send(
        &mut self,
        sub: &mut Subscription,
        tx: &mpsc::Sender<Out>,
        group: GroupId,
        stall: Duration,
    ) -> Result<(), Stop> {
        if self.events == 0 {
            return Ok(());
        }
        let n = std::mem::take(&mut self.events);
        // A shared block is only ever alone: `append` copies it before anything follows it.
        assert!(self.shared.is_none() || self.bytes.is_empty(), "a shared block with copied frames");
        let bytes = self.shared.take().unwrap_or_else(|| self.bytes.split().freeze());
        let out = Out { bytes, committed_at_micros: self.committed_at_micros };
        if let Err(stop) = offer(tx, out, stall).await {
            sub.cursor.insert(group, self.start);
            return Err(stop);
        }
        sub.delivered.insert(group, self.last);
        metrics::counter!("kalamdb_tail_events_total").increment(n);
        Ok(())
    }
}

async fn follow(sub: &mut Subscription, tx: &mpsc::Sender<Out>, cfg: &TailConfig) -> Result<(), Stop> {
    let groups: Vec<GroupId> = sub.cursor.keys().copied().collect();
    let mut watches: Vec<watch::Receiver<u64>> =
        groups.iter().filter_map(|g| sub.app.groups.applied_watch(*g)).collect();
    if watches.is_empty() {
        return Ok(());
    }
    let stall = Duration::from_millis(cfg.stall_ms);
    let db = sub.app.groups.rows.db().clone();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(cfg.heartbeat_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        sub.recheck()?;
        for w in watches.iter_mut() {
            w.borrow_and_update();
        }
        let mut more = false;
        for g in &groups {
            let applied = sub.applied(*g);
            let pos = sub.cursor[g];
            let from = pos.next_entry();
            if from > applied {
                continue;
            }
            let floor = changes::floor(&db, *g).map_err(|_| Stop::Closed)?;
            if from < floor {
                return Err(Stop::Gone(*g, floor));
            }
            let entries =
                sub.app.tail_state.entries(&sub.app.groups.rows, *g, from, applied, READ_ENTRIES_MAX).map_err(|e| {
                    tracing::warn!(target: "kalamdb_tail", group = %g, error = %e, "cannot read change records");
                    Stop::Closed
                })?;
            assert!(entries.len() <= READ_ENTRIES_MAX, "entries() returned more than asked");
            let full = entries.len() == READ_ENTRIES_MAX;
            let single = sub.cursor.len() == 1;
            let fmt = usize::from(sub.format == Format::Ndjson);
            // Events go out in chunks: one channel message and one body write for many.
            let mut chunk = Chunk::new(sub.cursor[g]);
            for (index, entry) in &entries {
                let Some(record) = &entry.record else {
                    sub.cursor.insert(*g, Pos { index: *index, offset: None });
                    continue;
                };
                let skip_upto = if *index == pos.index { pos.offset } else { None };
                if single
                    && skip_upto.is_none()
                    && let Some((def, scope)) = sub.unfiltered_table()
                {
                    let block = entry.block(
                        fmt,
                        def.table_id,
                        scope,
                        |c| in_table_scope(c, def.table_id, scope),
                        |k, c| {
                            let cursor = Cursor::from([(*g, Pos { index: *index, offset: Some(k) })]);
                            let id = format_cursor(&cursor);
                            sub.frame("change", Some(&id), &event_json(*g, *index, k, &id, record, c, Some(def)))
                        },
                    );
                    if block.events > 0 {
                        let before = sub.resume_point(*g);
                        if chunk.events + block.events > EVENTS_PER_CHUNK_MAX {
                            chunk.send(sub, tx, *g, stall).await?;
                        }
                        let last = Pos { index: *index, offset: Some(block.last_offset) };
                        chunk.push_block(&block.bytes, block.events, before, last, record.committed_at_micros);
                        if chunk.events >= EVENTS_PER_CHUNK_MAX {
                            chunk.send(sub, tx, *g, stall).await?;
                        }
                    }
                    sub.cursor.insert(*g, Pos { index: *index, offset: None });
                    continue;
                }
                for (k, c) in record.changes.iter().enumerate() {
                    let k = k as u32;
                    if skip_upto.is_some_and(|o| k <= o) {
                        continue;
                    }
                    let Some(def) = sub.visible(*g, c) else { continue };
                    let before = sub.resume_point(*g);
                    sub.cursor.insert(*g, Pos { index: *index, offset: Some(k) });
                    let render = |sub: &Subscription| {
                        let id = format_cursor(&sub.cursor);
                        let body = event_json(*g, *index, k, &id, record, c, def.as_deref());
                        sub.frame("change", Some(&id), &body)
                    };
                    let frame = match entry.frames[fmt].get(k as usize) {
                        Some(slot) if single => slot.get_or_init(|| render(sub)).clone(),
                        _ => render(sub),
                    };
                    chunk.push(&frame, before, Pos { index: *index, offset: Some(k) }, record.committed_at_micros);
                    if chunk.events >= EVENTS_PER_CHUNK_MAX {
                        chunk.send(sub, tx, *g, stall).await?;
                    }
                }
                sub.cursor.insert(*g, Pos { index: *index, offset: None });
            }
            if full {
                more = true;
            } else {
                // Entries up to `applied` without a record (blank, membership) hold nothing.
                sub.cursor.insert(*g, Pos { index: applied, offset: None });
            }
            chunk.send(sub, tx, *g, stall).await?;
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            (r, _, _) = changed => {
                if r.is_err() {
                    return Ok(());
                }
            }
            // A heartbeat never waits: a full channel already tells the client it is behind.
            _ = heartbeat.tick() => match tx.try_send(sub.heartbeat().into()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Closed),
            },
            _ = tx.closed() => return Err(Stop::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_checked() {
        let groups = [GroupId::Meta(MetaGroup::Catalog), GroupId::SharedShard(0)];
        let c = parse_cursor("meta:catalog@12,shared:0@40.3", &groups).unwrap();
        assert_eq!(c[&GroupId::SharedShard(0)], Pos { index: 40, offset: Some(3) });
        assert_eq!(format_cursor(&c), "meta:catalog@12,shared:0@40.3");
        assert_eq!(c[&GroupId::SharedShard(0)].next_entry(), 40);
        assert_eq!(c[&GroupId::Meta(MetaGroup::Catalog)].next_entry(), 13);
        assert!(parse_cursor("shared:0@40", &groups).unwrap_err().contains("meta:catalog"));
        assert!(parse_cursor("user:1@4,shared:0@1,meta:catalog@1", &groups).is_err());
        assert!(parse_cursor("17", &groups).is_err(), "a bare index needs a single-group subscription");
        assert_eq!(
            parse_cursor("17", &groups[1..]).unwrap()[&GroupId::SharedShard(0)],
            Pos { index: 17, offset: None }
        );
        assert!(parse_cursor("shared:0@x", &groups[1..]).is_err());
        // Every number from a client is checked: the largest u64 must not reach `index + 1`.
        assert!(parse_cursor("18446744073709551615", &groups[1..]).unwrap_err().contains("out of range"));
        assert!(parse_cursor("shared:0@18446744073709551615.0", &groups[1..]).is_err());
        assert!(parse_cursor("18446744073709551616", &groups[1..]).is_err());
    }
}

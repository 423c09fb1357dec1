//! Tail subscribers of a chaos run: each follows one table over NDJSON, and whenever its
//! stream breaks (node killed, paused or cut off) resumes on the next node from the id of the
//! last event it received, exactly as a client is told to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::Mutex;

use super::api::uint;
use super::check::TailEvent;
use crate::{HttpClient, ROOT_BASIC, client};

/// With no bytes for this long (heartbeats come every 5 s by default), the node is taken for
/// stalled and the subscriber moves on.
pub const READ_IDLE: Duration = Duration::from_secs(12);
/// Pause before reconnecting after a broken stream.
const RECONNECT_PAUSE: Duration = Duration::from_millis(300);

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Received {
    pub events: Vec<TailEvent>,
    /// Cursor after the last event (what a reconnect sends as `Last-Event-ID`).
    pub cursor: Option<String>,
    pub reconnects: u64,
    /// Answers that must never happen under these faults (410 from every node, malformed events).
    pub errors: Vec<String>,
}

pub struct Subscriber {
    pub received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub fn spawn(
        urls: Vec<String>,
        first: usize,
        table: String,
        root_basic: bool,
        stop: Arc<AtomicBool>,
    ) -> Subscriber {
        let received = Arc::new(Mutex::new(Received::default()));
        let task = tokio::spawn(follow(urls, first, table, root_basic, stop, received.clone()));
        Subscriber { received, task }
    }

    /// A subscriber whose task (another protocol's) fills `received`.
    pub fn from_task(received: Arc<Mutex<Received>>, task: tokio::task::JoinHandle<()>) -> Subscriber {
        Subscriber { received, task }
    }

    pub async fn join(self) -> Received {
        let _ = self.task.await;
        match Arc::try_unwrap(self.received) {
            Ok(m) => m.into_inner(),
            Err(shared) => std::mem::take(&mut *shared.lock().await),
        }
    }
}

async fn follow(
    urls: Vec<String>,
    first: usize,
    table: String,
    root_basic: bool,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Received>>,
) {
    let c: HttpClient = client(1);
    let mut node = first;
    // Consecutive nodes that answered 410: a node that caught up through a snapshot may lack
    // the records a cursor needs, but some node must still have them.
    let mut gone_streak = 0;
    while !stop.load(Ordering::Relaxed) {
        let cursor = out.lock().await.cursor.clone();
        let url = &urls[node % urls.len()];
        if let Err(e) = stream_once(&c, url, &table, cursor, root_basic, &stop, &out).await {
            let mut o = out.lock().await;
            o.reconnects += 1;
            if e.starts_with("fatal:") {
                o.errors.push(format!("{url}: {e}"));
            }
            gone_streak = if e.starts_with("gone:") { gone_streak + 1 } else { 0 };
            if gone_streak >= urls.len() {
                o.errors.push(format!("every node answered 410 to the cursor: {e}"));
                return;
            }
        }
        node += 1;
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// One connection: returns when the stream breaks (an error saying why) or when stopped.
async fn stream_once(
    c: &HttpClient,
    url: &str,
    table: &str,
    cursor: Option<String>,
    root_basic: bool,
    stop: &AtomicBool,
    out: &Mutex<Received>,
) -> Result<(), String> {
    let path = if cursor.is_some() {
        format!("/v1/api/tail?table={table}")
    } else {
        format!("/v1/api/tail?table={table}&from=earliest")
    };
    let mut req = hyper::Request::get(format!("{url}{path}")).header("accept", "application/x-ndjson");
    if root_basic {
        req = req.header("authorization", ROOT_BASIC);
    }
    if let Some(id) = &cursor {
        req = req.header("last-event-id", id.as_str());
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(READ_IDLE, c.request(req))
        .await
        .map_err(|_| "no response".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status == 410 {
        return Err(format!("gone: HTTP 410 for cursor {cursor:?}"));
    }
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(READ_IDLE, body.frame()).await {
            Err(_) => return Err("idle".into()),
            Ok(None) => return Err("stream ended".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        buf.extend_from_slice(&data);
        let mut start = 0;
        let mut batch = Vec::new();
        let mut last_id = None;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            let v: Value = serde_json::from_slice(line).map_err(|e| format!("fatal: bad NDJSON line: {e}"))?;
            match v["type"].as_str() {
                Some("change") => {
                    let id = v["id"].as_str().map(str::to_string);
                    if v["op"] == "insert" {
                        let ev = TailEvent {
                            index: v["position"]["index"].as_u64().unwrap_or(0),
                            offset: v["position"]["offset"].as_u64().unwrap_or(0) as u32,
                            id: uint(&v["row"]["id"]).ok_or("fatal: an insert event without row.id")?,
                        };
                        batch.push(ev);
                    }
                    if id.is_some() {
                        last_id = id;
                    }
                }
                Some("overflow") => {
                    // Resume where the server says; not an error under this load, but count it.
                    let mut o = out.lock().await;
                    o.events.append(&mut batch);
                    if let Some(r) = v["resume_from"].as_str() {
                        o.cursor = Some(r.to_string());
                    }
                    return Err("overflow".into());
                }
                // The position the stream starts from. Kept as the cursor while no event came:
                // a reconnect elsewhere then asks for that same position (and a node whose
                // change records start later answers 410) instead of `from=earliest`, which
                // means the oldest *that* node retains and would silently skip the rest.
                Some("subscribed") => {
                    let mut o = out.lock().await;
                    if o.cursor.is_none()
                        && let Some(p) = v["position"].as_str()
                    {
                        o.cursor = Some(p.to_string());
                    }
                }
                // This node no longer has the changes the cursor needs (it caught up through a
                // snapshot while the stream was open): like a 410, another node must have them.
                Some("gone") => {
                    let mut o = out.lock().await;
                    o.events.append(&mut batch);
                    if last_id.is_some() {
                        o.cursor = last_id;
                    }
                    return Err(format!("gone: {v}"));
                }
                _ => {}
            }
        }
        buf.drain(..start);
        if !batch.is_empty() || last_id.is_some() {
            let mut o = out.lock().await;
            o.events.append(&mut batch);
            if last_id.is_some() {
                o.cursor = last_id;
            }
        }
    }
    Ok(())
}

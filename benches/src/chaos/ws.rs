//! WebSocket subscribers of a chaos run: each follows the list table over `/v1/ws` as
//! KalamDB's clients do (initial data with `options: {}`, then changes), and whenever the
//! connection breaks (node killed, paused or cut off) reconnects to the next node and resumes
//! with the last `_seq` it received. What they saw is checked like the tail subscribers'.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::check::TailEvent;
use super::tail::{READ_IDLE, Received, Subscriber};
use crate::ROOT_BASIC;

/// Low bits of a `_seq` that hold the row's ordinal within its log entry.
const SEQ_ORDINAL_BITS: u32 = 20;
/// Pause before reconnecting after a broken connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(300);
/// Client pings, so a paused node is noticed and the server sees activity.
const PING_EVERY: Duration = Duration::from_secs(4);

pub fn spawn(urls: Vec<String>, first: usize, table: String, root_basic: bool, stop: Arc<AtomicBool>) -> Subscriber {
    let received = Arc::new(Mutex::new(Received::default()));
    let task = tokio::spawn(follow(urls, first, table, root_basic, stop, received.clone()));
    Subscriber::from_task(received, task)
}

async fn follow(
    urls: Vec<String>,
    first: usize,
    table: String,
    root_basic: bool,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Received>>,
) {
    let mut node = first;
    let mut gone_streak = 0;
    // The last `_seq` received: where a reconnect resumes.
    let mut last_seq: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let url = &urls[node % urls.len()];
        if let Err(e) = connect_once(url, &table, root_basic, &mut last_seq, &stop, &out).await {
            let mut o = out.lock().await;
            o.reconnects += 1;
            if e.starts_with("fatal:") {
                o.errors.push(format!("{url}: {e}"));
                return;
            }
            gone_streak = if e.starts_with("gone:") { gone_streak + 1 } else { 0 };
            if gone_streak >= urls.len() {
                o.errors.push(format!("every node refused the resume point: {e}"));
                return;
            }
        }
        node += 1;
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// One connection: returns when it breaks (an error saying why) or when stopped.
async fn connect_once(
    url: &str,
    table: &str,
    root_basic: bool,
    last_seq: &mut Option<u64>,
    stop: &AtomicBool,
    out: &Mutex<Received>,
) -> Result<(), String> {
    let ws_url = format!("{}/v1/ws", url.replacen("http://", "ws://", 1));
    let mut req = ws_url.into_client_request().map_err(|e| format!("fatal: {e}"))?;
    if root_basic {
        req.headers_mut().insert("authorization", ROOT_BASIC.parse().map_err(|_| "fatal: header")?);
    }
    let (mut socket, _) = tokio::time::timeout(READ_IDLE, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| "no upgrade".to_string())?
        .map_err(|e| e.to_string())?;
    let options = match last_seq {
        Some(s) => json!({"from": *s}),
        None => json!({}),
    };
    let sub = json!({"type": "subscribe", "subscription": {"id": "chaos", "sql": format!("SELECT id FROM {table}"), "options": options}});
    socket.send(Message::Text(sub.to_string().into())).await.map_err(|e| e.to_string())?;
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut idle = tokio::time::Instant::now() + READ_IDLE;
    while !stop.load(Ordering::Relaxed) {
        let frame = tokio::select! {
            f = socket.next() => f,
            _ = ping.tick() => {
                socket.send(Message::Ping(Vec::new().into())).await.map_err(|e| e.to_string())?;
                continue;
            }
            () = tokio::time::sleep_until(idle) => return Err("idle".into()),
        };
        idle = tokio::time::Instant::now() + READ_IDLE;
        let text = match frame {
            None => return Err("connection ended".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&b[..]).read_to_string(&mut s).map_err(|e| format!("fatal: gzip: {e}"))?;
                s
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => continue,
        };
        let m: Value = serde_json::from_str(&text).map_err(|e| format!("fatal: bad message: {e}"))?;
        let rows = match m["type"].as_str() {
            Some("initial_data_batch") => {
                if m["batch_control"]["has_more"] == true {
                    let next = json!({"type": "next_batch", "subscription_id": "chaos"});
                    socket.send(Message::Text(next.to_string().into())).await.map_err(|e| e.to_string())?;
                }
                &m["rows"]
            }
            Some("change") if m["change_type"] == "insert" => &m["rows"],
            // A node that caught up through a snapshot may lack the records: another has them.
            Some("error") if m["code"] == "POSITION_GONE" => return Err(format!("gone: {m}")),
            // The server could not serve it now (say, a node cut off from the quorum cannot
            // read the catalog): a client resumes on the next node, as after a broken socket.
            Some("error") if m["code"] == "SUBSCRIPTION_FAILED" => return Err(format!("failed: {m}")),
            Some("error") => return Err(format!("fatal: {m}")),
            _ => continue,
        };
        let mut batch = Vec::new();
        for r in rows.as_array().ok_or("fatal: rows is not an array")? {
            let seq: u64 = r["_seq"].as_str().and_then(|s| s.parse().ok()).ok_or("fatal: a row without _seq")?;
            let id: u64 = r["id"].as_str().and_then(|s| s.parse().ok()).ok_or("fatal: a row without id")?;
            batch.push(TailEvent {
                index: seq >> SEQ_ORDINAL_BITS,
                offset: (seq & ((1 << SEQ_ORDINAL_BITS) - 1)) as u32,
                id,
            });
            *last_seq = Some(seq);
        }
        out.lock().await.events.append(&mut batch);
    }
    Ok(())
}

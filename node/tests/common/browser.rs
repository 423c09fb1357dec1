//! A real headless browser for tests: Debian's `chromium`, driven over the Chrome DevTools
//! Protocol on its loopback WebSocket (tokio-tungstenite, already a test dependency). Only the
//! handful of calls the console test needs: open a page, evaluate script in it, wait for a
//! condition, take a screenshot. The browser process is killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::ws::Socket;

pub struct Browser {
    child: Child,
    socket: Socket,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The browser binary: `KALAMDB_CHROMIUM`, else `chromium` on the PATH.
fn binary() -> String {
    std::env::var("KALAMDB_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    /// Start a headless browser with a page of `width` x `height` CSS pixels.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (apt-get install chromium): {e}", binary()));
        // Chromium announces its DevTools endpoint on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium's DevTools endpoint");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("DevTools socket");
        let mut b = Browser { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"})).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await;
        b.session = attached["sessionId"].as_str().expect("sessionId").to_string();
        b.call(Some(()), "Page.enable", json!({})).await;
        b.call(Some(()), "Runtime.enable", json!({})).await;
        b.call(
            Some(()),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// One DevTools call (on the page's session when `page` is `Some`); its result.
    async fn call(&mut self, page: Option<()>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if page.is_some() {
            msg["sessionId"] = json!(self.session);
        }
        self.socket.send(Message::Text(msg.to_string().into())).await.expect("DevTools send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools socket open")
                .expect("DevTools frame");
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    pub async fn goto(&mut self, url: &str) {
        self.call(Some(()), "Page.navigate", json!({"url": url})).await;
        self.wait_for("document.readyState === 'complete'", Duration::from_secs(20)).await;
    }

    /// Evaluate `expression` in the page (promises awaited); its value as JSON.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                Some(()),
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Poll `condition` (a script expression) until it is true.
    pub async fn wait_for(&mut self, condition: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.eval(&format!("!!({condition})")).await == json!(true) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {condition}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page as it is now.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call(Some(()), "Page.captureScreenshot", json!({"format": "png"})).await;
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("png data")).expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

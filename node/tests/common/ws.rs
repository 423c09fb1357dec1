//! A WebSocket client for `/v1/ws` tests (tokio-tungstenite): JSON text frames out, text or
//! gzip binary frames in, pings answered by the library while reading.

use std::io::Read as _;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct WsClient {
    pub socket: Socket,
    /// How the connection ended, once it did: close code and reason.
    pub closed: Option<(u16, String)>,
    /// Binary (gzip) frames received.
    pub gzip_frames: usize,
}

/// How an upgrade went when it did not succeed: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl WsClient {
    /// Connect to `ws://127.0.0.1:<port>/v1/ws<query>` with extra headers.
    pub async fn try_connect(port: u16, query: &str, headers: &[(&str, &str)]) -> Result<WsClient, Refused> {
        let mut req = format!("ws://127.0.0.1:{port}/v1/ws{query}").into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                axum_header_name(k),
                tokio_tungstenite::tungstenite::http::HeaderValue::from_str(v).expect("header value"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((socket, _)) => Ok(WsClient { socket, closed: None, gzip_frames: 0 }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
                status: resp.status().as_u16(),
                body: resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default(),
            }),
            Err(e) => panic!("connect: {e}"),
        }
    }

    pub async fn connect(port: u16) -> WsClient {
        WsClient::try_connect(port, "", &[]).await.expect("upgrade")
    }

    /// Connect and authenticate with an access token (`authorization` is `Bearer <token>`).
    pub async fn connect_authed(port: u16, authorization: &str) -> WsClient {
        let mut c = WsClient::connect(port).await;
        c.authenticate(authorization.trim_start_matches("Bearer ")).await;
        c
    }

    pub async fn authenticate(&mut self, token: &str) {
        self.send(json!({
            "type": "authenticate", "method": "jwt", "token": token,
            "protocol": {"serialization": "json", "compression": "gzip"},
        }))
        .await;
        let m = self.next(Duration::from_secs(10)).await.expect("an answer to authenticate");
        assert_eq!(m["type"], "auth_success", "{m}");
    }

    pub async fn send(&mut self, v: Value) {
        self.socket.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.socket.send(m).await.expect("send");
    }

    /// The next server message, or `None` after `within` or when the connection closed.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()??;
            match frame {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("JSON text frame")),
                Ok(Message::Binary(b)) => {
                    assert_eq!(&b[..2], &[0x1f, 0x8b], "binary frames are gzip");
                    self.gzip_frames += 1;
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(&b[..]).read_to_string(&mut text).expect("gzip");
                    return Some(serde_json::from_str(&text).expect("JSON in gzip frame"));
                }
                Ok(Message::Close(frame)) => {
                    self.closed = Some(frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string())));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next message of this type (others skipped), within `within`.
    pub async fn next_of(&mut self, kind: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next(left).await.unwrap_or_else(|| panic!("no {kind} message (closed: {:?})", self.closed));
            if m["type"] == kind {
                return m;
            }
        }
    }

    /// Read until the server closes the connection; returns the close code and reason.
    pub async fn wait_closed(&mut self, within: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + within;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.next(left).await.is_none() && self.closed.is_none() {
                return None;
            }
        }
        self.closed.clone()
    }
}

fn axum_header_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name")
}

//! The CLI's HTTP client: SQL requests, login (the token is kept in memory only), health and
//! cluster endpoints, and the NDJSON tail stream.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An error as the CLI prints it: `ERROR <CODE>: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub code: String,
    pub message: String,
}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>) -> CliError {
        CliError { code: code.to_string(), message: message.into() }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERROR {}: {}", self.code, self.message)
    }
}

pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    authorization: Option<String>,
    pub user: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Result<Client, CliError> {
        if !base.starts_with("http://") {
            return Err(CliError::new("INVALID_URL", format!("{base}: only http:// URLs are supported")));
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client { base: base.to_string(), http, authorization: None, user: None })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn is_loopback(&self) -> bool {
        let host = self.base.trim_start_matches("http://");
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
    }

    pub fn set_token(&mut self, token: String) {
        self.authorization = Some(format!("Bearer {token}"));
    }

    /// Log in and keep the access token for every later request.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), CliError> {
        let body = serde_json::json!({"user": user, "password": password}).to_string();
        let (status, v) = self.send("POST", "/v1/api/auth/login", Some(body), false).await?;
        if status != 200 {
            return Err(api_error(status, &v));
        }
        let token =
            v["access_token"].as_str().ok_or_else(|| CliError::new("LOGIN", "no access_token in the answer"))?;
        self.set_token(token.to_string());
        self.user = Some(user.to_string());
        Ok(())
    }

    /// Send one request; `body` is JSON, `accept` an optional Accept header.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        authorized: bool,
        accept: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let (true, Some(a)) = (authorized, &self.authorization) {
            req = req.header("authorization", a);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::new("INVALID_REQUEST", e.to_string()))?;
        self.http
            .request(req)
            .await
            .map_err(|e| CliError::new("CONNECTION", format!("cannot reach {}: {e}", self.base)))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        authorized: bool,
    ) -> Result<(u16, Value), CliError> {
        let resp = self.request(method, path, body, authorized, None).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::new("CONNECTION", format!("reading the answer: {e}")))?
            .to_bytes();
        let v =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, v))
    }

    /// Run SQL text (one or more statements); the response's `results` and `took`.
    pub async fn sql(&self, sql: &str) -> Result<(Vec<Value>, f64), CliError> {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, v) = self.send("POST", "/v1/api/sql", Some(body), true).await?;
        if status != 200 || v["status"] != "success" {
            return Err(api_error(status, &v));
        }
        let results = v["results"].as_array().cloned().unwrap_or_default();
        Ok((results, v["took"].as_f64().unwrap_or(0.0)))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value), CliError> {
        self.send("GET", path, None, true).await
    }

    /// Open `GET path` as a stream of NDJSON lines.
    pub async fn stream(&self, path: &str) -> Result<Lines, CliError> {
        let resp = self.request("GET", path, None, true, Some("application/x-ndjson")).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, &v));
        }
        Ok(Lines { body: resp.into_body(), buf: Vec::new() })
    }
}

/// NDJSON lines of a streaming response.
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line as JSON; `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice(&line) {
                    return Some(v);
                }
                continue;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// The error of a non-success answer, with the server's code when it gave one.
fn api_error(status: u16, v: &Value) -> CliError {
    match (v["error"]["code"].as_str(), v["error"]["message"].as_str()) {
        (Some(code), Some(message)) => CliError::new(code, message),
        _ => CliError::new("HTTP", format!("HTTP {status}: {v}")),
    }
}

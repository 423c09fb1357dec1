//! The chaos run's HTTP client: every request bounded by a timeout, and every answer sorted
//! into a definite reply, a definite error, or no answer at all (the outcome is unknown).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::{HttpClient, ROOT_BASIC, client};

/// How a request ended.
#[derive(Clone, Debug)]
pub enum Reply {
    /// HTTP 2xx with its JSON body.
    Ok(Value),
    /// A non-2xx answer with the server's error code.
    Error { status: u16, code: String, message: String },
    /// No answer: connection reset, or the timeout passed. A write may have been applied.
    Lost(String),
    /// No connection could be made: the request never left this process.
    NotSent(String),
}

#[derive(Clone)]
pub struct Api {
    client: HttpClient,
    /// `Authorization` header value; `None` for a server that allows anonymous requests.
    auth: Option<&'static str>,
    timeout: Duration,
}

impl Api {
    /// `root_basic`: send `root:` as HTTP Basic (a local server with no root password);
    /// otherwise no credentials (the Docker cluster's configs allow anonymous requests).
    pub fn new(root_basic: bool, timeout: Duration, idle_max: usize) -> Api {
        Api { client: client(idle_max), auth: root_basic.then_some(ROOT_BASIC), timeout }
    }

    pub async fn request(&self, method: &str, url: &str, path: &str, body: Option<String>) -> Reply {
        let mut req = hyper::Request::builder().method(method).uri(format!("{url}{path}"));
        if let Some(a) = self.auth {
            req = req.header("authorization", a);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = match req.body(Full::new(Bytes::from(body.unwrap_or_default()))) {
            Ok(r) => r,
            Err(e) => return Reply::NotSent(format!("bad request: {e}")),
        };
        let call = async {
            let resp =
                self.client.request(req).await.map_err(|e| {
                    if e.is_connect() { Reply::NotSent(e.to_string()) } else { Reply::Lost(e.to_string()) }
                })?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.map_err(|e| Reply::Lost(e.to_string()))?.to_bytes();
            Ok::<_, Reply>((status, bytes))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Reply::Lost(format!("no answer within {:?}", self.timeout)),
            Ok(Err(r)) => r,
            Ok(Ok((status, bytes))) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if (200..300).contains(&status) {
                    Reply::Ok(v)
                } else {
                    Reply::Error {
                        status,
                        code: v["error"]["code"].as_str().unwrap_or("").to_string(),
                        message: v["error"]["message"]
                            .as_str()
                            .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_string),
                    }
                }
            }
        }
    }

    /// One statement; `local` reads this node's own state without a read barrier.
    pub async fn sql(&self, url: &str, sql: &str, local: bool) -> Reply {
        let mut body = json!({ "sql": sql });
        if local {
            body["consistency"] = json!("local");
        }
        self.request("POST", url, "/v1/api/sql", Some(body.to_string())).await
    }

    /// A statement that must succeed (setup and final reads): retried on any failure for up
    /// to `within`, across the given nodes.
    pub async fn sql_until_ok(&self, urls: &[String], sql: &str, within: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::new();
        for attempt in 0.. {
            let url = &urls[attempt % urls.len()];
            match self.sql(url, sql, false).await {
                Reply::Ok(v) => return Ok(v),
                Reply::Error { code, message, .. } => last = format!("{url}: {code}: {message}"),
                Reply::Lost(e) | Reply::NotSent(e) => last = format!("{url}: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("`{sql}` did not succeed within {within:?}; last: {last}"))
    }
}

/// The rows of the first result of a SQL reply.
pub fn rows(v: &Value) -> &[Value] {
    v["results"][0]["rows"].as_array().map_or(&[], |r| r.as_slice())
}

/// An integer cell in either encoding: a BIGINT string (the API's encoding of 64-bit integers)
/// or a JSON number.
pub fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// [`int`] for a value that cannot be negative.
pub fn uint(v: &Value) -> Option<u64> {
    int(v).and_then(|i| u64::try_from(i).ok())
}

/// `row_count` of the first result.
pub fn row_count(v: &Value) -> Option<u64> {
    v["results"][0]["row_count"].as_u64()
}

//! Shared pieces of the benchmark binaries: a keep-alive HTTP client that only talks to
//! loopback addresses, and JSON POSTs that fail on a non-2xx status.

pub mod chaos;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// HTTP Basic for `root:`: root may log in with an empty password from loopback while no
/// root password is configured.
pub const ROOT_BASIC: &str = "Basic cm9vdDo=";

/// A client keeping up to `idle_max` idle connections per host.
pub fn client(idle_max: usize) -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(idle_max).build_http()
}

/// Benchmarks send traffic to this machine only.
pub fn check_loopback(url: &str) -> Result<(), String> {
    if url.starts_with("http://127.") || url.starts_with("http://localhost") {
        Ok(())
    } else {
        Err(format!("{url}: benchmarks only target loopback addresses"))
    }
}

/// Why a POST failed: `Unsent` when no connection could be made (the request never reached a
/// server, so trying another node cannot apply it twice), `Failed` for everything else.
#[derive(Debug)]
pub enum PostError {
    Unsent(String),
    Failed(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Unsent(e) => write!(f, "not sent: {e}"),
            PostError::Failed(e) => f.write_str(e),
        }
    }
}

/// POST `body` as JSON to `url` + `path`; returns the response body of a 2xx answer.
pub async fn post_json(client: &HttpClient, url: &str, path: &str, body: String) -> Result<Bytes, String> {
    // Our server on loopback: root with an empty password (no root password is set by the
    // benchmark scripts). Peers (etcd) get no header.
    let auth = path.starts_with("/v1/api/").then_some(ROOT_BASIC);
    post_json_as(client, url, path, body, auth).await.map_err(|e| e.to_string())
}

/// POST `body` as JSON with an optional `Authorization` header value.
pub async fn post_json_as(
    client: &HttpClient,
    url: &str,
    path: &str,
    body: String,
    auth: Option<&str>,
) -> Result<Bytes, PostError> {
    let mut req = hyper::Request::post(format!("{url}{path}")).header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| PostError::Failed(e.to_string()))?;
    let resp = client.request(req).await.map_err(|e| {
        if e.is_connect() { PostError::Unsent(error_chain(&e)) } else { PostError::Failed(error_chain(&e)) }
    })?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| PostError::Failed(e.to_string()))?.to_bytes();
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(PostError::Failed(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))))
    }
}

/// An error with its causes (`client error (SendRequest): connection closed before message
/// completed`): the outer message alone does not say what happened to the request.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A comma-separated list of base URLs, trimmed, each checked to be loopback.
pub fn parse_urls(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).collect();
    for u in &urls {
        check_loopback(u)?;
    }
    Ok(urls)
}

/// The `p` quantile of sorted microsecond samples, in milliseconds (NaN when empty).
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    sorted_us[((sorted_us.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

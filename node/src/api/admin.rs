//! Operator endpoints: `/health`, `/v1/api/cluster/health`, `/v1/api/cluster/digest`,
//! `/metrics`, and the test-only fault switch `/v1/api/debug/isolate`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{App, error_response, identify, node_error_response, not_found, query_error_response};

pub(super) async fn health(State(app): State<Arc<App>>) -> Response {
    let ready = app.groups.all_have_leader();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ready { "healthy" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": "v1",
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct HealthQuery {
    /// `?local=true`: this node's view only, without asking the peers.
    #[serde(default)]
    local: bool,
}

pub(super) async fn cluster_health(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<HealthQuery>,
) -> Response {
    let (body, all_led) = crate::cluster::health(&app.groups, !q.local).await;
    let status = if all_led { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// Per group: this node's applied index and a SHA-256 of its projection. Equal digests at
/// equal applied indexes on every member mean the replicas hold the same bytes. It reads every
/// projection, so it is for operators (dba or system), one at a time.
pub(super) async fn cluster_digest(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let who = match identify(&app, &headers, client, start).await {
        Ok((who, _)) => who,
        Err(resp) => return resp,
    };
    if let Err(e) = kalamdb_query::access::require(who.role, kalamdb_log::Role::Dba, "the cluster digest") {
        return query_error_response(&e, start);
    }
    let Ok(_slot) = app.digest_slot.try_acquire() else {
        return node_error_response(
            &crate::Error::Busy("a digest is already being computed; retry shortly".into()),
            start,
        );
    };
    let groups = app.groups.clone();
    let result = tokio::task::spawn_blocking(move || groups.digests()).await;
    match result {
        Ok(Ok(digests)) => {
            let groups: Vec<serde_json::Value> = digests
                .iter()
                .map(|d| {
                    json!({"group": d.group.to_string(), "applied_index": d.applied_index, "stable": d.stable, "digest": d.digest})
                })
                .collect();
            (StatusCode::OK, axum::Json(json!({"node_id": app.groups.node_id, "groups": groups}))).into_response()
        }
        Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", &e.to_string(), start),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", &e.to_string(), start),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct IsolateRequest {
    isolated: bool,
}

/// Test-only fault switch: cut this node off the cluster network (both directions).
pub(super) async fn debug_isolate(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let start = Instant::now();
    if !app.fault_injection || !app.groups.is_cluster() {
        return not_found().await;
    }
    match serde_json::from_slice::<IsolateRequest>(&body) {
        Ok(r) => {
            app.groups.set_isolated(r.isolated);
            (StatusCode::OK, axum::Json(json!({"status": "success", "isolated": r.isolated}))).into_response()
        }
        Err(e) => error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            &format!("expected {{\"isolated\": bool}}: {e}"),
            start,
        ),
    }
}

pub(super) async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    match &app.metrics {
        Some(h) => {
            crate::metrics::before_render();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

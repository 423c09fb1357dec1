//! `POST /v1/api/sql`: a request of one or more statements, run by the engine with the
//! caller's identity; writes are proposed through the node's groups.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kalamdb_log::{GroupId, Op, OpResult, TableDef};
use kalamdb_query::{ExecContext, Proposer, QueryResult};
use serde::Deserialize;
use serde_json::json;

use super::{App, error_response, identify, json_body, node_error_response, query_error_response, took_ms};
use crate::auth::Method;
use crate::groups::Groups;

pub(crate) struct NodeProposer<'a>(pub(crate) &'a Groups);

#[async_trait]
impl Proposer for NodeProposer<'_> {
    async fn propose(&self, group: GroupId, op: Op) -> Result<OpResult, kalamdb_query::Error> {
        Ok(self.0.propose(group, op).await?)
    }

    /// `FLUSH TABLE` takes the automatic flush's prepared path: the files are written before
    /// the entry that publishes them, off every member's apply.
    async fn flush_table(&self, group: GroupId, table: TableDef) -> Result<OpResult, kalamdb_query::Error> {
        Ok(crate::storage::propose_whole_flush(self.0, group, &table).await?)
    }
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
    #[serde(default)]
    namespace_id: Option<String>,
    /// "linearizable" (default) or "local".
    #[serde(default)]
    consistency: Option<String>,
}

pub(super) async fn sql(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    // Credentials first: a stranger learns nothing, not even whether its SQL parses.
    let (who, method) = match identify(&app, &headers, client, start).await {
        Ok(w) => w,
        Err(resp) => return resp,
    };
    let req: SqlRequest = match json_body(&app, &headers, body, start).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.sql.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "EMPTY_SQL", "the 'sql' field is empty", start);
    }
    let linearizable = match req.consistency.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("linearizable") => true,
        Some("local") => false,
        Some(other) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                &format!("consistency must be \"linearizable\" or \"local\", got \"{other}\""),
                start,
            );
        }
    };
    // A single node applies every write before acknowledging it: local reads are already
    // linearizable there, so only cluster members pay for the barrier.
    let with_round_trip = linearizable && app.groups.is_cluster();
    let barrier: Option<Arc<dyn kalamdb_query::ReadBarrier>> = if with_round_trip {
        Some(Arc::new(crate::cluster::RequestBarrier::new(app.groups.clone())))
    } else {
        Some(Arc::new(crate::cluster::LocalBarrier(app.groups.clone())))
    };
    // A linearizable request also sees every user change committed before it: a user
    // dropped (or demoted) through another node a moment ago is refused (or demoted) here.
    let who = match &barrier {
        Some(b) if with_round_trip && method != Method::Anonymous && who.user_id != crate::auth::ROOT_USER => {
            if let Err(e) = b.wait(kalamdb_log::GroupId::Meta(kalamdb_log::MetaGroup::Users)).await {
                return query_error_response(&e, start);
            }
            match app.auth.confirm(who) {
                Ok(w) => w,
                Err(e) => return node_error_response(&e, start),
            }
        }
        _ => who,
    };
    tracing::debug!(target: "kalamdb_sql", user = %who.username, sql = %kalamdb_query::redact_passwords(&req.sql), linearizable, "statement");
    let as_user = who.username.clone();
    let ctx = ExecContext {
        user_id: who.user_id,
        role: who.role,
        namespace: req.namespace_id,
        params: req.params,
        barrier,
        impersonated_by: None,
        batch: None,
    };
    // Boxed: the engine's future is large, and held inline it would be copied with this
    // handler's future every time the router moves it.
    match Box::pin(app.engine.execute(&req.sql, &ctx, &NodeProposer(&app.groups))).await {
        Ok(mut results) => {
            // Each result carries its statement's kind: the text is not split again here.
            for r in &mut results {
                if let Some(sub) = r.subscription.take() {
                    let kind = r.kind;
                    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok());
                    *r = super::tail::subscription_result(&sub, host);
                    r.kind = kind;
                }
                r.as_user = Some(as_user.clone());
                metrics::counter!("kalamdb_sql_statements_total", "kind" => r.kind).increment(1);
            }
            success_response(&results, start)
        }
        Err(e) => query_error_response(&e, start),
    }
}

fn success_response(results: &[QueryResult], start: Instant) -> Response {
    let body = json!({"status": "success", "results": results, "took": took_ms(start)});
    (StatusCode::OK, axum::Json(body)).into_response()
}

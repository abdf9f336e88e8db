//! The observability routes beside the API: `GET /metrics` (Prometheus, OpenMetrics text) and
//! `GET /v1/hooks/runs` (the hook run log), plus the layer that counts every API request by
//! route and status.

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::oneshot;

use crate::api::{AppState, Params, auth, params};
use crate::control::{ApiError, Msg, Query};
use crate::hooks::{RunFilter, list_runs};
use crate::limits::{HOOK_RUNS_LIST_DEFAULT, LIST_ROWS_MAX, list_limit};
use crate::metrics::Metrics;

/// The most hook runs one `GET /v1/hooks/runs` returns.

#[derive(Clone)]
pub(crate) struct ObsState {
    pub(crate) app: AppState,
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) fn router(state: ObsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/hooks/runs", get(hook_runs))
        .with_state(state)
}

/// Counts each request by its route pattern (`/v1/vms/{id}`, not the id), method and status.
pub(crate) async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Labels come from fixed sets: a client inventing methods or paths cannot add series.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let resp = next.run(req).await;
    metrics.api_request(&route, method, resp.status().as_u16());
    resp
}

async fn metrics(State(state): State<ObsState>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth(&state.app, &headers, false)?;
    let (reply, rx) = oneshot::channel();
    state
        .app
        .tx
        .send(Msg::Query {
            query: Query::SampleMetrics,
            reply,
        })
        .await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    rx.await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    // Prometheus asks for OpenMetrics; everything else gets the classic text format.
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, body) = if open_metrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.encode_classic(),
        )
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn hook_runs(
    State(state): State<ObsState>,
    headers: HeaderMap,
    q: Params<RunFilter>,
) -> Result<Response, ApiError> {
    auth(&state.app, &headers, false)?;
    let mut f = params(q)?;
    f.limit = Some(list_limit(f.limit, HOOK_RUNS_LIST_DEFAULT, LIST_ROWS_MAX)?);
    let runs = state.app.reads.read(move |c| list_runs(c, &f)).await?;
    Ok((StatusCode::OK, axum::Json(json!({"runs": runs}))).into_response())
}

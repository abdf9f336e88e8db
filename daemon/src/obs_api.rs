//! The observability routes beside the API: `GET /metrics` (Prometheus, OpenMetrics text) and
//! `GET /v1/hooks/runs` (the hook run log), plus the layer that counts every API request by
//! route and status.

use std::sync::Arc;

use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ApiError;
use crate::api::{AppState, Params, Reader, params};
use crate::control::{Msg, Query};
use crate::hooks::{RunFilter, list_runs};
use crate::limits::{HOOK_RUNS_LIST_DEFAULT, LIST_ROWS_MAX, list_limit};
use crate::metrics::Metrics;

/// The most hook runs one `GET /v1/hooks/runs` returns.

#[derive(Clone)]
pub(crate) struct ObsState {
    pub(crate) app: AppState,
    pub(crate) metrics: Arc<Metrics>,
}

impl FromRef<ObsState> for AppState {
    fn from_ref(state: &ObsState) -> AppState {
        state.app.clone()
    }
}

/// The observability routes, each with its documentation.
pub(crate) fn routes() -> OpenApiRouter<ObsState> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(hook_runs))
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

/// Prometheus metrics: OpenMetrics when asked for, else the classic text format.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, description = "Metrics in Prometheus' text formats", content_type = "text/plain", body = String)))]
async fn metrics(
    Reader(_): Reader,
    State(state): State<ObsState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A follower has no scheduler to sample: it exports what it has (the lease, the API).
    if state.app.lease.may_act() {
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
    }
    state.metrics.lease(&state.app.lease.figures());
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

/// Hook runs, newest first.
#[utoipa::path(get, path = "/v1/hooks/runs", tag = "daemon", params(RunFilter),
    responses((status = 200, body = berth_api::HookRuns)))]
async fn hook_runs(
    Reader(_): Reader,
    State(state): State<ObsState>,
    q: Params<RunFilter>,
) -> Result<Response, ApiError> {
    let mut f = params(q)?;
    f.limit = Some(list_limit(f.limit, HOOK_RUNS_LIST_DEFAULT, LIST_ROWS_MAX)?);
    let runs = state.app.reads.read(move |c| list_runs(c, &f)).await?;
    let body = berth_api::HookRuns { runs };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

//! The HTTP surface in one place: the API's routes and the observability routes in one router,
//! and the OpenAPI document generated from those same routes, so a route cannot be served
//! without being documented (`GET /v1/openapi.json`, `docs/openapi.json`).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ApiError;
use crate::api::{self, AppState, Reader};
use crate::limits::BODY_BYTES_MAX;
use crate::metrics::Metrics;
use crate::obs_api::{self, ObsState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "berth",
        version = "1",
        description = "berth's control plane: requests for CI virtual machines, their VMs, \
            the hosts they run on, and the daemon. Every route but `/healthz` takes a bearer \
            token; routes that change something take an operator's. Errors answer an \
            `ErrorBody` naming the field at fault.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(berth_api::ErrorBody, berth_api::Lagged, berth_api::Event)),
    tags(
        (name = "requests", description = "Requests for VMs and the queue they wait in"),
        (name = "vms", description = "VMs, their breakpoints, consoles and logs"),
        (name = "hosts", description = "Hosts and their service states"),
        (name = "daemon", description = "The daemon: status, events, audit, metrics"),
    )
)]
struct ApiDoc;

/// The bearer token every route but `/healthz` asks for.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Both route sets, with the document's own route.
fn parts() -> (OpenApiRouter<AppState>, OpenApiRouter<ObsState>) {
    (
        api::routes()
            .routes(routes!(openapi_json))
            .routes(routes!(crate::logs::daemon_log))
            .routes(routes!(crate::pulses::list_pulses)),
        obs_api::routes(),
    )
}

/// The OpenAPI 3.1 document of every route served.
pub fn openapi() -> Document {
    let (app, obs) = parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(app.split_for_parts().1);
    doc.merge(obs.split_for_parts().1);
    doc
}

/// [`openapi`] as pretty JSON, as `docs/openapi.json` holds it.
pub fn openapi_json_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "daemon",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_json(Reader(_): Reader) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_json_text(),
    )
}

/// A refusal (401, 403, 413, ...) may come before the request's body was read; the server then
/// closes the connection, and a client that kept it for its next call would write into a closed
/// socket. Saying `Connection: close` on such answers tells the client not to keep it.
async fn close_after_refused_bodies(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// A follower's answer to what only the leader does, as a redirect to the same path and query
/// at the leader: `307` keeps the method and body, so a client repeats the call there.
async fn redirect_to_leader(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(api::LeaderAt(leader)) = resp.extensions_mut().remove::<api::LeaderAt>() {
        let location = format!("{}{path}", leader.trim_end_matches('/'));
        if let Ok(value) = header::HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, value);
        }
    }
    resp
}

/// The daemon's whole router: every route, a 404 naming no route for the rest, and the
/// request counter around them all.
pub(crate) fn app(state: AppState, metrics: Arc<Metrics>) -> Router {
    let (app, obs) = parts();
    let obs_state = ObsState {
        app: state.clone(),
        metrics: metrics.clone(),
    };
    app.split_for_parts()
        .0
        .with_state(state)
        .merge(obs.split_for_parts().0.with_state(obs_state))
        .fallback(|| async { ApiError::new(404, "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn(close_after_refused_bodies))
        .layer(axum::middleware::from_fn(redirect_to_leader))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            obs_api::count_requests,
        ))
}

//! The HTTP API (axum, JSON) under `/v1`, with bearer-token auth. Changes go to the control
//! loop as inputs and are answered once journaled; reads come from SQLite on the API's own
//! connections, or from the scheduler through a query to the loop. Bad input gets a 4xx with
//! `{"error": "...", "field": "..."}` and changes nothing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_sched::REQUEST_VMS_MAX;
use futures_util::StreamExt;
use rusqlite::Connection;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;

use crate::DaemonError;
use crate::config::Role;
use crate::control::{Actor, Answer, ApiError, Msg, Query};
use crate::limits::{
    AUDIT_LIST_DEFAULT, LIST_ROWS_MAX, QUEUE_LIST_DEFAULT, QUEUE_LIST_MAX, REQUEST_LIST_DEFAULT,
    VM_LIST_DEFAULT, list_limit,
};
use crate::store::{self, VmFilter};
use crate::wire::{WireHold, WireHost, WireInput, WireRequest, check_name};

mod predict;

/// How long a breakpoint lasts when the request does not say: a working day.
const HOLD_TTL_DEFAULT_MS: u64 = 8 * 3_600_000;
/// The end of a serial log served when the request does not say how much.
const SERIAL_TAIL_DEFAULT: usize = 1 << 20;
/// The most of a serial log one answer carries.
const SERIAL_TAIL_MAX: usize = 16 << 20;

/// A bearer token and what it may do.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub secret: String,
    pub role: Role,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A few read connections, so listing never waits behind the control loop's writes (WAL lets
/// readers and the writer run at once).
pub struct ReadPool {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl ReadPool {
    pub fn open(path: &Path, n: usize) -> Result<ReadPool, DaemonError> {
        let conns = (0..n.max(1))
            .map(|_| store::connect(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPool {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs a read on a blocking thread.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, DaemonError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let pool = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.conns.len();
            let conn = pool.conns[i].lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await;
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "read failed");
                Err(ApiError::new(500, e.to_string()))
            }
            Err(_) => Err(ApiError::new(500, "read task failed")),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub(crate) tx: mpsc::Sender<Msg>,
    pub(crate) reads: Arc<ReadPool>,
    pub(crate) events: broadcast::Sender<Arc<str>>,
    pub(crate) tokens: Arc<Vec<Token>>,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// The tokens (by name) with a forecast running: one each, `FORECASTS_AT_ONCE_MAX` in all.
    pub(crate) forecasts: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Whether writes are taken (see `disk`).
    pub(crate) health: Arc<crate::disk::Health>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match &self.field {
            Some(field) => json!({"error": self.error, "field": field}),
            None => json!({"error": self.error}),
        };
        (status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok_json(status: StatusCode, body: serde_json::Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// Checks the bearer token; `operator` routes need the operator role.
pub(crate) fn auth(
    state: &AppState,
    headers: &HeaderMap,
    operator: bool,
) -> Result<Actor, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::new(401, "missing bearer token (Authorization: Bearer TOKEN)"))?;
    // Compare against every token in constant time, so timing tells nothing about which
    // prefix matched.
    let mut found: Option<&Token> = None;
    for t in state.tokens.iter() {
        if bool::from(t.secret.as_bytes().ct_eq(given.as_bytes())) {
            found = Some(t);
        }
    }
    let token = found.ok_or_else(|| ApiError::new(401, "unknown token"))?;
    if operator && token.role != Role::Operator {
        return Err(ApiError::new(
            403,
            format!(
                "token `{}` is read-only: this needs an operator token",
                token.name
            ),
        ));
    }
    Ok(Actor {
        who: token.name.clone(),
        role: token.role,
    })
}

/// Parses a JSON body; errors name the field. An empty body reads as `{}`.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return ApiError::new(400, format!("invalid JSON body: {inner}"));
        }
        let path = e.path().to_string();
        let message = inner.to_string();
        // serde names a missing or unknown field only in its message: take it from there, and
        // only when it says so (a body of `123` is no field's fault).
        let named = message.starts_with("missing field") || message.starts_with("unknown field");
        let field = if path == "." || path == "?" || path.is_empty() {
            if named {
                message
                    .split('`')
                    .nth(1)
                    .map(str::to_owned)
                    .unwrap_or_default()
            } else {
                String::new()
            }
        } else {
            path
        };
        if field.is_empty() {
            ApiError::new(400, format!("invalid JSON body: {message}"))
        } else {
            ApiError::field(400, &field, message)
        }
    })
}

async fn send_input(state: &AppState, input: WireInput, actor: Actor) -> Result<u64, ApiError> {
    let (reply, rx) = oneshot::channel();
    state
        .tx
        .send(Msg::Apply {
            input,
            actor: Some(actor),
            reply: Some(reply),
        })
        .await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    rx.await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?
}

async fn query(state: &AppState, q: Query) -> Result<Answer, ApiError> {
    let (reply, rx) = oneshot::channel();
    state
        .tx
        .send(Msg::Query { query: q, reply })
        .await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    rx.await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))
}

async fn query_json(state: &AppState, q: Query) -> Result<serde_json::Value, ApiError> {
    match query(state, q).await? {
        Answer::Json(v) => Ok(v),
        _ => Err(ApiError::new(
            500,
            "unexpected answer from the control loop",
        )),
    }
}

/// Accepts `12`, `vm12` and `berth-vm12`.
/// A route's query parameters as axum hands them over: parsed after `auth`, so that a caller
/// without a token learns nothing from them.
pub(crate) type Params<T> = Result<UrlQuery<T>, axum::extract::rejection::QueryRejection>;

/// The query parameters, or a 400 naming `query`.
pub(crate) fn params<T>(q: Params<T>) -> Result<T, ApiError> {
    q.map(|UrlQuery(q)| q)
        .map_err(|e| ApiError::field(400, "query", e.body_text()))
}

fn parse_vm_id(s: &str) -> Result<u64, ApiError> {
    let digits = s
        .strip_prefix(berth_drivers::VM_NAME_PREFIX)
        .or_else(|| s.strip_prefix("vm"))
        .unwrap_or(s);
    digits.parse().map_err(|_| {
        ApiError::field(
            400,
            "vm",
            format!("`{s}` is not a vm id (12, vm12 or berth-vm12)"),
        )
    })
}

/// Accepts `7` and `r7`.
fn parse_request_id(s: &str) -> Result<u64, ApiError> {
    s.strip_prefix('r').unwrap_or(s).parse().map_err(|_| {
        ApiError::field(
            400,
            "request",
            format!("`{s}` is not a request id (7 or r7)"),
        )
    })
}

async fn host_id(state: &AppState, name: &str) -> Result<u64, ApiError> {
    match query(state, Query::HostId(name.to_owned())).await? {
        Answer::HostId(Some(id)) => Ok(id),
        _ => Err(ApiError::field(
            404,
            "host",
            format!("no host named `{name}`"),
        )),
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/requests", post(submit).get(list_requests))
        .route("/v1/requests/{id}", get(get_request).delete(cancel))
        .route("/v1/vms", get(list_vms))
        .route("/v1/vms/{id}", get(get_vm))
        .route("/v1/vms/{id}/result", post(vm_result))
        .route("/v1/vms/{id}/release", post(vm_release))
        .route("/v1/vms/{id}/extend", post(vm_extend))
        .route("/v1/vms/{id}/console", get(vm_console))
        .route("/v1/vms/{id}/screenshot", get(vm_screenshot))
        .route("/v1/vms/{id}/serial", get(vm_serial))
        .route("/v1/queue", get(queue))
        .route("/v1/whoami", get(whoami))
        .route("/v1/hosts", get(list_hosts).post(add_host))
        .route("/v1/hosts/{name}", axum::routing::delete(remove_host))
        .route("/v1/hosts/{name}/{op}", post(host_op))
        .route("/v1/events", get(events))
        .route("/v1/audit", get(audit))
        .route("/v1/orphans", get(list_orphans))
        .route("/v1/orphans/{vm}/destroy", post(destroy_orphan))
        .route("/v1/predict/drain", post(predict::drain))
        .fallback(|| async { ApiError::new(404, "no such route") })
        .with_state(state)
}

/// `ok`, or `degraded: why` while writes are refused (reads still answer, so it stays 200).
async fn healthz(State(state): State<AppState>) -> String {
    match state.health.degraded() {
        None => "ok\n".to_owned(),
        Some(why) => format!("degraded: {why}\n"),
    }
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    auth(&state, &headers, false)?;
    let mut live = query_json(&state, Query::Status).await?;
    let counts = state.reads.read(store::vm_counts).await?;
    live["vms_by_state"] = json!(counts);
    let degraded = state.health.degraded();
    live["writable"] = json!(degraded.is_none());
    live["degraded"] = json!(degraded);
    ok_json(StatusCode::OK, live)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    template: String,
    count: u32,
    cpus: Option<u32>,
    memory_mib: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    gang: bool,
    #[serde(default)]
    hold_on_failure: bool,
    hold_owner: Option<String>,
    /// The staged change this request belongs to.
    change: Option<String>,
    hold_ttl_s: Option<u64>,
    pending_deadline_s: Option<u64>,
    expected_run_s: Option<u64>,
    requester: Option<String>,
}

async fn submit(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let b: SubmitBody = parse(&body)?;
    check_name("template", &b.template).map_err(ApiError::from)?;
    if b.count == 0 || b.count > REQUEST_VMS_MAX {
        return Err(ApiError::field(
            400,
            "count",
            format!("must be 1 to {REQUEST_VMS_MAX}, got {}", b.count),
        ));
    }
    if let Some(c) = b.cpus {
        crate::wire::in_range("cpus", c.into(), berth_sched::limits::VCPUS_MAX.into())?;
    }
    if let Some(m) = b.memory_mib {
        crate::wire::in_range("memory_mib", m, berth_sched::limits::MEMORY_MIB_MAX)?;
    }
    if b.hold_ttl_s == Some(0) {
        return Err(ApiError::field(400, "hold_ttl_s", "must be at least 1"));
    }
    if !b.hold_on_failure && (b.hold_owner.is_some() || b.hold_ttl_s.is_some()) {
        return Err(ApiError::field(
            400,
            "hold_on_failure",
            "hold_owner and hold_ttl_s need hold_on_failure: true",
        ));
    }
    crate::wire::check_labels("labels", &b.labels)?;
    if let Some(r) = &b.requester {
        crate::wire::check_text("requester", r)?;
    }
    if let Some(o) = &b.hold_owner {
        crate::wire::check_text("hold_owner", o)?;
    }
    if let Some(c) = &b.change {
        crate::wire::check_text("change", c)?;
    }
    let requester = b.requester.unwrap_or_else(|| actor.who.clone());
    let request = WireRequest {
        id: 0,
        template: b.template,
        count: b.count,
        vcpus: b.cpus,
        memory_mib: b.memory_mib,
        labels: b.labels,
        priority: b.priority,
        gang: b.gang,
        hold: b.hold_on_failure.then(|| WireHold {
            owner: b.hold_owner.unwrap_or_else(|| requester.clone()),
            ttl_ms: b
                .hold_ttl_s
                .map_or(HOLD_TTL_DEFAULT_MS, |s| s.saturating_mul(1000)),
        }),
        pending_deadline_ms: b.pending_deadline_s.map(|s| s.saturating_mul(1000)),
        expected_run_ms: b.expected_run_s.map(|s| s.saturating_mul(1000)),
        requester,
        change: b.change,
    };
    let id = send_input(&state, WireInput::Submit { request }, actor).await?;
    let row = state
        .reads
        .read(move |c| store::get_request(c, id))
        .await?
        .ok_or_else(|| ApiError::new(500, "request committed but not found"))?;
    ok_json(StatusCode::CREATED, json!(row))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestListQuery {
    state: Option<String>,
    limit: Option<u64>,
    /// Only requests older than this one (the previous page's `next_before`).
    before: Option<String>,
}

const REQUEST_STATES: &[&str] = &[
    "waiting",
    "active",
    "done",
    "failed",
    "rejected",
    "cancelled",
];

/// Refuses a state filter that no row can have, naming the ones there are.
fn check_state(field: &str, s: Option<&str>, states: &[&str]) -> Result<(), ApiError> {
    match s {
        Some(s) if !states.contains(&s) => Err(ApiError::field(
            400,
            field,
            format!("unknown state `{s}`; one of {}", states.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// Requests, newest first, a page at a time: `next_before` (when present) asks for the next.
async fn list_requests(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Params<RequestListQuery>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let q = params(q)?;
    check_state("state", q.state.as_deref(), REQUEST_STATES)?;
    let limit = list_limit(q.limit, REQUEST_LIST_DEFAULT, LIST_ROWS_MAX)?;
    let before = q.before.as_deref().map(parse_request_id).transpose()?;
    let mut rows = state
        .reads
        .read(move |c| store::list_requests(c, q.state.as_deref(), before, limit + 1))
        .await?;
    // One more than the page was read, to know whether there is a next one.
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|r| r.id)).flatten();
    ok_json(
        StatusCode::OK,
        json!({"requests": rows, "next_before": next}),
    )
}

async fn get_request(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let id = parse_request_id(&id)?;
    let row = state
        .reads
        .read(move |c| store::get_request(c, id))
        .await?
        .ok_or_else(|| ApiError::field(404, "request", format!("no request r{id}")))?;
    let vms = state
        .reads
        .read(move |c| {
            store::list_vms(
                c,
                &VmFilter {
                    request: Some(id),
                    ..VmFilter::default()
                },
            )
        })
        .await?;
    let why = query_json(&state, Query::Why(id)).await?;
    let mut body = json!(row);
    body["vms"] = json!(vms);
    body["why"] = why;
    ok_json(StatusCode::OK, body)
}

async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let id = parse_request_id(&id)?;
    let sent = send_input(&state, WireInput::Cancel { request: id }, actor).await;
    let row = state.reads.read(move |c| store::get_request(c, id)).await?;
    match (sent, row) {
        (Ok(_), row) => ok_json(StatusCode::OK, json!(row)),
        // Cancelling what has ended already is done: answer with how it ended, as a retry of
        // a cancel whose answer was lost would want to hear.
        (Err(e), Some(row)) if e.status == 404 => ok_json(StatusCode::OK, json!(row)),
        (Err(e), _) => Err(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmListQuery {
    state: Option<String>,
    request: Option<String>,
    host: Option<String>,
    #[serde(default)]
    live: bool,
    limit: Option<u64>,
    /// Only VMs numbered above this one (the previous page's `next_after`).
    after: Option<String>,
}

const VM_STATES: &[&str] = &[
    "queued",
    "placed",
    "provisioning",
    "booting",
    "running",
    "held",
    "releasing",
    "done",
    "failed",
    "lost",
    "cancelled",
];

async fn list_vms(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Params<VmListQuery>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let q = params(q)?;
    check_state("state", q.state.as_deref(), VM_STATES)?;
    let request = q.request.as_deref().map(parse_request_id).transpose()?;
    let limit = list_limit(q.limit, VM_LIST_DEFAULT, LIST_ROWS_MAX)?;
    let after = q.after.as_deref().map(parse_vm_id).transpose()?;
    let filter = VmFilter {
        state: q.state,
        request,
        host: q.host,
        live: q.live,
        after,
        // One more than the page, to know whether there is a next one.
        limit: Some(limit + 1),
    };
    let holds = if filter.state.as_deref().is_none_or(|s| s == "held") {
        let held = state.reads.read(store::held_vm_ids).await?;
        hold_rows(&state, held).await?
    } else {
        BTreeMap::new()
    };
    let body = state
        .reads
        .read(move |c| {
            // Written on the blocking thread: a list of 100,000 VMs is ~15 MB of JSON.
            let mut out = Vec::with_capacity(1 << 16);
            out.extend_from_slice(b"{\"vms\":");
            let (n, next) = store::write_vms_json(c, &filter, &holds, &mut out, limit as usize)?;
            let next = next.map_or_else(|| "null".to_owned(), |id| id.to_string());
            out.extend_from_slice(format!(",\"count\":{n},\"next_after\":{next}}}").as_bytes());
            Ok(out)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_vm(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let id = parse_vm_id(&id)?;
    let (row, history) = state
        .reads
        .read(move |c| Ok((store::get_vm(c, id)?, store::vm_history(c, id)?)))
        .await?;
    let row = row.ok_or_else(|| ApiError::field(404, "vm", format!("no vm {id}")))?;
    let row = with_hold(&state, row).await?;
    let mut body = json!(row);
    body["history"] = json!(history);
    ok_json(StatusCode::OK, body)
}

async fn vm_after(state: &AppState, id: u64) -> ApiResult {
    let row = state.reads.read(move |c| store::get_vm(c, id)).await?;
    let row = match row {
        Some(r) => Some(with_hold(state, r).await?),
        None => None,
    };
    ok_json(StatusCode::OK, json!(row))
}

/// The breakpoints of these VMs, from the scheduler (the database does not keep extensions).
async fn hold_rows(
    state: &AppState,
    ids: Vec<u64>,
) -> Result<BTreeMap<u64, store::HoldRow>, ApiError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    match query(state, Query::Holds(ids)).await? {
        Answer::Holds(holds) => Ok(holds
            .into_iter()
            .map(|(id, (owner, expires_ms))| (id, store::HoldRow { owner, expires_ms }))
            .collect()),
        _ => Err(ApiError::new(
            500,
            "unexpected answer from the control loop",
        )),
    }
}

/// A VM row with its breakpoint, if it is held.
async fn with_hold(state: &AppState, mut row: store::VmRow) -> Result<store::VmRow, ApiError> {
    if row.state == "held" {
        row.hold = hold_rows(state, vec![row.id]).await?.remove(&row.id);
    }
    Ok(row)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultBody {
    passed: bool,
}

async fn vm_result(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let id = parse_vm_id(&id)?;
    let b: ResultBody = parse(&body)?;
    send_input(
        &state,
        WireInput::JobFinished {
            vm: id,
            passed: b.passed,
        },
        actor,
    )
    .await?;
    vm_after(&state, id).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn vm_release(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let id = parse_vm_id(&id)?;
    let _: EmptyBody = parse(&body)?;
    send_input(&state, WireInput::Release { vm: id }, actor).await?;
    vm_after(&state, id).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    seconds: u64,
}

async fn vm_extend(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let id = parse_vm_id(&id)?;
    let b: ExtendBody = parse(&body)?;
    if b.seconds == 0 {
        return Err(ApiError::field(400, "seconds", "must be at least 1"));
    }
    send_input(
        &state,
        WireInput::Extend {
            vm: id,
            by_ms: b.seconds.saturating_mul(1000),
        },
        actor,
    )
    .await?;
    vm_after(&state, id).await
}

/// The driver of the host VM `id` is on, and the VM's name there.
async fn vm_on_host(
    state: &AppState,
    id: u64,
) -> Result<(Arc<dyn berth_drivers::Driver>, String), ApiError> {
    match query(state, Query::VmDriver(id)).await? {
        Answer::VmDriver(Some(found)) => Ok(found),
        _ => Err(ApiError::field(
            404,
            "vm",
            format!("vm {id} is not on a host now"),
        )),
    }
}

/// A driver's failure to show a VM: 501 when the driver cannot do it at all, else 502.
fn driver_failure(e: berth_drivers::DriverError) -> ApiError {
    match e {
        berth_drivers::DriverError::Unsupported { .. } => ApiError::new(501, e.to_string()),
        other => ApiError::new(502, other.to_string()),
    }
}

async fn vm_console(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    let actor = auth(&state, &headers, false)?;
    let id = parse_vm_id(&id)?;
    let (driver, name) = vm_on_host(&state, id).await?;
    let mut addr = driver
        .console(&name)
        .await
        .map_err(|e| ApiError::new(502, e.to_string()))?;
    // The VNC password opens the VM's screen and keyboard: operators only, and on record.
    if actor.role != Role::Operator {
        addr.password = None;
    } else if addr.password.is_some() {
        let row = store::AuditRow {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            who: actor.who,
            role: actor.role.name().to_owned(),
            action: "console_password".to_owned(),
            target: name.clone(),
            outcome: "ok".to_owned(),
        };
        state
            .tx
            .send(Msg::Audit(row))
            .await
            .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
        // The loop answers queries after committing the batch that holds the messages sent
        // before them: once this is answered, the audit row is on disk.
        query(&state, Query::HostId(String::new())).await?;
    }
    ok_json(
        StatusCode::OK,
        json!({
            "vm": id,
            "name": name,
            "host": addr.host,
            "port": addr.port,
            "password": addr.password,
            "address": addr.to_string(),
            "ssh": format!("ssh -L {port}:localhost:{port} {host}", port = addr.port, host = addr.host),
        }),
    )
}

async fn vm_screenshot(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let id = parse_vm_id(&id)?;
    let (driver, name) = vm_on_host(&state, id).await?;
    let png = driver.screenshot(&name).await.map_err(driver_failure)?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialQuery {
    tail_bytes: Option<usize>,
}

/// The end of a VM's serial console log as plain bytes: the last `tail_bytes` (default
/// [`SERIAL_TAIL_DEFAULT`], at most [`SERIAL_TAIL_MAX`]). `X-Berth-Log-Bytes` gives the whole
/// log's length, so a client can tell it was cut.
async fn vm_serial(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    q: Params<SerialQuery>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let id = parse_vm_id(&id)?;
    let q = params(q)?;
    let tail = q.tail_bytes.unwrap_or(SERIAL_TAIL_DEFAULT);
    if tail == 0 || tail > SERIAL_TAIL_MAX {
        return Err(ApiError::field(
            400,
            "tail_bytes",
            format!("must be between 1 and {SERIAL_TAIL_MAX}"),
        ));
    }
    let (driver, name) = vm_on_host(&state, id).await?;
    let mut log = driver.serial_log(&name).await.map_err(driver_failure)?;
    let total = log.len();
    log.drain(..total.saturating_sub(tail));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::HeaderName::from_static("x-berth-log-bytes"),
                total.to_string(),
            ),
        ],
        log,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    limit: Option<usize>,
}

/// Waiting requests in the order they are served, each with why it waits.
async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Params<QueueQuery>,
) -> ApiResult {
    auth(&state, &headers, false)?;
    let q = params(q)?;
    let limit = list_limit(
        q.limit.map(|l| l as u64),
        QUEUE_LIST_DEFAULT as u64,
        QUEUE_LIST_MAX as u64,
    )? as usize;
    let entries = query_json(&state, Query::Queue(limit)).await?;
    let entries: Vec<(u64, serde_json::Value)> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["id"].as_u64()?, e["why"].clone())))
        .collect();
    let ids: Vec<u64> = entries.iter().map(|(id, _)| *id).collect();
    let rows = state
        .reads
        .read(move |c| {
            ids.iter()
                .map(|&id| store::get_request(c, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let queue: Vec<serde_json::Value> = rows
        .into_iter()
        .zip(entries)
        .filter_map(|(row, (_, why))| {
            let mut v = json!(row?);
            v["why"] = why;
            Some(v)
        })
        .collect();
    ok_json(StatusCode::OK, json!({"queue": queue}))
}

/// Who the token belongs to and what it may do.
async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    let actor = auth(&state, &headers, false)?;
    ok_json(
        StatusCode::OK,
        json!({"name": actor.who, "role": actor.role.name()}),
    )
}

async fn list_hosts(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    auth(&state, &headers, false)?;
    let hosts = query_json(&state, Query::Hosts).await?;
    ok_json(StatusCode::OK, json!({"hosts": hosts}))
}

async fn add_host(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let mut host: WireHost = parse(&body)?;
    host.id = 0;
    host.validate_new().map_err(ApiError::from)?;
    let id = send_input(&state, WireInput::AddHost { host }, actor).await?;
    let hosts = query_json(&state, Query::Hosts).await?;
    let host = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["id"] == json!(id)).cloned())
        .unwrap_or(json!({"id": id}));
    ok_json(StatusCode::CREATED, host)
}

async fn host_op(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath((name, op)): UrlPath<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let _: EmptyBody = parse(&body)?;
    let make = match op.as_str() {
        "drain" => |host| WireInput::Drain { host },
        "resume" => |host| WireInput::Resume { host },
        "offline" => |host| WireInput::Offline { host },
        other => {
            return Err(ApiError::field(
                404,
                "op",
                format!("unknown host operation `{other}`: drain, resume or offline"),
            ));
        }
    };
    let id = host_id(&state, &name).await?;
    send_input(&state, make(id), actor).await?;
    let hosts = query_json(&state, Query::Hosts).await?;
    let host = hosts
        .as_array()
        .and_then(|a| a.iter().find(|h| h["id"] == json!(id)).cloned())
        .unwrap_or(json!({"id": id}));
    ok_json(StatusCode::OK, host)
}

async fn remove_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let id = host_id(&state, &name).await?;
    send_input(&state, WireInput::RemoveHost { host: id }, actor).await?;
    ok_json(
        StatusCode::OK,
        json!({"id": id, "name": name, "removed": true}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u64>,
    /// Only rows older than this one (the previous page's `next_before`).
    before: Option<u64>,
}

async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Params<AuditQuery>,
) -> ApiResult {
    auth(&state, &headers, true)?;
    let q = params(q)?;
    let limit = list_limit(q.limit, AUDIT_LIST_DEFAULT, LIST_ROWS_MAX)?;
    let before = q.before;
    let (rows, next) = state
        .reads
        .read(move |c| store::list_audit(c, before, limit))
        .await?;
    ok_json(StatusCode::OK, json!({"audit": rows, "next_before": next}))
}

/// The VMs berth found on its hosts and keeps rather than destroys (see `Control::judge_orphans`).
async fn list_orphans(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    auth(&state, &headers, false)?;
    let rows = state.reads.read(store::list_orphans).await?;
    ok_json(StatusCode::OK, json!({"orphans": rows}))
}

/// Destroys a kept orphan: the operator's word that it is not needed.
async fn destroy_orphan(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let actor = auth(&state, &headers, true)?;
    let vm = parse_vm_id(&id)?;
    let _: EmptyBody = parse(&body)?;
    let (reply, rx) = oneshot::channel();
    let gone = || ApiError::new(503, "the daemon is shutting down");
    state
        .tx
        .send(Msg::DestroyOrphan { vm, actor, reply })
        .await
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())??;
    ok_json(
        StatusCode::OK,
        json!({"vm": vm, "name": berth_drivers::vm_name(vm), "state": "destroying"}),
    )
}

/// Server-sent events: one `data:` line of JSON per state change. A reader that falls too far
/// behind gets a `lagged` event saying how many it missed.
async fn events(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    auth(&state, &headers, false)?;
    let rx = state.events.subscribe();
    let mut shutdown = state.shutdown.clone();
    let stream = BroadcastStream::new(rx)
        .map(|item| {
            Ok::<_, Infallible>(match item {
                Ok(text) => SseEvent::default().data(&*text),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    SseEvent::default()
                        .event("lagged")
                        .data(json!({"missed": n}).to_string())
                }
            })
        })
        // End the stream at shutdown, or graceful shutdown would wait for readers forever.
        .take_until(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

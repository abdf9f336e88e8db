//! The HTTP API (axum, JSON) under `/v1`, with bearer-token auth. Changes go to the control
//! loop as inputs and are answered once journaled; reads come from SQLite on the API's own
//! connections, or from the scheduler through a query to the loop. Bad input gets a 4xx with
//! `{"error": "...", "field": "..."}` and changes nothing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequestParts, Path as UrlPath, Query as UrlQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_api as api;
use berth_sched::REQUEST_VMS_MAX;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::DaemonError;
use crate::config::Role;
use crate::control::{Actor, Answer, Msg, Query, Refusal, RefusalKind};
use crate::feed::{Feed, Resume, Stamped};
use crate::limits::{
    AUDIT_LIST_DEFAULT, CHANGE_LIST_DEFAULT, CHANGE_LIST_MAX, CHANGE_REQUESTS_MAX,
    LIST_ANSWERS_AT_ONCE_MAX, LIST_ROWS_MAX, QUEUE_LIST_DEFAULT, QUEUE_LIST_MAX,
    REQUEST_LIST_DEFAULT, VM_LIST_DEFAULT, list_limit,
};
use crate::store::{self, VmFilter};
use crate::wire::{WireHold, WireHost, WireInput, WireRequest, WireTemplate, check_name};

mod eta;
mod images;
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
    conns: Vec<Mutex<crate::db::Db>>,
    next: AtomicUsize,
    /// Long lists built at once (`LIST_ANSWERS_AT_ONCE_MAX`): each of 100,000 rows takes tens
    /// of MiB while it is built, so a flood of them queues here instead of piling up memory.
    lists: tokio::sync::Semaphore,
}

impl ReadPool {
    pub fn open(at: &crate::db::StoreAt, n: usize) -> Result<ReadPool, DaemonError> {
        let conns = (0..n.max(1))
            .map(|_| crate::db::Db::connect(at).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPool {
            conns,
            next: AtomicUsize::new(0),
            lists: tokio::sync::Semaphore::new(LIST_ANSWERS_AT_ONCE_MAX),
        })
    }

    /// A place among the long lists being built; held until the answer is written.
    pub(crate) async fn list_place(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.lists
            .acquire()
            .await
            .map_err(|_| ApiError::new(503, "the daemon is shutting down"))
    }

    /// Runs a read on a blocking thread. A read that meets a connection the server dropped
    /// (a PostgreSQL restart ends every session, and a connection learns it at its next use)
    /// runs once more on a new one: reads change nothing, and the caller should not see an
    /// error for a server that is back.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl Fn(&mut crate::db::Db) -> Result<T, DaemonError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let pool = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.conns.len();
            let mut conn = pool.conns[i].lock().unwrap_or_else(|e| e.into_inner());
            // A server that restarted or a network that dropped left a dead connection.
            if conn.is_closed() {
                conn.reconnect()?;
            }
            match f(&mut conn) {
                Err(e) if is_unreachable(&e) => {
                    conn.reconnect()?;
                    f(&mut conn)
                }
                done => done,
            }
        })
        .await;
        match joined {
            Ok(Ok(v)) => Ok(v),
            // A database that cannot be reached now (a PostgreSQL server restarting) is
            // worth another try; the connection is opened again on its next use.
            Ok(Err(e)) if is_unreachable(&e) => {
                tracing::warn!(error = %e, "read failed: the database cannot be reached");
                Err(ApiError::new(503, e.to_string()))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "read failed");
                Err(ApiError::new(500, e.to_string()))
            }
            Err(_) => Err(ApiError::new(500, "read task failed")),
        }
    }
}

/// A read that failed because the database could not be reached (worth another try).
fn is_unreachable(e: &DaemonError) -> bool {
    matches!(e, DaemonError::Sql { source, .. } if source.is_unreachable())
}

#[derive(Clone)]
pub struct AppState {
    pub(crate) tx: mpsc::Sender<Msg>,
    pub(crate) reads: Arc<ReadPool>,
    pub(crate) events: Arc<crate::feed::Feed>,
    pub(crate) tokens: Arc<Vec<Token>>,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// The tokens (by name) with a forecast running: one each, `FORECASTS_AT_ONCE_MAX` in all.
    pub(crate) forecasts: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Whether writes are taken (see `disk`).
    pub(crate) health: Arc<crate::disk::Health>,
    /// The templates this start was configured with (`GET /v1/templates`).
    pub(crate) templates: Arc<Vec<WireTemplate>>,
    /// How pulses are sampled and kept (`GET /v1/pulses`).
    pub(crate) pulses: crate::config::PulsesSection,
    /// The drivers' pulls of base images, for what a provisioning VM waits for, and what each
    /// host's driver last counted of its images.
    pub(crate) pulls: berth_drivers::images::Pulls,
    /// The daemon's image store (`[drivers] image_store`), when one is set.
    pub(crate) image_store: Option<berth_drivers::images::ImageStore>,
    /// Queue positions and estimated starts, made again at most every `ETA_REFRESH_MS`.
    pub(crate) eta: Arc<eta::EtaTable>,
    /// Whether this daemon leads: a follower sends what only the leader does there.
    pub(crate) lease: crate::lease::Gate,
}

/// An error answer: its HTTP status, what went wrong, and the field at fault when one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    pub field: Option<String>,
    /// The leader's base URL, for a follower's answer to what only the leader does: the
    /// router makes it a `307` to the same path there (see `routes`).
    pub leader: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
            leader: None,
        }
    }

    /// A follower's answer to what only the leader does: the leader's address, or a 503 while
    /// nobody leads (a takeover is under way).
    pub(crate) fn not_leader(gate: &crate::lease::Gate) -> ApiError {
        match gate.leader_address() {
            Some(address) => ApiError {
                status: 307,
                error: format!("this daemon follows; the leader is {address}"),
                field: None,
                leader: Some(address),
            },
            None => ApiError::new(
                503,
                "no daemon leads at the moment (a takeover is under way); retry in a few seconds",
            ),
        }
    }

    pub fn field(status: u16, field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: Some(field.to_owned()),
            leader: None,
        }
    }
}

/// The control loop's refusals as HTTP: the one place that chooses their statuses.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match r.kind {
            RefusalKind::Invalid => 400,
            RefusalKind::NotFound => 404,
            RefusalKind::Conflict => 409,
            RefusalKind::Unwritable => 507,
        };
        ApiError {
            status,
            error: r.message,
            field: r.field,
            leader: None,
        }
    }
}

impl From<crate::wire::FieldError> for ApiError {
    fn from(e: crate::wire::FieldError) -> ApiError {
        ApiError::field(400, &e.field, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = api::ErrorBody {
            error: self.error,
            field: self.field,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(leader) = self.leader {
            resp.extensions_mut().insert(LeaderAt(leader));
        }
        resp
    }
}

/// The leader's base URL on a follower's answer, for the router's redirect.
#[derive(Clone, Debug)]
pub(crate) struct LeaderAt(pub String);

type ApiResult = Result<Response, ApiError>;

/// An answer of the API's types (`berth_api`), the only kind the daemon sends as JSON.
fn ok_json<T: Serialize>(status: StatusCode, body: &T) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// A caller with a known token, of any role. Routes take it (or [`Operator`]) as their first
/// argument, so a route cannot forget to check: the router walk in the tests proves every
/// `/v1` route but `/healthz` asks for one.
pub(crate) struct Reader(pub(crate) Actor);

/// A caller with an operator token: every route that changes something takes one.
pub(crate) struct Operator(pub(crate) Actor);

impl<S: Send + Sync> FromRequestParts<S> for Reader
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Reader, ApiError> {
        auth(&AppState::from_ref(state), &parts.headers, false).map(Reader)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Operator
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Operator, ApiError> {
        auth(&AppState::from_ref(state), &parts.headers, true).map(Operator)
    }
}

/// Checks the bearer token; `operator` routes need the operator role.
fn auth(state: &AppState, headers: &HeaderMap, operator: bool) -> Result<Actor, ApiError> {
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
    apply_input(state, input, actor).await.map(|a| a.id)
}

/// As [`send_input`], with all the input's answer (a submit's request row).
async fn apply_input(
    state: &AppState,
    input: WireInput,
    actor: Actor,
) -> Result<crate::control::Applied, ApiError> {
    if !state.lease.may_act() {
        return Err(ApiError::not_leader(&state.lease));
    }
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
    let done = rx
        .await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    done.map_err(ApiError::from)
}

/// Asks the control loop; a follower's replica answers the reads it can (see
/// `Query::replica_answers`), and the rest go to the leader.
pub(crate) async fn query(state: &AppState, q: Query) -> Result<Answer, ApiError> {
    if !state.lease.may_act() && !q.replica_answers() {
        return Err(ApiError::not_leader(&state.lease));
    }
    let (reply, rx) = oneshot::channel();
    state
        .tx
        .send(Msg::Query { query: q, reply })
        .await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    match rx.await {
        Ok(Answer::AskTheLeader) => Err(ApiError::not_leader(&state.lease)),
        Ok(answer) => Ok(answer),
        Err(_) => Err(ApiError::new(503, "the daemon is shutting down")),
    }
}

/// About the JSON length of one listed VM, to size a page's buffer.
const VM_ROW_BYTES_EST: usize = 192;
/// A page of VMs at least this long is read in two parts at once, on two of the API's
/// connections: fetching and writing its rows is nearly all of a long list's time. The split
/// costs a query that reads up to half the page's rows to find its middle. A round figure,
/// not tuned: a page of 10,000 takes about a tenth of the 100,000-VM list's time either way.
const VM_LIST_SPLIT_MIN: u64 = 10_000;

/// A route's query parameters as axum hands them over: parsed after the token is checked, so
/// that a caller without one learns nothing from them.
pub(crate) type Params<T> = Result<UrlQuery<T>, axum::extract::rejection::QueryRejection>;

/// The query parameters, or a 400 naming `query`.
pub(crate) fn params<T>(q: Params<T>) -> Result<T, ApiError> {
    q.map(|UrlQuery(q)| q)
        .map_err(|e| ApiError::field(400, "query", e.body_text()))
}

/// Accepts `12`, `vm12` and `berth-vm12`.
fn parse_vm_id(s: &str) -> Result<u64, ApiError> {
    api::vm_id(s).ok_or_else(|| {
        ApiError::field(
            400,
            "vm",
            format!("`{s}` is not a vm id (12, vm12 or berth-vm12)"),
        )
    })
}

/// Accepts `7` and `r7`.
fn parse_request_id(s: &str) -> Result<u64, ApiError> {
    api::request_id(s).ok_or_else(|| {
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

fn unexpected() -> ApiError {
    ApiError::new(500, "unexpected answer from the control loop")
}

async fn hosts(state: &AppState) -> Result<Vec<api::HostRow>, ApiError> {
    match query(state, Query::Hosts).await? {
        Answer::Hosts(mut hosts) => {
            for h in &mut hosts {
                images::add_to_host(state, h);
            }
            Ok(hosts)
        }
        _ => Err(unexpected()),
    }
}

/// The host numbered `id` as the API shows it.
async fn host_row(state: &AppState, id: u64) -> Result<api::HostRow, ApiError> {
    hosts(state)
        .await?
        .into_iter()
        .find(|h| h.id == id)
        .ok_or_else(|| ApiError::field(404, "host", format!("host h{id} is gone")))
}

async fn why(state: &AppState, id: u64) -> Result<Option<api::Why>, ApiError> {
    match query(state, Query::Why(id)).await? {
        Answer::Why(why) => Ok(why.map(|w| *w)),
        _ => Err(unexpected()),
    }
}

/// Every route of the API, each with its documentation (see `routes` for the whole router).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(status))
        .routes(routes!(submit, list_requests))
        .routes(routes!(get_request, cancel))
        .routes(routes!(list_changes))
        .routes(routes!(list_accounts))
        .routes(routes!(get_change))
        .routes(routes!(list_vms))
        .routes(routes!(get_vm))
        .routes(routes!(vm_result))
        .routes(routes!(vm_release))
        .routes(routes!(vm_extend))
        .routes(routes!(vm_console))
        .routes(routes!(vm_screenshot))
        .routes(routes!(vm_serial))
        .routes(routes!(queue))
        .routes(routes!(whoami))
        .routes(routes!(list_templates))
        .routes(routes!(list_hosts, add_host))
        .routes(routes!(get_host, remove_host))
        .routes(routes!(drain_host))
        .routes(routes!(resume_host))
        .routes(routes!(offline_host))
        .routes(routes!(events))
        .routes(routes!(audit))
        .routes(routes!(list_orphans))
        .routes(routes!(destroy_orphan))
        .routes(routes!(predict::drain))
        .routes(routes!(images::list_images))
        .routes(routes!(images::get_image))
        .routes(routes!(images::push_image))
        .routes(routes!(images::evict_image))
}

/// Writes an operator's action to the audit table before the answer goes out.
pub(crate) async fn write_audit(
    state: &AppState,
    actor: Actor,
    action: &str,
    target: String,
) -> Result<(), ApiError> {
    if !state.lease.may_act() {
        return Err(ApiError::not_leader(&state.lease));
    }
    let row = store::AuditRow {
        at_ms: crate::control::wall_ms(),
        who: actor.who,
        role: actor.role.name().to_owned(),
        action: action.to_owned(),
        target,
        outcome: "ok".to_owned(),
    };
    state
        .tx
        .send(Msg::Audit(row))
        .await
        .map_err(|_| ApiError::new(503, "the daemon is shutting down"))?;
    // The loop answers queries after committing the batch that holds the messages sent
    // before them: once this is answered, the audit row is on disk.
    query(state, Query::HostId(String::new())).await?;
    Ok(())
}

/// `ok`, or `degraded: why` while writes are refused (reads still answer, so it stays 200).
#[utoipa::path(get, path = "/healthz", tag = "daemon", security(()),
    responses((status = 200, description = "`ok`, or `degraded: why` while writes are refused; on PostgreSQL followed by the daemon's role, `(leader, epoch N)` or `(follower; leader URL, epoch N)`", body = String, content_type = "text/plain")))]
async fn healthz(State(state): State<AppState>) -> String {
    let health = match state.health.degraded() {
        None => "ok".to_owned(),
        Some(why) => format!("degraded: {why}"),
    };
    let lease = state.lease.figures();
    match lease.role {
        crate::lease::Role::Sole => format!("{health}\n"),
        crate::lease::Role::Leader => format!("{health} (leader, epoch {})\n", lease.epoch),
        crate::lease::Role::Follower => match state.lease.leader_address() {
            Some(a) => format!("{health} (follower; leader {a}, epoch {})\n", lease.epoch),
            None => format!("{health} (follower; no leader at the moment)\n"),
        },
    }
}

#[utoipa::path(get, path = "/v1/status", tag = "daemon", responses((status = 200, body = api::Status)))]
async fn status(Reader(_): Reader, State(state): State<AppState>) -> ApiResult {
    let Answer::Status(live) = query(&state, Query::Status).await? else {
        return Err(unexpected());
    };
    let counts = state.reads.read(store::vm_counts).await?;
    let degraded = state.health.degraded();
    let vms_by_state = counts
        .into_iter()
        .map(|(name, n)| {
            name.parse::<api::VmState>()
                .map(|s| (s, n))
                .map_err(|e| ApiError::new(500, format!("the vms table holds a state {e}")))
        })
        .collect::<Result<_, _>>()?;
    let body = api::Status {
        api_version: api::API_VERSION.to_owned(),
        hosts: live.hosts,
        live_vms: live.vms,
        vms_by_state,
        live_requests: live.live_requests,
        queue_len: live.queue_len,
        journal_batches: live.journal_batches,
        orphans_kept: live.orphans_kept,
        now_ms: live.now_ms,
        server_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        writable: degraded.is_none(),
        degraded,
        leadership: leadership(&state.lease),
    };
    ok_json(StatusCode::OK, &body)
}

/// The lease as `/v1/status` shows it; `None` for the sole daemon.
fn leadership(gate: &crate::lease::Gate) -> Option<api::Leadership> {
    let f = gate.figures();
    let role = match f.role {
        crate::lease::Role::Sole => return None,
        role => role.name().to_owned(),
    };
    Some(api::Leadership {
        role,
        leader: f.holder.filter(|h| !h.expired).map(|h| h.address),
        epoch: f.epoch,
        takeovers: f.takeovers,
    })
}

#[utoipa::path(post, path = "/v1/requests", tag = "requests", request_body = api::SubmitRequest,
    responses((status = 201, body = api::RequestRow)))]
async fn submit(
    Operator(actor): Operator,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult {
    let b: api::SubmitRequest = parse(&body)?;
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
    if let Some(a) = &b.account {
        crate::wire::check_text("account", a)?;
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
        account: b.account,
    };
    // The row as committed comes with the answer: in a burst, reading it back would cost the
    // store a query per request.
    let row = apply_input(&state, WireInput::Submit { request }, actor)
        .await
        .map_err(|e| with_known_templates(&state, e))?
        .request
        .ok_or_else(|| ApiError::new(500, "request committed but its row was not written"))?;
    ok_json(StatusCode::CREATED, &row)
}

/// A refusal of an unknown template, with the names of the ones there are.
fn with_known_templates(state: &AppState, mut e: ApiError) -> ApiError {
    if e.field.as_deref() == Some("template") && e.error.starts_with("unknown template") {
        let mut names: Vec<&str> = state.templates.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        e.error = format!("{}; known templates: {}", e.error, names.join(", "));
    }
    e
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RequestListQuery {
    /// Only requests in this state.
    state: Option<String>,
    /// Rows on the page (at most `LIST_ROWS_MAX`).
    limit: Option<u64>,
    /// Only requests older than this one (the previous page's `next_before`).
    before: Option<String>,
}

/// Refuses a state filter that no row can have, naming the ones there are.
fn check_state<T: std::str::FromStr + std::fmt::Display>(
    field: &str,
    s: Option<&str>,
    all: &[T],
) -> Result<(), ApiError> {
    match s {
        Some(s) if s.parse::<T>().is_err() => Err(ApiError::field(
            400,
            field,
            format!(
                "unknown state `{s}`; one of {}",
                all.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// Requests, newest first, a page at a time: `next_before` (when present) asks for the next.
#[utoipa::path(get, path = "/v1/requests", tag = "requests", params(RequestListQuery),
    responses((status = 200, body = api::RequestPage)))]
async fn list_requests(
    Reader(_): Reader,
    State(state): State<AppState>,
    q: Params<RequestListQuery>,
) -> ApiResult {
    let q = params(q)?;
    check_state("state", q.state.as_deref(), api::RequestState::ALL)?;
    let limit = list_limit(q.limit, REQUEST_LIST_DEFAULT, LIST_ROWS_MAX)?;
    let before = q.before.as_deref().map(parse_request_id).transpose()?;
    let _place = state.reads.list_place().await?;
    let mut rows = state
        .reads
        .read(move |c| store::list_requests(c, q.state.as_deref(), before, limit + 1))
        .await?;
    // One more than the page was read, to know whether there is a next one.
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_before = more.then(|| rows.last().map(|r| r.id)).flatten();
    state.eta.fill(&state, &mut rows).await;
    ok_json(
        StatusCode::OK,
        &api::RequestPage {
            requests: rows,
            next_before,
        },
    )
}

#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "`7` or `r7`")),
    responses((status = 200, body = api::RequestDetail)))]
async fn get_request(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    let id = parse_request_id(&id)?;
    let mut row = state
        .reads
        .read(move |c| store::get_request(c, id))
        .await?
        .ok_or_else(|| ApiError::field(404, "request", format!("no request r{id}")))?;
    state.eta.fill(&state, std::slice::from_mut(&mut row)).await;
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
    let why = why(&state, id).await?;
    ok_json(
        StatusCode::OK,
        &api::RequestDetail {
            request: row,
            vms,
            why,
        },
    )
}

/// The daemon's wall clock (ms since the epoch): what an open change's turnaround counts to.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ChangeListQuery {
    /// Rows on the page (100 unless asked, at most `CHANGE_LIST_MAX`).
    limit: Option<u64>,
    /// Only changes whose first request is older than this one (the previous page's
    /// `next_before`).
    before: Option<String>,
}

/// Staged changes (the `change` requests name), newest first by first request, each with its
/// VMs by where they stand and its turnaround so far; `next_before` pages on.
#[utoipa::path(get, path = "/v1/changes", tag = "requests", params(ChangeListQuery),
    responses((status = 200, body = api::ChangePage)))]
async fn list_changes(
    Reader(_): Reader,
    State(state): State<AppState>,
    q: Params<ChangeListQuery>,
) -> ApiResult {
    let q = params(q)?;
    let limit = list_limit(q.limit, CHANGE_LIST_DEFAULT, CHANGE_LIST_MAX)?;
    let before = q
        .before
        .as_deref()
        .map(|b| {
            parse_request_id(b).map_err(|_| {
                ApiError::field(
                    400,
                    "before",
                    format!("`{b}` is not a request id (7 or r7)"),
                )
            })
        })
        .transpose()?;
    let now_ms = wall_ms();
    let mut rows = state
        .reads
        .read(move |c| store::list_changes(c, before, limit + 1, now_ms))
        .await?;
    // One more than the page was read, to know whether there is a next one.
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_before = more.then(|| rows.last().map(|r| r.first_request)).flatten();
    if rows.iter().any(|r| r.vms_waiting > 0) {
        let mut waiting = state.reads.read(store::waiting_change_requests).await?;
        state.eta.fill(&state, &mut waiting).await;
        let mut by_change: BTreeMap<String, Vec<api::RequestRow>> = BTreeMap::new();
        for r in waiting {
            if let Some(change) = r.spec.change.clone() {
                by_change.entry(change).or_default().push(r);
            }
        }
        for row in &mut rows {
            if let Some(requests) = by_change.get(&row.change) {
                eta::EtaTable::change(row, requests);
            }
        }
    }
    ok_json(
        StatusCode::OK,
        &api::ChangePage {
            changes: rows,
            next_before,
        },
    )
}

/// A staged change with its requests, oldest first (the first `CHANGE_REQUESTS_MAX`).
#[utoipa::path(get, path = "/v1/changes/{id}", tag = "requests",
    params(("id" = String, Path, description = "the change's id as its requests named it, percent-encoded")),
    responses((status = 200, body = api::ChangeDetail)))]
async fn get_change(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    crate::wire::check_text("change", &id)?;
    let now_ms = wall_ms();
    let asked = id.clone();
    let (mut row, mut requests) = state
        .reads
        .read(move |c| {
            let row = store::get_change(c, &asked, now_ms)?;
            let requests = match &row {
                Some(_) => store::change_requests(c, &asked, CHANGE_REQUESTS_MAX)?,
                None => Vec::new(),
            };
            Ok(row.map(|r| (r, requests)))
        })
        .await?
        .ok_or_else(|| ApiError::field(404, "change", format!("no request names change `{id}`")))?;
    state.eta.fill(&state, &mut requests).await;
    eta::EtaTable::change(&mut row, &requests);
    ok_json(
        StatusCode::OK,
        &api::ChangeDetail {
            change: row,
            requests,
        },
    )
}

/// Cancels a request; cancelling one that has ended already answers how it ended.
#[utoipa::path(delete, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "`7` or `r7`")),
    responses((status = 200, body = api::RequestRow)))]
async fn cancel(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    let id = parse_request_id(&id)?;
    let sent = send_input(&state, WireInput::Cancel { request: id }, actor).await;
    let row = state.reads.read(move |c| store::get_request(c, id)).await?;
    match (sent, row) {
        (Ok(_), Some(row)) => ok_json(StatusCode::OK, &row),
        (Ok(_), None) => Err(ApiError::field(404, "request", format!("no request r{id}"))),
        // Cancelling what has ended already is done: answer with how it ended, as a retry of
        // a cancel whose answer was lost would want to hear.
        (Err(e), Some(row)) if e.status == 404 => ok_json(StatusCode::OK, &row),
        (Err(e), _) => Err(e),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VmListQuery {
    /// Only VMs in this state.
    state: Option<String>,
    /// Only the VMs of this request (`7` or `r7`).
    request: Option<String>,
    /// Only VMs on this host.
    host: Option<String>,
    /// Only VMs that have not ended.
    #[serde(default)]
    live: bool,
    /// Rows on the page (at most `LIST_ROWS_MAX`).
    limit: Option<u64>,
    /// Only VMs numbered above this one (the previous page's `next_after`).
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(VmListQuery),
    responses((status = 200, body = api::VmPage)))]
async fn list_vms(
    Reader(_): Reader,
    State(state): State<AppState>,
    q: Params<VmListQuery>,
) -> ApiResult {
    let q = params(q)?;
    check_state("state", q.state.as_deref(), api::VmState::ALL)?;
    let request = q.request.as_deref().map(parse_request_id).transpose()?;
    let limit = list_limit(q.limit, VM_LIST_DEFAULT, LIST_ROWS_MAX)?;
    let after = q.after.as_deref().map(parse_vm_id).transpose()?;
    let _place = state.reads.list_place().await?;
    let filter = VmFilter {
        state: q.state,
        request,
        host: q.host,
        live: q.live,
        after,
        through: None,
        limit: None,
    };
    let holds = if filter.state.as_deref().is_none_or(|s| s == "held") {
        let held = state.reads.read(store::held_vm_ids).await?;
        hold_rows(&state, held).await?
    } else {
        BTreeMap::new()
    };
    let holds = Arc::new(holds);
    // One part of the page, written on a blocking thread row by row as `api::VmPage`
    // serialises its `vms`: a list of 100,000 VMs is ~17 MB of JSON, and no list of rows is
    // kept on the way. Room for the part up front (untouched capacity costs no memory): growing
    // the buffer by doubling would copy it about twice over.
    let part = |filter: VmFilter, shown: u64| {
        let holds = holds.clone();
        state.reads.read(move |c| {
            let mut out = Vec::with_capacity((shown as usize).saturating_mul(VM_ROW_BYTES_EST));
            let (n, next) = store::write_vms_json(c, &filter, &holds, &mut out, shown as usize)?;
            Ok((out, n, next))
        })
    };
    // A long page is read in two parts at once, on two connections: up to its middle VM, and
    // after it. Each part asks for one row more than it shows, to know whether more follow.
    let half = limit / 2;
    let mid = if limit >= VM_LIST_SPLIT_MIN {
        let f = filter.clone();
        state
            .reads
            .read(move |c| store::nth_vm_id(c, &f, half))
            .await?
    } else {
        None
    };
    let parts = match mid {
        None => vec![
            part(
                VmFilter {
                    limit: Some(limit + 1),
                    ..filter
                },
                limit,
            )
            .await?,
        ],
        Some(mid) => {
            let first = VmFilter {
                through: Some(mid),
                limit: Some(half + 1),
                ..filter.clone()
            };
            let second = VmFilter {
                after: Some(mid),
                limit: Some(limit - half + 1),
                ..filter
            };
            let (first, second) = tokio::try_join!(part(first, half), part(second, limit - half))?;
            // VMs that came into the filter below the middle since it was found make the first
            // part longer than half the page: then it is the page, and the next one goes on
            // from it.
            if first.2.is_some() {
                vec![first]
            } else {
                vec![first, second]
            }
        }
    };
    let n: usize = parts.iter().map(|p| p.1).sum();
    let next = parts.last().and_then(|p| p.2);
    let next = next.map_or_else(|| "null".to_owned(), |id| id.to_string());
    // The parts go out as they are, between the page's head and tail, not copied into one.
    let mut chunks: Vec<bytes::Bytes> = vec![bytes::Bytes::from_static(b"{\"vms\":[")];
    let mut rows_before = false;
    for (rows, n, _) in parts {
        if n > 0 && rows_before {
            chunks.push(bytes::Bytes::from_static(b","));
        }
        rows_before |= n > 0;
        chunks.push(rows.into());
    }
    chunks.push(format!("],\"count\":{n},\"next_after\":{next}}}").into());
    let length: usize = chunks.iter().map(bytes::Bytes::len).sum();
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, body = api::VmDetail)))]
async fn get_vm(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    let id = parse_vm_id(&id)?;
    let (row, history) = state
        .reads
        .read(move |c| Ok((store::get_vm(c, id)?, store::vm_history(c, id)?)))
        .await?;
    let row = row.ok_or_else(|| ApiError::field(404, "vm", format!("no vm {id}")))?;
    let mut vm = with_hold(&state, row).await?;
    vm.detail = pull_detail(&state, &vm);
    ok_json(StatusCode::OK, &api::VmDetail { vm, history })
}

/// The VM as it is after a change to it.
async fn vm_after(state: &AppState, id: u64) -> ApiResult {
    let row = state
        .reads
        .read(move |c| store::get_vm(c, id))
        .await?
        .ok_or_else(|| ApiError::field(404, "vm", format!("no vm {id}")))?;
    ok_json(StatusCode::OK, &with_hold(state, row).await?)
}

/// The breakpoints of these VMs, from the scheduler (the database does not keep extensions).
async fn hold_rows(state: &AppState, ids: Vec<u64>) -> Result<BTreeMap<u64, api::Hold>, ApiError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    match query(state, Query::Holds(ids)).await? {
        Answer::Holds(holds) => Ok(holds
            .into_iter()
            .map(|(id, (owner, expires_ms))| (id, api::Hold { owner, expires_ms }))
            .collect()),
        _ => Err(unexpected()),
    }
}

/// What a provisioning VM waits for: the pull of its template's base image to its host, while
/// one runs (`pulling linux.qcow2 41%`).
fn pull_detail(state: &AppState, vm: &api::VmRow) -> Option<String> {
    if vm.state != api::VmState::Provisioning {
        return None;
    }
    let template = state
        .templates
        .iter()
        .find(|t| Some(&t.name) == vm.template.as_ref())?;
    let base = template.base_image.as_deref().unwrap_or(&template.name);
    let progress = state.pulls.progress(vm.host.as_deref()?, base)?;
    Some(progress.to_string())
}

/// A VM row with its breakpoint, if it is held.
async fn with_hold(state: &AppState, mut row: api::VmRow) -> Result<api::VmRow, ApiError> {
    if row.state == api::VmState::Held {
        row.hold = hold_rows(state, vec![row.id]).await?.remove(&row.id);
    }
    Ok(row)
}

/// Reports how a VM's job ended.
#[utoipa::path(post, path = "/v1/vms/{id}/result", tag = "vms", request_body = api::JobResult,
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, body = api::VmRow)))]
async fn vm_result(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let id = parse_vm_id(&id)?;
    let b: api::JobResult = parse(&body)?;
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

/// Ends a breakpoint: the held VM is destroyed.
#[utoipa::path(post, path = "/v1/vms/{id}/release", tag = "vms", request_body = api::Empty,
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, body = api::VmRow)))]
async fn vm_release(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let id = parse_vm_id(&id)?;
    let _: api::Empty = parse(&body)?;
    send_input(&state, WireInput::Release { vm: id }, actor).await?;
    vm_after(&state, id).await
}

/// Gives a breakpoint more time.
#[utoipa::path(post, path = "/v1/vms/{id}/extend", tag = "vms", request_body = api::Extend,
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, body = api::VmRow)))]
async fn vm_extend(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let id = parse_vm_id(&id)?;
    let b: api::Extend = parse(&body)?;
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

/// Where the VM's graphical console listens; its password only for operators, and audited.
#[utoipa::path(get, path = "/v1/vms/{id}/console", tag = "vms",
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, body = api::ConsoleAddress)))]
async fn vm_console(
    Reader(actor): Reader,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
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
        write_audit(&state, actor, "console_password", name.clone()).await?;
    }
    let body = api::ConsoleAddress {
        vm: id,
        name,
        address: addr.to_string(),
        ssh: format!(
            "ssh -L {port}:localhost:{port} {host}",
            port = addr.port,
            host = addr.host
        ),
        host: addr.host,
        port: addr.port,
        password: addr.password,
    };
    ok_json(StatusCode::OK, &body)
}

/// The VM's screen as a PNG image.
#[utoipa::path(get, path = "/v1/vms/{id}/screenshot", tag = "vms",
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, description = "The screen", content_type = "image/png", body = Vec<u8>)))]
async fn vm_screenshot(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    let id = parse_vm_id(&id)?;
    let (driver, name) = vm_on_host(&state, id).await?;
    let png = driver.screenshot(&name).await.map_err(driver_failure)?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SerialQuery {
    /// How much of the log's end to send, in bytes.
    tail_bytes: Option<usize>,
}

/// The end of a VM's serial console log as plain bytes: the last `tail_bytes` (default
/// [`SERIAL_TAIL_DEFAULT`], at most [`SERIAL_TAIL_MAX`]). `X-Berth-Log-Bytes` gives the whole
/// log's length, so a client can tell it was cut.
#[utoipa::path(get, path = "/v1/vms/{id}/serial", tag = "vms",
    params(("id" = String, Path, description = "`12`, `vm12` or `berth-vm12`"), SerialQuery),
    responses((status = 200, description = "The log's end; `X-Berth-Log-Bytes` gives its whole length", content_type = "text/plain", body = String)))]
async fn vm_serial(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    q: Params<SerialQuery>,
) -> ApiResult {
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct QueueQuery {
    /// Entries on the page (at most `QUEUE_LIST_MAX`).
    limit: Option<usize>,
}

/// Waiting requests in the order they are served, each with why it waits.
#[utoipa::path(get, path = "/v1/queue", tag = "requests", params(QueueQuery),
    responses((status = 200, body = api::Queue)))]
async fn queue(
    Reader(_): Reader,
    State(state): State<AppState>,
    q: Params<QueueQuery>,
) -> ApiResult {
    let q = params(q)?;
    let limit = list_limit(
        q.limit.map(|l| l as u64),
        QUEUE_LIST_DEFAULT as u64,
        QUEUE_LIST_MAX as u64,
    )? as usize;
    let Answer::Queue(entries) = query(&state, Query::Queue(limit)).await? else {
        return Err(unexpected());
    };
    let ids: Vec<u64> = entries.iter().map(|(id, _)| *id).collect();
    let rows = state
        .reads
        .read(move |c| {
            ids.iter()
                .map(|&id| store::get_request(c, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let (mut found, whys): (Vec<api::RequestRow>, Vec<Option<api::Why>>) = rows
        .into_iter()
        .zip(entries)
        .filter_map(|(row, (_, why))| Some((row?, why)))
        .unzip();
    state.eta.fill(&state, &mut found).await;
    let queue = found
        .into_iter()
        .zip(whys)
        .map(|(request, why)| api::QueueEntry { request, why })
        .collect();
    ok_json(StatusCode::OK, &api::Queue { queue })
}

/// Who the token belongs to and what it may do.
#[utoipa::path(get, path = "/v1/whoami", tag = "daemon", responses((status = 200, body = api::WhoAmI)))]
async fn whoami(Reader(actor): Reader) -> ApiResult {
    ok_json(
        StatusCode::OK,
        &api::WhoAmI {
            name: actor.who,
            role: actor.role,
        },
    )
}

/// Accounts under fair share, in the order the queue serves them: each one's weight and
/// entitled share against its share of recent usage, and what it holds now. Every configured
/// account and the most using others; the rest summed as `other`.
#[utoipa::path(get, path = "/v1/accounts", tag = "requests",
    responses((status = 200, body = api::AccountList)))]
async fn list_accounts(Reader(_): Reader, State(state): State<AppState>) -> ApiResult {
    match query(&state, Query::Accounts).await? {
        Answer::Accounts(list) => ok_json(StatusCode::OK, &list),
        _ => Err(unexpected()),
    }
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = api::HostList)))]
async fn list_hosts(Reader(_): Reader, State(state): State<AppState>) -> ApiResult {
    let hosts = hosts(&state).await?;
    ok_json(StatusCode::OK, &api::HostList { hosts })
}

/// Every template, by name, with the host classes that could run it.
#[utoipa::path(get, path = "/v1/templates", tag = "requests",
    responses((status = 200, body = api::TemplateList)))]
async fn list_templates(Reader(_): Reader, State(state): State<AppState>) -> ApiResult {
    let hosts = hosts(&state).await?;
    let mut templates: Vec<api::TemplateRow> = state
        .templates
        .iter()
        .map(|t| template_row(t, &hosts))
        .collect();
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    ok_json(StatusCode::OK, &api::TemplateList { templates })
}

/// A template as `GET /v1/templates` shows it: the classes of the hosts that could run a VM
/// of its default shape, whatever their state (the filters' rules: driver, slot kind, size).
fn template_row(t: &WireTemplate, hosts: &[api::HostRow]) -> api::TemplateRow {
    let fits = |h: &api::HostRow| {
        (t.drivers.is_empty() || t.drivers.contains(&h.driver))
            && t.slot
                .as_ref()
                .is_none_or(|kind| h.slots.iter().any(|s| &s.kind == kind && s.capacity >= 1))
            && h.vcpus_milli >= u64::from(t.vcpus) * 1000
            && h.memory_mib >= t.memory_mib
    };
    let classes: std::collections::BTreeSet<&str> = hosts
        .iter()
        .filter(|h| fits(h))
        .map(|h| h.class())
        .collect();
    api::TemplateRow {
        name: t.name.clone(),
        base_image: t.base_image.clone().unwrap_or_else(|| t.name.clone()),
        guest_os: t.guest_os.clone(),
        drivers: t.drivers.clone(),
        vcpus: t.vcpus,
        memory_mib: t.memory_mib,
        slot: t.slot.clone(),
        expected_provision_ms: t.expected_provision_ms,
        expected_boot_ms: t.expected_boot_ms,
        expected_run_ms: t.expected_run_ms,
        host_classes: classes.into_iter().map(str::to_owned).collect(),
    }
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = api::NewHost,
    responses((status = 201, body = api::HostRow)))]
async fn add_host(
    Operator(actor): Operator,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult {
    let new: api::NewHost = parse(&body)?;
    let host = WireHost::from(new);
    host.validate_new().map_err(ApiError::from)?;
    let id = send_input(&state, WireInput::AddHost { host }, actor).await?;
    ok_json(StatusCode::CREATED, &host_row(&state, id).await?)
}

/// Drains, resumes or takes offline the host `name`, and answers it as it is then.
async fn host_op(
    actor: Actor,
    state: &AppState,
    name: &str,
    body: &Bytes,
    make: fn(u64) -> WireInput,
) -> ApiResult {
    let _: api::Empty = parse(body)?;
    let id = host_id(state, name).await?;
    send_input(state, make(id), actor).await?;
    ok_json(StatusCode::OK, &host_row(state, id).await?)
}

/// No new VMs on the host; it goes to maintenance when its last VM ends.
#[utoipa::path(post, path = "/v1/hosts/{name}/drain", tag = "hosts", request_body = api::Empty,
    params(("name" = String, Path)), responses((status = 200, body = api::HostRow)))]
async fn drain_host(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    host_op(actor, &state, &name, &body, |host| WireInput::Drain {
        host,
    })
    .await
}

/// The host takes new VMs again.
#[utoipa::path(post, path = "/v1/hosts/{name}/resume", tag = "hosts", request_body = api::Empty,
    params(("name" = String, Path)), responses((status = 200, body = api::HostRow)))]
async fn resume_host(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    host_op(actor, &state, &name, &body, |host| WireInput::Resume {
        host,
    })
    .await
}

/// The host is out of service now: its VMs are lost (their requests may retry them).
#[utoipa::path(post, path = "/v1/hosts/{name}/offline", tag = "hosts", request_body = api::Empty,
    params(("name" = String, Path)), responses((status = 200, body = api::HostRow)))]
async fn offline_host(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    host_op(actor, &state, &name, &body, |host| WireInput::Offline {
        host,
    })
    .await
}

/// One host, with its images, image disk and pulls.
#[utoipa::path(get, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = api::HostRow)))]
async fn get_host(
    Reader(_): Reader,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    let id = host_id(&state, &name).await?;
    ok_json(StatusCode::OK, &host_row(&state, id).await?)
}

#[utoipa::path(delete, path = "/v1/hosts/{name}", tag = "hosts", params(("name" = String, Path)),
    responses((status = 200, body = api::HostRemoved)))]
async fn remove_host(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    let id = host_id(&state, &name).await?;
    send_input(&state, WireInput::RemoveHost { host: id }, actor).await?;
    ok_json(
        StatusCode::OK,
        &api::HostRemoved {
            id,
            name,
            removed: true,
        },
    )
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Rows on the page (at most `LIST_ROWS_MAX`).
    limit: Option<u64>,
    /// Only rows older than this one (the previous page's `next_before`).
    before: Option<u64>,
}

/// Operator actions, newest first (operators only: it names who did what).
#[utoipa::path(get, path = "/v1/audit", tag = "daemon", params(AuditQuery),
    responses((status = 200, body = api::AuditPage)))]
async fn audit(
    Operator(_): Operator,
    State(state): State<AppState>,
    q: Params<AuditQuery>,
) -> ApiResult {
    let q = params(q)?;
    let limit = list_limit(q.limit, AUDIT_LIST_DEFAULT, LIST_ROWS_MAX)?;
    let before = q.before;
    let _place = state.reads.list_place().await?;
    let (audit, next_before) = state
        .reads
        .read(move |c| store::list_audit(c, before, limit))
        .await?;
    ok_json(StatusCode::OK, &api::AuditPage { audit, next_before })
}

/// The VMs berth found on its hosts and keeps rather than destroys (see `Control::judge_orphans`).
#[utoipa::path(get, path = "/v1/orphans", tag = "vms", responses((status = 200, body = api::OrphanList)))]
async fn list_orphans(Reader(_): Reader, State(state): State<AppState>) -> ApiResult {
    let orphans = state.reads.read(store::list_orphans).await?;
    ok_json(StatusCode::OK, &api::OrphanList { orphans })
}

/// Destroys a kept orphan: the operator's word that it is not needed.
#[utoipa::path(post, path = "/v1/orphans/{vm}/destroy", tag = "vms", request_body = api::Empty,
    params(("vm" = String, Path, description = "`12`, `vm12` or `berth-vm12`")),
    responses((status = 200, body = api::OrphanDestroying)))]
async fn destroy_orphan(
    Operator(actor): Operator,
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let vm = parse_vm_id(&id)?;
    let _: api::Empty = parse(&body)?;
    if !state.lease.may_act() {
        return Err(ApiError::not_leader(&state.lease));
    }
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
        &api::OrphanDestroying {
            vm,
            name: berth_drivers::vm_name(vm),
            state: "destroying".to_owned(),
        },
    )
}

/// Server-sent events: one `data:` line of JSON (an `Event`) per state change, each with an
/// `id`. A reader that reconnects with `Last-Event-ID` first gets the events it missed (the
/// daemon keeps the last 10,000); one that fell too far behind, or whose id is from an earlier
/// run of the daemon, gets an event named `lagged` (a `Lagged`) and should read the state
/// afresh.
#[utoipa::path(get, path = "/v1/events", tag = "daemon",
    params(("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event read, to resume after it")),
    responses((status = 200, description = "Server-sent events, each `data:` an `Event` with an `id`; `event: lagged` carries a `Lagged`", content_type = "text/event-stream", body = api::Event)))]
async fn events(Reader(_): Reader, State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    // Events are the leader's: a follower's stream would stay silent.
    if !state.lease.may_act() {
        return Err(ApiError::not_leader(&state.lease));
    }
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let feed = state.events.clone();
    let (resume, replay, rx) = feed.subscribe(last_id);
    let lagged = |missed: u64, daemon_restarted: bool| {
        let lagged = serde_json::to_string(&api::Lagged {
            missed,
            daemon_restarted,
        });
        SseEvent::default()
            .event("lagged")
            .data(lagged.unwrap_or_default())
    };
    let first = match resume {
        Resume::Whole => None,
        Resume::Missed(missed) => Some(lagged(missed, false)),
        Resume::Restarted => Some(lagged(0, true)),
    };
    let replayed_to = replay.last().map_or(0, |s| s.seq);
    let stamp =
        move |feed: &Feed, s: &Stamped| SseEvent::default().id(feed.id(s.seq)).data(&*s.text);
    let head: Vec<SseEvent> = first
        .into_iter()
        .chain(replay.iter().map(|s| stamp(&feed, s)))
        .collect();
    let live_feed = feed.clone();
    let mut shutdown = state.shutdown.clone();
    let live = BroadcastStream::new(rx).filter_map(move |item| {
        std::future::ready(match item {
            Ok(s) if s.seq <= replayed_to => None,
            Ok(s) => Some(stamp(&live_feed, &s)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                Some(lagged(missed, false))
            }
        })
    });
    let stream = futures_util::stream::iter(head)
        .chain(live)
        .map(Ok::<_, Infallible>)
        // End the stream at shutdown, or graceful shutdown would wait for readers forever.
        .take_until(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

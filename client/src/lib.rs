//! The one client of berth's HTTP API, for the console and the CLI. Every answer is read into
//! its `berth_api` type strictly: a missing field or an unknown state is an error naming the
//! route and the field, never a silent zero. The event stream is read by a parser that follows
//! the server-sent events specification ([`sse`]).
//!
//! It is blocking (ureq): the CLI calls it directly, and the console calls it from its worker
//! and stream threads, so the drawing never waits on the network.

pub mod sse;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_api as api;
use serde::de::DeserializeOwned;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached; worth retrying.
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The daemon answered with an error.
    #[error("{route}: {status}: {error}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Status {
        route: String,
        status: u16,
        error: String,
        field: Option<String>,
    },
    /// The answer is not what the route promises.
    #[error("{route}: the answer does not match the API: {message}")]
    Shape { route: String, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The daemon at `url`, with a token.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// For `https://` daemons whose certificate a CA file vouches for (`trusting`); the
    /// public roots otherwise.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A client's TLS settings that trust only the CA certificates (PEM) in `ca`.
fn tls_trusting(ca: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let text = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE in it", ca.display()));
    }
    // ring, as the daemon (see its `serve::tls`).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Filters of `GET /v1/vms`.
#[derive(Clone, Debug, Default)]
pub struct VmQuery {
    pub state: Option<String>,
    pub request: Option<u64>,
    pub host: Option<String>,
    pub live: bool,
    pub limit: Option<u64>,
    pub after: Option<u64>,
}

/// The end of a serial log.
#[derive(Clone, Debug)]
pub struct SerialTail {
    pub bytes: Vec<u8>,
    /// The whole log's length, when the daemon said.
    pub total_bytes: Option<u64>,
}

/// A query string from `(key, value)` pairs (values are ids, states and names: nothing to
/// escape but what a name may hold).
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", escape(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Client {
        Client {
            url: url.trim_end_matches('/').to_owned(),
            token,
            agent: Client::agent(None),
            tls: None,
        }
    }

    fn agent(tls: Option<&Arc<rustls::ClientConfig>>) -> ureq::Agent {
        // Redirects are followed by `send`, which keeps the method, body and token.
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(120))
            .redirects(0);
        if let Some(tls) = tls {
            b = b.tls_config(tls.clone());
        }
        b.build()
    }

    /// The same client trusting only the CA certificates (PEM) in `ca` for an `https://`
    /// daemon: a private CA, or the daemon's own self-signed certificate. An error names the
    /// file and what is wrong with it.
    pub fn trusting(mut self, ca: &Path) -> Result<Client, ClientError> {
        let tls = tls_trusting(ca).map_err(|message| ClientError::Unreachable {
            url: self.url.clone(),
            message: format!("the CA file: {message}"),
        })?;
        let tls = Arc::new(tls);
        self.agent = Client::agent(Some(&tls));
        self.tls = Some(tls);
        Ok(self)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn http(&self, method: &str, url: &str) -> ureq::Request {
        let mut req = self.agent.request(method, url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req
    }

    fn error(&self, route: String, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::Status(status, r) => {
                let text = r.into_string().unwrap_or_default();
                match serde_json::from_str::<api::ErrorBody>(&text) {
                    Ok(body) => ClientError::Status {
                        route,
                        status,
                        error: body.error,
                        field: body.field,
                    },
                    Err(_) => ClientError::Status {
                        route,
                        status,
                        error: text.trim().chars().take(200).collect(),
                        field: None,
                    },
                }
            }
            ureq::Error::Transport(t) => ClientError::Unreachable {
                url: self.url.clone(),
                message: t.to_string(),
            },
        }
    }

    /// Sends a request and returns the raw answer (status 2xx).
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&dyn erased::Body>,
    ) -> Result<ureq::Response, ClientError> {
        self.following(&format!("{method} {path}"), path, |url| {
            let req = self.http(method, url);
            match body {
                Some(b) => req
                    .set("Content-Type", "application/json")
                    .send_string(&b.json()),
                None => req.call(),
            }
            .map_err(Box::new)
        })
    }

    /// Makes a call with `call` at `path`, and again at the leader's address while a follower
    /// answers with one (at most `REDIRECTS_MAX` times).
    fn following(
        &self,
        route: &str,
        path: &str,
        // Boxed: ureq's error is large, and rare.
        mut call: impl FnMut(&str) -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<ureq::Response, ClientError> {
        let mut url = format!("{}{path}", self.url);
        for _ in 0..=REDIRECTS_MAX {
            let resp = call(&url).map_err(|e| self.error(route.to_owned(), *e))?;
            match leader_location(&resp) {
                Some(next) => url = next,
                None => return Ok(resp),
            }
        }
        Err(too_many_redirects(&url))
    }

    /// A call whose answer is JSON of type `T`, read strictly.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&dyn erased::Body>,
    ) -> Result<T, ClientError> {
        let route = format!("{method} {path}");
        let text =
            self.send(method, path, body)?
                .into_string()
                .map_err(|e| ClientError::Shape {
                    route: route.clone(),
                    message: e.to_string(),
                })?;
        decode(&route, &text)
    }

    pub fn status(&self) -> Result<api::Status, ClientError> {
        self.call("GET", "/v1/status", None)
    }

    pub fn whoami(&self) -> Result<api::WhoAmI, ClientError> {
        self.call("GET", "/v1/whoami", None)
    }

    pub fn hosts(&self) -> Result<Vec<api::HostRow>, ClientError> {
        Ok(self.call::<api::HostList>("GET", "/v1/hosts", None)?.hosts)
    }

    pub fn templates(&self) -> Result<api::TemplateList, ClientError> {
        self.call("GET", "/v1/templates", None)
    }

    pub fn add_host(&self, host: &api::NewHost) -> Result<api::HostRow, ClientError> {
        self.call("POST", "/v1/hosts", Some(host))
    }

    /// `op` is `drain`, `resume` or `offline`.
    pub fn host_op(&self, name: &str, op: &str) -> Result<api::HostRow, ClientError> {
        let path = format!("/v1/hosts/{}/{op}", escape(name));
        self.call("POST", &path, Some(&api::Empty {}))
    }

    pub fn host(&self, name: &str) -> Result<api::HostRow, ClientError> {
        self.call("GET", &format!("/v1/hosts/{}", escape(name)), None)
    }

    pub fn images(&self) -> Result<api::ImageList, ClientError> {
        self.call("GET", "/v1/images", None)
    }

    pub fn image(&self, name: &str) -> Result<api::ImageRow, ClientError> {
        self.call("GET", &format!("/v1/images/{}", escape(name)), None)
    }

    pub fn push_image(
        &self,
        name: &str,
        push: &api::ImagePush,
    ) -> Result<api::PushStarted, ClientError> {
        let path = format!("/v1/images/{}/push", escape(name));
        self.call("POST", &path, Some(push))
    }

    pub fn evict_image(&self, name: &str, host: &str) -> Result<api::ImageEvicted, ClientError> {
        let path = format!("/v1/images/{}/evict", escape(name));
        let body = api::ImageEvict {
            host: host.to_owned(),
        };
        self.call("POST", &path, Some(&body))
    }

    pub fn remove_host(&self, name: &str) -> Result<api::HostRemoved, ClientError> {
        self.call("DELETE", &format!("/v1/hosts/{}", escape(name)), None)
    }

    pub fn queue(&self, limit: Option<usize>) -> Result<api::Queue, ClientError> {
        let q = query(&[("limit", limit.map(|l| l.to_string()))]);
        self.call("GET", &format!("/v1/queue{q}"), None)
    }

    pub fn submit(&self, request: &api::SubmitRequest) -> Result<api::RequestRow, ClientError> {
        self.call("POST", "/v1/requests", Some(request))
    }

    pub fn requests(
        &self,
        state: Option<&str>,
        limit: Option<u64>,
        before: Option<u64>,
    ) -> Result<api::RequestPage, ClientError> {
        let q = query(&[
            ("state", state.map(str::to_owned)),
            ("limit", limit.map(|l| l.to_string())),
            ("before", before.map(|b| b.to_string())),
        ]);
        self.call("GET", &format!("/v1/requests{q}"), None)
    }

    pub fn request(&self, id: u64) -> Result<api::RequestDetail, ClientError> {
        self.call("GET", &format!("/v1/requests/{id}"), None)
    }

    /// Staged changes, newest first by first request; `before` is a page's `next_before`.
    pub fn changes(
        &self,
        limit: Option<u64>,
        before: Option<u64>,
    ) -> Result<api::ChangePage, ClientError> {
        let q = query(&[
            ("limit", limit.map(|l| l.to_string())),
            ("before", before.map(|b| b.to_string())),
        ]);
        self.call("GET", &format!("/v1/changes{q}"), None)
    }

    /// Accounts under fair share, in the order the queue serves them.
    pub fn accounts(&self) -> Result<api::AccountList, ClientError> {
        self.call("GET", "/v1/accounts", None)
    }

    /// A change (its id as requests named it: any text) with its requests.
    pub fn change(&self, id: &str) -> Result<api::ChangeDetail, ClientError> {
        self.call("GET", &format!("/v1/changes/{}", escape(id)), None)
    }

    pub fn cancel(&self, id: u64) -> Result<api::RequestRow, ClientError> {
        self.call("DELETE", &format!("/v1/requests/{id}"), None)
    }

    pub fn vms(&self, q: &VmQuery) -> Result<api::VmPage, ClientError> {
        let q = query(&[
            ("state", q.state.clone()),
            ("request", q.request.map(|r| r.to_string())),
            ("host", q.host.clone()),
            ("live", q.live.then(|| "true".to_owned())),
            ("limit", q.limit.map(|l| l.to_string())),
            ("after", q.after.map(|a| a.to_string())),
        ]);
        self.call("GET", &format!("/v1/vms{q}"), None)
    }

    pub fn vm(&self, id: u64) -> Result<api::VmDetail, ClientError> {
        self.call("GET", &format!("/v1/vms/{id}"), None)
    }

    pub fn vm_result(&self, id: u64, passed: bool) -> Result<api::VmRow, ClientError> {
        let body = api::JobResult { passed };
        self.call("POST", &format!("/v1/vms/{id}/result"), Some(&body))
    }

    pub fn release(&self, id: u64) -> Result<api::VmRow, ClientError> {
        self.call(
            "POST",
            &format!("/v1/vms/{id}/release"),
            Some(&api::Empty {}),
        )
    }

    pub fn extend(&self, id: u64, seconds: u64) -> Result<api::VmRow, ClientError> {
        let body = api::Extend { seconds };
        self.call("POST", &format!("/v1/vms/{id}/extend"), Some(&body))
    }

    pub fn console(&self, id: u64) -> Result<api::ConsoleAddress, ClientError> {
        self.call("GET", &format!("/v1/vms/{id}/console"), None)
    }

    /// The VM's screen as a PNG, at most `max_bytes` of it.
    pub fn screenshot(&self, id: u64, max_bytes: u64) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/vms/{id}/screenshot");
        let resp = self.send("GET", &path, None)?;
        read_at_most(resp, max_bytes, &path)
    }

    /// The last `tail_bytes` of the VM's serial log (never more, whatever the daemon sends).
    pub fn serial(&self, id: u64, tail_bytes: usize) -> Result<SerialTail, ClientError> {
        let path = format!("/v1/vms/{id}/serial?tail_bytes={tail_bytes}");
        let resp = self.send("GET", &path, None)?;
        let total_bytes = resp
            .header("x-berth-log-bytes")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = read_at_most(resp, tail_bytes as u64, &path)?;
        Ok(SerialTail { bytes, total_bytes })
    }

    pub fn predict_drain(
        &self,
        question: &api::DrainQuestion,
    ) -> Result<api::DrainForecast, ClientError> {
        self.call("POST", "/v1/predict/drain", Some(question))
    }

    pub fn audit(
        &self,
        limit: Option<u64>,
        before: Option<u64>,
    ) -> Result<api::AuditPage, ClientError> {
        let q = query(&[
            ("limit", limit.map(|l| l.to_string())),
            ("before", before.map(|b| b.to_string())),
        ]);
        self.call("GET", &format!("/v1/audit{q}"), None)
    }

    pub fn orphans(&self) -> Result<api::OrphanList, ClientError> {
        self.call("GET", "/v1/orphans", None)
    }

    pub fn destroy_orphan(&self, vm: u64) -> Result<api::OrphanDestroying, ClientError> {
        self.call(
            "POST",
            &format!("/v1/orphans/{vm}/destroy"),
            Some(&api::Empty {}),
        )
    }

    pub fn hook_runs(
        &self,
        hook: Option<&str>,
        outcome: Option<&str>,
        limit: Option<u64>,
    ) -> Result<api::HookRuns, ClientError> {
        let q = query(&[
            ("hook", hook.map(str::to_owned)),
            ("outcome", outcome.map(str::to_owned)),
            ("limit", limit.map(|l| l.to_string())),
        ]);
        self.call("GET", &format!("/v1/hooks/runs{q}"), None)
    }

    /// The daemon's own recent log lines, oldest first (operator tokens only); `limit` keeps
    /// the newest.
    pub fn daemon_log(&self, limit: Option<u64>) -> Result<api::DaemonLog, ClientError> {
        let q = query(&[("limit", limit.map(|l| l.to_string()))]);
        self.call("GET", &format!("/v1/logs{q}"), None)
    }

    /// Pulses taken after `since_ms` (the last hour when `None`), oldest first; an answer cut
    /// at its row limit says where to go on in `next_since_ms`.
    pub fn pulses(&self, since_ms: Option<u64>) -> Result<api::PulseList, ClientError> {
        let q = query(&[("since_ms", since_ms.map(|s| s.to_string()))]);
        self.call("GET", &format!("/v1/pulses{q}"), None)
    }

    /// Opens the event stream; `last_id` (from an earlier stream) goes as `Last-Event-ID`.
    /// A read waits at most `idle` (the daemon sends keep-alives well within a minute).
    pub fn events(&self, last_id: Option<&str>, idle: Duration) -> Result<Events, ClientError> {
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout_read(idle)
            .redirects(0);
        if let Some(tls) = &self.tls {
            agent = agent.tls_config(tls.clone());
        }
        let agent = agent.build();
        let resp = self.following("GET /v1/events", "/v1/events", |url| {
            let mut req = agent.get(url).set("Accept", "text/event-stream");
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            if let Some(id) = last_id {
                req = req.set("Last-Event-ID", id);
            }
            req.call().map_err(Box::new)
        })?;
        let mut parser = sse::Parser::default();
        parser.last_id = last_id.map(str::to_owned);
        Ok(Events {
            lines: BufReader::new(Box::new(resp.into_reader())),
            parser,
            line: String::new(),
        })
    }
}

/// Redirects followed at most: a follower sends a call to the leader (one hop); more means
/// daemons pointing at each other.
const REDIRECTS_MAX: usize = 3;

/// Where a follower's `307` (or a `308`) sends the call: the same method, body and token go
/// there.
fn leader_location(resp: &ureq::Response) -> Option<String> {
    if !matches!(resp.status(), 307 | 308) {
        return None;
    }
    resp.header("Location").map(str::to_owned)
}

fn too_many_redirects(url: &str) -> ClientError {
    ClientError::Unreachable {
        url: url.to_owned(),
        message: format!(
            "more than {REDIRECTS_MAX} redirects: do the daemons' `[ha] advertise` addresses point at each other?"
        ),
    }
}

/// Reads an answer's body, at most `max` bytes of it.
fn read_at_most(resp: ureq::Response, max: u64, path: &str) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    resp.into_reader()
        .take(max)
        .read_to_end(&mut out)
        .map_err(|e| ClientError::Shape {
            route: format!("GET {path}"),
            message: e.to_string(),
        })?;
    Ok(out)
}

/// `text` as `T`, or an error naming the route and the field that did not fit.
pub fn decode<T: DeserializeOwned>(route: &str, text: &str) -> Result<T, ClientError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ClientError::Shape {
            route: route.to_owned(),
            message: if path == "." {
                e.inner().to_string()
            } else {
                format!("at `{path}`: {}", e.inner())
            },
        }
    })
}

/// What the event stream brings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    Event(api::Event),
    /// The reader fell behind and missed events.
    Lagged(api::Lagged),
}

/// The event stream: typed items until the connection ends (then `None`; reconnect with
/// [`Events::last_id`] after [`Events::retry_ms`] if the daemon set one).
pub struct Events {
    lines: BufReader<Box<dyn Read + Send>>,
    parser: sse::Parser,
    line: String,
}

impl Events {
    pub fn last_id(&self) -> Option<&str> {
        self.parser.last_id.as_deref()
    }

    pub fn retry_ms(&self) -> Option<u64> {
        self.parser.retry_ms
    }
}

impl Iterator for Events {
    type Item = Result<StreamItem, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            match self.lines.read_line(&mut self.line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = self.line.strip_suffix('\n').unwrap_or(&self.line);
            let Some(msg) = self.parser.line(line) else {
                continue;
            };
            let route = "GET /v1/events";
            return Some(match msg.event.as_str() {
                "lagged" => decode(route, &msg.data).map(StreamItem::Lagged),
                _ => decode(route, &msg.data).map(StreamItem::Event),
            });
        }
    }
}

/// Request bodies, as JSON text (a trait object, so `send` need not be generic).
mod erased {
    pub trait Body {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Body for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_answer_names_the_route_and_the_field() {
        let text = r#"{"name": "local", "role": "admin"}"#;
        let err = decode::<api::WhoAmI>("GET /v1/whoami", text).expect_err("unknown role");
        let msg = err.to_string();
        assert!(msg.starts_with("GET /v1/whoami: "), "{msg}");
        assert!(msg.contains("`role`"), "{msg}");
        let err = decode::<api::WhoAmI>("GET /v1/whoami", r#"{"role": "operator"}"#)
            .expect_err("missing name");
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }

    #[test]
    fn query_strings_escape_what_they_must() {
        assert_eq!(
            query(&[("a", None), ("host", Some("mac 1&x".into()))]),
            "?host=mac%201%26x"
        );
        assert_eq!(query(&[]), "");
    }
}

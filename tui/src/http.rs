//! The daemon as a source: its HTTP API under `/v1` (bearer token) and its server-sent event
//! stream, which reconnects by itself. Endpoints the daemon does not have yet degrade to a
//! fallback or to "unavailable", never to an error the operator cannot act on.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::Sender;
use std::time::Duration;

use serde_json::{Value, json};

use crate::event::{Event, Role};
use crate::model::{
    Action, ArrivalForecast, Breakpoint, ConsoleInfo, Detail, DrainPrediction, EventRow, Host,
    Request, Snapshot, Target, TimelineEntry, Vm, WaitStats, Why, bytes, clean_serial, host_class,
};
use crate::source::{Source, SourceError};

/// Waiting requests whose why-waiting is fetched one by one when the daemon has no `/v1/queue`.
const WHY_FETCH_MAX: usize = 25;
/// Requests of held VMs read per snapshot when VM rows carry no `hold` (the rest next time).
const HOLD_FETCH_MAX: usize = 50;
/// Request templates remembered before the cache starts over.
const TEMPLATE_CACHE_MAX: usize = 200_000;
/// Requests read to find the queue and VM templates without `/v1/queue`.
const REQUEST_LIST_MAX: u64 = 5000;
/// The event stream's longest wait between reconnects.
const STREAM_BACKOFF_MAX_MS: u64 = 10_000;
/// A silent event stream is presumed dead after this (the daemon sends keep-alives).
const STREAM_READ_TIMEOUT_S: u64 = 45;
/// How much of the end of a serial log the console asks for: pages of boot output, and
/// quick to send over a slow link.
pub const SERIAL_TAIL_BYTES: usize = 64 * 1024;
/// The largest screenshot the console reads: a 4K screen as an uncompressed PNG, with room.
const SCREENSHOT_BYTES_MAX: u64 = 64 << 20;

/// The daemon's HTTP API.
pub struct HttpSource {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// Set once the daemon answered 404 for `/v1/queue`.
    no_queue_route: bool,
    /// Template and hold settings (owner, ttl) of requests with held VMs.
    hold_cache: BTreeMap<u64, (String, Option<(String, u64)>)>,
    /// Templates of requests seen (request id to template).
    template_cache: BTreeMap<u64, String>,
}

impl HttpSource {
    pub fn new(url: &str, token: Option<String>) -> HttpSource {
        HttpSource {
            url: url.trim_end_matches('/').to_owned(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(3))
                .timeout(Duration::from_secs(60))
                .build(),
            no_queue_route: false,
            hold_cache: BTreeMap::new(),
            template_cache: BTreeMap::new(),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut req = self.agent.request(method, &format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, SourceError> {
        let req = self.request(method, path);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let what = format!("{method} {path}");
        match resp {
            Ok(r) => r.into_json::<Value>().map_err(|e| SourceError::Shape {
                what,
                message: e.to_string(),
            }),
            Err(e) => Err(self.error(what, e)),
        }
    }

    fn get(&self, path: &str) -> Result<Value, SourceError> {
        self.call("GET", path, None)
    }

    /// A `GET` whose answer is not JSON (a PNG, a log). A 501 (the VM's driver cannot) is
    /// `Unsupported` with the daemon's words, and so is a daemon without the route
    /// (`no_route` says so); a VM not on a host stays a 404 `Status`.
    fn get_raw(&self, path: &str, no_route: &str) -> Result<ureq::Response, SourceError> {
        self.request("GET", path)
            .call()
            .map_err(|e| match self.error(format!("GET {path}"), e) {
                SourceError::Status {
                    status: 501,
                    message,
                    ..
                } => SourceError::Unsupported(message),
                e if not_found(&e) => SourceError::Unsupported(no_route.to_owned()),
                e => e,
            })
    }

    fn error(&self, what: String, e: ureq::Error) -> SourceError {
        match e {
            ureq::Error::Status(status, r) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                SourceError::Status {
                    what,
                    status,
                    message: body["error"].as_str().unwrap_or("no message").to_owned(),
                }
            }
            ureq::Error::Transport(t) => SourceError::Unreachable {
                url: self.url.clone(),
                message: t.to_string(),
            },
        }
    }

    fn queue_fallback(&self) -> Result<(Vec<Request>, BTreeMap<u64, String>), SourceError> {
        let v = self.get(&format!("/v1/requests?limit={REQUEST_LIST_MAX}"))?;
        let rows = array(&v, "requests", "GET /v1/requests")?;
        let mut templates = BTreeMap::new();
        let mut queue = Vec::new();
        for r in rows {
            let req = parse_request(r);
            templates.insert(req.id, req.template.clone());
            if req.state == "waiting" {
                queue.push(req);
            }
        }
        // The list is newest first; the queue is served oldest first.
        queue.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
        for r in queue.iter_mut().take(WHY_FETCH_MAX) {
            if let Ok(d) = self.get(&format!("/v1/requests/{}", r.id)) {
                r.why = parse_why(&d["why"]);
            }
        }
        Ok((queue, templates))
    }
}

fn array<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Vec<Value>, SourceError> {
    v[key].as_array().ok_or_else(|| SourceError::Shape {
        what: what.to_owned(),
        message: format!("no `{key}` list"),
    })
}

fn not_found(e: &SourceError) -> bool {
    matches!(e, SourceError::Status { status: 404, message, .. } if message == "no such route")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// A host from `GET /v1/hosts`.
pub fn parse_host(v: &Value) -> Host {
    let name = s(&v["name"]);
    let labels: Vec<String> = v["labels"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    Host {
        class: host_class(&name, &labels),
        name,
        driver: s(&v["driver"]),
        state: s(&v["state"]),
        cpu_milli: u(&v["vcpus_milli"]),
        cpu_used_milli: u(&v["vcpus_used_milli"]),
        memory_mib: u(&v["memory_mib"]),
        memory_used_mib: u(&v["memory_used_mib"]),
        n_vms: u(&v["vms"]),
        labels,
        last_probe_ms: v["last_probe_ms"].as_u64(),
    }
}

/// A request row (`GET /v1/requests`, `/v1/queue`), its spec carrying the shape.
pub fn parse_request(v: &Value) -> Request {
    let spec = &v["spec"];
    Request {
        id: u(&v["id"]),
        requester: s(&spec["requester"]),
        template: s(&v["template"]),
        count: u(&v["count"]),
        vcpus: spec["vcpus"].as_u64(),
        memory_mib: spec["memory_mib"].as_u64(),
        priority: spec["priority"].as_i64().unwrap_or(0),
        submitted_ms: u(&v["submitted_ms"]),
        state: s(&v["state"]),
        why: parse_why(&v["why"]),
    }
}

/// The `why` object of a request; `null` when the request does not wait.
pub fn parse_why(v: &Value) -> Option<Why> {
    let summary = v["summary"].as_str()?.to_owned();
    let reasons = v["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| (s(&r["reason"]), u(&r["hosts"])))
                .collect()
        })
        .unwrap_or_default();
    Some(Why { summary, reasons })
}

/// A VM row from `GET /v1/vms`.
pub fn parse_vm(v: &Value, templates: &BTreeMap<u64, String>) -> Vm {
    let request = u(&v["request"]);
    Vm {
        id: u(&v["id"]),
        name: s(&v["name"]),
        request,
        template: v["template"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| templates.get(&request).cloned())
            .unwrap_or_else(|| "?".into()),
        host: v["host"].as_str().map(str::to_owned),
        state: s(&v["state"]),
        created_ms: u(&v["created_ms"]),
        updated_ms: u(&v["updated_ms"]),
    }
}

/// A breakpoint from a held VM: its `hold` object if the daemon sends one, else the request's
/// hold settings (which miss extensions).
fn parse_breakpoint(v: &Value, holds: &BTreeMap<u64, (String, u64)>) -> Breakpoint {
    let vm = parse_vm(v, &BTreeMap::new());
    let (owner, expires_ms) = if v["hold"].is_object() {
        (s(&v["hold"]["owner"]), v["hold"]["expires_ms"].as_u64())
    } else if let Some((owner, ttl)) = holds.get(&vm.request) {
        (owner.clone(), Some(vm.updated_ms + ttl))
    } else {
        ("?".into(), None)
    };
    Breakpoint {
        vm: vm.id,
        name: vm.name,
        owner,
        host: vm.host,
        held_since_ms: vm.updated_ms,
        expires_ms,
    }
}

/// One event of the stream as an event row.
pub fn parse_event(v: &Value) -> EventRow {
    let kind = s(&v["kind"]);
    let arrow = |v: &Value| {
        let from = v["from"].as_str().unwrap_or("-");
        let to = v["to"].as_str().unwrap_or("-");
        let cause = s(&v["cause"]);
        if cause.is_empty() {
            format!("{from} → {to}")
        } else {
            format!("{from} → {to} ({cause})")
        }
    };
    let (subject, text) = match kind.as_str() {
        "vm" => {
            let mut t = arrow(v);
            if let Some(h) = v["host"].as_str() {
                t.push_str(&format!(" on {h}"));
            }
            (s(&v["name"]), t)
        }
        "request" => (format!("r{}", u(&v["request"])), arrow(v)),
        "host" => (
            v["name"]
                .as_str()
                .map_or_else(|| format!("h{}", u(&v["host"])), str::to_owned),
            arrow(v),
        ),
        _ => (String::new(), v.to_string()),
    };
    EventRow {
        at_ms: u(&v["at_ms"]),
        kind,
        subject,
        text,
    }
}

fn parse_stats(v: &Value) -> WaitStats {
    WaitStats {
        mean_wait_ms: u(&v["mean_wait_ms"]),
        p95_wait_ms: u(&v["p95_wait_ms"]),
        max_wait_ms: u(&v["max_wait_ms"]),
        still_waiting: u(&v["still_waiting"]),
    }
}

/// The answer of `POST /v1/predict/drain`.
pub fn parse_prediction(v: &Value) -> Option<DrainPrediction> {
    if !v["with"].is_object() || !v["without"].is_object() {
        return None;
    }
    Some(DrainPrediction {
        hosts: v["hosts"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default(),
        horizon_ms: u(&v["horizon_ms"]),
        without: parse_stats(&v["without"]),
        with: parse_stats(&v["with"]),
        arrivals: parse_arrivals(&v["arrivals"]),
    })
}

/// The `arrivals` block of a drain forecast. Daemons before it send none; a block that
/// replayed no requests says nothing either.
fn parse_arrivals(v: &Value) -> Option<ArrivalForecast> {
    let requests = u(&v["requests"]);
    if requests == 0 || !v["with"].is_object() || !v["without"].is_object() {
        return None;
    }
    Some(ArrivalForecast {
        requests,
        without: parse_stats(&v["without"]),
        with: parse_stats(&v["with"]),
    })
}

fn host_path(name: &str, op: &str) -> String {
    // Host names hold only letters, digits, `-`, `_` and `.`: nothing to escape.
    format!("/v1/hosts/{name}/{op}")
}

impl Source for HttpSource {
    fn snapshot(&mut self) -> Result<Snapshot, SourceError> {
        let status = self.get("/v1/status")?;
        let hosts_v = self.get("/v1/hosts")?;
        let hosts = array(&hosts_v, "hosts", "GET /v1/hosts")?
            .iter()
            .map(parse_host)
            .collect();
        let mut queue_and_templates = None;
        if !self.no_queue_route {
            match self.get("/v1/queue") {
                Ok(v) => {
                    let queue: Vec<Request> = array(&v, "queue", "GET /v1/queue")?
                        .iter()
                        .map(parse_request)
                        .collect();
                    queue_and_templates = Some((queue, BTreeMap::new()));
                }
                Err(e) if not_found(&e) => self.no_queue_route = true,
                Err(e) => return Err(e),
            }
        }
        let (queue, mut templates) = match queue_and_templates {
            Some(q) => q,
            None => self.queue_fallback()?,
        };
        for r in &queue {
            templates.insert(r.id, r.template.clone());
        }
        let vms_v = self.get("/v1/vms?live=true")?;
        let vm_rows = array(&vms_v, "vms", "GET /v1/vms")?;
        // VM rows name their request, not its template: learn templates from the request list
        // (requests never change, so they stay known) when a VM's request is new.
        if self.template_cache.len() > TEMPLATE_CACHE_MAX {
            self.template_cache.clear();
        }
        for (&r, t) in &templates {
            self.template_cache.insert(r, t.clone());
        }
        let unknown = vm_rows.iter().any(|v| {
            v["template"].is_null() && !self.template_cache.contains_key(&u(&v["request"]))
        });
        if unknown && let Ok(list) = self.get(&format!("/v1/requests?limit={REQUEST_LIST_MAX}")) {
            for r in list["requests"].as_array().into_iter().flatten() {
                self.template_cache.insert(u(&r["id"]), s(&r["template"]));
            }
        }
        for (&r, t) in &self.template_cache {
            templates.entry(r).or_insert_with(|| t.clone());
        }
        // Hold settings of the held VMs' requests, when the VM rows do not carry them.
        // Requests never change once submitted, so what was read stays in the cache.
        let mut fetched = 0;
        for v in vm_rows
            .iter()
            .filter(|v| v["state"] == "held" && !v["hold"].is_object())
        {
            let r = u(&v["request"]);
            if self.hold_cache.contains_key(&r) || fetched >= HOLD_FETCH_MAX {
                continue;
            }
            fetched += 1;
            if let Ok(req) = self.get(&format!("/v1/requests/{r}")) {
                let hold = &req["spec"]["hold"];
                let entry = hold["ttl_ms"].as_u64().map(|ttl| (s(&hold["owner"]), ttl));
                self.hold_cache.insert(r, (s(&req["template"]), entry));
            }
        }
        let mut holds = BTreeMap::new();
        for (&r, (template, hold)) in &self.hold_cache {
            templates.entry(r).or_insert_with(|| template.clone());
            if let Some(h) = hold {
                holds.insert(r, h.clone());
            }
        }
        let vms = vm_rows.iter().map(|v| parse_vm(v, &templates)).collect();
        let breakpoints = vm_rows
            .iter()
            .filter(|v| v["state"] == "held")
            .map(|v| parse_breakpoint(v, &holds))
            .collect();
        Ok(Snapshot {
            now_ms: u(&status["now_ms"]),
            hosts,
            queue,
            vms,
            breakpoints,
        })
    }

    fn detail(&mut self, target: &Target) -> Result<Detail, SourceError> {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut timeline = Vec::new();
        let mut console = None;
        match target {
            Target::Host(name) => {
                let v = self.get("/v1/hosts")?;
                let h = array(&v, "hosts", "GET /v1/hosts")?
                    .iter()
                    .find(|h| h["name"] == json!(name))
                    .ok_or_else(|| SourceError::Unsupported(format!("no host named {name}")))?;
                for key in [
                    "state",
                    "driver",
                    "vms",
                    "provisioning",
                    "probe_failures",
                    "provision_failures",
                ] {
                    fields.push((key.replace('_', " "), value_text(&h[key])));
                }
                let vms = self.get(&format!("/v1/vms?live=true&host={name}"))?;
                let names: Vec<String> = vms["vms"]
                    .as_array()
                    .map(|a| a.iter().map(|v| s(&v["name"])).collect())
                    .unwrap_or_default();
                fields.push(("live vms".into(), names.join(" ")));
            }
            Target::Request(id) => {
                let r = self.get(&format!("/v1/requests/{id}"))?;
                let req = parse_request(&r);
                fields.push((
                    "state".into(),
                    format!("{} ({})", req.state, s(&r["cause"])),
                ));
                fields.push(("requester".into(), req.requester.clone()));
                fields.push(("shape".into(), req.shape()));
                fields.push(("priority".into(), req.priority.to_string()));
                if let Some(w) = &req.why {
                    fields.push(("why waiting".into(), w.summary.clone()));
                    for (reason, n) in &w.reasons {
                        fields.push(("  hosts say".into(), format!("{reason} ({n})")));
                    }
                }
                timeline.push(TimelineEntry {
                    at_ms: req.submitted_ms,
                    text: "submitted".into(),
                });
                for v in r["vms"].as_array().into_iter().flatten() {
                    timeline.push(TimelineEntry {
                        at_ms: u(&v["updated_ms"]),
                        text: format!("{} {} ({})", s(&v["name"]), s(&v["state"]), s(&v["cause"])),
                    });
                }
                timeline.push(TimelineEntry {
                    at_ms: u(&r["updated_ms"]),
                    text: format!("now {}", req.state),
                });
                timeline.sort_by_key(|t| t.at_ms);
            }
            Target::Vm(id) => {
                let v = self.get(&format!("/v1/vms/{id}"))?;
                fields.push(("state".into(), s(&v["state"])));
                fields.push(("request".into(), format!("r{}", u(&v["request"]))));
                fields.push(("host".into(), value_text(&v["host"])));
                fields.push(("cause".into(), s(&v["cause"])));
                for h in v["history"].as_array().into_iter().flatten() {
                    let mut text =
                        format!("{} → {}", h["from"].as_str().unwrap_or("-"), s(&h["to"]));
                    if let Some(host) = h["host"].as_str() {
                        text.push_str(&format!(" on {host}"));
                    }
                    let cause = s(&h["cause"]);
                    if !cause.is_empty() {
                        text.push_str(&format!(" ({cause})"));
                    }
                    timeline.push(TimelineEntry {
                        at_ms: u(&h["at_ms"]),
                        text,
                    });
                }
                console = Some(self.console(*id).map_err(|e| e.to_string()));
            }
        }
        Ok(Detail {
            target: target.clone(),
            fields,
            timeline,
            console,
        })
    }

    fn perform(&mut self, action: &Action) -> Result<(), SourceError> {
        let empty = Some(json!({}));
        match action {
            Action::Drain(h) => self.call("POST", &host_path(h, "drain"), empty),
            Action::Resume(h) => self.call("POST", &host_path(h, "resume"), empty),
            Action::Offline(h) => self.call("POST", &host_path(h, "offline"), empty),
            Action::Cancel(r) => self.call("DELETE", &format!("/v1/requests/{r}"), None),
            Action::Release(vm) => self.call("POST", &format!("/v1/vms/{vm}/release"), empty),
            Action::Extend { vm, seconds } => self.call(
                "POST",
                &format!("/v1/vms/{vm}/extend"),
                Some(json!({ "seconds": seconds })),
            ),
        }
        .map(|_| ())
    }

    fn predict_drain(&mut self, hosts: &[String]) -> Result<Option<DrainPrediction>, SourceError> {
        match self.call("POST", "/v1/predict/drain", Some(json!({ "hosts": hosts }))) {
            Ok(v) => Ok(parse_prediction(&v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn console(&mut self, vm: u64) -> Result<ConsoleInfo, SourceError> {
        let v = self.get(&format!("/v1/vms/{vm}/console"))?;
        Ok(ConsoleInfo {
            vm,
            host: s(&v["host"]),
            port: v["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| SourceError::Shape {
                    what: format!("GET /v1/vms/{vm}/console"),
                    message: "no port".into(),
                })?,
            password: v["password"].as_str().map(str::to_owned),
        })
    }

    fn screenshot(&mut self, vm: u64) -> Result<Vec<u8>, SourceError> {
        let path = format!("/v1/vms/{vm}/screenshot");
        let r = self.get_raw(&path, "this daemon has no screenshot endpoint yet")?;
        let mut png = Vec::new();
        r.into_reader()
            .take(SCREENSHOT_BYTES_MAX)
            .read_to_end(&mut png)
            .map_err(|e| SourceError::Shape {
                what: format!("GET {path}"),
                message: e.to_string(),
            })?;
        Ok(png)
    }

    fn serial_log(&mut self, vm: u64) -> Result<String, SourceError> {
        let path = format!("/v1/vms/{vm}/serial?tail_bytes={SERIAL_TAIL_BYTES}");
        let r = self.get_raw(&path, "this daemon has no serial log endpoint yet")?;
        let total_bytes = r
            .header("x-berth-log-bytes")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut tail = Vec::new();
        // Never more than asked for, whatever the other end sends.
        r.into_reader()
            .take(SERIAL_TAIL_BYTES as u64)
            .read_to_end(&mut tail)
            .map_err(|e| SourceError::Shape {
                what: format!("GET {path}"),
                message: e.to_string(),
            })?;
        Ok(serial_text(vm, &tail, total_bytes))
    }

    fn role(&mut self) -> Option<Role> {
        let v = self.get("/v1/whoami").ok()?;
        match v["role"].as_str()? {
            "read-only" | "read_only" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    fn subscribe(&mut self, tx: Sender<Event>) {
        let url = format!("{}/v1/events", self.url);
        let token = self.token.clone();
        let failed = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-events".into())
            .spawn(move || stream_events(&url, token.as_deref(), &tx));
        if spawned.is_err() {
            // No stream: the header says so and snapshots still come on the timer.
            let _ = failed.send(Event::StreamUp(false));
        }
    }
}

/// The text of a serial log's `tail` out of `total_bytes`. When the log was longer, the
/// tail's first line (cut, perhaps inside a character or an escape sequence) gives way to a
/// line saying how much is not shown.
pub fn serial_text(vm: u64, tail: &[u8], total_bytes: Option<u64>) -> String {
    let len = tail.len() as u64;
    match total_bytes {
        Some(total) if total > len => {
            let start = tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            let shown = &tail[start..];
            format!(
                "… {} before this not shown (berth vm serial {vm} --tail-bytes N shows more)\n{}",
                bytes(total - shown.len() as u64),
                clean_serial(&String::from_utf8_lossy(shown))
            )
        }
        _ => clean_serial(&String::from_utf8_lossy(tail)),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads the event stream until the console goes away, reconnecting with backoff.
fn stream_events(url: &str, token: Option<&str>, tx: &Sender<Event>) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout_read(Duration::from_secs(STREAM_READ_TIMEOUT_S))
        .build();
    let mut backoff_ms = 500;
    loop {
        let mut req = agent.get(url).set("Accept", "text/event-stream");
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Ok(resp) = req.call() {
            backoff_ms = 500;
            if tx.send(Event::StreamUp(true)).is_err() {
                return;
            }
            let mut event_name = String::new();
            for line in BufReader::new(resp.into_reader()).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("event:") {
                    event_name = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    let row = if event_name == "lagged" {
                        EventRow {
                            at_ms: 0,
                            kind: "stream".into(),
                            subject: String::new(),
                            text: format!("missed {} events (console too slow)", u(&v["missed"])),
                        }
                    } else {
                        parse_event(&v)
                    };
                    if tx.send(Event::Stream(row)).is_err() {
                        return;
                    }
                } else if line.is_empty() {
                    event_name.clear();
                }
            }
        }
        if tx.send(Event::StreamUp(false)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(backoff_ms));
        backoff_ms = (backoff_ms * 2).min(STREAM_BACKOFF_MAX_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A local server that answers one request with `status`, `headers` and `body`, and
    /// sends back the request's head (request line and headers).
    fn answer_once(status: &str, headers: &str, body: Vec<u8>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut response = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend(body);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim_end().is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            tx.send(head).unwrap();
            reader.into_inner().write_all(&response).unwrap();
        });
        (url, rx)
    }

    #[test]
    fn serial_log_asks_for_a_bounded_tail_and_cleans_it() {
        // The tail starts inside a line (and inside a UTF-8 character): that line goes.
        let cut = b"\x9c\xe2 cut in the middle\r\n";
        let mut shown = b"[\x1b[0;32m  OK  \x1b[0m] Started ssh\r\n".to_vec();
        shown.extend(b"\x1b]0;owned\x07\x1b[2Jlogin: \xff\n");
        // 2 MiB came before what is shown, the cut line included.
        let total = 2 * 1024 * 1024 + shown.len();
        let (url, head) = answer_once(
            "200 OK",
            &format!("Content-Type: text/plain; charset=utf-8\r\nX-Berth-Log-Bytes: {total}\r\n"),
            [cut.as_slice(), &shown].concat(),
        );
        let mut src = HttpSource::new(&url, Some("secret".into()));
        let text = src.serial_log(7).unwrap();
        let head = head.recv().unwrap();
        assert!(
            head.starts_with("GET /v1/vms/7/serial?tail_bytes=65536 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_lowercase().contains("authorization: bearer secret"),
            "{head}"
        );
        assert_eq!(
            text,
            "… 2M before this not shown (berth vm serial 7 --tail-bytes N shows more)\n\
             [  OK  ] Started ssh\n\
             login: \u{fffd}\n"
        );
    }

    #[test]
    fn a_whole_serial_log_has_no_cut_line() {
        let (url, _head) = answer_once(
            "200 OK",
            "X-Berth-Log-Bytes: 12\r\n",
            b"boot\r\nlogin: ".to_vec(),
        );
        let text = HttpSource::new(&url, None).serial_log(7).unwrap();
        assert_eq!(text, "boot\nlogin: ");
    }

    #[test]
    fn serial_log_reads_no_more_than_it_asked_for() {
        let body = vec![b'a'; SERIAL_TAIL_BYTES * 2];
        let (url, _head) = answer_once("200 OK", "", body);
        let text = HttpSource::new(&url, None).serial_log(7).unwrap();
        assert_eq!(text.len(), SERIAL_TAIL_BYTES);
    }

    #[test]
    fn serial_log_errors_say_why() {
        let json = "Content-Type: application/json\r\n";
        let cases = [
            (
                "501 Not Implemented",
                r#"{"error": "driver sim cannot keep a serial log"}"#,
            ),
            (
                "404 Not Found",
                r#"{"error": "vm 7 is not on a host now", "field": "vm"}"#,
            ),
            ("404 Not Found", r#"{"error": "no such route"}"#),
            ("502 Bad Gateway", r#"{"error": "host h1 did not answer"}"#),
        ];
        let mut errors = Vec::new();
        for (status, body) in cases {
            let (url, _head) = answer_once(status, json, body.as_bytes().to_vec());
            errors.push(HttpSource::new(&url, None).serial_log(7).unwrap_err());
        }
        assert!(
            matches!(&errors[0], SourceError::Unsupported(m) if m == "driver sim cannot keep a serial log"),
            "{}",
            errors[0]
        );
        assert!(
            matches!(&errors[1], SourceError::Status { status: 404, message, .. } if message == "vm 7 is not on a host now"),
            "{}",
            errors[1]
        );
        assert!(
            matches!(&errors[2], SourceError::Unsupported(m) if m == "this daemon has no serial log endpoint yet"),
            "{}",
            errors[2]
        );
        assert!(
            matches!(&errors[3], SourceError::Status { status: 502, .. }),
            "{}",
            errors[3]
        );
        assert_eq!(
            errors[3].to_string(),
            "GET /v1/vms/7/serial?tail_bytes=65536: 502: host h1 did not answer"
        );
    }

    #[test]
    fn daemon_shapes_parse() {
        let h = parse_host(&json!({
            "id": 1, "name": "sim-large-2", "driver": "sim", "state": "draining",
            "vcpus_milli": 128000, "vcpus_used_milli": 8000, "memory_mib": 262144,
            "memory_used_mib": 16384, "slots": [], "provisioning": 0, "vms": 2,
            "labels": ["arch=x86_64"], "last_probe_ms": 5, "probe_failures": 0,
            "provision_failures": 0
        }));
        assert_eq!(h.class, "sim-large");
        assert_eq!(h.cpu_milli, 128_000);
        assert_eq!(h.state, "draining");
        let r = parse_request(&json!({
            "id": 7, "template": "linux", "count": 3, "state": "waiting", "cause": "",
            "submitted_ms": 10, "updated_ms": 11,
            "spec": {"requester": "ci", "vcpus": 4, "memory_mib": 8192, "priority": 2},
            "why": {"summary": "no host fits", "reasons": [{"reason": "too little memory", "hosts": 3}]}
        }));
        assert_eq!(r.shape(), "3× linux 4c/8G");
        assert_eq!(
            r.why.unwrap().reasons,
            [("too little memory".to_owned(), 3)]
        );
        let e = parse_event(&json!({
            "kind": "vm", "at_ms": 1, "vm": 3, "name": "berth-vm3", "request": 1,
            "host": "sim-small-1", "from": "booting", "to": "running", "cause": "boot done"
        }));
        assert_eq!(e.subject, "berth-vm3");
        assert_eq!(e.text, "booting → running (boot done) on sim-small-1");
    }

    fn waits(
        mean_wait_ms: u64,
        p95_wait_ms: u64,
        max_wait_ms: u64,
        still_waiting: u64,
    ) -> WaitStats {
        WaitStats {
            mean_wait_ms,
            p95_wait_ms,
            max_wait_ms,
            still_waiting,
        }
    }

    #[test]
    fn drain_forecasts_read_their_replayed_arrivals() {
        let body = r#"{"hosts": ["h2"], "horizon_ms": 3600000,
            "without": {"mean_wait_ms": 1, "p95_wait_ms": 2, "max_wait_ms": 3, "still_waiting": 0},
            "with": {"mean_wait_ms": 4, "p95_wait_ms": 5, "max_wait_ms": 6, "still_waiting": 1},
            "arrivals": {"source": "recent", "requests": 16,
                "without": {"mean_wait_ms": 7, "p95_wait_ms": 8, "max_wait_ms": 9, "still_waiting": 0},
                "with": {"mean_wait_ms": 10, "p95_wait_ms": 11, "max_wait_ms": 12, "still_waiting": 2}}}"#;
        let (url, head) = answer_once(
            "200 OK",
            "Content-Type: application/json\r\n",
            body.as_bytes().to_vec(),
        );
        let p = HttpSource::new(&url, None)
            .predict_drain(&["h2".into()])
            .unwrap()
            .unwrap();
        assert!(head.recv().unwrap().starts_with("POST /v1/predict/drain "));
        assert_eq!(
            p,
            DrainPrediction {
                hosts: vec!["h2".into()],
                horizon_ms: 3_600_000,
                without: waits(1, 2, 3, 0),
                with: waits(4, 5, 6, 1),
                arrivals: Some(ArrivalForecast {
                    requests: 16,
                    without: waits(7, 8, 9, 0),
                    with: waits(10, 11, 12, 2),
                }),
            }
        );
    }

    #[test]
    fn drain_forecasts_without_arrivals_forecast_the_queue_alone() {
        let queue = json!({
            "hosts": ["a"], "horizon_ms": 3_600_000,
            "without": {"mean_wait_ms": 1000, "p95_wait_ms": 2000, "max_wait_ms": 3000, "still_waiting": 0},
            "with": {"mean_wait_ms": 4000, "p95_wait_ms": 5000, "max_wait_ms": 6000, "still_waiting": 1}
        });
        // A daemon from before replayed arrivals sends no block.
        let p = parse_prediction(&queue).unwrap();
        assert_eq!(p.without, waits(1000, 2000, 3000, 0));
        assert_eq!(p.with, waits(4000, 5000, 6000, 1));
        assert_eq!(p.arrivals, None);
        // Nothing to replay (asked for none, or nothing submitted in the last horizon): the
        // zeros of an empty run are no forecast.
        for source in ["none", "recent"] {
            let mut v = queue.clone();
            v["arrivals"] = json!({
                "source": source, "requests": 0,
                "without": {"mean_wait_ms": 0, "p95_wait_ms": 0, "max_wait_ms": 0, "still_waiting": 0},
                "with": {"mean_wait_ms": 0, "p95_wait_ms": 0, "max_wait_ms": 0, "still_waiting": 0}
            });
            let p = parse_prediction(&v).unwrap();
            assert_eq!(p.arrivals, None, "{source}");
            assert_eq!(p.with, waits(4000, 5000, 6000, 1));
        }
        assert_eq!(parse_prediction(&json!({"error": "x"})), None);
    }
}

//! The daemon as a source: its HTTP API under `/v1` through `berth_client` (typed answers,
//! read strictly: a missing field or an unknown state is an error naming the route and the
//! field) and its server-sent event stream, which reconnects by itself, sending the last event
//! id back and waiting as long as the daemon asked.

use std::sync::mpsc::Sender;
use std::time::Duration;

use berth_api as api;
use berth_client::{Client, ClientError, StreamItem, VmQuery};

use crate::event::{Event, Role};
use crate::model::{
    Action, ArrivalForecast, Breakpoint, ConsoleInfo, Detail, DrainPrediction, EventRow, Host,
    Request, Slot, Snapshot, Target, TimelineEntry, Vm, WaitStats, Why, bytes, clean_serial,
};
use crate::source::{Source, SourceError};

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
    client: Client,
    /// The pulses of the last hour, kept between snapshots so each asks only for new ones.
    pulses: Vec<api::Pulse>,
}

/// Pages of pulses one snapshot reads at most (an hour fits in one at any period).
const PULSE_PAGES_MAX: usize = 4;

impl HttpSource {
    /// Brings the kept pulses up to `now_ms` (the daemon's clock) and drops those older than
    /// an hour. A daemon without pulses (older than the route) leaves the plot empty.
    fn fetch_pulses(&mut self, now_ms: u64) -> Result<(), SourceError> {
        let start_ms = now_ms.saturating_sub(crate::model::PULSE_WINDOW_MS);
        // A kept pulse from the daemon's future: its clock went back, or it is another daemon.
        if self.pulses.last().is_some_and(|p| p.at_ms > now_ms) {
            self.pulses.clear();
        }
        let mut since = self
            .pulses
            .last()
            .map_or(start_ms, |p| p.at_ms.max(start_ms));
        for _ in 0..PULSE_PAGES_MAX {
            let page = match self.client.pulses(Some(since)) {
                Ok(page) => page,
                Err(ClientError::Status { status: 404, .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            self.pulses.extend(page.pulses);
            match page.next_since_ms {
                Some(next) if next > since => since = next,
                _ => break,
            }
        }
        self.pulses.retain(|p| p.at_ms > start_ms);
        Ok(())
    }
}

impl From<ClientError> for SourceError {
    fn from(e: ClientError) -> SourceError {
        match e {
            ClientError::Unreachable { url, message } => SourceError::Unreachable { url, message },
            // The driver of the VM cannot do it at all: the daemon's words say which.
            ClientError::Status {
                status: 501, error, ..
            } => SourceError::Unsupported(error),
            ClientError::Status {
                route,
                status,
                error,
                ..
            } => SourceError::Status {
                what: route,
                status,
                message: error,
            },
            ClientError::Shape { route, message } => SourceError::Shape {
                what: route,
                message,
            },
        }
    }
}

impl HttpSource {
    pub fn new(url: &str, token: Option<String>) -> HttpSource {
        HttpSource::with_client(Client::new(url, token))
    }

    /// A source on a client made already (one that trusts a CA file, say).
    pub fn with_client(client: Client) -> HttpSource {
        HttpSource {
            client,
            pulses: Vec::new(),
        }
    }

    /// Who the token belongs to, read strictly.
    pub fn whoami(&self) -> Result<api::WhoAmI, SourceError> {
        Ok(self.client.whoami()?)
    }
}

/// A host from `GET /v1/hosts`.
pub fn host(h: api::HostRow) -> Host {
    Host {
        images: h.images.iter().map(|i| i.name.clone()).collect(),
        pulling: h.pulls.iter().map(|p| p.image.clone()).collect(),
        class: h.class().to_owned(),
        name: h.name,
        driver: h.driver,
        state: h.state.name().to_owned(),
        cpu_milli: h.vcpus_milli,
        cpu_used_milli: h.vcpus_used_milli,
        memory_mib: h.memory_mib,
        memory_used_mib: h.memory_used_mib,
        n_vms: h.vms,
        labels: h.labels,
        last_probe_ms: h.last_probe_ms,
        slots: h
            .slots
            .into_iter()
            .map(|s| Slot {
                kind: s.kind,
                capacity: s.capacity,
                used: s.used,
            })
            .collect(),
    }
}

/// A host's images for its detail: each with its size and whether it is in use where the
/// driver counts them (`linux 1.1G in use, win11 4G`), the image disk against its budget, and
/// the pulls running to it.
pub fn image_fields(h: &api::HostRow) -> Vec<(String, String)> {
    let images: Vec<String> = h
        .images
        .iter()
        .map(|i| {
            let mut text = i.name.clone();
            if let Some(b) = i.bytes {
                text.push_str(&format!(" {}", bytes(b)));
            }
            if i.in_use == Some(true) {
                text.push_str(" in use");
            }
            text
        })
        .collect();
    let mut fields = vec![(
        "images".to_owned(),
        if images.is_empty() {
            "none".to_owned()
        } else {
            images.join(", ")
        },
    )];
    if let Some(d) = &h.image_disk {
        fields.push((
            "image disk".into(),
            format!(
                "{} of {} budget",
                bytes(d.used_bytes),
                bytes(d.budget_bytes)
            ),
        ));
    }
    if !h.pulls.is_empty() {
        let pulls: Vec<String> = h
            .pulls
            .iter()
            .map(|p| format!("{} {}%", p.file, p.percent))
            .collect();
        fields.push(("pulling".into(), pulls.join(", ")));
    }
    fields
}

/// A request row (`GET /v1/queue`, `/v1/requests/{id}`), with why it waits.
pub fn request(r: api::RequestRow, why: Option<api::Why>) -> Request {
    Request {
        id: r.id,
        account: r.spec.account.clone(),
        change: r.spec.change.clone(),
        requester: r.spec.requester,
        template: r.template,
        count: r.count.into(),
        vcpus: r.spec.vcpus.map(u64::from),
        memory_mib: r.spec.memory_mib,
        priority: r.spec.priority.into(),
        submitted_ms: r.submitted_ms,
        state: r.state.name().to_owned(),
        position: r.position,
        eta_ms: r.eta_ms,
        eta_after_ms: r.eta_after_ms,
        why: why.map(|w| Why {
            summary: w.summary,
            reasons: w
                .reasons
                .into_iter()
                .map(|r| (r.with_hosts(), r.hosts))
                .collect(),
        }),
    }
}

/// A waiting request's place in the queue and expected start, as detail fields:
/// `position 3 of 40`, `starts ~14:05:09 UTC (estimate)`.
fn position_fields(r: &Request, queue_len: Option<u64>) -> Vec<(String, String)> {
    let Some(position) = r.position else {
        return Vec::new();
    };
    let of = queue_len.map_or_else(String::new, |n| format!(" of {n}"));
    let mut fields = vec![("position".to_owned(), format!("{position}{of}"))];
    let starts = match (r.eta_ms, r.eta_after_ms) {
        (_, Some(after)) => Some(format!(
            "later than {} UTC (past the estimate)",
            crate::app::clock(after)
        )),
        (Some(at), None) => Some(format!("~{} UTC (estimate)", crate::app::clock(at))),
        (None, None) => None,
    };
    if let Some(starts) = starts {
        fields.push(("starts".to_owned(), starts));
    }
    fields
}

/// Blockers of a drain a host's detail lists; the rest are counted.
const DRAIN_BLOCKERS_SHOWN: usize = 5;

/// What a draining host waits for, as detail fields: how many VMs are left and when it should
/// be empty, then its VMs (held ones first, as the daemon orders them) with who holds each and
/// until when, or when each is expected to end.
fn drain_fields(d: &api::DrainStatus) -> Vec<(String, String)> {
    let n = d.blockers.len();
    let mut summary = format!("{} left", crate::app::plural(n, "VM"));
    match d.eta_ms {
        Some(eta) => summary.push_str(&format!(", empty by {} UTC", crate::app::clock(eta))),
        None if n > 0 => summary.push_str(", no estimate of when it is empty"),
        None => {}
    }
    let mut fields = vec![("drain".to_owned(), summary)];
    for b in d.blockers.iter().take(DRAIN_BLOCKERS_SHOWN) {
        let what = match (&b.held_by, b.held_until_ms, b.expected_end_ms) {
            (Some(owner), Some(until), _) => format!(
                "{} held by {owner} until {} UTC",
                b.name,
                crate::app::clock(until)
            ),
            (Some(owner), None, _) => format!("{} held by {owner}", b.name),
            (None, _, Some(end)) => format!(
                "{} {}, expected to end {} UTC",
                b.name,
                b.state.name(),
                crate::app::clock(end)
            ),
            (None, _, None) => format!("{} {}", b.name, b.state.name()),
        };
        fields.push(("  waits for".to_owned(), what));
    }
    if n > DRAIN_BLOCKERS_SHOWN {
        fields.push((
            "  waits for".to_owned(),
            format!("… and {} more", n - DRAIN_BLOCKERS_SHOWN),
        ));
    }
    fields
}

/// A VM row from `GET /v1/vms`.
pub fn vm(v: &api::VmRow) -> Vm {
    Vm {
        id: v.id,
        name: v.name.clone(),
        request: v.request,
        template: v.template.clone().unwrap_or_else(|| "?".into()),
        host: v.host.clone(),
        state: v.state.name().to_owned(),
        created_ms: v.created_ms,
        updated_ms: v.updated_ms,
    }
}

/// A held VM's breakpoint (the daemon sends `hold` with every held VM).
fn breakpoint(v: &api::VmRow) -> Breakpoint {
    Breakpoint {
        vm: v.id,
        name: v.name.clone(),
        owner: v
            .hold
            .as_ref()
            .map_or_else(|| "?".into(), |h| h.owner.clone()),
        host: v.host.clone(),
        held_since_ms: v.updated_ms,
        expires_ms: v.hold.as_ref().map(|h| h.expires_ms),
    }
}

/// One event of the stream as an event row.
pub fn event_row(e: &api::Event) -> EventRow {
    fn arrow(from: Option<&str>, to: Option<&str>, cause: &str) -> String {
        let (from, to) = (from.unwrap_or("-"), to.unwrap_or("-"));
        if cause.is_empty() {
            format!("{from} → {to}")
        } else {
            format!("{from} → {to} ({cause})")
        }
    }
    let (kind, subject, text) = match e {
        api::Event::Vm(v) => {
            let mut t = arrow(v.from.map(|s| s.name()), Some(v.to.name()), &v.cause);
            if let Some(h) = &v.host {
                t.push_str(&format!(" on {h}"));
            }
            ("vm", v.name.clone(), t)
        }
        api::Event::Request(r) => (
            "request",
            format!("r{}", r.request),
            arrow(r.from.map(|s| s.name()), Some(r.to.name()), &r.cause),
        ),
        api::Event::Host(h) => (
            "host",
            h.name.clone().unwrap_or_else(|| format!("h{}", h.host)),
            arrow(h.from.map(|s| s.name()), h.to.map(|s| s.name()), &h.cause),
        ),
        api::Event::Daemon(d) => (
            "daemon",
            "daemon".to_owned(),
            match &d.why {
                None => "writes taken".to_owned(),
                Some(why) => format!("writes refused: {why}"),
            },
        ),
    };
    EventRow {
        at_ms: e.at_ms(),
        kind: kind.to_owned(),
        subject,
        text,
    }
}

fn stats(w: api::WaitStats) -> WaitStats {
    WaitStats {
        mean_wait_ms: w.mean_wait_ms,
        p95_wait_ms: w.p95_wait_ms,
        max_wait_ms: w.max_wait_ms,
        still_waiting: w.still_waiting,
    }
}

/// The answer of `POST /v1/predict/drain`. A run that replayed no arrivals says nothing of
/// them: the zeros of an empty run are no forecast.
pub fn prediction(p: api::DrainForecast) -> DrainPrediction {
    let a = p.arrivals;
    DrainPrediction {
        hosts: p.hosts,
        horizon_ms: p.horizon_ms,
        without: stats(p.without),
        with: stats(p.with),
        arrivals: (a.requests > 0).then(|| ArrivalForecast {
            requests: a.requests,
            without: stats(a.without),
            with: stats(a.with),
        }),
    }
}

fn text_or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

impl Source for HttpSource {
    fn snapshot(&mut self) -> Result<Snapshot, SourceError> {
        let status = self.client.status()?;
        let hosts = self.client.hosts()?.into_iter().map(host).collect();
        let queue = self
            .client
            .queue(None)?
            .queue
            .into_iter()
            .map(|e| request(e.request, e.why))
            .collect();
        let vm_rows = self
            .client
            .vms(&VmQuery {
                live: true,
                ..VmQuery::default()
            })?
            .vms;
        let vms = vm_rows.iter().map(vm).collect();
        let breakpoints = vm_rows
            .iter()
            .filter(|v| v.state == api::VmState::Held)
            .map(breakpoint)
            .collect();
        self.fetch_pulses(status.server_ms)?;
        let accounts = self.client.accounts()?.accounts;
        Ok(Snapshot {
            // The daemon's wall clock, not its scheduler's (which stands still while idle).
            now_ms: status.server_ms,
            hosts,
            queue,
            vms,
            breakpoints,
            pulses: self.pulses.clone(),
            accounts,
        })
    }

    fn detail(&mut self, target: &Target) -> Result<Detail, SourceError> {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut timeline = Vec::new();
        let mut console = None;
        match target {
            Target::Host(name) => {
                let h = self
                    .client
                    .hosts()?
                    .into_iter()
                    .find(|h| &h.name == name)
                    .ok_or_else(|| SourceError::Unsupported(format!("no host named {name}")))?;
                fields.push(("state".into(), h.state.name().to_owned()));
                // What a drain waits for comes first: at 80×24 the box shows only the top.
                if let Some(d) = &h.drain {
                    fields.extend(drain_fields(d));
                }
                fields.push(("driver".into(), h.driver.clone()));
                fields.push((
                    "vcpus".into(),
                    format!(
                        "{} of {} used",
                        h.vcpus_used_milli / 1000,
                        h.vcpus_milli / 1000
                    ),
                ));
                fields.push((
                    "memory".into(),
                    format!(
                        "{} of {} used",
                        crate::model::mib(h.memory_used_mib),
                        crate::model::mib(h.memory_mib)
                    ),
                ));
                fields.extend(image_fields(&h));
                let slots: Vec<String> = h
                    .slots
                    .iter()
                    .map(|s| format!("{} {}/{}", s.kind, s.used, s.capacity))
                    .collect();
                if !slots.is_empty() {
                    fields.push(("slots".into(), slots.join(", ")));
                }
                if !h.labels.is_empty() {
                    fields.push(("labels".into(), h.labels.join(" ")));
                }
                fields.push(("vms".into(), h.vms.to_string()));
                fields.push(("provisioning".into(), h.provisioning.to_string()));
                fields.push(("probe failures".into(), h.probe_failures.to_string()));
                fields.push((
                    "provision failures".into(),
                    h.provision_failures.to_string(),
                ));
                let vms = self.client.vms(&VmQuery {
                    live: true,
                    host: Some(name.clone()),
                    ..VmQuery::default()
                })?;
                let names: Vec<String> = vms.vms.into_iter().map(|v| v.name).collect();
                fields.push(("live vms".into(), names.join(" ")));
            }
            Target::Request(id) => {
                let d = self.client.request(*id)?;
                let cause = d.request.cause.clone();
                let updated_ms = d.request.updated_ms;
                let queue_len = d.request.queue_len;
                let req = request(d.request, d.why);
                fields.push(("state".into(), format!("{} ({cause})", req.state)));
                fields.push(("requester".into(), req.requester.clone()));
                fields.push(("shape".into(), req.shape()));
                fields.push(("priority".into(), req.priority.to_string()));
                fields.extend(position_fields(&req, queue_len));
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
                for v in &d.vms {
                    timeline.push(TimelineEntry {
                        at_ms: v.updated_ms,
                        text: format!("{} {} ({})", v.name, v.state, v.cause),
                    });
                }
                timeline.push(TimelineEntry {
                    at_ms: updated_ms,
                    text: format!("now {}", req.state),
                });
                timeline.sort_by_key(|t| t.at_ms);
            }
            Target::Vm(id) => {
                let d = self.client.vm(*id)?;
                fields.push(("state".into(), d.vm.state.name().to_owned()));
                if let Some(detail) = &d.vm.detail {
                    fields.push(("now".into(), detail.clone()));
                }
                fields.push(("request".into(), crate::model::request_label(d.vm.request)));
                fields.push(("template".into(), text_or_dash(d.vm.template.as_deref())));
                if let Some(object) = &d.vm.host_object {
                    fields.push(("host object".into(), object.clone()));
                }
                // The size the request asked for, else its template's.
                if let Ok(r) = self.client.request(d.vm.request) {
                    let size = match (r.request.spec.vcpus, r.request.spec.memory_mib) {
                        (Some(c), Some(m)) => format!("{c} vcpus, {}", crate::model::mib(m)),
                        _ => "the template's".to_owned(),
                    };
                    fields.push(("size".into(), size));
                }
                if let Some(h) = &d.vm.hold {
                    fields.push((
                        "held by".into(),
                        format!("{} until {} UTC", h.owner, crate::app::clock(h.expires_ms)),
                    ));
                }
                fields.push(("host".into(), text_or_dash(d.vm.host.as_deref())));
                fields.push(("cause".into(), d.vm.cause.clone()));
                for h in &d.history {
                    // As the event stream words the same change.
                    let mut text =
                        format!("{} → {}", h.from.map_or("-", |s| s.name()), h.to.name());
                    if !h.cause.is_empty() {
                        text.push_str(&format!(" ({})", h.cause));
                    }
                    if let Some(host) = &h.host {
                        text.push_str(&format!(" on {host}"));
                    }
                    timeline.push(TimelineEntry {
                        at_ms: h.at_ms,
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
        let c = &self.client;
        match action {
            Action::Drain(h) => c.host_op(h, "drain").map(drop),
            Action::Resume(h) => c.host_op(h, "resume").map(drop),
            Action::Offline(h) => c.host_op(h, "offline").map(drop),
            Action::Cancel(r) => c.cancel(*r).map(drop),
            Action::Release(vm) => c.release(*vm).map(drop),
            Action::Extend { vm, seconds } => c.extend(*vm, *seconds).map(drop),
        }
        .map_err(SourceError::from)
    }

    fn predict_drain(&mut self, hosts: &[String]) -> Result<Option<DrainPrediction>, SourceError> {
        let question = api::DrainQuestion {
            hosts: hosts.to_vec(),
            horizon_s: None,
            arrivals: None,
        };
        Ok(Some(prediction(self.client.predict_drain(&question)?)))
    }

    fn console(&mut self, vm: u64) -> Result<ConsoleInfo, SourceError> {
        let c = self.client.console(vm)?;
        Ok(ConsoleInfo {
            vm,
            host: c.host,
            port: c.port,
            password: c.password,
        })
    }

    fn screenshot(&mut self, vm: u64) -> Result<Vec<u8>, SourceError> {
        Ok(self.client.screenshot(vm, SCREENSHOT_BYTES_MAX)?)
    }

    fn serial_log(&mut self, vm: u64) -> Result<String, SourceError> {
        let tail = self.client.serial(vm, SERIAL_TAIL_BYTES)?;
        Ok(serial_text(vm, &tail.bytes, tail.total_bytes))
    }

    fn daemon_log(&mut self) -> Result<String, SourceError> {
        let log = self.client.daemon_log(None)?;
        Ok(log.lines.iter().map(daemon_log_line).collect())
    }

    fn role(&mut self) -> Option<Role> {
        Some(match self.client.whoami().ok()?.role {
            api::Role::ReadOnly => Role::ReadOnly,
            api::Role::Operator => Role::Operator,
        })
    }

    fn subscribe(&mut self, tx: Sender<Event>) {
        let client = self.client.clone();
        let failed = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-events".into())
            .spawn(move || stream_events(&client, &tx));
        if spawned.is_err() {
            // No stream: the header says so and snapshots still come on the timer.
            let _ = failed.send(Event::StreamUp(false));
        }
    }
}

/// One line of the daemon's log as the console shows it: time, level, message and fields,
/// then the module, which matters least, so it is what the popup's edge cuts first.
pub fn daemon_log_line(l: &api::LogLine) -> String {
    let module = l.target.strip_prefix("berth_daemon::").unwrap_or(&l.target);
    format!(
        "{} {:<5} {}  [{module}]\n",
        crate::app::clock(l.at_ms),
        l.level.to_uppercase(),
        l.message
    )
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

/// Reads the event stream until the console goes away, reconnecting with backoff (or after
/// the daemon's `retry:`), and sending the last event id back.
fn stream_events(client: &Client, tx: &Sender<Event>) {
    let mut backoff_ms = 500;
    let mut last_id: Option<String> = None;
    loop {
        let mut retry_ms = None;
        if let Ok(mut events) = client.events(
            last_id.as_deref(),
            Duration::from_secs(STREAM_READ_TIMEOUT_S),
        ) {
            backoff_ms = 500;
            if tx.send(Event::StreamUp(true)).is_err() {
                return;
            }
            for item in events.by_ref() {
                let row = match item {
                    Ok(StreamItem::Event(e)) => event_row(&e),
                    Ok(StreamItem::Lagged(l)) => EventRow {
                        at_ms: 0,
                        kind: "stream".into(),
                        subject: String::new(),
                        text: if l.daemon_restarted {
                            "the daemon restarted; earlier events are not shown".to_owned()
                        } else {
                            format!("missed {} events", l.missed)
                        },
                    },
                    // An event this console cannot read: say so rather than guess.
                    Err(e) => EventRow {
                        at_ms: 0,
                        kind: "stream".into(),
                        subject: String::new(),
                        text: e.to_string(),
                    },
                };
                if tx.send(Event::Stream(row)).is_err() {
                    return;
                }
            }
            last_id = events.last_id().map(str::to_owned);
            retry_ms = events.retry_ms();
        }
        if tx.send(Event::StreamUp(false)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(retry_ms.unwrap_or(backoff_ms)));
        backoff_ms = (backoff_ms * 2).min(STREAM_BACKOFF_MAX_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
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
            matches!(&errors[2], SourceError::Status { status: 502, .. }),
            "{}",
            errors[2]
        );
        assert_eq!(
            errors[2].to_string(),
            "GET /v1/vms/7/serial?tail_bytes=65536: 502: host h1 did not answer"
        );
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
    fn typed_answers_become_the_consoles_rows() {
        let h: api::HostRow = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "sim-large-2", "driver": "sim", "state": "draining",
            "vcpus_milli": 128000, "vcpus_used_milli": 8000, "memory_mib": 262144,
            "memory_used_mib": 16384, "slots": [], "provisioning": 0, "vms": 2,
            "labels": ["arch=x86_64"], "last_probe_ms": 5, "probe_failures": 0,
            "provision_failures": 0
        }))
        .unwrap();
        assert_eq!(image_fields(&h), [("images".to_owned(), "none".to_owned())]);
        let h = host(h);
        assert_eq!(h.class, "sim-large");
        assert_eq!(h.cpu_milli, 128_000);
        assert_eq!(h.state, "draining");
        assert_eq!(h.images_text(), "-");
        let e = event_row(&api::Event::Vm(api::VmEvent {
            at_ms: 1,
            vm: 3,
            name: "berth-vm3".into(),
            request: 1,
            host: Some("sim-small-1".into()),
            from: Some(api::VmState::Booting),
            to: api::VmState::Running,
            cause: "boot done".into(),
        }));
        assert_eq!(e.subject, "berth-vm3");
        assert_eq!(e.text, "booting → running (boot done) on sim-small-1");
    }

    #[test]
    fn a_hosts_images_read_as_a_count_in_the_table_and_a_list_in_its_detail() {
        let h: api::HostRow = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "kvm-1", "driver": "libvirt", "state": "ready",
            "vcpus_milli": 16000, "vcpus_used_milli": 2000, "memory_mib": 65536,
            "memory_used_mib": 4096, "slots": [], "provisioning": 1, "vms": 1,
            "labels": [], "last_probe_ms": 5, "probe_failures": 0,
            "provision_failures": 0, "drain": null,
            "images": [
                {"name": "linux", "bytes": 1181116006, "last_used_ms": 1, "in_use": true},
                {"name": "tiny", "bytes": 1048576, "last_used_ms": 1, "in_use": false}
            ],
            "image_disk": {"used_bytes": 1182164582, "budget_bytes": 21474836480u64},
            "pulls": [{"host": "kvm-1", "image": "win11", "file": "win11.qcow2",
                "done_bytes": 41, "total_bytes": 100, "percent": 41}]
        }))
        .unwrap();
        assert_eq!(
            image_fields(&h),
            [
                ("images".to_owned(), "linux 1.1G in use, tiny 1M".to_owned()),
                ("image disk".to_owned(), "1.1G of 20G budget".to_owned()),
                ("pulling".to_owned(), "win11.qcow2 41%".to_owned()),
            ]
        );
        assert_eq!(host(h).images_text(), "2+1↓");
    }

    #[test]
    fn a_draining_hosts_detail_names_its_holds_and_when_it_empties() {
        let blocker = |vm: u64, held: Option<(&str, u64)>, end: Option<u64>| api::DrainBlocker {
            vm,
            name: format!("berth-vm{vm}"),
            request: 1,
            state: api::VmState::Running,
            held_by: held.map(|h| h.0.to_owned()),
            held_until_ms: held.map(|h| h.1),
            expected_end_ms: end,
        };
        // 14:00:00 UTC on some day, and later.
        let t = 1_796_392_800_000;
        let mut blockers = vec![blocker(3, Some(("alice", t + 3_600_000)), None)];
        blockers.extend((4..10).map(|vm| blocker(vm, None, Some(t + 60_000))));
        let d = api::DrainStatus {
            eta_ms: Some(t + 3_600_000),
            blockers,
        };
        let fields = drain_fields(&d);
        let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        assert_eq!(
            text,
            [
                "drain: 7 VMs left, empty by 15:00:00 UTC",
                "  waits for: berth-vm3 held by alice until 15:00:00 UTC",
                "  waits for: berth-vm4 running, expected to end 14:01:00 UTC",
                "  waits for: berth-vm5 running, expected to end 14:01:00 UTC",
                "  waits for: berth-vm6 running, expected to end 14:01:00 UTC",
                "  waits for: berth-vm7 running, expected to end 14:01:00 UTC",
                "  waits for: … and 2 more",
            ]
        );
        let empty = api::DrainStatus {
            eta_ms: None,
            blockers: vec![blocker(3, None, None)],
        };
        assert_eq!(
            drain_fields(&empty)[0].1,
            "1 VM left, no estimate of when it is empty"
        );
    }

    #[test]
    fn a_forecast_that_replayed_nothing_has_no_arrivals() {
        let stats = |n| api::WaitStats {
            mean_wait_ms: n,
            p95_wait_ms: n,
            max_wait_ms: n,
            still_waiting: 0,
        };
        for source in ["none", "recent"] {
            let p = prediction(api::DrainForecast {
                hosts: vec!["a".into()],
                horizon_ms: 3_600_000,
                without: stats(1000),
                with: stats(4000),
                arrivals: api::ArrivalsForecast {
                    source: source.into(),
                    requests: 0,
                    without: stats(0),
                    with: stats(0),
                },
            });
            assert_eq!(p.arrivals, None, "{source}");
            assert_eq!(p.with, waits(4000, 4000, 4000, 0));
        }
    }

    #[test]
    fn an_answer_missing_a_field_is_an_error_naming_it() {
        let (url, _head) = answer_once(
            "200 OK",
            "Content-Type: application/json\r\n",
            br#"{"name": "local"}"#.to_vec(),
        );
        let err = HttpSource::new(&url, None).whoami().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("GET /v1/whoami"), "{msg}");
        assert!(msg.contains("missing field `role`"), "{msg}");
    }
}

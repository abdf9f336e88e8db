//! The client commands over the daemon's HTTP API: `berth request`, `change`, `vm`, `host`,
//! `image`, `template`, `events`, `hook`, `orphan` and `status`. Tables for people by default (`-o wide` for more
//! columns, `--watch` to redraw), the API's values for scripts (`-o json|yaml`); exit codes as
//! [`crate::exit`] documents them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_api as api;
use berth_client::{StreamItem, VmQuery};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::exit::{self, usage};
use crate::human;
use crate::output::{self, Format, Table};

/// Where the daemon is, how to prove who we are, and how to print.
#[derive(Args, Clone)]
pub struct Conn {
    /// The daemon's URL (also BERTH_URL; default from the config file's `listen`, else
    /// http://127.0.0.1:7878).
    #[arg(long, global = true)]
    url: Option<String>,
    /// A bearer token (also BERTH_TOKEN; default: the token file in the data directory).
    #[arg(long, global = true)]
    token: Option<String>,
    /// For an https:// daemon: trust only the CA certificates in this PEM file (also
    /// BERTH_CA_FILE; default: the public roots).
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// The daemon's config file, for its address and data directory.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The data directory whose token file to read.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// How to print: table, wide (more columns), json or yaml (the API's exact values).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t
    )]
    output: Format,
    /// The same as `-o json`.
    #[arg(long, global = true)]
    json: bool,
}

/// `--watch [SECS]` of the lists.
#[derive(Args, Clone, Copy)]
struct Watch {
    /// Redraw the list every SECS seconds (2 when not given) until interrupted.
    #[arg(short = 'w', long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..))]
    watch: Option<u64>,
}

/// The daemon's client, and how to print its answers.
struct Client {
    api: berth_client::Client,
    format: Format,
}

/// The CA file to trust for an `https://` daemon: the flag, else `BERTH_CA_FILE`.
pub fn ca_file(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os("BERTH_CA_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// The daemon's URL and a token, each from the first that has one: the flag, `BERTH_URL` /
/// `BERTH_TOKEN`, the config file (its `listen`; its first operator token), the defaults
/// (127.0.0.1:7878; the data directory's token file).
pub fn endpoint(
    url: Option<&str>,
    token: Option<&str>,
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<(String, Option<String>)> {
    let config = match config {
        Some(p) => Some(
            berth_daemon::config::load(p)
                .with_context(|| format!("reading config {}", p.display()))?,
        ),
        None => None,
    };
    let from_env = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
    let url = url
        .map(str::to_owned)
        .or_else(|| from_env("BERTH_URL"))
        .or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.listen.as_ref())
                .map(|l| format!("http://{l}"))
        })
        .unwrap_or_else(|| format!("http://{}", berth_daemon::config::DEFAULT_LISTEN));
    let configured = config.as_ref().and_then(|c| {
        c.tokens
            .iter()
            .find(|t| t.role == berth_daemon::Role::Operator)
            .map(|t| t.token.clone())
    });
    let token = token
        .map(str::to_owned)
        .or_else(|| from_env("BERTH_TOKEN"))
        .or(configured)
        .or_else(|| {
            let dir = data_dir
                .map(Path::to_path_buf)
                .or_else(|| config.as_ref().and_then(|c| c.data_dir.clone()))
                .unwrap_or_else(berth_daemon::config::default_data_dir);
            std::fs::read_to_string(dir.join(berth_daemon::TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_owned())
        });
    Ok((url.trim_end_matches('/').to_owned(), token))
}

impl Conn {
    fn client(&self) -> anyhow::Result<Client> {
        let (url, token) = endpoint(
            self.url.as_deref(),
            self.token.as_deref(),
            self.config.as_deref(),
            self.data_dir.as_deref(),
        )?;
        let mut api = berth_client::Client::new(&url, token);
        if let Some(ca) = ca_file(self.ca_file.clone()) {
            api = api.trusting(&ca)?;
        }
        Ok(Client {
            api,
            format: if self.json { Format::Json } else { self.output },
        })
    }
}

impl Client {
    /// An answer, or an error that says what went wrong (and, when the daemon is not there,
    /// what to check). The client's error stays in the chain for the exit code.
    fn answer<T>(&self, got: Result<T, berth_client::ClientError>) -> anyhow::Result<T> {
        got.map_err(|e| {
            let hint = match e {
                berth_client::ClientError::Unreachable { ref message, .. }
                    if message.contains("certificate") =>
                {
                    "the daemon's TLS certificate was refused; if a private CA signed it, trust \
                     that CA with --ca-file (or BERTH_CA_FILE)"
                        .to_owned()
                }
                berth_client::ClientError::Unreachable { .. } => {
                    format!("is `berth serve` running at {}?", self.api.url())
                }
                _ => String::new(),
            };
            let e = anyhow::Error::new(e);
            if hint.is_empty() { e } else { e.context(hint) }
        })
    }

    fn wide(&self) -> bool {
        self.format == Format::Wide
    }

    /// The answer as JSON or YAML when asked, else as `text` renders it.
    fn show<T: Serialize>(&self, v: &T, text: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
        if self.format.is_data() {
            output::print(&output::data(self.format, v)?)
        } else {
            output::print(&text(v))
        }
    }

    /// Shows what `fetch` answers; with `--watch`, again every few seconds until interrupted
    /// (in a terminal the screen is redrawn, else each list follows the last).
    fn list<T: Serialize>(
        &self,
        watch: Watch,
        mut fetch: impl FnMut() -> anyhow::Result<T>,
        mut text: impl FnMut(&T) -> String,
    ) -> anyhow::Result<ExitCode> {
        let Some(secs) = watch.watch else {
            let v = fetch()?;
            self.show(&v, |v| text(v))?;
            return Ok(ExitCode::from(exit::OK));
        };
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
        loop {
            let v = fetch()?;
            let body = if self.format.is_data() {
                let mut d = output::data(self.format, &v)?;
                if self.format == Format::Yaml {
                    d.insert_str(0, "---\n");
                }
                d
            } else {
                text(&v)
            };
            let now = human::instant(human::now_ms(), human::now_ms());
            let frame = if terminal && !self.format.is_data() {
                format!("\x1b[H\x1b[2J{now}  every {secs}s\n\n{body}")
            } else if self.format.is_data() {
                body
            } else {
                format!("{now}\n{body}\n")
            };
            output::print(&frame)?;
            std::thread::sleep(Duration::from_secs(secs));
        }
    }

    fn templates(&self) -> anyhow::Result<Vec<api::TemplateRow>> {
        Ok(self.answer(self.api.templates())?.templates)
    }

    /// The vCPUs and memory of each request's VMs, for the requests named: the request's own
    /// shape, else its template's. Reads pages of requests, newest first, until all are found.
    fn shapes(&self, requests: &BTreeSet<u64>) -> anyhow::Result<BTreeMap<u64, (u32, u64)>> {
        let mut out = BTreeMap::new();
        if requests.is_empty() {
            return Ok(out);
        }
        let defaults: BTreeMap<String, (u32, u64)> = self
            .templates()?
            .into_iter()
            .map(|t| (t.name, (t.vcpus, t.memory_mib)))
            .collect();
        let oldest = requests.first().copied().unwrap_or(0);
        let mut before = None;
        loop {
            let page = self.answer(self.api.requests(None, Some(REQUEST_PAGE), before))?;
            for r in &page.requests {
                if requests.contains(&r.id) {
                    let d = defaults.get(&r.template).copied().unwrap_or((0, 0));
                    let shape = (
                        r.spec.vcpus.unwrap_or(d.0),
                        r.spec.memory_mib.unwrap_or(d.1),
                    );
                    out.insert(r.id, shape);
                }
            }
            let done =
                out.len() == requests.len() || page.requests.last().is_none_or(|r| r.id <= oldest);
            match page.next_before {
                Some(b) if !done => before = Some(b),
                _ => return Ok(out),
            }
        }
    }
}

/// Requests read per page when looking up shapes.
const REQUEST_PAGE: u64 = 1000;

/// A request id as given (`7` or `r7`).
fn request_id(s: &str) -> anyhow::Result<u64> {
    api::request_id(s).ok_or_else(|| usage(format!("`{s}` is not a request id (7 or r7)")))
}

/// A VM id as given (`12`, `vm12` or `berth-vm12`).
fn vm_id(s: &str) -> anyhow::Result<u64> {
    api::vm_id(s).ok_or_else(|| usage(format!("`{s}` is not a vm id (12, vm12 or berth-vm12)")))
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

fn key_value(k: &str, v: &str) -> anyhow::Result<(String, String)> {
    match v.split_once('=') {
        Some((a, b)) if !a.is_empty() => Ok((a.to_owned(), b.to_owned())),
        _ => Err(usage(format!("{k} `{v}`: expected KEY=VALUE"))),
    }
}

/// Clap parsers for the API's state names, listing them on a mistake.
fn vm_states() -> PossibleValuesParser {
    PossibleValuesParser::new(api::VmState::ALL.iter().map(|s| s.name()))
}

fn request_states() -> PossibleValuesParser {
    PossibleValuesParser::new(api::RequestState::ALL.iter().map(|s| s.name()))
}

fn host_states() -> PossibleValuesParser {
    PossibleValuesParser::new(api::HostState::ALL.iter().map(|s| s.name()))
}

fn duration_arg(s: &str) -> Result<u64, String> {
    human::parse_duration(s)
}

fn mib_arg(s: &str) -> Result<u64, String> {
    human::parse_mib(s)
}

/// Seconds from ms, at least 1 for anything positive.
fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RequestArgs {
    #[command(subcommand)]
    action: Option<RequestAction>,
    /// The template every VM is made from (`berth template list`).
    #[arg(long)]
    template: Option<String>,
    /// How many VMs.
    #[arg(long)]
    count: Option<u32>,
    /// vCPUs per VM, instead of the template's.
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory per VM, instead of the template's: 512M, 8G, or MiB.
    #[arg(long, value_parser = mib_arg, conflicts_with = "memory_mib")]
    memory: Option<u64>,
    /// Memory per VM in MiB (the same as --memory N).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Place all VMs at once or none.
    #[arg(long)]
    gang: bool,
    /// Keep a VM whose job failed alive at a breakpoint until released.
    #[arg(long)]
    hold_on_failure: bool,
    /// Who owns such a breakpoint (default: the requester); implies --hold-on-failure.
    #[arg(long)]
    hold_owner: Option<String>,
    /// How long a breakpoint lasts (8h when not given): 30m, 2h, 1d; implies
    /// --hold-on-failure.
    #[arg(long, value_parser = duration_arg)]
    hold_ttl: Option<u64>,
    /// Fail the request if it is not placed within this long: 10m, 1h.
    #[arg(long, value_parser = duration_arg)]
    deadline: Option<u64>,
    /// How long each job is expected to run (backfilling plans with it): 20m.
    #[arg(long, value_parser = duration_arg)]
    expected_run: Option<u64>,
    /// Higher goes first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// A host label every VM's host must carry (KEY=VALUE; repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The staged change this request belongs to (a Gerrit change, a pull request): reports
    /// and exported traces group requests by it.
    #[arg(long)]
    change: Option<String>,
    /// The account (team or project) charged for it under fair share (default: the
    /// requester).
    #[arg(long)]
    account: Option<String>,
    /// Who asks, when not the token's name (a CI coordinator naming its user or team).
    #[arg(long)]
    requester: Option<String>,
    /// Return when every VM runs (printing their names and hosts), or when the request
    /// fails (exit 3).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (exit 4; the request stays): 90s, 10m, 1h.
    /// Without it, --wait waits as long as the request lives.
    #[arg(long, value_parser = duration_arg, requires = "wait")]
    timeout: Option<u64>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum RequestAction {
    /// A request with its VMs and why it still waits.
    Show { id: String },
    /// Cancel a request: queued VMs end, placed ones are destroyed.
    Cancel { id: String },
    /// Recent requests, newest first.
    List {
        /// Only requests in this state.
        #[arg(long, value_parser = request_states())]
        state: Option<String>,
        /// At most this many (the daemon's default: 1000).
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        watch: Watch,
    },
}

pub fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        Some(RequestAction::Show { id }) => {
            let v = c.answer(c.api.request(request_id(&id)?))?;
            c.show(&v, |v| request_text(v, &c))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(RequestAction::Cancel { id }) => {
            let v = c.answer(c.api.cancel(request_id(&id)?))?;
            c.show(&v, |v| {
                let word = match v.state {
                    api::RequestState::Cancelled => "cancelled".to_owned(),
                    s if ended(s) => format!("had already ended: {s}"),
                    s => format!("cancel taken ({s}: its VMs are being ended)"),
                };
                format!("r{} {word}\n", v.id)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(RequestAction::List {
            state,
            limit,
            watch,
        }) => c.list(
            watch,
            || c.answer(c.api.requests(state.as_deref(), limit, None)),
            |v| requests_text(&v.requests, &c),
        ),
        None => submit(&c, args),
    }
}

/// Whether a request has ended.
fn ended(s: api::RequestState) -> bool {
    !matches!(s, api::RequestState::Waiting | api::RequestState::Active)
}

/// Whether a request ended without its VMs: what a coordinator must not read as success.
fn refused(s: api::RequestState) -> bool {
    matches!(
        s,
        api::RequestState::Rejected | api::RequestState::Failed | api::RequestState::Cancelled
    )
}

/// Whether a VM is running or got past it (its job may already have ended).
fn has_run(s: api::VmState) -> bool {
    matches!(
        s,
        api::VmState::Running | api::VmState::Held | api::VmState::Releasing | api::VmState::Done
    )
}

fn submit(c: &Client, args: RequestArgs) -> anyhow::Result<ExitCode> {
    let (Some(template), Some(count)) = (args.template, args.count) else {
        return Err(usage("`berth request` needs --template NAME and --count N"));
    };
    let labels = args
        .labels
        .iter()
        .map(|l| key_value("--label", l))
        .collect::<anyhow::Result<BTreeMap<String, String>>>()?;
    let hold = args.hold_on_failure || args.hold_owner.is_some() || args.hold_ttl.is_some();
    let body = api::SubmitRequest {
        template,
        count,
        cpus: args.cpus,
        memory_mib: args.memory.or(args.memory_mib),
        labels,
        priority: args.priority,
        gang: args.gang,
        hold_on_failure: hold,
        hold_owner: args.hold_owner,
        hold_ttl_s: args.hold_ttl.map(secs),
        pending_deadline_s: args.deadline.map(secs),
        expected_run_s: args.expected_run.map(secs),
        change: args.change,
        account: args.account,
        requester: args.requester,
    };
    // The event stream opens before the submit, so that no change of the new request is
    // missed; it only wakes the wait early, the request's own answer decides.
    let wake = if args.wait {
        Some(wake_on_events(&c.api))
    } else {
        None
    };
    let row = c.answer(c.api.submit(&body))?;
    let id = row.id;
    let started = Instant::now();
    let limit = args.timeout.map(Duration::from_millis);
    loop {
        let detail = c.answer(c.api.request(id))?;
        let state = detail.request.state;
        let running = detail.vms.iter().filter(|v| has_run(v.state)).count() as u64;
        let settled = refused(state)
            || wake.is_none()
            || running >= u64::from(count)
            || state == api::RequestState::Done;
        if settled {
            c.show(&detail, |v| request_text(v, c))?;
            return Ok(if refused(state) {
                ExitCode::from(exit::REQUEST_ENDED)
            } else {
                ExitCode::SUCCESS
            });
        }
        let left = limit.map(|l| l.saturating_sub(started.elapsed()));
        if left == Some(Duration::ZERO) {
            c.show(&detail, |v| request_text(v, c))?;
            let why = detail.why.as_ref().map_or_else(
                || format!("{running} of {count} VMs running"),
                |w| w.summary.clone(),
            );
            eprintln!(
                "berth: r{id} is still {state} after {}: {why} (the request stays; `berth request cancel r{id}` ends it)",
                human::duration(started.elapsed().as_millis() as u64)
            );
            return Ok(ExitCode::from(exit::WAIT_TIMEOUT));
        }
        let nap = left.map_or(WAIT_POLL, |l| l.min(WAIT_POLL));
        if let Some(rx) = &wake {
            // An event of this request (or the stream's end) wakes us early; else poll.
            let deadline = Instant::now() + nap;
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Some(r)) if r != id => continue,
                    Ok(_) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        break;
                    }
                }
            }
        }
    }
}

/// How often `--wait` asks for the request when no event woke it.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// A thread that reads the event stream and sends the request each VM or request event is
/// about (`None` for a lag: anything may have changed). The channel closes with the stream.
fn wake_on_events(api: &berth_client::Client) -> std::sync::mpsc::Receiver<Option<u64>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let api = api.clone();
    std::thread::spawn(move || {
        let Ok(events) = api.events(None, Duration::from_secs(90)) else {
            return;
        };
        for item in events {
            let about = match item {
                Ok(StreamItem::Event(api::Event::Vm(e))) => Some(e.request),
                Ok(StreamItem::Event(api::Event::Request(e))) => Some(e.request),
                Ok(StreamItem::Lagged(_)) => None,
                _ => continue,
            };
            if tx.send(about).is_err() {
                return;
            }
        }
    });
    rx
}

fn request_text(v: &api::RequestDetail, c: &Client) -> String {
    let r = &v.request;
    let now = human::now_ms();
    let mut out = format!(
        "r{}  {} x{}  {}  ({})\n",
        r.id, r.template, r.count, r.state, r.cause
    );
    out.push_str(&format!(
        "submitted {} ({} ago) by {}",
        human::instant(r.submitted_ms, now),
        human::age(now, r.submitted_ms),
        r.spec.requester
    ));
    if let Some(change) = &r.spec.change {
        out.push_str(&format!(", change {change}"));
    }
    out.push_str(&format!(", account {}", r.spec.account));
    out.push('\n');
    if let Some(line) = position_line(r, now) {
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(why) = &v.why {
        out.push_str(&format!("waiting: {}\n", why.summary));
        for r in &why.reasons {
            let hosts = if r.hosts == 1 { "host " } else { "hosts" };
            out.push_str(&format!("  {:>5} {hosts} {}\n", r.hosts, r.with_hosts()));
        }
    }
    if !v.vms.is_empty() {
        // The shape shown is the request's, else its template's (when the daemon says).
        let default = c
            .templates()
            .ok()
            .and_then(|ts| ts.into_iter().find(|t| t.name == r.template))
            .map_or((0, 0), |t| (t.vcpus, t.memory_mib));
        let shape = (
            r.spec.vcpus.unwrap_or(default.0),
            r.spec.memory_mib.unwrap_or(default.1),
        );
        let shapes = BTreeMap::from([(r.id, shape)]);
        out.push('\n');
        out.push_str(&vms_table(&v.vms, &shapes, now).render(c.wide()));
    }
    out
}

/// Where a waiting request stands and when it is expected to start: `position 12 of 340,
/// starts in ~4m (estimate)`; `None` unless it waits.
fn position_line(r: &api::RequestRow, now: u64) -> Option<String> {
    if r.state != api::RequestState::Waiting {
        return None;
    }
    let Some((position, len)) = r.position.zip(r.queue_len) else {
        return Some("position not known yet (estimated every few seconds)".to_owned());
    };
    let starts = match human::eta(r.eta_ms, r.eta_after_ms, now) {
        Some(when) => format!(", starts {when} (estimate)"),
        None => String::new(),
    };
    Some(format!("position {position} of {len}{starts}"))
}

fn requests_text(rows: &[api::RequestRow], c: &Client) -> String {
    let now = human::now_ms();
    let mut t = Table::new(&[
        ("ID", false),
        ("TEMPLATE", false),
        ("COUNT", false),
        ("CPUS", true),
        ("MEMORY", true),
        ("STATE", false),
        ("POS", false),
        ("ETA", false),
        ("AGE", false),
        ("REQUESTER", true),
        ("CHANGE", true),
        ("ACCOUNT", true),
        ("PRIORITY", true),
        ("CAUSE", false),
    ]);
    for r in rows {
        t.row(vec![
            format!("r{}", r.id),
            r.template.clone(),
            r.count.to_string(),
            r.spec.vcpus.map_or_else(|| "-".into(), |v| v.to_string()),
            r.spec.memory_mib.map_or_else(|| "-".into(), human::mib),
            r.state.to_string(),
            r.position.map_or_else(|| "-".into(), |p| p.to_string()),
            human::eta_cell(r.eta_ms, r.eta_after_ms, now),
            human::age(now, r.submitted_ms),
            r.spec.requester.clone(),
            or_dash(r.spec.change.as_deref()),
            r.spec.account.clone(),
            r.spec.priority.to_string(),
            r.cause.clone(),
        ]);
    }
    t.render(c.wide())
}

/// VMs with their shapes where known (`shapes` by request).
fn vms_table(vms: &[api::VmRow], shapes: &BTreeMap<u64, (u32, u64)>, now: u64) -> Table {
    let mut t = Table::new(&[
        ("NAME", false),
        ("STATE", false),
        ("TEMPLATE", false),
        ("HOST", false),
        ("CPUS", false),
        ("MEMORY", false),
        ("AGE", false),
        ("REQUEST", true),
        ("HOLD", true),
        ("CAUSE", true),
    ]);
    for v in vms {
        let shape = shapes.get(&v.request);
        t.row(vec![
            v.name.clone(),
            v.state.to_string(),
            or_dash(v.template.as_deref()),
            or_dash(v.host.as_deref()),
            shape.map_or_else(|| "-".into(), |s| s.0.to_string()),
            shape.map_or_else(|| "-".into(), |s| human::mib(s.1)),
            human::age(now, v.created_ms),
            api::request_label(v.request),
            v.hold.as_ref().map_or_else(
                || "-".into(),
                |h| {
                    format!(
                        "{}, {} left",
                        h.owner,
                        human::duration(h.expires_ms.saturating_sub(now))
                    )
                },
            ),
            v.cause.clone(),
        ]);
    }
    t
}

#[derive(Args)]
pub struct VmArgs {
    #[command(subcommand)]
    action: VmAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum VmAction {
    /// VMs, filtered.
    List {
        /// Only VMs in this state.
        #[arg(long, value_parser = vm_states())]
        state: Option<String>,
        /// Only the VMs of this request (7 or r7).
        #[arg(long)]
        request: Option<String>,
        /// Only VMs on this host (by name).
        #[arg(long)]
        host: Option<String>,
        /// Only VMs that have not ended.
        #[arg(long)]
        live: bool,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        watch: Watch,
    },
    /// One VM with its history.
    Show { vm: String },
    /// Report a VM's job result.
    Result {
        vm: String,
        #[arg(value_parser = ["passed", "failed"])]
        outcome: String,
    },
    /// Release a VM held at a breakpoint.
    Release { vm: String },
    /// Give a held VM more time.
    Extend {
        vm: String,
        /// How much more: 30m, 2h (1h when not given).
        #[arg(long, value_parser = duration_arg, conflicts_with = "seconds")]
        by: Option<u64>,
        /// Seconds to add (the same as --by N).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Where the VM's console is, and the ssh command to reach it.
    Console { vm: String },
    /// The end of the VM's serial console log, as the guest wrote it.
    Serial {
        vm: String,
        /// How much of the end of the log to show.
        #[arg(long, default_value_t = 65536)]
        tail_bytes: usize,
    },
}

/// A page of VMs with the shapes of their requests: printed as the page alone.
#[derive(Serialize)]
struct VmsShaped {
    #[serde(flatten)]
    page: api::VmPage,
    #[serde(skip)]
    shapes: BTreeMap<u64, (u32, u64)>,
}

/// Refuses a host filter naming no host, listing some that there are.
fn check_host(c: &Client, name: &str) -> anyhow::Result<()> {
    let hosts = c.answer(c.api.hosts())?;
    if hosts.iter().any(|h| h.name == name) {
        return Ok(());
    }
    let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let more = names.len().saturating_sub(8);
    names.truncate(8);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(usage(format!(
        "--host `{name}`: no host by that name (hosts: {}{tail})",
        names.join(", ")
    )))
}

pub fn vm(args: VmArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let one = |v: &api::VmRow| format!("{} {}\n", v.name, v.state);
    match args.action {
        VmAction::List {
            state,
            request,
            host,
            live,
            limit,
            watch,
        } => {
            if let Some(h) = &host {
                check_host(&c, h)?;
            }
            let q = VmQuery {
                state,
                request: request.as_deref().map(request_id).transpose()?,
                host,
                live,
                limit,
                after: None,
            };
            let mut shapes = BTreeMap::new();
            c.list(
                watch,
                || {
                    let page = c.answer(c.api.vms(&q))?;
                    if !c.format.is_data() {
                        let wanted: BTreeSet<u64> = page
                            .vms
                            .iter()
                            .map(|v| v.request)
                            .filter(|r| !shapes.contains_key(r))
                            .collect();
                        shapes.extend(c.shapes(&wanted)?);
                    }
                    Ok(VmsShaped {
                        page,
                        shapes: shapes.clone(),
                    })
                },
                |v| vms_table(&v.page.vms, &v.shapes, human::now_ms()).render(c.wide()),
            )
        }
        VmAction::Show { vm } => {
            let v = c.answer(c.api.vm(vm_id(&vm)?))?;
            c.show(&v, |v| {
                let now = human::now_ms();
                let shapes = c
                    .shapes(&BTreeSet::from([v.vm.request]))
                    .unwrap_or_default();
                let mut out = vms_table(std::slice::from_ref(&v.vm), &shapes, now).render(true);
                if let Some(detail) = &v.vm.detail {
                    out.push_str(&format!("now: {detail}\n"));
                }
                if let Some(object) = &v.vm.host_object {
                    out.push_str(&format!(
                        "runs in: {object} on its host (a warm VM it took over)\n"
                    ));
                }
                out.push('\n');
                let mut t = Table::new(&[
                    ("AT", false),
                    ("FROM", false),
                    ("TO", false),
                    ("HOST", false),
                    ("CAUSE", false),
                ]);
                for h in &v.history {
                    t.row(vec![
                        human::instant(h.at_ms, now),
                        or_dash(h.from.map(|f| f.name())),
                        h.to.to_string(),
                        or_dash(h.host.as_deref()),
                        h.cause.clone(),
                    ]);
                }
                out.push_str(&t.render(true));
                out
            })?;
            Ok(ExitCode::SUCCESS)
        }
        VmAction::Result { vm, outcome } => {
            let v = c.answer(c.api.vm_result(vm_id(&vm)?, outcome == "passed"))?;
            c.show(&v, one)?;
            Ok(ExitCode::SUCCESS)
        }
        VmAction::Release { vm } => {
            let v = c.answer(c.api.release(vm_id(&vm)?))?;
            c.show(&v, one)?;
            Ok(ExitCode::SUCCESS)
        }
        VmAction::Extend { vm, by, seconds } => {
            let s = by.map(secs).or(seconds).unwrap_or(3600);
            let v = c.answer(c.api.extend(vm_id(&vm)?, s))?;
            c.show(&v, |v| {
                let until = v.hold.as_ref().map_or_else(String::new, |h| {
                    format!(" until {}", human::instant(h.expires_ms, human::now_ms()))
                });
                format!("{} {}{until}\n", v.name, v.state)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        VmAction::Console { vm } => {
            let v = c.answer(c.api.console(vm_id(&vm)?))?;
            c.show(&v, |v| format!("{}\n{}\n", v.address, v.ssh))?;
            Ok(ExitCode::SUCCESS)
        }
        VmAction::Serial { vm, tail_bytes } => {
            let log = c.answer(c.api.serial(vm_id(&vm)?, tail_bytes))?;
            output::print_bytes(&log.bytes)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args)]
pub struct HostArgs {
    #[command(subcommand)]
    action: HostAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum HostAction {
    /// Hosts with their state, capacity, slots and VMs.
    List {
        /// Only hosts in this state.
        #[arg(long, value_parser = host_states())]
        state: Option<String>,
        #[command(flatten)]
        watch: Watch,
    },
    /// One host: state, capacity, the base images it holds (size, last use), its image disk
    /// against its budget, and the pulls running to it.
    Show { name: String },
    /// Add a host; it is probed and becomes ready with no restart.
    ///
    /// libvirt: `--driver libvirt --uri qemu:///system [--image-dir DIR] [--domain-type qemu]`;
    /// Parallels: `--driver parallels --ssh USER@HOST[:PORT]`. Their vCPUs and memory come from
    /// the host's probe unless given (then they cap it).
    Add(Box<HostAddArgs>),
    /// No new VMs; becomes maintenance when empty.
    Drain { name: String },
    /// Back into service.
    Resume { name: String },
    /// Out of service now: its VMs are lost and retried elsewhere. Asks first.
    Offline {
        name: String,
        /// Do not ask (needed when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Remove a host that holds no VMs.
    Remove { name: String },
}

#[derive(Args)]
struct HostAddArgs {
    name: String,
    /// sim, libvirt or parallels.
    #[arg(long)]
    driver: String,
    /// Required for sim hosts.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Required for sim hosts.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// libvirt: the libvirt URI (qemu:///system, qemu+ssh://USER@HOST/system).
    #[arg(long)]
    uri: Option<String>,
    /// libvirt: the directory of base images and overlays on the host.
    #[arg(long)]
    image_dir: Option<String>,
    /// libvirt: kvm or qemu for templates that do not choose (qemu: emulation, for hosts
    /// without working KVM).
    #[arg(long)]
    domain_type: Option<String>,
    /// parallels: where to log in, USER@HOST[:PORT].
    #[arg(long)]
    ssh: Option<String>,
    /// A counted slot (KIND=N, e.g. macos=2; repeatable).
    #[arg(long = "slot")]
    slots: Vec<String>,
    /// A label (KEY=VALUE; repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A driver option (KEY=VALUE; repeatable).
    #[arg(long = "option")]
    options: Vec<String>,
    /// vCPU overcommit in thousandths (2000: two vCPUs per core).
    #[arg(long, default_value_t = 1000)]
    cpu_overcommit_milli: u32,
    /// Memory overcommit in thousandths (1000: none).
    #[arg(long, default_value_t = 1000)]
    memory_overcommit_milli: u32,
    /// A base image the host already holds (repeatable): placement prefers such hosts.
    #[arg(long = "image")]
    images: Vec<String>,
}

/// What a draining host waits for, for people: `2 VMs left, empty in ~1h02m (15:04:00 UTC);
/// berth-vm3 held by alice until 15:04:00 UTC`.
fn drain_text(d: &api::DrainStatus, now: u64) -> String {
    let n = d.blockers.len();
    let mut text = format!("{n} VM{} left", if n == 1 { "" } else { "s" });
    match d.eta_ms {
        Some(eta) => text.push_str(&format!(
            ", empty in ~{} ({})",
            human::duration(eta.saturating_sub(now)),
            human::instant(eta, now)
        )),
        None if n > 0 => text.push_str(", no estimate of when it is empty"),
        None => {}
    }
    for b in d.blockers.iter().filter(|b| b.held_by.is_some()) {
        let owner = b.held_by.as_deref().unwrap_or("?");
        let until = b.held_until_ms.map_or_else(String::new, |u| {
            format!(" until {}", human::instant(u, now))
        });
        text.push_str(&format!("; {} held by {owner}{until}", b.name));
    }
    text
}

fn hosts_text(hosts: &[api::HostRow], wide: bool) -> String {
    let now = human::now_ms();
    let mut t = Table::new(&[
        ("HOST", false),
        ("CLASS", true),
        ("DRIVER", false),
        ("STATE", false),
        ("CPUS", false),
        ("MEMORY", false),
        ("SLOTS", false),
        ("VMS", false),
        ("DRAIN", false),
        ("IMAGES", true),
        ("LABELS", true),
        ("PROBED", true),
        ("FAILURES", true),
    ]);
    for h in hosts {
        let slots: Vec<String> = h
            .slots
            .iter()
            .map(|s| format!("{} {}/{}", s.kind, s.used, s.capacity))
            .collect();
        t.row(vec![
            h.name.clone(),
            h.class().to_owned(),
            h.driver.clone(),
            h.state.to_string(),
            format!("{}/{}", milli(h.vcpus_used_milli), milli(h.vcpus_milli)),
            format!(
                "{}/{}",
                human::mib(h.memory_used_mib),
                human::mib(h.memory_mib)
            ),
            if slots.is_empty() {
                "-".into()
            } else {
                slots.join(", ")
            },
            h.vms.to_string(),
            match h.drain.as_ref().map(|d| d.eta_ms) {
                None => "-".into(),
                Some(Some(eta)) => {
                    format!("empty in ~{}", human::duration(eta.saturating_sub(now)))
                }
                Some(None) => "no estimate".into(),
            },
            images_cell(h),
            if h.labels.is_empty() {
                "-".into()
            } else {
                h.labels.join(",")
            },
            h.last_probe_ms
                .map_or_else(|| "never".into(), |p| format!("{} ago", human::age(now, p))),
            format!(
                "probe {}, provision {}",
                h.probe_failures, h.provision_failures
            ),
        ]);
    }
    t.render(wide)
}

/// A host's images in a list: their names, and the pulls running to it (`linux,win11 +1↓`).
fn images_cell(h: &api::HostRow) -> String {
    let names: Vec<&str> = h.images.iter().map(|i| i.name.as_str()).collect();
    let mut cell = if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    };
    if !h.pulls.is_empty() {
        cell.push_str(&format!(" +{}↓", h.pulls.len()));
    }
    cell
}

/// One host for people: its state and capacity, then its images, image disk and pulls.
fn host_text(h: &api::HostRow, now: u64) -> String {
    let mut text = format!(
        "{} ({}, {}) {}\ncpus {}/{}, memory {}/{}, {} VMs\n",
        h.name,
        h.driver,
        h.class(),
        h.state,
        milli(h.vcpus_used_milli),
        milli(h.vcpus_milli),
        human::mib(h.memory_used_mib),
        human::mib(h.memory_mib),
        h.vms
    );
    if let Some(d) = &h.drain {
        text.push_str(&format!("draining: {}\n", drain_text(d, now)));
    }
    match &h.image_disk {
        Some(d) => text.push_str(&format!(
            "image disk {} of {} budget\n",
            bytes(d.used_bytes),
            bytes(d.budget_bytes)
        )),
        None => text.push_str("image disk: no budget set\n"),
    }
    if h.images.is_empty() {
        text.push_str("images: none\n");
    } else {
        let mut t = Table::new(&[
            ("IMAGE", false),
            ("SIZE", false),
            ("LAST USED", false),
            ("IN USE", false),
        ]);
        for i in &h.images {
            t.row(vec![
                i.name.clone(),
                i.bytes.map_or_else(|| "-".into(), bytes),
                i.last_used_ms
                    .map_or_else(|| "-".into(), |at| format!("{} ago", human::age(now, at))),
                match i.in_use {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
            ]);
        }
        text.push_str(&t.render(false));
    }
    for p in &h.pulls {
        text.push_str(&format!(
            "pulling {} {}% ({} of {})\n",
            p.file,
            p.percent,
            bytes(p.done_bytes),
            bytes(p.total_bytes)
        ));
    }
    text
}

/// A size in bytes for people: `512M`, `1.5G` (MiB rounded up, so a small image is never 0M).
fn bytes(b: u64) -> String {
    human::mib(b.div_ceil(1 << 20))
}

/// `12.5` from thousandths, `8` when whole.
fn milli(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{:.1}", m as f64 / 1000.0)
    }
}

pub fn host(args: HostArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let one = |v: &api::HostRow| {
        let now = human::now_ms();
        match &v.drain {
            Some(d) => format!("{} {}: {}\n", v.name, v.state, drain_text(d, now)),
            None => format!("{} {}\n", v.name, v.state),
        }
    };
    match args.action {
        HostAction::List { state, watch } => c.list(
            watch,
            || {
                let mut hosts = c.answer(c.api.hosts())?;
                if let Some(s) = &state {
                    hosts.retain(|h| h.state.name() == s);
                }
                Ok(api::HostList { hosts })
            },
            |v| hosts_text(&v.hosts, c.wide()),
        ),
        HostAction::Show { name } => {
            let v = c.answer(c.api.host(&name))?;
            c.show(&v, |v| host_text(v, human::now_ms()))?;
            Ok(ExitCode::SUCCESS)
        }
        HostAction::Add(add) => {
            let HostAddArgs {
                name,
                driver,
                vcpus,
                memory_mib,
                uri,
                image_dir,
                domain_type,
                ssh,
                slots,
                labels,
                options,
                cpu_overcommit_milli,
                memory_overcommit_milli,
                images,
            } = *add;
            let slots = slots
                .iter()
                .map(|x| {
                    let (k, n) = key_value("--slot", x)?;
                    let n: u32 = n
                        .parse()
                        .with_context(|| format!("--slot `{x}`: the count is not a number"))?;
                    Ok((k, n))
                })
                .collect::<anyhow::Result<BTreeMap<String, u32>>>()?;
            let labels = labels
                .iter()
                .map(|x| key_value("--label", x))
                .collect::<anyhow::Result<BTreeMap<String, String>>>()?;
            let mut options = options
                .iter()
                .map(|x| key_value("--option", x))
                .collect::<anyhow::Result<BTreeMap<String, String>>>()?;
            // The shorthands for the common driver options, each for its own driver only.
            for (flag, key, value, for_driver) in [
                ("--uri", "uri", uri, "libvirt"),
                ("--image-dir", "image_dir", image_dir, "libvirt"),
                ("--domain-type", "domain_type", domain_type, "libvirt"),
                ("--ssh", "ssh", ssh, "parallels"),
            ] {
                let Some(value) = value else { continue };
                if driver != for_driver {
                    return Err(usage(format!(
                        "{flag} is for --driver {for_driver} hosts, not {driver}"
                    )));
                }
                if options.insert(key.to_owned(), value).is_some() {
                    return Err(usage(format!(
                        "{flag} and --option {key}=... both set `{key}`: give one"
                    )));
                }
            }
            if driver == "sim" && (vcpus.is_none() || memory_mib.is_none()) {
                return Err(usage("a sim host needs --vcpus N and --memory-mib N"));
            }
            let body = api::NewHost {
                name,
                driver,
                vcpus: vcpus.unwrap_or(0),
                memory_mib: memory_mib.unwrap_or(0),
                slots,
                cpu_overcommit_milli,
                memory_overcommit_milli,
                labels,
                images,
                options,
            };
            let v = c.answer(c.api.add_host(&body))?;
            c.show(&v, one)?;
            Ok(ExitCode::SUCCESS)
        }
        HostAction::Drain { name } => {
            let v = c.answer(c.api.host_op(&name, "drain"))?;
            c.show(&v, one)?;
            Ok(ExitCode::SUCCESS)
        }
        HostAction::Resume { name } => {
            let v = c.answer(c.api.host_op(&name, "resume"))?;
            c.show(&v, one)?;
            Ok(ExitCode::SUCCESS)
        }
        HostAction::Offline { name, yes } => {
            if !yes {
                let hosts = c.answer(c.api.hosts())?;
                let Some(h) = hosts.iter().find(|h| h.name == name) else {
                    return Err(usage(format!("no host named `{name}`")));
                };
                let question = format!(
                    "take {name} offline now? its {} VMs are lost and retried elsewhere",
                    h.vms
                );
                confirm_or_stop(&question, &format!("not taking {name} offline"))?;
            }
            let v = c.answer(c.api.host_op(&name, "offline"))?;
            c.show(&v, one)?;
            Ok(ExitCode::SUCCESS)
        }
        HostAction::Remove { name } => {
            let v = c.answer(c.api.remove_host(&name))?;
            c.show(&v, |v| format!("{} removed\n", v.name))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    action: TemplateAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum TemplateAction {
    /// The templates VMs are made from: size, slot, image, and the host classes that can run
    /// them.
    List {
        #[command(flatten)]
        watch: Watch,
    },
}

pub fn template(args: TemplateArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let TemplateAction::List { watch } = args.action;
    c.list(
        watch,
        || c.answer(c.api.templates()),
        |v| {
            let mut t = Table::new(&[
                ("NAME", false),
                ("OS", false),
                ("CPUS", false),
                ("MEMORY", false),
                ("SLOT", false),
                ("IMAGE", false),
                ("HOST CLASSES", false),
                ("DRIVERS", true),
                ("READY IN", true),
                ("RUNS", true),
            ]);
            for r in &v.templates {
                t.row(vec![
                    r.name.clone(),
                    r.guest_os.clone(),
                    r.vcpus.to_string(),
                    human::mib(r.memory_mib),
                    or_dash(r.slot.as_deref()),
                    r.base_image.clone(),
                    if r.host_classes.is_empty() {
                        "none".into()
                    } else {
                        r.host_classes.join(", ")
                    },
                    if r.drivers.is_empty() {
                        "any".into()
                    } else {
                        r.drivers.join(", ")
                    },
                    human::duration(r.expected_provision_ms + r.expected_boot_ms),
                    human::duration(r.expected_run_ms),
                ]);
            }
            t.render(c.wide())
        },
    )
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let v = c.answer(c.api.status())?;
    let queue = if c.format.is_data() || v.queue_len == 0 {
        None
    } else {
        Some(c.answer(c.api.queue(Some(QUEUE_LOOK)))?)
    };
    c.show(&v, |v| {
        let now = v.server_ms;
        let mut out = String::new();
        let mut line = |k: &str, val: String| out.push_str(&format!("{k:<10}{val}\n"));
        line(
            "daemon",
            format!(
                "{}  (api v{}, clock {})",
                c.api.url(),
                v.api_version,
                human::instant(v.server_ms, now)
            ),
        );
        if let Some(l) = &v.leadership {
            // A follower answers from its replica of the leader's state.
            let leader = l.leader.as_deref().unwrap_or("none at the moment");
            let asked = if l.role == "leader" {
                String::new()
            } else {
                format!(
                    "; answered by {}, a follower, from its replica",
                    c.api.url()
                )
            };
            line(
                "leader",
                format!("{leader}  (lease epoch {}{asked})", l.epoch),
            );
        }
        line(
            "writes",
            match &v.degraded {
                None => "taken".to_owned(),
                Some(why) => format!("REFUSED: {why}"),
            },
        );
        line(
            "hosts",
            format!("{} ({})", total(&v.hosts), by_state(&v.hosts)),
        );
        line(
            "vms",
            format!("{} live ({})", total(&v.live_vms), by_state(&v.live_vms)),
        );
        let oldest = queue.as_ref().and_then(|q| {
            q.queue
                .iter()
                .min_by_key(|e| e.request.submitted_ms)
                .map(|e| {
                    format!(
                        ", oldest r{} waiting {}",
                        e.request.id,
                        human::age(now, e.request.submitted_ms)
                    )
                })
        });
        line(
            "requests",
            format!(
                "{} live, {} waiting{}",
                v.live_requests,
                v.queue_len,
                oldest.unwrap_or_default()
            ),
        );
        line(
            "ever",
            format!(
                "{} vms ({})",
                total(&v.vms_by_state),
                by_state(&v.vms_by_state)
            ),
        );
        if v.orphans_kept > 0 {
            line(
                "orphans",
                format!("{} kept (`berth orphan list`)", v.orphans_kept),
            );
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How many queued requests `status` looks through for the oldest wait.
const QUEUE_LOOK: usize = 1000;

fn total<K>(m: &BTreeMap<K, u64>) -> u64 {
    m.values().sum()
}

/// `ready 3, draining 1`.
fn by_state<K: std::fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Args)]
pub struct EventsArgs {
    /// Only events of this kind (vm, request, host, daemon; repeatable).
    #[arg(long = "kind", value_parser = ["vm", "request", "host", "daemon"])]
    kinds: Vec<String>,
    /// Only events of this request (7 or r7) and its VMs.
    #[arg(long)]
    request: Option<String>,
    /// Only events of this VM (12, vm12 or berth-vm12).
    #[arg(long)]
    vm: Option<String>,
    /// Only events of this host and of VMs on it (by name).
    #[arg(long)]
    host: Option<String>,
    /// End after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Keep reading across restarts of the daemon and dropped connections (else the command
    /// ends with the stream).
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Which events `berth events` prints.
struct EventFilter {
    kinds: Vec<String>,
    request: Option<u64>,
    vm: Option<u64>,
    host: Option<String>,
}

impl EventFilter {
    fn keeps(&self, e: &api::Event) -> bool {
        let kind = match e {
            api::Event::Vm(_) => "vm",
            api::Event::Request(_) => "request",
            api::Event::Host(_) => "host",
            api::Event::Daemon(_) => "daemon",
        };
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == kind) {
            return false;
        }
        let (request, vm, host) = match e {
            api::Event::Vm(v) => (Some(v.request), Some(v.vm), v.host.as_deref()),
            api::Event::Request(r) => (Some(r.request), None, None),
            api::Event::Host(h) => (None, None, h.name.as_deref()),
            api::Event::Daemon(_) => (None, None, None),
        };
        self.request.is_none_or(|r| request == Some(r))
            && self.vm.is_none_or(|v| vm == Some(v))
            && self.host.as_deref().is_none_or(|h| host == Some(h))
    }
}

/// One event as a line: time, kind, what, change, cause.
fn event_line(e: &api::Event, now: u64) -> String {
    let arrow = |from: Option<&str>, to: Option<&str>| match (from, to) {
        (Some(f), Some(t)) => format!("{f} → {t}"),
        (None, Some(t)) => format!("new → {t}"),
        (Some(f), None) => format!("{f} → removed"),
        (None, None) => "-".to_owned(),
    };
    let (kind, what, change, cause) = match e {
        api::Event::Vm(v) => (
            "vm",
            match &v.host {
                Some(h) => format!("{} (r{}) on {h}", v.name, v.request),
                None => format!("{} (r{})", v.name, v.request),
            },
            arrow(v.from.map(|s| s.name()), Some(v.to.name())),
            v.cause.as_str(),
        ),
        api::Event::Request(r) => (
            "request",
            format!("r{}", r.request),
            arrow(r.from.map(|s| s.name()), Some(r.to.name())),
            r.cause.as_str(),
        ),
        api::Event::Host(h) => (
            "host",
            h.name.clone().unwrap_or_else(|| "(unnamed)".into()),
            arrow(h.from.map(|s| s.name()), h.to.map(|s| s.name())),
            h.cause.as_str(),
        ),
        api::Event::Daemon(d) => (
            "daemon",
            "daemon".to_owned(),
            if d.writable {
                "writes taken".to_owned()
            } else {
                "writes refused".to_owned()
            },
            d.why.as_deref().unwrap_or(""),
        ),
    };
    format!(
        "{:<12}  {kind:<7}  {what:<32}  {change:<26}  {cause}\n",
        human::instant(e.at_ms(), now)
    )
}

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    if let Some(h) = &args.host {
        check_host(&c, h)?;
    }
    let filter = EventFilter {
        kinds: args.kinds,
        request: args.request.as_deref().map(request_id).transpose()?,
        vm: args.vm.as_deref().map(vm_id).transpose()?,
        host: args.host,
    };
    if args.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    if !c.format.is_data() {
        output::print(&format!(
            "{:<12}  {:<7}  {:<32}  {:<26}  CAUSE\n",
            "TIME", "KIND", "WHAT", "CHANGE"
        ))?;
    }
    let mut shown = 0u64;
    let mut last_id: Option<String> = None;
    loop {
        let mut stream = match c.api.events(last_id.as_deref(), Duration::from_secs(90)) {
            Ok(s) => s,
            Err(e) if args.follow && e.status().is_none() => {
                eprintln!("berth: {e}; trying again in 2s");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(e) => return c.answer(Err(e)),
        };
        for item in stream.by_ref() {
            let event = match item.map_err(anyhow::Error::new)? {
                StreamItem::Event(e) => e,
                StreamItem::Lagged(l) if l.daemon_restarted => {
                    eprintln!("berth: the daemon restarted; events from before are not shown");
                    continue;
                }
                StreamItem::Lagged(l) => {
                    eprintln!("berth: fell behind the daemon: {} events missed", l.missed);
                    continue;
                }
            };
            if !filter.keeps(&event) {
                continue;
            }
            let text = match c.format {
                Format::Json => {
                    let mut t = serde_json::to_string(&event).context("writing JSON")?;
                    t.push('\n');
                    t
                }
                Format::Yaml => format!("---\n{}", output::data(Format::Yaml, &event)?),
                Format::Table | Format::Wide => event_line(&event, human::now_ms()),
            };
            output::print(&text)?;
            shown += 1;
            if args.count.is_some_and(|n| shown >= n) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        last_id = stream.last_id().map(str::to_owned);
        let retry = stream.retry_ms().unwrap_or(2000);
        eprintln!("berth: the event stream ended; reconnecting");
        std::thread::sleep(Duration::from_millis(retry));
    }
}

#[derive(Args)]
pub struct HookArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: HookAction,
}

#[derive(Subcommand)]
enum HookAction {
    /// Recent hook runs, newest first: when, exit code, duration and the end of stderr.
    Log {
        /// Only this hook's runs.
        #[arg(long)]
        hook: Option<String>,
        /// Only runs with this outcome.
        #[arg(long, value_parser = ["ok", "failed", "timeout", "error"], conflicts_with = "failed")]
        outcome: Option<String>,
        /// Only runs that did not succeed.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: u64,
        #[command(flatten)]
        watch: Watch,
    },
}

pub fn hook(args: HookArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let HookAction::Log {
        hook,
        outcome,
        failed,
        limit,
        watch,
    } = args.action;
    c.list(
        watch,
        || {
            let mut v = c.answer(c.api.hook_runs(
                hook.as_deref(),
                outcome.as_deref(),
                Some(limit),
            ))?;
            if failed {
                v.runs.retain(|r| r.outcome != "ok");
            }
            Ok(v)
        },
        |v| {
            let now = human::now_ms();
            let mut t = Table::new(&[
                ("ID", true),
                ("TIME", false),
                ("HOOK", false),
                ("EVENT", false),
                ("TARGET", false),
                ("ATTEMPT", true),
                ("OUTCOME", false),
                ("EXIT", false),
                ("TOOK", false),
                ("STDERR", false),
            ]);
            for r in &v.runs {
                let last = r.stderr_tail.trim().lines().last().unwrap_or("");
                t.row(vec![
                    r.id.to_string(),
                    human::instant(r.started_ms, now),
                    r.hook.clone(),
                    r.event.clone(),
                    match (r.vm, &r.host, r.request) {
                        (Some(vm), _, _) => format!("berth-vm{vm}"),
                        (None, Some(h), _) => h.clone(),
                        (None, None, Some(req)) => format!("r{req}"),
                        (None, None, None) => "-".into(),
                    },
                    r.attempt.to_string(),
                    r.outcome.clone(),
                    r.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                    human::duration(r.duration_ms),
                    last.chars().take(60).collect(),
                ]);
            }
            t.render(c.wide())
        },
    )
}

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    action: ImageAction,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum ImageAction {
    /// Base images known to the image store, to a template or to a host: digest and size from
    /// the store, the hosts holding each, the pulls running.
    List {
        #[command(flatten)]
        watch: Watch,
    },
    /// One image: its digest, the templates made from it, each host holding it (size, last use,
    /// the VMs made from it there) and its pulls.
    Show { name: String },
    /// Pull an image ahead of demand onto the named hosts, or onto every ready host of a driver
    /// that keeps an image store (`--driver libvirt`). Returns once the pulls have started.
    #[command(group(clap::ArgGroup::new("onto").required(true).args(["hosts", "driver"])))]
    Push {
        name: String,
        /// A host to pull it onto (repeatable).
        #[arg(long = "host", conflicts_with = "driver")]
        hosts: Vec<String>,
        /// Every ready host of this driver with an image store.
        #[arg(long)]
        driver: Option<String>,
    },
    /// Remove an image from a host. Refused, naming what uses it, while a VM or an overlay is
    /// made from it or a pull of it runs.
    Evict {
        name: String,
        /// The host to remove it from.
        #[arg(long)]
        host: String,
    },
}

fn images_text(v: &api::ImageList, wide: bool) -> String {
    let mut t = Table::new(&[
        ("IMAGE", false),
        ("SIZE", false),
        ("DIGEST", false),
        ("HOSTS", false),
        ("PULLING", false),
        ("TEMPLATES", true),
        ("HELD ON", true),
    ]);
    for i in &v.images {
        let digest = match (&i.digest, wide) {
            (Some(d), true) => d.clone(),
            (Some(d), false) => d.chars().take(12).collect(),
            (None, _) => "-".into(),
        };
        let pulling: Vec<String> = i
            .pulls
            .iter()
            .map(|p| format!("{} {}%", p.host, p.percent))
            .collect();
        let held_on: Vec<&str> = i.hosts.iter().map(|h| h.host.as_str()).collect();
        t.row(vec![
            i.name.clone(),
            i.bytes.map_or_else(|| "-".into(), bytes),
            digest,
            i.hosts.len().to_string(),
            if pulling.is_empty() {
                "-".into()
            } else {
                pulling.join(", ")
            },
            if i.templates.is_empty() {
                "-".into()
            } else {
                i.templates.join(",")
            },
            if held_on.is_empty() {
                "-".into()
            } else {
                held_on.join(",")
            },
        ]);
    }
    let store = match &v.store {
        Some(s) => format!("image store: {s}\n"),
        None => "image store: none set ([drivers] image_store)\n".to_owned(),
    };
    format!("{store}{}", t.render(wide))
}

fn image_text(i: &api::ImageRow, now: u64) -> String {
    let mut text = format!("{}\n", i.name);
    match (&i.digest, i.bytes, &i.store_error) {
        (Some(d), Some(b), _) => text.push_str(&format!("store: {} sha256 {d}\n", bytes(b))),
        (_, _, Some(e)) => text.push_str(&format!("store: {e}\n")),
        _ => text.push_str("store: -\n"),
    }
    text.push_str(&format!(
        "templates: {}\n",
        if i.templates.is_empty() {
            "none".to_owned()
        } else {
            i.templates.join(", ")
        }
    ));
    if i.hosts.is_empty() {
        text.push_str("held on no host\n");
    } else {
        let mut t = Table::new(&[
            ("HOST", false),
            ("SIZE", false),
            ("LAST USED", false),
            ("IN USE", false),
            ("VMS", false),
        ]);
        for h in &i.hosts {
            t.row(vec![
                h.host.clone(),
                h.bytes.map_or_else(|| "-".into(), bytes),
                h.last_used_ms
                    .map_or_else(|| "-".into(), |at| format!("{} ago", human::age(now, at))),
                match h.in_use {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                if h.vms.is_empty() {
                    "-".into()
                } else {
                    h.vms.join(",")
                },
            ]);
        }
        text.push_str(&t.render(false));
    }
    for p in &i.pulls {
        text.push_str(&format!(
            "pulling to {}: {}% ({} of {})\n",
            p.host,
            p.percent,
            bytes(p.done_bytes),
            bytes(p.total_bytes)
        ));
    }
    text
}

fn push_text(v: &api::PushStarted) -> String {
    let list = |hosts: &[String]| {
        if hosts.is_empty() {
            "none".to_owned()
        } else {
            hosts.join(", ")
        }
    };
    let mut text = format!("{}: pulls started on {}\n", v.image, list(&v.started));
    if !v.held.is_empty() {
        text.push_str(&format!("already held on {}\n", list(&v.held)));
    }
    if !v.pulling.is_empty() {
        text.push_str(&format!("already pulling on {}\n", list(&v.pulling)));
    }
    text
}

pub fn image(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        ImageAction::List { watch } => c.list(
            watch,
            || c.answer(c.api.images()),
            |v| images_text(v, c.wide()),
        ),
        ImageAction::Show { name } => {
            let v = c.answer(c.api.image(&name))?;
            c.show(&v, |v| image_text(v, human::now_ms()))?;
            Ok(ExitCode::SUCCESS)
        }
        ImageAction::Push {
            name,
            hosts,
            driver,
        } => {
            let v = c.answer(c.api.push_image(&name, &api::ImagePush { hosts, driver }))?;
            c.show(&v, push_text)?;
            Ok(ExitCode::SUCCESS)
        }
        ImageAction::Evict { name, host } => {
            let v = c.answer(c.api.evict_image(&name, &host))?;
            c.show(&v, |v| format!("{} evicted from {}\n", v.image, v.host))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args)]
pub struct OrphanArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: OrphanAction,
}

#[derive(Subcommand)]
enum OrphanAction {
    /// VMs found on the hosts that berth keeps instead of destroying, and why.
    List {
        #[command(flatten)]
        watch: Watch,
    },
    /// Destroy a kept orphan (`berth-vm12`, `vm12` or `12`).
    Destroy {
        vm: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

pub fn orphan(args: OrphanArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        OrphanAction::List { watch } => c.list(
            watch,
            || c.answer(c.api.orphans()),
            |v| {
                let now = human::now_ms();
                let mut t = Table::new(&[
                    ("VM", false),
                    ("HOST", false),
                    ("FOUND", false),
                    ("KEPT BECAUSE", false),
                ]);
                for o in &v.orphans {
                    t.row(vec![
                        o.name.clone(),
                        o.host.clone(),
                        format!("{} ago", human::age(now, o.found_ms)),
                        o.reason.clone(),
                    ]);
                }
                t.render(c.wide())
            },
        ),
        OrphanAction::Destroy { vm, yes } => {
            let id = vm_id(&vm)?;
            if !yes {
                confirm_or_stop(
                    &format!("destroy {vm}, a VM berth has no request for?"),
                    &format!("not destroying {vm}"),
                )?;
            }
            let v = c.answer(c.api.destroy_orphan(id))?;
            c.show(&v, |v| format!("{} {}\n", v.name, v.state))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Asks a yes/no question on the terminal and stops unless the answer is yes: without a
/// terminal to ask on, a usage error (pass `--yes`); on a no, an error saying what was not done.
fn confirm_or_stop(question: &str, not_done: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "{not_done}: this asks first, and standard input is not a terminal to ask on (pass --yes)"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().context("writing the question")?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed: {not_done}")
    }
}

#[derive(Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: ChangeAction,
}

#[derive(Subcommand)]
enum ChangeAction {
    /// Staged changes, newest first: their VMs by where they stand, and turnaround so far.
    List {
        /// At most this many (the daemon's default: 100).
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        watch: Watch,
    },
    /// One change (its id as its requests named it) with its requests.
    Show { id: String },
}

pub fn change(args: ChangeArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        ChangeAction::List { limit, watch } => c.list(
            watch,
            || c.answer(c.api.changes(limit, None)),
            |v| changes_table(&v.changes, human::now_ms()).render(c.wide()),
        ),
        ChangeAction::Show { id } => {
            let v = c.answer(c.api.change(&id))?;
            c.show(&v, |v| change_text(v, &c))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args)]
pub struct AccountArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: AccountAction,
}

#[derive(Subcommand)]
enum AccountAction {
    /// Accounts in the order the queue serves them: weight, entitled share, share of recent
    /// usage, and the vCPUs their VMs hold. Empty without `[fair_share]`.
    List {
        #[command(flatten)]
        watch: Watch,
    },
}

pub fn account(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        AccountAction::List { watch } => c.list(
            watch,
            || c.answer(c.api.accounts()),
            |v| {
                if !v.fair_share {
                    return "fair share is off (no [fair_share] in the daemon's config): the \
                            queue serves by priority and arrival"
                        .to_owned();
                }
                let mut out = accounts_table(&v.accounts).render(c.wide());
                if v.folded > 0 {
                    out.push_str(&format!("\n(`other` sums {} accounts)", v.folded));
                }
                out
            },
        ),
    }
}

fn accounts_table(rows: &[api::AccountRow]) -> Table {
    let mut t = Table::new(&[
        ("RANK", false),
        ("ACCOUNT", false),
        ("WEIGHT", false),
        ("SHARE", false),
        ("USED", false),
        ("HOLDING", false),
        ("WAITING", false),
        ("USAGE", true),
    ]);
    for r in rows {
        t.row(vec![
            r.rank.map_or("-".to_owned(), |n| (n + 1).to_string()),
            r.account.clone(),
            r.weight.to_string(),
            format!("{:.0}%", r.share * 100.0),
            format!("{:.0}%", r.usage_share * 100.0),
            format!("{} vCPUs", milli(r.holding_vcpus_milli.max(0) as u64)),
            r.waiting_requests.to_string(),
            format!("{:.0} vCPU·s", r.usage_vcpu_s),
        ]);
    }
    t
}

/// `open` while a request of the change waits or runs, else `ended`.
fn change_state(r: &api::ChangeRow) -> &'static str {
    if r.ended_ms.is_some() {
        "ended"
    } else {
        "open"
    }
}

fn changes_table(rows: &[api::ChangeRow], now: u64) -> Table {
    let mut t = Table::new(&[
        ("CHANGE", false),
        ("ACCOUNT", false),
        ("STATE", false),
        ("WANTED", false),
        ("WAITING", false),
        ("STARTING", true),
        ("RUNNING", false),
        ("DONE", false),
        ("FAILED", false),
        ("CANCELLED", true),
        ("REQUESTS", true),
        ("FIRST ARRIVAL", false),
        ("TURNAROUND", false),
        ("ETA", false),
    ]);
    for r in rows {
        t.row(vec![
            r.change.clone(),
            r.account.clone(),
            change_state(r).to_owned(),
            r.vms_wanted.to_string(),
            r.vms_waiting.to_string(),
            r.vms_starting.to_string(),
            r.vms_running.to_string(),
            r.vms_done.to_string(),
            r.vms_failed.to_string(),
            r.vms_cancelled.to_string(),
            r.n_requests.to_string(),
            human::instant(r.first_arrival_ms, now),
            human::duration(r.turnaround_ms),
            human::eta_cell(r.eta_ms, r.eta_after_ms, now),
        ]);
    }
    t
}

fn change_text(v: &api::ChangeDetail, c: &Client) -> String {
    let r = &v.change;
    let now = human::now_ms();
    let mut out = format!(
        "change {}  account {}  {}\n",
        r.change,
        r.account,
        change_state(r)
    );
    out.push_str(&format!(
        "first arrival {} ({} ago), turnaround {}{}\n",
        human::instant(r.first_arrival_ms, now),
        human::age(now, r.first_arrival_ms),
        human::duration(r.turnaround_ms),
        if r.ended_ms.is_some() { "" } else { " so far" }
    ));
    out.push_str(&format!(
        "VMs: {} wanted, {} waiting, {} starting, {} running, {} done, {} failed, {} cancelled\n",
        r.vms_wanted,
        r.vms_waiting,
        r.vms_starting,
        r.vms_running,
        r.vms_done,
        r.vms_failed,
        r.vms_cancelled
    ));
    if let Some(when) = human::eta(r.eta_ms, r.eta_after_ms, now) {
        out.push_str(&format!(
            "its last waiting request starts {when} (estimate)\n"
        ));
    }
    if (v.requests.len() as u64) < r.n_requests {
        out.push_str(&format!(
            "(the first {} of its {} requests)\n",
            v.requests.len(),
            r.n_requests
        ));
    }
    out.push('\n');
    out.push_str(&requests_text(&v.requests, c));
    out
}

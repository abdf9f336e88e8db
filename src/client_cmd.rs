//! The client commands over the daemon's HTTP API: `berth request`, `berth vm ...`,
//! `berth host ...` and `berth status`. Human tables by default, `--json` for scripts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth_api as api;
use berth_client::VmQuery;
use clap::{Args, Subcommand};
use serde::Serialize;

/// Where the daemon is and how to prove who we are.
#[derive(Args, Clone)]
pub struct Conn {
    /// The daemon's URL (also BERTH_URL; default from the config file's `listen`, else
    /// http://127.0.0.1:7878).
    #[arg(long, global = true)]
    url: Option<String>,
    /// A bearer token (also BERTH_TOKEN; default: the token file in the data directory).
    #[arg(long, global = true)]
    token: Option<String>,
    /// The daemon's config file, for its address and data directory.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The data directory whose token file to read.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// The daemon's client, and how to print its answers.
struct Client {
    api: berth_client::Client,
    json: bool,
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
        Ok(Client {
            api: berth_client::Client::new(&url, token),
            json: self.json,
        })
    }
}

impl Client {
    /// An answer, or an error that says what went wrong (and, when the daemon is not there,
    /// what to check).
    fn answer<T>(&self, got: Result<T, berth_client::ClientError>) -> anyhow::Result<T> {
        got.map_err(|e| match e {
            berth_client::ClientError::Unreachable { .. } => {
                anyhow::anyhow!("{e} (is `berth serve` running at {}?)", self.api.url())
            }
            other => anyhow::Error::new(other),
        })
    }

    /// The answer as the API's JSON with `--json`, else as `table` prints it.
    fn print<T: Serialize>(&self, v: &T, table: impl FnOnce(&T)) -> ExitCode {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            table(v);
        }
        ExitCode::SUCCESS
    }
}

/// A request id as given (`7` or `r7`).
fn request_id(s: &str) -> anyhow::Result<u64> {
    api::request_id(s).with_context(|| format!("`{s}` is not a request id (7 or r7)"))
}

/// A VM id as given (`12`, `vm12` or `berth-vm12`).
fn vm_id(s: &str) -> anyhow::Result<u64> {
    api::vm_id(s).with_context(|| format!("`{s}` is not a vm id (12, vm12 or berth-vm12)"))
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// The widest a table cell prints, in characters; longer text ends in `…` (`--json` has all).
const CELL_CHARS_MAX: usize = 64;

/// Prints rows as left-aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let cut = |c: &str| -> String {
        if c.chars().count() > CELL_CHARS_MAX {
            let mut t: String = c.chars().take(CELL_CHARS_MAX - 1).collect();
            t.push('…');
            t
        } else {
            c.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
}

fn key_value(k: &str, v: &str) -> anyhow::Result<(String, String)> {
    match v.split_once('=') {
        Some((a, b)) if !a.is_empty() => Ok((a.to_owned(), b.to_owned())),
        _ => bail!("{k} `{v}`: expected KEY=VALUE"),
    }
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RequestArgs {
    #[command(subcommand)]
    action: Option<RequestAction>,
    /// The template every VM is made from (linux, windows, macos in the embedded fleet).
    #[arg(long)]
    template: Option<String>,
    /// How many VMs.
    #[arg(long)]
    count: Option<u32>,
    #[arg(long)]
    cpus: Option<u32>,
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Place all VMs at once or none.
    #[arg(long)]
    gang: bool,
    /// Keep a VM whose job failed alive at a breakpoint until released.
    #[arg(long)]
    hold_on_failure: bool,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i32,
    /// A host label every VM's host must carry (KEY=VALUE; repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The staged change this request belongs to (a Gerrit change, a pull request): reports
    /// and exported traces group requests by it.
    #[arg(long)]
    change: Option<String>,
    /// Who asks, when not the token's name (a CI coordinator naming its user or team).
    #[arg(long)]
    requester: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum RequestAction {
    /// A request with its VMs and why it still waits.
    Show { id: String },
    /// Cancel a request: queued VMs end, placed ones are destroyed.
    Cancel { id: String },
    /// Recent requests.
    List {
        #[arg(long)]
        state: Option<String>,
    },
}

pub fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        Some(RequestAction::Show { id }) => {
            let v = c.answer(c.api.request(request_id(&id)?))?;
            Ok(c.print(&v, print_request))
        }
        Some(RequestAction::Cancel { id }) => {
            let v = c.answer(c.api.cancel(request_id(&id)?))?;
            Ok(c.print(&v, |v| println!("r{} {}", v.id, v.state)))
        }
        Some(RequestAction::List { state }) => {
            let v = c.answer(c.api.requests(state.as_deref(), None, None))?;
            Ok(c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .requests
                    .iter()
                    .map(|r| {
                        vec![
                            format!("r{}", r.id),
                            r.template.clone(),
                            r.count.to_string(),
                            r.state.to_string(),
                            r.cause.clone(),
                        ]
                    })
                    .collect();
                table(&["id", "template", "count", "state", "cause"], &rows);
            }))
        }
        None => {
            let (Some(template), Some(count)) = (args.template, args.count) else {
                bail!("`berth request` needs --template NAME and --count N");
            };
            let labels = args
                .labels
                .iter()
                .map(|l| key_value("--label", l))
                .collect::<anyhow::Result<BTreeMap<String, String>>>()?;
            let body = api::SubmitRequest {
                template,
                count,
                cpus: args.cpus,
                memory_mib: args.memory_mib,
                labels,
                priority: args.priority,
                gang: args.gang,
                hold_on_failure: args.hold_on_failure,
                change: args.change,
                requester: args.requester,
                ..api::SubmitRequest::default()
            };
            let v = c.answer(c.api.submit(&body))?;
            Ok(c.print(&v, |v| println!("r{} {} ({})", v.id, v.state, v.cause)))
        }
    }
}

fn print_request(v: &api::RequestDetail) {
    let r = &v.request;
    println!(
        "r{}  {} x{}  {}  ({})",
        r.id, r.template, r.count, r.state, r.cause
    );
    if let Some(why) = &v.why {
        println!("waiting: {}", why.summary);
    }
    print_vms(&v.vms);
}

fn print_vms(vms: &[api::VmRow]) {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("r{}", r.request),
                or_dash(r.host.as_deref()),
                r.state.to_string(),
                r.cause.clone(),
            ]
        })
        .collect();
    table(&["vm", "request", "host", "state", "cause"], &rows);
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
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        request: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// Only VMs that have not ended.
        #[arg(long)]
        live: bool,
        #[arg(long)]
        limit: Option<u64>,
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
        /// Seconds to add.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
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

pub fn vm(args: VmArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let one = |v: &api::VmRow| println!("{} {}", v.name, v.state);
    match args.action {
        VmAction::List {
            state,
            request,
            host,
            live,
            limit,
        } => {
            let q = VmQuery {
                state,
                request: request.as_deref().map(request_id).transpose()?,
                host,
                live,
                limit,
                after: None,
            };
            let v = c.answer(c.api.vms(&q))?;
            Ok(c.print(&v, |v| print_vms(&v.vms)))
        }
        VmAction::Show { vm } => {
            let v = c.answer(c.api.vm(vm_id(&vm)?))?;
            Ok(c.print(&v, |v| {
                let vm = &v.vm;
                println!(
                    "{}  r{}  {}  {}  ({})",
                    vm.name,
                    vm.request,
                    or_dash(vm.host.as_deref()),
                    vm.state,
                    vm.cause
                );
                let rows: Vec<Vec<String>> = v
                    .history
                    .iter()
                    .map(|h| {
                        vec![
                            h.at_ms.to_string(),
                            or_dash(h.from.map(|f| f.name())),
                            h.to.to_string(),
                            or_dash(h.host.as_deref()),
                            h.cause.clone(),
                        ]
                    })
                    .collect();
                table(&["at_ms", "from", "to", "host", "cause"], &rows);
            }))
        }
        VmAction::Result { vm, outcome } => {
            let v = c.answer(c.api.vm_result(vm_id(&vm)?, outcome == "passed"))?;
            Ok(c.print(&v, one))
        }
        VmAction::Release { vm } => {
            let v = c.answer(c.api.release(vm_id(&vm)?))?;
            Ok(c.print(&v, one))
        }
        VmAction::Extend { vm, seconds } => {
            let v = c.answer(c.api.extend(vm_id(&vm)?, seconds))?;
            Ok(c.print(&v, one))
        }
        VmAction::Console { vm } => {
            let v = c.answer(c.api.console(vm_id(&vm)?))?;
            Ok(c.print(&v, |v| {
                println!("{}", v.address);
                println!("{}", v.ssh);
            }))
        }
        VmAction::Serial { vm, tail_bytes } => {
            let log = c.answer(c.api.serial(vm_id(&vm)?, tail_bytes))?;
            std::io::stdout()
                .write_all(&log.bytes)
                .context("writing the serial log")?;
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
    /// Hosts with their state and capacity.
    List,
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
    /// Out of service now: its VMs are lost and retried elsewhere.
    Offline { name: String },
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
}

fn print_hosts(v: &api::HostList) {
    let rows: Vec<Vec<String>> = v
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.driver.clone(),
                h.state.to_string(),
                format!("{}/{}", h.vcpus_used_milli / 1000, h.vcpus_milli / 1000),
                format!("{}/{}", h.memory_used_mib, h.memory_mib),
                h.vms.to_string(),
            ]
        })
        .collect();
    table(
        &["host", "driver", "state", "vcpus", "memory_mib", "vms"],
        &rows,
    );
}

pub fn host(args: HostArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let one = |v: &api::HostRow| println!("{} {}", v.name, v.state);
    match args.action {
        HostAction::List => {
            let v = api::HostList {
                hosts: c.answer(c.api.hosts())?,
            };
            Ok(c.print(&v, print_hosts))
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
                    bail!("{flag} is for --driver {for_driver} hosts, not {driver}");
                }
                if options.insert(key.to_owned(), value).is_some() {
                    bail!("{flag} and --option {key}=... both set `{key}`: give one");
                }
            }
            if driver == "sim" && (vcpus.is_none() || memory_mib.is_none()) {
                bail!("a sim host needs --vcpus N and --memory-mib N");
            }
            let body = api::NewHost {
                name,
                driver,
                vcpus: vcpus.unwrap_or(0),
                memory_mib: memory_mib.unwrap_or(0),
                slots,
                cpu_overcommit_milli,
                memory_overcommit_milli: 1000,
                labels,
                images: Vec::new(),
                options,
            };
            let v = c.answer(c.api.add_host(&body))?;
            Ok(c.print(&v, one))
        }
        HostAction::Drain { name } => {
            let v = c.answer(c.api.host_op(&name, "drain"))?;
            Ok(c.print(&v, one))
        }
        HostAction::Resume { name } => {
            let v = c.answer(c.api.host_op(&name, "resume"))?;
            Ok(c.print(&v, one))
        }
        HostAction::Offline { name } => {
            let v = c.answer(c.api.host_op(&name, "offline"))?;
            Ok(c.print(&v, one))
        }
        HostAction::Remove { name } => {
            let v = c.answer(c.api.remove_host(&name))?;
            Ok(c.print(&v, |v| println!("{} removed", v.name)))
        }
    }
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let v = c.answer(c.api.status())?;
    Ok(c.print(&v, |v| {
        println!("daemon    {}", c.api.url());
        println!("hosts     {}", by_state(&v.hosts));
        println!("live vms  {}", by_state(&v.live_vms));
        println!("requests  {} live, queue {}", v.live_requests, v.queue_len);
        println!("all vms   {}", by_state(&v.vms_by_state));
        if let Some(why) = &v.degraded {
            println!("writes    refused: {why}");
        }
    }))
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
pub struct HookArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: HookAction,
}

#[derive(Subcommand)]
enum HookAction {
    /// Recent hook runs, newest first: exit code, duration and the end of stderr.
    Log {
        /// Only this hook's runs.
        #[arg(long)]
        hook: Option<String>,
        /// Only runs that did not succeed.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
}

pub fn hook(args: HookArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    let HookAction::Log {
        hook,
        failed,
        limit,
    } = args.action;
    let mut v = c.answer(c.api.hook_runs(hook.as_deref(), None, Some(limit)))?;
    if failed {
        v.runs.retain(|r| r.outcome != "ok");
    }
    Ok(c.print(&v, |v| {
        let rows: Vec<Vec<String>> = v
            .runs
            .iter()
            .map(|r| {
                let last = r.stderr_tail.trim().lines().last().unwrap_or("");
                vec![
                    r.id.to_string(),
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
                    format!("{} ms", r.duration_ms),
                    last.chars().take(60).collect(),
                ]
            })
            .collect();
        table(
            &[
                "id", "hook", "event", "target", "attempt", "outcome", "exit", "took", "stderr",
            ],
            &rows,
        );
    }))
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
    List,
    /// Destroy a kept orphan (`berth-vm12`, `vm12` or `12`).
    Destroy {
        vm: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

pub fn orphan(args: OrphanArgs) -> anyhow::Result<ExitCode> {
    let c = args.conn.client()?;
    match args.action {
        OrphanAction::List => {
            let v = c.answer(c.api.orphans())?;
            Ok(c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .orphans
                    .iter()
                    .map(|o| vec![o.name.clone(), o.host.clone(), o.reason.clone()])
                    .collect();
                table(&["vm", "host", "kept because"], &rows);
            }))
        }
        OrphanAction::Destroy { vm, yes } => {
            let id = vm_id(&vm)?;
            if !yes && !confirm(&format!("destroy {vm}, a VM berth has no request for?"))? {
                bail!("not confirmed: nothing destroyed (pass --yes to skip the question)");
            }
            let v = c.answer(c.api.destroy_orphan(id))?;
            Ok(c.print(&v, |v| println!("{} {}", v.name, v.state)))
        }
    }
}

/// Asks a yes/no question on the terminal; `false` without one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().context("writing the question")?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

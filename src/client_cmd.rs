//! The client commands over the daemon's HTTP API: `berth request`, `berth vm ...`,
//! `berth host ...` and `berth status`. Human tables by default, `--json` for scripts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

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

struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
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
            url,
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
            json: self.json,
        })
    }
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.send(method, path, body)?
            .into_json::<Value>()
            .with_context(|| format!("reading the answer of {method} {}{path}", self.url))
    }

    /// The daemon's answer, whatever its content type, or an error that says what went wrong.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<ureq::Response> {
        let url = format!("{}{path}", self.url);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let msg = body["error"].as_str().unwrap_or("no message");
                match body["field"].as_str() {
                    Some(f) => bail!("{method} {path}: {code}: {msg} (field `{f}`)"),
                    None => bail!("{method} {path}: {code}: {msg}"),
                }
            }
            Err(e) => Err(e).with_context(|| {
                format!(
                    "cannot reach the daemon at {} (is `berth serve` running?)",
                    self.url
                )
            }),
        }
    }

    fn print(&self, v: &Value, table: impl FnOnce(&Value)) -> ExitCode {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            table(v);
        }
        ExitCode::SUCCESS
    }
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

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
            let v = c.call("GET", &format!("/v1/requests/{id}"), None)?;
            Ok(c.print(&v, print_request))
        }
        Some(RequestAction::Cancel { id }) => {
            let v = c.call("DELETE", &format!("/v1/requests/{id}"), None)?;
            Ok(c.print(&v, |v| println!("r{} {}", s(&v["id"]), s(&v["state"]))))
        }
        Some(RequestAction::List { state }) => {
            let q = state.map(|s| format!("?state={s}")).unwrap_or_default();
            let v = c.call("GET", &format!("/v1/requests{q}"), None)?;
            Ok(c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v["requests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            format!("r{}", s(&r["id"])),
                            s(&r["template"]),
                            s(&r["count"]),
                            s(&r["state"]),
                            s(&r["cause"]),
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
                .map(|l| key_value("--label", l).map(|(k, v)| (k, json!(v))))
                .collect::<anyhow::Result<serde_json::Map<String, Value>>>()?;
            let mut body = json!({
                "template": template, "count": count, "gang": args.gang,
                "hold_on_failure": args.hold_on_failure, "priority": args.priority,
                "labels": labels,
            });
            if let Some(cpus) = args.cpus {
                body["cpus"] = json!(cpus);
            }
            if let Some(m) = args.memory_mib {
                body["memory_mib"] = json!(m);
            }
            if let Some(change) = &args.change {
                body["change"] = json!(change);
            }
            if let Some(requester) = &args.requester {
                body["requester"] = json!(requester);
            }
            let v = c.call("POST", "/v1/requests", Some(body))?;
            Ok(c.print(&v, |v| {
                println!("r{} {} ({})", s(&v["id"]), s(&v["state"]), s(&v["cause"]))
            }))
        }
    }
}

fn print_request(v: &Value) {
    println!(
        "r{}  {} x{}  {}  ({})",
        s(&v["id"]),
        s(&v["template"]),
        s(&v["count"]),
        s(&v["state"]),
        s(&v["cause"])
    );
    if let Some(summary) = v["why"]["summary"].as_str() {
        println!("waiting: {summary}");
    }
    print_vms(&v["vms"]);
}

fn print_vms(vms: &Value) {
    let rows: Vec<Vec<String>> = vms
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(&r["name"]),
                format!("r{}", s(&r["request"])),
                s(&r["host"]),
                s(&r["state"]),
                s(&r["cause"]),
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
    match args.action {
        VmAction::List {
            state,
            request,
            host,
            live,
            limit,
        } => {
            let mut q = Vec::new();
            if let Some(x) = state {
                q.push(format!("state={x}"));
            }
            if let Some(x) = request {
                q.push(format!("request={x}"));
            }
            if let Some(x) = host {
                q.push(format!("host={x}"));
            }
            if live {
                q.push("live=true".into());
            }
            if let Some(x) = limit {
                q.push(format!("limit={x}"));
            }
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            let v = c.call("GET", &format!("/v1/vms{q}"), None)?;
            Ok(c.print(&v, |v| print_vms(&v["vms"])))
        }
        VmAction::Show { vm } => {
            let v = c.call("GET", &format!("/v1/vms/{vm}"), None)?;
            Ok(c.print(&v, |v| {
                println!(
                    "{}  r{}  {}  {}  ({})",
                    s(&v["name"]),
                    s(&v["request"]),
                    s(&v["host"]),
                    s(&v["state"]),
                    s(&v["cause"])
                );
                let rows: Vec<Vec<String>> = v["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        vec![
                            s(&h["at_ms"]),
                            s(&h["from"]),
                            s(&h["to"]),
                            s(&h["host"]),
                            s(&h["cause"]),
                        ]
                    })
                    .collect();
                table(&["at_ms", "from", "to", "host", "cause"], &rows);
            }))
        }
        VmAction::Result { vm, outcome } => {
            let body = json!({"passed": outcome == "passed"});
            let v = c.call("POST", &format!("/v1/vms/{vm}/result"), Some(body))?;
            Ok(c.print(&v, |v| println!("{} {}", s(&v["name"]), s(&v["state"]))))
        }
        VmAction::Release { vm } => {
            let v = c.call("POST", &format!("/v1/vms/{vm}/release"), Some(json!({})))?;
            Ok(c.print(&v, |v| println!("{} {}", s(&v["name"]), s(&v["state"]))))
        }
        VmAction::Extend { vm, seconds } => {
            let body = json!({ "seconds": seconds });
            let v = c.call("POST", &format!("/v1/vms/{vm}/extend"), Some(body))?;
            Ok(c.print(&v, |v| println!("{} {}", s(&v["name"]), s(&v["state"]))))
        }
        VmAction::Console { vm } => {
            let v = c.call("GET", &format!("/v1/vms/{vm}/console"), None)?;
            Ok(c.print(&v, |v| {
                println!("{}", s(&v["address"]));
                println!("{}", s(&v["ssh"]));
            }))
        }
        VmAction::Serial { vm, tail_bytes } => {
            let path = format!("/v1/vms/{vm}/serial?tail_bytes={tail_bytes}");
            let mut log = Vec::new();
            c.send("GET", &path, None)?
                .into_reader()
                .read_to_end(&mut log)
                .with_context(|| format!("reading the serial log of vm {vm}"))?;
            std::io::stdout()
                .write_all(&log)
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

fn print_hosts(v: &Value) {
    let rows: Vec<Vec<String>> = v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let cpu = |k: &str| h[k].as_i64().unwrap_or(0) / 1000;
            vec![
                s(&h["name"]),
                s(&h["driver"]),
                s(&h["state"]),
                format!("{}/{}", cpu("vcpus_used_milli"), cpu("vcpus_milli")),
                format!("{}/{}", s(&h["memory_used_mib"]), s(&h["memory_mib"])),
                s(&h["vms"]),
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
    let one = |v: &Value| {
        println!("{} {}", s(&v["name"]), s(&v["state"]));
    };
    match args.action {
        HostAction::List => {
            let v = c.call("GET", "/v1/hosts", None)?;
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
                    Ok((k, json!(n)))
                })
                .collect::<anyhow::Result<serde_json::Map<String, Value>>>()?;
            let labels = labels
                .iter()
                .map(|x| key_value("--label", x).map(|(k, v)| (k, json!(v))))
                .collect::<anyhow::Result<serde_json::Map<String, Value>>>()?;
            let mut options = options
                .iter()
                .map(|x| key_value("--option", x).map(|(k, v)| (k, json!(v))))
                .collect::<anyhow::Result<serde_json::Map<String, Value>>>()?;
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
                if options.insert(key.to_owned(), json!(value)).is_some() {
                    bail!("{flag} and --option {key}=... both set `{key}`: give one");
                }
            }
            if driver == "sim" && (vcpus.is_none() || memory_mib.is_none()) {
                bail!("a sim host needs --vcpus N and --memory-mib N");
            }
            let mut body = json!({
                "name": name, "driver": driver,
                "slots": slots, "labels": labels, "options": options,
                "cpu_overcommit_milli": cpu_overcommit_milli,
            });
            if let Some(v) = vcpus {
                body["vcpus"] = json!(v);
            }
            if let Some(m) = memory_mib {
                body["memory_mib"] = json!(m);
            }
            let v = c.call("POST", "/v1/hosts", Some(body))?;
            Ok(c.print(&v, one))
        }
        HostAction::Drain { name } => {
            let v = c.call("POST", &format!("/v1/hosts/{name}/drain"), Some(json!({})))?;
            Ok(c.print(&v, one))
        }
        HostAction::Resume { name } => {
            let v = c.call("POST", &format!("/v1/hosts/{name}/resume"), Some(json!({})))?;
            Ok(c.print(&v, one))
        }
        HostAction::Offline { name } => {
            let v = c.call(
                "POST",
                &format!("/v1/hosts/{name}/offline"),
                Some(json!({})),
            )?;
            Ok(c.print(&v, one))
        }
        HostAction::Remove { name } => {
            let v = c.call("DELETE", &format!("/v1/hosts/{name}"), None)?;
            Ok(c.print(&v, |v| println!("{} removed", s(&v["name"]))))
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
    let v = c.call("GET", "/v1/status", None)?;
    Ok(c.print(&v, |v| {
        println!("daemon    {}", c.url);
        println!("hosts     {}", v["hosts"]);
        println!("live vms  {}", v["live_vms"]);
        println!(
            "requests  {} live, queue {}",
            s(&v["live_requests"]),
            s(&v["queue_len"])
        );
        println!("all vms   {}", v["vms_by_state"]);
    }))
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
    let mut path = format!("/v1/hooks/runs?limit={limit}");
    if let Some(h) = &hook {
        // Percent-encoded: default names look like `hooks[0]`.
        let encoded: String = h
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        path.push_str(&format!("&hook={encoded}"));
    }
    let v = c.call("GET", &path, None)?;
    let v = if failed {
        let runs: Vec<Value> = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["outcome"] != "ok")
            .cloned()
            .collect();
        json!({ "runs": runs })
    } else {
        v
    };
    Ok(c.print(&v, |v| {
        let rows: Vec<Vec<String>> = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let tail = r["stderr_tail"].as_str().unwrap_or("").trim();
                let last = tail.lines().last().unwrap_or("");
                vec![
                    s(&r["id"]),
                    s(&r["hook"]),
                    s(&r["event"]),
                    match (&r["vm"], &r["host"]) {
                        (Value::Number(n), _) => format!("berth-vm{n}"),
                        (_, Value::String(h)) => h.clone(),
                        _ => r["request"]
                            .as_u64()
                            .map_or_else(|| "-".into(), |n| format!("r{n}")),
                    },
                    s(&r["attempt"]),
                    s(&r["outcome"]),
                    s(&r["exit_code"]),
                    format!("{} ms", s(&r["duration_ms"])),
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
            let v = c.call("GET", "/v1/orphans", None)?;
            Ok(c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v["orphans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| vec![s(&o["name"]), s(&o["host"]), s(&o["reason"])])
                    .collect();
                table(&["vm", "host", "kept because"], &rows);
            }))
        }
        OrphanAction::Destroy { vm, yes } => {
            if !yes && !confirm(&format!("destroy {vm}, a VM berth has no request for?"))? {
                bail!("not confirmed: nothing destroyed (pass --yes to skip the question)");
            }
            let v = c.call("POST", &format!("/v1/orphans/{vm}/destroy"), None)?;
            Ok(c.print(&v, |v| println!("{} {}", s(&v["name"]), s(&v["state"]))))
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

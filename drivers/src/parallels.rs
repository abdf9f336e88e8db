//! The Parallels driver: macOS hosts running Parallels Desktop, driven with `prlctl` and
//! `prlsrvctl` over the system OpenSSH client.
//!
//! One [`ParallelsHost`] stands for one Mac. It keeps one multiplexed SSH connection (an
//! OpenSSH control master, through the `openssh` crate) and runs every command as a session
//! on it, so that the operator's `~/.ssh/config`, `ProxyJump` and agent apply exactly as they
//! do for `ssh` on the command line. Host keys are checked strictly against a known_hosts
//! file: an unknown or changed key is an error naming the host, never an automatic accept.
//!
//! VMs are linked clones of a template VM (the recipe's `base_image` names the template),
//! so a probe reports the templates present as the host's cached images. A template the Mac
//! lacks is pulled from the host's image store, if it has one, over the same SSH connection
//! (`pull`, in the `pull` submodule), also ahead of demand, and evicted on request once no
//! linked clone uses it (the `evict` submodule). Apple's licence allows two macOS guests per Mac:
//! [`host_slots`] gives the slot count a host spec carries.
//!
//! Everything that comes back from the host is parsed strictly: output of an unexpected shape
//! is an error that quotes what came back, so a changed tool version shows up as a clear
//! host failure rather than as a VM berth silently lost track of.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_sched::DriverKind;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::images::{ImageStore, Pulls, store_from_options};
use crate::{ConsoleAddress, Driver, DriverError, HostFacts, VmListing, VmRecipe, parse_vm_name};

mod evict;
mod pull;

pub use pull::{ARCHIVE_EXT, PULLING_EXT};

/// How many macOS guests one Mac may run at once (Apple's licence for macOS guests).
pub const MACOS_SLOTS: u32 = 2;

/// The slot kind that counts macOS guests, as host specs and templates name it.
pub const MACOS_SLOT_KIND: &str = "macos";

/// The counted slots of every Parallels host: `macos = 2`. The daemon puts them into the
/// host's spec, so that the scheduler never places a third macOS guest on one Mac.
pub fn host_slots() -> BTreeMap<String, u32> {
    BTreeMap::from([(MACOS_SLOT_KIND.to_owned(), MACOS_SLOTS)])
}

/// Where Parallels Desktop installs `prlctl` and `prlsrvctl`.
pub const PRL_DIR_DEFAULT: &str = "/usr/local/bin";

/// The longest part of a command's output quoted in an error message.
const QUOTE_LEN_MAX: usize = 600;

/// The first bytes of every PNG file.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// How often `boot` looks at the VM's state.
const BOOT_POLL_INTERVAL_MS: u64 = 500;

/// How long a probe keeps showing the last count of the pulled templates' bytes, last uses and
/// users before counting again (three more commands on the Mac, and a `du` of every bundle).
/// A pull or an eviction by this driver makes the next probe count at once; the decisions
/// (making room for a pull, refusing an eviction) always count afresh.
const CENSUS_REFRESH: Duration = Duration::from_secs(60);

/// The options a `[[hosts]]` entry (or `berth host add --option key=value`) may give a
/// Parallels host, with what each means. `ssh` is required.
pub const OPTIONS: &[(&str, &str)] = &[
    (
        "ssh",
        "where to log in: USER@HOST[:PORT] (or a Host alias of ~/.ssh/config)",
    ),
    (
        "known_hosts",
        "the known_hosts file host keys are checked against (default: ssh's own, ~/.ssh/known_hosts)",
    ),
    (
        "identity",
        "the private key to log in with (default: the agent and ssh's defaults)",
    ),
    (
        "ssh_config",
        "an ssh_config file to use instead of ~/.ssh/config",
    ),
    ("jump", "jump hosts, comma-separated, as for ssh -J"),
    (
        "control_dir",
        "where the connection's control socket lives (default: $XDG_STATE_HOME, else ~/.local/state)",
    ),
    (
        "connect_timeout_ms",
        "how long connecting may take (default 10000)",
    ),
    (
        "command_timeout_ms",
        "how long one prlctl or prlsrvctl call may take (default 60000)",
    ),
    (
        "boot_timeout_ms",
        "how long a started VM may take to report running (default 300000)",
    ),
    (
        "vnc_port_base",
        "the first VNC port given to VMs (default 5901)",
    ),
    (
        "vnc_ports",
        "how many VNC ports from vnc_port_base berth may use (default 100)",
    ),
    (
        "prl_dir",
        "the directory of prlctl and prlsrvctl on the Mac (default /usr/local/bin; empty: PATH)",
    ),
    (
        "image_store",
        "where missing templates are pulled from: a directory, http:// or https:// URL holding \
         NAME.pvm.tar and NAME.pvm.tar.sha256 (default: none, a missing template is the host's \
         error)",
    ),
    (
        "image_store_ca",
        "for an https:// image_store: a PEM file of CA certificates trusted beside the system's \
         roots (default: the system's roots alone)",
    ),
    (
        "template_dir",
        "where pulled templates are unpacked on the Mac (default Parallels/berth-templates, from \
         the login's home)",
    ),
    (
        "pull_timeout_ms",
        "how long one pull of a template may take (default 3600000)",
    ),
    (
        "image_budget_mib",
        "the most the templates in template_dir may take; a pull past it first evicts unused ones, \
         least recently used first (default: none, templates go only when evicted by hand)",
    ),
];

/// Where pulled templates go on the Mac, from the login's home directory.
pub const TEMPLATE_DIR_DEFAULT: &str = "Parallels/berth-templates";

/// A Parallels host's settings were wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown option `{option}` for the parallels driver (known: {known})")]
    UnknownOption { option: String, known: String },
    #[error("the parallels driver needs the option `{option}`")]
    MissingOption { option: &'static str },
    #[error("option `{option}` = `{value}`: {reason}")]
    BadValue {
        option: String,
        value: String,
        reason: String,
    },
}

/// Where and how to reach one Mac.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParallelsConfig {
    /// The login user, if given (`USER@`); otherwise ssh's configuration decides.
    pub user: Option<String>,
    /// The host name or address, or a `Host` alias of the ssh configuration.
    pub address: String,
    pub port: Option<u16>,
    /// The known_hosts file to check host keys against; `None` is ssh's default. Checking is
    /// strict either way.
    pub known_hosts: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    pub jump_hosts: Vec<String>,
    pub control_dir: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
    pub boot_timeout_ms: u64,
    pub vnc_port_base: u16,
    pub vnc_ports: u16,
    /// Where `prlctl` and `prlsrvctl` are on the Mac; `None` looks them up on the login's
    /// `PATH`. A command run over SSH on macOS gets a `PATH` without `/usr/local/bin`, where
    /// Parallels puts them, hence the default.
    pub prl_dir: Option<String>,
    /// Where templates the Mac lacks are pulled from; `None`: a missing template is the host's
    /// error.
    pub image_store: Option<ImageStore>,
    /// The directory on the Mac that pulled template bundles are unpacked into (relative paths
    /// are from the login's home).
    pub template_dir: String,
    pub pull_timeout_ms: u64,
    /// The most the templates in `template_dir` may take on disk. Before a pull that would go
    /// past it, the least recently used templates that no clone, pull or provisioning uses are
    /// evicted; without one, templates go only when an operator evicts them.
    pub image_budget_mib: Option<u64>,
}

impl ParallelsConfig {
    /// Settings with every default, for `destination` (`USER@HOST[:PORT]`).
    pub fn new(destination: &str) -> Result<ParallelsConfig, ConfigError> {
        let (user, address, port) = parse_destination(destination)?;
        Ok(ParallelsConfig {
            user,
            address,
            port,
            known_hosts: None,
            identity: None,
            ssh_config: None,
            jump_hosts: Vec::new(),
            control_dir: None,
            connect_timeout_ms: 10_000,
            command_timeout_ms: 60_000,
            boot_timeout_ms: 300_000,
            vnc_port_base: 5901,
            vnc_ports: 100,
            prl_dir: Some(PRL_DIR_DEFAULT.to_owned()),
            image_store: None,
            template_dir: TEMPLATE_DIR_DEFAULT.to_owned(),
            pull_timeout_ms: 3_600_000,
            image_budget_mib: None,
        })
    }

    /// Settings from a host's driver options (see [`OPTIONS`]). Unknown options are an error
    /// that names the option.
    pub fn from_options(
        options: &BTreeMap<String, String>,
    ) -> Result<ParallelsConfig, ConfigError> {
        for key in options.keys() {
            if !OPTIONS.iter().any(|(k, _)| k == key) {
                return Err(ConfigError::UnknownOption {
                    option: key.clone(),
                    known: OPTIONS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let destination = options
            .get("ssh")
            .ok_or(ConfigError::MissingOption { option: "ssh" })?;
        let mut config = ParallelsConfig::new(destination)?;
        let path = |key: &str| options.get(key).map(PathBuf::from);
        config.known_hosts = path("known_hosts");
        config.identity = path("identity");
        config.ssh_config = path("ssh_config");
        config.control_dir = path("control_dir");
        if let Some(dir) = options.get("prl_dir") {
            // Empty: find the tools on the login's PATH.
            config.prl_dir = (!dir.is_empty()).then(|| dir.trim_end_matches('/').to_owned());
        }
        config.image_store = store_from_options(options).map_err(|(key, message)| {
            bad_value(key, options.get(key).map_or("", String::as_str), &message)
        })?;
        if let Some(dir) = options.get("template_dir") {
            // Passed to the Mac's shell as one quoted word; a newline would break the answers
            // berth reads back, and a leading `-` would read as an option.
            if dir.is_empty() || dir.starts_with('-') || dir.chars().any(char::is_control) {
                return Err(bad_value(
                    "template_dir",
                    dir,
                    "expected a directory path (relative paths are from the login's home)",
                ));
            }
            // The Mac's shell gets the path quoted, so it would not expand `~/`; relative paths
            // are from the home directory anyway.
            let dir = dir.strip_prefix("~/").unwrap_or(dir);
            config.template_dir = match dir.trim_end_matches('/') {
                "" if dir.starts_with('/') => "/".to_owned(),
                "" => ".".to_owned(),
                trimmed => trimmed.to_owned(),
            };
        }
        if let Some(jump) = options.get("jump") {
            config.jump_hosts = jump
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if let Some(bad) = config.jump_hosts.iter().find(|h| h.starts_with('-')) {
                return Err(bad_value("jump", jump, &format!("`{bad}` is not a host")));
            }
        }
        let number = |key: &str, min: u64, max: u64| -> Result<Option<u64>, ConfigError> {
            let Some(value) = options.get(key) else {
                return Ok(None);
            };
            match value.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(bad_value(
                    key,
                    value,
                    &format!("must be a whole number from {min} to {max}"),
                )),
            }
        };
        let day_ms = 86_400_000;
        if let Some(n) = number("connect_timeout_ms", 1_000, day_ms)? {
            config.connect_timeout_ms = n;
        }
        if let Some(n) = number("command_timeout_ms", 100, day_ms)? {
            config.command_timeout_ms = n;
        }
        if let Some(n) = number("boot_timeout_ms", 100, day_ms)? {
            config.boot_timeout_ms = n;
        }
        if let Some(n) = number("pull_timeout_ms", 1_000, 7 * day_ms)? {
            config.pull_timeout_ms = n;
        }
        // Up to 1 PiB: far past any Mac's disk, and no overflow in bytes.
        config.image_budget_mib = number("image_budget_mib", 1, 1 << 30)?;
        // The bounds keep base + count inside the u16 port range.
        if let Some(n) = number("vnc_port_base", 1024, 60_000)? {
            config.vnc_port_base = n as u16;
        }
        if let Some(n) = number("vnc_ports", 1, 5_000)? {
            config.vnc_ports = n as u16;
        }
        Ok(config)
    }

    /// The driver options that give these settings back through
    /// [`from_options`](Self::from_options): what a `[[hosts]]` entry holds.
    pub fn to_options(&self) -> BTreeMap<String, String> {
        let mut o = BTreeMap::new();
        o.insert("ssh".to_owned(), self.destination());
        let mut path = |key: &str, value: &Option<PathBuf>| {
            if let Some(p) = value {
                o.insert(key.to_owned(), p.display().to_string());
            }
        };
        path("known_hosts", &self.known_hosts);
        path("identity", &self.identity);
        path("ssh_config", &self.ssh_config);
        path("control_dir", &self.control_dir);
        if !self.jump_hosts.is_empty() {
            o.insert("jump".to_owned(), self.jump_hosts.join(","));
        }
        for (key, n) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("command_timeout_ms", self.command_timeout_ms),
            ("boot_timeout_ms", self.boot_timeout_ms),
            ("pull_timeout_ms", self.pull_timeout_ms),
            ("vnc_port_base", u64::from(self.vnc_port_base)),
            ("vnc_ports", u64::from(self.vnc_ports)),
        ] {
            o.insert(key.to_owned(), n.to_string());
        }
        o.insert(
            "prl_dir".to_owned(),
            self.prl_dir.clone().unwrap_or_default(),
        );
        if let Some(store) = &self.image_store {
            o.insert("image_store".to_owned(), store.to_string());
            if let Some(ca) = store.ca_file() {
                o.insert("image_store_ca".to_owned(), ca.display().to_string());
            }
        }
        o.insert("template_dir".to_owned(), self.template_dir.clone());
        if let Some(budget) = self.image_budget_mib {
            o.insert("image_budget_mib".to_owned(), budget.to_string());
        }
        o
    }

    /// `USER@HOST:PORT` as given, for messages.
    pub fn destination(&self) -> String {
        let mut s = String::new();
        if let Some(user) = &self.user {
            s.push_str(user);
            s.push('@');
        }
        if self.address.contains(':') {
            s.push_str(&format!("[{}]", self.address));
        } else {
            s.push_str(&self.address);
        }
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s
    }
}

fn bad_value(option: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        option: option.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Splits `USER@HOST[:PORT]` (IPv6 addresses in brackets: `USER@[::1]:22`).
fn parse_destination(s: &str) -> Result<(Option<String>, String, Option<u16>), ConfigError> {
    let bad = |reason: &str| bad_value("ssh", s, reason);
    let (user, rest) = match s.rsplit_once('@') {
        Some((user, rest)) => {
            if user.is_empty() {
                return Err(bad("the user before `@` is empty"));
            }
            (Some(user.to_owned()), rest)
        }
        None => (None, s),
    };
    let (address, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err(bad("an address in `[` has no closing `]`"));
        };
        match after {
            "" => (address, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (address, Some(p)),
                None => return Err(bad("expected `:PORT` after `]`")),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((address, p)) => (address, Some(p)),
            None => (rest, None),
        }
    };
    if address.is_empty() {
        return Err(bad("the host is empty; expected USER@HOST[:PORT]"));
    }
    // ssh would read a leading `-` as an option, and whitespace cannot be in a host name.
    let unsafe_char = |c: char| c.is_whitespace() || c.is_control();
    if address.starts_with('-') || address.chars().any(unsafe_char) {
        return Err(bad("not a host name or address"));
    }
    if let Some(user) = &user
        && (user.starts_with('-') || user.chars().any(unsafe_char))
    {
        return Err(bad("not a user name"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    Ok((user, address.to_owned(), port))
}

/// One Mac running Parallels Desktop, reached over SSH.
pub struct ParallelsHost {
    name: String,
    config: ParallelsConfig,
    /// The multiplexed connection, made on first use and dropped when it fails, so that the
    /// next call reconnects.
    session: Mutex<Connection>,
    /// Held while a VNC port is chosen and set, so that two provisions never pick one port.
    vnc_ports: Mutex<()>,
    /// The VNC passwords berth set, by VM. Parallels does not report them back, so a daemon
    /// restarted after provisioning offers the console without its password.
    vnc_passwords: StdMutex<BTreeMap<String, String>>,
    /// The pulls of templates, shared with the other hosts' drivers of the daemon.
    pulls: Pulls,
    /// The templates this driver's provisionings and pulls are using, and those it evicts.
    template_uses: StdMutex<evict::TemplateUses>,
    /// Held by a pull from counting the templates under `image_budget_mib` until its own is
    /// on the pulls board at full size, so that two pulls never both count on the same room.
    room: Mutex<()>,
    /// When a probe counts the templates for the board next (`None`: at the next probe).
    census_due: StdMutex<Option<Instant>>,
}

impl fmt::Debug for ParallelsHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelsHost")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The state of a host's SSH connection.
#[derive(Default)]
struct Connection {
    session: Option<Arc<Session>>,
    /// The last failed attempt to connect: calls that queued behind it get its error at once
    /// instead of each waiting out the connect timeout again.
    failed: Option<(Instant, DriverError)>,
}

/// How long an unused SSH control master stays up.
const CONTROL_PERSIST_IDLE_S: usize = 3_600;

/// How long a failed connection attempt answers for the calls that waited on it.
const CONNECT_FAILURE_REUSE_MS: u64 = 1_000;

/// How a remote command failed, before the caller says whose fault it was.
#[derive(Debug)]
enum RunError {
    /// The connection failed or timed out: already a driver error (transient or host).
    Transport(DriverError),
    /// The command ran and exited non-zero.
    Exit {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
}

impl RunError {
    /// The failure as a driver error, blaming the host for a failed command.
    fn into_host(self, host: &str) -> DriverError {
        match self {
            RunError::Transport(e) => e,
            exit => DriverError::Host {
                host: host.to_owned(),
                message: exit.describe(),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            RunError::Transport(e) => e.to_string(),
            RunError::Exit {
                command,
                code,
                stderr,
            } => {
                let code = code.map_or_else(|| "a signal".to_owned(), |c| c.to_string());
                format!(
                    "`{command}` exited with {code}: {}",
                    quote(stderr.trim_end())
                )
            }
        }
    }
}

impl ParallelsHost {
    /// A driver for the host called `name` (as the operator added it).
    pub fn new(name: &str, config: ParallelsConfig) -> ParallelsHost {
        ParallelsHost::with_pulls(name, config, Pulls::default())
    }

    /// A driver that reports its pulls of templates on `pulls`, the board the daemon reads to
    /// show a provisioning VM's progress.
    pub fn with_pulls(name: &str, config: ParallelsConfig, pulls: Pulls) -> ParallelsHost {
        ParallelsHost {
            name: name.to_owned(),
            config,
            session: Mutex::new(Connection::default()),
            vnc_ports: Mutex::new(()),
            vnc_passwords: StdMutex::new(BTreeMap::new()),
            pulls,
            template_uses: StdMutex::new(evict::TemplateUses::default()),
            room: Mutex::new(()),
            census_due: StdMutex::new(None),
        }
    }

    pub fn config(&self) -> &ParallelsConfig {
        &self.config
    }

    fn transient(&self, message: String) -> DriverError {
        DriverError::Transient {
            host: self.name.clone(),
            message,
        }
    }

    fn host_err(&self, message: String) -> DriverError {
        DriverError::Host {
            host: self.name.clone(),
            message,
        }
    }

    fn request_err(&self, message: String) -> DriverError {
        DriverError::Request {
            host: self.name.clone(),
            message,
        }
    }

    fn builder(&self) -> SessionBuilder {
        let c = &self.config;
        let mut b = SessionBuilder::default();
        // Strict: a host whose key is unknown or changed is refused, never added.
        b.known_hosts_check(KnownHosts::Strict);
        if let Some(path) = &c.known_hosts {
            b.user_known_hosts_file(path);
        }
        if let Some(user) = &c.user {
            b.user(user.clone());
        }
        if let Some(port) = c.port {
            b.port(port);
        }
        if let Some(path) = &c.identity {
            b.keyfile(path);
        }
        if let Some(path) = &c.ssh_config {
            b.config_file(path);
        }
        if let Some(path) = &c.control_dir {
            b.control_directory(path);
        }
        if !c.jump_hosts.is_empty() {
            b.jump_hosts(&c.jump_hosts);
        }
        // The master outlives a daemon killed with -9 by at most this idle time; while the
        // daemon runs, its probes keep the master busy.
        if let Some(idle) = NonZeroUsize::new(CONTROL_PERSIST_IDLE_S) {
            b.control_persist(ControlPersist::IdleFor(idle));
        }
        b.connect_timeout(Duration::from_millis(c.connect_timeout_ms).max(Duration::from_secs(1)));
        // Keepalives make a master whose link died notice within about three intervals,
        // instead of waiting for TCP to give up.
        b.server_alive_interval(
            Duration::from_millis(c.command_timeout_ms / 3).max(Duration::from_secs(1)),
        );
        b
    }

    /// The connection, made now if there is none.
    async fn session(&self) -> Result<Arc<Session>, DriverError> {
        let mut conn = self.session.lock().await;
        if let Some(session) = &conn.session {
            return Ok(session.clone());
        }
        if let Some((at, error)) = &conn.failed
            && at.elapsed() < Duration::from_millis(CONNECT_FAILURE_REUSE_MS)
        {
            return Err(error.clone());
        }
        let destination = &self.config.address;
        // ssh's ConnectTimeout covers the TCP connection and the handshake; the margin covers
        // a jump host's own connection before it.
        let limit = Duration::from_millis(self.config.connect_timeout_ms.saturating_mul(2));
        let connected = tokio::time::timeout(limit, self.builder().connect(destination)).await;
        let session = match connected {
            Err(_) => Err(self.transient(format!(
                "connecting to {} over ssh timed out after {} ms",
                self.config.destination(),
                limit.as_millis()
            ))),
            Ok(Err(error)) => Err(self.connect_error(&error)),
            Ok(Ok(session)) => Ok(Arc::new(session)),
        };
        match session {
            Ok(session) => {
                tracing::debug!(host = %self.name, destination = %self.config.destination(),
                    "ssh connected");
                conn.session = Some(session.clone());
                conn.failed = None;
                Ok(session)
            }
            Err(error) => {
                conn.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Forgets the connection `stale` (if it is still the current one), so that the next call
    /// connects again.
    async fn reset(&self, stale: &Arc<Session>) {
        let mut conn = self.session.lock().await;
        if conn.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            conn.session = None;
            tracing::debug!(host = %self.name, "ssh connection dropped");
        }
    }

    /// Classifies a failed connection attempt.
    fn connect_error(&self, error: &openssh::Error) -> DriverError {
        let detail = error_chain(error);
        let destination = self.config.destination();
        let lower = detail.to_ascii_lowercase();
        if let Some(problem) = host_key_problem(&detail) {
            let file = self.config.known_hosts.as_ref().map_or_else(
                || "ssh's known_hosts file".to_owned(),
                |p| p.display().to_string(),
            );
            return self.host_err(format!(
                "{problem} for {destination}; refusing to connect (check the key with the \
                 host's administrator, then update {file})"
            ));
        }
        if lower.contains("permission denied") {
            return self.host_err(format!(
                "ssh login to {destination} was refused: {}",
                quote(&detail)
            ));
        }
        // Timeouts, refused connections, unreachable networks: a second try may work.
        self.transient(format!(
            "cannot connect to {destination} over ssh: {}",
            quote(&detail)
        ))
    }

    /// Where to run `program` from: Parallels' tools from `prl_dir`, the rest from `PATH`.
    fn tool(&self, program: &str) -> String {
        match &self.config.prl_dir {
            Some(dir) if matches!(program, "prlctl" | "prlsrvctl") => format!("{dir}/{program}"),
            _ => program.to_owned(),
        }
    }

    /// Runs `program args..` on the host and returns its standard output as text.
    async fn run(&self, program: &str, args: &[&str]) -> Result<String, RunError> {
        let stdout = self.run_bytes(program, args).await?;
        String::from_utf8(stdout).map_err(|e| {
            RunError::Transport(self.host_err(format!(
                "`{program}` printed output that is not UTF-8: {}",
                quote(&String::from_utf8_lossy(e.as_bytes()))
            )))
        })
    }

    /// Runs `program args..` on the host and returns its standard output.
    async fn run_bytes(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, RunError> {
        let limit = Duration::from_millis(self.config.command_timeout_ms);
        self.run_bytes_within(program, args, limit).await
    }

    /// [`Self::run_bytes`] with its own time limit, for commands whose time grows with what
    /// they handle (hashing or unpacking a template).
    async fn run_bytes_within(
        &self,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<Vec<u8>, RunError> {
        let command = describe_command(program, args);
        let session = self.session().await.map_err(RunError::Transport)?;
        let mut cmd = Session::to_command(session.clone(), self.tool(program));
        cmd.args(args);
        let output = match tokio::time::timeout(limit, cmd.output()).await {
            Err(_) => {
                // A hung command usually means a dead link: start over with a new connection.
                self.reset(&session).await;
                return Err(RunError::Transport(self.transient(format!(
                    "`{command}` did not finish within {} ms",
                    limit.as_millis()
                ))));
            }
            Ok(output) => output,
        };
        self.judge(&session, command, output).await
    }

    /// What a command that ran on `session` came to: its standard output, or how it failed.
    async fn judge(
        &self,
        session: &Arc<Session>,
        command: String,
        output: Result<std::process::Output, openssh::Error>,
    ) -> Result<Vec<u8>, RunError> {
        let output = match output {
            Err(error) => {
                self.reset(session).await;
                return Err(RunError::Transport(self.transient(format!(
                    "`{command}`: the ssh connection to {} was lost ({})",
                    self.config.destination(),
                    error_chain(&error)
                ))));
            }
            Ok(output) => output,
        };
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            let code = output.status.code();
            // ssh exits with 255 when the connection failed; a remote command may too, so ask
            // the control master whether it is still alive.
            if code == Some(255) {
                let limit = Duration::from_millis(self.config.command_timeout_ms);
                let alive = tokio::time::timeout(limit, session.check()).await;
                if !matches!(alive, Ok(Ok(()))) {
                    self.reset(session).await;
                    return Err(RunError::Transport(self.transient(format!(
                        "`{command}`: the ssh connection to {} failed: {}",
                        self.config.destination(),
                        quote(stderr.trim_end())
                    ))));
                }
            }
            return Err(RunError::Exit {
                command,
                code,
                stderr,
            });
        }
        Ok(output.stdout)
    }

    /// Runs a command whose failure is the host's fault.
    async fn run_host(&self, program: &str, args: &[&str]) -> Result<String, DriverError> {
        self.run(program, args)
            .await
            .map_err(|e| e.into_host(&self.name))
    }

    /// Runs shell `script` on the host with the template directory as `$1` and `args` after
    /// it: names reach the script as positional parameters, never parsed by the shell.
    async fn run_in_template_dir(
        &self,
        script: &str,
        args: &[&str],
    ) -> Result<String, DriverError> {
        let mut all = vec!["-c", script, "sh", self.config.template_dir.as_str()];
        all.extend_from_slice(args);
        self.run_host("sh", &all).await
    }

    /// Every VM (not template) on the host: `prlctl list --all --json`.
    async fn list_vms(&self) -> Result<Vec<PrlListEntry>, DriverError> {
        let out = self
            .run_host("prlctl", &["list", "--all", "--json"])
            .await?;
        parse_list(&out).map_err(|m| self.host_err(format!("`prlctl list --all --json`: {m}")))
    }

    /// The template VMs on the host: `prlctl list --template --json`.
    async fn list_templates(&self) -> Result<Vec<String>, DriverError> {
        let out = self
            .run_host("prlctl", &["list", "--template", "--json"])
            .await?;
        let entries = parse_list(&out)
            .map_err(|m| self.host_err(format!("`prlctl list --template --json`: {m}")))?;
        let names: BTreeSet<String> = entries.into_iter().map(|e| e.name).collect();
        Ok(names.into_iter().collect())
    }

    /// The VNC ports that VMs on the host other than `except` use now.
    async fn vnc_ports_in_use(&self, except: &str) -> Result<BTreeSet<u16>, DriverError> {
        let out = self
            .run_host("prlctl", &["list", "--all", "--info", "--json"])
            .await?;
        let infos = parse_info(&out)
            .map_err(|m| self.host_err(format!("`prlctl list --all --info --json`: {m}")))?;
        Ok(infos
            .iter()
            .filter(|i| i.name != except)
            .filter_map(|i| i.remote_display.as_ref())
            .filter(|d| d.mode != "off")
            .filter_map(|d| d.port)
            .collect())
    }

    /// Deletes a VM made by a provisioning that failed half-way. Best effort: the provisioning
    /// error is what the caller reports, and reconciliation deletes what is left if this fails.
    async fn clean_up(&self, name: &str) {
        let found = match self.list_vms().await {
            Ok(vms) => vms.into_iter().find(|e| e.name == name),
            Err(error) => {
                tracing::warn!(host = %self.name, vm = name, %error, "cannot clean up a half-made vm");
                return;
            }
        };
        self.passwords().remove(name);
        let Some(found) = found else { return };
        if found.status != "stopped" {
            let _ = self.run("prlctl", &["stop", name, "--kill"]).await;
        }
        if let Err(error) = self.run("prlctl", &["delete", name]).await {
            tracing::warn!(host = %self.name, vm = name, error = %error.describe(),
                "cannot delete a half-made vm");
        }
    }

    /// Makes the VM: a linked clone of the template (pulled first when the Mac lacks it and
    /// an image store is configured), then [`finish`](Self::finish).
    async fn create(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        let templates = self.list_templates().await?;
        let present = templates.iter().any(|t| t == &vm.base_image);
        if !present && self.config.image_store.is_some() {
            // One pull per template and host: a provisioning that finds one running waits for
            // it, then finds the template there.
            self.pull(&vm.base_image).await?;
        } else if !present {
            return Err(self.host_err(format!(
                "template vm {} is not on this host (templates: {})",
                vm.base_image,
                if templates.is_empty() {
                    "none".to_owned()
                } else {
                    templates.join(", ")
                }
            )));
        }
        if self.config.image_budget_mib.is_some() {
            self.mark_used(&vm.base_image).await;
        }
        let cloned = self
            .run_host(
                "prlctl",
                &["clone", &vm.base_image, "--name", &vm.name, "--linked"],
            )
            .await;
        // A clone that timed out may still have been made.
        let result = match cloned {
            Ok(_) => self.finish(vm).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.clean_up(&vm.name).await;
        }
        result
    }

    /// Shapes a stopped VM, records the template it is a linked clone of (for eviction), gives
    /// it a VNC console and starts it. Run again on a VM that an earlier, interrupted
    /// provisioning left stopped, it sets everything anew.
    async fn finish(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        let cpus = vm.shape.vcpus.to_string();
        let memsize = vm.shape.memory_mib.to_string();
        let description = evict::clone_description(&vm.base_image);
        self.run_host(
            "prlctl",
            &[
                "set",
                &vm.name,
                "--cpus",
                &cpus,
                "--memsize",
                &memsize,
                "--description",
                &description,
            ],
        )
        .await?;
        let password = vnc_password()
            .map_err(|e| self.host_err(format!("cannot make a vnc password: {e}")))?;
        {
            // Choosing a port and taking it is one step for this host's provisions.
            let _ports = self.vnc_ports.lock().await;
            let used = self.vnc_ports_in_use(&vm.name).await?;
            let base = self.config.vnc_port_base;
            let Some(port) =
                (base..base.saturating_add(self.config.vnc_ports)).find(|p| !used.contains(p))
            else {
                return Err(self.host_err(format!(
                    "all {} vnc ports from {base} are in use",
                    self.config.vnc_ports
                )));
            };
            let port = port.to_string();
            self.run_host(
                "prlctl",
                &[
                    "set",
                    &vm.name,
                    "--vnc-mode",
                    "manual",
                    "--vnc-port",
                    &port,
                    "--vnc-passwd",
                    &password,
                    // VNC is reached through `ssh -L`, never directly from the network.
                    "--vnc-address",
                    "127.0.0.1",
                ],
            )
            .await?;
        }
        self.passwords().insert(vm.name.clone(), password);
        self.run_host("prlctl", &["start", &vm.name]).await?;
        Ok(())
    }

    fn passwords(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // The map holds plain strings; one left by a panicking thread is still usable.
        self.vnc_passwords.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Templates travel only to and from hosts with an image store: without one, an evicted
    /// template could not come back.
    fn check_store(&self) -> Result<(), DriverError> {
        if self.config.image_store.is_some() {
            return Ok(());
        }
        Err(DriverError::NoImageStore {
            host: self.name.clone(),
            why: "it keeps no image store (set image_store in its options or in the [drivers] \
                  section)"
                .to_owned(),
        })
    }

    fn check_recipe(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        if parse_vm_name(&vm.name).is_none() {
            return Err(self.request_err(format!(
                "refusing to create vm {}: berth's vms are named berth-vm<N>",
                vm.name
            )));
        }
        if !is_plain_name(&vm.base_image) {
            return Err(self.request_err(format!(
                "template name {:?} may hold only letters, digits, spaces, `-`, `_` and `.`",
                vm.base_image
            )));
        }
        if vm.shape.vcpus == 0 || vm.shape.memory_mib == 0 {
            return Err(self.request_err(format!(
                "vm {} asks for {} vcpus and {} MiB: both must be at least 1",
                vm.name, vm.shape.vcpus, vm.shape.memory_mib
            )));
        }
        Ok(())
    }
}

/// A name that is safe to pass to `prlctl` and that cannot be read as an option.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
}

/// `program args..` for messages, with secrets (the VNC password) left out: messages end up
/// in logs and the journal.
fn describe_command(program: &str, args: &[&str]) -> String {
    let mut words = vec![program];
    let mut secret_next = false;
    for arg in args {
        words.push(if secret_next { "<secret>" } else { arg });
        secret_next = *arg == "--vnc-passwd";
    }
    words.join(" ")
}

/// `s` as one word for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An error with its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut s = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// What ssh said about a host key it refused, in one line, or `None` when it refused nothing.
/// ssh's own message is a banner of many lines; the fingerprint is the part worth keeping.
fn host_key_problem(ssh_output: &str) -> Option<String> {
    let lower = ssh_output.to_ascii_lowercase();
    let changed = lower.contains("remote host identification has changed");
    let unknown =
        lower.contains("host key is known") || lower.contains("host key verification failed");
    if !changed && !unknown {
        return None;
    }
    let fingerprint = ssh_output
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(|w| w.trim_end_matches('.'));
    let what = if changed {
        "the host key has changed"
    } else {
        "the host key is unknown"
    };
    Some(match fingerprint {
        Some(fp) => format!("{what} (the host offered {fp})"),
        None => what.to_owned(),
    })
}

/// `s` in quotes, shortened to [`QUOTE_LEN_MAX`] characters.
fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_LEN_MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTE_LEN_MAX).collect();
        format!("{head:?}...")
    }
}

/// Eight characters for a VNC password (VNC authentication uses at most eight).
fn vnc_password() -> std::io::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// One element of `prlctl list --json`: `{"uuid": .., "status": .., "name": ..}` (and
/// `ip_configured`, which berth does not use).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
struct PrlListEntry {
    #[allow(dead_code)] // Required so that a changed shape is caught; not otherwise used.
    uuid: String,
    status: String,
    name: String,
}

/// The part of one element of `prlctl list --info --json` that berth reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
struct PrlInfo {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Remote display")]
    remote_display: Option<RemoteDisplay>,
    #[serde(rename = "Description", default)]
    description: Option<String>,
    /// The bundle's `config.pvs` (`Home path`), or the bundle itself (`Home`, older versions).
    #[serde(rename = "Home path", alias = "Home", default)]
    home: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
struct RemoteDisplay {
    mode: String,
    port: Option<u16>,
}

/// The part of `prlsrvctl info --json` that berth reads: that Parallels answers, and which
/// version it is.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
struct PrlServerInfo {
    #[serde(rename = "Version")]
    version: String,
}

fn parse_json<T: serde::de::DeserializeOwned>(out: &str, expected: &str) -> Result<T, String> {
    serde_json::from_str(out)
        .map_err(|e| format!("expected {expected}, got {} ({e})", quote(out.trim())))
}

fn parse_list(out: &str) -> Result<Vec<PrlListEntry>, String> {
    let entries: Vec<PrlListEntry> =
        parse_json(out, "a JSON array of {uuid, status, name} objects")?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.name.is_empty() || e.status.is_empty())
    {
        return Err(format!("an entry has an empty name or status: {e:?}"));
    }
    Ok(entries)
}

fn parse_info(out: &str) -> Result<Vec<PrlInfo>, String> {
    parse_json(
        out,
        "a JSON array of VM descriptions with \"Name\" and \"Remote display\"",
    )
}

/// Parses `sysctl -n hw.ncpu hw.memsize`: two lines, logical CPUs and memory in bytes.
fn parse_sysctl(out: &str) -> Result<(u32, u64), String> {
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let bad = || {
        format!(
            "expected two numbers (hw.ncpu, hw.memsize), got {}",
            quote(out.trim())
        )
    };
    let [cpus, bytes] = lines.as_slice() else {
        return Err(bad());
    };
    let cpus: u32 = cpus.parse().map_err(|_| bad())?;
    let bytes: u64 = bytes.parse().map_err(|_| bad())?;
    if cpus == 0 || bytes < 1024 * 1024 {
        return Err(bad());
    }
    Ok((cpus, bytes / (1024 * 1024)))
}

#[async_trait]
impl Driver for ParallelsHost {
    fn kind(&self) -> DriverKind {
        DriverKind::Parallels
    }

    fn host(&self) -> &str {
        &self.name
    }

    async fn probe(&self) -> Result<HostFacts, DriverError> {
        let info = self.run_host("prlsrvctl", &["info", "--json"]).await?;
        let info: PrlServerInfo = parse_json(&info, "a JSON object with \"Version\"")
            .map_err(|m| self.host_err(format!("`prlsrvctl info --json`: {m}")))?;
        // prlsrvctl reports Parallels itself, not the Mac's size: macOS's sysctl does.
        let size = self
            .run_host("sysctl", &["-n", "hw.ncpu", "hw.memsize"])
            .await?;
        let (vcpus, memory_mib) =
            parse_sysctl(&size).map_err(|m| self.host_err(format!("`sysctl -n`: {m}")))?;
        let images = self.list_templates().await?;
        // What the pulled templates weigh and what uses them is for operators to see; a failure
        // to tell leaves the last count shown rather than failing the probe.
        if self.config.image_store.is_some() && self.census_is_due() {
            match self.holdings().await {
                Ok(holdings) => {
                    self.pulls.record_held(&self.name, holdings);
                    self.set_census_due(Some(Instant::now() + CENSUS_REFRESH));
                }
                Err(error) => {
                    tracing::debug!(host = %self.name, %error, "counting the host's templates failed")
                }
            }
        }
        tracing::debug!(host = %self.name, version = %info.version, vcpus, memory_mib, "probed");
        Ok(HostFacts {
            vcpus,
            memory_mib,
            images,
        })
    }

    async fn provision(&self, vm: &VmRecipe) -> Result<(), DriverError> {
        self.check_recipe(vm)?;
        // No eviction takes the template while this may pull or clone it.
        let _using = self.use_template(&vm.base_image, "a provisioning")?;
        let existing = self.list_vms().await?;
        let Some(found) = existing.iter().find(|e| e.name == vm.name) else {
            return self.create(vm).await;
        };
        // Made by an earlier attempt whose end the daemon did not see: adopt it. A stopped
        // one may have been interrupted before it was shaped, so it is shaped again.
        if found.status != "stopped" {
            return Ok(());
        }
        let result = self.finish(vm).await;
        if result.is_err() {
            self.clean_up(&vm.name).await;
        }
        result
    }

    async fn boot(&self, name: &str) -> Result<(), DriverError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.boot_timeout_ms);
        loop {
            let vms = self.list_vms().await?;
            match vms.iter().find(|e| e.name == name) {
                None => return Err(self.host_err(format!("vm {name} is gone"))),
                Some(e) if e.status == "running" => return Ok(()),
                Some(e) => {
                    if Instant::now() >= deadline {
                        return Err(self.host_err(format!(
                            "vm {name} is still {} after {} ms",
                            e.status, self.config.boot_timeout_ms
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(BOOT_POLL_INTERVAL_MS)).await;
        }
    }

    async fn destroy(&self, name: &str) -> Result<(), DriverError> {
        if parse_vm_name(name).is_none() {
            return Err(self.request_err(format!(
                "refusing to destroy vm {name}: berth only destroys berth-vm<N>"
            )));
        }
        let vms = self.list_vms().await?;
        let Some(found) = vms.iter().find(|e| e.name == name) else {
            return Ok(());
        };
        if found.status != "stopped" {
            self.run_host("prlctl", &["stop", name, "--kill"]).await?;
        }
        self.run_host("prlctl", &["delete", name]).await?;
        self.passwords().remove(name);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<VmListing>, DriverError> {
        Ok(self
            .list_vms()
            .await?
            .into_iter()
            .map(|e| VmListing {
                running: e.status == "running",
                name: e.name,
            })
            .collect())
    }

    async fn console(&self, name: &str) -> Result<ConsoleAddress, DriverError> {
        if !self.list_vms().await?.iter().any(|e| e.name == name) {
            return Err(DriverError::NoSuchVm {
                host: self.name.clone(),
                name: name.to_owned(),
            });
        }
        let out = self
            .run_host("prlctl", &["list", name, "--info", "--json"])
            .await?;
        let infos = parse_info(&out)
            .map_err(|m| self.host_err(format!("`prlctl list {name} --info --json`: {m}")))?;
        let Some(info) = infos.iter().find(|i| i.name == name) else {
            return Err(self.host_err(format!(
                "`prlctl list {name} --info --json` did not describe {name}: {}",
                quote(out.trim())
            )));
        };
        let display = match &info.remote_display {
            Some(d) if d.mode != "off" => d,
            _ => {
                return Err(self.host_err(format!("vm {name} has no vnc console configured")));
            }
        };
        let Some(port) = display.port else {
            return Err(self.host_err(format!(
                "vm {name}'s vnc console has no port: {}",
                quote(out.trim())
            )));
        };
        Ok(ConsoleAddress {
            host: self.config.address.clone(),
            port,
            password: self.passwords().get(name).cloned(),
        })
    }

    async fn screenshot(&self, name: &str) -> Result<Vec<u8>, DriverError> {
        let running = self.list_vms().await?.into_iter().find(|e| e.name == name);
        if running.is_none() || parse_vm_name(name).is_none() {
            return Err(DriverError::NoSuchVm {
                host: self.name.clone(),
                name: name.to_owned(),
            });
        }
        // `prlctl capture` writes a PNG file on the Mac; read it back and remove it in the
        // same session. What prlctl itself prints goes to stderr, away from the PNG. The name
        // is berth's (`berth-vm<N>`), so it needs no quoting.
        let prlctl = sh_quote(&self.tool("prlctl"));
        let script = format!(
            "d=$(mktemp -d) || exit 1; {prlctl} capture {name} --file \"$d/screen.png\" >&2 && \
             cat \"$d/screen.png\"; rc=$?; rm -rf \"$d\"; exit $rc"
        );
        let png = self
            .run_bytes("sh", &["-c", &script])
            .await
            .map_err(|e| e.into_host(&self.name))?;
        if !png.starts_with(PNG_SIGNATURE) {
            let head = String::from_utf8_lossy(&png[..png.len().min(64)]).into_owned();
            return Err(self.host_err(format!(
                "`prlctl capture {name}` did not give a PNG: {}",
                quote(&head)
            )));
        }
        Ok(png)
    }

    fn image_store(&self) -> Option<String> {
        self.config.image_store.as_ref().map(ToString::to_string)
    }

    /// [`ParallelsHost::pull`], ahead of demand.
    async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        self.check_store()?;
        let _using = self.use_template(image, "a pull")?;
        self.pull(image).await
    }

    /// Unregisters a pulled template nothing uses and removes its bundle (see the `evict`
    /// module).
    async fn evict_image(&self, image: &str) -> Result<(), DriverError> {
        self.check_store()?;
        self.evict(image).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn destinations_parse() {
        let c = ParallelsConfig::new("ci@mac1.example:2222").unwrap();
        assert_eq!(c.user.as_deref(), Some("ci"));
        assert_eq!(c.address, "mac1.example");
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.destination(), "ci@mac1.example:2222");
        let c = ParallelsConfig::new("mac1").unwrap();
        assert_eq!((c.user, c.address.as_str(), c.port), (None, "mac1", None));
        let c = ParallelsConfig::new("ci@[::1]:22").unwrap();
        assert_eq!((c.address.as_str(), c.port), ("::1", Some(22)));
        assert_eq!(c.destination(), "ci@[::1]:22");
        for bad in [
            "",
            "ci@",
            "@mac",
            "ci@mac:0",
            "ci@mac:x",
            "-oProxyCommand=x",
            "ci@[::1",
        ] {
            assert!(
                matches!(ParallelsConfig::new(bad), Err(ConfigError::BadValue { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn options_are_checked_by_name() {
        let c = ParallelsConfig::from_options(&opts(&[
            ("ssh", "ci@mac1"),
            ("known_hosts", "/etc/berth/known_hosts"),
            ("command_timeout_ms", "5000"),
            ("jump", "bastion, other"),
        ]))
        .unwrap();
        assert_eq!(c.known_hosts, Some(PathBuf::from("/etc/berth/known_hosts")));
        assert_eq!(c.command_timeout_ms, 5000);
        assert_eq!(c.jump_hosts, vec!["bastion", "other"]);
        let e = ParallelsConfig::from_options(&opts(&[("ssh", "mac"), ("uri", "x")])).unwrap_err();
        assert!(e.to_string().contains("`uri`"), "{e}");
        let e = ParallelsConfig::from_options(&opts(&[])).unwrap_err();
        assert_eq!(e, ConfigError::MissingOption { option: "ssh" });
        let e = ParallelsConfig::from_options(&opts(&[("ssh", "m"), ("connect_timeout_ms", "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("connect_timeout_ms"), "{e}");
    }

    #[test]
    fn image_store_options_are_checked() {
        let c = ParallelsConfig::from_options(&opts(&[("ssh", "mac")])).unwrap();
        assert_eq!(c.image_store, None);
        assert_eq!(c.template_dir, TEMPLATE_DIR_DEFAULT);
        let c = ParallelsConfig::from_options(&opts(&[
            ("ssh", "mac"),
            ("image_store", "/srv/templates"),
            ("template_dir", "/Volumes/vms/templates/"),
        ]))
        .unwrap();
        assert_eq!(
            c.image_store,
            Some(ImageStore::Dir(PathBuf::from("/srv/templates")))
        );
        assert_eq!(c.template_dir, "/Volumes/vms/templates");
        let c = ParallelsConfig::from_options(&opts(&[("ssh", "m"), ("template_dir", "~/t/")]))
            .unwrap();
        assert_eq!(c.template_dir, "t");
        let e = ParallelsConfig::from_options(&opts(&[("ssh", "m"), ("image_store", "templates")]))
            .unwrap_err();
        assert!(
            e.to_string().contains("image_store") && e.to_string().contains("absolute"),
            "{e}"
        );
        // An https:// store with the CA it trusts beside the system's roots: read at once,
        // and given back by to_options.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ca_text = ca.display().to_string();
        let with_ca = opts(&[
            ("ssh", "m"),
            ("image_store", "https://mirror/templates"),
            ("image_store_ca", &ca_text),
        ]);
        let c = ParallelsConfig::from_options(&with_ca).unwrap();
        assert_eq!(
            c.image_store.as_ref().and_then(|s| s.ca_file()),
            Some(ca.as_path())
        );
        assert_eq!(c.to_options()["image_store_ca"], ca_text);
        assert_eq!(ParallelsConfig::from_options(&c.to_options()), Ok(c));
        for bad in [
            opts(&[("ssh", "m"), ("image_store_ca", &ca_text)]),
            opts(&[
                ("ssh", "m"),
                ("image_store", "http://mirror/t"),
                ("image_store_ca", &ca_text),
            ]),
            opts(&[
                ("ssh", "m"),
                ("image_store", "https://mirror/t"),
                ("image_store_ca", "/no/such/ca.pem"),
            ]),
        ] {
            let e = ParallelsConfig::from_options(&bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::BadValue { option, .. } if option == "image_store_ca"),
                "{e}"
            );
        }
        for bad in ["", "-rf", "a\nb"] {
            let e = ParallelsConfig::from_options(&opts(&[("ssh", "m"), ("template_dir", bad)]))
                .unwrap_err();
            assert!(e.to_string().contains("template_dir"), "{e}");
        }
    }

    #[test]
    fn list_output_is_parsed_strictly() {
        let out = r#"[{"uuid": "{1}", "status": "running", "ip_configured": "-", "name": "berth-vm1"},
                      {"uuid": "{2}", "status": "stopped", "ip_configured": "-", "name": "other"}]"#;
        let l = parse_list(out).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].status, "running");
        assert!(parse_list("[]").unwrap().is_empty());
        let e = parse_list(r#"{"name": "x"}"#).unwrap_err();
        assert!(e.contains(r#"{\"name\": \"x\"}"#), "{e}");
        let e = parse_list(r#"[{"uuid": "{1}", "name": "x"}]"#).unwrap_err();
        assert!(e.contains("status"), "{e}");
        let e = parse_list("UUID  STATUS  NAME\n").unwrap_err();
        assert!(e.contains("UUID  STATUS  NAME"), "{e}");
    }

    #[test]
    fn info_and_sysctl_parse() {
        let out = r#"[{"ID": "{1}", "Name": "berth-vm3", "State": "running",
            "Remote display": {"mode": "manual", "port": 5903, "address": "127.0.0.1"}}]"#;
        let i = parse_info(out).unwrap();
        assert_eq!(i[0].remote_display.as_ref().unwrap().port, Some(5903));
        assert_eq!(parse_sysctl("10\n34359738368\n").unwrap(), (10, 32768));
        assert!(parse_sysctl("10\n").unwrap_err().contains("\"10\""));
        assert!(parse_sysctl("hw.ncpu: 10\nhw.memsize: 1\n").is_err());
    }

    #[test]
    fn host_key_refusals_are_summed_up() {
        let changed = "@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
            The fingerprint for the ED25519 key sent by the remote host is\n\
            SHA256:sSDlAwktSm1qKLiSciRHG7LY06mACXy1uOlgXZ3N4v8.\r\nHost key verification failed.";
        assert_eq!(
            host_key_problem(changed).unwrap(),
            "the host key has changed (the host offered \
             SHA256:sSDlAwktSm1qKLiSciRHG7LY06mACXy1uOlgXZ3N4v8)"
        );
        let unknown = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested \
            strict checking.\r\nHost key verification failed.";
        assert_eq!(
            host_key_problem(unknown).unwrap(),
            "the host key is unknown"
        );
        assert_eq!(
            host_key_problem("connect to host x: Connection refused"),
            None
        );
    }

    #[test]
    fn commands_in_messages_hide_the_vnc_password() {
        assert_eq!(
            describe_command(
                "prlctl",
                &[
                    "set",
                    "berth-vm1",
                    "--vnc-passwd",
                    "s3cret",
                    "--vnc-port",
                    "5901"
                ]
            ),
            "prlctl set berth-vm1 --vnc-passwd <secret> --vnc-port 5901"
        );
    }

    #[test]
    fn tools_are_run_from_prl_dir() {
        let mut c = ParallelsConfig::new("mac").unwrap();
        let host = ParallelsHost::new("mac", c.clone());
        assert_eq!(host.tool("prlctl"), "/usr/local/bin/prlctl");
        assert_eq!(host.tool("sysctl"), "sysctl");
        c.prl_dir = None;
        assert_eq!(ParallelsHost::new("mac", c).tool("prlsrvctl"), "prlsrvctl");
        let c = ParallelsConfig::from_options(&opts(&[("ssh", "mac"), ("prl_dir", "")])).unwrap();
        assert_eq!(c.prl_dir, None);
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn options_round_trip() {
        let mut c = ParallelsConfig::new("ci@[::1]:2222").unwrap();
        c.known_hosts = Some(PathBuf::from("/etc/berth/known_hosts"));
        c.jump_hosts = vec!["a".into(), "b".into()];
        c.command_timeout_ms = 1234;
        c.prl_dir = None;
        c.image_store = Some(ImageStore::Http("http://mirror:8080/templates".into()));
        c.template_dir = "/Volumes/vms/templates".into();
        c.pull_timeout_ms = 60_000;
        assert_eq!(ParallelsConfig::from_options(&c.to_options()).unwrap(), c);
        let d = ParallelsConfig::new("mac").unwrap();
        assert_eq!(ParallelsConfig::from_options(&d.to_options()).unwrap(), d);
    }

    #[test]
    fn every_parallels_host_has_two_macos_slots() {
        assert_eq!(host_slots().get("macos"), Some(&2));
    }

    #[test]
    fn vnc_passwords_are_eight_plain_characters() {
        let p = vnc_password().unwrap();
        assert_eq!(p.len(), 8);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn names_that_could_be_options_are_refused() {
        assert!(is_plain_name("macOS 14 template"));
        assert!(!is_plain_name("-rf"));
        assert!(!is_plain_name("a;b"));
        assert!(!is_plain_name(""));
    }
}

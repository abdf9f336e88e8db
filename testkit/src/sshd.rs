//! A real `sshd` for Parallels hosts, with stand-ins for `prlctl`, `prlsrvctl` and macOS's
//! `sysctl` (`fixtures/` in this crate) first on its logins' `PATH`, on loopback or inside a
//! network namespace reached over a veth pair. The drivers' tests drive it with the Parallels
//! driver, the daemon's through `berth serve`, and the libvirt tests reach libvirtd through it as
//! a remote host is reached.
//!
//! [`Fixture::start`] returns `None` after [`skip_or_fail`] when `sshd`, `ssh`, `ssh-keygen` or
//! `python3` is missing, and [`Fixture::start_in_netns`] also without root or `ip`.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{find_program, free_port, skip_or_fail};

/// The host name the tests give the Mac.
pub const HOST: &str = "mac1";
/// A template VM of the stand-ins' Mac.
pub const TEMPLATE: &str = "macos-14";

/// The stand-ins for Parallels' tools.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs `cmd`, which must succeed, and returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the tests run as root (network namespaces need it).
pub fn is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}

/// Makes an ed25519 key pair at `path` and `path.pub`; returns the public key as known_hosts
/// lists it (`TYPE KEY`).
pub fn keygen(path: &Path) -> String {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-test", "-f"])
        .arg(path));
    let public = fs::read_to_string(path.with_extension("pub")).unwrap();
    // `TYPE KEY COMMENT`: known_hosts wants the first two.
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The stand-ins' state: a Mac with 10 CPUs and 32 GiB, two macOS templates and one VM that is
/// not berth's.
pub fn initial_state() -> serde_json::Value {
    let template = |uuid: &str| {
        json!({"uuid": uuid, "status": "stopped", "template": true, "os": "macosx",
               "cpus": 4, "memsize": 8192, "vnc": {"mode": "off"}})
    };
    json!({
        "host": {"cpus": 10, "memsize_mib": 32768, "version": "Desktop 20.1.0 (55659)"},
        "vms": {
            "macos-14": template("{00000000-0000-4000-8000-000000000014}"),
            "macos-15": template("{00000000-0000-4000-8000-000000000015}"),
            "someone-else": {"uuid": "{00000000-0000-4000-8000-0000000000ee}",
                             "status": "running", "template": false, "os": "win-11",
                             "cpus": 2, "memsize": 4096,
                             "vnc": {"mode": "manual", "port": 5901, "address": "127.0.0.1"}},
        }
    })
}

/// A template bundle's `config.pvs` as Parallels writes one: VM `name`, marked a template.
pub fn bundle_config(name: &str, uuid: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ParallelsVirtualMachine schemaVersion=\"1.0\">\n\
         <Identification dyn_lists=\"\">\n<VmUuid>{uuid}</VmUuid>\n<VmName>{name}</VmName>\n\
         </Identification>\n<Settings dyn_lists=\"\">\n<General dyn_lists=\"\">\n\
         <IsTemplate>1</IsTemplate>\n</General>\n</Settings>\n<Hardware dyn_lists=\"\">\n\
         <Cpu dyn_lists=\"\">\n<Number>4</Number>\n</Cpu>\n<Memory dyn_lists=\"\">\n\
         <RAM>8192</RAM>\n</Memory>\n</Hardware>\n</ParallelsVirtualMachine>\n"
    )
}

/// The UUID of test template `name`'s bundle: one per name, so that several templates
/// register side by side (Parallels refuses two VMs of one UUID).
pub fn template_uuid(name: &str) -> String {
    // FNV-1a: stable across runs and Rust versions.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "{{00000000-0000-4000-8000-{:012x}}}",
        hash & 0xffff_ffff_ffff
    )
}

/// The disk of the test templates: 6 MiB that differ from byte to byte, so that a copy cut or
/// shifted anywhere shows.
pub fn bundle_disk() -> Vec<u8> {
    (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// How libvirt reaches the fixture's sshd.
#[derive(Clone, Copy, Debug)]
pub enum LibvirtSsh {
    /// `qemu+ssh://`: libvirt runs the system `ssh` client.
    Ssh,
    /// `qemu+libssh2://`: libvirt speaks SSH itself.
    Libssh2,
}

/// A network namespace with a veth pair to it: `outer` on our side, `inner` in the namespace.
pub struct NetNs {
    pub name: String,
    pub outer: String,
    pub inner: String,
    pub inner_ip: String,
}

impl NetNs {
    /// The namespace and its link, or why they cannot be made here.
    pub fn create() -> Result<NetNs, String> {
        let pid = std::process::id();
        let octet = pid % 250 + 1;
        let ns = NetNs {
            name: format!("berth-prl-{pid}"),
            outer: format!("bprl{}a", pid % 1_000_000),
            inner: format!("bprl{}b", pid % 1_000_000),
            inner_ip: format!("10.213.{octet}.2"),
        };
        let outer_ip = format!("10.213.{octet}.1/30");
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on, dropping `ns` removes what was made.
        let inner_cidr = format!("{}/30", ns.inner_ip);
        ip(&[
            "link", "add", &ns.outer, "type", "veth", "peer", "name", &ns.inner, "netns", &ns.name,
        ])?;
        ip(&["addr", "add", &outer_ip, "dev", &ns.outer])?;
        ip(&["link", "set", &ns.outer, "up"])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            &inner_cidr,
            "dev",
            &ns.inner,
        ])?;
        ip(&[
            "netns", "exec", &ns.name, "ip", "link", "set", &ns.inner, "up",
        ])?;
        Ok(ns)
    }

    /// Cuts (or restores) the link from inside the namespace, as a pulled cable would.
    pub fn set_link(&self, up: bool) {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.inner,
            if up { "up" } else { "down" },
        ]));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        quiet(&["link", "del", &self.outer]);
        quiet(&["netns", "del", &self.name]);
    }
}

/// A running sshd whose logins find the stand-ins, and everything the driver needs to reach it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub listen_ip: String,
    pub port: u16,
    pub user: String,
    pub sshd: Child,
    /// Declared after `sshd`, so the namespace goes after the daemon inside it is killed.
    pub netns: Option<NetNs>,
}

impl Fixture {
    /// sshd on loopback, or `None` after [`skip_or_fail`].
    pub fn start() -> Option<Fixture> {
        Fixture::start_in(None)
    }

    /// sshd inside a network namespace of its own, so that a test can cut its link; or `None`
    /// after [`skip_or_fail`] (no `ip`, not root, or no namespace could be made).
    pub fn start_in_netns() -> Option<Fixture> {
        if find_program("ip").is_none() {
            skip_or_fail("ip (iproute2) is not installed");
            return None;
        }
        if !is_root() {
            skip_or_fail("network namespaces need root");
            return None;
        }
        match NetNs::create() {
            Ok(ns) => Fixture::start_in(Some(ns)),
            Err(why) => {
                skip_or_fail(format_args!("cannot make a network namespace: {why}"));
                None
            }
        }
    }

    /// sshd inside `netns`, listening on its address there (loopback without one).
    fn start_in(netns: Option<NetNs>) -> Option<Fixture> {
        let needed = [
            (
                "sshd",
                "sshd is not installed (ci/ssh-setup.sh installs openssh-server)",
            ),
            ("ssh", "ssh is not installed"),
            ("ssh-keygen", "ssh-keygen is not installed"),
            (
                "python3",
                "python3 (for the prlctl stand-in) is not installed",
            ),
        ];
        if let Some((_, why)) = needed.iter().find(|(tool, _)| find_program(tool).is_none()) {
            skip_or_fail(why);
            return None;
        }
        let sshd = find_program("sshd").unwrap();
        // Short: the control socket's path must fit a Unix socket address.
        let dir = tempfile::Builder::new()
            .prefix("bprl")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        let user = run(Command::new("id").arg("-un")).trim().to_owned();
        let listen_ip = netns
            .as_ref()
            .map_or("127.0.0.1".to_owned(), |n| n.inner_ip.clone());
        let port = if netns.is_some() {
            2222
        } else {
            free_port(&listen_ip)
        };
        let state = d.join("state.json");
        fs::write(&state, initial_state().to_string()).unwrap();
        // Every login runs this wrapper (a forced command), which puts the stand-ins first on
        // PATH after the login shell's startup files had their say, then runs what was asked.
        let login = d.join("login.sh");
        fs::write(
            &login,
            format!(
                "#!/bin/sh\nPATH={}:/usr/local/bin:/usr/bin:/bin\nPRL_STANDIN_STATE={}\n\
                 export PATH PRL_STANDIN_STATE\nexec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
                fixtures_dir().display(),
                state.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&login, fs::Permissions::from_mode(0o755)).unwrap();
        let user_pub = fs::read_to_string(d.join("user_key.pub")).unwrap();
        fs::write(
            d.join("authorized_keys"),
            format!("command=\"{}\" {}\n", login.display(), user_pub.trim()),
        )
        .unwrap();
        // The Mac's login has a home of its own, as a Mac's does: its shell's startup files are
        // the fixture's (none), not those of whoever runs the tests, which may do slow or
        // locking work at every login (a killed login could leave them locked for every later
        // one, on a machine shared with other fixtures).
        let home = d.join("home");
        fs::create_dir_all(&home).unwrap();
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress {listen_ip}\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {ak}\nStrictModes no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nMaxSessions 64\nMaxStartups 64\n\
                 SetEnv HOME={home}\nLogLevel VERBOSE\n",
                hk = d.join("host_key").display(),
                pid = d.join("sshd.pid").display(),
                ak = d.join("authorized_keys").display(),
                home = home.display(),
            ),
        )
        .unwrap();
        // The driver's own client settings: no operator ~/.ssh/config to interfere.
        fs::write(d.join("ssh_config"), "").unwrap();
        if is_root() {
            // sshd's privilege-separation directory; no init system made it.
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let child = spawn_sshd(d, netns.as_ref(), &sshd);
        let mut fx = Fixture {
            dir,
            listen_ip,
            port,
            user,
            sshd: child,
            netns,
        };
        fx.wait_listening();
        Some(fx)
    }

    /// The Mac goes down as in a power cut: sshd, every session it serves and every command
    /// those run (a copy in progress included) are killed at once; files stay as they are.
    /// [`Fixture::start_host`] brings it back.
    pub fn stop_host(&mut self) {
        // Each process found is stopped before its children are looked for, so that none can
        // fork one that escapes; then all are killed together.
        let mut tree = vec![self.sshd.id()];
        signal("STOP", self.sshd.id());
        loop {
            let new: Vec<u32> = children_of(&tree)
                .into_iter()
                .filter(|p| !tree.contains(p))
                .collect();
            if new.is_empty() {
                break;
            }
            for &pid in &new {
                signal("STOP", pid);
            }
            tree.extend(new);
        }
        for &pid in &tree {
            signal("KILL", pid);
        }
        let _ = self.sshd.wait();
    }

    /// The Mac back after [`Fixture::stop_host`]: the same sshd (address, port, host key) over
    /// the same stand-ins' state.
    pub fn start_host(&mut self) {
        let sshd = find_program("sshd").unwrap();
        self.sshd = spawn_sshd(self.dir.path(), self.netns.as_ref(), &sshd);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let addr: SocketAddr = format!("{}:{}", self.listen_ip, self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self.sshd.try_wait().unwrap() {
                panic!("sshd exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {addr}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A known_hosts file that holds `key` for the fixture's sshd.
    pub fn known_hosts_with(&self, name: &str, key: &str) -> PathBuf {
        let path = self.path(name);
        let host = if self.port == 22 {
            self.listen_ip.clone()
        } else {
            format!("[{}]:{}", self.listen_ip, self.port)
        };
        fs::write(&path, format!("{host} {key}\n")).unwrap();
        path
    }

    /// The sshd's host key, as known_hosts lists it.
    pub fn host_key(&self) -> String {
        let host_pub = fs::read_to_string(self.path("host_key.pub")).unwrap();
        host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A libvirt URI for this machine's `qemu:///system` through the sshd, trusting the host
    /// keys in `known_hosts`, as a remote libvirt host is reached. For `qemu+ssh`, libvirt's
    /// `command` parameter points at a wrapper that gives `ssh` the test's own client
    /// configuration, as `~/.ssh/config` would an operator's.
    pub fn libvirt_uri(&self, transport: LibvirtSsh, known_hosts: &Path) -> String {
        let key = self.path("user_key");
        let authority = format!("{}@{}:{}", self.user, self.listen_ip, self.port);
        match transport {
            LibvirtSsh::Ssh => {
                let config = known_hosts.with_extension("ssh_config");
                fs::write(
                    &config,
                    format!(
                        "UserKnownHostsFile {}\nStrictHostKeyChecking yes\nIdentitiesOnly yes\n",
                        known_hosts.display()
                    ),
                )
                .unwrap();
                let wrapper = known_hosts.with_extension("ssh");
                fs::write(
                    &wrapper,
                    format!("#!/bin/sh\nexec ssh -F {} \"$@\"\n", config.display()),
                )
                .unwrap();
                fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
                format!(
                    "qemu+ssh://{authority}/system?keyfile={}&command={}",
                    key.display(),
                    wrapper.display()
                )
            }
            LibvirtSsh::Libssh2 => format!(
                "qemu+libssh2://{authority}/system?keyfile={}&known_hosts={}&sshauth=privkey",
                key.display(),
                known_hosts.display()
            ),
        }
    }

    /// The Parallels driver's options that reach this sshd and its stand-ins, as a
    /// `[[hosts]]` entry of the daemon's config holds them (`ParallelsConfig::from_options`
    /// reads them), with timeouts short enough for tests.
    pub fn options(&self) -> BTreeMap<String, String> {
        let known_hosts = self.known_hosts_with("known_hosts", &self.host_key());
        let path = |p: &Path| p.display().to_string();
        [
            (
                "ssh",
                format!("{}@{}:{}", self.user, self.listen_ip, self.port),
            ),
            ("known_hosts", path(&known_hosts)),
            ("identity", path(&self.path("user_key"))),
            ("ssh_config", path(&self.path("ssh_config"))),
            ("control_dir", path(self.dir.path())),
            ("prl_dir", path(&fixtures_dir())),
            ("connect_timeout_ms", "3000".to_owned()),
            ("command_timeout_ms", "4000".to_owned()),
            ("boot_timeout_ms", "5000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// An image store (the directory `store` in the fixture's) holding template `name` as a
    /// Parallels host pulls it: `NAME.pvm.tar`, the bundle `NAME.pvm` (its `config.pvs` and a
    /// disk of [`bundle_disk`]), and `NAME.pvm.tar.sha256`. Returns the store and the archive's
    /// bytes, or `None` after [`skip_or_fail`] when `tar` or `shasum` (which a pull runs on the
    /// Mac, and macOS has) is missing here.
    pub fn template_store(&self, name: &str) -> Option<(PathBuf, Vec<u8>)> {
        for tool in ["tar", "shasum"] {
            if find_program(tool).is_none() {
                skip_or_fail(format_args!(
                    "{tool} is not installed (a template pull runs it on the Mac; \
                     ci/ssh-setup.sh installs it)"
                ));
                return None;
            }
        }
        let src = self.path("bundle-src");
        let bundle = src.join(format!("{name}.pvm"));
        fs::create_dir_all(bundle.join("harddisk.hdd")).unwrap();
        fs::write(
            bundle.join("config.pvs"),
            bundle_config(name, &template_uuid(name)),
        )
        .unwrap();
        fs::write(bundle.join("harddisk.hdd/disk.hds"), bundle_disk()).unwrap();
        let store = self.path("store");
        fs::create_dir_all(&store).unwrap();
        let file = format!("{name}.pvm.tar");
        run(Command::new("tar")
            .arg("-cf")
            .arg(store.join(&file))
            .arg("-C")
            .arg(&src)
            .arg(format!("{name}.pvm")));
        let sum = run(Command::new("shasum")
            .args(["-a", "256"])
            .arg(store.join(&file)));
        let digest = sum.split_whitespace().next().unwrap().to_owned();
        fs::write(
            store.join(format!("{file}.sha256")),
            format!("{digest}  {file}\n"),
        )
        .unwrap();
        let bytes = fs::read(store.join(&file)).unwrap();
        Some((store, bytes))
    }

    /// The stand-ins' state: the Mac and its VMs.
    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(self.path("state.json")).unwrap()).unwrap()
    }

    /// Replaces the stand-ins' state, behind the driver's back.
    pub fn set_state(&self, state: &serde_json::Value) {
        fs::write(self.path("state.json"), state.to_string()).unwrap();
    }
}

/// Starts `sshd` with the configuration in `dir`, inside `netns` if there is one; its log goes
/// to `sshd.log` there (appended to, so that a restart keeps what came before).
fn spawn_sshd(dir: &Path, netns: Option<&NetNs>, sshd: &Path) -> Child {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(sshd);
            c
        }
        None => Command::new(sshd),
    };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sshd.log"))
        .unwrap();
    cmd.args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn().unwrap()
}

/// The processes whose parent is one of `parents`, read from `/proc`.
fn children_of(parents: &[u32]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses, so the fields
        // are counted from the last `)`.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid.is_some_and(|p| parents.contains(&p)) {
            found.push(pid);
        }
    }
    found
}

/// Sends signal `name` (`STOP`, `KILL`) to `pid`; one that already exited is fine.
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Only the sshd this fixture started; `-D` keeps it our direct child.
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

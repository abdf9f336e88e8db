//! A real PostgreSQL for the tests of the PostgreSQL store: a cluster of the test's own
//! ([`Cluster`]), which it may stop, crash and start again, or a fresh database on the shared
//! test server that `BERTH_TEST_POSTGRES` names ([`server`], [`fresh_database`]).
//!
//! Clusters are started by hand, as there is no init system on the machines the tests run on:
//! `initdb` into a temporary directory, then `postgres` as a child of the test's process (so
//! that the test reaps it; `pg_ctl start` would leave it to an init to reap), stopped with
//! `pg_ctl stop`. PostgreSQL refuses to run as root, so under root both run as the `postgres`
//! user (Debian's `postgresql` package makes it) through `runuser`. The programs are those of the directory holding `initdb`: on `PATH`, or the newest
//! `/usr/lib/postgresql/<version>/bin` (where Debian puts them, off `PATH`).
//!
//! Every URL here is a TCP one, `postgres://postgres@127.0.0.1:PORT/DATABASE`, which the
//! `postgres` and `tokio-postgres` crates and `psql` accept; authentication is `trust`, so it
//! has no password.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sshd::is_root;
use crate::{find_program, free_port, skip_or_fail};

/// The variable naming the shared test server, a URL ending in `/postgres`.
pub const SERVER_VAR: &str = "BERTH_TEST_POSTGRES";

/// Where Debian installs each PostgreSQL version's programs, one directory per version.
const DEBIAN_VERSIONS_DIR: &str = "/usr/lib/postgresql";

/// The OS user that runs PostgreSQL when the tests run as root.
const OS_USER: &str = "postgres";

/// The database role of every URL here, the superuser `initdb -U` makes.
const ROLE: &str = "postgres";

/// How long a server may take to stop, in seconds (`pg_ctl -t`).
const PG_CTL_TIMEOUT_S: &str = "60";

/// How long a server may take to accept connections (a crash's recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory of PostgreSQL's programs (`initdb`, `pg_ctl`, `psql`), or `None` when it is not
/// installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = find_program("initdb") {
        // A link on PATH to Debian's directory: the other programs are beside its target.
        let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
        return initdb.parent().map(Path::to_path_buf);
    }
    // The newest version's, by number: `/usr/lib/postgresql/15/bin` before `.../9.6/bin`.
    let versions = fs::read_dir(DEBIAN_VERSIONS_DIR).ok()?;
    versions
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// Runs `sql` with `psql` on the database at `url` and returns what it printed, unaligned and
/// without headers (`select 1` gives `1`), trimmed. Fails the test when `psql` is missing or the
/// statement fails, with `psql`'s message.
pub fn psql(url: &str, sql: &str) -> String {
    let psql = psql_program().unwrap_or_else(|| {
        panic!("psql is not installed (ci/install-missing.sh postgresql installs it)")
    });
    let out = psql_output(&psql, url, sql);
    assert!(
        out.status.success(),
        "psql {url} -c {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `psql`: beside `initdb`, or on `PATH` (Debian's wrapper) when only the client is installed.
fn psql_program() -> Option<PathBuf> {
    bin_dir()
        .map(|dir| dir.join("psql"))
        .or_else(|| find_program("psql"))
}

fn psql_output(psql: &Path, url: &str, sql: &str) -> Output {
    // -X: no ~/.psqlrc; -A -t: values only; ON_ERROR_STOP: a failed statement fails psql.
    Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", psql.display()))
}

/// `name` as an SQL identifier, for the names this module makes or checks.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Fails the test unless `name` may stand in a URL's path and SQL unchanged.
fn check_database_name(name: &str) {
    assert!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "database name {name:?}: use 1 to 63 of a-z, 0-9 and _"
    );
}

/// What a [`Cluster`] is started with beyond its defaults (trust for every connection, no TLS).
#[derive(Clone, Debug, Default)]
pub struct ClusterSetup {
    /// Lines for `postgresql.conf`, after the cluster's own (`ssl = on`, ...).
    pub settings: Vec<String>,
    /// `pg_hba.conf` in place of initdb's, line by line (`hostssl all all 127.0.0.1/32 trust`);
    /// `None` keeps initdb's, which trusts every local and loopback connection.
    pub hba: Option<Vec<String>>,
    /// Files copied into the data directory, owned by the server's user and readable by it
    /// alone (as PostgreSQL wants a key): `(name in the data directory, file to copy)`, the
    /// name then usable in `settings` (`ssl_cert_file = 'server.crt'`).
    pub files: Vec<(String, PathBuf)>,
}

/// A PostgreSQL cluster of the test's own, listening on a free port of 127.0.0.1 and on a Unix
/// socket in its directory. Dropping it stops it at once (`pg_ctl stop -m immediate`) and
/// removes its directory.
pub struct Cluster {
    bin: PathBuf,
    /// `runuser` when we are root (PostgreSQL then runs as the `postgres` user).
    runuser: Option<PathBuf>,
    /// Holds the data directory, the socket and the server's log; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// The server while it runs: our child (through `runuser` as root), so that it is reaped
    /// when it ends, on machines without an init system too.
    server: Option<Child>,
    /// The uid and gid the server runs as, when we are root.
    owner: Option<(u32, u32)>,
    setup: ClusterSetup,
}

impl Cluster {
    /// A new cluster, started, with trust authentication for the superuser `postgres`; or
    /// `None` after [`skip_or_fail`] when PostgreSQL is not installed or, as root, there is no
    /// `postgres` user or no `runuser` to run it as that user.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(ClusterSetup::default())
    }

    /// As [`Cluster::start`], with settings, `pg_hba.conf` lines and files of the test's
    /// (see [`ClusterSetup`]).
    pub fn start_with(setup: ClusterSetup) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            skip_or_fail(format_args!(
                "PostgreSQL is not installed: no initdb on PATH nor in \
                 {DEBIAN_VERSIONS_DIR}/*/bin (ci/install-missing.sh postgresql installs it)"
            ));
            return None;
        };
        let runuser = if is_root() {
            let Some(owner) = os_user_ids() else {
                skip_or_fail(format_args!(
                    "running as root, and there is no {OS_USER} user to run PostgreSQL as \
                     (initdb and postgres refuse root; Debian's postgresql package makes the user)"
                ));
                return None;
            };
            let Some(runuser) = find_program("runuser") else {
                skip_or_fail(format_args!(
                    "running as root, and runuser (util-linux) is not installed to run \
                     PostgreSQL as {OS_USER}"
                ));
                return None;
            };
            Some((runuser, owner))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("berth-postgres-")
            .tempdir()
            .unwrap();
        if let Some((_, (uid, gid))) = runuser {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut cluster = Cluster {
            bin,
            owner: runuser.as_ref().map(|(_, owner)| *owner),
            runuser: runuser.map(|(runuser, _)| runuser),
            dir,
            port: 0,
            server: None,
            setup,
        };
        cluster.init();
        cluster.install_setup();
        cluster.start_on_a_free_port();
        Some(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far, for a failure's message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `program` of PostgreSQL's with `args`, as the `postgres` user when we are root, in the
    /// cluster's directory (which that user may enter, unlike perhaps ours).
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.runuser {
            Some(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", OS_USER, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }

    fn init(&self) {
        let data = self.data_dir();
        let out = self
            .command(
                "initdb",
                &[
                    "-D",
                    path_str(&data),
                    "-A",
                    "trust",
                    "-U",
                    ROLE,
                    "-E",
                    "UTF8",
                    // The C locale suits every encoding, whatever the environment's locale is.
                    "--locale=C",
                    // A test's cluster need not survive the machine's crash: initdb without
                    // its fsyncs takes a fraction of the time. The server keeps fsync on.
                    "--no-sync",
                ],
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb {}: {}",
            data.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// The setup's files and `pg_hba.conf` in the data directory.
    fn install_setup(&self) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        let mut written = Vec::new();
        for (name, from) in &self.setup.files {
            let to = data.join(name);
            fs::copy(from, &to)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
            written.push(to);
        }
        if let Some(lines) = &self.setup.hba {
            let to = data.join("pg_hba.conf");
            fs::write(&to, lines.join("\n") + "\n").unwrap();
            written.push(to);
        }
        for path in written {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
    }

    /// Starts the server on a port free just now; tries another when a process took that one
    /// before the server bound it.
    fn start_on_a_free_port(&mut self) {
        const N_TRIES: usize = 3;
        for n_tried in 1..=N_TRIES {
            self.port = free_port("127.0.0.1");
            self.write_settings();
            match self.run_server() {
                Ok(()) => return,
                Err(why) if n_tried < N_TRIES && why.contains("Address already in use") => {}
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// The cluster's own settings, in a file that `postgresql.conf` includes last, so that a
    /// start needs no options and a start again keeps port and socket.
    fn write_settings(&self) {
        let data = self.data_dir();
        let settings = format!(
            "# berth-testkit: where the test reaches the server\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             # Each daemon of a test holds a pool of connections, and a test may run several.\n\
             max_connections = 200\n\
             # Small: many tests may run a cluster at once.\n\
             shared_buffers = 16MB\n\
             # The test's own\n\
             {own}\n",
            port = self.port,
            socket_dir = path_str(self.dir.path()).replace('\'', "''"),
            own = self.setup.settings.join("\n"),
        );
        // Written by us (root or the same user): the server reads it as the file's owner.
        let path = data.join("berth-test.conf");
        fs::write(&path, settings).unwrap();
        let conf = data.join("postgresql.conf");
        let text = fs::read_to_string(&conf).unwrap();
        let include = "include = 'berth-test.conf'\n";
        if !text.contains(include) {
            fs::write(&conf, text + include).unwrap();
        }
    }

    /// Runs the server and waits until it accepts connections; `Err` with its log when it
    /// quits first.
    fn run_server(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut server = self
            .command("postgres", &["-D", path_str(&self.data_dir())])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let port = self.port.to_string();
        let pg_isready = self.bin.join("pg_isready");
        let ready = crate::wait_for("PostgreSQL to accept connections", START_TIMEOUT, || {
            if let Some(status) = server.try_wait().unwrap() {
                return Some(Err(status));
            }
            let out = Command::new(&pg_isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", ROLE])
                .status()
                .unwrap();
            out.success().then_some(Ok(()))
        });
        match ready {
            Ok(()) => {
                self.server = Some(server);
                Ok(())
            }
            Err(status) => Err(format!(
                "postgres -D {} (port {}) quit: {status}; its log:\n{}",
                self.data_dir().display(),
                self.port,
                self.log()
            )),
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        self.command(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir()),
                "-m",
                mode,
                "-w",
                "-t",
                PG_CTL_TIMEOUT_S,
                "stop",
            ],
        )
        .output()
        .unwrap()
    }

    /// The TCP port the server listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of `database` over TCP, `postgres://postgres@127.0.0.1:PORT/DATABASE`; the
    /// database `postgres` always exists.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates the database `name` (1 to 63 of `a-z`, `0-9`, `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        check_database_name(name);
        psql(
            &self.url("postgres"),
            &format!("CREATE DATABASE {}", identifier(name)),
        );
        self.url(name)
    }

    /// Stops the server (`pg_ctl stop -m fast`: it disconnects every client, rolls back their
    /// transactions and shuts down cleanly). Does nothing when it is stopped.
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: every process quits at
    /// once, without a shutdown checkpoint); [`Cluster::start_again`] then recovers from the
    /// write-ahead log. Does nothing when it is stopped.
    pub fn crash(&mut self) {
        self.stop_with("immediate");
    }

    fn stop_with(&mut self, mode: &str) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let out = self.pg_ctl_stop(mode);
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} {}: {}",
            self.data_dir().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // Stopped: this reaps it.
        server.wait().unwrap();
    }

    /// Starts the stopped server again, on the same port, socket and data. Does nothing when it
    /// runs.
    pub fn start_again(&mut self) {
        if self.server.is_some() {
            return;
        }
        if let Err(why) = self.run_server() {
            panic!("{why}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // The directory goes next: nothing in it is worth a clean stop.
            // pg_ctl fails when the server is gone already; then this kill changes nothing.
            if !self.pg_ctl_stop("immediate").status.success() {
                let _ = server.kill();
            }
            let _ = server.wait();
        }
    }
}

/// The `postgres` user's uid and gid, or `None` when there is no such user.
fn os_user_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, OS_USER]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// `path` as the UTF-8 argument PostgreSQL's programs are given (temporary directories are).
fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// The shared test server's URL, from `BERTH_TEST_POSTGRES` (`ci/postgres-setup.sh` starts a
/// cluster and prints it), or `None` after [`skip_or_fail`] when it is unset.
pub fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    let server = SERVER
        .get_or_init(|| std::env::var(SERVER_VAR).ok().filter(|url| !url.is_empty()))
        .as_deref();
    if server.is_none() {
        skip_or_fail(format_args!(
            "{SERVER_VAR} is not set (ci/postgres-setup.sh starts a cluster and prints it)"
        ));
    }
    server
}

/// A database of the test's own on the shared test server, dropped with all its connections
/// when the value is.
pub struct Database {
    url: String,
    name: String,
    /// The server's URL (its `postgres` database), from which the database is dropped.
    server: String,
}

impl Database {
    /// The database's URL: the server's with the database's name in place of `postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(psql) = psql_program() {
            // A database left behind costs a little disk on a test server; a failed test's
            // message matters more than this one.
            let _ = psql_output(
                &psql,
                &self.server,
                &format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    identifier(&self.name)
                ),
            );
        }
    }
}

/// A new, empty database on [`server`], named uniquely (process, counter, time); `None` after
/// [`skip_or_fail`] when `BERTH_TEST_POSTGRES` is unset or `psql` is not installed. Fails the
/// test when the server's URL does not end in `/postgres` or the server refuses.
pub fn fresh_database() -> Option<Database> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let server = server()?;
    if psql_program().is_none() {
        skip_or_fail("psql is not installed (ci/install-missing.sh postgresql installs it)");
        return None;
    }
    let base = server.strip_suffix("/postgres").unwrap_or_else(|| {
        panic!("{SERVER_VAR}={server}: the URL must end in /postgres, the server's own database")
    });
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let name = format!(
        "berth_test_{}_{}_{millis}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    check_database_name(&name);
    psql(server, &format!("CREATE DATABASE {}", identifier(&name)));
    Some(Database {
        url: format!("{base}/{name}"),
        name,
        server: server.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_and_serves_a_database_it_creates() {
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let url = cluster.create_database("jobs");
        assert_eq!(
            url,
            format!("postgres://postgres@127.0.0.1:{}/jobs", cluster.port())
        );
        assert_eq!(psql(&url, "select 1"), "1");
        assert_eq!(psql(&url, "select current_database()"), "jobs");
        // The Unix socket in its directory answers too.
        let socket_url = format!(
            "postgresql:///jobs?host={}&port={}&user=postgres",
            cluster.socket_dir().display(),
            cluster.port()
        );
        assert_eq!(psql(&socket_url, "select 2"), "2");
    }

    #[test]
    fn a_cluster_keeps_its_rows_across_a_stop_and_a_crash() {
        let Some(mut cluster) = Cluster::start() else {
            return;
        };
        let url = cluster.create_database("kept");
        psql(
            &url,
            "create table t (n int); insert into t values (1), (2), (3)",
        );
        cluster.stop();
        let out = Command::new(cluster.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the server still answers after stop");
        cluster.start_again();
        assert_eq!(psql(&url, "select sum(n) from t"), "6");
        // A committed row outlives an immediate stop: the server replays its write-ahead log.
        psql(&url, "insert into t values (4)");
        cluster.crash();
        cluster.start_again();
        assert_eq!(psql(&url, "select sum(n) from t"), "10");
    }

    #[test]
    fn a_dropped_cluster_stops_and_leaves_nothing() {
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let dir = cluster.socket_dir().to_path_buf();
        let pid_file = cluster.data_dir().join("postmaster.pid");
        let pid = fs::read_to_string(&pid_file).unwrap();
        let pid = pid.lines().next().unwrap().to_string();
        drop(cluster);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        // Gone, reaped: not even a zombie is left.
        assert!(
            !Path::new("/proc").join(&pid).exists(),
            "the server's process {pid} is still there"
        );
    }

    #[test]
    fn fresh_databases_are_distinct_and_dropped() {
        let Some(a) = fresh_database() else {
            return;
        };
        let b = fresh_database().unwrap();
        assert_ne!(a.url(), b.url());
        assert_eq!(psql(a.url(), "select current_database()"), a.name());
        assert_eq!(psql(b.url(), "select current_database()"), b.name());
        psql(a.url(), "create table t (n int)");
        assert_eq!(
            psql(
                b.url(),
                "select count(*) from pg_tables where tablename = 't'"
            ),
            "0"
        );
        let server = server().unwrap();
        let name = a.name().to_string();
        // An open connection does not keep the database: the drop forces it out.
        let mut held = Command::new(psql_program().unwrap())
            .args(["-X", "-q", "-d", a.url(), "-c", "select pg_sleep(30)"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        crate::wait_for("the held connection", Duration::from_secs(10), || {
            let n = psql(
                server,
                &format!("select count(*) from pg_stat_activity where datname = '{name}'"),
            );
            (n != "0").then_some(())
        });
        drop(a);
        let _ = held.wait();
        assert_eq!(
            psql(
                server,
                &format!("select count(*) from pg_database where datname = '{name}'")
            ),
            "0"
        );
    }
}

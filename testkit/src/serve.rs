//! A `berth serve` process, as an operator runs it: its config file, its data directory and its
//! log in a directory of the test's, on a loopback port.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::Api;

/// How long a start (journal replay, first probes) may take on a busy machine.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a clean stop may take after SIGTERM (a libvirt host's guests are destroyed on the
/// way).
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// `berth serve --config DIR/config.toml --data-dir DIR/data --listen 127.0.0.1:PORT`, its
/// stderr (at `RUST_LOG=info`) appended to `DIR/serve.log`. Dropping it kills the process.
pub struct Serve {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    pub url: String,
    /// The operator token the daemon wrote to its data directory.
    pub token: String,
}

impl Serve {
    /// Writes `config` and starts `binary` (the `berth` binary) on a free port; returns once it
    /// answers `/healthz`.
    pub fn start(binary: &Path, dir: &Path, config: &str) -> Serve {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("config.toml"), config).unwrap();
        let port = crate::free_port("127.0.0.1");
        let mut serve = Serve {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            port,
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
        };
        serve.restart();
        serve
    }

    /// Starts the process again, on the same port and directory (after [`kill`](Self::kill) or
    /// [`terminate`](Self::terminate)); returns once it answers `/healthz`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "berth serve is still running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_healthy();
        self.token = fs::read_to_string(self.data_dir().join("token"))
            .unwrap()
            .trim()
            .to_owned();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        while Instant::now() < deadline {
            if agent.get(&format!("{}/healthz", self.url)).call().is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("berth serve exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "berth serve did not answer at {} within {START_LIMIT:?}:\n{}",
            self.url,
            self.log()
        );
    }

    /// Waits until the daemon acts: at once on SQLite; on PostgreSQL once it holds the leader
    /// lease (a daemon started again after a crash follows until its old lease expires).
    pub fn wait_leading(&self) {
        let deadline = Instant::now() + START_LIMIT;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        loop {
            let said = agent
                .get(&format!("{}/healthz", self.url))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default();
            if said.starts_with("ok") && !said.contains("(follower") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berth serve at {} does not lead within {START_LIMIT:?}: {said:?}\n{}",
                self.url,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's data directory: its database, token and marker.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Everything the daemon logged so far, over all its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// The process's id while it runs (the id a shared simulated inventory's actions log names).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client with the operator token.
    pub fn api(&self) -> Api {
        Api::new(&self.url, Some(&self.token))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process, which stays this `Serve`'s.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("berth serve is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM, so that the daemon shuts down cleanly, and waits for it.
    /// Returns whether it stopped so; one still running after `STOP_LIMIT` is killed.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

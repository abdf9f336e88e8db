//! End to end: the real `berth console` in tmux against a real `berth serve`, draining a host
//! with keys and checking through the API that it drains. Without tmux it skips, saying why
//! (or fails under `BERTH_LIVE_TESTS=require`).

// Test helpers outside `#[test]` functions panic on purpose.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Kills what it holds when the test ends, pass or fail.
struct Cleanup {
    daemon: Option<Child>,
    tmux_socket: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.tmux_socket, "kill-server"])
            .output();
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn capture(socket: &str) -> String {
    let out = Command::new("tmux")
        .args(["-L", socket, "capture-pane", "-p", "-t", "console"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn send(socket: &str, keys: &[&str]) {
    let status = Command::new("tmux")
        .args(["-L", socket, "send-keys", "-t", "console"])
        .args(keys)
        .status()
        .unwrap();
    assert!(status.success());
}

fn host_state(url: &str, token: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = ureq::get(&format!("{url}/v1/hosts"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    v["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["state"].as_str())
        .map(str::to_owned)
}

fn start_daemon(dir: &Path) -> (Child, String) {
    let mut child = Command::new(BERTH)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon never said where it listens");
    (child, url)
}

#[test]
fn console_drains_a_host_with_keys() {
    if !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return berth_testkit::skip_or_fail("tmux is not installed");
    }
    let dir = std::env::temp_dir().join(format!("berth-console-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = format!("berth-console-e2e-{}", std::process::id());
    let mut cleanup = Cleanup {
        daemon: None,
        tmux_socket: socket.clone(),
        dir: dir.clone(),
    };
    let (daemon, url) = start_daemon(&dir);
    cleanup.daemon = Some(daemon);
    let token = wait_for("the token file", Duration::from_secs(30), || {
        std::fs::read_to_string(dir.join("token"))
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    });
    assert_eq!(
        host_state(&url, &token, "sim-small-1").as_deref(),
        Some("ready")
    );

    let cmd = format!("NO_COLOR=1 {BERTH} console --url {url} --token {token}");
    let status = Command::new("tmux")
        .args([
            "-L",
            &socket,
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "console",
        ])
        .args(["-x", "120", "-y", "40", &cmd])
        .status()
        .unwrap();
    assert!(status.success(), "tmux new-session");
    wait_for("the console to go live", Duration::from_secs(30), || {
        capture(&socket).contains("● live").then_some(())
    });
    send(&socket, &["2", "/", "sim-small-1", "Enter"]);
    wait_for("the filtered hosts screen", Duration::from_secs(10), || {
        capture(&socket).contains("hosts (1)").then_some(())
    });
    send(&socket, &["D"]);
    let dialog = wait_for("the drain dialog", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains("drain 1 host?").then_some(s)
    });
    assert!(dialog.contains("sim-small-1"), "{dialog}");
    assert!(dialog.contains("forecast"), "{dialog}");
    send(&socket, &["y"]);
    wait_for("the host to drain", Duration::from_secs(20), || {
        host_state(&url, &token, "sim-small-1").filter(|s| s == "draining" || s == "maintenance")
    });
    wait_for("the console to show it", Duration::from_secs(20), || {
        let s = capture(&socket);
        (s.contains("◐ draining") || s.contains("○ maintenance")).then_some(())
    });
    send(&socket, &["q"]);
}

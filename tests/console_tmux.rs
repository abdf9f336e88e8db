//! End to end: the real `berth console` in tmux against a real `berth serve`, draining a host
//! with keys and checking through the API that it drains. Without tmux it skips, saying why
//! (or fails under `BERTH_LIVE_TESTS=require`).

// Test helpers outside `#[test]` functions panic on purpose.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_testkit::{Api, Serve, skip_or_fail, wait_for};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Kills the tmux server the test started when it ends, pass or fail.
struct Tmux {
    socket: String,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
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

fn host_state(api: &Api, name: &str) -> Option<String> {
    let (status, v) = api.call("GET", "/v1/hosts", None);
    if status != 200 {
        return None;
    }
    v["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["state"].as_str())
        .map(str::to_owned)
}

#[test]
fn console_drains_a_host_with_keys() {
    if !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return skip_or_fail("tmux is not installed");
    }
    // The embedded fleet of simulated hosts: an empty config.
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(Path::new(BERTH), dir.path(), "");
    let api = serve.api();
    let (url, token) = (&serve.url, &serve.token);
    let socket = format!("berth-console-e2e-{}", std::process::id());
    let _tmux = Tmux {
        socket: socket.clone(),
    };
    wait_for("sim-small-1 ready", Duration::from_secs(30), || {
        host_state(&api, "sim-small-1").filter(|s| s == "ready")
    });

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
        host_state(&api, "sim-small-1").filter(|s| s == "draining" || s == "maintenance")
    });
    wait_for("the console to show it", Duration::from_secs(20), || {
        let s = capture(&socket);
        (s.contains("◐ draining") || s.contains("○ maintenance")).then_some(())
    });
    send(&socket, &["q"]);
}

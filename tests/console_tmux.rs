//! End to end: the real `berth console` in tmux against a real `berth serve`. One test drains
//! a host with keys and checks through the API that it drains; the other, at 80×24, leaves a
//! request waiting on an idle daemon for 20 s and reads its wait from the screen, drains a host
//! a breakpoint pins and reads who holds it, drills down from the host to the request, and
//! reads the daemon's log. Without tmux they skip, saying why (or fail under
//! `BERTH_LIVE_TESTS=require`).

// Test helpers outside `#[test]` functions panic on purpose.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

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

fn tmux_missing() -> bool {
    !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts `berth console` on the daemon in a detached tmux session of `width`×`height`.
fn start_console(socket: &str, serve: &Serve, width: u16, height: u16) {
    let cmd = format!(
        "NO_COLOR=1 {BERTH} console --url {} --token {}",
        serve.url, serve.token
    );
    let status = Command::new("tmux")
        .args(["-L", socket, "-f", "/dev/null", "new-session", "-d"])
        .args([
            "-s",
            "console",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ])
        .arg(&cmd)
        .status()
        .unwrap();
    assert!(status.success(), "tmux new-session");
}

/// The screen's text with the box borders gone and lines joined, so a phrase a dialog wraps
/// over two lines is still found.
fn flat(screen: &str) -> String {
    screen
        .lines()
        .map(|l| l.trim_matches(|c: char| c == '│' || c == ' ' || c == '┐' || c == '┌'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds in a console duration: `45s`, `2m05s`, `1h05m`.
fn seconds(text: &str) -> Option<u64> {
    if let Some(s) = text.strip_suffix('s') {
        return match s.split_once('m') {
            Some((m, s)) => Some(m.parse::<u64>().ok()? * 60 + s.parse::<u64>().ok()?),
            None => s.parse().ok(),
        };
    }
    let (h, m) = text.strip_suffix('m')?.split_once('h')?;
    Some(h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60)
}

/// The WAITED of request `id` on the queue screen, in seconds: the first duration on its row.
fn waited_s(screen: &str, id: u64) -> Option<u64> {
    let row = screen
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == format!("r{id}")))?;
    row.split_whitespace().find_map(seconds)
}

fn live_vms(api: &Api) -> Vec<serde_json::Value> {
    let v = api.ok("GET", "/v1/vms?live=true", None);
    v["vms"].as_array().cloned().unwrap_or_default()
}

/// One host of 4 vCPUs and jobs of 4 vCPUs: one job fills it.
const ONE_HOST: &str = r#"
[sim]
latency_scale = 0.001

[probe]
startup_grace_ms = 0

[[templates]]
name = "job"
guest_os = "linux"
vcpus = 4
memory_mib = 4096
expected_provision_ms = 1000
expected_boot_ms = 5000
expected_run_ms = 600000

[[hosts]]
name = "sim-small-1"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["job"]
"#;

/// How long the second request is left waiting on the idle daemon.
const IDLE_WAIT: Duration = Duration::from_secs(20);

#[test]
fn console_at_80x24_counts_a_wait_on_an_idle_daemon_and_names_a_drains_blocker() {
    if tmux_missing() {
        return skip_or_fail("tmux is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(Path::new(BERTH), dir.path(), ONE_HOST);
    let api = serve.api();
    let socket = format!("berth-console-idle-{}", std::process::id());
    let _tmux = Tmux {
        socket: socket.clone(),
    };
    wait_for("sim-small-1 ready", Duration::from_secs(30), || {
        host_state(&api, "sim-small-1").filter(|s| s == "ready")
    });

    // alice's job fails and its VM is held: a breakpoint that keeps the host's 4 vCPUs.
    let r1 = api.ok(
        "POST",
        "/v1/requests",
        Some(
            json!({"template": "job", "count": 1, "hold_on_failure": true,
                    "hold_owner": "alice", "requester": "ci-linux"}),
        ),
    );
    let r1 = r1["id"].as_u64().unwrap();
    let vm = wait_for("alice's VM to run", Duration::from_secs(30), || {
        live_vms(&api)
            .into_iter()
            .find(|v| v["request"] == r1 && v["state"] == "running")
            .and_then(|v| v["id"].as_u64())
    });
    api.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": false})),
    );
    wait_for("the breakpoint", Duration::from_secs(10), || {
        live_vms(&api)
            .into_iter()
            .any(|v| v["id"] == vm && v["state"] == "held")
            .then_some(())
    });
    // A second request cannot fit beside it: it waits, and nothing else happens.
    let r2 = api.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "job", "count": 1, "requester": "nightly"})),
    );
    let submitted = Instant::now();
    let r2 = r2["id"].as_u64().unwrap();

    start_console(&socket, &serve, 80, 24);
    wait_for("the console to go live", Duration::from_secs(30), || {
        capture(&socket).contains("● live").then_some(())
    });
    send(&socket, &["3"]);
    wait_for("the queue screen", Duration::from_secs(10), || {
        let s = capture(&socket);
        waited_s(&s, r2).map(|_| ())
    });
    // Leave it: the daemon has nothing to do, so its own clock moves only in its answers.
    std::thread::sleep((IDLE_WAIT + Duration::from_secs(1)).saturating_sub(submitted.elapsed()));
    let screen = wait_for("WAITED to reach 20s", Duration::from_secs(10), || {
        let s = capture(&socket);
        waited_s(&s, r2).filter(|w| *w >= 20).map(|_| s)
    });
    let waited = waited_s(&screen, r2).unwrap();
    let elapsed = submitted.elapsed().as_secs();
    assert!(
        waited >= 20 && waited <= elapsed + 1,
        "WAITED {waited}s after {elapsed}s:\n{screen}"
    );
    // It is first in the queue, and expected to start once the breakpoint is released.
    assert!(screen.contains("REQUEST POS ETA"), "{screen}");
    let row: Vec<&str> = screen
        .lines()
        .find(|l| l.contains(&format!("r{r2} ")))
        .unwrap()
        .split_whitespace()
        .skip_while(|w| *w != format!("r{r2}"))
        .collect();
    assert_eq!(row[1], "1", "POS of r{r2}:\n{screen}");
    assert!(
        row[2].starts_with('~') || row[2] == "<1m" || row[2] == "now",
        "ETA of r{r2}:\n{screen}"
    );

    // Drain the host: the dialog names the breakpoint that pins it, and who holds it.
    send(&socket, &["2"]);
    wait_for("the hosts screen", Duration::from_secs(10), || {
        capture(&socket).contains("hosts (1)").then_some(())
    });
    send(&socket, &["D"]);
    let dialog = wait_for("the drain dialog", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains("drain 1 host?").then_some(s)
    });
    let text = flat(&dialog);
    let blocker = format!("berth-vm{vm} on sim-small-1 held by alice");
    assert!(text.contains(&blocker), "{blocker:?} in\n{dialog}");
    send(&socket, &["y"]);
    wait_for(
        "the console to show the drain",
        Duration::from_secs(20),
        || capture(&socket).contains("◐ draining").then_some(()),
    );
    // The breakpoint keeps it draining.
    assert_eq!(host_state(&api, "sim-small-1").as_deref(), Some("draining"));

    // Drill down: the host's VMs, the held one's request, and back.
    send(&socket, &["Enter"]);
    // A capture may catch the panel's title drawn before its rows: wait for both.
    let row = format!("berth-vm{vm}  ‖ held");
    let host = wait_for("the host's VMs", Duration::from_secs(10), || {
        let s = capture(&socket);
        (s.contains("VMs on sim-small-1 (1)") && s.contains(&row)).then_some(s)
    });
    assert!(host.contains(&row), "{host}");
    // Its details say what the drain waits for, and until when.
    let held = format!("berth-vm{vm} held by alice until");
    wait_for("the host's drain blockers", Duration::from_secs(10), || {
        let s = capture(&socket);
        (s.contains("waits for") && s.contains(&held)).then_some(())
    });
    send(&socket, &["Enter"]);
    wait_for("the VM's details", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains(&format!("sim-small-1 › vm berth-vm{vm}"))
            .then_some(())
    });
    send(&socket, &["Enter"]);
    let request = wait_for("the request's details", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains(&format!("› request r{r1} (Esc: up)"))
            .then_some(s)
    });
    assert!(request.contains(&format!("VMs of r{r1} (1)")), "{request}");
    // One Esc at a time: keys sent together can reach the console as one escape sequence.
    send(&socket, &["Escape"]);
    wait_for("back at the VM", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains(&format!("sim-small-1 › vm berth-vm{vm} (Esc: up)"))
            .then_some(())
    });
    send(&socket, &["Escape"]);
    wait_for("back at the host", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains("host sim-small-1 (Esc: back)").then_some(())
    });
    send(&socket, &["Escape"]);
    wait_for("back on the hosts screen", Duration::from_secs(10), || {
        let s = capture(&socket);
        (s.contains("hosts (1)") && !s.contains("Esc: back")).then_some(())
    });

    // The daemon's own log, for operators.
    send(&socket, &[":logs", "Enter"]);
    let log = wait_for("the daemon log", Duration::from_secs(10), || {
        let s = capture(&socket);
        s.contains("daemon log · lines").then_some(s)
    });
    assert!(log.contains("INFO"), "{log}");
    send(&socket, &["Escape"]);
    send(&socket, &["q"]);
}

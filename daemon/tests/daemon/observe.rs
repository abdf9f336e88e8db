//! Hooks with real scripts, `/metrics` checked by `promtool`, the dashboard's metric names,
//! and the accounting views.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{TestDaemon, berth_binary, vm_ids};

fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn runs(d: &TestDaemon, hook: &str) -> Vec<Value> {
    d.ok("GET", &format!("/v1/hooks/runs?hook={hook}&limit=50"), None)["runs"]
        .as_array()
        .unwrap()
        .clone()
}

fn pid_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A cgroup directory tests may make groups in: a fresh one under the unified (v2) hierarchy,
/// removed when dropped. `None` where there is none or it is not writable.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn make() -> Option<TestCgroup> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .filter(|root| root.join("cgroup.controllers").is_file())
            .find_map(|root| {
                let dir = root.join(format!("berth-test-{}", std::process::id()));
                std::fs::create_dir(&dir).ok().map(|()| TestCgroup(dir))
            })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A hook that timed out, having started a child in a session of its own (`setsid`): with
/// `hooks_cgroup` the child goes with it; without, only its process group does, and the
/// child survives (which is why the cgroup is there).
#[test]
fn a_hook_in_a_cgroup_takes_what_it_started_in_its_own_session_with_it() {
    let Some(cgroup) = TestCgroup::make() else {
        berth_testkit::skip_or_fail(
            "no writable cgroup v2 hierarchy (/sys/fs/cgroup/unified or /sys/fs/cgroup) to \
             run hooks in",
        );
        return;
    };
    let scripts = tempfile::tempdir().unwrap();
    let escaper = script(
        scripts.path(),
        "escape",
        r#"setsid sleep 600 & echo $! >> "$1/escaped"; sleep 600"#,
    );
    let escaped = |with_cgroup: bool| -> String {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let workers = if with_cgroup {
            format!("[workers]\nhooks_cgroup = \"{}\"\n", cgroup.0.display())
        } else {
            String::new()
        };
        let config = format!(
            "{base}\n{workers}\n[[hooks]]\nname = \"escape\"\non = \"vm.running\"\n\
             command = [\"{escaper}\", \"{out}\"]\ntimeout_ms = 300\n",
            base = super::CONFIG
        );
        let d = TestDaemon::start(&dir.path().join("data"), &config);
        d.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 1})),
        );
        d.wait_for("the hook timed out", |d| {
            runs(d, "escape").iter().any(|r| r["outcome"] == "timeout")
        });
        std::thread::sleep(Duration::from_millis(200));
        let pid = std::fs::read_to_string(dir.path().join("escaped")).unwrap();
        d.stop();
        pid.trim().to_owned()
    };
    let kept = escaped(false);
    let survived = pid_alive(&kept);
    let _ = Command::new("kill").args(["-9", &kept]).status();
    assert!(
        survived,
        "without a cgroup the setsid child {kept} should outlive its hook's process group"
    );
    let held = escaped(true);
    assert!(
        !pid_alive(&held),
        "the setsid child {held} survived its hook's cgroup"
    );
    // Every attempt's group was removed.
    let left: Vec<_> = std::fs::read_dir(&cgroup.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "groups left behind: {left:?}");
}

#[test]
fn hooks_get_the_event_time_out_retry_and_never_hold_up_scheduling() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let out = scripts.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let writer = script(
        scripts.path(),
        "write-payload",
        r#"cat > "$1/payload-$BERTH_VM_ID.json"; env | grep '^BERTH_' | sort > "$1/env-$BERTH_VM_ID""#,
    );
    // A child in the same process group: the timeout must kill it too.
    let sleeper = script(
        scripts.path(),
        "sleep-long",
        r#"sleep 60 & echo $! >> "$1/sleep-pids"; wait"#,
    );
    let failer = script(
        scripts.path(),
        "fail",
        r#"echo "cannot page anyone about $BERTH_EVENT" >&2; exit 3"#,
    );
    let out_s = out.display().to_string();
    let config = format!(
        r#"{base}
[workers]
hooks_at_once_max = 2

[[hooks]]
name = "payload"
on = "vm.held"
command = ["{writer}", "{out_s}"]

[[hooks]]
name = "slow"
on = "vm.running"
command = ["{sleeper}", "{out_s}"]
timeout_ms = 300

[[hooks]]
name = "pager"
on = "request.*"
command = ["{failer}"]
retries_max = 2
backoff_ms = 50
"#,
        base = super::CONFIG
    );
    let config = config.replace("request.*", "request.rejected");
    let d = TestDaemon::start(dir.path(), &config);

    // Four VMs reach running while the `slow` hooks hang two at a time: scheduling goes on.
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 4, "hold_on_failure": true})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("all four vms running", |d| {
        let r = d.ok("GET", &format!("/v1/requests/{id}"), None);
        r["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    });
    let vms = vm_ids(&d.ok("GET", &format!("/v1/requests/{id}"), None));
    let held = vms[0];
    d.ok(
        "POST",
        &format!("/v1/vms/{held}/result"),
        Some(json!({"passed": false})),
    );
    // A request no host could ever fit is rejected: `pager` fails three times.
    let (status, rejected) = d.call(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1, "cpus": 4096})),
    );
    assert_eq!(status, 201, "{rejected}");
    assert_eq!(rejected["state"], "rejected", "{rejected}");

    let payload_path = out.join(format!("payload-{held}.json"));
    let env_path = out.join(format!("env-{held}"));
    d.wait_for("the payload hook ran", |_| {
        std::fs::read_to_string(&env_path).is_ok_and(|t| t.contains("BERTH_VM_ID"))
    });
    let payload: Value =
        serde_json::from_str(&std::fs::read_to_string(&payload_path).unwrap()).unwrap();
    assert_eq!(payload["event"], "vm.held");
    assert_eq!(payload["vm"], held);
    assert_eq!(payload["to"], "held");
    assert_eq!(payload["request"], id);
    let env = std::fs::read_to_string(&env_path).unwrap();
    assert!(env.contains("BERTH_EVENT=vm.held\n"), "{env}");
    assert!(env.contains(&format!("BERTH_VM_ID={held}\n")), "{env}");
    assert!(env.contains("BERTH_HOST=sim-"), "{env}");

    d.wait_for("the pager hook ran three times", |d| {
        runs(d, "pager").len() == 3
    });
    let pager = runs(&d, "pager");
    let attempts: BTreeSet<u64> = pager
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, BTreeSet::from([0, 1, 2]));
    for r in &pager {
        assert_eq!(r["outcome"], "failed", "{r}");
        assert_eq!(r["exit_code"], 3, "{r}");
        assert_eq!(r["event"], "request.rejected", "{r}");
        assert!(
            r["stderr_tail"]
                .as_str()
                .unwrap()
                .contains("cannot page anyone about request.rejected"),
            "{r}"
        );
    }
    // Backoff: the retries are at least 50 and 100 ms apart.
    let mut starts: Vec<u64> = pager
        .iter()
        .map(|r| r["started_ms"].as_u64().unwrap())
        .collect();
    starts.sort_unstable();
    assert!(starts[1] - starts[0] >= 50, "{starts:?}");
    assert!(starts[2] - starts[1] >= 100, "{starts:?}");

    d.wait_for("the four slow hooks timed out", |d| {
        runs(d, "slow")
            .iter()
            .filter(|r| r["outcome"] == "timeout")
            .count()
            == 4
    });
    for r in runs(&d, "slow") {
        let ms = r["duration_ms"].as_u64().unwrap();
        assert!((300..5000).contains(&ms), "{r}");
        assert_eq!(r["exit_code"], Value::Null, "{r}");
        assert_eq!(r["outcome"], "timeout", "{r}");
        assert!(r["vm"].as_u64().is_some(), "{r}");
    }
    // The whole process group went: the scripts' `sleep 60` children are gone.
    std::thread::sleep(Duration::from_millis(200));
    let pids = std::fs::read_to_string(out.join("sleep-pids")).unwrap();
    for pid in pids.split_whitespace() {
        assert!(!pid_alive(pid), "sleep {pid} survived its hook's timeout");
    }
    let ok = runs(&d, "payload");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["outcome"], "ok");
    assert_eq!(ok[0]["exit_code"], 0);

    // The metrics count the runs and failures.
    let text = d.metrics_text();
    assert!(
        text.contains(r#"berth_hook_failures_total{hook="pager"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_hook_runs_total{hook="slow",outcome="timeout"} 4"#),
        "{text}"
    );

    // `berth hook log` shows the same runs.
    let cli = Command::new(berth_binary())
        .args([
            "hook", "log", "--hook", "pager", "--url", &d.url, "--token", &d.token,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let rows = stdout
        .lines()
        .filter(|l| l.contains("pager  request.rejected"))
        .count();
    assert_eq!(rows, 3, "{stdout}");
    assert!(stdout.contains("failed"), "{stdout}");
    d.stop();
}

#[test]
fn a_hook_config_with_an_unknown_event_is_refused_naming_the_key() {
    let err = berth_daemon::config::parse("[[hooks]]\non = \"vm.hold\"\ncommand = [\"true\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("hooks[0].on"), "{err}");
    assert!(err.contains("vm.held"), "{err}");
    let err = berth_daemon::config::parse("[[hooks]]\non = \"vm.*\"\ncommand = []\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("hooks[0].command"), "{err}");
}

/// The metric names a `/metrics` text exports (samples and declared families).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            names.insert(n.to_owned());
            for suffix in ["_bucket", "_sum", "_count", "_total"] {
                names.insert(format!("{n}{suffix}"));
            }
        }
    }
    names
}

/// Every `berth_*` metric name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/berth.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" {
                        out.extend(v.as_str().map(str::to_owned));
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 6, "too few queries in {}", path.display());
    let mut names = BTreeSet::new();
    for e in exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("berth_") {
            let start = i + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            names.insert(e[start..end].to_owned());
            i = end;
        }
    }
    names
}

#[test]
fn metrics_pass_promtool_cover_the_dashboard_and_accounting_views_add_up() {
    let dir = tempfile::tempdir().unwrap();
    // A hook that always fails, so that the hook families have samples; fair share, so that
    // the account families have.
    let config = format!(
        "{}\n[[hooks]]\nname = \"false\"\non = \"vm.done\"\ncommand = [\"false\"]\n\
         \n[fair_share]\nhalf_life_minutes = 60\ndefault_weight = 1\n\
         \n[[quotas]]\naccount = \"*\"\nclass = \"sim-large\"\nguarantee = {{ vcpus = 64 }}\n\
         \n[[quotas]]\naccount = \"*\"\nclass = \"sim-small\"\nguarantee = {{ vcpus = 16 }}\n",
        super::CONFIG
    );
    let d = TestDaemon::start(dir.path(), &config);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 3, "requester": "ci-east", "hold_on_failure": true})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("three vms running", |d| {
        d.ok("GET", &format!("/v1/requests/{id}"), None)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    });
    let vms = vm_ids(&d.ok("GET", &format!("/v1/requests/{id}"), None));
    d.ok(
        "POST",
        &format!("/v1/vms/{}/result", vms[0]),
        Some(json!({"passed": true})),
    );
    d.ok(
        "POST",
        &format!("/v1/vms/{}/result", vms[1]),
        Some(json!({"passed": false})),
    );
    d.call("GET", "/v1/vms/999999", None);
    d.wait_for("the hook on vm.done ran", |d| runs(d, "false").len() == 1);

    let text = d.metrics_text();
    for needle in [
        r#"berth_vms{state="held"} 1"#,
        r#"berth_vms{state="running"} 1"#,
        "berth_queue_length 0",
        "berth_breakpoints_held 1",
        "berth_time_to_running_seconds_count 3",
        "berth_request_wait_seconds_count",
        r#"berth_provision_seconds_count{host="sim-"#,
        r#"template="linux"}"#,
        r#"berth_hosts{state="ready"} 16"#,
        r#"berth_host_vcpus{host="sim-large-1",class="sim-large"} 128.0"#,
        r#"berth_api_requests_total{route="/v1/vms/{id}",method="GET",status="404"} 1"#,
        r#"route="/v1/requests",method="POST",status="201"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    // The dashboard queries only what is exported.
    let names = exported(&text);
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|n| !names.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries unexported metrics: {missing:?}"
    );

    // promtool, where it is installed (CI installs it and requires this check).
    let promtool = Command::new("promtool").arg("--version").output();
    match promtool {
        Ok(o) if o.status.success() => {
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "promtool check metrics failed:\n{}{}\n{text}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        _ => berth_testkit::skip_or_fail(
            "promtool is not installed, so /metrics is not checked with it (Debian's \
             `prometheus` package ships it)",
        ),
    }

    // The accounting views see the three VMs of `ci-east` on the `linux` template.
    let mut db = d.db();
    let (vms_n, hours) = db
        .row(
            "SELECT vms, vm_hours FROM vm_hours_by_requester WHERE requester = 'ci-east'",
            &[],
            |r| Ok((r.i64(0)?, r.opt_f64(1)?.unwrap_or_default())),
        )
        .unwrap()
        .expect("ci-east's row");
    assert_eq!(vms_n, 3);
    assert!(hours > 0.0 && hours < 1.0, "{hours}");
    let (template, vcpu_hours) = db
        .row(
            "SELECT template, vcpu_hours FROM vm_hours_by_template",
            &[],
            |r| Ok((r.text(0)?, r.opt_f64(1)?.unwrap_or_default())),
        )
        .unwrap()
        .expect("a template's row");
    assert_eq!(template, "linux");
    assert!(
        (vcpu_hours - 2.0 * hours).abs() < 1e-3,
        "{vcpu_hours} vs {hours}"
    );
    let days = db
        .row("SELECT count(*) FROM vm_hours_by_day", &[], |r| r.i64(0))
        .unwrap();
    assert_eq!(days, Some(1));
    d.stop();
}

#[test]
fn what_a_hook_leaves_running_ends_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let out = scripts.path().display().to_string();
    // Exits at once, leaving a sleeper and a child that floods standard error behind.
    let leaver = script(
        scripts.path(),
        "leave",
        r#"sleep 300 & echo $! >> "$1/left-pids"; cat /dev/zero >&2 & echo $! >> "$1/left-pids"; exit 0"#,
    );
    let config = format!(
        r#"{base}
[[hooks]]
name = "leaver"
on = "vm.running"
command = ["{leaver}", "{out}"]
"#,
        base = super::CONFIG
    );
    let d = TestDaemon::start(dir.path(), &config);
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 3})),
    );
    d.wait_for("three runs recorded", |d| runs(d, "leaver").len() == 3);
    for run in runs(&d, "leaver") {
        assert_eq!(run["outcome"], "ok", "{run}");
        assert!(
            run["stderr_tail"].as_str().unwrap().len() <= 4096 + 64,
            "{run}"
        );
    }
    let pids = std::fs::read_to_string(scripts.path().join("left-pids")).unwrap();
    let pids: Vec<&str> = pids.lines().collect();
    assert_eq!(pids.len(), 6, "{pids:?}");
    d.wait_for("every child gone", |_| !pids.iter().any(|p| pid_alive(p)));
}

/// A `host.*` hook hears of hosts that change state, not of every host at every start: a
/// restart that finds each host as the journal left it fires nothing.
#[test]
fn a_restart_fires_no_host_hooks_for_hosts_that_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let log = scripts.path().join("host-events");
    let logger = script(
        scripts.path(),
        "log-host",
        r#"echo "$BERTH_EVENT $BERTH_HOST" >> "$1""#,
    );
    let config = format!(
        "{base}\n[[hooks]]\nname = \"hosts\"\non = \"host.*\"\ncommand = [\"{logger}\", \"{log}\"]\n",
        base = super::CONFIG,
        log = log.display()
    );
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let all_ready = |d: &TestDaemon| {
        d.ok("GET", "/v1/hosts", None)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["state"] == "ready")
    };
    let d = TestDaemon::start(dir.path(), &config);
    d.wait_for("hosts ready", all_ready);
    // Every host's `host.ready` heard, and every run recorded: nothing is owed any more.
    d.wait_for("first hook runs done", |d| {
        let heard = lines();
        let hosts = d.ok("GET", "/v1/hosts", None)["hosts"].clone();
        hosts.as_array().unwrap().iter().all(|h| {
            let ready = format!("host.ready {}", h["name"].as_str().unwrap());
            heard.contains(&ready)
        }) && runs(d, "hosts").len() == heard.len()
    });
    let first = lines();
    assert!(
        first.iter().any(|l| l == "host.ready sim-small-1"),
        "{first:?}"
    );
    d.stop();
    let d = TestDaemon::start(dir.path(), &config);
    d.wait_for("hosts ready again", all_ready);
    // Let any hook the start fired run (they run within milliseconds here).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lines(), first, "hooks fired by the restart");
    d.stop();
}

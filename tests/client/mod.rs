//! The client commands against a real `berth serve` on simulated hosts: every exit code the
//! README documents, a reader that closes the pipe early, `--wait`, and the new lists.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use berth_testkit::Serve;

use super::text;

/// Two small simulated hosts that boot at once; `linux` fits two to a host.
const CONFIG: &str = r#"
[sim]
latency_scale = 0.0
seed = 1

[probe]
interval_ms = 200
startup_grace_ms = 0

[[templates]]
name = "linux"
guest_os = "linux"
vcpus = 2
memory_mib = 4096

[[templates]]
name = "macos"
guest_os = "macos"
vcpus = 4
memory_mib = 8192
slot = "macos"

[[hosts]]
name = "kvm-1"
driver = "sim"
vcpus = 4
memory_mib = 16384

[[hosts]]
name = "kvm-2"
driver = "sim"
vcpus = 4
memory_mib = 16384
"#;

fn serve(dir: &std::path::Path) -> Serve {
    serve_with(dir, CONFIG)
}

/// A daemon with this whole configuration (`CONFIG` and more, usually).
fn serve_with(dir: &std::path::Path, config: &str) -> Serve {
    Serve::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_berth")),
        dir,
        config,
    )
}

/// `berth ARGS` against the daemon, standard input closed (not a terminal).
fn cli(serve: &Serve, args: &[&str]) -> Output {
    command(serve, args)
        .stdin(Stdio::null())
        .output()
        .expect("the berth binary runs")
}

fn command(serve: &Serve, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("BERTH_URL", &serve.url)
        .env("BERTH_TOKEN", &serve.token);
    cmd
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

#[test]
fn every_exit_code_means_what_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());

    // 0: done.
    let out = cli(&serve, &["status"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("hosts     2 (ready 2)"),
        "{}",
        text(&out.stdout)
    );

    // 2: usage, clap's own and ours: a filter no row can match, a missing flag, a bad id.
    for args in [
        &["request", "list", "--state", "bogus"][..],
        &["vm", "list", "--state", "bogus"],
        &["vm", "list", "--host", "kvm-9"],
        &["request", "--template", "linux"],
        &["request", "show", "x7"],
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--timeout",
            "5s",
        ],
    ] {
        let out = cli(&serve, args);
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = cli(&serve, &["request", "list", "--state", "bogus"]);
    assert!(
        text(&out.stderr).contains("waiting, active"),
        "{}",
        text(&out.stderr)
    );

    // 3: a request rejected at once (no host could ever fit it), its row still printed.
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--cpus",
            "512",
        ],
    );
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("rejected"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--cpus",
            "512",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 3);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "rejected", "{v}");

    // 4: --wait gives up; the request stays. Four VMs fill both hosts, so the next waits.
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "4",
            "--wait",
            "--timeout",
            "20s",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--wait",
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("is still waiting after 2s"), "{err}");
    assert!(err.contains("berth request cancel r"), "{err}");

    // 3 again: waiting for a request that gets cancelled meanwhile.
    let waiter = command(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let id = berth_testkit::wait_for(
        "the waited-for request",
        std::time::Duration::from_secs(20),
        || {
            let v = serve.api().ok("GET", "/v1/requests?state=waiting", None);
            v["requests"]
                .as_array()?
                .iter()
                .filter_map(|r| r["id"].as_u64())
                .max()
                .filter(|&id| id > 4)
        },
    );
    let out = cli(&serve, &["request", "cancel", &format!("r{id}")]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cancelled"),
        "{}",
        text(&out.stdout)
    );

    // 6: the daemon refused: an unknown template (the error lists the known ones), a request
    // that does not exist.
    let out = cli(
        &serve,
        &["request", "--template", "solaris", "--count", "1"],
    );
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("known templates: linux, macos"), "{err}");
    let out = cli(&serve, &["request", "show", "r999"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));

    // 5: nobody listens there.
    let port = berth_testkit::free_port("127.0.0.1");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "status",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is `berth serve` running"),
        "{}",
        text(&out.stderr)
    );

    // `host offline` asks first: with no terminal and no --yes it is a usage error and the
    // host stays in service; with --yes it goes.
    let out = cli(&serve, &["host", "offline", "kvm-2"]);
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pass --yes"),
        "{}",
        text(&out.stderr)
    );
    let hosts = cli(&serve, &["host", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&hosts.stdout).unwrap();
    let state = |v: &serde_json::Value| {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "kvm-2")
            .map(|h| h["state"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_ne!(state(&v), "offline", "{v}");
    let out = cli(&serve, &["host", "offline", "kvm-2", "--yes"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // Offline reads as such, not as the maintenance a drain ends in.
    let hosts = cli(&serve, &["host", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&hosts.stdout).unwrap();
    assert_eq!(state(&v), "offline", "{v}");
    let table = text(&cli(&serve, &["host", "list"]).stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kvm-2") && l.contains("offline")),
        "{table}"
    );
}

#[test]
fn wait_returns_when_the_vms_run_naming_them_and_their_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "3",
            "--hold-ttl",
            "30m",
            "--deadline",
            "10m",
            "--expected-run",
            "5m",
            "--change",
            "I42",
            "--account",
            "qt-base",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let running: Vec<&str> = stdout.lines().filter(|l| l.contains(" running ")).collect();
    assert_eq!(running.len(), 3, "{stdout}");
    for line in running {
        assert!(line.starts_with("berth-vm"), "{stdout}");
        assert!(line.contains("kvm-1") || line.contains("kvm-2"), "{stdout}");
        assert!(line.contains(" 2 ") && line.contains("4G"), "{stdout}");
    }
    // The flags reached the API as the request's spec.
    let v = serve.api().ok("GET", "/v1/requests/1", None);
    assert_eq!(v["spec"]["hold"]["ttl_ms"], 1_800_000, "{v}");
    assert_eq!(v["spec"]["pending_deadline_ms"], 600_000, "{v}");
    assert_eq!(v["spec"]["expected_run_ms"], 300_000, "{v}");
    assert_eq!(v["spec"]["change"], "I42", "{v}");
    assert_eq!(v["spec"]["account"], "qt-base", "{v}");
    let out = cli(&serve, &["request", "show", "r1"]);
    let shown = text(&out.stdout);
    assert!(shown.contains("change I42, account qt-base"), "{shown}");
    let out = cli(&serve, &["request", "list", "-o", "wide"]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains("ACCOUNT") && listed.contains("qt-base"),
        "{listed}"
    );

    // The same answer as YAML, exact values.
    let out = cli(&serve, &["request", "show", "r1", "-o", "yaml"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let y = text(&out.stdout);
    assert!(
        y.contains("state: active") && y.contains("submitted_ms: "),
        "{y}"
    );
}

#[test]
fn a_reader_that_closes_the_pipe_ends_the_list_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    // 2,000 VMs, most queued: far more than a pipe holds.
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "2000",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    for args in [&["vm", "list"][..], &["vm", "list", "-o", "yaml"]] {
        let mut child = command(&serve, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // The reader is dropped here: what is left to write meets a closed pipe.
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 141, "{args:?}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
        assert!(!first.is_empty());
    }
}

#[test]
fn lists_show_people_columns_and_scripts_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    let out = cli(&serve, &["template", "list"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("NAME   OS"), "{t}");
    // No host has a macos slot: the template names no class that could run it.
    let macos = t.lines().find(|l| l.starts_with("macos")).unwrap();
    assert!(macos.contains("none"), "{t}");
    let linux = t.lines().find(|l| l.starts_with("linux")).unwrap();
    assert!(linux.contains("kvm"), "{t}");

    let out = cli(
        &serve,
        &["request", "--template", "linux", "--count", "2", "--wait"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = cli(&serve, &["vm", "list", "-o", "wide"]);
    let t = text(&out.stdout);
    let header = t.lines().next().unwrap();
    for column in ["TEMPLATE", "CPUS", "MEMORY", "AGE", "REQUEST", "CAUSE"] {
        assert!(header.contains(column), "{t}");
    }
    let out = cli(&serve, &["vm", "list"]);
    assert!(!text(&out.stdout).contains("CAUSE"));
    let out = cli(&serve, &["vm", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 2, "{v}");

    // `events --count` ends after that many, filtered by kind.
    let events = command(
        &serve,
        &["events", "--kind", "request", "--count", "2", "-o", "json"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = cli(&serve, &["request", "--template", "linux", "--count", "1"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = events.wait_with_output().unwrap();
    assert_eq!(code(&out), 0);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out.stdout));
    assert!(lines.iter().all(|e| e["kind"] == "request"));
}

#[test]
fn watch_redraws_a_list_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    let out = cli(
        &serve,
        &[
            "host",
            "add",
            "kvm-3",
            "--driver",
            "sim",
            "--vcpus",
            "8",
            "--memory-mib",
            "32768",
            "--memory-overcommit-milli",
            "1500",
            "--image",
            "linux",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let mut child = command(&serve, &["host", "list", "--watch", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut headers = 0;
    let mut seen_new_host = false;
    // Two drawings, a second apart, each with its header and every host.
    while headers < 2 {
        let line = lines.next().unwrap().unwrap();
        headers += usize::from(line.starts_with("HOST "));
        seen_new_host |= line.starts_with("kvm-3 ");
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen_new_host);
    let v = serve.api().ok("GET", "/v1/hosts", None);
    let added = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "kvm-3")
        .unwrap();
    // 8 vCPUs at no CPU overcommit; 32 GiB at 1.5.
    assert_eq!(added["memory_mib"], 49152, "{added}");
}

#[test]
fn events_follow_reads_on_across_a_restart_of_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = serve(dir.path());
    let mut child = command(
        &serve,
        &["events", "--follow", "--kind", "request", "--count", "1"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(serve.terminate(), "berth serve stopped cleanly");
    serve.restart();
    // The follower reconnects (within its 2 s retry); then a request's first event ends it.
    let got = berth_testkit::wait_for(
        "the follower to see a request",
        std::time::Duration::from_secs(30),
        || {
            let out = cli(&serve, &["request", "--template", "linux", "--count", "1"]);
            assert_eq!(code(&out), 0, "{}", text(&out.stderr));
            std::thread::sleep(std::time::Duration::from_millis(300));
            child.try_wait().unwrap()
        },
    );
    assert!(got.success());
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("TIME "), "{stdout}");
    assert!(stdout.contains("new → waiting"), "{stdout}");
    assert!(
        text(&out.stderr).contains("reconnecting"),
        "{}",
        text(&out.stderr)
    );
}

/// A reader that reconnects with `Last-Event-ID` gets the events it missed, once and in order;
/// one whose id is from an earlier run of the daemon is told the daemon restarted.
#[test]
fn the_event_stream_resumes_after_the_last_event_id() {
    use berth_api::Event;
    use berth_client::{Client, StreamItem};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    let client = Client::new(&serve.url, Some(serve.token.clone()));
    let submit = || {
        let out = cli(&serve, &["request", "--template", "linux", "--count", "1"]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    };
    let request_events = |item: Option<Result<StreamItem, _>>| match item {
        Some(Ok(StreamItem::Event(Event::Request(e)))) => Some(e),
        Some(Ok(_)) => None,
        other => panic!("the stream ended: {other:?}"),
    };
    let mut stream = client.events(None, Duration::from_secs(10)).unwrap();
    submit();
    let first = loop {
        if let Some(e) = request_events(stream.next()) {
            break e;
        }
    };
    assert_eq!((first.request, first.from), (1, None), "{first:?}");
    let last_id = stream.last_id().unwrap().to_owned();
    drop(stream);
    // While nobody reads: the first request goes on, a second arrives.
    submit();
    let mut stream = client
        .events(Some(&last_id), Duration::from_secs(10))
        .unwrap();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &berth_api::RequestEvent| e.request == 2)
    {
        if let Some(e) = request_events(stream.next()) {
            seen.push(e);
        }
    }
    assert!(
        !seen.iter().any(|e| e.request == 1 && e.from.is_none()),
        "the event before Last-Event-ID came again: {seen:?}"
    );
    assert!(
        seen.iter().any(|e| e.request == 2 && e.from.is_none()),
        "{seen:?}"
    );
    let mut stream = client.events(Some("1-1"), Duration::from_secs(10)).unwrap();
    match stream.next() {
        Some(Ok(StreamItem::Lagged(l))) => assert!(l.daemon_restarted, "{l:?}"),
        other => panic!("expected lagged: {other:?}"),
    }
}

#[test]
fn change_list_and_show_speak_of_changes_for_people_and_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    for (change, account, count) in [
        ("I7/1", "qt-base", "2"),
        ("I7/1", "qt-base", "1"),
        ("I8", "qt-tools", "1"),
    ] {
        let out = cli(
            &serve,
            &[
                "request",
                "--template",
                "linux",
                "--count",
                count,
                "--change",
                change,
                "--account",
                account,
            ],
        );
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    let out = cli(&serve, &["change", "list"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("CHANGE"), "{t}");
    // Newest first: I8 above I7/1; people see the first arrival as a clock time.
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines[1].starts_with("I8 ") && lines[2].starts_with("I7/1 "),
        "{t}"
    );
    assert!(
        lines[2].contains("qt-base") && lines[2].contains("UTC"),
        "{t}"
    );
    assert!(!t.contains("STARTING"), "{t}");
    let wide = text(&cli(&serve, &["change", "list", "-o", "wide"]).stdout);
    assert!(
        wide.contains("STARTING") && wide.contains("REQUESTS"),
        "{wide}"
    );

    // Scripts get the exact values.
    let out = cli(&serve, &["change", "show", "I7/1", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["change"], "I7/1", "{v}");
    assert_eq!(v["vms_wanted"], 3, "{v}");
    assert_eq!(v["n_requests"], 2, "{v}");
    assert!(
        v["first_arrival_ms"].as_u64().unwrap() > 1_000_000_000_000,
        "{v}"
    );
    let out = cli(&serve, &["change", "show", "I7/1"]);
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with("change I7/1  account qt-base") && shown.contains("3 wanted"),
        "{shown}"
    );
    assert!(shown.contains("r1") && shown.contains("r2"), "{shown}");

    // No such change: refused by the daemon (6), naming it.
    let out = cli(&serve, &["change", "show", "nope"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    let out = cli(&serve, &["change", "list", "--limit", "0"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));
}

/// `account list` shows fair share's standing of each account, in the order of service; without
/// `[fair_share]` it says fair share is off.
#[test]
fn account_list_shows_each_accounts_share_against_its_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&serve(&dir.path().join("plain")), &["account", "list"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("fair share is off"),
        "{}",
        text(&out.stdout)
    );

    let config = format!(
        "{CONFIG}\n[fair_share]\nhalf_life_minutes = 60\ndefault_weight = 1\n\
         \n[[fair_share.accounts]]\nname = \"qt-base\"\nweight = 3\n"
    );
    let serve = serve_with(&dir.path().join("fair"), &config);
    // qt-base fills both hosts (four 2-vCPU VMs); dev-anna's request waits behind them.
    for (account, count) in [("qt-base", "4"), ("dev-anna", "1")] {
        let mut args = vec!["request", "--template", "linux", "--count", count];
        args.extend(["--account", account]);
        if account == "qt-base" {
            args.push("--wait");
        }
        let out = cli(&serve, &args);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    let out = cli(&serve, &["account", "list"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("RANK  ACCOUNT"), "{t}");
    // dev-anna has used nothing, so it is served first; qt-base holds all 8 vCPUs.
    assert!(lines[1].starts_with("1     dev-anna"), "{t}");
    assert!(
        lines[2].starts_with("2     qt-base") && lines[2].contains("8 vCPUs"),
        "{t}"
    );
    let out = cli(&serve, &["account", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let base = &v["accounts"][1];
    assert_eq!(
        (
            &base["account"],
            &base["weight"],
            &base["holding_vcpus_milli"]
        ),
        (&"qt-base".into(), &3.into(), &8000.into()),
        "{v}"
    );
    // Both accounts are active: weights 3 and 1.
    assert_eq!(base["share"], 0.75, "{v}");
    assert_eq!(v["accounts"][0]["waiting_requests"], 1, "{v}");
}

/// `host drain` says what the host waits for: its VMs, the held ones by owner and expiry, and
/// when it should be empty; `host list` shows the estimate.
#[test]
fn host_drain_names_the_breakpoint_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--hold-owner",
            "alice",
            "--wait",
            "--timeout",
            "30s",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm = v["vms"][0]["name"].as_str().unwrap().to_owned();
    let host = v["vms"][0]["host"].as_str().unwrap().to_owned();
    let out = cli(&serve, &["vm", "result", &vm, "failed"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = cli(&serve, &["host", "drain", &host]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.starts_with(&format!("{host} draining: 1 VM left, empty in ~")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{vm} held by alice until ")),
        "{said}"
    );
    let table = text(&cli(&serve, &["host", "list"]).stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&host) && l.contains("empty in ~")),
        "{table}"
    );
}

#[test]
fn request_show_names_the_hosts_behind_each_reason_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    // Two `linux` fit on each host: the fifth waits for vCPUs on both.
    let out = cli(&serve, &["request", "--template", "linux", "--count", "5"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = cli(&serve, &["request", "show", "r1"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("waiting: "), "{shown}");
    assert!(
        shown.contains("2 hosts lack vcpus: kvm-1, kvm-2\n"),
        "{shown}"
    );
}

#[test]
fn request_and_change_show_where_a_waiting_request_stands_and_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());
    // Four `linux` VMs fill both hosts; the fifth waits, first in the queue.
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "5",
            "--change",
            "C1",
            "--expected-run",
            "10m",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = cli(&serve, &["request", "show", "r1"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    // It starts when the first of the four running VMs is expected to end: in ten minutes.
    assert!(
        shown.contains("position 1 of 1, starts in ~9m (estimate)\n")
            || shown.contains("position 1 of 1, starts in ~10m (estimate)\n"),
        "{shown}"
    );

    let out = cli(&serve, &["request", "list"]);
    let listed = text(&out.stdout);
    let mut lines = listed.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains(" POS ") && header.contains(" ETA "),
        "{listed}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "r1", "{listed}");
    assert!(row.contains(&"waiting") && row.contains(&"1"), "{listed}");
    assert!(row.iter().any(|c| *c == "~9m" || *c == "~10m"), "{listed}");

    // The change list gives the change's ETA in its last column.
    let out = cli(&serve, &["change", "list"]);
    let listed = text(&out.stdout);
    let c1 = listed.lines().find(|l| l.starts_with("C1 ")).unwrap();
    let eta = c1.split_whitespace().last().unwrap();
    assert!(eta == "~9m" || eta == "~10m", "{listed}");

    let out = cli(&serve, &["change", "show", "C1"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("its last waiting request starts in ~9m (estimate)")
            || shown.contains("its last waiting request starts in ~10m (estimate)"),
        "{shown}"
    );
}

/// A daemon with `[server] tls_cert` serves https only: the CLI trusts its private CA with
/// `--ca-file` (or BERTH_CA_FILE), and without it is refused with a hint naming the flag.
#[test]
fn the_cli_reaches_a_daemon_over_tls_trusting_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Some([ca, cert, key]) = berth_testkit::tls::private_ca(dir.path()) else {
        berth_testkit::skip_or_fail("openssl is not installed, so no certificate for the test");
        return;
    };
    let port = berth_testkit::free_port("127.0.0.1");
    let config = format!(
        "{CONFIG}\n[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let data = dir.path().join("data");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(dir.path().join("config.toml"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let status_at = |url: &str, extra: &[&str]| {
        let token = std::fs::read_to_string(data.join("token")).unwrap_or_default();
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["status", "--url", url, "--token", token.trim()])
            .args(extra)
            .env_remove("BERTH_CA_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let status = |extra: &[&str]| status_at(&url, extra);
    let ca_flag = ["--ca-file", ca.to_str().unwrap()];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while code(&status(&ca_flag)) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never answered over TLS"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = status(&ca_flag);
    assert!(text(&out.stdout).contains(&url), "{}", text(&out.stdout));

    // Without the CA: refused (5, unreachable), saying what to do.
    let out = status(&[]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("certificate was refused")
            && text(&out.stderr).contains("--ca-file"),
        "{}",
        text(&out.stderr)
    );
    // Plain http to the TLS port gets no answer; a file with no certificate is named.
    let out = status_at(&format!("http://127.0.0.1:{port}"), &[]);
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let out = status(&["--ca-file", key.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("key.pem: no CERTIFICATE"),
        "{}",
        text(&out.stderr)
    );
    let _ = serve.kill();
    let _ = serve.wait();
}

#[test]
fn image_commands_push_show_and_evict_with_the_documented_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path());

    let out = cli(&serve, &["image", "list"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("image store: none set"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("linux ")), "{table}");

    // 2: neither hosts nor a driver; 6: what the daemon refuses, named.
    let out = cli(&serve, &["image", "push", "linux"]);
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("--host") && said.contains("--driver"),
        "{said}"
    );
    let out = cli(&serve, &["image", "push", "linux", "--host", "kvm-9"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no host named kvm-9"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&serve, &["image", "show", "solaris"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("`solaris`"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&serve, &["host", "show", "kvm-9"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));

    // 0: the pull starts, and the host then holds the image.
    let out = cli(&serve, &["image", "push", "linux", "--host", "kvm-1"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "linux: pulls started on kvm-1\n");
    berth_testkit::wait_for("linux on kvm-1", std::time::Duration::from_secs(30), || {
        let out = cli(&serve, &["host", "show", "kvm-1"]);
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("linux "))
            .then_some(())
    });
    let shown = text(&cli(&serve, &["host", "show", "kvm-1"]).stdout);
    assert!(shown.contains("image disk: no budget set"), "{shown}");
    let wide = text(&cli(&serve, &["host", "list", "-o", "wide"]).stdout);
    assert!(
        wide.lines().next().unwrap_or("").contains("IMAGES"),
        "{wide}"
    );
    assert!(
        wide.lines()
            .any(|l| l.starts_with("kvm-1 ") && l.contains(" linux ")),
        "{wide}"
    );
    let out = cli(&serve, &["image", "show", "linux", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hosts"][0]["host"], "kvm-1");

    let out = cli(&serve, &["image", "evict", "linux", "--host", "kvm-1"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "linux evicted from kvm-1\n");
    let out = cli(&serve, &["image", "evict", "linux", "--host", "kvm-1"]);
    assert_eq!(code(&out), 6, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("host kvm-1 holds no base image linux"),
        "{}",
        text(&out.stderr)
    );
}

/// A warm pool's VMs are listed as the pool's (`warm` for their request), and a request that
/// takes one shows where its VM runs: in the warm VM's object on the host.
#[test]
fn vm_list_and_show_tell_warm_vms_and_handed_over_ones_apart() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}\n[[warm]]\ntemplate = \"linux\"\nclass = \"kvm\"\ncount = 1\n");
    let serve = serve_with(dir.path(), &config);
    berth_testkit::wait_for(
        "a running warm VM",
        std::time::Duration::from_secs(60),
        || {
            let out = cli(&serve, &["vm", "list", "--live", "-o", "wide"]);
            text(&out.stdout)
                .lines()
                .any(|l| l.contains(" running ") && l.contains(" warm "))
                .then_some(())
        },
    );
    let out = cli(
        &serve,
        &[
            "request",
            "--template",
            "linux",
            "--count",
            "1",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v = serve.api().ok("GET", "/v1/requests/1", None);
    let vm = v["vms"][0]["name"].as_str().expect("the request's VM");
    let out = cli(&serve, &["vm", "show", vm]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("runs in: berth-vm1 on its host (a warm VM it took over)"),
        "{shown}"
    );
    assert!(shown.contains("warm vm handover (vm1)"), "{shown}");
}

/// A daemon whose `vm.running` hook runs `body` (a shell script; `$1` is the log file, read
/// by [`hook_lines`]) one run at a time, with a request for four VMs submitted, once the first
/// run has written to the log: the other three wait their turn.
fn four_vms_behind_a_slow_hook(body: &str) -> (tempfile::TempDir, Serve) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("log-event");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "{CONFIG}\n[workers]\nhooks_at_once_max = 1\n\n[[hooks]]\nname = \"log\"\n\
         on = \"vm.running\"\ncommand = [\"{}\", \"{}\"]\n",
        script.display(),
        dir.path().join("hook.log").display()
    );
    let serve = serve_with(dir.path(), &config);
    let out = cli(&serve, &["request", "--template", "linux", "--count", "4"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    berth_testkit::wait_for(
        "the first hook run",
        std::time::Duration::from_secs(60),
        || (!hook_lines(dir.path()).is_empty()).then_some(()),
    );
    (dir, serve)
}

/// The lines the hook of [`four_vms_behind_a_slow_hook`] has written.
fn hook_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("hook.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A clean stop (SIGTERM) lets the hook run in flight end and records it; the jobs not started
/// yet run after the next start. Nothing is abandoned, nothing runs twice.
#[test]
fn a_stop_lets_the_hook_run_in_flight_end_and_leaves_the_rest_to_the_next_start() {
    // A line when it starts and one when it ends, two seconds later.
    let (dir, mut serve) = four_vms_behind_a_slow_hook(
        "echo \"start $BERTH_EVENT_ID\" >> \"$1\"\nsleep 2\necho \"end $BERTH_EVENT_ID\" >> \"$1\"",
    );
    let lines = || hook_lines(dir.path());
    assert!(serve.terminate(), "berth serve did not stop on SIGTERM");
    let at_stop = lines();
    let started = at_stop.iter().filter(|l| l.starts_with("start ")).count();
    let ended = at_stop.iter().filter(|l| l.starts_with("end ")).count();
    assert_eq!(
        started, ended,
        "a run was cut short by the stop: {at_stop:?}"
    );
    assert!(started < 4, "every hook ran before the stop: {at_stop:?}");
    serve.restart();
    let runs = berth_testkit::wait_for(
        "a run for every VM's vm.running",
        std::time::Duration::from_secs(60),
        || {
            let runs = serve.api().ok("GET", "/v1/hooks/runs?hook=log", None)["runs"].clone();
            (runs.as_array().unwrap().len() >= 4).then_some(runs)
        },
    );
    // Let anything that would run twice do so.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let runs = runs.as_array().unwrap();
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok"; 4], "{runs:?}");
    let mut heard: Vec<String> = lines()
        .iter()
        .filter_map(|l| l.strip_prefix("start ").map(str::to_owned))
        .collect();
    heard.sort_unstable();
    let n_heard = heard.len();
    heard.dedup();
    assert_eq!((heard.len(), n_heard), (4, 4), "{:?}", lines());
}

/// A hook runs once per event, across a crash: the jobs a batch's events owe are written with
/// the batch, so a daemon killed while its hooks are behind runs the rest once it is back; the
/// one it was running when killed is recorded as abandoned, not run again.
#[test]
fn a_hook_runs_once_per_event_across_a_crash() {
    let (dir, mut serve) =
        four_vms_behind_a_slow_hook("echo \"$BERTH_EVENT_ID $BERTH_VM_ID\" >> \"$1\"\nsleep 1");
    let lines = || hook_lines(dir.path());
    serve.kill();
    let first = lines();
    assert!(first.len() < 4, "every hook ran before the kill: {first:?}");
    serve.restart();
    // Every event's run ends, well or abandoned: the one the kill cut short (if the kill came
    // while a hook ran, as it almost always does here) is recorded abandoned by the start.
    let (ok, abandoned) = berth_testkit::wait_for(
        "a run for every VM's vm.running",
        std::time::Duration::from_secs(60),
        || {
            let runs = serve.api().ok("GET", "/v1/hooks/runs?hook=log", None)["runs"].clone();
            let of = |outcome: &str| -> Vec<(String, u64)> {
                runs.as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["outcome"] == outcome)
                    .map(|r| {
                        let id = r["event_id"].as_str().unwrap().to_owned();
                        (id, r["vm"].as_u64().unwrap())
                    })
                    .collect()
            };
            let (ok, abandoned) = (of("ok"), of("abandoned"));
            (ok.len() + abandoned.len() >= 4).then_some((ok, abandoned))
        },
    );
    // Let anything that would run twice do so.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let heard = lines();
    let mut ids: Vec<&str> = heard.iter().filter_map(|l| l.split(' ').next()).collect();
    ids.sort_unstable();
    let n_heard = ids.len();
    ids.dedup();
    assert_eq!(
        ids.len(),
        n_heard,
        "a hook ran twice for one event: {heard:?}"
    );
    assert!(abandoned.len() <= 1, "{abandoned:?}");
    // Each of the four VMs' events ran once, or was abandoned, never both.
    let mut vms: Vec<u64> = ok.iter().chain(&abandoned).map(|(_, vm)| *vm).collect();
    vms.sort_unstable();
    vms.dedup();
    assert_eq!(vms.len(), 4, "ok {ok:?}, abandoned {abandoned:?}");
    for (id, _) in &ok {
        assert!(
            ids.contains(&id.as_str()),
            "{id} ran without a line: {heard:?}"
        );
        assert!(
            !abandoned.iter().any(|(a, _)| a == id),
            "{id} ran and was abandoned"
        );
    }
}

//! No client, read-only or anonymous, can make one answer cost more than the named limits:
//! list caps with cursors, validated filters, forecast horizons, and metrics whose label sets
//! clients cannot grow.

use serde_json::{Value, json};

use crate::{CONFIG, TestDaemon};

const VIEWER: &str = "viewer-token-0123456789";

fn viewer(d: &TestDaemon, path: &str) -> (u16, Value) {
    crate::call(&d.url, Some(VIEWER), "GET", path, None)
}

#[test]
fn lists_are_capped_and_paged_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    for _ in 0..25 {
        d.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 1})),
        );
    }
    // A read-only token asking for a billion rows is told the maximum, not served.
    for path in [
        "/v1/requests?limit=1000000000",
        "/v1/audit?limit=1000000000",
        "/v1/vms?limit=1000000000",
        "/v1/hooks/runs?limit=1000000000",
        "/v1/queue?limit=1000000000",
        "/v1/requests?limit=0",
    ] {
        let (status, e) = if path.starts_with("/v1/audit") {
            d.call("GET", path, None)
        } else {
            viewer(&d, path)
        };
        assert_eq!(
            (status, e["field"].as_str()),
            (400, Some("limit")),
            "{path}: {e}"
        );
        assert!(e["error"].as_str().unwrap().contains("must be 1 to"), "{e}");
    }
    // Pages of 10, newest first, follow the cursor to the end: every request once.
    let mut seen = Vec::new();
    let mut path = "/v1/requests?limit=10".to_owned();
    loop {
        let (status, page) = viewer(&d, &path);
        assert_eq!(status, 200, "{page}");
        let rows = page["requests"].as_array().unwrap();
        seen.extend(rows.iter().map(|r| r["id"].as_u64().unwrap()));
        match page["next_before"].as_u64() {
            Some(next) => path = format!("/v1/requests?limit=10&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());
    // VMs page the other way, oldest first.
    let (_, first) = viewer(&d, "/v1/vms?limit=20");
    assert_eq!(first["count"], 20);
    let next = first["next_after"].as_u64().unwrap();
    let (_, rest) = viewer(&d, &format!("/v1/vms?limit=20&after={next}"));
    assert_eq!(rest["count"], 5);
    assert!(rest["next_after"].is_null(), "{rest}");
    // The audit log pages too.
    let (_, audit) = d.call("GET", "/v1/audit?limit=20", None);
    let before = audit["next_before"].as_u64().unwrap();
    let (_, older) = d.call("GET", &format!("/v1/audit?limit=20&before={before}"), None);
    assert_eq!(older["audit"].as_array().unwrap().len(), 5, "{older}");
    assert!(older["next_before"].is_null());
}

/// A long page of VMs is read in two parts at once: together they are the page, every VM once
/// and in order, and its cursor goes on where it ends.
#[test]
fn a_long_page_of_vms_is_every_vm_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    for _ in 0..5 {
        d.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 5000})),
        );
    }
    let ids = |page: &Value| -> Vec<u64> {
        page["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect()
    };
    let (status, first) = viewer(&d, "/v1/vms?limit=20001");
    assert_eq!(status, 200);
    let first_ids = ids(&first);
    assert_eq!(first["count"], 20001);
    assert_eq!(first_ids, (1..=20001).collect::<Vec<u64>>());
    assert_eq!(first["next_after"], 20001);
    let (_, rest) = viewer(&d, "/v1/vms?limit=20001&after=20001");
    assert_eq!(ids(&rest), (20002..=25000).collect::<Vec<u64>>());
    assert!(rest["next_after"].is_null(), "{}", rest["next_after"]);
    // A cursor holds across the two parts, and so does a filter.
    let (_, middle) = viewer(&d, "/v1/vms?limit=10000&after=7000");
    assert_eq!(ids(&middle), (7001..=17000).collect::<Vec<u64>>());
    assert_eq!(middle["next_after"], 17000);
    let (_, two) = viewer(&d, "/v1/vms?limit=10000&request=2&after=5000");
    assert_eq!(ids(&two), (5001..=10000).collect::<Vec<u64>>());
    assert!(two["next_after"].is_null());
}

#[test]
fn every_list_validates_its_state_filter() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    for path in ["/v1/requests?state=bogus", "/v1/vms?state=bogus"] {
        let (status, e) = viewer(&d, path);
        assert_eq!(
            (status, e["field"].as_str()),
            (400, Some("state")),
            "{path}: {e}"
        );
        assert!(e["error"].as_str().unwrap().contains("bogus"), "{e}");
    }
    let (status, _) = viewer(&d, "/v1/requests?state=waiting");
    assert_eq!(status, 200);
}

#[test]
fn a_forecast_cannot_look_further_than_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let (status, e) = crate::call(
        &d.url,
        Some(VIEWER),
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["sim-small-1"], "horizon_s": 604800})),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("horizon_s")),
        "{e}"
    );
    let (status, e) = crate::call(
        &d.url,
        Some(VIEWER),
        "POST",
        "/v1/predict/drain",
        Some(json!({"hosts": ["sim-small-1"], "horizon_s": 86400})),
    );
    assert_eq!(status, 200, "{e}");
}

#[test]
fn invented_methods_and_paths_add_no_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let series = |d: &TestDaemon| {
        let text = ureq::get(&format!("{}/metrics", d.url))
            .set("Authorization", &format!("Bearer {}", d.token))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("berth_api_requests"))
            .count()
    };
    // One of each kind first, so that the series counted below exist already.
    let anonymous = |method: &str, path: &str| {
        let _ = ureq::request(method, &format!("{}{path}", d.url)).call();
    };
    anonymous("BREW", "/healthz");
    anonymous("GET", "/no/such/path");
    // A scrape counts itself: the first one adds its own series.
    series(&d);
    let before = series(&d);
    for i in 0..1000 {
        anonymous(&format!("M{i}"), "/healthz");
        anonymous("GET", &format!("/no/such/path/{i}"));
    }
    assert_eq!(series(&d), before);
}

/// Whether the server closed `s` (reads end) within `wait`.
fn closed_within(s: &mut std::net::TcpStream, wait: std::time::Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slow_silent_and_idle_connections_cannot_starve_a_client() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}\n[server]\nheader_read_timeout_ms = 1500\n");
    let d = TestDaemon::start(dir.path(), &config);
    let addr = d.url.trim_start_matches("http://").to_owned();
    let open = || TcpStream::connect(&addr).unwrap();
    // 1,000 connections: silent ones, slowloris ones that send half a header, and idle
    // keep-alive ones that made one request and stay.
    let mut silent: Vec<TcpStream> = (0..400).map(|_| open()).collect();
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = open();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = open();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
            s
        })
        .collect();
    // A normal client is still answered at once.
    let mut took = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let (status, _) = d.call("GET", "/v1/status", None);
        took.push(t.elapsed());
        assert_eq!(status, 200);
    }
    took.sort();
    assert!(took[4] < Duration::from_millis(100), "{took:?}");
    // The slowloris ones trickle on; all three kinds are closed after the header timeout.
    for s in &mut slow {
        let _ = s.write_all(b"X-Slow: 1\r\n");
    }
    let deadline = Duration::from_millis(4000);
    for s in silent.iter_mut().chain(&mut slow).chain(&mut idle) {
        assert!(
            closed_within(s, deadline),
            "a connection outlived the header timeout"
        );
    }
}

#[test]
fn past_the_connection_limit_a_client_is_told_so_at_once() {
    use std::io::Read;
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}\n[server]\nconnections_max = 16\n");
    let d = TestDaemon::start(dir.path(), &config);
    let addr = d.url.trim_start_matches("http://").to_owned();
    let held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // Give the accept loop time to take all sixteen.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("server.connections_max"), "{answer}");
    drop(held);
    // Once they are gone, clients are served again.
    d.wait_for("a free connection", |d| {
        crate::call(&d.url, None, "GET", "/healthz", None).0 == 200
    });
}

#[test]
fn capacities_and_text_are_checked_against_named_maxima() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let host = |extra: Value| {
        let mut h = json!({"name": "hbig", "driver": "sim", "vcpus": 8, "memory_mib": 1024});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        d.call("POST", "/v1/hosts", Some(h))
    };
    for (extra, field) in [
        (
            json!({"vcpus": 4294967295u64, "cpu_overcommit_milli": 4294967295u64}),
            "vcpus",
        ),
        (
            json!({"cpu_overcommit_milli": 4294967295u64}),
            "cpu_overcommit_milli",
        ),
        (json!({"memory_mib": 1u64 << 40}), "memory_mib"),
        (json!({"slots": {"macos": 4294967295u64}}), "slots.macos"),
        (json!({"labels": {"team": "a\u{1b}[2Jb"}}), "labels.team"),
        (json!({"labels": {"team": "x".repeat(257)}}), "labels.team"),
    ] {
        let (status, e) = host(extra.clone());
        assert_eq!(
            (status, e["field"].as_str()),
            (400, Some(field)),
            "{extra}: {e}"
        );
    }
    assert!(
        d.ok("GET", "/v1/hosts", None)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["name"] != "hbig")
    );
    let submit = |extra: Value| {
        let mut r = json!({"template": "linux", "count": 1});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        d.call("POST", "/v1/requests", Some(r))
    };
    for (extra, field) in [
        (json!({"memory_mib": 4611686018427387904u64}), "memory_mib"),
        (json!({"cpus": 100000}), "cpus"),
        // Longer than a name may be, well within the body cap (a larger body is a 413).
        (json!({"requester": "x".repeat(64 << 10)}), "requester"),
        (json!({"requester": "ci\u{0}"}), "requester"),
        (
            json!({"hold_on_failure": true, "hold_owner": "evil\u{202e}txt"}),
            "hold_owner",
        ),
        (json!({"labels": {"k": ""}}), "labels.k"),
    ] {
        let (status, e) = submit(extra.clone());
        assert_eq!(
            (status, e["field"].as_str()),
            (400, Some(field)),
            "{extra}: {e}"
        );
        assert!(e["error"].as_str().unwrap().len() < 200, "{e}");
    }
    // Text at the limit is taken, and the CLI's tables stay printable.
    let long = "é".repeat(256);
    let (status, r) = submit(json!({"labels": {"team": long}, "requester": long}));
    assert_eq!(status, 201, "{r}");
    let out = std::process::Command::new(crate::berth_binary())
        .args(["vm", "list", "--data-dir"])
        .arg(dir.path())
        .env("BERTH_URL", &d.url)
        .env_remove("BERTH_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().all(|l| l.chars().count() < 400), "{text}");
}

#[test]
fn a_requests_change_and_account_are_kept_replayed_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(
            json!({"template": "linux", "count": 2, "change": "I8f3a/2", "requester": "team-a",
            "account": "qt-base"}),
        ),
    );
    assert_eq!(r["spec"]["change"], "I8f3a/2", "{r}");
    assert_eq!(r["spec"]["account"], "qt-base", "{r}");
    let id = r["id"].as_u64().unwrap();
    // Without an account, the request is charged to its requester.
    let other = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1, "requester": "ana"})),
    );
    assert_eq!(other["spec"]["account"], "ana", "{other}");
    assert!(other["spec"].get("change").is_none(), "{other}");
    d.wait_for("running", |d| d.running_vms(id).len() == 2);
    d.stop();
    // A restart replays the journal: both survive, in the rows and in the scheduler.
    let d = TestDaemon::start(dir.path(), CONFIG);
    let again = d.ok("GET", &format!("/v1/requests/{id}"), None);
    assert_eq!(again["spec"]["account"], "qt-base", "{again}");
    assert_eq!(again["spec"]["change"], "I8f3a/2", "{again}");
    let listed = d.ok("GET", "/v1/requests", None);
    let first = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap();
    assert_eq!(first["spec"]["account"], "qt-base", "{listed}");
    d.stop();
    let export = berth_daemon::export::export(&crate::stores::store_of(dir.path()), None).unwrap();
    let requests: Vec<&berth_traces::RequestRecord> = export
        .records
        .iter()
        .filter_map(|r| match &r.body {
            berth_traces::RecordBody::Request(q) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].change.as_deref(), Some("I8f3a/2"));
    assert_eq!(requests[0].requester.as_deref(), Some("team-a"));
    assert_eq!(requests[0].account.as_deref(), Some("qt-base"));
    assert_eq!(
        requests[1].account, None,
        "the requester's account is left implicit"
    );
}

/// A refused call with a body is answered with `Connection: close`: the daemon did not read the
/// body and closes the connection, so a client must not keep it for its next call (it would
/// write into a closed socket). A refused call without a body, and an accepted one, keep it.
#[test]
fn a_refused_body_closes_its_connection_and_says_so() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let addr = d.url.trim_start_matches("http://").to_owned();
    let ask = |head: &str, body: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let text = format!(
            "{head}\r\nHost: x\r\nAuthorization: Bearer {VIEWER}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(text.as_bytes()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    };
    let refused = ask(
        "POST /v1/hosts/sim-small-1/drain HTTP/1.1",
        r#"{"reason":"x"}"#,
    );
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    let read = ask("GET /v1/hosts HTTP/1.1", "");
    assert!(read.starts_with("http/1.1 200"), "{read}");
    assert!(!read.contains("connection: close"), "{read}");
}

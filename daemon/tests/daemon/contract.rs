//! The API contract: every route the daemon serves is in its OpenAPI document, the document
//! is the one in `docs/`, every `/v1` route but `/healthz` asks for a token, every route that
//! changes something asks for an operator's, and every JSON answer reads back strictly into
//! its `berth_api` type.

use super::*;
use berth_api as api;

/// Fills a documented path's parameters with values that name something real.
fn concrete(path: &str, vm: u64, request: u64) -> String {
    path.replace(
        "{id}",
        &if path.starts_with("/v1/requests") {
            request.to_string()
        } else if path.starts_with("/v1/changes") {
            "c1".to_owned()
        } else {
            vm.to_string()
        },
    )
    .replace("{vm}", &vm.to_string())
    .replace("{name}", "sim-small-1")
}

/// The routes of the document, as (method, path) pairs.
fn documented(doc: &Value) -> Vec<(String, String)> {
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn the_served_document_is_the_one_in_docs() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let served = ureq::get(&format!("{}/v1/openapi.json", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let text = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        served == text,
        "docs/openapi.json differs from what the daemon serves: regenerate it with \
         `cargo run -p berth-daemon --example openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    assert_eq!(doc["info"]["version"], api::API_VERSION);
}

#[test]
fn every_route_asks_for_a_token_and_changes_ask_for_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let doc = d.ok("GET", "/v1/openapi.json", None);
    let routes = documented(&doc);
    assert!(routes.len() >= 25, "{routes:?}");
    let viewer = Some("viewer-token-0123456789");
    // Routes a read-only token may call although they are not GETs: each with its reason.
    let read_only_posts = [
        // A forecast runs copies of the scheduler and changes nothing.
        ("POST", "/v1/predict/drain"),
    ];
    // GETs that still need an operator: each with its reason.
    let operator_gets = [
        // The audit log names who did what.
        ("GET", "/v1/audit"),
        // The daemon's log names hosts, paths and errors.
        ("GET", "/v1/logs"),
    ];
    for (method, path) in &routes {
        let url_path = concrete(path, 1, 1);
        if path == "/healthz" {
            let (status, _) = call_text(&d.url, None, method, &url_path);
            assert_eq!(status, 200, "{method} {path} is public");
            continue;
        }
        let (status, body) = call_text(&d.url, None, method, &url_path);
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        let (status, body) = call_text(&d.url, Some("not-a-token"), method, &url_path);
        assert_eq!(status, 401, "{method} {path} with an unknown token: {body}");
        let key = (method.as_str(), path.as_str());
        let needs_operator =
            (method != "GET" && !read_only_posts.contains(&key)) || operator_gets.contains(&key);
        if needs_operator {
            let (status, body) = call_text(&d.url, viewer, method, &url_path);
            assert_eq!(
                status, 403,
                "{method} {path} with a read-only token: {body}"
            );
        }
    }
    // Every exception names a route that exists.
    for (method, path) in read_only_posts.iter().chain(&operator_gets) {
        assert!(
            routes.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is not a route"
        );
    }
}

/// A call whose answer may not be JSON (a stream, a PNG): status and text, read briefly.
fn call_text(url: &str, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_millis(500))
        .build();
    let mut req = agent.request(method, &format!("{url}{path}"));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let text = |r: ureq::Response| {
        let mut buf = Vec::new();
        let _ =
            std::io::Read::read_to_end(&mut std::io::Read::take(r.into_reader(), 4096), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    };
    match req.call() {
        Ok(r) => (r.status(), text(r)),
        Err(ureq::Error::Status(code, r)) => (code, text(r)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Reads `value` as `T`, refusing what `T` does not have: unknown fields anywhere fail.
fn strictly<T: serde::de::DeserializeOwned + serde::Serialize>(route: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{route}: the answer does not read as its type: {e}\n{value}"));
    // Written back, it is the same JSON: the type carries every field the daemon sent.
    assert_eq!(&serde_json::to_value(&typed).unwrap(), value, "{route}");
    typed
}

#[test]
fn every_answer_reads_strictly_into_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let r: api::RequestRow = strictly(
        "POST /v1/requests",
        &d.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 2, "change": "c1"})),
        ),
    );
    d.wait_for("both vms running", |d| {
        let r: api::RequestDetail =
            serde_json::from_value(d.ok("GET", &format!("/v1/requests/{}", r.id), None)).unwrap();
        r.vms.iter().all(|v| v.state == api::VmState::Running)
    });
    let detail: api::RequestDetail = strictly(
        "GET /v1/requests/{id}",
        &d.ok("GET", &format!("/v1/requests/{}", r.id), None),
    );
    let vm = detail.vms[0].id;
    // More than the fleet holds at once waits, so the queue and `why` have something to say.
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1000, "cpus": 16})),
    );
    let _: api::Status = strictly("GET /v1/status", &d.ok("GET", "/v1/status", None));
    let _: api::WhoAmI = strictly("GET /v1/whoami", &d.ok("GET", "/v1/whoami", None));
    let page: api::RequestPage = strictly("GET /v1/requests", &d.ok("GET", "/v1/requests", None));
    assert_eq!(page.requests.len(), 2);
    let q: api::Queue = strictly("GET /v1/queue", &d.ok("GET", "/v1/queue", None));
    assert!(q.queue[0].why.is_some(), "{q:?}");
    let vms: api::VmPage = strictly("GET /v1/vms", &d.ok("GET", "/v1/vms", None));
    assert!(vms.count >= 2, "{vms:?}");
    let _: api::VmDetail = strictly(
        "GET /v1/vms/{id}",
        &d.ok("GET", &format!("/v1/vms/{vm}"), None),
    );
    let _: api::HostList = strictly("GET /v1/hosts", &d.ok("GET", "/v1/hosts", None));
    let _: api::HostRow = strictly(
        "POST /v1/hosts/{name}/drain",
        &d.ok("POST", "/v1/hosts/sim-small-1/drain", None),
    );
    let _: api::HostRow = strictly(
        "POST /v1/hosts/{name}/resume",
        &d.ok("POST", "/v1/hosts/sim-small-1/resume", None),
    );
    let _: api::DrainForecast = strictly(
        "POST /v1/predict/drain",
        &d.ok(
            "POST",
            "/v1/predict/drain",
            Some(json!({"hosts": ["sim-small-1"], "horizon_s": 60})),
        ),
    );
    let _: api::VmRow = strictly(
        "POST /v1/vms/{id}/result",
        &d.ok(
            "POST",
            &format!("/v1/vms/{vm}/result"),
            Some(json!({"passed": true})),
        ),
    );
    let changes: api::ChangePage = strictly("GET /v1/changes", &d.ok("GET", "/v1/changes", None));
    assert_eq!(changes.changes.len(), 1, "{changes:?}");
    let change: api::ChangeDetail =
        strictly("GET /v1/changes/{id}", &d.ok("GET", "/v1/changes/c1", None));
    assert_eq!((change.change.vms_wanted, change.requests.len()), (2, 1));
    let _: api::AuditPage = strictly("GET /v1/audit", &d.ok("GET", "/v1/audit", None));
    let _: api::OrphanList = strictly("GET /v1/orphans", &d.ok("GET", "/v1/orphans", None));
    let _: api::HookRuns = strictly("GET /v1/hooks/runs", &d.ok("GET", "/v1/hooks/runs", None));
    let _: api::DaemonLog = strictly("GET /v1/logs", &d.ok("GET", "/v1/logs?limit=5", None));
    d.wait_for("a pulse", |d| {
        d.ok("GET", "/v1/pulses?since_ms=0", None)["pulses"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    });
    let pulses: api::PulseList = strictly(
        "GET /v1/pulses",
        &d.ok("GET", "/v1/pulses?since_ms=0", None),
    );
    assert!(!pulses.pulses[0].classes.is_empty(), "{pulses:?}");
    let (status, err) = call(&d.url, Some(&d.token), "GET", "/v1/vms/nope", None);
    assert_eq!(status, 400);
    let err: api::ErrorBody = strictly("an error", &err);
    assert_eq!(err.field.as_deref(), Some("vm"));
    let cancelled: api::RequestRow = strictly(
        "DELETE /v1/requests/{id}",
        &d.ok("DELETE", &format!("/v1/requests/{}", r.id), None),
    );
    assert_eq!(cancelled.id, r.id);
}

/// `docs/openapi.json` passes a standard validator (the `openapi-spec-validator` Python
/// package, which `.ci/run` installs).
#[test]
fn the_document_passes_a_standard_validator() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let has_validator = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_validator {
        berth_testkit::skip_or_fail(
            "python3's openapi-spec-validator is not installed \
             (python3 -m pip install openapi-spec-validator)",
        );
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docs/openapi.json is not valid OpenAPI:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_body_over_the_cap_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    let huge = format!(
        "{{\"template\": \"linux\", \"count\": 1, \"requester\": \"{}\"}}",
        "x".repeat(berth_daemon::limits::BODY_BYTES_MAX)
    );
    let (status, _) = call_raw(&d.url, &d.token, "POST", "/v1/requests", &huge);
    assert_eq!(status, 413);
    assert_eq!(d.ok("GET", "/v1/requests", None)["requests"], json!([]));
}

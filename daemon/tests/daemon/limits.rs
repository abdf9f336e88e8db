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

//! Pulses: sampled on the configured period while the daemon runs, served at `/v1/pulses`,
//! and still there after a restart.

use super::*;
use berth_api as api;

fn pulse_config(period_ms: u64) -> String {
    format!("{CONFIG}\n[pulses]\nperiod_ms = {period_ms}\n")
}

fn pulses(d: &TestDaemon, since_ms: u64) -> api::PulseList {
    serde_json::from_value(d.ok("GET", &format!("/v1/pulses?since_ms={since_ms}"), None)).unwrap()
}

#[test]
fn pulses_follow_the_queue_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &pulse_config(1000));
    // More than the fleet holds waits in the queue.
    d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1000, "cpus": 16})),
    );
    d.wait_for("a pulse that sees the waiting request", |d| {
        pulses(d, 0)
            .pulses
            .iter()
            .any(|p| p.waiting_requests == 1 && p.waiting_vms > 0)
    });
    let before = pulses(&d, 0);
    assert_eq!(before.period_ms, 1000);
    assert_eq!(before.kept_ms, 24 * 3_600_000);
    let last = before.pulses.last().unwrap();
    let small = last
        .classes
        .iter()
        .find(|c| c.class == "sim-small")
        .unwrap_or_else(|| panic!("no sim-small class in {last:?}"));
    assert!(small.hosts_in_service > 0, "{small:?}");
    assert!(
        small.vcpu_utilisation().unwrap() > 0.5,
        "the 16-vCPU VMs fill the small hosts: {small:?}"
    );
    let mac = last.classes.iter().find(|c| c.class == "sim-mac").unwrap();
    assert!(!mac.slots.is_empty(), "the Mac class has slots: {mac:?}");
    // Samples come a period apart, not at each change. The one at start is left out: it is
    // stamped when the control loop answers, which a start still replaying may delay (by a
    // few hundred ms on PostgreSQL) while the next period is counted from the start.
    d.wait_for("four pulses", |d| pulses(d, 0).pulses.len() >= 4);
    let spread = pulses(&d, 0);
    for pair in spread.pulses[1..].windows(2) {
        let gap = pair[1].at_ms - pair[0].at_ms;
        assert!(gap >= 900, "pulses {gap} ms apart: {:?}", spread.pulses);
    }
    // since_ms leaves out what came before.
    let after = pulses(&d, last.at_ms);
    assert!(after.pulses.iter().all(|p| p.at_ms > last.at_ms));
    d.stop();

    let d = TestDaemon::start(dir.path(), &pulse_config(1000));
    let again = pulses(&d, 0);
    assert!(
        again.pulses.starts_with(&spread.pulses),
        "the pulses from before the restart are served after it"
    );
    d.wait_for("a pulse after the restart", |d| {
        pulses(d, spread.pulses.last().unwrap().at_ms)
            .pulses
            .iter()
            .any(|p| p.waiting_requests == 1)
    });
    d.stop();
}

#[test]
fn bad_pulse_queries_and_settings_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), CONFIG);
    for (query, field) in [
        ("since_ms=soon", "query"),
        ("limit=0", "limit"),
        ("limit=999999", "limit"),
        ("bogus=1", "query"),
    ] {
        let (status, body) = d.call("GET", &format!("/v1/pulses?{query}"), None);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let viewer = Api::new(&d.url, Some("viewer-token-0123456789"));
    let list: api::PulseList =
        serde_json::from_value(viewer.ok("GET", "/v1/pulses?limit=1", None)).unwrap();
    assert!(list.pulses.len() <= 1);
    d.stop();
    for (text, key) in [
        ("[pulses]\nperiod_ms = 10\n", "pulses.period_ms"),
        ("[pulses]\nkept_hours = 0\n", "pulses.kept_hours"),
        ("[pulses]\nkept_hours = 100000\n", "pulses.kept_hours"),
        ("[pulses]\nperiod = 10\n", "pulses.period"),
    ] {
        match berth_daemon::config::parse(text) {
            Err(berth_daemon::DaemonError::Config { key: k, message }) => {
                assert_eq!(k, key, "{text}: {message}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

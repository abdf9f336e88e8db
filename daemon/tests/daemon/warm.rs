//! Warm pools in the daemon on simulated hosts: a pool fills, a request takes a warm VM at
//! once (its VM runs in the warm VM's object on the host, nothing new is created for it), the
//! pool refills, a destroy removes the right object, and a restart keeps everything healthy.

use serde_json::{Value, json};

use super::TestDaemon;

/// One host of class `warm` (room for eight `linux` VMs) and a pool of two.
const WARM: &str = r#"
[sim]
latency_scale = 0.001

[probe]
interval_ms = 100
timeout_ms = 1000
startup_grace_ms = 0
list_interval_ms = 200

[[hosts]]
name = "warm-1"
driver = "sim"
vcpus = 16
memory_mib = 32768
images = ["linux", "windows"]

[[warm]]
template = "linux"
class = "warm"
count = 2
"#;

const POOL: u64 = u64::MAX;

/// The live VMs, as `(id, request, state)`.
fn live(d: &TestDaemon) -> Vec<(u64, u64, String)> {
    d.ok("GET", "/v1/vms?live=true", None)["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap(),
                v["request"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The pool's idle (running) warm VMs.
fn idle_warm(d: &TestDaemon) -> Vec<u64> {
    live(d)
        .into_iter()
        .filter(|(_, r, s)| *r == POOL && s == "running")
        .map(|(id, _, _)| id)
        .collect()
}

fn inventory(d: &TestDaemon) -> Vec<String> {
    let mut names = d.sim().inventory("warm-1");
    names.sort();
    names
}

fn name(n: u64) -> String {
    format!("berth-vm{n}")
}

/// Fills the pool, then submits one `linux` VM and waits until it runs: returns the request's
/// VM, the warm VM it took, and the warm VMs idle before.
fn hand_one_over(d: &TestDaemon) -> (u64, u64, Vec<u64>) {
    d.wait_for("the pool filled", |d| idle_warm(d).len() == 2);
    let warm = idle_warm(d);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("the request's vm running", |d| d.running_vms(id).len() == 1);
    let vm = d.running_vms(id)[0].0;
    let taken: Vec<u64> = warm
        .iter()
        .copied()
        .filter(|w| d.vm_state(*w) == "done")
        .collect();
    assert_eq!(taken.len(), 1, "one warm vm taken: {warm:?}");
    (vm, taken[0], warm)
}

fn history_causes(d: &TestDaemon, vm: u64) -> Vec<String> {
    d.ok("GET", &format!("/v1/vms/{vm}"), None)["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cause"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_request_takes_a_warm_vm_at_once_and_the_pool_refills() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), WARM);
    let (vm, taken, warm) = hand_one_over(&d);
    // Its VM runs in the warm VM's object: no VM of its own name was ever created.
    let inv = inventory(&d);
    assert!(inv.contains(&name(taken)), "{inv:?}");
    assert!(!inv.contains(&name(vm)), "{inv:?}");
    let causes = history_causes(&d, vm);
    assert!(
        causes.iter().any(|c| c.starts_with("warm vm handover")),
        "{causes:?}"
    );
    assert!(
        !causes.iter().any(|c| c == "provisioning started"),
        "a handed-over vm is never provisioned: {causes:?}"
    );
    // The pool refills from the room left, with a VM of its own.
    d.wait_for("the pool refilled", |d| idle_warm(d).len() == 2);
    let now = idle_warm(&d);
    let kept: Vec<u64> = warm.iter().copied().filter(|w| *w != taken).collect();
    assert!(now.contains(&kept[0]), "{now:?}");
    let fresh = now.iter().copied().find(|w| !warm.contains(w)).unwrap();
    assert!(fresh > vm, "the refill is a new vm: {now:?}");
    d.wait_for("the refill on the host", |d| {
        inventory(d).contains(&name(fresh))
    });
    // The image routes count warm VMs and the handed-over VM (by its object) as users of
    // their base image.
    let image = d.ok("GET", "/v1/images/linux", None);
    let mut users: Vec<String> = image["hosts"][0]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    users.sort();
    let mut want = vec![name(kept[0]), name(fresh), name(taken)];
    want.sort();
    assert_eq!(users, want, "{image}");
    // Metrics: the pool's size and its hit.
    let text = d.metrics_text();
    let series = |prefix: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };
    let labels = r#"template="linux",class="warm",shape="default""#;
    assert_eq!(
        series(&format!("berth_warm_handovers_total{{{labels}}}")).as_deref(),
        Some(format!("berth_warm_handovers_total{{{labels}}} 1").as_str()),
        "{text}"
    );
    assert!(
        text.contains(&format!("berth_warm_pool_size{{{labels}}} 2")),
        "{text}"
    );
    assert!(
        text.contains(&format!("berth_warm_pool_vms{{{labels},state=\"idle\"}} 2")),
        "{text}"
    );

    // Its job done, the request's VM is destroyed: the object it ran in goes, the pool's stay.
    d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
    d.wait_for("the request's vm done", |d| d.vm_state(vm) == "done");
    d.wait_for("its object destroyed", |d| {
        !inventory(d).contains(&name(taken))
    });
    let inv = inventory(&d);
    for w in idle_warm(&d) {
        assert!(inv.contains(&name(w)), "{inv:?}");
    }
    assert_eq!(inv.len(), 2, "only the pool's vms are left: {inv:?}");
    let orphans: Value = d.ok("GET", "/v1/orphans", None);
    assert_eq!(orphans["orphans"], json!([]), "{orphans}");
}

#[test]
fn a_restart_keeps_the_handed_over_vm_and_the_idle_warm_vms() {
    restart_keeps_everything(WARM);
}

#[test]
fn a_restart_from_a_snapshot_keeps_the_handed_over_vm_and_the_idle_warm_vms() {
    restart_keeps_everything(&format!("{WARM}\n[recovery]\nsnapshot_every_inputs = 1\n"));
}

fn restart_keeps_everything(config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), config);
    let (vm, taken, _) = hand_one_over(&d);
    d.wait_for("the pool refilled", |d| idle_warm(d).len() == 2);
    let warm = idle_warm(&d);
    let before = inventory(&d);
    let live_before = live(&d);
    d.stop();

    let d = TestDaemon::start(dir.path(), config);
    // Several listings later nothing was lost, destroyed or taken for an orphan.
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    assert_eq!(live(&d), live_before);
    assert_eq!(d.vm_state(vm), "running");
    assert_eq!(idle_warm(&d), warm);
    assert_eq!(inventory(&d), before);
    let orphans: Value = d.ok("GET", "/v1/orphans", None);
    assert_eq!(orphans["orphans"], json!([]), "{orphans}");
    // The restarted daemon still knows which object is the VM's.
    d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
    d.wait_for("its object destroyed", |d| {
        !inventory(d).contains(&name(taken))
    });
    assert_eq!(idle_warm(&d), warm);
}

#[test]
fn a_restart_in_the_middle_of_a_handover_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), WARM);
    d.wait_for("the pool filled", |d| idle_warm(d).len() == 2);
    let warm = idle_warm(&d);
    // The handover's confirmation never comes back: the daemon dies waiting for it.
    d.sim().hang_boots("warm-1", 1);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    let vm = vm_ids_of(&d, id)[0];
    d.wait_for("the handover under way", |d| {
        d.ok("GET", &format!("/v1/vms/{vm}"), None)["host_object"].is_string()
    });
    assert_eq!(d.vm_state(vm), "booting");
    let object = d.ok("GET", &format!("/v1/vms/{vm}"), None)["host_object"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(warm.iter().any(|&w| name(w) == object), "{object} {warm:?}");
    let before = inventory(&d);
    d.stop();

    let d = TestDaemon::start(dir.path(), WARM);
    // Recovery confirms the handover again: the VM runs in the warm VM's object, which was
    // neither destroyed nor taken for an orphan, and nothing was provisioned for it.
    d.wait_for("the request's vm running", |d| d.vm_state(vm) == "running");
    let inv = inventory(&d);
    assert!(inv.contains(&object), "{inv:?}");
    assert_eq!(
        d.ok("GET", &format!("/v1/vms/{vm}"), None)["host_object"],
        object.as_str()
    );
    assert!(!inv.contains(&name(vm)), "{inv:?}");
    for n in &before {
        assert!(inv.contains(n), "{n} destroyed: {inv:?}");
    }
    let causes = history_causes(&d, vm);
    assert_eq!(
        causes,
        [
            "submitted",
            &format!("warm vm handover (vm{})", &object["berth-vm".len()..]),
            "booted"
        ],
        "one handover, confirmed after the restart"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let orphans: Value = d.ok("GET", "/v1/orphans", None);
    assert_eq!(orphans["orphans"], json!([]), "{orphans}");
    assert_eq!(d.vm_state(vm), "running");
}

#[test]
fn a_restart_provisions_warm_vms_left_half_made_again() {
    let dir = tempfile::tempdir().unwrap();
    // Realistic latencies: provisioning takes seconds, and the daemon stops in the middle.
    let slow = WARM.replace("latency_scale = 0.001", "latency_scale = 1.0");
    let d = TestDaemon::start(dir.path(), &slow);
    d.wait_for("the pool provisioning", |d| {
        live(d)
            .iter()
            .filter(|(_, r, s)| *r == POOL && s == "provisioning")
            .count()
            == 2
    });
    let warm: Vec<u64> = live(&d).into_iter().map(|(id, _, _)| id).collect();
    d.stop();

    // Recovery provisions them again from their pool's template and shape: the same VMs come
    // up, and no others.
    let d = TestDaemon::start(dir.path(), WARM);
    d.wait_for("the pool filled", |d| idle_warm(d).len() == 2);
    assert_eq!(idle_warm(&d), warm);
    let names: Vec<String> = warm.iter().map(|&w| name(w)).collect();
    assert_eq!(inventory(&d), names);
}

#[test]
fn a_hook_is_told_the_object_a_handed_over_vm_runs_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("running.txt");
    let config = format!(
        "{WARM}\n[[hooks]]\nname = \"note\"\non = \"vm.running\"\n\
         command = [\"sh\", \"-c\", \"echo $BERTH_VM_NAME $BERTH_VM_OBJECT >> {}\"]\n",
        out.display()
    );
    let data = dir.path().join("data");
    let d = TestDaemon::start(&data, &config);
    let (vm, taken, _) = hand_one_over(&d);
    let want = format!("{} {}", name(vm), name(taken));
    d.wait_for("the hook ran for the request's vm", |_| {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().any(|l| l == want))
    });
    // A warm VM's own object is its name: the warm VM's own run, when it came up in the pool.
    // Hook runs go in parallel, so its line may come after the request's.
    let own = format!("{} {}", name(taken), name(taken));
    d.wait_for("the hook ran for the warm vm", |_| {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().any(|l| l == own))
    });
}

fn vm_ids_of(d: &TestDaemon, request: u64) -> Vec<u64> {
    super::vm_ids(&d.ok("GET", &format!("/v1/requests/{request}"), None))
}

#[test]
fn a_restart_with_other_warm_pools_keeps_the_databases() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), WARM);
    d.wait_for("the pool filled", |d| idle_warm(d).len() == 2);
    d.stop();
    // The file now asks for three: the database's pool of two is kept, as `[images]` is.
    let d = TestDaemon::start(dir.path(), &WARM.replace("count = 2", "count = 3"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(idle_warm(&d).len(), 2);
    assert!(
        d.metrics_text()
            .contains(r#"berth_warm_pool_size{template="linux",class="warm",shape="default"} 2"#)
    );
}

#[test]
fn a_handover_whose_warm_vm_is_gone_fails_and_the_request_is_served_anyway() {
    let dir = tempfile::tempdir().unwrap();
    // No listing notices the vanished VMs before the request takes one.
    let d = TestDaemon::start(
        dir.path(),
        &WARM.replace("list_interval_ms = 200", "list_interval_ms = 600000"),
    );
    d.wait_for("the pool filled", |d| idle_warm(d).len() == 2);
    let warm = idle_warm(&d);
    for &w in &warm {
        d.sim().vanish("warm-1", &name(w));
    }
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("the request's vm running", |d| d.running_vms(id).len() == 1);
    // Its VM tried the vanished warm VMs and found each gone; then it was provisioned on its
    // own (in an object of its own name), or took a warm VM the pool refilled meanwhile (in
    // that VM's object), which a slower store's batches leave time for. Its books say which.
    let vm = d.running_vms(id)[0].0;
    let causes = history_causes(&d, vm);
    let failed = causes
        .iter()
        .filter(|c| c.starts_with("boot failed") && c.ends_with("is gone"))
        .count();
    assert_eq!(failed, 2, "{causes:?}");
    let row = d.ok("GET", &format!("/v1/vms/{vm}"), None);
    let object = match row["host_object"].as_str() {
        None => {
            assert!(
                causes.iter().any(|c| c == "provisioning started"),
                "{causes:?}"
            );
            name(vm)
        }
        Some(refilled) => {
            assert!(
                warm.iter().all(|&w| name(w) != refilled),
                "{refilled} vanished: {row}"
            );
            let handover = format!(
                "warm vm handover ({})",
                refilled.trim_start_matches("berth-")
            );
            assert!(causes.contains(&handover), "{handover}: {causes:?}");
            refilled.to_owned()
        }
    };
    let inv = inventory(&d);
    assert!(inv.contains(&object), "{object}: {inv:?}");
    for &w in &warm {
        assert!(!inv.contains(&name(w)), "{inv:?}");
    }
    // And its destroy names that object.
    d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
    d.wait_for("its object destroyed", |d| !inventory(d).contains(&object));
}

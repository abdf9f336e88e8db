//! The Parallels driver against a real `sshd`: the tests start their own sshd (generated host
//! and user keys, its own configuration, on loopback or inside a network namespace they create)
//! whose logins find stand-ins for `prlctl`, `prlsrvctl` and macOS's `sysctl` first on their
//! `PATH`, put there by a forced command in `authorized_keys` (`berth_testkit::sshd`). The
//! stand-ins keep their VMs in a JSON state file that the tests read and write directly.
//!
//! Each test skips, saying why, when `sshd` or `ssh-keygen` is missing, and the cut-link test
//! also when network namespaces cannot be made (not root, no `ip`). With
//! `BERTH_LIVE_TESTS=require` (CI sets it) a missing tool fails the test instead, so that a
//! broken setup cannot pass as a skip.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::time::{Duration, Instant};

use berth_drivers::parallels::{ParallelsConfig, ParallelsHost};
use berth_drivers::{Driver, DriverError, VmListing, VmRecipe, vm_name};
use berth_sched::{FailureKind, GuestOs, Shape};
use berth_testkit::sshd::{Fixture, HOST, TEMPLATE, keygen};
use serde_json::json;

/// The driver's settings for the fixture's sshd, read from its options as the daemon reads a
/// `[[hosts]]` entry.
fn config(fx: &Fixture) -> ParallelsConfig {
    ParallelsConfig::from_options(&fx.options()).unwrap()
}

fn driver(fx: &Fixture) -> ParallelsHost {
    ParallelsHost::new(HOST, config(fx))
}

fn recipe(n: u64, template: &str, vcpus: u32, memory_mib: u64) -> VmRecipe {
    VmRecipe {
        name: vm_name(n),
        template: template.to_owned(),
        base_image: template.to_owned(),
        guest_os: GuestOs::Macos,
        shape: Shape { vcpus, memory_mib },
        domain_type: None,
    }
}

fn names(list: &[VmListing]) -> Vec<&str> {
    let mut v: Vec<&str> = list.iter().map(|l| l.name.as_str()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_list_and_destroy_through_sshd() {
    let Some(fx) = Fixture::start() else { return };
    let host = driver(&fx);

    let facts = host.probe().await.unwrap();
    assert_eq!(facts.vcpus, 10);
    assert_eq!(facts.memory_mib, 32768);
    assert_eq!(facts.images, vec!["macos-14", "macos-15"]);

    // Two at once, as the daemon's per-host workers do: each gets its own VNC port.
    let (a, b) = (recipe(1, TEMPLATE, 4, 8192), recipe(2, "macos-15", 2, 4096));
    let (ra, rb) = tokio::join!(host.provision(&a), host.provision(&b));
    ra.unwrap();
    rb.unwrap();
    host.boot("berth-vm1").await.unwrap();
    host.boot("berth-vm2").await.unwrap();
    let list = host.list().await.unwrap();
    assert_eq!(names(&list), vec!["berth-vm1", "berth-vm2", "someone-else"]);
    assert!(list.iter().all(|l| l.running));

    let state = fx.state();
    let vm1 = &state["vms"]["berth-vm1"];
    assert_eq!(vm1["cpus"], 4);
    assert_eq!(vm1["memsize"], 8192);
    assert_eq!(vm1["linked_from"], TEMPLATE);
    assert_eq!(vm1["vnc"]["mode"], "manual");
    assert_eq!(vm1["vnc"]["address"], "127.0.0.1");
    let c1 = host.console("berth-vm1").await.unwrap();
    let c2 = host.console("berth-vm2").await.unwrap();
    // 5901 belongs to someone else's VM.
    let mut ports = vec![c1.port, c2.port];
    ports.sort();
    assert_eq!(ports, vec![5902, 5903]);
    assert_eq!(c1.host, fx.listen_ip);
    assert_eq!(c1.password.as_deref(), vm1["vnc"]["password"].as_str());
    assert!(matches!(
        host.console("berth-vm99").await,
        Err(DriverError::NoSuchVm { .. })
    ));
    let png = host.screenshot("berth-vm1").await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{png:?}");
    assert!(matches!(
        host.screenshot("berth-vm99").await,
        Err(DriverError::NoSuchVm { .. })
    ));

    // A second driver value, as after a daemon restart, sees the same VMs: reconciliation's input.
    let restarted = driver(&fx);
    assert_eq!(names(&restarted.list().await.unwrap()), names(&list));
    // Provisioning again adopts the VM instead of failing or making a second one.
    restarted.provision(&a).await.unwrap();
    assert_eq!(restarted.list().await.unwrap().len(), 3);
    // A provisioning interrupted right after its clone left a stopped, unshaped VM: provisioning
    // it again shapes and starts it.
    let mut state = fx.state();
    state["vms"]["berth-vm5"] = json!({"uuid": "{5}", "status": "stopped", "template": false,
        "os": "macosx", "cpus": 4, "memsize": 8192, "vnc": {"mode": "off"}});
    fx.set_state(&state);
    restarted
        .provision(&recipe(5, TEMPLATE, 3, 6144))
        .await
        .unwrap();
    let vm5 = &fx.state()["vms"]["berth-vm5"];
    assert_eq!(
        (&vm5["status"], &vm5["cpus"], &vm5["memsize"]),
        (&json!("running"), &json!(3), &json!(6144))
    );
    assert_eq!(restarted.console("berth-vm5").await.unwrap().port, 5904);
    restarted.destroy("berth-vm5").await.unwrap();

    host.destroy("berth-vm1").await.unwrap();
    host.destroy("berth-vm2").await.unwrap();
    // Destroying what is gone succeeds.
    host.destroy("berth-vm2").await.unwrap();
    assert_eq!(names(&host.list().await.unwrap()), vec!["someone-else"]);
    // Other VMs are never berth's to touch.
    let e = host.destroy("someone-else").await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Request, "{e}");
    assert_eq!(names(&host.list().await.unwrap()), vec!["someone-else"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_whose_fault_and_leave_nothing_behind() {
    let Some(fx) = Fixture::start() else { return };
    let host = driver(&fx);

    // A template this Mac does not hold is the host's fault (another host may have it).
    let e = host
        .provision(&recipe(3, "macos-99", 2, 4096))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
    assert!(
        e.to_string().contains("macos-99") && e.to_string().contains(HOST),
        "{e}"
    );

    // prlctl refuses the memory size after the clone was made: the clone is deleted again.
    let e = host
        .provision(&recipe(4, TEMPLATE, 2, 1 << 20))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
    assert!(e.to_string().contains("--memsize"), "{e}");
    assert_eq!(names(&host.list().await.unwrap()), vec!["someone-else"]);

    // A recipe no host can carry out.
    let mut bad = recipe(5, TEMPLATE, 2, 4096);
    bad.name = "not-berths".into();
    assert_eq!(
        host.provision(&bad).await.unwrap_err().kind(),
        FailureKind::Request
    );
    let bad = recipe(5, "-macos", 2, 4096);
    assert_eq!(
        host.provision(&bad).await.unwrap_err().kind(),
        FailureKind::Request
    );

    // Output of an unexpected shape is refused, quoting what came back.
    let mut state = fx.state();
    state["host"]["json_unsupported"] = json!(true);
    fx.set_state(&state);
    let e = host.list().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
    assert!(e.to_string().contains("UUID"), "{e}");
    assert!(host.probe().await.is_err());

    // Booting a VM that vanished behind berth's back.
    state["host"]["json_unsupported"] = json!(false);
    fx.set_state(&state);
    let e = host.boot("berth-vm7").await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_or_unknown_host_key_is_refused_naming_the_host() {
    let Some(fx) = Fixture::start() else { return };
    let other_key = keygen(&fx.path("other_host_key"));

    let mut changed = config(&fx);
    changed.known_hosts = Some(fx.known_hosts_with("known_hosts_changed", &other_key));
    let host = ParallelsHost::new(HOST, changed);
    let e = host.probe().await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.kind(), FailureKind::Host, "{msg}");
    assert!(msg.contains(HOST), "{msg}");
    assert!(msg.contains(&fx.listen_ip), "{msg}");
    assert!(msg.contains("host key"), "{msg}");
    // Never accepted: the file still holds only the key it had.
    let kh = fs::read_to_string(fx.path("known_hosts_changed")).unwrap();
    assert_eq!(kh.lines().count(), 1, "{kh}");

    let mut empty = config(&fx);
    empty.known_hosts = Some(fx.path("known_hosts_empty"));
    fs::write(fx.path("known_hosts_empty"), "").unwrap();
    let host = ParallelsHost::new(HOST, empty);
    let e = host.probe().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
    assert!(e.to_string().contains("host key"), "{e}");
    assert_eq!(
        fs::read_to_string(fx.path("known_hosts_empty")).unwrap(),
        ""
    );

    // The right key works.
    assert_eq!(driver(&fx).probe().await.unwrap().vcpus, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_fails_probes_within_the_timeout_and_restored_link_recovers() {
    let Some(fx) = Fixture::start_in_netns() else {
        return;
    };
    let host = driver(&fx);
    let config = host.config().clone();
    host.probe().await.unwrap();

    let ns = fx.netns.as_ref().unwrap();
    ns.set_link(false);
    // The first probe rides the existing connection and hits the command timeout; the next
    // must connect again and hits the connect timeout. Neither may hang.
    let limit =
        Duration::from_millis(2 * config.connect_timeout_ms + config.command_timeout_ms + 2_000);
    for attempt in 0..2 {
        let start = Instant::now();
        let e = host.probe().await.unwrap_err();
        let took = start.elapsed();
        assert!(took < limit, "probe {attempt} took {took:?}: {e}");
        assert!(e.is_transient(), "probe {attempt}: {e}");
        assert!(e.to_string().contains(HOST), "{e}");
    }

    ns.set_link(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match host.probe().await {
            Ok(facts) => {
                assert_eq!(facts.vcpus, 10);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no good probe after the link came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // VMs work again too.
    host.provision(&recipe(1, TEMPLATE, 2, 4096)).await.unwrap();
    host.destroy("berth-vm1").await.unwrap();
}

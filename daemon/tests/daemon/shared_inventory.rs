//! A daemon whose simulated hosts keep their inventory in a shared directory
//! (`[sim] shared_inventory`): the VMs it runs are files there, and the actions log names every
//! change with the daemon's process id.

use std::collections::BTreeMap;
use std::path::Path;

use berth_testkit::{SimActionOp, sim_actions, sim_inventory};
use serde_json::json;

use crate::TestDaemon;

fn config(shared: &Path) -> String {
    format!(
        "[sim]\nlatency_scale = 0.001\nshared_inventory = {:?}\n\n\
         [probe]\ninterval_ms = 100\ntimeout_ms = 1000\nstartup_grace_ms = 0\n",
        shared.to_str().unwrap()
    )
}

#[test]
fn a_daemon_keeps_its_simulated_vms_in_the_shared_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, shared) = (tmp.path().join("data"), tmp.path().join("shared"));
    std::fs::create_dir(&data).unwrap();
    let d = TestDaemon::start(&data, &config(&shared));
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 3})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("all running", |d| d.running_vms(id).len() == 3);

    // The hosts' side: exactly the running VMs, booted, each on the host the daemon names.
    let running: BTreeMap<String, String> = d
        .running_vms(id)
        .into_iter()
        .map(|(vm, host)| (format!("berth-vm{vm}"), host))
        .collect();
    let on_hosts: BTreeMap<String, String> = sim_inventory(&shared)
        .into_iter()
        .flat_map(|(host, vms)| {
            vms.into_iter().map(move |(vm, state)| {
                assert!(state.booted, "{vm} on {host}: {state:?}");
                (vm, host.clone())
            })
        })
        .collect();
    assert_eq!(on_hosts, running);
    assert!(
        !data.join(berth_daemon::SIM_INVENTORY_FILE).exists(),
        "the data directory keeps no inventory of its own"
    );

    // The actions log: each VM provisioned once and booted once, by this daemon's process.
    let actions = sim_actions(&shared);
    assert!(
        actions.iter().all(|a| a.pid == std::process::id()),
        "{actions:?}"
    );
    for (vm, host) in &running {
        let ops: Vec<SimActionOp> = actions
            .iter()
            .filter(|a| &a.vm == vm)
            .map(|a| {
                assert_eq!(&a.host, host, "{a:?}");
                a.op
            })
            .collect();
        assert_eq!(ops, [SimActionOp::Provision, SimActionOp::Boot], "{vm}");
    }

    // Cancelled: the files go, and the log says who destroyed them.
    d.ok("DELETE", &format!("/v1/requests/{id}"), None);
    // The driver removes a VM's file and then logs the destroy (under the host's lock, which
    // this reader does not take): wait for both.
    d.wait_for("vms destroyed", |_| {
        sim_inventory(&shared).values().all(BTreeMap::is_empty)
            && sim_actions(&shared)
                .iter()
                .filter(|a| a.op == SimActionOp::Destroy)
                .count()
                >= running.len()
    });
    let destroyed: BTreeMap<String, String> = sim_actions(&shared)
        .into_iter()
        .filter(|a| a.op == SimActionOp::Destroy)
        .map(|a| {
            assert_eq!(a.pid, std::process::id(), "{a:?}");
            (a.vm, a.host)
        })
        .collect();
    assert_eq!(destroyed, running);
    d.stop();
}

/// A `berth serve` process names itself in the actions log: the id a test of several daemons
/// tells them apart by.
#[test]
fn a_serve_process_names_its_own_pid_in_the_actions_log() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let mut serve = berth_testkit::Serve::start(
        &crate::berth_binary(),
        &tmp.path().join("serve"),
        &config(&shared),
    );
    let pid = serve.pid().unwrap();
    assert_ne!(pid, std::process::id());
    let api = serve.api();
    let r = api.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 2})),
    );
    let path = format!("/v1/requests/{}", r["id"].as_u64().unwrap());
    berth_testkit::wait_for("both booted", std::time::Duration::from_secs(30), || {
        let booted = sim_actions(&shared)
            .iter()
            .filter(|a| a.op == SimActionOp::Boot)
            .count();
        (booted == 2).then_some(())
    });
    let actions = sim_actions(&shared);
    assert_eq!(actions.len(), 4, "{actions:?}");
    assert!(actions.iter().all(|a| a.pid == pid), "{actions:?}");
    let vms = api.ok("GET", &path, None)["vms"].as_array().unwrap().len();
    assert_eq!(vms, 2);
    assert!(serve.terminate(), "{}", serve.log());
}

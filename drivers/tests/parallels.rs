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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_drivers::images::{PullOutcome, Pulls, Sha256Digest};
use berth_drivers::parallels::{ParallelsConfig, ParallelsHost};
use berth_drivers::{Driver, DriverError, VmListing, VmRecipe, vm_name};
use berth_sched::{FailureKind, GuestOs, Shape};
use berth_testkit::sshd::{Fixture, HOST, TEMPLATE, bundle_config, bundle_disk, keygen};
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

// Pulls of templates from an image store. The store is a directory on this machine; the Mac's
// template directory is one in the fixture's, which the tests look into directly (the sshd
// logs in as the user running them).

const PULLED: &str = "macos-16";

/// An image store holding template [`PULLED`], and its archive's bytes.
fn store_with_template(fx: &Fixture) -> Option<(std::path::PathBuf, Vec<u8>)> {
    fx.template_store(PULLED)
}

/// A driver that pulls from `store` into the fixture's `templates` directory, reporting on
/// `pulls`.
fn pulling_driver(fx: &Fixture, store: &std::path::Path, pulls: &Pulls) -> ParallelsHost {
    let mut options = fx.options();
    options.insert("image_store".into(), store.display().to_string());
    options.insert(
        "template_dir".into(),
        fx.path("templates").display().to_string(),
    );
    let config = ParallelsConfig::from_options(&options).unwrap();
    ParallelsHost::with_pulls(HOST, config, pulls.clone())
}

/// Every pull that ends, as the daemon's metrics and hooks hear them.
fn outcomes(pulls: &Pulls) -> Arc<Mutex<Vec<PullOutcome>>> {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    pulls.observe(Arc::new(move |o: &PullOutcome| {
        sink.lock().unwrap().push(o.clone())
    }));
    heard
}

/// What the Mac's template directory holds, sorted.
fn template_dir(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(fx.path("templates")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_template_is_pulled_once_for_two_vms_and_both_clone_it() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, archive)) = store_with_template(&fx) else {
        return;
    };
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = pulling_driver(&fx, &store, &pulls);
    assert!(
        !host
            .probe()
            .await
            .unwrap()
            .images
            .contains(&PULLED.to_owned())
    );

    // Watch the board as the daemon does for a provisioning VM's detail.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pulls, stop) = (pulls.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                seen.extend(pulls.progress(HOST, PULLED));
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    let (a, b) = (recipe(1, PULLED, 2, 4096), recipe(2, PULLED, 3, 6144));
    let (ra, rb) = tokio::join!(host.provision(&a), host.provision(&b));
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    ra.unwrap();
    rb.unwrap();

    // One pull, whole, however many VMs waited for it.
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].error, None);
    assert_eq!(
        (heard[0].host.as_str(), heard[0].image.as_str()),
        (HOST, PULLED)
    );
    assert_eq!(heard[0].bytes, archive.len() as u64);
    // Its progress was on the board while it ran, and is gone now.
    assert!(!seen.is_empty(), "no progress was reported");
    assert!(
        seen.iter()
            .all(|p| p.file == "macos-16.pvm.tar" && p.total_bytes == archive.len() as u64),
        "{seen:?}"
    );
    assert!(seen.iter().any(|p| p.percent() == 100), "{seen:?}");
    assert_eq!(pulls.progress(HOST, PULLED), None);

    // Registered from the unpacked bundle, and both VMs are linked clones of it.
    let state = fx.state();
    let template = &state["vms"][PULLED];
    assert_eq!(template["template"], true);
    let bundle = fx.path("templates").join("macos-16.pvm");
    assert_eq!(template["home"], json!(bundle.display().to_string()));
    for vm in ["berth-vm1", "berth-vm2"] {
        assert_eq!(state["vms"][vm]["linked_from"], PULLED, "{vm}");
        assert_eq!(state["vms"][vm]["status"], "running", "{vm}");
    }
    assert_eq!(
        fs::read(bundle.join("harddisk.hdd/disk.hds")).unwrap(),
        bundle_disk()
    );
    // Neither the archive nor the marker is left.
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);
    assert!(
        host.probe()
            .await
            .unwrap()
            .images
            .contains(&PULLED.to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_copy_is_refused_naming_image_and_digest_and_leaves_nothing() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, archive)) = store_with_template(&fx) else {
        return;
    };
    // One byte of the disk changed after the digest was taken.
    let digest = Sha256Digest::of(&archive).to_string();
    let mut corrupt = archive.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x01;
    fs::write(store.join("macos-16.pvm.tar"), &corrupt).unwrap();
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = pulling_driver(&fx, &store, &pulls);

    let e = host
        .provision(&recipe(3, PULLED, 2, 4096))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.kind(), FailureKind::Request, "{msg}");
    assert!(
        msg.contains("macos-16.pvm.tar") && msg.contains(&digest),
        "{msg}"
    );
    assert!(msg.contains(HOST), "{msg}");
    // Nothing registered, nothing cloned, nothing left in the template directory.
    let state = fx.state();
    assert!(state["vms"].get(PULLED).is_none(), "{state}");
    assert!(state["vms"].get("berth-vm3").is_none(), "{state}");
    assert_eq!(template_dir(&fx), Vec::<String>::new());
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(
        heard[0]
            .error
            .as_deref()
            .is_some_and(|m| m.contains(&digest)),
        "{heard:?}"
    );
    assert_eq!(pulls.progress(HOST, PULLED), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_interrupted_pull_left_is_removed_and_not_used() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, archive)) = store_with_template(&fx) else {
        return;
    };
    // A pull cut short by a crash while it unpacked: its marker, half the archive, and a
    // bundle that looks whole enough to register but is not what the store holds.
    let dir = fx.path("templates");
    let bundle = dir.join("macos-16.pvm");
    fs::create_dir_all(bundle.join("harddisk.hdd")).unwrap();
    fs::write(dir.join("macos-16.pvm.tar.pulling"), "").unwrap();
    fs::write(dir.join("macos-16.pvm.tar"), &archive[..archive.len() / 2]).unwrap();
    fs::write(
        bundle.join("config.pvs"),
        bundle_config(PULLED, "{00000000-0000-4000-8000-000000000016}"),
    )
    .unwrap();
    fs::write(bundle.join("harddisk.hdd/disk.hds"), &bundle_disk()[..1000]).unwrap();
    fs::write(bundle.join("stale"), "left by the cut pull").unwrap();
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = pulling_driver(&fx, &store, &pulls);
    // A partial copy is never reported as a template.
    assert!(
        !host
            .probe()
            .await
            .unwrap()
            .images
            .contains(&PULLED.to_owned())
    );

    host.provision(&recipe(4, PULLED, 2, 4096)).await.unwrap();
    assert!(!bundle.join("stale").exists());
    assert_eq!(
        fs::read(bundle.join("harddisk.hdd/disk.hds")).unwrap(),
        bundle_disk()
    );
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);
    assert_eq!(fx.state()["vms"]["berth-vm4"]["linked_from"], PULLED);
    assert_eq!(heard.lock().unwrap().len(), 1);

    // A bundle there without berth's marker is someone else's: refused, never replaced.
    let foreign = dir.join("macos-17.pvm");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(
        foreign.join("config.pvs"),
        bundle_config("macos-17", "{17}"),
    )
    .unwrap();
    let e = host
        .provision(&recipe(5, "macos-17", 2, 4096))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
    assert!(
        e.to_string().contains("macos-17.pvm") && e.to_string().contains("prlctl register"),
        "{e}"
    );
    assert!(foreign.join("config.pvs").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_idempotent_when_the_template_is_there() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, _)) = store_with_template(&fx) else {
        return;
    };
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = pulling_driver(&fx, &store, &pulls);

    // A template the Mac holds already (not in the store at all) pulls nothing.
    host.pull(TEMPLATE).await.unwrap();
    host.provision(&recipe(1, TEMPLATE, 2, 4096)).await.unwrap();
    assert!(heard.lock().unwrap().is_empty());
    assert_eq!(template_dir(&fx), Vec::<String>::new());

    host.pull(PULLED).await.unwrap();
    host.pull(PULLED).await.unwrap();
    host.provision(&recipe(2, PULLED, 2, 4096)).await.unwrap();
    assert_eq!(heard.lock().unwrap().len(), 1);
    // A crash between registering and removing the marker: the template is whole (registered
    // only after its digest matched), so it is kept and nothing is pulled again.
    let marker = fx.path("templates").join("macos-16.pvm.tar.pulling");
    fs::write(&marker, "").unwrap();
    host.pull(PULLED).await.unwrap();
    host.provision(&recipe(3, PULLED, 2, 4096)).await.unwrap();
    assert_eq!(heard.lock().unwrap().len(), 1);
    assert_eq!(fx.state()["vms"][PULLED]["template"], true);
    assert!(
        fx.path("templates")
            .join("macos-16.pvm/config.pvs")
            .exists()
    );
}

/// An HTTP image store that sends the first half of `archive` and then nothing more, as a store
/// whose link stalled: a pull from it can only time out. Returns its URL.
fn stalling_store(archive: Vec<u8>, digest: String) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request_line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            if request_line.contains(".sha256 ") {
                let body = format!("{digest}  {PULLED}.pvm.tar\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                archive.len()
            );
            let _ = conn.write_all(&archive[..archive.len() / 2]);
            let _ = conn.flush();
            // Silent for longer than the pull may take, then gone: the driver's reader of the
            // store (a blocking thread, which the test's runtime waits for) ends then.
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_times_out_removes_its_partial_copy() {
    let Some(fx) = Fixture::start() else { return };
    let Some((_, archive)) = store_with_template(&fx) else {
        return;
    };
    let digest = Sha256Digest::of(&archive).to_string();
    let url = stalling_store(archive, digest);
    let mut options = fx.options();
    options.insert("image_store".into(), url);
    options.insert(
        "template_dir".into(),
        fx.path("templates").display().to_string(),
    );
    options.insert("pull_timeout_ms".into(), "3000".into());
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = ParallelsHost::with_pulls(
        HOST,
        ParallelsConfig::from_options(&options).unwrap(),
        pulls.clone(),
    );

    // An eviction asked while the pull runs is refused, naming what uses the template.
    let evicting = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pulls.progress(HOST, PULLED).is_none() {
            assert!(
                Instant::now() < deadline,
                "the pull never reported progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        host.evict_image(PULLED).await
    };
    let vm = recipe(6, PULLED, 2, 4096);
    let (e, refused) = tokio::join!(host.provision(&vm), evicting);
    match refused.unwrap_err() {
        DriverError::ImageInUse { users, .. } => {
            assert_eq!(
                users,
                vec!["a provisioning".to_owned(), "a pull".to_owned()]
            );
        }
        other => panic!("expected ImageInUse, got {other}"),
    }
    let e = e.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("pull_timeout_ms"), "{e}");
    // Half an archive was on the Mac: it and the marker are gone, nothing was registered.
    assert_eq!(template_dir(&fx), Vec::<String>::new());
    assert!(fx.state()["vms"].get(PULLED).is_none());
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(heard[0].error.is_some(), "{heard:?}");
    assert_eq!(pulls.progress(HOST, PULLED), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_pulls_a_template_no_vm_waits_for() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, archive)) = store_with_template(&fx) else {
        return;
    };
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = pulling_driver(&fx, &store, &pulls);
    assert_eq!(host.image_store(), Some(store.display().to_string()));

    host.pull_image(PULLED).await.unwrap();
    let heard_now = heard.lock().unwrap().clone();
    assert_eq!(heard_now.len(), 1, "{heard_now:?}");
    assert_eq!(heard_now[0].error, None);
    assert_eq!(heard_now[0].bytes, archive.len() as u64);
    assert!(
        host.probe()
            .await
            .unwrap()
            .images
            .contains(&PULLED.to_owned())
    );
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);
    // No VM was made for it, and a second push finds it there.
    assert_eq!(names(&host.list().await.unwrap()), vec!["someone-else"]);
    host.pull_image(PULLED).await.unwrap();
    assert_eq!(heard.lock().unwrap().len(), 1);

    // A template the store lacks is the request's fault, naming it; nothing is left.
    let e = host.pull_image("macos-99").await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Request, "{e}");
    assert!(e.to_string().contains("macos-99"), "{e}");
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);

    // A host without an image store takes no pushes or evictions.
    let plain = driver(&fx);
    assert_eq!(plain.image_store(), None);
    for e in [
        plain.pull_image(PULLED).await.unwrap_err(),
        plain.evict_image(PULLED).await.unwrap_err(),
    ] {
        assert!(matches!(e, DriverError::NoImageStore { .. }), "{e}");
        assert!(e.to_string().contains("image_store"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_waits_for_the_templates_clones_to_go_and_leaves_nothing() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, _)) = store_with_template(&fx) else {
        return;
    };
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    let host = pulling_driver(&fx, &store, &pulls);
    host.provision(&recipe(1, PULLED, 2, 4096)).await.unwrap();
    host.provision(&recipe(2, TEMPLATE, 2, 4096)).await.unwrap();
    assert_eq!(
        fx.state()["vms"]["berth-vm1"]["description"],
        "berth: linked clone of macos-16"
    );

    // berth-vm1 is a linked clone of it; berth-vm2 (another template's) and someone else's VM
    // are not.
    let e = host.evict_image(PULLED).await.unwrap_err();
    match &e {
        DriverError::ImageInUse { image, users, .. } => {
            assert_eq!(image, PULLED);
            assert_eq!(users, &vec!["vm berth-vm1".to_owned()]);
        }
        other => panic!("expected ImageInUse, got {other}"),
    }
    assert_eq!(e.kind(), FailureKind::Request);
    assert_eq!(fx.state()["vms"][PULLED]["template"], true);
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);

    // A berth VM that records no template (made before berth recorded it) may be a clone of
    // any template: it keeps them all.
    let mut state = fx.state();
    state["vms"]["berth-vm7"] = json!({"uuid": "{7}", "status": "stopped", "template": false,
        "os": "macosx", "cpus": 2, "memsize": 4096, "vnc": {"mode": "off"}});
    fx.set_state(&state);
    host.destroy("berth-vm1").await.unwrap();
    let e = host.evict_image(PULLED).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("berth-vm7 (its template is not recorded)"),
        "{e}"
    );
    host.destroy("berth-vm7").await.unwrap();

    // Nothing uses it now: unregistered, its bundle and marker gone.
    host.evict_image(PULLED).await.unwrap();
    let state = fx.state();
    assert!(state["vms"].get(PULLED).is_none(), "{state}");
    assert_eq!(template_dir(&fx), Vec::<String>::new());
    assert!(
        !host
            .probe()
            .await
            .unwrap()
            .images
            .contains(&PULLED.to_owned())
    );
    assert_eq!(state["vms"]["berth-vm2"]["status"], "running");

    // Gone, it is no such image; a template berth did not pull is not berth's to evict.
    let e = host.evict_image(PULLED).await.unwrap_err();
    assert!(matches!(e, DriverError::NoSuchImage { .. }), "{e}");
    assert!(
        e.to_string().contains("holds no base image macos-16"),
        "{e}"
    );
    let e = host.evict_image("macos-15").await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Request, "{e}");
    assert!(
        e.to_string().contains("not one berth pulled") && e.to_string().contains("template_dir"),
        "{e}"
    );
    assert_eq!(fx.state()["vms"]["macos-15"]["template"], true);

    // The next VM that needs it pulls it again.
    host.provision(&recipe(3, PULLED, 2, 4096)).await.unwrap();
    assert_eq!(heard.lock().unwrap().len(), 2);
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_cut_short_is_finished_by_the_next_pull() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, _)) = store_with_template(&fx) else {
        return;
    };
    let pulls = Pulls::default();
    let host = pulling_driver(&fx, &store, &pulls);
    host.pull_image(PULLED).await.unwrap();
    // An eviction that stopped after unregistering: its marker and the bundle are left.
    let mut state = fx.state();
    state["vms"].as_object_mut().unwrap().remove(PULLED);
    fx.set_state(&state);
    fs::write(fx.path("templates").join("macos-16.pvm.tar.pulling"), "").unwrap();
    // A pull removes them and pulls it whole, where a bundle without a marker would be refused.
    host.pull_image(PULLED).await.unwrap();
    assert_eq!(fx.state()["vms"][PULLED]["template"], true);
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);
}

/// A driver like [`pulling_driver`] whose pulled templates must fit in `budget_mib`.
fn budgeted_driver(
    fx: &Fixture,
    store: &std::path::Path,
    pulls: &Pulls,
    budget_mib: u64,
) -> ParallelsHost {
    let mut options = pulling_driver(fx, store, pulls).config().to_options();
    options.insert("image_budget_mib".into(), budget_mib.to_string());
    let config = ParallelsConfig::from_options(&options).unwrap();
    ParallelsHost::with_pulls(HOST, config, pulls.clone())
}

/// Sets the modification time of `file` in the Mac's template directory to `seconds` since
/// the epoch (a template that arrived, or was last cloned, then).
fn age(fx: &Fixture, file: &str, seconds: u64) {
    let path = fx.path("templates").join(file);
    let out = std::process::Command::new("touch")
        .args(["-m", "-d", &format!("@{seconds}")])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "touch {}: {out:?}", path.display());
}

fn registered(fx: &Fixture) -> Vec<String> {
    let state = fx.state();
    let mut names: Vec<String> = state["vms"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, vm)| vm["template"] == true)
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

/// Under `image_budget_mib`, a pull first evicts the least recently used templates that
/// nothing uses, and no more than needed; a template a linked clone was made from stays even if
/// it is the oldest; a pull that cannot fit fails with libvirt's words and evicts nothing. The
/// probe leaves the count on the board.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_evicts_unused_templates_least_recently_used_first_within_the_budget() {
    let Some(fx) = Fixture::start() else { return };
    let mut store = None;
    for name in ["tpl-a", "tpl-b", "tpl-c", "tpl-d"] {
        let Some((dir, _)) = fx.template_store(name) else {
            return;
        };
        store = Some(dir);
    }
    let store = store.unwrap();
    let pulls = Pulls::default();
    let heard = outcomes(&pulls);
    // Each template is a bundle of a 6 MiB disk: three fit in 19 MiB, four do not.
    let host = budgeted_driver(&fx, &store, &pulls, 19);
    for name in ["tpl-a", "tpl-b", "tpl-c"] {
        host.pull_image(name).await.unwrap();
    }
    // tpl-a backs a linked clone; it was last used long ago, before tpl-c arrived, and tpl-b
    // arrived last.
    host.provision(&recipe(1, "tpl-a", 2, 4096)).await.unwrap();
    assert!(fx.path("templates").join("tpl-a.pvm.used").exists());
    age(&fx, "tpl-a.pvm.used", 1_600_000_000);
    age(&fx, "tpl-c.pvm", 1_700_000_000);
    age(&fx, "tpl-b.pvm", 1_750_000_000);

    host.probe().await.unwrap();
    let held = pulls.held(HOST).expect("the probe counted the templates");
    assert_eq!(held.budget_bytes, Some(19 << 20));
    let seen: Vec<(&str, bool, u64)> = held
        .images
        .iter()
        .map(|h| (h.name.as_str(), h.in_use, h.last_used_s))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("tpl-a", true, 1_600_000_000),
            ("tpl-b", false, 1_750_000_000),
            ("tpl-c", false, 1_700_000_000)
        ]
    );
    assert!(held.images.iter().all(|h| h.bytes >= 6 << 20), "{held:?}");
    // A probe soon after shows the same count, though the Mac's files changed meanwhile:
    // counting again waits for its refresh, or for a pull or an eviction.
    age(&fx, "tpl-b.pvm", 1_760_000_000);
    host.probe().await.unwrap();
    assert_eq!(pulls.held(HOST).unwrap(), held);

    // tpl-d needs one to go: tpl-c, the least recently used of those nothing uses.
    host.pull_image("tpl-d").await.unwrap();
    assert_eq!(
        registered(&fx),
        vec!["macos-14", "macos-15", "tpl-a", "tpl-b", "tpl-d"],
        "tpl-c alone was evicted"
    );
    assert_eq!(
        template_dir(&fx),
        vec!["tpl-a.pvm", "tpl-a.pvm.used", "tpl-b.pvm", "tpl-d.pvm"]
    );
    assert_eq!(fx.state()["vms"]["berth-vm1"]["status"], "running");
    host.probe().await.unwrap();
    let counted: Vec<String> = pulls
        .held(HOST)
        .unwrap()
        .images
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(
        counted,
        ["tpl-a", "tpl-b", "tpl-d"],
        "the pull made the probe count again"
    );

    // In 10 MiB, tpl-c does not fit beside tpl-a, which its clone keeps: refused, with the
    // words libvirt's budget uses, and nothing is evicted.
    let tight = budgeted_driver(&fx, &store, &pulls, 10);
    let e = tight.pull_image("tpl-c").await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Host, "{e}");
    let dir = fx.path("templates").display().to_string();
    let text = e.to_string();
    assert!(
        text.contains(&format!("pulling template tpl-c into {dir}: tpl-c ("))
            && text.contains(
                "MiB) does not fit in the image budget of 10 MiB (image_budget_mib): images in \
                 use take 7 MiB (tpl-a 7 MiB)"
            ),
        "{e}"
    );
    assert_eq!(
        template_dir(&fx),
        vec!["tpl-a.pvm", "tpl-a.pvm.used", "tpl-b.pvm", "tpl-d.pvm"]
    );
    let failed = heard.lock().unwrap().last().cloned().unwrap();
    assert_eq!((failed.image.as_str(), failed.bytes), ("tpl-c", 0));
    assert!(failed.error.is_some());

    // Once the clone is gone, a pull within 13 MiB evicts what it needs, oldest first: tpl-a,
    // then tpl-b; tpl-d, the newest, stays.
    host.destroy("berth-vm1").await.unwrap();
    budgeted_driver(&fx, &store, &pulls, 13)
        .pull_image("tpl-c")
        .await
        .unwrap();
    assert_eq!(
        registered(&fx),
        vec!["macos-14", "macos-15", "tpl-c", "tpl-d"]
    );
    assert_eq!(template_dir(&fx), vec!["tpl-c.pvm", "tpl-d.pvm"]);
}

/// A Parallels host pulls from an `https://` store through the real TLS stack: refused, naming
/// the store and why, while no trusted root vouches for the server's certificate; pulled whole
/// once `image_store_ca` names the private CA that signed it; and a digest mismatch over https
/// is refused as over http, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_pulled_over_https_only_from_a_server_its_ca_vouches_for() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, archive)) = store_with_template(&fx) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let Some([ca, cert, key]) = berth_testkit::tls::private_ca(certs.path()) else {
        berth_testkit::skip_or_fail("openssl is not installed, so no certificate for the store");
        return;
    };
    let server = berth_testkit::tls::HttpsFiles::start(&store, &cert, &key);
    let url = server.url();
    let pulls = Pulls::default();
    let https_driver = |ca: Option<&std::path::Path>| {
        let mut options = fx.options();
        options.insert("image_store".into(), url.clone());
        if let Some(ca) = ca {
            options.insert("image_store_ca".into(), ca.display().to_string());
        }
        options.insert(
            "template_dir".into(),
            fx.path("templates").display().to_string(),
        );
        ParallelsHost::with_pulls(
            HOST,
            ParallelsConfig::from_options(&options).unwrap(),
            pulls.clone(),
        )
    };

    let e = https_driver(None).pull_image(PULLED).await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Request, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "image store {url}: macos-16.pvm.tar.sha256: the server's certificate was refused"
        )) && text.contains("image_store_ca"),
        "{e}"
    );
    assert_eq!(template_dir(&fx), Vec::<String>::new());

    let trusted = https_driver(Some(&ca));
    trusted.pull_image(PULLED).await.unwrap();
    assert_eq!(fx.state()["vms"][PULLED]["template"], true);
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);

    fs::write(store.join("macos-17.pvm.tar"), &archive).unwrap();
    fs::write(
        store.join("macos-17.pvm.tar.sha256"),
        format!(
            "{}  macos-17.pvm.tar\n",
            Sha256Digest::of(b"another archive")
        ),
    )
    .unwrap();
    let e = trusted.pull_image("macos-17").await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::Request, "{e}");
    assert!(
        e.to_string()
            .contains("macos-17.pvm.tar does not match its digest"),
        "{e}"
    );
    assert!(fx.state()["vms"].get("macos-17").is_none());
    assert_eq!(template_dir(&fx), vec!["macos-16.pvm"]);
}

//! Parallels hosts through the daemon: a real `sshd` started by the test
//! (`berth_testkit::sshd`) whose logins find the `prlctl`/`prlsrvctl` stand-in, added as
//! `parallels` hosts of a daemon and driven over its HTTP API.
//!
//! Each test skips, saying why, when sshd, ssh-keygen or python3 is missing, and the cut-link
//! test also without root or `ip` (network namespaces); with `BERTH_LIVE_TESTS=require` they
//! fail instead.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_testkit::sshd::{Fixture, TEMPLATE, bundle_disk, keygen};
use serde_json::{Value, json};

use crate::TestDaemon;

/// Probes every 200 ms; a probe may take 8 s (it runs three commands, each bounded by the
/// host's `command_timeout_ms`); three failures in a row put a host in error.
const PROBE_INTERVAL_MS: u64 = 200;
const PROBE_TIMEOUT_MS: u64 = 8_000;
const PROBE_FAILURES_MAX: u64 = 3;
/// How long one prlctl call may take on the cut-link test's host: a hung call on a dead link
/// ends after this; generous enough for a busy CI machine.
const COMMAND_TIMEOUT_MS: u64 = 3_000;

/// The daemon's configuration with one Parallels host per `(name, options)`, and a `macos`
/// template made from the stand-in's `macos-14` template VM.
fn config(hosts: &[(&str, BTreeMap<String, String>)]) -> String {
    let mut c = format!(
        "[sim]\nlatency_scale = 0.001\n\n\
         [scheduler]\nprobe_failures_max = {PROBE_FAILURES_MAX}\n\n\
         [probe]\ninterval_ms = {PROBE_INTERVAL_MS}\ntimeout_ms = {PROBE_TIMEOUT_MS}\n\
         startup_grace_ms = 0\n\n\
         [[tokens]]\nname = \"viewer\"\ntoken = \"viewer-token-0123456789\"\nrole = \"read-only\"\n\n\
         [[templates]]\nname = \"macos\"\nguest_os = \"macos\"\nbase_image = \"{TEMPLATE}\"\n\
         vcpus = 2\nmemory_mib = 4096\nslot = \"macos\"\n"
    );
    for (name, options) in hosts {
        c.push_str(&format!(
            "\n[[hosts]]\nname = \"{name}\"\ndriver = \"parallels\"\n[hosts.options]\n"
        ));
        for (k, v) in options {
            // A JSON string of plain text is a TOML basic string.
            c.push_str(&format!("{k} = {}\n", json!(v)));
        }
    }
    c
}

/// The driver options that reach the fixture's sshd, with timeouts short enough that a cut
/// link shows within seconds.
fn options(fx: &Fixture) -> BTreeMap<String, String> {
    let mut o = fx.options();
    o.insert("connect_timeout_ms".into(), "2000".into());
    o.insert("command_timeout_ms".into(), COMMAND_TIMEOUT_MS.to_string());
    o.insert("boot_timeout_ms".into(), "20000".into());
    o
}

fn berth_vms(fx: &Fixture) -> Vec<String> {
    let state = fx.state();
    let mut names: Vec<String> = state["vms"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|n| n.starts_with("berth-vm"))
        .cloned()
        .collect();
    names.sort();
    names
}

fn host_json(d: &TestDaemon, name: &str) -> Value {
    d.ok("GET", "/v1/hosts", None)["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

fn request_vms(d: &TestDaemon, request: u64) -> Vec<Value> {
    d.ok("GET", &format!("/v1/requests/{request}"), None)["vms"]
        .as_array()
        .unwrap()
        .clone()
}

fn submit(d: &TestDaemon, count: u32) -> u64 {
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "macos", "count": count})),
    );
    r["id"].as_u64().unwrap()
}

/// Waits up to `limit` for `f` to hold.
fn wait_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    berth_testkit::wait_for(what, limit, || f().then_some(()));
}

/// The daemon's event stream, collected in the background.
struct Events {
    seen: Arc<Mutex<Vec<Value>>>,
    _reader: JoinHandle<()>,
}

impl Events {
    fn subscribe(d: &TestDaemon) -> Events {
        let stream = d.api().events();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            for event in stream {
                sink.lock().unwrap().push(event);
            }
        });
        Events {
            seen,
            _reader: reader,
        }
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn parallels_vms_are_provisioned_destroyed_and_found_again_after_a_restart() {
    let Some(fx) = Fixture::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = config(&[("mac1", options(&fx))]);
    let d = TestDaemon::start(dir.path(), &config);

    // Capacity and slots come from the probe and the driver: the spec gave neither.
    d.wait_for("mac1 ready", |d| d.host_state("mac1") == "ready");
    let h = host_json(&d, "mac1");
    assert_eq!(h["vcpus_milli"], 10_000, "{h}");
    assert_eq!(h["memory_mib"], 32_768, "{h}");
    assert_eq!(h["slots"][0]["kind"], "macos", "{h}");
    assert_eq!(h["slots"][0]["capacity"], 2, "{h}");

    let r = submit(&d, 2);
    d.wait_for("two macOS vms running", |d| {
        let vms = request_vms(d, r);
        vms.len() == 2 && vms.iter().all(|v| v["state"] == "running")
    });
    let ids: Vec<u64> = request_vms(&d, r)
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    let names: Vec<String> = ids.iter().map(|id| format!("berth-vm{id}")).collect();
    assert_eq!(berth_vms(&fx), names);
    let state = fx.state();
    for n in &names {
        assert_eq!(state["vms"][n]["linked_from"], TEMPLATE, "{state}");
        assert_eq!(state["vms"][n]["status"], "running", "{state}");
    }
    // Two macOS guests per Mac: a third waits.
    let third = submit(&d, 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(request_vms(&d, third)[0]["state"], "queued");
    d.ok("DELETE", &format!("/v1/requests/{third}"), None);

    // The console: an operator gets the VNC password berth set, and that is audited.
    let c = d.ok("GET", &format!("/v1/vms/{}/console", ids[0]), None);
    assert_eq!(
        c["password"],
        fx.state()["vms"][&names[0]]["vnc"]["password"],
        "{c}"
    );
    let audit = d.ok("GET", "/v1/audit", None);
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "console_password" && a["target"] == names[0].as_str()),
        "{audit}"
    );
    let (status, c) = crate::call(
        &d.url,
        Some("viewer-token-0123456789"),
        "GET",
        &format!("/v1/vms/{}/console", ids[0]),
        None,
    );
    // A read-only token sees where the console is, not its password.
    assert_eq!(status, 200, "{c}");
    assert!(c["port"].as_u64().is_some(), "{c}");
    assert!(c["password"].is_null(), "{c}");

    // A VM berth has no record of appears while the daemon is down.
    d.stop();
    let mut state = fx.state();
    state["vms"]["berth-vm999"] = json!({"uuid": "{999}", "status": "running",
        "template": false, "os": "macosx", "cpus": 2, "memsize": 4096,
        "vnc": {"mode": "off"}});
    fx.set_state(&state);

    let d = TestDaemon::start(dir.path(), &config);
    // Reconciliation adopted the running VMs and keeps the orphan, which this journal never
    // created, until an operator destroys it; others' VMs stay.
    for id in &ids {
        assert_eq!(d.vm_state(*id), "running");
    }
    let orphans = d.ok("GET", "/v1/orphans", None);
    assert_eq!(orphans["orphans"][0]["name"], "berth-vm999", "{orphans}");
    assert_eq!(berth_vms(&fx).len(), names.len() + 1);
    d.ok("POST", "/v1/orphans/berth-vm999/destroy", None);
    d.wait_for("the orphan destroyed", |_| berth_vms(&fx) == names);
    assert!(fx.state()["vms"].get("someone-else").is_some());

    for id in &ids {
        d.ok(
            "POST",
            &format!("/v1/vms/{id}/result"),
            Some(json!({"passed": true})),
        );
    }
    d.wait_for("both destroyed on the Mac", |_| berth_vms(&fx).is_empty());
    d.wait_for("both done", |d| {
        ids.iter().all(|id| d.vm_state(*id) == "done")
    });
    assert!(fx.state()["vms"].get("someone-else").is_some());
}

/// A warm pool of one on a Mac: the request's VM runs in the warm VM's Parallels VM (its
/// console too), a restart keeps both, and its destroy removes that VM.
#[test]
fn a_parallels_warm_vm_is_handed_over_and_destroyed_as_the_requests() {
    let Some(fx) = Fixture::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[warm]]\ntemplate = \"macos\"\nclass = \"mac1\"\ncount = 1\n",
        config(&[("mac1", options(&fx))])
    );
    let d = TestDaemon::start(dir.path(), &config);
    let warm_running = |d: &TestDaemon| -> Vec<u64> {
        d.ok("GET", "/v1/vms?live=true", None)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["request"] == u64::MAX && v["state"] == "running")
            .map(|v| v["id"].as_u64().unwrap())
            .collect()
    };
    d.wait_for("a warm vm running", |d| warm_running(d).len() == 1);
    let warm = warm_running(&d)[0];
    let object = format!("berth-vm{warm}");
    assert_eq!(berth_vms(&fx), std::slice::from_ref(&object));

    let r = submit(&d, 1);
    d.wait_for("the request's vm running", |d| {
        request_vms(d, r)[0]["state"] == "running"
    });
    let vm = request_vms(&d, r)[0]["id"].as_u64().unwrap();
    assert_eq!(d.vm_state(warm), "done");
    let row = d.ok("GET", &format!("/v1/vms/{vm}"), None);
    assert_eq!(row["host_object"], object.as_str(), "{row}");
    // Its console is the warm VM's.
    let c = d.ok("GET", &format!("/v1/vms/{vm}/console"), None);
    assert_eq!(
        c["password"],
        fx.state()["vms"][&object]["vnc"]["password"],
        "{c}"
    );
    // The pool refills into the Mac's second slot; nothing was made under the VM's own name.
    d.wait_for("the pool refilled", |d| warm_running(d).len() == 1);
    let refill = warm_running(&d)[0];
    let mut both = vec![object.clone(), format!("berth-vm{refill}")];
    both.sort();
    assert_eq!(berth_vms(&fx), both);

    d.stop();
    let d = TestDaemon::start(dir.path(), &config);
    assert_eq!(d.vm_state(vm), "running");
    assert_eq!(warm_running(&d), [refill]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(berth_vms(&fx), both);
    assert_eq!(d.ok("GET", "/v1/orphans", None)["orphans"], json!([]));

    d.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
    d.wait_for("its parallels vm destroyed", |_| {
        berth_vms(&fx) == [format!("berth-vm{refill}")]
    });
    d.wait_for("the request's vm done", |d| d.vm_state(vm) == "done");
}

#[test]
fn a_parallels_host_whose_key_changed_is_refused_naming_the_host() {
    let Some(fx) = Fixture::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &config(&[]));
    let events = Events::subscribe(&d);

    // The daemon's default known_hosts file (in its data directory) holds another key for
    // the Mac's address, as after a reinstall or an attack.
    let other_key = keygen(&fx.path("other_host_key"));
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[{}]:{} {other_key}\n", fx.listen_ip, fx.port),
    )
    .unwrap();
    let mut opts = options(&fx);
    opts.remove("known_hosts");
    // Through the CLI's request shape: capacity left to the probe.
    let added = d.ok(
        "POST",
        "/v1/hosts",
        Some(json!({"name": "mac-rekeyed", "driver": "parallels", "options": opts})),
    );
    assert_eq!(added["state"], "unknown", "{added}");
    d.wait_for("mac-rekeyed in error", |d| {
        d.host_state("mac-rekeyed") == "error"
    });
    let event = events
        .all()
        .into_iter()
        .find(|e| e["kind"] == "host" && e["name"] == "mac-rekeyed" && e["to"] == "error")
        .expect("an event for the host going to error");
    let cause = event["cause"].as_str().unwrap();
    assert!(cause.contains("mac-rekeyed"), "{cause}");
    assert!(cause.contains("host key"), "{cause}");
    assert!(cause.contains("refusing"), "{cause}");
    // Never accepted: the file holds only the key it had.
    let kh = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(kh.lines().count(), 1, "{kh}");

    // Bad options are a 400 naming the option, before anything is journaled.
    let (status, e) = d.call(
        "POST",
        "/v1/hosts",
        Some(json!({"name": "mac9", "driver": "parallels", "options": {"ssh": "ci@mac9", "colour": "red"}})),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("options.colour")),
        "{e}"
    );
    let (status, e) = d.call(
        "POST",
        "/v1/hosts",
        Some(json!({"name": "mac9", "driver": "parallels"})),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("options.ssh")),
        "{e}"
    );
}

#[test]
fn a_parallels_host_with_a_cut_link_goes_to_error_and_its_vms_are_retried_elsewhere() {
    let Some(fx) = Fixture::start_in_netns() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(dir.path(), &config(&[("mac1", options(&fx))]));
    d.wait_for("mac1 ready", |d| d.host_state("mac1") == "ready");
    let r = submit(&d, 1);
    d.wait_for("the vm running on mac1", |d| {
        let vms = request_vms(d, r);
        vms[0]["state"] == "running" && vms[0]["host"] == "mac1"
    });
    let first = request_vms(&d, r)[0]["id"].as_u64().unwrap();
    let first_name = format!("berth-vm{first}");
    assert_eq!(berth_vms(&fx), vec![first_name.clone()]);

    // Somewhere else to go: a simulated Mac that holds the template.
    d.ok(
        "POST",
        "/v1/hosts",
        Some(
            json!({"name": "sim-mac", "driver": "sim", "vcpus": 12, "memory_mib": 32768,
                    "slots": {"macos": 2}, "images": [TEMPLATE]}),
        ),
    );
    d.wait_for("sim-mac ready", |d| d.host_state("sim-mac") == "ready");

    fx.netns.as_ref().unwrap().set_link(false);
    let cut = Instant::now();
    // Each failed probe ends within the probe timeout, then the next starts an interval
    // later; a second of slack for a busy machine.
    let threshold = Duration::from_millis(
        PROBE_FAILURES_MAX * (PROBE_TIMEOUT_MS + PROBE_INTERVAL_MS) + PROBE_INTERVAL_MS + 1_000,
    );
    wait_within("mac1 in error", threshold, || {
        d.host_state("mac1") == "error"
    });
    eprintln!("mac1 in error {:?} after the link was cut", cut.elapsed());
    assert_eq!(d.vm_state(first), "lost");
    d.wait_for("the request's replacement running on sim-mac", |d| {
        request_vms(d, r)
            .iter()
            .any(|v| v["id"] != first && v["state"] == "running" && v["host"] == "sim-mac")
    });

    fx.netns.as_ref().unwrap().set_link(true);
    wait_within("mac1 ready again", Duration::from_secs(60), || {
        d.host_state("mac1") == "ready"
    });
    // The lost VM could not be destroyed while the link was down; now it is.
    wait_within("the lost vm destroyed", Duration::from_secs(30), || {
        berth_vms(&fx).is_empty()
    });
}

/// A Mac that lacks a template pulls it from the image store in `[drivers]`, once for the two
/// VMs that need it; the VMs waiting for it show the pull as their detail, and the pull reaches
/// the metrics.
#[test]
fn a_parallels_host_pulls_a_missing_template_once_and_shows_it_as_the_vms_detail() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, _)) = fx.template_store("macos-16") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&fx);
    opts.insert(
        "template_dir".into(),
        fx.path("templates").display().to_string(),
    );
    let mut config = config(&[("mac1", opts)]);
    config.push_str(&format!(
        "\n[[templates]]\nname = \"macos16\"\nguest_os = \"macos\"\nbase_image = \"macos-16\"\n\
         vcpus = 2\nmemory_mib = 4096\nslot = \"macos\"\n\n[drivers]\nimage_store = {}\n",
        json!(store.display().to_string())
    ));
    let d = TestDaemon::start(dir.path(), &config);
    d.wait_for("mac1 ready", |d| d.host_state("mac1") == "ready");

    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "macos16", "count": 2})),
    )["id"]
        .as_u64()
        .unwrap();
    let mut details = Vec::new();
    wait_within(
        "two vms of the pulled template running",
        Duration::from_secs(60),
        || {
            let vms = request_vms(&d, r);
            for v in &vms {
                if let Some(id) = v["id"].as_u64() {
                    let vm = d.ok("GET", &format!("/v1/vms/{id}"), None);
                    if let Some(detail) = vm["detail"].as_str() {
                        details.push(detail.to_owned());
                    }
                }
            }
            vms.len() == 2 && vms.iter().all(|v| v["state"] == "running")
        },
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("pulling macos-16.pvm.tar ") && d.ends_with('%')),
        "{details:?}"
    );
    let state = fx.state();
    assert_eq!(state["vms"]["macos-16"]["template"], true, "{state}");
    for name in berth_vms(&fx) {
        assert_eq!(state["vms"][&name]["linked_from"], "macos-16", "{state}");
    }
    let metrics = ureq::get(&format!("{}/metrics", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_image_pulls_total{")
                && l.contains("host=\"mac1\"")
                && l.contains("outcome=\"ok\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// An image store served over HTTP by the test from directory `dir`, which stops half way
/// through the first download of `stalled` until [`StallingStore::release`]; it counts the
/// downloads of each file.
struct StallingStore {
    url: String,
    downloads: Arc<Mutex<BTreeMap<String, u32>>>,
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl StallingStore {
    fn serve(dir: &Path, stalled: &str) -> StallingStore {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let downloads = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let (dir, stalled) = (dir.to_owned(), stalled.to_owned());
        let (counts, gate) = (downloads.clone(), released.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (dir, stalled) = (dir.clone(), stalled.clone());
                let (counts, gate) = (counts.clone(), gate.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &dir, &stalled, &counts, &gate);
                });
            }
        });
        StallingStore {
            url,
            downloads,
            released,
        }
    }

    fn release(&self) {
        let (released, cv) = &*self.released;
        *released.lock().unwrap() = true;
        cv.notify_all();
    }

    fn downloads(&self, file: &str) -> u32 {
        self.downloads
            .lock()
            .unwrap()
            .get(file)
            .copied()
            .unwrap_or(0)
    }
}

/// Answers one `GET /FILE` of a [`StallingStore`], then closes the connection.
fn answer(
    mut conn: TcpStream,
    dir: &Path,
    stalled: &str,
    counts: &Mutex<BTreeMap<String, u32>>,
    gate: &(Mutex<bool>, Condvar),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let file = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    // The headers, up to the blank line.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let Ok(body) = std::fs::read(dir.join(&file)) else {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let n = {
        let mut counts = counts.lock().unwrap();
        let n = counts.entry(file.clone()).or_insert(0);
        *n += 1;
        *n
    };
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    let half = if file == stalled && n == 1 {
        body.len() / 2
    } else {
        body.len()
    };
    conn.write_all(&body[..half])?;
    conn.flush()?;
    let (released, cv) = gate;
    if half < body.len() {
        let mut released = released.lock().unwrap();
        while !*released {
            released = cv.wait(released).unwrap();
        }
    }
    conn.write_all(&body[half..])
}

/// The daemon's count of mac1's pulls with `outcome`.
fn pulls(d: &TestDaemon, outcome: &str) -> u64 {
    d.metrics_text()
        .lines()
        .find(|l| {
            l.starts_with("berth_image_pulls_total{")
                && l.contains("host=\"mac1\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The Mac restarts (sshd and everything it runs killed at once, as in a power cut) while it
/// pulls a template, half of the archive written: the pull fails, the daemon cannot clean up
/// while the Mac is down, so the partial archive stays beside its marker. Once the Mac is back
/// the request's VM is retried there; its pull removes the partial copy, pulls the whole archive
/// again and registers that, and the VM runs on it; nothing of the cut pull remains.
#[test]
fn a_mac_restarted_in_the_middle_of_a_pull_gets_the_whole_template_and_the_vm_is_retried() {
    let Some(mut fx) = Fixture::start() else {
        return;
    };
    let Some((store_dir, archive)) = fx.template_store("macos-16") else {
        return;
    };
    let file = "macos-16.pvm.tar";
    let store = StallingStore::serve(&store_dir, file);
    let templates = fx.path("templates");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&fx);
    opts.insert("template_dir".into(), templates.display().to_string());
    let mut config = config(&[("mac1", opts)]);
    config.push_str(&format!(
        "\n[[templates]]\nname = \"macos16\"\nguest_os = \"macos\"\nbase_image = \"macos-16\"\n\
         vcpus = 2\nmemory_mib = 4096\nslot = \"macos\"\n\n[drivers]\nimage_store = {}\n",
        json!(store.url)
    ));
    let d = TestDaemon::start(dir.path(), &config);
    d.wait_for("mac1 ready", |d| d.host_state("mac1") == "ready");

    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "macos16", "count": 1})),
    )["id"]
        .as_u64()
        .unwrap();
    let first = request_vms(&d, r)[0]["id"].as_u64().unwrap();
    // The store stalls half way: on the Mac, half an archive beside the pull's marker.
    let partial = templates.join(file);
    let marker = templates.join(format!("{file}.pulling"));
    let half = (archive.len() / 2) as u64;
    d.wait_for("half the archive on the mac", |_| {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() == half)
    });
    assert!(marker.exists(), "no pull marker beside the partial archive");
    let vm = d.ok("GET", &format!("/v1/vms/{first}"), None);
    assert_eq!(vm["state"], "provisioning", "{vm}");
    assert!(
        vm["detail"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("pulling {file} "))),
        "{vm}"
    );

    fx.stop_host();
    d.wait_for("mac1 in error", |d| d.host_state("mac1") == "error");
    assert_eq!(d.vm_state(first), "lost");
    // The rest of the archive reaches the pull, which has nowhere to write it.
    store.release();
    d.wait_for("the cut pull counted as failed", |d| {
        pulls(d, "failed") == 1
    });
    // Nobody could remove what it left while the Mac was down.
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half);
    assert!(marker.exists());
    assert!(fx.state()["vms"].get("macos-16").is_none());

    fx.start_host();
    let back = Instant::now();
    wait_within(
        "the request's vm running on mac1 again",
        Duration::from_secs(60),
        || {
            request_vms(&d, r)
                .iter()
                .any(|v| v["state"] == "running" && v["host"] == "mac1")
        },
    );
    eprintln!(
        "the retried vm running {:?} after the mac came back",
        back.elapsed()
    );
    let vms = request_vms(&d, r);
    let running: Vec<&Value> = vms.iter().filter(|v| v["state"] == "running").collect();
    assert_eq!(running.len(), 1, "{vms:?}");
    assert_ne!(running[0]["id"], first, "{vms:?}");

    // The template registered is the whole one, pulled again from the start.
    let state = fx.state();
    let template = &state["vms"]["macos-16"];
    assert_eq!(template["template"], true, "{state}");
    let home = Path::new(template["home"].as_str().unwrap());
    assert_eq!(home, templates.join("macos-16.pvm"));
    assert!(
        std::fs::read(home.join("harddisk.hdd/disk.hds")).unwrap() == bundle_disk(),
        "the registered template's disk is not the store's"
    );
    let name = format!("berth-vm{}", running[0]["id"]);
    assert_eq!(state["vms"][&name]["linked_from"], "macos-16", "{state}");
    assert_eq!(store.downloads(file), 2);
    assert_eq!((pulls(&d, "ok"), pulls(&d, "failed")), (1, 1));
    // Nothing half-present: the template directory holds the bundle alone.
    let mut left: Vec<String> = std::fs::read_dir(&templates)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["macos-16.pvm"]);
    // The lost VM, which never got past its pull, left nothing on the Mac either.
    wait_within(
        "only the retried vm on the mac",
        Duration::from_secs(30),
        || berth_vms(&fx) == [name.clone()],
    );
}

#[test]
fn a_template_is_pushed_to_a_parallels_host_and_evicted_from_it() {
    let Some(fx) = Fixture::start() else { return };
    let Some((store, _)) = fx.template_store("macos-16") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&fx);
    opts.insert(
        "template_dir".into(),
        fx.path("templates").display().to_string(),
    );
    let mut config = config(&[("mac1", opts)]);
    config.push_str(&format!(
        "\n[drivers]\nimage_store = {}\n",
        json!(store.display().to_string())
    ));
    let d = TestDaemon::start(dir.path(), &config);
    d.wait_for("mac1 ready", |d| d.host_state("mac1") == "ready");

    // The store's template archive is an image the daemon knows, with its digest.
    let image = d.ok("GET", "/v1/images/macos-16", None);
    assert!(
        image["digest"].as_str().is_some_and(|d| d.len() == 64),
        "{image}"
    );
    // Pushed with no VM waiting: registered on the Mac, and the host's probe shows it.
    let started = d.ok(
        "POST",
        "/v1/images/macos-16/push",
        Some(json!({"driver": "parallels"})),
    );
    assert_eq!(started["started"], json!(["mac1"]));
    wait_within("mac1 holds macos-16", Duration::from_secs(60), || {
        host_json(&d, "mac1")["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "macos-16")
    });
    assert_eq!(fx.state()["vms"]["macos-16"]["template"], true);
    assert!(berth_vms(&fx).is_empty());

    // A template berth did not pull is not its to evict; the pushed one goes, bundle and all.
    let (status, e) = d.call(
        "POST",
        "/v1/images/macos-14/evict",
        Some(json!({"host": "mac1"})),
    );
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not one berth pulled"),
        "{e}"
    );
    d.ok(
        "POST",
        "/v1/images/macos-16/evict",
        Some(json!({"host": "mac1"})),
    );
    assert!(fx.state()["vms"].get("macos-16").is_none());
    assert_eq!(std::fs::read_dir(fx.path("templates")).unwrap().count(), 0);
    let (status, e) = d.call(
        "POST",
        "/v1/images/macos-16/evict",
        Some(json!({"host": "mac1"})),
    );
    assert_eq!(status, 404, "{e}");
}

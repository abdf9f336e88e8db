//! Real QEMU guests through `berth serve` (issue 6): the `berth` binary built with the
//! `libvirt` feature runs with one libvirt host at `qemu:///system` and a template that asks
//! for domain type `qemu` (so no KVM is needed), and boots the tiny guest of
//! `ci/build-guest.sh`, whose init prints `BERTH-GUEST-UP` on its serial console.
//!
//! Through the HTTP API: two VMs are requested and must print the marker in their serial
//! logs (a "running" state alone proves nothing) and be `qemu` domains, a screenshot must come
//! back as a PNG, a failed job of a request with `hold_on_failure` must keep its domain running
//! until it is released, its serial log must be readable through the API and `berth vm
//! serial`, and every domain must be gone with its overlay at the end.
//!
//! A second test adds a remote libvirt host to a running daemon with `berth host add --driver
//! libvirt --uri qemu+ssh://...`: the same libvirtd, reached through a real sshd on loopback
//! (`berth_testkit::sshd`) with its host key checked, runs a guest to its marker.
//!
//! Reads `BERTH_LIBVIRT_URI` (default `qemu:///system`), `BERTH_GUEST_IMAGE` (default
//! `target/guest/tiny.qcow2` in the workspace) and `BERTH_LIVE_TESTS=require` (fail instead of
//! skipping when libvirtd or the image is missing). The daemon owns every `berth-vm*` domain
//! at that URI while it runs (it destroys those it has no record of at start), so nothing else
//! may run berth VMs there meanwhile: the two tests take a file lock in the temporary
//! directory for their whole run.
// Test code: a failure should stop the test where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::LiveLibvirt;
use berth_testkit::sshd::{Fixture, LibvirtSsh};
use serde_json::{Value, json};

const MARKER: &str = "BERTH-GUEST-UP";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
/// Two guests booting at once under TCG on two shared cores take about half a minute.
const BOOT_WAIT: Duration = Duration::from_secs(300);

/// Holds the machine-wide lock of these tests: a daemon destroys the `berth-vm*` domains it
/// has no record of, and every daemon numbers its VMs from 1, so two may not share a libvirtd.
/// A file lock serialises them under any test runner (nextest runs each test in a process).
fn libvirtd_to_ourselves() -> std::fs::File {
    let path = std::env::temp_dir().join("berth-libvirt-e2e.lock");
    let file = std::fs::File::create(&path).unwrap();
    file.lock().unwrap();
    file
}

fn virsh(uri: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("virsh")
        .args(["-c", uri])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The domain's state (`running`, `shut off`), or `None` when there is no such domain.
fn domstate(uri: &str, name: &str) -> Option<String> {
    virsh(uri, &["domstate", name])
}

/// The config of the one libvirt host `local` at `uri`, its images in `images`.
fn local_host(uri: &str, images: &Path) -> String {
    format!(
        r#"
[[hosts]]
name = "local"
driver = "libvirt"
# CI machines have two cores: three 1-vCPU guests share them.
cpu_overcommit_milli = 4000
[hosts.options]
uri = "{uri}"
image_dir = "{images}"
boot_marker = "{MARKER}"
boot_timeout_ms = "240000"
min_free_disk_mib = "64"
"#,
        images = images.display()
    )
}

/// A `berth serve` process with its directories; dropping it stops the daemon and removes
/// whatever a failed test left on the host.
struct Serve {
    daemon: berth_testkit::Serve,
    uri: String,
    url: String,
    token: String,
    images: tempfile::TempDir,
    /// Holds the daemon's directory; declared last, so it goes after the daemon stopped.
    _data: tempfile::TempDir,
}

impl Serve {
    /// A daemon with one libvirt host at `uri` from its config file.
    fn start(uri: &str, image: &Path) -> Serve {
        Serve::start_with(uri, image, |images| local_host(uri, images))
    }

    /// A daemon whose config file ends with `hosts(image_dir)`; `uri` is where the test looks
    /// behind its back, and cleans up.
    fn start_with(uri: &str, image: &Path, hosts: impl FnOnce(&Path) -> String) -> Serve {
        // QEMU runs as another user: it must reach the image directory and read the base.
        let images = tempfile::Builder::new()
            .prefix("berth-e2e-images")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::set_permissions(images.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let base = images.path().join("tiny.qcow2");
        std::fs::copy(image, &base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o644)).unwrap();
        let data = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{hosts}
[probe]
interval_ms = 1000
timeout_ms = 60000
startup_grace_ms = 0

[[templates]]
name = "tiny"
guest_os = "linux"
base_image = "tiny"
drivers = ["libvirt"]
vcpus = 1
memory_mib = 256
expected_boot_ms = 10000
# The template asks for emulation; the host's default domain type (kvm) would hang here.
domain_type = "qemu"
"#,
            hosts = hosts(images.path())
        );
        let daemon = berth_testkit::Serve::start(
            Path::new(env!("CARGO_BIN_EXE_berth")),
            data.path(),
            &config,
        );
        Serve {
            uri: uri.to_owned(),
            url: daemon.url.clone(),
            token: daemon.token.clone(),
            daemon,
            images,
            _data: data,
        }
    }

    fn log(&self) -> String {
        self.daemon.log()
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> ureq::Response {
        let req = ureq::request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => panic!(
                "{method} {path}: {code} {}\n{}",
                r.into_string().unwrap_or_default(),
                self.log()
            ),
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log()),
        }
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.request(method, path, body).into_json().unwrap()
    }

    fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut(&Serve) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // What the daemon thinks of its hosts and requests says why, beside its log.
        let hosts = self.ok("GET", "/v1/hosts", None);
        let requests = self.ok("GET", "/v1/requests", None);
        panic!(
            "timed out after {limit:?} waiting for {what}\nhosts: {hosts}\nrequests: {requests}\n{}",
            self.log()
        );
    }

    fn vm(&self, id: u64) -> Value {
        self.ok("GET", &format!("/v1/vms/{id}"), None)
    }

    fn request_vms(&self, request: u64) -> Vec<Value> {
        self.ok("GET", &format!("/v1/requests/{request}"), None)["vms"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.images.path().join(name)
    }

    /// Stops the daemon as an operator would (SIGTERM) and waits for it.
    fn stop(&mut self) {
        self.daemon.terminate();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
        // Domains whose disks are in this test's image directory, then the transient pool the
        // driver started on it.
        let dir = self.images.path().display().to_string();
        let names = virsh(&self.uri, &["list", "--all", "--name"]).unwrap_or_default();
        for name in names.lines().filter(|n| n.starts_with("berth-vm")) {
            if virsh(&self.uri, &["dumpxml", name]).is_some_and(|x| x.contains(&dir)) {
                let _ = virsh(&self.uri, &["destroy", name]);
                let _ = virsh(&self.uri, &["undefine", name]);
            }
        }
        let pool: String = dir
            .trim_matches('/')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let _ = virsh(&self.uri, &["pool-destroy", &format!("berth-{pool}")]);
    }
}

#[test]
fn berth_serve_boots_real_guests_holds_a_failed_one_and_cleans_up() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let _lock = libvirtd_to_ourselves();
    let started = Instant::now();
    let mut serve = Serve::start(&uri, &image);

    // The host's capacity comes from its probe (the config gives none).
    serve.wait_for("the libvirt host ready", Duration::from_secs(60), |s| {
        s.ok("GET", "/v1/hosts", None)["hosts"][0]["state"] == "ready"
    });
    let host = &serve.ok("GET", "/v1/hosts", None)["hosts"][0];
    assert_eq!(host["driver"], "libvirt", "{host}");
    assert!(host["vcpus_milli"].as_i64().unwrap() >= 1000, "{host}");

    let r = serve.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "tiny", "count": 2})),
    );
    let r = r["id"].as_u64().unwrap();
    serve.wait_for("two guests running", BOOT_WAIT, |s| {
        let vms = s.request_vms(r);
        vms.len() == 2 && vms.iter().all(|v| v["state"] == "running")
    });
    let ids: Vec<u64> = serve
        .request_vms(r)
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    for id in &ids {
        let name = format!("berth-vm{id}");
        // The daemon waited for the marker; check it independently in the serial log.
        let log =
            std::fs::read_to_string(serve.file(&format!("{name}.serial.log"))).unwrap_or_default();
        assert!(log.contains(MARKER), "{name}'s serial log: {log:?}");
        assert_eq!(domstate(&uri, &name).as_deref(), Some("running"));
        let xml = virsh(&uri, &["dumpxml", &name]).unwrap_or_default();
        assert!(
            xml.contains("<domain type='qemu'"),
            "{name} has the template's domain type: {xml}"
        );
        // Its disk is an overlay, not a copy.
        let overlay = std::fs::metadata(serve.file(&format!("{name}.qcow2"))).unwrap();
        let base = std::fs::metadata(serve.file("tiny.qcow2")).unwrap();
        assert!(
            overlay.len() < base.len(),
            "{name}: {} bytes",
            overlay.len()
        );
    }
    eprintln!(
        "two guests printed {MARKER} {:?} after start",
        started.elapsed()
    );

    let resp = serve.request("GET", &format!("/v1/vms/{}/screenshot", ids[0]), None);
    assert_eq!(resp.header("content-type"), Some("image/png"));
    let mut png = Vec::new();
    resp.into_reader().read_to_end(&mut png).unwrap();
    assert!(png.starts_with(PNG_SIGNATURE), "{} bytes", png.len());
    assert!(png.len() > 100, "{} bytes", png.len());

    let console = serve.ok("GET", &format!("/v1/vms/{}/console", ids[0]), None);
    assert!(console["port"].as_u64().unwrap() >= 5900, "{console}");
    assert_eq!(
        console["password"].as_str().map(str::len),
        Some(8),
        "{console}"
    );

    // A failed job of a request that holds failures: the VM stays up until released.
    let held = serve.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "tiny", "count": 1, "hold_on_failure": true})),
    );
    let held = held["id"].as_u64().unwrap();
    serve.wait_for("the third guest running", BOOT_WAIT, |s| {
        s.request_vms(held)[0]["state"] == "running"
    });
    let h = serve.request_vms(held)[0]["id"].as_u64().unwrap();
    let h_name = format!("berth-vm{h}");
    serve.ok(
        "POST",
        &format!("/v1/vms/{h}/result"),
        Some(json!({"passed": false})),
    );
    assert_eq!(serve.vm(h)["state"], "held");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(serve.vm(h)["state"], "held");
    assert_eq!(domstate(&uri, &h_name).as_deref(), Some("running"));
    let log =
        std::fs::read_to_string(serve.file(&format!("{h_name}.serial.log"))).unwrap_or_default();
    assert!(log.contains(MARKER), "{h_name}'s serial log: {log:?}");
    // The developer reads the held guest's serial log through the API and the CLI.
    let resp = serve.request("GET", &format!("/v1/vms/{h}/serial"), None);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let whole: usize = resp.header("x-berth-log-bytes").unwrap().parse().unwrap();
    let api_log = resp.into_string().unwrap();
    assert!(
        api_log.contains(MARKER),
        "serial log through the API: {api_log:?}"
    );
    assert_eq!(api_log.len(), whole);
    let tail = serve
        .request("GET", &format!("/v1/vms/{h}/serial?tail_bytes=8"), None)
        .into_string()
        .unwrap();
    assert_eq!(tail, api_log[api_log.len() - 8..]);
    let cli = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["vm", "serial", &h.to_string(), "--url", &serve.url])
        .env("BERTH_TOKEN", &serve.token)
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    assert!(
        String::from_utf8_lossy(&cli.stdout).contains(MARKER),
        "berth vm serial: {cli:?}"
    );

    serve.ok("POST", &format!("/v1/vms/{h}/release"), Some(json!({})));
    for id in &ids {
        serve.ok(
            "POST",
            &format!("/v1/vms/{id}/result"),
            Some(json!({"passed": true})),
        );
    }
    let all: Vec<u64> = ids.iter().copied().chain([h]).collect();
    serve.wait_for("every domain gone", Duration::from_secs(120), |_| {
        all.iter()
            .all(|id| domstate(&uri, &format!("berth-vm{id}")).is_none())
    });
    for id in &all {
        let name = format!("berth-vm{id}");
        assert!(
            !serve.file(&format!("{name}.qcow2")).exists(),
            "{name}'s overlay"
        );
        assert!(
            !serve.file(&format!("{name}.serial.log")).exists(),
            "{name}'s serial log"
        );
    }
    serve.wait_for("every vm ended", Duration::from_secs(30), |s| {
        all.iter()
            .all(|id| matches!(s.vm(*id)["state"].as_str(), Some("done" | "failed")))
    });
    assert!(serve.file("tiny.qcow2").exists(), "the base image is kept");
    serve.stop();
    eprintln!("whole run {:?}", started.elapsed());
}

/// A remote libvirt host, as operators add one: `berth host add --driver libvirt --uri
/// qemu+ssh://...` on a running daemon. The "remote" libvirtd is this machine's, reached through
/// a real sshd on loopback with its host key checked, so everything the driver does (probe,
/// overlay, definition, serial log, destroy) crosses SSH.
#[test]
fn berth_host_add_runs_a_guest_on_a_libvirt_host_over_ssh() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let Some(fx) = Fixture::start() else {
        return;
    };
    let _lock = libvirtd_to_ourselves();
    let known_hosts = fx.known_hosts_with("known_hosts", &fx.host_key());
    let ssh_uri = fx.libvirt_uri(LibvirtSsh::Ssh, &known_hosts);
    let serve = Serve::start_with(&uri, &image, |_| "hosts = []\n".to_owned());

    let berth = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .args(["--url", &serve.url])
            .env("BERTH_TOKEN", &serve.token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth {args:?}: {out:?}\n{}",
            serve.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let images = serve.images.path().display().to_string();
    berth(&[
        "host",
        "add",
        "remote",
        "--driver",
        "libvirt",
        "--uri",
        &ssh_uri,
        "--image-dir",
        &images,
        "--option",
        &format!("boot_marker={MARKER}"),
        "--option",
        "boot_timeout_ms=240000",
        "--option",
        "min_free_disk_mib=64",
    ]);
    serve.wait_for("the host probed over ssh", Duration::from_secs(60), |s| {
        s.ok("GET", "/v1/hosts", None)["hosts"][0]["state"] == "ready"
    });
    let r = serve.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "tiny", "count": 1})),
    );
    let r = r["id"].as_u64().unwrap();
    serve.wait_for("the guest running", BOOT_WAIT, |s| {
        s.request_vms(r)[0]["state"] == "running"
    });
    let vm = serve.request_vms(r)[0]["id"].as_u64().unwrap();
    assert_eq!(serve.request_vms(r)[0]["host"], "remote");
    // Booting waited for the marker in the log read through libvirt over SSH; the API reads it
    // the same way.
    let log = berth(&["vm", "serial", &vm.to_string()]);
    assert!(log.contains(MARKER), "serial log over ssh: {log:?}");
    let name = format!("berth-vm{vm}");
    let xml = virsh(&uri, &["dumpxml", &name]).unwrap_or_default();
    assert!(xml.contains("<domain type='qemu'"), "{xml}");
    let console = serve.ok("GET", &format!("/v1/vms/{vm}/console"), None);
    assert_eq!(console["host"], fx.listen_ip.as_str(), "{console}");

    serve.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
    serve.wait_for("the domain gone", Duration::from_secs(120), |_| {
        domstate(&uri, &name).is_none()
    });
    assert!(
        !serve.file(&format!("{name}.qcow2")).exists(),
        "overlay removed"
    );
    let sshd_log = fx.log();
    assert!(
        sshd_log.contains(&format!("Accepted publickey for {}", fx.user)),
        "every call crossed sshd: {sshd_log}"
    );
}

/// An HTTP image store on loopback that serves the files in `dir` slowly (64 KiB every 30
/// ms, about 2 MB/s), so that a pull of the tiny guest takes seconds and its progress shows.
fn slow_http_store(dir: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                reader.read_line(&mut line).unwrap_or_default();
                // The rest of the head, up to the empty line.
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap_or(0) > 2 {
                    header.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let Ok(body) = std::fs::read(dir.join(path.trim_start_matches('/'))) else {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in body.chunks(64 * 1024) {
                    if conn.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
            });
        }
    });
    url
}

#[test]
fn berth_serve_pulls_a_missing_base_image_from_a_store_and_shows_its_progress() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let _lock = libvirtd_to_ourselves();
    // The store holds `pulled`, which the host's image directory lacks.
    let store = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(store.path().join("pulled.qcow2"), &bytes).unwrap();
    let digest = berth_drivers::images::Sha256Digest::of(&bytes);
    std::fs::write(
        store.path().join("pulled.qcow2.sha256"),
        format!("{digest}  pulled.qcow2\n"),
    )
    .unwrap();
    let store_url = slow_http_store(store.path().to_owned());
    let serve = Serve::start_with(&uri, &image, |images| {
        format!(
            r#"
[drivers]
image_store = "{store_url}"

{host}
[[templates]]
name = "pulled"
guest_os = "linux"
base_image = "pulled"
drivers = ["libvirt"]
vcpus = 1
memory_mib = 256
expected_boot_ms = 10000
domain_type = "qemu"
"#,
            host = local_host(&uri, images)
        )
    });
    assert!(!serve.file("pulled.qcow2").exists());
    let r = serve.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "pulled", "count": 2})),
    );
    let r = r["id"].as_u64().unwrap();
    // While the image travels, a VM's detail says how far it has come.
    let mut seen = Vec::new();
    serve.wait_for("a pull in progress", Duration::from_secs(60), |s| {
        for v in s.request_vms(r) {
            let d = s.vm(v["id"].as_u64().unwrap());
            if let Some(detail) = d["detail"].as_str() {
                seen.push(detail.to_owned());
            }
        }
        seen.iter().any(|d| d.starts_with("pulling pulled.qcow2 "))
    });
    let vm = serve.request_vms(r)[0]["id"].as_u64().unwrap();
    serve.wait_for("both guests running", BOOT_WAIT, |s| {
        s.request_vms(r).iter().all(|v| v["state"] == "running")
    });
    // The pulled image is the store's, byte for byte, and both VMs' overlays sit on it.
    let pulled = std::fs::read(serve.file("pulled.qcow2")).unwrap();
    assert_eq!(berth_drivers::images::Sha256Digest::of(&pulled), digest);
    assert!(!serve.file("pulled.qcow2.pulling").exists());
    // Pulled once: the daemon logged one pull for the two VMs.
    let log = serve.log();
    assert_eq!(
        log.matches("pulling a base image").count(),
        1,
        "{seen:?}\n{log}"
    );
    // The metrics count it: one pull that succeeded, the image's bytes, its time.
    let metrics = serve
        .request("GET", "/metrics", None)
        .into_string()
        .unwrap();
    for line in [
        r#"berth_image_pulls_total{host="local",outcome="ok"} 1"#.to_owned(),
        format!(
            r#"berth_image_pull_bytes_total{{host="local"}} {}"#,
            bytes.len()
        ),
        r#"berth_image_pull_seconds_count{host="local",outcome="ok"} 1"#.to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    serve.ok(
        "POST",
        &format!("/v1/vms/{vm}/result"),
        Some(json!({"passed": true})),
    );
}

/// `berth image push` and `berth image evict`, the real CLI against `berth serve`, on a libvirt
/// host whose pool lacks the image: the image comes from an `https://` store that a private CA
/// vouches for (`[drivers] image_store_ca`), arrives byte for byte with its digest checked,
/// `berth image show` and `berth host show` list it on the host, a second push finds it held,
/// and the eviction removes it, a second one failing with exit code 6.
#[test]
fn berth_image_push_pulls_into_a_libvirt_pool_over_https_and_image_evict_removes_it() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let Some([ca, cert, key]) = berth_testkit::tls::private_ca(certs.path()) else {
        berth_testkit::skip_or_fail("openssl is not installed, so no certificate for the store");
        return;
    };
    let _lock = libvirtd_to_ourselves();
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("images")).unwrap();
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(store.path().join("images/pushed.qcow2"), &bytes).unwrap();
    let digest = berth_drivers::images::Sha256Digest::of(&bytes);
    std::fs::write(
        store.path().join("images/pushed.qcow2.sha256"),
        format!("{digest}  pushed.qcow2\n"),
    )
    .unwrap();
    let server = berth_testkit::tls::HttpsFiles::start(store.path(), &cert, &key);
    let store_url = format!("{}/images", server.url());
    let serve = Serve::start_with(&uri, &image, |images| {
        format!(
            "[drivers]\nimage_store = \"{store_url}\"\nimage_store_ca = \"{}\"\n{}",
            ca.display(),
            local_host(&uri, images)
        )
    });
    serve.wait_for("the libvirt host ready", Duration::from_secs(60), |s| {
        s.ok("GET", "/v1/hosts", None)["hosts"][0]["state"] == "ready"
    });
    assert!(!serve.file("pushed.qcow2").exists());

    // (exit code, stdout, stderr) of the real CLI.
    let berth = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .args(["--url", &serve.url])
            .env("BERTH_TOKEN", &serve.token)
            .env_remove("BERTH_CA_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let holds = |image: &str| {
        let (code, out, err) = berth(&["host", "show", "local"]);
        assert_eq!(code, 0, "{err}");
        out.lines().any(|l| l.starts_with(&format!("{image} ")))
    };
    assert!(!holds("pushed"));

    let (code, out, err) = berth(&["image", "push", "pushed", "--host", "local"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "pushed: pulls started on local\n"),
        "{err}"
    );
    serve.wait_for(
        "the pushed image on the host",
        Duration::from_secs(120),
        |_| holds("pushed"),
    );
    // The store's image, byte for byte, whole: no marker left, one pull that succeeded, over
    // TLS (the server answered the digest and the image).
    let pulled = std::fs::read(serve.file("pushed.qcow2")).unwrap();
    assert_eq!(berth_drivers::images::Sha256Digest::of(&pulled), digest);
    assert!(!serve.file("pushed.qcow2.pulling").exists());
    assert!(server.served() >= 2, "the https store served nothing");
    let metrics = serve
        .request("GET", "/metrics", None)
        .into_string()
        .unwrap();
    let ok = r#"berth_image_pulls_total{host="local",outcome="ok"} 1"#;
    assert!(metrics.contains(ok), "{ok} not in\n{metrics}");

    // `image show` has the digest from the https store and the host holding it.
    let (code, out, err) = berth(&["image", "show", "pushed", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["digest"], digest.to_string(), "{shown}");
    assert_eq!(shown["bytes"], bytes.len() as u64, "{shown}");
    assert_eq!(shown["store_error"], Value::Null, "{shown}");
    assert_eq!(shown["hosts"][0]["host"], "local", "{shown}");
    assert_eq!(shown["hosts"][0]["in_use"], false, "{shown}");
    // Held now: a second push pulls nothing.
    let (code, out, err) = berth(&["image", "push", "pushed", "--host", "local"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("already held on local"), "{out}");

    let (code, out, err) = berth(&["image", "evict", "pushed", "--host", "local"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "pushed evicted from local\n"),
        "{err}"
    );
    assert!(!serve.file("pushed.qcow2").exists());
    serve.wait_for(
        "the host no longer listing it",
        Duration::from_secs(30),
        |_| !holds("pushed"),
    );
    let (code, _, err) = berth(&["image", "evict", "pushed", "--host", "local"]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("host local holds no base image pushed"),
        "{err}"
    );
    // The base image the VMs' template uses was never touched.
    assert!(serve.file("tiny.qcow2").exists());
}

//! A full disk is a state, not a crash: on a small tmpfs, API writes are refused with a 507
//! naming the disk while reads answer, a batch that could not be written waits for room, and
//! the daemon takes writes again by itself once there is room, losing nothing it acknowledged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_testkit::skip_or_fail;
use serde_json::json;

use crate::{CONFIG, TestDaemon};

/// A tmpfs of `mib` MiB, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir,
                _parent: parent,
            }),
            Ok(o) => {
                skip_or_fail(format_args!(
                    "cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip_or_fail(format_args!("cannot run mount: {e}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the disk holding `dir` with a file, leaving about `leave_kib` KiB free. It writes
/// only what fits, so the disk is never full on the way (a commit meanwhile would fail).
fn fill(dir: &Path, leave_kib: u64) -> PathBuf {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    let avail = st.blocks_available() * st.fragment_size();
    let mut todo = avail.saturating_sub(leave_kib << 10);
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while todo > 0 {
        let n = todo.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        todo -= n as u64;
    }
    // Without room to leave, make sure it is full: whatever is left goes too.
    if leave_kib == 0 {
        while f.write_all(&chunk[..4096]).is_ok() {}
    }
    path
}

fn submit(d: &TestDaemon) -> (u16, serde_json::Value) {
    d.call(
        "POST",
        "/v1/requests",
        Some(json!({"template": "linux", "count": 1})),
    )
}

fn healthz(d: &TestDaemon) -> String {
    ureq::get(&format!("{}/healthz", d.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let Some(disk) = Tmpfs::mount(48) else { return };
    let data = disk.dir.join("data");
    // On SQLite whatever the suite's store: the full disk is the one under the database file
    // (with PostgreSQL the server's disk is its own affair).
    crate::stores::pin_to_sqlite(&data);
    let config = format!("{CONFIG}\n[disk]\nfree_min_mib = 16\n");
    let d = TestDaemon::start(&data, &config);
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let (status, r) = submit(&d);
        assert_eq!(status, 201, "{r}");
        acknowledged.push(r["id"].as_u64().unwrap());
    }
    assert_eq!(healthz(&d), "ok\n");

    // Short of room: writes refused before they are applied, naming the disk; reads answer.
    // Below the 16 MiB margin, with room left for what is written before it is measured
    // (a WAL checkpoint can briefly need a few MiB).
    let filler = fill(&disk.dir, 10 << 10);
    // Free space is measured once a second: writes may be taken until the next measurement.
    let mut refused = None;
    d.wait_for("writes refused", |d| {
        let (status, r) = submit(d);
        match status {
            201 => acknowledged.push(r["id"].as_u64().unwrap()),
            507 => refused = Some(r),
            other => panic!("{other}: {r}"),
        }
        refused.is_some()
    });
    let e = refused.unwrap();
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("MiB free") && why.contains(&data.display().to_string()),
        "{why}"
    );
    let (status, list) = d.call("GET", "/v1/requests", None);
    assert_eq!(status, 200);
    assert_eq!(
        list["requests"].as_array().unwrap().len(),
        acknowledged.len()
    );
    assert!(healthz(&d).starts_with("degraded: "), "{}", healthz(&d));
    let status_v = d.ok("GET", "/v1/status", None);
    assert_eq!(status_v["writable"], false, "{status_v}");

    // Room again: writes are taken without a restart.
    std::fs::remove_file(&filler).unwrap();
    d.wait_for("writes taken again", |d| submit(d).0 == 201);
    assert_eq!(healthz(&d), "ok\n");

    // No room at all, and no margin: the batch that cannot be written waits with its answer;
    // writes meanwhile are refused, reads answer, and once there is room it is written. A new
    // data directory, so that its journal's WAL has to grow to take a commit (an older one
    // reuses the room it has).
    d.stop();
    let d = TestDaemon::start(&data, &config);
    for id in &acknowledged {
        assert_eq!(
            d.call("GET", &format!("/v1/requests/{id}"), None).0,
            200,
            "r{id}"
        );
    }
    d.stop();
    let data = disk.dir.join("data2");
    crate::stores::pin_to_sqlite(&data);
    let mut acknowledged = Vec::new();
    let config = format!("{CONFIG}\n[disk]\nfree_min_mib = 0\n");
    let d = TestDaemon::start(&data, &config);
    // Let the fleet settle first (every VM running), so that the submit below is the first
    // batch with something to write.
    d.wait_for("every vm running", |d| {
        let vms = d.ok("GET", "/v1/vms?live=true", None);
        vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "running")
    });
    std::thread::sleep(Duration::from_millis(300));
    let filler = fill(&disk.dir, 0);
    let url = d.url.clone();
    let token = d.token.clone();
    let waiting = std::thread::spawn(move || {
        ureq::post(&format!("{url}/v1/requests"))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(60))
            .send_json(json!({"template": "linux", "count": 1}))
            .map(|r| r.into_json::<serde_json::Value>().unwrap())
            .map_err(|e| e.to_string())
    });
    // A read, not a write, to wait: a write sent first would be the one held.
    d.wait_for("the batch held", |d| {
        d.ok("GET", "/v1/status", None)["writable"] == false
    });
    let (status, e) = submit(&d);
    assert_eq!(status, 507, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("cannot be written"),
        "{e}"
    );
    assert_eq!(d.call("GET", "/v1/requests?limit=1", None).0, 200);
    assert!(healthz(&d).starts_with("degraded: "));
    std::fs::remove_file(&filler).unwrap();
    let answered = waiting
        .join()
        .unwrap()
        .expect("the held submit is answered");
    acknowledged.push(answered["id"].as_u64().unwrap());
    d.wait_for("writes taken again", |d| submit(d).0 == 201);
    d.stop();

    // Everything acknowledged is in the journal.
    let d = TestDaemon::start(&data, &config);
    for id in acknowledged {
        assert_eq!(
            d.call("GET", &format!("/v1/requests/{id}"), None).0,
            200,
            "r{id}"
        );
    }
}

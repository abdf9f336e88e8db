//! The image routes end to end on simulated hosts with a directory image store: what is known
//! where, pushes ahead of demand, evictions, and each refusal naming what it refuses.

use std::path::Path;

use berth_drivers::images::{DIGEST_SUFFIX, Sha256Digest};
use serde_json::{Value, json};

use crate::{CONFIG, TestDaemon, call};

fn config(store: &Path) -> String {
    format!(
        r#"
[sim]
latency_scale = 0.001

[probe]
interval_ms = 100
timeout_ms = 1000
startup_grace_ms = 0

[drivers]
image_store = "{}"

[[tokens]]
name = "viewer"
token = "viewer-token-0123456789"
role = "read-only"

[[templates]]
name = "job"
base_image = "linux"
guest_os = "linux"
vcpus = 1
memory_mib = 1024

[[hosts]]
name = "h1"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["linux"]

[[hosts]]
name = "h2"
driver = "sim"
vcpus = 4
memory_mib = 16384
"#,
        store.display()
    )
}

/// Puts `name.qcow2` and its digest in the store; returns the digest.
fn stock(store: &Path, name: &str, bytes: &[u8]) -> String {
    let file = format!("{name}.qcow2");
    std::fs::write(store.join(&file), bytes).unwrap();
    let digest = Sha256Digest::of(bytes).to_string();
    std::fs::write(
        store.join(format!("{file}{DIGEST_SUFFIX}")),
        format!("{digest}  {file}\n"),
    )
    .unwrap();
    digest
}

fn holders(image: &Value) -> Vec<String> {
    image["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn images_are_listed_pushed_and_evicted_and_refusals_name_what_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let linux = stock(store.path(), "linux", &b"linux image".repeat(100));
    let win = stock(store.path(), "win11", b"windows image");
    let d = TestDaemon::start(dir.path(), &config(store.path()));

    // Known to the store, the templates and the hosts, with the store's digest and size.
    let list = d.ok("GET", "/v1/images", None);
    assert_eq!(list["store"], store.path().display().to_string());
    let names: Vec<&str> = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["linux", "win11"]);
    let l = &list["images"][0];
    assert_eq!(l["digest"], linux);
    assert_eq!(l["bytes"], 1100);
    assert_eq!(l["templates"], json!(["job"]));
    assert_eq!(holders(l), ["h1"]);
    assert_eq!(list["images"][1]["digest"], win);
    assert!(holders(&list["images"][1]).is_empty());

    // Host rows carry their images (a simulated host counts no bytes, keeps no budget).
    let h1 = d.ok("GET", "/v1/hosts/h1", None);
    assert_eq!(
        h1["images"],
        json!([{"name": "linux", "bytes": null, "last_used_ms": null, "in_use": null}])
    );
    assert_eq!(h1["image_disk"], Value::Null);
    assert_eq!(h1["pulls"], json!([]));
    let (status, e) = d.call("GET", "/v1/hosts/nope", None);
    assert_eq!((status, e["field"].as_str()), (404, Some("host")));

    // Unknown images and hosts, and pushes that name neither hosts nor a driver, are refused.
    let (status, e) = d.call("GET", "/v1/images/macos", None);
    assert_eq!((status, e["field"].as_str()), (404, Some("image")));
    let text = e["error"].as_str().unwrap();
    assert!(
        text.contains("`macos`") && text.contains("linux, win11"),
        "{text}"
    );
    let (status, e) = d.call(
        "POST",
        "/v1/images/macos/push",
        Some(json!({"hosts": ["h1"]})),
    );
    assert_eq!((status, e["field"].as_str()), (404, Some("image")));
    let (status, e) = d.call(
        "POST",
        "/v1/images/win11/push",
        Some(json!({"hosts": ["h2", "ghost", "phantom"]})),
    );
    assert_eq!(status, 404);
    assert_eq!(e["error"], "no host named ghost, phantom");
    let (status, e) = d.call("POST", "/v1/images/win11/push", Some(json!({})));
    assert_eq!((status, e["field"].as_str()), (400, Some("hosts")));
    let (status, e) = d.call(
        "POST",
        "/v1/images/win11/push",
        Some(json!({"driver": "xen"})),
    );
    assert_eq!((status, e["field"].as_str()), (400, Some("driver")));
    // Read-only tokens may look but not push or evict.
    let viewer = Some("viewer-token-0123456789");
    assert_eq!(call(&d.url, viewer, "GET", "/v1/images", None).0, 200);
    let push = json!({"driver": "sim"});
    let (status, _) = call(&d.url, viewer, "POST", "/v1/images/win11/push", Some(push));
    assert_eq!(status, 403);
    let evict = json!({"host": "h1"});
    let (status, _) = call(
        &d.url,
        viewer,
        "POST",
        "/v1/images/linux/evict",
        Some(evict),
    );
    assert_eq!(status, 403);

    // A push to every ready host of a driver starts a pull where the image is missing.
    let started = d.ok(
        "POST",
        "/v1/images/win11/push",
        Some(json!({"driver": "sim"})),
    );
    assert_eq!(started["started"], json!(["h1", "h2"]));
    d.wait_for("win11 on both hosts", |d| {
        holders(&d.ok("GET", "/v1/images/win11", None)) == ["h1", "h2"]
    });
    let again = d.ok(
        "POST",
        "/v1/images/linux/push",
        Some(json!({"hosts": ["h1"]})),
    );
    assert_eq!(
        (again["started"].clone(), again["held"].clone()),
        (json!([]), json!(["h1"]))
    );

    // An image a VM is made from stays on its host, and the refusal names the VM.
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(json!({"template": "job", "count": 1})),
    );
    let id = r["id"].as_u64().unwrap();
    d.wait_for("the job runs", |d| d.running_vms(id).len() == 1);
    let (vm, host) = d.running_vms(id).remove(0);
    let (status, e) = d.call(
        "POST",
        "/v1/images/linux/evict",
        Some(json!({ "host": host })),
    );
    assert_eq!((status, e["field"].as_str()), (409, Some("image")));
    assert_eq!(
        e["error"],
        format!("base image linux on host {host} is in use by vm berth-vm{vm}")
    );
    let image = d.ok("GET", "/v1/images/linux", None);
    let on = image["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host.as_str())
        .unwrap();
    assert_eq!(on["vms"], json!([format!("berth-vm{vm}")]));

    // So does an image being pulled: the pull shows on the host and the image, and is named.
    let turn = d.pulls().turn("h2", "win11");
    let held = turn.hold();
    held.report("win11.qcow2", 5, 10);
    let h2 = d.ok("GET", "/v1/hosts/h2", None);
    assert_eq!(h2["pulls"][0]["percent"], 50);
    assert_eq!(
        d.ok("GET", "/v1/images/win11", None)["pulls"][0]["host"],
        "h2"
    );
    let (status, e) = d.call(
        "POST",
        "/v1/images/win11/evict",
        Some(json!({"host": "h2"})),
    );
    assert_eq!(status, 409);
    assert_eq!(
        e["error"],
        "base image win11 on host h2 is in use by a pull (50%)"
    );
    drop(held);

    // An unused image goes, and the host is probed so that every list says so.
    let gone = d.ok(
        "POST",
        "/v1/images/win11/evict",
        Some(json!({"host": "h2"})),
    );
    assert_eq!(gone, json!({"image": "win11", "host": "h2"}));
    d.wait_for("win11 gone from h2", |d| {
        holders(&d.ok("GET", "/v1/images/win11", None)) == ["h1"]
    });
    let (status, e) = d.call(
        "POST",
        "/v1/images/win11/evict",
        Some(json!({"host": "h2"})),
    );
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("host h2 holds no base image win11"))
    );
    let (status, e) = d.call(
        "POST",
        "/v1/images/win11/evict",
        Some(json!({"host": "ghost"})),
    );
    assert_eq!((status, e["field"].as_str()), (404, Some("host")));

    // Both operator actions are on record.
    let audit = d.ok("GET", "/v1/audit", None);
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"image_push"), "{actions:?}");
    assert!(actions.contains(&"image_evict"), "{actions:?}");
}

/// With `[images]`, the scheduler's own model acts on the live fleet: a VM whose image its
/// host lacks makes the scheduler evict what the class's budget has no room beside it (unused,
/// least recently used first) and pull it, through the host's driver; without the section,
/// nothing is evicted or pulled ahead of the driver's own create.
#[test]
fn the_scheduler_evicts_past_a_class_budget_and_pulls_when_images_are_configured() {
    let fleet = |images: &str| {
        format!(
            r#"{CONFIG}
{images}
[drivers]
image_store = "STORE"

[[templates]]
name = "win"
base_image = "win11"
guest_os = "linux"
vcpus = 1
memory_mib = 1024

[[hosts]]
name = "sim-1"
driver = "sim"
vcpus = 4
memory_mib = 16384
images = ["linux"]
"#
        )
    };
    let images = "
[images]
sizes_mib = { linux = 1024, win11 = 1024 }

[[images.classes]]
class = \"sim\"
pull_mbit_s = 1000
budget_mib = 1024
";
    for (with_images, config) in [(true, fleet(images)), (false, fleet(""))] {
        let dir = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        stock(store.path(), "linux", b"linux image");
        stock(store.path(), "win11", b"windows image");
        let config = config.replace("STORE", &store.path().display().to_string());
        let d = TestDaemon::start(dir.path(), &config);
        let r = d.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "win", "count": 1})),
        );
        let id = r["id"].as_u64().unwrap();
        d.wait_for("the job runs", |d| d.running_vms(id).len() == 1);
        let holding = |image: &str| holders(&d.ok("GET", &format!("/v1/images/{image}"), None));
        if with_images {
            d.wait_for("win11 pulled to sim-1", |_| holding("win11") == ["sim-1"]);
            d.wait_for("linux evicted for win11's room", |_| {
                holding("linux").is_empty()
            });
        } else {
            // The simulated driver creates without pulling; nothing asks for a pull or an
            // eviction.
            assert_eq!(holding("linux"), ["sim-1"], "no budget, nothing evicted");
            assert!(holding("win11").is_empty());
        }
        d.stop();
    }
}

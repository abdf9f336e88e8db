//! The libvirt driver against libvirt itself: its test driver (`test:///default`, always, no
//! daemon needed) and real QEMU guests at `qemu:///system` where libvirtd answers.
//!
//! The live test reads:
//! - `BERTH_LIBVIRT_URI` (default `qemu:///system`);
//! - `BERTH_GUEST_IMAGE`: the tiny guest's base image that `ci/build-guest.sh` builds (default
//!   `target/guest/tiny.qcow2` in the workspace);
//! - `BERTH_LIBVIRT_DOMAIN_TYPE`: `kvm` or `qemu` (default `qemu`, which needs no working KVM);
//! - `BERTH_LIVE_TESTS=require`: fail instead of skipping when libvirtd or the image is missing
//!   (CI sets it, so that a broken setup cannot pass as a skip).
//!
//! The remote-URI tests reach the same libvirtd as a remote host would be reached: through a
//! real `sshd` on loopback (`berth_testkit::sshd`), with `qemu+ssh://` (the system OpenSSH
//! client) and `qemu+libssh2://`, and host keys checked against the test's own known_hosts files.
#![cfg(feature = "libvirt")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use berth_drivers::images::{ImageStore, Sha256Digest};
use berth_drivers::libvirt::{DomainType, LibvirtConfig, LibvirtHost};
use berth_drivers::{Driver, DriverError, VmRecipe, vm_name};
use berth_sched::{GuestOs, Shape};
use berth_testkit::LiveLibvirt;
use berth_testkit::sshd::{self, Fixture, LibvirtSsh};
use virt::connect::Connect;
use virt::storage_vol::StorageVol;

const TEST_URI: &str = "test:///default";
/// The directory of the storage pool the test driver starts with.
const TEST_POOL_DIR: &str = "/default-pool";
const BASE: &str = "tiny";
const MARKER: &str = "BERTH-GUEST-UP";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn recipe(n: u64, base_image: &str) -> VmRecipe {
    VmRecipe {
        name: vm_name(n),
        template: "tiny-linux".into(),
        base_image: base_image.into(),
        guest_os: GuestOs::Linux,
        shape: Shape {
            vcpus: 1,
            memory_mib: 256,
        },
        domain_type: None,
    }
}

/// A driver on `test:///default`, plus a connection of the test's own. The test driver keeps
/// its state only while a connection to it is open, and shares it between the connections of
/// one process; the test's connection seeds the base image and looks behind the driver's back.
fn test_host(tune: impl FnOnce(&mut LibvirtConfig)) -> (Connect, LibvirtHost) {
    let conn = Connect::open(Some(TEST_URI)).expect("test driver opens");
    let pool = conn
        .lookup_storage_pool_by_name("default-pool")
        .expect("test driver has default-pool");
    let xml = format!(
        "<volume><name>{BASE}.qcow2</name><capacity unit='MiB'>64</capacity>\
         <target><format type='qcow2'/></target></volume>"
    );
    if pool
        .lookup_storage_vol_by_name(&format!("{BASE}.qcow2"))
        .is_err()
    {
        StorageVol::create_xml(&pool, &xml, 0).expect("base image volume");
    }
    let mut config = LibvirtConfig::new(TEST_URI, TEST_POOL_DIR);
    config.domain_type = DomainType::Test;
    tune(&mut config);
    (conn, LibvirtHost::new("t1", config))
}

fn volume_exists(conn: &Connect, file: &str) -> bool {
    let pool = conn
        .lookup_storage_pool_by_name("default-pool")
        .expect("default-pool");
    pool.lookup_storage_vol_by_name(file).is_ok()
}

fn assert_host_error(e: &DriverError, needle: &str) {
    match e {
        DriverError::Host { host, message } => {
            assert_eq!(host, "t1");
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected a host error about {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn test_driver_probe_reports_node_versions_and_base_images() {
    let (_conn, host) = test_host(|_| {});
    // An overlay in the directory must not count as a base image.
    host.provision(&recipe(2_001, BASE))
        .await
        .expect("provision");
    let details = host.probe_details().await.expect("probe");
    assert!(details.facts.vcpus > 0);
    assert!(details.facts.memory_mib > 0);
    assert_eq!(details.facts.images, vec![BASE.to_owned()]);
    assert!(details.hypervisor.eq_ignore_ascii_case("test"));
    assert!(
        details
            .libvirt_version
            .starts_with(|c: char| c.is_ascii_digit())
    );
    assert!(details.free_disk_mib > 0);
    assert_eq!(host.probe().await.expect("probe"), details.facts);
    host.destroy(&vm_name(2_001)).await.expect("destroy");
}

#[tokio::test]
async fn test_driver_lifecycle_is_idempotent_and_leaves_nothing_behind() {
    let (conn, host) = test_host(|_| {});
    let vm = recipe(2_002, BASE);
    host.provision(&vm).await.expect("provision");

    let overlay = format!("{}.qcow2", vm.name);
    assert!(volume_exists(&conn, &overlay));
    let pool = conn
        .lookup_storage_pool_by_name("default-pool")
        .expect("default-pool");
    let vol_xml = pool
        .lookup_storage_vol_by_name(&overlay)
        .and_then(|v| v.xml_desc(0))
        .expect("overlay xml");
    assert!(
        vol_xml.contains(&format!("<path>{TEST_POOL_DIR}/{BASE}.qcow2</path>")),
        "the overlay is backed by the base image: {vol_xml}"
    );

    // Provisioning again (a daemon repeating a call after a crash) adopts the VM.
    host.provision(&vm).await.expect("provision again");
    host.boot(&vm.name).await.expect("boot");

    let listed = host.list().await.expect("list");
    assert!(listed.iter().any(|l| l.name == vm.name && l.running));
    // Every domain is listed, berth's or not: the test driver's own `test` domain too.
    assert!(listed.iter().any(|l| l.name == "test"));

    // The test driver gives every domain VNC port -1 (it runs no VNC server), so the console
    // is "not yet" rather than an address.
    match host.console(&vm.name).await {
        Ok(address) => assert!(address.port > 0),
        Err(DriverError::Transient { message, .. }) => assert!(message.contains("vnc port")),
        Err(other) => panic!("console: {other:?}"),
    }
    let png = host.screenshot(&vm.name).await.expect("screenshot");
    assert!(png.starts_with(PNG_SIGNATURE));

    host.destroy(&vm.name).await.expect("destroy");
    assert!(!volume_exists(&conn, &overlay));
    let listed = host.list().await.expect("list");
    assert!(!listed.iter().any(|l| l.name == vm.name));
    host.destroy(&vm.name).await.expect("destroy is idempotent");
    assert_eq!(
        host.console(&vm.name).await,
        Err(DriverError::NoSuchVm {
            host: "t1".into(),
            name: vm.name.clone()
        })
    );
}

/// The daemon hands a warm VM over by letting the request's VM take over its domain as it is,
/// and confirms it with `boot` of that domain: at once for a running domain, `NoSuchVm` for one
/// that is gone (which the daemon takes as a transient failure, and places the VM again).
#[tokio::test]
async fn test_driver_boot_confirms_a_running_domain_and_names_one_that_is_gone() {
    let (conn, host) = test_host(|_| {});
    let warm = recipe(2_003, BASE);
    host.provision(&warm).await.expect("provision");
    host.boot(&warm.name).await.expect("boot");
    host.boot(&warm.name)
        .await
        .expect("boot of a running domain, as a handover confirms it");
    assert!(
        host.list()
            .await
            .expect("list")
            .iter()
            .any(|l| l.name == warm.name && l.running)
    );
    // Gone behind the driver's back.
    let dom = conn
        .lookup_domain_by_name(&warm.name)
        .expect("the warm vm's domain");
    dom.destroy().expect("stop it");
    dom.undefine().expect("undefine it");
    assert_eq!(
        host.boot(&warm.name).await,
        Err(DriverError::NoSuchVm {
            host: "t1".into(),
            name: warm.name.clone()
        })
    );
    host.destroy(&warm.name)
        .await
        .expect("destroy what is left");
}

/// The domain type VM `n` gets when its template asks for `asked`: provisioned, read from
/// the domain's XML, destroyed.
async fn domain_type_given(
    conn: &Connect,
    host: &LibvirtHost,
    n: u64,
    asked: Option<DomainType>,
) -> String {
    let mut vm = recipe(n, BASE);
    vm.domain_type = asked;
    host.provision(&vm).await.expect("provision");
    let xml = conn
        .lookup_domain_by_name(&vm.name)
        .and_then(|d| d.xml_desc(0))
        .expect("domain xml");
    host.destroy(&vm.name).await.expect("destroy");
    let start = xml.find("type='").expect("a type attribute") + "type='".len();
    xml[start..].split('\'').next().expect("quoted").to_owned()
}

#[tokio::test]
async fn test_driver_domain_type_comes_from_the_template_unless_the_host_overrides_it() {
    // The test driver takes any domain type, so the domain's XML shows which one won.
    let (conn, host) = test_host(|c| c.domain_type = DomainType::Kvm);
    let given = domain_type_given(&conn, &host, 2_006, None).await;
    assert_eq!(given, "kvm", "the host's default");
    let given = domain_type_given(&conn, &host, 2_006, Some(DomainType::Qemu)).await;
    assert_eq!(given, "qemu", "the template's choice");

    // The host's own choice for the template wins over what the template asks for.
    let (conn, host) = test_host(|c| {
        c.domain_type = DomainType::Kvm;
        c.template_domain_types
            .insert("tiny-linux".into(), DomainType::Test);
    });
    let given = domain_type_given(&conn, &host, 2_007, Some(DomainType::Kvm)).await;
    assert_eq!(given, "test", "the host's override");
}

#[tokio::test]
async fn test_driver_missing_base_image_is_a_host_error_and_leaves_nothing() {
    let (conn, host) = test_host(|_| {});
    let vm = recipe(2_003, "no-such-image");
    let e = host.provision(&vm).await.expect_err("no base image");
    assert_host_error(&e, "base image no-such-image is missing");
    assert_host_error(&e, "/default-pool/no-such-image.qcow2");
    assert!(conn.lookup_domain_by_name(&vm.name).is_err());
    assert!(!volume_exists(&conn, &format!("{}.qcow2", vm.name)));
}

#[tokio::test]
async fn test_driver_name_clash_is_a_host_error_and_spares_the_other_domain() {
    let (conn, host) = test_host(|_| {});
    let name = vm_name(2_004);
    let foreign = format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type>hvm</type></os></domain>"
    );
    let dom = conn.define_domain_xml(&foreign).expect("foreign domain");
    let e = host
        .provision(&recipe(2_004, BASE))
        .await
        .expect_err("clash");
    assert_host_error(&e, "name clash");
    assert!(conn.lookup_domain_by_name(&name).is_ok(), "left alone");
    dom.undefine().expect("cleanup");
}

#[tokio::test]
async fn test_driver_disk_full_is_a_host_error() {
    let (conn, host) = test_host(|c| c.min_free_disk_mib = u64::MAX / 2);
    let vm = recipe(2_005, BASE);
    let e = host.provision(&vm).await.expect_err("disk full");
    assert_host_error(&e, "disk full");
    assert!(conn.lookup_domain_by_name(&vm.name).is_err());
}

/// Adds an unused base image volume `NAME.qcow2` to the test driver's pool.
fn seed_image(conn: &Connect, name: &str) {
    let pool = conn
        .lookup_storage_pool_by_name("default-pool")
        .expect("default-pool");
    if pool
        .lookup_storage_vol_by_name(&format!("{name}.qcow2"))
        .is_ok()
    {
        return;
    }
    let xml = format!(
        "<volume><name>{name}.qcow2</name><capacity unit='MiB'>16</capacity>\
         <target><format type='qcow2'/></target></volume>"
    );
    StorageVol::create_xml(&pool, &xml, 0).expect("image volume");
}

#[tokio::test]
async fn test_driver_evicts_an_unused_image_and_refuses_one_in_use_naming_its_users() {
    let store = tempfile::tempdir().expect("store dir");
    let store_dir = store.path().to_owned();
    let (conn, _) = test_host(|_| {});
    let pulls = berth_drivers::images::Pulls::default();
    let mut config = LibvirtConfig::new(TEST_URI, TEST_POOL_DIR);
    config.domain_type = DomainType::Test;
    config.image_store = Some(ImageStore::Dir(store_dir.clone()));
    let host = LibvirtHost::with_pulls("t1", config, pulls.clone());
    assert_eq!(host.image_store(), Some(store_dir.display().to_string()));
    seed_image(&conn, "spare");
    let vm = recipe(2_101, BASE);
    host.provision(&vm).await.expect("provision");

    // The image the VM's overlay is made from stays, and the refusal names the overlay.
    match host.evict_image(BASE).await {
        Err(DriverError::ImageInUse { host, image, users }) => {
            assert_eq!((host.as_str(), image.as_str()), ("t1", BASE));
            assert_eq!(users, [format!("overlay {}.qcow2", vm.name)]);
        }
        other => panic!("expected the image in use, got {other:?}"),
    }
    assert!(volume_exists(&conn, &format!("{BASE}.qcow2")));

    // What the probe counted is on the board: the base image in use, the spare not.
    let facts = host.probe().await.expect("probe");
    assert!(facts.images.contains(&"spare".to_owned()), "{facts:?}");
    let held = pulls.held("t1").expect("the probe counted the images");
    let in_use = |name: &str| {
        held.images
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.in_use)
    };
    assert_eq!((in_use(BASE), in_use("spare")), (Some(true), Some(false)));
    assert_eq!(held.budget_bytes, None);

    // An unused image goes, and then it is not there to evict.
    host.evict_image("spare").await.expect("evict the spare");
    assert!(!volume_exists(&conn, "spare.qcow2"));
    assert!(
        !host
            .probe()
            .await
            .expect("probe")
            .images
            .contains(&"spare".to_owned())
    );
    assert_eq!(
        host.evict_image("spare").await,
        Err(DriverError::NoSuchImage {
            host: "t1".into(),
            image: "spare".into()
        })
    );

    // So does the base image once its VM is gone.
    host.destroy(&vm.name).await.expect("destroy");
    host.evict_image(BASE).await.expect("evict the base image");
    assert!(!volume_exists(&conn, &format!("{BASE}.qcow2")));
}

#[tokio::test]
async fn test_driver_without_an_image_store_neither_pulls_nor_evicts() {
    let (conn, host) = test_host(|_| {});
    seed_image(&conn, "spare");
    assert_eq!(host.image_store(), None);
    for e in [
        host.pull_image("spare").await.expect_err("no store"),
        host.evict_image("spare").await.expect_err("no store"),
    ] {
        match e {
            DriverError::NoImageStore { host, why } => {
                assert_eq!(host, "t1");
                assert!(why.contains("image_store"), "{why}");
            }
            other => panic!("expected no image store, got {other:?}"),
        }
    }
    assert!(volume_exists(&conn, "spare.qcow2"));
}

#[tokio::test]
async fn test_driver_refuses_names_berth_does_not_own() {
    let (_conn, host) = test_host(|_| {});
    let mut vm = recipe(2_006, BASE);
    vm.name = "test".into();
    match host.provision(&vm).await {
        Err(DriverError::Request { message, .. }) => {
            assert!(message.contains("not a berth vm name"))
        }
        other => panic!("expected a request error, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_libvirt_is_a_host_error_that_names_the_uri() {
    let uri = "qemu+unix:///system?socket=/nonexistent/berth-test/libvirt-sock";
    let host = LibvirtHost::new("t1", LibvirtConfig::new(uri, "/nonexistent"));
    let e = host.probe().await.expect_err("unreachable");
    assert_host_error(&e, "libvirt unreachable at qemu+unix:///system");
    assert_host_error(&e, "is libvirtd running");
}

fn qemu_img_backing_file(path: &str) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U", path])
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "qemu-img info {path}: {out:?}");
    let info = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = "\"backing-filename\": \"";
    let start = info
        .find(key)
        .map(|i| i + key.len())
        .expect("has a backing file");
    info[start..].split('"').next().expect("quoted").to_owned()
}

/// A real libvirt host whose image directory is a fresh temporary directory holding the tiny
/// guest as base image `tiny`.
struct LiveHost {
    uri: String,
    dir: tempfile::TempDir,
    base_path: String,
    host: LibvirtHost,
}

impl LiveHost {
    fn new(uri: String, image: &Path) -> LiveHost {
        LiveHost::tuned(uri, image, |_| {})
    }

    /// A live host whose configuration `tune` changes before its driver is made.
    fn tuned(uri: String, image: &Path, tune: impl FnOnce(&mut LibvirtConfig)) -> LiveHost {
        // The guest's QEMU runs as another user: it must be able to reach the directory.
        let dir = tempfile::Builder::new()
            .prefix("berth-libvirt-test")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let image_dir = dir.path().to_str().expect("utf-8 path").to_owned();
        let base_path = format!("{image_dir}/{BASE}.qcow2");
        std::fs::copy(image, &base_path).expect("copy the guest image");
        let mut config = LibvirtConfig::new(&uri, &image_dir);
        config.domain_type = std::env::var("BERTH_LIBVIRT_DOMAIN_TYPE")
            .unwrap_or_else(|_| "qemu".into())
            .parse()
            .expect("BERTH_LIBVIRT_DOMAIN_TYPE");
        config.boot_marker = Some(MARKER.into());
        config.boot_timeout_ms = 180_000;
        config.min_free_disk_mib = 64;
        tune(&mut config);
        let host = LibvirtHost::new("t1", config);
        LiveHost {
            uri,
            dir,
            base_path,
            host,
        }
    }
}

/// Whatever a test leaves behind when it fails midway goes with it: domains whose disks are
/// in the temporary directory, and the transient pool the driver started on it.
impl Drop for LiveHost {
    fn drop(&mut self) {
        let Ok(conn) = Connect::open(Some(&self.uri)) else {
            return;
        };
        let dir = self.dir.path().to_str().unwrap_or_default().to_owned();
        for dom in conn.list_all_domains(0).unwrap_or_default() {
            if dom.xml_desc(0).is_ok_and(|xml| xml.contains(&dir)) {
                let _ = dom.destroy();
                let _ = dom.undefine();
            }
        }
        if let Ok(pool) = conn.lookup_storage_pool_by_target_path(&dir) {
            let _ = pool.destroy();
        }
    }
}

#[tokio::test]
async fn qemu_boots_a_tiny_guest_from_an_overlay_and_destroy_removes_it() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let live = LiveHost::new(uri, &image);
    let (host, base_path) = (&live.host, &live.base_path);

    let facts = host.probe_details().await.expect("probe");
    assert_eq!(facts.facts.images, vec![BASE.to_owned()]);
    assert!(facts.facts.vcpus > 0 && facts.facts.memory_mib > 0);
    eprintln!(
        "libvirt {} on {} {}",
        facts.libvirt_version, facts.hypervisor, facts.hypervisor_version
    );

    // A name far from the ids a daemon on this host would use.
    let n = 3_000_000_000 + u64::from(std::process::id());
    let vm = recipe(n, BASE);
    let start = Instant::now();
    host.provision(&vm).await.expect("provision");
    let provisioned = start.elapsed();

    let overlay = host.overlay_path(&vm.name);
    assert_eq!(
        &qemu_img_backing_file(&overlay),
        base_path,
        "the disk is an overlay"
    );
    let overlay_size = std::fs::metadata(&overlay).expect("overlay").len();
    let base_size = std::fs::metadata(base_path).expect("base").len();
    assert!(overlay_size < base_size, "not a copy: {overlay_size} bytes");

    host.boot(&vm.name).await.expect("boot");
    let booted = start.elapsed();
    // boot() waited for the marker; check it independently, since "running" proves nothing.
    let log = std::fs::read_to_string(host.serial_log_path(&vm.name)).expect("serial log");
    assert!(log.contains(MARKER), "serial log: {log:?}");
    // The same log through libvirt, as boot() reads it on remote hosts.
    let remote_log = host
        .serial_log(&vm.name)
        .await
        .expect("serial log via libvirt");
    assert!(
        String::from_utf8_lossy(&remote_log).contains(MARKER),
        "serial log via libvirt: {remote_log:?}"
    );
    eprintln!("provisioned in {provisioned:?}, marker after {booted:?}");

    let console = host.console(&vm.name).await.expect("console");
    assert!(console.port >= 5900, "{console:?}");
    assert_eq!(console.host, "localhost");
    assert_eq!(console.password.as_deref().map(str::len), Some(8));

    let png_bytes = host.screenshot(&vm.name).await.expect("screenshot");
    let screen =
        image::load_from_memory_with_format(&png_bytes, image::ImageFormat::Png).expect("a png");
    let (width, height) = (screen.width(), screen.height());
    assert!(width >= 320 && height >= 200, "{width}x{height}");

    host.destroy(&vm.name).await.expect("destroy");
    let listed = host.list().await.expect("list");
    assert!(!listed.iter().any(|l| l.name == vm.name));
    assert!(!Path::new(&overlay).exists(), "overlay removed");
    assert!(
        !Path::new(&host.serial_log_path(&vm.name)).exists(),
        "serial log removed"
    );
    assert!(Path::new(base_path).exists(), "base image kept");
    host.destroy(&vm.name).await.expect("destroy is idempotent");
}

#[tokio::test]
async fn qemu_guests_provisioned_at_once_with_a_probe_all_boot_and_go() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let live = LiveHost::new(uri, &image);
    // Concurrent volume creation makes libvirt refuse pool rescans: nothing may fail for it.
    let first = 3_100_000_000 + u64::from(std::process::id()) * 10;
    let names: Vec<String> = (0..3).map(|i| vm_name(first + i)).collect();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let host = live.host.clone();
        tasks.push(tokio::spawn(async move {
            let vm = recipe(first + i, BASE);
            host.provision(&vm).await?;
            host.boot(&vm.name).await
        }));
    }
    let probe = live.host.probe().await.expect("probe while provisioning");
    assert_eq!(probe.images, vec![BASE.to_owned()]);
    for task in tasks {
        task.await.expect("task").expect("provision and boot");
    }
    for name in &names {
        let log = std::fs::read_to_string(live.host.serial_log_path(name)).expect("serial log");
        assert!(log.contains(MARKER), "{name}: {log:?}");
    }
    let mut destroys = Vec::new();
    for name in names.clone() {
        let host = live.host.clone();
        destroys.push(tokio::spawn(async move { host.destroy(&name).await }));
    }
    for d in destroys {
        d.await.expect("task").expect("destroy");
    }
    let listed = live.host.list().await.expect("list");
    for name in &names {
        assert!(!listed.iter().any(|l| &l.name == name), "{name} listed");
        assert!(!Path::new(&live.host.overlay_path(name)).exists());
    }
}

#[tokio::test]
async fn qemu_over_ssh_boots_a_tiny_guest_and_destroy_removes_it() {
    let Some(LiveLibvirt {
        uri: local_uri,
        image,
    }) = berth_testkit::live_libvirt()
    else {
        return;
    };
    let Some(fx) = Fixture::start() else {
        return;
    };
    let known_hosts = fx.known_hosts_with("known_hosts", &fx.host_key());
    let uri = fx.libvirt_uri(LibvirtSsh::Ssh, &known_hosts);
    let store = image_store(&image, &["pulled"], &[]);
    let store_path = store.path().to_owned();
    let live = LiveHost::tuned(uri, &image, |c| {
        c.image_store = Some(ImageStore::Dir(store_path));
    });
    let host = &live.host;

    let facts = host.probe_details().await.expect("probe over ssh");
    assert_eq!(facts.facts.images, vec![BASE.to_owned()]);
    assert!(facts.hypervisor.eq_ignore_ascii_case("qemu"), "{facts:?}");

    let n = 3_200_000_000 + u64::from(std::process::id());
    let vm = recipe(n, BASE);
    let start = Instant::now();
    host.provision(&vm).await.expect("provision over ssh");
    let overlay = host.overlay_path(&vm.name);
    assert_eq!(
        qemu_img_backing_file(&overlay),
        live.base_path,
        "an overlay"
    );
    // A remote host's serial log is not a file here: boot reads it through libvirt.
    host.boot(&vm.name).await.expect("boot over ssh");
    let log = host
        .serial_log(&vm.name)
        .await
        .expect("serial log over ssh");
    assert!(
        String::from_utf8_lossy(&log).contains(MARKER),
        "serial log: {log:?}"
    );
    eprintln!("over ssh: marker after {:?}", start.elapsed());

    let console = host.console(&vm.name).await.expect("console");
    assert_eq!(console.host, fx.listen_ip, "the URI's host, for ssh -L");
    assert!(console.port >= 5900, "{console:?}");
    let png = host
        .screenshot(&vm.name)
        .await
        .expect("screenshot over ssh");
    assert!(png.starts_with(PNG_SIGNATURE));

    // A base image the remote host lacks travels over the same connection.
    host.pull("pulled").await.expect("pull over ssh");
    let pulled = std::fs::read(live.dir.path().join("pulled.qcow2")).expect("pulled image");
    let want = std::fs::read(&image).expect("guest image");
    assert_eq!(Sha256Digest::of(&pulled), Sha256Digest::of(&want));

    host.destroy(&vm.name).await.expect("destroy over ssh");
    assert!(!Path::new(&overlay).exists(), "overlay removed");
    let local = Connect::open(Some(&local_uri)).expect("local libvirt");
    assert!(
        local.lookup_domain_by_name(&vm.name).is_err(),
        "domain gone"
    );
    // Every call above went through sshd, not around it.
    let sshd_log = fx.log();
    assert!(
        sshd_log.contains(&format!("Accepted publickey for {}", fx.user)),
        "sshd log: {sshd_log}"
    );
}

#[tokio::test]
async fn a_changed_or_unknown_ssh_host_key_is_a_host_error_naming_the_host() {
    if berth_testkit::live_libvirt().is_none() {
        return;
    }
    let Some(fx) = Fixture::start() else {
        return;
    };
    let other = sshd::keygen(&fx.path("other_key"));
    let changed = fx.known_hosts_with("changed_known_hosts", &other);
    let unknown = fx.known_hosts_with("unknown_known_hosts", "");
    std::fs::write(&unknown, "").expect("empty known_hosts");
    let cases = [
        (LibvirtSsh::Ssh, &changed),
        (LibvirtSsh::Ssh, &unknown),
        (LibvirtSsh::Libssh2, &changed),
        (LibvirtSsh::Libssh2, &unknown),
    ];
    for (transport, known_hosts) in cases {
        let uri = fx.libvirt_uri(transport, known_hosts);
        let mut config = LibvirtConfig::new(&uri, "/var/lib/berth/images");
        config.call_timeout_ms = 30_000;
        let host = LibvirtHost::new("t1", config);
        let e = host.probe().await.expect_err("a key berth cannot trust");
        let case = format!("{transport:?} with {}", known_hosts.display());
        eprintln!("{case}: {e}");
        match &e {
            DriverError::Host { message, .. } => {
                assert!(message.contains("host key"), "{case}: {message}");
                assert!(message.contains(&fx.listen_ip), "{case}: {message}");
            }
            other => panic!("{case}: expected a host error, got {other:?}"),
        }
    }
    assert!(
        !fx.log().contains("Accepted publickey"),
        "nobody logged in: {}",
        fx.log()
    );
}

#[tokio::test]
async fn qemu_evicts_only_unused_base_images_to_pull_within_the_budget() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    let store = image_store(&image, &["third", "fourth"], &[]);
    let store_path = store.path().to_owned();
    // Room for three images of the guest's size and a half: the third needs one gone.
    let image_bytes = std::fs::metadata(&image).expect("guest image").len();
    let budget_mib = (image_bytes * 7 / 2).div_ceil(1024 * 1024);
    let live = LiveHost::tuned(uri, &image, |c| {
        c.image_store = Some(ImageStore::Dir(store_path));
        c.image_budget_mib = Some(budget_mib);
    });
    let dir = live.dir.path().to_owned();
    // Three images in the pool: the base image, which a live VM will run from, and two spares,
    // `older` last written an hour before `newer` (neither was ever used, so that is their
    // last use).
    std::fs::copy(&image, dir.join("newer.qcow2")).expect("copy a spare image");
    std::fs::copy(&image, dir.join("older.qcow2")).expect("copy a spare image");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(dir.join("older.qcow2"))
        .and_then(|f| f.set_modified(hour_ago))
        .expect("age the older spare");

    let first = 3_400_000_000 + u64::from(std::process::id()) * 10;
    live.host
        .provision(&recipe(first, BASE))
        .await
        .expect("a vm from the base image");
    live.host
        .provision(&recipe(first + 1, "third"))
        .await
        .expect("a vm from a pulled image, once a spare is evicted");
    assert!(
        !dir.join("older.qcow2").exists(),
        "the least recently used spare stays"
    );
    assert!(
        dir.join("newer.qcow2").exists(),
        "more than needed was evicted"
    );
    assert!(
        Path::new(&live.base_path).exists(),
        "an image in use was evicted"
    );
    assert!(dir.join("third.qcow2").exists(), "the pulled image");
    // Each provisioning marked its image used.
    assert!(dir.join(format!("{BASE}.qcow2.used")).exists());
    assert!(dir.join("third.qcow2.used").exists());
    let facts = live.host.probe().await.expect("probe");
    assert_eq!(
        facts.images,
        vec!["newer".to_owned(), "third".to_owned(), BASE.to_owned()]
    );

    // With a VM on every image, a fourth cannot fit, and nothing is removed for it.
    live.host
        .provision(&recipe(first + 2, "newer"))
        .await
        .expect("a vm from the other spare");
    let e = live
        .host
        .provision(&recipe(first + 3, "fourth"))
        .await
        .expect_err("no room");
    match &e {
        DriverError::Host { message, .. } => {
            for part in [
                "fourth",
                &format!("image budget of {budget_mib} MiB"),
                "image_budget_mib",
                &format!("{BASE} "),
                "third ",
                "newer ",
            ] {
                assert!(message.contains(part), "{part:?} not in {message}");
            }
        }
        other => panic!("expected the host's error, got {other:?}"),
    }
    assert!(Path::new(&live.base_path).exists());
    assert!(dir.join("third.qcow2").exists());
    assert!(dir.join("newer.qcow2").exists());
    assert!(
        !dir.join("fourth.qcow2").exists(),
        "nothing of the refused pull"
    );
    assert!(!dir.join("fourth.qcow2.pulling").exists(), "marker left");

    for n in [first, first + 1, first + 2] {
        live.host.destroy(&vm_name(n)).await.expect("destroy");
    }
}

/// An image store (a directory) holding the tiny guest as `NAME.qcow2` for each name, with a
/// digest file each: the right one, or one of other bytes for the names in `corrupt`.
fn image_store(image: &Path, names: &[&str], corrupt: &[&str]) -> tempfile::TempDir {
    let store = tempfile::tempdir().expect("store dir");
    let bytes = std::fs::read(image).expect("guest image");
    let good = Sha256Digest::of(&bytes).to_string();
    let bad = Sha256Digest::of(b"other bytes").to_string();
    for name in names {
        let file = format!("{name}.qcow2");
        std::fs::write(store.path().join(&file), &bytes).expect("image");
        let digest = if corrupt.contains(name) { &bad } else { &good };
        std::fs::write(
            store.path().join(format!("{file}.sha256")),
            format!("{digest}  {file}\n"),
        )
        .expect("digest");
    }
    store
}

#[tokio::test]
async fn qemu_pulls_a_missing_base_image_once_verified_and_boots_from_it() {
    let Some(LiveLibvirt { uri, image }) = berth_testkit::live_libvirt() else {
        return;
    };
    // `corrupt` has a digest that its bytes do not match.
    let store = image_store(
        &image,
        &["pulled", "stale", "corrupt", "timed"],
        &["corrupt"],
    );
    let store_path = store.path().to_owned();
    let live = LiveHost::tuned(uri, &image, |c| {
        c.image_store = Some(ImageStore::Dir(store_path));
    });
    let dir = live.dir.path().to_owned();
    let want = Sha256Digest::of(&std::fs::read(&image).expect("guest image"));

    // One pull on its own, timed: the figure in docs/libvirt.md (the pool is set up first, so
    // the time is the pull's: the store read, the upload with its digest, the markers).
    live.host.probe().await.expect("probe");
    let bytes = std::fs::metadata(&image).expect("guest image").len();
    let started = Instant::now();
    live.host.pull("timed").await.expect("a timed pull");
    let seconds = started.elapsed().as_secs_f64();
    let gib = bytes as f64 / f64::from(1u32 << 30);
    eprintln!(
        "pulled {bytes} bytes from a directory store in {seconds:.3} s: {:.1} s per GiB",
        seconds / gib
    );
    assert_eq!(
        Sha256Digest::of(&std::fs::read(dir.join("timed.qcow2")).expect("timed image")),
        want
    );

    // Three VMs of an image the host lacks, at once: one pull, and all three boot from it.
    let first = 3_300_000_000 + u64::from(std::process::id()) * 10;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let host = live.host.clone();
        tasks.push(tokio::spawn(async move {
            let vm = recipe(first + i, "pulled");
            host.provision(&vm).await?;
            host.boot(&vm.name).await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("provision and boot");
    }
    let pulled = std::fs::read(dir.join("pulled.qcow2")).expect("the pulled image");
    assert_eq!(
        Sha256Digest::of(&pulled),
        want,
        "the pulled bytes are the image"
    );
    assert!(!dir.join("pulled.qcow2.pulling").exists(), "marker left");
    for i in 0..3 {
        let overlay = live.host.overlay_path(&vm_name(first + i));
        assert_eq!(
            qemu_img_backing_file(&overlay),
            dir.join("pulled.qcow2").to_str().unwrap()
        );
    }
    let facts = live.host.probe().await.expect("probe");
    assert!(facts.images.contains(&"pulled".to_owned()), "{facts:?}");

    // An image whose bytes do not match its digest is never used, and nothing of it stays.
    let e = live
        .host
        .provision(&recipe(first + 5, "corrupt"))
        .await
        .expect_err("a corrupt image");
    match &e {
        DriverError::Request { message, .. } => {
            assert!(message.contains("does not match its digest"), "{message}")
        }
        other => panic!("expected the request's error, got {other:?}"),
    }
    assert!(!dir.join("corrupt.qcow2").exists(), "corrupt image left");
    assert!(!dir.join("corrupt.qcow2.pulling").exists(), "marker left");

    // A pull cut short left a partial image and its marker: the next pull starts again.
    std::fs::write(dir.join("stale.qcow2"), b"the first megabyte of something").expect("w");
    std::fs::write(dir.join("stale.qcow2.pulling"), b"").expect("w");
    let facts = live.host.probe().await.expect("probe");
    assert!(!facts.images.contains(&"stale".to_owned()), "{facts:?}");
    live.host
        .provision(&recipe(first + 6, "stale"))
        .await
        .expect("provision after a cut-short pull");
    let stale = std::fs::read(dir.join("stale.qcow2")).expect("the pulled image");
    assert_eq!(Sha256Digest::of(&stale), want);
    assert!(!dir.join("stale.qcow2.pulling").exists(), "marker left");

    for i in [0, 1, 2, 6] {
        live.host
            .destroy(&vm_name(first + i))
            .await
            .expect("destroy");
    }
}

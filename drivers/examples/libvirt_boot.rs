//! Request-to-marker time on a real libvirt host: provisions N VMs of the tiny guest at once,
//! waits for each to print its marker on the serial console, prints the times and destroys
//! them. The README's boot figures come from `ci/bench-libvirt.sh`, which runs this.
//!
//! Usage: `libvirt-boot COUNT GUEST_IMAGE [URI]` (URI defaults to `qemu:///system`;
//! `BERTH_LIBVIRT_DOMAIN_TYPE` picks `kvm` or `qemu`, default `qemu`).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_drivers::libvirt::{LibvirtConfig, LibvirtHost};
use berth_drivers::{Driver, VmRecipe, vm_name};
use berth_sched::{GuestOs, Shape};

const MARKER: &str = "BERTH-GUEST-UP";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (count, image, uri) = match args.as_slice() {
        [count, image] => (count, image, "qemu:///system"),
        [count, image, uri] => (count, image, uri.as_str()),
        _ => bail!("usage: libvirt-boot COUNT GUEST_IMAGE [URI]"),
    };
    let count: u64 = count.parse().context("COUNT must be a number")?;

    // The guests' QEMU runs as another user: the directory must be reachable by it.
    let dir = tempfile::Builder::new()
        .prefix("berth-libvirt-bench")
        .tempdir_in("/var/tmp")
        .context("creating a temporary image directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let image_dir = dir
        .path()
        .to_str()
        .context("non-utf-8 temp dir")?
        .to_owned();
    std::fs::copy(image, format!("{image_dir}/tiny.qcow2"))
        .with_context(|| format!("copying {image}"))?;

    let mut config = LibvirtConfig::new(uri, &image_dir);
    config.domain_type = std::env::var("BERTH_LIBVIRT_DOMAIN_TYPE")
        .unwrap_or_else(|_| "qemu".into())
        .parse()?;
    config.boot_marker = Some(MARKER.into());
    config.boot_timeout_ms = 300_000;
    config.min_free_disk_mib = 64;
    let host = LibvirtHost::new("bench", config);

    let base = 3_100_000_000 + u64::from(std::process::id()) * 100;
    let start = Instant::now();
    let runs = (0..count).map(|i| {
        let host = host.clone();
        tokio::spawn(async move {
            let vm = VmRecipe {
                name: vm_name(base + i),
                template: "tiny".into(),
                base_image: "tiny".into(),
                guest_os: GuestOs::Linux,
                shape: Shape {
                    vcpus: 1,
                    memory_mib: 256,
                },
                domain_type: None,
            };
            let t = Instant::now();
            host.provision(&vm).await?;
            let provisioned = t.elapsed();
            host.boot(&vm.name).await?;
            Ok::<(Duration, Duration), berth_drivers::DriverError>((provisioned, t.elapsed()))
        })
    });
    let mut results = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        results.push(run.await?);
    }
    let all = start.elapsed();
    let mut failed = false;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok((p, m)) => println!(
                "vm {i}: provisioned {:.3} s, marker {:.3} s",
                p.as_secs_f64(),
                m.as_secs_f64()
            ),
            Err(e) => {
                failed = true;
                println!("vm {i}: {e}");
            }
        }
    }
    println!("all {count} at marker: {:.3} s", all.as_secs_f64());
    for i in 0..count {
        host.destroy(&vm_name(base + i)).await?;
    }
    let conn = virt::connect::Connect::open(Some(uri))?;
    if let Ok(pool) = conn.lookup_storage_pool_by_target_path(&image_dir) {
        pool.destroy()?;
    }
    if failed {
        bail!("some vms failed");
    }
    Ok(())
}

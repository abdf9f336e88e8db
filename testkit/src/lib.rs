//! What berth's tests share: the rule for tests that need something of the machine, the
//! published traces, a real `sshd` with stand-ins for Parallels' tools ([`sshd`]), a `berth
//! serve` process ([`serve`]), a client for the daemon's API and event stream ([`api`]), a
//! private CA with a real HTTPS file server ([`tls`]), a real PostgreSQL: a cluster of a
//! test's own, or a fresh database on the test server that `BERTH_TEST_POSTGRES` names
//! ([`postgres`]), and readers of the inventory and actions log that simulated hosts shared by
//! several daemons keep ([`sim`]).
//!
//! The rule for live tests: a test whose setup is missing here (no `sshd`, no libvirtd, no
//! published trace) calls [`skip_or_fail`], which says so on stderr as `SKIP <test>: <why>` and
//! lets the test return, unless `BERTH_LIVE_TESTS=require` is set (CI sets it): then it fails the
//! test, so that a broken setup cannot pass as a skip.
//!
//! A dev-dependency only, of any crate: it depends on none of berth's crates.

// Test support: a failed setup step should fail the test where it happened.
#![allow(clippy::unwrap_used)]

pub mod api;
pub mod postgres;
pub mod proxy;
pub mod serve;
pub mod sim;
pub mod sshd;
pub mod tls;

use std::fmt::Display;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use api::{Api, EventStream};
pub use serve::Serve;
pub use sim::{SimAction, SimActionOp, SimVmState, sim_actions, sim_inventory};

/// Whether live tests must run (`BERTH_LIVE_TESTS=require`) rather than skip.
pub fn live_tests_required() -> bool {
    std::env::var("BERTH_LIVE_TESTS").as_deref() == Ok("require")
}

/// Says on stderr why the running test cannot run here (`SKIP <test>: <why>`), after which the
/// test returns; under `BERTH_LIVE_TESTS=require` it fails the test instead. The test's name is
/// its thread's, which the test harness gives it.
pub fn skip_or_fail(why: impl Display) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(
        !live_tests_required(),
        "{test}: BERTH_LIVE_TESTS=require, but {why}"
    );
    eprintln!("{}", skip_line(test, &why));
}

fn skip_line(test: &str, why: &dyn Display) -> String {
    format!("SKIP {test}: {why}")
}

/// The workspace's root directory (this crate sits one level below it).
pub fn workspace_dir() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The published trace `name`, or `None` after [`skip_or_fail`]. The traces sit in
/// `../shared/traces` beside the repository, or in `BERTH_SHARED_TRACES` when set (a checkout
/// in a worktree sits elsewhere).
pub fn shared_trace(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_SHARED_TRACES")
        .map_or_else(|| workspace_dir().join("../shared/traces"), PathBuf::from);
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(format_args!(
        "{} not found (the shared traces sit beside the repository, or set BERTH_SHARED_TRACES)",
        path.display()
    ));
    None
}

/// `name` on `PATH` or in the system's `sbin` directories (where `sshd` and `ip` live, often
/// off a user's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A TCP port free on `ip` just now, for a server told where to listen.
pub fn free_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Calls `f` until it returns a value, and returns that; fails the test naming `what` after
/// `limit`. Polls often at first and then less, so that a quick condition is seen at once and a
/// slow one costs little.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A libvirtd that runs real guests, and the tiny guest's image: what the live libvirt tests
/// need.
#[derive(Clone, Debug)]
pub struct LiveLibvirt {
    /// `BERTH_LIBVIRT_URI`, by default `qemu:///system`.
    pub uri: String,
    /// `BERTH_GUEST_IMAGE`, by default `target/guest/tiny.qcow2` in the workspace.
    pub image: PathBuf,
}

/// The live libvirt setup, or `None` after [`skip_or_fail`] saying what is missing.
pub fn live_libvirt() -> Option<LiveLibvirt> {
    let live = probe_libvirt();
    if let Err(why) = &live {
        skip_or_fail(why);
    }
    live.ok()
}

fn probe_libvirt() -> Result<LiveLibvirt, String> {
    let uri = std::env::var("BERTH_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into());
    let image = std::env::var_os("BERTH_GUEST_IMAGE").map_or_else(
        || workspace_dir().join("target/guest/tiny.qcow2"),
        PathBuf::from,
    );
    if !image.is_file() {
        return Err(format!(
            "no guest image at {} (ci/build-guest.sh target/guest builds it; BERTH_GUEST_IMAGE \
             points elsewhere)",
            image.display()
        ));
    }
    match Command::new("virsh")
        .args(["-c", &uri, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Err(e) => Err(format!(
            "cannot run virsh: {e} (ci/libvirt-setup.sh installs it)"
        )),
        Ok(out) if !out.status.success() => Err(format!(
            "libvirtd does not answer at {uri}: {} (ci/libvirt-setup.sh starts it)",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => Ok(LiveLibvirt { uri, image }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_names_the_test_and_the_reason() {
        assert_eq!(
            skip_line("parallels::cut_link", &"ip is not installed"),
            "SKIP parallels::cut_link: ip is not installed"
        );
    }

    #[test]
    fn the_test_harness_names_the_thread_after_the_test() {
        assert_eq!(
            std::thread::current().name(),
            Some("tests::the_test_harness_names_the_thread_after_the_test")
        );
    }

    #[test]
    fn wait_for_returns_the_first_value() {
        let mut n = 0;
        let v = wait_for("three calls", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
    }
}

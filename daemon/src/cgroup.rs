//! Hooks in cgroups: with `[workers] hooks_cgroup`, each hook attempt runs in a cgroup of its
//! own under that directory, and everything in it is killed when the attempt ends. A process
//! group holds a hook's children only until one of them starts a session of its own (`setsid`,
//! a daemonising script); a cgroup holds every descendant whatever it does.
//!
//! The hook joins its group before its program starts: it is started through `/bin/sh` with a
//! fixed script that writes its own pid (`0`) into the group's `cgroup.procs` and then `exec`s
//! the hook's argv unchanged (passed as positional parameters, never parsed by the shell). So
//! nothing the hook forks can be outside the group, and the hook's pid is the program's.
//!
//! Works with cgroup v2 (a delegated subtree, or `/sys/fs/cgroup/unified` on hybrid systems)
//! and v1 hierarchies (`/sys/fs/cgroup/pids`): it needs only `cgroup.procs`, and uses v2's
//! `cgroup.kill` when there is one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::DaemonError;

/// The script that moves the shell into the group named by `$0` and becomes the hook.
const JOIN_AND_EXEC: &str = r#"echo 0 > "$0" && exec "$@""#;

/// Rounds of "kill what is in the group" before giving up on a group that keeps forking.
const KILL_ROUNDS_MAX: u32 = 100;
const KILL_ROUND_PAUSE_MS: u64 = 10;

/// Where hook attempts get their groups.
#[derive(Debug)]
pub(crate) struct HookCgroups {
    dir: PathBuf,
    next: AtomicU64,
}

impl HookCgroups {
    /// Checks that berth can make groups in `dir` (it must be a cgroup directory: it has a
    /// `cgroup.procs`), by making and removing one.
    pub(crate) fn open(dir: &Path) -> Result<HookCgroups, DaemonError> {
        let bad = |message: String| DaemonError::Config {
            key: "workers.hooks_cgroup".into(),
            message,
        };
        if !dir.join("cgroup.procs").is_file() {
            return Err(bad(format!(
                "{} is not a cgroup directory (it has no cgroup.procs)",
                dir.display()
            )));
        }
        let cgroups = HookCgroups {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
        };
        let probe = cgroups.group().map_err(|e| {
            bad(format!(
                "cannot make a cgroup in {}: {e} (berth needs write access there)",
                dir.display()
            ))
        })?;
        std::fs::remove_dir(&probe.path).map_err(|e| {
            bad(format!(
                "cannot remove the cgroup {}: {e}",
                probe.path.display()
            ))
        })?;
        Ok(cgroups)
    }

    /// A new, empty group for one attempt.
    pub(crate) fn group(&self) -> std::io::Result<Group> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("berth-hook-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(Group { path })
    }
}

/// One attempt's cgroup.
#[derive(Debug)]
pub(crate) struct Group {
    path: PathBuf,
}

impl Group {
    /// The argv that runs `argv` inside this group: `/bin/sh -c SCRIPT PROCS ARGV...`.
    pub(crate) fn wrap(&self, argv: &[String]) -> Vec<String> {
        let mut out = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            JOIN_AND_EXEC.to_owned(),
            self.path.join("cgroup.procs").display().to_string(),
        ];
        out.extend(argv.iter().cloned());
        out
    }

    /// Kills every process in the group, including those that started sessions of their
    /// own, and removes the group. Returns how many processes it killed; an error when the
    /// group would not empty.
    pub(crate) async fn kill_all(self) -> std::io::Result<usize> {
        // cgroup v2 kills the whole group at once; v1 (and older v2) needs the loop.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let mut killed = 0;
        for _ in 0..KILL_ROUNDS_MAX {
            let pids = std::fs::read_to_string(self.path.join("cgroup.procs"))?;
            let pids: Vec<i32> = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.is_empty() && std::fs::remove_dir(&self.path).is_ok() {
                return Ok(killed);
            }
            for pid in pids {
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    killed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(KILL_ROUND_PAUSE_MS)).await;
        }
        Err(std::io::Error::other(format!(
            "the cgroup {} did not empty after {KILL_ROUNDS_MAX} rounds of SIGKILL",
            self.path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_no_cgroup_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = HookCgroups::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("workers.hooks_cgroup") && err.contains("not a cgroup directory"),
            "{err}"
        );
    }

    #[test]
    fn the_hook_runs_unchanged_behind_the_join_script() {
        let g = Group {
            path: PathBuf::from("/sys/fs/cgroup/berth/berth-hook-1-0"),
        };
        let argv = g.wrap(&[
            "/usr/bin/page".to_owned(),
            "it's $HOME; rm -rf /".to_owned(),
        ]);
        assert_eq!(argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(argv[3], "/sys/fs/cgroup/berth/berth-hook-1-0/cgroup.procs");
        // The hook's argv follows as positional parameters, never parsed by the shell.
        assert_eq!(argv[4..], ["/usr/bin/page", "it's $HOME; rm -rf /"]);
        let out = std::process::Command::new(&argv[0])
            .args(["-c", r#"printf '%s|' "$@""#, "zero"])
            .args(&argv[4..])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/usr/bin/page|it's $HOME; rm -rf /|"
        );
    }
}

//! Readers of a shared simulated inventory (`[sim] shared_inventory`, `SimWorld::shared` in
//! `berth_drivers::sim`), so that tests of several daemons can check from the hosts' side what
//! was made, booted and destroyed, and by which process when.
//!
//! The format, which `berth_drivers::sim`'s module documentation describes too (keep the two
//! in step; this crate depends on none of berth's crates, so it reads the files itself):
//!
//! - `DIR/HOST/VM`: one directory per host, one file per VM, holding one line
//!   `booted=BOOL created_ms=MS`. Names starting with `.` are lock and temporary files.
//! - `DIR/actions`: one line per driver action that changed a host, or found its VM made
//!   already: `AT_MS<TAB>PID<TAB>OP<TAB>HOST<TAB>VM`, `OP` one of `provision`, `adopt`, `boot`,
//!   `destroy`.
//!
//! Anything else is a broken file and panics, naming the file and line: these are test helpers.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

/// The actions log inside the shared directory.
pub const ACTIONS_FILE: &str = "actions";

/// A VM on a simulated host, as its file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimVmState {
    pub booted: bool,
    /// When it was provisioned: wall clock, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// What a driver action did to a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimActionOp {
    /// Made the VM.
    Provision,
    /// A provision that found the VM made already (by an earlier attempt, of any process).
    Adopt,
    /// Started the VM.
    Boot,
    /// Removed the VM.
    Destroy,
}

/// One line of the actions log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimAction {
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The process that acted.
    pub pid: u32,
    pub op: SimActionOp,
    pub host: String,
    pub vm: String,
}

/// Every host of the shared inventory in `dir` (those that have a directory) and their VMs,
/// read now.
pub fn sim_inventory(dir: &Path) -> BTreeMap<String, BTreeMap<String, SimVmState>> {
    let mut hosts = BTreeMap::new();
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading shared inventory {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let name = file_name(&entry.path());
        if name.starts_with('.') || name == ACTIONS_FILE {
            continue;
        }
        let path = entry.path();
        assert!(
            path.is_dir(),
            "{}: neither a host directory nor the actions log",
            path.display()
        );
        hosts.insert(name, host_vms(&path));
    }
    hosts
}

fn host_vms(dir: &Path) -> BTreeMap<String, SimVmState> {
    let mut vms = BTreeMap::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .path();
        let name = file_name(&path);
        if name.starts_with('.') {
            continue;
        }
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // Destroyed between the listing and the read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        let vm = parse_vm(&text).unwrap_or_else(|why| panic!("{}, line 1: {why}", path.display()));
        vms.insert(name, vm);
    }
    vms
}

/// Every line of the actions log in `dir`, in the order they were written.
pub fn sim_actions(dir: &Path) -> Vec<SimAction> {
    let path = dir.join(ACTIONS_FILE);
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading actions log {}: {e}", path.display()));
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, line)| {
            parse_action(line)
                .unwrap_or_else(|why| panic!("{}, line {}: {why}", path.display(), i + 1))
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: not a UTF-8 file name", path.display()))
        .to_owned()
}

fn parse_vm(text: &str) -> Result<SimVmState, String> {
    let Some(line) = text.strip_suffix('\n').filter(|l| !l.contains('\n')) else {
        return Err(format!("expected one line, got {text:?}"));
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let [booted, created_ms] = fields[..] else {
        return Err(format!(
            "expected `booted=BOOL created_ms=MS`, got {line:?}"
        ));
    };
    let booted = booted
        .strip_prefix("booted=")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("expected `booted=true` or `booted=false`, got {booted:?}"))?;
    let created_ms = created_ms
        .strip_prefix("created_ms=")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("expected `created_ms=MS`, got {created_ms:?}"))?;
    Ok(SimVmState { booted, created_ms })
}

fn parse_action(line: &str) -> Result<SimAction, String> {
    let Some(line) = line.strip_suffix('\n') else {
        return Err(format!("a line cut short (no newline): {line:?}"));
    };
    let fields: Vec<&str> = line.split('\t').collect();
    let [at_ms, pid, op, host, vm] = fields[..] else {
        return Err(format!(
            "expected `AT_MS<TAB>PID<TAB>OP<TAB>HOST<TAB>VM`, got {line:?}"
        ));
    };
    let op = match op {
        "provision" => SimActionOp::Provision,
        "adopt" => SimActionOp::Adopt,
        "boot" => SimActionOp::Boot,
        "destroy" => SimActionOp::Destroy,
        other => return Err(format!("unknown op {other:?}")),
    };
    if host.is_empty() || vm.is_empty() {
        return Err(format!("empty host or vm in {line:?}"));
    }
    Ok(SimAction {
        at_ms: at_ms.parse().map_err(|e| format!("at_ms {at_ms:?}: {e}"))?,
        pid: pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))?,
        op,
        host: host.to_owned(),
        vm: vm.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_broken_ones_say_why() {
        assert_eq!(
            parse_action("1796600000123\t4242\tprovision\th1\tberth-vm7\n"),
            Ok(SimAction {
                at_ms: 1_796_600_000_123,
                pid: 4242,
                op: SimActionOp::Provision,
                host: "h1".into(),
                vm: "berth-vm7".into(),
            })
        );
        assert_eq!(
            parse_action("1\t2\tboot\th1\tberth-vm7"),
            Err("a line cut short (no newline): \"1\\t2\\tboot\\th1\\tberth-vm7\"".into())
        );
        assert_eq!(
            parse_action("1\t2\treboot\th1\tberth-vm7\n"),
            Err("unknown op \"reboot\"".into())
        );
        assert!(parse_action("1\t2\tboot\th1\n").is_err());
        assert_eq!(
            parse_vm("booted=false created_ms=12\n"),
            Ok(SimVmState {
                booted: false,
                created_ms: 12
            })
        );
        assert!(parse_vm("booted=maybe created_ms=12\n").is_err());
        assert!(parse_vm("booted=true\n").is_err());
        assert!(parse_vm("").is_err());
    }

    #[test]
    fn a_broken_actions_log_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(ACTIONS_FILE),
            "1\t2\tprovision\th1\tberth-vm1\n1\t2\tprovision\th1\n",
        )
        .unwrap();
        let err = std::panic::catch_unwind(|| sim_actions(dir.path())).unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.contains("actions, line 2: expected"), "{message}");
    }
}

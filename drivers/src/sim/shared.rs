//! The inventory of simulated hosts kept in a directory that several processes share, and the
//! log of the driver actions that changed it (the format is described in the parent module).
//!
//! Every change to a host's VMs happens under that host's lock file (`flock`), so that a boot
//! that rewrites a VM's file cannot bring back a VM another process destroyed meanwhile. Readers
//! take no lock: a VM's file is only ever replaced whole (written aside, then linked or renamed
//! into place), so a reader sees it before or after a change, never half-written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::DriverError;

use super::SimWorldError;

/// The actions log, directly in the shared directory.
const ACTIONS_FILE: &str = "actions";

/// Each host directory's lock file; its leading dot keeps it out of listings.
const LOCK_FILE: &str = ".lock";

/// A VM as its file describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SharedVm {
    pub(super) booted: bool,
    pub(super) created_ms: u64,
}

/// A driver action that changed a host, as the actions log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Provision,
    Adopt,
    Boot,
    Destroy,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Provision => "provision",
            Action::Adopt => "adopt",
            Action::Boot => "boot",
            Action::Destroy => "destroy",
        }
    }
}

/// What a provision found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Created {
    New,
    /// The VM was there already (made by an earlier attempt, of this process or another).
    Existed,
}

/// What a boot found once its latency had passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Booted {
    Now,
    Already,
    Gone,
}

/// One process's handle on a shared inventory directory.
#[derive(Debug)]
pub(super) struct SharedInventory {
    dir: PathBuf,
    /// The actions log, opened with `O_APPEND`: each line is one `write`, so lines of several
    /// processes never interleave.
    actions: File,
    pid: u32,
}

impl SharedInventory {
    /// Opens (creating if missing) the directory and its actions log.
    pub(super) fn open(dir: &Path) -> Result<SharedInventory, SimWorldError> {
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| SimWorldError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_err(dir))?;
        let actions_path = dir.join(ACTIONS_FILE);
        let actions = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&actions_path)
            .map_err(write_err(&actions_path))?;
        Ok(SharedInventory {
            dir: dir.to_owned(),
            actions,
            pid: std::process::id(),
        })
    }

    /// The VM `vm` of `host`, if the host has it.
    pub(super) fn get(&self, host: &str, vm: &str) -> Result<Option<SharedVm>, DriverError> {
        let path = self.vm_path(host, vm)?;
        read_vm(&path).map_err(|message| host_error(host, message))
    }

    /// Creates the VM, not booted, unless the host has one of that name already. Either way
    /// the actions log says which (`provision` or `adopt`).
    pub(super) fn create(&self, host: &str, vm: &str) -> Result<Created, DriverError> {
        let path = self.vm_path(host, vm)?;
        let _lock = self.lock(host)?;
        let content = SharedVm {
            booted: false,
            created_ms: now_ms(),
        };
        let tmp = self.write_aside(host, vm, content)?;
        // A hard link fails if the name exists: an exclusive create of a file whose content is
        // already complete.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.log(Action::Provision, host, vm);
                Ok(Created::New)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.log(Action::Adopt, host, vm);
                Ok(Created::Existed)
            }
            Err(e) => Err(io_error(host, "creating", &path, &e)),
        }
    }

    /// Marks the VM booted, if it is still there.
    pub(super) fn boot(&self, host: &str, vm: &str) -> Result<Booted, DriverError> {
        let path = self.vm_path(host, vm)?;
        let _lock = self.lock(host)?;
        let Some(found) = read_vm(&path).map_err(|message| host_error(host, message))? else {
            return Ok(Booted::Gone);
        };
        if found.booted {
            return Ok(Booted::Already);
        }
        let tmp = self.write_aside(
            host,
            vm,
            SharedVm {
                booted: true,
                ..found
            },
        )?;
        fs::rename(&tmp, &path).map_err(|e| io_error(host, "replacing", &path, &e))?;
        self.log(Action::Boot, host, vm);
        Ok(Booted::Now)
    }

    /// Removes the VM; whether it was there.
    pub(super) fn remove(&self, host: &str, vm: &str) -> Result<bool, DriverError> {
        let path = self.vm_path(host, vm)?;
        let _lock = self.lock(host)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                self.log(Action::Destroy, host, vm);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(host, "removing", &path, &e)),
        }
    }

    /// The VMs of `host` now, by name, read afresh from its directory.
    pub(super) fn list(&self, host: &str) -> Result<Vec<(String, SharedVm)>, DriverError> {
        let dir = self.host_dir(host)?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(host, "listing", &dir, &e)),
        };
        let mut vms = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(host, "listing", &dir, &e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            // Destroyed between the listing and the read: not there.
            if let Some(vm) = read_vm(&entry.path()).map_err(|message| host_error(host, message))? {
                vms.push((name, vm));
            }
        }
        vms.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(vms)
    }

    /// The hosts that have a directory, by name.
    pub(super) fn hosts(&self) -> io::Result<Vec<String>> {
        let mut hosts = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                hosts.push(name.to_owned());
            }
        }
        hosts.sort();
        Ok(hosts)
    }

    /// Puts a booted VM on a host behind berth's back; not a driver action, so not logged.
    pub(super) fn plant(&self, host: &str, vm: &str) -> Result<(), DriverError> {
        let path = self.vm_path(host, vm)?;
        let _lock = self.lock(host)?;
        let tmp = self.write_aside(
            host,
            vm,
            SharedVm {
                booted: true,
                created_ms: now_ms(),
            },
        )?;
        fs::rename(&tmp, &path).map_err(|e| io_error(host, "replacing", &path, &e))
    }

    /// Removes a VM behind berth's back; not a driver action, so not logged.
    pub(super) fn vanish(&self, host: &str, vm: &str) -> Result<(), DriverError> {
        let path = self.vm_path(host, vm)?;
        let _lock = self.lock(host)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(host, "removing", &path, &e)),
        }
    }

    fn host_dir(&self, host: &str) -> Result<PathBuf, DriverError> {
        check_name(host).map_err(|why| {
            host_error(
                host,
                format!("a shared simulated inventory cannot hold host {host:?}: {why}"),
            )
        })?;
        Ok(self.dir.join(host))
    }

    fn vm_path(&self, host: &str, vm: &str) -> Result<PathBuf, DriverError> {
        let dir = self.host_dir(host)?;
        check_name(vm).map_err(|why| DriverError::Request {
            host: host.to_owned(),
            message: format!("a shared simulated inventory cannot hold vm {vm:?}: {why}"),
        })?;
        Ok(dir.join(vm))
    }

    /// Takes the host's lock, creating its directory if needed; dropping the file releases it.
    fn lock(&self, host: &str) -> Result<File, DriverError> {
        let dir = self.host_dir(host)?;
        fs::create_dir_all(&dir).map_err(|e| io_error(host, "creating", &dir, &e))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(host, "opening", &path, &e))?;
        file.lock()
            .map_err(|e| io_error(host, "locking", &path, &e))?;
        Ok(file)
    }

    /// Writes a VM's file under a name listings skip (under the host's lock, so one at a time).
    fn write_aside(&self, host: &str, vm: &str, content: SharedVm) -> Result<PathBuf, DriverError> {
        let tmp = self.host_dir(host)?.join(format!(".{vm}.tmp"));
        fs::write(&tmp, render_vm(content)).map_err(|e| io_error(host, "writing", &tmp, &e))?;
        Ok(tmp)
    }

    fn log(&self, action: Action, host: &str, vm: &str) {
        let line = format!(
            "{}\t{}\t{}\t{host}\t{vm}\n",
            now_ms(),
            self.pid,
            action.word()
        );
        // One write of the whole line on an O_APPEND file: atomic against other appenders.
        if let Err(error) = (&self.actions).write_all(line.as_bytes()) {
            let path = self.dir.join(ACTIONS_FILE);
            tracing::error!(path = %path.display(), %error, "cannot write simulated actions log");
        }
    }
}

/// A host or VM name must be one plain file name, and fit a tab-separated line.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.starts_with('.') {
        return Err("the name starts with `.`");
    }
    if name.chars().any(|c| c == '/' || c.is_control()) {
        return Err("the name holds `/` or a control character");
    }
    Ok(())
}

fn render_vm(vm: SharedVm) -> String {
    format!("booted={} created_ms={}\n", vm.booted, vm.created_ms)
}

/// Reads a VM's file; `None` if it does not exist.
fn read_vm(path: &Path) -> Result<Option<SharedVm>, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    parse_vm(&text)
        .map(Some)
        .map_err(|why| format!("{}: {why}", path.display()))
}

fn parse_vm(text: &str) -> Result<SharedVm, String> {
    let (mut booted, mut created_ms) = (None, None);
    for field in text.split_whitespace() {
        match field.split_once('=') {
            Some(("booted", v)) => {
                booted = Some(v.parse::<bool>().map_err(|e| format!("booted={v}: {e}"))?);
            }
            Some(("created_ms", v)) => {
                created_ms = Some(
                    v.parse::<u64>()
                        .map_err(|e| format!("created_ms={v}: {e}"))?,
                );
            }
            _ => return Err(format!("unexpected field {field:?}")),
        }
    }
    match (booted, created_ms) {
        (Some(booted), Some(created_ms)) => Ok(SharedVm { booted, created_ms }),
        _ => Err(format!(
            "expected `booted=BOOL created_ms=MS`, got {:?}",
            text.trim_end()
        )),
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn host_error(host: &str, message: String) -> DriverError {
    DriverError::Host {
        host: host.to_owned(),
        message: format!("simulated inventory: {message}"),
    }
}

fn io_error(host: &str, what: &str, path: &Path, e: &io::Error) -> DriverError {
    host_error(host, format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_files_read_back_and_bad_ones_are_named() {
        let vm = SharedVm {
            booted: true,
            created_ms: 1_796_600_000_123,
        };
        assert_eq!(render_vm(vm), "booted=true created_ms=1796600000123\n");
        assert_eq!(parse_vm(&render_vm(vm)), Ok(vm));
        assert_eq!(
            parse_vm("booted=yes created_ms=1"),
            Err("booted=yes: provided string was not `true` or `false`".into())
        );
        assert_eq!(
            parse_vm("booted=false"),
            Err("expected `booted=BOOL created_ms=MS`, got \"booted=false\"".into())
        );
        assert_eq!(
            parse_vm("booted=false created_ms=1 os=linux"),
            Err("unexpected field \"os=linux\"".into())
        );
    }

    #[test]
    fn names_that_are_not_one_plain_file_name_are_refused() {
        for bad in ["", ".", "..", ".lock", "a/b", "a\tb", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["h1", "mac-mini.lan", "berth-vm12", "host_2"] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
    }
}

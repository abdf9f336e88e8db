//! Where the console's data comes from: the `Source` trait, and an in-memory source for tests,
//! benchmarks and demos without a daemon.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use crate::event::{Event, Role};
use crate::model::{Action, ConsoleInfo, Detail, DrainPrediction, Snapshot, Target, TimelineEntry};

/// A failure to read from or act on a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source could not be reached; worth retrying.
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The source answered with an error.
    #[error("{what}: {status}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("{what}: unexpected answer: {message}")]
    Shape { what: String, message: String },
    /// The source does not offer this.
    #[error("{0}")]
    Unsupported(String),
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. })
    }
}

/// Snapshots, details and actions. Called from one worker thread; `subscribe` may start its
/// own thread for the event stream.
pub trait Source: Send {
    /// The fleet now: hosts, queue with why-waiting, live VMs, breakpoints.
    fn snapshot(&mut self) -> Result<Snapshot, SourceError>;
    fn detail(&mut self, target: &Target) -> Result<Detail, SourceError>;
    fn perform(&mut self, action: &Action) -> Result<(), SourceError>;
    /// The queue wait with and without draining `hosts`; `Ok(None)` if the source cannot say.
    fn predict_drain(&mut self, hosts: &[String]) -> Result<Option<DrainPrediction>, SourceError>;
    fn console(&mut self, vm: u64) -> Result<ConsoleInfo, SourceError>;
    /// A PNG of the VM's screen.
    fn screenshot(&mut self, vm: u64) -> Result<Vec<u8>, SourceError>;
    /// The end of the VM's serial console log, as text safe to draw (see
    /// [`crate::model::clean_serial`]): the guest wrote these bytes, escape sequences and all.
    fn serial_log(&mut self, vm: u64) -> Result<String, SourceError>;
    /// The daemon's own recent log lines, oldest first, one per line.
    fn daemon_log(&mut self) -> Result<String, SourceError> {
        Err(SourceError::Unsupported(
            "this source keeps no daemon log".into(),
        ))
    }
    /// What the token may do, if the source can tell.
    fn role(&mut self) -> Option<Role>;
    /// Starts sending live events (`Event::Stream`, `Event::StreamUp`) to `tx`.
    fn subscribe(&mut self, tx: Sender<Event>);
}

/// A fixed fleet in memory; actions change it the way the daemon would, and are recorded.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    pub snap: Snapshot,
    pub prediction: Option<DrainPrediction>,
    /// Every action performed, in order.
    pub performed: Arc<Mutex<Vec<Action>>>,
    pub role: Option<Role>,
    pub screenshot_png: Option<Vec<u8>>,
}

impl MemorySource {
    pub fn new(snap: Snapshot) -> MemorySource {
        MemorySource {
            snap,
            ..MemorySource::default()
        }
    }
}

impl Source for MemorySource {
    fn snapshot(&mut self) -> Result<Snapshot, SourceError> {
        Ok(self.snap.clone())
    }

    fn detail(&mut self, target: &Target) -> Result<Detail, SourceError> {
        let mut fields = Vec::new();
        let mut timeline = Vec::new();
        let mut console = None;
        match target {
            Target::Host(name) => {
                let h = self
                    .snap
                    .hosts
                    .iter()
                    .find(|h| &h.name == name)
                    .ok_or_else(|| SourceError::Unsupported(format!("no host {name}")))?;
                fields.push(("state".into(), h.state.clone()));
                fields.push(("driver".into(), h.driver.clone()));
                fields.push(("vms".into(), h.n_vms.to_string()));
            }
            Target::Request(id) => {
                if let Some(r) = self.snap.queue.iter().find(|r| r.id == *id) {
                    fields.push(("requester".into(), r.requester.clone()));
                    fields.push(("shape".into(), r.shape()));
                    if let Some(w) = &r.why {
                        fields.push(("why".into(), w.summary.clone()));
                    }
                    timeline.push(TimelineEntry {
                        at_ms: r.submitted_ms,
                        text: "submitted".into(),
                    });
                }
            }
            Target::Vm(id) => {
                if let Some(v) = self.snap.vms.iter().find(|v| v.id == *id) {
                    fields.push(("state".into(), v.state.clone()));
                    fields.push(("host".into(), v.host.clone().unwrap_or_default()));
                    timeline.push(TimelineEntry {
                        at_ms: v.created_ms,
                        text: "- → queued (submitted)".into(),
                    });
                    timeline.push(TimelineEntry {
                        at_ms: v.updated_ms,
                        text: format!("→ {}", v.state),
                    });
                }
                console = Some(self.console(*id).map_err(|e| e.to_string()));
            }
        }
        Ok(Detail {
            target: target.clone(),
            fields,
            timeline,
            console,
        })
    }

    fn perform(&mut self, action: &Action) -> Result<(), SourceError> {
        if let Ok(mut p) = self.performed.lock() {
            p.push(action.clone());
        }
        let set_host = |snap: &mut Snapshot, name: &str, state: &str| {
            for h in snap.hosts.iter_mut().filter(|h| h.name == name) {
                h.state = state.into();
            }
        };
        match action {
            Action::Drain(h) => set_host(&mut self.snap, h, "draining"),
            Action::Resume(h) => set_host(&mut self.snap, h, "ready"),
            Action::Offline(h) => set_host(&mut self.snap, h, "offline"),
            Action::Cancel(r) => self.snap.queue.retain(|q| q.id != *r),
            Action::Release(v) => {
                self.snap.breakpoints.retain(|b| b.vm != *v);
                self.snap.vms.retain(|x| x.id != *v);
            }
            Action::Extend { vm, seconds } => {
                for b in self.snap.breakpoints.iter_mut().filter(|b| b.vm == *vm) {
                    b.expires_ms = b.expires_ms.map(|e| e + seconds * 1000);
                }
            }
        }
        Ok(())
    }

    fn predict_drain(&mut self, _hosts: &[String]) -> Result<Option<DrainPrediction>, SourceError> {
        Ok(self.prediction.clone())
    }

    fn console(&mut self, vm: u64) -> Result<ConsoleInfo, SourceError> {
        let v = self
            .snap
            .vms
            .iter()
            .find(|v| v.id == vm)
            .ok_or_else(|| SourceError::Unsupported(format!("vm {vm} is not on a host now")))?;
        Ok(ConsoleInfo {
            vm,
            host: v.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: u16::try_from(5900 + vm % 1000).unwrap_or(5900),
            password: None,
        })
    }

    fn screenshot(&mut self, vm: u64) -> Result<Vec<u8>, SourceError> {
        self.screenshot_png
            .clone()
            .ok_or_else(|| SourceError::Unsupported(format!("no screenshot of vm {vm}")))
    }

    /// A canned boot log for a VM on a host, as a libvirt guest with `console=ttyS0` writes it.
    fn serial_log(&mut self, vm: u64) -> Result<String, SourceError> {
        match self.snap.vms.iter().find(|v| v.id == vm) {
            Some(v) if v.host.is_some() => {
                Ok(crate::model::clean_serial(&crate::fixture::serial_log(vm)))
            }
            _ => Err(SourceError::Unsupported(format!(
                "vm {vm} is not on a host now"
            ))),
        }
    }

    fn role(&mut self) -> Option<Role> {
        self.role
    }

    fn subscribe(&mut self, tx: Sender<Event>) {
        let _ = tx.send(Event::StreamUp(true));
    }
}

//! The console's closed set of inputs (events) and outputs (commands). The update function turns
//! one into the other; the runtime carries commands out and feeds results back as events.

use crossterm::event::KeyEvent;

use crate::model::{Action, ConsoleInfo, Detail, DrainPrediction, EventRow, Snapshot, Target};

/// How the console's link to its source stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Not yet heard from the source.
    Connecting,
    /// The last fetch worked.
    Live,
    /// The last fetch failed; retrying.
    Reconnecting { attempt: u32, error: String },
}

/// What the token may do, when the source can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Operator,
    ReadOnly,
}

/// Everything that can happen to the console.
#[derive(Clone, Debug)]
pub enum Event {
    Key(KeyEvent),
    Resize {
        width: u16,
        height: u16,
    },
    /// The wall clock, once a second (ms since the Unix epoch).
    Tick {
        now_ms: u64,
    },
    /// A fresh snapshot from the source.
    Data(Box<Snapshot>),
    /// A live event from the stream.
    Stream(EventRow),
    Connection(ConnState),
    /// The event stream's own link: up or down.
    StreamUp(bool),
    Role(Role),
    Detail(Box<Result<Detail, String>>),
    /// A drain forecast: `Ok(None)` when the source cannot predict.
    Prediction {
        hosts: Vec<String>,
        result: Result<Option<DrainPrediction>, String>,
    },
    ActionDone {
        action: Action,
        result: Result<(), String>,
    },
    /// The console address of a VM, asked for by `v`.
    Console(Result<ConsoleInfo, String>),
    /// A screenshot was fetched (the runtime keeps the image; this says how it went).
    Screenshot {
        vm: u64,
        result: Result<(), String>,
    },
    /// The end of a VM's serial log, as the source gives it, or why there is none.
    SerialLog {
        vm: u64,
        result: Result<String, String>,
    },
    /// The daemon's own recent log lines, one per line, or why there are none.
    DaemonLog(Result<String, String>),
    /// A message for the footer from the runtime (a viewer started, nothing to copy with).
    Notice(String),
}

/// What the update function asks the runtime to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Quit,
    /// Fetch a snapshot now.
    Refresh,
    FetchDetail(Target),
    PredictDrain(Vec<String>),
    Perform(Action),
    /// Ask for a VM's console address (for `v`).
    FetchConsole(u64),
    /// Put text on the operator's clipboard with OSC 52.
    Copy(String),
    /// Start a local VNC viewer on this address.
    LaunchViewer {
        host: String,
        port: u16,
    },
    FetchScreenshot(u64),
    /// Fetch the end of a VM's serial log (for `l`).
    FetchSerialLog(u64),
    /// Fetch the daemon's own recent log (for `:logs`).
    FetchDaemonLog,
}

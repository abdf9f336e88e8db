//! The runtime: terminal setup, the input and worker threads, frame pacing (redraw only on
//! change, at most ~15 frames a second), and carrying out the update function's commands.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratatui_image::picker::Picker;
use ratatui_image::protocol::StatefulProtocol;

use crate::app::{App, Options};
use crate::event::{Command, ConnState, Event};
use crate::source::Source;

/// The shortest time between two frames (~15 fps).
pub const FRAME_MIN_MS: u64 = 66;
/// The clock in the header and the ages in tables move once a second.
const TICK_MS: u64 = 1000;
/// The longest wait between two attempts to reach a source that is down.
const RETRY_MAX_MS: u64 = 10_000;

/// What stops the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("{0}")]
    Client(#[from] berth_client::ClientError),
}

/// Messages to the main loop.
enum Msg {
    Event(Event),
    Image(u64, Vec<u8>),
}

/// The wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs the console on a source until the operator quits.
pub fn run(
    mut source: Box<dyn Source>,
    opts: Options,
    refresh_ms: u64,
) -> Result<(), ConsoleError> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let (etx, erx) = mpsc::channel::<Event>();
    // Events from the source's stream go through a small forwarder into the main channel.
    let fwd = tx.clone();
    std::thread::Builder::new()
        .name("berth-forward".into())
        .spawn(move || {
            for e in erx {
                if fwd.send(Msg::Event(e)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ConsoleError::Thread("forwarder", e))?;
    source.subscribe(etx);

    let picker = image_picker();
    let mut terminal = ratatui::try_init()?;
    let result = (|| {
        let size = terminal.size()?;
        let mut app = App::new(opts, now_ms(), size.width, size.height);
        let work = spawn_threads(source, tx, refresh_ms)?;
        main_loop(&mut terminal, &mut app, &rx, &work, &picker)
    })();
    ratatui::try_restore()?;
    result
}

/// Half-blocks, which every terminal draws, unless `BERTH_IMAGE_PROTOCOL=query` asks to probe
/// the terminal for sixel, kitty or iTerm2 graphics. The probe is opt-in: a terminal that does
/// not answer leaves the probe's reader on stdin after its timeout, where it eats keys.
fn image_picker() -> Picker {
    if std::env::var("BERTH_IMAGE_PROTOCOL").is_ok_and(|v| v == "query") {
        // Before raw mode and the input thread: the probe sets its own modes and reads stdin.
        Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks())
    } else {
        Picker::halfblocks()
    }
}

fn spawn_threads(
    source: Box<dyn Source>,
    tx: Sender<Msg>,
    refresh_ms: u64,
) -> Result<Sender<Command>, ConsoleError> {
    let input_tx = tx.clone();
    std::thread::Builder::new()
        .name("berth-input".into())
        .spawn(move || {
            loop {
                let ev = match crossterm::event::read() {
                    Ok(crossterm::event::Event::Key(k)) => Event::Key(k),
                    Ok(crossterm::event::Event::Resize(width, height)) => {
                        Event::Resize { width, height }
                    }
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if input_tx.send(Msg::Event(ev)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ConsoleError::Thread("input", e))?;
    let (wtx, wrx) = mpsc::channel::<Command>();
    std::thread::Builder::new()
        .name("berth-source".into())
        .spawn(move || worker(source, &wrx, &tx, refresh_ms))
        .map_err(|e| ConsoleError::Thread("source", e))?;
    Ok(wtx)
}

fn main_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    rx: &Receiver<Msg>,
    work: &Sender<Command>,
    picker: &Picker,
) -> Result<(), ConsoleError> {
    let frame_min = Duration::from_millis(FRAME_MIN_MS);
    let tick = Duration::from_millis(TICK_MS);
    let mut last_draw: Option<Instant> = None;
    let mut next_tick = Instant::now() + tick;
    let mut image: Option<StatefulProtocol> = None;
    loop {
        let now = Instant::now();
        let until_frame = match last_draw {
            Some(t) if app.dirty => frame_min.saturating_sub(now - t),
            None => Duration::ZERO,
            _ => next_tick.saturating_duration_since(now),
        };
        let timeout = until_frame.min(next_tick.saturating_duration_since(now));
        let mut msgs = Vec::new();
        match rx.recv_timeout(timeout) {
            Ok(m) => msgs.push(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // Take everything already waiting, so a burst of events costs one frame.
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
            if msgs.len() >= 4096 {
                break;
            }
        }
        if Instant::now() >= next_tick {
            next_tick += tick;
            msgs.push(Msg::Event(Event::Tick { now_ms: now_ms() }));
        }
        for m in msgs {
            let event = match m {
                Msg::Event(e) => e,
                Msg::Image(vm, bytes) => match decode_screenshot(picker, &bytes) {
                    Ok(p) => {
                        image = Some(p);
                        Event::Screenshot { vm, result: Ok(()) }
                    }
                    Err(e) => Event::Screenshot { vm, result: Err(e) },
                },
            };
            for cmd in app.update(event) {
                match cmd {
                    Command::Quit => return Ok(()),
                    Command::Copy(text) => {
                        let mut out = std::io::stdout();
                        out.write_all(crate::vnc::osc52(&text).as_bytes())?;
                        out.flush()?;
                    }
                    Command::LaunchViewer { host, port } => {
                        let text = launch_viewer(&host, port);
                        app.update(Event::Notice(text));
                    }
                    other => {
                        let _ = work.send(other);
                    }
                }
            }
        }
        let due = last_draw.is_none_or(|t| t.elapsed() >= frame_min);
        if app.dirty && due {
            terminal.draw(|f| crate::ui::draw(f, app, image.as_mut()))?;
            app.dirty = false;
            last_draw = Some(Instant::now());
        }
    }
}

/// A screenshot (PNG, or any format the `image` crate reads) ready to draw with `picker`.
pub fn decode_screenshot(picker: &Picker, bytes: &[u8]) -> Result<StatefulProtocol, String> {
    image::load_from_memory(bytes)
        .map(|img| picker.new_resize_protocol(img))
        .map_err(|e| format!("not an image: {e}"))
}

fn launch_viewer(host: &str, port: u16) -> String {
    let env = std::env::var("BERTH_VNC_VIEWER").ok();
    let path = std::env::var("PATH").ok();
    match crate::vnc::find_viewer(env.as_deref(), path.as_deref(), host, port) {
        None => format!(
            "no VNC viewer found (set BERTH_VNC_VIEWER, or install vncviewer or remote-viewer): vnc://{host}:{port}"
        ),
        Some(v) => {
            let spawned = std::process::Command::new(&v.program)
                .args(&v.args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            match spawned {
                Ok(_) => format!("started {} {}", v.program.display(), v.args.join(" ")),
                Err(e) => format!("cannot start {}: {e}", v.program.display()),
            }
        }
    }
}

/// Owns the source: fetches snapshots on a timer and carries out commands.
fn worker(mut source: Box<dyn Source>, rx: &Receiver<Command>, tx: &Sender<Msg>, refresh_ms: u64) {
    let send = |e: Event| tx.send(Msg::Event(e)).is_ok();
    if let Some(role) = source.role()
        && !send(Event::Role(role))
    {
        return;
    }
    let mut attempt = 0u32;
    let mut next = Instant::now();
    loop {
        let cmd = match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let ok = match cmd {
            None | Some(Command::Refresh) => {
                let t0 = Instant::now();
                match source.snapshot() {
                    Ok(s) => {
                        attempt = 0;
                        // Big fleets take long to list: poll less often than it takes.
                        let spent = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                        next = Instant::now()
                            + Duration::from_millis(refresh_ms.max(spent.saturating_mul(4)));
                        send(Event::Data(Box::new(s))) && send(Event::Connection(ConnState::Live))
                    }
                    Err(e) => {
                        attempt += 1;
                        let wait = 500u64.saturating_mul(1 << attempt.min(5)).min(RETRY_MAX_MS);
                        next = Instant::now() + Duration::from_millis(wait);
                        send(Event::Connection(ConnState::Reconnecting {
                            attempt,
                            error: e.to_string(),
                        }))
                    }
                }
            }
            Some(Command::FetchDetail(t)) => send(Event::Detail(Box::new(
                source.detail(&t).map_err(|e| e.to_string()),
            ))),
            Some(Command::PredictDrain(hosts)) => {
                let result = source.predict_drain(&hosts).map_err(|e| e.to_string());
                send(Event::Prediction { hosts, result })
            }
            Some(Command::Perform(action)) => {
                let result = source.perform(&action).map_err(|e| e.to_string());
                send(Event::ActionDone { action, result })
            }
            Some(Command::FetchConsole(vm)) => send(Event::Console(
                source.console(vm).map_err(|e| e.to_string()),
            )),
            Some(Command::FetchScreenshot(vm)) => match source.screenshot(vm) {
                Ok(bytes) => tx.send(Msg::Image(vm, bytes)).is_ok(),
                Err(e) => send(Event::Screenshot {
                    vm,
                    result: Err(e.to_string()),
                }),
            },
            Some(Command::FetchSerialLog(vm)) => send(Event::SerialLog {
                vm,
                result: source.serial_log(vm).map_err(|e| e.to_string()),
            }),
            Some(Command::FetchDaemonLog) => send(Event::DaemonLog(
                source.daemon_log().map_err(|e| e.to_string()),
            )),
            // Handled by the main loop.
            Some(Command::Quit | Command::Copy(_) | Command::LaunchViewer { .. }) => true,
        };
        if !ok {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::model::Action;
    use crate::source::MemorySource;

    fn next_event(rx: &Receiver<Msg>) -> Event {
        loop {
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Msg::Event(e) => return e,
                Msg::Image(..) => continue,
            }
        }
    }

    #[test]
    fn the_worker_fetches_at_once_and_carries_out_commands() {
        let mut src = MemorySource::new(fixture::small());
        src.role = Some(crate::event::Role::ReadOnly);
        let performed = src.performed.clone();
        let (tx, rx) = mpsc::channel();
        let (wtx, wrx) = mpsc::channel();
        let handle = std::thread::spawn(move || worker(Box::new(src), &wrx, &tx, 60_000));
        assert!(matches!(
            next_event(&rx),
            Event::Role(crate::event::Role::ReadOnly)
        ));
        assert!(matches!(next_event(&rx), Event::Data(_)));
        assert!(matches!(
            next_event(&rx),
            Event::Connection(ConnState::Live)
        ));
        wtx.send(Command::Perform(Action::Drain("sim-small-3".into())))
            .unwrap();
        match next_event(&rx) {
            Event::ActionDone { action, result } => {
                assert_eq!(action, Action::Drain("sim-small-3".into()));
                assert_eq!(result, Ok(()));
            }
            other => panic!("{other:?}"),
        }
        wtx.send(Command::Refresh).unwrap();
        match next_event(&rx) {
            Event::Data(s) => assert_eq!(s.hosts[2].state, "draining"),
            other => panic!("{other:?}"),
        }
        wtx.send(Command::FetchScreenshot(101)).unwrap();
        assert!(matches!(next_event(&rx), Event::Connection(_)));
        match next_event(&rx) {
            Event::Screenshot { result: Err(e), .. } => assert!(e.contains("no screenshot")),
            other => panic!("{other:?}"),
        }
        wtx.send(Command::FetchSerialLog(101)).unwrap();
        match next_event(&rx) {
            Event::SerialLog {
                vm: 101,
                result: Ok(log),
            } => assert!(log.contains("berth-vm101 login:"), "{log}"),
            other => panic!("{other:?}"),
        }
        wtx.send(Command::FetchSerialLog(107)).unwrap();
        match next_event(&rx) {
            Event::SerialLog {
                vm: 107,
                result: Err(e),
            } => assert!(e.contains("not on a host"), "{e}"),
            other => panic!("{other:?}"),
        }
        drop(wtx);
        handle.join().unwrap();
        assert_eq!(performed.lock().unwrap().len(), 1);
    }
}

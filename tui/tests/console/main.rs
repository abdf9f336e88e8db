//! The console's tests: screen snapshots at 80×24 and 120×40 with a fixed clock and fixed
//! data, key scripts on the update function, and the HTTP source against a real daemon.

// Test helpers outside `#[test]` functions panic on purpose.
#![allow(clippy::unwrap_used)]

mod daemon;
mod keys;
mod screens;

use berth_tui::event::{ConnState, Event};
use berth_tui::fixture::{self, NOW_MS};
use berth_tui::model::EventRow;
use berth_tui::{App, Options};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// An app at `width`×`height` with the small fleet loaded, live, at the fixed clock.
pub fn app(width: u16, height: u16, read_only: bool) -> App {
    let mut app = App::new(
        Options {
            read_only,
            ssh: None,
            source_label: "http://127.0.0.1:7878".into(),
            color: false,
        },
        NOW_MS,
        width,
        height,
    );
    app.update(Event::Connection(ConnState::Live));
    app.update(Event::StreamUp(true));
    for (i, q) in [1u64, 2, 1, 3, 2, 0, 1, 3, 2, 1].iter().enumerate() {
        let mut snap = fixture::small();
        snap.queue.truncate((*q as usize).min(3));
        app.update(Event::Tick {
            now_ms: NOW_MS - 20_000 + i as u64 * 2000,
        });
        app.update(Event::Data(Box::new(snap)));
    }
    app.update(Event::Tick { now_ms: NOW_MS });
    app.update(Event::Data(Box::new(fixture::small())));
    for (i, (kind, subject, text)) in [
        (
            "vm",
            "berth-vm101",
            "booting → running (boot done) on sim-small-1",
        ),
        ("host", "sim-small-2", "ready → draining (operator alice)"),
        ("request", "r41", "- → waiting (submitted)"),
        (
            "vm",
            "berth-vm104",
            "running → held (job failed, hold for alice)",
        ),
    ]
    .iter()
    .enumerate()
    {
        app.update(Event::Stream(EventRow {
            at_ms: NOW_MS - 60_000 + i as u64 * 10_000,
            kind: (*kind).into(),
            subject: (*subject).into(),
            text: (*text).into(),
        }));
    }
    app
}

pub fn key(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

pub fn code(c: KeyCode) -> Event {
    Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

/// Types each char of `s` as a key.
pub fn keys(app: &mut App, s: &str) -> Vec<berth_tui::Command> {
    s.chars().flat_map(|c| app.update(key(c))).collect()
}

/// The screen as text, one line per row, trailing spaces trimmed.
pub fn render(app: &App) -> String {
    let backend = TestBackend::new(app.width, app.height);
    let mut terminal = Terminal::new(backend).unwrap();
    terminal
        .draw(|f| berth_tui::ui::draw(f, app, None))
        .unwrap();
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

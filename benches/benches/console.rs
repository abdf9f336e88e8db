//! Console frame time at 10,000 hosts and 100,000 VMs: drawing a table screen must cost what a
//! screenful of rows costs, and a snapshot or a filter keystroke must stay well under a frame.

use berth_tui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use berth_tui::event::{ConnState, Event};
use berth_tui::fixture::{self, NOW_MS};
use berth_tui::ratatui::Terminal;
use berth_tui::ratatui::backend::TestBackend;
use berth_tui::{App, Options};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const N_HOSTS: usize = 10_000;
const N_VMS: usize = 100_000;

fn key(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn loaded(width: u16, height: u16) -> App {
    let mut app = App::new(
        Options {
            source_label: "bench".into(),
            color: true,
            ..Options::default()
        },
        NOW_MS,
        width,
        height,
    );
    app.update(Event::Connection(ConnState::Live));
    app.update(Event::Data(Box::new(fixture::large(N_HOSTS, N_VMS))));
    app
}

fn console(c: &mut Criterion) {
    let mut group = c.benchmark_group("console/frame_10k_hosts_100k_vms");
    for (name, screen_key, moves) in [
        ("overview", '1', ""),
        ("hosts", '2', "G"),
        ("queue", '3', "G"),
        ("vms", '4', "G"),
        ("breakpoints", '5', "G"),
    ] {
        for (w, h) in [(80u16, 24u16), (200, 60)] {
            let mut app = loaded(w, h);
            app.update(key(screen_key));
            for m in moves.chars() {
                app.update(key(m));
            }
            let mut terminal = match Terminal::new(TestBackend::new(w, h)) {
                Ok(t) => t,
                Err(e) => panic!("test backend: {e}"),
            };
            group.bench_function(format!("{name}_{w}x{h}"), |b| {
                b.iter(|| {
                    // A key that moves the selection, then the frame it causes.
                    app.update(key('k'));
                    app.update(key('j'));
                    if let Err(e) = terminal.draw(|f| berth_tui::ui::draw(f, &app, None)) {
                        panic!("draw: {e}");
                    }
                });
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("console/update_10k_hosts_100k_vms");
    group.sample_size(20);
    let snap = fixture::large(N_HOSTS, N_VMS);
    group.bench_function("snapshot_arrives_on_vms", |b| {
        let mut app = loaded(120, 40);
        app.update(key('4'));
        b.iter_batched(
            || Box::new(snap.clone()),
            |s| app.update(Event::Data(s)),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("filter_keystroke_on_vms", |b| {
        let mut app = loaded(120, 40);
        app.update(key('4'));
        app.update(key('/'));
        b.iter(|| {
            app.update(key('9'));
            app.update(Event::Key(KeyEvent::new(
                KeyCode::Backspace,
                KeyModifiers::NONE,
            )));
        });
    });
    group.finish();
}

criterion_group!(benches, console);
criterion_main!(benches);

//! Every screen as text at 80×24 and 120×40, with the fixed clock and the small fleet.

use berth_tui::event::{Command, ConnState, Event};
use berth_tui::fixture::{self, NOW_MS};
use berth_tui::model::{ConsoleInfo, Detail, EventRow, Target, TimelineEntry};
use berth_tui::{MemorySource, Source};
use crossterm::event::KeyCode;

use crate::{app, code, key, keys, render};

const SIZES: [(u16, u16); 2] = [(80, 24), (120, 40)];

fn check(name: &str, setup: impl Fn(&mut berth_tui::App)) {
    for (w, h) in SIZES {
        let mut a = app(w, h, false);
        setup(&mut a);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), render(&a));
    }
}

#[test]
fn overview() {
    // The plots come from the fixture's hour of pulses (with a five-minute gap 40 minutes
    // ago); at 120×40 the space below shows the oldest waits, the host in error and the
    // operators' actions among the events.
    check("overview", |a| {
        a.update(Event::Stream(EventRow {
            at_ms: NOW_MS - 5_000,
            kind: "host".into(),
            subject: "sim-mac-1".into(),
            text: "ready → maintenance (taken offline by operator)".into(),
        }));
        a.update(Event::Stream(EventRow {
            at_ms: NOW_MS - 2_000,
            kind: "action".into(),
            subject: "r43".into(),
            text: "cancel r43: done".into(),
        }));
    });
}

#[test]
fn overview_of_a_daemon_sampling_for_ten_minutes() {
    // The plots start where the daemon's pulses do: blank before, the samples after.
    check("overview_ten_minutes", |a| {
        let mut snap = fixture::small();
        snap.pulses.retain(|p| p.at_ms > NOW_MS - 600_000);
        a.update(Event::Data(Box::new(snap)));
    });
}

#[test]
fn hosts() {
    check("hosts", |a| {
        keys(a, "2 j ");
    });
}

#[test]
fn queue_with_why_waiting() {
    check("queue", |a| {
        keys(a, "3");
    });
}

#[test]
fn queue_grouped_by_change_then_by_account() {
    // `c` groups: r41 and r43 of change I7 come together, before R2's r42 (I7's first
    // request is first in line); again, by account; a third time, back to queue order.
    check("queue_by_change", |a| {
        keys(a, "3c");
    });
    check("queue_by_account", |a| {
        keys(a, "3cc");
    });
    for (w, h) in SIZES {
        let mut a = app(w, h, false);
        keys(&mut a, "3ccc");
        let mut b = app(w, h, false);
        keys(&mut b, "3");
        // All but the status line, which says the grouping is off.
        let table = |a: &berth_tui::App| {
            let text = render(a);
            text.lines()
                .take(usize::from(h) - 1)
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(table(&a), table(&b));
    }
}

#[test]
fn vms() {
    check("vms", |a| {
        keys(a, "4G");
    });
}

#[test]
fn breakpoints() {
    check("breakpoints", |a| {
        keys(a, "5");
    });
}

#[test]
fn events() {
    check("events", |a| {
        keys(a, "6");
    });
}

#[test]
fn vm_detail_with_history_and_console() {
    check("detail_vm", |a| {
        keys(a, "4");
        a.update(code(KeyCode::Enter));
        a.update(Event::Detail(Box::new(Ok(Detail {
            target: Target::Vm(101),
            fields: vec![
                ("state".into(), "running".into()),
                ("request".into(), "r30".into()),
                ("host".into(), "sim-small-1".into()),
            ],
            timeline: vec![
                TimelineEntry {
                    at_ms: NOW_MS - 1_800_000,
                    text: "- → queued (submitted)".into(),
                },
                TimelineEntry {
                    at_ms: NOW_MS - 1_790_000,
                    text: "queued → placed on sim-small-1".into(),
                },
            ],
            console: Some(Ok(ConsoleInfo {
                vm: 101,
                host: "127.0.0.1".into(),
                port: 5901,
                password: None,
            })),
        }))));
    });
}

#[test]
fn help_generated_from_the_keymap() {
    check("help", |a| {
        keys(a, "?");
    });
}

#[test]
fn drain_dialog_with_forecast() {
    check("confirm_drain", |a| {
        keys(a, "2  D");
        let hosts = vec!["sim-small-1".to_owned(), "sim-small-2".to_owned()];
        a.update(Event::Prediction {
            result: Ok(Some(fixture::prediction(&hosts))),
            hosts,
        });
    });
}

#[test]
fn drain_dialog_with_forecast_of_the_queue_alone() {
    // A daemon that replays no arrivals (none submitted lately, or one from before them):
    // the table of the requests waiting now, as it always was.
    check("confirm_drain_queue_alone", |a| {
        keys(a, "2  D");
        let hosts = vec!["sim-small-1".to_owned(), "sim-small-2".to_owned()];
        let mut p = fixture::prediction(&hosts);
        p.arrivals = None;
        a.update(Event::Prediction {
            result: Ok(Some(p)),
            hosts,
        });
    });
}

#[test]
fn drain_dialog_without_forecast() {
    check("confirm_drain_unavailable", |a| {
        keys(a, "2D");
        a.update(Event::Prediction {
            hosts: vec!["sim-small-1".into()],
            result: Ok(None),
        });
    });
}

#[test]
fn offline_dialog_asks_for_the_name() {
    check("confirm_offline", |a| {
        keys(a, "2jjOsim-small");
    });
}

#[test]
fn read_only_hosts() {
    for (w, h) in SIZES {
        let mut a = app(w, h, true);
        keys(&mut a, "2D");
        insta::assert_snapshot!(format!("read_only_hosts_{w}x{h}"), render(&a));
    }
}

#[test]
fn reconnecting_and_stale_header() {
    check("reconnecting", |a| {
        a.update(Event::Connection(ConnState::Reconnecting {
            attempt: 3,
            error: "connection refused".into(),
        }));
        a.update(Event::Tick {
            now_ms: NOW_MS + 42_000,
        });
    });
}

#[test]
fn filter_typing() {
    check("filter", |a| {
        keys(a, "2/large");
    });
}

#[test]
fn command_bar() {
    check("command_bar", |a| {
        a.update(key(':'));
        keys(a, "b");
    });
}

#[test]
fn serial_log_with_the_fixture_boot_log() {
    check("serial_log", |a| {
        assert_eq!(keys(a, "4l"), [Command::FetchSerialLog(101)]);
        let mut src = MemorySource::new(fixture::small());
        a.update(Event::SerialLog {
            vm: 101,
            result: src.serial_log(101).map_err(|e| e.to_string()),
        });
    });
}

#[test]
fn serial_log_unsupported() {
    check("serial_log_unsupported", |a| {
        keys(a, "4l");
        a.update(Event::SerialLog {
            vm: 101,
            result: Err("driver sim cannot keep a serial log".into()),
        });
    });
}

#[test]
fn screenshot_preview_in_half_blocks() {
    for (w, h) in SIZES {
        let mut a = app(w, h, false);
        keys(&mut a, "4s");
        a.update(Event::Screenshot {
            vm: 101,
            result: Ok(()),
        });
        let picker = berth_tui::ratatui_image::picker::Picker::halfblocks();
        let mut img =
            berth_tui::run::decode_screenshot(&picker, &fixture::screenshot_png()).unwrap();
        let backend = ratatui::backend::TestBackend::new(w, h);
        let mut terminal = ratatui::Terminal::new(backend).unwrap();
        terminal
            .draw(|f| berth_tui::ui::draw(f, &a, Some(&mut img)))
            .unwrap();
        let buf = terminal.backend().buffer();
        let painted = buf
            .content()
            .iter()
            .filter(|c| {
                c.bg != ratatui::style::Color::Reset || c.fg != ratatui::style::Color::Reset
            })
            .count();
        assert!(
            painted > 200,
            "the image is drawn in half blocks ({painted} cells)"
        );
    }
}

/// Live events already in the source's timeline are not shown twice; later ones extend it.
#[test]
fn detail_history_shows_each_change_once() {
    let mut a = crate::app(120, 40, false);
    keys(&mut a, "4");
    a.update(code(KeyCode::Enter));
    let change = |at_ms: u64, text: &str| berth_tui::model::EventRow {
        at_ms,
        kind: "vm".into(),
        subject: "berth-vm101".into(),
        text: text.into(),
    };
    // The stream saw the placement, and then the boot, which the timeline does not hold yet.
    a.update(Event::Stream(change(
        NOW_MS - 1_790_000,
        "queued → placed (placed) on sim-small-1",
    )));
    a.update(Event::Stream(change(
        NOW_MS - 1_700_000,
        "placed → booting (provisioned) on sim-small-1",
    )));
    a.update(Event::Detail(Box::new(Ok(Detail {
        target: Target::Vm(101),
        fields: vec![("state".into(), "placed".into())],
        timeline: vec![
            TimelineEntry {
                at_ms: NOW_MS - 1_800_000,
                text: "- → queued (submitted)".into(),
            },
            TimelineEntry {
                at_ms: NOW_MS - 1_790_000,
                text: "queued → placed (placed) on sim-small-1".into(),
            },
        ],
        console: None,
    }))));
    let screen = render(&a);
    // The fixture's stream also saw the boot end, later still.
    assert!(screen.contains("history (4)"), "{screen}");
    assert_eq!(screen.matches("queued → placed").count(), 1, "{screen}");
    assert!(screen.contains("placed → booting"), "{screen}");
}

#[test]
fn events_paused_on_a_chosen_row() {
    check("events_paused", |a| {
        keys(a, "6jj");
        for i in 0..3u64 {
            a.update(Event::Stream(berth_tui::model::EventRow {
                at_ms: NOW_MS + i * 1000,
                kind: "vm".into(),
                subject: format!("berth-vm{}", 110 + i),
                text: "queued → placed (placed) on sim-small-3".into(),
            }));
        }
    });
}

#[test]
fn hosts_sorted_by_cpu_descending() {
    check("hosts_by_cpu", |a| {
        keys(a, "2>>>i");
    });
}

fn host_detail(a: &mut berth_tui::App) {
    a.update(Event::Detail(Box::new(Ok(Detail {
        target: Target::Host("sim-small-1".into()),
        fields: vec![
            ("state".into(), "ready".into()),
            ("capacity".into(), "16 vcpus, 64G".into()),
            ("images".into(), "linux 1.1G in use, windows 9.5G".into()),
            ("image disk".into(), "10.6G of 20G budget".into()),
            ("labels".into(), "arch=x86_64".into()),
        ],
        timeline: vec![TimelineEntry {
            at_ms: NOW_MS - 86_400_000,
            text: "unknown → ready (probe ok)".into(),
        }],
        console: None,
    }))));
}

#[test]
fn drill_down_a_host_lists_its_vms() {
    check("drill_host", |a| {
        keys(a, "2");
        a.update(code(KeyCode::Enter));
        host_detail(a);
        keys(a, "j");
    });
}

#[test]
fn drill_down_to_a_request_through_a_host_and_a_vm() {
    check("drill_request", |a| {
        keys(a, "2");
        a.update(code(KeyCode::Enter));
        host_detail(a);
        keys(a, "j");
        a.update(code(KeyCode::Enter));
        a.update(code(KeyCode::Enter));
        a.update(Event::Detail(Box::new(Ok(Detail {
            target: Target::Request(30),
            fields: vec![
                ("state".into(), "placed".into()),
                ("requester".into(), "ci-linux".into()),
                ("shape".into(), "2× linux 4c/8G".into()),
            ],
            timeline: vec![TimelineEntry {
                at_ms: NOW_MS - 1_800_000,
                text: "- → waiting (submitted)".into(),
            }],
            console: None,
        }))));
    });
}

#[test]
fn command_bar_completes_host_names() {
    check("command_bar_names", |a| {
        keys(a, ":drain sim-");
    });
}

#[test]
fn command_bar_refuses_a_name_of_the_wrong_kind() {
    check("command_bar_wrong_kind", |a| {
        keys(a, ":vm sim-mac-1");
        a.update(code(KeyCode::Enter));
    });
}

#[test]
fn serial_log_paused() {
    check("serial_log_paused", |a| {
        keys(a, "4l");
        let mut src = MemorySource::new(fixture::small());
        a.update(Event::SerialLog {
            vm: 101,
            result: src.serial_log(101).map_err(|e| e.to_string()),
        });
        keys(a, "kkk");
    });
}

#[test]
fn daemon_log() {
    check("daemon_log", |a| {
        keys(a, ":logs");
        a.update(code(KeyCode::Enter));
        let lines: String = [
            "11:58:02  INFO berth_daemon::serve: listening addr=127.0.0.1:7878",
            "11:59:10  INFO berth_daemon::control: host drained by operator host=sim-small-2 actor=alice",
            "11:59:30  WARN berth_daemon::control: job failed, holding vm=berth-vm104 owner=alice",
            "12:00:00  INFO berth_daemon::control: placed vm=berth-vm105 host=sim-large-1",
        ]
        .join("\n");
        a.update(Event::DaemonLog(Ok(lines)));
    });
}

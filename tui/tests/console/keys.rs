//! Key scripts on the update function: the drain flow, confirm and cancel, read-only mode,
//! filters, marks, the command bar, VNC, screenshots and serial logs.

use berth_tui::app::{Forecast, LogKind, LogView, Popup};
use berth_tui::event::{Command, ConnState, Event, Role};
use berth_tui::fixture::{self, NOW_MS};
use berth_tui::keymap::{self, Screen};
use berth_tui::model::{Action, ConsoleInfo};
use berth_tui::vnc::SshEnv;
use crossterm::event::KeyCode;

use crate::{app, code, key, keys, render};

fn hosts(a: &berth_tui::App) -> Vec<String> {
    let t = a.table(Screen::Hosts).unwrap();
    t.view
        .iter()
        .map(|&i| a.snap.hosts[i].name.clone())
        .collect()
}

#[test]
fn drain_of_marked_hosts_forecasts_then_confirms() {
    let mut a = app(80, 24, false);
    assert!(keys(&mut a, "2").is_empty());
    // Space marks and moves down: mark the first two hosts.
    assert!(keys(&mut a, "  ").is_empty());
    let marks = &a.table(Screen::Hosts).unwrap().marks;
    assert_eq!(marks.len(), 2);
    let cmds = keys(&mut a, "D");
    let targets = vec!["sim-small-1".to_owned(), "sim-small-2".to_owned()];
    assert_eq!(cmds, [Command::PredictDrain(targets.clone())]);
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert_eq!(c.labels, targets);
    assert_eq!(c.forecast, Forecast::Pending);
    assert!(c.consequence.contains("no new VMs"));
    a.update(Event::Prediction {
        hosts: targets.clone(),
        result: Ok(Some(fixture::prediction(&targets))),
    });
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert!(matches!(c.forecast, Forecast::Ready(_)));
    let screen = render(&a);
    assert!(screen.contains("with drain"), "{screen}");
    let cmds = keys(&mut a, "y");
    assert_eq!(
        cmds,
        [
            Command::Perform(Action::Drain("sim-small-1".into())),
            Command::Perform(Action::Drain("sim-small-2".into())),
        ]
    );
    assert!(a.popup.is_none());
    assert!(a.table(Screen::Hosts).unwrap().marks.is_empty());
    let first = a.update(Event::ActionDone {
        action: Action::Drain("sim-small-1".into()),
        result: Ok(()),
    });
    assert!(first.is_empty(), "refresh only after the last answer");
    let last = a.update(Event::ActionDone {
        action: Action::Drain("sim-small-2".into()),
        result: Err("403: read-only token".into()),
    });
    assert_eq!(last, [Command::Refresh]);
    assert!(a.flash.as_deref().unwrap().contains("failed: 403"));
    assert_eq!(a.events[0].kind, "action");
}

#[test]
fn drain_without_marks_takes_the_selected_host() {
    let mut a = app(80, 24, false);
    let cmds = keys(&mut a, "2jjD");
    assert_eq!(cmds, [Command::PredictDrain(vec!["sim-small-3".into()])]);
}

#[test]
fn a_late_forecast_for_other_hosts_is_ignored() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2D");
    a.update(Event::Prediction {
        hosts: vec!["other".into()],
        result: Ok(Some(fixture::prediction(&["other".into()]))),
    });
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert_eq!(c.forecast, Forecast::Pending);
}

#[test]
fn escape_and_n_cancel_without_commands() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2D");
    assert!(a.update(code(KeyCode::Esc)).is_empty());
    assert!(a.popup.is_none());
    assert_eq!(a.flash.as_deref(), Some("cancelled: nothing changed"));
    keys(&mut a, "R");
    assert!(keys(&mut a, "n").is_empty());
    assert!(a.popup.is_none());
}

#[test]
fn offline_needs_the_typed_host_name() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2jjO");
    // `y` is just a letter here.
    assert!(keys(&mut a, "y").is_empty());
    assert!(a.update(code(KeyCode::Enter)).is_empty(), "wrong name");
    a.update(code(KeyCode::Backspace));
    keys(&mut a, "sim-small-3");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::Perform(Action::Offline("sim-small-3".into()))]
    );
}

#[test]
fn read_only_has_no_actions_at_all() {
    let mut a = app(80, 24, true);
    for script in ["2D", "2R", "2O", "3X", "5B", "5E"] {
        assert!(keys(&mut a, script).is_empty(), "{script}");
        assert!(a.popup.is_none(), "{script}");
    }
    keys(&mut a, "?");
    let help = render(&a);
    assert!(!help.contains("drain the marked"), "{help}");
    assert!(!help.contains("Shift-letters"), "{help}");
    assert!(help.contains("read-only"), "{help}");
    a.update(code(KeyCode::Esc));
    keys(&mut a, ":drain");
    assert!(a.update(code(KeyCode::Enter)).is_empty());
    assert!(a.flash.as_deref().unwrap().starts_with("no command"));
    assert!(
        keymap::help_lines(true)
            .iter()
            .all(|(_, h, _)| !h.contains("drain"))
    );
}

#[test]
fn a_read_only_token_turns_actions_off() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2D");
    a.update(Event::Role(Role::ReadOnly));
    assert!(a.popup.is_none(), "the open dialog closes");
    assert!(keys(&mut a, "D").is_empty());
    assert!(render(&a).contains("READ-ONLY"));
}

#[test]
fn filter_narrows_and_escape_clears() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2/LARGE");
    assert_eq!(hosts(&a), ["sim-large-1", "sim-large-2"]);
    a.update(code(KeyCode::Enter));
    assert!(a.input.is_none());
    assert_eq!(hosts(&a).len(), 2, "the filter stays after Enter");
    // Actions act on the filtered rows.
    assert_eq!(
        keys(&mut a, "D"),
        [Command::PredictDrain(vec!["sim-large-1".into()])]
    );
    a.update(code(KeyCode::Esc));
    a.update(code(KeyCode::Esc));
    assert_eq!(hosts(&a).len(), 6);
    keys(&mut a, "/error");
    assert_eq!(hosts(&a), ["sim-large-2"], "state words are searchable");
    a.update(code(KeyCode::Esc));
    assert_eq!(hosts(&a).len(), 6);
}

#[test]
fn marks_toggle_and_survive_a_refresh() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2 ");
    keys(&mut a, "k ");
    assert!(
        a.table(Screen::Hosts).unwrap().marks.is_empty(),
        "toggled off"
    );
    keys(&mut a, "jj ");
    a.update(Event::Data(Box::new(fixture::small())));
    let t = a.table(Screen::Hosts).unwrap();
    assert_eq!(t.marks.iter().collect::<Vec<_>>(), ["sim-large-1"]);
    assert_eq!(
        a.selected_key(Screen::Hosts).as_deref(),
        Some("sim-large-2")
    );
    a.update(code(KeyCode::Esc));
    assert!(a.table(Screen::Hosts).unwrap().marks.is_empty());
}

#[test]
fn selection_follows_its_row_when_rows_move() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2jjj");
    assert_eq!(
        a.selected_key(Screen::Hosts).as_deref(),
        Some("sim-large-1")
    );
    let mut snap = fixture::small();
    snap.hosts.reverse();
    a.update(Event::Data(Box::new(snap)));
    assert_eq!(
        a.selected_key(Screen::Hosts).as_deref(),
        Some("sim-large-1")
    );
}

#[test]
fn navigation_keys_clamp() {
    let mut a = app(80, 24, false);
    keys(&mut a, "4G");
    assert_eq!(a.table(Screen::Vms).unwrap().selected, 6);
    keys(&mut a, "jjj");
    assert_eq!(a.table(Screen::Vms).unwrap().selected, 6);
    a.update(code(KeyCode::PageUp));
    assert_eq!(a.table(Screen::Vms).unwrap().selected, 0);
    a.update(code(KeyCode::PageDown));
    assert_eq!(a.table(Screen::Vms).unwrap().selected, 6);
    keys(&mut a, "g");
    assert_eq!(a.table(Screen::Vms).unwrap().selected, 0);
}

#[test]
fn sort_keys_cycle_columns_and_reverse() {
    let mut a = app(80, 24, false);
    let order = |a: &berth_tui::App| -> Vec<u64> {
        let t = a.table(Screen::Queue).unwrap();
        t.view.iter().map(|&i| a.snap.queue[i].id).collect()
    };
    // Column 2 is ETA: soonest first, "later than" after every estimate; reversed, last first.
    keys(&mut a, "3>>i");
    assert_eq!(order(&a), [43, 42, 41]);
    assert!(a.flash.as_deref().unwrap().contains("eta"));
    keys(&mut a, "i>>>");
    // Column 5 is WAITED: shortest first.
    assert_eq!(order(&a), [43, 41, 42]);
    keys(&mut a, "i");
    assert_eq!(order(&a), [42, 41, 43]);
    assert!(a.flash.as_deref().unwrap().contains("waited"));
}

#[test]
fn command_bar_switches_screens_and_quits() {
    let mut a = app(80, 24, false);
    keys(&mut a, ":que");
    a.update(code(KeyCode::Enter));
    assert_eq!(a.screen, Screen::Queue);
    keys(&mut a, ":ev");
    a.update(code(KeyCode::Tab));
    a.update(code(KeyCode::Enter));
    assert_eq!(a.screen, Screen::Events);
    // Aliases as k9s has them: `:q` is the queue here; `:q!` and `:quit` quit.
    for (alias, screen) in [
        ("h", Screen::Hosts),
        ("q", Screen::Queue),
        ("v", Screen::Vms),
        ("bp", Screen::Breakpoints),
        ("ev", Screen::Events),
        ("o", Screen::Overview),
    ] {
        keys(&mut a, &format!(":{alias}"));
        assert!(a.update(code(KeyCode::Enter)).is_empty(), "{alias}");
        assert_eq!(a.screen, screen, "{alias}");
    }
    keys(&mut a, ":q!");
    assert_eq!(a.update(code(KeyCode::Enter)), [Command::Quit]);
    keys(&mut a, ":quit");
    assert_eq!(a.update(code(KeyCode::Enter)), [Command::Quit]);
    assert_eq!(keys(&mut a, "q"), [Command::Quit]);
}

#[test]
fn cancel_release_and_extend_are_confirmed() {
    let mut a = app(80, 24, false);
    keys(&mut a, "3X");
    assert_eq!(keys(&mut a, "y"), [Command::Perform(Action::Cancel(41))]);
    keys(&mut a, "5B");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::Perform(Action::Release(104))]
    );
    keys(&mut a, "5jE++-");
    assert_eq!(
        keys(&mut a, "y"),
        [Command::Perform(Action::Extend {
            vm: 106,
            seconds: 7200
        })]
    );
}

#[test]
fn drains_and_extends_name_the_breakpoints_that_pin_a_draining_host() {
    let mut a = app(80, 24, false);
    // sim-small-2 drains while alice holds berth-vm104 there.
    keys(&mut a, "5E");
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert_eq!(
        c.note.as_deref(),
        Some("sim-small-2 is draining: a longer hold keeps the drain from finishing")
    );
    keys(&mut a, "n");
    // bob's berth-vm106 is on a ready host: nothing to say.
    keys(&mut a, "5jE");
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert_eq!(c.note, None);
}

#[test]
fn a_drain_dialog_offers_to_release_the_breakpoints_that_pin_it() {
    let mut a = app(80, 24, false);
    keys(&mut a, "n");
    command(&mut a, "drain sim-small-2");
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert_eq!(c.held, [104]);
    let note = c.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("berth-vm104 on sim-small-2 held by alice") && note.contains("r drains"),
        "{note}"
    );
    assert_eq!(
        keys(&mut a, "r"),
        [
            Command::Perform(Action::Drain("sim-small-2".into())),
            Command::Perform(Action::Release(104)),
        ]
    );
    // Without a hold there, `r` does nothing.
    command(&mut a, "drain sim-small-1");
    let Some(Popup::Confirm(c)) = &a.popup else {
        panic!("no dialog")
    };
    assert!(c.held.is_empty());
    assert_eq!(keys(&mut a, "r"), []);
    assert!(a.popup.is_some());
}

/// Types `:text` and Enter.
fn command(a: &mut berth_tui::App, text: &str) -> Vec<Command> {
    keys(a, &format!(":{text}"));
    a.update(code(KeyCode::Enter))
}

fn confirm_targets(a: &berth_tui::App) -> Option<Vec<String>> {
    match &a.popup {
        Some(Popup::Confirm(c)) => Some(c.targets.clone()),
        _ => None,
    }
}

#[test]
fn commands_act_where_they_apply_or_on_the_target_they_name() {
    let mut a = app(80, 24, false);
    // On the VMs screen, `:drain` has no host to act on: it says where it applies.
    keys(&mut a, "4");
    command(&mut a, "drain");
    assert_eq!(confirm_targets(&a), None);
    let flash = a.flash.clone().unwrap_or_default();
    assert!(flash.contains("acts on hosts"), "{flash}");
    // Named, it goes to the host and asks about that one alone.
    command(&mut a, "drain sim-small-3");
    assert_eq!(a.screen, Screen::Hosts);
    assert_eq!(confirm_targets(&a), Some(vec!["sim-small-3".to_owned()]));
    let screen = render(&a);
    assert!(screen.contains("y/Enter: drain    n/Esc: back"), "{screen}");
    keys(&mut a, "n");
    // Requests and VMs by the names people use.
    command(&mut a, "cancel r41");
    assert_eq!(confirm_targets(&a), Some(vec!["41".to_owned()]));
    keys(&mut a, "n");
    command(&mut a, "release berth-vm104");
    assert_eq!(confirm_targets(&a), Some(vec!["104".to_owned()]));
    keys(&mut a, "n");
    // A name that is not there is said so, and nothing is asked.
    command(&mut a, "drain sim-nosuch-9");
    assert_eq!(confirm_targets(&a), None);
    let flash = a.flash.clone().unwrap_or_default();
    assert!(flash.contains("no host `sim-nosuch-9`"), "{flash}");
}

#[test]
fn release_on_the_vms_screen_only_takes_held_vms() {
    let mut a = app(80, 24, false);
    // vm101 is running: nothing to release.
    assert!(keys(&mut a, "4B").is_empty());
    assert!(a.popup.is_none());
    keys(&mut a, "jjjB");
    assert_eq!(keys(&mut a, "y"), [Command::Perform(Action::Release(104))]);
}

#[test]
fn vnc_in_ssh_shows_and_copies_the_tunnel() {
    let mut a = app(80, 24, false);
    a.opts.ssh = SshEnv::from_vars(Some("10.1.1.1 5000 192.0.2.7 22"), None, Some("ops".into()));
    assert_eq!(keys(&mut a, "4v"), [Command::FetchConsole(101)]);
    let cmds = a.update(Event::Console(Ok(ConsoleInfo {
        vm: 101,
        host: "127.0.0.1".into(),
        port: 5901,
        password: None,
    })));
    assert_eq!(
        cmds,
        [Command::Copy(
            "ssh -N -L 5901:127.0.0.1:5901 ops@192.0.2.7\nvnc://localhost:5901".into()
        )]
    );
    assert!(render(&a).contains("ssh -N -L 5901:127.0.0.1:5901 ops@192.0.2.7"));
}

#[test]
fn vnc_outside_ssh_launches_a_viewer() {
    let mut a = app(80, 24, false);
    keys(&mut a, "5v");
    let cmds = a.update(Event::Console(Ok(ConsoleInfo {
        vm: 104,
        host: "127.0.0.1".into(),
        port: 5904,
        password: None,
    })));
    assert_eq!(
        cmds,
        [Command::LaunchViewer {
            host: "127.0.0.1".into(),
            port: 5904
        }]
    );
}

#[test]
fn screenshot_popup_reports_failures() {
    let mut a = app(80, 24, false);
    assert_eq!(keys(&mut a, "4s"), [Command::FetchScreenshot(101)]);
    a.update(Event::Screenshot {
        vm: 101,
        result: Err("this daemon has no screenshot endpoint yet".into()),
    });
    assert!(render(&a).contains("no screenshot endpoint"));
    a.update(code(KeyCode::Esc));
    assert!(a.popup.is_none());
}

/// The title line of the serial log popup, as drawn.
fn serial_title(a: &berth_tui::App) -> String {
    let screen = render(a);
    screen
        .lines()
        .find(|l| l.contains("serial log:"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn serial_log_key_fetches_scrolls_fetches_again_and_closes() {
    let mut a = app(80, 24, false);
    assert_eq!(keys(&mut a, "4l"), [Command::FetchSerialLog(101)]);
    assert!(matches!(
        &a.popup,
        Some(Popup::Log(LogView {
            kind: LogKind::Serial(101),
            status: None,
            ..
        }))
    ));
    assert!(render(&a).contains("… fetching the serial log"));
    // An answer about another VM is not this popup's.
    a.update(Event::SerialLog {
        vm: 102,
        result: Ok("other\n".into()),
    });
    assert!(render(&a).contains("… fetching the serial log"));
    let log: String = (1..=40).map(|i| format!("line {i}\r\n")).collect();
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok(log),
    });
    // 24 rows less the margins and borders: 18 lines, the newest at the bottom.
    assert!(serial_title(&a).contains("berth-vm101 · lines 23–40 of 40"));
    let screen = render(&a);
    assert!(screen.contains("│line 40 "), "{screen}");
    assert!(!screen.contains("line 22 "), "{screen}");
    // While the popup is open its keys are its own: `q` closes it, not the console.
    keys(&mut a, "kkk");
    assert!(serial_title(&a).contains("lines 20–37 of 40"));
    keys(&mut a, "j");
    assert!(serial_title(&a).contains("lines 21–38 of 40"));
    keys(&mut a, "g");
    assert!(serial_title(&a).contains("lines 1–18 of 40"));
    keys(&mut a, "k");
    assert!(serial_title(&a).contains("lines 1–18 of 40"), "clamped");
    keys(&mut a, "G");
    assert!(serial_title(&a).contains("lines 23–40 of 40"));
    a.update(code(KeyCode::PageUp));
    assert!(serial_title(&a).contains("lines 5–22 of 40"));
    a.update(code(KeyCode::Down));
    assert!(serial_title(&a).contains("lines 6–23 of 40"));
    a.update(code(KeyCode::PageDown));
    assert!(serial_title(&a).contains("lines 23–40 of 40"));
    a.update(code(KeyCode::Up));
    assert_eq!(keys(&mut a, "r"), [Command::FetchSerialLog(101)]);
    assert!(render(&a).contains("… fetching the serial log"));
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok("only line\n".into()),
    });
    assert!(serial_title(&a).contains("lines 1–1 of 1"));
    a.update(code(KeyCode::Esc));
    assert!(a.popup.is_none());
    for close in [key('l'), key('q'), code(KeyCode::Esc), code(KeyCode::Enter)] {
        keys(&mut a, "l");
        assert!(a.popup.is_some());
        assert!(a.update(close.clone()).is_empty(), "{close:?}");
        assert!(a.popup.is_none(), "{close:?}");
    }
}

#[test]
fn serial_log_from_a_breakpoint_a_detail_view_and_the_command_bar() {
    let mut a = app(80, 24, true);
    // Read-only tokens may read serial logs.
    assert_eq!(keys(&mut a, "5l"), [Command::FetchSerialLog(104)]);
    a.update(code(KeyCode::Esc));
    keys(&mut a, "4");
    a.update(code(KeyCode::Enter));
    assert!(a.detail.is_some());
    assert_eq!(keys(&mut a, "l"), [Command::FetchSerialLog(101)]);
    a.update(code(KeyCode::Esc));
    assert!(a.popup.is_none());
    assert!(
        a.detail.is_some(),
        "closing the popup keeps the detail view"
    );
    a.update(code(KeyCode::Esc));
    keys(&mut a, "j:serial");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchSerialLog(102)]
    );
}

#[test]
fn a_vm_detail_opened_from_the_events_screen_takes_the_vm_keys() {
    let mut a = app(80, 24, false);
    a.update(Event::Stream(berth_tui::model::EventRow {
        at_ms: NOW_MS,
        kind: "vm".into(),
        subject: "berth-vm103".into(),
        text: "booting -> running".into(),
    }));
    keys(&mut a, "6");
    a.update(code(KeyCode::Enter));
    assert!(a.detail.is_some(), "the event opens its vm");
    assert_eq!(keys(&mut a, "l"), [Command::FetchSerialLog(103)]);
    a.update(code(KeyCode::Esc));
    assert_eq!(keys(&mut a, "s"), [Command::FetchScreenshot(103)]);
    a.update(code(KeyCode::Esc));
    assert_eq!(keys(&mut a, "v"), [Command::FetchConsole(103)]);
    // Back on the events list, they are not keys there.
    a.update(code(KeyCode::Esc));
    assert!(a.detail.is_none());
    assert!(keys(&mut a, "l").is_empty());
}

#[test]
fn serial_log_needs_a_selected_vm() {
    let mut a = app(80, 24, false);
    for script in ["1l", "2l", "3l", "6l"] {
        assert!(keys(&mut a, script).is_empty(), "{script}");
        assert!(a.popup.is_none(), "{script}");
    }
    keys(&mut a, "4/no-such-vm");
    a.update(code(KeyCode::Enter));
    assert!(a.table(Screen::Vms).unwrap().view.is_empty());
    assert!(keys(&mut a, "l").is_empty());
    assert!(a.popup.is_none());
}

#[test]
fn serial_log_popup_reports_why_there_is_none() {
    let mut a = app(80, 24, false);
    keys(&mut a, "4l");
    a.update(Event::SerialLog {
        vm: 101,
        result: Err("driver sim cannot keep a serial log".into()),
    });
    assert!(render(&a).contains("✖ no serial log: driver sim cannot keep a serial log"));
    assert!(keys(&mut a, "kjg").is_empty(), "nothing to scroll");
    a.update(code(KeyCode::Esc));
    assert!(a.popup.is_none());
}

#[test]
fn serial_log_escape_sequences_never_reach_the_terminal() {
    let mut a = app(80, 24, false);
    keys(&mut a, "4l");
    // What a hostile or confused guest may write: clear the screen, move the cursor, retitle
    // the window, set the clipboard (OSC 52), 8-bit CSI, a DCS query, bells and NULs.
    let raw = concat!(
        "\u{1b}[2J\u{1b}[H\u{1b}[0;32m  OK  \u{1b}[0m Started ssh\r\n",
        "\u{1b}]0;owned\u{7}\u{1b}]52;c;ZWNobyBvd25lZA==\u{1b}\\after osc\r\n",
        "\u{9b}31mred\u{9b}0m \u{1b}P$q\"p\u{1b}\\after dcs\u{0}\u{7}\r\n",
        "\u{1b}[10;10H\u{1b}[?1049h\u{1b}[6nmoved\tand tabbed\r\n",
    );
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok(raw.into()),
    });
    let screen = render(&a);
    for line in [
        "│  OK   Started ssh ",
        "│after osc ",
        "│red after dcs ",
        "│moved   and tabbed ",
    ] {
        assert!(screen.contains(line), "{line:?} in\n{screen}");
    }
    for residue in [
        "[2J", "[H", "32m", "owned", "52;c", "ZWNo", "31m", "$q", "1049", "[6n",
    ] {
        assert!(!screen.contains(residue), "{residue:?} in\n{screen}");
    }
    let Some(Popup::Log(LogView {
        status: Some(Ok(lines)),
        ..
    })) = &a.popup
    else {
        panic!("no log")
    };
    assert!(
        lines
            .iter()
            .flat_map(|l| l.chars())
            .all(|c| !c.is_control()),
        "{lines:?}"
    );
}

#[test]
fn memory_source_serial_log_for_vms_on_hosts() {
    use berth_tui::{Source, SourceError};
    let mut s = berth_tui::MemorySource::new(fixture::small());
    let log = s.serial_log(101).unwrap();
    assert!(log.contains("berth-vm101 login:"), "{log}");
    assert!(log.contains("[  OK  ] Started ssh.service"), "{log}");
    assert!(!log.contains(['\u{1b}', '\r']), "{log:?}");
    // vm107 waits in the queue; vm999 does not exist.
    for vm in [107, 999] {
        let err = s.serial_log(vm).unwrap_err();
        assert!(
            matches!(&err, SourceError::Unsupported(m) if m.contains("not on a host")),
            "{err}"
        );
    }
}

#[test]
fn enter_opens_details_and_escape_returns() {
    let mut a = app(80, 24, false);
    keys(&mut a, "3");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(berth_tui::model::Target::Request(41))]
    );
    assert!(a.detail.is_some());
    // Actions do not apply inside a detail view.
    assert!(keys(&mut a, "X").is_empty());
    a.update(code(KeyCode::Esc));
    assert!(a.detail.is_none());
    assert_eq!(a.screen, Screen::Queue);
}

#[test]
fn header_tells_live_stale_and_reconnecting_in_words() {
    let mut a = app(80, 24, false);
    assert!(render(&a).contains("● live"));
    a.update(Event::Tick {
        now_ms: NOW_MS + 9_000,
    });
    assert!(render(&a).contains("◌ stale for 9s"));
    a.update(Event::Connection(ConnState::Reconnecting {
        attempt: 2,
        error: "refused".into(),
    }));
    assert!(render(&a).contains("↻ reconnecting (try 2), stale for 9s"));
    a.update(Event::Data(Box::new(fixture::small())));
    a.update(Event::Connection(ConnState::Live));
    assert!(render(&a).contains("● live"));
}

#[test]
fn stream_events_redraw_only_where_they_show() {
    let mut a = app(80, 24, false);
    a.dirty = false;
    a.update(Event::Stream(berth_tui::model::EventRow {
        at_ms: NOW_MS,
        kind: "vm".into(),
        subject: "berth-vm1".into(),
        text: "x".into(),
    }));
    assert!(!a.dirty, "the overview does not show single events");
    keys(&mut a, "6");
    a.update(key('j'));
    a.dirty = false;
    a.update(Event::Stream(berth_tui::model::EventRow {
        at_ms: NOW_MS,
        kind: "vm".into(),
        subject: "berth-vm2".into(),
        text: "y".into(),
    }));
    assert!(a.dirty);
}

#[test]
fn memory_source_applies_actions() {
    use berth_tui::Source;
    let mut s = berth_tui::MemorySource::new(fixture::small());
    s.perform(&Action::Drain("sim-small-3".into())).unwrap();
    s.perform(&Action::Cancel(41)).unwrap();
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.hosts[2].state, "draining");
    assert!(snap.queue.iter().all(|r| r.id != 41));
    assert_eq!(s.performed.lock().unwrap().len(), 2);
    assert_eq!(s.predict_drain(&[]).unwrap(), None);
}

#[test]
fn a_403_answer_turns_actions_off() {
    let mut a = app(80, 24, false);
    keys(&mut a, "2Dy");
    a.update(Event::ActionDone {
        action: Action::Drain("sim-small-1".into()),
        result: Err("POST /v1/hosts/sim-small-1/drain: 403: token `viewer` is read-only".into()),
    });
    assert!(a.read_only);
    assert!(a.flash.as_deref().unwrap().contains("actions are off"));
    assert!(keys(&mut a, "D").is_empty());
}

fn event(at_ms: u64, kind: &str, subject: &str, text: &str) -> Event {
    Event::Stream(berth_tui::model::EventRow {
        at_ms,
        kind: kind.into(),
        subject: subject.into(),
        text: text.into(),
    })
}

fn selected_event(a: &berth_tui::App) -> String {
    let idx = a.selected_index(Screen::Events).unwrap();
    a.events[idx].subject.clone()
}

#[test]
fn events_follow_the_newest_until_moved_then_stay_on_the_chosen_row() {
    use berth_tui::app::EventsFollow;
    let mut a = app(80, 24, false);
    keys(&mut a, "6");
    assert_eq!(a.events_follow, EventsFollow::Following);
    assert_eq!(selected_event(&a), "berth-vm104", "the newest event");
    a.update(event(NOW_MS, "vm", "berth-vm105", "placed → provisioning"));
    assert_eq!(
        selected_event(&a),
        "berth-vm105",
        "following: the new newest"
    );
    // Moving pauses on the row chosen; new events push the list but not the selection.
    keys(&mut a, "jjj");
    assert_eq!(selected_event(&a), "sim-small-2");
    assert!(matches!(a.events_follow, EventsFollow::Paused { .. }));
    for i in 0..5 {
        a.update(event(
            NOW_MS + i,
            "vm",
            &format!("berth-vm{}", 200 + i),
            "x",
        ));
    }
    assert_eq!(selected_event(&a), "sim-small-2");
    let screen = render(&a);
    assert!(screen.contains("paused, 8 newer (f: follow)"), "{screen}");
    assert!(
        screen.contains("›  11:59:10 host    sim-small-2"),
        "{screen}"
    );
    // Enter opens the event the operator sees selected.
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(berth_tui::model::Target::Host(
            "sim-small-2".into()
        ))]
    );
    a.update(code(KeyCode::Esc));
    // Events that come while another screen shows keep the chosen row too.
    keys(&mut a, "2");
    a.update(event(NOW_MS + 9, "vm", "berth-vm300", "y"));
    keys(&mut a, "6");
    assert_eq!(selected_event(&a), "sim-small-2");
    // `f` follows again, on the newest.
    keys(&mut a, "f");
    assert_eq!(a.events_follow, EventsFollow::Following);
    assert_eq!(selected_event(&a), "berth-vm300");
    a.update(event(NOW_MS + 10, "vm", "berth-vm301", "z"));
    assert_eq!(selected_event(&a), "berth-vm301");
    assert!(render(&a).contains("following newest"));
    // `f` again pauses where it is.
    keys(&mut a, "f");
    a.update(event(NOW_MS + 11, "vm", "berth-vm302", "z"));
    assert_eq!(selected_event(&a), "berth-vm301");
}

#[test]
fn a_paused_event_stays_put_on_screen_as_events_arrive() {
    let mut a = app(80, 24, false);
    keys(&mut a, "6");
    for i in 0..40 {
        a.update(event(
            NOW_MS + i,
            "vm",
            &format!("berth-vm{}", 400 + i),
            "x",
        ));
    }
    // Ten rows down, then twenty events above it: the row stays on the same line.
    keys(&mut a, "jjjjjjjjjj");
    let line_of = |a: &berth_tui::App| render(a).lines().position(|l| l.contains("› ")).unwrap();
    let (before, chosen) = (line_of(&a), selected_event(&a));
    for i in 0..20 {
        a.update(event(
            NOW_MS + 100 + i,
            "vm",
            &format!("berth-vm{}", 500 + i),
            "x",
        ));
    }
    assert_eq!(selected_event(&a), chosen);
    assert_eq!(line_of(&a), before);
}

#[test]
fn sorting_is_stable_under_refresh_with_ties_broken_by_name() {
    let mut a = app(80, 24, false);
    // Column 3 is CPU: three hosts use none.
    keys(&mut a, "2>>>");
    assert!(a.flash.as_deref().unwrap().contains("cpu"));
    let expected = [
        "sim-large-2",
        "sim-mac-1",
        "sim-small-3",
        "sim-small-2",
        "sim-large-1",
        "sim-small-1",
    ];
    assert_eq!(hosts(&a), expected);
    // The daemon lists hosts in another order: the screen does not change.
    for rotate in 1..6 {
        let mut snap = fixture::small();
        snap.hosts.rotate_left(rotate);
        a.update(Event::Data(Box::new(snap)));
        assert_eq!(hosts(&a), expected, "rotated by {rotate}");
    }
    // Descending: the values turn around, ties keep their names in order.
    keys(&mut a, "i");
    assert_eq!(
        hosts(&a),
        [
            "sim-large-1",
            "sim-small-1",
            "sim-small-2",
            "sim-large-2",
            "sim-mac-1",
            "sim-small-3",
        ]
    );
    let mut snap = fixture::small();
    snap.hosts.reverse();
    a.update(Event::Data(Box::new(snap)));
    assert_eq!(hosts(&a)[3..], ["sim-large-2", "sim-mac-1", "sim-small-3"]);
}

#[test]
fn sorted_views_are_a_total_order_matching_a_plain_reference_sort() {
    // The reference: sort the rows by (value, name) with the standard library, and compare
    // with what the console shows, for every column and direction, under shuffles.
    let mut a = app(120, 40, false);
    keys(&mut a, "2");
    let n_cols = berth_tui::app::columns(Screen::Hosts).len();
    for col in 1..n_cols {
        keys(&mut a, ">");
        for seed in 0..4u64 {
            let mut snap = fixture::small();
            // A fixed, varied order per seed.
            snap.hosts
                .sort_by_key(|h| (h.name.len() as u64 * 31 + seed * 17) % 7);
            a.update(Event::Data(Box::new(snap)));
            let shown = hosts(&a);
            let mut again = fixture::small();
            again.hosts.reverse();
            a.update(Event::Data(Box::new(again)));
            assert_eq!(hosts(&a), shown, "column {col}, seed {seed}");
            let mut names = shown.clone();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), shown.len(), "every host once");
        }
    }
}

#[test]
fn drill_down_host_to_vms_to_request_and_back_along_the_path() {
    use berth_tui::model::Target;
    let mut a = app(80, 24, false);
    keys(&mut a, "2");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(Target::Host("sim-small-1".into()))]
    );
    assert_eq!(
        a.links(&Target::Host("sim-small-1".into())),
        [Target::Vm(101), Target::Vm(102), Target::Vm(103)]
    );
    keys(&mut a, "j");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(Target::Vm(102))]
    );
    // A VM leads to its request first, then its host.
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(Target::Request(30))]
    );
    assert_eq!(a.detail_path(), ["sim-small-1", "berth-vm102", "r30"]);
    let screen = render(&a);
    assert!(
        screen.contains("sim-small-1 › berth-vm102 › request r30 (Esc: up)"),
        "{screen}"
    );
    assert!(screen.contains("VMs of r30 (2)"), "{screen}");
    // The request's VMs, and on down again.
    keys(&mut a, "G");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(Target::Vm(102))]
    );
    // Esc returns along the path, each view fetched again, its chosen row kept.
    assert_eq!(
        a.update(code(KeyCode::Esc)),
        [Command::FetchDetail(Target::Request(30))]
    );
    assert_eq!(
        a.update(code(KeyCode::Esc)),
        [Command::FetchDetail(Target::Vm(102))]
    );
    assert_eq!(
        a.update(code(KeyCode::Esc)),
        [Command::FetchDetail(Target::Host("sim-small-1".into()))]
    );
    assert_eq!(a.detail.as_ref().unwrap().link, Some(Target::Vm(102)));
    assert!(a.update(code(KeyCode::Esc)).is_empty());
    assert!(a.detail.is_none());
    assert_eq!(a.screen, Screen::Hosts);
    assert!(a.trail.is_empty());
    // A VM's host link, and a host without VMs leads nowhere.
    keys(&mut a, "4");
    a.update(code(KeyCode::Enter));
    keys(&mut a, "j");
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(Target::Host("sim-small-1".into()))]
    );
    keys(&mut a, "2jj");
    a.update(code(KeyCode::Enter));
    assert!(a.links(&Target::Host("sim-small-3".into())).is_empty());
    assert!(a.update(code(KeyCode::Enter)).is_empty());
    // A screen key leaves the drill-down altogether.
    keys(&mut a, "3");
    assert!(a.detail.is_none() && a.trail.is_empty());
}

#[test]
fn command_bar_jumps_to_details_by_name_and_refuses_the_wrong_kind() {
    use berth_tui::model::Target;
    let mut a = app(80, 24, false);
    assert_eq!(
        command(&mut a, "vm berth-vm104"),
        [Command::FetchDetail(Target::Vm(104))]
    );
    assert_eq!(a.screen, Screen::Vms);
    assert_eq!(a.selected_key(Screen::Vms).as_deref(), Some("104"));
    assert_eq!(
        command(&mut a, "host sim-mac-1"),
        [Command::FetchDetail(Target::Host("sim-mac-1".into()))]
    );
    assert_eq!(
        command(&mut a, "request r41"),
        [Command::FetchDetail(Target::Request(41))]
    );
    assert_eq!(
        command(&mut a, "h sim-small-2"),
        [Command::FetchDetail(Target::Host("sim-small-2".into()))]
    );
    // A request that is not waiting, or a VM that ended, still has details.
    assert_eq!(
        command(&mut a, "request 30"),
        [Command::FetchDetail(Target::Request(30))]
    );
    assert_eq!(
        command(&mut a, "v vm9"),
        [Command::FetchDetail(Target::Vm(9))]
    );
    a.update(code(KeyCode::Esc));
    for (text, says) in [
        ("vm sim-mac-1", "`sim-mac-1` is a host (:host sim-mac-1)"),
        ("host berth-vm12", "`berth-vm12` is a VM (:vm berth-vm12)"),
        ("host r7", "`r7` is a request (:request r7)"),
        ("request berth-vm3", "`berth-vm3` is a VM"),
        ("host sim-nosuch-1", "no host `sim-nosuch-1`"),
        ("vm banana", "`banana` is not a VM name"),
        ("drain berth-vm104", "`:drain` takes a host (sim-small-1)"),
        ("cancel sim-small-1", "`sim-small-1` is a host"),
        ("release r41", "`r41` is a request"),
        ("events sim-small-1", "`:events` takes no target"),
    ] {
        a.detail = None;
        assert!(command(&mut a, text).is_empty(), "{text}");
        assert!(a.popup.is_none(), "{text}");
        assert!(a.detail.is_none(), "{text}");
        let flash = a.flash.clone().unwrap_or_default();
        assert!(flash.contains(says), "{text}: {flash}");
    }
}

#[test]
fn tab_completes_command_names_and_the_names_they_take() {
    let mut a = app(80, 24, false);
    let tab = |a: &mut berth_tui::App, typed: &str| -> String {
        a.input = None;
        keys(a, &format!(":{typed}"));
        a.update(code(KeyCode::Tab));
        match &a.input {
            Some(berth_tui::app::Input::Command(t)) => t.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(tab(&mut a, "ho"), "hosts");
    assert_eq!(tab(&mut a, "host sim-m"), "host sim-mac-1");
    assert_eq!(tab(&mut a, "host sim-s"), "host sim-small-");
    assert_eq!(
        a.command_candidates("host sim-s"),
        ["sim-small-1", "sim-small-2", "sim-small-3"]
    );
    assert_eq!(tab(&mut a, "drain sim-l"), "drain sim-large-");
    assert_eq!(tab(&mut a, "vm berth-vm10"), "vm berth-vm10");
    assert_eq!(tab(&mut a, "release berth-vm106"), "release berth-vm106");
    assert_eq!(tab(&mut a, "cancel r4"), "cancel r4");
    assert_eq!(tab(&mut a, "cancel r42"), "cancel r42");
    assert_eq!(
        a.command_candidates("request r"),
        ["r30", "r31", "r32", "r33", "r34", "r41", "r42", "r43"]
    );
    // Nothing to offer: the text stays.
    assert_eq!(tab(&mut a, "host zzz"), "host zzz");
    assert!(a.command_candidates("events x").is_empty());
    // The completed name works.
    a.input = None;
    keys(&mut a, ":host sim-m");
    a.update(code(KeyCode::Tab));
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(berth_tui::model::Target::Host(
            "sim-mac-1".into()
        ))]
    );
}

#[test]
fn serial_log_follows_until_scrolled_back_and_f_toggles() {
    let mut a = app(80, 24, false);
    assert_eq!(keys(&mut a, "4l"), [Command::FetchSerialLog(101)]);
    // No second fetch while the first is out.
    assert!(
        a.update(Event::Tick {
            now_ms: NOW_MS + 5_000
        })
        .is_empty()
    );
    let log = |n: usize| -> String { (1..=n).map(|i| format!("line {i}\n")).collect() };
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok(log(40)),
    });
    assert!(serial_title(&a).contains("lines 23–40 of 40 · following"));
    assert!(
        a.update(Event::Tick {
            now_ms: NOW_MS + 6_000
        })
        .is_empty()
    );
    assert_eq!(
        a.update(Event::Tick {
            now_ms: NOW_MS + 7_000
        }),
        [Command::FetchSerialLog(101)]
    );
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok(log(45)),
    });
    assert!(serial_title(&a).contains("lines 28–45 of 45 · following"));
    // Scrolling back pauses, and the same lines stay in view as the log grows.
    keys(&mut a, "kk");
    assert!(serial_title(&a).contains("lines 26–43 of 45 · paused"));
    assert!(
        a.update(Event::Tick {
            now_ms: NOW_MS + 20_000
        })
        .is_empty()
    );
    assert_eq!(keys(&mut a, "r"), [Command::FetchSerialLog(101)]);
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok(log(45)),
    });
    keys(&mut a, "kk");
    assert!(serial_title(&a).contains("lines 26–43 of 45 · paused"));
    let Some(Popup::Log(view)) = &mut a.popup else {
        panic!("no log")
    };
    view.fetching = true;
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok(log(50)),
    });
    assert!(serial_title(&a).contains("lines 26–43 of 50 · paused"));
    // `f` follows again at once: the end, fetched now.
    assert_eq!(keys(&mut a, "f"), [Command::FetchSerialLog(101)]);
    assert!(serial_title(&a).contains("lines 33–50 of 50 · following"));
    assert!(keys(&mut a, "f").is_empty());
    assert!(serial_title(&a).contains("paused"));
    assert!(render(&a).contains("f: follow"));
}

#[test]
fn the_daemon_log_is_for_operators_and_follows() {
    let mut a = app(80, 24, false);
    assert_eq!(command(&mut a, "logs"), [Command::FetchDaemonLog]);
    assert!(render(&a).contains("… fetching the daemon log"));
    a.update(Event::DaemonLog(Ok(
        "12:00:01 INFO  berth_daemon::control: placed vm=101 host=sim-small-1\n".into(),
    )));
    let screen = render(&a);
    assert!(
        screen.contains("daemon log · lines 1–1 of 1 · following"),
        "{screen}"
    );
    assert!(
        screen.contains("placed vm=101 host=sim-small-1"),
        "{screen}"
    );
    assert_eq!(
        a.update(Event::Tick {
            now_ms: NOW_MS + 2_000
        }),
        [Command::FetchDaemonLog]
    );
    a.update(Event::DaemonLog(Err(
        "GET /v1/logs: 403: token `viewer` is read-only".into(),
    )));
    assert!(render(&a).contains("✖ no daemon log: GET /v1/logs: 403"));
    // A serial log's answer does not land in the daemon log.
    a.update(Event::SerialLog {
        vm: 101,
        result: Ok("guest\n".into()),
    });
    assert!(render(&a).contains("✖ no daemon log"));
    a.update(code(KeyCode::Esc));
    assert!(a.popup.is_none());
    let mut ro = app(80, 24, true);
    assert!(command(&mut ro, "logs").is_empty());
    assert!(ro.flash.as_deref().unwrap().starts_with("no command"));
}

#[test]
fn a_long_drill_down_path_is_cut_from_the_left_to_fit() {
    use berth_tui::model::{Detail, Target};
    let mut a = app(80, 24, false);
    keys(&mut a, "2");
    a.update(code(KeyCode::Enter));
    keys(&mut a, "j");
    a.update(code(KeyCode::Enter));
    a.update(code(KeyCode::Enter));
    assert_eq!(
        a.update(code(KeyCode::Enter)),
        [Command::FetchDetail(Target::Vm(101))]
    );
    a.update(Event::Detail(Box::new(Ok(Detail {
        target: Target::Vm(101),
        fields: vec![("state".into(), "running".into())],
        timeline: vec![],
        console: Some(Ok(ConsoleInfo {
            vm: 101,
            host: "127.0.0.1".into(),
            port: 5901,
            password: None,
        })),
    }))));
    let screen = render(&a);
    assert!(
        screen.contains("┌ … › r30 › vm berth-vm101 (Esc: up) ─"),
        "{screen}"
    );
    // Two steps fit beside the console panel exactly.
    let mut a = app(80, 24, false);
    keys(&mut a, "2");
    a.update(code(KeyCode::Enter));
    a.update(code(KeyCode::Enter));
    a.update(Event::Detail(Box::new(Ok(Detail {
        target: Target::Vm(101),
        fields: vec![("state".into(), "running".into())],
        timeline: vec![],
        console: Some(Ok(ConsoleInfo {
            vm: 101,
            host: "127.0.0.1".into(),
            port: 5901,
            password: None,
        })),
    }))));
    let screen = render(&a);
    assert!(
        screen.contains("┌ sim-small-1 › vm berth-vm101 (Esc: up) ┐┌ console"),
        "{screen}"
    );
}

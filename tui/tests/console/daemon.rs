//! The HTTP source against a real daemon (embedded, simulated fleet): the JSON shapes it reads,
//! the actions it sends, the event stream, read-only tokens, and what it says when a driver
//! keeps no serial log.

use std::sync::mpsc;
use std::time::Duration;

use berth_daemon::{FileConfig, Options, Role, TokenConfig};
use berth_tui::event::{Command, Event};
use berth_tui::keymap::Screen;
use berth_tui::model::{Action, Target};
use berth_tui::{HttpSource, Source, SourceError};

use crate::{keys, render};

const READ_ONLY_TOKEN: &str = "read-only-token-for-tests";

struct TestDaemon {
    url: String,
    token: String,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start() -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = FileConfig::default();
    config.sim.latency_scale = 0.001;
    config.pulses.period_ms = 1000;
    config.tokens.push(TokenConfig {
        name: "viewer".into(),
        token: READ_ONLY_TOKEN.into(),
        role: Role::ReadOnly,
    });
    let opts = Options::new(
        config,
        Some(dir.path().to_owned()),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let daemon = rt.block_on(berth_daemon::start(opts)).unwrap();
    let url = format!("http://{}", daemon.addr());
    let token = berth_daemon::ensure_token(dir.path()).unwrap();
    // The daemon runs until the runtime is dropped with the test.
    std::mem::forget(daemon);
    TestDaemon {
        url,
        token,
        _rt: rt,
        _dir: dir,
    }
}

fn wait<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    berth_testkit::wait_for(what, Duration::from_secs(20), f)
}

#[test]
fn the_overview_plots_the_daemons_pulses_and_a_new_console_has_them_at_once() {
    let d = start();
    let mut src = HttpSource::new(&d.url, Some(d.token.clone()));
    let snap = wait("three pulses", || {
        let s = src.snapshot().unwrap();
        (s.pulses.len() >= 3).then_some(s)
    });
    // Each snapshot asks only for pulses newer than the last it has: none twice, in order.
    for pair in snap.pulses.windows(2) {
        assert!(pair[0].at_ms < pair[1].at_ms, "{:?}", snap.pulses);
    }
    assert!(
        snap.pulses
            .iter()
            .all(|p| p.at_ms + 3_600_000 > snap.now_ms)
    );
    assert!(
        snap.pulses
            .last()
            .unwrap()
            .classes
            .iter()
            .any(|c| c.class == "sim-small" && c.hosts_in_service > 0),
        "{:?}",
        snap.pulses.last()
    );
    // A console started now (a new source) reads the same history in its first snapshot.
    let fresh = HttpSource::new(&d.url, Some(READ_ONLY_TOKEN.into()))
        .snapshot()
        .unwrap();
    assert!(
        fresh.pulses.starts_with(&snap.pulses),
        "{} pulses before, {} in the new console's first snapshot",
        snap.pulses.len(),
        fresh.pulses.len()
    );
    // And draws them on the overview's time axis.
    let mut app = berth_tui::App::new(
        berth_tui::Options {
            read_only: true,
            ssh: None,
            source_label: d.url.clone(),
            color: false,
        },
        fresh.now_ms,
        120,
        40,
    );
    app.update(Event::Data(Box::new(fresh)));
    let screen = render(&app);
    assert!(
        screen.contains("last hour, from the daemon's pulses"),
        "{screen}"
    );
    assert!(screen.contains("sim-small  cpu"), "{screen}");
    assert!(screen.contains("-60m"), "{screen}");
}

#[test]
fn http_source_reads_acts_and_streams_against_the_daemon() {
    let d = start();
    let mut src = HttpSource::new(&d.url, Some(d.token.clone()));
    let snap = src.snapshot().unwrap();
    assert_eq!(snap.hosts.len(), 16);
    assert!(snap.now_ms > 1_700_000_000_000, "a wall-clock time");
    let small = snap.hosts.iter().find(|h| h.name == "sim-small-1").unwrap();
    assert_eq!(small.class, "sim-small");
    assert!(small.cpu_milli > 0 && small.memory_mib > 0);

    let (tx, rx) = mpsc::channel();
    src.subscribe(tx);
    wait("the event stream", || {
        rx.try_recv()
            .ok()
            .and_then(|e| matches!(e, Event::StreamUp(true)).then_some(()))
    });

    // A request, so there is a VM to see.
    let body = serde_json::json!({"template": "linux", "count": 1});
    ureq::post(&format!("{}/v1/requests", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .send_json(body)
        .unwrap();
    let vm = wait("a VM", || src.snapshot().unwrap().vms.first().cloned());
    assert_eq!(vm.template, "linux");
    let detail = src.detail(&Target::Vm(vm.id)).unwrap();
    assert!(!detail.timeline.is_empty());
    assert!(detail.console.is_some());
    let field = |d: &berth_tui::model::Detail, k: &str| {
        d.fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field(&detail, "template").as_deref(), Some("linux"));
    assert_eq!(field(&detail, "size").as_deref(), Some("the template's"));
    let host = src.detail(&Target::Host("sim-small-1".into())).unwrap();
    for k in ["vcpus", "memory", "labels"] {
        assert!(
            field(&host, k).is_some(),
            "host detail without {k}: {:?}",
            host.fields
        );
    }
    let detail = src.detail(&Target::Request(vm.request)).unwrap();
    assert!(detail.fields.iter().any(|(k, _)| k == "requester"));

    src.perform(&Action::Drain("sim-small-1".into())).unwrap();
    let snap = src.snapshot().unwrap();
    let state = &snap
        .hosts
        .iter()
        .find(|h| h.name == "sim-small-1")
        .unwrap()
        .state;
    assert!(state == "draining" || state == "maintenance", "{state}");
    wait("the drain on the stream", || match rx.try_recv() {
        Ok(Event::Stream(row)) if row.kind == "host" && row.subject == "sim-small-1" => Some(()),
        _ => None,
    });
    src.perform(&Action::Resume("sim-small-1".into())).unwrap();
    let detail = src.detail(&Target::Host("sim-small-1".into())).unwrap();
    assert!(
        detail
            .fields
            .iter()
            .any(|(k, v)| k == "state" && v == "ready")
    );

    // The forecast replays the last hour's requests: the one submitted above.
    let forecast = src.predict_drain(&["sim-small-2".into()]).unwrap().unwrap();
    assert_eq!(forecast.hosts, ["sim-small-2"]);
    assert_eq!(forecast.horizon_ms, 3_600_000);
    let arrivals = forecast
        .arrivals
        .expect("the last hour's request, replayed");
    assert_eq!(arrivals.requests, 1, "{arrivals:?}");
    // The fleet is nearly idle: it is placed with sim-small-2 drained or not.
    assert_eq!(arrivals.with.still_waiting, 0, "{arrivals:?}");
    // `/v1/whoami` may not exist yet: then the role is unknown, never read-only.
    assert_ne!(src.role(), Some(berth_tui::event::Role::ReadOnly));
    // Screenshots: an image, or a clear "not supported".
    match src.screenshot(vm.id) {
        Ok(bytes) => assert!(!bytes.is_empty()),
        Err(e) => assert!(
            matches!(e, SourceError::Unsupported(_) | SourceError::Status { .. }),
            "{e}"
        ),
    }
}

#[test]
fn serial_log_on_simulated_hosts_says_why_there_is_none() {
    let d = start();
    let mut src = HttpSource::new(&d.url, Some(d.token.clone()));
    let body = serde_json::json!({"template": "linux", "count": 1});
    ureq::post(&format!("{}/v1/requests", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .send_json(body)
        .unwrap();
    let snap = wait("a VM on a host", || {
        let snap = src.snapshot().unwrap();
        snap.vms.iter().any(|v| v.host.is_some()).then_some(snap)
    });
    let vm = snap.vms.iter().find(|v| v.host.is_some()).unwrap().id;
    let err = src.serial_log(vm).unwrap_err();
    assert!(
        matches!(&err, SourceError::Unsupported(m) if m == "driver sim cannot keep a serial log"),
        "{err}"
    );
    // Read-only tokens may read serial logs: the same answer, not a 403.
    let mut viewer = HttpSource::new(&d.url, Some(READ_ONLY_TOKEN.into()));
    let err = viewer.serial_log(vm).unwrap_err();
    assert!(matches!(&err, SourceError::Unsupported(_)), "{err}");
    let err = src.serial_log(999_999).unwrap_err();
    assert!(
        matches!(&err, SourceError::Status { status: 404, message, .. } if message.contains("not on a host")),
        "{err}"
    );

    // The console, on the daemon's own data, shows the daemon's reason.
    let mut app = berth_tui::App::new(berth_tui::Options::default(), snap.now_ms, 80, 24);
    app.update(Event::Data(Box::new(snap.clone())));
    keys(&mut app, "4");
    let pos = app
        .table(Screen::Vms)
        .unwrap()
        .view
        .iter()
        .position(|&i| snap.vms[i].id == vm)
        .unwrap();
    for _ in 0..pos {
        keys(&mut app, "j");
    }
    assert_eq!(keys(&mut app, "l"), [Command::FetchSerialLog(vm)]);
    app.update(Event::SerialLog {
        vm,
        result: src.serial_log(vm).map_err(|e| e.to_string()),
    });
    let screen = render(&app);
    assert!(
        screen.contains("✖ no serial log: driver sim cannot keep a serial log"),
        "{screen}"
    );
}

#[test]
fn read_only_tokens_cannot_act() {
    let d = start();
    let mut src = HttpSource::new(&d.url, Some(READ_ONLY_TOKEN.into()));
    assert_eq!(src.snapshot().unwrap().hosts.len(), 16);
    // With `/v1/whoami` the console knows before the first action; without, at the first 403.
    let role = src.role();
    assert!(
        role.is_none() || role == Some(berth_tui::event::Role::ReadOnly),
        "{role:?}"
    );
    let err = src
        .perform(&Action::Drain("sim-small-1".into()))
        .unwrap_err();
    assert!(
        matches!(err, SourceError::Status { status: 403, .. }),
        "{err}"
    );
    // A forecast changes nothing, so read-only tokens may ask. Nothing was submitted in the
    // last hour: there are no arrivals to replay, only the (empty) queue.
    let forecast = src.predict_drain(&["sim-small-1".into()]).unwrap().unwrap();
    assert_eq!(forecast.arrivals, None, "{forecast:?}");
    assert_eq!(forecast.with.still_waiting, 0, "{forecast:?}");
}

#[test]
fn an_absent_daemon_is_transient() {
    let mut src = HttpSource::new("http://127.0.0.1:9", None);
    let err = src.snapshot().unwrap_err();
    assert!(err.is_transient(), "{err}");
}

/// On an idle daemon the scheduler's clock stands still; what the console shows waited keeps
/// counting on the daemon's wall clock, and so does the oldest-wait metric.
#[test]
fn waits_keep_counting_while_the_daemon_is_idle() {
    let d = start();
    let mut src = HttpSource::new(&d.url, Some(d.token.clone()));
    // More than the fleet holds at once: the rest waits, and nothing else happens.
    let body = serde_json::json!({"template": "linux", "count": 1000, "cpus": 16});
    ureq::post(&format!("{}/v1/requests", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .send_json(body)
        .unwrap();
    let first = wait("a waiting request", || {
        let s = src.snapshot().unwrap();
        (!s.queue.is_empty()).then_some(s)
    });
    let submitted_ms = first.queue[0].submitted_ms;
    let idle = Duration::from_millis(2500);
    std::thread::sleep(idle);
    let snap = src.snapshot().unwrap();
    let waited_ms = snap.now_ms - snap.queue[0].submitted_ms;
    assert!(
        waited_ms >= 2500,
        "waited {waited_ms} ms after {idle:?} idle"
    );
    assert_eq!(snap.queue[0].submitted_ms, submitted_ms);
    // It is first in the queue, and its detail says when it should start.
    assert_eq!(snap.queue[0].position, Some(1));
    let detail = src.detail(&Target::Request(snap.queue[0].id)).unwrap();
    let field = |k: &str| {
        detail
            .fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("position").as_deref(), Some("1 of 1"), "{detail:?}");
    let starts = field("starts").unwrap_or_default();
    assert!(
        starts.ends_with("UTC (estimate)") || starts.ends_with("UTC (past the estimate)"),
        "{starts}"
    );
    // The console shows it, in the queue's WAITED column.
    let mut app = berth_tui::App::new(berth_tui::Options::default(), snap.now_ms, 120, 40);
    app.update(Event::Data(Box::new(snap.clone())));
    keys(&mut app, "3");
    let screen = render(&app);
    assert!(screen.contains("WAITED"), "{screen}");
    let secs = waited_ms / 1000;
    assert!(
        screen.contains(&format!("{secs}s")),
        "{secs}s not on\n{screen}"
    );
    // The metric sees the stuck queue before any request of it is placed.
    let text = ureq::get(&format!("{}/metrics", d.url))
        .set("Authorization", &format!("Bearer {}", d.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let oldest: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_queue_oldest_wait_seconds "))
        .expect("the oldest wait is exported")
        .trim()
        .parse()
        .unwrap();
    assert!(oldest >= 2.5, "berth_queue_oldest_wait_seconds {oldest}");
}

#[test]
fn the_daemon_log_reaches_operators_and_not_read_only_tokens() {
    // What `berth serve` does: the daemon's log lines go to the ring as well.
    use tracing_subscriber::layer::SubscriberExt;
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(berth_daemon::logs::layer()),
    );
    let d = start();
    tracing::warn!(host = "sim-small-9", "console log test: probe failed");
    let mut src = HttpSource::new(&d.url, Some(d.token.clone()));
    let text = src.daemon_log().unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("console log test"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(" WARN  console log test: probe failed host=sim-small-9  [console::daemon]"),
        "{line}"
    );
    // The daemon's own start-up lines are there too.
    assert!(text.contains("initialising a new data directory"), "{text}");
    let mut viewer = HttpSource::new(&d.url, Some(READ_ONLY_TOKEN.into()));
    let err = viewer.daemon_log().unwrap_err();
    assert!(
        matches!(err, SourceError::Status { status: 403, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("GET /v1/logs"), "{err}");
    // And in the console, as an operator sees it.
    let mut a = crate::app(80, 24, false);
    keys(&mut a, ":logs");
    let cmds = a.update(crate::code(crossterm::event::KeyCode::Enter));
    assert_eq!(cmds, [Command::FetchDaemonLog]);
    a.update(Event::DaemonLog(
        src.daemon_log().map_err(|e| e.to_string()),
    ));
    let screen = render(&a);
    assert!(screen.contains("probe failed host=sim-small-9"), "{screen}");
}

//! The simulator end to end: the KTH replay checked against AccaSim's published figures,
//! dependent arrivals, determinism, host failures and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use berth_sched::Policy;
use berth_sim::{Fleet, Profile, Report, RunInfo, SimConfig, Simulation};
use berth_traces::{Format, SwfMode, TraceReader};

/// The KTH SP2 log from the shared folder beside the repository, or `None` after saying why
/// not.
fn kth() -> Option<PathBuf> {
    berth_testkit::shared_trace("KTH-SP2-1996-2.1-cln.swf")
}

fn replay(reader: &mut TraceReader, fleet: &Fleet, policy: Policy, latency: Profile) -> Report {
    let config = SimConfig {
        policy,
        latency,
        ..SimConfig::default()
    };
    let sim = Simulation::new(fleet, config).unwrap();
    let (report, _) = sim.run(reader, RunInfo::default(), &mut |_, _| {}).unwrap();
    report
}

fn replay_kth(path: &Path, policy: Policy) -> Report {
    let mut reader = TraceReader::open(
        path,
        Format::Swf {
            mode: SwfMode::Gang,
        },
    )
    .unwrap();
    let report = replay(
        &mut reader,
        &Fleet::uniform("100x1").unwrap(),
        policy,
        Profile::Zero,
    );
    assert_eq!(
        reader.skipped(),
        1,
        "AccaSim skips the one job with no processor count"
    );
    report
}

/// The same schedule as AccaSim's: makespan within 0.1%, and utilisation at the four places
/// AccaSim quotes.
fn same_schedule(r: &Report, makespan_s: f64, utilisation: f64) {
    within("makespan", r.makespan_s, makespan_s, 0.001);
    within(
        "utilisation",
        (r.utilisation * 1e4).round() / 1e4,
        utilisation,
        0.001,
    );
}

fn within(what: &str, got: f64, want: f64, tolerance: f64) {
    let off = (got - want).abs() / want;
    assert!(
        off <= tolerance,
        "{what}: got {got}, AccaSim {want}: off by {:.3}% (allowed {:.3}%)",
        off * 100.0,
        tolerance * 100.0
    );
}

/// AccaSim 1.1.3 on the same trace, 100 one-CPU nodes, first fit (figures in DESIGN.md).
const FCFS_MEAN_WAIT_S: f64 = 389_854.0;
const FCFS_MAKESPAN_S: f64 = 28_779_758.0;
const FCFS_UTILISATION: f64 = 0.6988;
const EASY_MEAN_WAIT_S: f64 = 6_094.7;
const EASY_MAKESPAN_S: f64 = 28_763_776.0;
const EASY_UTILISATION: f64 = 0.6992;

#[test]
fn kth_fcfs_reproduces_accasim() {
    let Some(path) = kth() else { return };
    let r = replay_kth(&path, Policy::Fcfs);
    assert_eq!(r.requests, 28_475);
    within("mean wait", r.mean_wait_s, FCFS_MEAN_WAIT_S, 0.01);
    same_schedule(&r, FCFS_MAKESPAN_S, FCFS_UTILISATION);
}

#[test]
fn kth_accasim_easy_reproduces_accasim_easy() {
    let Some(path) = kth() else { return };
    let r = replay_kth(&path, Policy::AccasimEasy);
    assert_eq!(r.requests, 28_475);
    within("mean wait", r.mean_wait_s, EASY_MEAN_WAIT_S, 0.01);
    same_schedule(&r, EASY_MAKESPAN_S, EASY_UTILISATION);
}

/// berth's EASY protects the head's reservation, which AccaSim's does not (docs/simulation.md):
/// the schedule's length and utilisation agree, the waits differ and are explained there.
#[test]
fn kth_easy_matches_accasim_makespan_and_utilisation() {
    let Some(path) = kth() else { return };
    let r = replay_kth(&path, Policy::Easy);
    assert_eq!(r.requests, 28_475);
    same_schedule(&r, EASY_MAKESPAN_S, EASY_UTILISATION);
    assert!(
        r.mean_wait_s < FCFS_MEAN_WAIT_S / 20.0,
        "backfilling should cut FCFS's waits by far: {}",
        r.mean_wait_s
    );
}

fn berth_trace(lines: &[&str]) -> TraceReader {
    let mut text = String::from("{\"berth_trace\":1,\"synthetic\":true,\"source\":\"test\"}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    TraceReader::from_reader(Cursor::new(text.into_bytes()), "test.jsonl", Format::Berth).unwrap()
}

/// One 1-vCPU host pulling at 1 Gbit/s, holding `images`; template `t` from a 1 GiB image.
fn image_fleet(images: &str) -> Fleet {
    Fleet::parse(
        &format!(
            "[[class]]\nname='h'\ncount=1\nvcpus=1\nmemory_mib=4096\nimages={images}\n\
             pull_gbit_s=1\n[[template]]\nname='t'\nvcpus=1\nmemory_mib=1024\n\
             image_size_gib=1\n"
        ),
        "images.toml",
    )
    .unwrap()
}

#[test]
fn a_vm_on_a_host_without_its_image_starts_when_the_pull_is_done() {
    let lines = [
        r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":100000}"#,
        r#"{"at_ms":200000,"kind":"request","id":2,"count":1,"vcpus":1,"template":"t","duration_ms":1000}"#,
    ];
    // 1 GiB at 1 Gbit/s: 8.59 s before the first VM can be made; the second finds the image.
    let r = replay(
        &mut berth_trace(&lines),
        &image_fleet("[]"),
        Policy::Fcfs,
        Profile::Zero,
    );
    let images = r.images.clone().unwrap();
    assert_eq!((images.pulls, images.pulls_ahead), (1, 0));
    assert!((images.pull_s - 8.59).abs() < 1e-9, "{images:?}");
    assert!((images.pulled_gib - 1.0).abs() < 1e-9, "{images:?}");
    assert!((r.mean_ttr_s - 8.59 / 2.0).abs() < 1e-6, "{}", r.mean_ttr_s);
    // Holding the image from the start, nothing is pulled and both run at once.
    let r = replay(
        &mut berth_trace(&lines),
        &image_fleet("['t']"),
        Policy::Fcfs,
        Profile::Zero,
    );
    assert_eq!(r.images.unwrap().pulls, 0);
    assert_eq!(r.mean_ttr_s, 0.0);
}

/// One 4-vCPU host of class `h` and a 1-vCPU template `t`, with a warm pool of `warm` VMs.
fn warm_fleet(warm: u32) -> Fleet {
    let pool = if warm > 0 {
        format!("[[warm]]\ntemplate='t'\nclass='h'\ncount={warm}\n")
    } else {
        String::new()
    };
    Fleet::parse(
        &format!(
            "[[class]]\nname='h'\ncount=1\nvcpus=4\nmemory_mib=16384\n\
             [[template]]\nname='t'\nvcpus=1\nmemory_mib=1024\n{pool}"
        ),
        "warm.toml",
    )
    .unwrap()
}

#[test]
fn a_warm_vm_is_handed_over_at_once_and_its_idle_time_is_counted() {
    let lines = [
        r#"{"at_ms":100000,"kind":"request","id":1,"count":1,"vcpus":1,"memory_mib":1024,"template":"t","duration_ms":50000}"#,
    ];
    let cold = replay(
        &mut berth_trace(&lines),
        &warm_fleet(0),
        Policy::Easy,
        Profile::Default,
    );
    assert_eq!((cold.handovers, cold.warm_vcpu_hours), (0, 0.0));
    assert!(
        cold.mean_ttr_s > 10.0,
        "provisioned and booted: {}",
        cold.mean_ttr_s
    );
    let warm = replay(
        &mut berth_trace(&lines),
        &warm_fleet(1),
        Policy::Easy,
        Profile::Default,
    );
    assert_eq!(warm.handovers, 1);
    assert!(
        warm.mean_ttr_s < 5.0,
        "a handover, no boot: {}",
        warm.mean_ttr_s
    );
    // The first warm VM idled from the start to the handover at 100 s; its replacement from
    // then to the last end (100 s plus the makespan). One vCPU each.
    let idle_s = warm.warm_vcpu_hours * 3600.0;
    let want_s = 100.0 + warm.makespan_s;
    assert!(
        (idle_s - want_s).abs() < 0.01,
        "idle {idle_s} s, want {want_s} s"
    );
    // The table says it beside the time to running; a run without pools says nothing of them.
    assert!(!cold.to_string().contains("warm pool"));
    assert!(
        warm.to_string().contains(&format!(
            "warm pool  1 handovers; idle warm {:.1} vcpu-hours",
            warm.warm_vcpu_hours
        )),
        "{warm}"
    );
}

#[test]
fn a_run_with_warm_pools_replays_alike() {
    let run = || {
        let generator =
            berth_traces::Generator::new(berth_traces::SynthConfig::new(1_000, 3)).unwrap();
        let mut records = generator.map(Ok);
        let fleet = Fleet::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/fleet-ci-warm.toml"
        )))
        .unwrap();
        let (mut r, _) = Simulation::new(&fleet, SimConfig::default())
            .unwrap()
            .run(&mut records, RunInfo::default(), &mut |_, _| {})
            .unwrap();
        r.wall_s = 0.0;
        if let Some(eta) = &mut r.eta {
            eta.wall_s = 0.0;
        }
        r
    };
    let a = run();
    assert!(a.handovers > 0 && a.warm_vcpu_hours > 0.0);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&run()).unwrap()
    );
}

#[test]
fn a_dependent_request_arrives_when_its_dependency_ends() {
    // r1 runs 100 s on the only host; r2 follows r1 with a 10 s think time; r3 is independent
    // and arrives at 50 s, so it waits for r1 (the host has one vCPU).
    let lines = [
        r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":100000}"#,
        r#"{"at_ms":0,"kind":"request","id":2,"count":1,"vcpus":1,"template":"t","duration_ms":5000,"after":[1],"think_ms":10000}"#,
        r#"{"at_ms":50000,"kind":"request","id":3,"count":1,"vcpus":1,"template":"t","duration_ms":1000}"#,
    ];
    let r = replay(
        &mut berth_trace(&lines),
        &Fleet::uniform("1x1").unwrap(),
        Policy::Fcfs,
        Profile::Zero,
    );
    assert_eq!(r.requests, 3);
    // r1 waits 0; r3 arrives at 50 s and starts at 100 s (50 s); r2 arrives at 110 s, when r3
    // (ended at 101 s) is gone: 0 s. Mean 50/3 s.
    assert!(
        (r.mean_wait_s - 50.0 / 3.0).abs() < 1e-6,
        "{}",
        r.mean_wait_s
    );
    // Last end: r2 at 110 + 5 = 115 s.
    assert!((r.makespan_s - 115.0).abs() < 1e-6, "{}", r.makespan_s);
}

#[test]
fn a_faster_fleet_brings_dependent_work_forward() {
    let lines = [
        r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":100000}"#,
        r#"{"at_ms":0,"kind":"request","id":2,"count":1,"vcpus":1,"template":"t","duration_ms":100000}"#,
        r#"{"at_ms":0,"kind":"request","id":3,"count":1,"vcpus":1,"template":"t","duration_ms":1000,"after":[2]}"#,
    ];
    let slow = replay(
        &mut berth_trace(&lines),
        &Fleet::uniform("1x1").unwrap(),
        Policy::Fcfs,
        Profile::Zero,
    );
    let fast = replay(
        &mut berth_trace(&lines),
        &Fleet::uniform("2x1").unwrap(),
        Policy::Fcfs,
        Profile::Zero,
    );
    assert!(
        (slow.makespan_s - 201.0).abs() < 1e-6,
        "{}",
        slow.makespan_s
    );
    assert!(
        (fast.makespan_s - 101.0).abs() < 1e-6,
        "{}",
        fast.makespan_s
    );
}

#[test]
fn the_same_trace_and_seed_give_the_same_report() {
    let run = |seed| {
        let generator =
            berth_traces::Generator::new(berth_traces::SynthConfig::new(3_000, 7)).unwrap();
        let mut records = generator.map(Ok);
        let fleet = Fleet::parse(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/fleet-ci.toml"
            ))
            .unwrap(),
            "fleet-ci.toml",
        )
        .unwrap();
        let config = SimConfig {
            seed,
            mtbf_ms: Some(48 * 3_600_000),
            ..SimConfig::default()
        };
        let (mut r, _) = Simulation::new(&fleet, config)
            .unwrap()
            .run(&mut records, RunInfo::default(), &mut |_, _| {})
            .unwrap();
        r.wall_s = 0.0;
        if let Some(eta) = &mut r.eta {
            eta.wall_s = 0.0;
        }
        serde_json::to_string(&r).unwrap()
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a, run(12), "another seed draws other latencies");
}

/// Estimating starts at submits runs on copies: the run decides the same with or without it,
/// and the report gains only its `eta` figures, from at most the samples asked for.
#[test]
fn measuring_estimated_starts_changes_nothing_else_and_keeps_to_its_cap() {
    let run = |eta_samples_max| {
        let generator =
            berth_traces::Generator::new(berth_traces::SynthConfig::new(3_000, 7)).unwrap();
        let mut records = generator.map(Ok);
        let config = SimConfig {
            eta_samples_max,
            ..SimConfig::default()
        };
        let fleet = Fleet::parse(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/fleet-ci-small.toml"
            ))
            .unwrap(),
            "fleet-ci-small.toml",
        )
        .unwrap();
        let (mut r, _) = Simulation::new(&fleet, config)
            .unwrap()
            .run(&mut records, RunInfo::default(), &mut |_, _| {})
            .unwrap();
        r.wall_s = 0.0;
        r
    };
    let without = run(0);
    let mut with = run(40);
    assert!(without.eta.is_none());
    assert_eq!(without.rejected, 0);
    let eta = with.eta.take().unwrap();
    assert_eq!(
        serde_json::to_string(&without).unwrap(),
        serde_json::to_string(&with).unwrap()
    );
    assert!(eta.waiting_submits > 100, "{eta:?}");
    assert!(eta.samples > 0 && eta.samples <= 40, "{eta:?}");
    assert!(eta.sample_every > 1, "{eta:?}");
    assert!(eta.median_abs_error_s <= eta.p90_abs_error_s, "{eta:?}");
    assert!(eta.median_rel_error.is_finite(), "{eta:?}");
}

#[test]
fn host_failures_lose_vms_and_the_run_still_ends() {
    let generator = berth_traces::Generator::new(berth_traces::SynthConfig::new(2_000, 3)).unwrap();
    let mut records = generator.map(Ok);
    let config = SimConfig {
        mtbf_ms: Some(6 * 3_600_000),
        mttr_ms: 3_600_000,
        ..SimConfig::default()
    };
    let fleet = Fleet::uniform("40x32:131072").unwrap();
    let (r, _) = Simulation::new(&fleet, config)
        .unwrap()
        .run(&mut records, RunInfo::default(), &mut |_, _| {})
        .unwrap();
    assert_eq!(r.vms, 2_000);
    assert!(r.makespan_s > 0.0);
}

#[test]
fn a_malformed_trace_line_names_the_file_and_line() {
    let mut reader = berth_trace(&[
        r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":1000}"#,
        r#"{"at_ms":5,"kind":"request","id":2,"count":"two","vcpus":1,"template":"t","duration_ms":1000}"#,
    ]);
    let sim = Simulation::new(&Fleet::uniform("1x1").unwrap(), SimConfig::default()).unwrap();
    let e = sim
        .run(&mut reader, RunInfo::default(), &mut |_, _| {})
        .expect_err("malformed");
    let text = e.to_string();
    assert!(text.starts_with("test.jsonl:3:"), "{text}");
    assert!(text.contains("count"), "{text}");
}

/// Two 4-vCPU hosts, 8 one-vCPU jobs of 10 minutes running, 8 more waiting: the scheduler's
/// state one minute in.
fn two_busy_hosts() -> berth_sched::Scheduler {
    use berth_sched::{
        Config, DriverKind, HostSpec, Input, ProbeReport, RequestSpec, Scheduler, Shape, Template,
    };
    let mut s = Scheduler::new(Config::default());
    let mut t = Template::new(
        "linux",
        Shape {
            vcpus: 1,
            memory_mib: 1024,
        },
    );
    t.expected_run_ms = 600_000;
    s.handle(0, Input::SetTemplate(t)).unwrap();
    for (id, name) in [(1, "h1"), (2, "h2")] {
        s.handle(
            0,
            Input::AddHost(HostSpec::new(id, name, DriverKind::Sim, 4, 16_384)),
        )
        .unwrap();
        let report = ProbeReport {
            vcpus: 4,
            memory_mib: 16_384,
            images: Vec::new(),
        };
        s.handle(
            0,
            Input::Probe {
                host: berth_sched::HostId(id),
                result: Ok(report),
            },
        )
        .unwrap();
    }
    let mut sim = Simulation::from_scheduler(s, SimConfig::default());
    for id in 1..=16 {
        sim.handle(Input::Submit(RequestSpec::new(id, "linux", 1)))
            .unwrap();
    }
    // Everything starts (or queues) in the first minute; copy the state there.
    sim.run_until(60_000).unwrap();
    let state = sim.scheduler().clone();
    assert_eq!(state.queue_len(), 8);
    state
}

#[test]
fn a_forecast_from_a_copied_state_sees_a_drain_lengthen_the_waits() {
    use berth_sched::Input;
    let state = two_busy_hosts();
    let config = SimConfig {
        seed: 7,
        ..SimConfig::default()
    };
    let without = Simulation::from_scheduler(state.clone(), config.clone())
        .forecast(3_600_000)
        .unwrap();
    let mut drained = Simulation::from_scheduler(state.clone(), config.clone());
    drained
        .handle(Input::Drain(berth_sched::HostId(2)))
        .unwrap();
    let with = drained.forecast(3_600_000).unwrap();
    assert_eq!((without.waiting.n, with.waiting.n), (8, 8));
    assert_eq!(
        (without.waiting.still_waiting, with.waiting.still_waiting),
        (0, 0)
    );
    // Without the drain the 8 waiting jobs start when the first 8 end (about 10 min after
    // they started); with one host they need two rounds on it.
    assert!(without.waiting.max_wait_ms >= 500_000, "{without:?}");
    assert!(
        with.waiting.mean_wait_ms > without.waiting.mean_wait_ms,
        "{with:?} vs {without:?}"
    );
    assert!(
        with.waiting.max_wait_ms > without.waiting.max_wait_ms + 400_000,
        "{with:?} vs {without:?}"
    );
    // Same state and seed: the same forecast.
    let again = Simulation::from_scheduler(state, config)
        .forecast(3_600_000)
        .unwrap();
    assert_eq!(again, without);
}

#[test]
fn a_forecast_with_arrivals_reports_their_waits_apart() {
    use berth_sched::Input;
    use berth_traces::{Record, RecordBody, RequestRecord};
    let state = two_busy_hosts();
    let now = state.now_ms();
    // Eight more jobs like those, arriving five minutes from now; one after the horizon.
    let arrival = |id: u64, at_ms: u64| Record {
        at_ms,
        body: RecordBody::Request(RequestRecord::new(id, "linux", 1, 600_000)),
    };
    let mut arrivals: Vec<Record> = (0..8).map(|i| arrival(1_000 + i, now + 300_000)).collect();
    arrivals.push(arrival(2_000, now + 7_200_000));
    let config = SimConfig {
        seed: 7,
        ..SimConfig::default()
    };
    let forecast = |drain: bool, arrivals: Vec<Record>| {
        let mut sim = Simulation::from_scheduler(state.clone(), config.clone());
        if drain {
            sim.handle(Input::Drain(berth_sched::HostId(2))).unwrap();
        }
        sim.forecast_with_arrivals(3_600_000, arrivals).unwrap()
    };
    let without = forecast(false, arrivals.clone());
    let with = forecast(true, arrivals.clone());
    assert_eq!(
        (without.arrivals.n, with.arrivals.n),
        (8, 8),
        "the late one is left out"
    );
    // The waiting requests come first under fcfs: the arrivals wait for a second round.
    assert!(without.arrivals.mean_wait_ms > 0, "{without:?}");
    assert!(
        with.arrivals.mean_wait_ms > without.arrivals.mean_wait_ms,
        "{with:?} vs {without:?}"
    );
    assert!(
        with.arrivals.max_wait_ms > without.arrivals.max_wait_ms,
        "{with:?} vs {without:?}"
    );
    // Half an hour ahead, on one host, some of them are still waiting at the horizon.
    let mut drained = Simulation::from_scheduler(state.clone(), config.clone());
    drained
        .handle(Input::Drain(berth_sched::HostId(2)))
        .unwrap();
    let short = drained
        .forecast_with_arrivals(1_800_000, arrivals.clone())
        .unwrap();
    assert_eq!(short.arrivals.n, 8);
    assert!(short.arrivals.still_waiting > 0, "{short:?}");
    // The requests waiting now are reported as before, apart from the arrivals.
    let plain = Simulation::from_scheduler(state.clone(), config.clone())
        .forecast(3_600_000)
        .unwrap();
    assert_eq!(without.waiting.n, plain.waiting.n);
    assert_eq!(plain.arrivals, berth_sim::WaitForecast::default());
    // An arrival with the id of a request the scheduler holds is refused, not merged.
    let e = Simulation::from_scheduler(state.clone(), config.clone())
        .forecast_with_arrivals(3_600_000, vec![arrival(3, now + 1)])
        .unwrap_err();
    assert!(e.to_string().contains("r3"), "{e}");
}

#[test]
fn a_budget_stops_a_run_at_its_step_limit_or_when_cancelled() {
    use berth_sim::{Budget, SimError};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let state = two_busy_hosts();
    let mut sim = Simulation::from_scheduler(state.clone(), SimConfig::default());
    sim.set_budget(Budget {
        steps_max: Some(3),
        cancel: None,
    });
    match sim.forecast(3_600_000) {
        Err(SimError::OverBudget { steps }) => assert_eq!(steps, 3),
        other => panic!("{other:?}"),
    }
    // A budget it stays within changes nothing.
    let mut sim = Simulation::from_scheduler(state.clone(), SimConfig::default());
    sim.set_budget(Budget {
        steps_max: Some(1_000_000),
        cancel: None,
    });
    let within = sim.forecast(3_600_000).unwrap();
    let free = Simulation::from_scheduler(state.clone(), SimConfig::default())
        .forecast(3_600_000)
        .unwrap();
    assert_eq!(within, free);
    let cancel = Arc::new(AtomicBool::new(true));
    let mut sim = Simulation::from_scheduler(state, SimConfig::default());
    sim.set_budget(Budget {
        steps_max: None,
        cancel: Some(cancel.clone()),
    });
    assert!(matches!(sim.forecast(3_600_000), Err(SimError::Cancelled)));
    assert!(cancel.load(Ordering::Relaxed));
}

/// Two one-host classes: `kvm` (2 vCPUs, for `linux`) and `mac` (4 vCPUs, one macOS slot).
const TWO_CLASSES: &str = r#"
[[class]]
name = "kvm"
count = 1
vcpus = 2
memory_mib = 8192
labels = { os = "linux" }

[[class]]
name = "mac"
count = 1
vcpus = 4
memory_mib = 16384
slots = { macos = 1 }
labels = { os = "mac" }

[[template]]
name = "macos"
guest_os = "macos"
vcpus = 2
memory_mib = 4096
slot = "macos"
"#;

fn close(what: &str, got: f64, want: f64) {
    // Breakdown percentiles have two significant digits: within 1%.
    assert!(
        (got - want).abs() <= want.abs() * 0.01 + 1e-9,
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn breakdowns_by_class_template_requester_and_change_add_up_by_hand() {
    // kvm: r1 runs 0–100 s; r2 waits for it and runs 100–150 s.
    // mac: r3 runs 10–50 s in the one slot; r4 arrives at 20 s and runs 50–55 s.
    let lines = [
        r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":2,"template":"linux","labels":{"os":"linux"},"duration_ms":100000,"requester":"alice","change":"A"}"#,
        r#"{"at_ms":0,"kind":"request","id":2,"count":1,"vcpus":2,"template":"linux","labels":{"os":"linux"},"duration_ms":50000,"requester":"bob","change":"A"}"#,
        r#"{"at_ms":10000,"kind":"request","id":3,"count":1,"vcpus":2,"template":"macos","labels":{"os":"mac"},"duration_ms":40000,"requester":"alice","change":"B"}"#,
        r#"{"at_ms":20000,"kind":"request","id":4,"count":1,"vcpus":1,"template":"macos","labels":{"os":"mac"},"duration_ms":5000,"requester":"bob","change":"B"}"#,
    ];
    let fleet = Fleet::parse(TWO_CLASSES, "two.toml").unwrap();
    // Greedy, so that r2 waiting for kvm does not hold the Mac requests back.
    let r = replay(
        &mut berth_trace(&lines),
        &fleet,
        Policy::Greedy,
        Profile::Zero,
    );
    assert_eq!((r.requests, r.rejected), (4, 0));
    close("makespan", r.makespan_s, 150.0);

    let [kvm, mac] = r.classes.as_slice() else {
        panic!("two classes: {:?}", r.classes);
    };
    assert_eq!((kvm.name.as_str(), kvm.hosts, kvm.vcpus), ("kvm", 1, 2));
    // 2 vCPUs × (100 + 50) s over 2 vCPUs × 150 s; both vCPUs held the whole time.
    close("kvm utilisation", kvm.utilisation, 1.0);
    assert_eq!(kvm.slot_utilisation, None);
    close("kvm full", kvm.full_s, 150.0);
    close("kvm vms/h", kvm.vms_per_hour, 2.0 / (150.0 / 3600.0));
    // (2 × 40 + 1 × 5) vCPU-s over 4 × 150; the slot is used 45 of 150 s and full as long.
    assert_eq!((mac.name.as_str(), mac.slots), ("mac", 1));
    close("mac utilisation", mac.utilisation, 85.0 / 600.0);
    close(
        "mac slot utilisation",
        mac.slot_utilisation.unwrap(),
        45.0 / 150.0,
    );
    close("mac full", mac.full_s, 45.0);
    close("mac full share", mac.full_share, 0.3);

    // Waits: r1 0, r2 100 s, r3 0, r4 30 s; latency is zero, so time to running is the same.
    let row = |rows: &[berth_sim::GroupReport], name: &str| {
        rows.iter()
            .find(|g| g.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    };
    let linux = row(&r.templates, "linux");
    assert_eq!(linux.requests, 2);
    close("linux p50", linux.p50_wait_s, 0.0);
    close("linux p90", linux.p90_wait_s, 100.0);
    close("linux max", linux.max_wait_s, 100.0);
    close("linux ttr p90", linux.p90_ttr_s, 100.0);
    let macos = row(&r.templates, "macos");
    close("macos p99", macos.p99_wait_s, 30.0);
    let alice = row(&r.requesters, "alice");
    assert_eq!(alice.requests, 2);
    close("alice max", alice.max_wait_s, 0.0);
    let bob = row(&r.requesters, "bob");
    close("bob p50", bob.p50_wait_s, 30.0);
    close("bob max", bob.max_wait_s, 100.0);

    // Bounded slowdown: 1, (100 + 50) / 50 = 3, 1, (30 + 5) / 10 = 3.5.
    close("slowdown mean", r.bounded_slowdown_mean, 8.5 / 4.0);
    close("slowdown p90", r.bounded_slowdown_p90, 3.5);

    // Change A: 0 → 150 s; change B: 10 → 55 s; both under 10 VMs.
    let c = &r.changes;
    assert_eq!((c.changes, c.incomplete), (2, 0));
    close("turnaround p50", c.p50_turnaround_s, 45.0);
    close("turnaround p99", c.p99_turnaround_s, 150.0);
    let sizes: Vec<(&str, u64)> = c
        .by_size
        .iter()
        .map(|s| (s.vms.as_str(), s.changes))
        .collect();
    assert_eq!(sizes, vec![("<10", 2), ("10-199", 0), (">=200", 0)]);

    let table = r.to_string();
    for needle in ["kvm", "slot util", "bob", "turnaround", "bounded"] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
}

#[test]
fn every_synthetic_change_completes_and_is_counted_once() {
    let generator = berth_traces::Generator::new(berth_traces::SynthConfig::new(5_000, 2)).unwrap();
    let records: Vec<_> = generator.collect();
    let mut changes = std::collections::BTreeSet::new();
    for record in &records {
        if let berth_traces::RecordBody::Request(q) = &record.body {
            changes.insert(q.change.clone().unwrap());
        }
    }
    let fleet = Fleet::uniform("60x64:262144").unwrap();
    let (r, _) = Simulation::new(&fleet, SimConfig::default())
        .unwrap()
        .run(
            &mut records.into_iter().map(Ok),
            RunInfo::default(),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(r.changes.incomplete, 0);
    assert_eq!(r.changes.changes, changes.len() as u64);
    let by_size: u64 = r.changes.by_size.iter().map(|s| s.changes).sum();
    assert_eq!(by_size, r.changes.changes);
    assert_eq!(r.classes.len(), 1);
    let n: u64 = r.requesters.iter().map(|g| g.requests).sum();
    assert_eq!(n, r.requests);
}

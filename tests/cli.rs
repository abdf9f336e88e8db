//! The `berth` binary as a user runs it: simulate, compare, synthesise, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod client;
mod compare;
mod replay;
mod sweep;

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("the berth binary runs")
}

/// Runs `sim run` and writes the report to `dir/name`.
fn sim_report(dir: &Path, name: &str, trace: &Path, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut all = vec![
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--report",
        path.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = berth(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn synth(dir: &Path, vms: &str) -> PathBuf {
    let trace = dir.join("synth.jsonl.gz");
    let out = berth(&[
        "trace",
        "synth",
        "--vms",
        vms,
        "--seed",
        "5",
        "--out",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    trace
}

#[test]
fn sim_run_prints_a_json_report_with_the_documented_fields() {
    let dir = temp_dir("json");
    let trace = synth(&dir, "500");
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet-ci.toml");
    let out = berth(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--fleet",
        fleet.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "requests",
        "vms",
        "mean_wait_s",
        "p50_wait_s",
        "p90_wait_s",
        "p99_wait_s",
        "max_wait_s",
        "makespan_s",
        "utilisation",
        "events",
        "wall_s",
        "bounded_slowdown_mean",
        "bounded_slowdown_p90",
        "classes",
        "templates",
        "requesters",
        "changes",
        "eta",
        "series",
    ] {
        assert!(report.get(field).is_some(), "missing {field} in {report}");
    }
    let classes: Vec<&str> = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["kvm-x86", "kvm-arm", "mac-arm", "mac-x86"]);
    assert!(
        report["changes"]["changes"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["vms"], 500);
    assert_eq!(report["rejected"], 0, "{report}");
    assert_eq!(report["synthetic"], true);

    // Provenance: the version, a commit (or "unknown" without git), and digests that anyone
    // can check: the trace's is `zcat -f TRACE | sha256sum`, the fleet's `sha256sum FLEET`.
    let p = &report["provenance"];
    assert_eq!(p["berth_version"], env!("CARGO_PKG_VERSION"), "{p}");
    let commit = p["commit"].as_str().unwrap();
    assert!(commit == "unknown" || commit.len() == 40, "{p}");
    for digest in ["trace_sha256", "fleet_sha256", "settings_sha256"] {
        let d = p[digest].as_str().unwrap();
        assert!(
            d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()),
            "{p}"
        );
    }
    let fleet_sha256 = berth_sim::provenance::sha256_hex(&std::fs::read(&fleet).unwrap());
    assert_eq!(p["fleet_sha256"], fleet_sha256.as_str());
    assert!(p["horizon_ms"].as_u64().unwrap() > 0, "{p}");
}

#[test]
fn compare_fails_on_a_regression_and_passes_otherwise() {
    let dir = temp_dir("compare");
    let trace = synth(&dir, "3000");
    let run = |policy: &str, fleet: &str, name: &str| {
        let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join(fleet);
        let args = ["--fleet", fleet.to_str().unwrap(), "--policy", policy];
        sim_report(&dir, name, &trace, &args)
    };
    let big = run("easy", "examples/fleet-ci.toml", "big.json");
    let small = run("easy", "tests/fleet-small.toml", "small.json");
    let same = berth(&[
        "sim",
        "compare",
        big.to_str().unwrap(),
        big.to_str().unwrap(),
    ]);
    assert!(same.status.success(), "{}", text(&same.stderr));
    // Another fleet is an invalid comparison unless asked for.
    let unlike = berth(&[
        "sim",
        "compare",
        big.to_str().unwrap(),
        small.to_str().unwrap(),
    ]);
    assert_eq!(unlike.status.code(), Some(2), "{}", text(&unlike.stdout));
    assert!(
        text(&unlike.stderr).contains("fleet differs"),
        "{}",
        text(&unlike.stderr)
    );
    let worse = berth(&[
        "sim",
        "compare",
        big.to_str().unwrap(),
        small.to_str().unwrap(),
        "--allow-different",
    ]);
    assert_eq!(worse.status.code(), Some(1), "{}", text(&worse.stdout));
    assert!(
        text(&worse.stdout).contains("REGRESSED"),
        "{}",
        text(&worse.stdout)
    );
    assert!(
        text(&worse.stderr).contains("regressed past 5%"),
        "{}",
        text(&worse.stderr)
    );
}

#[test]
fn bad_input_names_what_and_where_without_a_panic() {
    let dir = temp_dir("bad");
    let trace = dir.join("bad.jsonl");
    std::fs::write(
        &trace,
        "{\"berth_trace\":1,\"synthetic\":false,\"source\":\"t\"}\n{\"at_ms\":0,\"kind\":\"request\",\"id\":1}\n",
    )
    .unwrap();
    let out = berth(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--hosts",
        "2x2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = berth(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--hosts",
        "2by2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("COUNTxCPUS"),
        "{}",
        text(&out.stderr)
    );

    let out = berth(&[
        "sim",
        "run",
        "--trace",
        "/nonexistent/t.jsonl",
        "--hosts",
        "2x2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/t.jsonl"),
        "{}",
        text(&out.stderr)
    );

    let fleet = dir.join("fleet.toml");
    std::fs::write(
        &fleet,
        "[[class]]\nname = \"a\"\ncount = 1\nvcpus = 1\nmemory_mib = 1\ncolour = 1\n",
    )
    .unwrap();
    let out = berth(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--fleet",
        fleet.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("fleet.toml") && err.contains("colour"),
        "{err}"
    );
}

#[test]
fn convert_writes_berth_format_that_replays_like_the_original() {
    let swf = "; tiny\n1 0 0 100 2 -1 -1 2 200 -1 1 1 1 -1 -1 -1 -1 -1\n2 10 0 50 1 -1 -1 1 60 -1 1 2 2 -1 -1 -1 -1 -1\n";
    let dir = temp_dir("convert");
    let src = dir.join("tiny.swf");
    std::fs::write(&src, swf).unwrap();
    let dst = dir.join("tiny.jsonl");
    let out = berth(&[
        "trace",
        "convert",
        src.to_str().unwrap(),
        "--from",
        "swf",
        "--out",
        dst.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = |args: &[&str]| {
        let mut all = vec![
            "sim",
            "run",
            "--hosts",
            "2x1",
            "--latency",
            "zero",
            "--json",
        ];
        all.extend_from_slice(args);
        let out = berth(&all);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["wall_s"] = 0.into();
        if v["eta"].is_object() {
            v["eta"]["wall_s"] = 0.into();
        }
        v["trace"] = "".into();
        v["synthetic"] = false.into();
        // The digest is of the file's bytes, which differ between formats.
        v["provenance"]["trace_sha256"] = "".into();
        v
    };
    let a = run(&["--trace", src.to_str().unwrap(), "--format", "swf"]);
    let b = run(&["--trace", dst.to_str().unwrap()]);
    assert_eq!(a, b);
    assert_eq!(a["makespan_s"], 150.0);
}

#[test]
fn a_fleet_that_lacks_what_the_trace_needs_says_so() {
    let dir = temp_dir("labels");
    let trace = synth(&dir, "200");
    let out = berth(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--hosts",
        "4x16",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("rejected   first: r1:"), "{stdout}");
    assert!(stdout.contains("lack the labels"), "{stdout}");
}

#[test]
fn demo_without_a_console_runs_the_workload_and_cleans_up() {
    let out = berth(&[
        "demo",
        "--no-console",
        "--for",
        "4",
        "--rate",
        "20",
        "--time-scale",
        "600",
        "--latency-scale",
        "0.001",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("daemon on http://127.0.0.1:"), "{stdout}");
    // About 80 requests in 4 s at 20 a second; some tests wait for their builds.
    let submitted: u64 = stdout
        .split("berth demo: ")
        .nth(2)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout}"));
    assert!(submitted >= 20, "{stdout}");

    // Without a terminal the console is refused with what to do instead.
    let out = berth(&["demo"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--no-console"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn synth_sizes_its_rate_for_a_fleet_and_says_so_in_the_header() {
    let dir = temp_dir("load");
    let trace = dir.join("loaded.jsonl");
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet-ci-small.toml");
    let out = berth(&[
        "trace",
        "synth",
        "--vms",
        "3000",
        "--fleet",
        fleet.to_str().unwrap(),
        "--load",
        "0.85",
        "--out",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let header = std::fs::read_to_string(&trace).unwrap();
    let header = header.lines().next().unwrap();
    assert!(
        header.contains("sized for load 0.850 on fleet-ci-small.toml: busiest pool"),
        "{header}"
    );
    // --load needs --fleet, and a load must be positive.
    let out = berth(&["trace", "synth", "--vms", "10", "--load", "0.5"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--fleet"),
        "{}",
        text(&out.stderr)
    );
    let out = berth(&[
        "trace",
        "synth",
        "--vms",
        "10",
        "--fleet",
        fleet.to_str().unwrap(),
        "--load",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a positive load"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sim_plot_overlays_reports_with_a_legend() {
    let dir = temp_dir("plot");
    let trace = synth(&dir, "1000");
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet-small.toml");
    let mut reports = Vec::new();
    for policy in ["fcfs", "greedy"] {
        let args = ["--fleet", fleet.to_str().unwrap(), "--policy", policy];
        reports.push(sim_report(&dir, &format!("{policy}.json"), &trace, &args));
    }
    let svg = dir.join("both.svg");
    let out = berth(&[
        "sim",
        "plot",
        reports[0].to_str().unwrap(),
        reports[1].to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let drawn = std::fs::read_to_string(&svg).unwrap();
    for needle in ["fcfs", "greedy", "time to running", "utilisation of"] {
        assert!(drawn.contains(needle), "{needle} missing from the plot");
    }

    // A report without plot data says what to do.
    let mut bare: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reports[0]).unwrap()).unwrap();
    bare.as_object_mut().unwrap().remove("series");
    let bare_path = dir.join("bare.json");
    std::fs::write(&bare_path, bare.to_string()).unwrap();
    let out = berth(&[
        "sim",
        "plot",
        bare_path.to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bare: the report carries no plot data"),
        "{}",
        text(&out.stderr)
    );
}

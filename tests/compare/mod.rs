//! `berth sim compare` refuses unlike runs (exit 2), counts unserved requests as regressions
//! (exit 1), and with several reports a side judges only significant differences.

use std::path::{Path, PathBuf};

use super::{berth, sim_report as report, temp_dir, text};

fn synth(dir: &Path, vms: &str, seed: &str) -> PathBuf {
    let trace = dir.join(format!("synth-{vms}-{seed}.jsonl.gz"));
    let out = berth(&[
        "trace",
        "synth",
        "--vms",
        vms,
        "--seed",
        seed,
        "--out",
        trace.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    trace
}

fn fleet() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/fleet-ci.toml")
        .display()
        .to_string()
}

#[test]
fn a_run_that_rejected_everything_is_a_regression_not_an_improvement() {
    let dir = temp_dir("compare-rejected");
    let trace = synth(&dir, "400", "3");
    let fleet = fleet();
    let base = report(&dir, "base.json", &trace, &["--fleet", &fleet]);
    // Ten one-vCPU hosts without the labels the workload needs: every request is rejected,
    // so there are no waits at all, which once read as waits "improved by 100%".
    let rejecting = report(&dir, "rejecting.json", &trace, &["--hosts", "10x1"]);
    let (b, r) = (base.to_str().unwrap(), rejecting.to_str().unwrap());

    let out = berth(&["sim", "compare", b, r]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("fleet differs") && err.contains("10 hosts"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no table for a refused comparison");

    let out = berth(&["sim", "compare", b, r, "--allow-different"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let table = text(&out.stdout);
    let row = |metric: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{metric} ")))
            .unwrap_or_else(|| panic!("no {metric} row in {table}"))
            .to_owned()
    };
    assert!(row("rejected").ends_with("REGRESSED"), "{table}");
    assert!(row("mean_ttr_s").contains("not comparable"), "{table}");
    assert!(!table.contains("better"), "{table}");
    assert!(
        text(&out.stderr).contains("rejected"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn another_trace_is_refused_naming_it() {
    let dir = temp_dir("compare-trace");
    let fleet = fleet();
    let a = report(
        &dir,
        "a.json",
        &synth(&dir, "300", "1"),
        &["--fleet", &fleet],
    );
    let b = report(
        &dir,
        "b.json",
        &synth(&dir, "300", "2"),
        &["--fleet", &fleet],
    );
    let out = berth(&["sim", "compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("trace differs"), "{err}");
    assert!(
        err.contains("synth-300-1") && err.contains("synth-300-2"),
        "{err}"
    );
    assert!(err.contains("horizon differs"), "{err}");

    // Unreadable input is an invalid comparison too.
    let out = berth(&["sim", "compare", a.to_str().unwrap(), "/nonexistent.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent.json"));
}

#[test]
fn several_seeds_a_side_are_tested_for_significance() {
    let dir = temp_dir("compare-seeds");
    let trace = synth(&dir, "600", "4");
    let fleet = fleet();
    for side in ["a", "b"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    for seed in ["1", "2", "3"] {
        report(
            &dir.join("a"),
            &format!("{seed}.json"),
            &trace,
            &["--fleet", &fleet, "--seed", seed],
        );
        report(
            &dir.join("b"),
            &format!("{seed}.json"),
            &trace,
            &["--fleet", &fleet, "--seed", seed, "--policy", "fcfs"],
        );
    }
    let (a, b) = (dir.join("a"), dir.join("b"));
    let out = berth(&["sim", "compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let table = text(&out.stdout);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{table}");
    assert!(table.contains("3 reports (seed 1, 2, 3)"), "{table}");
    assert!(table.contains("Welch's t-test"), "{table}");
    // A side compared with itself: nothing significant, nothing regressed.
    let out = berth(&["sim", "compare", a.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // A side that mixes policies is not one configuration.
    std::fs::copy(b.join("1.json"), a.join("4.json")).unwrap();
    let out = berth(&["sim", "compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("base mixes settings"),
        "{}",
        text(&out.stderr)
    );
}

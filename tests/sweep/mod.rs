//! `berth sim sweep` end to end: a small sweep whose shards merge to the very tables of the
//! whole run, whatever the number of threads, and merges that refuse duplicates and gaps.

use std::path::{Path, PathBuf};

use super::{berth, temp_dir, text};

const TABLES: [&str; 3] = ["sweep.md", "sweep.csv", "sweep.json"];

/// Six runs of a few hundred VMs each on a small fleet: two policies × three seeds.
fn spec(dir: &Path) -> PathBuf {
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet-small.toml");
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "seeds = [1, 2, 3]\npolicies = [\"fcfs\", \"easy\"]\n\n[[trace]]\nname = \"ci\"\nsynth = {{ vms = 400 }}\n\n[[fleet]]\nname = \"small\"\npath = \"{}\"\n",
            fleet.display()
        ),
    )
    .unwrap();
    spec
}

fn sweep(spec: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "sim",
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = berth(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    text(&run.stdout)
}

fn merge(dir: &Path) -> std::process::Output {
    berth(&["sim", "sweep", "merge", dir.to_str().unwrap()])
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A shard file's runs without their wall times, the one figure a rerun changes.
fn runs_without_wall_time(path: PathBuf) -> Vec<serde_json::Value> {
    read(path)
        .lines()
        .skip(1)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["report"]["wall_s"] = 0.into();
            if v["report"]["eta"].is_object() {
                v["report"]["eta"]["wall_s"] = 0.into();
            }
            v
        })
        .collect()
}

#[test]
fn shards_merge_to_the_tables_of_the_whole_sweep_on_any_number_of_threads() {
    let dir = temp_dir("sweep");
    let spec = spec(&dir);
    let (one, two, sharded) = (dir.join("jobs1"), dir.join("jobs2"), dir.join("sharded"));
    let table = sweep(&spec, &one, &["--jobs", "1"]);
    sweep(&spec, &two, &["--jobs", "2"]);
    for i in 0..3 {
        sweep(
            &spec,
            &sharded,
            &["--shard", &format!("{i}/3"), "--jobs", "1"],
        );
    }
    assert!(
        !sharded.join("sweep.md").exists(),
        "a shard alone writes no tables"
    );
    let merged = merge(&sharded);
    assert!(merged.status.success(), "{}", text(&merged.stderr));
    assert_eq!(text(&merged.stdout), table);
    for name in TABLES {
        assert_eq!(
            read(one.join(name)),
            read(two.join(name)),
            "{name}: --jobs 2"
        );
        assert_eq!(
            read(one.join(name)),
            read(sharded.join(name)),
            "{name}: sharded"
        );
    }
    assert_eq!(
        runs_without_wall_time(one.join("shard-0-of-1.jsonl")),
        runs_without_wall_time(two.join("shard-0-of-1.jsonl"))
    );

    // The table: one row per policy over three seeds, each figure with its interval.
    assert!(
        table.contains("| ci | small | fcfs | default | 1, 2, 3 |"),
        "{table}"
    );
    assert!(
        table.contains("| ci | small | easy | default | 1, 2, 3 |"),
        "{table}"
    );
    assert!(table.contains(" ± "), "{table}");
    let json: serde_json::Value = serde_json::from_str(&read(one.join("sweep.json"))).unwrap();
    assert_eq!(json["runs"], 6);
    let wait = &json["groups"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "mean_wait_s")
        .unwrap()
        .clone();
    assert_eq!(wait["n"], 3);
    assert!(wait["ci95_low"].as_f64() <= wait["mean"].as_f64(), "{wait}");
    assert_eq!(wait["values"].as_array().unwrap().len(), 3);
    // Each seed replays its own synthetic trace, and says which.
    let traces = json["groups"][0]["trace_sha256"].as_array().unwrap();
    assert_eq!(traces.len(), 3);
    assert_ne!(traces[0], traces[1]);
    // Each configuration's reports are one directory: a side for `sim compare`.
    let side = |policy: &str| one.join("runs/ci/small").join(policy).join("default");
    assert!(side("easy").join("seed-3.json").is_file());
    let compared = berth(&[
        "sim",
        "compare",
        side("fcfs").to_str().unwrap(),
        side("easy").to_str().unwrap(),
    ]);
    let compared_table = text(&compared.stdout);
    assert!(
        matches!(compared.status.code(), Some(0 | 1)),
        "{compared_table}{}",
        text(&compared.stderr)
    );
    assert!(
        compared_table.contains("3 reports (seed 1, 2, 3)"),
        "{compared_table}"
    );
    assert!(
        compared_table.contains("Welch's t-test"),
        "{compared_table}"
    );
    // A sweep's run is the `sim run` of the same trace: same report, same digests.
    let trace = dir.join("ci-2.jsonl.gz");
    let synth = berth(&[
        "trace",
        "synth",
        "--vms",
        "400",
        "--seed",
        "2",
        "--out",
        trace.to_str().unwrap(),
    ]);
    assert!(synth.status.success(), "{}", text(&synth.stderr));
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet-small.toml");
    let single = berth(&[
        "sim",
        "run",
        "--trace",
        trace.to_str().unwrap(),
        "--fleet",
        fleet.to_str().unwrap(),
        "--policy",
        "easy",
        "--seed",
        "2",
        "--json",
    ]);
    assert!(single.status.success(), "{}", text(&single.stderr));
    let mut single: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    let mut swept: serde_json::Value =
        serde_json::from_str(&read(side("easy").join("seed-2.json"))).unwrap();
    for r in [&mut single, &mut swept] {
        r["wall_s"] = 0.into();
        if r["eta"].is_object() {
            r["eta"]["wall_s"] = 0.into();
        }
        r["trace"] = "".into();
    }
    assert_eq!(single, swept);

    let csv = read(one.join("sweep.csv"));
    assert!(
        csv.starts_with("trace,fleet,policy,settings,metric,n,mean,stddev,ci95_low,ci95_high\n")
    );
    assert!(
        csv.contains("\nci,small,easy,default,mean_wait_s,3,"),
        "{csv}"
    );
}

#[test]
fn merge_refuses_duplicates_and_gaps_naming_them() {
    let dir = temp_dir("sweep-merge");
    let spec = spec(&dir);
    let sharded = dir.join("sharded");
    for i in 0..3 {
        sweep(
            &spec,
            &sharded,
            &["--shard", &format!("{i}/3"), "--jobs", "1"],
        );
    }
    assert!(merge(&sharded).status.success());

    // A whole run's shard file beside the shards: every run twice.
    let whole = dir.join("whole");
    sweep(&spec, &whole, &["--jobs", "1"]);
    std::fs::create_dir_all(sharded.join("again")).unwrap();
    std::fs::copy(
        whole.join("shard-0-of-1.jsonl"),
        sharded.join("again/shard-0-of-1.jsonl"),
    )
    .unwrap();
    let out = merge(&sharded);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("6 runs appear more than once"), "{err}");
    assert!(
        err.contains("run 0 (ci/small/fcfs/default/seed 1) in ")
            && err.contains("sharded/shard-0-of-3.jsonl")
            && err.contains("sharded/again/shard-0-of-1.jsonl"),
        "{err}"
    );
    std::fs::remove_dir_all(sharded.join("again")).unwrap();

    // A shard missing: its runs are named, and the shard.
    std::fs::remove_file(sharded.join("shard-1-of-3.jsonl")).unwrap();
    let out = merge(&sharded);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("2 of 6 runs are missing: 1, 4"), "{err}");
    assert!(err.contains("no file holds shard 1/3"), "{err}");

    // Shards of another spec are not merged with these.
    let other = dir.join("other.toml");
    std::fs::write(&other, read(spec.clone()).replace("vms = 400", "vms = 300")).unwrap();
    sweep(&other, &sharded, &["--shard", "1/3", "--jobs", "1"]);
    let out = merge(&sharded);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("different specs"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_spec_is_named_with_its_line() {
    let dir = temp_dir("sweep-bad");
    let spec = dir.join("bad.toml");
    std::fs::write(
        &spec,
        "seeds = [1]\npolicies = [\"easy\", \"fifo\"]\n[[trace]]\nname = \"t\"\nsynth = { vms = 10 }\n[[fleet]]\nname = \"f\"\nhosts = \"2x2\"\n",
    )
    .unwrap();
    let out = berth(&[
        "sim",
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        dir.join("out").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml:2: `policies`: unknown policy `fifo`"),
        "{err}"
    );
    std::fs::write(&spec, read(spec.clone()).replace(", \"fifo\"", "")).unwrap();
    let out = berth(&[
        "sim",
        "sweep",
        spec.to_str().unwrap(),
        "--out",
        "x",
        "--shard",
        "3/3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("I must be below N"));
}

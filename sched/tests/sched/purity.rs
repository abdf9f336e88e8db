//! sched stays pure, checked mechanically: its dependency graph (from `cargo metadata`) holds no
//! runtime, database, hypervisor or SSH crate, and its sources read no clock, no OS randomness,
//! spawn no threads and iterate no randomly seeded hash map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const PACKAGE: &str = "berth-sched";

/// Crates that must never reach sched, even through another crate.
const FORBIDDEN: [&str; 9] = [
    "tokio", "rusqlite", "virt", "openssh", "ssh2", "thrussh", "russh", "axum", "hyper",
];

/// Normal dependencies sched may have, directly or not. None today: adding one is a design
/// decision, to be made here on purpose.
const ALLOWED: [&str; 0] = [];

/// Every crate reachable from `root` through normal (not dev, not build) dependencies, with
/// the path that reaches it.
fn normal_deps(metadata: &Value, root: &str) -> BTreeMap<String, Vec<String>> {
    let packages = metadata["packages"].as_array().expect("packages");
    let name_of: BTreeMap<&str, &str> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let root_id = packages
        .iter()
        .find(|p| p["name"] == root)
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("{root} is not in the workspace metadata"));
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();

    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut stack: Vec<(&str, Vec<String>)> = vec![(root_id, vec![root.to_owned()])];
    while let Some((id, path)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if !normal {
                continue;
            }
            let dep_id = dep["pkg"].as_str().unwrap();
            let name = name_of.get(dep_id).copied().unwrap_or(dep_id).to_owned();
            let mut to_dep = path.clone();
            to_dep.push(name.clone());
            found.entry(name).or_insert_with(|| to_dep.clone());
            stack.push((dep_id, to_dep));
        }
    }
    found
}

/// What is wrong with sched's dependencies, one line per crate; empty when all is well.
fn dependency_violations(metadata: &Value) -> Vec<String> {
    normal_deps(metadata, PACKAGE)
        .into_iter()
        .filter(|(name, _)| !ALLOWED.contains(&name.as_str()))
        .map(|(name, path)| {
            let what = if FORBIDDEN.contains(&name.as_str()) {
                "a forbidden crate"
            } else {
                "a crate not on the allowlist"
            };
            format!("{what}: {}", path.join(" -> "))
        })
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sched sits in the workspace")
        .to_path_buf()
}

#[test]
fn sched_has_no_runtime_database_hypervisor_or_ssh_dependency() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_root().join("Cargo.toml");
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let violations = dependency_violations(&metadata);
    assert!(
        violations.is_empty(),
        "{PACKAGE} must stay pure: it has no normal dependencies by design and the allowlist \
         is empty; a new one needs a reason and an entry in ALLOWED ({FORBIDDEN:?} never).\n{}",
        violations.join("\n")
    );
}

/// The dependency check itself: a made-up graph where sched reaches tokio through another crate.
#[test]
fn the_dependency_check_finds_a_forbidden_crate_two_hops_away() {
    let metadata = serde_json::json!({
        "packages": [
            {"id": "s", "name": "berth-sched"},
            {"id": "u", "name": "useful"},
            {"id": "t", "name": "tokio"},
            {"id": "p", "name": "proptest"},
            {"id": "b", "name": "cc"},
        ],
        "resolve": {"nodes": [
            {"id": "s", "deps": [
                {"pkg": "u", "dep_kinds": [{"kind": null, "target": null}]},
                {"pkg": "p", "dep_kinds": [{"kind": "dev", "target": null}]},
                {"pkg": "b", "dep_kinds": [{"kind": "build", "target": null}]},
            ]},
            {"id": "u", "deps": [{"pkg": "t", "dep_kinds": [{"kind": null, "target": null}]}]},
            {"id": "t", "deps": []},
            {"id": "p", "deps": [{"pkg": "t", "dep_kinds": [{"kind": null, "target": null}]}]},
            {"id": "b", "deps": []},
        ]},
    });
    assert_eq!(
        dependency_violations(&metadata),
        vec![
            "a forbidden crate: berth-sched -> useful -> tokio",
            "a crate not on the allowlist: berth-sched -> useful",
        ]
    );
}

/// Patterns that must not appear in sched's code, with why.
const BANNED: [(&str, &str); 14] = [
    ("Instant::now", "reads the clock"),
    ("SystemTime::now", "reads the clock"),
    ("thread_rng", "OS randomness"),
    ("rand::rng", "OS randomness"),
    ("OsRng", "OS randomness"),
    ("RandomState", "a randomly seeded hasher"),
    (
        "HashMap",
        "a HashMap with the default, randomly seeded hasher (use IdMap or BTreeMap)",
    ),
    (
        "HashSet",
        "a HashSet with the default, randomly seeded hasher (use BTreeSet)",
    ),
    ("std::thread", "threads"),
    ("tokio", "an async runtime"),
    ("rusqlite", "a database"),
    ("std::fs", "files"),
    ("std::net", "sockets"),
    ("std::process", "processes"),
];

/// Files allowed one banned pattern each: the fixed-hasher map is built on `HashMap`.
const EXCEPTIONS: [(&str, &str); 1] = [("idmap.rs", "HashMap")];

/// Every banned pattern in the code (comments aside) of one file, as `file:line: ...`.
fn scan(file: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (pattern, why) in BANNED {
            let excepted = EXCEPTIONS
                .iter()
                .any(|&(f, p)| file.ends_with(f) && p == pattern);
            if code.contains(pattern) && !excepted {
                found.push(format!(
                    "{file}:{}: `{pattern}`: {why}\n    {}",
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sched_sources_read_no_clock_no_randomness_and_spawn_nothing() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let mut found = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("reading a source file");
        let shown = path
            .strip_prefix(&src)
            .unwrap_or(path)
            .display()
            .to_string();
        found.extend(scan(&format!("src/{shown}"), &text));
    }
    assert!(
        found.is_empty(),
        "sched must stay pure (time and randomness are arguments):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_source_scan_names_file_and_line_and_skips_comments() {
    let text = "use std::collections::HashMap;\n// Instant::now is banned\nlet t = std::time::Instant::now(); // why\n";
    assert_eq!(
        scan("src/x.rs", text),
        vec![
            "src/x.rs:1: `HashMap`: a HashMap with the default, randomly seeded hasher (use IdMap or BTreeMap)\n    use std::collections::HashMap;",
            "src/x.rs:3: `Instant::now`: reads the clock\n    let t = std::time::Instant::now(); // why",
        ]
    );
    assert!(scan("src/idmap.rs", "use std::collections::HashMap;").is_empty());
}

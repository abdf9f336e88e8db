//! ARCHITECTURE.md kept true, checked mechanically: its table of crates (each crate's
//! directory, the berth crates it depends on and those its tests add) is exactly the
//! workspace's as `cargo metadata` reports it, every crate has a section in its code map, and
//! the lints it names are exactly `[workspace.lints]`, which every crate inherits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// What ARCHITECTURE.md's table says of one crate, or what the manifests say.
#[derive(Debug, PartialEq, Eq)]
struct Crate {
    dir: String,
    deps: BTreeSet<String>,
    dev_deps: BTreeSet<String>,
}

const TABLE_HEADING: &str = "## Crates and what they depend on";

fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn architecture() -> String {
    std::fs::read_to_string(workspace_dir().join("ARCHITECTURE.md")).unwrap()
}

/// `` `a`, `b` `` or `—` (none).
fn names(cell: &str) -> BTreeSet<String> {
    cell.split(',')
        .map(str::trim)
        .filter(|c| *c != "—")
        .map(|c| {
            c.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("`{c}` is not a crate name in backquotes"))
                .to_owned()
        })
        .collect()
}

/// The table under [`TABLE_HEADING`]: `| crate | directory | depends on | tests add |`.
fn documented(text: &str) -> BTreeMap<String, Crate> {
    let (_, after) = text
        .split_once(&format!("\n{TABLE_HEADING}\n"))
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no `{TABLE_HEADING}` section"));
    let section = after.split("\n## ").next().unwrap();
    let mut crates = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [name, dir, deps, dev_deps] = cells[..] else {
            panic!("a row of the crates table has not four cells: {line}");
        };
        let name = names(name).into_iter().next().unwrap();
        let dir = names(dir).into_iter().next().unwrap();
        let row = Crate {
            dir,
            deps: names(deps),
            dev_deps: names(dev_deps),
        };
        assert!(
            crates.insert(name.clone(), row).is_none(),
            "{name} has two rows"
        );
    }
    crates
}

fn metadata() -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(workspace_dir().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every workspace crate with its directory (`./` for the root) and its dependencies on the
/// others: normal ones, and those that only its tests and benchmarks add.
fn actual(metadata: &Value) -> BTreeMap<String, Crate> {
    let root = Path::new(metadata["workspace_root"].as_str().unwrap());
    let packages = metadata["packages"].as_array().unwrap();
    let members: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    packages
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().strip_prefix(root).unwrap();
            let dir = format!("{}/", dir.display()).replace("//", "/");
            let dir = if dir == "/" { "./".to_owned() } else { dir };
            let (mut deps, mut dev_deps) = (BTreeSet::new(), BTreeSet::new());
            for d in p["dependencies"].as_array().unwrap() {
                let name = d["name"].as_str().unwrap();
                if !members.contains(name) {
                    continue;
                }
                match d["kind"].as_str() {
                    None => deps.insert(name.to_owned()),
                    Some("dev") => dev_deps.insert(name.to_owned()),
                    Some(kind) => panic!("{name} is a {kind}-dependency of {}", p["name"]),
                };
            }
            // A crate both depends on and dev-depends on another: the table lists it once.
            dev_deps.retain(|d| !deps.contains(d));
            let name = p["name"].as_str().unwrap().to_owned();
            (
                name,
                Crate {
                    dir,
                    deps,
                    dev_deps,
                },
            )
        })
        .collect()
}

#[test]
fn the_crates_table_is_the_workspace() {
    let documented = documented(&architecture());
    let actual = actual(&metadata());
    let names = |m: &BTreeMap<String, Crate>| m.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        names(&documented),
        names(&actual),
        "the crates ARCHITECTURE.md lists (left) and the workspace's (right)"
    );
    for (name, a) in &actual {
        assert_eq!(
            &documented[name], a,
            "{name}: ARCHITECTURE.md (left) and its manifest (right)"
        );
    }
}

#[test]
fn every_crate_has_a_section_in_the_code_map() {
    let text = architecture();
    let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("### ")).collect();
    for name in actual(&metadata()).keys() {
        assert!(
            headings.iter().any(|h| h.contains(&format!("`{name}`"))),
            "ARCHITECTURE.md's code map has no `### ...` heading naming `{name}`"
        );
    }
}

#[test]
fn testkit_is_a_dev_dependency_only() {
    for (name, c) in actual(&metadata()) {
        assert!(
            !c.deps.contains("berth-testkit"),
            "{name} depends on berth-testkit outside its tests"
        );
    }
}

/// `lint = "level"` pairs of `[workspace.lints.rust]` (bare) and `[workspace.lints.TOOL]`
/// (`TOOL::lint`).
fn workspace_lints() -> BTreeSet<String> {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(workspace_dir().join("Cargo.toml")).unwrap())
            .unwrap();
    let mut lints = BTreeSet::new();
    for (tool, table) in manifest["workspace"]["lints"].as_table().unwrap() {
        for (lint, level) in table.as_table().unwrap() {
            let level = level
                .as_str()
                .or_else(|| level.get("level").and_then(|l| l.as_str()))
                .unwrap();
            let name = if tool == "rust" {
                lint.clone()
            } else {
                format!("{tool}::{lint}")
            };
            lints.insert(format!("{name} = \"{level}\""));
        }
    }
    lints
}

/// Every `` `LINT = "LEVEL"` `` ARCHITECTURE.md names.
fn documented_lints(text: &str) -> BTreeSet<String> {
    let levels = ["forbid", "deny", "warn", "allow"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|code| {
            code.split_once(" = ").is_some_and(|(lint, level)| {
                !lint.contains(' ') && levels.iter().any(|l| level == format!("\"{l}\""))
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_lints_named_are_the_workspace_lints_and_every_crate_inherits_them() {
    assert_eq!(
        documented_lints(&architecture()),
        workspace_lints(),
        "the lints ARCHITECTURE.md names (left) and [workspace.lints] (right)"
    );
    let metadata = metadata();
    for p in metadata["packages"].as_array().unwrap() {
        let path = p["manifest_path"].as_str().unwrap();
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            manifest
                .get("lints")
                .and_then(|l| l.get("workspace"))
                .and_then(|w| w.as_bool()),
            Some(true),
            "{path} does not inherit the workspace's lints (`[lints] workspace = true`)"
        );
    }
}

#[test]
fn the_readers_take_the_table_from_its_section_and_lints_from_backquotes() {
    let text = format!(
        "# A\n\n{TABLE_HEADING}\n\n| crate | directory | depends on | tests add |\n\
         |---|---|---|---|\n| `a` | `a/` | — | `t` |\n| `b` | `b/` | `a`, `c` | — |\n\n## Next\n\
         | `z` | `z/` | — | — |\n"
    );
    let crates = documented(&text);
    assert_eq!(crates.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        crates["b"],
        Crate {
            dir: "b/".into(),
            deps: ["a".to_owned(), "c".to_owned()].into(),
            dev_deps: BTreeSet::new(),
        }
    );
    let lints = documented_lints("`x = \"deny\"` and `clippy::y = \"forbid\"`, not `a b = \"c\"`");
    assert_eq!(
        lints,
        [
            "clippy::y = \"forbid\"".to_owned(),
            "x = \"deny\"".to_owned()
        ]
        .into()
    );
}

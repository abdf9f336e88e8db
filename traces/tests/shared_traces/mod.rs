//! The published traces in the shared folder beside the repository, for the tests of any crate
//! (the simulator's include this file with `#[path]`).
//!
//! The folder is `../shared/traces` from the repository, or `BERTH_SHARED_TRACES` when set (a
//! checkout in a worktree sits elsewhere). A missing trace skips the test, saying why, unless
//! `BERTH_LIVE_TESTS=require` is set: then it fails it, so that a broken setup cannot pass as
//! a skip (the same rule as every other live test of berth).

use std::path::{Path, PathBuf};

/// The shared trace `name`, or `None` after saying why it is not there.
pub fn shared_trace(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BERTH_SHARED_TRACES").map_or_else(
        // Every crate of the workspace sits one level below the repository's root.
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
        PathBuf::from,
    );
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} not found (the shared traces sit beside the repository, or set BERTH_SHARED_TRACES)",
        path.display()
    );
    if std::env::var("BERTH_LIVE_TESTS").as_deref() == Ok("require") {
        panic!("BERTH_LIVE_TESTS=require, but {why}");
    }
    println!("skipping: {why}");
    eprintln!("skipping: {why}");
    None
}

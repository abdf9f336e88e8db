#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sched test suite, one binary: placement snapshots from text fixtures, every host, VM and
//! breakpoint transition, property tests over random input sequences, and purity checks.

mod breakpoints;
mod equivalence;
mod fair;
mod fixture;
mod hosts;
mod images;
mod lifecycle;
mod positions;
mod properties;
mod purity;
mod quota;
mod restore;
mod snapshots;
mod support;
mod warm;

//! The discrete-event simulator that drives the real `sched` core on simulated hosts.
//!
//! A [`Simulation`] reads a trace (berth's format, SWF or Azure, through `berth-traces`),
//! submits its requests to an unchanged `berth_sched::Scheduler`, carries the scheduler's
//! actions out on simulated hosts with modelled latencies, and reports waits, time to running,
//! utilisation and queue length, and breaks them down by host class, template, requester and
//! change. Memory grows with the VMs alive at once, not with the trace.

pub mod breakdown;
pub mod compare;
mod engine;
pub mod eta;
pub mod fleet;
mod hist;
pub mod load;
pub mod plot;
pub mod provenance;
pub mod report;
pub mod runtimes;
pub mod series;
pub mod stats;
pub mod sweep;

pub use berth_latency::Profile;
pub use breakdown::{ChangeReport, ChangeSizeReport, ClassReport, GroupReport};
pub use engine::{
    Budget, ETA_SAMPLES_DEFAULT, Forecast, SimConfig, Simulation, UNSPECIFIED_MEMORY_MIB,
    WaitForecast,
};
pub use eta::{Eta, EtaConfig, EtaReport, Starts, estimate_starts};
pub use fleet::Fleet;
pub use load::{LoadSizing, size_for_load};
pub use provenance::Provenance;
pub use report::{Report, RunInfo};

/// What can go wrong in a simulation: the trace, the fleet, or an input the scheduler refused.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Trace(#[from] berth_traces::TraceError),
    #[error("{source_name}: {message}")]
    Fleet {
        source_name: String,
        message: String,
    },
    #[error("{0}")]
    Scheduler(String),
    #[error("stopped after {steps} steps, its budget")]
    OverBudget { steps: u64 },
    #[error("cancelled")]
    Cancelled,
}

//! The plot data a report carries: wait and time-to-running CDFs and a downsampled timeline
//! (`plot.rs` makes it during a run and draws it).

use serde::{Deserialize, Serialize};

/// What a report carries for plots. Times in seconds and hours; utilisation as in the report
/// (running vCPUs over vCPUs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// `[wait s, share of requests placed within it]`, log-spaced from 1 s to the longest.
    pub wait_cdf: Vec<[f64; 2]>,
    /// `[time to running s, share of VMs running within it]`, likewise.
    pub ttr_cdf: Vec<[f64; 2]>,
    /// Width of one timeline bucket, in hours; bucket `i` starts at `i × bucket_h` after the
    /// first event.
    pub bucket_h: f64,
    /// Waiting requests per bucket: mean, and the lowest and highest step mean within it.
    pub queue_mean: Vec<f64>,
    pub queue_min: Vec<f64>,
    pub queue_max: Vec<f64>,
    /// Fleet utilisation per bucket.
    pub utilisation: Vec<f64>,
    /// Utilisation per bucket of each host class, in the order of the report's `classes`.
    pub class_utilisation: Vec<Vec<f64>>,
}

impl Series {
    /// Checks what a plot relies on, for reports read from files: every number finite and
    /// not negative. Names the first field that is not.
    pub fn check(&self) -> Result<(), String> {
        let bad = |field: &str| {
            Err(format!(
                "`series.{field}` holds a negative or non-finite number"
            ))
        };
        let fine = |x: &f64| x.is_finite() && *x >= 0.0;
        if !fine(&self.bucket_h) {
            return bad("bucket_h");
        }
        for (field, cdf) in [("wait_cdf", &self.wait_cdf), ("ttr_cdf", &self.ttr_cdf)] {
            if !cdf.iter().flatten().all(fine) {
                return bad(field);
            }
        }
        for (field, values) in [
            ("queue_mean", &self.queue_mean),
            ("queue_min", &self.queue_min),
            ("queue_max", &self.queue_max),
            ("utilisation", &self.utilisation),
        ] {
            if !values.iter().all(fine) {
                return bad(field);
            }
        }
        if !self.class_utilisation.iter().flatten().all(fine) {
            return bad("class_utilisation");
        }
        Ok(())
    }
}

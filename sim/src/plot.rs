//! Time series kept during a run (bounded: resolution halves when they grow) and the SVG plots
//! drawn from them: queue length and utilisation over time, and the wait distribution.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

/// Points kept at most before the series is thinned to half.
const POINTS_MAX: usize = 4096;

/// Queue length and running vCPUs over time, as averages over fixed steps. The step doubles
/// (and neighbouring points merge) whenever the series reaches `POINTS_MAX`, so memory stays
/// bounded whatever the trace length.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// `(step start ms, mean waiting requests, mean running vCPUs)`.
    points: Vec<(u64, f64, f64)>,
    step_ms: u64,
    /// The step being filled: its start, and the time integrals so far.
    open_ms: Option<u64>,
    queue_area: f64,
    running_area: f64,
    last_ms: u64,
    queue: u64,
    running_vcpus: i64,
    pub(crate) waits: Option<Histogram<u64>>,
    /// Every placement, when asked for (`Simulation::log_placements`): it grows with the
    /// trace, so it is off by default.
    pub placements: Option<Vec<Placement>>,
}

/// A VM placed on a host, for comparing a replay with the run it recorded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    pub at_ms: u64,
    pub vm: u64,
    pub request: u64,
    pub host: String,
}

impl Default for Timeline {
    fn default() -> Timeline {
        Timeline::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            points: Vec::new(),
            step_ms: 60_000,
            open_ms: None,
            queue_area: 0.0,
            running_area: 0.0,
            last_ms: 0,
            queue: 0,
            running_vcpus: 0,
            waits: None,
            placements: None,
        }
    }

    pub fn running(&mut self, at_ms: u64, delta_vcpus: i64) {
        self.advance(at_ms);
        self.running_vcpus += delta_vcpus;
    }

    pub fn sample(&mut self, at_ms: u64, queue_len: u64) {
        self.advance(at_ms);
        self.queue = queue_len;
    }

    /// Accounts the values held since the last change up to `at_ms`, closing steps on the way.
    fn advance(&mut self, at_ms: u64) {
        let Some(mut open) = self.open_ms else {
            self.open_ms = Some(at_ms);
            self.last_ms = at_ms;
            return;
        };
        while at_ms >= open + self.step_ms {
            let end = open + self.step_ms;
            self.accrue(end);
            let step = self.step_ms as f64;
            self.points
                .push((open, self.queue_area / step, self.running_area / step));
            self.queue_area = 0.0;
            self.running_area = 0.0;
            open = end;
            if self.points.len() >= POINTS_MAX {
                self.thin();
                // A whole idle stretch closes as one step of the new size.
                open -= (open - self.points.last().map_or(open, |p| p.0)) % self.step_ms;
            }
            // Skip idle stretches in one go: nothing changes until `at_ms`.
            if at_ms >= open + 2 * self.step_ms && self.queue == 0 && self.running_vcpus == 0 {
                open += (at_ms - open) / self.step_ms * self.step_ms;
                self.last_ms = open;
            }
        }
        self.open_ms = Some(open);
        self.accrue(at_ms);
    }

    fn accrue(&mut self, to_ms: u64) {
        let dt = to_ms.saturating_sub(self.last_ms) as f64;
        self.queue_area += self.queue as f64 * dt;
        self.running_area += self.running_vcpus.max(0) as f64 * dt;
        self.last_ms = self.last_ms.max(to_ms);
    }

    /// Doubles the step: merges neighbouring points into their mean.
    fn thin(&mut self) {
        self.step_ms *= 2;
        let merged = self
            .points
            .chunks(2)
            .map(|pair| {
                let n = pair.len() as f64;
                (
                    pair[0].0,
                    pair.iter().map(|p| p.1).sum::<f64>() / n,
                    pair.iter().map(|p| p.2).sum::<f64>() / n,
                )
            })
            .collect();
        self.points = merged;
    }

    pub fn points(&self) -> &[(u64, f64, f64)] {
        &self.points
    }
}

/// Draws the three plots into one SVG file.
pub fn write_svg(path: &Path, timeline: &Timeline, report: &Report) -> Result<(), String> {
    let root = SVGBackend::new(path, (1000, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((3, 1));
    let first = timeline.points.first().map_or(0, |p| p.0);
    let hours = |t: u64| (t.saturating_sub(first)) as f64 / 3_600_000.0;
    let end_h = timeline.points.last().map_or(1.0, |p| hours(p.0)).max(1e-3);

    let queue_max = timeline.points.iter().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&areas[0])
        .caption(
            format!(
                "waiting requests (mean per step) — {} ({})",
                report.trace, report.policy
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end_h, 0.0..queue_max * 1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("simulated hours")
        .y_desc("requests")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            timeline.points.iter().map(|p| (hours(p.0), p.1)),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?;

    let fleet = report.fleet_vcpus.max(1) as f64;
    let mut chart = ChartBuilder::on(&areas[1])
        .caption(
            "utilisation (running vCPUs / fleet vCPUs, mean per step)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end_h, 0.0..1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("simulated hours")
        .y_desc("utilisation")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            timeline.points.iter().map(|p| (hours(p.0), p.2 / fleet)),
            &RED,
        ))
        .map_err(|e| e.to_string())?;

    let cdf: Vec<(f64, f64)> = match &timeline.waits {
        Some(h) if !h.is_empty() => (0..=100)
            .map(|p| {
                (
                    h.value_at_quantile(f64::from(p) / 100.0) as f64 / 1000.0,
                    f64::from(p),
                )
            })
            .collect(),
        _ => vec![(0.0, 0.0), (0.0, 100.0)],
    };
    let wait_max = cdf.iter().map(|p| p.0).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&areas[2])
        .caption("wait distribution (submit to placed)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..wait_max * 1.02, 0.0..100.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("wait (s)")
        .y_desc("% of requests")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(cdf, &GREEN))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

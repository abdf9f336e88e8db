//! Time series kept during a run (bounded: resolution halves when they grow) and the SVG plots
//! drawn from them: queue length and utilisation over time, and the wait distribution.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

/// Points kept at most before the series is thinned to half.
const POINTS_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct Timeline {
    /// `(time_ms, waiting requests, running vCPUs)`.
    points: Vec<(u64, u64, i64)>,
    step_ms: u64,
    running_vcpus: i64,
    last_queue: u64,
    pub(crate) waits: Option<Histogram<u64>>,
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
            step_ms: 1_000,
            running_vcpus: 0,
            last_queue: 0,
            waits: None,
        }
    }

    pub fn running(&mut self, at_ms: u64, delta_vcpus: i64) {
        self.running_vcpus += delta_vcpus;
        self.sample(at_ms, self.last_queue);
    }

    pub fn sample(&mut self, at_ms: u64, queue_len: u64) {
        self.last_queue = queue_len;
        let due = self
            .points
            .last()
            .is_none_or(|&(t, _, _)| at_ms >= t.saturating_add(self.step_ms));
        if !due {
            return;
        }
        self.points.push((at_ms, queue_len, self.running_vcpus));
        if self.points.len() >= POINTS_MAX {
            self.step_ms *= 2;
            let mut kept = Vec::with_capacity(POINTS_MAX / 2 + 1);
            for p in std::mem::take(&mut self.points) {
                if kept
                    .last()
                    .is_none_or(|&(t, _, _): &(u64, u64, i64)| p.0 >= t + self.step_ms)
                {
                    kept.push(p);
                }
            }
            self.points = kept;
        }
    }

    pub fn points(&self) -> &[(u64, u64, i64)] {
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

    let queue_max = timeline
        .points
        .iter()
        .map(|p| p.1)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&areas[0])
        .caption(
            format!("waiting requests — {} ({})", report.trace, report.policy),
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
            timeline.points.iter().map(|p| (hours(p.0), p.1 as f64)),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?;

    let fleet = report.fleet_vcpus.max(1) as f64;
    let mut chart = ChartBuilder::on(&areas[1])
        .caption(
            "utilisation (running vCPUs / fleet vCPUs)",
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
            timeline
                .points
                .iter()
                .map(|p| (hours(p.0), p.2.max(0) as f64 / fleet)),
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

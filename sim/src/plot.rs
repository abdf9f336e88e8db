//! Time series kept during a run (bounded: resolution halves when they grow), the plot data a
//! report carries ([`Series`]: wait and time-to-running CDFs, a downsampled timeline), and the
//! SVG plots drawn from one run or overlaid from several.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;
pub use crate::series::Series;

/// Points kept at most before the series is thinned to half.
const POINTS_MAX: usize = 4096;

/// Timeline buckets a report carries and a plot draws: about one per pixel column of a
/// panel, so a year of trace draws as buckets of about fifteen hours, each with its range.
pub const SERIES_POINTS_MAX: usize = 600;

/// The CDFs start at this wait (waits below it are drawn there, on a log axis) and step up by
/// `CDF_STEP` each point: about 120 points from a second to ten days.
const CDF_FIRST_MS: u64 = 1_000;
const CDF_STEP: f64 = 1.12;

/// One closed step of the timeline: means over the step.
#[derive(Clone, Debug)]
struct Point {
    at_ms: u64,
    queue: f64,
    running: f64,
    /// Running vCPUs per host class (indices of the report's classes).
    classes: Vec<f64>,
}

/// Queue length and running vCPUs (in all and per host class) over time, as averages over
/// fixed steps. The step doubles (and neighbouring points merge) whenever the series reaches
/// `POINTS_MAX`, so memory stays bounded whatever the trace length.
#[derive(Clone, Debug)]
pub struct Timeline {
    points: Vec<Point>,
    step_ms: u64,
    /// The step being filled: its start, and the time integrals so far.
    open_ms: Option<u64>,
    queue_area: f64,
    running_area: f64,
    class_area: Vec<f64>,
    last_ms: u64,
    queue: u64,
    running_vcpus: i64,
    class_running: Vec<i64>,
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
            class_area: Vec::new(),
            last_ms: 0,
            queue: 0,
            running_vcpus: 0,
            class_running: Vec::new(),
            placements: None,
        }
    }

    /// `delta_vcpus` more vCPUs run from `at_ms` on, on a host of class `class` (an index of
    /// the report's classes).
    pub fn running(&mut self, at_ms: u64, class: Option<usize>, delta_vcpus: i64) {
        self.advance(at_ms);
        self.running_vcpus += delta_vcpus;
        if let Some(class) = class {
            if class >= self.class_running.len() {
                self.class_running.resize(class + 1, 0);
                self.class_area.resize(class + 1, 0.0);
            }
            self.class_running[class] += delta_vcpus;
        }
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
        // Many changes come at one instant (a gang's VMs start together): no time passed since
        // the last, so nothing accrues and no step closes.
        if at_ms <= self.last_ms && at_ms < open + self.step_ms {
            return;
        }
        while at_ms >= open + self.step_ms {
            let end = open + self.step_ms;
            self.accrue(end);
            let step = self.step_ms as f64;
            self.points.push(Point {
                at_ms: open,
                queue: self.queue_area / step,
                running: self.running_area / step,
                classes: self.class_area.iter().map(|a| a / step).collect(),
            });
            self.queue_area = 0.0;
            self.running_area = 0.0;
            self.class_area.iter_mut().for_each(|a| *a = 0.0);
            open = end;
            if self.points.len() >= POINTS_MAX {
                self.thin();
                // A whole idle stretch closes as one step of the new size.
                open -= (open - self.points.last().map_or(open, |p| p.at_ms)) % self.step_ms;
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
        for (area, &running) in self.class_area.iter_mut().zip(&self.class_running) {
            *area += running.max(0) as f64 * dt;
        }
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
                let n_classes = pair.iter().map(|p| p.classes.len()).max().unwrap_or(0);
                Point {
                    at_ms: pair[0].at_ms,
                    queue: pair.iter().map(|p| p.queue).sum::<f64>() / n,
                    running: pair.iter().map(|p| p.running).sum::<f64>() / n,
                    classes: (0..n_classes)
                        .map(|c| {
                            pair.iter()
                                .map(|p| p.classes.get(c).copied().unwrap_or(0.0))
                                .sum::<f64>()
                                / n
                        })
                        .collect(),
                }
            })
            .collect();
        self.points = merged;
    }

    /// `(step start ms, mean waiting requests, mean running vCPUs)` per step.
    pub fn points(&self) -> impl Iterator<Item = (u64, f64, f64)> + '_ {
        self.points.iter().map(|p| (p.at_ms, p.queue, p.running))
    }

    /// The plot data of a run: the CDFs of `waits` and `ttr` (milliseconds), and the
    /// timeline in at most [`SERIES_POINTS_MAX`] buckets. Steps the timeline skipped as idle
    /// count as zero.
    pub fn series(
        &self,
        fleet_vcpus: u64,
        class_vcpus: &[u64],
        waits: &Histogram<u64>,
        ttr: &Histogram<u64>,
    ) -> Series {
        let mut series = Series {
            wait_cdf: cdf(waits),
            ttr_cdf: cdf(ttr),
            ..Series::default()
        };
        let (Some(first), Some(last)) = (self.points.first(), self.points.last()) else {
            return series;
        };
        let step = self.step_ms;
        let n_steps = (last.at_ms - first.at_ms) / step + 1;
        let per_bucket = n_steps.div_ceil(SERIES_POINTS_MAX as u64).max(1);
        let n_buckets = n_steps.div_ceil(per_bucket) as usize;
        series.bucket_h = (per_bucket * step) as f64 / 3_600_000.0;
        let mut queue_sum = vec![0.0; n_buckets];
        let mut queue_min = vec![f64::INFINITY; n_buckets];
        let mut queue_max = vec![0.0f64; n_buckets];
        let mut present = vec![0u64; n_buckets];
        let mut running = vec![0.0; n_buckets];
        let mut classes = vec![vec![0.0; n_buckets]; class_vcpus.len()];
        for p in &self.points {
            let b = (((p.at_ms - first.at_ms) / step) / per_bucket) as usize;
            let b = b.min(n_buckets - 1);
            queue_sum[b] += p.queue;
            queue_min[b] = queue_min[b].min(p.queue);
            queue_max[b] = queue_max[b].max(p.queue);
            present[b] += 1;
            running[b] += p.running;
            for (c, v) in classes.iter_mut().zip(&p.classes) {
                c[b] += v;
            }
        }
        for b in 0..n_buckets {
            let steps_in = per_bucket.min(n_steps - b as u64 * per_bucket) as f64;
            series.queue_mean.push(round(queue_sum[b] / steps_in, 1e2));
            // A skipped (idle) step had an empty queue.
            let min = if (present[b] as f64) < steps_in {
                0.0
            } else {
                queue_min[b]
            };
            series.queue_min.push(round(min, 1e2));
            series.queue_max.push(round(queue_max[b], 1e2));
            series.utilisation.push(round(
                running[b] / steps_in / fleet_vcpus.max(1) as f64,
                1e4,
            ));
        }
        series.class_utilisation = classes
            .iter()
            .zip(class_vcpus)
            .map(|(c, &vcpus)| {
                (0..n_buckets)
                    .map(|b| {
                        let steps_in = per_bucket.min(n_steps - b as u64 * per_bucket) as f64;
                        round(c[b] / steps_in / vcpus.max(1) as f64, 1e4)
                    })
                    .collect()
            })
            .collect();
        series
    }
}

/// `[value s, share at or below it]`, log-spaced from `CDF_FIRST_MS`, ending at the largest
/// value with share 1.
fn cdf(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<[f64; 2]> = h
        .iter_log(CDF_FIRST_MS, CDF_STEP)
        .map(|v| {
            [
                round(v.value_iterated_to() as f64 / 1000.0, 1e3),
                round(v.quantile(), 1e6),
            ]
        })
        .collect();
    out.push([round(h.max() as f64 / 1000.0, 1e3), 1.0]);
    out
}

/// `x` to `1 / scale`: keeps the JSON short without losing what a plot can show.
fn round(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

/// One run to draw: its legend label and its report (which must carry [`Series`]).
pub struct Run<'a> {
    pub label: String,
    pub report: &'a Report,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws the runs into one SVG file, overlaid with a legend: the wait and time-to-running
/// CDFs on log axes, the queue over time (the mean of each bucket, its range shaded), and
/// the utilisation of each host class over time.
pub fn write_svg(path: &Path, runs: &[Run]) -> Result<(), String> {
    let mut drawn: Vec<(&str, &Report, &Series)> = Vec::new();
    for r in runs {
        let series = r.report.series.as_ref().ok_or_else(|| {
            format!(
                "{}: the report carries no plot data; run `berth sim run --report` again with this version",
                r.label
            )
        })?;
        series.check().map_err(|e| format!("{}: {e}", r.label))?;
        drawn.push((&r.label, r.report, series));
    }
    if drawn.is_empty() {
        return Err("no runs to draw".into());
    }
    // Host classes in the order the runs name them.
    let mut classes: Vec<&str> = Vec::new();
    for (_, report, _) in &drawn {
        for c in &report.classes {
            if !classes.contains(&c.name.as_str()) {
                classes.push(&c.name);
            }
        }
    }
    let class_rows = classes.len().div_ceil(2);
    let (width, row_px) = (1200u32, 340u32);
    let height = 40 + row_px * (2 + class_rows as u32);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(&title(&drawn), ("sans-serif", 22))
        .map_err(|e| e.to_string())?;
    let rows = root.split_evenly((2 + class_rows, 1));
    let cdfs = rows[0].split_evenly((1, 2));
    draw_cdf(
        &cdfs[0],
        &drawn,
        |s| &s.wait_cdf,
        "wait: submit to all VMs placed",
        "requests",
    )?;
    draw_cdf(
        &cdfs[1],
        &drawn,
        |s| &s.ttr_cdf,
        "time to running: submit to VM running",
        "VMs",
    )?;
    let (unit_h, unit) = time_unit(&drawn);
    draw_over_time(
        &rows[1],
        &drawn,
        Panel {
            caption: "waiting requests (mean per bucket; shaded: its lowest to highest step)",
            y_desc: "requests",
            y_decimals: 0,
            legend: true,
        },
        (unit_h, unit),
        |s| Some((&s.queue_mean, Some((&s.queue_min, &s.queue_max)))),
    )?;
    for (i, class) in classes.iter().enumerate() {
        let row = rows[2 + i / 2].split_evenly((1, 2));
        draw_over_time(
            &row[i % 2],
            &drawn,
            Panel {
                caption: &format!("utilisation of {class} (running vCPUs / vCPUs)"),
                y_desc: "utilisation",
                y_decimals: 1,
                legend: false,
            },
            (unit_h, unit),
            |s| {
                let idx = drawn_class_index(&drawn, s, class)?;
                Some((&s.class_utilisation[idx], None))
            },
        )?;
    }
    root.present().map_err(|e| e.to_string())
}

fn title(drawn: &[(&str, &Report, &Series)]) -> String {
    let (_, first, _) = drawn[0];
    let synthetic = if first.synthetic { " (synthetic)" } else { "" };
    if drawn.len() == 1 {
        format!(
            "{}{synthetic}: policy {}, {} hosts",
            first.trace, first.policy, first.hosts
        )
    } else if drawn.iter().all(|(_, r, _)| r.trace == first.trace) {
        format!("{}{synthetic}: {} runs", first.trace, drawn.len())
    } else {
        format!("{} runs", drawn.len())
    }
}

/// The index of `class` in the report that carries `series`.
fn drawn_class_index(
    drawn: &[(&str, &Report, &Series)],
    series: &Series,
    class: &str,
) -> Option<usize> {
    let (_, report, _) = drawn.iter().find(|(_, _, s)| std::ptr::eq(*s, series))?;
    let idx = report.classes.iter().position(|c| c.name == class)?;
    (idx < series.class_utilisation.len()).then_some(idx)
}

/// Hours per unit of the time axis and its name: days past three days, else hours.
fn time_unit(drawn: &[(&str, &Report, &Series)]) -> (f64, &'static str) {
    let span_h = drawn
        .iter()
        .map(|(_, _, s)| s.bucket_h * s.queue_mean.len() as f64)
        .fold(0.0, f64::max);
    if span_h > 72.0 {
        (24.0, "simulated days")
    } else {
        (1.0, "simulated hours")
    }
}

fn colour(i: usize) -> RGBColor {
    // Distinguishable on white and in grey print: blue, orange, green, red, purple, brown.
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLOURS[i % COLOURS.len()]
}

/// Tick marks a person reads as durations, from `from_s` to `to_s`: 1 s, 10 s, 1 min,
/// 10 min, 1 h, 6 h, 1 d, 1 w and 4 w.
fn duration_ticks(from_s: f64, to_s: f64) -> Vec<f64> {
    const TICKS_S: [f64; 9] = [
        1.0,
        10.0,
        60.0,
        600.0,
        3_600.0,
        21_600.0,
        86_400.0,
        604_800.0,
        2_419_200.0,
    ];
    TICKS_S
        .into_iter()
        .filter(|t| (from_s..=to_s).contains(t))
        .collect()
}

/// A duration in seconds as a log-axis label: `1s`, `30s`, `5m`, `2h`, `3d`, `1w`.
fn duration_label(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0}s")
    } else if s < 3600.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.0}h", s / 3600.0)
    } else if s < 604_800.0 {
        format!("{:.0}d", s / 86_400.0)
    } else {
        format!("{:.0}w", s / 604_800.0)
    }
}

fn draw_cdf(
    area: &Area,
    drawn: &[(&str, &Report, &Series)],
    cdf: fn(&Series) -> &Vec<[f64; 2]>,
    caption: &str,
    what: &str,
) -> Result<(), String> {
    let floor_s = CDF_FIRST_MS as f64 / 1000.0;
    let max_s = drawn
        .iter()
        .flat_map(|(_, _, s)| cdf(s).iter().map(|p| p[0]))
        .fold(floor_s * 10.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(
            (floor_s..max_s * 1.2)
                .log_scale()
                .with_key_points(duration_ticks(floor_s, max_s * 1.2)),
            0.0..1.0,
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "log scale; under {floor_s:.0} s drawn at {floor_s:.0} s"
        ))
        .y_desc(format!("share of {what}"))
        .x_label_formatter(&|s| duration_label(*s))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, _, series)) in drawn.iter().enumerate() {
        let c = colour(i);
        let points: Vec<(f64, f64)> = cdf(series)
            .iter()
            .map(|p| (p[0].max(floor_s), p[1]))
            .collect();
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// The mean line of each run and, where given, its band.
type Lines<'s> = Option<(&'s Vec<f64>, Option<(&'s Vec<f64>, &'s Vec<f64>)>)>;

/// How a panel over time reads: its caption, its y axis, and whether it carries the legend
/// (the class panels share the queue panel's colours, so they leave it out).
struct Panel<'a> {
    caption: &'a str,
    y_desc: &'a str,
    y_decimals: usize,
    legend: bool,
}

fn draw_over_time<'s>(
    area: &Area,
    drawn: &[(&str, &Report, &'s Series)],
    panel: Panel,
    (unit_h, unit): (f64, &str),
    lines: impl Fn(&'s Series) -> Lines<'s>,
) -> Result<(), String> {
    let x_of = |s: &Series, i: usize| i as f64 * s.bucket_h / unit_h;
    let mut x_max: f64 = 1e-3;
    let mut y_max: f64 = 1.0;
    for (_, _, s) in drawn {
        if let Some((mean, band)) = lines(s) {
            x_max = x_max.max(x_of(s, mean.len()));
            let top = band.map_or(mean, |(_, hi)| hi);
            y_max = y_max.max(top.iter().copied().fold(0.0, f64::max));
        }
    }
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.05)
        .map_err(|e| e.to_string())?;
    let decimals = panel.y_decimals;
    let x_decimals = if x_max > 10.0 { 0 } else { 1 };
    chart
        .configure_mesh()
        .x_desc(unit)
        .x_label_formatter(&|x| format!("{x:.x_decimals$}"))
        .y_desc(panel.y_desc)
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, _, s)) in drawn.iter().enumerate() {
        let Some((mean, band)) = lines(s) else {
            continue;
        };
        let c = colour(i);
        if let Some((lo, hi)) = band {
            let mut outline: Vec<(f64, f64)> = hi
                .iter()
                .enumerate()
                .map(|(b, &y)| (x_of(s, b), y))
                .collect();
            outline.extend(lo.iter().enumerate().rev().map(|(b, &y)| (x_of(s, b), y)));
            chart
                .draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(LineSeries::new(
                mean.iter().enumerate().map(|(b, &y)| (x_of(s, b), y)),
                c.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if !panel.legend {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::{histogram, record};

    #[test]
    fn a_long_timeline_reads_in_at_most_the_series_points() {
        let mut t = Timeline::new();
        // A year of minutes: a busy hour every day, idle otherwise.
        let day_ms = 86_400_000;
        for d in 0..365u64 {
            let start = d * day_ms + 9 * 3_600_000;
            t.sample(start, 5);
            t.running(start, Some(0), 8);
            t.sample(start + 3_600_000, 0);
            t.running(start + 3_600_000, Some(0), -8);
        }
        t.sample(365 * day_ms, 0);
        let mut waits = histogram();
        for w in [0, 500, 2_000, 60_000, 3_600_000] {
            record(&mut waits, w);
        }
        let s = t.series(16, &[16], &waits, &waits);
        assert!(
            s.queue_mean.len() <= SERIES_POINTS_MAX,
            "{}",
            s.queue_mean.len()
        );
        assert!(s.queue_mean.len() > SERIES_POINTS_MAX / 2);
        // One busy hour in 24 with five requests waiting: 5/24 on average; the highest step
        // mean is 5, the lowest 0 (buckets of about fifteen hours catch a busy hour or not).
        let spread = s.bucket_h * s.queue_mean.len() as f64 / 24.0;
        assert!((360.0..=370.0).contains(&spread), "{spread} days");
        let n = s.queue_mean.len() as f64;
        let mean = s.queue_mean.iter().sum::<f64>() / n;
        assert!((mean - 5.0 / 24.0).abs() < 0.01, "{mean}");
        let busy = s
            .queue_max
            .iter()
            .position(|&q| q > 0.0)
            .expect("a busy bucket");
        assert_eq!(s.queue_max[busy], 5.0);
        assert_eq!(s.queue_min[busy], 0.0);
        let utilisation = s.class_utilisation[0].iter().sum::<f64>() / n;
        assert!((utilisation - 0.5 / 24.0).abs() < 0.002, "{utilisation}");
        // The CDF: 2 of 5 within a second, everything by the longest.
        assert_eq!(s.wait_cdf[0][1], 0.4);
        assert_eq!(s.wait_cdf.last().map(|p| p[1]), Some(1.0));
        assert!(s.wait_cdf.len() < 100);
    }

    #[test]
    fn a_series_with_a_bad_number_is_refused_by_name() {
        let mut s = Series {
            bucket_h: 0.5,
            queue_mean: vec![1.0, 2.0],
            ..Series::default()
        };
        assert_eq!(s.check(), Ok(()));
        s.queue_mean[1] = f64::NAN;
        let e = s.check().expect_err("NaN");
        assert!(e.contains("series.queue_mean"), "{e}");
        s.queue_mean[1] = 1.0;
        s.wait_cdf = vec![[-1.0, 0.5]];
        assert!(s.check().is_err());
    }

    #[test]
    fn duration_labels_read_as_durations() {
        assert_eq!(duration_label(1.0), "1s");
        assert_eq!(duration_label(600.0), "10m");
        assert_eq!(duration_label(7_200.0), "2h");
        assert_eq!(duration_label(259_200.0), "3d");
        assert_eq!(duration_label(1_209_600.0), "2w");
        assert_eq!(
            duration_ticks(1.0, 5_000.0),
            vec![1.0, 10.0, 60.0, 600.0, 3_600.0]
        );
    }
}

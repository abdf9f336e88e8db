//! HDR histograms as the simulator uses them: three significant digits, growing as needed.

use hdrhistogram::Histogram;

pub(crate) fn histogram() -> Histogram<u64> {
    // Three significant digits, growing as needed: bounded memory whatever the trace length.
    match Histogram::new(3) {
        Ok(mut h) => {
            h.auto(true);
            h
        }
        // new(3) only fails for more than five significant digits.
        Err(e) => unreachable!("histogram with 3 significant digits: {e}"),
    }
}

/// Records a value, growing the histogram's range as needed (auto-resize is on).
pub(crate) fn record<T: hdrhistogram::Counter>(h: &mut Histogram<T>, value: u64) {
    if h.record(value).is_err() {
        h.saturating_record(value);
    }
}

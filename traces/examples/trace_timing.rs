//! Times the readers and the synthetic generator on real-sized inputs; run it with `--release`.
//!
//! `cargo run --release -p berth-traces --example trace_timing -- [SWF_FILE] [VMS]`
//! (defaults: the KTH SP2 log from the shared traces beside the repository, 1,000,000 VMs).

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_traces::{
    Format, Generator, RecordBody, SwfMode, SynthConfig, TraceError, TraceReader, TraceWriter,
};

/// Runs `f` once plus `more` times and returns the fastest wall time with the last result, so
/// that a cold page cache or a busy neighbour does not decide the figure.
fn fastest<T>(more: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let start = Instant::now();
    let mut result = f();
    let mut best = start.elapsed();
    for _ in 0..more {
        let start = Instant::now();
        result = f();
        best = best.min(start.elapsed());
    }
    (best, result)
}

fn count_vms(reader: TraceReader) -> Result<(u64, u64), TraceError> {
    let (mut n_records, mut n_vms) = (0, 0);
    for record in reader {
        if let RecordBody::Request(r) = record?.body {
            n_vms += u64::from(r.count);
        }
        n_records += 1;
    }
    Ok((n_records, n_vms))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let swf = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/KTH-SP2-1996-2.1-cln.swf")
    });
    let vms: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);

    let (took, counted) = fastest(4, || {
        TraceReader::open(
            &swf,
            Format::Swf {
                mode: SwfMode::Gang,
            },
        )
        .and_then(count_vms)
    });
    let (n_records, n_vms) = counted?;
    println!(
        "read {}: {n_records} records, {n_vms} VMs in {took:.2?}",
        swf.display()
    );

    let (took, generated) = fastest(2, || {
        Generator::new(SynthConfig::new(vms, 1))
            .map(|g| g.fold((0u64, 0u64), |(n, _), record| (n + 1, record.at_ms)))
    });
    let (n_records, last_at_ms) = generated?;
    println!(
        "synth: {vms} VMs, {n_records} records over {:.1} simulated days, generated in {took:.2?}",
        last_at_ms as f64 / 86_400_000.0
    );

    let (took, bytes) = fastest(2, || -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let generator = Generator::new(SynthConfig::new(vms, 1))?;
        let mut writer = TraceWriter::new(Vec::new(), generator.header())?;
        for record in generator {
            writer.write(&record)?;
        }
        Ok(writer.finish()?)
    });
    let bytes = bytes?;
    println!(
        "synth: generated and written as JSON lines in {took:.2?} ({} MB)",
        bytes.len() / 1_000_000
    );

    let (took, counted) = fastest(2, || {
        TraceReader::from_reader(Cursor::new(bytes.clone()), "synth.jsonl", Format::Berth)
            .and_then(count_vms)
    });
    let (n_records, n_vms) = counted?;
    println!("read synth.jsonl back: {n_records} records, {n_vms} VMs in {took:.2?}");

    let (took, gz) = fastest(0, || -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let generator = Generator::new(SynthConfig::new(vms, 1))?;
        let mut writer = TraceWriter::new_gzip(Vec::new(), generator.header())?;
        for record in generator {
            writer.write(&record)?;
        }
        Ok(writer.finish()?)
    });
    let gz = gz?;
    println!(
        "synth: generated and written gzipped in {took:.2?} ({} MB)",
        gz.len() / 1_000_000
    );
    let (took, counted) = fastest(2, || {
        TraceReader::from_reader(Cursor::new(gz.clone()), "synth.jsonl.gz", Format::Berth)
            .and_then(count_vms)
    });
    let (n_records, _) = counted?;
    println!("read synth.jsonl.gz back: {n_records} records in {took:.2?}");
    Ok(())
}

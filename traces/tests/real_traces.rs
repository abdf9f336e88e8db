//! Checks against the published traces in the shared folder beside the repository (they skip,
//! saying so, where it is missing), and file round trips.

use std::io::{BufRead, BufReader, Cursor};
use std::path::Path;

use berth_testkit::shared_trace;
use berth_traces::{
    Format, Generator, Record, RecordBody, RequestRecord, SwfMode, SynthConfig, TraceReader,
    TraceWriter,
};

const KTH: &str = "KTH-SP2-1996-2.1-cln.swf";
const AZURE_SAMPLE: &str = "azure-v1-vmtable-sample.csv.gz";

fn request(record: &Record) -> &RequestRecord {
    match &record.body {
        RecordBody::Request(r) => r,
        other => panic!("importers make requests only: {other:?}"),
    }
}

#[test]
fn kth_sp2_imports_every_job_but_the_one_without_processors() {
    let Some(path) = shared_trace(KTH) else {
        return;
    };
    let mut reader = TraceReader::open(
        &path,
        Format::Swf {
            mode: SwfMode::Gang,
        },
    )
    .expect("opens");
    assert!(!reader.header().synthetic);
    assert!(
        reader
            .header()
            .source
            .contains("Acknowledge: Lars Malinowsky"),
        "{}",
        reader.header().source
    );
    let records: Vec<Record> = (&mut reader).collect::<Result<_, _>>().expect("valid log");
    assert_eq!(records.len(), 28_475);
    assert_eq!(reader.skipped(), 1);

    // Job 15: `15 599850 192180 3477 4 -1 -1 4 53940 -1 1 12 12 -1 -1 -1 -1 -1`.
    let first = request(&records[0]);
    assert_eq!(records[0].at_ms, 599_850_000);
    assert_eq!(
        (first.id, first.count, first.vcpus, first.gang),
        (15, 4, 1, true)
    );
    assert_eq!(
        (first.duration_ms, first.expected_ms),
        (3_477_000, Some(53_940_000))
    );
    // The log's machine has 100 processors, and no job links to a preceding one.
    assert!(records.iter().all(|r| {
        let r = request(r);
        (1..=100).contains(&r.count) && r.after.is_empty()
    }));
    assert!(
        !records.iter().any(|r| request(r).id == 27_313),
        "job 27313 has no processor count"
    );
}

#[test]
fn kth_sp2_round_trips_through_the_berth_format() {
    let Some(path) = shared_trace(KTH) else {
        return;
    };
    let reader = TraceReader::open(&path, Format::Swf { mode: SwfMode::Vm }).expect("opens");
    let header = reader.header().clone();
    let records: Vec<Record> = reader.collect::<Result<_, _>>().expect("valid log");
    assert!(records.iter().all(|r| request(r).count == 1));

    let mut writer = TraceWriter::new_gzip(Vec::new(), &header).expect("in memory");
    for r in &records {
        writer.write(r).expect("in memory");
    }
    let bytes = writer.finish().expect("in memory");
    let back = TraceReader::from_reader(Cursor::new(bytes), "kth.jsonl.gz", Format::Berth)
        .expect("header");
    assert_eq!(back.header(), &header);
    let back: Vec<Record> = back.collect::<Result<_, _>>().expect("valid trace");
    assert_eq!(back, records);
}

#[test]
fn azure_sample_loads_as_shipped_in_creation_order() {
    let Some(path) = shared_trace(AZURE_SAMPLE) else {
        return;
    };
    // The sample keeps the published order, which is not by creation time (row 4 was created
    // before row 3); the importer sorts it.
    let records: Vec<Record> = TraceReader::open(&path, Format::Azure)
        .expect("opens")
        .collect::<Result<_, _>>()
        .expect("the rows import as shipped");
    assert_eq!(records.len(), 10);
    assert!(records.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    // Ids are row numbers: the rows created at 0 come first, in file order.
    let ids: Vec<u64> = records.iter().map(|r| request(r).id).collect();
    assert_eq!(ids, vec![1, 2, 4, 5, 6, 8, 10, 3, 9, 7]);
    let first = request(&records[0]);
    // First row: created 0, deleted 2591700, 1 core, 1.75 GB, subscription VDU4C8cq....
    assert_eq!(records[0].at_ms, 0);
    assert_eq!(
        (first.id, first.vcpus, first.memory_mib),
        (1, 1, Some(1792))
    );
    assert_eq!(first.duration_ms, 2_591_700_000);
    assert!(
        first
            .requester
            .as_deref()
            .is_some_and(|s| s.starts_with("VDU4C8cq"))
    );
    assert_eq!(records.iter().filter(|r| request(r).vcpus == 8).count(), 4);
    assert_eq!(records.iter().map(|r| r.at_ms).max(), Some(2_290_500_000));

    // Sorted beforehand, as older berth asked, it imports the same.
    let file = std::fs::File::open(&path).expect("readable");
    let text = BufReader::new(flate2::read::GzDecoder::new(file));
    let rows: Vec<String> = text.lines().collect::<Result<_, _>>().expect("gzip text");
    let mut sorted: Vec<(u64, &String)> = rows
        .iter()
        .map(|row| {
            let created = row.split(',').nth(3).and_then(|s| s.parse().ok());
            (created.expect("vmcreated"), row)
        })
        .collect();
    sorted.sort_by_key(|(created, _)| *created);
    let sorted: Vec<&str> = sorted.iter().map(|(_, row)| row.as_str()).collect();
    let again: Vec<Record> = TraceReader::from_reader(
        Cursor::new(sorted.join("\n").into_bytes()),
        "sorted",
        Format::Azure,
    )
    .expect("opens")
    .collect::<Result<_, _>>()
    .expect("sorted rows import");
    let at: Vec<u64> = records.iter().map(|r| r.at_ms).collect();
    let at_again: Vec<u64> = again.iter().map(|r| r.at_ms).collect();
    assert_eq!(at, at_again);
}

#[test]
fn synthetic_trace_round_trips_through_a_gzip_file() {
    let path =
        std::env::temp_dir().join(format!("berth-traces-test-{}.jsonl.gz", std::process::id()));
    let generator = Generator::new(SynthConfig::new(20_000, 42)).expect("valid config");
    let header = generator.header().clone();
    let records: Vec<Record> = generator.collect();
    let mut writer = TraceWriter::create(&path, &header).expect("temp file");
    for r in &records {
        writer.write(r).expect("temp file");
    }
    writer.finish().expect("temp file");

    let mut magic = [0u8; 2];
    std::io::Read::read_exact(
        &mut std::fs::File::open(&path).expect("written"),
        &mut magic,
    )
    .expect("two bytes");
    assert_eq!(magic, [0x1f, 0x8b], "a .gz name gives a gzip file");

    let reader = TraceReader::open(&path, Format::Berth).expect("opens");
    assert!(reader.header().synthetic);
    let back: Vec<Record> = reader.collect::<Result<_, _>>().expect("valid trace");
    std::fs::remove_file(&path).expect("temp file");
    assert_eq!(back, records);
}

#[test]
fn format_md_example_is_a_valid_trace() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("FORMAT.md"))
        .expect("FORMAT.md");
    let example = doc
        .split("### Example")
        .nth(1)
        .and_then(|rest| rest.split("```json\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("an example block");
    let reader = TraceReader::from_reader(
        Cursor::new(example.as_bytes().to_vec()),
        "FORMAT.md",
        Format::Berth,
    )
    .expect("header");
    let records: Vec<Record> = reader.collect::<Result<_, _>>().expect("valid example");
    assert_eq!(records.len(), 6);
    let test = request(&records[2]);
    assert_eq!((test.after.as_slice(), test.think_ms), (&[1][..], 5_000));
}

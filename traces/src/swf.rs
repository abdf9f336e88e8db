//! Importer for the Standard Workload Format (SWF) of the Parallel Workloads Archive: one job a line, 18 numeric fields, `;` header comments.
//!
//! Mapping (FORMAT.md has the table): job number → `id`; submit time → `at_ms`; run time →
//! `duration_ms` (unknown → 0); requested time → `expected_ms` (unknown → the run time);
//! requested processors (else allocated) → the VM count and size, per [`SwfMode`]; requested
//! memory per processor → `memory_mib`; user → `requester` as `user<N>`; preceding job and think
//! time → `after` and `think_ms`. Every job becomes a `passed` request whatever its status: an
//! SWF status only says how the job ended, and a failed or cancelled job still held its
//! processors for its run time, which is what a replay needs.

use std::io::BufRead;

use crate::ids::IdSet;
use crate::lines::{Lines, fused};
use crate::num::{parse_milli, parse_whole};
use crate::{Outcome, Record, RecordBody, RequestRecord, TraceError, TraceHeader};

/// How an SWF job of N processors becomes VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SwfMode {
    /// A gang of N one-vCPU VMs: the usual reading of a parallel job on one-CPU nodes.
    #[default]
    Gang,
    /// One VM of N vCPUs.
    Vm,
}

/// Number of whitespace-separated fields on a job line.
const N_FIELDS: usize = 18;

/// The fields' names, for error messages (index 0 is field 1).
const FIELD_NAMES: [&str; N_FIELDS] = [
    "job number",
    "submit time",
    "wait time",
    "run time",
    "allocated processors",
    "average CPU time",
    "used memory",
    "requested processors",
    "requested time",
    "requested memory",
    "status",
    "user",
    "group",
    "executable",
    "queue",
    "partition",
    "preceding job",
    "think time",
];

/// Header comment keys copied into the trace's `source`, so that replays keep the log's
/// provenance and the attribution its terms ask for.
const SOURCE_KEYS: [&str; 3] = ["Computer", "Installation", "Acknowledge"];

/// The name of every imported request's template.
const TEMPLATE: &str = "swf";

/// Reads an SWF log as requests.
///
/// Job lines must come in non-decreasing submit-time order, as the archive's files do; an
/// earlier submit time is an error naming the line. A job whose preceding job (field 17) was
/// imported earlier waits for it with `after`, but its `at_ms` stays its own submit time: the
/// archive recorded when the user really submitted, so that is the floor a replay keeps.
///
/// Memory holds the set of job numbers imported so far (to link preceding jobs and to reject
/// duplicates); the archive numbers jobs in order, so this is a few runs of consecutive ids.
pub struct SwfReader<R> {
    lines: Lines<R>,
    header: TraceHeader,
    mode: SwfMode,
    seen: IdSet,
    last_submit_ms: u64,
    skipped: u64,
    /// The constructor read past the header comments: the current line is the first job's.
    pending: bool,
    done: bool,
}

impl<R: BufRead> SwfReader<R> {
    /// Reads the header comments; `name` stands for the input in error messages.
    pub fn new(reader: R, name: impl Into<String>, mode: SwfMode) -> Result<Self, TraceError> {
        let mut lines = Lines::new(reader, name.into());
        let mut source = format!("SWF log {}", lines.name());
        let mut pending = false;
        while lines.advance()? {
            let text = lines.text();
            if lines.is_blank() {
                continue;
            }
            let Some(comment) = text.strip_prefix(b";") else {
                pending = true;
                break;
            };
            // Header values are free text; invalid UTF-8 there is not worth failing over.
            let comment = String::from_utf8_lossy(comment);
            if let Some((key, value)) = comment.split_once(':')
                && SOURCE_KEYS.contains(&key.trim())
            {
                source.push_str(&format!("; {}: {}", key.trim(), value.trim()));
            }
        }
        Ok(SwfReader {
            lines,
            header: TraceHeader::new(false, source),
            mode,
            seen: IdSet::default(),
            last_submit_ms: 0,
            skipped: 0,
            pending,
            done: false,
        })
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Jobs left out so far because neither requested nor allocated processors were known.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn read_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            if !std::mem::take(&mut self.pending) && !self.lines.advance()? {
                return Ok(None);
            }
            if self.lines.is_blank() || self.lines.text().starts_with(b";") {
                continue;
            }
            let job = parse_job(self.lines.text())
                .map_err(|(field, problem)| self.lines.malformed(field_label(field), problem))?;
            if let Some(record) = self.import(&job)? {
                return Ok(Some(record));
            }
        }
    }

    /// Turns a parsed job into a request, or None (counted) when it has no processor count.
    fn import(&mut self, job: &Job) -> Result<Option<Record>, TraceError> {
        let bad = |field: usize, problem: String| self.lines.malformed(field_label(field), problem);
        if job.submit_ms < 0 {
            return Err(bad(2, "must not be negative".into()));
        }
        let submit_ms = job.submit_ms.unsigned_abs();
        if submit_ms < self.last_submit_ms {
            return Err(bad(
                2,
                format!(
                    "{} s is earlier than the previous job's {} s; SWF jobs must be sorted by submit time",
                    seconds(submit_ms),
                    seconds(self.last_submit_ms)
                ),
            ));
        }
        let id = u64::try_from(job.number).map_err(|_| bad(1, "must not be negative".into()))?;
        let processors = [(8, job.requested_processors), (5, job.allocated_processors)]
            .into_iter()
            .find(|&(_, n)| n > 0);
        let Some((field, processors)) = processors else {
            self.skipped += 1;
            self.last_submit_ms = submit_ms;
            return Ok(None);
        };
        let processors = u32::try_from(processors)
            .map_err(|_| bad(field, format!("{processors} processors is too many")))?;
        if !self.seen.insert(id) {
            return Err(bad(
                1,
                format!("job {id} appears twice; job numbers must be unique"),
            ));
        }
        let (count, vcpus, gang) = match self.mode {
            SwfMode::Gang => (processors, 1, true),
            SwfMode::Vm => (1, processors, false),
        };
        // Memory is given per processor; a VM holds `vcpus` processors. Rounded up so that a
        // job never gets less than it asked for.
        let memory_mib = if job.requested_memory_milli_kb > 0 {
            let per_vm =
                u128::from(job.requested_memory_milli_kb.unsigned_abs()) * u128::from(vcpus);
            let mib = per_vm.div_ceil(1024 * 1000);
            Some(u64::try_from(mib).map_err(|_| bad(10, "is too large".into()))?)
        } else {
            None
        };
        let mut request = RequestRecord::new(id, TEMPLATE, vcpus, non_negative(job.run_ms));
        request.count = count;
        request.gang = gang;
        request.memory_mib = memory_mib;
        request.expected_ms = (job.requested_ms >= 0).then(|| job.requested_ms.unsigned_abs());
        request.outcome = Outcome::Passed;
        if job.user >= 0 {
            request.requester = Some(format!("user{}", job.user));
        }
        if let Ok(preceding) = u64::try_from(job.preceding)
            && preceding > 0
            && preceding != id
            && self.seen.contains(preceding)
        {
            request.after = vec![preceding];
            request.think_ms = non_negative(job.think_ms);
        }
        self.last_submit_ms = submit_ms;
        Ok(Some(Record {
            at_ms: submit_ms,
            body: RecordBody::Request(request),
        }))
    }
}

impl<R: BufRead> Iterator for SwfReader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.read_record();
        fused(&mut self.done, step)
    }
}

/// The fields of a job line that the mapping uses; times in milliseconds, `-1` stays negative.
struct Job {
    number: i64,
    submit_ms: i64,
    run_ms: i64,
    allocated_processors: i64,
    requested_processors: i64,
    requested_ms: i64,
    requested_memory_milli_kb: i64,
    user: i64,
    preceding: i64,
    think_ms: i64,
}

/// Splits and parses a job line. Errors carry the 1-based field number (0: the line as a whole).
fn parse_job(line: &[u8]) -> Result<Job, (usize, String)> {
    let mut fields: [&[u8]; N_FIELDS] = [&[]; N_FIELDS];
    let mut n_fields = 0;
    for field in line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
    {
        if let Some(slot) = fields.get_mut(n_fields) {
            *slot = field;
        }
        n_fields += 1;
    }
    if n_fields != N_FIELDS {
        return Err((
            0,
            format!("expected {N_FIELDS} whitespace-separated fields, found {n_fields}"),
        ));
    }
    // Every field must be a number, even those the mapping does not use: anything else means
    // the file is not SWF or is damaged, and a silent partial import would hide it.
    let mut milli = [0i64; N_FIELDS];
    for (i, field) in fields.iter().enumerate() {
        milli[i] = parse_milli(field).ok_or_else(|| {
            (
                i + 1,
                format!("`{}` is not a number", String::from_utf8_lossy(field)),
            )
        })?;
    }
    let whole = |number: usize| {
        let text = fields[number - 1];
        parse_whole(text).ok_or_else(|| {
            (
                number,
                format!("`{}` is not a whole number", String::from_utf8_lossy(text)),
            )
        })
    };
    Ok(Job {
        number: whole(1)?,
        submit_ms: milli[1],
        run_ms: milli[3],
        allocated_processors: whole(5)?,
        requested_processors: whole(8)?,
        requested_ms: milli[8],
        requested_memory_milli_kb: milli[9],
        user: whole(12)?,
        preceding: whole(17)?,
        think_ms: milli[17],
    })
}

/// "8 (requested processors)" for field 8; None for the line as a whole.
fn field_label(number: usize) -> Option<String> {
    let name = FIELD_NAMES.get(number.checked_sub(1)?)?;
    Some(format!("{number} ({name})"))
}

/// SWF's unknown (-1) and other negative durations count as zero.
fn non_negative(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// Milliseconds as seconds for messages: SWF users think in its own unit.
fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    fn read(text: &str, mode: SwfMode) -> Result<(Vec<Record>, u64), TraceError> {
        let mut reader = SwfReader::new(text.as_bytes(), "log.swf", mode)?;
        let records = (&mut reader).collect::<Result<Vec<_>, _>>()?;
        Ok((records, reader.skipped()))
    }

    fn request(record: &Record) -> &RequestRecord {
        match &record.body {
            RecordBody::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn check_error(text: &str, want: Expect) {
        let e = read(text, SwfMode::Gang).expect_err("malformed");
        want.assert_eq(&e.to_string());
    }

    const LOG: &str = "\
; Version: 2.2
; Computer: IBM SP2
; Installation: KTH
; Acknowledge: Lars
;
   15   599850 192180   3477    4     -1    -1    4  53940    -1  1  12  12  -1 -1 -1 -1 -1
   16   600022  11940   2488   25     -1    -1   -1   3600  2048  1  13  13  -1 -1 -1 -1 -1
   17   600476 364560     -1   -1     -1    -1   -1     -1    -1  5  14  14  -1 -1 -1 -1 -1
; a comment between jobs
   18   600836  32100  35373   17     -1    -1    6     -1   100  0  15  15  -1 -1 -1 16 30
";

    #[test]
    fn maps_jobs_to_gang_requests() {
        let mut reader = SwfReader::new(LOG.as_bytes(), "log.swf", SwfMode::Gang).expect("header");
        assert_eq!(
            reader.header().source,
            "SWF log log.swf; Computer: IBM SP2; Installation: KTH; Acknowledge: Lars"
        );
        let records: Vec<Record> = (&mut reader).collect::<Result<_, _>>().expect("valid");
        assert_eq!(reader.skipped(), 1, "job 17 has no processor count");
        assert_eq!(records.len(), 3);

        let first = request(&records[0]);
        assert_eq!(records[0].at_ms, 599_850_000);
        assert_eq!(
            (first.id, first.count, first.vcpus, first.gang),
            (15, 4, 1, true)
        );
        assert_eq!(
            (first.duration_ms, first.expected_ms, first.memory_mib),
            (3_477_000, Some(53_940_000), None)
        );
        assert_eq!(first.template, "swf");
        assert_eq!(first.requester.as_deref(), Some("user12"));
        assert!(first.after.is_empty());

        let second = request(&records[1]);
        assert_eq!(
            second.count, 25,
            "allocated processors stand in for requested"
        );
        assert_eq!(second.memory_mib, Some(2), "2048 KB per processor");

        let fourth = request(&records[2]);
        assert_eq!(
            fourth.outcome,
            Outcome::Passed,
            "SWF status is not an outcome"
        );
        assert_eq!(
            fourth.expected_ms, None,
            "unknown requested time → run time"
        );
        assert_eq!(fourth.memory_mib, Some(1), "100 KB rounds up to 1 MiB");
        assert_eq!(
            (fourth.after.as_slice(), fourth.think_ms),
            (&[16][..], 30_000)
        );
    }

    #[test]
    fn vm_mode_makes_one_large_vm() {
        let (records, _) = read(LOG, SwfMode::Vm).expect("valid");
        let r = request(&records[1]);
        assert_eq!((r.count, r.vcpus, r.gang), (1, 25, false));
        assert_eq!(r.memory_mib, Some(50), "2048 KB × 25 processors");
    }

    #[test]
    fn unknown_run_time_is_zero_and_preceding_job_must_be_known() {
        let text = "1 10 0 -1 2 -1 -1 2 60 -1 5 1 1 -1 -1 -1 99 5\n";
        let (records, skipped) = read(text, SwfMode::Gang).expect("valid");
        let r = request(&records[0]);
        assert_eq!((r.duration_ms, skipped), (0, 0));
        assert!(r.after.is_empty(), "job 99 is not in the log");
        assert_eq!(r.think_ms, 0);
    }

    #[test]
    fn malformed_lines_name_line_and_field() {
        check_error(
            "1 10 0 5 2 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1\n",
            expect!["log.swf:1: expected 18 whitespace-separated fields, found 17"],
        );
        check_error(
            "; header\n1 10 0 5 2 -1 -1 two 60 -1 1 1 1 -1 -1 -1 -1 -1\n",
            expect!["log.swf:2: field 8 (requested processors): `two` is not a number"],
        );
        check_error(
            "1 10 0 5 2.5 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1 -1\n",
            expect!["log.swf:1: field 5 (allocated processors): `2.5` is not a whole number"],
        );
        check_error(
            "1 10 0 5 2 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1 -1\n2 9 0 5 2 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1 -1\n",
            expect![
                "log.swf:2: field 2 (submit time): 9 s is earlier than the previous job's 10 s; SWF jobs must be sorted by submit time"
            ],
        );
        check_error(
            "1 10 0 5 2 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1 -1\n1 11 0 5 2 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1 -1\n",
            expect![
                "log.swf:2: field 1 (job number): job 1 appears twice; job numbers must be unique"
            ],
        );
        check_error(
            "1 -1 0 5 2 -1 -1 2 60 -1 1 1 1 -1 -1 -1 -1 -1\n",
            expect!["log.swf:1: field 2 (submit time): must not be negative"],
        );
        check_error(
            "1 10 0 5 2 -1 -1 9999999999 60 -1 1 1 1 -1 -1 -1 -1 -1\n",
            expect!["log.swf:1: field 8 (requested processors): 9999999999 processors is too many"],
        );
    }

    /// Text made of SWF's own characters, so that the fuzzer reaches the field checks.
    fn swf_like() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "0",
                "1",
                "7",
                "-1",
                "-",
                ".",
                "3.5",
                " ",
                "  ",
                "\t",
                "\n",
                "\r\n",
                ";",
                "99999999999999999999",
                "x",
                "\u{e9}",
            ]),
            0..120,
        )
        .prop_map(|parts| parts.concat())
    }

    fn assert_errors_have_lines(bytes: &[u8], mode: SwfMode) -> Result<(), TestCaseError> {
        match SwfReader::new(bytes, "fuzz", mode) {
            Err(e) => prop_assert!(e.line().is_some(), "{e}"),
            Ok(reader) => {
                for item in reader {
                    if let Err(e) = item {
                        prop_assert!(e.is_malformed() && e.line().is_some(), "{e}");
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            assert_errors_have_lines(&bytes, SwfMode::Gang)?;
        }

        #[test]
        fn swf_like_text_never_panics(text in swf_like()) {
            assert_errors_have_lines(text.as_bytes(), SwfMode::Gang)?;
            assert_errors_have_lines(text.as_bytes(), SwfMode::Vm)?;
        }

        #[test]
        fn valid_jobs_round_trip_their_numbers(
            submit in 0u32..1_000_000, run in -1i32..100_000, procs in 1u32..5000,
            requested in -1i32..100_000, memory_kb in -1i32..10_000_000,
        ) {
            let line = format!("1 {submit} 0 {run} {procs} -1 -1 {procs} {requested} {memory_kb} 1 3 3 -1 -1 -1 -1 -1\n");
            let (records, _) = read(&line, SwfMode::Vm).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let r = request(&records[0]);
            prop_assert_eq!(records[0].at_ms, u64::from(submit) * 1000);
            prop_assert_eq!(r.duration_ms, u64::try_from(run).map_or(0, |s| s * 1000));
            prop_assert_eq!(r.vcpus, procs);
            prop_assert_eq!(r.estimate_ms(), u64::try_from(requested).map_or(r.duration_ms, |s| s * 1000));
            if memory_kb > 0 {
                let mib = r.memory_mib.ok_or_else(|| TestCaseError::fail("memory"))?;
                let kb_per_vm = u64::try_from(memory_kb).unwrap_or(0) * u64::from(procs);
                prop_assert!(mib * 1024 >= kb_per_vm && (mib - 1) * 1024 < kb_per_vm);
            }
        }
    }
}

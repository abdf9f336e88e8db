//! Importer for the Azure Public Dataset V1 `vmtable.csv`: one VM a row, its lifetime and its size bucket.
//!
//! Columns (no header row): vmid, subscriptionid, deploymentid, vmcreated (s), vmdeleted (s),
//! maxcpu, avgcpu, p95maxcpu, vmcategory, vmcorecountbucket, vmmemorybucket (GB). A row becomes
//! one VM of `vmcorecountbucket` vCPUs and `vmmemorybucket` × 1024 MiB, asked for at
//! `vmcreated` and running until `vmdeleted`. Open-ended buckets such as `>24` count as their
//! bound (24), which understates the largest VMs. The published table is not in creation
//! order; the reader sorts it in bounded memory (see [`AzureReader`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use crate::lines::{Lines, fused};
use crate::num::{parse_milli, parse_whole};
use crate::{Record, RecordBody, RequestRecord, TraceError, TraceHeader};

/// Number of comma-separated columns in a row.
const N_COLUMNS: usize = 11;

const COLUMN_NAMES: [&str; N_COLUMNS] = [
    "vmid",
    "subscriptionid",
    "deploymentid",
    "vmcreated",
    "vmdeleted",
    "maxcpu",
    "avgcpu",
    "p95maxcpu",
    "vmcategory",
    "vmcorecountbucket",
    "vmmemorybucket",
];

/// The name of every imported request's template.
const TEMPLATE: &str = "azure";

/// Rows sorted in memory at once (about 30 MB of the published table's rows). A longer table is
/// sorted in runs of this many rows, each written to a temporary file, and the runs are merged:
/// memory stays bounded whatever the table's length.
pub const SORT_RUN_ROWS: usize = 100_000;

/// Reads `vmtable.csv` rows as requests in `vmcreated` order; the request id is the row's
/// 1-based index in the file (blank lines not counted).
///
/// The published table is not sorted by creation time, so the reader sorts it: the first
/// `next()` reads and checks every row (an error names the file's line), sorting them in runs
/// of [`SORT_RUN_ROWS`] rows spilled to temporary files (removed as soon as they are open);
/// then records come out of a merge of the runs. Rows created at the same second keep the
/// file's order.
pub struct AzureReader<R> {
    lines: Lines<R>,
    header: TraceHeader,
    run_rows_max: usize,
    sorted: Option<Sorted>,
    done: bool,
}

/// A row kept for sorting: its key, where it came from, and its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    created_ms: u64,
    line: u64,
    id: u64,
    text: Vec<u8>,
}

/// The rows in `vmcreated` order: all in memory, or a merge of spilled runs.
enum Sorted {
    Memory(std::vec::IntoIter<Row>),
    Merge {
        runs: Vec<Run>,
        /// The next row of each run, smallest first: `(created, line, run index)`.
        heads: BinaryHeap<Reverse<(u64, u64, usize)>>,
    },
}

/// One sorted run in a temporary file, already unlinked, and its next row.
struct Run {
    reader: BufReader<File>,
    head: Option<Row>,
    path: PathBuf,
}

impl<R: BufRead> AzureReader<R> {
    /// `name` stands for the input in error messages.
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        Self::with_run_rows(reader, name, SORT_RUN_ROWS)
    }

    fn with_run_rows(reader: R, name: impl Into<String>, run_rows_max: usize) -> Self {
        let lines = Lines::new(reader, name.into());
        let header = TraceHeader::new(
            false,
            format!(
                "Azure Public Dataset V1 vmtable {} (CC-BY 4.0)",
                lines.name()
            ),
        );
        AzureReader {
            lines,
            header,
            run_rows_max: run_rows_max.max(1),
            sorted: None,
            done: false,
        }
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Reads and checks every row, sorting them in runs (spilled when there is more than one).
    fn sort(&mut self) -> Result<Sorted, TraceError> {
        let mut run: Vec<Row> = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        let mut n_rows = 0;
        while self.lines.advance()? {
            if self.lines.is_blank() {
                continue;
            }
            n_rows += 1;
            let text = self.lines.text().to_vec();
            let line = self.lines.line_no();
            let record = parse_row(&text, self.lines.name(), line, n_rows)?;
            run.push(Row {
                created_ms: record.at_ms,
                line,
                id: n_rows,
                text,
            });
            if run.len() >= self.run_rows_max {
                runs.push(Run::spill(&mut run, self.lines.name())?);
            }
        }
        if runs.is_empty() {
            run.sort_unstable();
            return Ok(Sorted::Memory(run.into_iter()));
        }
        if !run.is_empty() {
            runs.push(Run::spill(&mut run, self.lines.name())?);
        }
        let mut heads = BinaryHeap::new();
        for (i, r) in runs.iter_mut().enumerate() {
            r.advance(self.lines.name())?;
            if let Some(row) = &r.head {
                heads.push(Reverse((row.created_ms, row.line, i)));
            }
        }
        Ok(Sorted::Merge { runs, heads })
    }

    fn read_record(&mut self) -> Result<Option<Record>, TraceError> {
        if self.sorted.is_none() {
            self.sorted = Some(self.sort()?);
        }
        let name = self.lines.name();
        let row = match &mut self.sorted {
            None => None,
            Some(Sorted::Memory(rows)) => rows.next(),
            Some(Sorted::Merge { runs, heads }) => match heads.pop() {
                None => None,
                Some(Reverse((_, _, i))) => {
                    let run = &mut runs[i];
                    let row = run.head.take();
                    run.advance(name)?;
                    if let Some(next) = &run.head {
                        heads.push(Reverse((next.created_ms, next.line, i)));
                    }
                    row
                }
            },
        };
        row.map(|row| parse_row(&row.text, name, row.line, row.id))
            .transpose()
    }
}

impl Run {
    /// Sorts `rows` and writes them to a new temporary file, leaving `rows` empty; the file is
    /// unlinked once open for reading, so nothing is left behind whatever happens next.
    fn spill(rows: &mut Vec<Row>, name: &str) -> Result<Run, TraceError> {
        rows.sort_unstable();
        let (file, path) = temp_file(name)?;
        let io = |e| TraceError::io(&format!("{name} (sorting in {})", path.display()), 0, e);
        let mut out = BufWriter::new(file);
        for row in rows.drain(..) {
            write!(out, "{} {} {} ", row.created_ms, row.line, row.id).map_err(io)?;
            out.write_all(&row.text).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
        }
        out.flush().map_err(io)?;
        let reader = File::open(&path).map_err(io)?;
        std::fs::remove_file(&path).map_err(io)?;
        Ok(Run {
            reader: BufReader::new(reader),
            head: None,
            path,
        })
    }

    /// Reads the run's next row into `head` (`None` at its end).
    fn advance(&mut self, name: &str) -> Result<(), TraceError> {
        let what = || format!("{name} (sorting in {})", self.path.display());
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .map_err(|e| TraceError::io(&what(), 0, e))?;
        if n == 0 {
            self.head = None;
            return Ok(());
        }
        line.pop();
        let mut parts = line.splitn(4, |&b| b == b' ');
        let mut number = || {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<u64>().ok())
        };
        let (created, row_line, id) = (number(), number(), number());
        let (Some(created_ms), Some(row_line), Some(id), Some(text)) =
            (created, row_line, id, parts.next())
        else {
            return Err(TraceError::io(
                &what(),
                0,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a sorted run is corrupt"),
            ));
        };
        self.head = Some(Row {
            created_ms,
            line: row_line,
            id,
            text: text.to_vec(),
        });
        Ok(())
    }
}

/// A new file in the system's temporary directory, for one sorted run of `name`.
fn temp_file(name: &str) -> Result<(File, PathBuf), TraceError> {
    let dir = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last_error = None;
    for attempt in 0..100u32 {
        let path = dir.join(format!(
            "berth-azure-sort-{}-{nanos}-{attempt}.run",
            std::process::id()
        ));
        match File::options().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => {
                return Err(TraceError::io(
                    &format!("{name} (sorting in {})", path.display()),
                    0,
                    e,
                ));
            }
        }
    }
    Err(TraceError::io(
        &format!("{name} (sorting in {})", dir.display()),
        0,
        last_error.unwrap_or_else(|| std::io::Error::other("no free temporary file name")),
    ))
}

/// One row as a request with id `id`; errors name `name`, `line` and the column.
fn parse_row(row: &[u8], name: &str, line: u64, id: u64) -> Result<Record, TraceError> {
    let bad = |column: usize, problem: String| {
        let field = COLUMN_NAMES
            .get(column.wrapping_sub(1))
            .map(|name| format!("{column} ({name})"));
        TraceError::malformed(name, line, field, problem)
    };
    let mut columns: [&[u8]; N_COLUMNS] = [&[]; N_COLUMNS];
    let mut n_columns = 0;
    for column in row.split(|&b| b == b',') {
        if let Some(slot) = columns.get_mut(n_columns) {
            *slot = column;
        }
        n_columns += 1;
    }
    if n_columns != N_COLUMNS {
        return Err(bad(
            0,
            format!("expected {N_COLUMNS} comma-separated columns, found {n_columns}"),
        ));
    }
    let seconds = |column: usize| -> Result<u64, TraceError> {
        let text = columns[column - 1];
        match parse_milli(text).map(u64::try_from) {
            Some(Ok(ms)) => Ok(ms),
            Some(Err(_)) => Err(bad(column, "must not be negative".into())),
            None => Err(bad(column, not_a_number(text))),
        }
    };
    let created_ms = seconds(4)?;
    let deleted_ms = seconds(5)?;
    let duration_ms = deleted_ms
        .checked_sub(created_ms)
        .ok_or_else(|| bad(5, "is earlier than vmcreated".into()))?;
    let cores = parse_whole(bucket(columns[9])).filter(|&n| n > 0);
    let vcpus = cores
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(10, format!("`{}` is not a core count", lossy(columns[9]))))?;
    let memory_mib = parse_milli(bucket(columns[10]))
        .filter(|&milli_gb| milli_gb > 0)
        .and_then(|milli_gb| u64::try_from(milli_gb).ok())
        .map(|milli_gb| (u128::from(milli_gb) * 1024).div_ceil(1000))
        .and_then(|mib| u64::try_from(mib).ok())
        .ok_or_else(|| bad(11, format!("`{}` is not a memory size", lossy(columns[10]))))?;
    let subscription =
        std::str::from_utf8(columns[1]).map_err(|_| bad(2, "is not valid UTF-8".into()))?;

    let mut request = RequestRecord::new(id, TEMPLATE, vcpus, duration_ms);
    request.memory_mib = Some(memory_mib);
    request.requester = Some(subscription.to_owned());
    Ok(Record {
        at_ms: created_ms,
        body: RecordBody::Request(request),
    })
}

impl<R: BufRead> Iterator for AzureReader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.read_record();
        fused(&mut self.done, step)
    }
}

/// A size bucket's number: `8` → 8, `>24` → 24 (the bound of an open-ended bucket).
fn bucket(text: &[u8]) -> &[u8] {
    let text = text.trim_ascii();
    text.strip_prefix(b">").unwrap_or(text).trim_ascii()
}

fn lossy(text: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(text)
}

fn not_a_number(text: &[u8]) -> String {
    format!("`{}` is not a number", lossy(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    const ROW: &str = "vm1,sub1,dep1,300,2591700,99.3,3.42,10.1,Delay-insensitive,8,56";

    fn read(text: &str) -> Result<Vec<Record>, TraceError> {
        AzureReader::new(text.as_bytes(), "vmtable.csv").collect()
    }

    fn check_error(text: &str, want: Expect) {
        let e = read(text).expect_err("malformed");
        want.assert_eq(&e.to_string());
    }

    #[test]
    fn maps_a_row_to_one_vm() {
        let text = format!("{ROW}\r\nvm2,sub2,dep2,300,900,1,1,1,Interactive,>24,0.75\n");
        let records = read(&text).expect("valid");
        let [first, second] = records.as_slice() else {
            panic!("two records: {records:?}");
        };
        let RecordBody::Request(r) = &first.body else {
            panic!("a request: {first:?}");
        };
        assert_eq!(first.at_ms, 300_000);
        assert_eq!(
            (r.id, r.count, r.vcpus, r.memory_mib),
            (1, 1, 8, Some(57_344))
        );
        assert_eq!(r.duration_ms, 2_591_400_000);
        assert_eq!(
            (r.template.as_str(), r.requester.as_deref()),
            ("azure", Some("sub1"))
        );
        assert!(r.labels.is_empty());
        let RecordBody::Request(r) = &second.body else {
            panic!("a request: {second:?}");
        };
        assert_eq!((r.id, r.vcpus, r.memory_mib), (2, 24, Some(768)));
    }

    #[test]
    fn malformed_rows_name_line_and_column() {
        check_error(
            "a,b,c\n",
            expect!["vmtable.csv:1: expected 11 comma-separated columns, found 3"],
        );
        check_error(
            &format!("{ROW}\n{ROW}\nvm3,sub,dep,0,9oo,1,1,1,Interactive,2,4\n"),
            expect!["vmtable.csv:3: field 5 (vmdeleted): `9oo` is not a number"],
        );
        check_error(
            "vm,sub,dep,300,200,1,1,1,Interactive,2,4\n",
            expect!["vmtable.csv:1: field 5 (vmdeleted): is earlier than vmcreated"],
        );
        check_error(
            "vm,sub,dep,3oo,400,1,1,1,Interactive,2,4\n",
            expect!["vmtable.csv:1: field 4 (vmcreated): `3oo` is not a number"],
        );
        check_error(
            "vm,sub,dep,300,400,1,1,1,Interactive,0,4\n",
            expect!["vmtable.csv:1: field 10 (vmcorecountbucket): `0` is not a core count"],
        );
        check_error(
            "vm,sub,dep,300,400,1,1,1,Interactive,2,big\n",
            expect!["vmtable.csv:1: field 11 (vmmemorybucket): `big` is not a memory size"],
        );
    }

    /// `(created s, id)` of each record read from `text` with runs of `run_rows` rows.
    fn order(text: &str, run_rows: usize) -> Vec<(u64, u64)> {
        AzureReader::with_run_rows(text.as_bytes(), "vmtable.csv", run_rows)
            .map(|r| {
                let r = r.expect("valid rows");
                let RecordBody::Request(q) = &r.body else {
                    panic!("a request: {r:?}");
                };
                (r.at_ms / 1000, q.id)
            })
            .collect()
    }

    #[test]
    fn unsorted_rows_come_out_in_creation_order_in_memory_and_through_runs() {
        let created = [500, 0, 300, 0, 900, 300, 100];
        let text: String = created
            .iter()
            .enumerate()
            .map(|(i, c)| format!("vm{i},sub,dep,{c},1000,1,1,1,Interactive,2,4\n"))
            .collect();
        let want = vec![
            (0, 2),
            (0, 4),
            (100, 7),
            (300, 3),
            (300, 6),
            (500, 1),
            (900, 5),
        ];
        for run_rows in [1, 2, 3, SORT_RUN_ROWS] {
            assert_eq!(order(&text, run_rows), want, "runs of {run_rows}");
        }
        // A blank line is not a row: ids count rows, errors count lines.
        let e = AzureReader::with_run_rows(
            format!("{ROW}\n\n{ROW}\nbad\n").as_bytes(),
            "vmtable.csv",
            1,
        )
        .find_map(Result::err)
        .expect("the bad row");
        assert_eq!(e.line(), Some(4));
        let ids: Vec<u64> = order(&format!("{ROW}\n\n{ROW}\n"), 1)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    fn csv_like() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "0",
                "1",
                "300",
                "-5",
                ">",
                ">24",
                ".",
                "0.75",
                ",",
                ",,",
                "\n",
                "\r\n",
                " ",
                "vm",
                "99999999999999999999",
                "\u{e9}",
            ]),
            0..80,
        )
        .prop_map(|parts| parts.concat())
    }

    fn assert_errors_have_lines(bytes: &[u8]) -> Result<(), TestCaseError> {
        for item in AzureReader::new(bytes, "fuzz") {
            if let Err(e) = item {
                prop_assert!(e.is_malformed() && e.line().is_some(), "{e}");
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            assert_errors_have_lines(&bytes)?;
        }

        #[test]
        fn csv_like_text_never_panics(text in csv_like()) {
            assert_errors_have_lines(text.as_bytes())?;
        }
    }
}

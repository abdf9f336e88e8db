//! Importer for the Azure Public Dataset V1 `vmtable.csv`: one VM a row, its lifetime and its size bucket.
//!
//! Columns (no header row): vmid, subscriptionid, deploymentid, vmcreated (s), vmdeleted (s),
//! maxcpu, avgcpu, p95maxcpu, vmcategory, vmcorecountbucket, vmmemorybucket (GB). A row becomes
//! one VM of `vmcorecountbucket` vCPUs and `vmmemorybucket` × 1024 MiB, asked for at
//! `vmcreated` and running until `vmdeleted`. Open-ended buckets such as `>24` count as their
//! bound (24), which understates the largest VMs.

use std::io::BufRead;

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

/// Reads `vmtable.csv` rows as requests; the request id is the row's 1-based index.
///
/// The rows must be sorted by `vmcreated` (column 4); the published table is not, so sort it
/// first: `sort -t, -k4,4n -s vmtable.csv`. An unsorted row is an error naming its line, since a
/// streaming reader cannot reorder without holding the whole table.
pub struct AzureReader<R> {
    lines: Lines<R>,
    header: TraceHeader,
    n_rows: u64,
    last_created_ms: u64,
    done: bool,
}

impl<R: BufRead> AzureReader<R> {
    /// `name` stands for the input in error messages.
    pub fn new(reader: R, name: impl Into<String>) -> Self {
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
            n_rows: 0,
            last_created_ms: 0,
            done: false,
        }
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    fn read_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            if !self.lines.advance()? {
                return Ok(None);
            }
            if !self.lines.is_blank() {
                break;
            }
        }
        let bad = |column: usize, problem: String| {
            let field = COLUMN_NAMES
                .get(column.wrapping_sub(1))
                .map(|name| format!("{column} ({name})"));
            self.lines.malformed(field, problem)
        };
        let row = self.lines.text();
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
        if created_ms < self.last_created_ms {
            return Err(bad(
                4,
                format!(
                    "{} is earlier than the previous row's {}; sort the table by creation time first (sort -t, -k4,4n -s)",
                    created_ms / 1000,
                    self.last_created_ms / 1000
                ),
            ));
        }
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

        self.n_rows += 1;
        let mut request = RequestRecord::new(self.n_rows, TEMPLATE, vcpus, duration_ms);
        request.memory_mib = Some(memory_mib);
        request.requester = Some(subscription.to_owned());
        self.last_created_ms = created_ms;
        Ok(Some(Record {
            at_ms: created_ms,
            body: RecordBody::Request(request),
        }))
    }
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
            &format!("{ROW}\nvm2,sub2,dep2,0,900,1,1,1,Interactive,2,4\n"),
            expect![
                "vmtable.csv:2: field 4 (vmcreated): 0 is earlier than the previous row's 300; sort the table by creation time first (sort -t, -k4,4n -s)"
            ],
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

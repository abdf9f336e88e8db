//! Trace formats: berth's own line format, importers for SWF and Azure VM traces, and the synthetic CI workload generator.
//!
//! Every reader streams: it holds one line at a time (plus, for berth traces and SWF logs, the
//! set of request ids seen, stored as runs of consecutive ids), except the Azure importer, which
//! must sort the published table and holds one bounded run of rows, spilling the rest to
//! temporary files. Time is integer milliseconds
//! everywhere. `sched` is not a dependency: the simulator turns [`Record`]s into scheduler
//! inputs. FORMAT.md in this crate describes the formats and the importers' mappings.
//!
//! ```no_run
//! use berth_traces::{Format, SwfMode, TraceReader};
//! # fn main() -> Result<(), berth_traces::TraceError> {
//! let mut reader = TraceReader::open(
//!     "KTH-SP2-1996-2.1-cln.swf".as_ref(),
//!     Format::Swf { mode: SwfMode::Gang },
//! )?;
//! for record in &mut reader {
//!     let record = record?;
//!     println!("{} ms: {:?}", record.at_ms, record.body);
//! }
//! if reader.skipped() > 0 {
//!     eprintln!("skipped {} jobs without a processor count", reader.skipped());
//! }
//! # Ok(())
//! # }
//! ```

pub mod azure;
pub mod berth;
mod error;
mod ids;
mod lines;
mod num;
pub mod read_ahead;
pub mod record;
pub mod swf;
pub mod synth;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::str::FromStr;

use flate2::bufread::MultiGzDecoder;

pub use azure::AzureReader;
pub use berth::{BerthReader, TraceWriter};
pub use error::TraceError;
pub use read_ahead::read_ahead;
pub use record::{
    Driver, Hold, HostEvent, HostRecord, HostSpec, Outcome, Record, RecordBody, RequestRecord,
    TraceHeader,
};
pub use swf::{SwfMode, SwfReader};
pub use synth::{Generator, SynthConfig, SynthError};

/// Which format a trace file is in. Compression is detected, not part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// berth's own JSON lines (FORMAT.md).
    Berth,
    /// Standard Workload Format, the Parallel Workloads Archive's logs.
    Swf { mode: SwfMode },
    /// Azure Public Dataset V1 `vmtable.csv`, in any order (the reader sorts it).
    Azure,
}

impl FromStr for Format {
    type Err = String;

    /// Names for command lines: `berth`, `swf` (same as `swf-gang`), `swf-vm`, `azure`.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "berth" => Ok(Format::Berth),
            "swf" | "swf-gang" => Ok(Format::Swf {
                mode: SwfMode::Gang,
            }),
            "swf-vm" => Ok(Format::Swf { mode: SwfMode::Vm }),
            "azure" => Ok(Format::Azure),
            other => Err(format!(
                "unknown trace format `{other}`; expected berth, swf, swf-gang, swf-vm or azure"
            )),
        }
    }
}

/// The first bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Read buffer size: large enough that a trace file is read in few system calls.
const READ_BUFFER_BYTES: usize = 64 << 10;

type Input = Box<dyn BufRead + Send>;

/// A trace of any supported format, as one stream of records.
///
/// Gzip-compressed input is recognised by its first bytes, whatever the file is called. The
/// iterator ends after the first error.
pub struct TraceReader {
    inner: Inner,
}

enum Inner {
    Berth(BerthReader<Input>),
    Swf(SwfReader<Input>),
    Azure(AzureReader<Input>),
}

impl TraceReader {
    /// Opens the file at `path`; errors name it as given.
    pub fn open(path: &Path, format: Format) -> Result<Self, TraceError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| TraceError::io(&name, 0, e))?;
        Self::from_reader(
            BufReader::with_capacity(READ_BUFFER_BYTES, file),
            name,
            format,
        )
    }

    /// Reads from any buffered input; `name` stands for it in error messages. The gzip check
    /// looks at the first buffered bytes, so a reader must offer at least two bytes on its first
    /// fill (any `BufReader` does).
    pub fn from_reader<R: BufRead + Send + 'static>(
        mut reader: R,
        name: impl Into<String>,
        format: Format,
    ) -> Result<Self, TraceError> {
        let name = name.into();
        let start = reader.fill_buf().map_err(|e| TraceError::io(&name, 0, e))?;
        let input: Input = if start.starts_with(&GZIP_MAGIC) {
            Box::new(BufReader::with_capacity(
                READ_BUFFER_BYTES,
                MultiGzDecoder::new(reader),
            ))
        } else {
            Box::new(reader)
        };
        let inner = match format {
            Format::Berth => Inner::Berth(BerthReader::new(input, name)?),
            Format::Swf { mode } => Inner::Swf(SwfReader::new(input, name, mode)?),
            Format::Azure => Inner::Azure(AzureReader::new(input, name)),
        };
        Ok(TraceReader { inner })
    }

    /// The berth header, or one made up for an imported trace (`synthetic: false`, with the
    /// file's name and, for SWF, its attribution lines as `source`).
    pub fn header(&self) -> &TraceHeader {
        match &self.inner {
            Inner::Berth(r) => r.header(),
            Inner::Swf(r) => r.header(),
            Inner::Azure(r) => r.header(),
        }
    }

    /// Records an importer left out so far (SWF jobs without a processor count); print one
    /// warning with the total at the end rather than one per record.
    pub fn skipped(&self) -> u64 {
        match &self.inner {
            Inner::Swf(r) => r.skipped(),
            Inner::Berth(_) | Inner::Azure(_) => 0,
        }
    }
}

impl Iterator for TraceReader {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Berth(r) => r.next(),
            Inner::Swf(r) => r.next(),
            Inner::Azure(r) => r.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn format_names() {
        assert_eq!(
            "swf".parse(),
            Ok(Format::Swf {
                mode: SwfMode::Gang
            })
        );
        assert_eq!("swf-vm".parse(), Ok(Format::Swf { mode: SwfMode::Vm }));
        assert_eq!("azure".parse(), Ok(Format::Azure));
        assert!("csv".parse::<Format>().is_err());
    }

    #[test]
    fn gzip_is_detected_by_content() {
        let swf = "; Computer: test\n1 0 0 10 2 -1 -1 2 20 -1 1 1 1 -1 -1 -1 -1 -1\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(swf.as_bytes()).expect("in memory");
        let bytes = gz.finish().expect("in memory");
        for input in [bytes, swf.as_bytes().to_vec()] {
            let reader = TraceReader::from_reader(
                Cursor::new(input),
                "log.txt",
                Format::Swf {
                    mode: SwfMode::Gang,
                },
            )
            .expect("opens");
            let records: Vec<Record> = reader.collect::<Result<_, _>>().expect("reads");
            assert_eq!(records.len(), 1);
        }
    }

    #[test]
    fn corrupt_gzip_is_an_io_error() {
        let input = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        let result = TraceReader::from_reader(Cursor::new(input), "bad.gz", Format::Azure)
            .and_then(|mut reader| reader.next().transpose().map(|_| ()));
        let e = result.expect_err("corrupt stream");
        assert!(!e.is_malformed(), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = TraceReader::open(Path::new("/nonexistent/t.jsonl"), Format::Berth)
            .err()
            .expect("no such file");
        assert!(e.to_string().starts_with("/nonexistent/t.jsonl: "), "{e}");
    }
}

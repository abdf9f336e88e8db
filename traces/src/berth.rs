//! berth's own trace format: a JSON header line, then one JSON record per line; a streaming reader and a writer.
//!
//! The reader finds a line's `at_ms` and `kind` first: by hand when the line starts the way
//! [`TraceWriter`] writes it, else with a serde pass that skips the other fields without
//! allocating. Then it deserializes the body for that kind straight from the line. This costs
//! less than buffering the object (what serde's tagged enums do) and keeps serde_json's
//! positions; a small tracker remembers which field was being read, so an error says
//! "field `count`: invalid type: ..." rather than only a column.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::marker::PhantomData;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use crate::ids::IdSet;
use crate::lines::{Lines, fused};
use crate::record::{HostEvent, HostEventName, HostRecord, HostSpec, HostWire};
use crate::{Record, RecordBody, RequestRecord, TraceError, TraceHeader};

const HEADER_EXAMPLE: &str = r#"{"berth_trace":1,"synthetic":false,"source":"..."}"#;

/// Reads a berth trace one line at a time.
///
/// Memory stays flat along the trace except for the set of request ids seen so far, which the
/// reader keeps to reject duplicate ids and `after`, `cancel` or `release` references to
/// requests not yet seen. The set stores runs of consecutive ids, so traces that number their
/// requests in order (as the writers in this crate do) keep it to a few entries; arbitrary ids
/// cost about 40 bytes each.
///
/// The iterator ends after the first error.
pub struct BerthReader<R> {
    lines: Lines<R>,
    header: TraceHeader,
    seen: IdSet,
    last_at_ms: u64,
    field: FieldTracker,
    done: bool,
}

impl<R: BufRead> BerthReader<R> {
    /// Reads the header line; `name` stands for the input in error messages.
    pub fn new(reader: R, name: impl Into<String>) -> Result<Self, TraceError> {
        let mut lines = Lines::new(reader, name.into());
        if !lines.advance()? {
            // Line 1 is where the missing header belongs.
            return Err(TraceError::malformed(
                lines.name(),
                1,
                None,
                format!(
                    "empty input: a berth trace starts with a header line like {HEADER_EXAMPLE}"
                ),
            ));
        }
        let header: TraceHeader = serde_json::from_slice(lines.text()).map_err(|e| {
            lines.malformed(
                None,
                format!(
                    "not a berth trace header ({}); the first line must look like {HEADER_EXAMPLE}",
                    json_problem(&e)
                ),
            )
        })?;
        if header.version != TraceHeader::VERSION {
            return Err(lines.malformed(
                Some("`berth_trace`".into()),
                format!(
                    "format version {} is not supported; this build reads version {}",
                    header.version,
                    TraceHeader::VERSION
                ),
            ));
        }
        Ok(BerthReader {
            lines,
            header,
            seen: IdSet::default(),
            last_at_ms: 0,
            field: FieldTracker::default(),
            done: false,
        })
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
        let line = self.lines.text();
        let bad = |field: Option<String>, problem: String| self.lines.malformed(field, problem);

        let probed = canonical_prefix(line).map_or_else(|| probe(line, &mut self.field), Ok);
        let (at_ms, kind) = match probed {
            Ok(probed) => probed,
            Err(e) => return Err(bad(self.field.take(), json_problem(&e))),
        };
        if at_ms < self.last_at_ms {
            return Err(bad(
                Some("`at_ms`".into()),
                format!(
                    "{at_ms} is earlier than the previous record's {}; records must be in time order",
                    self.last_at_ms
                ),
            ));
        }
        let body = match kind {
            Kind::Request => {
                let request: RequestRecord = parse_body(line, &mut self.field)
                    .map_err(|e| bad(self.field.take(), json_problem(&e)))?;
                if let Err((field, problem)) = check_request(&request, &self.seen) {
                    return Err(bad(Some(format!("`{field}`")), problem));
                }
                self.seen.insert(request.id);
                RecordBody::Request(request)
            }
            Kind::Host => {
                let wire: HostWire = parse_body(line, &mut self.field)
                    .map_err(|e| bad(self.field.take(), json_problem(&e)))?;
                let host = host_from_wire(wire)
                    .map_err(|(field, problem)| bad(Some(format!("`{field}`")), problem))?;
                RecordBody::Host(host)
            }
            Kind::Cancel | Kind::Release => {
                let RequestRef { request } = parse_body(line, &mut self.field)
                    .map_err(|e| bad(self.field.take(), json_problem(&e)))?;
                if !self.seen.contains(request) {
                    return Err(bad(
                        Some("`request`".into()),
                        format!("request {request} is not earlier in the trace"),
                    ));
                }
                if kind == Kind::Cancel {
                    RecordBody::Cancel { request }
                } else {
                    RecordBody::Release { request }
                }
            }
        };
        self.last_at_ms = at_ms;
        Ok(Some(Record { at_ms, body }))
    }
}

impl<R: BufRead> Iterator for BerthReader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.read_record();
        fused(&mut self.done, step)
    }
}

/// Checks what serde cannot: lower bounds, unique ids, and that dependencies come first.
fn check_request(r: &RequestRecord, seen: &IdSet) -> Result<(), (&'static str, String)> {
    if r.count == 0 {
        return Err(("count", "must be at least 1".into()));
    }
    if r.vcpus == 0 {
        return Err(("vcpus", "must be at least 1".into()));
    }
    if r.memory_mib == Some(0) {
        return Err((
            "memory_mib",
            "must be at least 1 (leave it out for the template's default)".into(),
        ));
    }
    if r.template.is_empty() {
        return Err(("template", "must not be empty".into()));
    }
    if seen.contains(r.id) {
        return Err((
            "id",
            format!(
                "request {} appears twice; ids must be unique in a trace",
                r.id
            ),
        ));
    }
    if let Some(missing) = r.after.iter().find(|&&dep| !seen.contains(dep)) {
        return Err((
            "after",
            format!(
                "request {missing} is not earlier in the trace; a request can only wait for requests before it"
            ),
        ));
    }
    Ok(())
}

/// Turns the flat JSON form into a [`HostRecord`], rejecting fields the event does not take.
fn host_from_wire(w: HostWire) -> Result<HostRecord, (&'static str, String)> {
    if w.host.is_empty() {
        return Err(("host", "must not be empty".into()));
    }
    let event = match w.event {
        HostEventName::Added => {
            let required = |field: &'static str| (field, "required when event is `added`".into());
            let spec = HostSpec {
                driver: w.driver.ok_or_else(|| required("driver"))?,
                vcpus: w.vcpus.ok_or_else(|| required("vcpus"))?,
                memory_mib: w.memory_mib.ok_or_else(|| required("memory_mib"))?,
                slots: w.slots.unwrap_or_default(),
                labels: w.labels.unwrap_or_default(),
            };
            if spec.vcpus == 0 {
                return Err(("vcpus", "must be at least 1".into()));
            }
            if spec.memory_mib == 0 {
                return Err(("memory_mib", "must be at least 1".into()));
            }
            return Ok(HostRecord {
                host: w.host,
                event: HostEvent::Added(spec),
            });
        }
        HostEventName::Failed => HostEvent::Failed,
        HostEventName::Repaired => HostEvent::Repaired,
        HostEventName::Drained => HostEvent::Drained,
        HostEventName::Resumed => HostEvent::Resumed,
        HostEventName::Removed => HostEvent::Removed,
    };
    let extra = [
        ("driver", w.driver.is_some()),
        ("vcpus", w.vcpus.is_some()),
        ("memory_mib", w.memory_mib.is_some()),
        ("slots", w.slots.is_some()),
        ("labels", w.labels.is_some()),
    ];
    if let Some((field, _)) = extra.iter().find(|(_, present)| *present) {
        return Err((field, "only allowed when event is `added`".into()));
    }
    Ok(HostRecord {
        host: w.host,
        event,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Request,
    Host,
    Cancel,
    Release,
}

/// The body of `cancel` and `release` records.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestRef {
    request: u64,
}

/// Remembers the field whose value is being parsed, so that an error can name it. The name
/// buffer is reused from line to line.
#[derive(Default)]
struct FieldTracker {
    name: String,
    active: bool,
}

impl FieldTracker {
    fn enter(&mut self, field: &str) {
        self.name.clear();
        self.name.push_str(field);
        self.active = true;
    }

    fn leave(&mut self) {
        self.active = false;
    }

    /// The field being read when the error happened, formatted for a message.
    fn take(&mut self) -> Option<String> {
        let active = std::mem::take(&mut self.active);
        active.then(|| format!("`{}`", self.name))
    }
}

/// serde_json's message without its position suffix (every line is "line 1" to it), with the
/// column kept.
fn json_problem(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&suffix) {
        // Column 0 means "before the first character": not worth showing.
        Some(bare) if e.column() == 0 => bare.to_owned(),
        Some(bare) => format!("{bare} (column {})", e.column()),
        None => message,
    }
}

/// The first pass for lines laid out as [`TraceWriter`] writes them, which start with
/// `{"at_ms":<digits>,"kind":"<kind>"`: read by hand, saving a scan of the line. Anything else
/// (other order, spaces, a bad value) goes to [`probe`], which also reports the errors; the
/// second pass still parses the whole line.
fn canonical_prefix(line: &[u8]) -> Option<(u64, Kind)> {
    let rest = line.strip_prefix(br#"{"at_ms":"#)?;
    let n_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (digits, rest) = rest.split_at(n_digits);
    // JSON forbids leading zeros; leave such lines to serde_json to reject.
    if digits.is_empty() || (digits[0] == b'0' && n_digits > 1) {
        return None;
    }
    let mut at_ms: u64 = 0;
    for &d in digits {
        at_ms = at_ms.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let rest = rest.strip_prefix(br#","kind":""#)?;
    let kinds = [
        (&b"request\""[..], Kind::Request),
        (b"host\"", Kind::Host),
        (b"cancel\"", Kind::Cancel),
        (b"release\"", Kind::Release),
    ];
    let (_, kind) = kinds.iter().find(|(name, _)| rest.starts_with(name))?;
    Some((at_ms, *kind))
}

/// First pass: `at_ms` and `kind` only.
fn probe(line: &[u8], field: &mut FieldTracker) -> Result<(u64, Kind), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let probed = de.deserialize_map(ProbeVisitor { field })?;
    de.end()?;
    Ok(probed)
}

struct ProbeVisitor<'t> {
    field: &'t mut FieldTracker,
}

impl<'de> Visitor<'de> for ProbeVisitor<'_> {
    type Value = (u64, Kind);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a record object such as {"at_ms":0,"kind":"request",...}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut at_ms = None;
        let mut kind = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match &*key {
                "at_ms" => {
                    if at_ms.is_some() {
                        return Err(de::Error::duplicate_field("at_ms"));
                    }
                    self.field.enter("at_ms");
                    at_ms = Some(map.next_value::<u64>()?);
                    self.field.leave();
                }
                "kind" => {
                    if kind.is_some() {
                        return Err(de::Error::duplicate_field("kind"));
                    }
                    self.field.enter("kind");
                    kind = Some(map.next_value::<Kind>()?);
                    self.field.leave();
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let at_ms = at_ms.ok_or_else(|| de::Error::missing_field("at_ms"))?;
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        Ok((at_ms, kind))
    }
}

/// Second pass: the body struct of the record's kind, from the same line.
fn parse_body<'de, T: Deserialize<'de>>(
    line: &'de [u8],
    field: &mut FieldTracker,
) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let body = de.deserialize_map(BodyVisitor {
        field,
        body: PhantomData,
    })?;
    de.end()?;
    Ok(body)
}

struct BodyVisitor<'t, T> {
    field: &'t mut FieldTracker,
    body: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BodyVisitor<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(BodyFields {
            map,
            field: self.field,
            seen_at_ms: false,
            seen_kind: false,
        }))
    }
}

/// The record's fields minus `at_ms` and `kind` (read in the first pass), noting each field
/// name as its value is parsed. It rejects a second `at_ms` or `kind`, which the hand-read
/// first pass does not look for.
struct BodyFields<'t, A> {
    map: A,
    field: &'t mut FieldTracker,
    seen_at_ms: bool,
    seen_kind: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for BodyFields<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key_seed(KeySeed)? else {
                return Ok(None);
            };
            let seen = match &*key {
                "at_ms" => Some(("at_ms", &mut self.seen_at_ms)),
                "kind" => Some(("kind", &mut self.seen_kind)),
                _ => None,
            };
            if let Some((name, seen)) = seen {
                if std::mem::replace(seen, true) {
                    return Err(de::Error::duplicate_field(name));
                }
                self.map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = match &key {
                Cow::Borrowed(k) => seed.deserialize(BorrowedStrDeserializer::new(k))?,
                Cow::Owned(k) => seed.deserialize(StringDeserializer::new(k.clone()))?,
            };
            self.field.enter(&key);
            return Ok(Some(value));
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let value = self.map.next_value_seed(seed)?;
        self.field.leave();
        Ok(value)
    }
}

/// A map key, borrowed from the line unless it contains escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Writes a berth trace: the header at once, then one line per record.
///
/// Call [`TraceWriter::finish`] at the end: it flushes and completes the gzip stream, and it is
/// the only place a late write error shows (dropping the writer ignores them).
pub struct TraceWriter<W: Write> {
    out: Sink<W>,
    name: String,
    line_no: u64,
    last_at_ms: u64,
}

enum Sink<W: Write> {
    Plain(BufWriter<W>),
    /// The buffer sits in front of the encoder so that serde_json's many small writes reach
    /// the compressor in large chunks.
    Gzip(BufWriter<GzEncoder<W>>),
}

/// Output buffer size; large enough that writes to a file are few.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// The fastest gzip level: it keeps writing about as fast as generating (a million synthetic
/// VMs in well under a second) for files about 1.5 times the size of the default level's;
/// recompress with `gzip -9` where size matters more.
const GZIP_LEVEL: Compression = Compression::fast();

impl<W: Write> TraceWriter<W> {
    /// A writer of plain JSON lines.
    pub fn new(out: W, header: &TraceHeader) -> Result<Self, TraceError> {
        Self::start(
            Sink::Plain(BufWriter::with_capacity(WRITE_BUFFER_BYTES, out)),
            "output",
            header,
        )
    }

    /// A writer of gzip-compressed JSON lines, which [`crate::TraceReader`] reads transparently.
    pub fn new_gzip(out: W, header: &TraceHeader) -> Result<Self, TraceError> {
        let encoder = GzEncoder::new(out, GZIP_LEVEL);
        Self::start(
            Sink::Gzip(BufWriter::with_capacity(WRITE_BUFFER_BYTES, encoder)),
            "output",
            header,
        )
    }

    fn start(out: Sink<W>, name: &str, header: &TraceHeader) -> Result<Self, TraceError> {
        let mut writer = TraceWriter {
            out,
            name: name.to_owned(),
            line_no: 0,
            last_at_ms: 0,
        };
        writer.write_line(header)?;
        Ok(writer)
    }

    /// Appends a record; records must come in non-decreasing `at_ms` order.
    pub fn write(&mut self, record: &Record) -> Result<(), TraceError> {
        if record.at_ms < self.last_at_ms {
            return Err(TraceError::malformed(
                &self.name,
                self.line_no + 1,
                Some("`at_ms`".into()),
                format!(
                    "{} is earlier than the previous record's {}; records must be written in time order",
                    record.at_ms, self.last_at_ms
                ),
            ));
        }
        self.write_line(record)?;
        self.last_at_ms = record.at_ms;
        Ok(())
    }

    fn write_line<T: serde::Serialize>(&mut self, value: &T) -> Result<(), TraceError> {
        let out: &mut dyn Write = match &mut self.out {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w,
        };
        serde_json::to_writer(&mut *out, value)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| TraceError::io(&self.name, self.line_no, e))?;
        self.line_no += 1;
        Ok(())
    }

    /// Flushes, completes the gzip stream if any, and hands back the underlying writer.
    pub fn finish(self) -> Result<W, TraceError> {
        let io_err = |e| TraceError::io(&self.name, self.line_no, e);
        match self.out {
            Sink::Plain(w) => w.into_inner().map_err(|e| io_err(e.into_error())),
            Sink::Gzip(w) => w
                .into_inner()
                .map_err(|e| io_err(e.into_error()))?
                .finish()
                .map_err(io_err),
        }
    }
}

impl TraceWriter<File> {
    /// Creates (or truncates) the file at `path`, gzip-compressed when its name ends in `.gz`.
    pub fn create(path: &Path, header: &TraceHeader) -> Result<Self, TraceError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|e| TraceError::io(&name, 0, e))?;
        let gzip = path.extension().is_some_and(|ext| ext == "gz");
        let out = if gzip {
            Sink::Gzip(BufWriter::with_capacity(
                WRITE_BUFFER_BYTES,
                GzEncoder::new(file, GZIP_LEVEL),
            ))
        } else {
            Sink::Plain(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file))
        };
        Self::start(out, &name, header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Driver, Hold, Outcome};
    use expect_test::{Expect, expect};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const HEADER: &str = r#"{"berth_trace":1,"synthetic":false,"source":"test"}"#;

    fn read_all(text: &str) -> Result<Vec<Record>, TraceError> {
        BerthReader::new(text.as_bytes(), "trace.jsonl")?.collect()
    }

    /// Reads `body` after a valid header and checks the error it gives.
    fn check_error(body: &str, want: Expect) {
        let text = format!("{HEADER}\n{body}\n");
        match read_all(&text) {
            Ok(records) => panic!("expected an error, read {records:?}"),
            Err(e) => want.assert_eq(&e.to_string()),
        }
    }

    fn sample_records() -> Vec<Record> {
        let mut build = RequestRecord::new(1, "linux", 8, 1_800_000);
        build.memory_mib = Some(16_384);
        build.labels = BTreeMap::from([("arch".into(), "x86_64".into())]);
        build.expected_ms = Some(2_000_000);
        build.requester = Some("dev-3".into());
        build.change = Some("I8473b959".into());
        build.account = Some("qt-base".into());
        let mut test = RequestRecord::new(2, "linux", 4, 600_000);
        test.after = vec![1];
        test.think_ms = 5_000;
        test.outcome = Outcome::Failed;
        test.hold_on_failure = Some(Hold {
            owner: "dev-3".into(),
            ttl_ms: 3_600_000,
        });
        test.priority = -2;
        test.count = 3;
        test.gang = true;
        vec![
            Record {
                at_ms: 0,
                body: RecordBody::Host(HostRecord {
                    host: "kvm1".into(),
                    event: HostEvent::Added(HostSpec {
                        driver: Driver::Libvirt,
                        vcpus: 64,
                        memory_mib: 262_144,
                        slots: BTreeMap::new(),
                        labels: BTreeMap::from([("arch".into(), "x86_64".into())]),
                    }),
                }),
            },
            Record {
                at_ms: 1_000,
                body: RecordBody::Request(build),
            },
            Record {
                at_ms: 1_000,
                body: RecordBody::Request(test),
            },
            Record {
                at_ms: 7_000,
                body: RecordBody::Host(HostRecord {
                    host: "kvm1".into(),
                    event: HostEvent::Drained,
                }),
            },
            Record {
                at_ms: 9_000,
                body: RecordBody::Cancel { request: 1 },
            },
            Record {
                at_ms: 9_000,
                body: RecordBody::Release { request: 2 },
            },
        ]
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let header = TraceHeader::new(true, "round trip");
        let records = sample_records();
        for gzip in [false, true] {
            let mut writer = if gzip {
                TraceWriter::new_gzip(Vec::new(), &header)
            } else {
                TraceWriter::new(Vec::new(), &header)
            }
            .expect("in-memory writer");
            for r in &records {
                writer.write(r).expect("in-memory write");
            }
            let bytes = writer.finish().expect("in-memory finish");
            let reader = crate::TraceReader::from_reader(
                io::Cursor::new(bytes),
                "mem",
                crate::Format::Berth,
            )
            .expect("header reads back");
            assert_eq!(reader.header(), &header);
            let back: Vec<Record> = reader.collect::<Result<_, _>>().expect("records read back");
            assert_eq!(back, records, "gzip: {gzip}");
        }
    }

    #[test]
    fn fields_in_any_order_and_blank_lines() {
        let text = format!(
            "{HEADER}\n\n{}\n  \n{}\n",
            r#"{"id":5,"count":1,"vcpus":2,"kind":"request","template":"macos","duration_ms":10,"at_ms":3,"memory_mib":null}"#,
            r#"{"host":"h","kind":"host","event":"failed","at_ms":3}"#
        );
        let records = read_all(&text).expect("valid trace");
        assert_eq!(records.len(), 2);
        let RecordBody::Request(r) = &records[0].body else {
            panic!("first record is a request: {records:?}");
        };
        assert_eq!((records[0].at_ms, r.id, r.memory_mib), (3, 5, None));
    }

    #[test]
    fn bad_header() {
        let e = read_all("").expect_err("empty");
        expect![[r#"trace.jsonl:1: empty input: a berth trace starts with a header line like {"berth_trace":1,"synthetic":false,"source":"..."}"#]]
            .assert_eq(&e.to_string());
        let e =
            read_all("{\"berth_trace\":2,\"synthetic\":false,\"source\":\"\"}\n").expect_err("v2");
        expect!["trace.jsonl:1: field `berth_trace`: format version 2 is not supported; this build reads version 1"]
            .assert_eq(&e.to_string());
        let e = read_all("   15   599850 192180   3477    4\n").expect_err("swf");
        expect![[r#"trace.jsonl:1: not a berth trace header (invalid type: integer `15`, expected a header object (column 5)); the first line must look like {"berth_trace":1,"synthetic":false,"source":"..."}"#]]
            .assert_eq(&e.to_string());
    }

    #[test]
    fn errors_name_line_and_field() {
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"count":"4","vcpus":1,"template":"t","duration_ms":1}"#,
            expect![[
                r#"trace.jsonl:2: field `count`: invalid type: string "4", expected u32 (column 46)"#
            ]],
        );
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"cont":4,"vcpus":1,"template":"t","duration_ms":1}"#,
            expect![
                "trace.jsonl:2: unknown field `cont`, expected one of `id`, `count`, `vcpus`, `memory_mib`, `template`, `labels`, `priority`, `gang`, `duration_ms`, `expected_ms`, `outcome`, `hold_on_failure`, `requester`, `change`, `account`, `after`, `think_ms` (column 41)"
            ],
        );
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"vcpus":1,"template":"t","duration_ms":1}"#,
            expect!["trace.jsonl:2: missing field `count` (column 76)"],
        );
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"count":0,"vcpus":1,"template":"t","duration_ms":1}"#,
            expect!["trace.jsonl:2: field `count`: must be at least 1"],
        );
        check_error(
            r#"{"at_ms":-5,"kind":"cancel","request":1}"#,
            expect![
                "trace.jsonl:2: field `at_ms`: invalid value: integer `-5`, expected u64 (column 11)"
            ],
        );
        check_error(
            r#"{"at_ms":0,"kind":"reqest"}"#,
            expect![
                "trace.jsonl:2: field `kind`: unknown variant `reqest`, expected one of `request`, `host`, `cancel`, `release` (column 26)"
            ],
        );
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":1,"outcome":"flaky"}"#,
            expect![
                "trace.jsonl:2: field `outcome`: unknown variant `flaky`, expected `passed` or `failed` (column 103)"
            ],
        );
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":1,"hold_on_failure":{"owner":"x"}}"#,
            expect!["trace.jsonl:2: field `hold_on_failure`: missing field `ttl_ms` (column 117)"],
        );
        check_error(
            r#"{"at_ms":0,"kind":"request","id":1,"count":1"#,
            expect!["trace.jsonl:2: EOF while parsing an object (column 44)"],
        );
        check_error(
            "[1,2]",
            expect![[
                r#"trace.jsonl:2: invalid type: sequence, expected a record object such as {"at_ms":0,"kind":"request",...}"#
            ]],
        );
        check_error(
            "{\"at_ms\":0,\"kind\":\"host\",\"host\":\"h\",\"event\":\"added\",\"vcpus\":4,\"memory_mib\":1}",
            expect!["trace.jsonl:2: field `driver`: required when event is `added`"],
        );
        check_error(
            r#"{"at_ms":0,"kind":"host","host":"h","event":"failed","vcpus":4}"#,
            expect!["trace.jsonl:2: field `vcpus`: only allowed when event is `added`"],
        );
        check_error(
            r#"{"at_ms":0,"kind":"cancel","request":1}"#,
            expect!["trace.jsonl:2: field `request`: request 1 is not earlier in the trace"],
        );
        check_error(
            "{\"at_ms\":0,\"kind\":\"cancel\",\"request\":1}\u{0}",
            expect!["trace.jsonl:2: trailing characters (column 40)"],
        );
    }

    #[test]
    fn canonical_prefix_fast_path_checks_what_the_probe_checks() {
        let cancel = r#"{"at_ms":0,"kind":"request","id":1,"count":1,"vcpus":1,"template":"t","duration_ms":1}"#;
        check_error(
            &format!(
                "{cancel}\n{}",
                r#"{"at_ms":1,"kind":"cancel","request":1,"at_ms":2}"#
            ),
            expect!["trace.jsonl:3: duplicate field `at_ms` (column 46)"],
        );
        check_error(
            &format!(
                "{cancel}\n{}",
                r#"{"at_ms":1,"kind":"cancel","request":1,"kind":"host"}"#
            ),
            expect!["trace.jsonl:3: duplicate field `kind` (column 45)"],
        );
        check_error(
            r#"{"at_ms":01,"kind":"cancel","request":1}"#,
            expect!["trace.jsonl:2: field `at_ms`: invalid number (column 11)"],
        );
        check_error(
            r#"{"at_ms":18446744073709551616,"kind":"cancel","request":1}"#,
            expect![
                "trace.jsonl:2: field `at_ms`: invalid type: floating point `1.8446744073709552e+19`, expected u64 (column 29)"
            ],
        );
        check_error(
            r#"{"at_ms":1,"kind":"cancel","request":1} {}"#,
            expect!["trace.jsonl:2: trailing characters (column 41)"],
        );
        assert_eq!(
            canonical_prefix(br#"{"at_ms":42,"kind":"release","request":1}"#),
            Some((42, Kind::Release))
        );
        assert_eq!(canonical_prefix(br#"{"at_ms":4.5,"kind":"release"}"#), None);
        assert_eq!(canonical_prefix(br#"{"kind":"release","at_ms":4}"#), None);
    }

    #[test]
    fn errors_about_order_and_references() {
        let req = |at: u64, id: u64, after: &str| {
            format!(
                r#"{{"at_ms":{at},"kind":"request","id":{id},"count":1,"vcpus":1,"template":"t","duration_ms":1,"after":[{after}]}}"#
            )
        };
        check_error(
            &format!("{}\n{}", req(10, 1, ""), req(9, 2, "")),
            expect![
                "trace.jsonl:3: field `at_ms`: 9 is earlier than the previous record's 10; records must be in time order"
            ],
        );
        check_error(
            &format!("{}\n{}", req(10, 1, ""), req(10, 1, "")),
            expect![
                "trace.jsonl:3: field `id`: request 1 appears twice; ids must be unique in a trace"
            ],
        );
        check_error(
            &format!("{}\n{}", req(10, 1, ""), req(10, 2, "1,3")),
            expect![
                "trace.jsonl:3: field `after`: request 3 is not earlier in the trace; a request can only wait for requests before it"
            ],
        );
        check_error(
            &req(0, 1, "1"),
            expect![
                "trace.jsonl:2: field `after`: request 1 is not earlier in the trace; a request can only wait for requests before it"
            ],
        );
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut bytes = format!("{HEADER}\n").into_bytes();
        bytes.extend_from_slice(b"{\"at_ms\":0,\"kind\":\"request\",\"template\":\"\xff\"}\n");
        let e = BerthReader::new(bytes.as_slice(), "t")
            .expect("header")
            .find_map(Result::err)
            .expect("an error");
        assert!(e.is_malformed());
        assert_eq!(e.line(), Some(2));
    }

    #[test]
    fn writer_refuses_to_go_back_in_time() {
        let mut w = TraceWriter::new(Vec::new(), &TraceHeader::new(false, "")).expect("header");
        let at = |at_ms| Record {
            at_ms,
            body: RecordBody::Cancel { request: 1 },
        };
        w.write(&at(5)).expect("first");
        let e = w.write(&at(4)).expect_err("earlier");
        expect!["output:3: field `at_ms`: 4 is earlier than the previous record's 5; records must be written in time order"]
            .assert_eq(&e.to_string());
    }

    fn assert_errors_have_lines(bytes: &[u8]) -> Result<(), TestCaseError> {
        match BerthReader::new(bytes, "fuzz") {
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

    /// Lines built from the format's own pieces, so that the fuzzer gets past the first brace.
    fn record_like_line() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "at_ms",
            "kind",
            "id",
            "count",
            "vcpus",
            "memory_mib",
            "template",
            "labels",
            "priority",
            "gang",
            "duration_ms",
            "expected_ms",
            "outcome",
            "hold_on_failure",
            "requester",
            "change",
            "account",
            "after",
            "think_ms",
            "host",
            "event",
            "driver",
            "slots",
            "request",
            "owner",
            "ttl_ms",
            "x",
        ]);
        let value = prop::sample::select(vec![
            "0",
            "1",
            "2",
            "-1",
            "18446744073709551616",
            "1.5",
            "\"request\"",
            "\"host\"",
            "\"cancel\"",
            "\"release\"",
            "\"added\"",
            "\"failed\"",
            "\"sim\"",
            "\"passed\"",
            "null",
            "true",
            "[]",
            "[1]",
            "[1,2]",
            "{}",
            "{\"a\":\"b\"}",
            "{\"owner\":\"o\",\"ttl_ms\":1}",
            "\"\"",
            "\"\\u00e9\"",
        ]);
        prop::collection::vec((key, value), 0..12).prop_map(|pairs| {
            let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", fields.join(","))
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            assert_errors_have_lines(&bytes)?;
            let mut with_header = format!("{HEADER}\n").into_bytes();
            with_header.extend_from_slice(&bytes);
            assert_errors_have_lines(&with_header)?;
        }

        #[test]
        fn record_like_lines_never_panic(lines in prop::collection::vec(record_like_line(), 0..8)) {
            let text = format!("{HEADER}\n{}\n", lines.join("\n"));
            assert_errors_have_lines(text.as_bytes())?;
        }
    }
}

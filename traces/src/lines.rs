//! Line-at-a-time input shared by every reader: one reused buffer, a line counter and a length cap.

use std::io::{BufRead, Read};

use crate::TraceError;

/// The longest line any reader accepts, in bytes. Real records are a few hundred bytes; a
/// request with a very long `after` list stays far below this. Without a cap a file with no line
/// breaks would be read into memory whole.
pub(crate) const LINE_BYTES_MAX: u64 = 8 << 20;

/// Reads lines as bytes (not `String`): SWF and CSV parsing needs no UTF-8 check, and serde_json
/// checks UTF-8 itself, so invalid bytes become a malformed-line error, never an I/O error.
pub(crate) struct Lines<R> {
    reader: R,
    name: String,
    buf: Vec<u8>,
    line_no: u64,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(reader: R, name: String) -> Self {
        Lines {
            reader,
            name,
            buf: Vec::with_capacity(256),
            line_no: 0,
        }
    }

    /// Reads the next line into [`Lines::text`] without its `\n` or `\r\n`; false at the end.
    pub(crate) fn advance(&mut self) -> Result<bool, TraceError> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(LINE_BYTES_MAX + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| TraceError::io(&self.name, self.line_no, e))?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if n as u64 > LINE_BYTES_MAX {
            return Err(self.malformed(
                None,
                format!("line is longer than {LINE_BYTES_MAX} bytes; is this a trace file?"),
            ));
        }
        Ok(true)
    }

    /// The current line, without its line ending.
    pub(crate) fn text(&self) -> &[u8] {
        &self.buf
    }

    /// True when the current line holds only spaces and tabs (readers skip such lines).
    pub(crate) fn is_blank(&self) -> bool {
        self.buf.iter().all(|b| b.is_ascii_whitespace())
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The 1-based number of the current line.
    pub(crate) fn line_no(&self) -> u64 {
        self.line_no
    }

    /// An error about the current line.
    pub(crate) fn malformed(
        &self,
        field: Option<String>,
        problem: impl Into<String>,
    ) -> TraceError {
        TraceError::malformed(&self.name, self.line_no, field, problem)
    }
}

/// Turns one read into an iterator item and marks the reader done after the end or the first
/// error: records after a bad line could refer to what it failed to declare. Callers return
/// `None` without reading once `done` is set.
pub(crate) fn fused<T>(
    done: &mut bool,
    step: Result<Option<T>, TraceError>,
) -> Option<Result<T, TraceError>> {
    match step {
        Ok(Some(item)) => Some(Ok(item)),
        Ok(None) => {
            *done = true;
            None
        }
        Err(e) => {
            *done = true;
            Some(Err(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(input: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Lines::new(input, "t".into());
        let mut out = Vec::new();
        while lines.advance().expect("in-memory input") {
            out.push(lines.text().to_vec());
        }
        out
    }

    #[test]
    fn strips_line_endings_and_counts() {
        assert_eq!(
            all_lines(b"a\r\nb\n\nc"),
            vec![b"a".to_vec(), b"b".to_vec(), vec![], b"c".to_vec()]
        );
    }

    #[test]
    fn overlong_line_is_malformed_not_swallowed() {
        let input = vec![b'x'; (LINE_BYTES_MAX + 10) as usize];
        let mut lines = Lines::new(input.as_slice(), "big".into());
        let err = lines.advance().expect_err("line over the cap");
        assert!(err.is_malformed());
        assert_eq!(err.line(), Some(1));
    }
}

//! The one error type of this crate: it names the trace and, for bad input, the line and field.

use std::io;

/// Why a trace could not be read or written.
///
/// The two variants answer the first question a caller has: [`TraceError::Io`] may go away on a
/// retry (a flaky disk or network mount) or needs the file fixed on disk, while
/// [`TraceError::Malformed`] means the content is wrong and retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// Reading or writing failed below the format: the file is missing or unreadable, or a
    /// compressed stream is corrupt. `line` is the last line read before the failure, 0 if none.
    #[error("{}: {source}", location(name, *line))]
    Io {
        name: String,
        line: u64,
        #[source]
        source: io::Error,
    },
    /// The content is not a valid trace. `field` is the field at fault where known, as shown to a
    /// person: `` `count` `` in a berth trace, `8 (requested processors)` in an SWF log.
    #[error("{name}:{line}: {}{problem}", field_prefix(field.as_deref()))]
    Malformed {
        name: String,
        line: u64,
        field: Option<String>,
        problem: String,
    },
}

impl TraceError {
    /// The 1-based line the error is about, if it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            TraceError::Io { line: 0, .. } => None,
            TraceError::Io { line, .. } | TraceError::Malformed { line, .. } => Some(*line),
        }
    }

    /// True when the content is at fault (fix the trace), false for an I/O failure.
    pub fn is_malformed(&self) -> bool {
        matches!(self, TraceError::Malformed { .. })
    }

    pub(crate) fn io(name: &str, line: u64, source: io::Error) -> Self {
        TraceError::Io {
            name: name.to_owned(),
            line,
            source,
        }
    }

    pub(crate) fn malformed(
        name: &str,
        line: u64,
        field: Option<String>,
        problem: impl Into<String>,
    ) -> Self {
        TraceError::Malformed {
            name: name.to_owned(),
            line,
            field,
            problem: problem.into(),
        }
    }
}

fn location(name: &str, line: u64) -> String {
    if line == 0 {
        name.to_owned()
    } else {
        format!("{name}:{line}")
    }
}

fn field_prefix(field: Option<&str>) -> String {
    field.map(|f| format!("field {f}: ")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_and_field() {
        let e = TraceError::malformed("t.jsonl", 17, Some("`count`".into()), "must be at least 1");
        assert_eq!(
            e.to_string(),
            "t.jsonl:17: field `count`: must be at least 1"
        );
        assert_eq!(e.line(), Some(17));
        assert!(e.is_malformed());
        let e = TraceError::io("t.jsonl", 0, io::Error::other("gone"));
        assert_eq!(e.to_string(), "t.jsonl: gone");
        assert_eq!(e.line(), None);
        assert!(!e.is_malformed());
    }
}

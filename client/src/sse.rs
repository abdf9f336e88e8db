//! Server-sent events as the HTML specification reads them ("Interpreting an event stream"):
//! `data:` lines of one event join with newlines, `event:` names it, `id:` sets the last event
//! id (sent back as `Last-Event-ID` on reconnect), `retry:` sets the reconnection delay, lines
//! starting with `:` are comments, and an empty line dispatches. A field without a colon is
//! that field with an empty value; one space after the colon is not part of the value.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The event's type: `message` unless an `event:` line named it.
    pub event: String,
    pub data: String,
    /// The last event id when it was dispatched.
    pub id: Option<String>,
}

/// Reads lines and hands out events.
#[derive(Debug, Default)]
pub struct Parser {
    event: String,
    data: String,
    /// The last event id: survives dispatches (and reconnects, by the caller).
    pub last_id: Option<String>,
    /// The reconnection delay the server asked for, in ms.
    pub retry_ms: Option<u64>,
}

impl Parser {
    /// One line without its line ending; an event when it completes one.
    pub fn line(&mut self, line: &str) -> Option<Message> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Message> {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(Message {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> (Vec<Message>, Parser) {
        let mut p = Parser::default();
        let out = text.split('\n').filter_map(|l| p.line(l)).collect();
        (out, p)
    }

    #[test]
    fn data_lines_join_and_an_empty_line_dispatches() {
        let (out, _) = feed("data: a\ndata:b\ndata\n\n");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "a\nb\n");
        assert_eq!(out[0].event, "message");
    }

    #[test]
    fn names_ids_retries_and_comments() {
        let (out, p) = feed(
            ": keep-alive\nevent: lagged\nid: 41\nretry: 2500\ndata: {\"missed\":3}\n\ndata: x\n\n",
        );
        assert_eq!(out[0].event, "lagged");
        assert_eq!(out[0].id.as_deref(), Some("41"));
        assert_eq!(out[0].data, "{\"missed\":3}");
        // The name ends with its event; the id stays.
        assert_eq!(out[1].event, "message");
        assert_eq!(out[1].id.as_deref(), Some("41"));
        assert_eq!(p.retry_ms, Some(2500));
    }

    #[test]
    fn odd_lines_are_ignored_and_empty_events_not_dispatched() {
        let (out, p) =
            feed("event: x\n\nretry: soon\nid: a\0b\nfoo: bar\r\ndata:  two spaces\r\n\r\n");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, "message");
        assert_eq!(out[0].data, " two spaces");
        assert_eq!(p.retry_ms, None);
        assert_eq!(p.last_id, None);
    }
}

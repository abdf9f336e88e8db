//! A client for the daemon's HTTP API, as tests use it: JSON in and out, the status kept, and
//! the event stream (`GET /v1/events`) read as it arrives.

use std::io::{BufRead, BufReader, Read};

use serde_json::Value;

/// How long one call may wait for its whole answer: far past any answer a test asks for.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The daemon at `url`, asked with `token` (or with none, to see the refusal).
#[derive(Clone, Debug)]
pub struct Api {
    pub url: String,
    pub token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(url: &str, token: Option<&str>) -> Api {
        Api {
            url: url.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            agent: ureq::AgentBuilder::new().build(),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.url));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// The status and the JSON body (`null` when there is none) of `method path`; fails the test
    /// only when the daemon cannot be reached or does not answer within `CALL_TIMEOUT` (a
    /// daemon that stops answering fails the test, naming the call, instead of hanging it).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = self.request(method, path).timeout(CALL_TIMEOUT);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// The JSON body of `method path`, which must succeed.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// The daemon's event stream, from now on.
    pub fn events(&self) -> EventStream {
        let resp = self
            .request("GET", "/v1/events")
            .call()
            .unwrap_or_else(|e| panic!("GET /v1/events: {e}"));
        assert_eq!(
            resp.header("content-type"),
            Some("text/event-stream"),
            "GET /v1/events"
        );
        EventStream {
            reader: BufReader::new(resp.into_reader()),
            line: String::new(),
        }
    }
}

/// The daemon's server-sent events, one JSON value per state change, as they arrive; ends when
/// the daemon ends the stream. A `lagged` event (the reader fell so far behind that the daemon
/// dropped events for it) fails the test: whatever it counted would be wrong.
pub struct EventStream {
    reader: BufReader<Box<dyn Read + Send + Sync + 'static>>,
    line: String,
}

impl Iterator for EventStream {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).unwrap_or(0) == 0 {
                return None;
            }
            let line = self.line.trim_end();
            if line == "event: lagged" || line == "event:lagged" {
                let mut missed = String::new();
                let _ = self.reader.read_line(&mut missed);
                panic!("the event stream fell behind: {}", missed.trim());
            }
            if let Some(data) = line.strip_prefix("data:") {
                return Some(
                    serde_json::from_str(data.trim())
                        .unwrap_or_else(|e| panic!("an event that is not JSON ({e}): {data}")),
                );
            }
        }
    }
}

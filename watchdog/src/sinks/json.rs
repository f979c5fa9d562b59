//! One JSON object per line on stdout, flushed per record so that a pipe
//! reader sees findings as they happen.
use super::{Record, Sink};

pub struct JsonLines<W: std::io::Write> {
    out: W,
}

impl<W: std::io::Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: std::io::Write> Sink for JsonLines<W> {
    fn emit(&mut self, record: &Record) {
        match serde_json::to_string(record) {
            Ok(line) => {
                // A closed stdout (reader gone) must not kill the agent.
                let _ = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
            }
            Err(e) => tracing::error!("cannot serialize a record: {e}"),
        }
    }
}

//! Recorded observation streams: what `--record FILE` writes and `watchdog
//! replay` reads. One JSON object per line: a header, then every input the
//! engine got in order, observations and clock ticks alike, so a replay
//! reproduces the live session's findings exactly.
use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::settings::EngineConfig;
use crate::model::{Observation, Time};

/// Version of the recording format; bumped on incompatible changes.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// First line: who recorded it, where, with which engine settings.
    Recording(Header),
    /// An observation, fed to the engine.
    Observe(Observation),
    /// The engine's clock advanced to this time (periodic updates, resolutions).
    Tick(Time),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// watchdog version that recorded it.
    pub version: String,
    pub started: Time,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub engine: EngineConfig,
    /// The remediation policy of the session (a replay plans with it, in
    /// dry-run); absent in recordings made before remediation existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<crate::remediation::PolicyConfig>,
}

impl Header {
    pub fn new(engine: &EngineConfig, node: Option<String>, kernel: String) -> Self {
        Self {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION").into(),
            started: Time::now(),
            node,
            kernel,
            engine: engine.clone(),
            remediation: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot open recording {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path} at line {line}: {source}")]
    Read {
        path: PathBuf,
        line: usize,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a watchdog recording line: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path}: the first line is not a recording header (`{{\"recording\": ...}}`)")]
    NoHeader { path: PathBuf },
    #[error("{path}:{line}: a line longer than {} MiB is not a recording line", MAX_LINE >> 20)]
    LineTooLong { path: PathBuf, line: usize },
    #[error(
        "{path}: recording format {found} (written by watchdog {by}) is not supported: this watchdog ({}) reads format {FORMAT}; replay it with watchdog {by} or newer",
        env!("CARGO_PKG_VERSION")
    )]
    Format {
        path: PathBuf,
        found: u32,
        by: String,
    },
    #[error("{path}:{line}: a second recording header inside the file")]
    SecondHeader { path: PathBuf, line: usize },
}

/// Writes a recording. A write error (disk full, file removed) is logged
/// once and stops the recording; the session goes on.
pub struct Recorder {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    pub lines: u64,
}

impl Recorder {
    pub fn create(path: &Path, header: Header) -> anyhow::Result<Self> {
        // Root only: a recording names processes, paths and containers. Not
        // through a symlink; an existing file loses other users' access.
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
        let f = opts
            .open(path)
            .and_then(|f| {
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                Ok(f)
            })
            .map_err(|e| anyhow::anyhow!("--record {}: cannot create: {e}", path.display()))?;
        let mut r = Self {
            out: Some(BufWriter::new(f)),
            path: path.to_owned(),
            lines: 0,
        };
        r.write(&Line::Recording(header));
        r.flush();
        Ok(r)
    }

    pub fn write(&mut self, line: &Line) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let res = serde_json::to_writer(&mut *out, line)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        match res {
            Ok(()) => self.lines += 1,
            Err(e) => self.fail(e),
        }
    }

    /// Push buffered lines to the file (every tick and at the end).
    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        tracing::error!(
            "recording to {} stopped after {} lines: {e}",
            self.path.display(),
            self.lines
        );
        self.out = None;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A recording read back: its header and inputs in order.
pub struct Recording {
    pub header: Header,
    pub inputs: Vec<Line>,
    /// A truncated last line (the recorder was killed mid-write) is skipped.
    pub truncated_tail: bool,
}

/// The longest line a recording may have (the largest real observation is
/// a few hundred KB).
pub const MAX_LINE: usize = 16 << 20;

pub fn read(path: &Path) -> Result<Recording, RecordingError> {
    let f = File::open(path).map_err(|source| RecordingError::Open {
        path: path.to_owned(),
        source,
    })?;
    read_from(BufReader::new(f), path)
}

/// A recording from any reader (a bundle's member), all in memory; `path`
/// names it in errors. `watchdog replay` streams with [`Stream`] instead.
pub fn read_from(input: impl BufRead, path: &Path) -> Result<Recording, RecordingError> {
    let mut s = Stream::open(input, path)?;
    let mut inputs = Vec::new();
    while let Some(l) = s.next_input() {
        inputs.push(l?);
    }
    Ok(Recording {
        header: s.header.clone(),
        inputs,
        truncated_tail: s.truncated_tail,
    })
}

/// A recording read one line at a time: memory is one line (at most
/// [`MAX_LINE`]) and one look-ahead line, whatever the file's size.
pub struct Stream<R> {
    input: R,
    path: PathBuf,
    /// Lines read so far (the number of the last one).
    line: usize,
    /// The next non-empty line, read ahead: an unparsable line is a
    /// truncated tail only when no line follows it.
    ahead: Option<(usize, String)>,
    pub header: Header,
    /// A truncated last line (the recorder was killed mid-write) was skipped.
    pub truncated_tail: bool,
    buf: Vec<u8>,
}

impl<R: BufRead> Stream<R> {
    /// Reads up to the header, which must be the first non-empty line.
    pub fn open(input: R, path: &Path) -> Result<Self, RecordingError> {
        let mut s = Stream {
            input,
            path: path.to_owned(),
            line: 0,
            ahead: None,
            header: Header::new(&EngineConfig::default(), None, String::new()),
            truncated_tail: false,
            buf: Vec::new(),
        };
        let no_header = || RecordingError::NoHeader {
            path: path.to_owned(),
        };
        let (n, first) = s.raw_line()?.ok_or_else(no_header)?;
        let parsed: Line =
            serde_json::from_str(&first).map_err(|source| RecordingError::Parse {
                path: path.to_owned(),
                line: n,
                source,
            })?;
        let Line::Recording(h) = parsed else {
            return Err(no_header());
        };
        if h.format != FORMAT {
            return Err(RecordingError::Format {
                path: path.to_owned(),
                found: h.format,
                by: h.version.clone(),
            });
        }
        s.header = h;
        s.ahead = s.raw_line()?;
        Ok(s)
    }

    /// The next non-empty line and its number.
    fn raw_line(&mut self) -> Result<Option<(usize, String)>, RecordingError> {
        loop {
            self.buf.clear();
            self.line += 1;
            // At most one byte past the cap is read: a huge line costs no more.
            let n = (&mut self.input)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| RecordingError::Read {
                    path: self.path.clone(),
                    line: self.line,
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            if self.buf.len() > MAX_LINE {
                return Err(RecordingError::LineTooLong {
                    path: self.path.clone(),
                    line: self.line,
                });
            }
            let l = String::from_utf8_lossy(&self.buf);
            let l = l.trim_end_matches(['\n', '\r']);
            if !l.trim().is_empty() {
                return Ok(Some((self.line, l.to_owned())));
            }
        }
    }

    /// The next input (observation or tick), an error, or `None` at the end.
    pub fn next_input(&mut self) -> Option<Result<Line, RecordingError>> {
        let (n, l) = self.ahead.take()?;
        self.ahead = match self.raw_line() {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        match serde_json::from_str::<Line>(&l) {
            Ok(Line::Recording(_)) => Some(Err(RecordingError::SecondHeader {
                path: self.path.clone(),
                line: n,
            })),
            Ok(line) => Some(Ok(line)),
            // Only an unterminated last line counts as truncation.
            Err(e) if self.ahead.is_none() && e.is_eof() => {
                self.truncated_tail = true;
                None
            }
            Err(source) => Some(Err(RecordingError::Parse {
                path: self.path.clone(),
                line: n,
                source,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PidLimits, SystemPids};

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("watchdog-rec-{}-{name}", std::process::id()))
    }

    #[test]
    fn round_trip_and_truncated_tail() {
        let p = tmp("rt");
        {
            let mut r =
                Recorder::create(&p, Header::new(&EngineConfig::default(), None, "k".into()))
                    .unwrap();
            r.write(&Line::Observe(Observation::PidLimits(PidLimits {
                at: Time(1000),
                cgroups: vec![],
                system: SystemPids::default(),
                consumers: Default::default(),
            })));
            r.write(&Line::Tick(Time(2000)));
        }
        let rec = read(&p).unwrap();
        assert_eq!(rec.inputs.len(), 2);
        assert_eq!(rec.inputs[1], Line::Tick(Time(2000)));
        assert!(!rec.truncated_tail);
        // A recorder killed mid-line leaves a truncated tail: skipped.
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"tick\":\"2026-");
        std::fs::write(&p, text).unwrap();
        let rec = read(&p).unwrap();
        assert_eq!(rec.inputs.len(), 2);
        assert!(rec.truncated_tail);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_huge_line_is_an_error_not_an_allocation() {
        let header = serde_json::to_string(&Line::Recording(Header::new(
            &EngineConfig::default(),
            None,
            String::new(),
        )))
        .unwrap();
        // A 1 GiB line that is never materialised: only the cap is read.
        let huge = std::io::repeat(b'x').take(1 << 30);
        let input = std::io::Cursor::new(format!("{header}\n")).chain(huge);
        let e = read_from(std::io::BufReader::new(input), Path::new("big"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("big:2: a line longer than 16 MiB"), "{e}");
    }

    /// A stream holds one line at a time: from an endless recording (far
    /// more than would fit in memory) the first inputs come at once.
    #[test]
    fn a_stream_reads_lazily_from_an_endless_recording() {
        let header = serde_json::to_string(&Line::Recording(Header::new(
            &EngineConfig::default(),
            None,
            String::new(),
        )))
        .unwrap();
        let tick = b"{\"tick\":\"2026-01-01T00:00:00Z\"}\n";
        let endless = std::io::Cursor::new(format!("{header}\n")).chain(Cycle(tick, 0));
        let mut s = Stream::open(std::io::BufReader::new(endless), Path::new("endless")).unwrap();
        for _ in 0..100_000 {
            assert!(matches!(s.next_input(), Some(Ok(Line::Tick(_)))));
        }
    }

    /// `bytes` repeated forever.
    struct Cycle(&'static [u8], usize);

    impl std::io::Read for Cycle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let mut n = 0;
            while n < out.len() {
                out[n] = self.0[self.1 % self.0.len()];
                self.1 += 1;
                n += 1;
            }
            Ok(n)
        }
    }

    #[test]
    fn a_second_header_is_refused_with_its_line() {
        let h = serde_json::to_string(&Line::Recording(Header::new(
            &EngineConfig::default(),
            None,
            String::new(),
        )))
        .unwrap();
        let text = format!("{h}\n{{\"tick\":\"2026-01-01T00:00:00Z\"}}\n{h}\n");
        let e = read_from(std::io::Cursor::new(text), Path::new("two"))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "two:3: a second recording header inside the file");
    }

    /// A recording from a newer watchdog says which one it needs, even
    /// with header fields this one does not know.
    #[test]
    fn a_newer_format_names_the_version_it_needs() {
        let mut h = serde_json::to_value(Line::Recording(Header::new(
            &EngineConfig::default(),
            None,
            String::new(),
        )))
        .unwrap();
        h["recording"]["format"] = 2.into();
        h["recording"]["version"] = "0.3.0".into();
        h["recording"]["added_later"] = serde_json::json!({"x": 1});
        let text = format!("{h}\n{{\"tick\":\"2026-01-01T00:00:00Z\"}}\n");
        let e = read_from(std::io::Cursor::new(text), Path::new("new.jsonl"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with(
                "new.jsonl: recording format 2 (written by watchdog 0.3.0) is not supported"
            ) && e.ends_with("replay it with watchdog 0.3.0 or newer"),
            "{e}"
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let p = tmp("bad");
        std::fs::write(&p, "{\"tick\":\"2026-01-01T00:00:00Z\"}\n").unwrap();
        let e = read(&p).err().unwrap().to_string();
        assert!(e.contains("first line is not a recording header"), "{e}");
        let h = serde_json::to_string(&Line::Recording(Header::new(
            &EngineConfig::default(),
            None,
            String::new(),
        )))
        .unwrap();
        std::fs::write(&p, format!("{h}\n{{\"observe\":{{\"kind\":\"nope\"}}}}\n{{\"tick\":\"2026-01-01T00:00:00Z\"}}\n")).unwrap();
        let e = read(&p).err().unwrap().to_string();
        assert!(e.contains(":2: not a watchdog recording line"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}

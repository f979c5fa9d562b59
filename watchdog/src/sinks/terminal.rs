//! Human-readable output for a person running `watchdog trace` in a terminal.
use super::{Record, Sink};
use crate::model::finding::{Detail, Finding, FindingStatus, WarningStatus};
use crate::model::kubelet::SourceState;
use crate::probes::ProbeState;

pub struct Terminal<W: std::io::Write> {
    out: W,
}

impl<W: std::io::Write> Terminal<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

pub fn render_finding(f: &Finding) -> String {
    let mut s = String::new();
    let tag = match f.status {
        FindingStatus::Active => "FINDING",
        FindingStatus::Update => "UPDATE ",
        FindingStatus::Resolved => "RESOLVED",
    };
    s.push_str(&format!(
        "[{}] {tag} {:?} {}: {}\n",
        f.last_seen.hms(),
        f.confidence,
        cause_name(f),
        f.summary
    ));
    if f.status != FindingStatus::Resolved {
        match &f.detail {
            Detail::Pid(d) => render_pid(&mut s, d),
            Detail::Storage(d) => s.push_str(&super::storage::render_detail(d)),
            Detail::Systemd(d) => s.push_str(&super::systemd::render_detail(d)),
            Detail::Runtime(d) => {
                for h in &d.hung {
                    s.push_str(&format!(
                        "    hung call:     {} {} for {:.0} s\n",
                        h.call,
                        h.container_name
                            .as_deref()
                            .or(h.container_id.as_deref())
                            .unwrap_or("(all containers)"),
                        h.elapsed_ms as f64 / 1000.0
                    ));
                }
                for e in &d.kubelet_errors {
                    s.push_str(&format!("    kubelet:       {e}\n"));
                }
            }
        }
        if let Some(p) = &f.pleg {
            s.push_str(&format!("    PLEG:          {}\n", p.message));
        }
        if !f.concurrent.is_empty() {
            s.push_str(&format!(
                "    also active:   {}\n",
                f.concurrent
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for e in &f.evidence {
            s.push_str(&format!("    evidence:      [{}] {}\n", e.at.hms(), e.what));
        }
        s.push_str(&format!("    remedy:        {}\n", f.remedy.text));
    }
    s
}

fn render_pid(s: &mut String, d: &crate::model::finding::pid::PidDetail) {
    {
        if !d.processes.is_empty() {
            let p: Vec<String> = d
                .processes
                .iter()
                .map(|p| format!("{}[{}] uid {} x{}", p.comm, p.pid, p.uid, p.failures))
                .collect();
            s.push_str(&format!("    failing:       {}\n", p.join(", ")));
        }
        if let Some(pod) = &d.pod {
            s.push_str(&format!("    pod:           {}\n", pod.describe()));
        }
        if !d.top_consumers.is_empty() {
            let c: Vec<String> = d
                .top_consumers
                .iter()
                .map(|c| format!("{}[{}] {} tasks", c.comm, c.pid, c.threads))
                .collect();
            s.push_str(&format!("    top holders:   {}\n", c.join(", ")));
        }
        let mut lim = Vec::new();
        for c in &d.limits.pids_cgroups {
            lim.push(format!(
                "pids {} {}/{} ({}%)",
                c.cgroup, c.usage.current, c.usage.max, c.usage.percent
            ));
        }
        if let Some(u) = &d.limits.rlimit_nproc {
            lim.push(format!(
                "RLIMIT_NPROC {}/{} ({}%)",
                u.current, u.max, u.percent
            ));
        }
        if let Some(u) = &d.limits.threads_max {
            lim.push(format!(
                "threads-max {}/{} ({}%)",
                u.current, u.max, u.percent
            ));
        }
        if let Some(u) = &d.limits.pid_max {
            lim.push(format!("pid_max {}/{} ({}%)", u.current, u.max, u.percent));
        }
        if !lim.is_empty() {
            s.push_str(&format!("    limits:        {}\n", lim.join("; ")));
        }
    }
}

fn cause_name(f: &Finding) -> String {
    match &f.detail {
        Detail::Pid(d) => format!("pid_exhaustion/{}", d.limit.name()),
        Detail::Storage(d) => format!("storage_hang/{:?}", d.wait).to_lowercase(),
        Detail::Systemd(d) => format!("systemd_hang/{}", d.stuck.name()),
        _ => f.cause.name().to_owned(),
    }
}

impl<W: std::io::Write> Sink for Terminal<W> {
    fn emit(&mut self, record: &Record) {
        let text = match record {
            Record::Ready(r) => {
                let mut s = format!("watchdog {} on kernel {}: tracing", r.version, r.kernel);
                if let Some(h) = &r.pids_hierarchy {
                    s.push_str(&format!(" (pids cgroups at {h})"));
                }
                s.push('\n');
                for p in &r.probes {
                    let state = match p.status {
                        ProbeState::Attached => "attached",
                        ProbeState::Standby => "standby (attaches under PID pressure)",
                        ProbeState::Unavailable => "UNAVAILABLE",
                    };
                    s.push_str(&format!("  probe {:<14} {:<16} {state}", p.name, p.hook));
                    if let Some(d) = &p.detail {
                        s.push_str(&format!(" ({d})"));
                    }
                    s.push('\n');
                }
                for p in &r.probe_paths {
                    s.push_str(&format!("  {} via {}: {}\n", p.part, p.path, p.detail));
                }
                for o in &r.outputs {
                    s.push_str(&format!("  output {o}\n"));
                }
                if let Some(p) = &r.recording {
                    s.push_str(&format!("  recording engine inputs to {p}\n"));
                }
                match &r.systemd_sockets {
                    Some(v) => s.push_str(&format!(
                        "  following D-Bus/systemd connections to {}\n",
                        v.join(", ")
                    )),
                    None => s.push_str("  D-Bus/systemd connections are NOT followed\n"),
                }
                s.push_str("  Ctrl-C ends the session with a summary.\n");
                s
            }
            Record::Probe(p) => {
                let state = format!("{:?}", p.status).to_lowercase();
                format!("[{}] probe {} {state}: {}\n", p.at.hms(), p.name, p.reason)
            }
            Record::Finding(f) => render_finding(f),
            Record::Warning(w) => {
                let tag = if w.status == WarningStatus::Raised {
                    "WARNING"
                } else {
                    "CLEARED"
                };
                format!("[{}] {tag} {}\n", w.at.hms(), w.message)
            }
            Record::Replay(r) => format!(
                "replaying {} ({} inputs recorded by watchdog {} on {} kernel {}, from {}){}\n",
                r.file,
                r.inputs,
                r.recorded_by,
                r.node.as_deref().unwrap_or("an unnamed node"),
                r.kernel,
                r.started.rfc3339(),
                if r.truncated_tail {
                    "; its truncated last line was skipped"
                } else {
                    ""
                }
            ),
            Record::Pleg(p) => super::pleg_line(p),
            Record::Remediation(r) => format!(
                "[{}] REMEDY  {} {} {}: {} [{}; {}]\n",
                r.at.hms(),
                r.action.name(),
                r.status.name().to_uppercase(),
                r.finding,
                r.reason,
                r.mode.name(),
                r.budget
            ),
            Record::Source(s) => format!(
                "[{}] source  {} {}: {}: {}\n",
                s.at.hms(),
                s.source.name(),
                s.target,
                match s.state {
                    SourceState::Available => "available",
                    SourceState::Unavailable => "UNAVAILABLE",
                    SourceState::Disabled => "disabled",
                },
                s.message
            ),
            Record::Summary(s) => {
                let mut t = format!(
                    "\nsummary: {:.1} s, {} kernel events, {} findings, {} warnings; drops: kernel {}, userspace {}, undecodable {}\n",
                    s.duration_s,
                    s.events,
                    s.findings,
                    s.warnings,
                    s.drops.kernel,
                    s.drops.userspace,
                    s.drops.decode_errors
                );
                if s.active.is_empty() {
                    t.push_str("no active findings\n");
                } else {
                    t.push_str("active findings:\n");
                    for f in &s.active {
                        t.push_str(&render_finding(f));
                    }
                }
                t
            }
        };
        let text = escape_controls(&text);
        let _ = self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush());
    }
}

/// Names chosen by processes and mounts (comm, paths, cgroups) reach the
/// text: control characters other than the line breaks (an escape sequence
/// could repaint or retitle the operator's terminal) and bidirectional
/// overrides (which reorder what is shown) are printed escaped. JSON keeps
/// them exact.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod escape_tests {
    use super::escape_controls;

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert_eq!(escape_controls("plain\nlines"), "plain\nlines");
        assert_eq!(
            escape_controls("comm \u{1b}]0;pwned\u{7}\u{1b}[2J x"),
            "comm \\x1b]0;pwned\\x07\\x1b[2J x"
        );
        assert_eq!(escape_controls("a\tb\rc"), "a\\x09b\\x0dc");
        assert_eq!(
            escape_controls("/mnt/\u{202e}txt.exe"),
            "/mnt/\\u{202e}txt.exe"
        );
        assert_eq!(escape_controls("caf\u{e9} \u{9b}"), "caf\u{e9} \\x9b");
    }
}

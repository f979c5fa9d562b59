//! The live status line of `watchdog trace` on a terminal: one line at the
//! bottom, redrawn about once a second, saying how the session goes:
//! elapsed time, probes attached, kubelet's PLEG, the limits closest to
//! full, tasks blocked, D-Bus requests waiting.
//!
//! [`render_status`] is pure (a [`StatusSnapshot`] and a width in, one line
//! out); the agent assembles the snapshot and the
//! [`Terminal`](super::terminal::Terminal) sink draws it, only on a terminal.
//!
//! A part the session does not follow (`--no-pleg`, `--no-storage`, D-Bus
//! requests not followed) is left out; a part it follows but cannot tell
//! yet reads `n/a`.
use std::time::Duration;

use unicode_width::UnicodeWidthChar;

use crate::model::PidLimits;
use crate::model::finding::pleg::PlegStatus;

/// Requests waiting less than this are not shown (most are answered in
/// milliseconds).
pub const DBUS_SHOWN_AFTER_MS: u64 = 1_000;

/// What the status line shows, as of one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusSnapshot {
    /// Since the session started.
    pub elapsed: Duration,
    /// Probes attached, out of those meant to be attached now (a probe on
    /// standby, such as the fork probe in `auto`, counts in neither).
    pub probes_attached: usize,
    pub probes_wanted: usize,
    /// None: PLEG is not followed in this session.
    pub pleg: Option<PlegLine>,
    /// The limits closest to full, fullest first (empty: none sampled).
    pub limits: Vec<LimitFill>,
    /// None: the storage probes are off.
    pub blocked: Option<Blocked>,
    /// None: D-Bus requests are not followed.
    pub dbus: Option<DbusWaiting>,
    /// `watchdog bundle`: what the bundle holds so far (None: not a bundle
    /// session).
    pub bundle: Option<BundleProgress>,
}

/// A `watchdog bundle` session so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BundleProgress {
    /// Finding records (every status).
    pub findings: usize,
    /// Bytes recorded so far: the session's records and its recording.
    pub bytes: u64,
}

/// kubelet's PLEG as the engine estimates it now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlegLine {
    pub status: PlegStatus,
    /// Seconds since the last relist (None: unknown).
    pub stale_s: Option<f64>,
    /// Predicted seconds until kubelet reports PLEG unhealthy.
    pub until_unhealthy_s: Option<f64>,
}

impl PlegLine {
    pub fn of(e: &crate::model::finding::pleg::PlegEstimate) -> Self {
        Self {
            status: e.status,
            stale_s: e.seconds_since_relist,
            until_unhealthy_s: e.predicted_unhealthy_in_s,
        }
    }
}

/// One task limit and how full it is.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitFill {
    /// `pids` (a pids cgroup), `threads-max` or `pid_max`.
    pub limit: &'static str,
    /// The cgroup, for `pids`.
    pub cgroup: Option<String>,
    pub current: u64,
    pub max: u64,
}

impl LimitFill {
    pub fn percent(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.current as f64 * 100.0 / self.max as f64
        }
    }
}

/// Tasks blocked past the hang threshold in the last storage sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blocked {
    pub tasks: usize,
    /// Of which in uninterruptible sleep (D).
    pub in_d: usize,
}

impl Blocked {
    pub fn of(b: &crate::model::BlockedTasks) -> Self {
        Self {
            tasks: b.tasks.len(),
            in_d: b.tasks.iter().filter(|t| t.state == "D").count(),
        }
    }
}

/// D-Bus/systemd requests without a reply (for at least
/// [`DBUS_SHOWN_AFTER_MS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DbusWaiting {
    pub requests: usize,
    /// How long the oldest has waited.
    pub longest_s: f64,
}

/// The limits of a sample closest to full, fullest first: every one at
/// least `warn_percent` full (at most 2), else the fullest alone. Limits of
/// the same level as the engine's warnings: each pids cgroup with a
/// `pids.max`, `kernel.threads-max` and `kernel.pid_max`.
pub fn fullest_limits(l: &PidLimits, warn_percent: f64) -> Vec<LimitFill> {
    let mut v: Vec<LimitFill> = l
        .cgroups
        .iter()
        .filter_map(|c| {
            c.max.filter(|m| *m > 0).map(|max| LimitFill {
                limit: "pids",
                cgroup: Some(c.path.clone()),
                current: c.current,
                max,
            })
        })
        .collect();
    let s = l.system;
    for (limit, max) in [("threads-max", s.threads_max), ("pid_max", s.pid_max)] {
        if max > 0 {
            v.push(LimitFill {
                limit,
                cgroup: None,
                current: s.threads,
                max,
            });
        }
    }
    // Fullest first; equal ones by name, so the line does not flicker.
    v.sort_by(|a, b| {
        b.percent()
            .total_cmp(&a.percent())
            .then_with(|| a.cgroup.cmp(&b.cgroup))
            .then_with(|| a.limit.cmp(b.limit))
    });
    let near = v.iter().filter(|f| f.percent() >= warn_percent).count();
    v.truncate(near.clamp(1, 2));
    v
}

/// The status line for a terminal `width` columns wide: never wider (cut at
/// a part's end, with "…", when even the shortest form does not fit; never
/// inside a character).
pub fn render_status(s: &StatusSnapshot, width: usize) -> String {
    // The full form, then shorter names, then fewer details.
    let mut parts = Vec::new();
    for detail in [Detail::Full, Detail::Short, Detail::Least] {
        parts = render_parts(s, detail);
        let line = parts.join(SEP);
        if columns(&line) <= width {
            return line;
        }
    }
    fit(&parts, width)
}

const SEP: &str = " · ";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Detail {
    Full,
    /// Short cgroup names, one limit, no counts, fewer words.
    Short,
    /// No cgroup names, no prediction, no "watchdog", probes only when
    /// some are missing.
    Least,
}

fn render_parts(s: &StatusSnapshot, detail: Detail) -> Vec<String> {
    let mut v = Vec::new();
    if detail == Detail::Least {
        v.push(elapsed(s.elapsed));
    } else {
        v.push(format!("watchdog {}", elapsed(s.elapsed)));
    }
    // Right after the time: a narrow terminal keeps it.
    if let Some(b) = s.bundle {
        v.push(match detail {
            Detail::Full => format!(
                "bundle: {}, {} recorded",
                count(b.findings, "finding"),
                bytes(b.bytes)
            ),
            _ => format!("bundle {}f {}", b.findings, bytes(b.bytes)),
        });
    }
    if detail != Detail::Least || s.probes_attached != s.probes_wanted {
        v.push(format!("probes {}/{}", s.probes_attached, s.probes_wanted));
    }
    if let Some(p) = &s.pleg {
        v.push(pleg(p, detail));
    }
    v.push(limits(&s.limits, detail));
    if let Some(b) = s.blocked {
        let d = if b.in_d == 0 {
            String::new()
        } else if b.in_d == b.tasks {
            " (D)".into()
        } else {
            format!(" ({} in D)", b.in_d)
        };
        v.push(if detail == Detail::Full {
            format!("{} blocked{d}", count(b.tasks, "task"))
        } else {
            format!("blocked {}{d}", b.tasks)
        });
    }
    if let Some(d) = s.dbus {
        let longest = match d.requests {
            0 => String::new(),
            1 => format!(" {}", secs(d.longest_s)),
            _ if detail == Detail::Full => format!(", longest {}", secs(d.longest_s)),
            _ => format!(" {}", secs(d.longest_s)),
        };
        v.push(if detail == Detail::Full {
            format!("{} waiting{longest}", count(d.requests, "D-Bus request"))
        } else {
            format!("D-Bus {} waiting{longest}", d.requests)
        });
    }
    v
}

fn pleg(p: &PlegLine, detail: Detail) -> String {
    let stale = p
        .stale_s
        .map(|s| format!(" ~{}", secs(s)))
        .unwrap_or_default();
    match p.status {
        PlegStatus::Unknown => "PLEG n/a".into(),
        PlegStatus::Healthy => format!("PLEG{stale}"),
        PlegStatus::Stalled => match p.until_unhealthy_s {
            Some(u) if detail == Detail::Full => {
                format!("PLEG stalled{stale} (unhealthy in ~{})", secs(u))
            }
            _ => format!("PLEG stalled{stale}"),
        },
        PlegStatus::Unhealthy => format!("PLEG UNHEALTHY{stale}"),
    }
}

fn limits(l: &[LimitFill], detail: Detail) -> String {
    if l.is_empty() {
        return "limits n/a".into();
    }
    let shown = if detail == Detail::Full { l.len() } else { 1 };
    let mut out = String::new();
    for (i, f) in l.iter().take(shown).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        // Rounded down: 100% only when full.
        let pct = f.percent().floor() as u64;
        out.push_str(&format!("{} {pct}%", f.limit));
        match (&f.cgroup, detail) {
            (Some(c), Detail::Full) => out.push_str(&format!(" {}", short_cgroup(c, 24))),
            (Some(c), Detail::Short) => out.push_str(&format!(" {}", short_cgroup(c, 12))),
            _ => {}
        }
        if detail == Detail::Full {
            out.push_str(&format!(" ({}/{})", f.current, f.max));
        }
    }
    out
}

/// `0:42`, `12:05`, `1:02:03`.
fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `512 B`, `3.4 KiB`, `12 MiB`.
fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if f < KIB * KIB {
        let k = f / KIB;
        if k < 10.0 {
            format!("{k:.1} KiB")
        } else {
            format!("{k:.0} KiB")
        }
    } else {
        let m = f / (KIB * KIB);
        if m < 10.0 {
            format!("{m:.1} MiB")
        } else {
            format!("{m:.0} MiB")
        }
    }
}

/// `0.8 s` below 10 s, else whole seconds.
fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{:.1} s", s.max(0.0))
    } else {
        format!("{:.0} s", s)
    }
}

/// `n` and the noun, plural unless `n` is 1.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A cgroup path in at most `max` columns: whole when it fits (without the
/// leading `/`), else its last part after `…/`, cut with `…`. Control
/// characters are shown escaped, as in the records.
fn short_cgroup(path: &str, max: usize) -> String {
    let clean = super::terminal::escape_controls(path).replace('\n', "\\x0a");
    let p = clean.trim_start_matches('/');
    if p.is_empty() {
        return "/".into();
    }
    if columns(p) <= max {
        return p.to_owned();
    }
    let leaf = p.rsplit('/').next().unwrap_or(p);
    let leaf = format!("…/{leaf}");
    cut(&leaf, max)
}

/// Width in terminal columns (wide characters take two).
fn columns(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` in at most `max` columns: whole, or cut with a final `…`.
fn cut(s: &str, max: usize) -> String {
    if columns(s) <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw > max - 1 {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// As many parts as fit whole, then ` …` for the rest; a first part that
/// does not fit alone is cut.
fn fit(parts: &[String], width: usize) -> String {
    let mut line = String::new();
    for (i, p) in parts.iter().enumerate() {
        let candidate = if i == 0 {
            p.clone()
        } else {
            format!("{line}{SEP}{p}")
        };
        // Room for " …" unless this is the last part.
        let need = columns(&candidate) + if i + 1 < parts.len() { 2 } else { 0 };
        if need <= width {
            line = candidate;
        } else if i == 0 {
            return cut(p, width);
        } else {
            line.push_str(" …");
            return line;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PidsCgroupState, SystemPids, Time};

    fn incident() -> StatusSnapshot {
        StatusSnapshot {
            elapsed: Duration::from_secs(42),
            probes_attached: 7,
            probes_wanted: 7,
            pleg: Some(PlegLine {
                status: PlegStatus::Healthy,
                stale_s: Some(0.8),
                until_unhealthy_s: None,
            }),
            limits: vec![LimitFill {
                limit: "pids",
                cgroup: Some("/kubepods/burstable/pod5d3c1a9e-8b0e-4c3a-9f1e-1234567890ab".into()),
                current: 970,
                max: 1000,
            }],
            blocked: Some(Blocked { tasks: 2, in_d: 2 }),
            dbus: Some(DbusWaiting {
                requests: 1,
                longest_s: 3.12,
            }),
            bundle: None,
        }
    }

    fn quiet() -> StatusSnapshot {
        StatusSnapshot {
            elapsed: Duration::from_secs(3),
            probes_attached: 6,
            probes_wanted: 6,
            pleg: Some(PlegLine {
                status: PlegStatus::Unknown,
                stale_s: None,
                until_unhealthy_s: None,
            }),
            limits: vec![LimitFill {
                limit: "threads-max",
                cgroup: None,
                current: 1200,
                max: 126_000,
            }],
            blocked: Some(Blocked::default()),
            dbus: Some(DbusWaiting::default()),
            bundle: None,
        }
    }

    #[test]
    fn an_incident_on_a_wide_terminal_shows_everything() {
        assert_eq!(
            render_status(&incident(), 200),
            "watchdog 0:42 · probes 7/7 · PLEG ~0.8 s · pids 97% …/pod5d3c1a9e-8b0e-4c3a… (970/1000) \
             · 2 tasks blocked (D) · 1 D-Bus request waiting 3.1 s"
        );
    }

    #[test]
    fn a_quiet_node_says_zero_and_not_applicable() {
        assert_eq!(
            render_status(&quiet(), 200),
            "watchdog 0:03 · probes 6/6 · PLEG n/a · threads-max 0% (1200/126000) \
             · 0 tasks blocked · 0 D-Bus requests waiting"
        );
    }

    #[test]
    fn parts_not_followed_are_left_out() {
        let s = StatusSnapshot {
            elapsed: Duration::from_secs(3725),
            probes_attached: 1,
            probes_wanted: 2,
            pleg: None,
            limits: Vec::new(),
            blocked: None,
            dbus: None,
            bundle: None,
        };
        assert_eq!(
            render_status(&s, 80),
            "watchdog 1:02:05 · probes 1/2 · limits n/a"
        );
    }

    #[test]
    fn one_and_many_have_their_grammar() {
        let mut s = quiet();
        s.pleg = None;
        s.limits.clear();
        s.blocked = Some(Blocked { tasks: 1, in_d: 0 });
        s.dbus = Some(DbusWaiting {
            requests: 3,
            longest_s: 12.4,
        });
        assert_eq!(
            render_status(&s, 200),
            "watchdog 0:03 · probes 6/6 · limits n/a · 1 task blocked · 3 D-Bus requests waiting, longest 12 s"
        );
        s.blocked = Some(Blocked { tasks: 3, in_d: 2 });
        s.dbus = Some(DbusWaiting {
            requests: 1,
            longest_s: 61.0,
        });
        assert!(
            render_status(&s, 200)
                .ends_with("· 3 tasks blocked (2 in D) · 1 D-Bus request waiting 61 s"),
            "{}",
            render_status(&s, 200)
        );
        s.blocked = Some(Blocked { tasks: 1, in_d: 1 });
        assert!(render_status(&s, 200).contains("· 1 task blocked (D) ·"));
    }

    #[test]
    fn pleg_stalled_and_unhealthy_say_so() {
        let mut s = quiet();
        s.pleg = Some(PlegLine {
            status: PlegStatus::Stalled,
            stale_s: Some(47.2),
            until_unhealthy_s: Some(132.8),
        });
        assert!(
            render_status(&s, 200).contains("· PLEG stalled ~47 s (unhealthy in ~133 s) ·"),
            "{}",
            render_status(&s, 200)
        );
        s.pleg = Some(PlegLine {
            status: PlegStatus::Unhealthy,
            stale_s: Some(200.0),
            until_unhealthy_s: Some(0.0),
        });
        assert!(render_status(&s, 200).contains("· PLEG UNHEALTHY ~200 s ·"));
    }

    #[test]
    fn narrower_terminals_get_shorter_forms_then_fewer_parts() {
        let s = incident();
        // Short names, no counts, fewer words.
        assert_eq!(
            render_status(&s, 110),
            "watchdog 0:42 · probes 7/7 · PLEG ~0.8 s · pids 97% …/pod5d3c1a… \
             · blocked 2 (D) · D-Bus 1 waiting 3.1 s"
        );
        // 80 columns (79 drawn): no cgroup name, the probes only when some
        // are missing, every other part still there.
        assert_eq!(
            render_status(&s, 79),
            "0:42 · PLEG ~0.8 s · pids 97% · blocked 2 (D) · D-Bus 1 waiting 3.1 s"
        );
        let mut missing = s.clone();
        missing.probes_attached = 5;
        assert_eq!(
            render_status(&missing, 79),
            "0:42 · probes 5/7 · PLEG ~0.8 s · pids 97% · blocked 2 (D) …"
        );
        // Then whole parts dropped, with a mark.
        assert_eq!(
            render_status(&s, 60),
            "0:42 · PLEG ~0.8 s · pids 97% · blocked 2 (D) …"
        );
        assert_eq!(render_status(&s, 30), "0:42 · PLEG ~0.8 s …");
        assert_eq!(render_status(&s, 5), "0:42");
        assert_eq!(render_status(&s, 3), "0:…");
        assert_eq!(render_status(&s, 1), "…");
        assert_eq!(render_status(&s, 0), "");
        for w in 0..160 {
            let l = render_status(&s, w);
            assert!(columns(&l) <= w, "{w}: {l:?} is {} wide", columns(&l));
            assert!(l.chars().count() <= w, "{w}: {l:?}");
        }
    }

    /// `watchdog bundle`: its progress right after the time, in every
    /// form, and never wider than the terminal.
    #[test]
    fn a_bundle_session_shows_its_findings_and_bytes() {
        let mut s = incident();
        s.bundle = Some(BundleProgress {
            findings: 3,
            bytes: 1_234_567,
        });
        assert_eq!(
            render_status(&s, 220),
            "watchdog 0:42 · bundle: 3 findings, 1.2 MiB recorded · probes 7/7 · PLEG ~0.8 s \
             · pids 97% …/pod5d3c1a9e-8b0e-4c3a… (970/1000) · 2 tasks blocked (D) · 1 D-Bus request waiting 3.1 s"
        );
        assert_eq!(
            render_status(&s, 79),
            "0:42 · bundle 3f 1.2 MiB · PLEG ~0.8 s · pids 97% · blocked 2 (D) …"
        );
        assert_eq!(render_status(&s, 30), "0:42 · bundle 3f 1.2 MiB …");
        for w in 0..240 {
            let l = render_status(&s, w);
            assert!(columns(&l) <= w, "{w}: {l:?} is {} wide", columns(&l));
        }
        s.bundle = Some(BundleProgress {
            findings: 1,
            bytes: 900,
        });
        assert!(
            render_status(&s, 220)
                .starts_with("watchdog 0:42 · bundle: 1 finding, 900 B recorded ·")
        );
        assert_eq!(bytes(10 * 1024), "10 KiB");
        assert_eq!(bytes(5 * 1024 + 512), "5.5 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
    }

    #[test]
    fn widths_count_columns_not_bytes_and_never_split_a_character() {
        let mut s = incident();
        s.limits[0].cgroup = Some("/system.slice/日本語のサービス名.service".into());
        s.blocked = None;
        s.dbus = None;
        for w in 0..120 {
            let l = render_status(&s, w);
            // A String is valid UTF-8 by construction: no character was split.
            assert!(columns(&l) <= w, "{w}: {l:?} is {} columns", columns(&l));
        }
        // Each of the 9 wide characters takes two columns: 24 in all.
        let full = render_status(&s, 120);
        assert!(
            full.contains("pids 97% …/日本語のサービス名.se… (970/1000)"),
            "{full}"
        );
        // Wide characters count two columns each.
        assert_eq!(cut("日本語", 5), "日本…");
        assert_eq!(cut("日本語", 4), "日…");
        assert_eq!(cut("日本語", 6), "日本語");
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        let mut s = incident();
        s.limits[0].cgroup = Some("/x\u{1b}[2J\ny".into());
        let l = render_status(&s, 200);
        assert!(l.contains("pids 97% x\\x1b[2J\\x0ay (970/1000)"), "{l}");
        assert!(!l.chars().any(char::is_control), "{l:?}");
    }

    #[test]
    fn fullest_limits_are_the_near_ones_or_the_fullest() {
        let cg = |path: &str, current, max| PidsCgroupState {
            path: path.into(),
            current,
            max,
            events_max: 0,
        };
        let mut l = PidLimits {
            at: Time::from_millis(0),
            cgroups: vec![
                cg("/a", 10, Some(100)),
                cg("/b", 50, None),
                cg("/c", 30, Some(100)),
            ],
            system: SystemPids {
                threads: 500,
                threads_max: 10_000,
                pid_max: 4_194_304,
            },
            consumers: Default::default(),
        };
        let f = fullest_limits(&l, 90.0);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].cgroup.as_deref(), Some("/c"));
        l.cgroups.push(cg("/d", 95, Some(100)));
        l.cgroups.push(cg("/e", 100, Some(100)));
        l.cgroups.push(cg("/f", 91, Some(100)));
        let f = fullest_limits(&l, 90.0);
        let names: Vec<_> = f.iter().map(|f| f.cgroup.as_deref()).collect();
        assert_eq!(names, [Some("/e"), Some("/d")]);
        l.cgroups.clear();
        let f = fullest_limits(&l, 90.0);
        assert_eq!(f[0].limit, "threads-max");
        l.system = SystemPids::default();
        assert!(fullest_limits(&l, 90.0).is_empty());
    }
}

//! Kernel-evidence bundles: one tar.gz a user attaches to a bug report.
//!
//! `manifest.json` comes first (schema, versions, node, boot id, kernel,
//! trigger, time window, and for every file: where it came from, size,
//! sha256, truncated or not, the error if it could not be read, values
//! redacted), then the session's records (`findings.jsonl`), its engine
//! inputs (`recording.jsonl`: `watchdog replay BUNDLE` diagnoses it), the
//! kernel's state (`kernel/`), every task the findings name and every task
//! in D state (`tasks/<pid>/`), the mounts of storage findings
//! (`storage/`) and the pids cgroups of PID findings (`pids/`).
//!
//! Every read goes through the never-hang `/proc` reader (procfs, sysfs,
//! cgroupfs; never a stat, open or listing of a user mount), capped; a read
//! that fails is listed in the manifest with its error and the bundle is
//! still written. Never collected: environments, the service-account token;
//! command lines are redacted ([`redact`]).
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::context::procfs::ProcReader;
use crate::model::Time;
use crate::paths;

pub mod auto;
pub mod optin;
pub mod redact;

/// Schema of `manifest.json`.
pub const SCHEMA: u32 = 1;
/// Cap on one file read from /proc or /sys.
const READ_CAP: u64 = 256 * 1024;
/// D-state tasks captured besides the ones the findings name.
const D_TASKS_CAP: usize = 64;
/// Tasks captured in all.
pub const TASKS_CAP: usize = 256;
/// The largest member a bundle reader accepts (a recording).
pub const MEMBER_CAP: u64 = 512 << 20;

/// One file of the bundle, as the manifest lists it.
#[derive(Clone, Debug, Serialize)]
pub struct FileEntry {
    pub name: String,
    /// Where it came from (a path on the node, or `session`).
    pub source: String,
    pub size: u64,
    pub sha256: String,
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub redacted: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub schema: u32,
    pub watchdog: &'static str,
    pub node: String,
    pub boot_id: String,
    pub kernel: String,
    /// `manual` (`watchdog bundle`).
    pub trigger: String,
    pub window: Window,
    pub findings: usize,
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub start: Time,
    pub end: Time,
}

/// The files of a bundle being assembled (in memory: a bundle is small, a
/// few MB at most, and the archive is written in one go at the end).
pub struct Builder {
    reader: ProcReader,
    files: Vec<(FileEntry, Vec<u8>)>,
}

impl Builder {
    pub fn new(root: &Path) -> Self {
        Self {
            reader: ProcReader::new(root),
            files: Vec::new(),
        }
    }

    /// Adds bytes produced by the session.
    pub fn add(&mut self, name: &str, source: &str, data: Vec<u8>, redacted: usize) {
        self.files.push((
            FileEntry {
                name: name.into(),
                source: source.into(),
                size: data.len() as u64,
                sha256: hex(&Sha256::digest(&data)),
                truncated: false,
                error: None,
                redacted,
            },
            data,
        ));
    }

    /// Adds a file read from the node (procfs, sysfs, cgroupfs only),
    /// capped; a failed read is listed with its error.
    pub fn copy(&mut self, name: &str, path: &Path) {
        match self.reader.read_bytes(path, READ_CAP) {
            Ok(data) => {
                let truncated = data.len() as u64 >= READ_CAP;
                self.add(name, &path.display().to_string(), data, 0);
                if let Some((e, _)) = self.files.last_mut() {
                    e.truncated = truncated;
                }
            }
            Err(e) => self.failed(name, &path.display().to_string(), e.to_string()),
        }
    }

    pub fn failed(&mut self, name: &str, source: &str, error: String) {
        self.files.push((
            FileEntry {
                name: name.into(),
                source: source.into(),
                size: 0,
                sha256: String::new(),
                truncated: false,
                error: Some(error),
                redacted: 0,
            },
            Vec::new(),
        ));
    }

    /// `pleg/`: the session's PLEG records (readings, relist timings, hung
    /// calls), and kubelet's and the runtimes' journal entries from five
    /// minutes before `since` on (redacted; at most [`JOURNAL_LINES`]).
    pub fn pleg(&mut self, records: Vec<u8>, journal_dirs: &[PathBuf], since: Time) {
        if !records.is_empty() {
            self.add("pleg/records.jsonl", "session", records, 0);
        }
        if journal_dirs.is_empty() {
            return;
        }
        let source = format!(
            "journal {}",
            journal_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let since_usec = since.0.saturating_sub(300_000).saturating_mul(1000);
        match crate::sources::kubelet::journal::history_lines(
            journal_dirs,
            Some(since_usec),
            JOURNAL_LINES,
        ) {
            Ok((lines, _unreadable)) => {
                let truncated = lines.len() >= JOURNAL_LINES;
                let mut text = String::new();
                let mut redacted = 0;
                for l in &lines {
                    let (l, n) = redact::log_line(l);
                    redacted += n;
                    text.push_str(&l);
                    text.push('\n');
                }
                self.add(
                    "pleg/kubelet-journal.txt",
                    &source,
                    text.into_bytes(),
                    redacted,
                );
                if let Some((e, _)) = self.files.last_mut() {
                    e.truncated = truncated;
                }
            }
            Err(e) => self.failed("pleg/kubelet-journal.txt", &source, e),
        }
    }

    /// `systemd/`: the session's systemd findings, the agent's latest D-Bus
    /// probe results (`Ping` of systemd, `GetId` of the bus: answered in how
    /// long, failed, or no reply within the timeout), and a sock_diag
    /// snapshot of the followed sockets (systemd's private socket, the bus):
    /// each listener with its accept queue, and each accepted connection
    /// with the bytes waiting for the server to read (a hung systemd leaves
    /// them there). Paths are compared as strings, never resolved.
    pub fn systemd(&mut self, records: Vec<u8>, probes: &Tail, sockets: &[String]) {
        if !records.is_empty() {
            self.add("systemd/findings.jsonl", "session", records, 0);
        }
        if !probes.is_empty() {
            self.add("systemd/probes.jsonl", "session", probes.bytes(), 0);
            if let Some((e, _)) = self.files.last_mut() {
                e.truncated = probes.dropped > 0;
            }
        }
        if sockets.is_empty() {
            return;
        }
        match crate::dbus::sock_diag::dump() {
            Ok(all) => {
                let text = socket_report(&all, sockets);
                self.add("systemd/sockets.txt", "sock_diag", text.into_bytes(), 0);
            }
            Err(e) => self.failed("systemd/sockets.txt", "sock_diag", e.to_string()),
        }
    }

    /// The kernel's state: release, version, command line (redacted),
    /// taint, the hung-task and PID sysctls, load, and the kernel log since
    /// `since_uptime_s` (seconds after boot).
    pub fn kernel(&mut self, since_uptime_s: f64) {
        let r = self.reader.clone();
        self.copy("kernel/osrelease", &r.rooted(paths::OSRELEASE));
        self.copy("kernel/version", &r.proc_path("version"));
        match r.read_capped(&r.proc_path("cmdline"), READ_CAP) {
            Ok(t) => {
                let (line, n) = redact::kernel_cmdline(&t);
                self.add(
                    "kernel/cmdline",
                    &r.proc_path("cmdline").display().to_string(),
                    (line + "\n").into_bytes(),
                    n,
                );
            }
            Err(e) => self.failed(
                "kernel/cmdline",
                &r.proc_path("cmdline").display().to_string(),
                e.to_string(),
            ),
        }
        for (name, rel) in [
            ("kernel/tainted", "sys/kernel/tainted"),
            (
                "kernel/hung_task_timeout_secs",
                "sys/kernel/hung_task_timeout_secs",
            ),
            ("kernel/threads-max", "sys/kernel/threads-max"),
            ("kernel/pid_max", "sys/kernel/pid_max"),
            ("kernel/loadavg", "loadavg"),
            ("kernel/uptime", "uptime"),
        ] {
            self.copy(name, &r.proc_path(rel));
        }
        match kmsg_since(since_uptime_s) {
            Ok((text, truncated)) => {
                self.add("kernel/kmsg.txt", "/dev/kmsg", text.into_bytes(), 0);
                if let Some((e, _)) = self.files.last_mut() {
                    e.truncated = truncated;
                }
            }
            Err(e) => self.failed("kernel/kmsg.txt", "/dev/kmsg", e),
        }
    }

    /// One task: status, wchan, syscall, kernel stack, cgroup, limits, comm
    /// and its command line (redacted; not read while a thread of it is in
    /// D state). Never its environment.
    pub fn task(&mut self, pid: u32) {
        let r = self.reader.clone();
        for f in [
            "status", "wchan", "syscall", "stack", "cgroup", "limits", "comm", "stat",
        ] {
            self.copy(&format!("tasks/{pid}/{f}"), &r.pid_file(pid, f));
        }
        let path = r.pid_file(pid, "cmdline");
        if r.any_task_in_d(pid) {
            // Reading it takes the process's mmap lock, which a task blocked
            // in a fault may hold: never wait on the fault being collected.
            self.failed(
                &format!("tasks/{pid}/cmdline"),
                &path.display().to_string(),
                "not read: a thread of the process is in uninterruptible sleep (reading the command line takes its mmap lock)".into(),
            );
            return;
        }
        match r.read_bytes(&path, READ_CAP) {
            Ok(raw) => {
                let (line, n) = redact::cmdline(&raw);
                self.add(
                    &format!("tasks/{pid}/cmdline"),
                    &path.display().to_string(),
                    (line + "\n").into_bytes(),
                    n,
                );
            }
            Err(e) => self.failed(
                &format!("tasks/{pid}/cmdline"),
                &path.display().to_string(),
                e.to_string(),
            ),
        }
    }

    /// Every task now in D state (the kernel's view), besides `named`.
    pub fn d_tasks(&self, named: &BTreeSet<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        for pid in self.reader.pids() {
            if out.len() >= D_TASKS_CAP {
                break;
            }
            if named.contains(&pid) {
                continue;
            }
            if self.reader.any_task_in_d(pid) {
                out.push(pid);
            }
        }
        out
    }

    /// The mountinfo lines of `mount_points` (never a stat of the mount).
    pub fn mounts(&mut self, mount_points: &BTreeSet<String>) {
        // The host's mount table (PID 1's under a host root; ours if that
        // cannot be read), where the findings' mount points are named.
        let host = self.reader.rooted(paths::host::mountinfo());
        let own = self.reader.rooted(paths::MOUNTINFO);
        let (path, read) = match self.reader.read_capped(&host, 4 * READ_CAP) {
            Ok(t) => (host, Ok(t)),
            Err(_) => {
                let r = self.reader.read_capped(&own, 4 * READ_CAP);
                (own, r)
            }
        };
        match read {
            Ok(text) => {
                let lines: String = text
                    .lines()
                    .filter(|l| {
                        l.split(' ').nth(4).is_some_and(|mp| {
                            mount_points.contains(&crate::context::mounts::unescape(mp))
                        })
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                self.add(
                    "storage/mountinfo",
                    &path.display().to_string(),
                    lines.into_bytes(),
                    0,
                );
            }
            Err(e) => self.failed(
                "storage/mountinfo",
                &path.display().to_string(),
                e.to_string(),
            ),
        }
    }

    /// A pids cgroup's files (path as the findings name it).
    pub fn pids_cgroup(&mut self, cgroup: &str) {
        let Some(h) = crate::context::cgroup::discover(&self.reader) else {
            self.failed("pids/", cgroup, "no pids hierarchy".into());
            return;
        };
        let rel = cgroup.trim_start_matches('/');
        if rel.split('/').any(|c| c == ".." || c == ".") {
            return;
        }
        let dir = h.dir(cgroup);
        let name = if rel.is_empty() {
            "root".into()
        } else {
            rel.replace('/', "_")
        };
        for f in ["pids.max", "pids.current", "pids.events", "cgroup.procs"] {
            let reader = self.reader.with_cgroupfs(&h.mount);
            match reader.read_bytes(&dir.join(f), READ_CAP) {
                Ok(data) => self.add(
                    &format!("pids/{name}/{f}"),
                    &dir.join(f).display().to_string(),
                    data,
                    0,
                ),
                Err(e) => self.failed(
                    &format!("pids/{name}/{f}"),
                    &dir.join(f).display().to_string(),
                    e.to_string(),
                ),
            }
        }
    }

    /// Writes the archive (manifest first) to `out`, readable by root only.
    pub fn write(self, out: &Path, mut manifest: Manifest) -> Result<u64, String> {
        manifest.files = self.files.iter().map(|(e, _)| e.clone()).collect();
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        let tmp = out.with_extension("partial");
        // A new file (never through a link someone left there), root only.
        let _ = std::fs::remove_file(&tmp);
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mtime = manifest.window.end.0 / 1000;
        let append = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            h.set_cksum();
            tar.append_data(&mut h, name, data)
        };
        let res = (|| {
            append(&mut tar, "manifest.json", &manifest_json)?;
            for (e, data) in &self.files {
                if e.error.is_none() {
                    append(&mut tar, &e.name, data)?;
                }
            }
            let gz = tar.into_inner()?;
            let mut f = gz.finish()?;
            f.flush()?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("writing {}: {e}", out.display()));
        }
        std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The kernel log records since `since_s` after boot, from /dev/kmsg read
/// non-blocking (it never waits for new records). Capped.
fn kmsg_since(since_s: f64) -> Result<(String, bool), String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(|e| format!("/dev/kmsg: {e}"))?;
    let since_us = (since_s * 1e6) as u64;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // "prio,seq,ts_us,flags;message\n continuation..."
                let Some((head, msg)) = rec.split_once(';') else {
                    continue;
                };
                let ts: u64 = head
                    .split(',')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if ts >= since_us {
                    out.push_str(&format!("[{:>12.6}] {}", ts as f64 / 1e6, msg));
                    if !msg.ends_with('\n') {
                        out.push('\n');
                    }
                }
                if out.len() as u64 >= READ_CAP {
                    return Ok((out, true));
                }
            }
            // EPIPE: a record was overwritten while reading; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("/dev/kmsg: {e}")),
        }
    }
    Ok((out, false))
}

/// The latest JSON lines of a kind, at most `cap` bytes: the oldest go
/// first (a long `run` keeps what led up to its latest finding).
#[derive(Clone, Debug, Default)]
pub struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    cap: usize,
    /// Lines let go to stay under the cap.
    pub dropped: u64,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    fn push(&mut self, line: &str) {
        if line.len() + 1 > self.cap {
            self.dropped += 1;
            return;
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_owned());
        while self.bytes > self.cap
            && let Some(old) = self.lines.pop_front()
        {
            self.bytes -= old.len() + 1;
            self.dropped += 1;
        }
    }

    /// The lines, each ended by a line break.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes);
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Bytes kept now.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }
}

/// The records of a session a bundle holds, kept as they are emitted: the
/// latest of all of them (`findings.jsonl`), of the `pleg` ones (`pleg/`),
/// of the systemd findings and of the agent's own D-Bus probes
/// (`systemd/`), each capped.
#[derive(Clone, Debug)]
pub struct SessionRecords {
    pub all: Tail,
    pub pleg: Tail,
    pub systemd: Tail,
    /// `bus_probe` records (a probe every 5 s per socket and target while
    /// probing: the latest few thousand).
    pub probes: Tail,
    /// Finding records seen (reports of any status).
    pub findings: usize,
}

/// The session's records a bundle keeps at most: all of them, and each of
/// the `pleg` and systemd kinds.
pub const RECORDS_CAP: usize = 16 << 20;
pub const KIND_CAP: usize = 4 << 20;
/// The `bus_probe` records kept (about 150 bytes each).
pub const PROBES_CAP: usize = 256 << 10;

impl Default for SessionRecords {
    fn default() -> Self {
        Self {
            all: Tail::new(RECORDS_CAP),
            pleg: Tail::new(KIND_CAP),
            systemd: Tail::new(KIND_CAP),
            probes: Tail::new(PROBES_CAP),
            findings: 0,
        }
    }
}

impl SessionRecords {
    /// Keeps `record` (`v` is its JSON).
    pub fn keep(&mut self, record: &crate::sinks::Record, v: &Value) {
        use crate::sinks::Record;
        let line = v.to_string();
        self.all.push(&line);
        match record {
            Record::Pleg(_) => self.pleg.push(&line),
            Record::BusProbe(_) => self.probes.push(&line),
            Record::Finding(f) => {
                self.findings += 1;
                if f.cause == crate::model::finding::Cause::SystemdHang {
                    self.systemd.push(&line);
                }
            }
            _ => {}
        }
    }
}

/// Everything one bundle is made of, from a session (manual or automatic).
pub struct Capture<'a> {
    pub root: &'a Path,
    pub node: &'a str,
    /// `manual`, or `finding <id>`.
    pub trigger: String,
    pub window: Window,
    pub records: &'a SessionRecords,
    /// The session's recording file (None: not recorded).
    pub recording: Option<&'a Path>,
    pub named: &'a Named,
    pub journal_dirs: &'a [PathBuf],
    pub sockets: &'a [String],
    /// Seconds after boot when the window started (the kernel log from then).
    pub uptime_start: f64,
    /// Opt-in: containerd was sent SIGUSR1 (or why not): its dump goes to
    /// `runtime/containerd-goroutines.txt`, waited for this long at most.
    pub goroutines: Option<(Result<optin::Signalled, String>, std::time::Duration)>,
    /// Opt-in: sysrq-w's report in `kernel/sysrq-w.txt`.
    pub sysrq_w: bool,
}

/// What a written bundle holds.
pub struct Written {
    pub size: u64,
    pub tasks: usize,
    /// Files in the archive besides the manifest.
    pub files: usize,
    /// Files listed in the manifest with an error instead (not readable,
    /// unavailable, refused by a rate limit).
    pub unreadable: usize,
}

/// Writes the bundle of `c` to `out` (see [`Builder::write`]).
pub fn capture(c: Capture<'_>, out: &Path) -> Result<Written, String> {
    let mut b = Builder::new(c.root);
    let r = c.records;
    b.add("findings.jsonl", "session", r.all.bytes(), 0);
    if let Some((e, _)) = b.files.last_mut() {
        // The oldest records were let go (a long session).
        e.truncated = r.all.dropped > 0;
    }
    match c.recording {
        Some(path) => match std::fs::metadata(path) {
            Ok(m) if m.len() > RECORDING_CAP => b.failed(
                "recording.jsonl",
                &path.display().to_string(),
                format!(
                    "the recording is {} bytes, over the {} MiB a bundle takes",
                    m.len(),
                    RECORDING_CAP >> 20
                ),
            ),
            _ => match std::fs::read(path) {
                Ok(data) => b.add("recording.jsonl", "session", data, 0),
                Err(e) => b.failed(
                    "recording.jsonl",
                    &path.display().to_string(),
                    e.to_string(),
                ),
            },
        },
        None => b.failed(
            "recording.jsonl",
            "session",
            "the session was not recorded (--record)".into(),
        ),
    }
    b.kernel(c.uptime_start);
    if c.sysrq_w {
        const NAME: &str = "kernel/sysrq-w.txt";
        match optin::sysrq_w(c.root) {
            Ok((text, truncated)) => {
                b.add(NAME, "/proc/sysrq-trigger, /dev/kmsg", text.into_bytes(), 0);
                if let Some((e, _)) = b.files.last_mut() {
                    e.truncated = truncated;
                }
            }
            Err(e) => b.failed(NAME, "/proc/sysrq-trigger", e),
        }
    }
    if let Some((signalled, wait)) = &c.goroutines {
        const NAME: &str = "runtime/containerd-goroutines.txt";
        let reader = ProcReader::new(c.root);
        match signalled
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|s| optin::collect_dump(&reader, s, *wait))
        {
            Ok((data, truncated, path)) => {
                b.add(NAME, &path.display().to_string(), data, 0);
                if let Some((e, _)) = b.files.last_mut() {
                    e.truncated = truncated;
                }
            }
            Err(e) => b.failed(NAME, "SIGUSR1 to containerd", e),
        }
    }
    let mut tasks: Vec<u32> = c.named.pids.iter().copied().collect();
    tasks.extend(b.d_tasks(&c.named.pids));
    tasks.truncate(TASKS_CAP);
    for pid in &tasks {
        b.task(*pid);
    }
    if !c.named.mounts.is_empty() {
        b.mounts(&c.named.mounts);
    }
    for cg in &c.named.cgroups {
        b.pids_cgroup(cg);
    }
    b.pleg(r.pleg.bytes(), c.journal_dirs, c.window.start);
    b.systemd(r.systemd.bytes(), &r.probes, c.sockets);
    let reader = ProcReader::new(c.root);
    let manifest = Manifest {
        schema: SCHEMA,
        watchdog: crate::cli::VERSION,
        node: c.node.to_owned(),
        boot_id: reader
            .read_trim(&reader.rooted(paths::BOOT_ID))
            .unwrap_or_default(),
        kernel: reader
            .read_trim(&reader.rooted(paths::OSRELEASE))
            .unwrap_or_default(),
        trigger: c.trigger,
        window: c.window,
        findings: r.findings,
        files: Vec::new(),
    };
    let unreadable = b.files.iter().filter(|(e, _)| e.error.is_some()).count();
    let files = b.files.len() - unreadable;
    let size = b.write(out, manifest)?;
    Ok(Written {
        size,
        tasks: tasks.len(),
        files,
        unreadable,
    })
}

/// The largest recording a bundle copies (a long `run` can record for weeks).
pub const RECORDING_CAP: u64 = 64 << 20;

/// Journal entries a bundle's `pleg/` holds at most.
pub const JOURNAL_LINES: usize = 5000;

/// For each followed path: its listeners (inode, accept queue / backlog)
/// and the connections accepted on it (inode, peer, bytes queued to be read
/// by the server, bytes it sent not yet read by the client).
fn socket_report(all: &[crate::dbus::sock_diag::UnixSock], paths: &[String]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for path in paths {
        let mine: Vec<_> = all
            .iter()
            .filter(|s| s.name.as_deref() == Some(path.as_str()))
            .collect();
        let listeners: Vec<_> = mine.iter().filter(|s| s.listening()).collect();
        let conns: Vec<_> = mine.iter().filter(|s| !s.listening()).collect();
        if mine.is_empty() {
            let _ = writeln!(
                out,
                "{path}: no socket bound at this path in this network namespace"
            );
            continue;
        }
        let queued: u64 = conns
            .iter()
            .filter_map(|c| c.rqlen.map(|(r, _)| u64::from(r)))
            .sum();
        let _ = writeln!(
            out,
            "{path}: {} listening, {} connections, {queued} bytes waiting for the server to read",
            listeners.len(),
            conns.len()
        );
        for l in listeners {
            let (q, backlog) = l.rqlen.unwrap_or_default();
            let _ = writeln!(
                out,
                "  listener inode {}: {q} connections waiting to be accepted (backlog {backlog})",
                l.inode
            );
        }
        for c in conns {
            let (r, w) = c.rqlen.unwrap_or_default();
            let _ = writeln!(
                out,
                "  connection inode {} (peer {}): {r} bytes unread by the server, {w} unread by the client",
                c.inode,
                c.peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
        }
    }
    out
}

/// What the session's findings name: tasks, mount points, pids cgroups.
#[derive(Default)]
pub struct Named {
    pub pids: BTreeSet<u32>,
    pub mounts: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
}

impl Named {
    /// Walks a finding record (any cause) for `pid`, `mount_point` and
    /// `cgroup` fields.
    pub fn add_finding(&mut self, v: &Value) {
        fn walk(v: &Value, n: &mut Named) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("pid", Value::Number(p)) => {
                                if let Some(p) = p.as_u64().and_then(|p| u32::try_from(p).ok()) {
                                    n.pids.insert(p);
                                }
                            }
                            ("mount_point", Value::String(s)) => {
                                n.mounts.insert(s.clone());
                            }
                            ("cgroup", Value::String(s)) => {
                                n.cgroups.insert(s.clone());
                            }
                            _ => walk(x, n),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, n)),
                _ => {}
            }
        }
        walk(v, self);
    }
}

/// Streams a bundle's recording to `f` (no file is extracted, nothing is
/// held but a line), for `watchdog replay`; at most [`MEMBER_CAP`] bytes of
/// it are read, whatever its header claims (a decompression bomb ends there).
pub fn with_recording<T>(
    path: &Path,
    f: impl FnOnce(crate::recording::Stream<Box<dyn std::io::BufRead + '_>>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open bundle {}: {e}", path.display()))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = ar
        .entries()
        .map_err(|e| anyhow::anyhow!("{}: not a tar.gz bundle: {e}", path.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("{}: broken bundle: {e}", path.display()))?;
        let name: PathBuf = entry
            .path()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .into_owned();
        if name == Path::new("manifest.json") {
            // A bundle from a newer watchdog: say which one it needs.
            let mut text = String::new();
            entry
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("{}: manifest.json: {e}", path.display()))?;
            let m: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{}: manifest.json is not JSON: {e}", path.display())
            })?;
            let schema = m["schema"].as_u64().unwrap_or(0);
            if schema > u64::from(SCHEMA) {
                anyhow::bail!(
                    "{}: bundle schema {schema} (written by watchdog {}) is not supported: this watchdog ({}) reads bundle schema {SCHEMA}; replay it with watchdog {} or newer",
                    path.display(),
                    m["watchdog"].as_str().unwrap_or("?"),
                    env!("CARGO_PKG_VERSION"),
                    m["watchdog"].as_str().unwrap_or("?"),
                );
            }
            continue;
        }
        if name != Path::new("recording.jsonl") {
            continue;
        }
        if entry.size() > MEMBER_CAP {
            anyhow::bail!(
                "{}: recording.jsonl is {} bytes, over the {} MiB a replay reads",
                path.display(),
                entry.size(),
                MEMBER_CAP >> 20
            );
        }
        let label = PathBuf::from(format!("{}:recording.jsonl", path.display()));
        let input: Box<dyn std::io::BufRead + '_> =
            Box::new(std::io::BufReader::new(entry.take(MEMBER_CAP)));
        return f(crate::recording::Stream::open(input, &label)?);
    }
    anyhow::bail!("{}: the bundle has no recording.jsonl", path.display())
}

/// A gzip file (a bundle) rather than a plain recording.
pub fn is_bundle(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_latest_lines_under_its_cap() {
        let mut t = Tail::new(10);
        for l in ["aaa", "bbb", "ccc"] {
            t.push(l);
        }
        // 3 lines of 4 bytes: the oldest goes.
        assert_eq!(t.bytes(), b"bbb\nccc\n");
        assert_eq!(t.dropped, 1);
        t.push("a line longer than the cap");
        assert_eq!(t.bytes(), b"bbb\nccc\n");
        assert_eq!(t.dropped, 2);
    }

    /// The golden recording of a stopped bus: its four probe results are
    /// `bus_probe` records, kept by the session's records and written to
    /// `systemd/probes.jsonl` with the manifest listing them.
    #[test]
    fn the_agents_dbus_probes_go_to_systemd_probes_jsonl() {
        struct Keep(SessionRecords);
        impl crate::sinks::Sink for Keep {
            fn emit(&mut self, r: &crate::sinks::Record) {
                let v = serde_json::to_value(r).unwrap();
                self.0.keep(r, &v);
            }
        }
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/systemd_hang_bus_stopped.jsonl");
        let mut keep = Keep(SessionRecords::default());
        crate::replay::replay(&golden, &mut keep).unwrap();
        let probes = String::from_utf8(keep.0.probes.bytes()).unwrap();
        let lines: Vec<Value> = probes
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{probes}");
        assert!(lines.iter().all(|l| l["type"] == "bus_probe"), "{probes}");
        assert!(
            lines.iter().any(|l| l["outcome"] == "timeout"),
            "a stopped bus does not answer: {probes}"
        );
        let mut b = Builder::new(Path::new("/"));
        b.systemd(Vec::new(), &keep.0.probes, &[]);
        let (entry, data) = &b.files[0];
        assert_eq!(entry.name, "systemd/probes.jsonl");
        assert_eq!(data, probes.as_bytes());
        assert!(!entry.truncated);
        // None kept: no file.
        let mut b = Builder::new(Path::new("/"));
        b.systemd(Vec::new(), &Tail::new(PROBES_CAP), &[]);
        assert!(b.files.is_empty());
    }

    /// A bundle from a newer watchdog: `replay` says which one it needs,
    /// before reading its recording.
    #[test]
    fn a_newer_bundle_schema_names_the_version_it_needs() {
        let path =
            std::env::temp_dir().join(format!("wd-newer-bundle-{}.tar.gz", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        };
        add("manifest.json", br#"{"schema": 2, "watchdog": "0.4.0"}"#);
        add("recording.jsonl", b"not read\n");
        tar.into_inner().unwrap().finish().unwrap();
        assert!(is_bundle(&path));
        let e = with_recording(&path, |_| Ok(())).err().unwrap().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            e.contains("bundle schema 2 (written by watchdog 0.4.0) is not supported")
                && e.ends_with("replay it with watchdog 0.4.0 or newer"),
            "{e}"
        );
    }
}

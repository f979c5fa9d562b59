//! What a person sees when running `watchdog trace` by hand on a node
//! without kubelet, Docker or an apiserver: one line per source on stdout,
//! saying why it is unavailable, and nothing on stderr (no log line that
//! repeats the source line, no library error retried every few seconds).
//! On a terminal (a pseudo-terminal here) a live status line at the bottom,
//! gone before the summary; in a pipe, not a byte of it.
use std::collections::{BTreeSet, HashMap};
use std::io::Read as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use watchdog_tests::*;

/// Back to the start of the line and clear it: what the status line is drawn
/// and erased with.
const ERASE: &str = "\r\x1b[2K";

/// `watchdog trace` with no real source to contact: kubelet on a closed
/// port, the runtime at a socket that does not exist, no apiserver.
fn trace_command(duration: &str, dir: &Path) -> Command {
    session_command("trace", duration, dir)
}

/// [`trace_command`] for `trace` or `bundle`.
fn session_command(sub: &str, duration: &str, dir: &Path) -> Command {
    let docker = format!("unix://{}/docker.sock", dir.display());
    let mut cmd = Command::new(agent_bin());
    cmd.args([sub, "--duration", duration, "--poll-interval", "250ms"])
        .args(["--kubelet-metrics-url", "https://127.0.0.1:1/metrics"])
        .args(["--kubelet-scrape-interval", "1s"])
        .args(["--docker-host", &docker])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn sources_unavailable_give_one_line_each_and_a_quiet_stderr() {
    if !skip_unless_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wd-terminal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let docker = format!("unix://{}/docker.sock", dir.display());
    // Long enough for the retrying sources (kubelet metrics every 2 s, the
    // runtime's backoff) to fail several times.
    let out = trace_command("7s", &dir)
        .stdin(Stdio::null())
        .output()
        .expect("run watchdog trace");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.trim().is_empty(),
        "stderr must stay empty without --log; got:\n{stderr}"
    );
    // Into a pipe: no status line, not a carriage return nor an escape.
    assert!(
        !stdout.contains('\r') && !stdout.contains("\x1b["),
        "a carriage return or an escape sequence went into the pipe:\n{stdout:?}"
    );
    assert!(
        !stdout.contains(" · probes "),
        "the status line went into the pipe:\n{stdout}"
    );
    let mut per_source: HashMap<String, Vec<&str>> = HashMap::new();
    for line in stdout.lines() {
        // "[hh:mm:ss] source  <name> <target>: <STATE>: <why>"
        let Some(rest) = line.split_once("] source  ").map(|(_, r)| r) else {
            continue;
        };
        let key = rest.split(": ").next().unwrap_or(rest).to_owned();
        per_source.entry(key).or_default().push(line);
    }
    for want in ["runtime relist", "kubelet metrics"] {
        let lines: Vec<&&str> = per_source
            .iter()
            .filter(|(k, _)| k.starts_with(want))
            .flat_map(|(_, v)| v)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one line for the {want} source, got {lines:?}\n{stdout}"
        );
        assert!(
            lines[0].contains("UNAVAILABLE"),
            "the line says it is unavailable and why: {}",
            lines[0]
        );
    }
    assert!(
        per_source.keys().any(|k| k.contains(&docker)),
        "the runtime line names the socket it tried: {per_source:?}"
    );
    for (k, v) in &per_source {
        assert_eq!(v.len(), 1, "source {k} printed {} times: {v:#?}", v.len());
    }
}

/// A pseudo-terminal `cols` wide, without output processing (what the agent
/// writes arrives as written: no `\n` turned into `\r\n`): (master, slave).
fn open_pty(cols: u16) -> (OwnedFd, OwnedFd) {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds; name and termios may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are new and ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: a termios read from the slave and written back.
    unsafe {
        use std::os::fd::AsRawFd as _;
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        t.c_oflag &= !libc::OPOST;
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    (master, slave)
}

/// `watchdog trace` for `duration` with a pseudo-terminal as its stdin and
/// stdout (`cols` wide, TERM=xterm): its exit, everything it wrote there,
/// and its stderr.
fn trace_on_pty(duration: &str, cols: u16, extra: &[&str]) -> (ExitStatus, String, String) {
    trace_on_pty_with(duration, cols, extra, false)
}

fn trace_on_pty_with(
    duration: &str,
    cols: u16,
    extra: &[&str],
    stderr_on_pty: bool,
) -> (ExitStatus, String, String) {
    session_on_pty("trace", duration, cols, extra, stderr_on_pty)
}

/// [`trace_on_pty`] of `sub` (`trace`, `bundle`), with stderr on the
/// pseudo-terminal too when `stderr_on_pty` (then the returned stderr is
/// empty).
fn session_on_pty(
    sub: &str,
    duration: &str,
    cols: u16,
    extra: &[&str],
    stderr_on_pty: bool,
) -> (ExitStatus, String, String) {
    let dir = std::env::temp_dir().join(format!("wd-terminal-pty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (master, slave) = open_pty(cols);
    let stderr_path = dir.join("stderr");
    let mut cmd = session_command(sub, duration, &dir);
    cmd.args(extra)
        .env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()));
    if stderr_on_pty {
        cmd.stderr(Stdio::from(slave));
    } else {
        drop(slave);
        cmd.stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()));
    }
    let mut agent = ChildGuard::spawn(&mut cmd, "watchdog trace on a pty").unwrap();
    // Our copies of the slave close with the command: the master then reads
    // EOF (EIO) once the agent has exited.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(out);
    });
    let status = agent.wait_timeout(Duration::from_secs(60));
    let out = rx.recv_timeout(Duration::from_secs(10));
    agent.kill_group();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("watchdog trace did not exit\n{stderr}"));
    let out = out.expect("the pty's output up to its end");
    (status, String::from_utf8_lossy(&out).into_owned(), stderr)
}

/// Whether `s` starts as the status line does: `watchdog M:SS · probes N/M`.
fn status_elapsed(s: &str) -> Option<&str> {
    let rest = s.strip_prefix("watchdog ")?;
    let (elapsed, rest) = rest.split_once(' ')?;
    let ok = elapsed.split(':').count() >= 2
        && elapsed.chars().all(|c| c.is_ascii_digit() || c == ':')
        && rest.starts_with("· probes ");
    ok.then_some(elapsed)
}

#[test]
fn on_a_terminal_a_status_line_is_redrawn_and_gone_before_the_summary() {
    if !skip_unless_root() {
        return;
    }
    let (status, out, stderr) = trace_on_pty("4s", 160, &[]);
    assert!(status.success(), "exit {status:?}\n{out:?}\n{stderr}");
    // What follows each erase: a status line (no line break, no escape of
    // its own), or records after the line was erased for them.
    let pieces: Vec<&str> = out.split(ERASE).collect();
    let drawn: Vec<&str> = pieces
        .iter()
        .copied()
        .filter(|p| status_elapsed(p).is_some())
        .collect();
    assert!(
        drawn.len() >= 3,
        "the status line was drawn {} times, want the first and at least two redraws:\n{out:?}",
        drawn.len()
    );
    let elapsed: BTreeSet<&str> = drawn.iter().filter_map(|d| status_elapsed(d)).collect();
    assert!(
        elapsed.len() >= 2,
        "the elapsed time never advanced: {elapsed:?}\n{out:?}"
    );
    for d in &drawn {
        // A status line, or the status line then records (none here:
        // records come after an erase).
        let line = d.split('\n').next().unwrap();
        assert!(
            !d.contains('\n'),
            "a record followed the status line without erasing it: {d:?}"
        );
        assert!(
            line.chars().count() < 160,
            "the status line is wider than the terminal less one column: {line:?}"
        );
        assert!(!line.contains('\x1b') && !line.contains('\r'), "{line:?}");
    }
    // After the last erase: the summary on a clean screen, and nothing after.
    let last = pieces.last().unwrap();
    assert!(
        last.contains("\nsummary: ") && last.ends_with('\n'),
        "the summary comes last, after the status line is erased: {last:?}"
    );
    assert!(
        !last.contains(" · probes ") && !last.contains('\r') && !last.contains('\x1b'),
        "status text after the summary: {last:?}"
    );
    let last_line = last.trim_end_matches('\n').rsplit('\n').next().unwrap();
    assert!(
        status_elapsed(last_line).is_none() && !last_line.contains("probes"),
        "the last line is status text: {last_line:?}"
    );
    // Before the first draw: the ready lines as in a pipe.
    assert!(
        pieces[0].contains(": tracing") && !pieces[0].contains('\r'),
        "{:?}",
        pieces[0]
    );
}

/// `watchdog bundle` on a terminal: the status line says what the bundle
/// holds so far (findings, bytes recorded), redrawn, gone before the
/// summary; stderr (a file here) gets the final line with the path and the
/// summary of the contents, and no status text.
#[test]
fn on_a_terminal_bundle_shows_its_progress_then_the_path() {
    if !skip_unless_root() {
        return;
    }
    let out =
        std::env::temp_dir().join(format!("wd-terminal-bundle-{}.tar.gz", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let (status, screen, stderr) = session_on_pty(
        "bundle",
        "3s",
        120,
        &[
            "--no-storage",
            "--no-systemd",
            "--out",
            out.to_str().unwrap(),
        ],
        false,
    );
    let _ = std::fs::remove_file(&out);
    assert!(
        status.success(),
        "exit {status:?}
{screen:?}
{stderr}"
    );
    let drawn: Vec<&str> = screen
        .split(ERASE)
        .filter(|p| status_elapsed(p.trim_end()).is_some() || p.contains(" · bundle: "))
        .collect();
    assert!(
        drawn
            .iter()
            .filter(|d| d.contains(" · bundle: 0 findings, "))
            .count()
            >= 2,
        "the bundle's progress was not drawn and redrawn: {screen:?}"
    );
    for d in &drawn {
        assert!(d.contains(" recorded"), "{d:?}");
        assert!(!d.contains('\n'), "{d:?}");
    }
    let last = screen.rsplit(ERASE).next().unwrap();
    assert!(
        last.contains("\nsummary: ") && !last.contains(" · bundle"),
        "{last:?}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("bundle: "))
        .unwrap_or_else(|| panic!("no final line on stderr: {stderr}"));
    assert!(
        line.starts_with(&format!("bundle: {} (", out.display()))
            && line.contains(" KiB; 0 finding records, ")
            && line.contains(" files"),
        "{line}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
}

#[test]
fn on_a_terminal_no_status_leaves_the_output_as_in_a_pipe() {
    if !skip_unless_root() {
        return;
    }
    let (status, out, stderr) = trace_on_pty("2s", 100, &["--no-status"]);
    assert!(status.success(), "exit {status:?}\n{out:?}\n{stderr}");
    assert!(out.contains("\nsummary: "), "{out:?}");
    assert!(
        !out.contains('\r') && !out.contains('\x1b') && !out.contains(" · probes "),
        "--no-status still drew a status line: {out:?}"
    );
}

/// `--log` lines on the same terminal: each erases the status line first
/// (it would otherwise follow the status text on its line), and the line is
/// drawn again after.
#[test]
fn log_lines_on_the_same_terminal_erase_the_status_line_first() {
    if !skip_unless_root() {
        return;
    }
    // The kubelet metrics scrape fails every second: a debug line each time.
    let (status, out, _) = trace_on_pty_with("5s", 160, &["--log", "watchdog=debug"], true);
    assert!(status.success(), "exit {status:?}\n{out:?}");
    let pieces: Vec<&str> = out.split(ERASE).collect();
    let first_draw = pieces
        .iter()
        .position(|p| status_elapsed(p).is_some())
        .unwrap_or_else(|| panic!("no status line drawn:\n{out:?}"));
    assert!(
        pieces[first_draw..]
            .iter()
            .any(|p| p.contains("DEBUG") && status_elapsed(p).is_none()),
        "no log line after the status line was first drawn (the test shows nothing):\n{out:?}"
    );
    for p in &pieces {
        if status_elapsed(p).is_some() {
            assert!(
                !p.contains('\n') && !p.contains("DEBUG"),
                "a log line or record followed the status text without erasing it: {p:?}"
            );
        }
    }
}

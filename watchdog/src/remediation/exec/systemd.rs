//! `reexec_systemd`: SIGTERM to the systemd that serves a hung socket,
//! which makes systemd as PID 1 serialise its state, re-execute itself and
//! keep its pid (measured with Debian 12's systemd 252: it logs
//! `Reexecuting.` and serves again). What cures a systemd that runs but no
//! longer serves D-Bus (the sd-bus cookie overflow, systemd PR #11818).
//!
//! Who serves the socket: the listening unix socket bound at that path in
//! the network namespace of the client the finding saw waiting (or of the
//! agent when the finding named none), from that namespace's
//! `/proc/<client>/net/unix` (no `setns`), then the processes of that
//! namespace holding its inode (readlink of `/proc/<pid>/fd/*`). A kind
//! node's systemd and the host's serve the same path in different
//! namespaces; socket activation makes systemd and dbus-daemon hold the bus
//! socket both: the systemd among the holders is the one meant.
//!
//! Refused unless the server is `systemd`, PID 1 of its PID namespace, not
//! the node's own PID 1 (unless [`NodeExecutor::allow_host_init`]), not
//! stopped (a stopped process handles its SIGTERM only once continued),
//! `/run` in its mount namespace is a tmpfs with room to serialise (at
//! least [`RUN_MIN_FREE`] and [`RUN_MIN_FREE_PCT`] % free: systemd #5016,
//! a re-exec with /run full left the node without a working PID 1), and
//! the binary on disk is the running one (not deleted, same device and
//! inode: an upgraded package re-executes into another version, #19725).
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use super::process::Proc;
use super::{NodeExecutor, with_deadline};
use crate::context::procfs::parse_socket_link;
use crate::model::finding::ProcRef;

/// /run must keep at least this much free for systemd to serialise.
pub const RUN_MIN_FREE: u64 = 16 << 20;
/// ... and at least this share of its size.
pub const RUN_MIN_FREE_PCT: u64 = 2;
/// ... and this many free inodes (when the tmpfs limits them).
pub const RUN_MIN_FREE_INODES: u64 = 1000;
/// How long the statvfs of /run and the stats of the binary may take.
const STAT_DEADLINE: Duration = Duration::from_secs(2);
/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags: a listening socket.
const SO_ACCEPTCON: u32 = 0x10000;

/// A systemd that passed the re-check.
pub(super) struct SystemdTarget {
    pub proc: Proc,
    /// The socket's path as systemd bound it (in its mount namespace).
    pub bound: String,
    pub run_free: u64,
    pub run_size: u64,
    pub exe: String,
}

impl SystemdTarget {
    pub fn describe(&self, socket: &str) -> String {
        format!(
            "re-execute {} (PID 1 of its PID namespace, serving {socket}) with SIGTERM: /run has {} free of {}; {} on disk is the running binary",
            self.proc.name(),
            mib(self.run_free),
            if self.run_size == 0 {
                "no size limit".to_owned()
            } else {
                mib(self.run_size)
            },
            self.exe
        )
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

/// The spellings of a socket path: `/var/run/x` is `/run/x` on every
/// systemd host (and the other way round).
fn spellings(socket: &str) -> Vec<String> {
    let mut v = vec![socket.to_owned()];
    if let Some(r) = socket.strip_prefix("/var/run/") {
        v.push(format!("/run/{r}"));
    } else if let Some(r) = socket.strip_prefix("/run/") {
        v.push(format!("/var/run/{r}"));
    }
    v
}

/// Listening sockets bound at one of `paths` in a `/proc/<pid>/net/unix`
/// text: (inode, bound path).
pub(super) fn listeners(net_unix: &str, paths: &[String]) -> Vec<(u64, String)> {
    net_unix
        .lines()
        .skip(1)
        .filter_map(|l| {
            // Num RefCount Protocol Flags Type St Inode Path
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let inode = f[6].parse().ok()?;
            let path = f[7..].join(" ");
            (flags & SO_ACCEPTCON != 0 && paths.contains(&path)).then_some((inode, path))
        })
        .collect()
}

/// Why /run does not have room, or None: `free`, `size` in bytes (size 0:
/// a tmpfs without a limit), free and total inodes (total 0: no limit).
pub(super) fn run_room_refusal(free: u64, size: u64, ffree: u64, files: u64) -> Option<String> {
    if size > 0 && free < RUN_MIN_FREE {
        return Some(format!(
            "/run has {} free of {} (needs {} to serialise; systemd #5016)",
            mib(free),
            mib(size),
            mib(RUN_MIN_FREE)
        ));
    }
    if size > 0 && free.saturating_mul(100) < size.saturating_mul(RUN_MIN_FREE_PCT) {
        return Some(format!(
            "/run has {} free of {}, under {RUN_MIN_FREE_PCT} % (systemd #5016)",
            mib(free),
            mib(size)
        ));
    }
    if files > 0 && ffree < RUN_MIN_FREE_INODES {
        return Some(format!(
            "/run has {ffree} free inodes of {files} (needs {RUN_MIN_FREE_INODES}; systemd #5016)"
        ));
    }
    None
}

/// (startcode, startstack) of `/proc/<pid>/stat` (fields 26 and 28): where
/// its program image is; an exec moves them (address randomisation).
fn image(stat: &str) -> Option<(u64, u64)> {
    let close = stat.rfind(')')?;
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    Some((f.get(23)?.parse().ok()?, f.get(25)?.parse().ok()?))
}

impl NodeExecutor {
    /// The process whose namespaces locate the socket: the finding's
    /// waiting client while it is still that process, else the agent.
    fn anchor(&self, client: Option<ProcRef>) -> Result<(u32, String), String> {
        match client {
            Some(c) => match self.reader.start_time(c.pid) {
                Some(s) if s == c.start => Ok((
                    c.pid,
                    format!("of the waiting client {}", self.proc(c.pid)?.name()),
                )),
                _ => Err(format!(
                    "the waiting client {} the finding named is gone: the hang it showed is over or the finding is stale",
                    c.pid
                )),
            },
            None => Ok((std::process::id(), "of this agent".to_owned())),
        }
    }

    fn ns_link(&self, pid: u32, ns: &str) -> Option<String> {
        self.reader
            .read_link(&self.reader.pid_file(pid, &format!("ns/{ns}")))
            .ok()
    }

    /// The processes of `pid`'s network namespace holding one of `inodes`.
    fn holders(&self, netns: &str, inodes: &BTreeSet<u64>) -> Vec<u32> {
        let mut out = Vec::new();
        for pid in self.reader.pids() {
            if self.ns_link(pid, "net").as_deref() != Some(netns) {
                continue;
            }
            let fd_dir = self.reader.pid_file(pid, "fd");
            let holds = self
                .reader
                .list_numbers::<u32>(&fd_dir)
                .into_iter()
                .any(|fd| {
                    self.reader
                        .read_link(&fd_dir.join(fd.to_string()))
                        .ok()
                        .and_then(|l| parse_socket_link(&l))
                        .is_some_and(|i| inodes.contains(&i))
                });
            if holds {
                out.push(pid);
            }
        }
        out
    }

    /// The systemd serving `socket`, re-checked (see the module doc).
    pub(super) fn systemd_target(
        &self,
        socket: &str,
        client: Option<ProcRef>,
    ) -> Result<SystemdTarget, String> {
        let (anchor, whose) = self.anchor(client)?;
        let net_unix = self
            .reader
            .read(&self.reader.pid_file(anchor, "net/unix"))
            .map_err(|e| format!("unix sockets of the network namespace {whose}: {e}"))?;
        let found = listeners(&net_unix, &spellings(socket));
        if found.is_empty() {
            return Err(format!(
                "nothing listens on {socket} in the network namespace {whose}"
            ));
        }
        let inodes: BTreeSet<u64> = found.iter().map(|(i, _)| *i).collect();
        let netns = self
            .ns_link(anchor, "net")
            .ok_or_else(|| format!("no network namespace {whose}"))?;
        let mut holders: Vec<Proc> = self
            .holders(&netns, &inodes)
            .into_iter()
            .filter_map(|p| self.proc(p).ok())
            .collect();
        if holders.is_empty() {
            return Err(format!(
                "no process holds the socket listening on {socket} (inodes {inodes:?})"
            ));
        }
        // The path is the client's: a server in its mount namespace first.
        let mntns = self.ns_link(anchor, "mnt");
        if holders.iter().any(|h| self.ns_link(h.pid, "mnt") == mntns) {
            holders.retain(|h| self.ns_link(h.pid, "mnt") == mntns);
        }
        let names = || {
            holders
                .iter()
                .map(Proc::name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let systemds: Vec<&Proc> = holders.iter().filter(|h| h.comm == "systemd").collect();
        let inits: Vec<&Proc> = systemds.iter().copied().filter(|h| h.ns_pid == 1).collect();
        let p = match (systemds.as_slice(), inits.as_slice()) {
            ([], _) => {
                return Err(format!(
                    "{socket} is served by {} (not systemd): nothing to re-execute",
                    names()
                ));
            }
            (_, []) => {
                return Err(format!(
                    "{socket} is served by {} (not PID 1 of its PID namespace: a user manager or a helper, not the system's systemd)",
                    names()
                ));
            }
            (_, [one]) => (*one).clone(),
            (_, many) => {
                return Err(format!(
                    "several systemd serve {socket}: {} (which one hangs is not known)",
                    many.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                ));
            }
        };
        let bound = found
            .iter()
            .map(|(_, b)| b.clone())
            .next()
            .unwrap_or_else(|| socket.to_owned());
        if p.pid == 1 && !self.allow_host_init {
            return Err(format!(
                "{} is this node's own PID 1: the host's systemd is re-executed by hand (`systemctl daemon-reexec`, or `kill -TERM 1` when D-Bus hangs)",
                p.name()
            ));
        }
        if p.pid == std::process::id() {
            return Err(format!("{} is this agent", p.name()));
        }
        match p.state {
            'T' | 't' => {
                return Err(format!(
                    "{} is stopped (state {}: SIGSTOP or a tracer): it would handle a SIGTERM only once continued; re-execution is for a systemd that runs but does not serve",
                    p.name(),
                    p.state
                ));
            }
            'Z' | 'X' => return Err(format!("{} has exited", p.name())),
            _ => {}
        }
        let (run_free, run_size) = self.run_room(&p)?;
        let exe = self.same_binary(&p)?;
        Ok(SystemdTarget {
            proc: p,
            bound,
            run_free,
            run_size,
            exe,
        })
    }

    /// Free and total bytes of /run in `p`'s mount namespace: a tmpfs (its
    /// mountinfo says so before anything is stat'ed), statvfs'ed through
    /// `/proc/<pid>/root/run` under a deadline.
    fn run_room(&self, p: &Proc) -> Result<(u64, u64), String> {
        let mountinfo = self
            .reader
            .read(&self.reader.pid_file(p.pid, "mountinfo"))
            .map_err(|e| format!("mount table of {}: {e}", p.name()))?;
        let fstype = mountinfo
            .lines()
            .rev()
            .filter(|l| l.split(' ').nth(4) == Some("/run"))
            .find_map(|l| l.split_once(" - ")?.1.split(' ').next())
            .ok_or_else(|| {
                format!(
                    "/run is not a mount of its own for {}: its room is not checked",
                    p.name()
                )
            })?;
        if fstype != "tmpfs" {
            return Err(format!(
                "/run of {} is {fstype}, not a tmpfs: its room is not checked",
                p.name()
            ));
        }
        let path = self.reader.pid_file(p.pid, "root").join("run");
        let st = with_deadline("statvfs of /run", STAT_DEADLINE, move || statvfs(&path))??;
        let frsize = st.f_frsize;
        let (free, size) = (st.f_bavail * frsize, st.f_blocks * frsize);
        if let Some(why) = run_room_refusal(free, size, st.f_favail, st.f_files) {
            return Err(format!("{}: {why}", p.name()));
        }
        Ok((free, size))
    }

    /// The path of `p`'s binary when the file there is the one it runs.
    fn same_binary(&self, p: &Proc) -> Result<String, String> {
        let exe = self
            .reader
            .read_link(&self.reader.pid_file(p.pid, "exe"))
            .map_err(|e| format!("binary of {}: {e}", p.name()))?;
        if exe.ends_with(" (deleted)") {
            return Err(format!(
                "the binary {} runs was deleted ({exe}): an upgrade replaced it; a re-exec would start another version (systemd #19725)",
                p.name()
            ));
        }
        let running = self.reader.pid_file(p.pid, "exe");
        let on_disk = self
            .reader
            .pid_file(p.pid, "root")
            .join(exe.trim_start_matches('/'));
        let ids = with_deadline("stat of systemd's binary", STAT_DEADLINE, move || {
            let a = std::fs::metadata(&running).map_err(|e| format!("stat running binary: {e}"))?;
            let b = std::fs::metadata(&on_disk)
                .map_err(|e| format!("stat {}: {e}", on_disk.display()))?;
            Ok::<_, String>(((a.dev(), a.ino()), (b.dev(), b.ino())))
        })??;
        if ids.0 != ids.1 {
            return Err(format!(
                "{exe} on disk is not the binary {} runs (device:inode {:?} vs {:?}): an upgrade replaced it; a re-exec would start another version (systemd #19725)",
                p.name(),
                ids.1,
                ids.0
            ));
        }
        Ok(exe)
    }

    pub(super) fn reexec_systemd(
        &self,
        socket: &str,
        client: Option<ProcRef>,
    ) -> Result<String, String> {
        let t = self.systemd_target(socket, client)?;
        let pid = t.proc.pid;
        let name = t.proc.name();
        let fd = self.hold(pid, t.proc.start)?;
        let image_now = || {
            self.reader
                .read_pid_file(pid, "stat")
                .and_then(|s| image(&s))
        };
        let before = image_now();
        let t0 = Instant::now();
        fd.signal(libc::SIGTERM)?;
        // The new image: systemd serialised and exec'd itself.
        let mut reexec = None;
        while t0.elapsed() < self.reexec_wait {
            if self.reader.start_time(pid) != Some(t.proc.start) {
                return Err(format!("{name} exited after its SIGTERM"));
            }
            if before.is_some() && image_now().is_some_and(|i| Some(i) != before) {
                reexec = Some(t0.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let path = self
            .reader
            .pid_file(pid, "root")
            .join(t.bound.trim_start_matches('/'));
        let sock = t.bound.clone();
        let wait = self.reexec_wait;
        // systemd closes its private socket to re-execute and binds it
        // again once up: refused connections are retried until the wait ends.
        let ping = with_deadline("Ping of the re-executed systemd", wait * 2, move || {
            let until = Instant::now() + wait;
            let mut refused = 0;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match crate::dbus::probe::ping_systemd_at(
                    &path,
                    &sock,
                    left.max(Duration::from_millis(100)),
                ) {
                    Ok(d) => return Ok((d, refused)),
                    Err(e) if Instant::now() >= until => return Err(e),
                    Err(_) => {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })
        .and_then(|r| r);
        let seen = match reexec {
            Some(d) => format!("a new program image after {:.0} ms, same pid", ms(d)),
            None => format!(
                "no new program image seen within {:.1} s (address randomisation off?)",
                self.reexec_wait.as_secs_f64()
            ),
        };
        match ping {
            Ok((d, refused)) => Ok(format!(
                "{name} re-executed (SIGTERM through a pidfd): {seen}; Ping on {socket} answered in {:.0} ms, {:.0} ms after the signal ({refused} attempts failed while it re-bound its socket)",
                ms(d),
                ms(t0.elapsed())
            )),
            // Re-executed (a new image, same pid) but this Ping did not get
            // through (seen on /run/systemd/private reached through
            // /proc/<pid>/root): the action did what it does; whether it
            // helped is the finding resolving (`verified`), not this Ping.
            Err(e) if reexec.is_some() => Ok(format!(
                "{name} re-executed (SIGTERM through a pidfd): {seen}; the Ping on {socket} did not answer ({e}): verification is the finding resolving"
            )),
            Err(e) => Err(format!("SIGTERM sent to {name}: {seen}; but {e}")),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn statvfs(path: &std::path::Path) -> Result<libc::statvfs, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL in path", path.display()))?;
    // SAFETY: zeroed plain C struct, filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 21001 /run/systemd/private\n\
        0000000000000000: 00000003 00000000 00000000 0001 03 21002 /run/systemd/private\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 21003 /run/dbus/system_bus_socket\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 21004 /run/my dir/sock\n\
        0000000000000000: 00000002 00000000 00000000 0002 01 21005\n";

    #[test]
    fn listeners_by_path_and_spelling() {
        assert_eq!(
            listeners(NET_UNIX, &spellings("/run/systemd/private")),
            vec![(21001, "/run/systemd/private".to_owned())]
        );
        // The bus socket as runtimes spell it.
        assert_eq!(
            listeners(NET_UNIX, &spellings("/var/run/dbus/system_bus_socket")),
            vec![(21003, "/run/dbus/system_bus_socket".to_owned())]
        );
        assert_eq!(
            listeners(NET_UNIX, &spellings("/run/my dir/sock")),
            vec![(21004, "/run/my dir/sock".to_owned())]
        );
        assert!(listeners(NET_UNIX, &spellings("/run/other")).is_empty());
    }

    #[test]
    fn run_room_gate_says_the_figures() {
        let gib = 1u64 << 30;
        assert_eq!(run_room_refusal(gib, 2 * gib, 100_000, 200_000), None);
        // A tmpfs without limits (size=0, nr_inodes=0).
        assert_eq!(run_room_refusal(0, 0, 0, 0), None);
        let e = run_room_refusal(8 << 20, gib, 100_000, 200_000).unwrap();
        assert!(e.contains("8.0 MiB free of 1024.0 MiB"), "{e}");
        assert!(e.contains("#5016"), "{e}");
        // 100 MiB free of 10 GiB: under 2 %.
        let e = run_room_refusal(100 << 20, 10 * gib, 100_000, 200_000).unwrap();
        assert!(e.contains("under 2 %"), "{e}");
        let e = run_room_refusal(gib, 2 * gib, 10, 200_000).unwrap();
        assert!(e.contains("10 free inodes"), "{e}");
    }

    #[test]
    fn image_fields_of_stat() {
        let stat = "1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 77 1000 100 18446744073709551615 94000000 94100000 140000000 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(image(stat), Some((94000000, 140000000)));
        assert_eq!(crate::context::procfs::parse_start_time(stat), Some(77));
    }
}

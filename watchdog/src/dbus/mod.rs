//! D-Bus/systemd sockets: the tracker behind the `systemd_hang` cause.
//!
//! The kernel side (watchdog-ebpf/src/dbus.rs) follows the connections of
//! watched runtime processes to the configured socket paths and sends one
//! event per connect, send, receive and close on them. Here each event
//! becomes a [`SocketCall`] observation (a connect also reads who connected:
//! the runc command line and the container it is creating), and while some
//! connection waits for a reply the tracker corroborates: the socket queues
//! from sock_diag ([`SocketQueues`]) and the agent's own probes of the bus and
//! of systemd ([`probe`]), both bounded in time.
pub mod probe;
pub mod sock_diag;

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use watchdog_common::{
    SOCK_CALLS_MAP, SOCK_CONNS_MAP, SOCK_PATH_LEN, SOCK_PATH_SLOTS, SOCK_PATHS_MAP, SockCall,
    SockConn, SockPath, SocketEvent,
};

use crate::{
    context::{
        nul_terminated,
        procfs::{ProcReader, parse_socket_link},
    },
    model::Time,
    model::dbus::{
        CallKind, ConnQueue, Holder, ListenerQueue, MessageKind, ProcessInfo, SocketCall,
        SocketQueues,
    },
    probes::Probes,
};

/// The `syscall` of the connect observation of a connection opened before
/// the agent started.
pub const EXISTING: &str = "connected_before_start";

/// Socket paths followed by default (the system bus under both spellings
/// clients use; /var/run is a symlink to /run).
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/systemd/private",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
];

/// Options of the systemd-hang detection (`[systemd]` in the config).
#[derive(Clone, Debug)]
pub struct DbusOptions {
    pub sockets: Vec<String>,
    /// Probe the bus and systemd while a connection waits.
    pub probe: bool,
    pub probe_timeout: Duration,
    /// Start corroborating when a connection has waited this long.
    pub suspect_after_ms: u64,
}

impl Default for DbusOptions {
    fn default() -> Self {
        Self {
            sockets: default_sockets(std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok().as_deref()),
            probe: true,
            probe_timeout: Duration::from_secs(2),
            suspect_after_ms: 2_000,
        }
    }
}

/// The default paths, plus the unix path of `DBUS_SYSTEM_BUS_ADDRESS`.
pub fn default_sockets(bus_address: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_SOCKETS.iter().map(|s| (*s).to_owned()).collect();
    if let Some(p) = bus_address.and_then(unix_path_of_address)
        && !v.contains(&p)
    {
        v.push(p);
    }
    v
}

/// The `path=` of the first `unix:` entry of a D-Bus address.
pub fn unix_path_of_address(addr: &str) -> Option<String> {
    addr.split(';').find_map(|entry| {
        let rest = entry.strip_prefix("unix:")?;
        rest.split(',')
            .find_map(|kv| kv.strip_prefix("path="))
            .map(str::to_owned)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A missing map or a failed map update (shared with the storage probes).
    #[error(transparent)]
    Maps(#[from] crate::storage::SetupError),
    #[error(
        "systemd.sockets {0:?}: a socket path is absolute and at most {max} bytes",
        max = SOCK_PATH_LEN - 1
    )]
    BadPath(String),
    #[error("systemd.sockets: at most {max} paths, got {got}", max = SOCK_PATH_SLOTS)]
    TooManyPaths { got: usize },
}

pub fn validate_sockets(paths: &[String]) -> Result<(), SetupError> {
    if paths.len() > SOCK_PATH_SLOTS as usize {
        return Err(SetupError::TooManyPaths { got: paths.len() });
    }
    for p in paths {
        if !p.starts_with('/') || p.len() >= SOCK_PATH_LEN || p.contains('\0') {
            return Err(SetupError::BadPath(p.clone()));
        }
    }
    Ok(())
}

/// This architecture's socket syscalls and how the probe classifies them.
#[cfg(target_arch = "x86_64")]
const SOCK_SYSCALLS: &[(u32, SockCall)] = &[
    (0, SockCall::Read),
    (1, SockCall::Write),
    (3, SockCall::Close),
    (19, SockCall::Readv),
    (20, SockCall::Writev),
    (42, SockCall::Connect),
    (44, SockCall::Write),   // sendto
    (45, SockCall::Read),    // recvfrom
    (46, SockCall::Sendmsg), // sendmsg
    (47, SockCall::Recvmsg), // recvmsg
];
#[cfg(target_arch = "aarch64")]
const SOCK_SYSCALLS: &[(u32, SockCall)] = &[
    (63, SockCall::Read),
    (64, SockCall::Write),
    (57, SockCall::Close),
    (65, SockCall::Readv),
    (66, SockCall::Writev),
    (203, SockCall::Connect),
    (206, SockCall::Write),
    (207, SockCall::Read),
    (211, SockCall::Sendmsg),
    (212, SockCall::Recvmsg),
];

/// A connection as the tracker follows it (for corroboration only; the
/// engine decides).
#[derive(Clone, Debug)]
struct Tracked {
    socket: String,
    pending_since: Option<Time>,
}

pub struct DbusTracker {
    proc: ProcReader,
    opts: DbusOptions,
    /// The configured path of each map slot.
    paths: Vec<String>,
    /// Where each leads (`/var/run/dbus/x` -> `/run/dbus/x`): observations
    /// name the real socket, so clients spelling one bus two ways wait on
    /// one finding.
    real_paths: Vec<String>,
    conns: HashMap<(u32, i32), Tracked>,
    /// Socket inode -> holder, and inodes searched for in vain.
    holders: HashMap<u64, Holder>,
    /// When each (socket, target) was last probed.
    probed: HashMap<(String, &'static str), Time>,
    /// Last scan of /proc for socket holders (at most one per 5 s).
    holders_scanned: Option<Time>,
    /// The kernel's table of followed connections, to adopt the ones opened
    /// before the probes attached.
    sock_conns: BpfHashMap<MapData, u64, SockConn>,
}

/// A connection to a followed socket that a process opened before the agent
/// started (kubelet, CRI-O, containerd and dockerd keep theirs for life).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub pid: u32,
    pub fd: i32,
    pub inode: u64,
    /// The map slot of the followed path.
    pub slot: u32,
}

/// The client sockets connected to a followed socket, by inode, with the
/// slot of its path. A client end has no name; its peer, the server's
/// accepted end, carries the listener's path (as `ss -x` shows it).
/// `slot_of` maps such a path to its slot.
pub fn existing_clients(
    all: &[sock_diag::UnixSock],
    slot_of: impl Fn(&str) -> Option<u32>,
) -> HashMap<u64, u32> {
    let named: HashMap<u64, &str> = all
        .iter()
        .filter(|s| !s.listening())
        .filter_map(|s| Some((s.inode, s.name.as_deref()?)))
        .collect();
    all.iter()
        .filter(|s| s.name.is_none())
        .filter_map(|s| {
            let path = named.get(&s.peer?)?;
            Some((s.inode, slot_of(path)?))
        })
        .collect()
}

impl DbusTracker {
    /// Fill the path and syscall tables (the storage probes' `sys_exit`
    /// program and watched set must be attached).
    pub fn new(probes: &mut Probes, root: &Path, opts: &DbusOptions) -> Result<Self, SetupError> {
        validate_sockets(&opts.sockets)?;
        let map_err =
            |map| move |source| SetupError::Maps(crate::storage::SetupError::Map { map, source });
        let mut paths: Array<MapData, SockPath> =
            crate::storage::take(probes, SOCK_PATHS_MAP, Array::try_from)?;
        for (i, p) in opts.sockets.iter().enumerate() {
            let mut path = [0u8; SOCK_PATH_LEN];
            path[..p.len()].copy_from_slice(p.as_bytes());
            paths
                .set(
                    i as u32,
                    SockPath {
                        path,
                        len: p.len() as u32,
                    },
                    0,
                )
                .map_err(map_err(SOCK_PATHS_MAP))?;
        }
        let mut calls: Array<MapData, u8> =
            crate::storage::take(probes, SOCK_CALLS_MAP, Array::try_from)?;
        for (nr, call) in SOCK_SYSCALLS {
            calls
                .set(*nr, *call as u8, 0)
                .map_err(map_err(SOCK_CALLS_MAP))?;
        }
        Ok(Self {
            proc: ProcReader::new(root),
            opts: opts.clone(),
            paths: opts.sockets.clone(),
            real_paths: opts
                .sockets
                .iter()
                .map(|p| canonical_socket_path(p).unwrap_or_else(|| p.clone()))
                .collect(),
            conns: HashMap::new(),
            holders: HashMap::new(),
            probed: HashMap::new(),
            holders_scanned: None,
            sock_conns: crate::storage::take(probes, SOCK_CONNS_MAP, BpfHashMap::try_from)?,
        })
    }

    pub fn sockets(&self) -> &[String] {
        &self.paths
    }

    /// The slot of a path a listener bound: a followed path as configured
    /// or as it resolved at start. Strings only: these are paths any
    /// process bound, anywhere, and resolving one could hang on its mount.
    fn slot_of(&self, bound: &str) -> Option<u32> {
        self.paths
            .iter()
            .zip(&self.real_paths)
            .position(|(p, r)| p == bound || r == bound)
            .map(|i| i as u32)
    }

    /// Follow the connections `pids` (the runtime processes running at
    /// start) opened to the followed sockets before the probes attached:
    /// found through sock_diag and `/proc/<pid>/fd` (readlink only), put in
    /// the kernel's table, and returned as connect observations at `now`.
    /// A request such a connection sent before now is not seen; every later
    /// one is.
    pub fn adopt_existing(&mut self, pids: &[u32], now: Time) -> Vec<(Existing, SocketCall)> {
        let all = match sock_diag::dump() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    "connections to systemd opened before start are not followed: sock_diag dump of unix sockets failed: {e}"
                );
                return Vec::new();
            }
        };
        let clients = existing_clients(&all, |p| self.slot_of(p));
        if clients.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &pid in pids {
            for fd in self
                .proc
                .list_numbers::<i32>(&self.proc.pid_file(pid, "fd"))
            {
                let Some(inode) = self.proc.socket_inode(pid, fd) else {
                    continue;
                };
                let Some(&slot) = clients.get(&inode) else {
                    continue;
                };
                let key = (u64::from(pid) << 32) | u64::from(fd as u32);
                if let Err(e) = self.sock_conns.insert(key, SockConn { slot, _pad: 0 }, 0) {
                    tracing::warn!("cannot follow pid {pid} fd {fd}: {e}");
                    continue;
                }
                // Closed (and the fd reused) between the dump and now: drop it.
                if self.proc.socket_inode(pid, fd) != Some(inode) {
                    let _ = self.sock_conns.remove(&key);
                    continue;
                }
                let socket = self.real_paths[slot as usize].clone();
                self.conns.insert(
                    (pid, fd),
                    Tracked {
                        socket: socket.clone(),
                        pending_since: None,
                    },
                );
                let comm = self.proc.comm(pid);
                let call = SocketCall {
                    at: now,
                    pid,
                    tid: pid,
                    comm,
                    fd,
                    call: CallKind::Connect,
                    syscall: EXISTING.into(),
                    ret: 0,
                    requested: 0,
                    socket,
                    started: None,
                    ktime_ns: None,
                    started_ktime_ns: None,
                    message: None,
                    process: Some(process_info(&self.proc, pid)),
                };
                out.push((
                    Existing {
                        pid,
                        fd,
                        inode,
                        slot,
                    },
                    call,
                ));
            }
        }
        out
    }

    /// One kernel event as an observation (`started`: the syscall's entry).
    pub fn call(&mut self, ev: &SocketEvent, at: Time, started: Option<Time>) -> SocketCall {
        let sc = SockCall::from_u32(ev.call);
        let call = match sc {
            SockCall::Connect => CallKind::Connect,
            SockCall::Close => CallKind::Close,
            SockCall::ProcessGone => CallKind::ProcessGone,
            c if c.is_send() => CallKind::Send,
            _ => CallKind::Recv,
        };
        let socket = match self.real_paths.get(ev.slot as usize) {
            Some(p) => p.clone(),
            None if sc == SockCall::Connect => nul_terminated(&ev.path),
            None => String::new(),
        };
        let key = (ev.pid, ev.fd);
        let mut process = None;
        match call {
            CallKind::Connect => {
                if ev.ret == 0 || ev.ret == -115 {
                    self.conns.insert(
                        key,
                        Tracked {
                            socket: socket.clone(),
                            pending_since: None,
                        },
                    );
                }
                process = Some(process_info(&self.proc, ev.pid));
            }
            CallKind::Send => {
                if let Some(t) = self.conns.get_mut(&key)
                    && (ev.ret == -11 || (ev.ret > 0 && MessageKind::of(ev.head).expects_reply()))
                {
                    t.pending_since.get_or_insert(at);
                }
            }
            CallKind::Recv => {
                if ev.ret > 0
                    && let Some(t) = self.conns.get_mut(&key)
                {
                    t.pending_since = None;
                } else if ev.ret == 0 {
                    self.conns.remove(&key);
                }
            }
            CallKind::Close => {
                self.conns.remove(&key);
            }
            CallKind::ProcessGone => self.conns.retain(|(pid, _), _| *pid != ev.pid),
        }
        SocketCall {
            at,
            pid: ev.pid,
            tid: ev.tid,
            comm: nul_terminated(&ev.comm),
            fd: ev.fd,
            call,
            syscall: sc.name().to_owned(),
            ret: ev.ret,
            requested: ev.requested,
            socket,
            started: (call == CallKind::Send).then_some(started).flatten(),
            ktime_ns: Some(ev.header.ts_ns),
            started_ktime_ns: (call == CallKind::Send && ev.start_ns != 0).then_some(ev.start_ns),
            message: (call == CallKind::Send && ev.ret > 0).then(|| MessageKind::of(ev.head)),
            process,
        }
    }

    /// Connections waiting for a reply for at least `suspect_after_ms`.
    fn suspects(&self, now: Time) -> Vec<((u32, i32), &Tracked)> {
        let mut v: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, t)| {
                t.pending_since
                    .is_some_and(|s| now.millis_since(s) >= self.opts.suspect_after_ms)
            })
            .map(|(k, t)| (*k, t))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Every poll, before [`DbusTracker::sweep`]: connections whose process
    /// is gone without the kernel saying so (a lost event, or an adopted
    /// connection whose process exited before its first call on it marked
    /// it): out of the kernel's table, and a `ProcessGone` observation each.
    pub fn prune(&mut self, now: Time) -> Vec<SocketCall> {
        let gone: Vec<(u32, i32)> = self
            .conns
            .keys()
            .filter(|(pid, _)| !self.proc.pid_exists(*pid))
            .copied()
            .collect();
        let mut pids: Vec<u32> = Vec::new();
        for (pid, fd) in gone {
            self.conns.remove(&(pid, fd));
            let _ = self
                .sock_conns
                .remove(&((u64::from(pid) << 32) | u64::from(fd as u32)));
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids.into_iter()
            .map(|pid| SocketCall {
                at: now,
                pid,
                tid: pid,
                comm: String::new(),
                fd: -1,
                call: CallKind::ProcessGone,
                syscall: "exit".into(),
                ret: 0,
                requested: 0,
                socket: String::new(),
                started: None,
                ktime_ns: None,
                started_ktime_ns: None,
                message: None,
                process: None,
            })
            .collect()
    }

    /// Every poll: while some connection waits, the queues of the waiting
    /// connections and of the followed listeners (None when nothing waits).
    pub fn sweep(&mut self, now: Time) -> Option<SocketQueues> {
        let suspects: Vec<((u32, i32), String)> = self
            .suspects(now)
            .into_iter()
            .map(|(k, t)| (k, t.socket.clone()))
            .collect();
        if suspects.is_empty() {
            return None;
        }
        let all = match sock_diag::dump() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("sock_diag dump of unix sockets failed: {e}");
                Vec::new()
            }
        };
        let by_inode: HashMap<u64, &sock_diag::UnixSock> =
            all.iter().map(|s| (s.inode, s)).collect();
        let mut conns = Vec::new();
        let mut want: HashSet<u64> = HashSet::new();
        for ((pid, fd), _) in &suspects {
            let Some(inode) = self.proc.socket_inode(*pid, *fd) else {
                continue;
            };
            // Not in the dump: a socket of another network namespace (or the
            // dump failed); its queues are unknown.
            let Some(me) = by_inode.get(&inode) else {
                continue;
            };
            let me = Some(me);
            let peer_inode = me.and_then(|s| s.peer);
            let peer = peer_inode.and_then(|p| by_inode.get(&p));
            if let Some(p) = peer_inode {
                want.insert(p);
            }
            conns.push(ConnQueue {
                pid: *pid,
                fd: *fd,
                inode,
                unread_by_peer: peer.and_then(|p| p.rqlen).map(|r| u64::from(r.0)),
                send_queue: me
                    .and_then(|s| s.rqlen)
                    .map(|r| u64::from(r.1))
                    .unwrap_or(0),
                unread_here: me
                    .and_then(|s| s.rqlen)
                    .map(|r| u64::from(r.0))
                    .unwrap_or(0),
                peer_inode,
                peer: None,
                // The server's end appears in sock_diag once accept()ed.
                peer_not_accepted: peer_inode.is_some() && peer.is_none(),
            });
        }
        // A listener by the path the clients used, or by where it leads
        // (/var/run -> /run), or by the path its accepted ends carry.
        let mut names: HashMap<String, String> = HashMap::new();
        for (_, s) in &suspects {
            names.insert(s.clone(), s.clone());
            // The spellings configured for it (a listener bound at
            // /var/run/dbus/... on older systems).
            for (p, r) in self.paths.iter().zip(&self.real_paths) {
                if r == s {
                    names.insert(p.clone(), s.clone());
                }
            }
        }
        for c in &conns {
            if let Some(n) = c
                .peer_inode
                .and_then(|p| by_inode.get(&p))
                .and_then(|p| p.name.clone())
                && let Some(s) = suspects
                    .iter()
                    .find(|((pid, fd), _)| (*pid, *fd) == (c.pid, c.fd))
            {
                names.insert(n, s.1.clone());
            }
        }
        let mut listeners: Vec<ListenerQueue> = all
            .iter()
            .filter(|s| s.listening() && s.name.as_ref().is_some_and(|n| names.contains_key(n)))
            .map(|s| {
                want.insert(s.inode);
                ListenerQueue {
                    socket: names[s.name.as_ref().expect("filtered")].clone(),
                    inode: s.inode,
                    pending: s.rqlen.map(|r| u64::from(r.0)).unwrap_or(0),
                    backlog: s.rqlen.map(|r| u64::from(r.1)).unwrap_or(0),
                    holder: None,
                }
            })
            .collect();
        if self
            .holders_scanned
            .is_none_or(|t| now.millis_since(t) >= 5_000)
            && want.iter().any(|i| !self.holders.contains_key(i))
        {
            self.holders_scanned = Some(now);
            self.find_holders(&want);
        }
        for c in &mut conns {
            c.peer = c.peer_inode.and_then(|p| self.holders.get(&p).cloned());
        }
        for l in &mut listeners {
            l.holder = self.holders.get(&l.inode).cloned();
        }
        Some(SocketQueues {
            at: now,
            conns,
            listeners,
        })
    }

    /// Probes due now: (socket, target) of the sockets with waiting
    /// connections, each at most every 5 s.
    pub fn probes_due(&mut self, now: Time) -> Vec<(String, &'static str)> {
        if !self.opts.probe {
            return Vec::new();
        }
        let sockets: HashSet<String> = self
            .suspects(now)
            .into_iter()
            .map(|(_, t)| t.socket.clone())
            .collect();
        let mut due = Vec::new();
        for s in sockets {
            for t in probe::targets(&s) {
                let k = (s.clone(), t);
                if self
                    .probed
                    .get(&k)
                    .is_none_or(|last| now.millis_since(*last) >= 5_000)
                {
                    self.probed.insert(k, now);
                    due.push((s.clone(), t));
                }
            }
        }
        due.sort();
        due
    }

    pub fn probe_timeout(&self) -> Duration {
        self.opts.probe_timeout
    }

    /// Which processes hold these socket inodes (one pass over /proc/*/fd;
    /// readlink only, nothing that can block on a mount).
    fn find_holders(&mut self, want: &HashSet<u64>) {
        let missing: HashSet<u64> = want
            .iter()
            .filter(|i| !self.holders.contains_key(i))
            .copied()
            .collect();
        if missing.is_empty() {
            return;
        }
        for pid in self.proc.pids() {
            let Ok(fds) = self.proc.list(&self.proc.pid_file(pid, "fd")) else {
                continue;
            };
            for fd in fds {
                let Some(ino) = self
                    .proc
                    .read_link(&self.proc.pid_file(pid, &format!("fd/{}", fd.name)))
                    .ok()
                    .and_then(|l| parse_socket_link(&l))
                else {
                    continue;
                };
                if missing.contains(&ino) && !self.holders.contains_key(&ino) {
                    let comm = self.proc.comm(pid);
                    self.holders.insert(ino, Holder { pid, comm });
                }
            }
        }
    }
}

/// The path with its directory's symlinks resolved (`/var/run/dbus/x` ->
/// `/run/dbus/x`); only the directory is resolved, the socket itself is
/// not touched.
fn canonical_socket_path(path: &str) -> Option<String> {
    let p = Path::new(path);
    let dir = fs::canonicalize(p.parent()?).ok()?;
    let real = dir.join(p.file_name()?).to_string_lossy().into_owned();
    (real != path).then_some(real)
}

/// Who connected: its command line and, for runc/crun, the container it is
/// working on. The command line is read only when no thread of the process
/// is in uninterruptible sleep (reading it takes the process's mmap lock).
pub fn process_info(proc: &ProcReader, pid: u32) -> ProcessInfo {
    if proc.any_task_in_d(pid) {
        return ProcessInfo::default();
    }
    let Ok(raw) = proc.read_bytes(&proc.pid_file(pid, "cmdline"), CMDLINE_MAX) else {
        return ProcessInfo::default();
    };
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut info = runtime_args(&args);
    if let Some(bundle) = flag_value(&args, "--bundle").or_else(|| flag_value(&args, "-b")) {
        info.pod = bundle_pod(Path::new(&bundle));
    }
    let mut cmdline = args.join(" ");
    if cmdline.len() > 300 {
        let mut end = 297;
        while !cmdline.is_char_boundary(end) {
            end -= 1;
        }
        cmdline.truncate(end);
        cmdline.push_str("...");
    }
    info.cmdline = cmdline;
    info
}

/// The most of a command line read (runc's are a few hundred bytes).
const CMDLINE_MAX: u64 = 1 << 20;

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_owned)
        }
    })
}

/// runc/crun: `runc [global flags] <action> [flags] <container-id>`.
pub fn runtime_args(args: &[String]) -> ProcessInfo {
    let prog = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    if !(prog == "runc" || prog == "crun") {
        return ProcessInfo::default();
    }
    const ACTIONS: [&str; 9] = [
        "create", "run", "start", "exec", "delete", "kill", "update", "pause", "resume",
    ];
    let Some(i) = args.iter().position(|a| ACTIONS.contains(&a.as_str())) else {
        return ProcessInfo::default();
    };
    let last = args
        .last()
        .filter(|a| !a.starts_with('-') && args.len() > i + 1);
    ProcessInfo {
        cmdline: String::new(),
        container: last.cloned(),
        action: Some(args[i].clone()),
        pod: None,
    }
}

/// namespace/name of the pod a bundle belongs to, from its config.json
/// annotations (CRI and dockershim keys). Only bundles on the runtime's
/// tmpfs state directories are read.
fn bundle_pod(bundle: &Path) -> Option<String> {
    let b = bundle.to_string_lossy();
    if !(b.starts_with("/run/") || b.starts_with("/var/run/")) {
        return None;
    }
    let f = fs::File::open(bundle.join("config.json")).ok()?;
    if f.metadata().ok()?.len() > 4 << 20 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(f)).ok()?;
    let a = v.get("annotations")?;
    let get = |k: &str| a.get(k).and_then(|x| x.as_str());
    let ns = get("io.kubernetes.cri.sandbox-namespace").or(get("io.kubernetes.pod.namespace"))?;
    let name = get("io.kubernetes.cri.sandbox-name").or(get("io.kubernetes.pod.name"))?;
    Some(format!("{ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn socket_paths_are_named_by_where_they_lead() {
        let dir = std::env::temp_dir().join(format!("wd-canon-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run/dbus")).unwrap();
        fs::create_dir_all(dir.join("var")).unwrap();
        std::os::unix::fs::symlink("../run", dir.join("var/run")).unwrap();
        let real = fs::canonicalize(&dir).unwrap();
        let via = format!("{}/var/run/dbus/system_bus_socket", real.display());
        assert_eq!(
            canonical_socket_path(&via),
            Some(format!("{}/run/dbus/system_bus_socket", real.display()))
        );
        // Already real, or a directory that does not exist: kept as given.
        assert_eq!(
            canonical_socket_path(&format!("{}/run/dbus/x", real.display())),
            None
        );
        assert_eq!(canonical_socket_path("/nonexistent-wd/dbus/x"), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn existing_clients_are_found_by_their_peers_path() {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        let dir = std::env::temp_dir().join(format!("wd-existing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bus.sock");
        let other = dir.join("other.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let lo = std::os::unix::net::UnixListener::bind(&other).unwrap();
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = l.accept().unwrap();
        let co = std::os::unix::net::UnixStream::connect(&other).unwrap();
        let (_so, _) = lo.accept().unwrap();
        let ino = |fd: i32| fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let want = path.to_str().unwrap();
        let found = existing_clients(&sock_diag::dump().unwrap(), |p| (p == want).then_some(3));
        assert_eq!(found.get(&ino(c.as_raw_fd())), Some(&3), "{found:?}");
        assert!(
            !found.contains_key(&ino(server.as_raw_fd())),
            "the server end"
        );
        assert!(!found.contains_key(&ino(co.as_raw_fd())), "another path");
        assert_eq!(
            ProcReader::new(Path::new("/")).socket_inode(std::process::id(), c.as_raw_fd()),
            Some(ino(c.as_raw_fd()))
        );
        drop((l, lo));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn runc_arguments_name_the_container() {
        let i = runtime_args(&s(&[
            "runc",
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/run/containerd/io.containerd.runtime.v2.task/moby/abc",
            "--pid-file",
            "/run/x/init.pid",
            "abc123",
        ]));
        assert_eq!(i.action.as_deref(), Some("create"));
        assert_eq!(i.container.as_deref(), Some("abc123"));
        assert_eq!(
            runtime_args(&s(&["dockerd", "-H", "x"])),
            ProcessInfo::default()
        );
        assert_eq!(
            runtime_args(&s(&["/usr/sbin/runc", "--version"])).action,
            None
        );
    }

    #[test]
    fn addresses_and_paths() {
        assert_eq!(
            unix_path_of_address("unix:path=/x/bus,guid=1;tcp:host=a"),
            Some("/x/bus".into())
        );
        assert_eq!(unix_path_of_address("unix:abstract=/tmp/x"), None);
        let d = default_sockets(Some("unix:path=/custom/bus"));
        assert_eq!(d.len(), 4);
        assert_eq!(
            default_sockets(Some("unix:path=/run/dbus/system_bus_socket")).len(),
            3
        );
        assert!(validate_sockets(&s(&["relative"])).is_err());
        assert!(validate_sockets(&[format!("/{}", "x".repeat(120))]).is_err());
        assert!(validate_sockets(&s(&["/a"; 9])).is_err());
        assert!(validate_sockets(&s(DEFAULT_SOCKETS)).is_ok());
        assert_eq!(parse_socket_link("socket:[42]"), Some(42));
        assert_eq!(parse_socket_link("pipe:[42]"), None);
    }
}

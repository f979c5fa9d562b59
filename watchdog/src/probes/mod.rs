//! Loading and attaching the eBPF programs (built from `watchdog-ebpf` and
//! embedded in this binary). Each probe attaches on its own: one that the
//! kernel refuses is reported with the reason and a hint, and the others run.
pub mod btf;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, RawTracePoint, raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
    },
};
use serde::Serialize;
use watchdog_common::{DROP_SLOTS, DROPS_MAP, EVENTS_MAP};

use crate::paths;

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/watchdog"));

/// A probe the agent knows about.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// Name used in output (`watchdog check`, the ready record, metrics).
    pub name: &'static str,
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// The tracepoint it attaches to.
    pub hook: Hook,
    pub what: &'static str,
}

/// Where a program attaches: a raw tracepoint or a BTF (typed) tracepoint,
/// by the kernel's tracepoint name. Shown as `raw_tp/sys_exit`,
/// `tp_btf/sched_switch` (the section names of the eBPF programs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    RawTp(&'static str),
    TpBtf(&'static str),
}

impl Hook {
    /// The tracepoint's name.
    pub fn tracepoint(self) -> &'static str {
        match self {
            Self::RawTp(tp) | Self::TpBtf(tp) => tp,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Padded like a string (the terminal aligns probe lines on it).
        match self {
            Self::RawTp(tp) => f.pad(&format!("raw_tp/{tp}")),
            Self::TpBtf(tp) => f.pad(&format!("tp_btf/{tp}")),
        }
    }
}

impl Serialize for Hook {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub const FORK_FAILURES: ProbeSpec = ProbeSpec {
    name: "fork_failures",
    program: "fork_failures",
    hook: Hook::RawTp("sys_exit"),
    what: "fork/vfork/clone/clone3 returning EAGAIN (PID exhaustion)",
};

pub const NPROC_PRESSURE: ProbeSpec = ProbeSpec {
    name: "nproc_pressure",
    program: "nproc_pressure",
    hook: Hook::RawTp("task_newtask"),
    what: "successful forks of users near their RLIMIT_NPROC (arms fork_failures, warns early)",
};

/// The storage-hang probes (see `watchdog-ebpf/src/storage.rs`), attached
/// together. None is on a syscall hook.
pub const STORAGE_PROBES: [ProbeSpec; 4] = [
    ProbeSpec {
        name: "storage_fork",
        program: "storage_fork",
        hook: Hook::RawTp("sched_process_fork"),
        what: "children of watched runtime processes are watched too",
    },
    ProbeSpec {
        name: "storage_exec",
        program: "storage_exec",
        hook: Hook::RawTp("sched_process_exec"),
        what: "processes exec'ing a watched runtime name (--watch-comm)",
    },
    ProbeSpec {
        name: "storage_exit",
        program: "storage_exit",
        hook: Hook::RawTp("sched_process_exit"),
        what: "forgets exiting tasks (their sleep entries)",
    },
    ProbeSpec {
        name: "storage_sleep",
        program: "storage_sleep",
        hook: Hook::TpBtf("sched_switch"),
        what: "tasks going to sleep: every D sleep (kernel stack) and watched tasks' sleeps in file syscalls, with the syscall and path from their saved registers",
    },
];

/// D-Bus/systemd request tracking from the socket tracepoints (Linux 6.3+;
/// see `watchdog-ebpf/src/dbus.rs`): no syscall hook.
pub const DBUS_SOCKET_PROBES: [ProbeSpec; 2] = [
    ProbeSpec {
        name: "dbus_sock_send",
        program: "dbus_sock_send",
        hook: Hook::TpBtf("sock_send_length"),
        what: "sends of runtimes on followed D-Bus/systemd sockets, with the messages they start",
    },
    ProbeSpec {
        name: "dbus_sock_recv",
        program: "dbus_sock_recv",
        hook: Hook::TpBtf("sock_recv_length"),
        what: "receives of runtimes on followed D-Bus/systemd sockets (replies by serial)",
    },
];

/// The same from raw syscall hooks, only when asked (`--dbus-requests
/// syscalls`): every syscall of the node pays the tracing slow path.
pub const DBUS_SYSCALL_PROBES: [ProbeSpec; 2] = [
    ProbeSpec {
        name: "dbus_sys_enter",
        program: "dbus_sys_enter",
        hook: Hook::RawTp("sys_enter"),
        what: "syscall entry time of watched processes (D-Bus requests, syscall path)",
    },
    ProbeSpec {
        name: "dbus_sys_exit",
        program: "dbus_sys_exit",
        hook: Hook::RawTp("sys_exit"),
        what: "connects, sends, receives, closes of runtimes on followed D-Bus/systemd sockets (syscall path)",
    },
];

/// Attaches nothing but an empty program on the same hook: the kernel's cost of
/// any sys_exit program, for benchmarks.
pub const BENCH_FLOOR: ProbeSpec = ProbeSpec {
    name: "bench_floor",
    program: "bench_empty_sys_exit",
    hook: Hook::RawTp("sys_exit"),
    what: "empty sys_exit program (benchmark floor)",
};

/// The empty program on sys_enter (with [`BENCH_FLOOR`]: the floor of the
/// storage syscall tracking).
pub const BENCH_FLOOR_ENTER: ProbeSpec = ProbeSpec {
    name: "bench_floor_enter",
    program: "bench_empty_sys_enter",
    hook: Hook::RawTp("sys_enter"),
    what: "empty sys_enter program (benchmark floor)",
};

/// Empty programs on the socket tracepoints that the default D-Bus request
/// tracking uses: the kernel's cost of any program there, for benchmarks.
pub const BENCH_FLOOR_SOCK: [ProbeSpec; 2] = [
    ProbeSpec {
        name: "bench_floor_sock_send",
        program: "bench_empty_sock_send",
        hook: Hook::TpBtf("sock_send_length"),
        what: "empty sock_send_length program (benchmark floor)",
    },
    ProbeSpec {
        name: "bench_floor_sock_recv",
        program: "bench_empty_sock_recv",
        hook: Hook::TpBtf("sock_recv_length"),
        what: "empty sock_recv_length program (benchmark floor)",
    },
];

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    Attached,
    /// Loaded and verified; attached only while a PID limit is under pressure.
    Standby,
    Unavailable,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub name: &'static str,
    pub hook: Hook,
    pub status: ProbeState,
    /// Why it is unavailable, or what it runs without (e.g. no cgroup ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Which way one part of the detection runs on this kernel (`watchdog
/// check`, the `ready` record, the `watchdog_probe_path` metric).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProbePath {
    /// The part, e.g. `dbus_requests`.
    pub part: &'static str,
    /// The way it runs, e.g. `socket_tracepoints`, `syscalls`, `off`.
    pub path: &'static str,
    /// Every way the part can run (the metric sets the others to 0).
    #[serde(skip)]
    pub choices: &'static [&'static str],
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "watchdog needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE, to load its eBPF probes (effective uid {uid}, missing {missing})"
    )]
    NotPrivileged { uid: u32, missing: String },
    #[error("the kernel refused watchdog's eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
}

/// Kernel facts the programs need, read from BTF. Missing values disable only
/// the part of a probe that needs them.
#[derive(Clone, Debug, Default)]
pub struct KernelLayout {
    pub pt_regs_nr: u64,
    pub pt_regs_arg0: u64,
    pub pt_regs_arg1: u64,
    pub pt_regs_arg2: u64,
    /// x86_64: where `syscall` leaves the user ip and flags (ip/cx,
    /// flags/r11), to tell a syscall sleep from a page fault or compat call.
    pub pt_regs_ip: u64,
    pub pt_regs_cx: u64,
    pub pt_regs_flags: u64,
    pub pt_regs_r11: u64,
    pub task_flags: u64,
    /// task->files->fdt->{max_fds, fd[]}, file->f_inode->i_mode: whether
    /// an fd a watched task sleeps on is storage (not a pipe or socket).
    /// [task.files, files.fdt, fdtable.max_fds, fdtable.fd, file.f_inode,
    /// inode.i_mode] (some are legitimately 0), when all were found.
    pub fd_type: Option<[u64; 6]>,
    pub task_tgid: u64,
    pub task_nvcsw: u64,
    pub task_nivcsw: u64,
    pub task_cgroups: u64,
    pub css_set_subsys: u64,
    pub pids_cgrp_id: Option<u64>,
    pub css_cgroup: u64,
    pub cgroup_kn: u64,
    pub kn_id: u64,
    pub task_real_cred: u64,
    pub cred_ucounts: u64,
    pub ucounts_rlimit: u64,
    pub ucount_nproc_idx: u64,
    pub task_signal: u64,
    pub signal_rlim: u64,
    /// `struct sock` -> `__sk_common.skc_family`.
    pub sk_family: u64,
    /// `struct unix_sock` -> `peer`, `addr`; `struct unix_address` -> `len`,
    /// `name`. 0: unknown (the socket-tracepoint probes follow nothing).
    pub unix_peer: u64,
    pub unix_addr: u64,
    pub unix_addr_len: u64,
    pub unix_addr_name: u64,
    /// The kernel has the `sock_send_length`/`sock_recv_length` BTF
    /// tracepoints (Linux 6.3+).
    pub sock_tracepoints: bool,
    /// What could not be read, for the probe status.
    pub missing: Vec<String>,
    /// What the socket-tracepoint probes could not read (their own status).
    pub missing_unix: Vec<String>,
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub const PT_REGS_NR: &str = "orig_ax";
    pub const PT_REGS_ARG0: &str = "di";
    /// The second argument's register and its UAPI offset.
    pub const PT_REGS_ARG1: (&str, u64) = ("si", 104);
    pub const PT_REGS_ARG2: (&str, u64) = ("dx", 96);
    /// UAPI layout of x86_64 pt_regs, used when BTF is absent.
    pub const PT_REGS_FALLBACK: (u64, u64) = (120, 112);
    pub const NR_FORK: i64 = 57;
    pub const NR_VFORK: i64 = 58;
    pub const NR_CLONE: i64 = 56;
    pub const NR_CLONE3: i64 = 435;
}
#[cfg(target_arch = "aarch64")]
mod arch {
    pub const PT_REGS_NR: &str = "syscallno";
    pub const PT_REGS_ARG0: &str = "orig_x0";
    /// x1 = regs[1] (no named member: BTF gives only the array).
    pub const PT_REGS_ARG1: (&str, u64) = ("", 8);
    pub const PT_REGS_ARG2: (&str, u64) = ("", 16);
    pub const PT_REGS_FALLBACK: (u64, u64) = (280, 272);
    pub const NR_FORK: i64 = -1;
    pub const NR_VFORK: i64 = -1;
    pub const NR_CLONE: i64 = 220;
    pub const NR_CLONE3: i64 = 435;
}

impl KernelLayout {
    /// The window of `struct pt_regs` (start, length) that holds the
    /// syscall number and first three arguments, which the D-Bus socket
    /// probe reads by direct loads; length 0 when it is wider than
    /// `DBUS_REGS_WINDOW` (a layout the probe does not trust: it then reads
    /// no call, and counts the bytes as unparsed).
    pub fn syscall_regs_window(&self) -> (u64, u64) {
        let offs = [
            self.pt_regs_nr,
            self.pt_regs_arg0,
            self.pt_regs_arg1,
            self.pt_regs_arg2,
        ];
        let lo = offs.iter().copied().min().unwrap_or(0) & !7;
        let hi = offs.iter().copied().max().unwrap_or(0) + 8;
        let len = hi - lo;
        if len > watchdog_common::DBUS_REGS_WINDOW {
            (0, 0)
        } else {
            (lo, len)
        }
    }

    pub fn from_btf(path: &Path) -> Self {
        let mut l = Self {
            pt_regs_nr: arch::PT_REGS_FALLBACK.0,
            pt_regs_arg0: arch::PT_REGS_FALLBACK.1,
            pt_regs_arg1: arch::PT_REGS_ARG1.1,
            pt_regs_arg2: arch::PT_REGS_ARG2.1,
            ..Self::default()
        };
        let btf = match btf::Btf::from_file(path) {
            Ok(b) => b,
            Err(e) => {
                l.missing.push(format!(
                    "{e}; the pids cgroup of failing tasks is read from /proc instead"
                ));
                return l;
            }
        };
        let mut off = |ty: &str, member: &str| match btf.member_offset(ty, member) {
            Ok(o) => o,
            Err(e) => {
                l.missing.push(e.to_string());
                0
            }
        };
        let pt_nr = off("pt_regs", arch::PT_REGS_NR);
        let pt_a0 = off("pt_regs", arch::PT_REGS_ARG0);
        let task_cgroups = off("task_struct", "cgroups");
        let css_set_subsys = off("css_set", "subsys");
        let css_cgroup = off("cgroup_subsys_state", "cgroup");
        let cgroup_kn = off("cgroup", "kn");
        let kn_id = off("kernfs_node", "id");
        if pt_nr != 0 {
            l.pt_regs_nr = pt_nr;
        }
        if pt_a0 != 0 {
            l.pt_regs_arg0 = pt_a0;
        }
        if !arch::PT_REGS_ARG1.0.is_empty() {
            let a1 = off("pt_regs", arch::PT_REGS_ARG1.0);
            if a1 != 0 {
                l.pt_regs_arg1 = a1;
            }
        }
        if !arch::PT_REGS_ARG2.0.is_empty() {
            let a2 = off("pt_regs", arch::PT_REGS_ARG2.0);
            if a2 != 0 {
                l.pt_regs_arg2 = a2;
            }
        }
        if cfg!(target_arch = "x86_64") {
            l.pt_regs_ip = off("pt_regs", "ip");
            // With FRED event delivery `syscall` need not leave ip/flags in
            // rcx/r11: skip that test there (ip != 0 still applies).
            if !cpu_has_fred() {
                l.pt_regs_cx = off("pt_regs", "cx");
                l.pt_regs_flags = off("pt_regs", "flags");
                l.pt_regs_r11 = off("pt_regs", "r11");
            }
        }
        l.task_flags = off("task_struct", "flags");
        l.task_tgid = off("task_struct", "tgid");
        l.task_nvcsw = off("task_struct", "nvcsw");
        l.task_nivcsw = off("task_struct", "nivcsw");
        l.task_cgroups = task_cgroups;
        l.css_set_subsys = css_set_subsys;
        l.css_cgroup = css_cgroup;
        l.cgroup_kn = cgroup_kn;
        l.kn_id = kn_id;
        l.task_real_cred = off("task_struct", "real_cred");
        l.cred_ucounts = off("cred", "ucounts");
        l.ucounts_rlimit = off("ucounts", "rlimit");
        l.task_signal = off("task_struct", "signal");
        l.signal_rlim = off("signal_struct", "rlim");
        match btf.enumerator("UCOUNT_RLIMIT_NPROC") {
            Ok(v) if v >= 0 => l.ucount_nproc_idx = v as u64,
            _ => {
                l.missing
                    .push("enumerator UCOUNT_RLIMIT_NPROC (kernel < 5.14?)".into());
                l.ucounts_rlimit = 0;
            }
        }
        l.sock_tracepoints = btf.has_type("btf_trace_sock_send_length")
            && btf.has_type("btf_trace_sock_recv_length");
        let mut unix_off = |ty: &str, member: &str| match btf.member_offset(ty, member) {
            Ok(o) => Some(o),
            Err(e) => {
                l.missing_unix.push(e.to_string());
                None
            }
        };
        let fam = unix_off("sock", "__sk_common").zip(unix_off("sock_common", "skc_family"));
        let (peer, addr) = (unix_off("unix_sock", "peer"), unix_off("unix_sock", "addr"));
        let (alen, aname) = (
            unix_off("unix_address", "len"),
            unix_off("unix_address", "name"),
        );
        // All or nothing: a partial set would misread every socket.
        if let (Some((c, f)), Some(p), Some(a), Some(al), Some(an)) = (fam, peer, addr, alen, aname)
        {
            l.sk_family = c + f;
            l.unix_peer = p;
            l.unix_addr = a;
            l.unix_addr_len = al;
            l.unix_addr_name = an;
        }
        match btf.enumerator("pids_cgrp_id") {
            Ok(v) if v >= 0 => l.pids_cgrp_id = Some(v as u64),
            Ok(_) => l.missing.push("pids_cgrp_id is negative".into()),
            Err(e) => l
                .missing
                .push(format!("{e} (kernel without the pids controller)")),
        }
        let fd_type = [
            ("task_struct", "files"),
            ("files_struct", "fdt"),
            ("fdtable", "max_fds"),
            ("fdtable", "fd"),
            ("file", "f_inode"),
            ("inode", "i_mode"),
        ]
        .map(|(t, m)| btf.member_offset(t, m).map_err(|e| e.to_string()));
        match fd_type.iter().find_map(|r| r.as_ref().err()) {
            None => l.fd_type = Some(fd_type.map(|r| r.unwrap_or(0))),
            Some(e) => l.missing.push(format!(
                "{e} (watched tasks' sleeps on pipes and sockets are recorded too)"
            )),
        }
        l
    }
}

/// The CPU delivers events with FRED (x86 flags line in /proc/cpuinfo).
fn cpu_has_fred() -> bool {
    let proc = crate::context::procfs::ProcReader::new(Path::new("/"));
    proc.read(&proc.proc_path("cpuinfo"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().any(|f| f == "fred"))
        })
        .unwrap_or(false)
}

/// The loaded object with its attached probes.
pub struct Probes {
    ebpf: Ebpf,
    pub statuses: Vec<ProbeStatus>,
    links: Vec<(&'static str, Link)>,
    /// The kernel's BTF, parsed once for every BTF tracepoint program (it is
    /// megabytes), dropped after loading.
    kernel_btf: Option<Result<aya::Btf, String>>,
}

enum Link {
    Raw(RawTracePointLinkId),
    Btf(BtfTracePointLinkId),
}

/// Effective capabilities of this process (CapEff from /proc/self/status).
fn effective_caps() -> u64 {
    let proc = crate::context::procfs::ProcReader::new(Path::new("/"));
    proc.read(&proc.proc_path("self/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails with one clear sentence when this process cannot load BPF programs.
pub fn check_privileges() -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let caps = effective_caps();
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYS_RESOURCE: u32 = 24;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, n)| n)
    .collect();
    Err(LoadError::NotPrivileged {
        uid,
        missing: missing.join(", "),
    })
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a local; failure only matters on kernels < 5.11
    // (memlock-accounted BPF memory), where the load error then says so.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Probes {
    /// Load the object with `layout` patched in, attach `wanted`, and load
    /// (verify) `standby` so that `arm` can attach it later.
    pub fn load(
        layout: &KernelLayout,
        wanted: &[ProbeSpec],
        standby: &[ProbeSpec],
    ) -> Result<Self, LoadError> {
        check_privileges()?;
        raise_memlock();
        // The kernel's BTF, parsed once for the loader's relocations and for
        // every BTF tracepoint program (a parse is ~10 MB of heap here).
        // `EbpfLoader::new` parses its own copy: drop it before ours exists.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        let kernel_btf: Result<aya::Btf, String> = aya::Btf::from_sys_fs().map_err(|e| {
            format!(
                "no kernel BTF ({}): {} (BTF tracepoints need CONFIG_DEBUG_INFO_BTF)",
                paths::KERNEL_BTF,
                error_chain(&e)
            )
        });
        loader.btf(kernel_btf.as_ref().ok());
        let pids_idx = layout.pids_cgrp_id.unwrap_or(u64::MAX);
        let fd_type = layout.fd_type;
        let ft = fd_type.unwrap_or([0; 6]);
        let fd_known = u64::from(fd_type.is_some());
        let regs_window = layout.syscall_regs_window();
        loader
            .override_global("PT_REGS_NR_OFF", &layout.pt_regs_nr, true)
            .override_global("PT_REGS_ARG0_OFF", &layout.pt_regs_arg0, true)
            .override_global("PT_REGS_ARG1_OFF", &layout.pt_regs_arg1, true)
            .override_global("PT_REGS_ARG2_OFF", &layout.pt_regs_arg2, true)
            .override_global("PT_REGS_IP_OFF", &layout.pt_regs_ip, true)
            .override_global("PT_REGS_CX_OFF", &layout.pt_regs_cx, true)
            .override_global("PT_REGS_FLAGS_OFF", &layout.pt_regs_flags, true)
            .override_global("PT_REGS_R11_OFF", &layout.pt_regs_r11, true)
            .override_global("TASK_FLAGS_OFF", &layout.task_flags, true)
            .override_global("FD_TYPE_KNOWN", &fd_known, true)
            .override_global("TASK_FILES_OFF", &ft[0], true)
            .override_global("FILES_FDT_OFF", &ft[1], true)
            .override_global("FDT_MAX_FDS_OFF", &ft[2], true)
            .override_global("FDT_FD_OFF", &ft[3], true)
            .override_global("FILE_INODE_OFF", &ft[4], true)
            .override_global("INODE_MODE_OFF", &ft[5], true)
            .override_global("TASK_TGID_OFF", &layout.task_tgid, true)
            .override_global("TASK_NVCSW_OFF", &layout.task_nvcsw, true)
            .override_global("TASK_NIVCSW_OFF", &layout.task_nivcsw, true)
            .override_global("NR_FORK", &arch::NR_FORK, true)
            .override_global("NR_VFORK", &arch::NR_VFORK, true)
            .override_global("NR_CLONE", &arch::NR_CLONE, true)
            .override_global("NR_CLONE3", &arch::NR_CLONE3, true)
            .override_global("TASK_CGROUPS_OFF", &layout.task_cgroups, true)
            .override_global("CSS_SET_SUBSYS_OFF", &layout.css_set_subsys, true)
            .override_global("PIDS_CGRP_ID", &pids_idx, true)
            .override_global("CSS_CGROUP_OFF", &layout.css_cgroup, true)
            .override_global("CGROUP_KN_OFF", &layout.cgroup_kn, true)
            .override_global("KN_ID_OFF", &layout.kn_id, true)
            .override_global("TASK_REAL_CRED_OFF", &layout.task_real_cred, true)
            .override_global("CRED_UCOUNTS_OFF", &layout.cred_ucounts, true)
            .override_global("UCOUNTS_RLIMIT_OFF", &layout.ucounts_rlimit, true)
            .override_global("UCOUNT_NPROC_IDX", &layout.ucount_nproc_idx, true)
            .override_global("TASK_SIGNAL_OFF", &layout.task_signal, true)
            .override_global("SIGNAL_RLIM_OFF", &layout.signal_rlim, true)
            .override_global("DBUS_ARG1_OFF", &layout.pt_regs_arg1, true)
            .override_global("DBUS_REGS_LEN", &regs_window.1, true)
            .override_global("SK_FAMILY_OFF", &layout.sk_family, true)
            .override_global("UNIX_PEER_OFF", &layout.unix_peer, true)
            .override_global("UNIX_ADDR_OFF", &layout.unix_addr, true)
            .override_global("UNIX_ADDR_LEN_OFF", &layout.unix_addr_len, true)
            .override_global("UNIX_ADDR_NAME_OFF", &layout.unix_addr_name, true);
        // One byte per possible tgid, 64 per element (storage probes).
        let proc = crate::context::procfs::ProcReader::new(Path::new("/"));
        let pid_max = proc
            .read_trim(&proc.rooted(paths::PID_MAX))
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(4_194_304);
        loader.map_max_entries(
            watchdog_common::WATCHED_BYTES_MAP,
            pid_max
                .div_ceil(64)
                .clamp(1, watchdog_common::WATCHED_BITS_WORDS),
        );
        let ebpf = loader.load(EBPF_OBJECT)?;
        drop(loader);
        let mut probes = Self {
            ebpf,
            statuses: Vec::new(),
            links: Vec::new(),
            kernel_btf: Some(kernel_btf),
        };
        let details = |spec: &ProbeSpec| {
            if DBUS_SOCKET_PROBES.iter().any(|d| d.name == spec.name) && layout.unix_peer == 0 {
                return Some(format!(
                    "follows no socket: unix socket offsets unknown ({})",
                    layout.missing_unix.join("; ")
                ));
            }
            (!layout.missing.is_empty()
                && (spec.name == FORK_FAILURES.name || spec.name == NPROC_PRESSURE.name))
                .then(|| format!("running without: {}", layout.missing.join("; ")))
        };
        for (spec, attach) in wanted
            .iter()
            .map(|s| (s, true))
            .chain(standby.iter().map(|s| (s, false)))
        {
            let result = probes.load_program(spec);
            let result = match result {
                Ok(()) if attach => probes.arm(spec).map(|()| ProbeState::Attached),
                Ok(()) => Ok(ProbeState::Standby),
                Err(e) => Err(e),
            };
            probes.statuses.push(match result {
                Ok(state) => ProbeStatus {
                    name: spec.name,
                    hook: spec.hook,
                    status: state,
                    detail: details(spec),
                },
                Err(why) => {
                    tracing::warn!(probe = spec.name, "probe unavailable: {why}");
                    ProbeStatus {
                        name: spec.name,
                        hook: spec.hook,
                        status: ProbeState::Unavailable,
                        detail: Some(why),
                    }
                }
            });
        }
        probes.kernel_btf = None;
        Ok(probes)
    }

    fn load_program(&mut self, spec: &ProbeSpec) -> Result<(), String> {
        let rejected = |e: aya::programs::ProgramError| {
            format!("the kernel rejected the program: {}", error_chain(&e))
        };
        if let Hook::TpBtf(tp) = spec.hook {
            let btf = match self.kernel_btf.take() {
                Some(b) => b,
                None => aya::Btf::from_sys_fs().map_err(|e| {
                    format!(
                        "no kernel BTF ({}): {} (BTF tracepoints need CONFIG_DEBUG_INFO_BTF)",
                        paths::KERNEL_BTF,
                        error_chain(&e)
                    )
                }),
            };
            let loaded = match &btf {
                Ok(b) => self
                    .btf_program(spec)
                    .and_then(|p| p.load(tp, b).map_err(rejected)),
                Err(e) => Err(e.clone()),
            };
            self.kernel_btf = Some(btf);
            loaded
        } else {
            self.program(spec)?.load().map_err(rejected)
        }
    }

    /// The probe's program as type `P` (raw or BTF tracepoint).
    fn typed_program<'a, P>(&'a mut self, spec: &ProbeSpec) -> Result<&'a mut P, String>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf
            .program_mut(spec.program)
            .ok_or_else(|| {
                format!(
                    "program {} missing from the eBPF object (build mismatch)",
                    spec.program
                )
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())
    }

    fn btf_program(&mut self, spec: &ProbeSpec) -> Result<&mut BtfTracePoint, String> {
        self.typed_program(spec)
    }

    fn program(&mut self, spec: &ProbeSpec) -> Result<&mut RawTracePoint, String> {
        self.typed_program(spec)
    }

    /// Attach a loaded probe (no-op when attached).
    pub fn arm(&mut self, spec: &ProbeSpec) -> Result<(), String> {
        if self.links.iter().any(|(n, _)| *n == spec.name) {
            return Ok(());
        }
        let link = if let Hook::TpBtf(tp) = spec.hook {
            Link::Btf(self.btf_program(spec)?.attach().map_err(|e| {
                format!(
                    "cannot attach to BTF tracepoint {tp}: {} (needs kernel >= 5.5)",
                    error_chain(&e)
                )
            })?)
        } else {
            let tp = spec.hook.tracepoint();
            Link::Raw(self.program(spec)?.attach(tp).map_err(|e| {
                format!("cannot attach to raw tracepoint {tp}: {} (needs CONFIG_BPF_EVENTS and kernel >= 4.17)", error_chain(&e))
            })?)
        };
        self.links.push((spec.name, link));
        self.set_state(spec, ProbeState::Attached);
        Ok(())
    }

    /// Detach a probe, keeping it loaded (no-op when detached).
    pub fn disarm(&mut self, spec: &ProbeSpec) -> Result<(), String> {
        let Some(i) = self.links.iter().position(|(n, _)| *n == spec.name) else {
            return Ok(());
        };
        let (_, link) = self.links.remove(i);
        match link {
            Link::Raw(l) => self.program(spec)?.detach(l),
            Link::Btf(l) => self.btf_program(spec)?.detach(l),
        }
        .map_err(|e| error_chain(&e))?;
        self.set_state(spec, ProbeState::Standby);
        Ok(())
    }

    fn set_state(&mut self, spec: &ProbeSpec, state: ProbeState) {
        if let Some(s) = self.statuses.iter_mut().find(|s| s.name == spec.name) {
            s.status = state;
        }
    }

    pub fn state(&self, name: &str) -> Option<ProbeState> {
        self.statuses
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.status.clone())
    }

    /// The events ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.ebpf
            .take_map(EVENTS_MAP)
            .and_then(|m| RingBuf::try_from(m).ok())
    }

    /// Sum over CPUs of the kernel-side drop counters of the ring buffer
    /// (failed reservations, slots below [`watchdog_common::DROP_WATCHED`]).
    pub fn kernel_drops(&self) -> u64 {
        (0..watchdog_common::DROP_WATCHED.min(DROP_SLOTS))
            .map(|i| self.drop_slot(i))
            .sum()
    }

    /// Sum over CPUs of one slot of the kernel-side drop counters.
    pub fn drop_slot(&self, slot: u32) -> u64 {
        let Some(map) = self.ebpf.map(DROPS_MAP) else {
            return 0;
        };
        let Ok(drops) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        drops
            .get(&slot, 0)
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .unwrap_or(0)
    }

    /// Take a map out of the object (the programs keep using it).
    pub fn take_map(&mut self, name: &str) -> Option<Map> {
        self.ebpf.take_map(name)
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Facts about this kernel for `watchdog check`.
pub fn kernel_release() -> String {
    let proc = crate::context::procfs::ProcReader::new(Path::new("/"));
    proc.read_trim(&proc.rooted(paths::OSRELEASE))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::KernelLayout;

    #[test]
    fn register_window_covers_the_syscall_number_and_arguments() {
        // x86_64: dx 96, si 104, di 112, orig_ax 120.
        let x86 = KernelLayout {
            pt_regs_nr: 120,
            pt_regs_arg0: 112,
            pt_regs_arg1: 104,
            pt_regs_arg2: 96,
            ..KernelLayout::default()
        };
        assert_eq!(x86.syscall_regs_window(), (96, 32));
        // arm64: regs[1] 8, regs[2] 16, orig_x0 272, syscallno 280.
        let arm64 = KernelLayout {
            pt_regs_nr: 280,
            pt_regs_arg0: 272,
            pt_regs_arg1: 8,
            pt_regs_arg2: 16,
            ..KernelLayout::default()
        };
        assert_eq!(arm64.syscall_regs_window(), (8, 280));
        // Wider than DBUS_REGS_WINDOW: not trusted (the probe reads no call).
        let odd = KernelLayout {
            pt_regs_nr: 4096,
            ..arm64
        };
        assert_eq!(odd.syscall_regs_window(), (0, 0));
    }
}

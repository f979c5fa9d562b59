//! Event types shared by watchdog's eBPF programs and its userspace agent.
//!
//! Every record a probe writes into a ring buffer starts with an [`EventHeader`]
//! at offset 0. Its `kind` tells the decoder which struct follows; `0` is
//! [`EventKind::Unknown`] and never written on purpose, so a zeroed or torn
//! record is rejected instead of being misread. Each event type is defined
//! exactly once, here.
#![no_std]

/// Length of `task_struct::comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Ring buffer carrying every probe's events to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU counters of events that could not be reserved in [`EVENTS_MAP`],
/// indexed by [`EventKind`].
pub const DROPS_MAP: &str = "DROPS";
/// Number of slots in [`DROPS_MAP`] (one per `EventKind` value).
pub const DROP_SLOTS: u32 = 12;

/// Which struct follows the header. Stored as `u32` in the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Unknown = 0,
    /// A fork/vfork/clone/clone3 that returned `-EAGAIN`: [`ForkFailureEvent`].
    ForkFailure = 1,
    /// A non-root user's task count neared its RLIMIT_NPROC: [`NprocPressureEvent`].
    NprocPressure = 2,
    /// A call on a tracked unix-socket connection (D-Bus/systemd): [`SocketEvent`].
    Socket = 3,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::ForkFailure,
            2 => Self::NprocPressure,
            3 => Self::Socket,
            _ => Self::Unknown,
        }
    }
}

/// Fixed header at offset 0 of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`EventKind`] as `u32`.
    pub kind: u32,
    /// Size in bytes of the whole event including this header; lets a decoder
    /// reject records written by a mismatched probe build.
    pub size: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was produced.
    pub ts_ns: u64,
}

impl EventHeader {
    pub const fn new(kind: EventKind, size: usize, ts_ns: u64) -> Self {
        Self {
            kind: kind as u32,
            size: size as u32,
            ts_ns,
        }
    }
}

/// Which syscall failed, as the probe classified it (syscall numbers differ per
/// architecture, so userspace never needs to know them).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkSyscall {
    Unknown = 0,
    Fork = 1,
    Vfork = 2,
    Clone = 3,
    Clone3 = 4,
}

impl ForkSyscall {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Fork,
            2 => Self::Vfork,
            3 => Self::Clone,
            4 => Self::Clone3,
            _ => Self::Unknown,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Fork => "fork",
            Self::Vfork => "vfork",
            Self::Clone => "clone",
            Self::Clone3 => "clone3",
        }
    }
}

/// `CLONE_THREAD`: the failed call was creating a thread, not a process.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// A process-creating syscall returned `-EAGAIN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkFailureEvent {
    pub header: EventHeader,
    /// Thread id of the caller (kernel `pid`).
    pub tid: u32,
    /// Process id of the caller (kernel `tgid`).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`ForkSyscall`] as `u32`.
    pub syscall: u32,
    /// The return value (negative errno; -11 for EAGAIN).
    pub ret: i32,
    /// Clone flags where the probe could read them (clone, clone3), else 0.
    pub clone_flags: u64,
    /// Cgroup v2 (unified hierarchy) id of the caller: `bpf_get_current_cgroup_id()`.
    pub cgroup_id: u64,
    /// Kernfs id (the directory inode number) of the caller's cgroup in the
    /// hierarchy the pids controller is bound to (v1 `pids` or v2). 0 when the
    /// probe could not read it (offsets unknown).
    pub pids_cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A task of a non-root user forked successfully while that user's task
/// count (the kernel's ucounts, what RLIMIT_NPROC is checked against) was at
/// or above the arming threshold of the forking task's soft RLIMIT_NPROC.
/// Rate-limited in the kernel (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NprocPressureEvent {
    pub header: EventHeader,
    pub tid: u32,
    pub pid: u32,
    pub uid: u32,
    pub _pad: u32,
    /// Tasks the user holds (ucounts RLIMIT_NPROC count).
    pub tasks: u64,
    /// Soft RLIMIT_NPROC of the forking task.
    pub limit: u64,
    pub comm: [u8; COMM_LEN],
}

// --- Storage hangs (maps read by userspace, no ring-buffer events) ---------

/// Drop-counter slots in [`DROPS_MAP`] used by the storage probes (after the
/// [`EventKind`] slots).
pub const DROP_WATCHED: u32 = 4;
/// A sleeping task's path argument could not be read (not a drop of the
/// sleep: it is recorded without its path).
pub const DROP_PATH_READ: u32 = 5;
/// A D sleep not recorded: [`BLOCKED_MAP`] full.
pub const DROP_BLOCKED: u32 = 6;
/// A watched task's interruptible sleep not recorded: [`SLEEPING_MAP`] full.
pub const DROP_SLEEPING: u32 = 9;
pub const DROP_STACK: u32 = 7;

/// tgid -> 1: processes whose syscalls are tracked (`HashMap<u32, u8>`).
pub const WATCHED_MAP: &str = "WATCHED";
pub const WATCHED_ENTRIES: u32 = 32768;
/// Watched tgids as one byte each, 64 per element (`Array<[u8; 64]>`, byte
/// `tgid % 64` of element `tgid / 64`): the syscall hooks' fast path, an
/// inlined array lookup. Compiled for PID_MAX_LIMIT (4194304) pids; the
/// loader shrinks it to the node's pid_max.
pub const WATCHED_BYTES_MAP: &str = "WATCHED_BYTES";
pub const WATCHED_BITS_WORDS: u32 = 4_194_304 / 64;
/// Runtime names that make an exec'd process watched (`Array<CommPattern>`).
pub const WATCH_COMMS_MAP: &str = "WATCH_COMMS";
pub const WATCH_COMMS_SLOTS: u32 = 16;
/// Syscall number -> [`ArgKind`] as `u8`; 0 = not tracked (`Array<u8>`).
pub const SYSCALL_KINDS_MAP: &str = "SYSCALL_KINDS";
pub const SYSCALL_SLOTS: u32 = 512;
/// tid -> [`BlockedEntry`]: the last uninterruptible sleep of every task
/// that went to D (`HashMap<u32, BlockedEntry>`).
pub const BLOCKED_MAP: &str = "BLOCKED";
pub const BLOCKED_ENTRIES: u32 = 8192;
/// tid -> [`BlockedEntry`]: the last interruptible sleep of watched tasks in
/// a tracked file syscall on storage (not a pipe or socket).
pub const SLEEPING_MAP: &str = "SLEEPING";
pub const SLEEPING_ENTRIES: u32 = 4096;
/// Kernel stacks of tasks going to uninterruptible sleep (`StackTrace`).
pub const STACKS_MAP: &str = "STACKS";
pub const STACKS_ENTRIES: u32 = 2048;
/// Bytes of a syscall's path argument kept (with the terminating NUL).
pub const PATH_LEN: usize = 256;

/// `task_struct::__state` bits as `sched_switch` reports them.
pub const TASK_INTERRUPTIBLE: u32 = 0x1;
pub const TASK_UNINTERRUPTIBLE: u32 = 0x2;
pub const TASK_WAKEKILL: u32 = 0x100;
pub const TASK_NOLOAD: u32 = 0x400;
/// `TASK_WAKEKILL | TASK_UNINTERRUPTIBLE`: D, but SIGKILL still wakes it.
pub const TASK_KILLABLE: u32 = TASK_WAKEKILL | TASK_UNINTERRUPTIBLE;

/// A comm the exec probe matches: the first `len` bytes of `name`, and, if
/// `prefix` is 0, nothing after them (exact match). `len == 0`: unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommPattern {
    pub name: [u8; COMM_LEN],
    pub len: u32,
    pub prefix: u32,
}

/// Where a tracked syscall's file argument is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Untracked = 0,
    /// arg0 is a file descriptor (read, fsync, fstat...).
    Fd = 1,
    /// arg0 is a path, relative to the cwd (stat, statfs, mkdir, umount2...).
    Path0 = 2,
    /// arg0 is a directory fd, arg1 a path (openat, newfstatat, statx...).
    DirfdPath1 = 3,
    /// arg1 is a path, relative to the cwd (mount's target).
    Path1 = 4,
    /// No file argument (sync).
    NoArg = 5,
}

impl ArgKind {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Fd,
            2 => Self::Path0,
            3 => Self::DirfdPath1,
            4 => Self::Path1,
            5 => Self::NoArg,
            _ => Self::Untracked,
        }
    }
}

/// `AT_FDCWD`: the path is relative to the task's cwd.
pub const AT_FDCWD: i32 = -100;

/// [`BlockedEntry::nr`] of a sleep outside a syscall (a kernel thread, a page
/// fault) or whose syscall could not be read.
pub const NO_SYSCALL: u32 = u32::MAX;

/// The last time a task was switched out asleep (recorded at `sched_switch`,
/// with the syscall it sleeps in, read from its saved user registers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedEntry {
    /// `bpf_ktime_get_ns()` when it was switched out.
    pub since_ns: u64,
    /// `nvcsw + nivcsw` of the task right after that switch: when
    /// /proc/<tid>/status still shows this count, the task has not run since.
    pub switches: u64,
    /// Id in [`STACKS_MAP`] (D sleeps only); negative when none was stored.
    pub stack_id: i64,
    /// Raw `__state` (`prev_state`) at the switch.
    pub state: u32,
    pub tgid: u32,
    /// The syscall it sleeps in, or [`NO_SYSCALL`].
    pub nr: u32,
    /// [`ArgKind`] of that syscall as `u32` (0 when it is not a tracked one).
    pub kind: u32,
    /// The fd argument ([`ArgKind::Fd`]), the dirfd ([`ArgKind::DirfdPath1`])
    /// or [`AT_FDCWD`].
    pub fd: i32,
    /// [`BLOCKED_ADOPTED`] or 0.
    pub flags: u32,
    /// NUL-terminated path argument (empty for fd syscalls or when unreadable).
    pub path: [u8; PATH_LEN],
}

/// [`BlockedEntry::flags`]: written by the agent at start for a task that
/// was already in D state (no switch record: syscall, path and stack come
/// from /proc; whether the sleep is killable is unknown).
pub const BLOCKED_ADOPTED: u32 = 1;

// --- D-Bus/systemd sockets (ring-buffer events, see SocketEvent) ------------

/// Drop-counter slot: a connection that could not be tracked (map full).
pub const DROP_SOCK_CONNS: u32 = 8;
/// Drop-counter slot: a socket decision (followed or not) that could not be
/// stored with the socket in [`DBUS_SOCKS_MAP`] (socket-tracepoint path; the
/// kernel refused the socket-storage allocation).
pub const DROP_DBUS_SOCKS: u32 = 10;
/// Drop-counter slot: a followed call whose bytes could not be read from
/// the caller's memory, or whose syscall is not one the probe knows (the
/// stream position is lost: the next event says so).
pub const DROP_DBUS_READS: u32 = 11;
/// Socket paths whose connections are tracked (`Array<SockPath>`).
pub const SOCK_PATHS_MAP: &str = "SOCK_PATHS";
pub const SOCK_PATH_SLOTS: u32 = 8;
/// `sizeof(sockaddr_un.sun_path)`.
pub const SOCK_PATH_LEN: usize = 108;
/// Syscall number -> [`SockCall`] as `u8`; 0 = not a tracked call (`Array<u8>`).
pub const SOCK_CALLS_MAP: &str = "SOCK_CALLS";
/// `(tgid << 32) | fd` -> [`SockConn`] of open tracked connections (LRU hash).
pub const SOCK_CONNS_MAP: &str = "SOCK_CONNS";
pub const SOCK_CONNS_ENTRIES: u32 = 4096;
/// Socket storage (`BPF_MAP_TYPE_SK_STORAGE`): a [`DbusSock`] attached to
/// each socket of a watched process that sent or received, saying whether it
/// is followed and where each direction's byte stream stands
/// (socket-tracepoint path). No size limit and no eviction: the kernel frees
/// an entry with its socket.
pub const DBUS_SOCKS_MAP: &str = "DBUS_SOCKS";
/// The widest `pt_regs` window of the syscall number and first three
/// arguments the socket-tracepoint probe trusts (it reads them by direct
/// loads, each checked by the verifier against the BTF type).
pub const DBUS_REGS_WINDOW: u64 = 512;
/// At a process's exec or exit, its fds below this are forgotten (the
/// connections of a process that never closed them).
pub const SOCK_FD_SCAN: u32 = 64;
/// The WATCHED_BYTES bit of a process that has a tracked connection.
pub const WATCHED_HAS_CONN: u8 = 2;

/// A socket path to follow (`len == 0`: unused slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockPath {
    pub path: [u8; SOCK_PATH_LEN],
    pub len: u32,
}

/// What an open tracked connection is (value of [`SOCK_CONNS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConn {
    /// Slot in [`SOCK_PATHS_MAP`] of the path it connected to.
    pub slot: u32,
    pub _pad: u32,
}

/// What the socket-tracepoint probe knows about one socket (value of the
/// socket storage [`DBUS_SOCKS_MAP`]), decided once the socket is connected
/// (a connected unix stream socket keeps its peer), for the process `tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbusSock {
    /// The deciding task's name (a followed socket's events carry it: no
    /// helper call per event).
    pub comm: [u8; COMM_LEN],
    /// Slot in [`SOCK_PATHS_MAP`] of the peer's path, or
    /// [`DBUS_NOT_FOLLOWED`].
    pub slot: u32,
    /// The process that decided (a runtime): another process using the same
    /// socket (inherited fd) is not followed.
    pub tgid: u32,
    /// Bytes still to skip of the message in progress, per direction
    /// (0 send, 1 receive).
    pub skip: [u32; 2],
    /// Per direction, non-zero when bytes went by unparsed (an unknown
    /// syscall, a failed read): the next event of that direction carries
    /// [`SOCK_EV_DESYNC`].
    pub lost: [u32; 2],
}

/// [`DbusSock::slot`] of a socket that is not followed.
pub const DBUS_NOT_FOLLOWED: u32 = u32::MAX;

/// [`SocketEvent::flags`]: the event comes from the socket-tracepoint probe,
/// which walks message boundaries ([`SocketEvent::msgs`] is meaningful).
pub const SOCK_EV_STREAM: u32 = 1;
/// The first event of this socket the probe saw (the connection becomes
/// known here: there is no connect hook on that path).
pub const SOCK_EV_FIRST: u32 = 2;
/// The bytes of this event could not be followed message by message (a
/// header split across reads, unknown bytes, a failed read): userspace
/// treats a read as answering everything.
pub const SOCK_EV_DESYNC: u32 = 4;
/// More message starts than [`SOCK_MSG_SLOTS`] in one call: the rest were
/// skipped by their lengths but not copied.
pub const SOCK_EV_OVERFLOW: u32 = 8;

/// Message starts copied per event.
pub const SOCK_MSG_SLOTS: usize = 4;
/// Bytes copied per message start: the 16-byte fixed header of a binary
/// D-Bus message and its first header fields, or a SASL line or two.
pub const SOCK_MSG_BYTES: usize = 128;

/// [`SockMsg::kind`].
pub const SOCK_MSG_NONE: u8 = 0;
/// A binary D-Bus message (header at `bytes[0]`).
pub const SOCK_MSG_DBUS: u8 = 1;
/// SASL authentication text: the rest of the call from there, as far as
/// copied (userspace finds the line ends, and a binary message after them).
pub const SOCK_MSG_SASL: u8 = 2;

/// The start of one message in a followed call's bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockMsg {
    /// Bytes of `bytes` that belong to this call (at most the message's).
    pub len: u16,
    /// [`SOCK_MSG_DBUS`], [`SOCK_MSG_SASL`] or [`SOCK_MSG_NONE`].
    pub kind: u8,
    pub _pad: u8,
    /// Where the message starts in the call's bytes.
    pub offset: u32,
    pub bytes: [u8; SOCK_MSG_BYTES],
}

/// The syscall of a [`SocketEvent`], classified by the probe (numbers differ
/// per architecture).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockCall {
    None = 0,
    /// connect(fd, addr, len); `path` is the address.
    Connect = 1,
    /// write/send(to): `requested` is the length asked.
    Write = 2,
    /// writev: `requested` sums the first [`SOCK_IOV_MAX`] iovecs.
    Writev = 3,
    /// sendmsg: the same over the message's iovecs.
    Sendmsg = 4,
    Read = 5,
    Readv = 6,
    Recvmsg = 7,
    Close = 8,
    /// The process exec'd or exited with tracked connections (fd = -1).
    ProcessGone = 9,
}

impl SockCall {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Connect,
            2 => Self::Write,
            3 => Self::Writev,
            4 => Self::Sendmsg,
            5 => Self::Read,
            6 => Self::Readv,
            7 => Self::Recvmsg,
            8 => Self::Close,
            9 => Self::ProcessGone,
            _ => Self::None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Connect => "connect",
            Self::Write => "write",
            Self::Writev => "writev",
            Self::Sendmsg => "sendmsg",
            Self::Read => "read",
            Self::Readv => "readv",
            Self::Recvmsg => "recvmsg",
            Self::Close => "close",
            Self::ProcessGone => "process_gone",
        }
    }

    pub const fn is_send(self) -> bool {
        matches!(self, Self::Write | Self::Writev | Self::Sendmsg)
    }

    pub const fn is_recv(self) -> bool {
        matches!(self, Self::Read | Self::Readv | Self::Recvmsg)
    }
}

/// iovecs summed for `requested` (writev, sendmsg, readv, recvmsg).
pub const SOCK_IOV_MAX: u32 = 8;

/// Bytes of a [`SocketEvent`] before its message slots. The socket-tracepoint
/// probes write only the slots they filled (`nmsgs`): a record is this plus
/// `k` x `size_of::<SockMsg>()` for some `k` in 0..=[`SOCK_MSG_SLOTS`], and
/// its header's `size` says which.
pub const SOCKET_EVENT_FIXED: usize = core::mem::offset_of!(SocketEvent, msgs);

/// The record size of a [`SocketEvent`] with `slots` message slots written.
pub const fn socket_event_size(slots: usize) -> usize {
    SOCKET_EVENT_FIXED + slots * core::mem::size_of::<SockMsg>()
}

/// A call of a watched process on a connection to a followed socket path
/// (connect to one of the paths, then every send, receive and close on that
/// fd), at syscall exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    pub header: EventHeader,
    pub tid: u32,
    pub pid: u32,
    pub fd: i32,
    /// [`SockCall`] as `u32`.
    pub call: u32,
    /// The syscall's return: bytes, 0, or a negative errno (-11 EAGAIN).
    pub ret: i64,
    /// Bytes the caller asked to send or had room to receive.
    pub requested: u64,
    /// Slot in [`SOCK_PATHS_MAP`] of the connection's path.
    pub slot: u32,
    /// Sends: the first bytes sent (a D-Bus message header starts with the
    /// byte order, the message type and its flags; SASL lines with text).
    pub head: [u8; 4],
    /// `bpf_ktime_get_ns()` at the syscall's entry (0 when unknown): a reply
    /// read before this send returned may still answer it.
    pub start_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// The address of a connect (NUL-padded); empty for other calls.
    pub path: [u8; SOCK_PATH_LEN],
    pub _pad2: u32,
    /// `SOCK_EV_*` bits (0 from the syscall probes).
    pub flags: u32,
    /// Message starts filled in `msgs`.
    pub nmsgs: u32,
    pub msgs: [SockMsg; SOCK_MSG_SLOTS],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes read as references.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ForkFailureEvent {}
    unsafe impl aya::Pod for super::NprocPressureEvent {}
    unsafe impl aya::Pod for super::CommPattern {}
    unsafe impl aya::Pod for super::BlockedEntry {}
    unsafe impl aya::Pod for super::SocketEvent {}
    unsafe impl aya::Pod for super::SockPath {}
    unsafe impl aya::Pod for super::SockConn {}
    unsafe impl aya::Pod for super::DbusSock {}
}

/// Decoding of raw ring-buffer records (userspace only).
#[cfg(feature = "user")]
pub mod decode {
    use core::mem::size_of;

    use super::{
        EventHeader, EventKind, ForkFailureEvent, NprocPressureEvent, SOCK_MSG_SLOTS,
        SOCKET_EVENT_FIXED, SockMsg, SocketEvent, socket_event_size,
    };

    /// A decoded record.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[expect(
        clippy::large_enum_variant,
        reason = "socket events carry their message starts (4 x 136 bytes); boxing would need alloc in this no_std crate; the engine queue (8192 events, about 6 MiB when full) is allocated as it fills"
    )]
    pub enum Event {
        ForkFailure(ForkFailureEvent),
        NprocPressure(NprocPressureEvent),
        Socket(SocketEvent),
    }

    /// Why a record could not be decoded.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DecodeError {
        /// Shorter than the header.
        Truncated { len: usize },
        /// The header's kind is 0 or not known to this build.
        UnknownKind { kind: u32 },
        /// The header's size disagrees with the struct for its kind, or with the
        /// record length.
        SizeMismatch {
            kind: u32,
            header: u32,
            expected: usize,
            len: usize,
        },
    }

    impl core::fmt::Display for DecodeError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Self::Truncated { len } => {
                    write!(f, "record of {len} bytes is shorter than the event header")
                }
                Self::UnknownKind { kind } => write!(f, "unknown event kind {kind}"),
                Self::SizeMismatch {
                    kind,
                    header,
                    expected,
                    len,
                } => write!(
                    f,
                    "event kind {kind}: header says {header} bytes, struct is {expected}, record is {len}"
                ),
            }
        }
    }

    fn read<T: Copy>(buf: &[u8]) -> T {
        debug_assert!(buf.len() >= size_of::<T>());
        // SAFETY: length checked by the caller; read_unaligned copes with the
        // ring buffer's 8-byte (not struct) alignment.
        unsafe { core::ptr::read_unaligned(buf.as_ptr().cast::<T>()) }
    }

    /// A socket record with `slots` message slots written: the rest zeroed,
    /// and `nmsgs` no more than the slots present.
    fn read_socket(buf: &[u8], slots: usize) -> SocketEvent {
        let mut full = [0u8; size_of::<SocketEvent>()];
        full[..buf.len()].copy_from_slice(buf);
        let mut e: SocketEvent = read(&full);
        e.nmsgs = e.nmsgs.min(slots as u32);
        e.header.size = size_of::<SocketEvent>() as u32;
        e
    }

    /// Decode one ring-buffer record.
    pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
        if buf.len() < size_of::<EventHeader>() {
            return Err(DecodeError::Truncated { len: buf.len() });
        }
        let header: EventHeader = read(buf);
        let (expected, kind) = match EventKind::from_u32(header.kind) {
            EventKind::ForkFailure => (size_of::<ForkFailureEvent>(), EventKind::ForkFailure),
            EventKind::NprocPressure => (size_of::<NprocPressureEvent>(), EventKind::NprocPressure),
            EventKind::Socket => {
                // Only the filled message slots (see SOCKET_EVENT_FIXED).
                let size = header.size as usize;
                let slots = size.saturating_sub(SOCKET_EVENT_FIXED) / size_of::<SockMsg>();
                if size >= SOCKET_EVENT_FIXED
                    && slots <= SOCK_MSG_SLOTS
                    && size == socket_event_size(slots)
                    && buf.len() >= size
                {
                    return Ok(Event::Socket(read_socket(&buf[..size], slots)));
                }
                (size_of::<SocketEvent>(), EventKind::Socket)
            }
            EventKind::Unknown => return Err(DecodeError::UnknownKind { kind: header.kind }),
        };
        if header.size as usize != expected || buf.len() < expected {
            return Err(DecodeError::SizeMismatch {
                kind: header.kind,
                header: header.size,
                expected,
                len: buf.len(),
            });
        }
        Ok(match kind {
            EventKind::ForkFailure => Event::ForkFailure(read(buf)),
            EventKind::NprocPressure => Event::NprocPressure(read(buf)),
            EventKind::Socket => Event::Socket(read(buf)),
            EventKind::Unknown => unreachable!(),
        })
    }

    /// The bytes of an event as a probe writes them (tests and replay tools).
    pub fn as_bytes<T: aya::Pod>(event: &T) -> &[u8] {
        // SAFETY: T is Pod.
        unsafe { core::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::{COMM_LEN, ForkSyscall};

        fn sample() -> ForkFailureEvent {
            let mut comm = [0u8; COMM_LEN];
            comm[..7].copy_from_slice(b"python3");
            ForkFailureEvent {
                header: EventHeader::new(
                    EventKind::ForkFailure,
                    size_of::<ForkFailureEvent>(),
                    123_456_789,
                ),
                tid: 4242,
                pid: 4240,
                uid: 65534,
                gid: 65534,
                syscall: ForkSyscall::Clone as u32,
                ret: -11,
                clone_flags: 0x0120_0011,
                cgroup_id: 1,
                pids_cgroup_id: 9876,
                comm,
            }
        }

        #[test]
        fn header_is_at_offset_zero() {
            assert_eq!(core::mem::offset_of!(ForkFailureEvent, header), 0);
            assert_eq!(size_of::<EventHeader>(), 16);
        }

        #[test]
        fn fork_failure_round_trips() {
            let ev = sample();
            assert_eq!(decode(as_bytes(&ev)), Ok(Event::ForkFailure(ev)));
        }

        #[test]
        fn nproc_pressure_round_trips() {
            let mut comm = [0u8; COMM_LEN];
            comm[..4].copy_from_slice(b"java");
            let ev = NprocPressureEvent {
                header: EventHeader::new(
                    EventKind::NprocPressure,
                    size_of::<NprocPressureEvent>(),
                    42,
                ),
                tid: 10,
                pid: 9,
                uid: 1000,
                _pad: 0,
                tasks: 190,
                limit: 200,
                comm,
            };
            assert_eq!(decode(as_bytes(&ev)), Ok(Event::NprocPressure(ev)));
            // A record of one kind with the other's size is rejected.
            let mut wrong = ev;
            wrong.header.kind = EventKind::ForkFailure as u32;
            assert!(matches!(
                decode(as_bytes(&wrong)),
                Err(DecodeError::SizeMismatch { .. })
            ));
        }

        #[test]
        fn socket_event_round_trips() {
            let mut path = [0u8; crate::SOCK_PATH_LEN];
            path[..20].copy_from_slice(b"/run/systemd/private");
            let ev = SocketEvent {
                header: EventHeader::new(EventKind::Socket, size_of::<SocketEvent>(), 7),
                tid: 11,
                pid: 10,
                fd: 5,
                call: crate::SockCall::Connect as u32,
                ret: 0,
                requested: 0,
                slot: 1,
                head: *b"l\x01\x00\x01",
                start_ns: 6,
                comm: *b"runc\0\0\0\0\0\0\0\0\0\0\0\0",
                path,
                _pad2: 0,
                flags: crate::SOCK_EV_STREAM | crate::SOCK_EV_FIRST,
                nmsgs: 1,
                msgs: [crate::SockMsg {
                    len: 4,
                    kind: crate::SOCK_MSG_DBUS,
                    _pad: 0,
                    offset: 0,
                    bytes: [7; crate::SOCK_MSG_BYTES],
                }; crate::SOCK_MSG_SLOTS],
            };
            assert_eq!(size_of::<SocketEvent>() % 8, 0);
            assert_eq!(decode(as_bytes(&ev)), Ok(Event::Socket(ev)));

            // The socket-tracepoint probes write only the filled slots.
            let mut short = ev;
            short.header.size = crate::socket_event_size(1) as u32;
            let bytes = &as_bytes(&short)[..crate::socket_event_size(1)];
            let Ok(Event::Socket(got)) = decode(bytes) else {
                panic!("a one-slot record must decode");
            };
            assert_eq!(got.nmsgs, 1);
            assert_eq!(got.msgs[0], ev.msgs[0]);
            assert_eq!(got.msgs[1].len, 0, "slots not written are zero");
            assert_eq!(got.header.size as usize, size_of::<SocketEvent>());
            // nmsgs beyond the slots present is clamped, not read past.
            let mut lying = short;
            lying.nmsgs = 4;
            let bytes = &as_bytes(&lying)[..crate::socket_event_size(1)];
            assert!(matches!(decode(bytes), Ok(Event::Socket(e)) if e.nmsgs == 1));
            // A size between slot boundaries, or a record shorter than its
            // header says, is rejected.
            let mut odd = ev;
            odd.header.size = crate::socket_event_size(1) as u32 + 3;
            assert!(decode(&as_bytes(&odd)[..crate::socket_event_size(1) + 3]).is_err());
            assert!(decode(&as_bytes(&short)[..crate::socket_event_size(1) - 8]).is_err());
        }

        #[test]
        fn decodes_from_unaligned_buffer() {
            let ev = sample();
            let mut buf = [0u8; size_of::<ForkFailureEvent>() + 1];
            buf[1..].copy_from_slice(as_bytes(&ev));
            assert_eq!(decode(&buf[1..]), Ok(Event::ForkFailure(ev)));
        }

        #[test]
        fn rejects_zero_kind_truncation_and_size_mismatch() {
            let ev = sample();
            let bytes = as_bytes(&ev);
            assert_eq!(decode(&bytes[..8]), Err(DecodeError::Truncated { len: 8 }));
            let zero = [0u8; 64];
            assert_eq!(decode(&zero), Err(DecodeError::UnknownKind { kind: 0 }));
            assert!(matches!(
                decode(&bytes[..40]),
                Err(DecodeError::SizeMismatch { .. })
            ));
            let mut bad = ev;
            bad.header.size = 8;
            assert!(matches!(
                decode(as_bytes(&bad)),
                Err(DecodeError::SizeMismatch { .. })
            ));
        }
    }
}

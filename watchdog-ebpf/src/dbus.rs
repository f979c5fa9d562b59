//! D-Bus/systemd sockets: the unix-socket connections of watched (runtime)
//! processes to the configured paths (systemd's private socket, the system
//! bus), and every send and receive on them, as ring-buffer events.
//!
//! Two ways, chosen by the agent (`--dbus-requests`):
//!
//! - **Socket tracepoints** (`dbus_sock_send`/`dbus_sock_recv`, tp_btf
//!   `sock_send_length`/`sock_recv_length`, Linux 6.3+; the default where
//!   present). No syscall hook: they fire only on socket sends and receives.
//!   Cost order: one inlined array lookup of the caller's tgid (unwatched
//!   tasks return at once, before any map lookup), MSG_PEEK skipped, then
//!   the socket's own storage (DBUS_SOCKS, one helper call) that says
//!   whether it is followed (AF_UNIX, peer bound to a followed path, caller
//!   a runtime), decided once. A receive of the rest of a message whose
//!   start was seen returns there. Only followed
//!   sockets read the syscall's registers (direct loads) and buffer and emit: the
//!   probe walks the D-Bus message boundaries in the bytes (a per-socket,
//!   per-direction "bytes still to skip") and copies each message's fixed
//!   header and first fields, or the SASL lines, so that userspace can
//!   match replies to requests by serial.
//! - **Syscalls** (`dbus_sys_enter`/`dbus_sys_exit`, raw_tp
//!   `sys_enter`/`sys_exit`), only when asked: every syscall of the node
//!   goes through the kernel's tracing slow path. Connects, closes, sends
//!   and receives of watched processes, classified by syscall number, with
//!   the first 4 bytes sent (no message walk).
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_sk_storage_get, bpf_task_pt_regs},
    },
    macros::{btf_map, btf_tracepoint, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use watchdog_common::{
    COMM_LEN, DBUS_NOT_FOLLOWED, DROP_DBUS_READS, DROP_DBUS_SOCKS, DROP_SOCK_CONNS, DbusSock,
    EventHeader, EventKind, SOCK_CONNS_ENTRIES, SOCK_EV_DESYNC, SOCK_EV_FIRST, SOCK_EV_OVERFLOW,
    SOCK_EV_STREAM, SOCK_FD_SCAN, SOCK_IOV_MAX, SOCK_MSG_BYTES, SOCK_MSG_DBUS, SOCK_MSG_NONE,
    SOCK_MSG_SASL, SOCK_MSG_SLOTS, SOCK_PATH_LEN, SOCK_PATH_SLOTS, SYSCALL_SLOTS, SockCall,
    SockConn, SockPath, SocketEvent, WATCHED_HAS_CONN, socket_event_size,
};

use crate::{EVENTS, count_drop, count_drop_slot, global, storage::read_kernel};

const AF_UNIX: u16 = 1;
const MSG_PEEK: i32 = 2;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in the ring buffer from which a quiet event wakes the agent
/// (checked every [`WAKE_CHECK_EVERY`]th quiet event of a CPU).
const WAKE_AT_BYTES: u64 = 64 * 1024;
/// A CPU looks at the ring buffer's unread bytes (a helper call) once per
/// this many quiet events: between two looks it adds at most this many
/// records (under 8 KiB), far from the 512 KiB ring's end.
const WAKE_CHECK_EVERY: u64 = 16;
const EINPROGRESS: i64 = 115;
const EAGAIN: i64 = 11;
/// `sizeof(struct sockaddr_un)`.
const SOCKADDR_UN_LEN: usize = 2 + SOCK_PATH_LEN;
/// iovecs followed when walking messages.
const SEGS: usize = 4;
/// The largest D-Bus message (the specification's 128 MiB) plus its header:
/// anything longer is not a header.
const DBUS_MAX_MESSAGE: u64 = (128 << 20) + 4096;
const SEND: usize = 0;
const RECV: usize = 1;

#[map(name = "SOCK_PATHS")]
static SOCK_PATHS: Array<SockPath> = Array::with_max_entries(SOCK_PATH_SLOTS, 0);

#[map(name = "SOCK_CALLS")]
static SOCK_CALLS: Array<u8> = Array::with_max_entries(SYSCALL_SLOTS, 0);

/// Syscall path: `(tgid << 32) | fd` of followed connections.
#[map(name = "SOCK_CONNS")]
static SOCK_CONNS: LruHashMap<u64, SockConn> = LruHashMap::with_max_entries(SOCK_CONNS_ENTRIES, 0);

/// Socket-tracepoint path: what is known of a socket, in the socket's own
/// storage (one helper call finds it; the kernel frees it with the socket,
/// so no close hook, no eviction and no reused key).
#[btf_map(name = "DBUS_SOCKS")]
static DBUS_SOCKS: SkStorage<DbusSock> = SkStorage::new();

/// Per CPU, quiet events since the CPU last looked at the ring buffer's
/// unread bytes (see `wake_flags`).
#[map(name = "SOCK_QUIET")]
static SOCK_QUIET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of an address (too big for the stack).
#[map(name = "SOCK_ADDR")]
static SOCK_ADDR: PerCpuArray<[u8; SOCKADDR_UN_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU event under construction (too big for the stack; copied into the
/// ring buffer whole).
#[map(name = "SOCK_EVENT")]
static SOCK_EVENT: PerCpuArray<SocketEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU loop state of a message walk (see `walk`).
#[map(name = "DBUS_WALK")]
static WALK: PerCpuArray<[u64; 4]> = PerCpuArray::with_max_entries(1, 0);

/// Syscall path: per CPU, the watched task's syscall entry (tid, time).
#[map(name = "DBUS_SYSCALL_START")]
static SYSCALL_START: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

// --- Patched by the loader ---------------------------------------------------

/// Offsets in `struct pt_regs` of the second and third syscall arguments
/// (x86_64 `si`, `dx`; arm64 `regs[1]`, `regs[2]`).
#[unsafe(no_mangle)]
static DBUS_ARG1_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_ARG2_OFF: u64 = 0;
/// Non-zero when the syscall number and first three arguments sit in one
/// window of `struct pt_regs` the loader checked (their offsets are the
/// globals above); 0: the socket probe reads no call.
#[unsafe(no_mangle)]
static DBUS_REGS_LEN: u64 = 0;

/// `struct sock` -> `__sk_common.skc_family` (u16).
#[unsafe(no_mangle)]
static SK_FAMILY_OFF: u64 = 0;
/// `struct unix_sock` -> `peer` (`struct sock *`) and `addr`
/// (`struct unix_address *`); a unix socket's `struct sock` is the start of
/// its `unix_sock`.
#[unsafe(no_mangle)]
static UNIX_PEER_OFF: u64 = 0;
#[unsafe(no_mangle)]
static UNIX_ADDR_OFF: u64 = 0;
/// `struct unix_address` -> `len` (int) and `name` (`struct sockaddr_un`).
#[unsafe(no_mangle)]
static UNIX_ADDR_LEN_OFF: u64 = 0;
#[unsafe(no_mangle)]
static UNIX_ADDR_NAME_OFF: u64 = 0;

#[inline(always)]
fn key(tgid: u32, fd: i32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(fd as u32)
}

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user tolerates any address.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Sum of the lengths of the first iovecs of an array (`struct iovec` is
/// `{ void *base; size_t len; }` in every ABI watchdog builds for).
#[inline(always)]
fn iov_bytes(iov: u64, count: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..SOCK_IOV_MAX as u64 {
        if i >= count {
            break;
        }
        total = total.wrapping_add(read_user::<u64>(iov + i * 16 + 8).unwrap_or(0));
    }
    total
}

/// Syscall path: the entry time of a watched task's syscall, kept per CPU
/// for its exit (a send's start orders it against replies read by another
/// thread). Args: (struct pt_regs *regs, long id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn dbus_sys_enter(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !crate::storage::watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    if let Some(slot) = SYSCALL_START.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*slot)[0] = pid_tgid & 0xffff_ffff;
            (*slot)[1] = bpf_ktime_get_ns();
        }
    }
    0
}

/// Syscall path: the tid's syscall entry time on this CPU, if it is there
/// (0 when the task moved CPU or another watched task entered since).
#[inline(always)]
fn syscall_start(tid: u32) -> u64 {
    match SYSCALL_START.get_ptr(0) {
        // SAFETY: per-CPU slot, read at once.
        Some(s) if unsafe { (*s)[0] } == u64::from(tid) => unsafe { (*s)[1] },
        _ => 0,
    }
}

/// Syscall path: connects, sends, receives and closes of watched processes
/// on followed connections. Args: (struct pt_regs *regs, long ret).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn dbus_sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !crate::storage::watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    on_sys_exit(&ctx, pid_tgid);
    0
}

#[inline(always)]
fn on_sys_exit(ctx: &RawTracePointContext, pid_tgid: u64) {
    let regs: u64 = ctx.arg(0);
    let nr_off = global(&crate::PT_REGS_NR_OFF);
    if nr_off == 0 {
        return;
    }
    let Some(nr) = read_kernel::<u64>(regs + nr_off) else {
        return;
    };
    if nr >= u64::from(SYSCALL_SLOTS) {
        return;
    }
    let call = match SOCK_CALLS.get(nr as u32) {
        Some(c) if *c != 0 => SockCall::from_u32(u32::from(*c)),
        _ => return,
    };
    let ret: i64 = ctx.arg(1);
    let tgid = (pid_tgid >> 32) as u32;
    let arg = |off: u64| -> u64 {
        if off == 0 {
            0
        } else {
            read_kernel::<u64>(regs + off).unwrap_or(0)
        }
    };
    let fd = arg(global(&crate::PT_REGS_ARG0_OFF)) as i32;
    if call == SockCall::Connect {
        connect(
            pid_tgid,
            fd,
            ret,
            arg(global(&DBUS_ARG1_OFF)),
            arg(global(&PT_REGS_ARG2_OFF)),
        );
        return;
    }
    let k = key(tgid, fd);
    let Some(conn) = SOCK_CONNS.get_ptr(k) else {
        return;
    };
    // Its exec or exit forgets its connections. (Set here, not only at
    // connect: the agent adopts connections opened before it started, and
    // a byte store is cheaper than a check.)
    crate::storage::mark_has_conn(tgid);
    // SAFETY: map value pointer, read at once.
    let slot = unsafe { (*conn).slot };
    let a1 = || arg(global(&DBUS_ARG1_OFF));
    let a2 = || arg(global(&PT_REGS_ARG2_OFF));
    // Where the data starts (first buffer) and how much was asked.
    let (buf, requested) = match call {
        SockCall::Write | SockCall::Read => (a1(), a2()),
        SockCall::Writev | SockCall::Readv => {
            let iov = a1();
            (read_user::<u64>(iov).unwrap_or(0), iov_bytes(iov, a2()))
        }
        // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
        SockCall::Sendmsg | SockCall::Recvmsg => {
            let msg = a1();
            let iov = read_user::<u64>(msg + 16).unwrap_or(0);
            (
                read_user::<u64>(iov).unwrap_or(0),
                iov_bytes(iov, read_user::<u64>(msg + 24).unwrap_or(0)),
            )
        }
        SockCall::Close => {
            let _ = SOCK_CONNS.remove(k);
            (0, 0)
        }
        _ => (0, 0),
    };
    let head = if call.is_send() && ret > 0 && buf != 0 {
        read_user::<[u8; 4]>(buf).unwrap_or([0; 4])
    } else {
        [0; 4]
    };
    let start = syscall_start(pid_tgid as u32);
    emit(pid_tgid, fd, call, ret, requested, slot, None, head, start);
}

fn connect(pid_tgid: u64, fd: i32, ret: i64, addr: u64, len: u64) {
    if addr == 0 || len <= 2 {
        return;
    }
    let Some(buf) = SOCK_ADDR.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch.
    let buf = unsafe { &mut *buf };
    // SAFETY: user pointer of the current task, read without faulting.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(addr as *const u8, buf) }.is_err() {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // Whatever this fd was, it is not a tracked connection any more.
    let _ = SOCK_CONNS.remove(key(tgid, fd));
    if u16::from_ne_bytes([buf[0], buf[1]]) != AF_UNIX || buf[2] == 0 {
        // Not unix, or an abstract address.
        return;
    }
    let len = len.min(SOCKADDR_UN_LEN as u64) as usize;
    let Some(slot) = match_path(buf, len) else {
        return;
    };
    // Only the runtimes themselves: not the workloads of their containers
    // (descendants are watched for storage hangs, and a container may run
    // its own bus at the same path in its own mount namespace).
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    if !crate::storage::comm_is_runtime(&comm) {
        return;
    }
    if ret == 0 || ret == -EINPROGRESS {
        let conn = SockConn { slot, _pad: 0 };
        if SOCK_CONNS.insert(key(tgid, fd), conn, 0).is_err() {
            count_drop_slot(DROP_SOCK_CONNS);
        }
        crate::storage::mark_has_conn(tgid);
    }
    emit(
        pid_tgid,
        fd,
        SockCall::Connect,
        ret,
        0,
        slot,
        Some(buf),
        [0; 4],
        0,
    );
}

/// The slot of the configured path `buf` (a sockaddr_un of `len` bytes)
/// names, if any.
#[inline(always)]
fn match_path(buf: &[u8; SOCKADDR_UN_LEN], len: usize) -> Option<u32> {
    for slot in 0..SOCK_PATH_SLOTS {
        let p = SOCK_PATHS.get(slot)?;
        let plen = p.len as usize;
        if plen == 0 || plen >= SOCK_PATH_LEN {
            return None;
        }
        if same_path(buf, len, p, plen) {
            return Some(slot);
        }
    }
    None
}

#[inline(always)]
fn same_path(buf: &[u8; SOCKADDR_UN_LEN], len: usize, p: &SockPath, plen: usize) -> bool {
    for i in 0..SOCK_PATH_LEN {
        if i >= plen {
            // The address ends here: a NUL, or its length.
            return i + 2 >= len || buf[i + 2] == 0;
        }
        if i + 2 >= len || buf[i + 2] != p.path[i] {
            return false;
        }
    }
    false
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one event's fields, inlined")]
fn emit(
    pid_tgid: u64,
    fd: i32,
    call: SockCall,
    ret: i64,
    requested: u64,
    slot: u32,
    addr: Option<&[u8; SOCKADDR_UN_LEN]>,
    head: [u8; 4],
    start_ns: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<SocketEvent>(0) else {
        count_drop(EventKind::Socket);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved record, written field by field (the struct is too
    // big to build on the stack and copy).
    unsafe {
        (*e).header = EventHeader::new(
            EventKind::Socket,
            core::mem::size_of::<SocketEvent>(),
            bpf_ktime_get_ns(),
        );
        (*e).tid = pid_tgid as u32;
        (*e).pid = (pid_tgid >> 32) as u32;
        (*e).fd = fd;
        (*e).call = call as u32;
        (*e).ret = ret;
        (*e).requested = requested;
        (*e).slot = slot;
        (*e).head = head;
        (*e).start_ns = start_ns;
        (*e)._pad2 = 0;
        (*e).flags = 0;
        (*e).nmsgs = 0;
        (*e).comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
        match addr {
            Some(a) => {
                (*e).path.copy_from_slice(&a[2..SOCK_PATH_LEN + 2]);
            }
            None => {
                for i in 0..SOCK_PATH_LEN {
                    (*e).path[i] = 0;
                }
            }
        }
    }
    let flags = wake_flags(call, ret, requested);
    entry.submit(flags);
}

/// Ring-buffer wakeup flags of a socket event. A successful send or receive
/// does not wake the agent (it drains the ring buffer every 100 ms anyway): a
/// chatty connection would otherwise cost a wakeup per call, and a wakeup is
/// an irq_work (a self-IPI: on a VM, an exit to the hypervisor): measured on
/// a followed connection, 1.8 us of the sender's time per event. Connects,
/// closes, EAGAIN, partial sends, EOF wake it at once; quiet events wake it
/// when they find more than [`WAKE_AT_BYTES`] unread (a reader that fell
/// behind), looking once per [`WAKE_CHECK_EVERY`] of them.
#[inline(always)]
fn wake_flags(call: SockCall, ret: i64, requested: u64) -> u64 {
    let quiet = (call.is_recv() && (ret > 0 || ret == -EAGAIN))
        || (call.is_send() && ret > 0 && ret as u64 >= requested);
    if !quiet {
        return BPF_RB_FORCE_WAKEUP;
    }
    // (The default, adaptive wakeup would not wake a reader that has not
    // caught up, and quiet events keep it from catching up: force it.)
    let Some(n) = SOCK_QUIET.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP;
    };
    // SAFETY: per-CPU slot.
    let n = unsafe {
        *n += 1;
        *n
    };
    if n % WAKE_CHECK_EVERY != 0 {
        return BPF_RB_NO_WAKEUP;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKE_AT_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// A process with tracked connections exec'd (its close-on-exec fds are
/// gone) or exited: forget its connections on low fds (the LRU ages out the
/// rest) and tell userspace.
#[inline(always)]
pub(crate) fn forget_process(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    for fd in 0..SOCK_FD_SCAN {
        let _ = SOCK_CONNS.remove(key(tgid, fd as i32));
    }
    emit(
        pid_tgid,
        -1,
        SockCall::ProcessGone,
        0,
        0,
        0,
        None,
        [0; 4],
        0,
    );
}

// --- Socket-tracepoint path ----------------------------------------------

/// Args: (struct sock *sk, int ret, int flags); fires after every socket
/// send, in the sender's context.
#[btf_tracepoint(function = "sock_send_length")]
pub fn dbus_sock_send(ctx: BtfTracePointContext) -> i32 {
    on_sock(&ctx, SEND);
    0
}

/// Args: (struct sock *sk, int ret, int flags); fires after every socket
/// receive (the bytes are in the caller's buffer already).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn dbus_sock_recv(ctx: BtfTracePointContext) -> i32 {
    on_sock(&ctx, RECV);
    0
}

/// Empty programs on the socket tracepoints: the benchmark's floor of the
/// default request tracking (the kernel's dispatch cost alone).
#[btf_tracepoint(function = "sock_send_length")]
pub fn bench_empty_sock_send(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn bench_empty_sock_recv(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The socket's storage: None when it has none yet (`init` None) or the
/// kernel refused to create it.
#[inline(always)]
fn sock_storage(sk: *mut core::ffi::c_void, init: Option<&mut DbusSock>) -> *mut DbusSock {
    let (value, flags) = match init {
        Some(v) => (
            (v as *mut DbusSock).cast::<core::ffi::c_void>(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        ),
        None => (core::ptr::null_mut(), 0),
    };
    let map = (&raw const DBUS_SOCKS)
        .cast_mut()
        .cast::<core::ffi::c_void>();
    // SAFETY: `sk` is the tracepoint's `struct sock *` as the verifier typed
    // it; the value, when given, is a whole DbusSock on the stack.
    unsafe { bpf_sk_storage_get(map, sk, value, flags) }.cast::<DbusSock>()
}

/// The decision for `sk` (followed or not), kept in the socket's storage.
/// None: not followed, not connected yet (decided at a later call), or the
/// probe lacks the offsets. The bool: decided just now.
#[inline(always)]
fn decide(sk_btf: *mut core::ffi::c_void, sk: u64, tgid: u32) -> Option<(*mut DbusSock, bool)> {
    let (fam_off, peer_off, addr_off, len_off, name_off) = (
        global(&SK_FAMILY_OFF),
        global(&UNIX_PEER_OFF),
        global(&UNIX_ADDR_OFF),
        global(&UNIX_ADDR_LEN_OFF),
        global(&UNIX_ADDR_NAME_OFF),
    );
    // 0 = not found in BTF (the agent says so): follow nothing. The family
    // and the addr's len are legitimately at 0 on some layouts, not these.
    if peer_off == 0 || addr_off == 0 || name_off == 0 {
        return None;
    }
    let s = sock_storage(sk_btf, None);
    if !s.is_null() {
        // SAFETY: this socket's storage, alive while the socket is (the
        // tracepoint holds it). Another process using the socket (an
        // inherited fd) decides for itself.
        let cached = unsafe { &*s };
        if cached.tgid == tgid {
            return (cached.slot != DBUS_NOT_FOLLOWED).then_some((s, false));
        }
    }
    let mut entry = DbusSock {
        comm: [0; COMM_LEN],
        slot: DBUS_NOT_FOLLOWED,
        tgid,
        skip: [0; 2],
        lost: [0; 2],
    };
    if read_kernel::<u16>(sk + fam_off) == Some(AF_UNIX) {
        let peer = read_kernel::<u64>(sk + peer_off).unwrap_or(0);
        if peer == 0 {
            // Not connected (yet): no decision to keep. (A connected unix
            // stream socket keeps its peer: D-Bus runs on nothing else.)
            return None;
        }
        entry.slot = peer_slot(peer, addr_off, len_off, name_off);
    }
    // Only the runtimes themselves: not the workloads of their containers
    // (descendants are watched for storage hangs, and a container may run
    // its own bus at the same path in its own mount namespace).
    if entry.slot != DBUS_NOT_FOLLOWED {
        entry.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
        if !crate::storage::comm_is_runtime(&entry.comm) {
            entry.slot = DBUS_NOT_FOLLOWED;
        }
    }
    let s = if s.is_null() {
        let s = sock_storage(sk_btf, Some(&mut entry));
        if s.is_null() {
            count_drop_slot(DROP_DBUS_SOCKS);
            return None;
        }
        s
    } else {
        // SAFETY: as above; the other process's decision is replaced.
        unsafe { *s = entry };
        s
    };
    (entry.slot != DBUS_NOT_FOLLOWED).then_some((s, true))
}

/// The followed-path slot of the address the peer is bound to.
#[inline(always)]
fn peer_slot(peer: u64, addr_off: u64, len_off: u64, name_off: u64) -> u32 {
    if peer == 0 {
        return DBUS_NOT_FOLLOWED;
    }
    let addr = read_kernel::<u64>(peer + addr_off).unwrap_or(0);
    if addr == 0 {
        // An unbound peer (socketpair, or the server side of a connection).
        return DBUS_NOT_FOLLOWED;
    }
    let len = read_kernel::<i32>(addr + len_off).unwrap_or(0);
    if len <= 2 {
        return DBUS_NOT_FOLLOWED;
    }
    let Some(buf) = SOCK_ADDR.get_ptr_mut(0) else {
        return DBUS_NOT_FOLLOWED;
    };
    // SAFETY: per-CPU scratch.
    let buf = unsafe { &mut *buf };
    // SAFETY: kernel memory read without faulting.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf((addr + name_off) as *const u8, buf) }
        .is_err()
    {
        return DBUS_NOT_FOLLOWED;
    }
    if u16::from_ne_bytes([buf[0], buf[1]]) != AF_UNIX || buf[2] == 0 {
        // Not a path (an abstract name).
        return DBUS_NOT_FOLLOWED;
    }
    match_path(buf, (len as usize).min(SOCKADDR_UN_LEN)).unwrap_or(DBUS_NOT_FOLLOWED)
}

/// The user buffers of the current syscall: up to SEGS (address, length).
struct Segs {
    base: [u64; SEGS],
    len: [u64; SEGS],
    n: usize,
}

impl Segs {
    /// Where stream offset `pos` is: its address, and the bytes contiguous
    /// from there in its buffer.
    #[inline(always)]
    fn at(&self, pos: u64) -> Option<(u64, u64)> {
        let mut start = 0u64;
        for k in 0..SEGS {
            if k >= self.n {
                break;
            }
            let end = start + self.len[k];
            if pos < end {
                return Some((self.base[k] + (pos - start), end - pos));
            }
            start = end;
        }
        None
    }
}

/// Per-CPU scratch for an iovec array (base, len pairs) read in one copy.
#[map]
static IOV_SCRATCH: PerCpuArray<[u64; 2 * SOCK_IOV_MAX as usize]> =
    PerCpuArray::with_max_entries(1, 0);

/// The first SEGS buffers of an iovec array of `count` entries, and the
/// bytes of its first SOCK_IOV_MAX entries, from one copy of the array (a
/// copy per field cost a helper call each: a dozen per followed call).
#[inline(always)]
fn iovecs(iov: u64, count: u64) -> (Segs, u64) {
    let empty = Segs {
        base: [0; SEGS],
        len: [0; SEGS],
        n: 0,
    };
    let n = count.min(u64::from(SOCK_IOV_MAX));
    if n == 0 || iov == 0 {
        return (empty, 0);
    }
    if n == 1 {
        // The common case (one buffer): read onto the stack, which the
        // kernel's user-copy checks pass at once (a map value costs them
        // a heap-object lookup per read).
        let Some([base, len]) = read_user::<[u64; 2]>(iov) else {
            return (empty, 0);
        };
        return (
            Segs {
                base: [base, 0, 0, 0],
                len: [len, 0, 0, 0],
                n: 1,
            },
            len,
        );
    }
    let Some(a) = IOV_SCRATCH.get_ptr_mut(0) else {
        return (empty, 0);
    };
    // SAFETY: per-CPU scratch.
    let a = unsafe { &mut *a };
    // 16 bytes per iovec, at most the scratch's 128 (a mask for the verifier;
    // n is 1..=8, so the size is 16..=128).
    let size = ((n * 16 - 1) & (2 * 8 * SOCK_IOV_MAX as u64 - 1)) as u32 + 1;
    // SAFETY: user memory of the current task, read without faulting.
    let ok = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            a.as_mut_ptr().cast(),
            size,
            iov as *const _,
        )
    } == 0;
    if !ok {
        return (empty, 0);
    }
    let mut total = 0u64;
    for i in 0..SOCK_IOV_MAX as usize {
        if i as u64 >= n {
            break;
        }
        total = total.wrapping_add(a[2 * i + 1]);
    }
    let pick = |i: usize, f: usize| if (i as u64) < n { a[2 * i + f] } else { 0 };
    (
        Segs {
            base: [pick(0, 0), pick(1, 0), pick(2, 0), pick(3, 0)],
            len: [pick(0, 1), pick(1, 1), pick(2, 1), pick(3, 1)],
            n: n.min(SEGS as u64) as usize,
        },
        total,
    )
}

#[inline(always)]
fn on_sock(ctx: &BtfTracePointContext, dir: usize) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Cheapest test first: every other task of the node leaves here.
    let watched = crate::storage::watched_byte(tgid);
    if watched == 0 {
        return;
    }
    let flags: i32 = ctx.arg(2);
    if dir == RECV && flags & MSG_PEEK != 0 {
        // The same bytes come again in the real read.
        return;
    }
    let sk: u64 = ctx.arg(0);
    // The socket's storage is keyed by the socket itself: a `struct sock *`
    // is reused after a close (slab free lists), a storage dies with its
    // socket. (The helper takes the typed argument itself.)
    let Some((state, first)) = decide(ctx.arg::<*mut core::ffi::c_void>(0), sk, tgid) else {
        return;
    };
    // Its exec or exit forgets its connections. (Stored once: the byte's
    // cache line is read by every CPU's scheduler probe.)
    if watched & WATCHED_HAS_CONN == 0 {
        crate::storage::mark_has_conn(tgid);
    }
    let ret: i32 = ctx.arg(1);
    // SAFETY: this socket's storage (alive while the socket is).
    let state = unsafe { &mut *state };
    if dir == RECV && !first && state.lost[RECV] == 0 && ret > 0 {
        // A receive of the rest of a message whose start an earlier event
        // carried brings nothing new: it returns here, before any register
        // or buffer is read. (EAGAIN reads stay events: they show a client
        // waiting in its poll loop.)
        let skip = state.skip[RECV];
        if skip >= ret as u32 {
            state.skip[RECV] = skip - ret as u32;
            return;
        }
    }
    let ret = i64::from(ret);
    // SAFETY: the task pointer comes from bpf_get_current_task_btf (the
    // verifier needs a BTF pointer); the helper returns its saved user
    // registers, typed `struct pt_regs`.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    // The syscall number and arguments, read by direct loads: the offsets
    // are the loader's constants (frozen .rodata, known to the verifier),
    // so each load is checked against the BTF type and compiled to one
    // instruction (a helper call and a copy per read cost far more). A
    // layout the loader did not find (length 0) reads nothing.
    let copied = global(&DBUS_REGS_LEN) != 0;
    let arg = |off: u64| -> u64 {
        if !copied || off == 0 {
            0
        } else {
            // SAFETY: a u64 field of `struct pt_regs` at a verified offset.
            unsafe { crate::storage::btf_load::<u64>(regs, off) }
        }
    };
    let nr_off = global(&crate::PT_REGS_NR_OFF);
    // 32 bits: arm64's `syscallno` is an s32 (a wider load would run past
    // the field, which the verifier refuses); x86's orig_ax holds small
    // numbers or -1 (not a syscall).
    let nr = if nr_off == 0 || !copied {
        u64::MAX
    } else {
        // SAFETY: a field of `struct pt_regs` at a verified offset.
        match unsafe { crate::storage::btf_load::<i32>(regs, nr_off) } {
            n if n < 0 => u64::MAX,
            n => n as u64,
        }
    };
    let call = if nr < u64::from(SYSCALL_SLOTS) {
        match SOCK_CALLS.get(nr as u32) {
            Some(c) => SockCall::from_u32(u32::from(*c)),
            None => SockCall::None,
        }
    } else {
        SockCall::None
    };
    let (segs, requested) = match call {
        SockCall::Write | SockCall::Read => {
            let len = arg(global(&PT_REGS_ARG2_OFF));
            (
                Segs {
                    base: [arg(global(&DBUS_ARG1_OFF)), 0, 0, 0],
                    len: [len, 0, 0, 0],
                    n: 1,
                },
                len,
            )
        }
        SockCall::Writev | SockCall::Readv => {
            iovecs(arg(global(&DBUS_ARG1_OFF)), arg(global(&PT_REGS_ARG2_OFF)))
        }
        // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
        SockCall::Sendmsg | SockCall::Recvmsg => {
            let msg = arg(global(&DBUS_ARG1_OFF));
            let [iov, cnt] = read_user::<[u64; 2]>(msg + 16).unwrap_or([0, 0]);
            iovecs(iov, cnt)
        }
        _ => {
            // Not a syscall whose buffer the probe knows (io_uring,
            // sendmmsg, splice...): the bytes go by unparsed.
            if ret > 0 {
                state.lost[dir] = 1;
                count_drop_slot(DROP_DBUS_READS);
            }
            return;
        }
    };
    let fd = arg(global(&crate::PT_REGS_ARG0_OFF)) as i32;
    let Some(e) = SOCK_EVENT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, filled then copied into the ring buffer.
    let e = unsafe { &mut *e };
    e.header = EventHeader::new(
        EventKind::Socket,
        core::mem::size_of::<SocketEvent>(),
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() },
    );
    e.tid = pid_tgid as u32;
    e.pid = tgid;
    e.fd = fd;
    e.call = call as u32;
    e.ret = ret;
    e.requested = requested;
    e.slot = state.slot;
    e.head = [0; 4];
    e.start_ns = 0;
    e._pad2 = 0;
    e.comm = state.comm;
    e.path[0] = 0;
    e.nmsgs = 0;
    e.flags = SOCK_EV_STREAM;
    if first {
        e.flags |= SOCK_EV_FIRST;
    }
    if state.lost[dir] != 0 {
        state.lost[dir] = 0;
        state.skip[dir] = 0;
        e.flags |= SOCK_EV_DESYNC;
    }
    for i in 0..SOCK_MSG_SLOTS {
        e.msgs[i].kind = SOCK_MSG_NONE;
        e.msgs[i].len = 0;
    }
    if ret > 0 {
        walk(e, state, dir, &segs, ret as u64);
    }
    if e.msgs[0].kind == SOCK_MSG_DBUS || e.msgs[0].kind == SOCK_MSG_SASL {
        e.head = [
            e.msgs[0].bytes[0],
            e.msgs[0].bytes[1],
            e.msgs[0].bytes[2],
            e.msgs[0].bytes[3],
        ];
    }
    // A new connection wakes the agent at once: it reads who connected
    // from /proc while the process (a short-lived runc) still runs.
    let wake = if first {
        BPF_RB_FORCE_WAKEUP
    } else {
        wake_flags(call, ret, requested)
    };
    // Only the filled message slots go out: a record of one message is
    // under half the full size (the copy and the reader's cache misses
    // scale with it).
    let slots = if e.nmsgs > SOCK_MSG_SLOTS as u32 {
        SOCK_MSG_SLOTS
    } else {
        e.nmsgs as usize
    };
    let size = socket_event_size(slots);
    e.header.size = size as u32;
    // SAFETY: `size` is at most size_of::<SocketEvent>(), inside the scratch.
    let bytes =
        unsafe { core::slice::from_raw_parts((e as *const SocketEvent).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, wake).is_err() {
        count_drop(EventKind::Socket);
    }
}

/// Walk the message starts in the `total` bytes of this call, from where
/// the socket's stream stands, copying each start into the event (up to
/// SOCK_MSG_SLOTS: more are an overflow, and the position is lost).
///
/// Verifier note: the loop-carried values (position, bytes to skip after
/// the call, lost) live in per-CPU map memory, not in registers, and the
/// SASL line end goes through the event: loaded back they are unknown
/// scalars, so every path of an iteration reaches the next one in the same
/// state and the verifier prunes them (kept in registers, each path's
/// distinct values multiplied the states past the 1M-instruction limit).
#[inline(always)]
fn walk(e: &mut SocketEvent, state: &mut DbusSock, dir: usize, segs: &Segs, total: u64) {
    let skip = u64::from(state.skip[dir]);
    if skip >= total {
        // Still inside the message in progress.
        state.skip[dir] = (skip - total) as u32;
        return;
    }
    let Some(w) = WALK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch; volatile so that the values go through memory.
    let (pos_p, next_p, lost_p) = unsafe {
        (
            core::ptr::addr_of_mut!((*w)[0]),
            core::ptr::addr_of_mut!((*w)[1]),
            core::ptr::addr_of_mut!((*w)[2]),
        )
    };
    let st = |p: *mut u64, v: u64| unsafe { core::ptr::write_volatile(p, v) };
    let ld = |p: *mut u64| unsafe { core::ptr::read_volatile(p) };
    st(pos_p, skip);
    st(next_p, 0);
    st(lost_p, 0);
    for i in 0..SOCK_MSG_SLOTS {
        let pos = ld(pos_p);
        if pos >= total {
            break;
        }
        let Some((addr, contiguous)) = segs.at(pos) else {
            st(lost_p, 1);
            break;
        };
        let avail = contiguous.min(total - pos);
        let m = &mut e.msgs[i];
        m.offset = pos as u32;
        m.kind = SOCK_MSG_NONE;
        m._pad = 0;
        let want = avail.min(SOCK_MSG_BYTES as u64);
        // SAFETY: user memory of the current task, read without faulting;
        // the size is bounded for the verifier (a mask within the array).
        let copied = unsafe {
            let size = if want >= SOCK_MSG_BYTES as u64 {
                SOCK_MSG_BYTES as u32
            } else {
                (want as u32) & (SOCK_MSG_BYTES as u32 - 1)
            };
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                m.bytes.as_mut_ptr().cast(),
                size,
                addr as *const _,
            ) == 0
        };
        if !copied {
            count_drop_slot(DROP_DBUS_READS);
            st(lost_p, 1);
            break;
        }
        e.nmsgs = i as u32 + 1;
        let b0 = m.bytes[0];
        let header = if want >= 16 {
            dbus_len_of(&m.bytes)
        } else {
            None
        };
        if let Some(len) = header {
            m.kind = SOCK_MSG_DBUS;
            m.len = len.min(want) as u16;
            if pos + len > total {
                st(next_p, pos + len - total);
            }
            st(pos_p, pos + len);
        } else if i == 0 && (b0 == 0 || b0.is_ascii_uppercase()) {
            // SASL, which only ever starts a call (clients send it before
            // BEGIN, servers answer it before their first message): the
            // lines and whatever follows them in the copied bytes go to
            // userspace, which finds the line ends (a scan here cost the
            // verifier too much) and a message after them; the walk stops.
            // More bytes than copied: lost.
            m.kind = SOCK_MSG_SASL;
            m.len = want as u16;
            if total - pos > want {
                st(lost_p, 1);
            }
            st(pos_p, total);
            break;
        } else {
            // Neither (or a header split across two calls or buffers): the
            // position is lost.
            m.len = want as u16;
            st(lost_p, 1);
            break;
        }
    }
    if ld(pos_p) < total && ld(lost_p) == 0 {
        e.flags |= SOCK_EV_OVERFLOW;
    }
    if ld(lost_p) != 0 || ld(pos_p) < total {
        // Bytes that are neither a header nor SASL, a split header, or more
        // message starts than slots: resynchronise at the next call.
        e.flags |= SOCK_EV_DESYNC;
        state.skip[dir] = 0;
    } else {
        state.skip[dir] = ld(next_p).min(u64::from(u32::MAX)) as u32;
    }
}

/// The length of the D-Bus message whose header starts `b`: 16 + the
/// header fields padded to 8 + the body, in the byte order of byte 0.
#[inline(always)]
fn dbus_len_of(h: &[u8; SOCK_MSG_BYTES]) -> Option<u64> {
    let le = match h[0] {
        b'l' => true,
        b'B' => false,
        _ => return None,
    };
    if !(1..=4).contains(&h[1]) || h[3] != 1 {
        return None;
    }
    let u = |i: usize| {
        let v = [h[i], h[i + 1], h[i + 2], h[i + 3]];
        u64::from(if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        })
    };
    let len = 16 + u(12).next_multiple_of(8) + u(4);
    (len <= DBUS_MAX_MESSAGE).then_some(len)
}

//! D-Bus/systemd sockets: the unix-socket connections of watched (runtime)
//! processes to the configured paths (systemd's private socket, the system
//! bus), and every send, receive and close on them, as ring-buffer events.
//!
//! It rides on the storage probes' `sys_exit` program and watched set (one
//! program per hook keeps the per-syscall floor where it is): a syscall of an
//! unwatched process never gets here. For a watched one, the cost is one
//! inlined array lookup of the syscall number; only reads, writes, sends,
//! receives, connects and closes go on to a hash lookup of (tgid, fd), and
//! only calls on a tracked connection produce an event.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use watchdog_common::{
    COMM_LEN, DROP_SOCK_CONNS, EventHeader, EventKind, SOCK_CONNS_ENTRIES, SOCK_FD_SCAN,
    SOCK_IOV_MAX, SOCK_PATH_LEN, SOCK_PATH_SLOTS, SYSCALL_SLOTS, SockCall, SockConn, SockPath,
    SocketEvent,
};

use crate::{EVENTS, count_drop, global};

const AF_UNIX: u16 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in the ring buffer past which every event wakes the agent.
const WAKE_AT_BYTES: u64 = 64 * 1024;
const EINPROGRESS: i64 = 115;
/// `sizeof(struct sockaddr_un)`.
const SOCKADDR_UN_LEN: usize = 2 + SOCK_PATH_LEN;

#[map(name = "SOCK_PATHS")]
static SOCK_PATHS: Array<SockPath> = Array::with_max_entries(SOCK_PATH_SLOTS, 0);

#[map(name = "SOCK_CALLS")]
static SOCK_CALLS: Array<u8> = Array::with_max_entries(SYSCALL_SLOTS, 0);

#[map(name = "SOCK_CONNS")]
static SOCK_CONNS: LruHashMap<u64, SockConn> = LruHashMap::with_max_entries(SOCK_CONNS_ENTRIES, 0);

/// Per-CPU copy of a connect's address (too big for the stack).
#[map(name = "SOCK_ADDR")]
static SOCK_ADDR: PerCpuArray<[u8; SOCKADDR_UN_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Offset in `struct pt_regs` of the third syscall argument (x86_64 `dx`,
/// arm64 `regs[2]`).
#[unsafe(no_mangle)]
static PT_REGS_ARG2_OFF: u64 = 0;

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

/// The raw-syscall fallback (not attached by default): every syscall exit;
/// unwatched processes return after one array lookup.
#[aya_ebpf::macros::raw_tracepoint(tracepoint = "sys_exit")]
pub fn dbus_sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if crate::storage::watched((pid_tgid >> 32) as u32) {
        on_sys_exit(&ctx, pid_tgid);
    }
    0
}

#[inline(always)]
fn on_sys_exit(ctx: &RawTracePointContext, pid_tgid: u64) {
    let regs: u64 = ctx.arg(0);
    let nr_off = global(&crate::PT_REGS_NR_OFF);
    if nr_off == 0 {
        return;
    }
    let Some(nr) = crate::storage::read_kernel::<u64>(regs + nr_off) else {
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
            crate::storage::read_kernel::<u64>(regs + off).unwrap_or(0)
        }
    };
    let fd = arg(global(&crate::PT_REGS_ARG0_OFF)) as i32;
    if call == SockCall::Connect {
        connect(
            pid_tgid,
            fd,
            ret,
            arg(global(&crate::storage::PT_REGS_ARG1_OFF)),
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
    let a1 = || arg(global(&crate::storage::PT_REGS_ARG1_OFF));
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
    let start = 0;
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
            crate::count_drop_slot(DROP_SOCK_CONNS);
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
    // A successful send or receive does not wake the agent (it drains the
    // ring buffer every 100 ms anyway): a chatty connection would otherwise
    // cost a wakeup per call. Connects, closes, EAGAIN, partial sends, and a
    // filling buffer do.
    let quiet = (call.is_recv() && (ret > 0 || ret == -11))
        || (call.is_send() && ret > 0 && ret as u64 >= requested);
    // (The default, adaptive wakeup would not wake a reader that has not
    // caught up, and quiet events keep it from catching up: force it.)
    let flags = if quiet && EVENTS.query(BPF_RB_AVAIL_DATA) < WAKE_AT_BYTES {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    };
    entry.submit(flags);
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

//! Storage hangs: which tasks sleep, since when, in which syscall on which
//! path, and with which kernel stack. Userspace sweeps the map for entries
//! older than its threshold ("still blocked": the task's context-switch
//! count has not moved since), so nothing here sends events.
//!
//! Everything comes from `sched_switch` (where `current == prev`): no
//! syscall hook, so no task pays the kernel's tracing slow path on its
//! syscalls. When a task goes to sleep inside a syscall, its syscall number
//! and arguments are in its saved user registers (`bpf_task_pt_regs`), and
//! its path argument is in its own memory, which the kernel has just copied
//! (resident; the failures are counted anyway).
//!
//! Costs, cheapest test first:
//! - a preemption (`prev_state` 0) returns at once; so does an interruptible
//!   sleep of an unwatched task (one inlined array lookup by tgid: pipes,
//!   futexes and epoll of every workload stop there);
//! - interruptible sleeps of watched (runtime) tasks are recorded only in the
//!   tracked file syscalls (an array lookup on the syscall number: no
//!   futex/epoll);
//! - uninterruptible (D) sleeps of every task are recorded, with their
//!   kernel stack, and their path when the syscall has one. The entry is
//!   never cleared on wake-up (that would cost a lookup on every switch):
//!   userspace discards it when the task's switch count in /proc moved on.
//! - fork/exec/exit run once per task life.
use aya_ebpf::{
    bindings::task_struct,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user_str_bytes, generated::bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::tracing::StackIdContext as _,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use watchdog_common::{
    AT_FDCWD, ArgKind, BLOCKED_ENTRIES, BlockedEntry, COMM_LEN, CommPattern, DROP_BLOCKED,
    DROP_PATH_READ, DROP_SLEEPING, DROP_STACK, DROP_WATCHED, NO_SYSCALL, PATH_LEN,
    SLEEPING_ENTRIES, STACKS_ENTRIES, SYSCALL_SLOTS, TASK_INTERRUPTIBLE, TASK_NOLOAD,
    TASK_UNINTERRUPTIBLE, WATCH_COMMS_SLOTS, WATCHED_BITS_WORDS, WATCHED_ENTRIES, WATCHED_HAS_CONN,
};

use crate::{count_drop_slot, global};

#[map(name = "WATCHED")]
static WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(WATCHED_ENTRIES, 0);

/// The same set as one byte per tgid (64 per element): what the per-syscall
/// hooks test. The verifier inlines array lookups, while a hash lookup on
/// every syscall of the node cost about as much as the kernel's own tracing
/// slow path. Bytes, not bits: the bpf target has no atomic OR, and byte
/// stores need none. The loader sizes it to pid_max.
#[map(name = "WATCHED_BYTES")]
static WATCHED_BYTES: Array<[u8; 64]> = Array::with_max_entries(WATCHED_BITS_WORDS, 0);

#[map(name = "WATCH_COMMS")]
static WATCH_COMMS: Array<CommPattern> = Array::with_max_entries(WATCH_COMMS_SLOTS, 0);

#[map(name = "SYSCALL_KINDS")]
static SYSCALL_KINDS: Array<u8> = Array::with_max_entries(SYSCALL_SLOTS, 0);

#[map(name = "BLOCKED")]
static BLOCKED: HashMap<u32, BlockedEntry> = HashMap::with_max_entries(BLOCKED_ENTRIES, 0);

/// The interruptible sleeps of watched tasks, apart: a node full of
/// runtime descendants parked in file syscalls cannot take the room of the
/// D sleeps.
#[map(name = "SLEEPING")]
static SLEEPING: HashMap<u32, BlockedEntry> = HashMap::with_max_entries(SLEEPING_ENTRIES, 0);

#[map(name = "STACKS")]
static STACKS: StackTrace = StackTrace::with_max_entries(STACKS_ENTRIES, 0);

/// Per-CPU scratch for building an entry (too big for the stack).
#[map(name = "BLOCKED_SCRATCH")]
static SCRATCH: PerCpuArray<BlockedEntry> = PerCpuArray::with_max_entries(1, 0);

// --- Patched by the loader ---------------------------------------------------

/// Offsets in `struct pt_regs` of the second syscall argument (x86_64 `si`,
/// arm64 `regs[1]`); the first is `PT_REGS_ARG0_OFF` in main.rs.
#[unsafe(no_mangle)]
pub(crate) static PT_REGS_ARG1_OFF: u64 = 0;
/// x86_64 only (0 elsewhere: the test is skipped): `pt_regs` ->ip, ->cx,
/// ->flags, ->r11. The `syscall` instruction saves the user ip in rcx and
/// the flags in r11, and the entry code stores both, so `cx == ip && r11 ==
/// flags` tells a 64-bit syscall from an exception (whose orig_ax is -1
/// anyway) and from an `int $0x80` compat call (whose numbers differ).
#[unsafe(no_mangle)]
static PT_REGS_IP_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_CX_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_FLAGS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PT_REGS_R11_OFF: u64 = 0;
/// task_struct->flags (PF_KTHREAD: kernel threads have no user registers).
#[unsafe(no_mangle)]
static TASK_FLAGS_OFF: u64 = 0;
/// task_struct->files, files_struct->fdt, fdtable->max_fds, ->fd,
/// file->f_inode, inode->i_mode: the type of an fd argument (some are
/// legitimately 0: FD_TYPE_KNOWN says whether all were found).
#[unsafe(no_mangle)]
static FD_TYPE_KNOWN: u64 = 0;
#[unsafe(no_mangle)]
static TASK_FILES_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FILES_FDT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FDT_MAX_FDS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FDT_FD_OFF: u64 = 0;
#[unsafe(no_mangle)]
static FILE_INODE_OFF: u64 = 0;
#[unsafe(no_mangle)]
static INODE_MODE_OFF: u64 = 0;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const S_IFDIR: u16 = 0o040000;
const PF_KTHREAD: u32 = 0x0020_0000;
/// task_struct->tgid, ->nvcsw, ->nivcsw.
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_NVCSW_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_NIVCSW_OFF: u64 = 0;

#[inline(always)]
pub(crate) fn read_kernel<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// The `T` at `off` in the kernel object `base` points at, by a direct
/// load: `base` must be a BTF-typed pointer (a tp_btf argument, a helper's
/// BTF return) and `off` a constant the verifier knows (a loader-patched
/// global of the frozen .rodata), so that the verifier checks the access
/// against the type and turns it into one faulting-safe instruction.
#[inline(always)]
pub(crate) unsafe fn btf_load<T: Copy>(base: u64, off: u64) -> T {
    // SAFETY: the caller's contract; the verifier enforces it at load.
    unsafe { core::ptr::read_volatile((base + off) as *const T) }
}

#[inline(always)]
pub(crate) fn watched_byte(tgid: u32) -> u8 {
    match WATCHED_BYTES.get(tgid >> 6) {
        Some(w) => w[(tgid & 63) as usize],
        None => 0,
    }
}

#[inline(always)]
pub(crate) fn watched(tgid: u32) -> bool {
    watched_byte(tgid) != 0
}

/// The process has a tracked D-Bus connection (see dbus.rs): its exec or
/// exit forgets them.
#[inline(always)]
pub(crate) fn mark_has_conn(tgid: u32) {
    set_watched(tgid, 1 | WATCHED_HAS_CONN);
}

#[inline(always)]
fn set_watched(tgid: u32, v: u8) {
    if let Some(p) = WATCHED_BYTES.get_ptr_mut(tgid >> 6) {
        // SAFETY: map value; a single-byte store needs no atomic RMW.
        unsafe { core::ptr::write_volatile(&mut (*p)[(tgid & 63) as usize], v) };
    }
}

#[inline(always)]
fn watch(tgid: u32) {
    set_watched(tgid, 1);
    if WATCHED.insert(tgid, 1u8, 0).is_err() {
        count_drop_slot(DROP_WATCHED);
    }
}

#[inline(always)]
fn unwatch(tgid: u32) {
    set_watched(tgid, 0);
    let _ = WATCHED.remove(tgid);
}

/// A new task inherits its parent's watched flag (threads share the tgid, so
/// only new processes matter). Args: (struct task_struct *parent, *child).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn storage_fork(ctx: RawTracePointContext) -> i32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !watched(parent) {
        return 0;
    }
    let off = global(&TASK_TGID_OFF);
    if off == 0 {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    if let Some(tgid) = read_kernel::<i32>(child + off)
        && tgid > 0
        && tgid as u32 != parent
    {
        watch(tgid as u32);
    }
    0
}

/// A process exec'ing a runtime's name becomes watched (descendants stay
/// watched whatever they exec). The comm is already the new one here.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn storage_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let byte = watched_byte(tgid);
    if byte != 0 {
        if byte & WATCHED_HAS_CONN != 0 {
            // Its close-on-exec fds (every Go fd) are gone.
            set_watched(tgid, 1);
            crate::dbus::forget_process(pid_tgid);
        }
        return 0;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    if comm_is_runtime(&comm) {
        watch(tgid);
    }
    0
}

/// The comm of the current task is one of the watched runtime names.
#[inline(always)]
pub(crate) fn comm_is_runtime(comm: &[u8; COMM_LEN]) -> bool {
    for slot in 0..WATCH_COMMS_SLOTS {
        let Some(p) = WATCH_COMMS.get(slot) else {
            break;
        };
        let len = p.len as usize;
        if len == 0 || len > COMM_LEN {
            break;
        }
        if matches(comm, p, len) {
            return true;
        }
    }
    false
}

#[inline(always)]
#[expect(
    clippy::needless_range_loop,
    reason = "a bounded index loop is what the verifier accepts best"
)]
fn matches(comm: &[u8; COMM_LEN], p: &CommPattern, len: usize) -> bool {
    for i in 0..COMM_LEN {
        if i >= len {
            // Exact names end here; prefixes match whatever follows.
            return p.prefix != 0 || comm[i] == 0;
        }
        if comm[i] != p.name[i] {
            return false;
        }
    }
    true
}

/// Forget an exiting task: its tid may be reused. The process leaves
/// WATCHED when its leader exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn storage_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let _ = BLOCKED.remove(tid);
    if !watched(tgid) {
        return 0;
    }
    let _ = SLEEPING.remove(tid);
    if tid == tgid {
        if watched_byte(tgid) & WATCHED_HAS_CONN != 0 {
            crate::dbus::forget_process(pid_tgid);
        }
        unwatch(tgid);
    }
    0
}

/// The syscall `task` (going to sleep, so `current`) sleeps in, from its
/// saved user registers: (number, pt_regs address), or None for a kernel
/// thread, an exception (page fault: orig_ax is -1) or a compat call.
#[inline(always)]
fn syscall_of(task: *mut task_struct) -> Option<(u32, u64)> {
    let flags_off = global(&TASK_FLAGS_OFF);
    let nr_off = global(&crate::PT_REGS_NR_OFF);
    if flags_off == 0 || nr_off == 0 {
        return None;
    }
    // Direct loads (one instruction each, checked by the verifier against
    // the BTF types at the loader's constant offsets) instead of a helper
    // call per field: this runs at every sleep of a watched task.
    // SAFETY: `task` is the BTF task pointer sched_switch passed.
    let flags = unsafe { btf_load::<u32>(task as u64, flags_off) };
    if flags & PF_KTHREAD != 0 {
        return None;
    }
    // SAFETY: `task` is the BTF task pointer sched_switch passed (the
    // verifier checks that); the helper returns its user register frame,
    // typed `struct pt_regs`.
    let regs = unsafe { bpf_task_pt_regs(task) } as u64;
    if regs == 0 {
        return None;
    }
    // 32 bits: arm64's `syscallno` is an s32 (the next 32 bits are other
    // state); x86's 64-bit orig_ax holds small numbers or -1 (not a syscall).
    // SAFETY: fields of `struct pt_regs` (so for every load below).
    let nr = unsafe { btf_load::<i32>(regs, nr_off) };
    if nr < 0 || nr >= SYSCALL_SLOTS as i32 {
        return None;
    }
    let ip = global(&PT_REGS_IP_OFF);
    if ip != 0 {
        // All-zero registers: a kernel-made user thread before its exec.
        let user_ip = unsafe { btf_load::<u64>(regs, ip) };
        if user_ip == 0 {
            return None;
        }
        let (cx, fl, r11) = (
            global(&PT_REGS_CX_OFF),
            global(&PT_REGS_FLAGS_OFF),
            global(&PT_REGS_R11_OFF),
        );
        // The loader leaves these 0 where the test does not hold (FRED).
        if cx != 0 && fl != 0 && r11 != 0 {
            let reg = |off: u64| unsafe { btf_load::<u64>(regs, off) };
            if reg(cx) != user_ip || reg(fl) != reg(r11) {
                return None;
            }
        }
    }
    Some((nr as u32, regs))
}

/// Whether fd `fd` of `task` is a regular file or a directory (or its type
/// is unknown): pipes, sockets and devices are no storage.
#[inline(always)]
fn fd_is_storage(task: u64, fd: i32) -> bool {
    let (files, fdt, max, arr, inode, mode) = (
        global(&TASK_FILES_OFF),
        global(&FILES_FDT_OFF),
        global(&FDT_MAX_FDS_OFF),
        global(&FDT_FD_OFF),
        global(&FILE_INODE_OFF),
        global(&INODE_MODE_OFF),
    );
    if global(&FD_TYPE_KNOWN) == 0 {
        return true;
    }
    let kind = || -> Option<u16> {
        let table = read_kernel::<u64>(read_kernel::<u64>(task + files)? + fdt)?;
        if fd < 0 || fd as u32 >= read_kernel::<u32>(table + max)? {
            return None;
        }
        let file = read_kernel::<u64>(read_kernel::<u64>(table + arr)? + fd as u64 * 8)?;
        let m = read_kernel::<u16>(read_kernel::<u64>(file + inode)? + mode)?;
        Some(m & S_IFMT)
    };
    matches!(kind(), Some(S_IFREG | S_IFDIR) | None)
}

/// Args: (bool preempt, struct task_struct *prev, *next, unsigned int prev_state).
/// At this point `current == prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn storage_sleep(ctx: BtfTracePointContext) -> i32 {
    let state: u64 = ctx.arg(3);
    let state = state as u32;
    // Preempted (still runnable), stopped, dead or idle: nothing to record.
    if state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE) == 0 || state & TASK_NOLOAD != 0 {
        return 0;
    }
    // Preempted after setting its sleep state: it is still runnable.
    let preempt: u64 = ctx.arg(0);
    if preempt & 0xff != 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let d = state & TASK_UNINTERRUPTIBLE != 0;
    if tid == 0 || (!d && !watched(tgid)) {
        return 0;
    }
    let prev: *mut task_struct = ctx.arg(1);
    let call = syscall_of(prev);
    let kind = match call {
        Some((nr, _)) => match SYSCALL_KINDS.get(nr) {
            Some(k) => ArgKind::from_u32(u32::from(*k)),
            None => ArgKind::Untracked,
        },
        None => ArgKind::Untracked,
    };
    // Interruptible sleeps count only in the file syscalls (a FUSE request
    // waits interruptibly until signalled); futex, epoll, poll... leave.
    if !d && kind == ArgKind::Untracked {
        return 0;
    }
    let prev_addr = prev as u64;
    if !d
        && kind == ArgKind::Fd
        && let Some((_, regs)) = call
    {
        let a0 = global(&crate::PT_REGS_ARG0_OFF);
        let fd = if a0 == 0 {
            -1
        } else {
            read_kernel::<u64>(regs + a0).unwrap_or(u64::MAX) as i32
        };
        // A read on a pipe or socket waits for its peer, not for storage.
        if !fd_is_storage(prev_addr, fd) {
            return 0;
        }
    }
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, no concurrent user on this CPU.
    let e = unsafe { &mut *e };
    // SAFETY: plain helper call.
    e.since_ns = unsafe { bpf_ktime_get_ns() };
    e.state = state;
    e.tgid = tgid;
    let (nv, niv) = (global(&TASK_NVCSW_OFF), global(&TASK_NIVCSW_OFF));
    e.switches = if nv != 0 && niv != 0 {
        read_kernel::<u64>(prev as u64 + nv)
            .unwrap_or(0)
            .wrapping_add(read_kernel::<u64>(prev as u64 + niv).unwrap_or(0))
    } else {
        0
    };
    e.stack_id = -1;
    if d {
        e.stack_id = match ctx.get_stackid(&STACKS, 0) {
            Ok(id) => id,
            Err(err) => {
                count_drop_slot(DROP_STACK);
                i64::from(err)
            }
        };
    }
    e.nr = call.map_or(NO_SYSCALL, |(nr, _)| nr);
    e.kind = kind as u32;
    e.fd = -1;
    e.flags = 0;
    e.path[0] = 0;
    if let Some((_, regs)) = call {
        let (a0, a1) = (global(&crate::PT_REGS_ARG0_OFF), global(&PT_REGS_ARG1_OFF));
        let arg = |off: u64| -> u64 {
            if off == 0 {
                0
            } else {
                read_kernel::<u64>(regs + off).unwrap_or(0)
            }
        };
        let (fd, path_ptr) = match kind {
            ArgKind::Fd => (arg(a0) as i32, 0),
            ArgKind::Path0 => (AT_FDCWD, arg(a0)),
            ArgKind::DirfdPath1 => (arg(a0) as i32, arg(a1)),
            ArgKind::Path1 => (AT_FDCWD, arg(a1)),
            ArgKind::NoArg | ArgKind::Untracked => (-1, 0),
        };
        e.fd = fd;
        if path_ptr != 0 {
            // SAFETY: user pointer of the current task, read without faulting.
            if unsafe { bpf_probe_read_user_str_bytes(path_ptr as *const u8, &mut e.path) }.is_err()
            {
                e.path[0] = 0;
                count_drop_slot(DROP_PATH_READ);
            }
        }
    }
    e.path[PATH_LEN - 1] = 0;
    if d {
        if BLOCKED.insert(tid, e, 0).is_err() {
            count_drop_slot(DROP_BLOCKED);
        }
    } else if SLEEPING.insert(tid, e, 0).is_err() {
        count_drop_slot(DROP_SLEEPING);
    }
    0
}

/// Empty programs on the storage hooks: the benchmark's floor.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn bench_empty_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

//! Storage hangs: syscalls in flight of the watched (container-runtime)
//! processes, and when every task of the node last went to uninterruptible
//! sleep, with its kernel stack. Userspace sweeps both maps for entries older
//! than its threshold ("still blocked"), so nothing here sends events.
//!
//! Costs, cheapest test first in every program:
//! - sys_enter/sys_exit: one inlined array lookup (WATCHED_BYTES) by tgid;
//!   unwatched tasks return. Watched ones note the call in a per-CPU slot
//!   (tid, number, regs pointer, start time) and clear it at exit. Only
//!   a call that is still in flight when its task is switched out (it sleeps,
//!   or is preempted) moves to the INFLIGHT hash, with its path read then; its
//!   exit deletes it.
//! - sched_switch: checks this CPU's syscall slot (a compare), then tests
//!   `prev_state` and returns unless the task goes to uninterruptible sleep. The entry is never cleared on wake-up (that would
//!   cost a lookup on every switch): it stores the task's context-switch count,
//!   and userspace discards it when the count in /proc moved on.
//! - fork/exec/exit run once per task life, not per syscall.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user_str_bytes,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::tracing::StackIdContext as _,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use watchdog_common::{
    AT_FDCWD, ArgKind, COMM_LEN, CommPattern, DROP_DSTATE, DROP_INFLIGHT, DROP_STACK, DROP_WATCHED,
    DSTATE_ENTRIES, DstateEntry, INFLIGHT_ENTRIES, InflightSyscall, PATH_LEN, STACKS_ENTRIES,
    SYSCALL_SLOTS, TASK_NOLOAD, TASK_UNINTERRUPTIBLE, WATCH_COMMS_SLOTS, WATCHED_BITS_WORDS,
    WATCHED_ENTRIES, WATCHED_HAS_CONN,
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

#[map(name = "INFLIGHT")]
static INFLIGHT: HashMap<u32, InflightSyscall> = HashMap::with_max_entries(INFLIGHT_ENTRIES, 0);

#[map(name = "DSTATE")]
static DSTATE: HashMap<u32, DstateEntry> = HashMap::with_max_entries(DSTATE_ENTRIES, 0);

#[map(name = "STACKS")]
static STACKS: StackTrace = StackTrace::with_max_entries(STACKS_ENTRIES, 0);

/// Per-CPU scratch for building an in-flight entry (too big for the stack).
#[map(name = "INFLIGHT_SCRATCH")]
static SCRATCH: PerCpuArray<InflightSyscall> = PerCpuArray::with_max_entries(1, 0);

// --- Patched by the loader ---------------------------------------------------

/// Offsets in `struct pt_regs` of the second syscall argument (x86_64 `si`,
/// arm64 `regs[1]`); the first is `PT_REGS_ARG0_OFF` in main.rs.
#[unsafe(no_mangle)]
pub(crate) static PT_REGS_ARG1_OFF: u64 = 0;
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

#[inline(always)]
fn watched_byte(tgid: u32) -> u8 {
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

/// Forget an exiting task: it never returns from its exit syscall, and its
/// tid may be reused. The process leaves WATCHED when its leader exits.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn storage_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let _ = DSTATE.remove(tid);
    if !watched(tgid) {
        return 0;
    }
    // Its exit syscall never returns: forget it here, before the last switch.
    if let Some(slot) = SLOT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if (*slot).tid == tid {
                (*slot).tid = 0;
            }
        }
    }
    let _ = INFLIGHT.remove(tid);
    if tid == tgid {
        if watched_byte(tgid) & WATCHED_HAS_CONN != 0 {
            crate::dbus::forget_process(pid_tgid);
        }
        unwatch(tgid);
    }
    0
}

/// The syscall a watched task entered on this CPU, until it exits or the
/// task is switched out (then, if it is a tracked one, it moves to
/// INFLIGHT). Most syscalls never sleep: they pay a few per-CPU stores, and
/// the arguments are read only when the call sleeps (`regs` stays valid while
/// the task is inside the syscall: it is on its kernel stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    /// 0 = empty.
    pub tid: u32,
    pub tgid: u32,
    pub start_ns: u64,
    pub nr: u64,
    /// `struct pt_regs *` of the syscall.
    pub regs: u64,
}

#[map(name = "SYSCALL_SLOT")]
static SLOT: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1, 0);

/// Args: (struct pt_regs *regs, long id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn storage_sys_enter(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !watched(tgid) {
        return 0;
    }
    let Some(slot) = SLOT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot. The slot is empty or holds this task's previous
    // call (every switch-out parks or clears it). The tid goes in last so
    // that a preemption in the middle (preemptible kernels) parks nothing.
    let slot = unsafe { &mut *slot };
    slot.tid = 0;
    slot.tgid = tgid;
    slot.nr = ctx.arg(1);
    slot.regs = ctx.arg(0);
    // SAFETY: plain helper call.
    slot.start_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a plain store; volatile keeps it after the others.
    unsafe { core::ptr::write_volatile(&mut slot.tid, pid_tgid as u32) };
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn storage_sys_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    let tid = pid_tgid as u32;
    if let Some(slot) = SLOT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        let slot = unsafe { &mut *slot };
        if slot.tid == tid {
            // Never switched out during the call: it was never in INFLIGHT.
            slot.tid = 0;
            return 0;
        }
    }
    let _ = INFLIGHT.remove(tid);
    0
}

/// At a switch-out of the task that owns this CPU's slot: a tracked call
/// that sleeps (or is preempted) goes to INFLIGHT, with its path read now,
/// while the task's memory is still the current one.
#[inline(always)]
fn park_inflight(tid: u32) {
    let Some(slot) = SLOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot.
    let slot = unsafe { &mut *slot };
    if slot.tid != tid || tid == 0 {
        return;
    }
    slot.tid = 0;
    let nr = slot.nr;
    if nr >= u64::from(SYSCALL_SLOTS) {
        return;
    }
    let kind = match SYSCALL_KINDS.get(nr as u32) {
        Some(k) if *k != 0 => ArgKind::from_u32(u32::from(*k)),
        _ => return,
    };
    let regs = slot.regs;
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
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch.
    let e = unsafe { &mut *e };
    e.start_ns = slot.start_ns;
    e.tgid = slot.tgid;
    e.nr = nr as u32;
    e.fd = fd;
    e.kind = kind as u32;
    e.path[0] = 0;
    if path_ptr != 0 {
        // SAFETY: user pointer of the current task, read without faulting.
        if unsafe { bpf_probe_read_user_str_bytes(path_ptr as *const u8, &mut e.path) }.is_err() {
            e.path[0] = 0;
        }
    }
    e.path[PATH_LEN - 1] = 0;
    if INFLIGHT.insert(tid, e, 0).is_err() {
        count_drop_slot(DROP_INFLIGHT);
    }
}

/// Args: (bool preempt, struct task_struct *prev, *next, unsigned int prev_state).
/// At this point `current == prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn storage_dstate(ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    park_inflight(tid);
    let state: u64 = ctx.arg(3);
    let state = state as u32;
    if state & TASK_UNINTERRUPTIBLE == 0 || state & TASK_NOLOAD != 0 || tid == 0 {
        return 0;
    }
    let prev: u64 = ctx.arg(1);
    let (nv, niv) = (global(&TASK_NVCSW_OFF), global(&TASK_NIVCSW_OFF));
    let switches = if nv != 0 && niv != 0 {
        read_kernel::<u64>(prev + nv)
            .unwrap_or(0)
            .wrapping_add(read_kernel::<u64>(prev + niv).unwrap_or(0))
    } else {
        0
    };
    let stack_id = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id,
        Err(e) => {
            count_drop_slot(DROP_STACK);
            i64::from(e)
        }
    };
    let entry = DstateEntry {
        // SAFETY: plain helper call.
        since_ns: unsafe { bpf_ktime_get_ns() },
        switches,
        stack_id,
        state,
        tgid: (pid_tgid >> 32) as u32,
    };
    if DSTATE.insert(tid, entry, 0).is_err() {
        count_drop_slot(DROP_DSTATE);
    }
    0
}

/// Empty programs on the storage hooks: the benchmark's floor.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn bench_empty_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

//! Storage hangs: syscalls in flight of the watched (container-runtime)
//! processes, and when every task of the node last went to uninterruptible
//! sleep, with its kernel stack. Userspace sweeps both maps for entries older
//! than its threshold ("still blocked"), so nothing here sends events.
//!
//! Costs, cheapest test first in every program:
//! - sys_enter/sys_exit: one WATCHED lookup by tgid; unwatched tasks return.
//!   Watched ones: one array lookup by syscall number; untracked numbers
//!   return. Tracked ones: one hash update at enter (with the path string),
//!   one delete at exit.
//! - sched_switch: tests `prev_state` and returns unless the task goes to
//!   uninterruptible sleep. The entry is never cleared on wake-up (that would
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
    SYSCALL_SLOTS, TASK_NOLOAD, TASK_UNINTERRUPTIBLE, WATCH_COMMS_SLOTS, WATCHED_ENTRIES,
};

use crate::{count_drop_slot, global};

#[map(name = "WATCHED")]
static WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(WATCHED_ENTRIES, 0);

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
static PT_REGS_ARG1_OFF: u64 = 0;
/// task_struct->tgid, ->nvcsw, ->nivcsw.
#[unsafe(no_mangle)]
static TASK_TGID_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_NVCSW_OFF: u64 = 0;
#[unsafe(no_mangle)]
static TASK_NIVCSW_OFF: u64 = 0;

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn watched(tgid: u32) -> bool {
    WATCHED.get_ptr(tgid).is_some()
}

#[inline(always)]
fn watch(tgid: u32) {
    if WATCHED.insert(tgid, 1u8, 0).is_err() {
        count_drop_slot(DROP_WATCHED);
    }
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
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if watched(tgid) {
        return 0;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    for slot in 0..WATCH_COMMS_SLOTS {
        let Some(p) = WATCH_COMMS.get(slot) else {
            break;
        };
        let len = p.len as usize;
        if len == 0 || len > COMM_LEN {
            break;
        }
        if matches(&comm, p, len) {
            watch(tgid);
            break;
        }
    }
    0
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
    let _ = INFLIGHT.remove(tid);
    if tid == tgid {
        let _ = WATCHED.remove(tgid);
    }
    0
}

/// Args: (struct pt_regs *regs, long id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn storage_sys_enter(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !watched(tgid) {
        return 0;
    }
    let nr: i64 = ctx.arg(1);
    if nr < 0 || nr >= i64::from(SYSCALL_SLOTS) {
        return 0;
    }
    let kind = match SYSCALL_KINDS.get(nr as u32) {
        Some(k) if *k != 0 => ArgKind::from_u32(u32::from(*k)),
        _ => return 0,
    };
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let regs: u64 = ctx.arg(0);
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
        ArgKind::NoArg => (-1, 0),
        ArgKind::Untracked => return 0,
    };
    // SAFETY: per-CPU scratch, no concurrent user on this CPU.
    let e = unsafe { &mut *e };
    e.start_ns = unsafe { bpf_ktime_get_ns() };
    e.tgid = tgid;
    e.nr = nr as u32;
    e.fd = fd;
    e.kind = kind as u32;
    e.path[0] = 0;
    if path_ptr != 0 {
        // SAFETY: user pointer read by the helper (fails cleanly when unmapped).
        if unsafe { bpf_probe_read_user_str_bytes(path_ptr as *const u8, &mut e.path) }.is_err() {
            e.path[0] = 0;
        }
    }
    e.path[PATH_LEN - 1] = 0;
    if INFLIGHT.insert(pid_tgid as u32, e, 0).is_err() {
        count_drop_slot(DROP_INFLIGHT);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn storage_sys_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    let _ = INFLIGHT.remove(pid_tgid as u32);
    0
}

/// Args: (bool preempt, struct task_struct *prev, *next, unsigned int prev_state).
/// At this point `current == prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn storage_dstate(ctx: BtfTracePointContext) -> i32 {
    let state: u64 = ctx.arg(3);
    let state = state as u32;
    if state & TASK_UNINTERRUPTIBLE == 0 || state & TASK_NOLOAD != 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if tid == 0 {
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

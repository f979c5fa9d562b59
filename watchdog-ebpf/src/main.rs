//! watchdog's eBPF programs.
//!
//! Hot-path rule: every program tests the cheapest disqualifying condition
//! first and returns. Kernel struct offsets and syscall numbers are not known
//! at compile time (no CO-RE in Rust eBPF): the loader reads them from BTF and
//! patches the `static`s below before loading; a value of 0 (or -1 for syscall
//! numbers) means "unknown", and the program then skips that read.
#![no_std]
#![no_main]

mod dbus;
mod storage;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use watchdog_common::{
    COMM_LEN, DROP_SLOTS, EventHeader, EventKind, ForkFailureEvent, ForkSyscall, NprocPressureEvent,
};

const EAGAIN: i64 = 11;

#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

// --- Patched by the loader (watchdog/src/probes/loader.rs) -----------------

/// Offset in `struct pt_regs` of the syscall number (x86_64 `orig_ax`, arm64 `syscallno`).
#[unsafe(no_mangle)]
pub(crate) static PT_REGS_NR_OFF: u64 = 0;
/// Offset in `struct pt_regs` of the first syscall argument as passed
/// (x86_64 `di`, arm64 `orig_x0`).
#[unsafe(no_mangle)]
pub(crate) static PT_REGS_ARG0_OFF: u64 = 0;
/// This architecture's syscall numbers; -1 where the syscall does not exist.
#[unsafe(no_mangle)]
static NR_FORK: i64 = -1;
#[unsafe(no_mangle)]
static NR_VFORK: i64 = -1;
#[unsafe(no_mangle)]
static NR_CLONE: i64 = -1;
#[unsafe(no_mangle)]
static NR_CLONE3: i64 = -1;
/// task->cgroups, css_set->subsys[], the pids controller's index in subsys[],
/// css->cgroup, cgroup->kn, kernfs_node->id.
#[unsafe(no_mangle)]
static TASK_CGROUPS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CSS_SET_SUBSYS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static PIDS_CGRP_ID: u64 = u64::MAX;
#[unsafe(no_mangle)]
static CSS_CGROUP_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN_OFF: u64 = 0;
#[unsafe(no_mangle)]
static KN_ID_OFF: u64 = 0;
/// task->real_cred, cred->ucounts, ucounts->rlimit[], the NPROC index in it,
/// task->signal, signal_struct->rlim[] (RLIMIT_NPROC is 6 on every Linux arch
/// watchdog builds for; struct rlimit is two longs).
#[unsafe(no_mangle)]
static TASK_REAL_CRED_OFF: u64 = 0;
#[unsafe(no_mangle)]
static CRED_UCOUNTS_OFF: u64 = 0;
#[unsafe(no_mangle)]
static UCOUNTS_RLIMIT_OFF: u64 = 0;
#[unsafe(no_mangle)]
static UCOUNT_NPROC_IDX: u64 = 0;
#[unsafe(no_mangle)]
static TASK_SIGNAL_OFF: u64 = 0;
#[unsafe(no_mangle)]
static SIGNAL_RLIM_OFF: u64 = 0;
/// Report a user at or above this share of its RLIMIT_NPROC, in per mille.
#[unsafe(no_mangle)]
static NPROC_ARM_PERMILLE: u64 = 750;
/// Entering this share (per mille) reports at once, past the rate limit.
#[unsafe(no_mangle)]
static NPROC_WARN_PERMILLE: u64 = 900;
/// Minimum nanoseconds between two pressure events on one CPU.
#[unsafe(no_mangle)]
static NPROC_EVERY_NS: u64 = 500_000_000;

const RLIMIT_NPROC: u64 = 6;
const RLIM_INFINITY: u64 = u64::MAX;

/// Per CPU: [0] time of the last pressure event, [1] whether it was in the
/// warning band (rate limit, bypassed once on entering the band).
#[map(name = "NPROC_LAST")]
static NPROC_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
pub(crate) fn global<T: Copy>(v: &T) -> T {
    // SAFETY: reading a static; volatile so the loader's patched value is used
    // instead of the compile-time constant.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub(crate) fn count_drop(kind: EventKind) {
    count_drop_slot(kind as u32);
}

#[inline(always)]
pub(crate) fn count_drop_slot(slot: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// The kernfs id of the current task's cgroup in the pids controller's
/// hierarchy: task->cgroups->subsys[pids]->cgroup->kn->id.
#[inline(always)]
fn pids_cgroup_id() -> u64 {
    let (t, s, idx, c, k, i) = (
        global(&TASK_CGROUPS_OFF),
        global(&CSS_SET_SUBSYS_OFF),
        global(&PIDS_CGRP_ID),
        global(&CSS_CGROUP_OFF),
        global(&CGROUP_KN_OFF),
        global(&KN_ID_OFF),
    );
    if t == 0 || s == 0 || idx >= 64 || k == 0 {
        return 0;
    }
    // SAFETY: returns the current task pointer; only used as an address.
    let task = unsafe { bpf_get_current_task() };
    let chain = || -> Option<u64> {
        let css_set = read_u64(task + t)?;
        let css = read_u64(css_set + s + idx * 8)?;
        let cgrp = read_u64(css + c)?;
        let kn = read_u64(cgrp + k)?;
        read_u64(kn + i)
    };
    chain().unwrap_or(0)
}

/// fork/vfork/clone/clone3 returning -EAGAIN, system-wide. Attached to the
/// `sys_exit` raw tracepoint: args are (struct pt_regs *regs, long ret).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn fork_failures(ctx: RawTracePointContext) -> i32 {
    match try_fork_failures(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_fork_failures(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // Cheapest test first: almost every syscall exit leaves here.
    let ret: i64 = ctx.arg(1);
    if ret != -EAGAIN {
        return Ok(0);
    }
    let regs: u64 = ctx.arg(0);
    let nr_off = global(&PT_REGS_NR_OFF);
    if nr_off == 0 {
        return Ok(0);
    }
    let nr = read_u64(regs + nr_off).ok_or(0)? as i64;
    let syscall = if nr == global(&NR_CLONE) {
        ForkSyscall::Clone
    } else if nr == global(&NR_CLONE3) {
        ForkSyscall::Clone3
    } else if nr == global(&NR_FORK) {
        ForkSyscall::Fork
    } else if nr == global(&NR_VFORK) {
        ForkSyscall::Vfork
    } else {
        return Ok(0);
    };

    let arg0_off = global(&PT_REGS_ARG0_OFF);
    let clone_flags = match syscall {
        ForkSyscall::Clone if arg0_off != 0 => read_u64(regs + arg0_off).unwrap_or(0),
        ForkSyscall::Clone3 if arg0_off != 0 => read_u64(regs + arg0_off)
            // SAFETY: user pointer to struct clone_args, whose first field is `flags`.
            .and_then(|uargs| unsafe { bpf_probe_read_user(uargs as *const u64) }.ok())
            .unwrap_or(0),
        _ => 0,
    };

    let Some(mut entry) = EVENTS.reserve::<ForkFailureEvent>(0) else {
        count_drop(EventKind::ForkFailure);
        return Ok(0);
    };
    let pid_tgid = ctx.pid() as u64 | ((ctx.tgid() as u64) << 32);
    let uid_gid = ctx.uid() as u64 | ((ctx.gid() as u64) << 32);
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    entry.write(ForkFailureEvent {
        header: EventHeader::new(
            EventKind::ForkFailure,
            core::mem::size_of::<ForkFailureEvent>(),
            // SAFETY: plain helper call.
            unsafe { bpf_ktime_get_ns() },
        ),
        tid: pid_tgid as u32,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        syscall: syscall as u32,
        ret: ret as i32,
        clone_flags,
        // SAFETY: plain helper call.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pids_cgroup_id: pids_cgroup_id(),
        comm,
    });
    entry.submit(0);
    Ok(0)
}

/// Successful forks of non-root users near their RLIMIT_NPROC. Runs once per
/// new task (not per syscall), so it is cheap enough to stay attached: it is
/// what arms the fork-failure probe and warns before the limit is reached.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn nproc_pressure(ctx: RawTracePointContext) -> i32 {
    match try_nproc_pressure(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_nproc_pressure(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let uid = ctx.uid();
    // Root is exempt from RLIMIT_NPROC.
    if uid == 0 {
        return Ok(0);
    }
    let (cred_off, uc_off, rl_off, sig_off, rlim_off) = (
        global(&TASK_REAL_CRED_OFF),
        global(&CRED_UCOUNTS_OFF),
        global(&UCOUNTS_RLIMIT_OFF),
        global(&TASK_SIGNAL_OFF),
        global(&SIGNAL_RLIM_OFF),
    );
    if cred_off == 0 || uc_off == 0 || rl_off == 0 || sig_off == 0 || rlim_off == 0 {
        return Ok(0);
    }
    // SAFETY: only used as an address for probe reads.
    let task = unsafe { bpf_get_current_task() };
    let signal = read_u64(task + sig_off).ok_or(0)?;
    let limit = read_u64(signal + rlim_off + RLIMIT_NPROC * 16).ok_or(0)?;
    // Limits this large are unlimited in practice, and keep the products
    // below 2^64 (no 128-bit multiply in BPF).
    if limit == RLIM_INFINITY || limit == 0 || limit > 1 << 40 {
        return Ok(0);
    }
    let cred = read_u64(task + cred_off).ok_or(0)?;
    let ucounts = read_u64(cred + uc_off).ok_or(0)?;
    let tasks = read_u64(ucounts + rl_off + global(&UCOUNT_NPROC_IDX) * 8).ok_or(0)?;
    let permille = tasks.min(1 << 40).wrapping_mul(1000);
    if permille < limit.wrapping_mul(global(&NPROC_ARM_PERMILLE).min(1000)) {
        return Ok(0);
    }
    let in_warn_band =
        u64::from(permille >= limit.wrapping_mul(global(&NPROC_WARN_PERMILLE).min(1000)));
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let (Some(last), Some(band)) = (NPROC_LAST.get_ptr_mut(0), NPROC_LAST.get_ptr_mut(1)) else {
        return Ok(0);
    };
    // SAFETY: per-CPU slots, no concurrent writer on this CPU.
    unsafe {
        let entering_band = in_warn_band > *band;
        if now.wrapping_sub(*last) < global(&NPROC_EVERY_NS) && !entering_band {
            return Ok(0);
        }
        *last = now;
        *band = in_warn_band;
    }
    let Some(mut entry) = EVENTS.reserve::<NprocPressureEvent>(0) else {
        count_drop(EventKind::NprocPressure);
        return Ok(0);
    };
    entry.write(NprocPressureEvent {
        header: EventHeader::new(
            EventKind::NprocPressure,
            core::mem::size_of::<NprocPressureEvent>(),
            now,
        ),
        tid: ctx.pid(),
        pid: ctx.tgid(),
        uid,
        _pad: 0,
        tasks,
        limit,
        comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
    });
    entry.submit(0);
    Ok(0)
}

/// Does nothing on the same hook as `fork_failures`: the benchmark attaches it
/// alone to measure the kernel's cost of any `sys_exit` program (the floor).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn bench_empty_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

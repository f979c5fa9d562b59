//! watchdog's eBPF programs.
//!
//! Hot-path rule: every program tests the cheapest disqualifying condition
//! first and returns. Kernel struct offsets and syscall numbers are not known
//! at compile time (no CO-RE in Rust eBPF): the loader reads them from BTF and
//! patches the `static`s below before loading; a value of 0 (or -1 for syscall
//! numbers) means "unknown", and the program then skips that read.
#![no_std]
#![no_main]

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
    COMM_LEN, DROP_SLOTS, EventHeader, EventKind, ForkFailureEvent, ForkSyscall,
};

const EAGAIN: i64 = 11;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);

// --- Patched by the loader (watchdog/src/probes/loader.rs) -----------------

/// Offset in `struct pt_regs` of the syscall number (x86_64 `orig_ax`, arm64 `syscallno`).
#[unsafe(no_mangle)]
static PT_REGS_NR_OFF: u64 = 0;
/// Offset in `struct pt_regs` of the first syscall argument as passed
/// (x86_64 `di`, arm64 `orig_x0`).
#[unsafe(no_mangle)]
static PT_REGS_ARG0_OFF: u64 = 0;
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

#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    // SAFETY: reading a static; volatile so the loader's patched value is used
    // instead of the compile-time constant.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn count_drop(kind: EventKind) {
    if let Some(slot) = DROPS.get_ptr_mut(kind as u32) {
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

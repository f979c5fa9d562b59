//! Every filesystem path the agent reads, in one place. Paths under /proc and
//! /sys are joined to a root (normally `/`) so that tests can point the agent
//! at recorded trees.

pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// Relative to the root.
pub const PROC: &str = "proc";
pub const SYS: &str = "sys";
pub const KALLSYMS: &str = "proc/kallsyms";
pub const MOUNTINFO: &str = "proc/self/mountinfo";
pub const LOADAVG: &str = "proc/loadavg";
pub const THREADS_MAX: &str = "proc/sys/kernel/threads-max";
pub const PID_MAX: &str = "proc/sys/kernel/pid_max";
pub const OSRELEASE: &str = "proc/sys/kernel/osrelease";
pub const HOSTNAME: &str = "proc/sys/kernel/hostname";
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";
/// The remediation journal (`--remediation-journal`, `[remediation] journal`).
pub const REMEDIATION_JOURNAL: &str = "/var/lib/watchdog/remediation.jsonl";
/// Where the pids hierarchy is mounted on cgroup v1 and v2 hosts when
/// mountinfo cannot tell (recorded trees without a mountinfo).
pub const CGROUP_V1_PIDS: &str = "sys/fs/cgroup/pids";
pub const CGROUP_V2: &str = "sys/fs/cgroup";
/// cgroup v1 freezer hierarchy (remediation freezes a cgroup before its kills).
pub const CGROUP_V1_FREEZER: &str = "sys/fs/cgroup/freezer";
/// fusectl: one directory per FUSE connection (remediation aborts one).
pub const FUSE_CONNECTIONS: &str = "sys/fs/fuse/connections";

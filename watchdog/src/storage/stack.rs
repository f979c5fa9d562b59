//! Kernel stacks: symbolising stack-trace ids with /proc/kallsyms, reading
//! /proc/<pid>/task/<tid>/stack, and classifying what a blocked task waits for.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
};

use crate::{context::procfs::ProcReader, model::WaitClass, paths};

/// kallsyms is megabytes (tens on big kernels); a read stops here.
const KALLSYMS_MAX: u64 = 256 << 20;

/// The function name of a frame (`request_wait_answer+0x112/0x210` ->
/// `request_wait_answer`).
pub fn function(frame: &str) -> &str {
    let f = frame.split_once('+').map(|(f, _)| f).unwrap_or(frame);
    f.split_whitespace().next().unwrap_or(f)
}

/// Classifies a stack (innermost first) by the storage wait in it. FUSE and
/// NFS take precedence over block I/O: their page-cache waits go through the
/// same folio helpers.
pub fn classify<S: AsRef<str>>(frames: &[S]) -> WaitClass {
    let names: Vec<&str> = frames.iter().map(|f| function(f.as_ref())).collect();
    let any = |p: &dyn Fn(&str) -> bool| names.iter().any(|n| p(n));
    if any(&|n| n == "request_wait_answer" || n.starts_with("fuse_")) {
        WaitClass::Fuse
    } else if any(&|n| {
        n == "rpc_wait_bit_killable"
            || n.starts_with("nfs_")
            || n.starts_with("nfs4_")
            || n.starts_with("rpc_")
            || n.starts_with("__rpc_")
    }) {
        WaitClass::Nfs
    } else if frozen(&names) {
        WaitClass::Frozen
    } else if any(&|n| {
        n == "io_schedule"
            || n == "io_schedule_timeout"
            || n == "bit_wait_io"
            || n.starts_with("blk_")
            || n.starts_with("wait_on_page_bit")
            || n.starts_with("folio_wait_bit")
            || n == "__wait_on_buffer"
            || n == "submit_bio_wait"
            || n.starts_with("jbd2_")
    }) {
        WaitClass::Block
    } else {
        WaitClass::Other
    }
}

/// A writer waiting for a frozen file system (`fsfreeze -f`, a snapshot
/// tool): `sb_start_write` and friends are a per-CPU rwsem that the freezer
/// holds for writing, so the waiter sleeps in `percpu_rwsem_wait` under
/// `mnt_want_write`, `vfs_write`, `*_page_mkwrite`... Other per-CPU rwsems
/// (cgroup_threadgroup_rwsem at fork and cgroup moves) are not storage.
fn frozen(names: &[&str]) -> bool {
    let direct = |n: &str| {
        matches!(
            n,
            "sb_start_write" | "__sb_start_write" | "sb_start_pagefault" | "sb_start_intwrite"
        )
    };
    if names.iter().any(|n| direct(n)) {
        return true;
    }
    let rwsem = names
        .iter()
        .any(|n| *n == "percpu_rwsem_wait" || *n == "__percpu_down_read");
    // Other per-CPU rwsems: cgroup moves and forks, CPU hotplug, memory
    // hotplug (a sysfs or /proc/sys write waits there under vfs_write).
    let cgroup = names.iter().any(|n| {
        n.starts_with("cgroup_")
            || n.contains("threadgroup")
            || *n == "copy_process"
            || n.starts_with("cpus_read_lock")
            || n.contains("hotplug")
            || n.starts_with("get_online_mems")
    });
    let fs = names.iter().any(|n| {
        n.starts_with("mnt_want_write")
            || n.starts_with("vfs_")
            || n.ends_with("_page_mkwrite")
            || n.starts_with("do_sys_")
            || n.starts_with("path_")
            || n.starts_with("do_truncate")
            || n.starts_with("ksys_")
            || n.starts_with("file_")
            || n.starts_with("ext4_")
            || n.starts_with("xfs_")
            || n.starts_with("btrfs_")
    });
    rwsem && fs && !cgroup
}

/// Parses /proc/<pid>/task/<tid>/stack (`[<0>] request_wait_answer+0x112/0x210`).
pub fn parse_proc_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.split_once("] ").map(|(_, r)| r).unwrap_or(l);
            (!rest.is_empty()).then(|| rest.to_owned())
        })
        .collect()
}

/// Symbolises kernel addresses by streaming /proc/kallsyms (not kept in
/// memory: it is megabytes, and stacks are few and cached by id).
pub struct Symbolizer {
    proc: ProcReader,
    cache: HashMap<i64, Vec<String>>,
}

impl Symbolizer {
    /// Reads `<root>/proc/kallsyms` through `proc`.
    pub fn new(proc: ProcReader) -> Self {
        Self {
            proc,
            cache: HashMap::new(),
        }
    }

    pub fn cached(&self, id: i64) -> Option<&Vec<String>> {
        self.cache.get(&id)
    }

    /// Symbolise `ips` (innermost first) and remember them as stack `id`.
    pub fn symbolize(&mut self, id: i64, ips: &[u64]) -> Vec<String> {
        if let Some(s) = self.cache.get(&id) {
            return s.clone();
        }
        let v = match self
            .proc
            .open(&self.proc.rooted(paths::KALLSYMS), KALLSYMS_MAX)
        {
            Ok(f) => trim_scheduler(resolve(BufReader::new(f), ips)),
            Err(_) => ips.iter().map(|ip| format!("{ip:#x}")).collect(),
        };
        self.cache.insert(id, v.clone());
        v
    }
}

/// Drops the frames of the probe and the scheduler at the top of a stack
/// recorded at sched_switch: the wait that called schedule() is what matters.
pub fn trim_scheduler(frames: Vec<String>) -> Vec<String> {
    let skip = frames
        .iter()
        .take_while(|f| {
            let n = function(f);
            n.starts_with("bpf_")
                || n.starts_with("__traceiter")
                || n.starts_with("__bpf_trace")
                || n.starts_with("__schedule")
                || n == "schedule"
                || n == "schedule_timeout"
                || n == "io_schedule"
        })
        .count();
    // Keep io_schedule: it is the block-I/O marker.
    let keep_from = frames[..skip]
        .iter()
        .rposition(|f| function(f) == "io_schedule")
        .unwrap_or(skip);
    frames.into_iter().skip(keep_from).collect()
}

/// For each ip, the text symbol with the greatest address <= ip, as
/// `name+0xoff`; the bare address when kallsyms hides addresses.
pub fn resolve(reader: impl BufRead, ips: &[u64]) -> Vec<String> {
    let mut best: Vec<Option<(u64, String)>> = vec![None; ips.len()];
    for line in reader.lines().map_while(Result::ok) {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !matches!(ty, "t" | "T" | "w" | "W") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if addr == 0 {
            continue;
        }
        for (i, ip) in ips.iter().enumerate() {
            if addr <= *ip && best[i].as_ref().is_none_or(|(a, _)| addr > *a) {
                best[i] = Some((addr, name.to_owned()));
            }
        }
    }
    ips.iter()
        .zip(best)
        .map(|(ip, b)| match b {
            Some((a, n)) => format!("{n}+{:#x}", ip - a),
            None => format!("{ip:#x}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_storage_waits() {
        assert_eq!(
            classify(&[
                "__schedule+0x1",
                "request_wait_answer+0x112/0x210",
                "__fuse_simple_request+0x120/0x330"
            ]),
            WaitClass::Fuse
        );
        assert_eq!(
            classify(&[
                "schedule",
                "rpc_wait_bit_killable",
                "__rpc_execute",
                "nfs4_proc_getattr"
            ]),
            WaitClass::Nfs
        );
        assert_eq!(
            classify(&["io_schedule", "folio_wait_bit_common", "filemap_read"]),
            WaitClass::Block
        );
        // FUSE page waits go through folio helpers too.
        assert_eq!(
            classify(&["folio_wait_bit_common", "fuse_read_folio"]),
            WaitClass::Fuse
        );
        assert_eq!(classify(&["pipe_read", "vfs_read"]), WaitClass::Other);
    }

    #[test]
    fn a_frozen_file_system_is_a_storage_wait_and_cgroup_rwsems_are_not() {
        // Measured here: openat(O_CREAT) on an ext4 frozen with fsfreeze -f.
        let open = [
            "percpu_rwsem_wait+0x15f",
            "__percpu_down_read+0x88",
            "mnt_want_write+0x96",
            "path_openat+0x4cc",
            "do_filp_open+0x106",
            "do_sys_openat2+0x88",
        ];
        assert_eq!(classify(&open), WaitClass::Frozen);
        // A write through the page cache (mmap) on the frozen file system.
        let mkwrite = [
            "percpu_rwsem_wait+0x15f",
            "__percpu_down_read+0x88",
            "ext4_page_mkwrite+0x3c4",
            "do_page_mkwrite+0x50",
        ];
        assert_eq!(classify(&mkwrite), WaitClass::Frozen);
        // The same rwsem code for a fork waiting on a cgroup migration.
        let fork = [
            "percpu_rwsem_wait+0x15f",
            "__percpu_down_read+0x88",
            "cgroup_can_fork+0x50",
            "copy_process+0x1b0",
        ];
        assert_eq!(classify(&fork), WaitClass::Other);
        // A sysctl write waiting for CPU hotplug.
        let hotplug = [
            "percpu_rwsem_wait+0x15f",
            "__percpu_down_read+0x88",
            "cpus_read_lock+0x20",
            "proc_sys_call_handler+0x1a0",
            "vfs_write+0x2a0",
            "ksys_write+0x70",
        ];
        assert_eq!(classify(&hotplug), WaitClass::Other);
    }

    #[test]
    fn trims_probe_and_scheduler_frames() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            trim_scheduler(f(&[
                "bpf_prog_9ac19b51313ec8f6_storage_dstate+0xfc",
                "bpf_trace_run4+0xfc",
                "__schedule+0x618",
                "schedule+0x23",
                "request_wait_answer+0x151",
            ])),
            f(&["request_wait_answer+0x151"])
        );
        assert_eq!(
            trim_scheduler(f(&[
                "__schedule+0x1",
                "schedule+0x2",
                "io_schedule+0x3",
                "folio_wait_bit_common+0x4"
            ])),
            f(&["io_schedule+0x3", "folio_wait_bit_common+0x4"])
        );
    }

    #[test]
    fn parses_proc_stack() {
        let s = parse_proc_stack(
            "[<0>] request_wait_answer+0x112/0x210\n[<0>] __fuse_simple_request+0x120/0x330\n",
        );
        assert_eq!(s[0], "request_wait_answer+0x112/0x210");
        assert_eq!(function(&s[1]), "__fuse_simple_request");
    }

    #[test]
    fn resolves_against_unsorted_kallsyms() {
        let ks = "\
ffffffff81000000 T _stext
ffffffff81100000 t request_wait_answer
ffffffff81100200 T fuse_simple_request
ffffffffc0000000 t mod_fn\t[somemod]
ffffffff81050000 D some_data
";
        let r = resolve(
            ks.as_bytes(),
            &[
                0xffffffff81100112,
                0xffffffffc0000010,
                0xffffffff81000001,
                0x10,
            ],
        );
        assert_eq!(r[0], "request_wait_answer+0x112");
        assert_eq!(r[1], "mod_fn+0x10");
        assert_eq!(r[2], "_stext+0x1");
        assert_eq!(r[3], "0x10");
    }
}

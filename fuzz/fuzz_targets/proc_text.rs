//! /proc text chosen by processes (comm in stat and status, the stack, the
//! limits) and cgroup paths.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watchdog::context::procfs;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = procfs::parse_status(1, &text);
    let _ = procfs::parse_stat(&text);
    let _ = procfs::parse_socket_link(&text);
    let _ = procfs::parse_nproc_limit(&text);
    let _ = watchdog::storage::stack::parse_proc_stack(&text);
    let _ = watchdog::model::pod::pod_from_cgroup_path(&text);
});

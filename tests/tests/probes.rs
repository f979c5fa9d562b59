//! The default probe set costs nothing on the syscall path: no program is
//! attached to `sys_enter` or `sys_exit` (which would send every syscall of
//! every task through the kernel's tracing slow path). Checked twice: in
//! what the agent says (its `ready` record) and in the kernel (the tracepoint
//! names of the BPF links the agent holds, from /proc/<pid>/fdinfo).
use std::fs;
use std::time::Duration;

use serde_json::Value;
use watchdog_tests::*;

const SYSCALL_HOOKS: &[&str] = &["sys_enter", "sys_exit"];

/// The raw tracepoints the BPF links of `pid` are attached to.
fn raw_tp_links(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let Ok(text) = fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        if !text.contains("link_type:") {
            continue;
        }
        out.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("tp_name:"))
                .map(|n| n.trim().to_owned()),
        );
    }
    out
}

#[test]
fn default_probes_attach_no_syscall_hook() {
    if !skip_unless_root() {
        return;
    }
    let agent = Agent::start(&["trace", "--json"]);
    let ready = agent
        .wait_for(|v| v["type"] == "ready", Duration::ZERO)
        .unwrap()
        .0;
    let probes = ready["probes"].as_array().expect("probes in ready");
    let attached: Vec<&Value> = probes
        .iter()
        .filter(|p| p["status"] == "attached")
        .collect();
    assert!(
        attached.iter().any(|p| p["hook"] == "tp_btf/sched_switch"),
        "the storage probe is not attached: {ready:#}"
    );
    for p in &attached {
        let hook = p["hook"].as_str().unwrap_or_default().trim();
        assert!(
            !SYSCALL_HOOKS.iter().any(|h| hook == format!("raw_tp/{h}")),
            "default probe {} is attached to {hook}: {ready:#}",
            p["name"]
        );
    }
    // The kernel's view: the agent's links and their tracepoints.
    let links = raw_tp_links(agent.pid());
    assert!(
        links.iter().any(|t| t == "sched_switch"),
        "no sched_switch link among {links:?} (fdinfo without tp_name?)"
    );
    for h in SYSCALL_HOOKS {
        assert!(
            !links.iter().any(|t| t == h),
            "the agent holds a link on {h}: {links:?}"
        );
    }
}

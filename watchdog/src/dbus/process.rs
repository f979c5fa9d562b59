//! Who connected: process info from /proc (command line, only while no
//! thread is in D state) and the runc/crun arguments naming the container
//! and its pod. /proc goes through the [`ProcReader`]; the one file read
//! elsewhere is a bundle's `config.json`, and only on the runtimes' tmpfs
//! state directories (`/run`, `/var/run`), never on a user mount.
use std::{fs, path::Path};

use crate::{context::procfs::ProcReader, model::dbus::ProcessInfo};

/// Who connected: its command line and, for runc/crun, the container it is
/// working on. The command line is read only when no thread of the process
/// is in uninterruptible sleep (reading it takes the process's mmap lock).
pub fn process_info(proc: &ProcReader, pid: u32) -> ProcessInfo {
    // stat never takes the mmap lock: the start time is always read.
    let start = proc.start_time(pid);
    let bare = ProcessInfo {
        start,
        ..ProcessInfo::default()
    };
    if proc.any_task_in_d(pid) {
        return bare;
    }
    let Ok(raw) = proc.read_bytes(&proc.pid_file(pid, "cmdline"), CMDLINE_MAX) else {
        return bare;
    };
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut info = runtime_args(&args);
    if let Some(bundle) = flag_value(&args, "--bundle").or_else(|| flag_value(&args, "-b")) {
        info.pod = bundle_pod(Path::new(&bundle));
    }
    // Shown in records, Events and bundles: secrets masked.
    let mut cmdline = crate::bundle::redact::argv(&args).0.join(" ");
    if cmdline.len() > 300 {
        let mut end = 297;
        while !cmdline.is_char_boundary(end) {
            end -= 1;
        }
        cmdline.truncate(end);
        cmdline.push_str("...");
    }
    info.cmdline = cmdline;
    info.start = start;
    info
}

/// The most of a command line read (runc's are a few hundred bytes).
const CMDLINE_MAX: u64 = 1 << 20;

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_owned)
        }
    })
}

/// runc/crun: `runc [global flags] <action> [flags] <container-id>`.
pub fn runtime_args(args: &[String]) -> ProcessInfo {
    let prog = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    if !(prog == "runc" || prog == "crun") {
        return ProcessInfo::default();
    }
    const ACTIONS: [&str; 9] = [
        "create", "run", "start", "exec", "delete", "kill", "update", "pause", "resume",
    ];
    let Some(i) = args.iter().position(|a| ACTIONS.contains(&a.as_str())) else {
        return ProcessInfo::default();
    };
    let last = args
        .last()
        .filter(|a| !a.starts_with('-') && args.len() > i + 1);
    ProcessInfo {
        cmdline: String::new(),
        container: last.cloned(),
        action: Some(args[i].clone()),
        pod: None,
        start: None,
    }
}

/// namespace/name of the pod a bundle belongs to, from its config.json
/// annotations (CRI and dockershim keys). Only bundles on the runtime's
/// tmpfs state directories are read.
fn bundle_pod(bundle: &Path) -> Option<String> {
    let b = bundle.to_string_lossy();
    if !(b.starts_with("/run/") || b.starts_with("/var/run/")) {
        return None;
    }
    let f = fs::File::open(bundle.join("config.json")).ok()?;
    if f.metadata().ok()?.len() > 4 << 20 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(f)).ok()?;
    let a = v.get("annotations")?;
    let get = |k: &str| a.get(k).and_then(|x| x.as_str());
    let ns = get("io.kubernetes.cri.sandbox-namespace").or(get("io.kubernetes.pod.namespace"))?;
    let name = get("io.kubernetes.cri.sandbox-name").or(get("io.kubernetes.pod.name"))?;
    Some(format!("{ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn runc_arguments_name_the_container() {
        let i = runtime_args(&s(&[
            "runc",
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/run/containerd/io.containerd.runtime.v2.task/moby/abc",
            "--pid-file",
            "/run/x/init.pid",
            "abc123",
        ]));
        assert_eq!(i.action.as_deref(), Some("create"));
        assert_eq!(i.container.as_deref(), Some("abc123"));
        assert_eq!(
            runtime_args(&s(&["dockerd", "-H", "x"])),
            ProcessInfo::default()
        );
        assert_eq!(
            runtime_args(&s(&["/usr/sbin/runc", "--version"])).action,
            None
        );
    }
}

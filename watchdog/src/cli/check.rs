//! `watchdog check`: which probes this kernel supports, and for each one that
//! is not, why and what to do. It really loads and attaches every probe (and
//! detaches on exit), so its answer is the kernel's own.
use std::{path::Path, process::ExitCode};

use serde::Serialize;

use crate::{
    context::{cgroup, procfs::ProcReader},
    dbus::options::{DbusRequests, RequestPath},
    paths,
    probes::{
        self, DBUS_SOCKET_PROBES, DBUS_SYSCALL_PROBES, FORK_FAILURES, KernelLayout, NPROC_PRESSURE,
        ProbePath, ProbeSpec, ProbeState, Probes, STORAGE_PROBES,
    },
};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also check this `watchdog run` configuration file (a `config` fact:
    /// parsed and valid, or the file, key and why).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Fact {
    name: &'static str,
    ok: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

#[derive(Serialize)]
struct ProbeCheck {
    name: &'static str,
    hook: crate::probes::Hook,
    what: &'static str,
    supported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

fn facts() -> Vec<Fact> {
    let mut v = Vec::new();
    let sys = ProcReader::new(Path::new("/"));
    v.push(Fact {
        name: "kernel",
        ok: true,
        detail: probes::kernel_release(),
        hint: None,
    });
    let btf = sys.exists(Path::new(paths::KERNEL_BTF));
    v.push(Fact {
        name: "btf",
        ok: btf,
        detail: if btf { format!("{} present", paths::KERNEL_BTF) } else { format!("{} missing", paths::KERNEL_BTF) },
        hint: (!btf).then(|| {
            "build the kernel with CONFIG_DEBUG_INFO_BTF=y; without it the fork probe falls back to /proc for cgroups".into()
        }),
    });
    let privileged = probes::check_privileges();
    v.push(Fact {
        name: "privileges",
        ok: privileged.is_ok(),
        detail: match &privileged {
            Ok(()) => "can load BPF programs".into(),
            Err(e) => e.to_string(),
        },
        hint: privileged
            .is_err()
            .then(|| "run as root, or in a privileged DaemonSet pod".into()),
    });
    match cgroup::discover(&sys) {
        Some(h) => v.push(Fact {
            name: "pids_cgroups",
            ok: true,
            detail: format!("pids controller at {} ({:?})", h.mount.display(), h.version),
            hint: None,
        }),
        None => v.push(Fact {
            name: "pids_cgroups",
            ok: false,
            detail: "no pids controller hierarchy is mounted".into(),
            hint: Some(
                "pids-cgroup attribution needs the pids controller (v1 `pids` mount or cgroup2)"
                    .into(),
            ),
        }),
    }
    let tracefs = sys.exists(&Path::new(paths::TRACEFS).join("events"));
    v.push(Fact {
        name: "tracefs",
        ok: true,
        detail: if tracefs {
            "mounted".into()
        } else {
            "not mounted (not needed: probes use raw tracepoints)".into()
        },
        hint: None,
    });
    if let Ok(l) = sys.read(Path::new(paths::LOCKDOWN)) {
        v.push(Fact {
            name: "lockdown",
            ok: true,
            detail: l.trim().to_owned(),
            hint: l
                .contains("[integrity]")
                .then(|| "kprobes and fentry may be refused; watchdog uses tracepoints".into()),
        });
    }
    v
}

fn hint_for(detail: &str) -> String {
    if detail.contains("Operation not permitted") || detail.contains("EPERM") {
        "run as root (CAP_BPF + CAP_PERFMON); check kernel.unprivileged_bpf_disabled and lockdown"
            .into()
    } else if detail.contains("No such file") || detail.contains("ENOENT") {
        "the kernel lacks this tracepoint (CONFIG_FTRACE_SYSCALLS / CONFIG_BPF_EVENTS)".into()
    } else {
        "see the detail; `watchdog trace` runs the other probes without this one".into()
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut facts = facts();
    let root = crate::paths::host::get();
    facts.push(Fact {
        name: "host_root",
        ok: true,
        detail: format!("{} ({})", root.path.display(), root.how),
        hint: None,
    });
    let config_ok = match &a.config {
        None => true,
        Some(path) => {
            let parsed = crate::config::Config::load(path);
            facts.push(Fact {
                name: "config",
                ok: parsed.is_ok(),
                detail: match &parsed {
                    Ok(_) => format!("{} is valid", path.display()),
                    Err(e) => e.to_string(),
                },
                hint: parsed
                    .is_err()
                    .then(|| "see README \"Configuration\" for every key and its default".into()),
            });
            parsed.is_ok()
        }
    };
    let layout = KernelLayout::from_btf(Path::new(paths::KERNEL_BTF));
    // The socket tracepoints only where the kernel has them (a kernel
    // without them is not a failure: requests are then not followed by
    // default); the syscall programs are checked for `--dbus-requests
    // syscalls`.
    let dbus_socket: &[ProbeSpec] = if layout.sock_tracepoints {
        &DBUS_SOCKET_PROBES
    } else {
        &[]
    };
    let wanted: Vec<ProbeSpec> = [FORK_FAILURES, NPROC_PRESSURE]
        .into_iter()
        .chain(STORAGE_PROBES)
        .chain(dbus_socket.iter().copied())
        .chain(DBUS_SYSCALL_PROBES)
        .collect();
    let (path, why) = DbusRequests::Auto.resolve(layout.sock_tracepoints);
    let mut dbus_path = ProbePath {
        part: "dbus_requests",
        path: path.name(),
        choices: &["socket_tracepoints", "syscalls", "off"],
        detail: format!("by default (auto): {why}"),
    };
    if path == RequestPath::SocketTracepoints && layout.unix_peer == 0 {
        dbus_path.detail.push_str(&format!(
            "; but the unix socket offsets are unknown ({}): no socket is followed",
            layout.missing_unix.join("; ")
        ));
    }
    let checks: Vec<ProbeCheck> = match Probes::load(&layout, &wanted, &[]) {
        Ok(p) => p
            .statuses
            .iter()
            .zip(wanted.iter())
            .map(|(s, spec)| ProbeCheck {
                name: s.name,
                hook: s.hook,
                what: spec.what,
                supported: s.status == ProbeState::Attached,
                hint: (s.status != ProbeState::Attached)
                    .then(|| hint_for(s.detail.as_deref().unwrap_or(""))),
                detail: s.detail.clone(),
            })
            .collect(),
        Err(e) => wanted
            .iter()
            .map(|spec| ProbeCheck {
                name: spec.name,
                hook: spec.hook,
                what: spec.what,
                supported: false,
                detail: Some(probes::error_chain(&e)),
                hint: Some(hint_for(&probes::error_chain(&e))),
            })
            .collect(),
    };
    let all_ok = config_ok && checks.iter().all(|c| c.supported);
    use std::fmt::Write as _;
    let mut out = String::new();
    if a.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({"type": "check", "facts": facts, "probes": checks, "probe_paths": [dbus_path], "ok": all_ok})
        );
    } else {
        let _ = writeln!(out, "environment:");
        for f in &facts {
            let _ = writeln!(
                out,
                "  {:<13} {:<4} {}",
                f.name,
                if f.ok { "ok" } else { "NO" },
                f.detail
            );
            if let Some(h) = &f.hint {
                let _ = writeln!(out, "  {:<13}      -> {h}", "");
            }
        }
        let _ = writeln!(out, "probes:");
        for c in &checks {
            let _ = writeln!(
                out,
                "  {:<13} {:<4} {} [{}]",
                c.name,
                if c.supported { "ok" } else { "NO" },
                c.what,
                c.hook
            );
            if let Some(d) = &c.detail {
                let _ = writeln!(out, "  {:<13}      {d}", "");
            }
            if let Some(h) = &c.hint {
                let _ = writeln!(out, "  {:<13}      -> {h}", "");
            }
        }
    }
    if !a.json {
        let _ = writeln!(out, "paths:");
        let _ = writeln!(
            out,
            "  {:<13} {:<4} {}",
            dbus_path.part, dbus_path.path, dbus_path.detail
        );
    }
    // One write; a closed pipe (`| head`) is not an error.
    super::print_bytes(out.as_bytes());
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

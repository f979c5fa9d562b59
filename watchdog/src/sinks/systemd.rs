//! Terminal rendering of systemd-hang findings.
use crate::model::dbus::ProbeOutcome;
use crate::model::finding::systemd::{SocketKind, SystemdDetail};

/// The systemd-specific lines of an active systemd-hang finding.
pub fn render_detail(d: &SystemdDetail) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "    socket:        {} ({}), {} bytes queued\n",
        d.socket,
        match d.socket_kind {
            SocketKind::SystemdPrivate => "systemd's private socket",
            SocketKind::SystemBus => "system bus",
        },
        d.bytes_queued
    ));
    s.push_str(&format!("    stuck:         {}\n", d.stuck_detail));
    if let Some(h) = &d.server {
        s.push_str(&format!("    server:        {}[{}]\n", h.comm, h.pid));
    }
    if let Some(l) = &d.listener
        && l.pending > 0
    {
        s.push_str(&format!(
            "    listen queue:  {} of {} waiting for accept()\n",
            l.pending, l.backlog
        ));
    }
    for w in &d.waiting {
        s.push_str(&format!(
            "    waiting:       {}[{}] fd {} for {:.1} s, {} bytes sent{}{}\n",
            w.comm,
            w.pid,
            w.fd,
            w.waiting_s,
            w.bytes_sent,
            if w.write_stalled {
                format!(", write stalled with {} bytes unsent", w.bytes_unsent)
            } else {
                String::new()
            },
            w.container
                .as_deref()
                .map(|c| format!(
                    ", {} container {}",
                    w.action.as_deref().unwrap_or("handling"),
                    c
                ))
                .unwrap_or_default()
        ));
    }
    for p in &d.probes {
        s.push_str(&format!(
            "    probe:         {} on {}: {}\n",
            p.target.bus_name(),
            p.socket,
            match &p.outcome {
                ProbeOutcome::Answered { ms } => format!("answered in {ms} ms"),
                ProbeOutcome::Timeout { ms } => format!("no answer in {ms} ms"),
                ProbeOutcome::Failed { error } => format!("failed: {error}"),
            }
        ));
    }
    s
}

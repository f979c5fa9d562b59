//! Terminal rendering of storage-hang findings.
use crate::model::finding::storage::StorageDetail;

/// The storage-specific lines of an active storage-hang finding.
pub fn render_detail(d: &StorageDetail) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "    mount:         {} ({}, {}, dev {})\n",
        d.mount_point,
        d.fs_type.as_deref().unwrap_or("?"),
        d.source.as_deref().unwrap_or("?"),
        d.dev.as_deref().unwrap_or("?")
    ));
    for b in &d.blocked {
        s.push_str(&format!(
            "    blocked:       {}[{}/{}] {}{} {:.1} s, {}{}{}\n",
            b.comm,
            b.pid,
            b.tid,
            b.syscall.as_deref().unwrap_or("?"),
            b.path
                .as_deref()
                .map(|p| format!("({p})"))
                .unwrap_or_default(),
            b.blocked_for_s,
            b.state,
            match b.killable {
                Some(true) => ", killable",
                Some(false) => ", NOT killable",
                None => "",
            },
            b.container_id
                .as_deref()
                .map(|c| format!(", container {}", &c[..c.len().min(12)]))
                .unwrap_or_default()
        ));
    }
    for p in &d.pods {
        s.push_str(&format!("    pod:           {}\n", p.describe()));
    }
    if !d.stack.is_empty() {
        s.push_str(&format!("    stack:         {}\n", d.stack.join(" < ")));
    }
    s
}

//! The agent's own D-Bus probes, each under a hard timeout: `Ping` of
//! systemd (through the bus, or peer to peer on its private socket) and
//! `GetId` of the bus daemon. zbus runs on the agent's current-thread tokio
//! runtime (client connections use no blocking pool); dropping the future at
//! the timeout drops the connection, so a hung peer costs one socket for the
//! timeout and nothing after it. The tracker schedules them: each
//! (socket, target) at most every 5 s while a connection waits.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::DbusTracker;
use crate::model::{
    Time,
    dbus::{BusProbe, ProbeOutcome, ProbeTarget},
    finding::systemd::SocketKind,
};

/// What to probe on one socket path.
pub fn targets(socket: &str) -> Vec<ProbeTarget> {
    match SocketKind::of(socket) {
        SocketKind::SystemdPrivate => vec![ProbeTarget::Systemd],
        SocketKind::SystemBus => vec![ProbeTarget::Bus, ProbeTarget::Systemd],
    }
}

async fn call(socket: &str, target: ProbeTarget) -> zbus::Result<()> {
    // The path as the kernel names it, reached under the host root.
    call_at(&crate::paths::host::path(socket), socket, target).await
}

/// [`call`] on `socket` reached at `path` (e.g. under `/proc/<pid>/root`:
/// the socket of a systemd in another mount namespace).
async fn call_at(path: &std::path::Path, socket: &str, target: ProbeTarget) -> zbus::Result<()> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    let p2p = SocketKind::of(socket) == SocketKind::SystemdPrivate;
    let mut builder = zbus::connection::Builder::unix_stream(stream);
    if p2p {
        builder = builder.p2p();
    }
    let conn = builder.build().await?;
    let name = target.bus_name();
    if target == ProbeTarget::Bus {
        conn.call_method(
            Some(name),
            "/org/freedesktop/DBus",
            Some(name),
            "GetId",
            &(),
        )
        .await?;
    } else {
        conn.call_method(
            (!p2p).then_some(name),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.DBus.Peer"),
            "Ping",
            &(),
        )
        .await?;
    }
    Ok(())
}

/// `Ping` of systemd on `socket` (peer to peer on its private socket,
/// through the bus on the bus socket) reached at `path`, on a
/// current-thread runtime of the caller's thread, giving up after
/// `timeout`. Remediation's check that a re-executed systemd serves again.
pub fn ping_systemd_at(
    path: &std::path::Path,
    socket: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime for the Ping: {e}"))?;
    let start = Instant::now();
    match rt.block_on(async {
        tokio::time::timeout(timeout, call_at(path, socket, ProbeTarget::Systemd)).await
    }) {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(format!("Ping on {socket} failed: {e}")),
        Err(_) => Err(format!(
            "Ping on {socket}: no answer in {} ms",
            timeout.as_millis()
        )),
    }
}

/// Probe `target` on `socket`, giving up after `timeout`.
pub async fn probe(socket: String, target: ProbeTarget, timeout: Duration) -> BusProbe {
    let start = Instant::now();
    let outcome = match tokio::time::timeout(timeout, call(&socket, target)).await {
        Ok(Ok(())) => ProbeOutcome::Answered {
            ms: start.elapsed().as_millis() as u64,
        },
        Ok(Err(e)) => ProbeOutcome::Failed {
            error: e.to_string(),
        },
        Err(_) => ProbeOutcome::Timeout {
            ms: timeout.as_millis() as u64,
        },
    };
    BusProbe {
        at: Time::now(),
        socket,
        target,
        outcome,
    }
}

/// Where requests are not followed (a kernel without the socket
/// tracepoints, or `--dbus-requests off`): the agent's own probes of every
/// followed socket, every 5 s, so that a bus or systemd that stopped
/// answering is still found (no eBPF; a refused or absent socket is no
/// evidence).
pub struct HealthProbes {
    sockets: Vec<String>,
    last: Option<Time>,
    timeout: Duration,
}

impl HealthProbes {
    pub fn new(opts: &super::DbusOptions) -> Option<Self> {
        if !opts.probe {
            return None;
        }
        // One name per socket: /var/run/dbus/x is /run/dbus/x.
        let mut sockets: Vec<String> = Vec::new();
        for s in &opts.sockets {
            let real = super::options::canonical_socket_path(s).unwrap_or_else(|| s.clone());
            if !sockets.contains(&real) {
                sockets.push(real);
            }
        }
        Some(Self {
            sockets,
            last: None,
            timeout: opts.probe_timeout,
        })
    }

    pub fn due(&mut self, now: Time) -> Vec<(String, ProbeTarget)> {
        if self.last.is_some_and(|l| now.millis_since(l) < 5_000) {
            return Vec::new();
        }
        self.last = Some(now);
        self.sockets
            .iter()
            .flat_map(|s| targets(s).into_iter().map(move |t| (s.clone(), t)))
            .collect()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl DbusTracker {
    /// Probes due now: (socket, target) of the sockets with waiting
    /// connections, each at most every 5 s.
    pub fn probes_due(&mut self, now: Time) -> Vec<(String, ProbeTarget)> {
        if !self.opts.probe {
            return Vec::new();
        }
        let sockets: HashSet<String> = self
            .suspects(now)
            .into_iter()
            .map(|(_, t)| t.socket.clone())
            .collect();
        let mut due = Vec::new();
        for s in sockets {
            for t in targets(&s) {
                let k = (s.clone(), t);
                if self
                    .probed
                    .get(&k)
                    .is_none_or(|last| now.millis_since(*last) >= 5_000)
                {
                    self.probed.insert(k, now);
                    due.push((s.clone(), t));
                }
            }
        }
        due.sort();
        due
    }

    pub fn probe_timeout(&self) -> Duration {
        self.opts.probe_timeout
    }
}

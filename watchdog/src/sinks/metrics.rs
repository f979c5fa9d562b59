//! Prometheus metrics (prometheus-client, OpenMetrics text) on
//! `--metrics-addr`: findings by cause, probe health, drops at every hop,
//! and the agent's own CPU and memory. The sink updates the metrics from
//! records and periodic stats; a small hyper server encodes them on request.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::{Record, Sink, Stats};
use crate::model::finding::{Cause, FindingId, FindingStatus, WarningStatus};
use crate::probes::ProbeState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    part: &'static str,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemediationLabels {
    action: &'static str,
    status: &'static str,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabels {
    hop: &'static str,
}

/// The metric handles the sink updates (clones share the values with the
/// registry the server encodes).
pub struct Metrics {
    findings_active: Family<CauseLabels, Gauge>,
    findings_total: Family<CauseLabels, Counter>,
    warnings_active: Gauge,
    probe_state: Family<ProbeLabels, Gauge>,
    probe_path: Family<PathLabels, Gauge>,
    events_total: Counter,
    dropped_total: Family<HopLabels, Counter>,
    cpu_seconds: Counter<f64, AtomicU64>,
    pleg_relist_age: Gauge<f64, AtomicU64>,
    pleg_until_unhealthy: Gauge<f64, AtomicU64>,
    pleg_threshold: Gauge<f64, AtomicU64>,
    pleg_status: Family<StatusLabels, Gauge>,
    resident_bytes: Gauge,
    remediation_steps: Family<RemediationLabels, Counter>,
    bundles: Family<StatusLabels, Counter>,
    /// Active finding ids by cause; active warnings by (cause, message key).
    active: BTreeMap<Cause, BTreeSet<FindingId>>,
    warnings: BTreeSet<String>,
    /// Last values of counters kept elsewhere (we add the difference).
    last_events: u64,
    last_drops: [u64; 13],
    last_cpu_ticks: u64,
    clk_tck: f64,
    page_size: u64,
}

impl Metrics {
    /// Register every metric in a new registry; returns the sink side and
    /// the registry for the server.
    pub fn new() -> (Self, Arc<Registry>) {
        let mut registry = Registry::default();
        let m = Self {
            findings_active: Family::default(),
            findings_total: Family::default(),
            warnings_active: Gauge::default(),
            probe_state: Family::default(),
            probe_path: Family::default(),
            events_total: Counter::default(),
            dropped_total: Family::default(),
            cpu_seconds: Counter::default(),
            pleg_relist_age: nan_gauge(),
            pleg_until_unhealthy: nan_gauge(),
            pleg_threshold: nan_gauge(),
            pleg_status: Family::default(),
            resident_bytes: Gauge::default(),
            remediation_steps: Family::default(),
            bundles: Family::default(),
            active: BTreeMap::new(),
            warnings: BTreeSet::new(),
            last_events: 0,
            last_drops: [0; 13],
            last_cpu_ticks: 0,
            // SAFETY: sysconf has no preconditions.
            clk_tck: (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64,
            // SAFETY: as above.
            page_size: (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as u64,
        };
        {
            let wd = registry.sub_registry_with_prefix("watchdog");
            wd.register(
                "findings_active",
                "Findings currently active, by cause",
                m.findings_active.clone(),
            );
            wd.register(
                "findings",
                "Findings reported (first reports), by cause",
                m.findings_total.clone(),
            );
            wd.register(
                "remediation_steps",
                "Remediation steps by action, status (planned, skipped, started, succeeded, failed, verified) and mode",
                m.remediation_steps.clone(),
            );
            wd.register(
                "bundles",
                "Bundles captured for findings (--bundle-dir) by status (written, skipped, failed)",
                m.bundles.clone(),
            );
            wd.register(
                "warnings_active",
                "Limits currently near exhaustion (warnings raised and not cleared)",
                m.warnings_active.clone(),
            );
            wd.register(
                "probe_state",
                "1 for each probe's current state (attached, standby, unavailable), else 0",
                m.probe_state.clone(),
            );
            wd.register(
                "probe_path",
                "1 for the way each part with a choice runs (dbus_requests: socket_tracepoints, syscalls, off), else 0",
                m.probe_path.clone(),
            );
            wd.register_with_unit(
                "pleg_relist_age",
                "Time since kubelet's PLEG last relisted, as estimated from all PLEG signals (NaN: unknown)",
                Unit::Seconds,
                m.pleg_relist_age.clone(),
            );
            wd.register_with_unit(
                "pleg_until_unhealthy",
                "Predicted time until kubelet reports PLEG unhealthy (0: it does; NaN: no prediction)",
                Unit::Seconds,
                m.pleg_until_unhealthy.clone(),
            );
            wd.register_with_unit(
                "pleg_threshold",
                "kubelet's PLEG threshold (3 min generic, 10 min evented)",
                Unit::Seconds,
                m.pleg_threshold.clone(),
            );
            wd.register(
                "pleg_status",
                "1 for the current PLEG estimate (healthy, stalled, unhealthy, unknown), else 0",
                m.pleg_status.clone(),
            );
            wd.register(
                "kernel_events",
                "Events received from the eBPF probes",
                m.events_total.clone(),
            );
            wd.register(
                "dropped_events",
                "Events lost, by hop: kernel (ring buffer full), userspace (engine queue full), decode (undecodable), sources (kubelet/runtime observations, queue full), storage_* (storage probe map inserts that failed: processes not watched, calls, D sleeps, stacks, D-Bus connections not recorded), dbus_socks (socket decisions not cached), dbus_reads (followed bytes that went by unparsed)",
                m.dropped_total.clone(),
            );
        }
        registry.register_with_unit(
            "process_cpu",
            "CPU time the agent used (user and system)",
            Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent",
            Unit::Bytes,
            m.resident_bytes.clone(),
        );
        for c in Cause::ALL {
            let l = CauseLabels { cause: c.name() };
            let _ = m.findings_active.get_or_create(&l);
            let _ = m.findings_total.get_or_create(&l);
        }
        for hop in [
            "kernel",
            "userspace",
            "decode",
            "sources",
            "storage_watched",
            "storage_path_reads",
            "storage_blocked",
            "storage_sleeping",
            "storage_stacks",
            "storage_sock_conns",
            "dbus_socks",
            "dbus_reads",
            "findings_refused",
        ] {
            let _ = m.dropped_total.get_or_create(&HopLabels { hop });
        }
        (m, Arc::new(registry))
    }

    fn own_usage(&mut self) {
        // /proc/self/stat: fields 14 and 15 (utime, stime) after the comm.
        let proc = crate::context::procfs::ProcReader::new(std::path::Path::new("/"));
        if let Ok(stat) = proc.read(&proc.proc_path("self/stat"))
            && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..])
        {
            let f: Vec<&str> = rest.split(' ').collect();
            let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if ticks > self.last_cpu_ticks {
                self.cpu_seconds
                    .inc_by((ticks - self.last_cpu_ticks) as f64 / self.clk_tck);
                self.last_cpu_ticks = ticks;
            }
        }
        if let Ok(statm) = proc.read(&proc.proc_path("self/statm"))
            && let Some(rss) = statm.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok())
        {
            self.resident_bytes.set((rss * self.page_size) as i64);
        }
    }
}

fn nan_gauge() -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(f64::NAN);
    g
}

fn add_delta(c: &Counter, last: &mut u64, now: u64) {
    if now > *last {
        c.inc_by(now - *last);
        *last = now;
    }
}

impl Sink for Metrics {
    fn emit(&mut self, record: &Record) {
        match record {
            Record::Finding(f) => {
                let ids = self.active.entry(f.cause).or_default();
                match f.status {
                    FindingStatus::Active => {
                        self.findings_total
                            .get_or_create(&CauseLabels {
                                cause: f.cause.name(),
                            })
                            .inc();
                        ids.insert(f.id.clone());
                    }
                    FindingStatus::Update => {
                        ids.insert(f.id.clone());
                    }
                    FindingStatus::Resolved => {
                        ids.remove(&f.id);
                    }
                }
                self.findings_active
                    .get_or_create(&CauseLabels {
                        cause: f.cause.name(),
                    })
                    .set(ids.len() as i64);
            }
            Record::Pleg(p) => {
                self.pleg_relist_age
                    .set(p.seconds_since_relist.unwrap_or(f64::NAN));
                self.pleg_until_unhealthy
                    .set(p.predicted_unhealthy_in_s.unwrap_or(f64::NAN));
                self.pleg_threshold.set(p.threshold_s);
                let current = format!("{:?}", p.status).to_lowercase();
                for status in ["healthy", "stalled", "unhealthy", "unknown"] {
                    self.pleg_status
                        .get_or_create(&StatusLabels { status })
                        .set(i64::from(status == current));
                }
            }
            Record::Warning(w) => {
                let key = format!("{:?}/{:?}/{:?}/{:?}", w.cause, w.limit, w.cgroup, w.uid);
                match w.status {
                    WarningStatus::Raised => self.warnings.insert(key),
                    WarningStatus::Cleared => self.warnings.remove(&key),
                };
                self.warnings_active.set(self.warnings.len() as i64);
            }
            Record::Remediation(r) => {
                self.remediation_steps
                    .get_or_create(&RemediationLabels {
                        action: r.action.name(),
                        status: r.status.name(),
                        mode: r.mode.name(),
                    })
                    .inc();
            }
            Record::Bundle(b) => {
                let status = b.status.name();
                self.bundles.get_or_create(&StatusLabels { status }).inc();
            }
            _ => {}
        }
    }

    fn stats(&mut self, s: &Stats<'_>) {
        for p in s.probes {
            for (state, name) in [
                (ProbeState::Attached, "attached"),
                (ProbeState::Standby, "standby"),
                (ProbeState::Unavailable, "unavailable"),
            ] {
                self.probe_state
                    .get_or_create(&ProbeLabels {
                        probe: p.name,
                        state: name,
                    })
                    .set(i64::from(p.status == state));
            }
        }
        for p in s.paths {
            for path in p.choices.iter().chain(std::iter::once(&p.path)) {
                self.probe_path
                    .get_or_create(&PathLabels { part: p.part, path })
                    .set(i64::from(*path == p.path));
            }
        }
        add_delta(&self.events_total, &mut self.last_events, s.events);
        for (i, (hop, v)) in [
            ("kernel", s.drops.kernel),
            ("userspace", s.drops.userspace),
            ("decode", s.drops.decode_errors),
            ("sources", s.drops.sources),
            ("storage_watched", s.drops.storage.map_or(0, |d| d.watched)),
            (
                "storage_path_reads",
                s.drops.storage.map_or(0, |d| d.path_reads),
            ),
            ("storage_blocked", s.drops.storage.map_or(0, |d| d.blocked)),
            (
                "storage_sleeping",
                s.drops.storage.map_or(0, |d| d.sleeping),
            ),
            ("storage_stacks", s.drops.storage.map_or(0, |d| d.stacks)),
            (
                "storage_sock_conns",
                s.drops.storage.map_or(0, |d| d.sock_conns),
            ),
            ("dbus_socks", s.drops.storage.map_or(0, |d| d.dbus_socks)),
            ("dbus_reads", s.drops.storage.map_or(0, |d| d.dbus_reads)),
            ("findings_refused", s.drops.findings_refused),
        ]
        .into_iter()
        .enumerate()
        {
            add_delta(
                &self.dropped_total.get_or_create(&HopLabels { hop }),
                &mut self.last_drops[i],
                v,
            );
        }
        self.own_usage();
    }
}

/// Bind the metrics port now, so that a taken port is reported at start.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serve `/metrics` (and `/healthz`) until the runtime stops. A slow or
/// stuck client cannot hold a connection open for long.
pub async fn serve(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics server cannot start: {e}");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(Duration::from_secs(30), conn).await {
                Ok(Err(e)) => tracing::debug!("metrics connection from {peer}: {e}"),
                Err(_) => tracing::debug!("metrics connection from {peer} timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
        r
    };
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot encode metrics: {e}\n"),
                ),
            }
        }
        (&hyper::Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "watchdog serves /metrics and /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{probes::ProbeStatus, sinks::Drops};

    #[test]
    fn metrics_follow_records_and_stats() {
        let (mut m, reg) = Metrics::new();
        let probes = [ProbeStatus {
            name: "fork_failures",
            hook: crate::probes::Hook::RawTp("sys_exit"),
            status: ProbeState::Standby,
            detail: None,
        }];
        let paths = [crate::probes::ProbePath {
            part: "dbus_requests",
            path: "socket_tracepoints",
            choices: &["socket_tracepoints", "syscalls", "off"],
            detail: String::new(),
        }];
        m.stats(&Stats {
            probes: &probes,
            paths: &paths,
            events: 5,
            drops: Drops {
                kernel: 2,
                userspace: 0,
                decode_errors: 1,
                sources: 0,
                storage: None,
                findings_refused: 0,
            },
        });
        m.stats(&Stats {
            probes: &probes,
            paths: &paths,
            events: 7,
            drops: Drops {
                kernel: 3,
                userspace: 0,
                decode_errors: 1,
                sources: 0,
                storage: None,
                findings_refused: 0,
            },
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "watchdog_findings_active{cause=\"storage_hang\"} 0",
            "watchdog_probe_path{part=\"dbus_requests\",path=\"socket_tracepoints\"} 1",
            "watchdog_probe_path{part=\"dbus_requests\",path=\"syscalls\"} 0",
            "watchdog_findings_total{cause=\"pid_exhaustion\"} 0",
            "watchdog_probe_state{probe=\"fork_failures\",state=\"standby\"} 1",
            "watchdog_probe_state{probe=\"fork_failures\",state=\"attached\"} 0",
            "watchdog_kernel_events_total 7",
            "watchdog_dropped_events_total{hop=\"kernel\"} 3",
            "watchdog_dropped_events_total{hop=\"decode\"} 1",
            "# UNIT process_cpu_seconds seconds",
            "watchdog_pleg_relist_age_seconds NaN",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn pleg_records_set_the_pleg_gauges() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/runtime_unresponsive_hung_inspect.jsonl");
        let mut cap = crate::sinks::Capture::default();
        crate::replay::replay(&path, &mut cap).unwrap();
        let (mut m, reg) = Metrics::new();
        let stalled = cap
            .0
            .iter()
            .find(|r| matches!(r, Record::Pleg(p) if p.status == crate::model::finding::pleg::PlegStatus::Stalled))
            .expect("a stalled PLEG record in the golden recording");
        m.emit(stalled);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "watchdog_pleg_status{status=\"stalled\"} 1",
            "watchdog_pleg_status{status=\"healthy\"} 0",
            "watchdog_pleg_threshold_seconds 180.0",
            "watchdog_pleg_until_unhealthy_seconds NaN",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("watchdog_pleg_relist_age_seconds NaN"),
            "{text}"
        );
    }
}

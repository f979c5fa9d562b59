//! `watchdog trace`: a one-shot tracing session for an incident.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    agent::{self, TraceOptions, arming::ForkProbeMode},
    config::{
        RemediationScope,
        validate::{self, Invalid, Setting, flag_parser},
    },
    dbus::options::{DbusOptions, DbusRequests},
    model::settings::PlegConfig,
    remediation::{ActionKind, Mode, PolicyConfig},
    sinks::{
        Sink,
        json::JsonLines,
        terminal::{self, Terminal},
    },
    sources::{
        LogTarget, PlegSources,
        kubelet::{
            metrics::{self, ScrapeConfig},
            node,
        },
        runtime::RelistConfig,
    },
};

/// `watchdog trace`: the session's options, and the bundles it captures.
#[derive(clap::Args)]
pub struct TraceCmd {
    #[command(flatten)]
    pub trace: Args,
    #[command(flatten)]
    pub bundles: AutoBundleArgs,
}

/// Bundles captured when a finding goes active.
#[derive(clap::Args)]
pub struct AutoBundleArgs {
    /// When a finding goes active, write a bundle of its evidence in DIR
    /// (created root-only): at most one per finding.
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: Option<std::path::PathBuf>,
    /// At most one bundle per this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub bundle_interval: Duration,
    /// The bundles in the directory are kept under this many MiB (the
    /// oldest deleted first).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub bundle_max_mib: u64,
    /// Opt-in: each bundle asks the containerd serving the runtime endpoint
    /// for its goroutines (SIGUSR1; at most once per 10 min per process).
    #[arg(long)]
    pub bundle_containerd_goroutines: bool,
    /// Opt-in: each bundle holds sysrq-w's report of the blocked tasks
    /// (writes `w` to /proc/sysrq-trigger; at most once per 10 min).
    #[arg(long)]
    pub bundle_sysrq_w: bool,
}

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Write one JSON object per line (each with a "type") instead of text.
    #[arg(long)]
    json: bool,
    /// No live status line at the bottom of the terminal (it is drawn only
    /// when stdout is a terminal, never into a pipe or a file).
    #[arg(long)]
    pub(super) no_status: bool,
    /// How often limits are sampled and findings re-evaluated.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Warn when a PID limit is at least this full (percent).
    #[arg(long, default_value_t = 90.0, value_parser = flag_parser(validate::percent))]
    warn_percent: f64,
    /// A finding resolves after this long without new evidence.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    resolve_after: Duration,
    /// When the fork-failure probe (a sys_exit hook, which slows every
    /// syscall of the node by a few percent) is attached: auto = only while a
    /// PID limit is under pressure.
    #[arg(long, value_enum, default_value = "auto")]
    fork_probe: ForkProbeMode,
    /// `--fork-probe auto` attaches it when a PID limit is this full (percent).
    #[arg(long, default_value_t = 75.0, value_parser = flag_parser(validate::percent))]
    arm_percent: f64,
    /// A syscall of a watched process, or an uninterruptible sleep of any
    /// task, still blocked after this long is a storage hang.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hang_threshold: Duration,
    /// Process names whose syscalls are tracked, with their descendants
    /// (comma-separated or repeated; a trailing '*' matches a prefix).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kubelet,dockerd,containerd,containerd-shim*,runc,crun,crio,conmon"
    )]
    watch_comm: Vec<String>,
    /// Do not attach the storage-hang probes (this also turns off the
    /// D-Bus/systemd socket tracking, which rides on them).
    #[arg(long)]
    no_storage: bool,
    /// Unix socket paths of systemd and the system bus whose connections from
    /// watched processes are followed (comma-separated or repeated; default:
    /// /run/systemd/private, the system bus under /run and /var/run, and the
    /// path of $DBUS_SYSTEM_BUS_ADDRESS).
    #[arg(long, value_delimiter = ',')]
    systemd_socket: Vec<String>,
    /// A request to systemd or the bus still without a reply after this long
    /// is a systemd hang.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    systemd_threshold: Duration,
    /// Do not probe the bus and systemd over D-Bus (while a request waits).
    #[arg(long)]
    no_dbus_probe: bool,
    /// Do not follow D-Bus/systemd sockets.
    #[arg(long)]
    no_systemd: bool,
    /// How requests to systemd and the bus are followed: auto = the socket
    /// tracepoints where the kernel has them (Linux 6.3+), else not at all
    /// (the socket queues and the agent's Ping still see a stopped server);
    /// syscalls = raw sys_enter/sys_exit programs (every syscall of the node
    /// pays the tracing slow path).
    #[arg(long, value_enum, default_value = "auto")]
    dbus_requests: DbusRequests,
    /// Record every observation and clock tick to FILE (JSON lines) for
    /// `watchdog replay FILE`; attach it to a bug report.
    #[arg(long, value_name = "FILE")]
    record: Option<std::path::PathBuf>,
    /// Remediation: dry-run (every gate evaluated, the record says what
    /// would run, nothing is touched), enforce (the allowed actions run),
    /// off.
    #[arg(long, default_value = "dry-run", value_parser = |s: &str| s.parse::<Mode>())]
    remediation: Mode,
    /// Actions `--remediation enforce` may run, comma-separated:
    /// kill_container, abort_fuse, force_unmount, reexec_systemd,
    /// kill_process (evict_pod, cordon, taint, escalate need a cluster:
    /// `watchdog run`).
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| s.parse::<ActionKind>())]
    allow_actions: Vec<ActionKind>,
    /// How long a finding stays active before its first action.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    remediation_delay: Duration,
    /// How long an action has to resolve its finding before the next one.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    remediation_step_timeout: Duration,
    /// kill_container scope: the cgroups of Kubernetes pods only, or any
    /// pids cgroup.
    #[arg(long, value_enum, default_value = "pods")]
    remediation_scope: RemediationScope,
    /// kill_container only on cgroups below this path of the pids
    /// hierarchy (e.g. /kubepods).
    #[arg(long, value_name = "CGROUP")]
    remediation_cgroup_prefix: Option<String>,
    /// Where enforce journals each action's intent (fsync'd before it runs)
    /// and outcome; a restarted agent reads this boot's actions back.
    #[arg(long, value_name = "FILE", default_value = crate::paths::REMEDIATION_JOURNAL)]
    remediation_journal: PathBuf,
    /// reexec_systemd may signal this node's own PID 1 (the host's
    /// systemd, as on most nodes); without it only a systemd that is PID 1
    /// of its own PID namespace (a container's) is re-executed.
    #[arg(long)]
    remediation_allow_host_init: bool,
    #[command(flatten)]
    pleg: Box<PlegArgs>,
}

/// kubelet PLEG signals and the agent's own relist.
#[derive(clap::Args, Clone, Debug)]
pub struct PlegArgs {
    /// Leave kubelet and the runtime alone (no metrics, log, node watch, relist).
    #[arg(long)]
    pub(super) no_pleg: bool,
    /// kubelet's metrics endpoint ("off" to disable). Use an IP literal.
    #[arg(long, default_value = "https://127.0.0.1:10250/metrics")]
    pub(super) kubelet_metrics_url: String,
    /// CA (PEM) of kubelet's serving certificate; default: the pod's
    /// service-account ca.crt when present.
    #[arg(long)]
    pub(super) kubelet_ca: Option<PathBuf>,
    /// Do not verify kubelet's certificate (self-signed serving certificates).
    #[arg(long)]
    pub(super) kubelet_insecure_tls: bool,
    /// Bearer token file for kubelet; default: the pod's service-account token when present.
    #[arg(long)]
    pub(super) kubelet_token: Option<PathBuf>,
    /// How often kubelet's metrics are scraped.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) kubelet_scrape_interval: Duration,
    /// Where kubelet's log is read: a file (its --log-file, or the syslog
    /// file), "journal" (the systemd journal, without journalctl) or "off";
    /// default: the journal when a journal directory exists.
    #[arg(long)]
    pub(super) kubelet_log: Option<PathBuf>,
    /// The journal's directory (e.g. the host's /var/log/journal mounted into
    /// the DaemonSet); default: /var/log/journal and /run/log/journal.
    #[arg(long)]
    pub(super) journal_dir: Vec<PathBuf>,
    /// This node's name, for the node condition watch (in-cluster only);
    /// default: $NODE_NAME, else the hostname.
    #[arg(long)]
    pub(super) node_name: Option<String>,
    /// The CRI runtime the agent's own relist asks (kubelet's
    /// --container-runtime-endpoint, e.g. unix:///run/containerd/containerd.sock);
    /// "auto": the first socket found of containerd, CRI-O, cri-dockerd, then
    /// Docker's API; "off": no relist.
    #[arg(long, default_value = "auto")]
    pub(super) runtime_endpoint: String,
    /// Relist over Docker's API at this socket instead of CRI ("off": no relist).
    #[arg(long)]
    pub(super) docker_host: Option<String>,
    /// Pause between the agent's relists.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) relist_interval: Duration,
    /// A runtime or kubelet call slower than this counts as hung.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) runtime_call_timeout: Duration,
    /// Inspects in flight at once during a relist.
    #[arg(long, default_value_t = 4, value_parser = flag_parser(validate::relist_concurrency))]
    pub(super) relist_concurrency: u16,
    /// kubelet's PLEG threshold (default 3m; 10m with --evented-pleg).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(super) pleg_threshold: Option<Duration>,
    /// kubelet runs the evented PLEG (threshold 10 minutes).
    #[arg(long)]
    pub(super) evented_pleg: bool,
    /// kubelet's --runtime-request-timeout: how long one hung runtime call holds its relist.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub(super) runtime_request_timeout: Duration,
}

impl PlegArgs {
    /// `--kubelet-log FILE|journal|off` and `--journal-dir`.
    fn log_target(&self) -> LogTarget {
        let journal = || {
            LogTarget::Journal(if self.journal_dir.is_empty() {
                crate::sources::kubelet::journal::existing_dirs()
            } else {
                self.journal_dir.clone()
            })
        };
        match self.kubelet_log.as_deref().and_then(|p| p.to_str()) {
            Some("off") => LogTarget::Off,
            Some("journal") => journal(),
            Some(_) => LogTarget::File(self.kubelet_log.clone().unwrap_or_default()),
            None if !self.journal_dir.is_empty()
                || !crate::sources::kubelet::journal::existing_dirs().is_empty() =>
            {
                journal()
            }
            None => LogTarget::Off,
        }
    }

    /// The sources and the estimate's configuration (the settings the run
    /// file shares are checked by [`validate`]).
    pub fn build(&self) -> Result<(PlegSources, PlegConfig), Invalid> {
        let threshold = self.pleg_threshold.unwrap_or(if self.evented_pleg {
            Duration::from_millis(crate::model::settings::EVENTED_THRESHOLD_MS)
        } else {
            Duration::from_millis(crate::model::settings::GENERIC_THRESHOLD_MS)
        });
        validate::positive(threshold).map_err(|w| w.of(Setting::PlegThreshold))?;
        validate::positive(self.relist_interval).map_err(|w| w.of(Setting::RelistInterval))?;
        validate::positive(self.runtime_call_timeout)
            .map_err(|w| w.of(Setting::RuntimeCallTimeout))?;
        let cfg = PlegConfig {
            threshold_ms: threshold.as_millis() as u64,
            evented: self.evented_pleg,
            runtime_request_timeout_ms: self.runtime_request_timeout.as_millis() as u64,
            ..PlegConfig::default()
        };
        if self.no_pleg {
            return Ok((PlegSources::none(), cfg));
        }
        let existing = |p: &str| Some(PathBuf::from(p)).filter(|p| p.exists());
        let metrics = (self.kubelet_metrics_url != "off").then(|| ScrapeConfig {
            url: self.kubelet_metrics_url.clone(),
            ca: if self.kubelet_insecure_tls {
                None
            } else {
                self.kubelet_ca.clone().or_else(|| existing(metrics::SA_CA))
            },
            insecure: self.kubelet_insecure_tls,
            token: self
                .kubelet_token
                .clone()
                .or_else(|| existing(metrics::SA_TOKEN)),
            timeout: self.runtime_call_timeout,
            interval: self.kubelet_scrape_interval,
            ..ScrapeConfig::default()
        });
        let endpoint =
            validate::relist_endpoint(&self.runtime_endpoint, self.docker_host.as_deref())
                .map_err(|(s, w)| w.of(s))?;
        let relist = endpoint.map(|endpoint| RelistConfig {
            endpoint,
            interval: self.relist_interval,
            call_timeout: self.runtime_call_timeout,
            concurrency: self.relist_concurrency as usize,
            ..RelistConfig::default()
        });
        Ok((
            PlegSources {
                metrics,
                log: self.log_target(),
                node_name: self.node_name.clone().or_else(node::default_node_name),
                node_watch: true,
                relist,
            },
            cfg,
        ))
    }
}

/// The session's options from the flags (checked as the run file is), and
/// whether records go out as JSON.
pub fn options(a: Args) -> anyhow::Result<(TraceOptions, bool)> {
    // The checks and options shared with the run file, in its order.
    validate::positive(a.poll_interval).map_err(|w| w.of(Setting::PollInterval))?;
    let (pleg_sources, pleg) = a.pleg.build()?;
    validate::at_least_100ms(a.hang_threshold).map_err(|w| w.of(Setting::HangThreshold))?;
    let storage = (!a.no_storage)
        .then(|| validate::storage_options(a.hang_threshold, &a.watch_comm))
        .transpose()?;
    validate::at_least_100ms(a.systemd_threshold).map_err(|w| w.of(Setting::SystemdThreshold))?;
    let dbus = (!a.no_systemd).then(|| {
        let d = DbusOptions::default();
        let sockets = if a.systemd_socket.is_empty() {
            d.sockets
        } else {
            a.systemd_socket.clone()
        };
        DbusOptions {
            requests: a.dbus_requests,
            ..validate::dbus_options(
                sockets,
                !a.no_dbus_probe,
                d.probe_timeout,
                a.systemd_threshold,
            )
        }
    });
    if let Some(d) = &dbus {
        validate::sockets(&d.sockets).map_err(|w| w.of(Setting::SystemdSockets))?;
    }
    validate::remediation_allow(a.remediation, &a.allow_actions)
        .map_err(|w| w.of(Setting::RemediationAllow))?;
    validate::positive(a.remediation_step_timeout)
        .map_err(|w| w.of(Setting::RemediationStepTimeout))?;
    let remediation = PolicyConfig {
        mode: a.remediation,
        allow: a.allow_actions.iter().copied().collect(),
        delay_ms: a.remediation_delay.as_millis() as u64,
        step_timeout_ms: a.remediation_step_timeout.as_millis() as u64,
        any_cgroup: a.remediation_scope == RemediationScope::Any,
        cgroup_prefix: a.remediation_cgroup_prefix.clone(),
        allow_host_init: a.remediation_allow_host_init,
        ..PolicyConfig::default()
    };
    let opts = TraceOptions {
        storage,
        dbus,
        duration: a.duration,
        poll_interval: a.poll_interval,
        engine: crate::model::settings::EngineConfig {
            pleg,
            ..validate::engine_config(a.warn_percent, a.resolve_after, a.systemd_threshold)
        },
        pleg_sources: pleg_sources.clone(),
        fork_probe: a.fork_probe,
        arm_percent: a.arm_percent,
        record: a.record,
        remediation,
        remediation_journal: a.remediation_journal,
        node_name: pleg_sources.node_name.clone(),
        ..TraceOptions::default()
    };
    Ok((opts, a.json))
}

/// The text output: with the live status line when stdout is a terminal
/// (and `--no-status` is not given).
pub fn terminal<W: std::io::Write>(out: W, no_status: bool) -> Terminal<W> {
    let t = Terminal::new(out);
    if !no_status && terminal::status_line_wanted() {
        t.with_status_line(terminal::stdout_columns)
    } else {
        t
    }
}

/// What a bundle of this session names besides the findings: the node,
/// the journal directories read, the sockets followed.
pub(super) fn session_sources(
    opts: &TraceOptions,
) -> (String, Vec<std::path::PathBuf>, Vec<String>) {
    let reader = crate::context::procfs::ProcReader::new(&opts.root);
    let node = opts
        .node_name
        .clone()
        .or_else(|| reader.read_trim(&reader.rooted(crate::paths::HOSTNAME)))
        .unwrap_or_else(|| "node".into());
    let journal_dirs = match &opts.pleg_sources.log {
        crate::sources::LogTarget::Journal(d) => d.clone(),
        _ => Vec::new(),
    };
    let sockets = opts
        .dbus
        .as_ref()
        .map(|d| d.sockets.clone())
        .unwrap_or_default();
    (node, journal_dirs, sockets)
}

/// The socket of the CRI runtime this session relists (or would detect),
/// for containerd's goroutine dump; why there is none otherwise.
pub(super) fn runtime_socket(opts: &TraceOptions) -> Result<String, String> {
    use crate::sources::runtime::RuntimeEndpoint;
    let endpoint = match opts.pleg_sources.relist.as_ref().map(|r| &r.endpoint) {
        Some(RuntimeEndpoint::Detect) | None => RuntimeEndpoint::detect()?,
        Some(e) => e.clone(),
    };
    match endpoint {
        RuntimeEndpoint::Cri { endpoint } => {
            Ok(crate::bundle::optin::socket_path(&endpoint).to_owned())
        }
        other => Err(format!(
            "the runtime endpoint is {} (not a CRI socket): no containerd goroutine dump",
            other.address()
        )),
    }
}

/// The opt-ins of a session's bundles.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct OptIns {
    pub containerd_goroutines: bool,
    pub sysrq_w: bool,
}

/// The automatic bundles of this session (`trace --bundle-dir`, `[bundle]`).
pub(super) fn auto_bundles(
    opts: &TraceOptions,
    dir: std::path::PathBuf,
    min_interval: Duration,
    max_total_mib: u64,
    recording: Option<std::path::PathBuf>,
    optins: OptIns,
) -> crate::bundle::auto::AutoOptions {
    let (node, journal_dirs, sockets) = session_sources(opts);
    crate::bundle::auto::AutoOptions {
        dir,
        min_interval,
        max_total_bytes: max_total_mib << 20,
        root: opts.root.clone(),
        node,
        journal_dirs,
        sockets,
        recording,
        goroutines: optins.containerd_goroutines.then(|| runtime_socket(opts)),
        sysrq_w: optins.sysrq_w,
    }
}

/// A new directory of our own in the temp directory, root only (never one
/// that already exists: another user could have made it).
pub(super) fn private_temp_dir(what: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    (0..100)
        .map(|n| std::env::temp_dir().join(format!("watchdog-{what}-{}-{n}", std::process::id())))
        .find(|d| std::fs::DirBuilder::new().mode(0o700).create(d).is_ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot create a private directory in {}",
                std::env::temp_dir().display()
            )
        })
}

pub fn run(cmd: TraceCmd) -> anyhow::Result<ExitCode> {
    let a = cmd.trace;
    let no_status = a.no_status;
    let (mut opts, json) = options(a)?;
    let stdout = std::io::stdout();
    let mut sink: Box<dyn Sink> = if json {
        Box::new(JsonLines::new(stdout.lock()))
    } else {
        Box::new(terminal(stdout.lock(), no_status))
    };
    let Some(dir) = cmd.bundles.bundle_dir else {
        agent::trace(opts, sink.as_mut())?;
        return Ok(ExitCode::SUCCESS);
    };
    // The bundles carry the session's recording (replayable): the one asked
    // for, else one of our own, removed at the end.
    let mut own = None;
    let recording = match &opts.record {
        Some(r) => r.clone(),
        None => {
            let d = private_temp_dir("session")?;
            let r = d.join("recording.jsonl");
            own = Some(d);
            opts.record = Some(r.clone());
            r
        }
    };
    let auto_opts = auto_bundles(
        &opts,
        dir,
        cmd.bundles.bundle_interval,
        cmd.bundles.bundle_max_mib,
        Some(recording),
        OptIns {
            containerd_goroutines: cmd.bundles.bundle_containerd_goroutines,
            sysrq_w: cmd.bundles.bundle_sysrq_w,
        },
    );
    let mut auto = crate::bundle::auto::AutoBundle::new(sink.as_mut(), auto_opts);
    let session = agent::trace(opts, &mut auto);
    if let Some(d) = own {
        let _ = std::fs::remove_dir_all(d);
    }
    session?;
    Ok(ExitCode::SUCCESS)
}

//! `watchdog run --config FILE`: the daemon's settings, in TOML. Validated at
//! start: an unknown key, a value of the wrong type or out of range stops the
//! agent with a message naming the file, the key and why. Every key is
//! optional; command-line flags override the file. The checks and options
//! the file shares with `watchdog trace`'s flags live in [`validate`].
//!
//! ```toml
//! node_name = "node-1"            # default: $NODE_NAME, else the hostname
//! poll_interval = "1s"
//! record = "/var/log/watchdog/observations.jsonl"   # default: not recorded
//!
//! [engine]
//! resolve_after = "30s"           # a finding resolves after this long quiet
//! update_every = "5s"             # an active finding is re-reported at most this often
//! warn_percent = 90               # warn when a PID limit is this full
//!
//! [probes]
//! fork_probe = "auto"             # auto | always | off
//! arm_percent = 75
//! disarm_after = "60s"
//!
//! [metrics]
//! addr = "0.0.0.0:9102"           # Prometheus /metrics; "" disables
//!
//! [storage]                       # storage hangs (D state, blocked file syscalls)
//! enabled = true
//! hang_threshold = "10s"          # still blocked after this long is a hang
//! watch_comm = ["kubelet", "dockerd", "containerd", "containerd-shim*", "runc", "crun", "crio", "conmon"]
//!
//! [systemd]                       # systemd/D-Bus hangs (needs [storage] enabled)
//! enabled = true
//! threshold = "5s"                # a request without reply this long is a hang
//! sockets = ["/run/systemd/private", "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket"]
//! probe = true                    # the agent's own Ping/GetId while a request waits
//! probe_timeout = "2s"
//! requests = "auto"              # auto (socket tracepoints if Linux 6.3+, else off) | socket-tracepoints | syscalls | off
//!
//! [pleg]                          # kubelet's PLEG signals and the agent's own relist
//! enabled = true
//! kubelet_metrics_url = "https://127.0.0.1:10250/metrics"   # "off" disables
//! kubelet_ca = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
//! kubelet_token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
//! kubelet_insecure_tls = false    # kubelet's self-signed serving certificate
//! kubelet_scrape_interval = "5s"
//! kubelet_log = "journal"        # a file, "journal" or "off"; default: the journal if a journal directory exists
//! journal_dirs = ["/var/log/journal", "/run/log/journal"]   # default: those that exist
//! runtime_endpoint = "auto"       # auto (containerd, CRI-O, cri-dockerd, then Docker) | off | unix:///run/containerd/containerd.sock
//! # docker_host = "unix:///var/run/docker.sock" # relist over Docker's API instead of CRI
//! relist_interval = "5s"
//! runtime_call_timeout = "10s"    # a runtime or kubelet call slower than this is hung
//! relist_concurrency = 4
//! threshold = "3m"                # kubelet's PLEG threshold (10m with evented = true)
//! evented = false
//! runtime_request_timeout = "2m"  # kubelet's --runtime-request-timeout
//!
//! [kubernetes]
//! enabled = "auto"                # auto (in a cluster) | true | false
//! conditions = true               # node conditions per cause
//! events = true                   # Events on the Node
//! timeout = "5s"                  # per apiserver call
//! resync = "60s"                  # conditions re-sent (heartbeat) this often
//! events_per_minute = 12          # Event rate limit (burst = this)
//! ```
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::{agent::arming::ForkProbeMode, model::settings::EngineConfig, storage::StorageOptions};
use validate::{Invalid, Setting};

pub mod validate;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node_name: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    pub record: Option<PathBuf>,
    pub engine: EngineSection,
    pub probes: ProbesSection,
    pub metrics: MetricsSection,
    pub storage: StorageSection,
    pub systemd: SystemdSection,
    pub pleg: PlegSection,
    pub kubernetes: KubernetesSection,
    pub remediation: RemediationSection,
    pub bundle: BundleSection,
}

/// `[bundle]`: a bundle of the evidence when a finding goes active
/// (`watchdog trace --bundle-dir`). Off unless `dir` is set.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BundleSection {
    pub dir: Option<PathBuf>,
    /// At most one bundle per this long.
    #[serde(deserialize_with = "duration")]
    pub min_interval: Duration,
    /// The directory's bundles are kept under this many MiB.
    pub max_total_mib: u64,
    /// Opt-in: SIGUSR1 to the containerd serving the runtime endpoint and
    /// its goroutine dump in the bundle (at most once per 10 min per
    /// containerd process).
    pub containerd_goroutines: bool,
    /// Opt-in: sysrq-w (the kernel logs every blocked task) and its report
    /// in the bundle (at most once per 10 min).
    pub sysrq_w: bool,
}

impl Default for BundleSection {
    fn default() -> Self {
        Self {
            dir: None,
            min_interval: Duration::from_secs(300),
            max_total_mib: 256,
            containerd_goroutines: false,
            sysrq_w: false,
        }
    }
}

/// `[remediation]`: the policy (`watchdog trace --remediation ...`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemediationSection {
    /// `off`, `dry-run` (default) or `enforce`.
    pub mode: crate::remediation::Mode,
    /// Actions `enforce` may run.
    pub allow_actions: Vec<crate::remediation::ActionKind>,
    /// How long a finding stays active before its first action.
    #[serde(deserialize_with = "duration")]
    pub delay: Duration,
    /// How long an action has to resolve its finding before the next rung.
    #[serde(deserialize_with = "duration")]
    pub step_timeout: Duration,
    /// No second action on the same target within this time.
    #[serde(deserialize_with = "duration")]
    pub cooldown: Duration,
    /// Actions per node per rolling hour.
    pub max_per_hour: u32,
    /// `pods` (kill_container only on pods' cgroups) or `any`.
    pub scope: RemediationScope,
    /// `kill_container` only below this cgroup path (e.g. `/kubepods`).
    pub cgroup_prefix: Option<String>,
    /// Where enforce journals its actions.
    pub journal: PathBuf,
    /// Per-cause ladders: `[remediation.ladder.pid_exhaustion]`.
    pub ladder: std::collections::BTreeMap<crate::model::finding::Cause, LadderSection>,
    /// No action touches a pod of these namespaces.
    pub exclude_namespaces: Vec<String>,
    /// No action on a node with one of these labels (`key` or `key=value`).
    pub exclude_node_labels: Vec<String>,
    /// No action before the node has been up this long.
    #[serde(deserialize_with = "duration")]
    pub min_uptime: Duration,
    /// `reexec_systemd` may signal the node's own PID 1 (the host's
    /// systemd): off by default.
    pub allow_host_init: bool,
    /// The cluster-wide budget (`[remediation.cluster]`).
    pub cluster: ClusterSection,
}

/// `[remediation.cluster]`: at most K nodes remediating at once, through
/// Leases used as a semaphore (`run` with an apiserver; see the README).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Where the slot Leases live (default: the agent's own namespace,
    /// `$POD_NAMESPACE` from the downward API, else `kube-system`).
    pub lease_namespace: Option<String>,
    /// K: at most this many nodes remediate at once...
    pub max_nodes: u32,
    /// ...and at most this percent of the pool (never below 1 node).
    pub max_percent: u32,
    /// The pool: nodes matching this label selector (default: every node).
    pub pool_selector: Option<String>,
    /// A holder that stops renewing loses its slot after this long.
    #[serde(deserialize_with = "duration")]
    pub lease_duration: Duration,
    /// A slot is kept this long after the last action was verified.
    #[serde(deserialize_with = "duration")]
    pub release_delay: Duration,
    /// At most `rate_max` slots taken cluster-wide per `rate_window`.
    #[serde(deserialize_with = "duration")]
    pub rate_window: Duration,
    pub rate_max: u32,
    /// Nothing acts while more than this many nodes (or percent of the
    /// pool) show the same cause: a shared fault, not a node's.
    pub breaker_nodes: u32,
    pub breaker_percent: u32,
    /// With the apiserver unreachable: node-local actions still run (under
    /// `local_max_per_hour`); cluster-visible ones never do.
    pub local_when_apiserver_down: bool,
    pub local_max_per_hour: u32,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            lease_namespace: None,
            max_nodes: 1,
            max_percent: 10,
            pool_selector: None,
            lease_duration: Duration::from_secs(60),
            release_delay: Duration::from_secs(120),
            rate_window: Duration::from_secs(3600),
            rate_max: 3,
            breaker_nodes: 3,
            breaker_percent: 10,
            local_when_apiserver_down: false,
            local_max_per_hour: 1,
        }
    }
}

/// `[remediation.ladder.<cause>]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LadderSection {
    /// Action kinds in escalation order (the node-wide `cordon`, `taint`,
    /// `escalate` included).
    pub actions: Vec<crate::remediation::ActionKind>,
    /// How long a finding of this cause stays active before the first rung
    /// (default: `delay`).
    #[serde(default, deserialize_with = "opt_duration")]
    pub confirm: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RemediationScope {
    #[default]
    Pods,
    Any,
}

impl Default for RemediationSection {
    fn default() -> Self {
        let p = crate::remediation::PolicyConfig::default();
        Self {
            mode: p.mode,
            allow_actions: Vec::new(),
            delay: Duration::from_millis(p.delay_ms),
            step_timeout: Duration::from_millis(p.step_timeout_ms),
            cooldown: Duration::from_millis(p.cooldown_ms),
            max_per_hour: p.max_per_hour,
            scope: RemediationScope::Pods,
            cgroup_prefix: None,
            journal: PathBuf::from(crate::paths::REMEDIATION_JOURNAL),
            ladder: Default::default(),
            exclude_namespaces: Vec::new(),
            exclude_node_labels: Vec::new(),
            min_uptime: Duration::from_millis(p.min_uptime_ms),
            allow_host_init: false,
            cluster: Default::default(),
        }
    }
}

impl RemediationSection {
    pub fn policy(&self) -> crate::remediation::PolicyConfig {
        crate::remediation::PolicyConfig {
            mode: self.mode,
            allow: self.allow_actions.iter().copied().collect(),
            delay_ms: self.delay.as_millis() as u64,
            step_timeout_ms: self.step_timeout.as_millis() as u64,
            cooldown_ms: self.cooldown.as_millis() as u64,
            max_per_hour: self.max_per_hour,
            any_cgroup: self.scope == RemediationScope::Any,
            cgroup_prefix: self.cgroup_prefix.clone(),
            ladders: self
                .ladder
                .iter()
                .map(|(c, l)| {
                    (
                        *c,
                        crate::remediation::policy::Ladder {
                            actions: l.actions.clone(),
                            confirm_ms: l.confirm.map(|d| d.as_millis() as u64),
                        },
                    )
                })
                .collect(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            exclude_node_labels: self.exclude_node_labels.clone(),
            node_labels: None,
            min_uptime_ms: self.min_uptime.as_millis() as u64,
            booted_at: None,
            cluster: false,
            allow_host_init: self.allow_host_init,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SystemdSection {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub threshold: Duration,
    /// Socket paths of systemd and the system bus (default: the usual ones
    /// and $DBUS_SYSTEM_BUS_ADDRESS).
    pub sockets: Vec<String>,
    pub probe: bool,
    #[serde(deserialize_with = "duration")]
    pub probe_timeout: Duration,
    /// How requests are followed (`--dbus-requests`).
    pub requests: crate::dbus::options::DbusRequests,
}

impl Default for SystemdSection {
    fn default() -> Self {
        let d = crate::dbus::options::DbusOptions::default();
        Self {
            enabled: true,
            threshold: Duration::from_millis(
                crate::model::settings::SystemdConfig::default().threshold_ms,
            ),
            sockets: d.sockets,
            probe: d.probe,
            probe_timeout: d.probe_timeout,
            requests: d.requests,
        }
    }
}

impl SystemdSection {
    pub fn options(&self) -> Option<crate::dbus::options::DbusOptions> {
        self.enabled.then(|| crate::dbus::options::DbusOptions {
            requests: self.requests,
            ..validate::dbus_options(
                self.sockets.clone(),
                self.probe,
                self.probe_timeout,
                self.threshold,
            )
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub hang_threshold: Duration,
    /// Process names whose syscalls are tracked, with their descendants; a
    /// trailing '*' matches a prefix.
    pub watch_comm: Vec<String>,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            enabled: true,
            hang_threshold: Duration::from_secs(10),
            watch_comm: crate::storage::DEFAULT_WATCH_COMMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlegSection {
    pub enabled: bool,
    pub kubelet_metrics_url: String,
    pub kubelet_ca: Option<PathBuf>,
    pub kubelet_token: Option<PathBuf>,
    pub kubelet_insecure_tls: bool,
    #[serde(deserialize_with = "duration")]
    pub kubelet_scrape_interval: Duration,
    pub kubelet_log: Option<PathBuf>,
    pub journal_dirs: Vec<PathBuf>,
    pub runtime_endpoint: String,
    pub docker_host: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub relist_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub runtime_call_timeout: Duration,
    pub relist_concurrency: u16,
    #[serde(default, deserialize_with = "opt_duration")]
    pub threshold: Option<Duration>,
    pub evented: bool,
    #[serde(deserialize_with = "duration")]
    pub runtime_request_timeout: Duration,
}

impl Default for PlegSection {
    fn default() -> Self {
        Self {
            enabled: true,
            kubelet_metrics_url: "https://127.0.0.1:10250/metrics".into(),
            kubelet_ca: None,
            kubelet_token: None,
            kubelet_insecure_tls: false,
            kubelet_scrape_interval: Duration::from_secs(5),
            kubelet_log: None,
            journal_dirs: Vec::new(),
            runtime_endpoint: "auto".into(),
            docker_host: None,
            relist_interval: Duration::from_secs(5),
            runtime_call_timeout: Duration::from_secs(10),
            relist_concurrency: 4,
            threshold: None,
            evented: false,
            runtime_request_timeout: Duration::from_secs(120),
        }
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    #[serde(deserialize_with = "duration")]
    pub resolve_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub update_every: Duration,
    pub warn_percent: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesSection {
    pub fork_probe: ForkProbeMode,
    pub arm_percent: f64,
    #[serde(deserialize_with = "duration")]
    pub disarm_after: Duration,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where to serve Prometheus `/metrics`; "" disables.
    pub addr: String,
}

/// `true`, `false` or `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    On,
    Off,
    Auto,
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Toggle;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Toggle, E> {
                Ok(if v { Toggle::On } else { Toggle::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Toggle, E> {
                match v {
                    "auto" => Ok(Toggle::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    pub enabled: Toggle,
    pub conditions: bool,
    pub events: bool,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub resync: Duration,
    pub events_per_minute: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: None,
            poll_interval: Duration::from_secs(1),
            record: None,
            engine: EngineSection::default(),
            probes: ProbesSection::default(),
            metrics: MetricsSection::default(),
            storage: StorageSection::default(),
            systemd: SystemdSection::default(),
            pleg: PlegSection::default(),
            kubernetes: KubernetesSection::default(),
            remediation: RemediationSection::default(),
            bundle: BundleSection::default(),
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            resolve_after: Duration::from_millis(e.resolve_after_ms),
            update_every: Duration::from_millis(e.update_every_ms),
            warn_percent: e.warn_percent,
        }
    }
}

impl Default for ProbesSection {
    fn default() -> Self {
        Self {
            fork_probe: ForkProbeMode::Auto,
            arm_percent: 75.0,
            disarm_after: Duration::from_secs(60),
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:9102".into(),
        }
    }
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            enabled: Toggle::Auto,
            conditions: true,
            events: true,
            timeout: Duration::from_secs(5),
            resync: Duration::from_secs(60),
            events_per_minute: 12,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"5m\""
        ))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key} = {value}: {why}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        why: String,
    },
}

impl Invalid {
    /// As an error of the file at `path`, naming the key.
    pub fn in_file(self, path: &std::path::Path) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_owned(),
            key: self.setting.key(),
            value: self.why.value,
            why: self.why.why,
        }
    }
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // toml's message names the line, the column and the key.
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Range checks the types cannot express (those shared with the flags
    /// are in [`validate`], in the same order as `watchdog trace` runs them).
    pub fn validate(&self, path: &std::path::Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, why: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            value,
            why: why.to_owned(),
        };
        let shared = |s: Setting| move |w: validate::Why| w.of(s).in_file(path);
        let positive = |key, d: Duration| {
            validate::positive(d)
                .map(drop)
                .map_err(|w| bad(key, w.value, &w.why))
        };
        validate::positive(self.poll_interval).map_err(shared(Setting::PollInterval))?;
        validate::positive(self.engine.resolve_after).map_err(shared(Setting::ResolveAfter))?;
        positive("kubernetes.timeout", self.kubernetes.timeout)?;
        positive("kubernetes.resync", self.kubernetes.resync)?;
        self.storage_options_unchecked()
            .map_err(|e| e.in_file(path))?;
        validate::at_least_100ms(self.systemd.threshold)
            .map_err(shared(Setting::SystemdThreshold))?;
        positive("systemd.probe_timeout", self.systemd.probe_timeout)?;
        validate::sockets(&self.systemd.sockets).map_err(shared(Setting::SystemdSockets))?;
        validate::positive(self.pleg.relist_interval).map_err(shared(Setting::RelistInterval))?;
        validate::positive(self.pleg.runtime_call_timeout)
            .map_err(shared(Setting::RuntimeCallTimeout))?;
        positive(
            "pleg.kubelet_scrape_interval",
            self.pleg.kubelet_scrape_interval,
        )?;
        if let Some(t) = self.pleg.threshold {
            validate::positive(t).map_err(shared(Setting::PlegThreshold))?;
        }
        validate::relist_concurrency(self.pleg.relist_concurrency)
            .map_err(shared(Setting::RelistConcurrency))?;
        if let Err((setting, why)) = validate::relist_endpoint(
            &self.pleg.runtime_endpoint,
            self.pleg.docker_host.as_deref(),
        ) {
            return Err(shared(setting)(why));
        }
        validate::percent(self.engine.warn_percent).map_err(shared(Setting::WarnPercent))?;
        validate::percent(self.probes.arm_percent).map_err(shared(Setting::ArmPercent))?;
        validate::remediation_allow(self.remediation.mode, &self.remediation.allow_actions)
            .map_err(shared(Setting::RemediationAllow))?;
        validate::positive(self.remediation.step_timeout)
            .map_err(shared(Setting::RemediationStepTimeout))?;
        let c = &self.remediation.cluster;
        if c.lease_duration < Duration::from_secs(15)
            || c.lease_duration < self.kubernetes.timeout * 3
        {
            return Err(bad(
                "remediation.cluster.lease_duration",
                format!("{:?}", c.lease_duration),
                "must be at least 15 s and 3 times kubernetes.timeout (renewed every third of it, each call with its own timeout)",
            ));
        }
        if c.max_nodes == 0 {
            return Err(bad(
                "remediation.cluster.max_nodes",
                "0".into(),
                "must be at least 1 (set remediation.mode = \"off\" to act never)",
            ));
        }
        if let Some(sel) = self
            .remediation
            .exclude_node_labels
            .iter()
            .find(|s| !crate::remediation::policy::label_selector_ok(s))
        {
            return Err(bad(
                "remediation.exclude_node_labels",
                sel.clone(),
                "must be `key` or `key=value` (a label key: [prefix/]name of letters, digits, '-', '_', '.')",
            ));
        }
        if self.remediation.max_per_hour == 0
            && self.remediation.mode != crate::remediation::Mode::Off
        {
            return Err(bad(
                "remediation.max_per_hour",
                "0".into(),
                "must be at least 1 (set remediation.mode = \"off\" to act never)",
            ));
        }
        if self.engine.resolve_after < self.poll_interval {
            return Err(bad(
                "engine.resolve_after",
                format!("{:?}", self.engine.resolve_after),
                "must be at least poll_interval, or findings resolve between two samples",
            ));
        }
        if let Some(n) = &self.node_name
            && (n.is_empty() || n.len() > 253 || n.contains(char::is_whitespace))
        {
            return Err(bad(
                "node_name",
                format!("{n:?}"),
                "is not a Kubernetes node name",
            ));
        }
        self.metrics_addr()
            .map_err(|why| bad("metrics.addr", format!("{:?}", self.metrics.addr), &why))?;
        if self.kubernetes.events_per_minute == 0 && self.kubernetes.events {
            return Err(bad(
                "kubernetes.events_per_minute",
                "0".into(),
                "must be at least 1 (set kubernetes.events = false to send none)",
            ));
        }
        Ok(())
    }

    /// `[storage]` as options, checked whether enabled or not.
    fn storage_options_unchecked(&self) -> Result<StorageOptions, Invalid> {
        validate::storage_options(self.storage.hang_threshold, &self.storage.watch_comm)
    }

    /// The storage-hang options; None when `[storage]` is disabled.
    pub fn storage_options(&self) -> Result<Option<StorageOptions>, Invalid> {
        let o = self.storage_options_unchecked()?;
        Ok(self.storage.enabled.then_some(o))
    }

    /// The metrics listen address; None when disabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics.addr.is_empty() {
            return Ok(None);
        }
        self.metrics
            .addr
            .parse()
            .map(Some)
            .map_err(|e| format!("not HOST:PORT with an IP address ({e})"))
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            update_every_ms: self.engine.update_every.as_millis() as u64,
            ..validate::engine_config(
                self.engine.warn_percent,
                self.engine.resolve_after,
                self.systemd.threshold,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(t: &str) -> Result<Config, String> {
        Config::parse(t, Path::new("/etc/watchdog.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_documented_example_parses() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&doc).unwrap();
        assert_eq!(c.node_name.as_deref(), Some("node-1"));
        assert_eq!(c.kubernetes.enabled, Toggle::Auto);
        assert_eq!(c.probes.fork_probe, ForkProbeMode::Auto);
    }

    #[test]
    fn errors_name_the_key_and_why() {
        let e = parse("[engine]\nwarn_percent = 150\n").unwrap_err();
        assert!(
            e.contains("engine.warn_percent = 150: must be between 1 and 100"),
            "{e}"
        );
        let e = parse("[engine]\nresolve_after = \"soon\"\n").unwrap_err();
        assert!(
            e.contains("resolve_after") && e.contains("not a duration"),
            "{e}"
        );
        let e = parse("[probes]\nfork_probe = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("fork_probe") && e.contains("sometimes"), "{e}");
        let e = parse("[metrics]\naddr = \"localhost\"\n").unwrap_err();
        assert!(e.contains("metrics.addr") && e.contains("HOST:PORT"), "{e}");
        let e = parse("[kubernetes]\nenabeld = true\n").unwrap_err();
        assert!(e.contains("unknown field `enabeld`"), "{e}");
        assert!(e.contains("/etc/watchdog.toml"), "{e}");
        let e = parse("poll_interval = 5\n").unwrap_err();
        assert!(e.contains("poll_interval"), "{e}");
        let e = parse("[systemd]\nsockets = [\"run/dbus/bus\"]\n").unwrap_err();
        assert!(
            e.contains("systemd.sockets") && e.contains("absolute"),
            "{e}"
        );
        let e = parse("[systemd]\nthreshold = \"10ms\"\n").unwrap_err();
        assert!(
            e.contains("systemd.threshold") && e.contains("at least 100ms"),
            "{e}"
        );
        let e = parse("[kubernetes]\nenabled = \"yes\"\n").unwrap_err();
        assert!(
            e.contains("enabled") && e.contains("expected true, false or \"auto\""),
            "{e}"
        );
    }
}

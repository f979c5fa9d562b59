//! The one validation of the settings that `watchdog trace` takes as flags
//! and `watchdog run` reads from its file, and the options built from them.
//!
//! Each check lives here once and says what is wrong with a value ([`Why`]);
//! the caller names the setting the way its user wrote it: the file as
//! `storage.hang_threshold = 10ms: must be at least 100ms` (with the file's
//! path, see [`super::ConfigError`]), the command line as `--hang-threshold
//! must be at least 100ms` ([`Invalid::flag_message`]).
use std::time::Duration;

use crate::{
    dbus::options::{DbusOptions, validate_sockets},
    model::settings::{EngineConfig, SystemdConfig},
    sources::runtime::RuntimeEndpoint,
    storage::{CommMatch, StorageOptions, parse_comms},
};

/// A setting both the flags and the file have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    PollInterval,
    ResolveAfter,
    WarnPercent,
    ArmPercent,
    HangThreshold,
    WatchComm,
    SystemdThreshold,
    SystemdSockets,
    PlegThreshold,
    RelistInterval,
    RuntimeCallTimeout,
    RelistConcurrency,
    DockerHost,
    RuntimeEndpoint,
    RemediationAllow,
    RemediationStepTimeout,
}

impl Setting {
    /// Its key in the file.
    pub fn key(self) -> &'static str {
        match self {
            Self::PollInterval => "poll_interval",
            Self::ResolveAfter => "engine.resolve_after",
            Self::WarnPercent => "engine.warn_percent",
            Self::ArmPercent => "probes.arm_percent",
            Self::HangThreshold => "storage.hang_threshold",
            Self::WatchComm => "storage.watch_comm",
            Self::SystemdThreshold => "systemd.threshold",
            Self::SystemdSockets => "systemd.sockets",
            Self::PlegThreshold => "pleg.threshold",
            Self::RelistInterval => "pleg.relist_interval",
            Self::RuntimeCallTimeout => "pleg.runtime_call_timeout",
            Self::RelistConcurrency => "pleg.relist_concurrency",
            Self::DockerHost => "pleg.docker_host",
            Self::RuntimeEndpoint => "pleg.runtime_endpoint",
            Self::RemediationAllow => "remediation.allow_actions",
            Self::RemediationStepTimeout => "remediation.step_timeout",
        }
    }

    /// Its `watchdog trace` flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::PollInterval => "--poll-interval",
            Self::ResolveAfter => "--resolve-after",
            Self::WarnPercent => "--warn-percent",
            Self::ArmPercent => "--arm-percent",
            Self::HangThreshold => "--hang-threshold",
            Self::WatchComm => "--watch-comm",
            Self::SystemdThreshold => "--systemd-threshold",
            Self::SystemdSockets => "--systemd-socket",
            Self::PlegThreshold => "--pleg-threshold",
            Self::RelistInterval => "--relist-interval",
            Self::RuntimeCallTimeout => "--runtime-call-timeout",
            Self::RelistConcurrency => "--relist-concurrency",
            Self::DockerHost => "--docker-host",
            Self::RuntimeEndpoint => "--runtime-endpoint",
            Self::RemediationAllow => "--allow-actions",
            Self::RemediationStepTimeout => "--remediation-step-timeout",
        }
    }

    /// Lists: their errors name the bad element themselves.
    fn is_list(self) -> bool {
        matches!(
            self,
            Self::WatchComm | Self::SystemdSockets | Self::RemediationAllow
        )
    }
}

/// What is wrong with a value: the value as shown to the user, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Why {
    pub value: String,
    pub why: String,
}

impl Why {
    fn new(value: String, why: impl Into<String>) -> Self {
        Self {
            value,
            why: why.into(),
        }
    }

    /// The same, about `setting`.
    pub fn of(self, setting: Setting) -> Invalid {
        Invalid { setting, why: self }
    }
}

/// A setting with a bad value.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub setting: Setting,
    pub why: Why,
}

impl Invalid {
    /// As a command-line error, naming the flag.
    pub fn flag_message(&self) -> String {
        let flag = self.setting.flag();
        let Why { value, why } = &self.why;
        if why.starts_with(flag) {
            why.clone()
        } else if self.setting.is_list() {
            format!("{flag}: {why}")
        } else if why.starts_with("must") {
            format!("{flag} {why}")
        } else {
            format!("{flag} {value}: {why}")
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.flag_message())
    }
}

impl std::error::Error for Invalid {}

/// The actions `enforce` may run: at least one in `enforce`, and only
/// actions that have an executor.
pub fn remediation_allow(
    mode: crate::remediation::Mode,
    allow: &[crate::remediation::ActionKind],
) -> Result<(), Why> {
    let list = || allow.iter().map(|a| a.name()).collect::<Vec<_>>().join(",");
    if let Some(a) = allow.iter().find(|a| a.unavailable().is_some()) {
        return Err(Why::new(
            list(),
            format!(
                "{} cannot be allowed: {}",
                a.name(),
                a.unavailable().unwrap_or_default()
            ),
        ));
    }
    if mode == crate::remediation::Mode::Enforce && allow.is_empty() {
        return Err(Why::new(
            String::new(),
            "enforce runs only the actions allowed explicitly: name at least one (kill_container, evict_pod, abort_fuse, force_unmount, reexec_systemd, kill_process, cordon, taint, escalate)",
        ));
    }
    Ok(())
}

/// A duration that must not be zero (an interval, a timeout).
pub fn positive(d: Duration) -> Result<Duration, Why> {
    if d.is_zero() {
        Err(Why::new("0".into(), "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// A threshold below which every wait would look like a hang.
pub fn at_least_100ms(d: Duration) -> Result<Duration, Why> {
    if d < Duration::from_millis(100) {
        Err(Why::new(format!("{d:?}"), "must be at least 100ms"))
    } else {
        Ok(d)
    }
}

/// How full a limit is, in percent.
pub fn percent(v: f64) -> Result<f64, Why> {
    if (1.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(Why::new(v.to_string(), "must be between 1 and 100"))
    }
}

/// Inspects in flight at once during a relist.
pub fn relist_concurrency(n: u16) -> Result<u16, Why> {
    if (1..=64).contains(&n) {
        Ok(n)
    } else {
        Err(Why::new(n.to_string(), "must be between 1 and 64"))
    }
}

/// The relist's runtime from `runtime_endpoint` (`auto`, `off`, or a CRI
/// socket `unix://PATH`) and `docker_host` (Docker's API at a unix socket,
/// or `off`): None when the relist is off.
pub fn relist_endpoint(
    runtime_endpoint: &str,
    docker_host: Option<&str>,
) -> Result<Option<RuntimeEndpoint>, (Setting, Why)> {
    if let Some(h) = docker_host {
        self::docker_host(h).map_err(|w| (Setting::DockerHost, w))?;
    }
    let cri = match runtime_endpoint {
        "auto" => None,
        "off" => return Ok(None),
        s if s.starts_with("unix:///") => Some(s),
        s => {
            return Err((
                Setting::RuntimeEndpoint,
                Why::new(
                    format!("{s:?}"),
                    "must be auto, off or a CRI socket unix:///PATH (e.g. unix:///run/containerd/containerd.sock)",
                ),
            ));
        }
    };
    Ok(match (cri, docker_host) {
        (Some(e), Some(h)) => {
            return Err((
                Setting::RuntimeEndpoint,
                Why::new(
                    format!("{e:?}"),
                    format!(
                        "names a CRI runtime while the Docker host {h:?} is given too: give one of them"
                    ),
                ),
            ));
        }
        (Some(e), None) => Some(RuntimeEndpoint::Cri {
            endpoint: e.to_owned(),
        }),
        (None, Some("off")) => None,
        (None, Some(h)) => Some(RuntimeEndpoint::Docker { host: h.to_owned() }),
        (None, None) => Some(RuntimeEndpoint::Detect),
    })
}

/// The Docker endpoint of the relist: a unix socket, or "off".
pub fn docker_host(s: &str) -> Result<&str, Why> {
    if s == "off" || s.starts_with("unix://") {
        Ok(s)
    } else {
        Err(Why::new(
            format!("{s:?}"),
            "only unix:// sockets (or \"off\") are supported",
        ))
    }
}

/// Process names whose syscalls are tracked.
pub fn watch_comms<S: AsRef<str> + std::fmt::Debug>(list: &[S]) -> Result<Vec<CommMatch>, Why> {
    parse_comms(list).map_err(|e| Why::new(format!("{list:?}"), e.to_string()))
}

/// Socket paths of systemd and the system bus.
pub fn sockets(list: &[String]) -> Result<(), Why> {
    validate_sockets(list).map_err(|e| Why::new(format!("{list:?}"), e.to_string()))
}

/// A `--flag` value parser (clap) from a check.
pub fn flag_parser<T>(
    check: fn(T) -> Result<T, Why>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + 'static,
    T::Err: std::fmt::Display,
{
    move |s: &str| {
        let v: T = s
            .parse()
            .map_err(|e| format!("{s:?} is not a number: {e}"))?;
        check(v).map_err(|w| w.why)
    }
}

/// The storage-hang options: a threshold and the watched names, checked.
pub fn storage_options(threshold: Duration, comms: &[String]) -> Result<StorageOptions, Invalid> {
    let threshold = at_least_100ms(threshold).map_err(|w| w.of(Setting::HangThreshold))?;
    Ok(StorageOptions {
        threshold_ms: threshold.as_millis() as u64,
        watch_comms: watch_comms(comms).map_err(|w| w.of(Setting::WatchComm))?,
    })
}

/// The systemd-hang tracking options: connections are corroborated from
/// half the threshold on.
pub fn dbus_options(
    sockets: Vec<String>,
    probe: bool,
    probe_timeout: Duration,
    threshold: Duration,
) -> DbusOptions {
    DbusOptions {
        requests: Default::default(),
        sockets,
        probe,
        probe_timeout,
        suspect_after_ms: (threshold.as_millis() as u64 / 2).max(100),
    }
}

/// The engine's settings both commands have (a warning clears 5 points below
/// where it fired).
pub fn engine_config(
    warn_percent: f64,
    resolve_after: Duration,
    systemd_threshold: Duration,
) -> EngineConfig {
    EngineConfig {
        warn_percent,
        warn_clear_percent: (warn_percent - 5.0).max(0.0),
        resolve_after_ms: resolve_after.as_millis() as u64,
        systemd: SystemdConfig {
            threshold_ms: systemd_threshold.as_millis() as u64,
        },
        ..EngineConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_messages_name_the_flag() {
        let m = |r: Result<Duration, Why>, s| r.unwrap_err().of(s).flag_message();
        assert_eq!(
            m(positive(Duration::ZERO), Setting::PollInterval),
            "--poll-interval must be greater than zero"
        );
        assert_eq!(
            m(
                at_least_100ms(Duration::from_millis(10)),
                Setting::HangThreshold
            ),
            "--hang-threshold must be at least 100ms"
        );
        assert_eq!(
            docker_host("tcp://x")
                .unwrap_err()
                .of(Setting::DockerHost)
                .flag_message(),
            "--docker-host \"tcp://x\": only unix:// sockets (or \"off\") are supported"
        );
        let e = storage_options(Duration::from_secs(1), &["".into()]).unwrap_err();
        assert_eq!(e.setting, Setting::WatchComm);
        assert!(e.flag_message().starts_with("--watch-comm \"\": "), "{e}");
        let e = sockets(&["rel".into()])
            .unwrap_err()
            .of(Setting::SystemdSockets);
        assert!(
            e.flag_message()
                .starts_with("--systemd-socket: systemd.sockets \"rel\""),
            "{e}"
        );
        let p = flag_parser(percent);
        assert_eq!(p("75"), Ok(75.0));
        assert_eq!(p("300"), Err("must be between 1 and 100".into()));
        assert!(p("x").unwrap_err().contains("not a number"));
    }

    #[test]
    fn derived_options() {
        let d = dbus_options(vec![], true, Duration::from_secs(2), Duration::from_secs(5));
        assert_eq!(d.suspect_after_ms, 2_500);
        let d = dbus_options(
            vec![],
            true,
            Duration::from_secs(2),
            Duration::from_millis(100),
        );
        assert_eq!(d.suspect_after_ms, 100);
        let e = engine_config(3.0, Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(e.warn_clear_percent, 0.0);
        assert_eq!(e.systemd.threshold_ms, 5_000);
    }
}

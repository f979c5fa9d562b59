//! The engine's settings, recorded in every recording's header so that
//! `watchdog replay` diagnoses with the settings of the live session.
use serde::{Deserialize, Serialize};

/// kubelet's generic PLEG threshold (3 min).
pub const GENERIC_THRESHOLD_MS: u64 = 180_000;
/// kubelet's evented PLEG threshold (10 min).
pub const EVENTED_THRESHOLD_MS: u64 = 600_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// A finding resolves after this long without new evidence.
    pub resolve_after_ms: u64,
    /// An active finding is re-reported at most this often while it changes.
    pub update_every_ms: u64,
    /// Warn when a limit is this full (percent).
    pub warn_percent: f64,
    /// Clear the warning below this (hysteresis).
    pub warn_clear_percent: f64,
    /// PLEG estimate (threshold, report cadence).
    pub pleg: PlegConfig,
    /// systemd/D-Bus hangs (how long a request may wait for its reply).
    pub systemd: SystemdConfig,
    /// The kernel-level causes this run can see: what a finding may say was
    /// ruled out.
    #[serde(default)]
    pub checks: KernelChecks,
}

/// Which kernel-level causes the agent is looking for in this run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelChecks {
    pub pid_exhaustion: bool,
    pub storage_hang: bool,
    pub systemd_hang: bool,
}

impl Default for KernelChecks {
    fn default() -> Self {
        Self {
            pid_exhaustion: true,
            storage_hang: true,
            systemd_hang: true,
        }
    }
}

impl KernelChecks {
    /// (checked, not checked), as cause names.
    pub fn split(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let all = [
            (self.pid_exhaustion, "PID exhaustion"),
            (self.storage_hang, "storage hang"),
            (self.systemd_hang, "systemd hang"),
        ];
        (
            all.iter().filter(|a| a.0).map(|a| a.1).collect(),
            all.iter().filter(|a| !a.0).map(|a| a.1).collect(),
        )
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            resolve_after_ms: 30_000,
            update_every_ms: 5_000,
            warn_percent: 90.0,
            warn_clear_percent: 85.0,
            pleg: PlegConfig::default(),
            systemd: SystemdConfig::default(),
            checks: KernelChecks::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlegConfig {
    /// kubelet's PLEG threshold (3 min; 10 min with evented PLEG).
    pub threshold_ms: u64,
    pub evented: bool,
    /// kubelet's `--runtime-request-timeout` (2 min): how long one hung CRI
    /// call holds its relist.
    pub runtime_request_timeout_ms: u64,
    /// A metrics/log/relist reading older than this is not used.
    pub max_reading_age_ms: u64,
    /// A relist older than this (kubelet relists every second) is stalled.
    pub stalled_after_ms: u64,
    /// Re-emit the estimate at least this often.
    pub report_every_ms: u64,
}

impl Default for PlegConfig {
    fn default() -> Self {
        Self {
            threshold_ms: GENERIC_THRESHOLD_MS,
            evented: false,
            runtime_request_timeout_ms: 120_000,
            max_reading_age_ms: 30_000,
            stalled_after_ms: 15_000,
            report_every_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemdConfig {
    /// A connection waiting this long for a reply is a hang.
    pub threshold_ms: u64,
}

impl Default for SystemdConfig {
    fn default() -> Self {
        Self {
            threshold_ms: 5_000,
        }
    }
}

//! Remediation: the smallest fix for a proven cause, behind a pure policy
//! (`policy`) and executors (`exec`), dry-run by default.
//!
//! Findings come in from the engine (`Remediator::on_finding`), the clock
//! ticks (`Remediator::tick`); the policy says which rung of a finding's
//! ladder is due and whether it passes its gates; in `enforce` the executor
//! re-checks the target just before acting, then acts. Every step is a
//! `remediation` record: planned, skipped (with the reason), started,
//! succeeded, failed, verified (the finding resolved after it).
//!
//! The node's actions (`exec`, one file per family): `kill_container`
//! (pid_exhaustion), `abort_fuse` and `force_unmount` (storage_hang: FUSE,
//! then NFS/CIFS/Ceph/9p with `umount2(MNT_FORCE)` in the mount namespace
//! the finding's table came from, never lazy), `reexec_systemd`
//! (systemd_hang: SIGTERM to the systemd serving the hung socket, only when
//! it is PID 1 of its own PID namespace, not the host's, not stopped, with
//! room on /run (systemd #5016) and its binary unchanged on disk (#19725);
//! verified by a `Ping`) and `kill_process` (a runc/crun the systemd_hang
//! finding saw waiting, named by pid and start time; shims are never named:
//! moby #43491). `evict_pod` has no executor yet.
use std::str::FromStr;

use serde::Serialize;

use crate::model::Time;
use crate::model::finding::{Cause, Finding, FindingId, RemedyAction};

pub mod exec;
pub mod journal;
pub mod policy;

pub use exec::{Executor, NodeExecutor, ReplayExecutor};
pub use journal::Journal;
pub use policy::{Decision, Policy, PolicyConfig, Step};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No remediation at all (no records).
    Off,
    /// Every gate is evaluated and the record says what would run.
    #[default]
    DryRun,
    /// Allowed actions run.
    Enforce,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::DryRun => "dry-run",
            Self::Enforce => "enforce",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "dry-run" => Ok(Self::DryRun),
            "enforce" => Ok(Self::Enforce),
            _ => Err(format!(
                "unknown remediation mode `{s}` (expected off, dry-run or enforce)"
            )),
        }
    }
}

/// The kinds of action, as `--allow-actions` names them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    KillContainer,
    EvictPod,
    AbortFuse,
    ForceUnmount,
    ReexecSystemd,
    KillProcess,
}

impl ActionKind {
    pub const ALL: [ActionKind; 6] = [
        Self::KillContainer,
        Self::EvictPod,
        Self::AbortFuse,
        Self::ForceUnmount,
        Self::ReexecSystemd,
        Self::KillProcess,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::KillContainer => "kill_container",
            Self::EvictPod => "evict_pod",
            Self::AbortFuse => "abort_fuse",
            Self::ForceUnmount => "force_unmount",
            Self::ReexecSystemd => "reexec_systemd",
            Self::KillProcess => "kill_process",
        }
    }

    /// Why this action cannot run in this version (its executor is not
    /// built yet); None when it can.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            Self::KillContainer
            | Self::AbortFuse
            | Self::ForceUnmount
            | Self::ReexecSystemd
            | Self::KillProcess => None,
            Self::EvictPod => Some(
                "no executor: evict_pod (Eviction API) is not built yet; evict the pod by hand",
            ),
        }
    }
}

impl FromStr for ActionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown action `{s}` (expected one of {})",
                    Self::ALL.map(Self::name).join(", ")
                )
            })
    }
}

impl RemedyAction {
    pub fn kind(&self) -> ActionKind {
        match self {
            Self::KillContainer { .. } => ActionKind::KillContainer,
            Self::EvictPod { .. } => ActionKind::EvictPod,
            Self::AbortFuse { .. } => ActionKind::AbortFuse,
            Self::ForceUnmount { .. } => ActionKind::ForceUnmount,
            Self::ReexecSystemd { .. } => ActionKind::ReexecSystemd,
            Self::KillProcess { .. } => ActionKind::KillProcess,
        }
    }

    /// The object acted on, as records and cooldowns name it.
    pub fn target(&self) -> String {
        match self {
            Self::KillContainer { cgroup } => format!("cgroup {cgroup}"),
            Self::EvictPod { pod_uid } => format!("pod {pod_uid}"),
            Self::AbortFuse { mount_point, dev } => {
                format!("fuse connection {dev} ({mount_point})")
            }
            Self::ForceUnmount { mount_point } => format!("mount {mount_point}"),
            Self::ReexecSystemd { socket, .. } => format!("systemd serving {socket}"),
            Self::KillProcess { pid, comm, .. } => format!("process {pid} ({comm})"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Planned,
    Skipped,
    Started,
    Succeeded,
    Failed,
    Verified,
}

impl StepStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Skipped => "skipped",
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Verified => "verified",
        }
    }
}

/// One `remediation` record.
#[derive(Clone, Debug, Serialize)]
pub struct RemediationRecord {
    pub at: Time,
    pub finding: FindingId,
    pub cause: Cause,
    pub action: ActionKind,
    pub target: String,
    pub mode: Mode,
    pub status: StepStatus,
    pub reason: String,
    pub budget: String,
}

/// The policy and an executor: findings and ticks in, records out.
pub struct Remediator {
    policy: Policy,
    executor: Box<dyn Executor>,
    /// Where intents and outcomes go before and after acting (enforce).
    journal: Option<Journal>,
}

impl Remediator {
    pub fn new(cfg: PolicyConfig, executor: Box<dyn Executor>) -> Self {
        Self {
            policy: Policy::new(cfg),
            executor,
            journal: None,
        }
    }

    /// Journal every action; `taken` (this boot's actions already in it)
    /// count against the budget and cool their targets down.
    pub fn with_journal(mut self, journal: Journal, taken: &[(Time, String)]) -> Self {
        self.policy.restore(taken);
        self.journal = Some(journal);
        self
    }

    pub fn mode(&self) -> Mode {
        self.policy.config().mode
    }

    pub fn on_finding(&mut self, f: &Finding) -> Vec<RemediationRecord> {
        let steps = self.policy.on_finding(f);
        self.run(steps)
    }

    pub fn tick(&mut self, now: Time) -> Vec<RemediationRecord> {
        let steps = self.policy.tick(now);
        self.run(steps)
    }

    fn run(&mut self, steps: Vec<Step>) -> Vec<RemediationRecord> {
        let mode = self.mode();
        let mut out = Vec::new();
        let has_journal = self.journal.is_some();
        for s in steps {
            let rec = |status: StepStatus, reason: String| RemediationRecord {
                at: s.at,
                finding: s.finding.clone(),
                cause: s.cause,
                action: s.action.kind(),
                target: s.action.target(),
                mode,
                status,
                reason,
                budget: s.budget.clone(),
            };
            let finding = s.finding.to_string();
            let (action, target) = (s.action.kind().name(), s.action.target());
            let mut journal = |status: StepStatus, detail: &str| -> Result<(), String> {
                match self.journal.as_mut() {
                    Some(j) => j.append(s.at, &finding, action, &target, status.name(), detail),
                    None => Ok(()),
                }
            };
            match &s.decision {
                Decision::Skip(why) => out.push(rec(StepStatus::Skipped, why.clone())),
                Decision::Verified => {
                    let why = "the finding resolved after this action";
                    if let Err(e) = journal(StepStatus::Verified, why) {
                        tracing::warn!("{e}");
                    }
                    out.push(rec(StepStatus::Verified, why.into()));
                }
                Decision::Plan { allowed } => match self.executor.recheck(&s.action) {
                    Ok(what) => out.push(rec(
                        StepStatus::Planned,
                        if *allowed {
                            format!("dry-run: would {what}")
                        } else {
                            format!(
                                "dry-run: would {what} (enforce needs --allow-actions {})",
                                s.action.kind().name()
                            )
                        },
                    )),
                    Err(why) => out.push(rec(StepStatus::Skipped, format!("re-check: {why}"))),
                },
                Decision::Execute if !has_journal => {
                    // Nothing acts without its intent on disk.
                    self.policy.failed(&s.finding);
                    out.push(rec(
                        StepStatus::Failed,
                        "not run: enforce needs the remediation journal".into(),
                    ));
                }
                Decision::Execute => match self.executor.recheck(&s.action) {
                    Err(why) => {
                        if self.policy.recheck_failed(&s.finding, &s.action, s.at) {
                            out.push(rec(
                                StepStatus::Skipped,
                                format!("re-check: {why} (tried again at every poll)"),
                            ));
                        }
                    }
                    Ok(what) => {
                        self.policy.recheck_passed(&s.finding);
                        // The intent is on disk before anything runs: a
                        // restarted agent knows this action was taken.
                        if let Err(e) = journal(StepStatus::Started, &what) {
                            self.policy.failed(&s.finding);
                            out.push(rec(
                                StepStatus::Failed,
                                format!("not run: the intent could not be journaled: {e}"),
                            ));
                            continue;
                        }
                        out.push(rec(StepStatus::Started, what));
                        let (status, detail) = match self.executor.execute(&s.action) {
                            Ok(done) => (StepStatus::Succeeded, done),
                            Err(why) => {
                                self.policy.failed(&s.finding);
                                (StepStatus::Failed, why)
                            }
                        };
                        if let Err(e) = journal(status, &detail) {
                            tracing::warn!("{e}");
                        }
                        out.push(rec(status, detail));
                    }
                },
            }
        }
        out
    }
}

//! Storage hangs: tasks stuck in the kernel on a mount whose server, daemon or
//! disk stopped answering. Pure: fed one [`BlockedTasks`] per sweep.
//!
//! One finding per mount (tasks whose mount is unknown share one finding):
//! active when the first sweep shows tasks blocked on it past the threshold,
//! updated at most every `update_every_ms` while it lasts (with the tasks'
//! growing blocked-for times), resolved on the first sweep that shows no task
//! blocked on it any more, with the hang's duration.
use std::collections::{BTreeMap, BTreeSet};

use super::{Book, Detector, Urgency};
use crate::model::settings::EngineConfig;
use crate::model::{
    BlockedTask, BlockedTasks, MountRef, Observation, Time, WaitClass,
    finding::{
        Cause, Confidence, Detail, Evidence, Finding, FindingId, FindingStatus, Remedy,
        RemedyAction, Report,
        storage::{AffectedContainer, BlockedProcess, StorageDetail},
    },
    pod::PodRef,
};

const MAX_TASKS: usize = 20;
const MAX_EVIDENCE: usize = 8;
/// Key of the group of tasks whose mount could not be resolved.
const UNKNOWN: &str = "unknown";

/// Stateless but for its configuration: each sweep is a full picture, and
/// the findings themselves live in the engine's [`Book`].
pub struct StorageHang {}

fn key(t: &BlockedTask) -> String {
    t.mount
        .as_ref()
        .map(|m| m.mount_point.clone())
        .unwrap_or_else(|| UNKNOWN.to_owned())
}

const RUNTIMES: [&str; 8] = [
    "kubelet",
    "dockerd",
    "containerd",
    "containerd-shim",
    "runc",
    "crun",
    "crio",
    "conmon",
];

fn runtime_rank(comm: &str) -> usize {
    RUNTIMES
        .iter()
        .position(|r| comm.starts_with(r))
        .unwrap_or(RUNTIMES.len())
}

fn remedy(wait: WaitClass, mount: Option<&MountRef>) -> Remedy {
    let actions = match (wait, mount) {
        (WaitClass::Fuse, Some(m)) => vec![RemedyAction::AbortFuse {
            mount_point: m.mount_point.clone(),
            dev: m.dev.clone(),
        }],
        (WaitClass::Nfs, Some(m)) => vec![RemedyAction::ForceUnmount {
            mount_point: m.mount_point.clone(),
        }],
        _ => Vec::new(),
    };
    Remedy::new(remedy_text(wait, mount), actions)
}

fn remedy_text(wait: WaitClass, mount: Option<&MountRef>) -> String {
    let mp = mount.map(|m| m.mount_point.as_str()).unwrap_or("the mount");
    let src = mount.map(|m| m.source.as_str()).unwrap_or("its source");
    match wait {
        WaitClass::Fuse => {
            let conn = mount
                .and_then(|m| m.dev.split_once(':'))
                .map(|(_, minor)| minor.to_owned())
                .unwrap_or_else(|| "<minor>".into());
            format!(
                "The FUSE daemon serving {mp} ({src}) stopped answering. Restart or fix it; \
                 if it is gone for good, abort the connection (this fails every pending \
                 request and frees even unkillable tasks): mount -t fusectl fusectl \
                 /sys/fs/fuse/connections; echo 1 > /sys/fs/fuse/connections/{conn}/abort; \
                 then umount -l {mp}. Do not stat or ls the mount meanwhile: that blocks too."
            )
        }
        WaitClass::Nfs => format!(
            "The NFS server of {mp} ({src}) is not answering: check the server and the network \
             path to it. Hard mounts retry forever; umount -f -l {mp} releases what can be \
             released, and the pods using it must be rescheduled elsewhere."
        ),
        WaitClass::Block => format!(
            "I/O to the device behind {mp} ({src}) is not completing: check dmesg for I/O \
             errors and resets, the disk's health and the storage path (multipath, iSCSI)."
        ),
        WaitClass::Frozen => format!(
            "The file system on {mp} ({src}) is frozen (fsfreeze, or a snapshot or backup tool \
             that froze it and did not thaw it): every write waits. Find who froze it and let \
             it finish, or thaw it: fsfreeze -u {mp}."
        ),
        WaitClass::Other => format!(
            "Tasks are stuck in uninterruptible sleep on {mp}: check dmesg (hung task \
             reports) and the kernel stacks above for the lock or resource they wait on."
        ),
    }
}

impl Detector for StorageHang {
    fn observe(&mut self, obs: &Observation, book: &mut Book) -> Vec<Report> {
        match obs {
            Observation::BlockedTasks(b) => StorageHang::observe(self, b, book),
            _ => Vec::new(),
        }
    }

    /// Nothing is time-driven: sweeps come every poll interval, also when
    /// empty, and resolve findings.
    fn tick(&mut self, _now: Time, _book: &mut Book) -> Vec<Report> {
        Vec::new()
    }
}

impl StorageHang {
    pub fn new(_cfg: &EngineConfig) -> Self {
        Self {}
    }

    pub fn observe(&mut self, obs: &BlockedTasks, book: &mut Book) -> Vec<Report> {
        let mut groups: BTreeMap<String, Vec<&BlockedTask>> = BTreeMap::new();
        for t in &obs.tasks {
            groups.entry(key(t)).or_default().push(t);
        }
        let mut out = Vec::new();
        for (k, tasks) in &groups {
            let id = FindingId::new(Cause::StorageHang, k.as_str());
            let detail = Self::detail(k, tasks);
            let since = tasks.iter().map(|t| t.since).min().unwrap_or(obs.at);
            let (evidence, urgency) = match book.get(&id) {
                None => {
                    let mut evidence = vec![Evidence {
                        at: since,
                        what: format!(
                            "{} task(s) blocked past {} ms on {k}, first since {}",
                            tasks.len(),
                            obs.threshold_ms,
                            since.rfc3339()
                        ),
                    }];
                    evidence.extend(Self::task_evidence(obs.at, tasks));
                    evidence.truncate(MAX_EVIDENCE);
                    (evidence, Urgency::Now)
                }
                // New tasks blocked on the mount are reported at once (at
                // most once per sweep); growing times only when an update
                // is due.
                Some(f) => {
                    let grew = !blocked_tids(&detail).is_subset(&tids_of(f));
                    let urgency = if grew { Urgency::Now } else { Urgency::WhenDue };
                    (f.evidence.clone(), urgency)
                }
            };
            let finding = Self::finding(id, since, obs.at, evidence, detail, tasks);
            out.extend(
                book.upsert(finding, urgency)
                    .map(|f| Report::Finding(Box::new(f))),
            );
        }
        for id in book.ids(Cause::StorageHang) {
            if groups.contains_key(&id.key) {
                continue;
            }
            let closing = Evidence {
                at: obs.at,
                what: format!("no task blocked on {} any more", id.key),
            };
            let resolved = book.resolve(&id, obs.at, Some(closing), |_, d| {
                format!("storage hang on {} is over after {d:.1} s", id.key)
            });
            out.extend(resolved.map(|f| Report::Finding(Box::new(f))));
        }
        out
    }

    fn task_evidence(at: Time, tasks: &[&BlockedTask]) -> Vec<Evidence> {
        tasks
            .iter()
            .take(4)
            .map(|t| Evidence {
                at,
                what: format!(
                    "{}[{}] tid {} in {}{} for {:.1} s, state {} ({}), stack {}",
                    t.comm,
                    t.pid,
                    t.tid,
                    t.syscall.as_deref().unwrap_or("?"),
                    t.path
                        .as_deref()
                        .map(|p| format!("({p})"))
                        .unwrap_or_default(),
                    t.blocked_for_s,
                    t.state,
                    t.wait.describe(),
                    t.stack
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" < ")
                ),
            })
            .collect()
    }

    fn detail(k: &str, tasks: &[&BlockedTask]) -> StorageDetail {
        let mut sorted: Vec<&BlockedTask> = tasks.to_vec();
        sorted.sort_by(|a, b| {
            b.blocked_for_s
                .total_cmp(&a.blocked_for_s)
                .then(a.tid.cmp(&b.tid))
        });
        let mount = sorted.iter().find_map(|t| t.mount.clone());
        // Dominant wait: the most specific class any task shows.
        let wait = sorted
            .iter()
            .map(|t| t.wait)
            .min()
            .unwrap_or(WaitClass::Other);
        // The most telling stack: one that shows the wait itself.
        let stack = sorted
            .iter()
            .find(|t| t.wait == wait && t.wait_in_stack && !t.stack.is_empty())
            .or_else(|| {
                sorted
                    .iter()
                    .find(|t| t.wait == wait && !t.stack.is_empty())
            })
            .map(|t| t.stack.clone())
            .unwrap_or_default();
        let containers: BTreeSet<AffectedContainer> = sorted
            .iter()
            .filter_map(|t| {
                t.container_id.as_ref().map(|c| AffectedContainer {
                    container_id: c.clone(),
                    pod_uid: t.pod.as_ref().map(|p| p.pod_uid.clone()),
                    container_name: None,
                    pod: None,
                })
            })
            .collect();
        let mut pods: Vec<PodRef> = Vec::new();
        for p in sorted.iter().filter_map(|t| t.pod.as_ref()) {
            if !pods.iter().any(|q| q.pod_uid == p.pod_uid) {
                let mut p = p.clone();
                p.container_id = None;
                pods.push(p);
            }
        }
        let mut processes: Vec<String> = Vec::new();
        for t in &sorted {
            if !processes.contains(&t.comm) {
                processes.push(t.comm.clone());
            }
        }
        processes.sort_by_key(|c| runtime_rank(c));
        StorageDetail {
            mount_point: k.to_owned(),
            fs_type: mount.as_ref().map(|m| m.fs_type.clone()),
            source: mount.as_ref().map(|m| m.source.clone()),
            dev: mount.as_ref().map(|m| m.dev.clone()),
            wait,
            blocked_total: sorted.len(),
            unkillable: sorted.iter().filter(|t| t.killable == Some(false)).count(),
            blocked: sorted
                .iter()
                .take(MAX_TASKS)
                .map(|t| BlockedProcess {
                    comm: t.comm.clone(),
                    pid: t.pid,
                    tid: t.tid,
                    syscall: t.syscall.clone(),
                    path: t.path.clone(),
                    blocked_for_s: t.blocked_for_s,
                    state: t.state.clone(),
                    killable: t.killable,
                    wait: t.wait,
                    container_id: t.container_id.clone(),
                })
                .collect(),
            stack,
            containers: containers.into_iter().collect(),
            pods,
            processes,
        }
    }

    fn finding(
        id: FindingId,
        first_seen: Time,
        at: Time,
        evidence: Vec<Evidence>,
        d: StorageDetail,
        tasks: &[&BlockedTask],
    ) -> Finding {
        let mount = tasks.iter().find_map(|t| t.mount.as_ref());
        let longest = d.blocked.first().map(|b| b.blocked_for_s).unwrap_or(0.0);
        let who: Vec<String> = d
            .blocked
            .iter()
            .take(4)
            .map(|b| {
                format!(
                    "{}[{}] {}",
                    b.comm,
                    b.pid,
                    b.syscall.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let summary = format!(
            "{} task(s) blocked up to {longest:.0} s on {} mount {}{}, {}: {}{}",
            d.blocked_total,
            d.fs_type.as_deref().unwrap_or("an unknown"),
            d.mount_point,
            d.source
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            d.wait.describe(),
            who.join(", "),
            if d.unkillable > 0 {
                format!("; {} cannot be killed", d.unkillable)
            } else {
                String::new()
            }
        );
        // Certain when the kernel stack shows the storage wait itself.
        let confidence = if d.wait == WaitClass::Other || d.mount_point == UNKNOWN {
            Confidence::Likely
        } else {
            Confidence::Certain
        };
        Finding {
            cause: Cause::StorageHang,
            status: FindingStatus::Active,
            id,
            summary,
            confidence,
            first_seen,
            last_seen: at,
            resolved_at: None,
            duration_s: None,
            evidence,
            timeline: Vec::new(),
            concurrent: Vec::new(),
            pleg: None,
            remedy: remedy(d.wait, mount),
            detail: Detail::Storage(d),
        }
    }
}

fn blocked_tids(d: &StorageDetail) -> BTreeSet<u32> {
    d.blocked.iter().map(|b| b.tid).collect()
}

fn tids_of(f: &Finding) -> BTreeSet<u32> {
    match &f.detail {
        Detail::Storage(d) => blocked_tids(d),
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::Harness;

    fn fuse_mount() -> MountRef {
        MountRef {
            mount_point: "/mnt/fuse".into(),
            fs_type: "fuse".into(),
            source: "hangfs".into(),
            dev: "0:39".into(),
            mount_point_in_task: None,
        }
    }

    fn task(tid: u32, comm: &str, at: Time, since: Time, killable: Option<bool>) -> BlockedTask {
        BlockedTask {
            tid,
            pid: tid,
            comm: comm.into(),
            state: "D".into(),
            killable,
            syscall: Some("newfstatat".into()),
            path: Some("/mnt/fuse/hang".into()),
            since,
            blocked_for_s: at.secs_since(since),
            wait: WaitClass::Fuse,
            wait_in_stack: true,
            stack: vec!["request_wait_answer".into(), "fuse_lookup_name".into()],
            mount: Some(fuse_mount()),
            cgroup: Some("/docker/0123456789abcdef0123".into()),
            container_id: Some("0123456789abcdef0123".into()),
            pod: None,
            watched: true,
        }
    }

    fn sweep(at: u64, tasks: Vec<BlockedTask>) -> Observation {
        Observation::BlockedTasks(BlockedTasks {
            at: Time(at),
            threshold_ms: 10_000,
            tasks,
        })
    }

    fn findings(r: Vec<Report>) -> Vec<Finding> {
        r.into_iter()
            .filter_map(|r| match r {
                Report::Finding(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn active_update_resolve_lifecycle() {
        let mut d = Harness::new(StorageHang::new(&EngineConfig::default()));
        assert!(findings(d.observe(&sweep(1_000, vec![]))).is_empty());
        let t0 = Time(1_000);
        let f = findings(d.observe(&sweep(
            11_000,
            vec![
                task(10, "runc", Time(11_000), t0, Some(true)),
                task(20, "dockerd", Time(11_000), Time(2_000), Some(false)),
            ],
        )));
        assert_eq!(f.len(), 1);
        let a = &f[0];
        assert_eq!(a.status, FindingStatus::Active);
        assert_eq!(a.id.to_string(), "storage_hang:/mnt/fuse");
        assert_eq!(a.first_seen, t0);
        assert_eq!(a.confidence, Confidence::Certain);
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["cause"], "storage_hang");
        assert_eq!(json["mount_point"], "/mnt/fuse");
        assert_eq!(json["fs_type"], "fuse");
        assert_eq!(json["unkillable"], 1);
        assert_eq!(json["blocked"][0]["comm"], "runc");
        assert_eq!(json["processes"][0], "dockerd");
        assert_eq!(json["stack"][0], "request_wait_answer");
        assert!(a.remedy.text.contains("/sys/fs/fuse/connections/39/abort"));
        assert!(!d.active().is_empty());

        // Within update_every: silent; after it: an update with the same first_seen.
        assert!(
            findings(d.observe(&sweep(
                12_000,
                vec![task(10, "runc", Time(12_000), t0, Some(true))]
            )))
            .is_empty()
        );
        let u = findings(d.observe(&sweep(
            16_500,
            vec![task(10, "runc", Time(16_500), t0, Some(true))],
        )));
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].status, FindingStatus::Update);
        assert_eq!(u[0].first_seen, t0);

        let r = findings(d.observe(&sweep(20_000, vec![])));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, FindingStatus::Resolved);
        assert_eq!(r[0].duration_s, Some(19.0));
        assert_eq!(r[0].resolved_at, Some(Time(20_000)));
        assert!(d.active().is_empty());
    }

    #[test]
    fn renders_for_a_terminal() {
        let mut d = Harness::new(StorageHang::new(&EngineConfig::default()));
        let f = findings(d.observe(&sweep(
            11_000,
            vec![task(20, "dockerd", Time(11_000), Time(1_000), Some(false))],
        )));
        let text = crate::sinks::terminal::render_finding(&f[0]);
        assert!(text.contains("storage_hang/fuse"), "{text}");
        assert!(
            text.contains("mount:         /mnt/fuse (fuse, hangfs, dev 0:39)"),
            "{text}"
        );
        assert!(
            text.contains("dockerd[20/20] newfstatat(/mnt/fuse/hang) 10.0 s, D, NOT killable"),
            "{text}"
        );
        assert!(text.contains("stack:         request_wait_answer < fuse_lookup_name"));
    }

    #[test]
    fn one_finding_per_mount_and_unknown_group() {
        let mut d = Harness::new(StorageHang::new(&EngineConfig::default()));
        let mut other = task(30, "containerd", Time(20_000), Time(5_000), None);
        other.mount = Some(MountRef {
            mount_point: "/mnt/nfs".into(),
            fs_type: "nfs4".into(),
            source: "srv:/x".into(),
            dev: "0:50".into(),
            mount_point_in_task: None,
        });
        other.wait = WaitClass::Nfs;
        let mut nomount = task(40, "kubelet", Time(20_000), Time(8_000), None);
        nomount.mount = None;
        nomount.wait = WaitClass::Other;
        let f = findings(d.observe(&sweep(
            20_000,
            vec![
                task(10, "runc", Time(20_000), Time(1_000), Some(true)),
                other,
                nomount,
            ],
        )));
        let ids: Vec<String> = f.iter().map(|f| f.id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "storage_hang:/mnt/fuse",
                "storage_hang:/mnt/nfs",
                "storage_hang:unknown"
            ]
        );
        assert_eq!(f[2].confidence, Confidence::Likely);
        assert!(f[1].remedy.text.contains("NFS server"));
        // Only the NFS one clears.
        let r = findings(d.observe(&sweep(
            21_000,
            vec![
                task(10, "runc", Time(21_000), Time(1_000), Some(true)),
                task(40, "kubelet", Time(21_000), Time(8_000), None),
            ],
        )));
        // kubelet now resolves to /mnt/fuse, so both nfs and unknown resolve.
        let resolved: Vec<String> = r
            .iter()
            .filter(|f| f.status == FindingStatus::Resolved)
            .map(|f| f.id.to_string())
            .collect();
        assert_eq!(resolved, ["storage_hang:/mnt/nfs", "storage_hang:unknown"]);
        assert_eq!(d.active().len(), 1);
    }
}

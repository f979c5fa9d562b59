//! Kubernetes pod and container identity from a cgroup path, for both kubelet
//! cgroup drivers and both cgroup versions:
//!
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<container-id>`,
//!   `/kubepods/pod<uid>/<container-id>` (Guaranteed)
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//!   (also `docker-<id>.scope`, `crio-<id>.scope`)
//!
//! The same paths appear under v1 controllers (`/sys/fs/cgroup/pids/kubepods/...`)
//! and in the v2 unified tree.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// The pod's UID with dashes (as the apiserver shows it).
    pub pod_uid: String,
    /// guaranteed, burstable or besteffort.
    pub qos: String,
    /// Full container id when the path reaches a container's cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// docker, containerd, crio, when the systemd driver names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    pub driver: CgroupDriver,
    /// The pod's namespace and name, and the container's name, as the
    /// runtime's relist named them (filled in by the engine when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

impl PodRef {
    /// `namespace/name` once the runtime named the pod, else `uid <uid>`.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => format!("uid {}", self.pod_uid),
        }
    }

    /// The terminal's `pod:` line: the pod, its UID and QoS class, and the
    /// container (by name when known, else a short id).
    pub fn describe(&self) -> String {
        let mut s = match (&self.namespace, &self.name) {
            (Some(_), Some(_)) => format!("{} (uid {}, {})", self.label(), self.pod_uid, self.qos),
            _ => format!("uid {} ({})", self.pod_uid, self.qos),
        };
        match (&self.container_name, &self.container_id) {
            (Some(n), Some(id)) => {
                s.push_str(&format!(" container {n} ({})", &id[..id.len().min(12)]))
            }
            (Some(n), None) => s.push_str(&format!(" container {n}")),
            (None, Some(id)) => s.push_str(&format!(" container {}", &id[..id.len().min(12)])),
            (None, None) => {}
        }
        s
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parse a cgroup path (inside its hierarchy) into the pod it belongs to.
pub fn pod_from_cgroup_path(path: &str) -> Option<PodRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let start = parts
        .iter()
        .position(|p| *p == "kubepods" || *p == "kubepods.slice")?;
    let rest = &parts[start..];
    if rest[0] == "kubepods.slice" {
        return systemd(rest);
    }
    // cgroupfs: kubepods[/qos]/pod<uid>[/<id>]
    let mut i = 1;
    let mut qos = "guaranteed".to_owned();
    if let Some(q) = rest.get(1)
        && (*q == "burstable" || *q == "besteffort")
    {
        qos = (*q).to_owned();
        i = 2;
    }
    let pod_uid = rest.get(i)?.strip_prefix("pod")?.to_owned();
    if pod_uid.is_empty() {
        return None;
    }
    let container_id = rest
        .get(i + 1)
        .filter(|c| is_container_id(c))
        .map(|c| (*c).to_owned());
    Some(PodRef {
        namespace: None,
        name: None,
        container_name: None,
        pod_uid,
        qos,
        container_id,
        runtime: None,
        driver: CgroupDriver::Cgroupfs,
    })
}

fn systemd(rest: &[&str]) -> Option<PodRef> {
    // kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid>.slice[/<runtime>-<id>.scope]
    let pod_slice = rest
        .iter()
        .find(|p| p.contains("-pod") && p.ends_with(".slice"))?;
    let stem = pod_slice
        .strip_suffix(".slice")?
        .strip_prefix("kubepods-")?;
    let (qos, uid) = match stem.split_once("-pod") {
        Some((q, uid)) => (q.to_owned(), uid),
        None => ("guaranteed".to_owned(), stem.strip_prefix("pod")?),
    };
    if uid.is_empty() {
        return None;
    }
    let pos = rest.iter().position(|p| p == pod_slice)?;
    let (runtime, container_id) = match rest.get(pos + 1).and_then(|s| s.strip_suffix(".scope")) {
        Some(scope) => {
            let (rt, id) = scope.rsplit_once('-')?;
            let rt = match rt {
                "cri-containerd" => "containerd",
                "crio" => "crio",
                "docker" => "docker",
                other => other,
            };
            (
                is_container_id(id).then(|| rt.to_owned()),
                is_container_id(id).then(|| id.to_owned()),
            )
        }
        None => (None, None),
    };
    Some(PodRef {
        namespace: None,
        name: None,
        container_name: None,
        pod_uid: uid.replace('_', "-"),
        qos,
        container_id,
        runtime,
        driver: CgroupDriver::Systemd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "472cb4d7-caf0-11ea-ab9d-ac1f6ba4811c";
    const CID: &str = "052b011f5fcc54536223afb2d544344c58e62b96bc836a64140c5e36af004ceb";

    #[test]
    fn cgroupfs_burstable_container() {
        let p = pod_from_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{CID}")).unwrap();
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.qos, "burstable");
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(p.driver, CgroupDriver::Cgroupfs);
    }

    #[test]
    fn cgroupfs_guaranteed_pod_level() {
        let p = pod_from_cgroup_path(&format!("/kubepods/pod{UID}")).unwrap();
        assert_eq!(p.qos, "guaranteed");
        assert_eq!(p.container_id, None);
    }

    #[test]
    fn systemd_driver_containerd_scope() {
        let uid_us = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_us}.slice/cri-containerd-{CID}.scope"
        );
        let p = pod_from_cgroup_path(&path).unwrap();
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.qos, "besteffort");
        assert_eq!(p.runtime.as_deref(), Some("containerd"));
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert_eq!(p.driver, CgroupDriver::Systemd);
    }

    #[test]
    fn systemd_driver_guaranteed_docker() {
        let uid_us = UID.replace('-', "_");
        let p = pod_from_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{uid_us}.slice/docker-{CID}.scope"
        ))
        .unwrap();
        assert_eq!(p.qos, "guaranteed");
        assert_eq!(p.runtime.as_deref(), Some("docker"));
    }

    #[test]
    fn not_a_pod() {
        assert_eq!(pod_from_cgroup_path("/system.slice/docker.service"), None);
        assert_eq!(pod_from_cgroup_path("/kubepods/burstable"), None);
        assert_eq!(pod_from_cgroup_path("/"), None);
        assert_eq!(
            pod_from_cgroup_path("/kubepods.slice/kubepods-burstable.slice"),
            None
        );
    }
}

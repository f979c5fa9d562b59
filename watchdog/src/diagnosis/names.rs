//! Pods and containers by name: the runtime relist's latest
//! [`RuntimeNames`] as a small cache, used to name what a finding only knows
//! by id (a container id or a pod UID from a cgroup path). Pure: the names
//! arrive as an observation, so a kernel finding is never held up by a
//! runtime call, and gets its names in an update when they come later.
use std::collections::HashMap;

use crate::model::{
    finding::{Detail, Finding},
    kubelet::{PodName, RuntimeNames},
    pod::PodRef,
};

/// Containers and pods kept at most (a node runs far fewer).
const MAX_NAMES: usize = 16_384;

#[derive(Default)]
pub struct Names {
    containers: HashMap<String, (String, Option<PodName>)>,
    pods: HashMap<String, PodName>,
}

impl Names {
    /// Replaces the cache with the runtime's current set.
    pub fn update(&mut self, n: &RuntimeNames) {
        self.containers.clear();
        self.pods.clear();
        for c in n.containers.iter().take(MAX_NAMES) {
            if let Some(p) = &c.pod
                && !p.uid.is_empty()
            {
                self.pods.insert(p.uid.clone(), p.clone());
            }
            self.containers
                .insert(c.id.clone(), (c.name.clone(), c.pod.clone()));
        }
    }

    fn pod_ref(&self, r: &mut PodRef) -> bool {
        let (cname, pod) = match r
            .container_id
            .as_ref()
            .and_then(|id| self.containers.get(id))
        {
            Some((n, p)) => (Some(n.clone()).filter(|n| !n.is_empty()), p.clone()),
            None => (None, None),
        };
        let pod = pod.or_else(|| self.pods.get(&r.pod_uid).cloned());
        let before = (
            r.namespace.clone(),
            r.name.clone(),
            r.container_name.clone(),
        );
        if let Some(p) = pod {
            r.namespace = Some(p.namespace);
            r.name = Some(p.name);
        }
        if cname.is_some() {
            r.container_name = cname;
        }
        before
            != (
                r.namespace.clone(),
                r.name.clone(),
                r.container_name.clone(),
            )
    }

    /// Names what the finding knows by id; true when something was added.
    pub fn fill(&self, f: &mut Finding) -> bool {
        if self.containers.is_empty() {
            return false;
        }
        let mut changed = false;
        match &mut f.detail {
            Detail::Storage(d) => {
                for c in &mut d.containers {
                    let before = (c.container_name.clone(), c.pod.clone());
                    if let Some((n, p)) = self.containers.get(&c.container_id) {
                        c.container_name = Some(n.clone()).filter(|n| !n.is_empty());
                        c.pod = p.clone();
                    }
                    if c.pod.is_none()
                        && let Some(uid) = &c.pod_uid
                    {
                        c.pod = self.pods.get(uid).cloned();
                    }
                    changed |= before != (c.container_name.clone(), c.pod.clone());
                }
                for p in &mut d.pods {
                    changed |= self.pod_ref(p);
                }
            }
            Detail::Pid(d) => {
                if let Some(p) = &mut d.pod {
                    let before = p.label();
                    if self.pod_ref(p) {
                        changed = true;
                        // The summary names the pod as it was known.
                        f.summary = f
                            .summary
                            .replace(&format!("[pod {before}]"), &format!("[pod {}]", p.label()));
                    }
                }
            }
            _ => {}
        }
        changed
    }
}

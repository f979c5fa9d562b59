//! Cluster-visible actions on this agent's own Node and on the Pods a
//! finding names. Each undoes only what it did itself:
//!
//! - `cordon` sets `spec.unschedulable` only when it was not set, and marks
//!   it with the `watchdog.io/cordoned-by` annotation in the same write;
//!   `uncordon_if_ours` clears it only when that mark is there (a node a
//!   human or another tool cordoned stays cordoned), and removes the mark.
//! - `taint` adds a NoSchedule taint with the project's own key
//!   (`watchdog.io/remediation`); `untaint` removes that taint and no other.
//! - `escalate` sets the `WatchdogRemediationFailed` node condition (for
//!   NHC / MHC / EKS node repair to act on: watchdog never reboots);
//!   `clear_escalation` sets it False.
//! - `evict_pod` goes through the Eviction API, so PodDisruptionBudgets are
//!   honoured: 429 means "not now" (a PDB refuses), 404 "already gone".
//!   The pod's uid is checked first and sent as a delete precondition, so
//!   a pod re-created under the same name is never hit.
//!
//! Node writes are merge patches carrying `metadata.resourceVersion`: the
//! apiserver refuses them (409) when the node changed since it was read;
//! the action then reads it again and decides again (at most 3 times).
use std::{fmt, time::Duration};

use k8s_openapi::api::core::v1::{Node, Pod, Taint as K8sTaint};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{CORDONED_BY, CallError, ESCALATION_CONDITION, TAINT_KEY, call};
use crate::model::Time;
use crate::model::finding::Cause;

const ATTEMPTS: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cordon {
    /// Set by this call (and marked ours).
    Cordoned,
    /// Already cordoned by watchdog earlier (the mark is there).
    AlreadyOurs,
    /// Cordoned by someone else: left alone, and not ours to undo.
    AlreadyCordoned,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uncordon {
    Uncordoned,
    /// Not marked ours: left as it is (cordoned or not).
    NotOurs,
    /// Our mark was there but someone uncordoned already: the mark removed.
    MarkRemoved,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taint {
    Added,
    AlreadyPresent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untaint {
    Removed,
    Absent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evict {
    /// The Eviction was accepted: the pod is being deleted gracefully.
    Evicted,
    /// 429: a PodDisruptionBudget (or the apiserver) says not now; retry later.
    NotNow(String),
    /// 404: the pod is gone already (success).
    Gone,
    /// A pod of that name exists with another uid (re-created): not touched.
    UidMismatch { found: String },
    /// The apiserver refused it for another reason (e.g. 403, 409, 500).
    Refused(String),
}

impl fmt::Display for Evict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Evicted => write!(f, "evicted"),
            Self::NotNow(why) => write!(f, "not now (429: {why}); retry later"),
            Self::Gone => write!(f, "the pod is gone already"),
            Self::UidMismatch { found } => {
                write!(
                    f,
                    "refused: the pod of that name is another one now (uid {found})"
                )
            }
            Self::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// The actions of the agent on `node`.
pub struct NodeActions {
    client: Client,
    nodes: Api<Node>,
    node: String,
    /// Written into the cordon mark (who and why).
    identity: String,
    timeout: Duration,
}

fn annotations(n: &Node) -> Option<&std::collections::BTreeMap<String, String>> {
    n.metadata.annotations.as_ref()
}

fn unschedulable(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn taints(n: &Node) -> Vec<K8sTaint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn is_ours(t: &K8sTaint) -> bool {
    t.key == TAINT_KEY && t.effect == "NoSchedule"
}

impl NodeActions {
    /// `identity`: the agent's holder identity (or its node name).
    pub fn new(client: Client, node: &str, identity: &str, timeout: Duration) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            client,
            node: node.into(),
            identity: identity.into(),
            timeout,
        }
    }

    async fn get(&self) -> Result<Node, CallError> {
        call(
            self.timeout,
            format!("get node {}", self.node),
            self.nodes.get(&self.node),
        )
        .await
    }

    /// A merge patch with the node's resourceVersion as precondition;
    /// Ok(false) when the node changed meanwhile (409).
    async fn patch(
        &self,
        what: &str,
        rv: Option<String>,
        mut body: Value,
    ) -> Result<bool, CallError> {
        body["metadata"]["resourceVersion"] = json!(rv);
        let pp = PatchParams::default();
        match call(
            self.timeout,
            format!("{what} node {}", self.node),
            self.nodes.patch(&self.node, &pp, &Patch::Merge(&body)),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn conflict(&self, what: &str) -> CallError {
        CallError::Status {
            what: format!("{what} node {}", self.node),
            code: 409,
            reason: "Conflict".into(),
            message: format!("the node kept changing ({ATTEMPTS} attempts)"),
        }
    }

    /// Cordon the node unless it is cordoned already; mark it ours.
    pub async fn cordon(&self, why: &str) -> Result<Cordon, CallError> {
        for _ in 0..ATTEMPTS {
            let n = self.get().await?;
            if unschedulable(&n) {
                return Ok(
                    if annotations(&n).is_some_and(|a| a.contains_key(CORDONED_BY)) {
                        Cordon::AlreadyOurs
                    } else {
                        Cordon::AlreadyCordoned
                    },
                );
            }
            let mark = format!("{}: {why}", self.identity);
            let body = json!({"metadata": {"annotations": {CORDONED_BY: mark}},
                              "spec": {"unschedulable": true}});
            if self
                .patch("cordon", n.metadata.resource_version, body)
                .await?
            {
                return Ok(Cordon::Cordoned);
            }
        }
        Err(self.conflict("cordon"))
    }

    /// Uncordon the node only if watchdog cordoned it (its mark is there).
    pub async fn uncordon_if_ours(&self) -> Result<Uncordon, CallError> {
        for _ in 0..ATTEMPTS {
            let n = self.get().await?;
            if !annotations(&n).is_some_and(|a| a.contains_key(CORDONED_BY)) {
                return Ok(Uncordon::NotOurs);
            }
            let was = unschedulable(&n);
            let mut body = json!({"metadata": {"annotations": {CORDONED_BY: null}}});
            if was {
                body["spec"] = json!({"unschedulable": null});
            }
            if self
                .patch("uncordon", n.metadata.resource_version, body)
                .await?
            {
                return Ok(if was {
                    Uncordon::Uncordoned
                } else {
                    Uncordon::MarkRemoved
                });
            }
        }
        Err(self.conflict("uncordon"))
    }

    /// Add the NoSchedule taint `watchdog.io/remediation=<cause>`.
    pub async fn taint(&self, cause: Cause) -> Result<Taint, CallError> {
        for _ in 0..ATTEMPTS {
            let n = self.get().await?;
            let mut list = taints(&n);
            if list.iter().any(is_ours) {
                return Ok(Taint::AlreadyPresent);
            }
            list.push(K8sTaint {
                key: TAINT_KEY.into(),
                value: Some(cause.name().into()),
                effect: "NoSchedule".into(),
                time_added: None,
            });
            // A merge patch replaces the list whole: the precondition makes
            // sure it is the list just read, others' taints included.
            let body = json!({"spec": {"taints": list}});
            if self
                .patch("taint", n.metadata.resource_version, body)
                .await?
            {
                return Ok(Taint::Added);
            }
        }
        Err(self.conflict("taint"))
    }

    /// Remove watchdog's taint; every other taint stays.
    pub async fn untaint(&self) -> Result<Untaint, CallError> {
        for _ in 0..ATTEMPTS {
            let n = self.get().await?;
            let list = taints(&n);
            if !list.iter().any(is_ours) {
                return Ok(Untaint::Absent);
            }
            let rest: Vec<K8sTaint> = list.into_iter().filter(|t| !is_ours(t)).collect();
            let body = json!({"spec": {"taints": rest}});
            if self
                .patch("untaint", n.metadata.resource_version, body)
                .await?
            {
                return Ok(Untaint::Removed);
            }
        }
        Err(self.conflict("untaint"))
    }

    async fn set_condition(
        &self,
        status: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), CallError> {
        let now = humantime::format_rfc3339_seconds(Time::now().to_system()).to_string();
        // Strategic merge on status.conditions merges by type: the other
        // conditions (kubelet's, the agent's per cause) are untouched.
        let body = json!({"status": {"conditions": [{
            "type": ESCALATION_CONDITION,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": crate::sinks::kubernetes::conditions::truncate(message, 1024),
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        call(
            self.timeout,
            format!("escalate on node {}", self.node),
            self.nodes.patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(&body),
            ),
        )
        .await
        .map(|_| ())
    }

    /// Set `WatchdogRemediationFailed=True` (reason e.g.
    /// `PidExhaustionUnremedied`): for NHC / MHC / EKS repair to act on.
    pub async fn escalate(&self, cause: Cause, message: &str) -> Result<(), CallError> {
        let reason = format!(
            "{}Unremedied",
            crate::sinks::kubernetes::events::pascal(cause.name())
        );
        self.set_condition(true, &reason, message).await
    }

    /// Set the escalation condition False (the fault resolved).
    pub async fn clear_escalation(&self, message: &str) -> Result<(), CallError> {
        self.set_condition(false, "Remedied", message).await
    }

    /// Evict `namespace/name` through the Eviction API if it is still the
    /// pod `uid`.
    pub async fn evict_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Evict, CallError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("pod {namespace}/{name}");
        match call(self.timeout, format!("get {what}"), pods.get(name)).await {
            Err(e) if e.code() == Some(404) => return Ok(Evict::Gone),
            Err(e) => return Err(e),
            Ok(p) => {
                let found = p.metadata.uid.unwrap_or_default();
                if found != uid {
                    return Ok(Evict::UidMismatch { found });
                }
            }
        }
        // kube's `Api::evict` names the body's field `delete_options`, which
        // the apiserver does not know: the uid precondition would be lost.
        // The Eviction is posted as the API defines it.
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": uid}},
        });
        let req = http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{name}/eviction"
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).expect("JSON"))
        .map_err(|e| CallError::Transport {
            what: format!("evict {what}"),
            message: e.to_string(),
        })?;
        match call(
            self.timeout,
            format!("evict {what}"),
            self.client.request::<Value>(req),
        )
        .await
        {
            Ok(_) => Ok(Evict::Evicted),
            Err(CallError::Status {
                code: 429, message, ..
            }) => Ok(Evict::NotNow(message)),
            Err(CallError::Status { code: 404, .. }) => Ok(Evict::Gone),
            // The uid precondition failed: re-created between the check and now.
            Err(CallError::Status {
                code: 409, message, ..
            }) if message.contains("UID") => Ok(Evict::UidMismatch { found: message }),
            Err(CallError::Status {
                code,
                reason,
                message,
                ..
            }) => Ok(Evict::Refused(format!("HTTP {code} {reason}: {message}"))),
            Err(e) => Err(e),
        }
    }
}

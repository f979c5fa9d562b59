//! The cluster budget's apiserver side: [`ClusterOps`] over the Lease
//! semaphore, the breaker and the node actions of this module, for
//! [`crate::remediation::coordinator::ClusterBudget`]'s driver.
use kube::Client;

use super::breaker::{self, Breaker, BreakerConfig};
use super::lease::{self, Intent, Renew, Semaphore};
use super::node::{Cordon, Evict, NodeActions, Taint, Uncordon, Untaint};
use crate::model::finding::{Cause, RemedyAction};
use crate::remediation::coordinator::{Acquire, ClusterAction, ClusterOps};

pub struct KubeOps {
    client: Client,
    node: String,
    semaphore: Semaphore,
    actions: NodeActions,
    breaker: BreakerConfig,
}

impl KubeOps {
    pub fn new(
        client: Client,
        node: &str,
        semaphore: Semaphore,
        actions: NodeActions,
        breaker: BreakerConfig,
    ) -> Self {
        Self {
            client,
            node: node.to_string(),
            semaphore,
            actions,
            breaker,
        }
    }
}

impl ClusterOps for KubeOps {
    async fn acquire(&mut self, why: &str) -> Acquire {
        let intent = Intent {
            finding: why.to_string(),
            cause: why.to_string(),
            action: "remediation".into(),
            target: format!("node {}", self.node),
        };
        let got = self.semaphore.acquire(&intent).await;
        let text = got.to_string();
        match got {
            lease::Acquire::Held(_) => Acquire::Held(text),
            lease::Acquire::Full { .. } | lease::Acquire::RateLimited { .. } => Acquire::Busy(text),
            lease::Acquire::Unreachable(_) => Acquire::Unreachable(text),
        }
    }

    async fn renew(&mut self) -> Result<(), String> {
        match self.semaphore.renew().await {
            Renew::Renewed { .. } => Ok(()),
            // Not renewed this time, still valid: keep it (the next pass
            // renews); past its validity nothing cluster-visible starts.
            Renew::Unreachable(why) if self.semaphore.may_act() => {
                tracing::warn!("remediation slot renewal failed, still valid: {why}");
                Ok(())
            }
            Renew::Unreachable(why) => Err(format!("not renewed in time: {why}")),
            Renew::Lost(why) => Err(why),
            Renew::NotHeld => Err("no slot held".into()),
        }
    }

    async fn release(&mut self) -> Result<(), String> {
        self.semaphore.release().await.map_err(|e| e.to_string())
    }

    async fn breaker(&mut self, cause: Cause) -> Result<Option<String>, String> {
        match breaker::check(self.client.clone(), cause, &self.breaker).await {
            Breaker::Closed { .. } => Ok(None),
            b @ Breaker::Open { .. } => {
                let text = b.to_string();
                Ok(Some(
                    text.strip_prefix("breaker open: ")
                        .unwrap_or(&text)
                        .to_string(),
                ))
            }
            Breaker::Unreachable(why) => Err(format!("apiserver unreachable ({why})")),
        }
    }

    async fn act(&mut self, a: &ClusterAction) -> (Result<String, String>, bool) {
        if !a.undo && !self.semaphore.may_act() {
            return (
                Err("the cluster slot is no longer valid (not renewed in time): not sent".into()),
                false,
            );
        }
        let why = format!("{} ({})", a.cause.name(), a.finding);
        let e = |e: super::CallError| e.to_string();
        let r = match (&a.action, a.undo) {
            (RemedyAction::Cordon, false) => {
                self.actions.cordon(&why).await.map_err(e).map(|c| match c {
                    Cordon::Cordoned => "cordoned (marked as watchdog's)".to_string(),
                    Cordon::AlreadyOurs => "already cordoned by watchdog".into(),
                    Cordon::AlreadyCordoned => {
                        "already cordoned by someone else: left alone, not watchdog's to undo"
                            .into()
                    }
                })
            }
            (RemedyAction::Cordon, true) => {
                self.actions
                    .uncordon_if_ours()
                    .await
                    .map_err(e)
                    .map(|u| match u {
                        Uncordon::Uncordoned => "uncordoned (watchdog's cordon)".to_string(),
                        Uncordon::NotOurs => "left cordoned: not watchdog's cordon".into(),
                        Uncordon::MarkRemoved => {
                            "someone uncordoned it already; watchdog's mark removed".into()
                        }
                    })
            }
            (RemedyAction::Taint, false) => {
                self.actions
                    .taint(a.cause)
                    .await
                    .map_err(e)
                    .map(|t| match t {
                        Taint::Added => format!("taint {}:NoSchedule added", super::TAINT_KEY),
                        Taint::AlreadyPresent => {
                            format!("taint {}:NoSchedule already there", super::TAINT_KEY)
                        }
                    })
            }
            (RemedyAction::Taint, true) => {
                self.actions.untaint().await.map_err(e).map(|t| match t {
                    Untaint::Removed => format!("taint {} removed", super::TAINT_KEY),
                    Untaint::Absent => format!("taint {} was already gone", super::TAINT_KEY),
                })
            }
            (RemedyAction::Escalate, false) => {
                let msg = format!(
                    "watchdog's remedies did not resolve {} ({}); a node-repair controller may act",
                    a.cause.name(),
                    a.finding
                );
                self.actions
                    .escalate(a.cause, &msg)
                    .await
                    .map_err(e)
                    .map(|()| format!("condition {} set True", super::ESCALATION_CONDITION))
            }
            (RemedyAction::Escalate, true) => {
                let msg = format!("{} resolved", a.finding);
                self.actions
                    .clear_escalation(&msg)
                    .await
                    .map_err(e)
                    .map(|()| format!("condition {} set False", super::ESCALATION_CONDITION))
            }
            (
                RemedyAction::EvictPod {
                    pod_uid,
                    namespace: Some(ns),
                    name: Some(name),
                },
                false,
            ) => match self.actions.evict_pod(ns, name, pod_uid).await {
                Err(err) => Err(err.to_string()),
                Ok(v @ (Evict::Evicted | Evict::Gone)) => Ok(v.to_string()),
                Ok(v @ Evict::NotNow(_)) => return (Err(v.to_string()), true),
                Ok(v) => Err(v.to_string()),
            },
            (other, undo) => Err(format!(
                "{}{} does not run through the apiserver",
                if undo { "undoing " } else { "" },
                other.kind().name()
            )),
        };
        (r, false)
    }
}

/// The cluster budget of the agent on `node`, from `[remediation.cluster]`,
/// and its driver (to spawn on the agent's runtime).
/// `step_timeout`: the policy's; a finding that has not asked for the
/// budget for two of them (its ladder done, or waiting on something else)
/// holds no slot.
pub fn build(
    client: Client,
    node: &str,
    cfg: &crate::config::ClusterSection,
    call_timeout: std::time::Duration,
    step_timeout: std::time::Duration,
) -> (
    crate::remediation::coordinator::ClusterBudget,
    impl std::future::Future<Output = ()> + Send + use<>,
) {
    let namespace = cfg
        .lease_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "kube-system".into());
    let lease = super::LeaseConfig {
        namespace,
        max_nodes: cfg.max_nodes,
        max_percent: cfg.max_percent,
        node_selector: cfg.pool_selector.clone(),
        lease_duration: cfg.lease_duration,
        rate_max: cfg.rate_max,
        rate_window: cfg.rate_window,
        timeout: call_timeout,
        ..super::LeaseConfig::new("")
    };
    let semaphore = Semaphore::new(client.clone(), node, lease.clone());
    let actions = NodeActions::new(client.clone(), node, semaphore.identity(), call_timeout);
    let breaker = BreakerConfig {
        max_nodes: Some(cfg.breaker_nodes),
        max_percent: Some(cfg.breaker_percent),
        node_selector: cfg.pool_selector.clone(),
        timeout: call_timeout,
    };
    let ops = KubeOps::new(client, node, semaphore, actions, breaker);
    crate::remediation::coordinator::ClusterBudget::new(
        ops,
        crate::remediation::coordinator::ClusterPolicy {
            release_delay: cfg.release_delay,
            renew_every: lease.lease_duration / 3,
            want_expires: step_timeout * 2,
            local_when_apiserver_down: cfg.local_when_apiserver_down,
            local_max_per_hour: cfg.local_max_per_hour,
        },
    )
}

/// The node's labels (for the policy's node-label exclusions).
pub async fn node_labels(
    client: Client,
    node: &str,
    timeout: std::time::Duration,
) -> Result<std::collections::BTreeMap<String, String>, super::CallError> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let n = super::call(timeout, format!("get node {node}"), nodes.get(node)).await?;
    Ok(n.metadata.labels.unwrap_or_default())
}

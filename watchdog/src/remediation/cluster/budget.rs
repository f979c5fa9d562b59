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
    /// `[remediation] exclude_node_labels`, re-read on the Node each pass.
    exclude_labels: Vec<String>,
    timeout: std::time::Duration,
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
            exclude_labels: Vec::new(),
            timeout: std::time::Duration::from_secs(10),
            semaphore,
            actions,
            breaker,
        }
    }
}

impl KubeOps {
    /// Re-read the node's labels against these exclusions at every pass.
    pub fn with_exclusions(mut self, labels: Vec<String>, timeout: std::time::Duration) -> Self {
        self.exclude_labels = labels;
        self.timeout = timeout;
        self
    }
}

impl ClusterOps for KubeOps {
    async fn excluded(&mut self) -> Result<Option<String>, String> {
        if self.exclude_labels.is_empty() {
            return Ok(None);
        }
        let labels = node_labels(self.client.clone(), &self.node, self.timeout)
            .await
            .map_err(|e| format!("apiserver unreachable ({e})"))?;
        Ok(self
            .exclude_labels
            .iter()
            .find(|sel| crate::remediation::policy::label_matches(&labels, sel))
            .map(|sel| format!("it carries the label {sel}")))
    }

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

    async fn renew(&mut self) -> Result<bool, String> {
        match self.semaphore.renew().await {
            Renew::Renewed { .. } => Ok(true),
            // Not renewed this time, still valid: keep it (the next pass
            // renews); past its validity nothing starts under it.
            Renew::Unreachable(why) if self.semaphore.may_act() => {
                tracing::warn!("remediation slot renewal failed, still valid: {why}");
                Ok(false)
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
            (RemedyAction::Cordon, true) => match self.actions.uncordon_if_ours().await {
                Err(err) => Err(e(err)),
                Ok(Uncordon::Uncordoned) => Ok("uncordoned (watchdog's cordon)".to_string()),
                Ok(Uncordon::NotOurs) => {
                    return (
                        Ok("the node is not cordoned by watchdog: left as it is".into()),
                        true,
                    );
                }
                Ok(Uncordon::MarkRemoved) => {
                    return (
                        Ok("someone uncordoned it already; watchdog's mark removed".into()),
                        true,
                    );
                }
            },
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
            (RemedyAction::Taint, true) => match self.actions.untaint().await {
                Err(err) => Err(e(err)),
                Ok(Untaint::Removed) => Ok(format!("taint {} removed", super::TAINT_KEY)),
                Ok(Untaint::Absent) => {
                    return (
                        Ok(format!("taint {} was already gone", super::TAINT_KEY)),
                        true,
                    );
                }
            },
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
    exclude_labels: &[String],
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
    let ops = KubeOps::new(client, node, semaphore, actions, breaker)
        .with_exclusions(exclude_labels.to_vec(), call_timeout);
    crate::remediation::coordinator::ClusterBudget::new(ops, policy(cfg, step_timeout))
}

fn policy(
    cfg: &crate::config::ClusterSection,
    step_timeout: std::time::Duration,
) -> crate::remediation::coordinator::ClusterPolicy {
    crate::remediation::coordinator::ClusterPolicy {
        lease_valid: cfg.lease_duration,
        breaker_every: std::time::Duration::from_secs(30),
        release_delay: cfg.release_delay,
        renew_every: cfg.lease_duration / 3,
        want_expires: step_timeout * 2,
        local_when_apiserver_down: cfg.local_when_apiserver_down,
        local_max_per_hour: cfg.local_max_per_hour,
    }
}

/// The budget of `run` in enforce when no apiserver could be reached at
/// start: the rules for an unreachable apiserver, never the node's own
/// budget alone (that is for a `trace` by hand).
pub fn unreachable(
    cfg: &crate::config::ClusterSection,
    step_timeout: std::time::Duration,
    why: String,
) -> (
    crate::remediation::coordinator::ClusterBudget,
    impl std::future::Future<Output = ()> + Send + use<>,
) {
    crate::remediation::coordinator::ClusterBudget::new(NoApiserver(why), policy(cfg, step_timeout))
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

/// What an earlier agent of watchdog left on `node` (its cordon, its
/// taint, its escalation condition True), for the remediator to undo unless
/// a finding of this agent claims it: a restart never strands them.
pub async fn inherited(
    client: Client,
    node: &str,
    timeout: std::time::Duration,
) -> Result<Vec<(RemedyAction, Cause)>, super::CallError> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let n = super::call(timeout, format!("get node {node}"), nodes.get(node)).await?;
    let cause_in = |text: &str| {
        let t = text.to_ascii_lowercase().replace('_', "");
        Cause::ALL
            .into_iter()
            .find(|c| t.contains(&c.name().replace('_', "")))
            .unwrap_or(Cause::RuntimeUnresponsive)
    };
    let mut found = Vec::new();
    if let Some(mark) = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::CORDONED_BY))
    {
        found.push((RemedyAction::Cordon, cause_in(mark)));
    }
    let spec = n.spec.as_ref();
    if let Some(t) = spec
        .and_then(|s| s.taints.as_ref())
        .and_then(|t| t.iter().find(|t| t.key == super::TAINT_KEY))
    {
        found.push((
            RemedyAction::Taint,
            cause_in(t.value.as_deref().unwrap_or("")),
        ));
    }
    if let Some(c) = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == super::ESCALATION_CONDITION && c.status == "True")
        })
    {
        found.push((
            RemedyAction::Escalate,
            cause_in(c.reason.as_deref().unwrap_or("")),
        ));
    }
    Ok(found)
}

/// The apiserver side when `run` could not reach one at all: every answer
/// is "unreachable", so the budget applies its rules for an unreachable
/// apiserver (nothing cluster-visible; node-local actions only when
/// `local_when_apiserver_down` allows).
pub struct NoApiserver(pub String);

impl ClusterOps for NoApiserver {
    async fn excluded(&mut self) -> Result<Option<String>, String> {
        Err(self.0.clone())
    }
    async fn acquire(&mut self, _: &str) -> Acquire {
        Acquire::Unreachable(self.0.clone())
    }
    async fn renew(&mut self) -> Result<bool, String> {
        Err(self.0.clone())
    }
    async fn release(&mut self) -> Result<(), String> {
        Ok(())
    }
    async fn breaker(&mut self, _: Cause) -> Result<Option<String>, String> {
        Err(self.0.clone())
    }
    async fn act(&mut self, _: &ClusterAction) -> (Result<String, String>, bool) {
        (Err(self.0.clone()), false)
    }
}

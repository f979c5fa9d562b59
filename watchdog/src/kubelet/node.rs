//! This node's Ready condition, watched through the apiserver (a watch on
//! nodes with a field selector on the node's own name), with its PLEG message
//! parsed. Sends a [`NodeReady`] on start and on every change of status,
//! reason or message.
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

use super::{ObsSender, Reporter, log::parse_pleg_message};
use crate::model::{
    Observation,
    kubelet::{NodeReady, SourceKind, SourceState},
    time::Time,
};

/// The apiserver ends a watch after this long (watcher's default 290 s); a
/// read that waits longer than [`READ_TIMEOUT`] is a stalled connection.
pub const READ_TIMEOUT: Duration = Duration::from_secs(330);

/// The Ready condition of `node`, as an observation at `at`.
pub fn ready_of(node: &Node, at: Time) -> NodeReady {
    let name = node.metadata.name.clone().unwrap_or_default();
    let cond = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    NodeReady {
        at,
        node: name,
        status: cond.map(|c| c.status.clone()),
        reason: cond.and_then(|c| c.reason.clone()),
        message: cond.and_then(|c| c.message.clone()),
        last_transition: cond
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| Time::from_millis(t.0.as_millisecond().max(0) as u64)),
        pleg: cond
            .and_then(|c| c.message.as_deref())
            .and_then(parse_pleg_message),
    }
}

/// An in-cluster client for the apiserver (service-account token and CA; an
/// IP literal from `KUBERNETES_SERVICE_HOST`, so no DNS lookup on the blocking
/// pool). No kubeconfig: its exec plugins would spawn processes.
pub fn in_cluster_client() -> Result<kube::Client, String> {
    let mut cfg =
        kube::Config::incluster_env().map_err(|e| format!("no in-cluster config: {e}"))?;
    cfg.read_timeout = Some(READ_TIMEOUT);
    kube::Client::try_from(cfg).map_err(|e| format!("apiserver client: {e}"))
}

fn same(a: &NodeReady, b: &NodeReady) -> bool {
    a.status == b.status && a.reason == b.reason && a.message == b.message
}

/// Watch `node`'s Ready condition until the receiver is gone. `client` None
/// (or no node name): report the source as disabled and return.
pub async fn run(client: Result<kube::Client, String>, node: Option<String>, out: ObsSender) {
    let Some(node) = node else {
        Reporter::new(out, SourceKind::NodeWatch, "").status(
            SourceState::Disabled,
            "no node name (--node-name, $NODE_NAME or the hostname)",
        );
        return;
    };
    let mut rep = Reporter::new(out, SourceKind::NodeWatch, node.clone());
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            rep.status(SourceState::Disabled, e);
            return;
        }
    };
    let api: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let stream = watcher(api, cfg).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut last: Option<NodeReady> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                rep.status(SourceState::Available, "watching");
                let r = ready_of(&n, Time::now());
                if last.as_ref().is_some_and(|l| same(l, &r)) {
                    continue;
                }
                last = Some(r.clone());
                if !rep.send(Observation::NodeReady(r)) {
                    return;
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                rep.force_status(SourceState::Unavailable, format!("node {node} was deleted"));
                last = None;
            }
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => {
                rep.status(SourceState::Available, "watching");
                if last.is_none() {
                    rep.force_status(
                        SourceState::Unavailable,
                        format!("no node named {node} (fieldSelector metadata.name={node})"),
                    );
                }
            }
            Err(e) => {
                rep.status(SourceState::Unavailable, super::metrics::error_chain(&e));
            }
        }
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

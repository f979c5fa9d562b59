//! This node's Ready condition, watched through the apiserver (a watch on
//! nodes with a field selector on the node's own name), with its PLEG message
//! parsed. Sends a [`NodeReady`] on start and on every change of status,
//! reason or message.
use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

use super::log::parse_pleg_message;
use crate::{
    model::{
        Observation,
        kubelet::{NodeReady, SourceKind, SourceState},
        time::Time,
    },
    sources::{Call, ObsSender, Source, StartError, Step, Supervision, supervise},
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

/// The node watch as a supervised source: one call is one watch event.
pub struct NodeWatch {
    client: Result<kube::Client, String>,
    node: Option<String>,
    /// The last Ready condition sent (repeats are not sent).
    last: Option<NodeReady>,
}

type WatchStream = BoxStream<'static, Result<watcher::Event<Node>, watcher::Error>>;

impl NodeWatch {
    pub fn new(client: Result<kube::Client, String>, node: Option<String>) -> Self {
        Self {
            client,
            node,
            last: None,
        }
    }
}

impl Source for NodeWatch {
    type Client = WatchStream;

    fn supervision(&self) -> Supervision {
        Supervision {
            kind: SourceKind::NodeWatch,
            target: self.node.clone().unwrap_or_default(),
            // A watch may rightly be quiet for hours; each of its reads is cut
            // by the client's READ_TIMEOUT, and the watcher backs off itself.
            deadline: None,
            interval: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    async fn start(&mut self) -> Result<WatchStream, StartError> {
        let Some(node) = &self.node else {
            return Err(StartError::Disabled(
                "no node name (--node-name, $NODE_NAME or the hostname)".into(),
            ));
        };
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(StartError::Disabled(e.clone())),
        };
        let api: Api<Node> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
        Ok(watcher(api, cfg).default_backoff().boxed())
    }

    async fn call(&mut self, stream: &mut WatchStream) -> Call {
        let node = self.node.as_deref().unwrap_or_default();
        let Some(ev) = stream.next().await else {
            return Call::Ended;
        };
        match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let step = Step::available("watching");
                let r = ready_of(&n, Time::now());
                if self.last.as_ref().is_some_and(|l| same(l, &r)) {
                    return Call::Answered(step);
                }
                self.last = Some(r.clone());
                Call::Answered(step.with(Observation::NodeReady(r)))
            }
            Ok(watcher::Event::Delete(_)) => {
                self.last = None;
                Call::Answered(Step {
                    news: Some((SourceState::Unavailable, format!("node {node} was deleted"))),
                    ..Step::default()
                })
            }
            Ok(watcher::Event::Init) => Call::Answered(Step::default()),
            Ok(watcher::Event::InitDone) => {
                let mut step = Step::available("watching");
                if self.last.is_none() {
                    step.news = Some((
                        SourceState::Unavailable,
                        format!("no node named {node} (fieldSelector metadata.name={node})"),
                    ));
                }
                Call::Answered(step)
            }
            Err(e) => Call::Failed(super::metrics::error_chain(&e)),
        }
    }
}

/// Watch `node`'s Ready condition until the receiver is gone. `client` Err
/// (or no node name): report the source as disabled and return.
pub async fn run(client: Result<kube::Client, String>, node: Option<String>, out: ObsSender) {
    supervise(NodeWatch::new(client, node), out).await
}

/// This node's name: `$NODE_NAME` (downward API), else the hostname.
pub fn default_node_name() -> Option<String> {
    if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    hostname()
}

/// This machine's hostname (`kernel.hostname`).
pub fn hostname() -> Option<String> {
    let proc = crate::context::procfs::ProcReader::new(std::path::Path::new("/"));
    proc.read_trim(&proc.rooted(crate::paths::HOSTNAME))
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

//! The breaker: no remediation at all while too many nodes show the same
//! cause. A fault on many nodes at once (a bad kernel, a storage backend
//! down, a bad config rolled out) is not a node's to fix, and acting on
//! every node would make it worse (draino cordoned every node after a bad
//! config). A node shows a cause when the condition the agent sets for it
//! (`sinks/kubernetes/conditions.rs`: `PIDExhausted`, `StorageHung`,
//! `SystemdHung`, `RuntimeUnresponsive`) is True. This node counts too.
use std::{fmt, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use super::list_nodes;
use crate::model::finding::Cause;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Open when more than this many nodes show the cause (None: no limit).
    pub max_nodes: Option<u32>,
    /// Open when more than this percent of the pool shows it (None: no limit).
    pub max_percent: Option<u32>,
    /// The pool: Nodes matching this label selector (all when None).
    pub node_selector: Option<String>,
    /// Per apiserver call.
    pub timeout: Duration,
}

impl Default for BreakerConfig {
    /// More than 3 nodes or more than 10 % of the pool.
    fn default() -> Self {
        Self {
            max_nodes: Some(3),
            max_percent: Some(10),
            node_selector: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// Remediation may go on.
    Closed {
        cause: Cause,
        affected: usize,
        pool: usize,
    },
    /// Too many nodes show the cause: nothing runs.
    Open {
        cause: Cause,
        affected: usize,
        pool: usize,
        limit: String,
    },
    /// The nodes could not be listed: no cluster-visible action.
    Unreachable(String),
}

impl Breaker {
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed { .. })
    }
}

impl fmt::Display for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed {
                cause,
                affected,
                pool,
            } => write!(
                f,
                "breaker closed: {affected} of {pool} nodes show {}",
                cause.condition_type()
            ),
            Self::Open {
                cause,
                affected,
                pool,
                limit,
            } => write!(
                f,
                "breaker open: {affected} of {pool} nodes show {} ({limit}); no remediation for {}",
                cause.condition_type(),
                cause.name()
            ),
            Self::Unreachable(why) => write!(f, "breaker: apiserver unreachable ({why})"),
        }
    }
}

/// Whether `node` has `cause`'s condition True.
pub fn shows(node: &Node, cause: Cause) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == cause.condition_type() && c.status == "True")
        })
}

/// The verdict over a list of the pool's nodes (pure).
pub fn judge(nodes: &[Node], cause: Cause, cfg: &BreakerConfig) -> Breaker {
    let pool = nodes.len();
    let affected = nodes.iter().filter(|n| shows(n, cause)).count();
    let mut limit = None;
    if let Some(max) = cfg.max_nodes
        && affected > max as usize
    {
        limit = Some(format!("more than {max} nodes"));
    }
    if let Some(pct) = cfg.max_percent
        && affected as u64 * 100 > u64::from(pct) * pool as u64
    {
        limit.get_or_insert(format!("more than {pct} % of the pool"));
    }
    match limit {
        Some(limit) => Breaker::Open {
            cause,
            affected,
            pool,
            limit,
        },
        None => Breaker::Closed {
            cause,
            affected,
            pool,
        },
    }
}

/// List the pool (each page under the timeout) and judge it.
pub async fn check(client: Client, cause: Cause, cfg: &BreakerConfig) -> Breaker {
    let api: Api<Node> = Api::all(client);
    match list_nodes(&api, cfg.node_selector.as_deref(), cfg.timeout).await {
        Ok(nodes) => judge(&nodes, cause, cfg),
        Err(e) => Breaker::Unreachable(e.to_string()),
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    fn node(conds: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(
                    conds
                        .iter()
                        .map(|(t, s)| NodeCondition {
                            type_: (*t).into(),
                            status: (*s).into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_only_its_cause_true() {
        let cfg = BreakerConfig {
            max_nodes: Some(2),
            max_percent: None,
            ..Default::default()
        };
        let mut nodes = vec![
            node(&[("PIDExhausted", "True")]),
            node(&[("PIDExhausted", "True"), ("Ready", "True")]),
            node(&[("PIDExhausted", "False")]),
            node(&[("StorageHung", "True")]),
            node(&[]),
        ];
        let v = judge(&nodes, Cause::PidExhaustion, &cfg);
        assert!(v.is_closed(), "{v}");
        assert_eq!(
            v.to_string(),
            "breaker closed: 2 of 5 nodes show PIDExhausted"
        );
        nodes.push(node(&[("PIDExhausted", "True")]));
        let v = judge(&nodes, Cause::PidExhaustion, &cfg);
        assert!(!v.is_closed());
        assert!(v.to_string().contains("more than 2 nodes"), "{v}");
        // Another cause is not affected.
        assert!(judge(&nodes, Cause::StorageHang, &cfg).is_closed());
    }

    #[test]
    fn percent_of_the_pool() {
        let cfg = BreakerConfig {
            max_nodes: None,
            max_percent: Some(10),
            ..Default::default()
        };
        let mut nodes: Vec<Node> = (0..20).map(|_| node(&[])).collect();
        nodes[0] = node(&[("SystemdHung", "True")]);
        nodes[1] = node(&[("SystemdHung", "True")]);
        // 2 of 20 = 10 %: not above.
        assert!(judge(&nodes, Cause::SystemdHang, &cfg).is_closed());
        nodes[2] = node(&[("SystemdHung", "True")]);
        let v = judge(&nodes, Cause::SystemdHang, &cfg);
        assert!(v.to_string().contains("more than 10 % of the pool"), "{v}");
    }
}

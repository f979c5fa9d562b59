//! `runtime_unresponsive` details: how stale PLEG is and which calls hang.
use serde::Serialize;

use super::pleg::PlegSource;
use crate::model::kubelet::HungCall;

#[derive(Clone, Debug, Serialize)]
pub struct RuntimeDetail {
    /// Seconds since PLEG's last successful relist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_since_relist: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PlegSource>,
    pub threshold_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_unhealthy_in_s: Option<f64>,
    pub kubelet_reports_unhealthy: bool,
    /// The runtime the agent's relist asks (`containerd`, `docker`) and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_endpoint: Option<String>,
    /// Runtime calls of the agent's relist that have not returned.
    pub hung: Vec<HungCall>,
    /// What kubelet logged about the runtime (deadlines, kill errors).
    pub kubelet_errors: Vec<String>,
}

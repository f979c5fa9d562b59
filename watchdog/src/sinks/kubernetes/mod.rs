//! Kubernetes outputs: node conditions (one per cause) and Events on the
//! Node. The sink side is synchronous and only updates the desired state;
//! the [`Exporter`] task sends it to the apiserver with a timeout per call,
//! retries with backoff while the apiserver is down, and sends the latest
//! state once when it is back.
pub mod conditions;
pub mod events;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::sync::Notify;

use super::{Record, Sink};
use crate::model::Time;
use conditions::{Condition, ConditionManager};
use events::{EventQueue, NodeEvent};

#[derive(Clone, Debug)]
pub struct KubeOptions {
    pub node: String,
    pub conditions: bool,
    pub events: bool,
    /// Per apiserver call.
    pub timeout: Duration,
    /// Conditions are re-sent (heartbeat) at least this often.
    pub resync: Duration,
    pub events_per_minute: u32,
}

struct Shared {
    conditions: ConditionManager,
    events: EventQueue,
}

/// The sink side: findings and warnings update the desired state.
pub struct KubeSink {
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    opts: KubeOptions,
}

impl Sink for KubeSink {
    fn emit(&mut self, record: &Record) {
        let mut s = self.shared.lock().expect("kubernetes state lock");
        match record {
            Record::Finding(f) => {
                if self.opts.conditions {
                    s.conditions.finding(f);
                }
                if self.opts.events {
                    s.events.finding(f, f.bundle.as_ref());
                }
            }
            Record::Warning(w) if self.opts.events => s.events.warning(w),
            Record::Remediation(r) if self.opts.events => s.events.remediation(r),
            Record::Bundle(b) if self.opts.events => s.events.bundle(b),
            _ => return,
        }
        drop(s);
        self.notify.notify_one();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("apiserver call timed out after {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("{what} failed: {source}")]
    Api {
        what: &'static str,
        source: kube::Error,
    },
}

/// Sends the desired state to the apiserver.
pub struct Exporter {
    nodes: Api<Node>,
    recorder: Recorder,
    reference: ObjectReference,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    opts: KubeOptions,
    /// Consecutive failures (0 while the apiserver answers).
    pub failures: u32,
}

/// The sink and its exporter, sharing the desired state; all conditions
/// start False as of `now`.
pub fn kubernetes(client: Client, opts: KubeOptions, now: Time) -> (KubeSink, Exporter) {
    let shared = Arc::new(Mutex::new(Shared {
        conditions: ConditionManager::new(now, opts.resync.as_millis() as u64),
        events: EventQueue::new(opts.events_per_minute),
    }));
    let notify = Arc::new(Notify::new());
    let reporter = Reporter {
        controller: "watchdog".into(),
        instance: Some(format!("watchdog-{}", opts.node)),
    };
    // kubelet's own Node events use the node name as the uid.
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(opts.node.clone()),
        uid: Some(opts.node.clone()),
        ..Default::default()
    };
    (
        KubeSink {
            shared: shared.clone(),
            notify: notify.clone(),
            opts: opts.clone(),
        },
        Exporter {
            nodes: Api::all(client.clone()),
            recorder: Recorder::new(client, reporter),
            reference,
            shared,
            notify,
            opts,
            failures: 0,
        },
    )
}

fn k8s_time(t: Time) -> String {
    humantime::format_rfc3339_seconds(t.to_system()).to_string()
}

fn condition_json(c: &Condition, now: Time) -> serde_json::Value {
    json!({
        "type": c.type_,
        "status": if c.status { "True" } else { "False" },
        "reason": c.reason,
        "message": c.message,
        "lastTransitionTime": k8s_time(c.last_transition),
        "lastHeartbeatTime": k8s_time(now),
    })
}

impl Exporter {
    /// One pass: the conditions if they changed or the heartbeat is due,
    /// then the events the rate limit lets out. Stops at the first failure
    /// (the apiserver is likely down); nothing is lost.
    pub async fn sync_once(&mut self, now: Time) -> Result<(), SyncError> {
        let due = {
            let s = self.shared.lock().expect("kubernetes state lock");
            (self.opts.conditions && s.conditions.due(now)).then(|| s.conditions.snapshot())
        };
        if let Some(conds) = due {
            let body = json!({"status": {"conditions":
                conds.iter().map(|c| condition_json(c, now)).collect::<Vec<_>>()}});
            let (pp, patch) = (PatchParams::default(), Patch::Strategic(&body));
            let call = self.nodes.patch_status(&self.opts.node, &pp, &patch);
            match tokio::time::timeout(self.opts.timeout, call).await {
                Err(_) => return Err(SyncError::Timeout(self.opts.timeout, "node status patch")),
                Ok(Err(source)) => {
                    return Err(SyncError::Api {
                        what: "node status patch",
                        source,
                    });
                }
                Ok(Ok(_)) => self
                    .shared
                    .lock()
                    .expect("kubernetes state lock")
                    .conditions
                    .synced(&conds, now),
            }
        }
        if !self.opts.events {
            return Ok(());
        }
        let mut batch = self
            .shared
            .lock()
            .expect("kubernetes state lock")
            .events
            .take(now);
        while !batch.is_empty() {
            let ev = batch.remove(0);
            let res = self.publish(&ev).await;
            if let Err(e) = res {
                batch.insert(0, ev);
                self.shared
                    .lock()
                    .expect("kubernetes state lock")
                    .events
                    .retry(batch);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn publish(&self, ev: &NodeEvent) -> Result<(), SyncError> {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.clone(),
            note: Some(ev.note.clone()),
            action: ev.action.clone(),
            secondary: None,
        };
        let mut on = vec![(self.reference.clone(), "event")];
        if let Some(p) = &ev.pod {
            on.push((
                ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(p.namespace.clone()),
                    name: Some(p.name.clone()),
                    uid: Some(p.uid.clone()),
                    ..Default::default()
                },
                "pod event",
            ));
        }
        for (i, (reference, what)) in on.into_iter().enumerate() {
            let r = match tokio::time::timeout(
                self.opts.timeout,
                self.recorder.publish(&event, &reference),
            )
            .await
            {
                Err(_) => Err(SyncError::Timeout(self.opts.timeout, what)),
                Ok(Err(source)) => Err(SyncError::Api { what, source }),
                Ok(Ok(())) => Ok(()),
            };
            match r {
                // The Node's Event is what is kept and retried.
                Err(e) if i == 0 => return Err(e),
                // The Pod's is best effort (its namespace may be going away):
                // it never holds the Node's Events back.
                Err(e) => tracing::warn!("{e} (the Node's Event was sent)"),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Events not sent yet (rate limit or outage).
    pub fn pending_events(&self) -> usize {
        self.shared
            .lock()
            .expect("kubernetes state lock")
            .events
            .pending()
    }

    /// Sync on every change and every few seconds (heartbeat, rate-limited
    /// events); back off from 1 s to 30 s while the apiserver fails, and log
    /// only when it goes down and comes back.
    pub async fn run(mut self) {
        loop {
            match self.sync_once(Time::now()).await {
                Ok(()) => {
                    if self.failures > 0 {
                        tracing::warn!(
                            "apiserver reachable again after {} failed attempts; node {} conditions and pending events sent",
                            self.failures,
                            self.opts.node
                        );
                    }
                    self.failures = 0;
                }
                Err(e) => {
                    if self.failures == 0 {
                        tracing::error!(
                            "Kubernetes outputs for node {}: {e}; keeping the latest state and retrying",
                            self.opts.node
                        );
                    }
                    self.failures += 1;
                }
            }
            let wait = if self.failures > 0 {
                Duration::from_secs(1 << self.failures.min(5).saturating_sub(1))
                    .min(Duration::from_secs(30))
            } else {
                Duration::from_secs(5).min(self.opts.resync)
            };
            if self.failures > 0 {
                tokio::time::sleep(wait).await;
            } else {
                tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

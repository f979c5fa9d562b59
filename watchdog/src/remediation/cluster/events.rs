//! Remediation Events on the Pod a finding names (the Node's go through
//! `sinks/kubernetes`). The same queue as the Node's events
//! (`sinks::kubernetes::events::EventQueue`): the same reasons and notes
//! (`EvictPodSucceeded`, ...), a token bucket per minute, pending events
//! coalesced by subject while the apiserver is down; the same reporter
//! (`watchdog`, instance `watchdog-<node>`), through kube's `Recorder`.
use std::{collections::HashMap, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::{CallError, call};
use crate::model::Time;
use crate::remediation::{RemediationRecord, StepStatus};
use crate::sinks::kubernetes::events::{EventQueue, NodeEvent};

/// The Pod an Event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }
}

pub struct PodEvents {
    recorder: Recorder,
    queue: EventQueue,
    /// The pod of each pending event, by the event's subject.
    pods: HashMap<String, PodRef>,
    timeout: Duration,
}

impl PodEvents {
    pub fn new(client: Client, node: &str, per_minute: u32, timeout: Duration) -> Self {
        let reporter = Reporter {
            controller: "watchdog".into(),
            instance: Some(format!("watchdog-{node}")),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            queue: EventQueue::new(per_minute),
            pods: HashMap::new(),
            timeout,
        }
    }

    /// Queue the Event of a remediation step on `pod` (`started` steps
    /// have none, as on the Node).
    pub fn remediation(&mut self, pod: &PodRef, rec: &RemediationRecord) {
        self.queue.remediation(rec);
        if rec.status != StepStatus::Started {
            let subject = format!(
                "remediation/{}/{}/{}",
                rec.finding,
                rec.action.name(),
                rec.status.name()
            );
            self.pods.insert(subject, pod.clone());
        }
    }

    pub fn pending(&self) -> usize {
        self.queue.pending()
    }

    /// Send what the rate limit lets out now; on a failure the unsent
    /// events stay queued (coalesced) for the next call.
    pub async fn flush(&mut self, now: Time) -> Result<usize, CallError> {
        let mut batch = self.queue.take(now);
        let mut sent = 0;
        while !batch.is_empty() {
            let ev = batch.remove(0);
            let Some(pod) = self.pods.get(&ev.subject).cloned() else {
                continue;
            };
            if let Err(e) = self.publish(&ev, &pod).await {
                batch.insert(0, ev);
                self.queue.retry(batch);
                return Err(e);
            }
            self.pods.remove(&ev.subject);
            sent += 1;
        }
        Ok(sent)
    }

    async fn publish(&self, ev: &NodeEvent, pod: &PodRef) -> Result<(), CallError> {
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
        let reference = pod.reference();
        call(
            self.timeout,
            format!("event on pod {}/{}", pod.namespace, pod.name),
            self.recorder.publish(&event, &reference),
        )
        .await
    }
}

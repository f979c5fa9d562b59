//! ApiServerVerifier scenarios (kube-rs pattern): a mocked apiserver
//! asserts method, URI and body of every call the exporter makes, and a
//! timeout fails the test when an expected call never comes. The findings
//! are the real ones of the golden pids-cgroup recording.
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use super::*;
use crate::model::finding::{Finding, FindingStatus};
use crate::sinks::{Capture, Record};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn golden_findings() -> Vec<Finding> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/pid_exhaustion_cgroup.jsonl");
    let mut cap = Capture::default();
    crate::replay::replay(&path, &mut cap).unwrap();
    cap.0
        .into_iter()
        .filter_map(|r| match r {
            Record::Finding(f) => Some(f.finding),
            _ => None,
        })
        .collect()
}

fn setup(events_per_minute: u32) -> (KubeSink, Exporter, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let opts = KubeOptions {
        node: "node-1".into(),
        conditions: true,
        events: true,
        timeout: Duration::from_secs(1),
        resync: Duration::from_secs(60),
        events_per_minute,
    };
    let (sink, exp) = kubernetes(client, opts, Time(1_700_000_000_000));
    (sink, exp, handle)
}

async fn next(
    handle: &mut Handle,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    tokio::time::timeout(Duration::from_secs(1), handle.next_request())
        .await
        .expect("the exporter did not call the apiserver within 1 s")
        .expect("service closed")
}

async fn body_json(req: Request<Body>) -> (http::Method, String, Option<String>, Value) {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let ctype = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = req.into_body().collect_bytes().await.unwrap();
    (method, uri, ctype, serde_json::from_slice(&bytes).unwrap())
}

fn ok_json(v: Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(&v).unwrap()))
}

fn node_ok() -> Response<Body> {
    ok_json(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))
}

fn unavailable() -> Response<Body> {
    let mut r = ok_json(
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "etcdserver: request timed out", "reason": "ServiceUnavailable", "code": 503}),
    );
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}

fn condition<'a>(body: &'a Value, type_: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {body}"))
}

/// The node status patch: method, URI, content type; returns the body.
async fn expect_status_patch(handle: &mut Handle) -> Value {
    let (req, send) = next(handle).await;
    let (method, uri, ctype, body) = body_json(req).await;
    assert_eq!(method, http::Method::PATCH);
    assert_eq!(uri, "/api/v1/nodes/node-1/status?");
    assert_eq!(
        ctype.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    send.send_response(node_ok());
    body
}

async fn expect_event(handle: &mut Handle) -> Value {
    let (req, send) = next(handle).await;
    let (method, uri, _, body) = body_json(req).await;
    assert_eq!(method, http::Method::POST, "{uri}");
    assert_eq!(uri, "/apis/events.k8s.io/v1/namespaces/default/events?");
    send.send_response(ok_json(body.clone()));
    body
}

#[tokio::test]
async fn conditions_set_and_cleared_with_events() {
    let (mut sink, mut exp, mut handle) = setup(12);
    let findings = golden_findings();
    let (active, update, resolved) = (&findings[0], &findings[1], &findings[2]);
    assert_eq!(
        [active.status, update.status, resolved.status],
        [
            FindingStatus::Active,
            FindingStatus::Update,
            FindingStatus::Resolved
        ]
    );
    let t0 = Time(1_700_000_000_000);

    // Start: every condition False, with a healthy reason.
    let server = tokio::spawn(async move {
        let body = expect_status_patch(&mut handle).await;
        assert_eq!(body["status"]["conditions"].as_array().unwrap().len(), 4);
        for (t, reason) in [
            ("PIDExhausted", "PIDsAvailable"),
            ("StorageHung", "NoStorageHang"),
            ("SystemdHung", "SystemdResponsive"),
            ("RuntimeUnresponsive", "RuntimeResponsive"),
        ] {
            let c = condition(&body, t);
            assert_eq!(c["status"], "False");
            assert_eq!(c["reason"], reason);
        }
        handle
    });
    exp.sync_once(t0).await.unwrap();
    let mut handle = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();

    // A PID-exhaustion finding: the condition turns True and a Warning event goes out.
    sink.emit(&Record::Finding(Box::new(active.clone().into())));
    let first_seen = k8s_time(active.first_seen);
    let fs = first_seen.clone();
    let server = tokio::spawn(async move {
        let body = expect_status_patch(&mut handle).await;
        let c = condition(&body, "PIDExhausted");
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "PIDsCgroupLimitReached");
        assert!(
            c["message"].as_str().unwrap().contains("is at its limit"),
            "{c}"
        );
        assert_eq!(c["lastTransitionTime"], fs);
        assert_eq!(condition(&body, "StorageHung")["status"], "False");
        let ev = expect_event(&mut handle).await;
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "PIDsCgroupLimitReached");
        assert_eq!(ev["action"], "Diagnosed");
        assert_eq!(ev["regarding"]["kind"], "Node");
        assert_eq!(ev["regarding"]["name"], "node-1");
        assert_eq!(ev["reportingController"], "watchdog");
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("Remedy: Raise pids.max"),
            "{ev}"
        );
        handle
    });
    exp.sync_once(t0.plus_millis(1000)).await.unwrap();
    let mut handle = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();

    // An update changes the message only: the transition time stays, no event.
    sink.emit(&Record::Finding(Box::new(update.clone().into())));
    let fs = first_seen.clone();
    let server = tokio::spawn(async move {
        let body = expect_status_patch(&mut handle).await;
        let c = condition(&body, "PIDExhausted");
        assert_eq!(c["status"], "True");
        assert_eq!(c["lastTransitionTime"], fs);
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("failed fork/clone calls"),
            "{c}"
        );
        handle
    });
    exp.sync_once(t0.plus_millis(2000)).await.unwrap();
    let mut handle = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();

    // Nothing changed and the heartbeat is not due: no call.
    exp.sync_once(t0.plus_millis(3000)).await.unwrap();

    // Resolution: False again, transition at the resolution time, a Normal event.
    sink.emit(&Record::Finding(Box::new(resolved.clone().into())));
    let resolved_at = k8s_time(resolved.resolved_at.unwrap());
    let server = tokio::spawn(async move {
        let body = expect_status_patch(&mut handle).await;
        let c = condition(&body, "PIDExhausted");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "PIDsAvailable");
        assert_eq!(c["lastTransitionTime"], resolved_at);
        let ev = expect_event(&mut handle).await;
        assert_eq!(ev["type"], "Normal");
        assert_eq!(ev["reason"], "PIDExhaustionResolved");
        handle
    });
    exp.sync_once(t0.plus_millis(4000)).await.unwrap();
    let mut handle = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();

    // The heartbeat: after `resync` the same conditions are sent again.
    let server = tokio::spawn(async move {
        let body = expect_status_patch(&mut handle).await;
        assert_eq!(condition(&body, "PIDExhausted")["status"], "False");
        handle
    });
    exp.sync_once(t0.plus_millis(70_000)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn apiserver_outage_keeps_latest_state_and_sends_it_once() {
    let (mut sink, mut exp, mut handle) = setup(12);
    let findings = golden_findings();
    let t0 = Time(1_700_000_000_000);

    // The apiserver is down from the start: the first patch fails.
    let server = tokio::spawn(async move {
        let (_req, send) = next(&mut handle).await;
        send.send_response(unavailable());
        handle
    });
    let err = exp.sync_once(t0).await.unwrap_err().to_string();
    assert!(err.contains("node status patch failed"), "{err}");
    let mut handle = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();

    // During the outage the finding goes active, updates and resolves, ten
    // times over; every sync attempt fails at the first call.
    for round in 0..10u64 {
        for f in &findings {
            sink.emit(&Record::Finding(Box::new(f.clone().into())));
        }
        let server = tokio::spawn(async move {
            let (_req, send) = next(&mut handle).await;
            send.send_response(unavailable());
            handle
        });
        assert!(
            exp.sync_once(t0.plus_millis(1000 * (round + 1)))
                .await
                .is_err()
        );
        handle = tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .unwrap()
            .unwrap();
    }
    // Then the finding is active again, and the apiserver comes back.
    sink.emit(&Record::Finding(Box::new(findings[0].clone().into())));
    assert_eq!(
        exp.pending_events(),
        1,
        "events coalesce by finding while the apiserver is down"
    );

    let server = tokio::spawn(async move {
        // Exactly one patch with the latest state and one event, then nothing.
        let body = expect_status_patch(&mut handle).await;
        assert_eq!(condition(&body, "PIDExhausted")["status"], "True");
        let ev = expect_event(&mut handle).await;
        assert_eq!(ev["reason"], "PIDsCgroupLimitReached");
        handle
    });
    exp.sync_once(t0.plus_millis(20_000)).await.unwrap();
    let _handle = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();
    // Nothing left: the next pass makes no call (the mock would fail it).
    exp.sync_once(t0.plus_millis(21_000)).await.unwrap();
    assert_eq!(exp.pending_events(), 0);
}

#[tokio::test]
async fn a_hung_apiserver_times_out() {
    let (mut sink, mut exp, mut handle) = setup(12);
    let _ = &mut sink;
    exp.opts.timeout = Duration::from_millis(200);
    // Take the request and never answer it.
    let server = tokio::spawn(async move {
        let (_req, send) = next(&mut handle).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(send);
    });
    let err = exp.sync_once(Time(0)).await.unwrap_err().to_string();
    assert!(err.contains("timed out after 200ms"), "{err}");
    server.abort();
}

#[tokio::test]
async fn a_remediation_step_on_a_pod_is_an_event_on_the_node_and_on_the_pod() {
    use crate::model::finding::{Cause, FindingId, PodId};
    use crate::remediation::{ActionKind, Mode, RemediationRecord, StepStatus};
    let (mut sink, mut exp, mut handle) = setup(12);
    sink.emit(&Record::Remediation(RemediationRecord {
        at: Time(1_700_000_001_000),
        finding: FindingId::new(Cause::PidExhaustion, "pids_cgroup/kubepods/pod0f1e"),
        cause: Cause::PidExhaustion,
        action: ActionKind::EvictPod,
        target: "pod shop/cart-7d9 (uid 0f1e)".into(),
        mode: Mode::Enforce,
        status: StepStatus::Succeeded,
        reason: "evicted".into(),
        budget: "1 of 3 actions this hour; cluster slot watchdog-remediation-0 of 1".into(),
        pod: Some(PodId {
            uid: "0f1e".into(),
            namespace: Some("shop".into()),
            name: Some("cart-7d9".into()),
        }),
    }));
    let sync = tokio::spawn(async move { exp.sync_once(Time(1_700_000_001_000)).await });
    // The conditions' first heartbeat, then the node's Event, then the pod's.
    expect_status_patch(&mut handle).await;
    let node = expect_event(&mut handle).await;
    assert_eq!(node["regarding"]["kind"], "Node");
    assert_eq!(node["reason"], "EvictPodSucceeded");
    let (req, send) = next(&mut handle).await;
    let (method, uri, _, pod) = body_json(req).await;
    assert_eq!(method, http::Method::POST);
    assert_eq!(uri, "/apis/events.k8s.io/v1/namespaces/shop/events?");
    assert_eq!(pod["regarding"]["kind"], "Pod");
    assert_eq!(pod["regarding"]["name"], "cart-7d9");
    assert_eq!(pod["regarding"]["uid"], "0f1e");
    assert_eq!(pod["reason"], "EvictPodSucceeded");
    send.send_response(ok_json(pod.clone()));
    sync.await.unwrap().unwrap();
}

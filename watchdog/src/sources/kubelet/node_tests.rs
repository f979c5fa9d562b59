//! ApiServerVerifier scenarios (kube-rs controller pattern): a mocked
//! apiserver asserts each request's method and URI and answers it.
use http::{Request, Response};
use kube::client::Body;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::model::kubelet::{SourceState, SourceStatus};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NODE: &str = "worker-7";
const PLEG_MSG: &str = "container runtime is down, PLEG is not healthy: pleg was last seen active 3m46.752815514s ago; threshold is 3m0s";

fn node(rv: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": NODE, "resourceVersion": rv },
        "status": { "conditions": [
            { "type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
              "lastTransitionTime": "2026-07-25T10:00:00Z" },
            { "type": "Ready", "status": status, "reason": reason, "message": message,
              "lastHeartbeatTime": "2026-07-25T17:20:00Z",
              "lastTransitionTime": "2026-07-25T17:20:00Z" }
        ]}
    })
}

enum Scenario {
    /// LIST with the node Ready, then a WATCH that flips it NotReady (PLEG)
    /// and back to Ready.
    ReadyFlapsOnPleg,
    /// LIST answers 403 (RBAC missing).
    Forbidden,
}

fn assert_node_query(req: &Request<Body>) {
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri().path(), "/api/v1/nodes");
    let q = req.uri().query().unwrap_or("");
    assert!(
        q.contains("fieldSelector=metadata.name%3Dworker-7"),
        "query without the node's field selector: {q}"
    );
}

async fn next_request(
    h: &mut Handle,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    tokio::time::timeout(Duration::from_secs(1), h.next_request())
        .await
        .expect("the expected apiserver call never came")
        .expect("the client went away")
}

impl Scenario {
    async fn run(self, mut h: Handle) {
        match self {
            Scenario::ReadyFlapsOnPleg => {
                let (req, send) = next_request(&mut h).await;
                assert_node_query(&req);
                let q = req.uri().query().unwrap().to_owned();
                assert!(!q.contains("watch=true"), "first call must be a list: {q}");
                let list = json!({
                    "apiVersion": "v1", "kind": "NodeList",
                    "metadata": { "resourceVersion": "100" },
                    "items": [node("100", "True", "KubeletReady", "kubelet is posting ready status")]
                });
                send.send_response(Response::new(Body::from(
                    serde_json::to_vec(&list).unwrap(),
                )));

                let (req, send) = next_request(&mut h).await;
                assert_node_query(&req);
                let q = req.uri().query().unwrap().to_owned();
                assert!(q.contains("watch=true"), "second call must be a watch: {q}");
                assert!(
                    q.contains("resourceVersion=100"),
                    "watch from the list's version: {q}"
                );
                let mut events = Vec::new();
                for (rv, st, reason, msg) in [
                    (
                        "101",
                        "True",
                        "KubeletReady",
                        "kubelet is posting ready status",
                    ),
                    ("102", "False", "KubeletNotReady", PLEG_MSG),
                    (
                        "103",
                        "True",
                        "KubeletReady",
                        "kubelet is posting ready status",
                    ),
                ] {
                    let ev = json!({ "type": "MODIFIED", "object": node(rv, st, reason, msg) });
                    events.extend(serde_json::to_vec(&ev).unwrap());
                    events.push(b'\n');
                }
                send.send_response(Response::new(Body::from(events)));
                // The watch ended; the watcher comes back for more (and gets none).
                let (req, _send) = next_request(&mut h).await;
                assert_node_query(&req);
            }
            Scenario::Forbidden => {
                let (req, send) = next_request(&mut h).await;
                assert_node_query(&req);
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "nodes \"worker-7\" is forbidden: User \"system:serviceaccount:kube-system:watchdog\" cannot list resource \"nodes\"",
                    "reason": "Forbidden", "code": 403
                });
                send.send_response(
                    Response::builder()
                        .status(403)
                        .body(Body::from(serde_json::to_vec(&status).unwrap()))
                        .unwrap(),
                );
            }
        }
    }
}

fn mock_client() -> (kube::Client, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(svc, "default"), handle)
}

async fn recv(rx: &mut mpsc::Receiver<Observation>) -> Observation {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("no observation within 2 s")
        .expect("channel closed")
}

#[tokio::test(flavor = "current_thread")]
async fn ready_transitions_with_pleg_message() {
    let (client, handle) = mock_client();
    let (out, mut rx) = ObsSender::channel();
    let verifier = tokio::spawn(Scenario::ReadyFlapsOnPleg.run(handle));
    let watch = tokio::spawn(run(Ok(client), Some(NODE.into()), out));

    let mut readies = Vec::new();
    while readies.len() < 3 {
        match recv(&mut rx).await {
            Observation::NodeReady(r) => readies.push(r),
            Observation::Source(s) => assert_eq!(s.state, SourceState::Available, "{s:?}"),
            o => panic!("unexpected {o:?}"),
        }
    }
    verifier.await.expect("scenario failed");
    watch.abort();
    // The repeated Ready=True (rv 101) is not a change and is not sent.
    let st: Vec<_> = readies
        .iter()
        .map(|r| r.status.as_deref().unwrap())
        .collect();
    assert_eq!(st, ["True", "False", "True"]);
    assert_eq!(readies[0].node, NODE);
    assert_eq!(readies[0].pleg, None);
    let p = readies[1].pleg.expect("PLEG message parsed");
    assert!((p.last_seen_s - 226.752815514).abs() < 1e-9);
    assert_eq!(p.threshold_s, 180.0);
    assert_eq!(readies[1].reason.as_deref(), Some("KubeletNotReady"));
    assert_eq!(readies[1].last_transition, Some(Time(1_785_000_000_000)));
}

#[tokio::test(flavor = "current_thread")]
async fn forbidden_is_reported_not_fatal() {
    let (client, handle) = mock_client();
    let (out, mut rx) = ObsSender::channel();
    let verifier = tokio::spawn(Scenario::Forbidden.run(handle));
    let watch = tokio::spawn(run(Ok(client), Some(NODE.into()), out));
    let Observation::Source(SourceStatus { state, message, .. }) = recv(&mut rx).await else {
        panic!("expected a source status")
    };
    verifier.await.expect("scenario failed");
    assert_eq!(state, SourceState::Unavailable);
    assert!(message.contains("forbidden"), "{message}");
    assert!(!watch.is_finished(), "the watch keeps retrying");
    watch.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn no_node_name_or_cluster_disables_the_source() {
    let (out, mut rx) = ObsSender::channel();
    run(
        Err("no in-cluster config: KUBERNETES_SERVICE_HOST unset".into()),
        Some(NODE.into()),
        out.clone(),
    )
    .await;
    let Observation::Source(s) = recv(&mut rx).await else {
        panic!()
    };
    assert_eq!(s.state, SourceState::Disabled);
    assert!(s.message.contains("KUBERNETES_SERVICE_HOST"));
    run(Err(String::new()), None, out).await;
    let Observation::Source(s) = recv(&mut rx).await else {
        panic!()
    };
    assert_eq!(s.state, SourceState::Disabled);
    assert!(s.message.contains("node name"));
}

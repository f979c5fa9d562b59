use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{
    runtime::{Container, ObjectKind, RelistConfig, Relister, RuntimeClient, Stage},
    *,
};
use crate::model::kubelet::{NodeReady, PodName};

const SHORT: Duration = Duration::from_millis(1);

fn obs(n: u64) -> Observation {
    Observation::NodeReady(NodeReady {
        at: Time(n),
        node: "n".into(),
        status: None,
        reason: None,
        message: None,
        last_transition: None,
        pleg: None,
    })
}

/// What a scripted call does.
enum Script {
    Answer(Step),
    Fail(&'static str),
    Hang,
    End,
}

/// A source that plays `calls` in order, then answers with an observation
/// forever; its starts play `starts` (then succeed).
struct Scripted {
    deadline: Option<Duration>,
    starts: VecDeque<StartError>,
    calls: VecDeque<Script>,
    made: u64,
}

impl Scripted {
    fn new(starts: Vec<StartError>, calls: Vec<Script>) -> Self {
        Self {
            deadline: Some(Duration::from_millis(50)),
            starts: starts.into(),
            calls: calls.into(),
            made: 0,
        }
    }
}

impl Source for Scripted {
    type Client = ();

    fn supervision(&self) -> Supervision {
        Supervision {
            kind: SourceKind::KubeletMetrics,
            target: "test".into(),
            deadline: self.deadline,
            interval: SHORT,
            max_backoff: SHORT * 4,
        }
    }

    async fn start(&mut self) -> Result<(), StartError> {
        match self.starts.pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn call(&mut self, _: &mut ()) -> Call {
        self.made += 1;
        match self.calls.pop_front() {
            Some(Script::Answer(s)) => Call::Answered(s),
            Some(Script::Fail(e)) => Call::Failed(e.into()),
            Some(Script::Hang) => std::future::pending().await,
            Some(Script::End) => Call::Ended,
            None => Call::Answered(Step::available("ok").with(obs(self.made))),
        }
    }
}

async fn recv(rx: &mut mpsc::Receiver<Observation>) -> Observation {
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("no observation within 2 s")
        .expect("channel closed")
}

/// The statuses (state, message) among the first `n` observations that are
/// not statuses, and those observations.
async fn until(
    rx: &mut mpsc::Receiver<Observation>,
    n: usize,
) -> (Vec<(SourceState, String)>, Vec<Observation>) {
    let (mut statuses, mut others) = (Vec::new(), Vec::new());
    while others.len() < n {
        match recv(rx).await {
            Observation::Source(s) => statuses.push((s.state, s.message)),
            o => others.push(o),
        }
    }
    (statuses, others)
}

fn st(state: SourceState, m: &str) -> (SourceState, String) {
    (state, m.to_owned())
}

#[tokio::test(flavor = "current_thread")]
async fn failing_twice_then_answering_reports_each_state_once() {
    let (out, mut rx) = ObsSender::channel();
    let source = Scripted::new(vec![], vec![Script::Fail("boom 1"), Script::Fail("boom 2")]);
    let task = tokio::spawn(supervise(source, out));
    let (statuses, others) = until(&mut rx, 3).await;
    task.abort();
    assert_eq!(
        statuses,
        [
            st(SourceState::Unavailable, "boom 1"),
            st(SourceState::Available, "ok")
        ]
    );
    assert!(matches!(others[0], Observation::NodeReady(ref r) if r.at == Time(3)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_that_never_returns_is_cut_by_the_deadline() {
    let (out, mut rx) = ObsSender::channel();
    let source = Scripted::new(vec![], vec![Script::Hang]);
    let task = tokio::spawn(supervise(source, out));
    let (statuses, _) = until(&mut rx, 1).await;
    task.abort();
    assert_eq!(
        statuses,
        [
            st(SourceState::Unavailable, "no answer within 50ms"),
            st(SourceState::Available, "ok")
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn starts_are_retried_and_a_disabled_source_stops() {
    let (out, mut rx) = ObsSender::channel();
    let source = Scripted::new(vec![StartError::Retry("no client".into())], vec![]);
    let task = tokio::spawn(supervise(source, out.clone()));
    let (statuses, _) = until(&mut rx, 1).await;
    task.abort();
    assert_eq!(
        statuses,
        [
            st(SourceState::Unavailable, "no client"),
            st(SourceState::Available, "ok")
        ]
    );

    let source = Scripted::new(vec![StartError::Disabled("not here".into())], vec![]);
    tokio::time::timeout(Duration::from_secs(2), supervise(source, out))
        .await
        .expect("a disabled source returns");
    let Observation::Source(s) = recv(&mut rx).await else {
        panic!("expected a status")
    };
    assert_eq!((s.state, s.message), st(SourceState::Disabled, "not here"));
}

#[tokio::test(flavor = "current_thread")]
async fn news_is_reported_after_the_observations_and_an_ended_source_stops() {
    let (out, mut rx) = ObsSender::channel();
    let news = Step {
        news: Some((SourceState::Available, "3 lines unparseable".into())),
        ..Step::available("ok").with(obs(7))
    };
    let source = Scripted::new(vec![], vec![Script::Answer(news), Script::End]);
    tokio::time::timeout(Duration::from_secs(2), supervise(source, out))
        .await
        .expect("an ended source returns");
    let mut seen = Vec::new();
    while let Ok(o) = rx.try_recv() {
        seen.push(match o {
            Observation::Source(s) => s.message,
            Observation::NodeReady(r) => format!("obs {}", r.at.0),
            o => panic!("unexpected {o:?}"),
        });
    }
    assert_eq!(seen, ["ok", "obs 7", "3 lines unparseable"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_source_stops_when_the_receiver_is_gone() {
    let (out, rx) = ObsSender::channel();
    drop(rx);
    let source = Scripted::new(vec![], vec![]);
    tokio::time::timeout(Duration::from_secs(2), supervise(source, out))
        .await
        .expect("the source returns");
}

#[test]
fn a_full_channel_drops_and_counts() {
    let (tx, mut rx) = LossySender::<u32>::bounded(1);
    assert!(tx.send(1));
    assert!(tx.send(2));
    assert_eq!(tx.drops(), 1);
    assert_eq!(rx.try_recv().ok(), Some(1));
    drop(rx);
    assert!(!tx.send(3));
}

/// The fake's listing: (name, pod group, state).
type Listing = Arc<std::sync::Mutex<Vec<(&'static str, &'static str, &'static str)>>>;

/// A runtime whose container "stuck" never answers an inspect.
struct FakeRuntime {
    inspects: Arc<AtomicUsize>,
    /// The listing's objects: (name, pod group, state).
    objects: Listing,
    changed_only: bool,
}

impl FakeRuntime {
    fn new(changed_only: bool) -> Self {
        Self {
            inspects: Arc::default(),
            objects: Arc::new(std::sync::Mutex::new(vec![
                ("ok", "pod-a", "running"),
                ("stuck", "pod-b", "running"),
                ("bad", "pod-c", "running"),
            ])),
            changed_only,
        }
    }
}

impl RuntimeClient for FakeRuntime {
    fn runtime(&self) -> &str {
        "fake"
    }

    fn endpoint(&self) -> &str {
        "unix:///fake.sock"
    }

    fn list_ops(&self) -> &'static [&'static str] {
        &["ListPodSandbox", "ListContainers"]
    }

    fn inspect_op(&self, _: ObjectKind) -> &'static str {
        "ContainerStatus"
    }

    fn changed_only(&self) -> bool {
        self.changed_only
    }

    async fn version(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn list(
        &self,
        _: Stage,
    ) -> impl Future<Output = Result<Vec<Container>, String>> + Send + 'static {
        let objects = self.objects.lock().unwrap().clone();
        std::future::ready(Ok(objects
            .into_iter()
            .map(|(n, group, state)| Container {
                id: format!("id-{n}"),
                name: n.into(),
                kind: ObjectKind::Container,
                state: state.into(),
                group: Some(group.into()),
                pod: Some(PodName {
                    namespace: "default".into(),
                    name: group.into(),
                    uid: format!("uid-{group}"),
                }),
            })
            .collect()))
    }

    fn inspect(
        &self,
        obj: &Container,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let id = obj.id.clone();
        let inspects = self.inspects.clone();
        async move {
            inspects.fetch_add(1, Ordering::Relaxed);
            match id.as_str() {
                "id-stuck" => std::future::pending().await,
                "id-bad" => Err("no such container".into()),
                _ => Ok(()),
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn changed_only_inspects_the_pods_that_changed_and_retries_failures() {
    let cfg = RelistConfig {
        call_timeout: Duration::from_millis(50),
        ..RelistConfig::default()
    };
    let client = FakeRuntime::new(true);
    let inspects = client.inspects.clone();
    let objects = client.objects.clone();
    let mut relister = Relister::new(client, cfg);
    // First relist: everything is new.
    let r = relister.relist().await;
    assert_eq!((r.inspected, r.hung.len()), (2, 1), "{r:?}");
    assert_eq!(r.endpoint, "unix:///fake.sock");
    let h = &r.hung[0];
    assert_eq!(h.operation.as_deref(), Some("ContainerStatus"));
    assert_eq!(
        h.pod.as_ref().map(|p| p.to_string()).as_deref(),
        Some("default/pod-b")
    );
    assert_eq!(inspects.load(Ordering::Relaxed), 3);
    let names = relister.take_names().expect("the first listing's names");
    assert_eq!(names.runtime, "fake");
    assert_eq!(names.containers.len(), 3);
    assert_eq!(
        names.containers[0]
            .pod
            .as_ref()
            .map(|p| p.to_string())
            .as_deref(),
        Some("default/pod-c"),
        "sorted by id: id-bad first"
    );
    // Nothing changed: only the failed one is asked again (the hung one is
    // still outstanding), and no names are sent again.
    let r = relister.relist().await;
    assert!(relister.take_names().is_none());
    assert_eq!(r.inspected, 1, "{r:?}");
    assert_eq!(inspects.load(Ordering::Relaxed), 4);
    // "ok" changes state, "bad" is gone: only "ok"'s pod is inspected.
    {
        let mut o = objects.lock().unwrap();
        o[0].2 = "exited";
        o.retain(|o| o.0 != "bad");
    }
    let r = relister.relist().await;
    assert_eq!(r.inspected, 1, "{r:?}");
    assert_eq!(r.inspect_errors, 0, "{r:?}");
    assert_eq!(inspects.load(Ordering::Relaxed), 5);
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(relister.take_names().map(|n| n.containers.len()), Some(2));
}

#[tokio::test(flavor = "current_thread")]
async fn a_hung_inspect_stays_outstanding_and_is_not_repeated() {
    let cfg = RelistConfig {
        call_timeout: Duration::from_millis(50),
        ..RelistConfig::default()
    };
    let client = FakeRuntime::new(false);
    let inspects = client.inspects.clone();
    let mut relister = Relister::new(client, cfg);
    for round in 1..=2 {
        let r = relister.relist().await;
        assert_eq!(r.runtime, "fake");
        assert!(r.listed && !r.complete, "{r:?}");
        assert_eq!(r.containers, 3);
        assert_eq!(r.inspect_errors, 1);
        assert_eq!(
            r.error.as_deref(),
            Some("ContainerStatus bad: no such container"),
            "{r:?}"
        );
        assert_eq!(r.hung.len(), 1, "{r:?}");
        assert_eq!(r.hung[0].call, "inspect");
        assert_eq!(r.hung[0].container_name.as_deref(), Some("stuck"));
        // The hung call is not made again: one inspect each for the others.
        assert_eq!(r.inspected, 2);
        assert_eq!(inspects.load(Ordering::Relaxed), 3 + 2 * (round - 1));
    }
}

/// A runc of this test's own (a copy of sh named `runc`, the container id
/// in its command line) is found as a helper a hung call on that container
/// may wait behind, with its start time; not when it is younger than the
/// call, and not for another id.
#[test]
fn a_runc_naming_the_container_is_a_helper_of_its_hung_call() {
    use crate::context::procfs::ProcReader;
    let dir = std::env::temp_dir().join(format!("wd-runc-helper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runc = dir.join("runc");
    std::fs::copy("/bin/sh", &runc).unwrap();
    let id = format!("{:064x}", 0xfeed_0000_u64 + u64::from(std::process::id()));
    // `read` from a pipe kept open: the shell waits without forking.
    let mut child = std::process::Command::new(&runc)
        .args(["-c", "read x", &id])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = ProcReader::new(std::path::Path::new("/"));
    let start = reader.start_time(child.id());
    let mut found = Vec::new();
    for _ in 0..100 {
        found = runtime::stuck_helpers(&reader, &id, 0);
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let other = runtime::stuck_helpers(&reader, &format!("{:064x}", 1), 0);
    let young = runtime::stuck_helpers(&reader, &id, 3_600_000);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].pid, child.id());
    assert_eq!(found[0].comm, "runc");
    assert_eq!(Some(found[0].start), start);
    assert!(other.is_empty(), "{other:?}");
    assert!(young.is_empty(), "younger than the call: {young:?}");
}

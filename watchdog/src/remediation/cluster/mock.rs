//! An in-memory apiserver with real resourceVersion semantics, for the
//! cluster tests: one monotonic RV counter; Leases (list by label, get,
//! create with 409 AlreadyExists, replace with the RV precondition and 409
//! Conflict, delete with preconditions); Nodes (paged list by label, get,
//! JSON merge patch with the RV precondition, strategic merge of status
//! conditions by type); Pods (get, eviction with the uid precondition and
//! a configurable 429); Events. It can be down (every call fails, or hangs
//! past the client's timeout), and it yields a seeded random number of
//! times around every call, so that agents interleave differently per seed.
use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Down {
    #[default]
    Up,
    /// Every call fails at the transport (connection refused).
    Error,
    /// Every call hangs (the client's timeout fires).
    Hang,
}

#[derive(Default)]
pub struct State {
    rv: u64,
    pub leases: BTreeMap<(String, String), Value>,
    pub nodes: BTreeMap<String, Value>,
    pub pods: BTreeMap<(String, String), Value>,
    pub events: Vec<Value>,
    pub down: Down,
    /// Node lists fail (500) while the rest works.
    pub fail_node_list: bool,
    /// Evictions answer 429 (a PDB refuses).
    pub evict_429: bool,
    /// Before the next node patch, another writer changes the node (adds
    /// the taint `other/racer`), so the patch's precondition is stale.
    pub race_next_node_patch: bool,
    /// Every call, as `METHOD path`.
    pub calls: Vec<String>,
    /// Lease writes refused with 409 (lost races).
    pub conflicts: u64,
    /// Slot writes must stay below this index, with distinct holders.
    pub max_slots: Option<usize>,
    rng: u64,
}

impl State {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn add_node(&mut self, name: &str, labels: Value) {
        let rv = self.next_rv();
        self.nodes.insert(
            name.into(),
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv, "labels": labels},
                   "spec": {}, "status": {"conditions": []}}),
        );
    }

    pub fn add_pod(&mut self, ns: &str, name: &str, uid: &str) {
        let rv = self.next_rv();
        self.pods.insert(
            (ns.into(), name.into()),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": rv}}),
        );
    }

    pub fn node(&self, name: &str) -> &Value {
        &self.nodes[name]
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Value {
        let rv = self.next_rv();
        let n = self.nodes.get_mut(name).unwrap();
        n["metadata"]["resourceVersion"] = json!(rv);
        n
    }

    pub fn lease(&self, ns: &str, name: &str) -> Option<&Value> {
        self.leases.get(&(ns.into(), name.into()))
    }

    /// The invariant after every lease write: slots within K, each holder
    /// in at most one slot.
    fn check_leases(&self) {
        let mut holders = Vec::new();
        for ((_, name), l) in &self.leases {
            if let Some(max) = self.max_slots {
                let i: usize = name
                    .rsplit('-')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .unwrap();
                assert!(i < max, "slot {name} beyond K={max}");
            }
            if let Some(h) = l["spec"]["holderIdentity"]
                .as_str()
                .filter(|h| !h.is_empty())
            {
                assert!(!holders.contains(&h), "{h} holds two slots");
                holders.push(h);
            }
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(
        serde_json::to_vec(
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code}),
        )
        .unwrap(),
    ));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

fn ok(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// `a=b,c=d` against an object's labels.
fn selected(obj: &Value, selector: Option<&String>) -> bool {
    selector.is_none_or(|s| {
        s.split(',').all(|term| match term.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k] == v,
            None => !obj["metadata"]["labels"][term].is_null(),
        })
    })
}

fn list(kind: &str, items: Vec<Value>, cont: Option<String>) -> Response<Body> {
    ok(
        200,
        &json!({"apiVersion": "v1", "kind": kind, "metadata": {"continue": cont}, "items": items}),
    )
}

impl State {
    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        q: Option<&str>,
        body: &[u8],
    ) -> Response<Body> {
        let q = query(q);
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.clone(), segs.as_slice()) {
            (
                Method::GET,
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                ],
            ) => {
                let items = self
                    .leases
                    .iter()
                    .filter(|((n, _), l)| n == ns && selected(l, q.get("labelSelector")))
                    .map(|(_, l)| l.clone())
                    .collect();
                list("LeaseList", items, None)
            }
            (
                Method::POST,
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                ],
            ) => {
                let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                let key = (ns.to_string(), name.clone());
                if self.leases.contains_key(&key) {
                    self.conflicts += 1;
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("leases \"{name}\" already exists"),
                    );
                }
                let mut l = body;
                l["metadata"]["resourceVersion"] = json!(self.next_rv());
                l["metadata"]["uid"] = json!(format!("lease-uid-{}", self.rv));
                l["metadata"]["namespace"] = json!(ns);
                self.leases.insert(key, l.clone());
                self.check_leases();
                ok(201, &l)
            }
            (
                Method::GET,
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                    name,
                ],
            ) => match self.leases.get(&(ns.to_string(), name.to_string())) {
                Some(l) => ok(200, l),
                None => status(404, "NotFound", &format!("leases \"{name}\" not found")),
            },
            (
                Method::PUT,
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                    name,
                ],
            ) => {
                let key = (ns.to_string(), name.to_string());
                let Some(cur) = self.leases.get(&key) else {
                    return status(404, "NotFound", &format!("leases \"{name}\" not found"));
                };
                let want = body["metadata"]["resourceVersion"].as_str();
                if want.is_some_and(|rv| Some(rv) != cur["metadata"]["resourceVersion"].as_str()) {
                    self.conflicts += 1;
                    return status(
                        409,
                        "Conflict",
                        &format!(
                            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    );
                }
                let uid = cur["metadata"]["uid"].clone();
                let mut l = body;
                l["metadata"]["resourceVersion"] = json!(self.next_rv());
                l["metadata"]["uid"] = uid;
                self.leases.insert(key, l.clone());
                self.check_leases();
                ok(200, &l)
            }
            (
                Method::DELETE,
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "leases",
                    name,
                ],
            ) => {
                let key = (ns.to_string(), name.to_string());
                let Some(cur) = self.leases.get(&key) else {
                    return status(404, "NotFound", &format!("leases \"{name}\" not found"));
                };
                if let Some(rv) = body["preconditions"]["resourceVersion"].as_str()
                    && Some(rv) != cur["metadata"]["resourceVersion"].as_str()
                {
                    self.conflicts += 1;
                    return status(409, "Conflict", "Precondition failed: resourceVersion");
                }
                self.leases.remove(&key);
                ok(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            (Method::GET, ["api", "v1", "nodes"]) => {
                if self.fail_node_list {
                    return status(500, "InternalError", "etcdserver: leader changed");
                }
                let all: Vec<Value> = self
                    .nodes
                    .values()
                    .filter(|n| selected(n, q.get("labelSelector")))
                    .cloned()
                    .collect();
                let start: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
                let limit: usize = q
                    .get("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(usize::MAX);
                let end = start.saturating_add(limit).min(all.len());
                let cont = (end < all.len()).then(|| end.to_string());
                list("NodeList", all[start..end].to_vec(), cont)
            }
            (Method::GET, ["api", "v1", "nodes", name]) => match self.nodes.get(*name) {
                Some(n) => ok(200, n),
                None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            },
            (Method::PATCH, ["api", "v1", "nodes", name]) => {
                if !self.nodes.contains_key(*name) {
                    return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
                }
                if std::mem::take(&mut self.race_next_node_patch) {
                    let n = self.node_mut(name);
                    let mut t = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
                    t.push(json!({"key": "other/racer", "effect": "NoSchedule"}));
                    n["spec"]["taints"] = json!(t);
                }
                let cur = &self.nodes[*name];
                let mut patch = body;
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                    && Some(rv) != cur["metadata"]["resourceVersion"].as_str()
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                let rv = self.next_rv();
                let n = self.nodes.get_mut(*name).unwrap();
                merge(n, &patch);
                n["metadata"]["resourceVersion"] = json!(rv);
                ok(200, n)
            }
            (Method::PATCH, ["api", "v1", "nodes", name, "status"]) => {
                let rv = self.next_rv();
                let Some(n) = self.nodes.get_mut(*name) else {
                    return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
                };
                // Strategic merge of status.conditions: by type.
                let mut conds = n["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for c in body["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    match conds.iter_mut().find(|x| x["type"] == c["type"]) {
                        Some(x) => merge(x, &c),
                        None => conds.push(c),
                    }
                }
                n["status"]["conditions"] = json!(conds);
                n["metadata"]["resourceVersion"] = json!(rv);
                ok(200, n)
            }
            (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
                match self.pods.get(&(ns.to_string(), name.to_string())) {
                    Some(p) => ok(200, p),
                    None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
                }
            }
            (Method::POST, ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => {
                let key = (ns.to_string(), name.to_string());
                let Some(p) = self.pods.get(&key) else {
                    return status(404, "NotFound", &format!("pods \"{name}\" not found"));
                };
                if self.evict_429 {
                    return status(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                }
                let have = p["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                if let Some(want) = body["deleteOptions"]["preconditions"]["uid"].as_str()
                    && want != have
                {
                    return status(
                        409,
                        "Conflict",
                        &format!(
                            "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
                        ),
                    );
                }
                self.pods.remove(&key);
                ok(201, &body)
            }
            (Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                let mut e = body;
                if e["metadata"]["name"].is_null() {
                    e["metadata"]["name"] = json!(format!("ev-{}", self.events.len()));
                }
                self.events.push(e.clone());
                ok(201, &e)
            }
            (Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
                ok(200, &body)
            }
            _ => status(
                404,
                "NotFound",
                &format!("the mock does not serve {method} {path}"),
            ),
        }
    }
}

/// The apiserver: a shared state behind a Mutex; one `Client` per agent.
#[derive(Clone, Default)]
pub struct Mock(pub Arc<Mutex<State>>);

impl Mock {
    pub fn new(seed: u64) -> Self {
        let m = Self::default();
        m.state().rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        m
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("mock state")
    }

    pub fn client(&self) -> Client {
        Client::new(self.clone(), "default")
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Request<Body>> for Mock {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let st = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await?;
            let before = st.lock().unwrap().rand() % 4;
            for _ in 0..before {
                tokio::task::yield_now().await;
            }
            let (down, resp, after) = {
                let mut s = st.lock().unwrap();
                let path = parts.uri.path().to_owned();
                s.calls.push(format!("{} {path}", parts.method));
                match s.down {
                    Down::Up => {
                        let r = s.handle(&parts.method, &path, parts.uri.query(), &bytes);
                        (Down::Up, Some(r), s.rand() % 4)
                    }
                    d => (d, None, 0),
                }
            };
            match down {
                Down::Hang => std::future::pending::<()>().await,
                Down::Error => return Err("connection refused (the mock apiserver is down)".into()),
                Down::Up => {}
            }
            for _ in 0..after {
                tokio::task::yield_now().await;
            }
            Ok(resp.expect("a response"))
        })
    }
}

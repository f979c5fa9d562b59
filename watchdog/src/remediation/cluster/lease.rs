//! A cluster-wide semaphore of Leases: at most K nodes remediating at once,
//! and at most R acquisitions per window W, without a controller.
//!
//! **Slots.** K Leases named `watchdog-remediation-<i>`, i in 0..K, in one
//! namespace (the agent's own by default: the chart grants a Role there),
//! labelled `watchdog.io/semaphore=remediation`. K = max(1, min(max_nodes,
//! floor(max_percent * pool / 100))), where the pool is the number of Nodes
//! (optionally those matching a label selector). Failing to count the pool
//! is "unreachable", never a default K.
//!
//! **Acquire.** List the slots (one call), then walk i in 0..K: an absent
//! slot is created (409 AlreadyExists: another agent won it, try the next);
//! a slot held by another live holder is skipped; a free (released),
//! expired or already-ours slot is replaced with its `resourceVersion` as
//! precondition (409 Conflict: lost the race, try the next). Every write
//! goes through the apiserver's optimistic concurrency, so two agents can
//! never both win the same slot. Held slots beyond K (K shrank with the
//! pool) still count as held.
//!
//! **Expiry is local**, as in client-go's leader election: per slot, this
//! agent remembers the resourceVersion it last saw and the LOCAL monotonic
//! instant it first saw it. A holder is expired when the record has not
//! changed for `leaseDurationSeconds` (the holder's own, plus a skew
//! margin) measured on this agent's clock. The holder's `renewTime` is
//! never read for that: a holder whose wall clock is years off can neither
//! steal a slot nor keep one it stopped renewing. The holder, in turn,
//! counts its validity from the instant it SENT its last successful write
//! ([`Semaphore::may_act`]): every observer saw that write after it was
//! sent, so the holder stops acting before anyone may take over.
//!
//! **Renew** is a replace with the resourceVersion precondition; losing it
//! (409 and the holder is not us, or the Lease is gone) means stop acting.
//!
//! **Release** clears `holderIdentity` and keeps the object (an update with
//! the precondition), rather than deleting it: the Lease keeps the
//! acquisition history the rate window counts and shows who acted last and
//! when, and a release can never remove a slot another agent took after
//! ours expired (a stale resourceVersion is refused). Releasing after
//! verification plus a delay is the caller's job.
//!
//! **Rate window.** Each slot keeps, in the `watchdog.io/acquisitions`
//! annotation, the acquisition times (the acquirers' wall clocks) within
//! the window; an acquisition appends to the slot it takes. Fewer than R
//! acquisitions across all slots within W, or "rate window full". (A plain
//! count of the slots' `acquireTime`s could never reach R when R > K.)
//! Agents checking at the same instant can exceed R by at most K-1.
//!
//! **Unreachable.** Every call has a timeout; any error or timeout gives
//! [`Acquire::Unreachable`]: no lease, no cluster-visible action.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};
use tokio::time::Instant;

use super::{CallError, call, holder_node, list_node_names, start_suffix};
use crate::model::Time;

/// Slot names: `watchdog-remediation-0`, `-1`, ...
pub const SLOT_PREFIX: &str = "watchdog-remediation-";
/// The label of every slot (the list selects on it).
pub const SLOT_LABEL: &str = "watchdog.io/semaphore";
pub const SLOT_LABEL_VALUE: &str = "remediation";
/// For humans (`kubectl describe lease`): what the holder is remediating.
pub const REMEDIATING: &str = "watchdog.io/remediating";
/// The slot's acquisition times within the rate window (RFC 3339, comma
/// separated).
pub const ACQUISITIONS: &str = "watchdog.io/acquisitions";

/// The wall clock written into `acquireTime`/`renewTime` and the rate
/// window (tests inject a skewed one). Never used to judge expiry.
pub type WallClock = Arc<dyn Fn() -> Time + Send + Sync>;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Where the slots live (the agent's own namespace in the chart).
    pub namespace: String,
    /// At most this many nodes at once...
    pub max_nodes: u32,
    /// ...and at most this percent of the pool (never below 1 node).
    pub max_percent: u32,
    /// The pool: Nodes matching this label selector (all when None).
    pub node_selector: Option<String>,
    /// `leaseDurationSeconds` written (whole seconds, at least 1).
    pub lease_duration: Duration,
    /// Added to a holder's duration before this agent judges it expired.
    pub skew_margin: Duration,
    /// At most this many acquisitions cluster-wide per `rate_window`.
    pub rate_max: u32,
    pub rate_window: Duration,
    /// Per apiserver call.
    pub timeout: Duration,
}

impl LeaseConfig {
    /// One node at a time, at most 10 % of the pool, a 60 s lease (renew
    /// every 20 s), 3 acquisitions per hour, 10 s per call.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            max_nodes: 1,
            max_percent: 10,
            node_selector: None,
            lease_duration: Duration::from_secs(60),
            skew_margin: Duration::from_secs(2),
            rate_max: 3,
            rate_window: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
        }
    }

    fn duration_secs(&self) -> i32 {
        self.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }
}

/// K: max(1, min(count, floor(percent * pool / 100))).
pub fn slot_count(pool: usize, max_nodes: u32, max_percent: u32) -> u32 {
    let by_percent = (pool as u64 * u64::from(max_percent) / 100).min(u64::from(u32::MAX)) as u32;
    max_nodes.min(by_percent).max(1)
}

pub fn slot_name(i: u32) -> String {
    format!("{SLOT_PREFIX}{i}")
}

/// What is being remediated, written on the Lease for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub finding: String,
    pub cause: String,
    pub action: String,
    pub target: String,
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {} (finding {})",
            self.cause, self.action, self.target, self.finding
        )
    }
}

/// A slot this agent holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub index: u32,
    /// This agent's `holderIdentity` (node name + start suffix).
    pub holder: String,
    /// K when it was acquired.
    pub slots: u32,
    /// The nodes holding a slot right after the acquisition, this one included.
    pub holders: Vec<String>,
    /// `acquireTime` (this agent's wall clock).
    pub acquired_at: Time,
    /// Local instant after which no cluster-visible action may start
    /// without a successful renewal.
    pub valid_until: Instant,
}

/// The outcome of [`Semaphore::acquire`].
#[derive(Clone, Debug, PartialEq)]
pub enum Acquire {
    Held(Slot),
    /// Every slot is held by a live holder (node names).
    Full {
        slots: u32,
        holders: Vec<String>,
    },
    /// `recent` acquisitions within `window`, at most `max`.
    RateLimited {
        recent: u32,
        max: u32,
        window: Duration,
    },
    /// The apiserver could not be asked (error or timeout): no lease.
    Unreachable(String),
}

impl Acquire {
    pub fn is_held(&self) -> bool {
        matches!(self, Self::Held(_))
    }
}

fn window_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The texts for `remediation` records' `budget` / `reason`.
impl fmt::Display for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Held(s) => write!(
                f,
                "slot {} held ({} of {} slots held by {})",
                s.name,
                s.holders.len(),
                s.slots,
                s.holders.join(", ")
            ),
            Self::Full { slots, holders } => write!(
                f,
                "{} of {} slots held by {}",
                holders.len(),
                slots,
                holders.join(", ")
            ),
            Self::RateLimited {
                recent,
                max,
                window,
            } => write!(
                f,
                "rate window full: {recent} acquisitions in the last {} (at most {max})",
                window_text(*window)
            ),
            Self::Unreachable(why) => {
                write!(
                    f,
                    "apiserver unreachable ({why}): no lease, no cluster-visible action"
                )
            }
        }
    }
}

/// The outcome of [`Semaphore::renew`].
#[derive(Clone, Debug, PartialEq)]
pub enum Renew {
    Renewed {
        valid_until: Instant,
    },
    /// Another agent took the slot, or it is gone: stop acting.
    Lost(String),
    /// The renewal could not be sent; the slot stays valid until
    /// `valid_until` at most.
    Unreachable(String),
    NotHeld,
}

/// What this agent last saw of a slot.
#[derive(Clone, Debug)]
struct Observed {
    rv: String,
    seen_at: Instant,
}

struct Held {
    slot: Slot,
    lease: Lease,
}

pub struct Semaphore {
    leases: Api<Lease>,
    nodes: Api<Node>,
    cfg: LeaseConfig,
    identity: String,
    wall: WallClock,
    observed: HashMap<String, Observed>,
    held: Option<Held>,
}

fn micro(t: Time) -> MicroTime {
    MicroTime(Timestamp::from_millisecond(t.0.min(i64::MAX as u64) as i64).unwrap_or_default())
}

fn holder_of(l: &Lease) -> Option<&str> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn slot_index(name: &str) -> Option<u32> {
    name.strip_prefix(SLOT_PREFIX)?.parse().ok()
}

/// The acquisition times recorded on a slot.
fn acquisitions(l: &Lease) -> Vec<Time> {
    l.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACQUISITIONS))
        .map(|v| {
            v.split(',')
                .filter_map(|t| humantime::parse_rfc3339_weak(t.trim()).ok())
                .map(Time::from_system)
                .collect()
        })
        .unwrap_or_default()
}

impl Semaphore {
    /// The semaphore of the agent on `node`; its identity is the node name
    /// and a suffix new at every start.
    pub fn new(client: Client, node: &str, cfg: LeaseConfig) -> Self {
        Self::with_identity(client, format!("{node}_{}", start_suffix()), cfg)
    }

    pub fn with_identity(client: Client, identity: String, cfg: LeaseConfig) -> Self {
        Self {
            leases: Api::namespaced(client.clone(), &cfg.namespace),
            nodes: Api::all(client),
            cfg,
            identity,
            wall: Arc::new(Time::now),
            observed: HashMap::new(),
            held: None,
        }
    }

    /// Another wall clock for `acquireTime`, `renewTime` and the rate window.
    pub fn with_wall_clock(mut self, wall: WallClock) -> Self {
        self.wall = wall;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// The slot held, if any (it may have expired: see [`Self::may_act`]).
    pub fn holding(&self) -> Option<&Slot> {
        self.held.as_ref().map(|h| &h.slot)
    }

    /// A slot is held and its last successful write is recent enough that
    /// nobody else can have taken it over: a cluster-visible action may start.
    pub fn may_act(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| Instant::now() < h.slot.valid_until)
    }

    fn observe(&mut self, l: &Lease, now: Instant) {
        let (Some(name), Some(rv)) = (&l.metadata.name, &l.metadata.resource_version) else {
            return;
        };
        match self.observed.get_mut(name) {
            Some(o) if &o.rv == rv => {}
            _ => {
                self.observed.insert(
                    name.clone(),
                    Observed {
                        rv: rv.clone(),
                        seen_at: now,
                    },
                );
            }
        }
    }

    /// Held by someone else who has not been seen to expire (on this
    /// agent's clock).
    fn live_other(&self, l: &Lease, now: Instant) -> Option<String> {
        let holder = holder_of(l)?;
        if holder == self.identity {
            return None;
        }
        let name = l.metadata.name.as_deref()?;
        let secs = l
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0)
            .map_or(self.cfg.lease_duration, |s| Duration::from_secs(s as u64));
        let expired = self
            .observed
            .get(name)
            .is_some_and(|o| now.duration_since(o.seen_at) > secs + self.cfg.skew_margin);
        (!expired).then(|| holder.to_owned())
    }

    /// The slot as this agent wants it: held by it, acquired now, the
    /// intent and the rate window's history on it.
    fn claim(&self, name: &str, prev: Option<&Lease>, intent: &Intent, now: Time) -> Lease {
        let window = self.cfg.rate_window.as_millis() as u64;
        let mut history: Vec<Time> = prev
            .map(acquisitions)
            .unwrap_or_default()
            .into_iter()
            .filter(|t| now.millis_since(*t) < window && t.0 <= now.0 + window)
            .collect();
        history.push(now);
        // Bounded: the window never needs more than R entries per slot.
        let keep = (self.cfg.rate_max.max(1)) as usize;
        if history.len() > keep {
            history.drain(..history.len() - keep);
        }
        let mut annotations: BTreeMap<String, String> = prev
            .and_then(|l| l.metadata.annotations.clone())
            .unwrap_or_default();
        annotations.insert(REMEDIATING.into(), intent.to_string());
        annotations.insert(
            ACQUISITIONS.into(),
            history
                .iter()
                .map(|t| t.rfc3339())
                .collect::<Vec<_>>()
                .join(","),
        );
        let prev_spec = prev.and_then(|l| l.spec.clone()).unwrap_or_default();
        let transitions = prev_spec.lease_transitions.unwrap_or(0)
            + i32::from(prev.is_some_and(|l| holder_of(l) != Some(&self.identity)));
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.cfg.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    SLOT_LABEL.into(),
                    SLOT_LABEL_VALUE.into(),
                )])),
                annotations: Some(annotations),
                resource_version: prev.and_then(|l| l.metadata.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.cfg.duration_secs()),
                acquire_time: Some(micro(now)),
                renew_time: Some(micro(now)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// Take a slot for `intent`, or say why not. When a slot is already
    /// held, this renews it.
    pub async fn acquire(&mut self, intent: &Intent) -> Acquire {
        if self.held.is_some() {
            match self.renew().await {
                Renew::Renewed { .. } => {
                    return Acquire::Held(self.held.as_ref().expect("held").slot.clone());
                }
                Renew::Unreachable(why) => return Acquire::Unreachable(why),
                Renew::Lost(_) | Renew::NotHeld => {}
            }
        }
        let t = self.cfg.timeout;
        let pool = match list_node_names(&self.nodes, self.cfg.node_selector.as_deref(), t).await {
            Ok(n) => n.len(),
            Err(e) => return Acquire::Unreachable(format!("cannot count the pool: {e}")),
        };
        let k = slot_count(pool, self.cfg.max_nodes, self.cfg.max_percent);
        let lp = ListParams::default().labels(&format!("{SLOT_LABEL}={SLOT_LABEL_VALUE}"));
        let listed = match call(t, "list leases", self.leases.list(&lp)).await {
            Ok(l) => l.items,
            Err(e) => return Acquire::Unreachable(e.to_string()),
        };
        let now = Instant::now();
        let wall = (self.wall)();
        let mut slots: BTreeMap<u32, Lease> = BTreeMap::new();
        for l in listed {
            if let Some(i) = l.metadata.name.as_deref().and_then(slot_index) {
                self.observe(&l, now);
                slots.insert(i, l);
            }
        }
        self.observed
            .retain(|name, _| slot_index(name).is_some_and(|i| slots.contains_key(&i)));

        let live: Vec<String> = slots
            .values()
            .filter_map(|l| self.live_other(l, now))
            .collect();
        if live.len() as u32 >= k {
            return Acquire::Full {
                slots: k,
                holders: live.iter().map(|h| holder_node(h).to_owned()).collect(),
            };
        }
        let window = self.cfg.rate_window.as_millis() as u64;
        let recent = slots
            .values()
            .flat_map(acquisitions)
            .filter(|a| wall.millis_since(*a) < window && a.0 <= wall.0 + window)
            .count() as u32;
        if recent >= self.cfg.rate_max {
            return Acquire::RateLimited {
                recent,
                max: self.cfg.rate_max,
                window: self.cfg.rate_window,
            };
        }

        for i in 0..k {
            let name = slot_name(i);
            let prev = slots.get(&i);
            if prev.is_some_and(|l| self.live_other(l, now).is_some()) {
                continue;
            }
            let want = self.claim(&name, prev, intent, wall);
            let pp = PostParams::default();
            let sent = Instant::now();
            let res = match prev {
                None => {
                    call(
                        t,
                        format!("create lease {name}"),
                        self.leases.create(&pp, &want),
                    )
                    .await
                }
                Some(_) => {
                    call(
                        t,
                        format!("update lease {name}"),
                        self.leases.replace(&name, &pp, &want),
                    )
                    .await
                }
            };
            match res {
                Ok(mut lease) => {
                    self.observe(&lease, Instant::now());
                    lease.metadata.managed_fields = None;
                    let mut holders: Vec<String> =
                        live.iter().map(|h| holder_node(h).to_owned()).collect();
                    holders.push(holder_node(&self.identity).to_owned());
                    let slot = Slot {
                        name,
                        index: i,
                        holder: self.identity.clone(),
                        slots: k,
                        holders,
                        acquired_at: wall,
                        valid_until: sent + self.cfg.lease_duration,
                    };
                    self.held = Some(Held {
                        slot: slot.clone(),
                        lease,
                    });
                    return Acquire::Held(slot);
                }
                // AlreadyExists, Conflict: another agent won it; NotFound:
                // deleted meanwhile. Try the next slot.
                Err(e) if matches!(e.code(), Some(409 | 404)) => continue,
                Err(e) => return Acquire::Unreachable(e.to_string()),
            }
        }
        // Lost every race: the slots are held now (the next list says by whom).
        Acquire::Full {
            slots: k,
            holders: live.iter().map(|h| holder_node(h).to_owned()).collect(),
        }
    }

    /// Renew the slot held: a replace with the resourceVersion precondition.
    pub async fn renew(&mut self) -> Renew {
        let Some(held) = self.held.as_ref() else {
            return Renew::NotHeld;
        };
        let name = held.slot.name.clone();
        let mut want = held.lease.clone();
        let t = self.cfg.timeout;
        for _ in 0..2 {
            if let Some(s) = want.spec.as_mut() {
                s.renew_time = Some(micro((self.wall)()));
                s.lease_duration_seconds = Some(self.cfg.duration_secs());
            }
            let sent = Instant::now();
            match call(
                t,
                format!("renew lease {name}"),
                self.leases.replace(&name, &PostParams::default(), &want),
            )
            .await
            {
                Ok(mut lease) => {
                    self.observe(&lease, Instant::now());
                    lease.metadata.managed_fields = None;
                    let held = self.held.as_mut().expect("held");
                    held.slot.valid_until = sent + self.cfg.lease_duration;
                    held.lease = lease;
                    return Renew::Renewed {
                        valid_until: held.slot.valid_until,
                    };
                }
                Err(e) if e.code() == Some(404) => {
                    self.held = None;
                    return Renew::Lost(format!("lease {name} was deleted"));
                }
                Err(e) if e.code() == Some(409) => {
                    // Changed since our write: still ours (someone edited
                    // an annotation), or taken over?
                    match call(t, format!("get lease {name}"), self.leases.get(&name)).await {
                        Ok(cur) if holder_of(&cur) == Some(&self.identity) => {
                            let mut cur = cur;
                            cur.metadata.managed_fields = None;
                            want = cur;
                        }
                        Ok(cur) => {
                            self.held = None;
                            return Renew::Lost(format!(
                                "lease {name} is now held by {}",
                                holder_of(&cur).unwrap_or("nobody")
                            ));
                        }
                        Err(e) if e.code() == Some(404) => {
                            self.held = None;
                            return Renew::Lost(format!("lease {name} was deleted"));
                        }
                        Err(e) => return Renew::Unreachable(e.to_string()),
                    }
                }
                Err(e) => return Renew::Unreachable(e.to_string()),
            }
        }
        self.held = None;
        Renew::Lost(format!("lease {name} keeps changing under us"))
    }

    /// Give the slot back: clear `holderIdentity` and the intent, keep the
    /// object (its acquisition history). Locally the slot is let go in any
    /// case; when the apiserver cannot be told, the Lease expires.
    pub async fn release(&mut self) -> Result<(), CallError> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let name = held.slot.name;
        let mut want = held.lease;
        let t = self.cfg.timeout;
        for _ in 0..2 {
            if let Some(s) = want.spec.as_mut() {
                s.holder_identity = None;
                s.renew_time = Some(micro((self.wall)()));
            }
            if let Some(a) = want.metadata.annotations.as_mut() {
                a.remove(REMEDIATING);
            }
            match call(
                t,
                format!("release lease {name}"),
                self.leases.replace(&name, &PostParams::default(), &want),
            )
            .await
            {
                Ok(lease) => {
                    self.observe(&lease, Instant::now());
                    return Ok(());
                }
                Err(e) if e.code() == Some(404) => return Ok(()),
                Err(e) if e.code() == Some(409) => {
                    match call(t, format!("get lease {name}"), self.leases.get(&name)).await {
                        Ok(cur) if holder_of(&cur) == Some(&self.identity) => {
                            let mut cur = cur;
                            cur.metadata.managed_fields = None;
                            want = cur;
                        }
                        // Someone else's now: nothing of ours to release.
                        Ok(_) => return Ok(()),
                        Err(e) if e.code() == Some(404) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn k_from_count_and_percent() {
        // 10 % of 5 nodes is 0: never below 1.
        assert_eq!(slot_count(5, 3, 10), 1);
        assert_eq!(slot_count(100, 3, 10), 3);
        assert_eq!(slot_count(100, 20, 10), 10);
        assert_eq!(slot_count(0, 2, 100), 1);
        assert_eq!(slot_count(50, 2, 100), 2);
    }

    #[test]
    fn texts() {
        let full = Acquire::Full {
            slots: 2,
            holders: vec!["node-a".into(), "node-b".into()],
        };
        assert_eq!(full.to_string(), "2 of 2 slots held by node-a, node-b");
        let rl = Acquire::RateLimited {
            recent: 3,
            max: 3,
            window: Duration::from_secs(3600),
        };
        assert_eq!(
            rl.to_string(),
            "rate window full: 3 acquisitions in the last 1h (at most 3)"
        );
        assert_eq!(holder_node("node-a_1f2e3d4c"), "node-a");
    }
}

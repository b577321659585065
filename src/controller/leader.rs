//! Leader election on a `coordination.k8s.io/v1` Lease: of several replicas, one
//! reconciles and the others wait, writing nothing.
//!
//! The algorithm is client-go's (`leaderelection`): the holder renews the Lease every
//! retry period; another replica takes it once it has seen no renewal for the lease
//! duration; every write of the Lease is a replace guarded by the `resourceVersion`
//! read, so of two replicas racing for it one wins and the other gets a conflict.
//! Expiry is judged by this process's own clock from when it *observed* a renewal,
//! never by comparing the times written in the Lease with its clock, so clocks that
//! disagree between nodes cannot make two leaders.
//!
//! Why our own ~200 lines rather than a crate: kube-runtime 5 has no leader election,
//! and `kube-lease-manager` would add a dependency whose renewal runs in its own task
//! while bosun needs one thing more than "am I leader": a [`LeaderClaim`] that turns
//! false at the renew deadline, *before* another replica may take the Lease, and that
//! the status writer checks before every write.
//!
//! Timing (client-go's defaults): lease duration 15 s, renew deadline 10 s, retry 2 s.
//! The holder stops writing 10 s after its last successful renewal; a follower takes
//! over no earlier than 15 s after it last saw one: the 5 s between them is the margin
//! for a stalled process and for the follower's view lagging. A holder whose claim
//! lapsed goes on trying: it renews the Lease if it is still in its name, and exits
//! once another replica holds it ([`LeaseElector::keep`]).
//!
//! `coordination.k8s.io/v1` Leases are served the same from Kubernetes 1.14 on (the
//! local 1.20 control plane and 1.28+ alike); the fields of coordinated leader
//! election (1.31+: `strategy`, `preferredHolder`) are left unset.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::Error;
use crate::failure::{self, ApiErrorClass};

/// How long a Lease is valid after its last renewal, when to give it up, how often to
/// try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A follower takes the Lease once it has seen no renewal for this long.
    pub lease_duration: Duration,
    /// The holder stops writing once its last successful renewal is this old.
    pub renew_deadline: Duration,
    /// How often the holder renews and a follower looks again.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Where the Lease is and who this process is.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_namespace: String,
    pub lease_name: String,
    /// Unique per replica (a pod's name): the Lease's `holderIdentity`. A process
    /// restarted with the same identity takes its Lease back at once (its predecessor
    /// is gone), so it must never be shared by two live processes.
    pub identity: String,
    pub timing: Timing,
    /// This replica's own Pod (`POD_NAMESPACE`, `POD_NAME`), when it runs in one: the
    /// leader labels it [`LEADER_LABEL`], so that a Service can send the Git push
    /// webhooks to the leader alone.
    pub pod: Option<(String, String)>,
}

/// The label the leader puts on its own Pod (`"true"`); every replica takes it off its
/// Pod when it starts. The chart's webhook Service selects it.
pub const LEADER_LABEL: &str = "bosun.dev/leader";

/// Puts [`LEADER_LABEL`] on this replica's Pod, or takes it off. A failure is logged,
/// never fatal: only the webhooks' routing depends on it (a push that reaches a
/// standby is answered 503, and the leader polls).
pub async fn label_own_pod(client: &Client, election: &LeaderElection, leading: bool) {
    let Some((namespace, name)) = &election.pod else {
        return;
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    // Read first: a standby whose Pod carries no label writes nothing at all.
    if let Ok(Some(pod)) = pods.get_opt(name).await {
        let labelled = pod.labels().get(LEADER_LABEL).is_some_and(|v| v == "true");
        if labelled == leading {
            return;
        }
    }
    let value = if leading {
        serde_json::Value::String("true".into())
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    match pods
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => info!(pod = %format!("{namespace}/{name}"), leading, "labelled this replica's Pod"),
        Err(error) => warn!(
            pod = %format!("{namespace}/{name}"),
            error = %failure::server_message(&error),
            "could not label this replica's Pod (the controller needs patch on pods in its namespace); push webhooks may reach a standby"
        ),
    }
}

/// The default identity: the pod's name (`POD_NAME`, else `HOSTNAME`, which is the
/// pod's name in a pod), else the host's name.
pub fn default_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|key| std::env::var(key).ok())
        .find(|value| !value.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| format!("bosun-{}", std::process::id()))
}

/// Whether this process may write: shared by the election and every writer.
#[derive(Clone, Debug)]
pub struct LeaderClaim(Arc<ClaimState>);

#[derive(Debug)]
enum ClaimState {
    /// No election (`--leader-elect=false`): the only replica, always allowed.
    Unconditional,
    /// Held until this instant (the last renewal sent + the renew deadline), if at all.
    Elected(Mutex<Option<Instant>>),
}

impl LeaderClaim {
    /// A claim for a process that runs without leader election.
    pub fn unconditional() -> Self {
        LeaderClaim(Arc::new(ClaimState::Unconditional))
    }

    /// A claim not held until the election renews it.
    pub fn elected() -> Self {
        LeaderClaim(Arc::new(ClaimState::Elected(Mutex::new(None))))
    }

    /// True only while the Lease is held and its renew deadline has not passed.
    pub fn is_held(&self) -> bool {
        match &*self.0 {
            ClaimState::Unconditional => true,
            ClaimState::Elected(until) => until
                .lock()
                .expect("leader claim poisoned")
                .is_some_and(|until| Instant::now() < until),
        }
    }

    /// `Ok` while held; otherwise an error naming what was not written.
    pub fn check(&self, what: &str) -> Result<(), Error> {
        if self.is_held() {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "not the leader (the Lease is not held or its renewal is overdue): {what} not written"
            )))
        }
    }

    fn held_until(&self, until: Instant) {
        if let ClaimState::Elected(held) = &*self.0 {
            *held.lock().expect("leader claim poisoned") = Some(until);
        }
    }

    fn release(&self) {
        if let ClaimState::Elected(held) = &*self.0 {
            *held.lock().expect("leader claim poisoned") = None;
        }
    }

    /// When the claim lapses, if it is held.
    fn deadline(&self) -> Option<Instant> {
        match &*self.0 {
            ClaimState::Unconditional => None,
            ClaimState::Elected(until) => *until.lock().expect("leader claim poisoned"),
        }
    }
}

/// What this process last saw of the Lease, and when it saw it change.
#[derive(Clone, Debug)]
struct Observed {
    record: Record,
    /// When the record (as far as we can tell) last changed.
    changed_at: Instant,
    /// When we last read it.
    looked_at: Instant,
}

/// The parts of a Lease that say who holds it and whether it is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    lease_duration: Option<Duration>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Record {
        Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            lease_duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Another replica holds it for this much longer (as this process sees it).
    Wait { holder: String, remaining: Duration },
}

/// The decision on a Lease whose record last changed at `changed_at`.
fn attempt(record: &Record, identity: &str, changed_at: Instant, now: Instant, timing: &Timing) -> Attempt {
    let Some(holder) = &record.holder else {
        return Attempt::Take;
    };
    if holder == identity {
        return Attempt::Renew;
    }
    let duration = record.lease_duration.unwrap_or(timing.lease_duration);
    let expires = changed_at + duration;
    if now >= expires {
        Attempt::Take
    } else {
        Attempt::Wait {
            holder: holder.clone(),
            remaining: expires - now,
        }
    }
}

/// When a record first seen now changed. Between our previous look and this one the
/// holder renewed at some point; the `renewTime` it wrote says when, but by its clock.
/// It is believed only within that window: a clock ahead or behind can move the
/// observation by at most one retry period (2 s, inside the 5 s margin between renew
/// deadline and lease duration). On a first look the change is taken to be now.
fn changed_at(previous_look: Option<Instant>, now: Instant, age_by_record: Option<Duration>) -> Instant {
    let window = previous_look.map_or(Duration::ZERO, |look| now.saturating_duration_since(look));
    now.checked_sub(age_by_record.unwrap_or(Duration::ZERO).min(window))
        .unwrap_or(now)
}

/// One replica's side of the election on one Lease.
pub struct LeaseElector {
    api: Api<Lease>,
    election: LeaderElection,
    observed: Option<Observed>,
}

impl LeaseElector {
    pub fn new(client: Client, election: LeaderElection) -> Self {
        LeaseElector {
            api: Api::namespaced(client, &election.lease_namespace),
            election,
            observed: None,
        }
    }

    fn lease_ref(&self) -> String {
        format!(
            "Lease {}/{}",
            self.election.lease_namespace, self.election.lease_name
        )
    }

    /// Waits until this process holds the Lease, through an unreachable API server and
    /// through refusals (no permission, no such namespace), which are logged as errors
    /// naming the Lease and what the controller needs.
    pub async fn acquire(&mut self, claim: &LeaderClaim) {
        let mut told_holder: Option<String> = None;
        loop {
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Held { .. }) => {
                    claim.held_until(sent + self.election.timing.renew_deadline);
                    info!(
                        lease = %self.lease_ref(),
                        identity = %self.election.identity,
                        "became the leader: this replica reconciles"
                    );
                    return;
                }
                Ok(Outcome::HeldBy { holder, remaining }) => {
                    if told_holder.as_ref() != Some(&holder) {
                        info!(
                            lease = %self.lease_ref(),
                            %holder,
                            "another replica is the leader; waiting as a follower (writing nothing)"
                        );
                        told_holder = Some(holder);
                    }
                    // Look again when it would expire, if that is before the next retry.
                    let wait = remaining.min(self.election.timing.retry_period);
                    tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
                }
                Ok(Outcome::Lost) => tokio::time::sleep(self.election.timing.retry_period).await,
                Err(error) if failure::class_of(&error) == ApiErrorClass::Transient => {
                    warn!(lease = %self.lease_ref(), error = %failure::server_message(&error), "cannot read or write the Lease; trying again");
                    tokio::time::sleep(self.election.timing.retry_period).await;
                }
                // Forbidden, or no such namespace: waited for too (the RBAC or the
                // namespace may come after the controller, and 1.20's authorizer answers
                // 403 for a moment after an API server restart), but said as an error.
                Err(error) => {
                    tracing::error!(
                        lease = %self.lease_ref(),
                        error = %failure::server_message(&error),
                        "cannot read or write the Lease (--lease-namespace, --lease-name; the controller needs get, create and update on leases.coordination.k8s.io there); trying again"
                    );
                    tokio::time::sleep(self.election.timing.retry_period.max(Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// Renews the Lease every retry period; returns only once another replica holds
    /// it or held it meanwhile (this process must then stop: its in-memory view of the
    /// apps may predate that replica's writes).
    ///
    /// A renewal that keeps failing (the API server is down or unreachable) lapses the
    /// claim at the renew deadline, so nothing is written from then on, but does not
    /// end the process: once the API server answers again, a Lease still in our name
    /// (no other replica could reach it either) is renewed and the claim is back, and a
    /// Lease another replica took meanwhile ends it. client-go's elector exits at the
    /// deadline instead; with one replica that turns every API outage longer than
    /// 10 s into a restart that loses the gate trackers of every verification.
    pub async fn keep(&mut self, claim: &LeaderClaim) -> String {
        let mut lapsed = false;
        loop {
            let next = Instant::now() + self.election.timing.retry_period;
            let wake = match claim.deadline() {
                Some(deadline) if !lapsed => next.min(deadline),
                _ => next,
            };
            tokio::time::sleep_until(wake.into()).await;
            if !lapsed && claim.deadline().is_none_or(|deadline| Instant::now() >= deadline) {
                claim.release();
                lapsed = true;
                warn!(
                    lease = %self.lease_ref(),
                    "no successful renewal for {:?} (renew deadline): writing nothing until the Lease is renewed",
                    self.election.timing.renew_deadline
                );
            }
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Held { renewed: true }) => {
                    claim.held_until(sent + self.election.timing.renew_deadline);
                    if std::mem::take(&mut lapsed) {
                        info!(lease = %self.lease_ref(), "renewed the Lease again: reconciling");
                    }
                }
                // Not in our name any more when we got it back (another replica held
                // it, released it or deleted it meanwhile): what this process holds in
                // memory may predate that replica's writes.
                Ok(Outcome::Held { renewed: false }) => {
                    self.release(claim).await;
                    return "another replica held it while this one could not renew".into();
                }
                Ok(Outcome::HeldBy { holder, .. }) => {
                    claim.release();
                    return format!("{holder} holds it now");
                }
                Ok(Outcome::Lost) => {
                    warn!(lease = %self.lease_ref(), "the Lease changed while renewing it; trying again");
                }
                Err(error) => {
                    warn!(lease = %self.lease_ref(), error = %failure::server_message(&error), "renewing the Lease failed; trying again");
                }
            }
        }
    }

    /// Gives the Lease up (a clean shutdown), so another replica takes it at once
    /// instead of after the lease duration. Only if this process still holds it.
    pub async fn release(&mut self, claim: &LeaderClaim) {
        claim.release();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.election.lease_name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.election.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.lease_ref(), "released the Lease"),
            Err(error) => {
                warn!(lease = %self.lease_ref(), error = %failure::server_message(&error), "could not release the Lease; another replica takes it after the lease duration")
            }
        }
    }

    /// One look at the Lease: create it, renew it, take it, or see who holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
        let timing = self.election.timing;
        let name = self.election.lease_name.clone();
        let identity = self.election.identity.clone();
        let now_wall = Timestamp::now();
        let mine = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(identity.clone()),
            lease_duration_seconds: Some(timing.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now_wall))),
            renew_time: Some(MicroTime(now_wall)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.election.lease_namespace.clone()),
                    ..Default::default()
                },
                spec: Some(mine(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, Instant::now());
                    Ok(Outcome::Held { renewed: false })
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Lost),
                Err(error) => Err(error),
            };
        };
        let now = Instant::now();
        let observed = self.observe(&lease, now);
        let spec = lease.spec.clone().unwrap_or_default();
        let decision = attempt(&observed.record, &identity, observed.changed_at, now, &timing);
        let renewed = decision == Attempt::Renew;
        let next = match decision {
            Attempt::Wait { holder, remaining } => return Ok(Outcome::HeldBy { holder, remaining }),
            Attempt::Renew => mine(spec.acquire_time.clone(), spec.lease_transitions.unwrap_or(0)),
            Attempt::Take => {
                let transitions =
                    spec.lease_transitions.unwrap_or(0) + i32::from(observed.record.holder.is_some());
                mine(None, transitions)
            }
        };
        lease.spec = Some(next);
        // `lease.metadata.resourceVersion` is the one read: a replica that wrote
        // meanwhile makes this a conflict.
        match self.api.replace(&name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(&written, Instant::now());
                Ok(Outcome::Held { renewed })
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Lost),
            Err(error) => Err(error),
        }
    }

    /// Records what the Lease says now; returns the observation.
    fn observe(&mut self, lease: &Lease, now: Instant) -> Observed {
        let record = Record::of(&lease.spec.clone().unwrap_or_default());
        let observed = match self.observed.take() {
            Some(previous) if previous.record == record => Observed {
                looked_at: now,
                ..previous
            },
            previous => {
                let age = record
                    .renew_time
                    .and_then(|renewed| Timestamp::now().duration_since(renewed).try_into().ok());
                Observed {
                    changed_at: changed_at(previous.map(|p| p.looked_at), now, age),
                    looked_at: now,
                    record,
                }
            }
        };
        self.observed = Some(observed.clone());
        observed
    }
}

/// The result of one look at the Lease.
enum Outcome {
    /// Ours now: `renewed` if it was ours already, false if it was taken (free,
    /// expired, or made anew).
    Held {
        renewed: bool,
    },
    HeldBy {
        holder: String,
        remaining: Duration,
    },
    /// Another replica wrote it first (a conflict): look again.
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>) -> Record {
        Record {
            holder: holder.map(String::from),
            renew_time: None,
            lease_duration: Some(Duration::from_secs(15)),
        }
    }

    #[test]
    fn a_free_lease_is_taken_and_our_own_renewed() {
        let now = Instant::now();
        let timing = Timing::default();
        assert_eq!(attempt(&record(None), "a", now, now, &timing), Attempt::Take);
        assert_eq!(
            attempt(&record(Some("a")), "a", now, now, &timing),
            Attempt::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_the_lease_duration_has_passed_since_its_renewal_was_seen() {
        let seen = Instant::now();
        let timing = Timing::default();
        let at = |secs| seen + Duration::from_secs(secs);
        assert_eq!(
            attempt(&record(Some("b")), "a", seen, at(14), &timing),
            Attempt::Wait {
                holder: "b".into(),
                remaining: Duration::from_secs(1)
            }
        );
        assert_eq!(
            attempt(&record(Some("b")), "a", seen, at(15), &timing),
            Attempt::Take
        );
    }

    #[test]
    fn a_renewal_is_dated_back_by_its_renew_time_only_within_the_time_since_the_last_look() {
        let now = Instant::now() + Duration::from_secs(100);
        let second = Duration::from_secs(1);
        // First look: now, whatever the record says (a follower starting up waits a
        // whole lease duration).
        assert_eq!(changed_at(None, now, Some(10 * second)), now);
        // Renewed 1 s ago by its clock, looked 2 s ago: 1 s ago.
        assert_eq!(
            changed_at(Some(now - 2 * second), now, Some(second)),
            now - second
        );
        // A clock far behind cannot date it back further than the last look.
        assert_eq!(
            changed_at(Some(now - 2 * second), now, Some(60 * second)),
            now - 2 * second
        );
        // A clock ahead (renewed "in the future"): now.
        assert_eq!(changed_at(Some(now - 2 * second), now, None), now);
    }

    #[test]
    fn the_holder_stops_writing_before_a_follower_may_take_the_lease() {
        let timing = Timing::default();
        // Worst case for safety: the follower dated the renewal back a whole retry period.
        assert!(timing.renew_deadline < timing.lease_duration - timing.retry_period);
    }

    #[test]
    fn a_claim_is_held_until_its_deadline_and_an_unconditional_one_always() {
        assert!(LeaderClaim::unconditional().is_held());
        let claim = LeaderClaim::elected();
        assert!(!claim.is_held());
        assert!(claim.check("the status of shop/api").is_err());
        claim.held_until(Instant::now() + Duration::from_secs(5));
        assert!(claim.is_held());
        claim.held_until(Instant::now() - Duration::from_millis(1));
        assert!(!claim.is_held());
        let message = claim.check("the status of shop/api").unwrap_err().to_string();
        assert!(message.contains("shop/api"), "{message}");
    }
}

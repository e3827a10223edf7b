//! One queue: a pure state machine ([`QueueState`]) and the actor that owns it ([`QueueActor`]).
//!
//! Ordering: callers by priority (higher first), then by `since_ms` (first entry into any queue,
//! so an overflowed caller keeps its age), then by enqueue order. Agents by longest idle.
//!
//! An agent whose reservation goes unanswered (its node is unreachable, or may not act for it right
//! now) is suspended for [`RETRY_UNANSWERED`] and then tried again, rather than dropped until it
//! announces itself: it may still be Available and would then never announce itself again.
//!
//! Times: max-wait overflow counts from entry into *this* queue, so each queue's `max_wait_secs`
//! applies to its own wait; waiting time and service level count from `since_ms`, the wait the
//! caller actually experienced. Service level follows the domain definition: calls answered
//! within `service_level_secs` / calls offered (entered this queue) x 100.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use metrics::{Counter, Gauge};
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, SpawnErr};
use serde::{Deserialize, Serialize};
use switchyard_cluster::Directory;

use super::{AgentId, AgentMsg, CallId, OfferOutcome, QueueMsg};
use crate::call::WireCallMsg;
use crate::config::{Overflow, QueueConfig};
use crate::remote::{CallAddr, Fence, Postman};
use crate::time::unix_ms;

/// How long a queue waits for an agent actor to answer a reservation.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack past the offer timeout before an offer the call actor never reported is written off.
const OFFER_GRACE_MS: u64 = 10_000;
/// Period of the overflow and watchdog check.
const TICK: Duration = Duration::from_secs(1);
/// How long callers of a failed node hold their place for their standby (which takes them over
/// about 100 ms after the failure is declared) before they are written off.
const HOLD_FOR_TAKEOVER_MS: u64 = 3_000;
/// How long an agent whose reservation went unanswered is left out before it is tried again.
pub const RETRY_UNANSWERED: Duration = Duration::from_secs(1);

/// A caller waiting in the queue.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Caller {
    pub priority: u8,
    /// Unix ms of the caller's first entry into any queue.
    pub since_ms: u64,
    /// Unix ms of entry into this queue.
    pub entered_ms: u64,
    /// Enqueue order within this queue (FIFO tie-break).
    pub seq: u64,
}

/// A caller's place in line; the derived order is the serving order.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(PartialEq, Eq, PartialOrd, Ord))]
struct Place {
    /// `u8::MAX - priority`, so that higher priorities sort first.
    rank: u8,
    since_ms: u64,
    seq: u64,
    call_id: CallId,
}

impl Place {
    fn of(call_id: &str, caller: &Caller) -> Self {
        Self {
            rank: u8::MAX - caller.priority,
            since_ms: caller.since_ms,
            seq: caller.seq,
            call_id: call_id.to_owned(),
        }
    }
}

/// An available agent; the derived order puts the longest idle first.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(PartialEq, Eq, PartialOrd, Ord))]
struct IdleAgent {
    idle_since_ms: u64,
    agent_id: AgentId,
}

/// An agent left out of pairing until `retry_at_ms` (see the module docs).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Suspended {
    pub idle_since_ms: u64,
    pub retry_at_ms: u64,
}

/// An offer in flight.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Offer {
    pub agent_id: AgentId,
    pub offered_at_ms: u64,
}

/// Cumulative counts since the queue started.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct QueueCounters {
    /// Calls that entered the queue (the domain's "calls offered").
    pub offered: u64,
    pub answered: u64,
    /// Answered within `service_level_secs` of the caller's `since_ms`.
    pub answered_in_service_level: u64,
    /// Left before an agent answered (hung up, or the call actor died).
    pub abandoned: u64,
    pub overflowed: u64,
    /// Offers made to agents (a call can be offered several times).
    pub agent_offers: u64,
}

/// One queue's state: plain data, replicable by the failover issue.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct QueueState {
    pub name: String,
    pub offer_timeout_secs: u64,
    pub max_wait_secs: u64,
    pub service_level_secs: u64,
    pub counters: QueueCounters,
    callers: HashMap<CallId, Caller>,
    /// The same callers in serving order.
    line: BTreeSet<Place>,
    /// Available agents and their idle-since times, indexed both ways.
    idle: HashMap<AgentId, u64>,
    available: BTreeSet<IdleAgent>,
    /// Agents whose reservation went unanswered, out of the available set until they are retried.
    suspended: HashMap<AgentId, Suspended>,
    /// Offers in flight by call id. An abandoned caller's offer stays until its outcome arrives,
    /// because that outcome is what frees the agent.
    offers: HashMap<CallId, Offer>,
    next_seq: u64,
}

impl QueueState {
    pub fn new(config: &QueueConfig) -> Self {
        Self {
            name: config.name.clone(),
            offer_timeout_secs: config.offer_timeout_secs,
            max_wait_secs: config.max_wait_secs,
            service_level_secs: config.service_level_secs,
            counters: QueueCounters::default(),
            callers: HashMap::new(),
            line: BTreeSet::new(),
            idle: HashMap::new(),
            available: BTreeSet::new(),
            suspended: HashMap::new(),
            offers: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Callers in the queue, including those whose offer is ringing.
    pub fn waiting(&self) -> usize {
        self.callers.len()
    }

    pub fn is_waiting(&self, call_id: &str) -> bool {
        self.callers.contains_key(call_id)
    }

    pub fn available_agents(&self) -> usize {
        self.available.len()
    }

    /// The offer in flight for `call_id`.
    pub fn offer(&self, call_id: &str) -> Option<&Offer> {
        self.offers.get(call_id)
    }

    /// Adds a caller; false if it is already in the queue.
    pub fn enqueue(&mut self, call_id: CallId, priority: u8, since_ms: u64, now_ms: u64) -> bool {
        if self.callers.contains_key(&call_id) {
            return false;
        }
        let caller = Caller {
            priority,
            since_ms,
            entered_ms: now_ms,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.line.insert(Place::of(&call_id, &caller));
        self.callers.insert(call_id, caller);
        self.counters.offered += 1;
        true
    }

    /// The caller left before being connected; false if it was not waiting.
    pub fn abandon(&mut self, call_id: &str) -> bool {
        let gone = self.remove_caller(call_id).is_some();
        if gone {
            self.counters.abandoned += 1;
        }
        gone
    }

    /// Adds an agent, or updates its idle time if already available.
    pub fn agent_available(&mut self, agent_id: AgentId, idle_since_ms: u64) {
        self.agent_unavailable(&agent_id);
        self.available.insert(IdleAgent {
            idle_since_ms,
            agent_id: agent_id.clone(),
        });
        self.idle.insert(agent_id, idle_since_ms);
    }

    pub fn agent_unavailable(&mut self, agent_id: &str) {
        self.suspended.remove(agent_id);
        if let Some((agent_id, idle_since_ms)) = self.idle.remove_entry(agent_id) {
            self.available.remove(&IdleAgent {
                idle_since_ms,
                agent_id,
            });
        }
    }

    /// Takes an available agent out of pairing until `retry_at_ms`, keeping its idle time for
    /// when it comes back. Its own announcements overrule this.
    pub fn suspend_agent(&mut self, agent_id: &str, retry_at_ms: u64) {
        if let Some(&idle_since_ms) = self.idle.get(agent_id) {
            self.agent_unavailable(agent_id);
            self.suspended.insert(
                agent_id.to_owned(),
                Suspended {
                    idle_since_ms,
                    retry_at_ms,
                },
            );
        }
    }

    /// Returns suspended agents whose retry time has come to the available set.
    pub fn revive_agents(&mut self, now_ms: u64) {
        let due: Vec<(AgentId, u64)> = self
            .suspended
            .iter()
            .filter(|(_, s)| s.retry_at_ms <= now_ms)
            .map(|(id, s)| (id.clone(), s.idle_since_ms))
            .collect();
        for (agent_id, idle_since_ms) in due {
            self.agent_available(agent_id, idle_since_ms);
        }
    }

    /// The next caller to offer (best place in line among those not already ringing an agent) and
    /// the agent to offer it to (longest idle). Changes nothing.
    pub fn next_pairing(&self) -> Option<(CallId, AgentId)> {
        self.next_pairing_holding(|_| false)
    }

    /// Like [`QueueState::next_pairing`], but a caller for which `held` is true holds the line
    /// from its place on: nobody behind it is paired until it is released. For callers coming
    /// back from the standby of a failed node, whose place must not go to those behind them.
    pub fn next_pairing_holding(&self, held: impl Fn(&str) -> bool) -> Option<(CallId, AgentId)> {
        let agent = self.available.first()?;
        for place in &self.line {
            if held(&place.call_id) {
                return None;
            }
            if !self.offers.contains_key(&place.call_id) {
                return Some((place.call_id.clone(), agent.agent_id.clone()));
            }
        }
        None
    }

    /// Records an offer the agent has accepted to be reserved for; the agent leaves the
    /// available set. False (changing nothing) if the caller is not waiting or already offered.
    pub fn begin_offer(&mut self, call_id: &str, agent_id: AgentId, now_ms: u64) -> bool {
        if !self.callers.contains_key(call_id) || self.offers.contains_key(call_id) {
            return false;
        }
        self.agent_unavailable(&agent_id);
        self.offers.insert(
            call_id.to_owned(),
            Offer {
                agent_id,
                offered_at_ms: now_ms,
            },
        );
        self.counters.agent_offers += 1;
        true
    }

    /// Ends the offer of `call_id` to `agent_id`. Answered and CallerAbandoned take the caller
    /// out of the queue; the other outcomes leave it in its place for the next agent. False if no
    /// such offer is in flight (a stale or duplicate report).
    pub fn end_offer(
        &mut self,
        call_id: &str,
        agent_id: &str,
        outcome: OfferOutcome,
        now_ms: u64,
    ) -> bool {
        if self
            .offers
            .get(call_id)
            .is_none_or(|o| o.agent_id != agent_id)
        {
            return false;
        }
        self.offers.remove(call_id);
        match outcome {
            OfferOutcome::Answered => {
                if let Some(caller) = self.remove_caller(call_id) {
                    self.counters.answered += 1;
                    let waited = now_ms.saturating_sub(caller.since_ms);
                    if waited <= self.service_level_secs.saturating_mul(1000) {
                        self.counters.answered_in_service_level += 1;
                    }
                }
            }
            OfferOutcome::CallerAbandoned => {
                self.abandon(call_id);
            }
            OfferOutcome::NoAnswer | OfferOutcome::Rejected | OfferOutcome::Failed => {}
        }
        true
    }

    /// Removes and returns the callers that have waited `max_wait_secs` in this queue and are not
    /// ringing an agent (an offer in progress gets to finish).
    pub fn take_overflowed(&mut self, now_ms: u64) -> Vec<CallId> {
        let max_wait_ms = self.max_wait_secs.saturating_mul(1000);
        let due: Vec<CallId> = self
            .line
            .iter()
            .filter(|p| !self.offers.contains_key(&p.call_id))
            .filter(|p| {
                self.callers
                    .get(&p.call_id)
                    .is_some_and(|c| now_ms.saturating_sub(c.entered_ms) >= max_wait_ms)
            })
            .map(|p| p.call_id.clone())
            .collect();
        for call_id in &due {
            self.remove_caller(call_id);
        }
        self.counters.overflowed += due.len() as u64;
        due
    }

    /// Offers older than the offer timeout plus `grace_ms`: their call actor never reported.
    pub fn expired_offers(&self, now_ms: u64, grace_ms: u64) -> Vec<(CallId, AgentId)> {
        let limit = self
            .offer_timeout_secs
            .saturating_mul(1000)
            .saturating_add(grace_ms);
        self.offers
            .iter()
            .filter(|(_, o)| now_ms.saturating_sub(o.offered_at_ms) > limit)
            .map(|(c, o)| (c.clone(), o.agent_id.clone()))
            .collect()
    }

    pub fn snapshot(&self, now_ms: u64) -> QueueSnapshot {
        let c = &self.counters;
        QueueSnapshot {
            name: self.name.clone(),
            waiting: self.callers.len(),
            ringing: self.offers.len(),
            available_agents: self.available.len(),
            longest_wait_ms: self
                .callers
                .values()
                .map(|c| now_ms.saturating_sub(c.since_ms))
                .max()
                .unwrap_or(0),
            offered: c.offered,
            answered: c.answered,
            answered_in_service_level: c.answered_in_service_level,
            abandoned: c.abandoned,
            overflowed: c.overflowed,
            agent_offers: c.agent_offers,
            service_level_secs: self.service_level_secs,
            service_level_pct: (c.offered > 0)
                .then(|| c.answered_in_service_level as f64 * 100.0 / c.offered as f64),
        }
    }

    fn remove_caller(&mut self, call_id: &str) -> Option<Caller> {
        let caller = self.callers.remove(call_id)?;
        self.line.remove(&Place::of(call_id, &caller));
        Some(caller)
    }
}

/// A queue as the HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub name: String,
    /// Callers in the queue, including those whose offer is ringing.
    pub waiting: usize,
    /// Offers in flight.
    pub ringing: usize,
    pub available_agents: usize,
    pub longest_wait_ms: u64,
    pub offered: u64,
    pub answered: u64,
    pub answered_in_service_level: u64,
    pub abandoned: u64,
    pub overflowed: u64,
    pub agent_offers: u64,
    pub service_level_secs: u64,
    /// `answered_in_service_level / offered * 100`; null before the first call.
    pub service_level_pct: Option<f64>,
}

/// Thin actor around [`QueueState`].
pub struct QueueActor;

pub struct QueueActorState {
    queue: QueueState,
    overflow: Overflow,
    /// Where the call actors of waiting callers live (this node or another).
    calls: HashMap<CallId, CallAddr>,
    /// Callers of a failed node, since when (Unix ms): they hold their place while their
    /// standby takes them over.
    held_since: HashMap<CallId, u64>,
    /// Agent actors by extension, for reservations and relayed outcomes.
    agents: Directory<String, AgentMsg>,
    postman: Postman,
    fence: Fence,
    metrics: QueueMetrics,
    ticker: Option<JoinHandle<()>>,
}

struct QueueMetrics {
    waiting: Gauge,
    offered: Counter,
    answered: Counter,
    abandoned: Counter,
    overflowed: Counter,
    agent_offers: Counter,
}

impl QueueMetrics {
    fn new(queue: &str) -> Self {
        let q = queue.to_owned();
        Self {
            waiting: metrics::gauge!("switchyard_queue_waiting", "queue" => q.clone()),
            offered: metrics::counter!("switchyard_queue_offered_total", "queue" => q.clone()),
            answered: metrics::counter!("switchyard_queue_answered_total", "queue" => q.clone()),
            abandoned: metrics::counter!("switchyard_queue_abandoned_total", "queue" => q.clone()),
            overflowed: metrics::counter!("switchyard_queue_overflowed_total", "queue" => q.clone()),
            agent_offers: metrics::counter!("switchyard_queue_agent_offers_total", "queue" => q),
        }
    }

    fn record(&self, q: &QueueState) {
        let c = &q.counters;
        self.waiting.set(q.waiting() as f64);
        self.offered.absolute(c.offered);
        self.answered.absolute(c.answered);
        self.abandoned.absolute(c.abandoned);
        self.overflowed.absolute(c.overflowed);
        self.agent_offers.absolute(c.agent_offers);
    }
}

impl QueueActorState {
    /// Pairs waiting callers with available agents until one side runs out. Only while this
    /// node may act for the queue: a fenced queue keeps its callers and agents but pairs nobody.
    async fn dispatch(&mut self) {
        if !self.fence.can_act() {
            return;
        }
        loop {
            // Callers of a failed node hold their place until their standby has taken them
            // over (it re-joins the queue, or reports their ringing offer failed, from its own
            // address); `tick` drops those that never come back.
            let (calls, fence) = (&self.calls, &self.fence);
            let held = |call_id: &str| calls.get(call_id).is_some_and(|c| fence.has_failed(c.node));
            let Some((call_id, agent_id)) = self.queue.next_pairing_holding(held) else {
                break;
            };
            let Some(agent) = self.agents.get(&agent_id) else {
                self.queue.agent_unavailable(&agent_id);
                continue;
            };
            let queue = self.queue.name.clone();
            let reply = agent
                .call(
                    |reply| AgentMsg::Reserve {
                        call_id: call_id.clone(),
                        queue,
                        reply,
                    },
                    Some(RESERVE_TIMEOUT),
                )
                .await;
            let contacts = match reply {
                Ok(CallResult::Success(Some(contacts))) => contacts,
                Ok(CallResult::Success(None)) => {
                    // Taken by another queue, or no longer ready: it will announce itself again.
                    self.queue.agent_unavailable(&agent_id);
                    continue;
                }
                Ok(CallResult::Timeout | CallResult::SenderError) | Err(_) => {
                    tracing::warn!(queue = %self.queue.name, agent = %agent_id,
                        "agent did not answer a reservation; trying it again later");
                    let retry_at = unix_ms().saturating_add(RETRY_UNANSWERED.as_millis() as u64);
                    self.queue.suspend_agent(&agent_id, retry_at);
                    // The reservation may still land late; release it without counting a miss.
                    release(&agent, call_id);
                    continue;
                }
            };
            if !self
                .queue
                .begin_offer(&call_id, agent_id.clone(), unix_ms())
            {
                // The pairing cannot change while this handler awaits; never strand the agent.
                release(&agent, call_id);
                continue;
            }
            let offer = WireCallMsg::Offer {
                agent_id: agent_id.clone(),
                queue: self.queue.name.clone(),
                ring_timeout_secs: self.queue.offer_timeout_secs,
                contacts,
                offered_ms: unix_ms(),
            };
            let sent = self
                .calls
                .get(&call_id)
                .is_some_and(|call| self.postman.deliver(call, offer).is_ok());
            if !sent {
                tracing::info!(queue = %self.queue.name, call = %call_id,
                    "call actor gone before its offer; removing the caller");
                self.call_gone(&call_id);
            }
        }
    }

    fn offer_outcome(&mut self, call: CallAddr, agent_id: &str, outcome: OfferOutcome) {
        let call_id = &call.call_id;
        if self.queue.end_offer(call_id, agent_id, outcome, unix_ms()) {
            if self.queue.is_waiting(call_id) {
                // From a standby that took the call over, the report carries its new address.
                self.calls.insert(call_id.clone(), call.clone());
            } else {
                self.calls.remove(call_id);
            }
            self.relay(agent_id, call_id, outcome);
            return;
        }
        // Not an offer in flight here: a late report, or one of this queue's previous tenure (it
        // moved to this node or restarted). The agent knows which call it was offered, so it gets
        // the outcome all the same; a caller left waiting is asked to join this queue again.
        tracing::info!(queue = %self.queue.name, call = %call_id, agent = %agent_id,
            ?outcome, "outcome for an offer not in flight here; relayed to the agent");
        self.relay(agent_id, call_id, outcome);
        let still_waiting = matches!(
            outcome,
            OfferOutcome::NoAnswer | OfferOutcome::Rejected | OfferOutcome::Failed
        );
        if still_waiting && !self.queue.is_waiting(call_id) {
            let requeue = WireCallMsg::Requeue {
                queue: self.queue.name.clone(),
            };
            if let Err(e) = self.postman.deliver(&call, requeue) {
                tracing::debug!(queue = %self.queue.name, call = %call_id, error = %e,
                    "caller not asked to join again");
            }
        }
    }

    /// The call actor is gone: drop the caller and free an agent it was ringing.
    fn call_gone(&mut self, call_id: &str) {
        self.calls.remove(call_id);
        match self.queue.offer(call_id).map(|o| o.agent_id.clone()) {
            Some(agent_id) => {
                self.queue
                    .end_offer(call_id, &agent_id, OfferOutcome::CallerAbandoned, unix_ms());
                self.relay(&agent_id, call_id, OfferOutcome::CallerAbandoned);
            }
            None => {
                self.queue.abandon(call_id);
            }
        }
    }

    /// Tells the agent how its offer ended.
    fn relay(&self, agent_id: &str, call_id: &str, outcome: OfferOutcome) {
        let Some(agent) = self.agents.get(&agent_id.to_owned()) else {
            tracing::warn!(queue = %self.queue.name, agent = %agent_id, "unknown agent in an offer");
            return;
        };
        let call_id = call_id.to_owned();
        let msg = match outcome {
            OfferOutcome::Answered => AgentMsg::OfferAnswered { call_id },
            _ => AgentMsg::OfferMissed { call_id, outcome },
        };
        if agent.send_message(msg).is_err() {
            tracing::warn!(queue = %self.queue.name, agent = %agent_id, "agent actor has stopped");
        }
    }

    fn tick(&mut self) {
        let now = unix_ms();
        // Callers of a failed node that no standby brought back are lost.
        let failed: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, call)| self.fence.has_failed(call.node))
            .map(|(id, _)| id.clone())
            .collect();
        self.held_since.retain(|id, _| failed.contains(id));
        for call_id in failed {
            let since = *self.held_since.entry(call_id.clone()).or_insert(now);
            if now.saturating_sub(since) > HOLD_FOR_TAKEOVER_MS {
                tracing::warn!(queue = %self.queue.name, call = %call_id,
                    "caller of a failed node not taken over; removing");
                self.held_since.remove(&call_id);
                self.call_gone(&call_id);
            }
        }
        // Only calls on this node can be seen to die; a remote caller that vanished is written
        // off by the offer watchdog below or by overflow.
        let dead: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, call)| self.postman.is_gone(call))
            .map(|(id, _)| id.clone())
            .collect();
        for call_id in dead {
            tracing::info!(queue = %self.queue.name, call = %call_id, "call actor died; removing");
            self.call_gone(&call_id);
        }

        for (call_id, agent_id) in self.queue.expired_offers(now, OFFER_GRACE_MS) {
            // The call actor is alive but silent: count it against the offer, not the caller.
            let outcome = if self.calls.contains_key(&call_id) {
                OfferOutcome::Failed
            } else {
                OfferOutcome::CallerAbandoned
            };
            tracing::warn!(queue = %self.queue.name, call = %call_id, agent = %agent_id,
                ?outcome, "offer outcome never reported; writing it off");
            self.queue.end_offer(&call_id, &agent_id, outcome, now);
            self.relay(&agent_id, &call_id, outcome);
        }
        self.queue.revive_agents(now);

        for call_id in self.queue.take_overflowed(now) {
            let Some(call) = self.calls.remove(&call_id) else {
                continue;
            };
            let msg = WireCallMsg::Overflow {
                queue: self.queue.name.clone(),
                action: self.overflow.clone(),
            };
            if self.postman.deliver(&call, msg).is_err() {
                tracing::info!(queue = %self.queue.name, call = %call_id,
                    "overflowed call actor has already stopped");
            }
        }
    }
}

/// Frees a reservation that no offer will follow, without counting a miss.
fn release(agent: &ActorRef<AgentMsg>, call_id: CallId) {
    let msg = AgentMsg::OfferMissed {
        call_id,
        outcome: OfferOutcome::CallerAbandoned,
    };
    // A stopped agent holds no reservation to free.
    let _ = agent.send_message(msg);
}

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueActorState;
    type Arguments = QueueArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<QueueMsg>,
        QueueArgs {
            config,
            agents,
            postman,
            fence,
        }: QueueArgs,
    ) -> Result<QueueActorState, ActorProcessingErr> {
        let queue = QueueState::new(&config);
        let metrics = QueueMetrics::new(&config.name);
        metrics.record(&queue);
        Ok(QueueActorState {
            queue,
            overflow: config.overflow,
            calls: HashMap::new(),
            held_since: HashMap::new(),
            agents,
            postman,
            fence,
            metrics,
            ticker: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<QueueMsg>,
        state: &mut QueueActorState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker = Some(myself.send_interval(TICK, || QueueMsg::Tick));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<QueueMsg>,
        state: &mut QueueActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            QueueMsg::Enqueue {
                call,
                priority,
                since_ms,
            } => {
                let call_id = call.call_id.clone();
                if state
                    .queue
                    .enqueue(call_id.clone(), priority, since_ms, unix_ms())
                {
                    state.calls.insert(call_id, call);
                } else {
                    // Callers join again when asked to (`CallMsg::Requeue`): first place stands.
                    // The call may have moved to its standby node: offers go there now.
                    tracing::debug!(queue = %state.queue.name, call = %call_id,
                        "call enqueued twice; keeping its first place");
                    state.calls.insert(call_id, call);
                }
            }
            QueueMsg::Abandon { call_id } => {
                state.queue.abandon(&call_id);
                state.calls.remove(&call_id);
            }
            QueueMsg::OfferOutcome {
                call,
                agent_id,
                outcome,
            } => state.offer_outcome(call, &agent_id, outcome),
            QueueMsg::AgentAvailable {
                agent_id,
                idle_since_ms,
            } => state.queue.agent_available(agent_id, idle_since_ms),
            QueueMsg::AgentUnavailable { agent_id } => state.queue.agent_unavailable(&agent_id),
            QueueMsg::Tick => state.tick(),
            QueueMsg::Snapshot(reply) => {
                // A caller that timed out no longer wants the answer.
                let _ = reply.send(state.queue.snapshot(unix_ms()));
                return Ok(());
            }
        }
        state.dispatch().await;
        state.metrics.record(&state.queue);
        Ok(())
    }
}

pub struct QueueArgs {
    pub config: QueueConfig,
    /// Agent actors (local, or proxies of remote ones) by extension.
    pub agents: Directory<String, AgentMsg>,
    /// Delivers offers and overflows to call actors wherever they live.
    pub postman: Postman,
    /// Whether this node may act for the queue right now.
    pub fence: Fence,
}

/// Spawns the actor; the caller registers it in its queue directory.
pub async fn spawn_queue(args: QueueArgs) -> Result<ActorRef<QueueMsg>, SpawnErr> {
    let (queue, _handle) = Actor::spawn(None, QueueActor, args).await?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use switchyard_routing::Strategy;

    use super::*;

    fn config() -> QueueConfig {
        QueueConfig {
            name: "sales".into(),
            strategy: Strategy::LongestIdle,
            routing: Vec::new(),
            pools: Vec::new(),
            offer_timeout_secs: 15,
            max_missed_offers: 3,
            max_wait_secs: 60,
            overflow: Overflow::Goodbye,
            wrap_up_secs: 5,
            record: false,
            service_level_secs: 20,
        }
    }

    fn pair(call: &str, agent: &str) -> Option<(CallId, AgentId)> {
        Some((call.to_owned(), agent.to_owned()))
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = QueueState::new(&config());
        q.enqueue("low-old".into(), 0, 100, 100);
        q.enqueue("high-new".into(), 5, 300, 300);
        q.enqueue("high-old".into(), 5, 200, 300);
        q.enqueue("high-same-time".into(), 5, 200, 301);
        q.agent_available("a".into(), 0);

        let mut order = vec![];
        while let Some((call, agent)) = q.next_pairing() {
            assert!(q.begin_offer(&call, agent.clone(), 400));
            order.push(call.clone());
            assert!(q.end_offer(&call, &agent, OfferOutcome::Answered, 401));
            q.agent_available(agent, 401);
        }
        assert_eq!(order, ["high-old", "high-same-time", "high-new", "low-old"]);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.counters.answered, 4);
    }

    #[test]
    fn a_held_caller_keeps_everyone_behind_it_waiting() {
        let mut q = QueueState::new(&config());
        q.enqueue("first".into(), 0, 100, 100);
        q.enqueue("second".into(), 0, 200, 200);
        q.enqueue("third".into(), 0, 300, 300);
        q.agent_available("a".into(), 0);
        // "second" rings an agent of a node that failed: it keeps its offer, and holds the line.
        assert!(q.begin_offer("second", "b".into(), 400));
        let failed = |call: &str| call == "second";
        assert_eq!(q.next_pairing_holding(failed), pair("first", "a"));
        assert!(q.begin_offer("first", "a".into(), 401));
        q.agent_available("c".into(), 0);
        assert_eq!(
            q.next_pairing_holding(failed),
            None,
            "third must not pass second"
        );
        assert_eq!(q.next_pairing(), pair("third", "c"));
        // Its standby reported the offer failed: second is next again, before third.
        assert!(q.end_offer("second", "b", OfferOutcome::Failed, 500));
        assert_eq!(q.next_pairing_holding(|_| false), pair("second", "c"));
    }

    #[test]
    fn longest_idle_agent_first_and_idle_updates_move_it() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, 0);
        q.agent_available("recent".into(), 500);
        q.agent_available("old".into(), 100);
        q.agent_available("middle".into(), 300);
        assert_eq!(q.next_pairing(), pair("c1", "old"));
        // "old" announces itself again after a missed offer: now the most recently idle.
        q.agent_available("old".into(), 900);
        assert_eq!(q.next_pairing(), pair("c1", "middle"));
        q.agent_unavailable("middle");
        assert_eq!(q.next_pairing(), pair("c1", "recent"));
        assert_eq!(q.available_agents(), 2);
    }

    #[test]
    fn no_pairing_without_both_sides_or_when_every_caller_is_ringing() {
        let mut q = QueueState::new(&config());
        assert_eq!(q.next_pairing(), None);
        q.agent_available("a".into(), 0);
        assert_eq!(q.next_pairing(), None);
        q.enqueue("c1".into(), 0, 0, 0);
        q.begin_offer("c1", "a".into(), 1);
        q.agent_available("b".into(), 0);
        assert_eq!(q.next_pairing(), None, "c1 is already ringing a");
        // An offered agent is out of the available set.
        assert_eq!(q.available_agents(), 1);
    }

    #[test]
    fn a_missed_offer_keeps_the_callers_place() {
        let mut q = QueueState::new(&config());
        q.enqueue("first".into(), 0, 10, 10);
        q.enqueue("second".into(), 0, 20, 20);
        q.agent_available("a".into(), 0);
        q.agent_available("b".into(), 1);
        assert!(q.begin_offer("first", "a".into(), 30));
        // While "first" rings a, "second" goes to b.
        assert_eq!(q.next_pairing(), pair("second", "b"));
        assert!(q.end_offer("first", "a", OfferOutcome::NoAnswer, 40));
        assert_eq!(q.next_pairing(), pair("first", "b"));
        assert_eq!(q.waiting(), 2);
        // Reports from the wrong agent or for no offer are refused.
        assert!(!q.end_offer("first", "a", OfferOutcome::Answered, 41));
        q.begin_offer("first", "b".into(), 42);
        assert!(!q.end_offer("first", "a", OfferOutcome::Answered, 43));
    }

    #[test]
    fn abandon_during_offer_waits_for_the_outcome_and_counts_once() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, 0);
        q.agent_available("a".into(), 0);
        q.begin_offer("c1", "a".into(), 1);
        assert!(q.abandon("c1"));
        assert_eq!(q.waiting(), 0);
        // The offer stays until the call actor reports, so the agent can be freed.
        assert_eq!(q.offer("c1").map(|o| o.agent_id.as_str()), Some("a"));
        assert!(q.end_offer("c1", "a", OfferOutcome::CallerAbandoned, 2));
        assert!(q.offer("c1").is_none());
        assert_eq!(q.counters.abandoned, 1);
        assert!(!q.abandon("c1"));
        assert_eq!(q.counters.abandoned, 1);
    }

    #[test]
    fn caller_abandoned_outcome_removes_the_caller() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, 0);
        q.begin_offer("c1", "a".into(), 1);
        assert!(q.end_offer("c1", "a", OfferOutcome::CallerAbandoned, 2));
        assert!(!q.is_waiting("c1"));
        assert!(!q.abandon("c1"), "a later Abandon is a no-op");
        assert_eq!(q.counters.abandoned, 1);
    }

    #[test]
    fn overflow_after_max_wait_in_this_queue_but_not_while_ringing() {
        let mut q = QueueState::new(&config());
        // Overflowed here from another queue: its age (since_ms) does not count against us.
        q.enqueue("from-elsewhere".into(), 0, 0, 50_000);
        q.enqueue("ringing".into(), 0, 1_000, 1_000);
        q.enqueue("due".into(), 0, 2_000, 2_000);
        q.begin_offer("ringing", "a".into(), 3_000);
        assert!(q.take_overflowed(61_999).is_empty());
        assert_eq!(q.take_overflowed(62_000), ["due"]);
        assert_eq!(q.waiting(), 2);
        assert_eq!(q.counters.overflowed, 1);
        assert_eq!(q.take_overflowed(110_000), ["from-elsewhere"]);
    }

    #[test]
    fn expired_offers_after_timeout_and_grace() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, 0);
        q.begin_offer("c1", "a".into(), 1_000);
        assert!(q.expired_offers(26_000, 10_000).is_empty());
        assert_eq!(
            q.expired_offers(26_001, 10_000),
            [("c1".to_string(), "a".to_string())]
        );
    }

    #[test]
    fn service_level_and_snapshot() {
        let mut q = QueueState::new(&config());
        for (id, since) in [("fast", 0), ("slow", 0), ("gone", 0), ("waiting", 0)] {
            q.enqueue(id.into(), 0, since, since);
        }
        q.begin_offer("fast", "a".into(), 1);
        q.end_offer("fast", "a", OfferOutcome::Answered, 20_000);
        q.begin_offer("slow", "a".into(), 1);
        q.end_offer("slow", "a", OfferOutcome::Answered, 20_001);
        q.abandon("gone");
        let s = q.snapshot(30_000);
        assert_eq!(
            (
                s.offered,
                s.answered,
                s.answered_in_service_level,
                s.abandoned
            ),
            (4, 2, 1, 1)
        );
        assert_eq!(s.service_level_pct, Some(25.0));
        assert_eq!(
            (s.waiting, s.longest_wait_ms, s.agent_offers),
            (1, 30_000, 2)
        );
        assert_eq!(
            QueueState::new(&config()).snapshot(0).service_level_pct,
            None
        );
    }

    #[test]
    fn a_suspended_agent_comes_back_with_its_idle_time_unless_it_spoke_meanwhile() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, 0);
        q.agent_available("a".into(), 10);
        q.agent_available("b".into(), 20);
        q.suspend_agent("a", 1_000);
        assert_eq!(q.next_pairing(), pair("c1", "b"));
        q.revive_agents(999);
        assert_eq!(q.available_agents(), 1);
        q.revive_agents(1_000);
        assert_eq!(
            q.next_pairing(),
            pair("c1", "a"),
            "back, still longest idle"
        );

        q.suspend_agent("a", 2_000);
        q.agent_unavailable("a");
        q.revive_agents(2_000);
        assert_eq!(
            q.available_agents(),
            1,
            "it said it is unavailable meanwhile"
        );
        q.suspend_agent("nobody", 2_000);
        assert_eq!(q.available_agents(), 1);
    }

    #[test]
    fn duplicate_enqueue_is_refused() {
        let mut q = QueueState::new(&config());
        assert!(q.enqueue("c1".into(), 0, 0, 0));
        assert!(!q.enqueue("c1".into(), 9, 0, 0));
        assert_eq!(q.counters.offered, 1);
    }

    #[test]
    fn state_round_trips_through_rkyv_and_json() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 3, 10, 10);
        q.enqueue("c2".into(), 0, 5, 11);
        q.agent_available("a".into(), 7);
        q.begin_offer("c1", "b".into(), 12);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&q).unwrap();
        let back: QueueState = rkyv::from_bytes::<QueueState, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, q);
        let json = serde_json::to_string(&q).unwrap();
        let back: QueueState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, q);
        assert_eq!(back.next_pairing(), pair("c2", "a"));
    }
}

/// The protocol end to end: real queue and agent actors, and a fake call actor standing in for
/// the call module (it records what the ACD sends it and plays scripted offer outcomes).
#[cfg(test)]
mod protocol_tests {
    use std::collections::VecDeque;

    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use super::*;
    use crate::acd::agent::{
        self, AgentArgs, AgentSnapshot, AgentStatus, NO_ANSWER_REASON, spawn_agent,
    };
    use crate::call::CallMsg;
    use crate::config::Config;

    #[derive(Debug, PartialEq)]
    enum Event {
        Offer {
            call: CallId,
            agent: AgentId,
            queue: String,
            contacts: Vec<String>,
        },
        Overflow {
            call: CallId,
            queue: String,
            action: Overflow,
        },
        /// The fake call was asked to join again, and did.
        Requeue { call: CallId, queue: String },
    }

    struct FakeCall;

    struct FakeCallState {
        id: CallId,
        script: VecDeque<OfferOutcome>,
        queues: Directory<String, QueueMsg>,
        events: UnboundedSender<Event>,
    }

    impl Actor for FakeCall {
        type Msg = CallMsg;
        type State = FakeCallState;
        type Arguments = FakeCallState;

        async fn pre_start(
            &self,
            _myself: ActorRef<CallMsg>,
            args: FakeCallState,
        ) -> Result<FakeCallState, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _myself: ActorRef<CallMsg>,
            msg: CallMsg,
            state: &mut FakeCallState,
        ) -> Result<(), ActorProcessingErr> {
            let event = match msg {
                CallMsg::Offer {
                    agent_id,
                    queue,
                    contacts,
                    ..
                } => {
                    if let Some(outcome) = state.script.pop_front()
                        && let Some(q) = state.queues.get(&queue)
                    {
                        q.send_message(QueueMsg::OfferOutcome {
                            call: addr(&state.id),
                            agent_id: agent_id.clone(),
                            outcome,
                        })?;
                    }
                    Event::Offer {
                        call: state.id.clone(),
                        agent: agent_id,
                        queue,
                        contacts,
                    }
                }
                CallMsg::Overflow { queue, action } => Event::Overflow {
                    call: state.id.clone(),
                    queue,
                    action,
                },
                CallMsg::Requeue { queue } => {
                    if let Some(q) = state.queues.get(&queue) {
                        q.send_message(QueueMsg::Enqueue {
                            call: addr(&state.id),
                            priority: 0,
                            since_ms: unix_ms(),
                        })?;
                    }
                    Event::Requeue {
                        call: state.id.clone(),
                        queue,
                    }
                }
                _ => return Ok(()),
            };
            state.events.send(event)?;
            Ok(())
        }
    }

    const BASE: &str = r#"
        sip = { listen = "127.0.0.1:5060" }
        http = { listen = "127.0.0.1:8080" }
    "#;

    struct Harness {
        queues: Directory<String, QueueMsg>,
        agents: Directory<String, AgentMsg>,
        calls: Directory<String, CallMsg>,
        events: UnboundedReceiver<Event>,
        tx: UnboundedSender<Event>,
    }

    impl Harness {
        async fn new(config: &str) -> Self {
            let config: Config = toml::from_str(&format!("{BASE}{config}")).unwrap();
            config.validate().unwrap();
            let queues = Directory::default();
            let agents = Directory::default();
            let calls = Directory::default();
            for q in &config.queues {
                let args = QueueArgs {
                    config: q.clone(),
                    agents: agents.clone(),
                    postman: Postman::new(0, calls.clone(), None),
                    fence: Fence::open(),
                };
                queues.insert(q.name.clone(), spawn_queue(args).await.unwrap());
            }
            for spec in config.agents().unwrap() {
                let extension = spec.extension.clone();
                let args = AgentArgs {
                    policies: agent::policies(&spec, |name| config.queue(name).cloned()),
                    spec,
                    queues: queues.clone(),
                    fence: Fence::open(),
                    restored: None,
                    failover: None,
                };
                agents.insert(extension, spawn_agent(args).await.unwrap());
            }
            let (tx, events) = unbounded_channel();
            Self {
                queues,
                agents,
                calls,
                events,
                tx,
            }
        }

        async fn call(&self, id: &str, queue: &str, script: &[OfferOutcome]) -> ActorRef<CallMsg> {
            let state = FakeCallState {
                id: id.into(),
                script: script.iter().copied().collect(),
                queues: self.queues.clone(),
                events: self.tx.clone(),
            };
            let (call, _) = Actor::spawn(None, FakeCall, state).await.unwrap();
            self.calls.insert(id.into(), call.clone());
            self.to_queue(
                queue,
                QueueMsg::Enqueue {
                    call: addr(id),
                    priority: 0,
                    since_ms: unix_ms(),
                },
            );
            call
        }

        fn to_queue(&self, queue: &str, msg: QueueMsg) {
            self.queues
                .get(&queue.into())
                .unwrap()
                .send_message(msg)
                .unwrap();
        }

        fn to_agent(&self, ext: &str, msg: AgentMsg) {
            self.agents
                .get(&ext.into())
                .unwrap()
                .send_message(msg)
                .unwrap();
        }

        fn report(&self, queue: &str, call: &str, agent: &str, outcome: OfferOutcome) {
            self.to_queue(
                queue,
                QueueMsg::OfferOutcome {
                    call: addr(call),
                    agent_id: agent.into(),
                    outcome,
                },
            );
        }

        async fn next(&mut self) -> Event {
            tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("no event within 5 s")
                .expect("event channel closed")
        }

        async fn quiet(&mut self, ms: u64) {
            let got = tokio::time::timeout(Duration::from_millis(ms), self.events.recv()).await;
            assert!(got.is_err(), "unexpected event {got:?}");
        }

        async fn agent(&self, ext: &str) -> AgentSnapshot {
            let agent = self.agents.get(&ext.into()).unwrap();
            ractor::call_t!(agent, AgentMsg::Snapshot, 1000).unwrap()
        }

        async fn queue(&self, name: &str) -> QueueSnapshot {
            let queue = self.queues.get(&name.into()).unwrap();
            ractor::call_t!(queue, QueueMsg::Snapshot, 1000).unwrap()
        }

        /// Polls the agent until `pred` holds (the actors settle asynchronously).
        async fn agent_until(
            &self,
            ext: &str,
            pred: impl Fn(&AgentSnapshot) -> bool,
        ) -> AgentSnapshot {
            for _ in 0..300 {
                let snapshot = self.agent(ext).await;
                if pred(&snapshot) {
                    return snapshot;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!(
                "agent {ext} never reached the expected state: {:?}",
                self.agent(ext).await
            );
        }
    }

    fn offer(call: &str, agent: &str, queue: &str) -> Event {
        Event::Offer {
            call: call.into(),
            agent: agent.into(),
            queue: queue.into(),
            contacts: vec![contact(agent)],
        }
    }

    fn addr(call: &str) -> CallAddr {
        CallAddr {
            node: 0,
            call_id: call.into(),
        }
    }

    fn contact(agent: &str) -> String {
        format!("sip:{agent}@127.0.0.1:5999")
    }

    /// The agent's phone registered at node 0.
    fn registered(agent: &str) -> AgentMsg {
        AgentMsg::Contacts {
            node: 0,
            contacts: vec![contact(agent)],
        }
    }

    const ONE_AGENT: &str = r#"
        [[queue]]
        name = "sales"
        wrap_up_secs = 1
        [[agents]]
        extensions = "2001"
        password = "pw"
        queues = ["sales"]
        available_on_register = true
    "#;

    #[tokio::test]
    async fn offer_answer_wrap_up_and_serve_again() {
        let mut h = Harness::new(ONE_AGENT).await;
        h.to_agent("2001", registered("2001"));
        h.call("c1", "sales", &[OfferOutcome::Answered]).await;
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
        let a = h
            .agent_until("2001", |a| matches!(a.status, AgentStatus::OnCall { .. }))
            .await;
        assert_eq!((a.offers, a.answered), (1, 1));
        let q = h.queue("sales").await;
        assert_eq!((q.waiting, q.answered, q.agent_offers), (0, 1, 1));

        h.call("c2", "sales", &[]).await;
        h.quiet(100).await;
        h.to_agent(
            "2001",
            AgentMsg::CallEnded {
                call_id: "c1".into(),
            },
        );
        h.agent_until("2001", |a| matches!(a.status, AgentStatus::WrapUp { .. }))
            .await;
        // After the 1 s wrap-up the agent is announced again and c2 is offered.
        assert_eq!(h.next().await, offer("c2", "2001", "sales"));
    }

    #[tokio::test]
    async fn a_miss_moves_the_call_to_the_next_agent() {
        let mut h = Harness::new(
            r#"
            [[queue]]
            name = "sales"
            [[agents]]
            extensions = "2001-2002"
            password = "pw"
            queues = ["sales"]
            available_on_register = true
            "#,
        )
        .await;
        h.to_agent("2001", registered("2001"));
        h.agent_until("2001", |a| a.status == AgentStatus::Available)
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        h.to_agent("2002", registered("2002"));
        h.agent_until("2002", |a| a.status == AgentStatus::Available)
            .await;

        h.call(
            "c1",
            "sales",
            &[OfferOutcome::NoAnswer, OfferOutcome::Answered],
        )
        .await;
        assert_eq!(
            h.next().await,
            offer("c1", "2001", "sales"),
            "longest idle first"
        );
        assert_eq!(h.next().await, offer("c1", "2002", "sales"));
        let a = h
            .agent_until("2001", |a| a.status == AgentStatus::Available)
            .await;
        assert_eq!((a.missed, a.consecutive_misses), (1, 1));
        h.agent_until("2002", |a| matches!(a.status, AgentStatus::OnCall { .. }))
            .await;
    }

    #[tokio::test]
    async fn two_queues_sharing_an_agent_never_double_offer() {
        let mut h = Harness::new(
            r#"
            [[queue]]
            name = "sales"
            max_missed_offers = 0
            [[queue]]
            name = "support"
            max_missed_offers = 0
            [[agents]]
            extensions = "2001"
            password = "pw"
            queues = ["sales", "support"]
            available_on_register = true
            "#,
        )
        .await;
        h.call("s1", "sales", &[]).await;
        h.call("t1", "support", &[]).await;
        h.to_agent("2001", registered("2001"));
        for round in 0..8 {
            let Event::Offer {
                call, agent, queue, ..
            } = h.next().await
            else {
                panic!("expected an offer");
            };
            assert_eq!(agent, "2001");
            // While this offer rings, neither queue may offer the agent anything else.
            h.quiet(100).await;
            let a = h.agent("2001").await;
            assert_eq!(a.offers, round + 1);
            assert!(matches!(a.status, AgentStatus::Offered { call_id, .. } if call_id == call));
            h.report(&queue, &call, &agent, OfferOutcome::NoAnswer);
        }
        assert!(matches!(h.next().await, Event::Offer { .. }));
        let (s, t) = (h.queue("sales").await, h.queue("support").await);
        assert_eq!(
            s.agent_offers + t.agent_offers,
            9,
            "the ninth offer is ringing"
        );
        assert_eq!((s.waiting, t.waiting), (1, 1));
    }

    #[tokio::test]
    async fn abandon_during_an_offer_frees_the_agent_without_a_miss() {
        let mut h = Harness::new(ONE_AGENT).await;
        h.to_agent("2001", registered("2001"));
        h.call("c1", "sales", &[]).await;
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
        // The Abandon can arrive before the outcome; the offer still frees the agent.
        h.to_queue(
            "sales",
            QueueMsg::Abandon {
                call_id: "c1".into(),
            },
        );
        h.report("sales", "c1", "2001", OfferOutcome::CallerAbandoned);
        let a = h
            .agent_until("2001", |a| a.status == AgentStatus::Available)
            .await;
        assert_eq!((a.missed, a.consecutive_misses), (0, 0));
        let q = h.queue("sales").await;
        assert_eq!((q.waiting, q.ringing, q.abandoned), (0, 0, 1));

        h.call("c2", "sales", &[]).await;
        assert_eq!(h.next().await, offer("c2", "2001", "sales"));
    }

    #[tokio::test]
    async fn consecutive_misses_make_the_agent_not_ready() {
        let mut h = Harness::new(
            r#"
            [[queue]]
            name = "sales"
            max_missed_offers = 2
            [[agents]]
            extensions = "2001"
            password = "pw"
            queues = ["sales"]
            available_on_register = true
            "#,
        )
        .await;
        h.to_agent("2001", registered("2001"));
        h.call(
            "c1",
            "sales",
            &[OfferOutcome::NoAnswer, OfferOutcome::Rejected],
        )
        .await;
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
        let a = h
            .agent_until("2001", |a| matches!(a.status, AgentStatus::NotReady { .. }))
            .await;
        assert_eq!(
            a.status,
            AgentStatus::NotReady {
                reason: NO_ANSWER_REASON.into()
            }
        );
        h.quiet(200).await;
        let q = h.queue("sales").await;
        assert_eq!((q.waiting, q.ringing, q.available_agents), (1, 0, 0));
    }

    #[tokio::test]
    async fn overflow_after_max_wait() {
        let mut h = Harness::new(
            r#"
            [[queue]]
            name = "sales"
            max_wait_secs = 1
            overflow = { action = "queue", queue = "backup" }
            [[queue]]
            name = "backup"
            "#,
        )
        .await;
        h.call("c1", "sales", &[]).await;
        assert_eq!(
            h.next().await,
            Event::Overflow {
                call: "c1".into(),
                queue: "sales".into(),
                action: Overflow::Queue {
                    queue: "backup".into()
                }
            }
        );
        let q = h.queue("sales").await;
        assert_eq!((q.waiting, q.overflowed), (0, 1));
    }

    #[tokio::test]
    async fn an_agent_that_may_not_act_is_retried_later() {
        use std::sync::Arc;
        use std::time::Instant;

        use switchyard_cluster::raft::{ClusterView, Role};
        use switchyard_cluster::state::{ActorKey, ClusterState, Placement};

        let key = ActorKey::agent("2001");
        let view = |lease_valid| {
            let mut state = ClusterState::default();
            state
                .placement
                .insert(key.clone(), Placement { node: 1, epoch: 1 });
            Arc::new(ClusterView {
                node_id: 1,
                role: Role::Follower,
                leader: Some(2),
                term: 1,
                commit_index: 1,
                applied_index: 1,
                voters: vec![1, 2],
                state: Arc::new(state),
                lease_valid,
            })
        };
        let (lease, watch) = tokio::sync::watch::channel(view(false));
        let mut h = Harness::new(
            r#"
            [[queue]]
            name = "sales"
            "#,
        )
        .await;
        let config: Config = toml::from_str(&format!("{BASE}{ONE_AGENT}")).unwrap();
        let spec = config.agents().unwrap().remove(0);
        let args = AgentArgs {
            policies: agent::policies(&spec, |name| config.queue(name).cloned()),
            spec,
            queues: h.queues.clone(),
            fence: Fence::placed(watch, key.clone(), 1, Instant::now()),
            restored: None,
            failover: None,
        };
        h.agents
            .insert("2001".into(), spawn_agent(args).await.unwrap());
        h.to_agent("2001", registered("2001"));
        h.call("c1", "sales", &[]).await;
        // The reservation goes unanswered while the agent's node is not in good standing.
        h.quiet(500).await;
        lease.send_replace(view(true));
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
    }

    #[tokio::test]
    async fn a_queue_started_after_its_agents_hears_from_them_on_announce() {
        let mut h = Harness::new(ONE_AGENT).await;
        h.to_agent("2001", registered("2001"));
        h.agent_until("2001", |a| a.status == AgentStatus::Available)
            .await;
        // The queue restarts (moved to this node, say) and knows no agents.
        let config: Config = toml::from_str(&format!("{BASE}{ONE_AGENT}")).unwrap();
        let args = QueueArgs {
            config: config.queues[0].clone(),
            agents: h.agents.clone(),
            postman: Postman::new(0, h.calls.clone(), None),
            fence: Fence::open(),
        };
        h.queues
            .insert("sales".into(), spawn_queue(args).await.unwrap());
        h.call("c1", "sales", &[]).await;
        h.quiet(200).await;
        h.to_agent(
            "2001",
            AgentMsg::Announce {
                queue: "sales".into(),
            },
        );
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
    }

    #[tokio::test]
    async fn a_restarted_queue_frees_the_agent_of_an_old_offer_and_takes_the_caller_back() {
        let mut h = Harness::new(ONE_AGENT).await;
        h.to_agent("2001", registered("2001"));
        h.call("c1", "sales", &[]).await;
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
        // The queue moves (a fresh actor) while its offer rings; the agent stays Offered.
        let config: Config = toml::from_str(&format!("{BASE}{ONE_AGENT}")).unwrap();
        let args = QueueArgs {
            config: config.queues[0].clone(),
            agents: h.agents.clone(),
            postman: Postman::new(0, h.calls.clone(), None),
            fence: Fence::open(),
        };
        h.queues
            .insert("sales".into(), spawn_queue(args).await.unwrap());
        // The ring times out; the report reaches the new queue, which knows nothing of it.
        h.report("sales", "c1", "2001", OfferOutcome::NoAnswer);
        assert_eq!(
            h.next().await,
            Event::Requeue {
                call: "c1".into(),
                queue: "sales".into()
            }
        );
        // The agent was freed (and announced itself), the caller is back: offered again.
        assert_eq!(h.next().await, offer("c1", "2001", "sales"));
        let a = h.agent("2001").await;
        assert_eq!((a.offers, a.missed), (2, 1));
    }

    #[tokio::test]
    async fn a_dead_call_actor_is_removed_and_does_not_hold_the_agent() {
        let mut h = Harness::new(ONE_AGENT).await;
        let call = h.call("c1", "sales", &[]).await;
        call.stop_and_wait(None, None).await.unwrap();
        h.to_agent("2001", registered("2001"));
        let a = h
            .agent_until("2001", |a| a.status == AgentStatus::Available)
            .await;
        assert_eq!(a.missed, 0);
        let q = h.queue("sales").await;
        assert_eq!((q.waiting, q.ringing, q.abandoned), (0, 0, 1));
        h.quiet(100).await;
    }
}

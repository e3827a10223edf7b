//! One queue: a pure state machine ([`QueueState`]) and the actor that owns it ([`QueueActor`]).
//!
//! Ordering: callers by priority (higher first), then by `since_ms` (first entry into any queue,
//! so an overflowed caller keeps its age), then by enqueue order. Each waiting caller in that
//! order is offered to an agent chosen by `switchyard_routing`: the eligible idle agents for the
//! caller's routing step in force (or its preferred agent), the pool whose turn it is, then the
//! queue's strategy. A caller no idle agent may take keeps its place; those behind it may be
//! served meanwhile. Steps widen with the wait, so [`QueueState::next_change_at_ms`] tells the
//! actor when to look again.
//!
//! Ring-all is not a true simultaneous ring here: it offers to one agent at a time, the longest
//! idle of those eligible, and moves to the next when the offer ends unanswered.
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
use switchyard_routing::{
    self as routing, AgentProfile, CallerCandidate, IdleAgent, PreferredAgent, QueueRouting,
    RouterState, select_agents,
};

use super::board::{QueueBoard, QueueFigures};
use super::{AgentId, AgentMsg, CallId, OfferOutcome, QueueMsg};
use crate::call::WireCallMsg;
use crate::config::{Exits, Overflow, QueueConfig};
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
    /// The agent a flow asked for, and until when only they may take the call.
    pub preferred: Option<PreferredAgent>,
}

impl Caller {
    /// The caller as routing decisions see it.
    fn routed(&self, call_id: &str) -> routing::Caller {
        routing::Caller {
            call_id: call_id.to_owned(),
            priority: self.priority,
            since_ms: self.since_ms,
            entered_ms: self.entered_ms,
            preferred: self.preferred.clone(),
        }
    }
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

/// An agent left out of pairing until `retry_at_ms` (see the module docs).
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
pub struct Suspended {
    /// The agent as it was available, to come back as such.
    pub agent: IdleAgent,
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
    /// Strategy, widening steps and pool weights.
    pub routing: QueueRouting,
    /// What routing remembers between offers (pool credits, round-robin cursor, random
    /// generator): replicated with the queue so that a standby continues the same split.
    router: RouterState,
    callers: HashMap<CallId, Caller>,
    /// The same callers in serving order.
    line: BTreeSet<Place>,
    /// Available agents, longest idle first (then by id): ties and ring-all go in that order.
    available: Vec<IdleAgent>,
    /// Agents whose reservation went unanswered, out of the available set until they are retried.
    suspended: HashMap<AgentId, Suspended>,
    /// Offers in flight by call id. An abandoned caller's offer stays until its outcome arrives,
    /// because that outcome is what frees the agent.
    offers: HashMap<CallId, Offer>,
    next_seq: u64,
    /// How fast callers leave the line answered, for wait estimates.
    #[serde(default)]
    pace: AnswerPace,
    /// Agents of the queue logged in (in any state but logged out).
    #[serde(default)]
    staffed: BTreeSet<AgentId>,
    /// When a joining caller is sent to the overflow at once.
    #[serde(default)]
    exits: Exits,
}

/// Why a caller was sent to the overflow on joining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    NoAgents,
    TooMany,
    TooLong,
}

/// The recent gap between two answers (an average weighted 1/4 to the newest, as Asterisk
/// weighs hold times). A caller at position `p` waits about `p` gaps: the gap reflects the
/// agents serving and their recent handle time together, and the position is the caller's own,
/// unlike Asterisk's one queue-wide hold time.
#[derive(
    Clone,
    Copy,
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
pub struct AnswerPace {
    last_answer_ms: Option<u64>,
    gap_ms: Option<u64>,
}

impl AnswerPace {
    fn answered(&mut self, now_ms: u64) {
        if let Some(last) = self.last_answer_ms {
            let gap = now_ms.saturating_sub(last);
            self.gap_ms = Some(match self.gap_ms {
                Some(old) => (3 * old + gap) / 4,
                None => gap,
            });
        }
        self.last_answer_ms = Some(now_ms);
    }
}

/// A position and wait announcement due to a waiting caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub call_id: CallId,
    /// 1 for the caller served next.
    pub position: u32,
    pub wait_secs: Option<u64>,
}

impl QueueState {
    pub fn new(config: &QueueConfig) -> Self {
        Self {
            name: config.name.clone(),
            offer_timeout_secs: config.offer_timeout_secs,
            max_wait_secs: config.max_wait_secs,
            service_level_secs: config.service_level_secs,
            counters: QueueCounters::default(),
            routing: config.routing(),
            router: RouterState::new(seed(&config.name)),
            callers: HashMap::new(),
            line: BTreeSet::new(),
            available: Vec::new(),
            suspended: HashMap::new(),
            offers: HashMap::new(),
            next_seq: 0,
            pace: AnswerPace::default(),
            staffed: BTreeSet::new(),
            exits: config.exits.clone(),
        }
    }

    /// Agents logged in for the queue.
    pub fn staffed_agents(&self) -> usize {
        self.staffed.len()
    }

    /// The agent logged in or out.
    pub fn agent_staffed(&mut self, agent_id: &str, logged_in: bool) {
        if logged_in {
            self.staffed.insert(agent_id.to_owned());
        } else {
            self.staffed.remove(agent_id);
            self.agent_unavailable(agent_id);
        }
    }

    /// Whether a caller joining now goes to the overflow at once instead (the queue's `exits`).
    pub fn exit_on_joining(&self) -> Option<Exit> {
        let exits = &self.exits;
        if exits.no_agents && self.staffed.is_empty() && self.available.is_empty() {
            return Some(Exit::NoAgents);
        }
        if exits
            .max_waiting
            .is_some_and(|max| self.callers.len() >= max as usize)
        {
            return Some(Exit::TooMany);
        }
        let wait = self.estimated_wait_secs(self.callers.len() + 1);
        if exits
            .max_estimated_wait_secs
            .is_some_and(|max| wait.is_some_and(|wait| wait > max))
        {
            return Some(Exit::TooLong);
        }
        None
    }

    /// Estimated wait of the caller at `position` (1 = next), in seconds: nothing while agents
    /// are free, `position` answer gaps otherwise; unknown before two answers were seen.
    pub fn estimated_wait_secs(&self, position: usize) -> Option<u64> {
        if position <= self.available.len() {
            return Some(0);
        }
        self.pace
            .gap_ms
            .map(|gap| gap.saturating_mul(position as u64).div_ceil(1000))
    }

    /// Callers due an announcement: not ringing, and `every_ms` past their last one (or their
    /// entry into the queue), with their place in line.
    pub fn announcements(
        &self,
        last: &HashMap<CallId, u64>,
        every_ms: u64,
        now_ms: u64,
    ) -> Vec<Announcement> {
        let mut due = Vec::new();
        for (index, place) in self.line.iter().enumerate() {
            let Some(caller) = self.callers.get(&place.call_id) else {
                continue;
            };
            let since = last
                .get(&place.call_id)
                .copied()
                .unwrap_or(caller.entered_ms);
            if self.offers.contains_key(&place.call_id) || now_ms.saturating_sub(since) < every_ms {
                continue;
            }
            let position = index + 1;
            due.push(Announcement {
                call_id: place.call_id.clone(),
                position: u32::try_from(position).unwrap_or(u32::MAX),
                wait_secs: self.estimated_wait_secs(position),
            });
        }
        due
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
    pub fn enqueue(
        &mut self,
        call_id: CallId,
        priority: u8,
        since_ms: u64,
        preferred: Option<PreferredAgent>,
        now_ms: u64,
    ) -> bool {
        if self.callers.contains_key(&call_id) {
            return false;
        }
        let caller = Caller {
            priority,
            since_ms,
            entered_ms: now_ms,
            seq: self.next_seq,
            preferred,
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

    /// Adds an agent, or updates its profile and load if already available.
    pub fn agent_available(&mut self, agent: IdleAgent) {
        self.agent_unavailable(&agent.profile.id);
        self.staffed.insert(agent.profile.id.clone());
        let key = (agent.load.idle_since_ms, &agent.profile.id);
        let at = self
            .available
            .partition_point(|a| (a.load.idle_since_ms, &a.profile.id) < key);
        self.available.insert(at, agent);
    }

    pub fn agent_unavailable(&mut self, agent_id: &str) {
        self.suspended.remove(agent_id);
        self.available.retain(|a| a.profile.id != agent_id);
    }

    /// Takes an available agent out of pairing until `retry_at_ms`, keeping its idle time for
    /// when it comes back. Its own announcements overrule this.
    pub fn suspend_agent(&mut self, agent_id: &str, retry_at_ms: u64) {
        if let Some(i) = self.available.iter().position(|a| a.profile.id == agent_id) {
            let agent = self.available.remove(i);
            self.suspended
                .insert(agent_id.to_owned(), Suspended { agent, retry_at_ms });
        }
    }

    /// Returns suspended agents whose retry time has come to the available set.
    pub fn revive_agents(&mut self, now_ms: u64) {
        let due: Vec<AgentId> = self
            .suspended
            .iter()
            .filter(|(_, s)| s.retry_at_ms <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for agent_id in due {
            if let Some(s) = self.suspended.remove(&agent_id) {
                self.agent_available(s.agent);
            }
        }
    }

    /// The next caller to offer and the agent to offer it to, at `now_ms`; see
    /// [`QueueState::next_pairing_holding`].
    pub fn next_pairing(&mut self, now_ms: u64) -> Option<(CallId, AgentId)> {
        self.next_pairing_holding(|_| false, now_ms)
    }

    /// The first caller in line, not already ringing an agent, that an available agent may take
    /// now, and that agent as routing picks it. Moves the routing state on (pool turn, cursor,
    /// random draw): if the reservation fails, take the agent out and ask again.
    ///
    /// A caller for which `held` is true holds the line from its place on: nobody behind it is
    /// paired until it is released. For callers coming back from the standby of a failed node,
    /// whose place must not go to those behind them.
    pub fn next_pairing_holding(
        &mut self,
        held: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> Option<(CallId, AgentId)> {
        if self.available.is_empty() {
            return None;
        }
        for place in &self.line {
            if held(&place.call_id) {
                return None;
            }
            let Some(caller) = self.callers.get(&place.call_id) else {
                continue;
            };
            if self.offers.contains_key(&place.call_id) {
                continue;
            }
            let routed = caller.routed(&place.call_id);
            let selection = select_agents(
                &self.routing,
                &mut self.router,
                &routed,
                &self.available,
                now_ms,
            );
            // Ring-all offers one agent at a time: the first selected is the longest idle.
            if let Some(&i) = selection.agents().first() {
                return Some((routed.call_id, self.available[i].profile.id.clone()));
            }
        }
        None
    }

    /// The caller this queue would give `agent` if it took one now, for the agent's pick across
    /// its queues: the first in line, not ringing an agent, that the agent may take (a held
    /// caller holds the line, as in [`QueueState::next_pairing_holding`]).
    pub fn candidate_for(
        &self,
        agent: &AgentProfile,
        held: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> Option<CallerCandidate> {
        for place in &self.line {
            if held(&place.call_id) {
                return None;
            }
            let Some(caller) = self.callers.get(&place.call_id) else {
                continue;
            };
            if self.offers.contains_key(&place.call_id) {
                continue;
            }
            let candidate = caller
                .routed(&place.call_id)
                .candidate(&self.routing, now_ms);
            if candidate.constraint.admits(agent) {
                return Some(candidate);
            }
        }
        None
    }

    /// Unix ms at which who may take a waiting caller next changes (a routing step widens or a
    /// preferred agent's window closes): pairing must be tried again then.
    pub fn next_change_at_ms(&self, now_ms: u64) -> Option<u64> {
        self.callers
            .iter()
            .filter(|(id, _)| !self.offers.contains_key(*id))
            .filter_map(|(id, c)| c.routed(id).next_change_at_ms(&self.routing, now_ms))
            .min()
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
                    self.pace.answered(now_ms);
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

/// Seeds the random strategy per queue, the same on every node (FNV-1a of the name).
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
    /// When the pending wake-up for a widening routing step fires (Unix ms).
    wake_at: Option<u64>,
    /// Position and wait announcements: how often, and when each caller last heard one.
    announce_every_ms: Option<u64>,
    announced: HashMap<CallId, u64>,
    /// Where flows read this queue's staffing and wait.
    board: QueueBoard,
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
            let held = |call_id: &str| is_held(calls, fence, call_id);
            let Some((call_id, agent_id)) = self.queue.next_pairing_holding(held, unix_ms()) else {
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
            // The pairing cannot change while this handler awaits; should it have, `make_offer`
            // releases the agent.
            self.make_offer(&agent, call_id, agent_id, contacts);
        }
    }

    /// The caller whom this queue would give `agent`, if this node may act for the queue.
    fn candidate_for(&self, agent: &AgentProfile) -> Option<CallerCandidate> {
        if !self.fence.can_act() {
            return None;
        }
        let held = |call_id: &str| is_held(&self.calls, &self.fence, call_id);
        self.queue.candidate_for(agent, held, unix_ms())
    }

    /// An agent reserved itself for this queue's candidate (the fair pick): offer it the call.
    fn claimed(&mut self, call_id: CallId, agent_id: AgentId, contacts: Vec<String>) {
        let Some(agent) = self.agents.get(&agent_id) else {
            tracing::warn!(queue = %self.queue.name, agent = %agent_id, "claim by an unknown agent");
            return;
        };
        if !self.fence.can_act() || is_held(&self.calls, &self.fence, &call_id) {
            release(&agent, call_id);
            return;
        }
        self.make_offer(&agent, call_id, agent_id, contacts);
    }

    /// Turns a reservation of `agent` into an offer of `call_id` sent to its call actor; releases
    /// the agent instead if the caller has left or is already ringing another agent.
    fn make_offer(
        &mut self,
        agent: &ActorRef<AgentMsg>,
        call_id: CallId,
        agent_id: AgentId,
        contacts: Vec<String>,
    ) {
        if !self
            .queue
            .begin_offer(&call_id, agent_id.clone(), unix_ms())
        {
            release(agent, call_id);
            return;
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

    /// Arranges a [`QueueMsg::Tick`] for when a waiting caller's routing step next widens, so
    /// that it is offered then rather than at the next periodic tick.
    fn wake_for_routing(&mut self, myself: &ActorRef<QueueMsg>) {
        let now = unix_ms();
        let Some(at) = self.queue.next_change_at_ms(now) else {
            return;
        };
        // A pending wake-up no later than `at` reschedules itself when it fires.
        if self.wake_at.is_some_and(|w| w > now && w <= at) {
            return;
        }
        self.wake_at = Some(at);
        myself.send_after(Duration::from_millis(at.saturating_sub(now)), || {
            QueueMsg::Tick
        });
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

    /// Tells flows on this node how the queue stands.
    fn publish(&self) {
        let q = &self.queue;
        self.board.publish(
            &q.name,
            QueueFigures {
                logged_in_agents: u32::try_from(q.staffed_agents()).unwrap_or(u32::MAX),
                waiting: u32::try_from(q.waiting()).unwrap_or(u32::MAX),
                estimated_wait_secs: q.estimated_wait_secs(q.waiting() + 1),
            },
        );
    }

    fn announce(&mut self, now: u64) {
        let Some(every_ms) = self.announce_every_ms else {
            return;
        };
        let queue = &self.queue;
        self.announced
            .retain(|call_id, _| queue.is_waiting(call_id));
        for due in queue.announcements(&self.announced, every_ms, now) {
            self.announced.insert(due.call_id.clone(), now);
            let Some(call) = self.calls.get(&due.call_id) else {
                continue;
            };
            let msg = WireCallMsg::Announce {
                queue: queue.name.clone(),
                position: due.position,
                wait_secs: due.wait_secs,
            };
            if self.postman.deliver(call, msg).is_err() {
                tracing::debug!(queue = %queue.name, call = %due.call_id, "announcement not delivered");
            }
        }
    }

    fn tick(&mut self) {
        let now = unix_ms();
        self.announce(now);
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

/// Whether `call_id` is a caller of a failed node, holding its place for its standby.
fn is_held(calls: &HashMap<CallId, CallAddr>, fence: &Fence, call_id: &str) -> bool {
    calls.get(call_id).is_some_and(|c| fence.has_failed(c.node))
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
            board,
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
            wake_at: None,
            announce_every_ms: config.announce_every_secs.map(|s| s.saturating_mul(1000)),
            announced: HashMap::new(),
            board,
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
        myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        state: &mut QueueActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            QueueMsg::Enqueue {
                call,
                priority,
                since_ms,
                preferred,
            } => {
                let call_id = call.call_id.clone();
                let joining = !state.queue.is_waiting(&call_id);
                if let Some(exit) = joining.then(|| state.queue.exit_on_joining()).flatten() {
                    tracing::info!(queue = %state.queue.name, call = %call_id, ?exit,
                        "caller sent to the overflow on joining");
                    state.queue.counters.offered += 1;
                    state.queue.counters.overflowed += 1;
                    let msg = WireCallMsg::Overflow {
                        queue: state.queue.name.clone(),
                        action: state.overflow.clone(),
                    };
                    if state.postman.deliver(&call, msg).is_err() {
                        tracing::info!(call = %call_id, "overflowed call actor has already stopped");
                    }
                } else if state.queue.enqueue(
                    call_id.clone(),
                    priority,
                    since_ms,
                    preferred,
                    unix_ms(),
                ) {
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
            QueueMsg::AgentAvailable { profile, load } => {
                state.queue.agent_available(IdleAgent { profile, load })
            }
            QueueMsg::AgentUnavailable { agent_id } => state.queue.agent_unavailable(&agent_id),
            QueueMsg::AgentStaffed {
                agent_id,
                logged_in,
            } => state.queue.agent_staffed(&agent_id, logged_in),
            QueueMsg::Candidate { agent, reply } => {
                // The agent may have given up waiting; it then announces itself to all.
                let _ = reply.send(state.candidate_for(&agent));
                return Ok(());
            }
            QueueMsg::Claimed {
                call_id,
                agent_id,
                contacts,
            } => state.claimed(call_id, agent_id, contacts),
            QueueMsg::Tick => state.tick(),
            QueueMsg::Snapshot(reply) => {
                // A caller that timed out no longer wants the answer.
                let _ = reply.send(state.queue.snapshot(unix_ms()));
                return Ok(());
            }
        }
        state.dispatch().await;
        state.wake_for_routing(&myself);
        state.metrics.record(&state.queue);
        state.publish();
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
    pub board: QueueBoard,
}

/// Spawns the actor; the caller registers it in its queue directory.
pub async fn spawn_queue(args: QueueArgs) -> Result<ActorRef<QueueMsg>, SpawnErr> {
    let (queue, _handle) = Actor::spawn(None, QueueActor, args).await?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use switchyard_routing::{
        AgentLoad, PoolWeight, Requirement, RoutingStep, Skill, Strategy, select_caller,
    };

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
            announce_every_secs: None,
            callback: None,
            exits: Exits::default(),
            survey: None,
        }
    }

    fn idle(id: &str, idle_since_ms: u64) -> IdleAgent {
        skilled(id, &[], "", idle_since_ms)
    }

    fn skilled(id: &str, skills: &[(&str, u8)], pool: &str, idle_since_ms: u64) -> IdleAgent {
        let mut profile = AgentProfile::new(id);
        profile.skills = skills.iter().map(|&(n, l)| Skill::new(n, l)).collect();
        profile.pool = pool.into();
        IdleAgent {
            profile,
            load: AgentLoad {
                idle_since_ms,
                ..AgentLoad::default()
            },
        }
    }

    /// A routing step: skills with levels, and for how many seconds (`None`: the last step).
    type Step<'a> = (&'a [(&'a str, u8)], Option<u64>);

    /// A queue with `strategy` whose callers need `steps`.
    fn routed(strategy: Strategy, steps: &[Step]) -> QueueState {
        QueueState::new(&QueueConfig {
            strategy,
            routing: steps
                .iter()
                .map(|&(skills, for_secs)| RoutingStep {
                    requirement: Requirement::new(skills.iter().copied()),
                    for_secs,
                })
                .collect(),
            ..config()
        })
    }

    /// Offers, answers and frees the agent again (idle since `now`); returns who was paired.
    fn serve(q: &mut QueueState, now: u64) -> Option<(CallId, AgentId)> {
        let (call, agent) = q.next_pairing(now)?;
        let freed = q.available.iter().find(|a| a.profile.id == agent)?.clone();
        assert!(q.begin_offer(&call, agent.clone(), now));
        assert!(q.end_offer(&call, &agent, OfferOutcome::Answered, now));
        q.agent_available(IdleAgent {
            load: AgentLoad {
                idle_since_ms: now,
                ..freed.load
            },
            ..freed
        });
        Some((call, agent))
    }

    fn pair(call: &str, agent: &str) -> Option<(CallId, AgentId)> {
        Some((call.to_owned(), agent.to_owned()))
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = QueueState::new(&config());
        q.enqueue("low-old".into(), 0, 100, None, 100);
        q.enqueue("high-new".into(), 5, 300, None, 300);
        q.enqueue("high-old".into(), 5, 200, None, 300);
        q.enqueue("high-same-time".into(), 5, 200, None, 301);
        q.agent_available(idle("a", 0));

        let mut order = vec![];
        while let Some((call, agent)) = q.next_pairing(0) {
            assert!(q.begin_offer(&call, agent.clone(), 400));
            order.push(call.clone());
            assert!(q.end_offer(&call, &agent, OfferOutcome::Answered, 401));
            q.agent_available(idle(&agent, 401));
        }
        assert_eq!(order, ["high-old", "high-same-time", "high-new", "low-old"]);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.counters.answered, 4);
    }

    #[test]
    fn waits_are_estimated_from_the_place_in_line_and_the_recent_answer_gap() {
        let mut q = QueueState::new(&config());
        q.agent_available(idle("a", 0));
        assert_eq!(q.estimated_wait_secs(1), Some(0), "an agent is free");
        assert_eq!(q.estimated_wait_secs(2), None, "no answers seen yet");
        // Answers 20 s apart, then 40 s: the gap weighs the newest by a quarter (25 s).
        for (i, at) in [0u64, 20_000, 60_000].into_iter().enumerate() {
            q.agent_available(idle("a", at));
            let call = format!("c{i}");
            q.enqueue(call.clone(), 0, at, None, at);
            let (call, agent) = q.next_pairing(at).expect("pairing");
            q.begin_offer(&call, agent.clone(), at);
            q.end_offer(&call, &agent, OfferOutcome::Answered, at);
        }
        assert_eq!(q.estimated_wait_secs(1), Some(25));
        assert_eq!(q.estimated_wait_secs(3), Some(75));

        let mut last = HashMap::new();
        for (call, at) in [("x", 100_000), ("y", 105_000), ("z", 110_000)] {
            q.enqueue(call.into(), 0, at, None, at);
        }
        assert_eq!(q.next_pairing(0), None, "the agent is busy");
        let due = q.announcements(&last, 15_000, 118_000);
        assert_eq!(due.len(), 1, "only x has waited 15 s: {due:?}");
        assert_eq!(
            (due[0].call_id.as_str(), due[0].position, due[0].wait_secs),
            ("x", 1, Some(25))
        );
        last.insert("x".to_owned(), 118_000);
        let due = q.announcements(&last, 15_000, 126_000);
        let places: Vec<_> = due
            .iter()
            .map(|d| (d.call_id.as_str(), d.position))
            .collect();
        assert_eq!(places, [("y", 2), ("z", 3)]);
    }

    #[test]
    fn joining_callers_exit_when_nobody_is_logged_in_the_line_is_full_or_the_wait_too_long() {
        let mut q = QueueState::new(&QueueConfig {
            exits: Exits {
                no_agents: true,
                max_waiting: Some(2),
                max_estimated_wait_secs: Some(60),
            },
            ..config()
        });
        assert_eq!(q.exit_on_joining(), Some(Exit::NoAgents));
        q.agent_staffed("a", true);
        assert_eq!(q.exit_on_joining(), None, "logged in, even if busy");
        q.agent_staffed("a", false);
        assert_eq!(q.exit_on_joining(), Some(Exit::NoAgents));
        q.agent_available(idle("a", 0));
        assert_eq!(q.staffed_agents(), 1, "an available agent is logged in");
        // Two answers 40 s apart: the third caller in line would wait 120 s.
        for at in [0, 40_000] {
            q.agent_available(idle("a", at));
            q.enqueue(format!("c{at}"), 0, at, None, at);
            let (call, agent) = q.next_pairing(at).expect("pairing");
            q.begin_offer(&call, agent.clone(), at);
            q.end_offer(&call, &agent, OfferOutcome::Answered, at);
        }
        q.enqueue("w1".into(), 0, 50_000, None, 50_000);
        assert_eq!(
            q.exit_on_joining(),
            Some(Exit::TooLong),
            "80 s for the second"
        );
        q.exits.max_estimated_wait_secs = Some(100);
        assert_eq!(q.exit_on_joining(), None);
        q.enqueue("w2".into(), 0, 51_000, None, 51_000);
        assert_eq!(q.exit_on_joining(), Some(Exit::TooMany));
    }

    #[test]
    fn a_held_caller_keeps_everyone_behind_it_waiting() {
        let mut q = QueueState::new(&config());
        q.enqueue("first".into(), 0, 100, None, 100);
        q.enqueue("second".into(), 0, 200, None, 200);
        q.enqueue("third".into(), 0, 300, None, 300);
        q.agent_available(idle("a", 0));
        // "second" rings an agent of a node that failed: it keeps its offer, and holds the line.
        assert!(q.begin_offer("second", "b".into(), 400));
        let failed = |call: &str| call == "second";
        assert_eq!(q.next_pairing_holding(failed, 0), pair("first", "a"));
        assert!(q.begin_offer("first", "a".into(), 401));
        q.agent_available(idle("c", 0));
        assert_eq!(
            q.next_pairing_holding(failed, 0),
            None,
            "third must not pass second"
        );
        assert_eq!(q.next_pairing(0), pair("third", "c"));
        // Its standby reported the offer failed: second is next again, before third.
        assert!(q.end_offer("second", "b", OfferOutcome::Failed, 500));
        assert_eq!(q.next_pairing_holding(|_| false, 0), pair("second", "c"));
    }

    #[test]
    fn longest_idle_agent_first_and_idle_updates_move_it() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, None, 0);
        q.agent_available(idle("recent", 500));
        q.agent_available(idle("old", 100));
        q.agent_available(idle("middle", 300));
        assert_eq!(q.next_pairing(0), pair("c1", "old"));
        // "old" announces itself again after a missed offer: now the most recently idle.
        q.agent_available(idle("old", 900));
        assert_eq!(q.next_pairing(0), pair("c1", "middle"));
        q.agent_unavailable("middle");
        assert_eq!(q.next_pairing(0), pair("c1", "recent"));
        assert_eq!(q.available_agents(), 2);
    }

    #[test]
    fn no_pairing_without_both_sides_or_when_every_caller_is_ringing() {
        let mut q = QueueState::new(&config());
        assert_eq!(q.next_pairing(0), None);
        q.agent_available(idle("a", 0));
        assert_eq!(q.next_pairing(0), None);
        q.enqueue("c1".into(), 0, 0, None, 0);
        q.begin_offer("c1", "a".into(), 1);
        q.agent_available(idle("b", 0));
        assert_eq!(q.next_pairing(0), None, "c1 is already ringing a");
        // An offered agent is out of the available set.
        assert_eq!(q.available_agents(), 1);
    }

    #[test]
    fn a_missed_offer_keeps_the_callers_place() {
        let mut q = QueueState::new(&config());
        q.enqueue("first".into(), 0, 10, None, 10);
        q.enqueue("second".into(), 0, 20, None, 20);
        q.agent_available(idle("a", 0));
        q.agent_available(idle("b", 1));
        assert!(q.begin_offer("first", "a".into(), 30));
        // While "first" rings a, "second" goes to b.
        assert_eq!(q.next_pairing(0), pair("second", "b"));
        assert!(q.end_offer("first", "a", OfferOutcome::NoAnswer, 40));
        assert_eq!(q.next_pairing(0), pair("first", "b"));
        assert_eq!(q.waiting(), 2);
        // Reports from the wrong agent or for no offer are refused.
        assert!(!q.end_offer("first", "a", OfferOutcome::Answered, 41));
        q.begin_offer("first", "b".into(), 42);
        assert!(!q.end_offer("first", "a", OfferOutcome::Answered, 43));
    }

    #[test]
    fn abandon_during_offer_waits_for_the_outcome_and_counts_once() {
        let mut q = QueueState::new(&config());
        q.enqueue("c1".into(), 0, 0, None, 0);
        q.agent_available(idle("a", 0));
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
        q.enqueue("c1".into(), 0, 0, None, 0);
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
        q.enqueue("from-elsewhere".into(), 0, 0, None, 50_000);
        q.enqueue("ringing".into(), 0, 1_000, None, 1_000);
        q.enqueue("due".into(), 0, 2_000, None, 2_000);
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
        q.enqueue("c1".into(), 0, 0, None, 0);
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
            q.enqueue(id.into(), 0, since, None, since);
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
        q.enqueue("c1".into(), 0, 0, None, 0);
        q.agent_available(idle("a", 10));
        q.agent_available(idle("b", 20));
        q.suspend_agent("a", 1_000);
        assert_eq!(q.next_pairing(0), pair("c1", "b"));
        q.revive_agents(999);
        assert_eq!(q.available_agents(), 1);
        q.revive_agents(1_000);
        assert_eq!(
            q.next_pairing(0),
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
        assert!(q.enqueue("c1".into(), 0, 0, None, 0));
        assert!(!q.enqueue("c1".into(), 9, 0, None, 0));
        assert_eq!(q.counters.offered, 1);
    }

    #[test]
    fn state_round_trips_through_rkyv_and_json() {
        let mut q = routed(Strategy::RoundRobin, BILLING_4_FOR_10S_THEN_1);
        let preferred = PreferredAgent {
            agent: "2002".into(),
            until_ms: 30,
        };
        q.enqueue("c1".into(), 3, 10, None, 10);
        q.enqueue("c2".into(), 0, 5, Some(preferred), 11);
        q.enqueue("c3".into(), 0, 6, None, 12);
        for id in ["2001", "2002", "2003"] {
            q.agent_available(skilled(id, &[("billing", 4)], "", 7));
        }
        assert_eq!(serve(&mut q, 40), pair("c1", "2001"));
        q.begin_offer("c2", "b".into(), 41);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&q).unwrap();
        let back: QueueState = rkyv::from_bytes::<QueueState, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, q);
        let json = serde_json::to_string(&q).unwrap();
        let mut back: QueueState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, q);
        // The standby goes on with the round-robin where the queue left it.
        assert_eq!(back.next_pairing(42), pair("c3", "2002"));
    }

    const BILLING_4_FOR_10S_THEN_1: &[Step] =
        &[(&[("billing", 4)], Some(10)), (&[("billing", 1)], None)];

    #[test]
    fn a_step_widens_at_10_s_and_the_caller_keeps_its_place() {
        let mut q = routed(Strategy::LongestIdle, BILLING_4_FOR_10S_THEN_1);
        q.enqueue("c1".into(), 0, 1_000, None, 1_000);
        q.agent_available(skilled("junior", &[("billing", 2)], "", 0));
        assert_eq!(q.next_pairing(1_000), None);
        assert_eq!(q.next_pairing(10_999), None);
        assert_eq!(q.next_change_at_ms(1_000), Some(11_000));
        // A later caller does not pass c1 once the step widens.
        q.enqueue("c2".into(), 0, 5_000, None, 5_000);
        assert_eq!(q.next_pairing(11_000), pair("c1", "junior"));
        assert!(q.begin_offer("c1", "junior".into(), 11_000));
        assert_eq!(q.next_change_at_ms(11_000), Some(15_000), "c2's step");

        let mut q = routed(Strategy::LongestIdle, BILLING_4_FOR_10S_THEN_1);
        q.enqueue("c1".into(), 0, 1_000, None, 1_000);
        q.agent_available(skilled("junior", &[("billing", 2)], "", 0));
        q.agent_available(skilled("expert", &[("billing", 5)], "", 500));
        assert_eq!(q.next_pairing(1_000), pair("c1", "expert"), "at once");
    }

    #[test]
    fn a_caller_nobody_idle_may_take_lets_those_behind_it_be_served() {
        let mut q = routed(Strategy::LongestIdle, &[(&[("french", 1)], None)]);
        q.enqueue("needs-french".into(), 0, 0, None, 0);
        q.agent_available(skilled("anglophone", &[("billing", 5)], "", 0));
        assert_eq!(q.next_pairing(5_000), None);
        assert_eq!(q.next_change_at_ms(5_000), None, "in the last step");
        let mut q = routed(Strategy::LongestIdle, &[]);
        q.enqueue("first".into(), 0, 0, None, 0);
        q.enqueue("second".into(), 0, 1, None, 1);
        q.begin_offer("first", "x".into(), 2);
        q.agent_available(idle("a", 0));
        assert_eq!(q.next_pairing(3), pair("second", "a"));
    }

    #[test]
    fn skills_best_picks_the_highest_level_then_the_longest_idle() {
        let mut q = routed(Strategy::SkillsBest, &[(&[("billing", 1)], None)]);
        q.agent_available(skilled("novice", &[("billing", 1)], "", 0));
        q.agent_available(skilled("expert", &[("billing", 5)], "", 300));
        q.agent_available(skilled("good", &[("billing", 3)], "", 100));
        q.agent_available(skilled("expert2", &[("billing", 5)], "", 200));
        q.agent_available(skilled("no-billing", &[("sales", 5)], "", 0));
        for (i, expected) in ["expert2", "expert", "good", "novice"].iter().enumerate() {
            let call = format!("c{i}");
            q.enqueue(call.clone(), 0, i as u64, None, i as u64);
            assert_eq!(q.next_pairing(10), pair(&call, expected));
            assert!(q.begin_offer(&call, (*expected).into(), 10));
        }
        q.enqueue("c9".into(), 0, 9, None, 9);
        assert_eq!(q.next_pairing(10), None, "no-billing is not eligible");
    }

    #[test]
    fn fewest_calls_picks_the_least_loaded_agent_not_the_longest_idle() {
        let mut q = routed(Strategy::FewestCalls, &[]);
        for (id, idle_since, calls) in [("busy", 0, 9), ("light", 300, 2), ("medium", 100, 5)] {
            let mut agent = idle(id, idle_since);
            agent.load.calls_taken = calls;
            q.agent_available(agent);
        }
        q.enqueue("c1".into(), 0, 0, None, 0);
        assert_eq!(q.next_pairing(1_000), pair("c1", "light"));
        let mut q = routed(Strategy::LongestIdle, &[]);
        q.agent_available(idle("light", 300));
        q.agent_available(idle("busy", 0));
        q.enqueue("c1".into(), 0, 0, None, 0);
        assert_eq!(q.next_pairing(1_000), pair("c1", "busy"), "the default");
    }

    #[test]
    fn a_vip_arriving_later_overtakes_three_waiting_callers() {
        let mut q = routed(Strategy::LongestIdle, BILLING_4_FOR_10S_THEN_1);
        for (i, call) in ["n1", "n2", "n3"].iter().enumerate() {
            q.enqueue((*call).into(), 0, i as u64 * 1_000, None, i as u64 * 1_000);
        }
        q.enqueue("vip".into(), 9, 60_000, None, 60_000);
        q.agent_available(skilled("expert", &[("billing", 5)], "", 0));
        let mut order = vec![];
        while let Some((call, _)) = serve(&mut q, 61_000) {
            order.push(call);
        }
        assert_eq!(order, ["vip", "n1", "n2", "n3"]);
    }

    #[test]
    fn pools_split_the_offers_70_30_over_1000_pairings() {
        let mut q = QueueState::new(&QueueConfig {
            pools: vec![
                PoolWeight {
                    pool: "in-house".into(),
                    weight: 70,
                },
                PoolWeight {
                    pool: "partner".into(),
                    weight: 30,
                },
            ],
            ..config()
        });
        for (id, pool) in [("h1", "in-house"), ("h2", "in-house"), ("p1", "partner")] {
            q.agent_available(skilled(id, &[], pool, 0));
        }
        let mut in_house = 0;
        for i in 0..1_000u64 {
            q.enqueue(format!("c{i}"), 0, i, None, i);
            let (_, agent) = serve(&mut q, i + 1).unwrap();
            in_house += u32::from(agent.starts_with('h'));
        }
        assert!((670..=730).contains(&in_house), "in-house took {in_house}");
        // With only the partner's agent idle, nobody waits for the ratio.
        q.agent_unavailable("h1");
        q.agent_unavailable("h2");
        q.enqueue("last".into(), 0, 0, None, 2_000);
        assert_eq!(q.next_pairing(2_000), pair("last", "p1"));
    }

    #[test]
    fn round_robin_goes_around_in_extension_order() {
        let mut q = routed(Strategy::RoundRobin, &[]);
        // Longest-idle would take 2003 first.
        for (id, idle_since) in [("2001", 20), ("2002", 10), ("2003", 0)] {
            q.agent_available(idle(id, idle_since));
        }
        let mut order = vec![];
        for i in 0..4u64 {
            q.enqueue(format!("c{i}"), 0, i, None, i);
            order.push(serve(&mut q, 100 + i).unwrap().1);
        }
        assert_eq!(order, ["2001", "2002", "2003", "2001"]);
    }

    #[test]
    fn ring_all_offers_one_agent_at_a_time_longest_idle_first() {
        let mut q = routed(Strategy::RingAll, &[]);
        q.agent_available(idle("recent", 200));
        q.agent_available(idle("old", 100));
        q.enqueue("c1".into(), 0, 0, None, 0);
        assert_eq!(q.next_pairing(300), pair("c1", "old"));
    }

    #[test]
    fn a_preferred_agent_has_the_caller_alone_until_its_deadline() {
        let mut q = routed(Strategy::LongestIdle, &[]);
        let preferred = PreferredAgent {
            agent: "manager".into(),
            until_ms: 20_000,
        };
        q.enqueue("c1".into(), 0, 0, Some(preferred), 0);
        q.agent_available(idle("other", 0));
        assert_eq!(q.next_pairing(19_999), None);
        assert_eq!(q.next_change_at_ms(0), Some(20_000));
        q.agent_available(idle("manager", 500));
        assert_eq!(q.next_pairing(1_000), pair("c1", "manager"));
        q.agent_unavailable("manager");
        assert_eq!(q.next_pairing(20_000), pair("c1", "other"));
    }

    #[test]
    fn a_freed_agent_takes_the_best_admissible_caller_across_its_queues() {
        let agent = skilled("2001", &[("billing", 2)], "", 0).profile;
        // Billing: the head needs an expert for 10 s more, the next one anyone with billing.
        let mut billing = routed(Strategy::LongestIdle, BILLING_4_FOR_10S_THEN_1);
        billing.enqueue("expert-only".into(), 0, 100, None, 15_000);
        billing.enqueue("b-ringing".into(), 0, 150, None, 150);
        billing.begin_offer("b-ringing", "x".into(), 200);
        billing.enqueue("b-any".into(), 0, 300, None, 300);
        let mut sales = routed(Strategy::LongestIdle, &[]);
        sales.enqueue("s-old".into(), 0, 200, None, 200);
        sales.enqueue("s-vip".into(), 5, 900, None, 900);
        let now = 20_000;
        let b = billing.candidate_for(&agent, |_| false, now).unwrap();
        assert_eq!(b.call_id, "b-any", "the first caller in line it may take");
        let s = sales.candidate_for(&agent, |_| false, now).unwrap();
        assert_eq!(s.call_id, "s-vip");
        let candidates = [b.clone(), s];
        assert_eq!(select_caller(&agent, &candidates), Some(1), "the VIP first");
        sales.abandon("s-vip");
        let candidates = [b, sales.candidate_for(&agent, |_| false, now).unwrap()];
        assert_eq!(
            select_caller(&agent, &candidates),
            Some(1),
            "then the longest waiting: s-old (200) before b-any (300)"
        );
        assert_eq!(
            billing.candidate_for(&agent, |c| c == "expert-only", now),
            None,
            "a held caller holds the line"
        );
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
                            preferred: None,
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
                    board: QueueBoard::default(),
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
            self.call_with_priority(id, queue, 0, script).await
        }

        async fn call_with_priority(
            &self,
            id: &str,
            queue: &str,
            priority: u8,
            script: &[OfferOutcome],
        ) -> ActorRef<CallMsg> {
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
                    priority,
                    since_ms: unix_ms(),
                    preferred: None,
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
            board: QueueBoard::default(),
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
            board: QueueBoard::default(),
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

    const TWO_QUEUES: &str = r#"
        [[queue]]
        name = "sales"
        [[queue]]
        name = "support"
        [[agents]]
        extensions = "2001"
        password = "pw"
        queues = ["sales", "support"]
        available_on_register = true
    "#;

    #[tokio::test]
    async fn a_freed_agent_takes_the_vip_of_another_queue_before_an_older_caller() {
        let mut h = Harness::new(TWO_QUEUES).await;
        h.call("s-old", "sales", &[]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        h.call_with_priority("t-vip", "support", 5, &[]).await;
        h.to_agent("2001", registered("2001"));
        assert_eq!(h.next().await, offer("t-vip", "2001", "support"));
        h.report("support", "t-vip", "2001", OfferOutcome::CallerAbandoned);
        assert_eq!(h.next().await, offer("s-old", "2001", "sales"));
    }

    #[tokio::test]
    async fn a_freed_agent_takes_the_longest_waiting_caller_across_queues() {
        let mut h = Harness::new(TWO_QUEUES).await;
        h.call("t-old", "support", &[]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        h.call("s-new", "sales", &[]).await;
        h.to_agent("2001", registered("2001"));
        assert_eq!(h.next().await, offer("t-old", "2001", "support"));
        let q = h.queue("sales").await;
        assert_eq!((q.waiting, q.ringing, q.agent_offers), (1, 0, 0));
    }

    /// A queue actor that takes every message and answers none.
    struct Silent;

    impl Actor for Silent {
        type Msg = QueueMsg;
        type State = Vec<QueueMsg>;
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<QueueMsg>,
            _: (),
        ) -> Result<Vec<QueueMsg>, ActorProcessingErr> {
            Ok(Vec::new())
        }

        async fn handle(
            &self,
            _myself: ActorRef<QueueMsg>,
            msg: QueueMsg,
            kept: &mut Vec<QueueMsg>,
        ) -> Result<(), ActorProcessingErr> {
            // Keeping the reply ports leaves the asks unanswered rather than refused.
            kept.push(msg);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_queue_that_does_not_answer_does_not_keep_the_agent_from_the_others() {
        let mut h = Harness::new(TWO_QUEUES).await;
        let (silent, _) = Actor::spawn(None, Silent, ()).await.unwrap();
        h.queues.insert("support".into(), silent);
        h.call("s1", "sales", &[]).await;
        h.to_agent("2001", registered("2001"));
        assert_eq!(h.next().await, offer("s1", "2001", "sales"));
    }
}

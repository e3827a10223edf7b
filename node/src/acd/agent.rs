//! One agent: a pure state machine ([`AgentState`]) and the actor that owns it ([`AgentActor`]).
//!
//! The actor is the only writer of an agent's state, which is what makes [`AgentMsg::Reserve`]
//! the single point where two queues racing for one agent are decided.
//!
//! Rules the state machine enforces:
//! - An agent is offered at most one call at a time: only [`AgentStatus::Available`] can be
//!   reserved.
//! - Longest-idle must not reward missing a call: a missed offer sets `idle_since_ms` to now, so
//!   the agent goes to the back of the line. An offer the caller abandoned is not the agent's
//!   fault and keeps `idle_since_ms`.
//! - Misses are counted per agent across queues; the limit of the queue whose offer was just
//!   missed decides whether the agent goes NotReady("no-answer"). A limit of 0 never does.
//! - Wrap-up lasts the `wrap_up_secs` of the queue the call came from (carried by `Reserve`),
//!   after which the agent is idle since the end of the wrap-up.
//! - A phone that unregisters logs the agent out, except during a call: the call (and its
//!   wrap-up) finishes first and the agent is logged out where it would have become available.
//! - In a cluster a phone may register at any node: the agent keeps the contacts each node
//!   reported ([`AgentMsg::Contacts`]) and is registered while any node holds one. A reservation
//!   answers with those contacts, so the node the call is on can ring the phone.
//! - The actor grants reservations only while its node may act for it ([`Fence`]); otherwise it
//!   leaves `Reserve` unanswered and the queue tries again later.
//! - An agent that becomes available first takes the best caller across all its queues (the
//!   fair pick): it asks each queue for its candidate ([`QueueMsg::Candidate`], unanswered
//!   within [`CANDIDATE_TIMEOUT`]: none), picks with `select_caller` (priority, then longest
//!   waiting), reserves itself and tells that queue ([`QueueMsg::Claimed`]). Only when no queue
//!   has a caller for it does it announce itself available to all of them. The asks run on a
//!   task of their own, so the actor keeps answering meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, SpawnErr};
use serde::{Deserialize, Serialize};
use switchyard_cluster::Directory;
use switchyard_cluster::state::NodeId;
use switchyard_routing::{AgentLoad, AgentProfile, CallerCandidate, select_caller};

use super::{AgentId, AgentMsg, CallId, OfferOutcome, QueueMsg, RequestedState};
use crate::config::{AgentSpec, QueueConfig};
use crate::failover::Failover;
use crate::remote::Fence;
use crate::time::unix_ms;

/// Reason given when too many consecutive offers went unanswered.
pub const NO_ANSWER_REASON: &str = "no-answer";

/// How long a freed agent waits for each queue's candidate before going on without it.
pub const CANDIDATE_TIMEOUT: Duration = Duration::from_secs(1);

/// What an agent is doing.
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
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum AgentStatus {
    LoggedOut,
    Available,
    /// Reserved for a call whose offer is ringing (or about to ring) the agent's phone.
    Offered {
        call_id: CallId,
        queue: String,
    },
    OnCall {
        call_id: CallId,
        queue: String,
    },
    /// After-call work until `until_ms`.
    WrapUp {
        call_id: CallId,
        until_ms: u64,
    },
    NotReady {
        reason: String,
    },
}

impl AgentStatus {
    /// Label used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::LoggedOut => "logged-out",
            Self::Available => "available",
            Self::Offered { .. } => "offered",
            Self::OnCall { .. } => "on-call",
            Self::WrapUp { .. } => "wrap-up",
            Self::NotReady { .. } => "not-ready",
        }
    }
}

/// Every status label, for zeroing gauges at start-up.
const STATUS_NAMES: [&str; 6] = [
    "logged-out",
    "available",
    "offered",
    "on-call",
    "wrap-up",
    "not-ready",
];

/// What a state change means to the agent's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing the queues need to hear.
    None,
    /// The agent became available (or stayed available with a new idle time).
    Available { idle_since_ms: u64 },
    /// The agent was available and no longer is.
    Unavailable,
}

/// The contacts one node holds for the agent's phone.
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
pub struct NodeContacts {
    pub node: NodeId,
    pub uris: Vec<String>,
}

/// One agent's state: plain data, replicable by the failover issue.
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
pub struct AgentState {
    pub extension: AgentId,
    /// Queues this agent serves.
    pub queues: Vec<String>,
    pub status: AgentStatus,
    /// When `status` last changed (Unix ms).
    pub state_since_ms: u64,
    /// Idle since (Unix ms), for longest-idle; meaningful while Available.
    pub idle_since_ms: u64,
    pub consecutive_misses: u32,
    /// Offers reserved for this agent.
    pub offers: u64,
    pub answered: u64,
    /// Offers unanswered, rejected or failed (caller abandons excluded).
    pub missed: u64,
    /// Milliseconds connected, summed over the answered calls (least-talk-time).
    #[serde(default)]
    pub talk_ms_total: u64,
    /// The agent's phone has a registered contact (at any node).
    pub registered: bool,
    /// Contacts by node, most recently reported first; no node with an empty list.
    pub contacts: Vec<NodeContacts>,
    /// Become Available as soon as the phone registers.
    pub available_on_register: bool,
}

impl AgentState {
    pub fn new(
        extension: AgentId,
        queues: Vec<String>,
        available_on_register: bool,
        now_ms: u64,
    ) -> Self {
        Self {
            extension,
            queues,
            status: AgentStatus::LoggedOut,
            state_since_ms: now_ms,
            idle_since_ms: now_ms,
            consecutive_misses: 0,
            offers: 0,
            answered: 0,
            missed: 0,
            talk_ms_total: 0,
            registered: false,
            contacts: Vec::new(),
            available_on_register,
        }
    }

    /// Every contact URI, most recently reported node first.
    pub fn contact_uris(&self) -> Vec<String> {
        self.contacts
            .iter()
            .flat_map(|c| c.uris.iter().cloned())
            .collect()
    }

    /// `node` now holds `uris` for the phone (none: it holds no binding any more). The agent
    /// registers with the first contact anywhere and unregisters when the last one goes.
    pub fn set_contacts(&mut self, node: NodeId, uris: Vec<String>, now_ms: u64) -> Transition {
        let was = !self.contacts.is_empty();
        self.contacts.retain(|c| c.node != node);
        if !uris.is_empty() {
            self.contacts.insert(0, NodeContacts { node, uris });
        }
        match (was, !self.contacts.is_empty()) {
            (false, true) => self.registered(now_ms),
            (true, false) => self.unregistered(now_ms),
            _ => Transition::None,
        }
    }

    /// What the load-based strategies compare: calls taken are the answered offers.
    pub fn load(&self) -> AgentLoad {
        AgentLoad {
            idle_since_ms: self.idle_since_ms,
            calls_taken: self.answered,
            talk_ms_total: self.talk_ms_total,
        }
    }

    /// The queue whose call the agent is offered or on.
    pub fn call_queue(&self) -> Option<&str> {
        match &self.status {
            AgentStatus::Offered { queue, .. } | AgentStatus::OnCall { queue, .. } => Some(queue),
            _ => None,
        }
    }

    /// The phone registered a contact.
    fn registered(&mut self, now_ms: u64) -> Transition {
        self.registered = true;
        if self.status == AgentStatus::LoggedOut && self.available_on_register {
            self.log_in(now_ms)
        } else {
            Transition::None
        }
    }

    /// The phone's last contact went away.
    fn unregistered(&mut self, now_ms: u64) -> Transition {
        self.registered = false;
        match self.status {
            AgentStatus::Available | AgentStatus::NotReady { .. } => {
                self.set(AgentStatus::LoggedOut, now_ms)
            }
            // A call or its wrap-up finishes first; `ready` then logs the agent out.
            _ => Transition::None,
        }
    }

    /// Available -> Offered. Returns false (changing nothing) in any other status; success always
    /// means the agent stopped being available.
    pub fn reserve(&mut self, call_id: CallId, queue: String, now_ms: u64) -> bool {
        if self.status != AgentStatus::Available {
            return false;
        }
        self.offers += 1;
        self.set(AgentStatus::Offered { call_id, queue }, now_ms);
        true
    }

    /// Offered -> OnCall. Stale answers (another call) are ignored.
    pub fn offer_answered(&mut self, call_id: &str, now_ms: u64) -> Transition {
        match &self.status {
            AgentStatus::Offered { call_id: c, queue } if c == call_id => {
                let status = AgentStatus::OnCall {
                    call_id: c.clone(),
                    queue: queue.clone(),
                };
                self.answered += 1;
                self.consecutive_misses = 0;
                self.set(status, now_ms)
            }
            _ => Transition::None,
        }
    }

    /// The offer of `call_id` ended unanswered. `max_missed` is the limit of the offering queue.
    pub fn offer_missed(
        &mut self,
        call_id: &str,
        outcome: OfferOutcome,
        max_missed: u32,
        now_ms: u64,
    ) -> Transition {
        if !matches!(&self.status, AgentStatus::Offered { call_id: c, .. } if c == call_id) {
            return Transition::None;
        }
        match outcome {
            // Not a miss, but a protocol slip: honour it rather than lose the call's state.
            OfferOutcome::Answered => self.offer_answered(call_id, now_ms),
            OfferOutcome::CallerAbandoned => self.ready(now_ms),
            OfferOutcome::NoAnswer | OfferOutcome::Rejected | OfferOutcome::Failed => {
                self.missed += 1;
                self.consecutive_misses = self.consecutive_misses.saturating_add(1);
                if self.registered && max_missed > 0 && self.consecutive_misses >= max_missed {
                    return self.set(
                        AgentStatus::NotReady {
                            reason: NO_ANSWER_REASON.into(),
                        },
                        now_ms,
                    );
                }
                self.idle_since_ms = now_ms;
                self.ready(now_ms)
            }
        }
    }

    /// The connected call ended: wrap up for `wrap_up_ms`, or become ready at once when it is 0.
    ///
    /// Also accepted while Offered: the hang-up can overtake the answer the queue relays.
    pub fn call_ended(&mut self, call_id: &str, wrap_up_ms: u64, now_ms: u64) -> Transition {
        match &self.status {
            AgentStatus::OnCall { call_id: c, .. } if c == call_id => {
                let talk_ms = now_ms.saturating_sub(self.state_since_ms);
                self.talk_ms_total = self.talk_ms_total.saturating_add(talk_ms);
            }
            AgentStatus::Offered { call_id: c, .. } if c == call_id => {
                self.answered += 1;
                self.consecutive_misses = 0;
            }
            _ => return Transition::None,
        }
        if wrap_up_ms == 0 {
            self.idle_since_ms = now_ms;
            return self.ready(now_ms);
        }
        let status = AgentStatus::WrapUp {
            call_id: call_id.to_owned(),
            until_ms: now_ms.saturating_add(wrap_up_ms),
        };
        self.set(status, now_ms)
    }

    /// The wrap-up timer for `call_id` fired; ignored if the agent has moved on since.
    pub fn wrap_up_done(&mut self, call_id: &str, now_ms: u64) -> Transition {
        match &self.status {
            AgentStatus::WrapUp { call_id: c, .. } if c == call_id => {
                self.idle_since_ms = now_ms;
                self.ready(now_ms)
            }
            _ => Transition::None,
        }
    }

    /// An operator's request. `Err` explains why it cannot be done now.
    pub fn set_state(
        &mut self,
        requested: RequestedState,
        now_ms: u64,
    ) -> Result<Transition, String> {
        if matches!(
            self.status,
            AgentStatus::Offered { .. } | AgentStatus::OnCall { .. }
        ) {
            return Err(format!(
                "agent {} is {}; try again after the call",
                self.extension,
                self.status.name()
            ));
        }
        match requested {
            RequestedState::Available => {
                if self.status == AgentStatus::Available {
                    return Ok(Transition::None);
                }
                if !self.registered {
                    return Err(format!("agent {} has no registered phone", self.extension));
                }
                Ok(self.log_in(now_ms))
            }
            RequestedState::NotReady(reason) => {
                let reason = reason.trim();
                if reason.is_empty() {
                    return Err("a not-ready reason must not be empty".into());
                }
                Ok(self.set(
                    AgentStatus::NotReady {
                        reason: reason.to_owned(),
                    },
                    now_ms,
                ))
            }
            RequestedState::LoggedOut => Ok(self.set(AgentStatus::LoggedOut, now_ms)),
        }
    }

    /// For the HTTP API.
    pub fn snapshot(&self) -> AgentSnapshot {
        AgentSnapshot {
            extension: self.extension.clone(),
            queues: self.queues.clone(),
            status: self.status.clone(),
            state_since_ms: self.state_since_ms,
            idle_since_ms: self.idle_since_ms,
            registered: self.registered,
            contacts: self.contact_uris(),
            consecutive_misses: self.consecutive_misses,
            offers: self.offers,
            answered: self.answered,
            missed: self.missed,
        }
    }

    /// A fresh start: the miss streak is forgiven and the agent is idle from now.
    fn log_in(&mut self, now_ms: u64) -> Transition {
        self.consecutive_misses = 0;
        self.idle_since_ms = now_ms;
        self.set(AgentStatus::Available, now_ms)
    }

    /// Where an offer or call leaves the agent: Available, or LoggedOut if the phone went away.
    fn ready(&mut self, now_ms: u64) -> Transition {
        if self.registered {
            self.set(AgentStatus::Available, now_ms)
        } else {
            self.set(AgentStatus::LoggedOut, now_ms)
        }
    }

    fn set(&mut self, status: AgentStatus, now_ms: u64) -> Transition {
        let was_available = self.status == AgentStatus::Available;
        if self.status != status {
            self.state_since_ms = now_ms;
        }
        self.status = status;
        match (was_available, self.status == AgentStatus::Available) {
            (_, true) => Transition::Available {
                idle_since_ms: self.idle_since_ms,
            },
            (true, false) => Transition::Unavailable,
            (false, false) => Transition::None,
        }
    }
}

/// An agent as the HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub extension: AgentId,
    pub queues: Vec<String>,
    /// Flattened: `"status": "on-call", "call_id": ..., "queue": ...`.
    #[serde(flatten)]
    pub status: AgentStatus,
    pub state_since_ms: u64,
    pub idle_since_ms: u64,
    pub registered: bool,
    /// Registered contact URIs, at whichever node the phone registered.
    pub contacts: Vec<String>,
    pub consecutive_misses: u32,
    pub offers: u64,
    pub answered: u64,
    pub missed: u64,
}

/// The knobs of one queue that the agent applies to calls from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    pub wrap_up_secs: u64,
    pub max_missed_offers: u32,
    /// How long an offer from the queue rings before the call gives up on it.
    pub offer_timeout_secs: u64,
}

impl From<&QueueConfig> for QueuePolicy {
    fn from(q: &QueueConfig) -> Self {
        Self {
            wrap_up_secs: q.wrap_up_secs,
            max_missed_offers: q.max_missed_offers,
            offer_timeout_secs: q.offer_timeout_secs,
        }
    }
}

/// Past its queue's offer timeout, an offer has ended one way or another: a restored agent
/// still offered by then lost the outcome with its failed home.
const RESTORED_OFFER_GRACE: Duration = Duration::from_secs(2);

/// Past its queue's offer timeout and the queue's own watchdog grace, a claimed offer whose
/// queue never took it up (the claim was lost) is written off.
const CLAIM_GRACE: Duration = Duration::from_secs(12);

/// Thin actor around [`AgentState`].
pub struct AgentActor;

pub struct AgentArgs {
    pub spec: AgentSpec,
    /// Policy of each queue the agent serves, by name (see [`policies`]).
    pub policies: HashMap<String, QueuePolicy>,
    /// Queue actors (local, or proxies of remote ones) by name.
    pub queues: Directory<String, QueueMsg>,
    /// Whether this node may act for the agent right now.
    pub fence: Fence,
    /// The state the agent's previous home copied here before it failed, if any.
    pub restored: Option<AgentState>,
    /// Copies the state to the agent's heir after every change (clustered nodes only).
    pub failover: Option<Failover>,
}

/// The policies of the queues `spec` serves that `queue` knows, by queue name.
pub fn policies(
    spec: &AgentSpec,
    queue: impl Fn(&str) -> Option<QueueConfig>,
) -> HashMap<String, QueuePolicy> {
    spec.queues
        .iter()
        .filter_map(|name| queue(name))
        .map(|q| (q.name.clone(), QueuePolicy::from(&q)))
        .collect()
}

pub struct AgentActorState {
    agent: AgentState,
    /// Who the agent is to routing, from its configuration.
    profile: AgentProfile,
    policies: HashMap<String, QueuePolicy>,
    queues: Directory<String, QueueMsg>,
    fence: Fence,
    failover: Option<Failover>,
    /// The state as last copied to the heir.
    replicated: Option<AgentState>,
    /// A `CopyToHeir` is on its way.
    copy_pending: bool,
    /// The current fair-pick round; answers of older rounds are stale.
    round: u64,
}

/// How long a changed agent state waits before it is copied to the heir: a call's changes
/// (offered, on call) come within milliseconds and then cost one copy.
const COPY_DELAY: Duration = Duration::from_millis(50);

impl AgentActorState {
    /// Arranges a copy to the heir if the state changed since the last one.
    fn replicate(&mut self, myself: &ActorRef<AgentMsg>) {
        if self.failover.is_none() || self.copy_pending {
            return;
        }
        if self.replicated.as_ref() != Some(&self.agent) {
            self.copy_pending = true;
            myself.send_after(COPY_DELAY, || AgentMsg::CopyToHeir);
        }
    }

    fn copy_to_heir(&mut self) {
        self.copy_pending = false;
        let Some(failover) = &self.failover else {
            return;
        };
        if self.replicated.as_ref() != Some(&self.agent) {
            failover.agent_changed(&self.agent);
            self.replicated = Some(self.agent.clone());
        }
    }
}

impl AgentActorState {
    fn policy(&self, queue: Option<&str>) -> QueuePolicy {
        queue
            .and_then(|q| self.policies.get(q))
            .copied()
            // Reserve always names one of the agent's queues; an unknown one gets no wrap-up and
            // no miss limit rather than a guess.
            .unwrap_or(QueuePolicy {
                wrap_up_secs: 0,
                max_missed_offers: 0,
                offer_timeout_secs: 0,
            })
    }

    /// Tells every queue of the agent what `transition` means to it.
    fn notify(&self, transition: Transition) {
        if transition == Transition::None {
            return;
        }
        for name in &self.agent.queues {
            self.tell_queue(name, transition);
        }
    }

    /// The agent just became available: asks its queues for their candidates (see the module
    /// docs), answered to the actor with [`AgentMsg::Candidates`]. A fenced agent announces
    /// itself at once: its queues' reservations will wait until it may act.
    fn fair_pick(&mut self, myself: &ActorRef<AgentMsg>, transition: Transition) {
        self.round += 1;
        if !self.fence.can_act() {
            self.notify(transition);
            return;
        }
        let mut asks = tokio::task::JoinSet::new();
        for name in &self.agent.queues {
            let Some(queue) = self.queues.get(name) else {
                continue;
            };
            let (name, agent) = (name.clone(), self.profile.clone());
            asks.spawn(async move {
                let reply = queue
                    .call(
                        |reply| QueueMsg::Candidate { agent, reply },
                        Some(CANDIDATE_TIMEOUT),
                    )
                    .await;
                match reply {
                    Ok(CallResult::Success(Some(candidate))) => Some((name, candidate)),
                    _ => None,
                }
            });
        }
        let (myself, round) = (myself.clone(), self.round);
        tokio::spawn(async move {
            let candidates = asks.join_all().await.into_iter().flatten().collect();
            // A stopped agent needs no answer.
            let _ = myself.send_message(AgentMsg::Candidates { round, candidates });
        });
    }

    /// The candidates of round `round` came in: take the best one, or announce the agent.
    fn picked(
        &mut self,
        myself: &ActorRef<AgentMsg>,
        round: u64,
        candidates: Vec<(String, CallerCandidate)>,
        now_ms: u64,
    ) {
        if round != self.round || self.agent.status != AgentStatus::Available {
            return;
        }
        let (mut names, mut callers): (Vec<String>, Vec<CallerCandidate>) =
            candidates.into_iter().unzip();
        let claim = select_caller(&self.profile, &callers).and_then(|i| {
            let (queue_name, call_id) = (names.swap_remove(i), callers.swap_remove(i).call_id);
            let queue = self.queues.get(&queue_name)?;
            self.agent
                .reserve(call_id.clone(), queue_name.clone(), now_ms)
                .then_some((queue_name, queue, call_id))
        });
        let Some((queue_name, queue, call_id)) = claim else {
            let idle_since_ms = self.agent.idle_since_ms;
            self.notify(Transition::Available { idle_since_ms });
            return;
        };
        let claimed = QueueMsg::Claimed {
            call_id: call_id.clone(),
            agent_id: self.agent.extension.clone(),
            contacts: self.agent.contact_uris(),
        };
        if queue.send_message(claimed).is_err() {
            tracing::warn!(agent = %self.agent.extension, queue = %queue_name,
                "queue actor has stopped; its claim is written off later");
        }
        // Should the claim be lost, the agent is freed once the offer must have ended.
        let ring = Duration::from_secs(self.policy(Some(&queue_name)).offer_timeout_secs);
        let since_ms = self.agent.state_since_ms;
        myself.send_after(ring + CLAIM_GRACE, move || AgentMsg::OfferExpired {
            call_id,
            since_ms,
        });
    }

    /// Tells queue `name` whether the agent is logged in.
    fn tell_staffed(&self, name: &String, logged_in: bool) {
        let Some(queue) = self.queues.get(name) else {
            return;
        };
        let msg = QueueMsg::AgentStaffed {
            agent_id: self.agent.extension.clone(),
            logged_in,
        };
        if queue.send_message(msg).is_err() {
            tracing::warn!(agent = %self.agent.extension, queue = %name, "queue actor has stopped");
        }
    }

    fn tell_queue(&self, name: &String, transition: Transition) {
        let agent_id = &self.agent.extension;
        let Some(queue) = self.queues.get(name) else {
            tracing::warn!(agent = %agent_id, queue = %name, "agent's queue is not running");
            return;
        };
        let msg = match transition {
            Transition::Available { .. } => QueueMsg::AgentAvailable {
                profile: self.profile.clone(),
                load: self.agent.load(),
            },
            Transition::Unavailable | Transition::None => QueueMsg::AgentUnavailable {
                agent_id: agent_id.clone(),
            },
        };
        if queue.send_message(msg).is_err() {
            tracing::warn!(agent = %agent_id, queue = %name, "queue actor has stopped");
        }
    }
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentActorState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> Result<AgentActorState, ActorProcessingErr> {
        let profile = args.spec.profile();
        let agent = match args.restored {
            Some(mut restored) if restored.extension == args.spec.extension => {
                tracing::info!(agent = %restored.extension, status = restored.status.name(),
                    "agent restored from its previous home's copy");
                // The configuration may have changed meanwhile; it decides the queues.
                restored.queues = args.spec.queues;
                restored.available_on_register = args.spec.available_on_register;
                restored
            }
            _ => AgentState::new(
                args.spec.extension,
                args.spec.queues,
                args.spec.available_on_register,
                unix_ms(),
            ),
        };
        metrics::gauge!("switchyard_agents", "status" => agent.status.name()).increment(1.0);
        Ok(AgentActorState {
            agent,
            profile,
            policies: args.policies,
            queues: args.queues,
            fence: args.fence,
            failover: args.failover,
            replicated: None,
            copy_pending: false,
            round: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<AgentMsg>,
        state: &mut AgentActorState,
    ) -> Result<(), ActorProcessingErr> {
        // A restored agent carries on: its wrap-up ends on time, and its queues (which may be
        // new too) learn that it is available.
        match state.agent.status.clone() {
            AgentStatus::WrapUp { call_id, until_ms } => {
                let delay = Duration::from_millis(until_ms.saturating_sub(unix_ms()));
                myself.send_after(delay, move || AgentMsg::WrapUpDone { call_id });
            }
            AgentStatus::Available => state.notify(Transition::Available {
                idle_since_ms: state.agent.idle_since_ms,
            }),
            // The offer's outcome may have been sent to the failed home and lost. Once the
            // offer must have ended, an agent still offered for it is freed; not a miss (the
            // node failed, not the agent).
            AgentStatus::Offered { call_id, queue } => {
                let ring = Duration::from_secs(state.policy(Some(&queue)).offer_timeout_secs);
                let since_ms = state.agent.state_since_ms;
                myself.send_after(ring + RESTORED_OFFER_GRACE, move || {
                    AgentMsg::OfferExpired { call_id, since_ms }
                });
            }
            _ => {}
        }
        state.replicate(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        state: &mut AgentActorState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("switchyard_agents", "status" => state.agent.status.name()).decrement(1.0);
        if state.agent.status == AgentStatus::Available {
            state.notify(Transition::Unavailable);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        state: &mut AgentActorState,
    ) -> Result<(), ActorProcessingErr> {
        let now = unix_ms();
        let before = state.agent.counts();
        let agent = &mut state.agent;
        let transition = match msg {
            AgentMsg::Contacts { node, contacts } => agent.set_contacts(node, contacts, now),
            AgentMsg::Announce { queue } => {
                if agent.status != AgentStatus::LoggedOut && agent.queues.contains(&queue) {
                    state.tell_staffed(&queue, true);
                }
                let agent = &state.agent;
                if agent.status == AgentStatus::Available && agent.queues.contains(&queue) {
                    let idle_since_ms = agent.idle_since_ms;
                    state.tell_queue(&queue, Transition::Available { idle_since_ms });
                }
                Transition::None
            }
            AgentMsg::Reserve {
                call_id,
                queue,
                reply,
            } => {
                if !state.fence.can_act() {
                    // Not ours to decide now: no answer, so the queue retries later.
                    tracing::debug!(agent = %agent.extension, call = %call_id,
                        "reservation left unanswered: this node may not act for the agent");
                    drop(reply);
                    return Ok(());
                }
                let reserved = agent.reserve(call_id, queue, now);
                // The queue may have timed out and gone; it then releases the reservation with
                // OfferMissed(CallerAbandoned), so a lost reply needs no handling here.
                let _ = reply.send(reserved.then(|| agent.contact_uris()));
                if reserved {
                    Transition::Unavailable
                } else {
                    Transition::None
                }
            }
            AgentMsg::OfferAnswered { call_id } => agent.offer_answered(&call_id, now),
            AgentMsg::OfferMissed { call_id, outcome } => {
                let limit = state.policy(state.agent.call_queue()).max_missed_offers;
                state.agent.offer_missed(&call_id, outcome, limit, now)
            }
            AgentMsg::CallEnded { call_id } => {
                let wrap_up_ms = state
                    .policy(state.agent.call_queue())
                    .wrap_up_secs
                    .saturating_mul(1000);
                let transition = state.agent.call_ended(&call_id, wrap_up_ms, now);
                if let AgentStatus::WrapUp {
                    call_id: c,
                    until_ms,
                } = &state.agent.status
                    && *c == call_id
                {
                    let delay = Duration::from_millis(until_ms.saturating_sub(now));
                    myself.send_after(delay, move || AgentMsg::WrapUpDone { call_id });
                }
                transition
            }
            AgentMsg::WrapUpDone { call_id } => agent.wrap_up_done(&call_id, now),
            AgentMsg::Candidates { round, candidates } => {
                state.picked(&myself, round, candidates, now);
                Transition::None
            }
            AgentMsg::OfferExpired { call_id, since_ms } => {
                if agent.state_since_ms == since_ms {
                    tracing::info!(agent = %agent.extension, call = %call_id,
                        "offer never reported; freeing the agent");
                    agent.offer_missed(&call_id, OfferOutcome::CallerAbandoned, 0, now)
                } else {
                    Transition::None
                }
            }
            AgentMsg::CopyToHeir => {
                state.copy_to_heir();
                Transition::None
            }
            AgentMsg::SetState {
                state: requested,
                reply,
            } => {
                let result = agent.set_state(requested, now);
                let transition = *result.as_ref().unwrap_or(&Transition::None);
                // The HTTP client may have timed out; the change stands either way.
                let _ = reply.send(result.map(|_| ()));
                transition
            }
            AgentMsg::Snapshot(reply) => {
                // A caller that timed out no longer wants the answer.
                let _ = reply.send(agent.snapshot());
                Transition::None
            }
        };
        match transition {
            Transition::Available { .. } => state.fair_pick(&myself, transition),
            _ => state.notify(transition),
        }
        let logged_in = state.agent.status != AgentStatus::LoggedOut;
        if logged_in != (before.status != AgentStatus::LoggedOut.name()) {
            for queue in &state.agent.queues {
                state.tell_staffed(queue, logged_in);
            }
        }
        record_metrics(&before, &state.agent);
        state.replicate(&myself);
        Ok(())
    }
}

/// The parts of an agent's state that metrics follow.
struct Counts {
    status: &'static str,
    offers: u64,
    answered: u64,
    missed: u64,
}

impl AgentState {
    fn counts(&self) -> Counts {
        Counts {
            status: self.status.name(),
            offers: self.offers,
            answered: self.answered,
            missed: self.missed,
        }
    }
}

fn record_metrics(before: &Counts, after: &AgentState) {
    let status = after.status.name();
    if status != before.status {
        metrics::gauge!("switchyard_agents", "status" => before.status).decrement(1.0);
        metrics::gauge!("switchyard_agents", "status" => status).increment(1.0);
    }
    for (name, old, new) in [
        ("switchyard_agent_offers_total", before.offers, after.offers),
        (
            "switchyard_agent_answered_total",
            before.answered,
            after.answered,
        ),
        ("switchyard_agent_missed_total", before.missed, after.missed),
    ] {
        if new > old {
            metrics::counter!(name).increment(new - old);
        }
    }
}

/// Spawns the actor; the caller registers it in its agent directory.
///
/// Spawn the queues first: an agent announces itself only to queues already in its queue
/// directory (a queue started later asks with [`AgentMsg::Announce`]).
pub async fn spawn_agent(args: AgentArgs) -> Result<ActorRef<AgentMsg>, SpawnErr> {
    // Touch every label once so dashboards see zeros rather than gaps.
    for name in STATUS_NAMES {
        metrics::gauge!("switchyard_agents", "status" => name).increment(0.0);
    }
    let (agent, _handle) = Actor::spawn(None, AgentActor, args).await?;
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentState {
        let mut a = AgentState::new("2001".into(), vec!["sales".into()], false, 0);
        a.registered(0);
        a
    }

    fn available(now: u64) -> AgentState {
        let mut a = agent();
        assert_eq!(
            a.set_state(RequestedState::Available, now),
            Ok(Transition::Available { idle_since_ms: now })
        );
        a
    }

    #[test]
    fn registered_while_any_node_holds_a_contact() {
        let mut a = AgentState::new("2001".into(), vec![], true, 0);
        let uri = |n: u8| vec![format!("sip:2001@10.0.0.{n}:5060")];
        assert_eq!(
            a.set_contacts(1, uri(1), 5),
            Transition::Available { idle_since_ms: 5 }
        );
        // A second node's binding (the phone re-registered elsewhere) comes first.
        assert_eq!(a.set_contacts(2, uri(2), 6), Transition::None);
        assert_eq!(a.contact_uris(), [uri(2), uri(1)].concat());
        // The first node's binding expiring does not log the agent out.
        assert_eq!(a.set_contacts(1, vec![], 7), Transition::None);
        assert!(a.registered);
        assert_eq!(a.contact_uris(), uri(2));
        assert_eq!(a.set_contacts(2, vec![], 8), Transition::Unavailable);
        assert_eq!((a.registered, &a.status), (false, &AgentStatus::LoggedOut));
        assert!(a.contact_uris().is_empty());
    }

    #[test]
    fn register_logs_in_only_when_configured() {
        let mut a = AgentState::new("2001".into(), vec![], false, 0);
        assert_eq!(a.registered(5), Transition::None);
        assert_eq!(a.status, AgentStatus::LoggedOut);

        let mut b = AgentState::new("2002".into(), vec![], true, 0);
        assert_eq!(b.registered(5), Transition::Available { idle_since_ms: 5 });
        // A re-registration refresh must not reset idle time.
        assert_eq!(b.registered(9), Transition::None);
        assert_eq!(b.idle_since_ms, 5);
    }

    #[test]
    fn available_needs_a_registered_phone() {
        let mut a = AgentState::new("2001".into(), vec![], false, 0);
        assert!(a.set_state(RequestedState::Available, 1).is_err());
        assert_eq!(a.status, AgentStatus::LoggedOut);
    }

    #[test]
    fn reserve_only_from_available() {
        let mut a = available(10);
        assert!(a.reserve("c1".into(), "sales".into(), 20));
        // A second queue racing for the same agent loses.
        assert!(!a.reserve("c2".into(), "support".into(), 21));
        assert_eq!(
            a.status,
            AgentStatus::Offered {
                call_id: "c1".into(),
                queue: "sales".into()
            }
        );
        assert_eq!(a.offers, 1);

        let mut idle = agent();
        assert!(!idle.reserve("c3".into(), "sales".into(), 22));
    }

    #[test]
    fn answer_then_wrap_up_then_available_idle_from_end_of_wrap_up() {
        let mut a = available(10);
        a.reserve("c1".into(), "sales".into(), 20);
        assert_eq!(a.offer_answered("c1", 25), Transition::None);
        assert_eq!(a.call_queue(), Some("sales"));
        assert_eq!(a.call_ended("c1", 5_000, 100), Transition::None);
        assert_eq!(
            a.talk_ms_total, 75,
            "on call from the answer at 25 to the end at 100"
        );
        assert_eq!(
            a.status,
            AgentStatus::WrapUp {
                call_id: "c1".into(),
                until_ms: 5_100
            }
        );
        // A stale timer from some earlier call does nothing.
        assert_eq!(a.wrap_up_done("c0", 5_100), Transition::None);
        assert_eq!(
            a.wrap_up_done("c1", 5_100),
            Transition::Available {
                idle_since_ms: 5_100
            }
        );
        assert_eq!(a.answered, 1);
        assert_eq!(
            a.load(),
            AgentLoad {
                idle_since_ms: 5_100,
                calls_taken: 1,
                talk_ms_total: 75
            }
        );
    }

    #[test]
    fn zero_wrap_up_is_available_at_once() {
        let mut a = available(10);
        a.reserve("c1".into(), "sales".into(), 20);
        a.offer_answered("c1", 25);
        assert_eq!(
            a.call_ended("c1", 0, 90),
            Transition::Available { idle_since_ms: 90 }
        );
    }

    #[test]
    fn hang_up_overtaking_the_answer_still_counts_as_answered() {
        let mut a = available(10);
        a.reserve("c1".into(), "sales".into(), 20);
        a.call_ended("c1", 1_000, 30);
        assert!(matches!(a.status, AgentStatus::WrapUp { .. }));
        assert_eq!(a.answered, 1);
        // The relayed answer arrives late and is ignored.
        assert_eq!(a.offer_answered("c1", 31), Transition::None);
        assert!(matches!(a.status, AgentStatus::WrapUp { .. }));
    }

    #[test]
    fn a_miss_sends_the_agent_to_the_back() {
        let mut a = available(10);
        a.reserve("c1".into(), "sales".into(), 20);
        assert_eq!(
            a.offer_missed("c1", OfferOutcome::NoAnswer, 3, 35),
            Transition::Available { idle_since_ms: 35 }
        );
        assert_eq!((a.missed, a.consecutive_misses), (1, 1));
    }

    #[test]
    fn caller_abandon_is_not_a_miss_and_keeps_idle_time() {
        let mut a = available(10);
        a.reserve("c1".into(), "sales".into(), 20);
        assert_eq!(
            a.offer_missed("c1", OfferOutcome::CallerAbandoned, 1, 25),
            Transition::Available { idle_since_ms: 10 }
        );
        assert_eq!((a.missed, a.consecutive_misses), (0, 0));
    }

    #[test]
    fn consecutive_misses_make_the_agent_not_ready_and_answers_reset_them() {
        let mut a = available(0);
        let outcomes = [
            OfferOutcome::NoAnswer,
            OfferOutcome::Rejected,
            OfferOutcome::Answered,
            OfferOutcome::Failed,
            OfferOutcome::NoAnswer,
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let id = format!("c{i}");
            let t = i as u64 * 100;
            assert!(a.reserve(id.clone(), "sales".into(), t));
            if outcome == OfferOutcome::Answered {
                a.offer_answered(&id, t + 1);
                a.call_ended(&id, 0, t + 2);
            } else {
                a.offer_missed(&id, outcome, 3, t + 1);
            }
        }
        assert_eq!(a.status, AgentStatus::Available);
        assert_eq!(a.consecutive_misses, 2);

        assert!(a.reserve("c9".into(), "sales".into(), 1_000));
        assert_eq!(
            a.offer_missed("c9", OfferOutcome::NoAnswer, 3, 1_001),
            Transition::None
        );
        assert_eq!(
            a.status,
            AgentStatus::NotReady {
                reason: NO_ANSWER_REASON.into()
            }
        );
        assert_eq!(a.missed, 5);
        // Logging back in forgives the streak.
        a.set_state(RequestedState::Available, 2_000).unwrap();
        assert_eq!(a.consecutive_misses, 0);
    }

    #[test]
    fn miss_limit_zero_never_forces_not_ready() {
        let mut a = available(0);
        for i in 0..10u64 {
            a.reserve(format!("c{i}"), "sales".into(), i * 10);
            a.offer_missed(&format!("c{i}"), OfferOutcome::NoAnswer, 0, i * 10 + 1);
        }
        assert_eq!(a.status, AgentStatus::Available);
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let mut a = available(0);
        a.reserve("c1".into(), "sales".into(), 1);
        assert_eq!(
            a.offer_missed("c0", OfferOutcome::NoAnswer, 1, 2),
            Transition::None
        );
        assert_eq!(a.offer_answered("c0", 2), Transition::None);
        assert_eq!(a.call_ended("c0", 0, 2), Transition::None);
        assert!(matches!(a.status, AgentStatus::Offered { .. }));
        assert_eq!(a.missed, 0);
    }

    #[test]
    fn unregister_logs_out_but_not_during_a_call() {
        let mut a = available(0);
        assert_eq!(a.unregistered(5), Transition::Unavailable);
        assert_eq!(a.status, AgentStatus::LoggedOut);

        let mut b = available(0);
        b.reserve("c1".into(), "sales".into(), 1);
        b.offer_answered("c1", 2);
        assert_eq!(b.unregistered(3), Transition::None);
        assert!(matches!(b.status, AgentStatus::OnCall { .. }));
        b.call_ended("c1", 1_000, 10);
        assert_eq!(b.wrap_up_done("c1", 1_010), Transition::None);
        assert_eq!(b.status, AgentStatus::LoggedOut);

        let mut c = available(0);
        c.reserve("c1".into(), "sales".into(), 1);
        c.unregistered(2);
        c.offer_missed("c1", OfferOutcome::Failed, 1, 3);
        assert_eq!(c.status, AgentStatus::LoggedOut);
    }

    #[test]
    fn operator_requests() {
        let mut a = available(0);
        assert_eq!(
            a.set_state(RequestedState::NotReady("break".into()), 5),
            Ok(Transition::Unavailable)
        );
        assert!(
            a.set_state(RequestedState::NotReady("  ".into()), 6)
                .is_err()
        );
        assert_eq!(
            a.set_state(RequestedState::Available, 7),
            Ok(Transition::Available { idle_since_ms: 7 })
        );
        a.reserve("c1".into(), "sales".into(), 8);
        let err = a.set_state(RequestedState::LoggedOut, 9).unwrap_err();
        assert!(err.contains("offered"), "{err}");
        a.offer_answered("c1", 10);
        a.call_ended("c1", 1_000, 20);
        // Ending wrap-up early makes the agent idle from now.
        assert_eq!(
            a.set_state(RequestedState::Available, 30),
            Ok(Transition::Available { idle_since_ms: 30 })
        );
        assert_eq!(
            a.set_state(RequestedState::LoggedOut, 40),
            Ok(Transition::Unavailable)
        );
        assert_eq!(a.state_since_ms, 40);
    }

    #[test]
    fn state_round_trips_through_rkyv_and_snapshot_is_flat_json() {
        let mut a = available(3);
        a.reserve("c1".into(), "sales".into(), 4);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&a).unwrap();
        let back: AgentState = rkyv::from_bytes::<AgentState, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, a);

        let json = serde_json::to_value(a.snapshot()).unwrap();
        assert_eq!(json["status"], "offered");
        assert_eq!(json["call_id"], "c1");
        assert_eq!(json["queue"], "sales");
        assert_eq!(json["extension"], "2001");
    }
}

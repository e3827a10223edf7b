//! Automatic call distribution: queue and agent actors.
//!
//! The protocol between the three actor kinds, so that no agent is ever offered two calls:
//!
//! 1. A call actor sends [`QueueMsg::Enqueue`] with its [`CallAddr`] (node and call id), and
//!    optionally a preferred agent who alone may take the call until a deadline.
//! 2. An agent that becomes available first makes the fair pick across its queues, wherever
//!    they are homed: it asks each for its candidate ([`QueueMsg::Candidate`]: the first caller
//!    in line it may take now), picks the highest priority, then the longest waiting, reserves
//!    itself for that call and tells its queue ([`QueueMsg::Claimed`]), which goes on at 4. A
//!    queue that does not answer in time counts as having no candidate; a claim its queue
//!    never takes up is written off by the agent after the offer timeout.
//! 3. With no candidate anywhere, the agent tells each of its queues that it is available
//!    ([`QueueMsg::AgentAvailable`], with its routing profile and load) and later that it is no
//!    longer ([`QueueMsg::AgentUnavailable`]). For each caller in line (priority, then first
//!    entry into any queue, then FIFO), the queue picks an agent with `switchyard_routing`
//!    (skills step in force, pool turn, strategy; ring-all rings one agent at a time, longest
//!    idle first), and asks it to [`AgentMsg::Reserve`] itself. A caller nobody idle may take
//!    keeps its place; the queue looks again when its routing step widens.
//!    The agent actor is the only place that moves an agent from Available to Offered, so two
//!    queues racing for one agent cannot both win.
//! 4. On a successful reservation (which answers with the agent's registered contacts) the queue
//!    sends [`CallMsg::Offer`] to the call actor, which rings the agent's phone and reports
//!    back with [`QueueMsg::OfferOutcome`]; the queue relays the outcome to the agent
//!    ([`AgentMsg::OfferAnswered`] / [`AgentMsg::OfferMissed`]).
//! 5. When the connected call ends the call actor sends [`AgentMsg::CallEnded`]; the agent wraps
//!    up and becomes available again (back to 2).
//!
//! State is plain data ([`queue::QueueState`], [`agent::AgentState`]) owned by the actor, so the
//! failover issue can replicate it.
//!
//! In a cluster the three actors may live on different nodes. The tell-variants that can cross
//! the mesh have a serde twin ([`WireQueueMsg`], [`WireAgentMsg`]; asks: [`QueueAsk`],
//! [`AgentAsk`]); `crate::remote` carries them. Variants an actor sends only to itself (`Tick`,
//! `WrapUpDone`) have none.

pub mod agent;
pub mod board;
pub mod queue;

use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};
use switchyard_cluster::state::NodeId;
use switchyard_routing::{AgentLoad, AgentProfile, CallerCandidate, PreferredAgent};

#[cfg(doc)]
use crate::call::CallMsg;
use crate::remote::CallAddr;

/// Switchyard's own call id (not a SIP Call-ID; a call has two of those).
pub type CallId = String;
/// An agent's extension, e.g. `"2001"`.
pub type AgentId = String;

/// Messages a queue actor handles.
pub enum QueueMsg {
    /// A caller joins the queue.
    Enqueue {
        /// Where the call actor lives; `call.call_id` identifies the caller in the queue.
        call: CallAddr,
        priority: u8,
        /// Unix milliseconds when the caller first entered any queue; an overflowed caller keeps it.
        since_ms: u64,
        /// The agent a flow asked for: only they may take the call until the deadline, after
        /// which the queue's routing steps apply (counting from the deadline).
        preferred: Option<PreferredAgent>,
    },
    /// The caller left before being connected (hung up, cancelled).
    Abandon { call_id: CallId },
    /// What became of an offer this queue made with [`CallMsg::Offer`].
    OfferOutcome {
        call: CallAddr,
        agent_id: AgentId,
        outcome: OfferOutcome,
    },
    /// An agent serving this queue became available (or changed its load while available).
    /// The queue addresses the agent by `profile.id` through its agent directory.
    AgentAvailable {
        /// Skills, pool, site and team, for skills routing and pool split.
        profile: AgentProfile,
        /// Idle since, calls taken and talk time, for the strategies.
        load: AgentLoad,
    },
    /// An agent serving this queue is no longer available (offered elsewhere, on a call, not ready).
    AgentUnavailable { agent_id: AgentId },
    /// The agent logged in (any state but logged out) or out: for the queue's join-empty exit
    /// and for flows that branch on staffing.
    AgentStaffed { agent_id: AgentId, logged_in: bool },
    /// An agent that just freed up asks which caller this queue would give it (the fair pick
    /// across its queues): the first in line, not ringing an agent, that it may take now.
    /// `None` also when the queue may not act now.
    Candidate {
        agent: AgentProfile,
        reply: RpcReplyPort<Option<CallerCandidate>>,
    },
    /// The agent picked this queue's candidate and reserved itself for it (it is Offered):
    /// offer it the call, or release it if the caller is gone or already ringing someone.
    Claimed {
        call_id: CallId,
        agent_id: AgentId,
        /// The agent's registered contacts, as a reservation answers them.
        contacts: Vec<String>,
    },
    /// Periodic check of max-wait overflow and watchdogs; also sent when a waiting caller's
    /// routing step widens, to pair it then.
    Tick,
    /// Current state, for the HTTP API.
    Snapshot(RpcReplyPort<queue::QueueSnapshot>),
}

/// How an offer ended.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OfferOutcome {
    /// The agent answered: the call is connected.
    Answered,
    /// The agent's phone rang until the offer timeout.
    NoAnswer,
    /// The agent's phone refused (busy, decline, any 4xx-6xx).
    Rejected,
    /// The agent could not be reached (no registered contact, transport error, timeout B).
    Failed,
    /// The caller hung up while the agent was ringing.
    CallerAbandoned,
}

/// The state an operator (HTTP API) can ask an agent to be in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum RequestedState {
    Available,
    NotReady(String),
    LoggedOut,
}

/// Messages an agent actor handles.
pub enum AgentMsg {
    /// The contact URIs registered for the agent's extension at `node` (replacing what that node
    /// reported before; empty when it holds none). The agent is registered while any node holds
    /// a contact, so a phone may register at any node of a cluster.
    Contacts { node: NodeId, contacts: Vec<String> },
    /// `queue` (re)started and knows no agents: tell it whether this agent is available.
    Announce { queue: String },
    /// Reserve this agent for `call_id` (Available -> Offered). Replies with the agent's contact
    /// URIs on success (for the call actor to ring), `None` if the agent is not Available; the
    /// queue then tries another agent. An agent whose node may not act for it (see
    /// `crate::remote::Fence`) does not answer at all, and the queue retries it later.
    Reserve {
        call_id: CallId,
        /// The reserving queue: its wrap-up time and miss limit apply to this call.
        queue: String,
        reply: RpcReplyPort<Option<Vec<String>>>,
    },
    /// The offered call was answered (Offered -> OnCall).
    OfferAnswered { call_id: CallId },
    /// The offered call was not answered; counts a miss unless the caller abandoned
    /// (Offered -> Available, or NotReady("no-answer") after too many consecutive misses).
    OfferMissed {
        call_id: CallId,
        outcome: OfferOutcome,
    },
    /// The connected call ended (OnCall -> WrapUp, then Available after the wrap-up time).
    CallEnded { call_id: CallId },
    /// Wrap-up time elapsed (sent by the actor to itself).
    WrapUpDone { call_id: CallId },
    /// Send the state to the agent's heir if it changed (sent by the actor to itself, a moment
    /// after a change, so that a burst of changes costs one copy).
    CopyToHeir,
    /// The candidates the agent's queues answered for its fair-pick round `round` (sent by the
    /// actor to itself), with the queue each came from.
    Candidates {
        round: u64,
        candidates: Vec<(String, CallerCandidate)>,
    },
    /// An offer must have ended by now (sent by the actor to itself): still offered for
    /// `call_id` since `since_ms`, the agent lost its outcome (a restored agent's failed home,
    /// or a claim its queue never received).
    OfferExpired { call_id: CallId, since_ms: u64 },
    /// Operator request from the HTTP API.
    SetState {
        state: RequestedState,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Current state, for the HTTP API.
    Snapshot(RpcReplyPort<agent::AgentSnapshot>),
}

/// The [`QueueMsg`] tells that cross the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireQueueMsg {
    Enqueue {
        call: CallAddr,
        priority: u8,
        since_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preferred: Option<PreferredAgent>,
    },
    Abandon {
        call_id: CallId,
    },
    OfferOutcome {
        call: CallAddr,
        agent_id: AgentId,
        outcome: OfferOutcome,
    },
    AgentAvailable {
        profile: AgentProfile,
        load: AgentLoad,
    },
    AgentUnavailable {
        agent_id: AgentId,
    },
    AgentStaffed {
        agent_id: AgentId,
        logged_in: bool,
    },
    Claimed {
        call_id: CallId,
        agent_id: AgentId,
        contacts: Vec<String>,
    },
}

/// The [`QueueMsg`] asks that cross the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueAsk {
    /// Answered with [`queue::QueueSnapshot`].
    Snapshot,
    /// Answered with `Option<CallerCandidate>`, as [`QueueMsg::Candidate`].
    Candidate { agent: AgentProfile },
}

impl From<WireQueueMsg> for QueueMsg {
    fn from(msg: WireQueueMsg) -> Self {
        match msg {
            WireQueueMsg::Enqueue {
                call,
                priority,
                since_ms,
                preferred,
            } => Self::Enqueue {
                call,
                priority,
                since_ms,
                preferred,
            },
            WireQueueMsg::Abandon { call_id } => Self::Abandon { call_id },
            WireQueueMsg::OfferOutcome {
                call,
                agent_id,
                outcome,
            } => Self::OfferOutcome {
                call,
                agent_id,
                outcome,
            },
            WireQueueMsg::AgentAvailable { profile, load } => {
                Self::AgentAvailable { profile, load }
            }
            WireQueueMsg::AgentUnavailable { agent_id } => Self::AgentUnavailable { agent_id },
            WireQueueMsg::AgentStaffed {
                agent_id,
                logged_in,
            } => Self::AgentStaffed {
                agent_id,
                logged_in,
            },
            WireQueueMsg::Claimed {
                call_id,
                agent_id,
                contacts,
            } => Self::Claimed {
                call_id,
                agent_id,
                contacts,
            },
        }
    }
}

/// Fails (giving the message back) for asks and for `Tick`, which the queue sends itself.
impl TryFrom<QueueMsg> for WireQueueMsg {
    type Error = QueueMsg;

    fn try_from(msg: QueueMsg) -> Result<Self, QueueMsg> {
        Ok(match msg {
            QueueMsg::Enqueue {
                call,
                priority,
                since_ms,
                preferred,
            } => Self::Enqueue {
                call,
                priority,
                since_ms,
                preferred,
            },
            QueueMsg::Abandon { call_id } => Self::Abandon { call_id },
            QueueMsg::OfferOutcome {
                call,
                agent_id,
                outcome,
            } => Self::OfferOutcome {
                call,
                agent_id,
                outcome,
            },
            QueueMsg::AgentAvailable { profile, load } => Self::AgentAvailable { profile, load },
            QueueMsg::AgentUnavailable { agent_id } => Self::AgentUnavailable { agent_id },
            QueueMsg::AgentStaffed {
                agent_id,
                logged_in,
            } => Self::AgentStaffed {
                agent_id,
                logged_in,
            },
            QueueMsg::Claimed {
                call_id,
                agent_id,
                contacts,
            } => Self::Claimed {
                call_id,
                agent_id,
                contacts,
            },
            other @ (QueueMsg::Tick | QueueMsg::Snapshot(_) | QueueMsg::Candidate { .. }) => {
                return Err(other);
            }
        })
    }
}

/// The [`AgentMsg`] tells that cross the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireAgentMsg {
    Contacts {
        node: NodeId,
        contacts: Vec<String>,
    },
    Announce {
        queue: String,
    },
    OfferAnswered {
        call_id: CallId,
    },
    OfferMissed {
        call_id: CallId,
        outcome: OfferOutcome,
    },
    CallEnded {
        call_id: CallId,
    },
}

/// The [`AgentMsg`] asks that cross the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentAsk {
    /// Answered with the contacts on success, as [`AgentMsg::Reserve`].
    Reserve { call_id: CallId, queue: String },
    /// Answered with `Result<(), String>`, as [`AgentMsg::SetState`].
    SetState { state: RequestedState },
    /// Answered with [`agent::AgentSnapshot`].
    Snapshot,
}

impl From<WireAgentMsg> for AgentMsg {
    fn from(msg: WireAgentMsg) -> Self {
        match msg {
            WireAgentMsg::Contacts { node, contacts } => Self::Contacts { node, contacts },
            WireAgentMsg::Announce { queue } => Self::Announce { queue },
            WireAgentMsg::OfferAnswered { call_id } => Self::OfferAnswered { call_id },
            WireAgentMsg::OfferMissed { call_id, outcome } => {
                Self::OfferMissed { call_id, outcome }
            }
            WireAgentMsg::CallEnded { call_id } => Self::CallEnded { call_id },
        }
    }
}

/// Fails (giving the message back) for asks and for `WrapUpDone`, which the agent sends itself.
impl TryFrom<AgentMsg> for WireAgentMsg {
    type Error = AgentMsg;

    fn try_from(msg: AgentMsg) -> Result<Self, AgentMsg> {
        Ok(match msg {
            AgentMsg::Contacts { node, contacts } => Self::Contacts { node, contacts },
            AgentMsg::Announce { queue } => Self::Announce { queue },
            AgentMsg::OfferAnswered { call_id } => Self::OfferAnswered { call_id },
            AgentMsg::OfferMissed { call_id, outcome } => Self::OfferMissed { call_id, outcome },
            AgentMsg::CallEnded { call_id } => Self::CallEnded { call_id },
            other @ (AgentMsg::WrapUpDone { .. }
            | AgentMsg::CopyToHeir
            | AgentMsg::Candidates { .. }
            | AgentMsg::OfferExpired { .. }
            | AgentMsg::Reserve { .. }
            | AgentMsg::SetState { .. }
            | AgentMsg::Snapshot(_)) => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        let bytes = serde_json::to_vec(value).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn queue_tells_convert_both_ways_and_survive_the_wire() {
        let tells = [
            WireQueueMsg::Enqueue {
                call: CallAddr {
                    node: 3,
                    call_id: "c1".into(),
                },
                priority: 2,
                since_ms: 99,
                preferred: Some(PreferredAgent {
                    agent: "2001".into(),
                    until_ms: 120,
                }),
            },
            WireQueueMsg::Abandon {
                call_id: "c1".into(),
            },
            WireQueueMsg::OfferOutcome {
                call: CallAddr {
                    node: 3,
                    call_id: "c1".into(),
                },
                agent_id: "2001".into(),
                outcome: OfferOutcome::Rejected,
            },
            WireQueueMsg::AgentAvailable {
                profile: AgentProfile {
                    id: "2001".into(),
                    skills: vec![switchyard_routing::Skill::new("billing", 4)],
                    pool: "in-house".into(),
                    site: "paris".into(),
                    team: None,
                },
                load: AgentLoad {
                    idle_since_ms: 7,
                    calls_taken: 3,
                    talk_ms_total: 90_000,
                },
            },
            WireQueueMsg::AgentUnavailable {
                agent_id: "2001".into(),
            },
            WireQueueMsg::AgentStaffed {
                agent_id: "2001".into(),
                logged_in: true,
            },
            WireQueueMsg::Claimed {
                call_id: "c1".into(),
                agent_id: "2001".into(),
                contacts: vec!["sip:2001@127.0.0.1:5070".into()],
            },
        ];
        for wire in tells {
            assert_eq!(round_trip(&wire), wire);
            let local = QueueMsg::from(wire.clone());
            assert!(
                WireQueueMsg::try_from(local).is_ok_and(|back| back == wire),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn queue_local_only_messages_do_not_convert() {
        assert!(matches!(
            WireQueueMsg::try_from(QueueMsg::Tick),
            Err(QueueMsg::Tick)
        ));
        let (tx, _rx) = tokio::sync::oneshot::channel();
        assert!(matches!(
            WireQueueMsg::try_from(QueueMsg::Snapshot(tx.into())),
            Err(QueueMsg::Snapshot(_))
        ));
    }

    #[test]
    fn agent_tells_convert_both_ways_and_survive_the_wire() {
        let tells = [
            WireAgentMsg::Contacts {
                node: 2,
                contacts: vec!["sip:2001@127.0.0.1:5070".into()],
            },
            WireAgentMsg::Announce {
                queue: "sales".into(),
            },
            WireAgentMsg::OfferAnswered {
                call_id: "c1".into(),
            },
            WireAgentMsg::OfferMissed {
                call_id: "c1".into(),
                outcome: OfferOutcome::CallerAbandoned,
            },
            WireAgentMsg::CallEnded {
                call_id: "c1".into(),
            },
        ];
        for wire in tells {
            assert_eq!(round_trip(&wire), wire);
            let local = AgentMsg::from(wire.clone());
            assert!(
                WireAgentMsg::try_from(local).is_ok_and(|back| back == wire),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn agent_asks_and_self_messages_do_not_convert() {
        let wrap = AgentMsg::WrapUpDone {
            call_id: "c1".into(),
        };
        assert!(matches!(
            WireAgentMsg::try_from(wrap),
            Err(AgentMsg::WrapUpDone { .. })
        ));
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let reserve = AgentMsg::Reserve {
            call_id: "c1".into(),
            queue: "q".into(),
            reply: tx.into(),
        };
        assert!(matches!(
            WireAgentMsg::try_from(reserve),
            Err(AgentMsg::Reserve { .. })
        ));
        for ask in [
            AgentAsk::Reserve {
                call_id: "c1".into(),
                queue: "q".into(),
            },
            AgentAsk::SetState {
                state: RequestedState::NotReady("lunch".into()),
            },
            AgentAsk::Snapshot,
        ] {
            assert_eq!(round_trip(&ask), ask);
        }
        for ask in [
            QueueAsk::Snapshot,
            QueueAsk::Candidate {
                agent: AgentProfile::new("2001"),
            },
        ] {
            assert_eq!(round_trip(&ask), ask);
        }
    }
}

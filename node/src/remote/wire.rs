//! What actor messages look like on the mesh: JSON envelopes on channels [`KIND_ACTOR`]
//! (one-way tells) and [`KIND_ACTOR_REQUEST`] (asks, answered with a [`Reply`]).
//!
//! JSON rather than rkyv: these payloads are a few hundred bytes, encoding costs about a
//! microsecond next to a mesh round trip of tens, and a readable payload is worth that when
//! debugging a cluster. The mesh frame around it is rkyv and versioned (ADR 0009).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchyard_cluster::mesh::Mesh;
use switchyard_cluster::state::{ActorKey, NodeId};
use switchyard_routing::CallerCandidate;

use super::{KIND_ACTOR, KIND_ACTOR_REQUEST};
use crate::acd::agent::AgentSnapshot;
use crate::acd::queue::QueueSnapshot;
use crate::acd::{AgentAsk, QueueAsk, WireAgentMsg, WireQueueMsg};
use crate::call::WireCallMsg;

/// How many times a message may be forwarded to an actor's new home.
pub const MAX_HOPS: u8 = 1;

/// A tell or ask with its routing data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// The target's placement epoch as the sender knew it (`None` for calls, which are not
    /// placed). A node whose own placement is older does not forward by it.
    pub epoch: Option<u64>,
    /// Times the message was forwarded so far.
    pub hops: u8,
    pub body: B,
}

impl<B> Envelope<B> {
    pub fn new(epoch: Option<u64>, body: B) -> Self {
        Self {
            epoch,
            hops: 0,
            body,
        }
    }
}

/// A one-way message to one actor, or (`QueueStarted`) to the node itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tell {
    Queue {
        id: String,
        msg: WireQueueMsg,
    },
    Agent {
        id: String,
        msg: WireAgentMsg,
    },
    Call {
        id: String,
        msg: WireCallMsg,
    },
    /// The queue started on a new home: callers waiting in it join again
    /// ([`WireCallMsg::Requeue`] to every call on the node).
    QueueStarted {
        queue: String,
    },
}

/// A request to one actor, or (`Bindings`) to the node itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    Queue {
        id: String,
        ask: QueueAsk,
    },
    Agent {
        id: String,
        ask: AgentAsk,
    },
    /// The contacts the node's registrar holds for these agents (a newly started agent actor
    /// learns where its phone is registered).
    Bindings {
        agents: Vec<String>,
    },
}

/// The answer to an [`Ask`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    QueueSnapshot(QueueSnapshot),
    /// `QueueAsk::Candidate`: the caller the queue would give the agent.
    Candidate(Option<CallerCandidate>),
    /// `AgentAsk::Reserve`: the contacts if reserved.
    Reserved(Option<Vec<String>>),
    /// `AgentAsk::SetState`.
    StateSet(Result<(), String>),
    AgentSnapshot(AgentSnapshot),
    /// Agent id and contact URIs, for the agents that have any.
    Bindings(Vec<(String, Vec<String>)>),
}

/// What a request is answered with: the answer, or why there is none.
pub type Reply = Result<Answer, String>;

impl Tell {
    /// The placed actor this is for; `None` for a call or the node.
    pub fn key(&self) -> Option<ActorKey> {
        match self {
            Tell::Queue { id, .. } => Some(ActorKey::queue(id.as_str())),
            Tell::Agent { id, .. } => Some(ActorKey::agent(id.as_str())),
            Tell::Call { .. } | Tell::QueueStarted { .. } => None,
        }
    }
}

impl Ask {
    /// The placed actor this is for; `None` when the node itself answers.
    pub fn key(&self) -> Option<ActorKey> {
        match self {
            Ask::Queue { id, .. } => Some(ActorKey::queue(id.as_str())),
            Ask::Agent { id, .. } => Some(ActorKey::agent(id.as_str())),
            Ask::Bindings { .. } => None,
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Sends a tell to `node`.
pub fn tell(mesh: &Mesh, node: NodeId, envelope: &Envelope<Tell>) -> Result<(), String> {
    let bytes = encode(envelope).map_err(|e| format!("cannot encode: {e}"))?;
    mesh.send(node, KIND_ACTOR, bytes)
        .map_err(|e| e.to_string())
}

/// Sends an ask to `node` and waits up to `timeout` for the answer.
pub async fn ask(mesh: &Mesh, node: NodeId, envelope: &Envelope<Ask>, timeout: Duration) -> Reply {
    let bytes = encode(envelope).map_err(|e| format!("cannot encode: {e}"))?;
    let reply = mesh
        .request(node, KIND_ACTOR_REQUEST, bytes, timeout)
        .await
        .map_err(|e| format!("node {node}: {e}"))?;
    decode::<Reply>(&reply).map_err(|e| format!("undecodable answer from node {node}: {e}"))?
}

#[cfg(test)]
mod tests {
    use switchyard_routing::{Constraint, Requirement};

    use super::*;
    use crate::acd::agent::AgentStatus;
    use crate::acd::{OfferOutcome, RequestedState};
    use crate::config::Overflow;
    use crate::remote::CallAddr;

    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
        decode(&encode(value).unwrap()).unwrap()
    }

    #[test]
    fn envelopes_survive_the_wire_and_name_their_target() {
        let tells = [
            Tell::Queue {
                id: "support".into(),
                msg: WireQueueMsg::Enqueue {
                    call: CallAddr {
                        node: 1,
                        call_id: "c1".into(),
                    },
                    priority: 1,
                    since_ms: 5,
                    preferred: None,
                },
            },
            Tell::Agent {
                id: "2001".into(),
                msg: WireAgentMsg::OfferMissed {
                    call_id: "c1".into(),
                    outcome: OfferOutcome::NoAnswer,
                },
            },
            Tell::Call {
                id: "c1".into(),
                msg: WireCallMsg::Overflow {
                    queue: "support".into(),
                    action: Overflow::Queue {
                        queue: "backup".into(),
                    },
                },
            },
            Tell::QueueStarted {
                queue: "support".into(),
            },
        ];
        let keys: Vec<Option<ActorKey>> = tells.iter().map(Tell::key).collect();
        assert_eq!(
            keys,
            [
                Some(ActorKey::queue("support")),
                Some(ActorKey::agent("2001")),
                None,
                None
            ]
        );
        for tell in tells {
            let envelope = Envelope {
                epoch: Some(3),
                hops: 1,
                body: tell,
            };
            assert_eq!(round_trip(&envelope), envelope);
        }
        let ask = Envelope::new(
            Some(2),
            Ask::Agent {
                id: "2001".into(),
                ask: AgentAsk::SetState {
                    state: RequestedState::Available,
                },
            },
        );
        assert_eq!(round_trip(&ask), ask);
        assert_eq!(ask.body.key(), Some(ActorKey::agent("2001")));
        assert_eq!(Ask::Bindings { agents: vec![] }.key(), None);
    }

    #[test]
    fn answers_survive_the_wire() {
        let snapshot = AgentSnapshot {
            extension: "2001".into(),
            queues: vec!["support".into()],
            status: AgentStatus::OnCall {
                call_id: "c1".into(),
                queue: "support".into(),
            },
            state_since_ms: 1,
            idle_since_ms: 2,
            registered: true,
            contacts: vec!["sip:2001@127.0.0.1:5070".into()],
            consecutive_misses: 0,
            offers: 3,
            answered: 2,
            missed: 1,
        };
        let queue = QueueSnapshot {
            name: "support".into(),
            waiting: 1,
            ringing: 0,
            available_agents: 2,
            longest_wait_ms: 10,
            offered: 4,
            answered: 3,
            answered_in_service_level: 2,
            abandoned: 1,
            overflowed: 0,
            agent_offers: 5,
            service_level_secs: 20,
            service_level_pct: Some(50.0),
        };
        let replies: Vec<Reply> = vec![
            Ok(Answer::AgentSnapshot(snapshot)),
            Ok(Answer::QueueSnapshot(queue)),
            Ok(Answer::Reserved(Some(vec!["sip:a@b".into()]))),
            Ok(Answer::Reserved(None)),
            Ok(Answer::Candidate(Some(CallerCandidate {
                call_id: "c1".into(),
                priority: 5,
                since_ms: 10,
                constraint: Constraint::Skills(Requirement::new([("billing", 4)])),
            }))),
            Ok(Answer::Candidate(None)),
            Ok(Answer::StateSet(Err("on a call".into()))),
            Ok(Answer::Bindings(vec![(
                "2001".into(),
                vec!["sip:a@b".into()],
            )])),
            Err("agent/2001 is not hosted on node 3".into()),
        ];
        for reply in replies {
            assert_eq!(round_trip(&reply), reply);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<Envelope<Tell>>(b"\xff\x00garbage").is_err());
        assert!(
            decode::<Envelope<Tell>>(br#"{"epoch":null,"hops":0,"body":{"Nope":{}}}"#).is_err()
        );
        assert!(decode::<Reply>(b"").is_err());
    }
}

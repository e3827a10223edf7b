//! Stand-ins for queue and agent actors homed on other nodes: same message types, so a directory
//! entry can be either. Tells go out as one-way mesh messages; each ask becomes a mesh request on
//! its own task (the proxy never waits), whose answer fills the caller's reply port. On any
//! failure the port is dropped, so the caller's `call` ends with `SenderError` at once instead
//! of waiting for its timeout.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use switchyard_cluster::mesh::Mesh;
use switchyard_cluster::state::{ActorKey, NodeId};

use super::wire::{self, Answer, Ask, Envelope, Tell};
use crate::acd::{AgentAsk, AgentMsg, QueueAsk, QueueMsg, WireAgentMsg, WireQueueMsg};

/// Used for asks whose reply port carries no timeout.
const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a proxied actor lives.
#[derive(Clone)]
pub struct Link {
    pub key: ActorKey,
    pub home: NodeId,
    /// The placement epoch of `home`, sent with every message.
    pub epoch: u64,
    pub mesh: Mesh,
}

impl Link {
    fn tell(&self, body: Tell) {
        let envelope = Envelope::new(Some(self.epoch), body);
        if let Err(e) = wire::tell(&self.mesh, self.home, &envelope) {
            tracing::warn!(actor = %self.key, home = self.home, error = %e, "message not sent");
        }
    }

    fn ask<T: Send + 'static>(
        &self,
        body: Ask,
        reply: RpcReplyPort<T>,
        pick: fn(Answer) -> Option<T>,
    ) {
        let link = self.clone();
        let timeout = reply.get_timeout().unwrap_or(DEFAULT_ASK_TIMEOUT);
        tokio::spawn(async move {
            let envelope = Envelope::new(Some(link.epoch), body);
            match wire::ask(&link.mesh, link.home, &envelope, timeout).await {
                Ok(answer) => match pick(answer) {
                    // The caller may have given up waiting.
                    Some(value) => {
                        let _ = reply.send(value);
                    }
                    None => tracing::warn!(actor = %link.key, home = link.home,
                        "answer of the wrong kind; dropped"),
                },
                Err(e) => {
                    tracing::debug!(actor = %link.key, home = link.home, error = %e, "ask failed")
                }
            }
        });
    }
}

/// A queue on another node.
pub struct QueueProxy;

impl Actor for QueueProxy {
    type Msg = QueueMsg;
    type State = Link;
    type Arguments = Link;

    async fn pre_start(
        &self,
        _myself: ActorRef<QueueMsg>,
        link: Link,
    ) -> Result<Link, ActorProcessingErr> {
        Ok(link)
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueueMsg>,
        msg: QueueMsg,
        link: &mut Link,
    ) -> Result<(), ActorProcessingErr> {
        let id = link.key.id.clone();
        match WireQueueMsg::try_from(msg) {
            Ok(msg) => link.tell(Tell::Queue { id, msg }),
            Err(QueueMsg::Snapshot(reply)) => link.ask(
                Ask::Queue {
                    id,
                    ask: QueueAsk::Snapshot,
                },
                reply,
                |answer| match answer {
                    Answer::QueueSnapshot(snapshot) => Some(snapshot),
                    _ => None,
                },
            ),
            Err(QueueMsg::Candidate { agent, reply }) => link.ask(
                Ask::Queue {
                    id,
                    ask: QueueAsk::Candidate { agent },
                },
                reply,
                |answer| match answer {
                    Answer::Candidate(candidate) => Some(candidate),
                    _ => None,
                },
            ),
            // A queue's ticks come from its own timer; nothing to forward.
            Err(_) => {}
        }
        Ok(())
    }
}

/// An agent on another node.
pub struct AgentProxy;

impl Actor for AgentProxy {
    type Msg = AgentMsg;
    type State = Link;
    type Arguments = Link;

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        link: Link,
    ) -> Result<Link, ActorProcessingErr> {
        Ok(link)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        link: &mut Link,
    ) -> Result<(), ActorProcessingErr> {
        let id = link.key.id.clone();
        match WireAgentMsg::try_from(msg) {
            Ok(msg) => link.tell(Tell::Agent { id, msg }),
            Err(AgentMsg::Reserve {
                call_id,
                queue,
                reply,
            }) => link.ask(
                Ask::Agent {
                    id,
                    ask: AgentAsk::Reserve { call_id, queue },
                },
                reply,
                |answer| match answer {
                    Answer::Reserved(contacts) => Some(contacts),
                    _ => None,
                },
            ),
            Err(AgentMsg::SetState { state, reply }) => link.ask(
                Ask::Agent {
                    id,
                    ask: AgentAsk::SetState { state },
                },
                reply,
                |answer| match answer {
                    Answer::StateSet(result) => Some(result),
                    _ => None,
                },
            ),
            Err(AgentMsg::Snapshot(reply)) => link.ask(
                Ask::Agent {
                    id,
                    ask: AgentAsk::Snapshot,
                },
                reply,
                |answer| match answer {
                    Answer::AgentSnapshot(snapshot) => Some(snapshot),
                    _ => None,
                },
            ),
            // Wrap-up timers are the agent's own; nothing to forward.
            Err(_) => {}
        }
        Ok(())
    }
}

pub async fn spawn_queue_proxy(link: Link) -> Result<ActorRef<QueueMsg>, SpawnErr> {
    Actor::spawn(None, QueueProxy, link)
        .await
        .map(|(actor, _)| actor)
}

pub async fn spawn_agent_proxy(link: Link) -> Result<ActorRef<AgentMsg>, SpawnErr> {
    Actor::spawn(None, AgentProxy, link)
        .await
        .map(|(actor, _)| actor)
}

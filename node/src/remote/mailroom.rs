//! The receiving side: actor messages from other nodes, delivered to the actors hosted here.
//!
//! A message for a queue or agent not hosted here (it moved, or the sender's placement is older
//! than ours) is forwarded once to its home by this node's placement; a second miss is dropped
//! with a warning, and an ask is answered with why. Nothing a peer sends can panic this node:
//! undecodable payloads are logged and dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use switchyard_cluster::Directory;
use switchyard_cluster::mesh::{Incoming, Mesh, Responder};
use switchyard_cluster::raft::ClusterView;
use switchyard_cluster::state::{ActorKey, NodeId, Placement};
use tokio::sync::{mpsc, watch};

use super::wire::{self, Answer, Ask, Envelope, MAX_HOPS, Reply, Tell};
use super::{CallAddr, Hosted, KIND_ACTOR, KIND_ACTOR_REQUEST};
use crate::acd::{AgentAsk, AgentMsg, OfferOutcome, QueueAsk, QueueMsg};
use crate::call::{CallMsg, WireCallMsg};
use crate::failover::{Failover, KIND_REPLICA};
use crate::registrar::Registrar;
use crate::time::unix_ms;

/// How long a local actor may take to answer an ask from another node, and how long a forwarded
/// ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What to do with a message for a placed actor that is not hosted here.
#[derive(Debug, PartialEq, Eq)]
pub enum Routing {
    Forward { node: NodeId, epoch: u64 },
    Refuse(String),
}

/// Decides where a message for `key`, which this node does not host, goes. `placement` is this
/// node's view of the actor's home; `sender_epoch` the sender's, `hops` how often it was
/// forwarded already.
pub fn route(
    key: &ActorKey,
    me: NodeId,
    placement: Option<Placement>,
    sender_epoch: Option<u64>,
    hops: u8,
) -> Routing {
    let Some(home) = placement else {
        return Routing::Refuse(format!("{key} has no home in the placement of node {me}"));
    };
    if home.node == me {
        return Routing::Refuse(format!("{key} is placed on node {me} but not running yet"));
    }
    if hops >= MAX_HOPS {
        return Routing::Refuse(format!(
            "{key} is not hosted on node {me} (already forwarded {hops} time(s))"
        ));
    }
    if sender_epoch.is_some_and(|e| e > home.epoch) {
        // The sender knows a newer placement: ours would send it back the wrong way.
        return Routing::Refuse(format!(
            "{key} is not hosted on node {me}, whose placement (epoch {}) is older than the \
             sender's",
            home.epoch
        ));
    }
    Routing::Forward {
        node: home.node,
        epoch: home.epoch,
    }
}

/// What the mailroom needs of its node.
pub struct Mailroom {
    /// This node's view of the cluster (its id and the placement).
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub mesh: Mesh,
    /// The queue and agent actors running here.
    pub hosted: Hosted,
    pub calls: Directory<String, CallMsg>,
    /// Every queue (local or proxy), to answer offers for calls that have ended.
    pub queues: Directory<String, QueueMsg>,
    pub registrar: Arc<Mutex<Registrar>>,
    /// Keeps call and agent copies (clustered nodes only).
    pub failover: Option<Failover>,
}

impl Mailroom {
    /// Handles actor traffic until the cluster runtime stops delivering it. Tells are handled
    /// in arrival order (a cast never waits); asks each get a task.
    pub async fn run(self, mut incoming: mpsc::Receiver<Incoming>) {
        while let Some(message) = incoming.recv().await {
            match message {
                Incoming::Message {
                    from,
                    kind: KIND_ACTOR,
                    payload,
                } => self.on_tell(from, &payload),
                Incoming::Message {
                    from,
                    kind: KIND_REPLICA,
                    payload,
                } => {
                    if let Some(failover) = &self.failover {
                        failover.receive(from, &payload);
                    }
                }
                Incoming::Request {
                    from,
                    kind: KIND_ACTOR_REQUEST,
                    payload,
                    reply,
                } => self.on_ask(from, &payload, reply),
                Incoming::Message { from, kind, .. } | Incoming::Request { from, kind, .. } => {
                    tracing::warn!(from, kind, "not actor traffic; dropped");
                }
            }
        }
    }

    fn route(&self, key: &ActorKey, epoch: Option<u64>, hops: u8) -> Routing {
        let view = Arc::clone(&self.view.borrow());
        let placement = view.state.placement.get(key).copied();
        route(key, view.node_id, placement, epoch, hops)
    }

    fn on_tell(&self, from: NodeId, payload: &[u8]) {
        let envelope: Envelope<Tell> = match wire::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => return tracing::warn!(from, error = %e, "undecodable actor message dropped"),
        };
        let Envelope { epoch, hops, body } = envelope;
        let body = match body {
            Tell::Call { id, msg } => return self.deliver_to_call(id, msg),
            Tell::QueueStarted { queue } => return requeue_calls(&self.calls, &queue),
            Tell::Queue { id, msg } => match self.hosted.queues.get(&id) {
                Some(queue) => return cast(&queue, QueueMsg::from(msg), &id),
                None => Tell::Queue { id, msg },
            },
            Tell::Agent { id, msg } => match self.hosted.agents.get(&id) {
                Some(agent) => return cast(&agent, AgentMsg::from(msg), &id),
                None => Tell::Agent { id, msg },
            },
        };
        let Some(key) = body.key() else { return };
        match self.route(&key, epoch, hops) {
            Routing::Forward { node, epoch } => {
                let forwarded = Envelope {
                    epoch: Some(epoch),
                    hops: hops.saturating_add(1),
                    body,
                };
                if let Err(e) = wire::tell(&self.mesh, node, &forwarded) {
                    tracing::warn!(from, actor = %key, to = node, error = %e, "forward failed");
                }
            }
            Routing::Refuse(why) => tracing::warn!(from, "{why}; message dropped"),
        }
    }

    /// Calls do not move; one that is not here has ended. An offer for it is answered on the
    /// queue's behalf so the reserved agent is freed at once, as for a local call.
    fn deliver_to_call(&self, id: String, msg: WireCallMsg) {
        if let Some(call) = self.calls.get(&id) {
            return cast(&call, CallMsg::from(msg), &id);
        }
        match msg {
            WireCallMsg::Offer {
                agent_id, queue, ..
            } => {
                tracing::info!(call = %id, %queue, agent = %agent_id,
                    "offer for a call that has ended; reporting the caller gone");
                if let Some(queue_ref) = self.queues.get(&queue) {
                    let outcome = QueueMsg::OfferOutcome {
                        call: CallAddr {
                            node: self.view.borrow().node_id,
                            call_id: id.clone(),
                        },
                        agent_id,
                        outcome: OfferOutcome::CallerAbandoned,
                    };
                    cast(&queue_ref, outcome, &queue);
                }
            }
            WireCallMsg::Overflow { .. }
            | WireCallMsg::Requeue { .. }
            | WireCallMsg::Announce { .. } => {
                tracing::debug!(call = %id, "message for a call that has ended; dropped");
            }
        }
    }

    fn on_ask(&self, from: NodeId, payload: &[u8], responder: Responder) {
        let envelope: Envelope<Ask> = match wire::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(from, error = %e, "undecodable actor request");
                return respond(responder, Err(format!("undecodable request: {e}")));
            }
        };
        let Envelope { epoch, hops, body } = envelope;
        match body {
            Ask::Bindings { agents } => respond(responder, Ok(self.bindings(&agents))),
            Ask::Queue { id, ask } => match self.hosted.queues.get(&id) {
                Some(queue) => {
                    tokio::spawn(async move {
                        let answer = match ask {
                            QueueAsk::Snapshot => ask_local(&queue, QueueMsg::Snapshot, &id)
                                .await
                                .map(Answer::QueueSnapshot),
                            QueueAsk::Candidate { agent } => {
                                ask_local(&queue, |reply| QueueMsg::Candidate { agent, reply }, &id)
                                    .await
                                    .map(Answer::Candidate)
                            }
                        };
                        respond(responder, answer);
                    });
                }
                None => self.forward_ask(from, epoch, hops, Ask::Queue { id, ask }, responder),
            },
            Ask::Agent { id, ask } => match self.hosted.agents.get(&id) {
                Some(agent) => {
                    tokio::spawn(async move {
                        respond(responder, ask_agent(&agent, ask, &id).await);
                    });
                }
                None => self.forward_ask(from, epoch, hops, Ask::Agent { id, ask }, responder),
            },
        }
    }

    fn forward_ask(
        &self,
        from: NodeId,
        epoch: Option<u64>,
        hops: u8,
        body: Ask,
        responder: Responder,
    ) {
        let Some(key) = body.key() else { return };
        match self.route(&key, epoch, hops) {
            Routing::Forward { node, epoch } => {
                let mesh = self.mesh.clone();
                tokio::spawn(async move {
                    let forwarded = Envelope {
                        epoch: Some(epoch),
                        hops: hops.saturating_add(1),
                        body,
                    };
                    respond(
                        responder,
                        wire::ask(&mesh, node, &forwarded, ASK_TIMEOUT).await,
                    );
                });
            }
            Routing::Refuse(why) => {
                tracing::warn!(from, "{why}; request refused");
                respond(responder, Err(why));
            }
        }
    }

    /// This node's registered contacts for `agents`, for those that have any.
    fn bindings(&self, agents: &[String]) -> Answer {
        let now = unix_ms();
        let registrar = self.registrar.lock().unwrap_or_else(|e| e.into_inner());
        Answer::Bindings(
            agents
                .iter()
                .map(|agent| {
                    let uris = registrar
                        .contacts(agent, now)
                        .iter()
                        .map(|b| b.uri.to_string())
                        .collect::<Vec<_>>();
                    (agent.clone(), uris)
                })
                .filter(|(_, uris)| !uris.is_empty())
                .collect(),
        )
    }
}

/// Asks every call on this node to join `queue` again if it waits there (each checks itself).
pub fn requeue_calls(calls: &Directory<String, CallMsg>, queue: &str) {
    for id in calls.ids() {
        if let Some(call) = calls.get(&id) {
            let requeue = CallMsg::Requeue {
                queue: queue.to_owned(),
            };
            cast(&call, requeue, &id);
        }
    }
}

fn cast<M: ractor::Message>(actor: &ActorRef<M>, msg: M, id: &str) {
    if actor.cast(msg).is_err() {
        tracing::debug!(actor = %id, "actor stopped; message dropped");
    }
}

fn respond(responder: Responder, reply: Reply) {
    match wire::encode(&reply) {
        Ok(bytes) => {
            if let Err(e) = responder.send(bytes) {
                tracing::warn!(error = %e, "answer not sent");
            }
        }
        // Dropping the responder tells the requester there is no answer.
        Err(e) => tracing::warn!(error = %e, "answer not encodable"),
    }
}

async fn ask_local<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    request: impl FnOnce(RpcReplyPort<T>) -> M,
    id: &str,
) -> Result<T, String> {
    match actor.call(request, Some(ASK_TIMEOUT)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(format!("{id} did not answer in time")),
        // A fenced agent leaves a reservation unanswered on purpose.
        Ok(CallResult::SenderError) | Err(_) => Err(format!("{id} did not answer")),
    }
}

async fn ask_agent(agent: &ActorRef<AgentMsg>, ask: AgentAsk, id: &str) -> Reply {
    match ask {
        AgentAsk::Reserve { call_id, queue } => ask_local(
            agent,
            |reply| AgentMsg::Reserve {
                call_id,
                queue,
                reply,
            },
            id,
        )
        .await
        .map(Answer::Reserved),
        AgentAsk::SetState { state } => {
            ask_local(agent, |reply| AgentMsg::SetState { state, reply }, id)
                .await
                .map(Answer::StateSet)
        }
        AgentAsk::Snapshot => ask_local(agent, AgentMsg::Snapshot, id)
            .await
            .map(Answer::AgentSnapshot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = 2;

    fn at(node: NodeId, epoch: u64) -> Option<Placement> {
        Some(Placement { node, epoch })
    }

    #[test]
    fn forwards_a_moved_actor_once_with_our_epoch() {
        let key = ActorKey::agent("2001");
        assert_eq!(
            route(&key, ME, at(3, 7), Some(5), 0),
            Routing::Forward { node: 3, epoch: 7 }
        );
        assert_eq!(
            route(&key, ME, at(3, 7), None, 0),
            Routing::Forward { node: 3, epoch: 7 }
        );
        let Routing::Refuse(why) = route(&key, ME, at(3, 7), Some(7), 1) else {
            panic!("a second miss must not be forwarded again");
        };
        assert!(
            why.contains("agent/2001") && why.contains("node 2"),
            "{why}"
        );
    }

    #[test]
    fn refuses_when_our_placement_cannot_be_trusted_or_is_missing() {
        let key = ActorKey::agent("2001");
        let Routing::Refuse(why) = route(&key, ME, at(3, 4), Some(6), 0) else {
            panic!("a node behind the sender must not forward by its older placement");
        };
        assert!(why.contains("older"), "{why}");
        assert!(matches!(
            route(&key, ME, at(ME, 4), Some(4), 0),
            Routing::Refuse(why) if why.contains("not running yet")
        ));
        assert!(matches!(
            route(&key, ME, None, Some(4), 0),
            Routing::Refuse(why) if why.contains("no home")
        ));
    }
}

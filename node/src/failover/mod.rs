//! Failover: calls and agents outlive the node they are on.
//!
//! - **Calls**: every call is copied ([`CallReplica`]) to its standbys, chosen by rendezvous
//!   hashing of the call id: one among the other active members of the owner's site (a node
//!   loss is taken over locally) and one on another site (a site loss too), when there are such
//!   members (`ClusterState::call_standbys`). The call actor sends a copy at each change a
//!   standby would need and a `CallEnded` at the end; standbys only store them. The first
//!   standby still live takes the call over and tells the others to forget it.
//! - **Agents**: an agent actor sends its state to its heir, the node its placement would pass
//!   to if its home failed (`ClusterState::heir`); the heir starts the agent from that state.
//! - **Take-over**: when the view shows a member `Failed` (declared dead by the leader) or
//!   `Removed`, each standby starts a call actor from every copy that member's calls left with it
//!   ([`crate::call::CallArgs::Takeover`]): talking calls are re-INVITEd on both legs from this
//!   node's address and media, queued callers rejoin their queue with their original place,
//!   ringing offers are cancelled and the caller goes back to the head of the line.
//! - **Planned moves**: a `Draining` member hands each call to its standby at once (the copy
//!   goes as `HandOver`); the old node keeps relaying media until the legs have moved.
//! - **Fencing**: a node acts for its calls only while [`Failover::may_act`]: its lease is valid
//!   and it is an active member under the tenure it started with. A node that was declared
//!   failed and comes back (its `joined_at_index` changed) lets go of every call it still holds
//!   without a word on SIP: the standby owns them now.
//!
//! Copies travel on mesh channel [`KIND_REPLICA`] as rkyv archives, one-way and at most once:
//! a lost copy costs the standby the latest change only, and the next copy repairs it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ractor::Actor;
use switchyard_cluster::mesh::Mesh;
use switchyard_cluster::raft::ClusterView;
use switchyard_cluster::state::{ActorKey, MemberStatus, NodeId};
use tokio::sync::{Notify, watch};

use crate::acd::agent::AgentState;
use crate::call::{CallActor, CallArgs, CallMsg, CallReplica};
use crate::node::NodeContext;

pub use crate::cluster::KIND_REPLICA;

/// What travels between an owner and its standby.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum ReplicaMsg {
    /// The latest copy of a call.
    Call(CallReplica),
    /// The call is over: forget it.
    CallEnded { call_id: String },
    /// Take the call over now: its owner is draining.
    HandOver(CallReplica),
    /// An agent's state, sent to its heir.
    Agent(AgentState),
}

/// Copies this node keeps for others.
#[derive(Default)]
struct Store {
    calls: HashMap<String, CallReplica>,
    /// Calls a draining node handed over, to take over at once.
    handed_over: Vec<CallReplica>,
    agents: HashMap<String, AgentState>,
}

/// Replication and take-over; one per clustered node. Cheap to clone.
#[derive(Clone)]
pub struct Failover {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    /// `[cluster] replicate_calls`.
    replicate_calls: bool,
    mesh: Mesh,
    view: watch::Receiver<Arc<ClusterView>>,
    store: Mutex<Store>,
    /// Wakes the take-over loop when a call is handed over.
    handed_over: Notify,
    /// This node's `joined_at_index` when it started, to notice that it was declared failed
    /// and re-admitted while it was cut off.
    tenure: Mutex<Option<u64>>,
}

impl Failover {
    pub fn new(
        node_id: NodeId,
        replicate_calls: bool,
        mesh: Mesh,
        view: watch::Receiver<Arc<ClusterView>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                replicate_calls,
                mesh,
                view,
                store: Mutex::default(),
                handed_over: Notify::new(),
                tenure: Mutex::new(None),
            }),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The standbys of a call of this node, in take-over order (none when no other member is
    /// active).
    pub fn standbys_for(&self, call_id: &str) -> Vec<NodeId> {
        if !self.inner.replicate_calls {
            return Vec::new();
        }
        self.inner
            .view
            .borrow()
            .state
            .call_standbys(self.inner.node_id, call_id)
    }

    /// Whether this node may act for its calls: send requests of its own (re-INVITEs, BYEs on
    /// a timeout). False while the lease is lost, once the node is no longer an active member,
    /// and after it was declared failed (its calls belong to their standbys then).
    pub fn may_act(&self) -> bool {
        let view = self.inner.view.borrow();
        let Some(me) = view.state.members.get(&self.inner.node_id) else {
            return false;
        };
        let tenure = *self.inner.tenure.lock().unwrap_or_else(|e| e.into_inner());
        view.lease_valid
            && matches!(me.status, MemberStatus::Active | MemberStatus::Draining)
            && tenure.is_none_or(|t| t == me.joined_at_index)
    }

    pub fn send_call(&self, to: NodeId, replica: &CallReplica) {
        // Cloning keeps the encoder simple; a copy is a few hundred bytes of strings.
        self.send(to, &ReplicaMsg::Call(replica.clone()));
    }

    pub fn hand_over(&self, to: NodeId, replica: &CallReplica) {
        self.send(to, &ReplicaMsg::HandOver(replica.clone()));
    }

    pub fn call_ended(&self, to: NodeId, call_id: &str) {
        self.send(
            to,
            &ReplicaMsg::CallEnded {
                call_id: call_id.to_owned(),
            },
        );
    }

    /// Sends an agent's state to its heir, if it has one.
    pub fn agent_changed(&self, state: &AgentState) {
        let key = ActorKey::agent(state.extension.as_str());
        let heir = self.inner.view.borrow().state.heir(&key);
        if let Some(heir) = heir.filter(|&n| n != self.inner.node_id) {
            self.send(heir, &ReplicaMsg::Agent(state.clone()));
        }
    }

    /// The state an agent's previous home left here, if any.
    pub fn take_agent(&self, extension: &str) -> Option<AgentState> {
        self.store().agents.remove(extension)
    }

    fn send(&self, to: NodeId, msg: &ReplicaMsg) {
        let bytes = match rkyv::to_bytes::<rkyv::rancor::Error>(msg) {
            Ok(bytes) => bytes.into_vec(),
            Err(e) => return tracing::error!(error = %e, "cannot encode a replica"),
        };
        metrics::counter!("failover_replicas_sent_total").increment(1);
        if let Err(e) = self.inner.mesh.send(to, KIND_REPLICA, bytes) {
            metrics::counter!("failover_replicas_unsent_total").increment(1);
            tracing::debug!(to, error = %e, "replica not sent");
        }
    }

    /// A copy from another node's call or agent.
    pub fn receive(&self, from: NodeId, payload: &[u8]) {
        let msg = match rkyv::from_bytes::<ReplicaMsg, rkyv::rancor::Error>(payload) {
            Ok(msg) => msg,
            Err(e) => return tracing::warn!(from, error = %e, "undecodable replica dropped"),
        };
        match msg {
            ReplicaMsg::Call(replica) => {
                let mut store = self.store();
                let newer = store
                    .calls
                    .get(replica.call_id())
                    .is_none_or(|old| old.version < replica.version || old.owner != replica.owner);
                if newer {
                    store.calls.insert(replica.call_id().to_owned(), replica);
                }
                metrics::gauge!("failover_replicas_held").set(store.calls.len() as f64);
            }
            ReplicaMsg::CallEnded { call_id } => {
                let mut store = self.store();
                store.calls.remove(&call_id);
                metrics::gauge!("failover_replicas_held").set(store.calls.len() as f64);
            }
            ReplicaMsg::HandOver(replica) => {
                tracing::info!(call = %replica.call_id(), from, "call handed over by a draining node");
                let mut store = self.store();
                store.calls.remove(replica.call_id());
                store.handed_over.push(replica);
                self.inner.handed_over.notify_one();
            }
            ReplicaMsg::Agent(state) => {
                self.store().agents.insert(state.extension.clone(), state);
            }
        }
    }

    /// Follows the view: takes over the calls of members declared failed, hands this node's
    /// calls over when it drains, and lets go of them if it was declared failed itself.
    pub async fn run(self, ctx: Arc<NodeContext>) {
        let mut view = self.inner.view.clone();
        let mut draining = false;
        let mut active: Vec<NodeId> = Vec::new();
        loop {
            let current = Arc::clone(&view.borrow_and_update());
            self.follow(&ctx, &current, &mut draining);
            // A standby that failed (or a member that joined) changes where copies go: every
            // call checks its standbys.
            let now_active: Vec<NodeId> = current.state.active_members().map(|m| m.id).collect();
            if now_active != active {
                if !active.is_empty() {
                    tell_every_call(&ctx, || CallMsg::CopyToStandbys);
                }
                active = now_active;
            }
            // Copies keep arriving for calls of members that have already failed (sent before
            // the owner died, delivered late): look again now and then, not only on changes.
            tokio::select! {
                _ = view.changed() => {}
                () = self.inner.handed_over.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            // The Raft side has stopped (the view's sender is gone): so has the node.
            if view.has_changed().is_err() {
                return;
            }
        }
    }

    fn follow(&self, ctx: &Arc<NodeContext>, view: &ClusterView, draining: &mut bool) {
        let Some(me) = view.state.members.get(&self.inner.node_id) else {
            return;
        };
        {
            let mut tenure = self.inner.tenure.lock().unwrap_or_else(|e| e.into_inner());
            match *tenure {
                None if me.status == MemberStatus::Active => *tenure = Some(me.joined_at_index),
                Some(t) if t != me.joined_at_index || me.status == MemberStatus::Failed => {
                    // Declared failed while cut off: the standbys own these calls now.
                    let calls = tell_every_call(ctx, || CallMsg::Relinquish);
                    if calls > 0 {
                        tracing::warn!(
                            calls,
                            "this node was declared failed; letting go of its calls"
                        );
                    }
                    if me.status == MemberStatus::Active {
                        *tenure = Some(me.joined_at_index);
                    }
                }
                _ => {}
            }
        }
        let now_draining = me.status == MemberStatus::Draining;
        if now_draining && !*draining && view.lease_valid {
            let calls = tell_every_call(ctx, || CallMsg::HandOver);
            tracing::info!(calls, "draining: handing calls to their standbys");
        }
        *draining = now_draining;
        if !view.lease_valid {
            return;
        }
        let orphans: Vec<CallReplica> = {
            let mut store = self.store();
            let me = self.inner.node_id;
            let lost: Vec<String> = store
                .calls
                .iter()
                .filter(|(_, r)| !is_live(view, r.owner) && first_live_standby(view, r, me) == me)
                .map(|(id, _)| id.clone())
                .collect();
            lost.iter()
                .filter_map(|id| store.calls.remove(id))
                .collect()
        };
        let handed_over = std::mem::take(&mut self.store().handed_over);
        for replica in handed_over {
            spawn_takeover(ctx, replica);
        }
        if !orphans.is_empty() {
            tracing::warn!(
                calls = orphans.len(),
                "taking over the calls of a failed node"
            );
        }
        for replica in orphans {
            spawn_takeover(ctx, replica);
        }
    }
}

/// Sends a message to every call actor on this node; returns how many there were.
fn tell_every_call(ctx: &NodeContext, msg: impl Fn() -> CallMsg) -> usize {
    let ids = ctx.calls.ids();
    for id in &ids {
        if let Some(call) = ctx.calls.get(id) {
            let _ = call.cast(msg());
        }
    }
    ids.len()
}

/// Whether `node` is a member that holds its calls (not declared failed, not removed).
fn is_live(view: &ClusterView, node: NodeId) -> bool {
    view.state
        .members
        .get(&node)
        .is_some_and(|m| matches!(m.status, MemberStatus::Active | MemberStatus::Draining))
}

/// Which holder of the copy takes the call over: its first standby still live, or `me` (a
/// holder of a copy) when none of them is.
fn first_live_standby(view: &ClusterView, replica: &CallReplica, me: NodeId) -> NodeId {
    replica
        .standbys
        .iter()
        .copied()
        .find(|&n| is_live(view, n))
        .unwrap_or(me)
}

fn spawn_takeover(ctx: &Arc<NodeContext>, replica: CallReplica) {
    metrics::counter!("failover_takeovers_total").increment(1);
    // The other holders of the copy forget it: this node owns the call now, and copies it to
    // standbys of its own.
    if let Some(failover) = &ctx.failover {
        for &other in replica.standbys.iter().filter(|&&n| n != ctx.node_id) {
            failover.call_ended(other, replica.call_id());
        }
    }
    let args = CallArgs::Takeover {
        ctx: Arc::clone(ctx),
        replica: Box::new(replica),
    };
    tokio::spawn(async move {
        if let Err(e) = Actor::spawn(None, CallActor, args).await {
            tracing::error!(error = %e, "could not start a call actor to take a call over");
        }
    });
}

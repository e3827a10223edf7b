//! Actors across the cluster: every queue and agent has one home node (Raft placement), and any
//! node reaches any queue, agent or call actor by id.
//!
//! - **Queues and agents** are few and long-lived. On their home node the directory entry is the
//!   actor itself; on every other node it is a small proxy actor ([`proxy`]) taking the same
//!   messages and carrying them over the mesh: tells as one-way messages ([`KIND_ACTOR`]), asks
//!   as requests ([`KIND_ACTOR_REQUEST`]) whose answer goes back into the caller's reply port (or
//!   the port is dropped, so the caller's `call` fails at once). Callers never know the
//!   difference.
//! - **Calls** are many and short-lived, so nothing is set up per call: a queue keeps each
//!   caller's [`CallAddr`] and sends it offers through the [`Postman`].
//! - **Receiving** ([`mailroom`]): messages go to the local actor; one for an actor that moved is
//!   forwarded once to its home by this node's placement, and a second miss fails clearly.
//! - **Hosting** ([`hosting`]) follows the placement: start the actors placed here, proxy the
//!   rest. A node acts for an actor only while [`Fence::can_act`]: the actor is placed here under
//!   the epoch it was started with, the node's lease is valid and a take-over grace has passed.
//!   See `docs/adr/0013-placement-hosting-and-remote-messages.md`.

pub mod hosting;
pub mod mailroom;
#[cfg(test)]
mod mesh_tests;
pub mod proxy;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use ractor::{ActorStatus, MessagingErr};
use serde::{Deserialize, Serialize};
use switchyard_cluster::Directory;
use switchyard_cluster::mesh::{Mesh, MeshError};
use switchyard_cluster::raft::ClusterView;
use switchyard_cluster::state::{ActorKey, MemberStatus, NodeId};
use tokio::sync::watch;

use crate::acd::{AgentMsg, QueueMsg};
use crate::call::{CallMsg, WireCallMsg};
pub use crate::cluster::{KIND_ACTOR, KIND_ACTOR_REQUEST};

/// Where a call actor lives: the node it arrived at and its Switchyard call id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallAddr {
    /// The node's cluster id; 0 on a standalone node.
    pub node: NodeId,
    pub call_id: String,
}

/// The queue and agent actors running on this node (not proxies), for the mailroom.
#[derive(Clone, Default)]
pub struct Hosted {
    pub queues: Directory<String, QueueMsg>,
    pub agents: Directory<String, AgentMsg>,
}

/// Why a message did not reach a call actor.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("no call {0} on this node")]
    NoSuchCall(String),
    #[error("call {0} is on another node but this node is not in a cluster")]
    NotClustered(String),
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// Delivers queue-to-call messages to a call actor on this node or any other. Cheap to clone.
#[derive(Clone)]
pub struct Postman {
    node: NodeId,
    calls: Directory<String, CallMsg>,
    mesh: Option<Mesh>,
}

impl Postman {
    /// `node` is this node's id (0 when standalone, with no mesh); `calls` its call directory.
    pub fn new(node: NodeId, calls: Directory<String, CallMsg>, mesh: Option<Mesh>) -> Self {
        Self { node, calls, mesh }
    }

    /// Sends `msg` to the call. A local call that is gone is an error; a remote one is sent at
    /// most once, and its node answers an offer for a call that has ended on the queue's behalf.
    pub fn deliver(&self, to: &CallAddr, msg: WireCallMsg) -> Result<(), PostError> {
        if to.node == self.node {
            let call = self
                .calls
                .get(&to.call_id)
                .ok_or_else(|| PostError::NoSuchCall(to.call_id.clone()))?;
            return call
                .cast(msg.into())
                .map_err(|_: MessagingErr<CallMsg>| PostError::NoSuchCall(to.call_id.clone()));
        }
        let mesh = self
            .mesh
            .as_ref()
            .ok_or_else(|| PostError::NotClustered(to.call_id.clone()))?;
        let envelope = wire::Envelope::new(
            None,
            wire::Tell::Call {
                id: to.call_id.clone(),
                msg,
            },
        );
        mesh.send(to.node, KIND_ACTOR, wire::encode(&envelope)?)?;
        Ok(())
    }

    /// Whether the call is known to have ended: only calls on this node can be seen to.
    pub fn is_gone(&self, to: &CallAddr) -> bool {
        to.node == self.node
            && self
                .calls
                .get(&to.call_id)
                .is_none_or(|call| call.get_status() >= ActorStatus::Stopping)
    }
}

/// Whether this node may act for one actor: make decisions that only the actor's single owner
/// may make (pair a caller with an agent, reserve an agent). Checked at each decision, so losing
/// the lease or the placement stops every actor at once without waiting for anything to be
/// stopped. Cheap to clone.
#[derive(Clone)]
pub struct Fence(Option<Placed>);

#[derive(Clone)]
struct Placed {
    view: watch::Receiver<Arc<ClusterView>>,
    key: ActorKey,
    /// The placement epoch the actor was started under; another epoch means another tenure.
    epoch: u64,
    /// Take-over grace: the previous home has fenced itself by then (see `hosting`).
    not_before: Instant,
}

impl Fence {
    /// A standalone node owns all its actors.
    pub fn open() -> Self {
        Self(None)
    }

    /// Acts while `view` places `key` here under `epoch` with a valid lease, from `not_before`.
    pub fn placed(
        view: watch::Receiver<Arc<ClusterView>>,
        key: ActorKey,
        epoch: u64,
        not_before: Instant,
    ) -> Self {
        Self(Some(Placed {
            view,
            key,
            epoch,
            not_before,
        }))
    }

    /// Whether `node` was declared failed (or removed): its calls are being taken over by
    /// their standbys and reached at their new node only once those report.
    pub fn has_failed(&self, node: NodeId) -> bool {
        let Some(placed) = &self.0 else {
            return false;
        };
        placed
            .view
            .borrow()
            .state
            .members
            .get(&node)
            .is_some_and(|m| matches!(m.status, MemberStatus::Failed | MemberStatus::Removed))
    }

    pub fn can_act(&self) -> bool {
        let Some(placed) = &self.0 else {
            return true;
        };
        Instant::now() >= placed.not_before
            && placed.view.borrow().may_act_for(&placed.key) == Some(placed.epoch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use switchyard_cluster::raft::Role;
    use switchyard_cluster::state::{ClusterState, Placement};

    use super::*;

    pub(super) fn view(
        me: NodeId,
        lease_valid: bool,
        placed: &[(ActorKey, Placement)],
    ) -> ClusterView {
        let state = ClusterState {
            placement: placed.iter().cloned().collect::<BTreeMap<_, _>>(),
            ..ClusterState::default()
        };
        ClusterView {
            node_id: me,
            role: Role::Follower,
            leader: Some(1),
            term: 1,
            commit_index: 1,
            applied_index: 1,
            voters: vec![1, 2, 3],
            state: Arc::new(state),
            lease_valid,
        }
    }

    #[test]
    fn fence_follows_lease_placement_epoch_and_grace() {
        let key = ActorKey::agent("2001");
        let here = Placement { node: 2, epoch: 4 };
        let (tx, rx) = watch::channel(Arc::new(view(2, true, &[(key.clone(), here)])));
        let fence = Fence::placed(rx.clone(), key.clone(), 4, Instant::now());
        assert!(fence.can_act());
        assert!(Fence::open().can_act());

        tx.send_replace(Arc::new(view(2, false, &[(key.clone(), here)])));
        assert!(!fence.can_act(), "lease lost");
        tx.send_replace(Arc::new(view(2, true, &[(key.clone(), here)])));
        assert!(fence.can_act(), "lease back");

        let moved = Placement { node: 3, epoch: 5 };
        tx.send_replace(Arc::new(view(2, true, &[(key.clone(), moved)])));
        assert!(!fence.can_act(), "placed elsewhere");
        let back = Placement { node: 2, epoch: 6 };
        tx.send_replace(Arc::new(view(2, true, &[(key.clone(), back)])));
        assert!(
            !fence.can_act(),
            "back here, but under a newer epoch: another tenure"
        );

        let later = Fence::placed(rx, key, 6, Instant::now() + Duration::from_secs(60));
        assert!(!later.can_act(), "within the take-over grace");
    }

    #[tokio::test]
    async fn postman_reports_missing_local_calls_and_refuses_remote_ones_standalone() {
        let calls = Directory::default();
        let postman = Postman::new(0, calls, None);
        let here = CallAddr {
            node: 0,
            call_id: "c1".into(),
        };
        let overflow = || WireCallMsg::Overflow {
            queue: "q".into(),
            action: crate::config::Overflow::Goodbye,
        };
        assert!(matches!(
            postman.deliver(&here, overflow()),
            Err(PostError::NoSuchCall(_))
        ));
        assert!(postman.is_gone(&here));
        let elsewhere = CallAddr {
            node: 7,
            call_id: "c1".into(),
        };
        assert!(matches!(
            postman.deliver(&elsewhere, overflow()),
            Err(PostError::NotClustered(_))
        ));
        assert!(
            !postman.is_gone(&elsewhere),
            "remote calls are never seen to die"
        );
    }
}

//! The Raft control plane: raft-rs over a redb log, replicating [`ClusterState`].
//!
//! `RaftCore` (`core.rs`) is the sans-IO protocol side (ticks, messages and proposals in; messages,
//! completed proposals and a [`ClusterView`] out); [`start`] runs it on a dedicated thread and
//! returns a [`RaftHandle`]. Peers exchange opaque byte messages that the mesh carries.
//! See `docs/adr/0008-raft-control-plane.md`.
//!
//! # Joining
//! The nodes of a new cluster start with the same [`RaftConfig::bootstrap`] list (themselves
//! included). A node added later starts with an empty list, so it holds no configuration and never
//! campaigns; an existing member then calls [`RaftHandle::add_voter`] with the newcomer's
//! [`Member`](crate::state::Member) (forwarding to the leader on
//! [`ProposeError::NotLeader`]). That one entry makes it a voter and a member; the leader then
//! sends it a snapshot and the log.
//!
//! # Lease and fencing
//! A follower is in good standing ([`ClusterView::lease_valid`]) while it knows the current
//! leader and has heard from it in the current term within the lease, `(election_tick - 2) / 2`
//! ticks (200 ms by default). A leader is in good standing while a quorum of voters (itself
//! included) has answered it in its term within the lease, and steps down the moment that stops
//! being true. A successor needs votes from a majority that has not heard from the old leader for
//! `election_tick - 1` ticks or more; by then the old leader has stepped down (one lease) and the
//! last heartbeats it sent its followers have run out (a second lease), with a tick to spare. So
//! nodes in good standing never follow two different leaders at once.
//!
//! A node acts for the actors placed on it only in good standing, and tags what it does with the
//! actor's placement epoch so that a counterpart that has seen a newer epoch refuses the stale
//! owner (this also covers a node in good standing that has not applied the latest placement
//! yet). Moving actors off an unreachable member must wait until that member's lease has run out:
//! the leader sees how long each peer has been silent in [`RaftStatus::peers`].

mod core;
mod driver;
mod logger;
pub mod storage;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use driver::{RaftConfig, RaftHandle, start};
pub use storage::{RaftStorage, StorageError};

use crate::state::{ActorKey, ClusterState, DecodeError, EncodeError, NodeId};

/// This node's part in the current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What a node knows of the cluster, published on every change through a `watch`.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub node_id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<NodeId>,
    /// The state as of `applied_index`.
    pub state: Arc<ClusterState>,
    /// Whether this node is in good standing (see the module docs); re-evaluated every tick, and
    /// false once the node has stopped.
    pub lease_valid: bool,
}

impl ClusterView {
    /// The placement epoch under which this node may act for `key`: `Some` only while the actor
    /// is placed here and the lease is valid.
    pub fn may_act_for(&self, key: &ActorKey) -> Option<u64> {
        let placement = self.state.placement.get(key)?;
        (self.lease_valid && placement.node == self.node_id).then_some(placement.epoch)
    }
}

/// A point-in-time status, for diagnostics and failure detection.
#[derive(Debug, Clone)]
pub struct RaftStatus {
    pub view: ClusterView,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// The other voters.
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    /// Highest log index known to be replicated there (leader only).
    pub matched: Option<u64>,
    /// Time since a message of the current term last came from the peer.
    pub last_heard: Option<Duration>,
}

/// A change of the voter set, proposed with [`RaftHandle::add_voter`] / `remove_voter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VoterChange {
    Add(crate::state::Member),
    Remove(NodeId),
}

/// Why a proposal did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals: forward to `leader` (if known) and retry.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Certainly not applied; safe to retry.
    #[error("proposal dropped, not applied: {0}")]
    Dropped(String),
    /// May or may not have been applied.
    #[error("proposal outcome unknown: {0}")]
    Unknown(String),
    /// Applied as a no-op: the state machine refused it (same on every node).
    #[error("proposal rejected: {0}")]
    Rejected(String),
    #[error("invalid proposal: {0}")]
    Invalid(String),
    #[error("raft node stopped")]
    Stopped,
}

/// Why a message from a peer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("undecodable raft message: {0}")]
    Decode(String),
    #[error("raft message claims sender {claimed} but came from {from}")]
    Sender { claimed: NodeId, from: NodeId },
    #[error("raft message for node {to} arrived at node {me}")]
    Recipient { to: NodeId, me: NodeId },
    #[error("raft message refused: {0}")]
    Refused(String),
    #[error("raft node busy; message dropped")]
    Busy,
    #[error("raft node stopped")]
    Stopped,
}

/// Errors that stop (or prevent starting) a Raft node.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("snapshot data: {0}")]
    Snapshot(#[from] DecodeError),
    #[error("cannot write snapshot: {0}")]
    Encode(#[from] EncodeError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft thread: {0}")]
    Thread(String),
}

fn elapsed(since: Option<Instant>, now: Instant) -> Option<Duration> {
    since.map(|t| now.saturating_duration_since(t))
}

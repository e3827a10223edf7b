//! The node's part in a cluster: the QUIC mesh and the Raft control plane of
//! `switchyard-cluster`, wired together, plus what the node replicates through them.
//!
//! - Raft messages travel on mesh channel [`KIND_RAFT`]; the mesh's address book follows the
//!   replicated membership.
//! - Any node takes membership and configuration changes: a follower forwards them to the leader
//!   over the mesh ([`KIND_OPERATION`]) and answers once they are applied.
//! - The leader seeds the replicated configuration (queues, agents, DIDs) from its config file
//!   for every document not yet present, so the cluster's placement covers every actor.
//! - Actor messages between nodes ([`KIND_ACTOR`], [`KIND_ACTOR_REQUEST`]) are handed to the
//!   node's mailroom (`crate::remote`).
//! - `/v1/cluster/...` routes serve `switchyard ctl status` and `ctl node add|remove|drain`, and
//!   show the placement.
//! - While this node leads, a failure detector ([`FailureDetector`], ADR 0014) declares members
//!   that have been silent for `[cluster] failure_timeout_ms` Failed (their actors move) and
//!   makes them Active again once they have been heard for a second.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchyard_cluster::mesh::{self, Incoming, Mesh, MeshConfig};
use switchyard_cluster::raft::{
    self, ClusterView, ProposeError, RaftConfig, RaftHandle, RaftStatus, Role,
};
use switchyard_cluster::state::{ActorKind, Command, Member, MemberStatus, NodeId, Placement};
use switchyard_cluster::tls;
use tokio::sync::{mpsc, watch};

use crate::config::Config;

/// Mesh channel carrying Raft messages (one-way, ordered).
pub const KIND_RAFT: u16 = 1;
/// Mesh channel carrying membership and configuration operations forwarded to the leader.
pub const KIND_OPERATION: u16 = 2;
/// Mesh channel carrying one-way messages to queue, agent and call actors.
pub const KIND_ACTOR: u16 = 3;
/// Mesh channel carrying requests to queue and agent actors (and registrations a node holds).
pub const KIND_ACTOR_REQUEST: u16 = 4;
/// Mesh channel carrying call and agent copies to standby nodes (`crate::failover`).
pub const KIND_REPLICA: u16 = 5;
/// Actor messages waiting for the mailroom; beyond this they are dropped (delivery is at most
/// once anyway) rather than hold up Raft traffic behind them.
const ACTOR_TRAFFIC_QUEUE: usize = 8192;
/// How long a proposal may stay unanswered before the caller hears "outcome unknown".
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(3);
/// A forwarded operation: the leader's own proposal timeout plus the round trip.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// How long an operation waits for a reachable leader (an election takes about a second).
const APPLY_DEADLINE: Duration = Duration::from_secs(2);
/// A member heard from within this long counts as up (the leader heartbeats every tick).
const HEALTHY_WITHIN: Duration = Duration::from_secs(2);
/// Raft messages queued towards the mesh before they are dropped (Raft retries).
const RAFT_OUTBOUND_QUEUE: usize = 4096;
/// How often the leader's failure detector looks at how long each member has been silent.
const DETECTOR_PERIOD: Duration = Duration::from_millis(100);
/// How long a failed member must have been heard continuously before it is made Active again.
const REJOIN_AFTER: Duration = Duration::from_secs(1);

/// A change only the leader can make; followers forward it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Operation {
    Propose(Command),
    AddVoter(Member),
    RemoveVoter(NodeId),
}

/// Why an operation failed, as the HTTP API reports it.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("no leader elected yet; retry shortly")]
    NoLeader,
    #[error("{0}")]
    Raft(#[from] ProposeError),
    #[error("leader {leader} refused: {reason}")]
    Forward { leader: NodeId, reason: String },
    /// Certainly not applied; another leader may take it.
    #[error("not applied: {0}")]
    Refused(String),
    /// May or may not have been applied; check before retrying.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("this node has been removed from the cluster")]
    Removed,
}

/// What the leader answers to a forwarded operation.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Applied(u64),
    /// Definitely not applied (not the leader any more, dropped): the sender may retry.
    Refused(String),
    /// Applied as a no-op or invalid: final.
    Failed(String),
}

/// The running cluster membership of this node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: RaftHandle,
    mesh: Mesh,
}

impl ClusterRuntime {
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The latest view of the cluster (leader, term, state, lease).
    pub fn view(&self) -> Arc<ClusterView> {
        Arc::clone(&self.inner.raft.view().borrow())
    }

    /// The view as it changes.
    pub fn watch_view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.inner.raft.view()
    }

    /// The mesh to the other members.
    pub fn mesh(&self) -> &Mesh {
        &self.inner.mesh
    }

    /// Applies `operation` through the leader, wherever it is; returns the log index.
    ///
    /// Only definite refusals ("not the leader", "dropped before the log") are retried: an
    /// operation whose outcome is unknown (a timeout, a connection lost mid-request) is
    /// reported as such, never sent again, so nothing is applied twice.
    pub async fn apply(&self, operation: Operation) -> Result<u64, OperationError> {
        let deadline = tokio::time::Instant::now() + APPLY_DEADLINE;
        loop {
            let view = self.view();
            if view
                .state
                .members
                .get(&self.inner.node_id)
                .is_some_and(|m| m.status == MemberStatus::Removed)
            {
                return Err(OperationError::Removed);
            }
            let refused = match self.apply_here(&operation).await {
                Err(OperationError::Raft(ProposeError::NotLeader {
                    leader: Some(leader),
                })) if leader != self.inner.node_id && view.lease_valid => {
                    match self.forward(leader, &operation).await {
                        Err(OperationError::Refused(reason)) => reason,
                        other => return other,
                    }
                }
                Err(OperationError::Raft(
                    e @ (ProposeError::NotLeader { .. } | ProposeError::Dropped(_)),
                )) => e.to_string(),
                other => return other,
            };
            // Mid-election, or cut off from the quorum: wait for a leader, briefly.
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(%refused, "operation refused until the deadline");
                return Err(OperationError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Proposes on this node, bounded in time: a leader deposed with the proposal in flight
    /// would otherwise keep the caller waiting until the partition heals.
    async fn apply_here(&self, operation: &Operation) -> Result<u64, OperationError> {
        let raft = &self.inner.raft;
        let proposal = async {
            match operation.clone() {
                Operation::Propose(command) => raft.propose(command).await,
                Operation::AddVoter(member) => raft.add_voter(member).await,
                Operation::RemoveVoter(id) => raft.remove_voter(id).await,
            }
        };
        match tokio::time::timeout(PROPOSAL_TIMEOUT, proposal).await {
            Ok(result) => result.map_err(OperationError::from),
            Err(_) => Err(OperationError::Unknown(format!(
                "no outcome within {PROPOSAL_TIMEOUT:?}; the change may or may not be applied"
            ))),
        }
    }

    /// Asks `leader` to apply `operation` itself (it never forwards again, so requests cannot
    /// bounce between two nodes that each think the other leads).
    async fn forward(&self, leader: NodeId, operation: &Operation) -> Result<u64, OperationError> {
        let unknown = |reason: String| {
            OperationError::Unknown(format!("forwarded to leader {leader}: {reason}"))
        };
        let payload = serde_json::to_vec(operation).map_err(|e| unknown(e.to_string()))?;
        let reply = match self
            .inner
            .mesh
            .request(leader, KIND_OPERATION, payload, FORWARD_TIMEOUT)
            .await
        {
            Ok(reply) => reply,
            // Not even sent: safe to try again once a leader is reachable.
            Err(e @ (mesh::MeshError::Unreachable { .. } | mesh::MeshError::UnknownPeer(_))) => {
                return Err(OperationError::Refused(e.to_string()));
            }
            Err(e) => return Err(unknown(e.to_string())),
        };
        match serde_json::from_slice::<ForwardReply>(&reply) {
            Ok(ForwardReply::Applied(index)) => Ok(index),
            Ok(ForwardReply::Refused(reason)) => Err(OperationError::Refused(reason)),
            Ok(ForwardReply::Failed(reason)) => Err(OperationError::Forward { leader, reason }),
            Err(e) => Err(unknown(e.to_string())),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft stopped with an error");
        }
        self.inner.mesh.shutdown().await;
    }
}

/// Starts the mesh and Raft when the config has a `[cluster]` section. Returns the runtime and
/// the actor messages other nodes send this one ([`KIND_ACTOR`], [`KIND_ACTOR_REQUEST`]).
pub async fn start(
    config: &Config,
    data_dir: &Path,
) -> anyhow::Result<Option<(ClusterRuntime, mpsc::Receiver<Incoming>)>> {
    let Some(cluster) = &config.cluster else {
        return Ok(None);
    };
    let identity = tls::load_node_identity(&cluster.certs).with_context(|| {
        format!(
            "cannot load node certificate from {}",
            cluster.certs.display()
        )
    })?;
    let (mesh, incoming) = mesh::start(MeshConfig::new(cluster.node_id, cluster.listen, identity))
        .await
        .with_context(|| format!("cannot start the cluster mesh on {}", cluster.listen))?;
    let bootstrap: Vec<Member> = if cluster.bootstrap.iter().any(|m| m.id == cluster.node_id) {
        cluster
            .bootstrap
            .iter()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                site: m.site.clone(),
                raft_addr: m.cluster_addr.to_string(),
                sip_addr: m.sip_addr.to_string(),
                http_addr: m.http_addr.to_string(),
                status: MemberStatus::Active,
                joined_at_index: 0,
            })
            .collect()
    } else {
        // Not an initial member: start empty and wait for `ctl node add`.
        Vec::new()
    };
    // Seed the address book from the bootstrap list so the first election can happen before
    // any membership has been applied.
    for m in &cluster.bootstrap {
        if m.id != cluster.node_id {
            mesh.set_peer(m.id, m.cluster_addr);
        }
    }
    let (outbound_tx, outbound_rx) = mpsc::channel(RAFT_OUTBOUND_QUEUE);
    let raft_config = RaftConfig {
        bootstrap,
        ..RaftConfig::new(cluster.node_id, data_dir.join("raft"))
    };
    // The lease (see `switchyard_cluster::raft`): `(election_tick - 2) / 2` ticks.
    let lease = raft_config.tick.saturating_mul(
        u32::try_from(raft_config.election_tick.saturating_sub(2) / 2).unwrap_or(0),
    );
    let raft = raft::start(raft_config, outbound_tx)
        .await
        .context("cannot start raft")?;
    tracing::info!(node_id = cluster.node_id, listen = %cluster.listen, "cluster member started");
    let runtime = ClusterRuntime {
        inner: Arc::new(Inner {
            node_id: cluster.node_id,
            raft,
            mesh,
        }),
    };
    tokio::spawn(send_raft_messages(runtime.inner.mesh.clone(), outbound_rx));
    let (actor_tx, actor_rx) = mpsc::channel(ACTOR_TRAFFIC_QUEUE);
    tokio::spawn(receive(runtime.clone(), incoming, actor_tx));
    tokio::spawn(follow_membership(runtime.clone()));
    tokio::spawn(detect_failures(
        runtime.clone(),
        FailureDetector::new(cluster.node_id, cluster.failure_timeout(), lease),
    ));
    tokio::spawn(seed_configuration(
        runtime.clone(),
        config_documents(config)?,
    ));
    Ok(Some((runtime, actor_rx)))
}

async fn send_raft_messages(mesh: Mesh, mut outbound: mpsc::Receiver<(NodeId, Vec<u8>)>) {
    while let Some((to, bytes)) = outbound.recv().await {
        // A full queue or unknown peer loses the message; Raft retransmits what matters.
        // Urgent: a heartbeat stuck behind actor traffic would cost the leader its lease.
        if let Err(e) = mesh.send_urgent(to, KIND_RAFT, bytes) {
            tracing::trace!(to, error = %e, "raft message not sent");
        }
    }
}

async fn receive(
    runtime: ClusterRuntime,
    mut incoming: mpsc::Receiver<Incoming>,
    actors: mpsc::Sender<Incoming>,
) {
    while let Some(message) = incoming.recv().await {
        match message {
            Incoming::Message {
                kind: KIND_ACTOR | KIND_REPLICA,
                ..
            }
            | Incoming::Request {
                kind: KIND_ACTOR_REQUEST,
                ..
            } => {
                // A dropped request's responder tells the requester there is no answer.
                if let Err(e) = actors.try_send(message) {
                    tracing::warn!(error = %e, "actor traffic backlog full; message dropped");
                }
            }
            Incoming::Message {
                from,
                kind: KIND_RAFT,
                payload,
            } => {
                if let Err(e) = runtime.inner.raft.step(from, &payload) {
                    tracing::debug!(from, error = %e, "raft message refused");
                }
            }
            Incoming::Request {
                from,
                kind: KIND_OPERATION,
                payload,
                reply,
            } => {
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    let answer = match serde_json::from_slice::<Operation>(&payload) {
                        Ok(operation) => match runtime.apply_here(&operation).await {
                            Ok(index) => ForwardReply::Applied(index),
                            Err(OperationError::Raft(
                                e @ (ProposeError::NotLeader { .. } | ProposeError::Dropped(_)),
                            )) => ForwardReply::Refused(e.to_string()),
                            Err(e) => ForwardReply::Failed(e.to_string()),
                        },
                        Err(e) => ForwardReply::Failed(format!(
                            "undecodable operation from node {from}: {e}"
                        )),
                    };
                    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                    if let Err(e) = reply.send(bytes) {
                        tracing::debug!(from, error = %e, "operation reply not sent");
                    }
                });
            }
            Incoming::Message { from, kind, .. } | Incoming::Request { from, kind, .. } => {
                tracing::warn!(from, kind, "message on an unknown mesh channel dropped");
            }
        }
    }
}

/// Keeps the mesh's address book equal to the replicated membership. Failed members stay in it:
/// the mesh keeps dialling them, so that the leader hears them again when they come back.
async fn follow_membership(runtime: ClusterRuntime) {
    let mut view = runtime.inner.raft.view();
    let mut known: BTreeMap<NodeId, String> = BTreeMap::new();
    loop {
        let members: BTreeMap<NodeId, String> = view
            .borrow_and_update()
            .state
            .members
            .values()
            .filter(|m| m.id != runtime.inner.node_id && m.status != MemberStatus::Removed)
            .map(|m| (m.id, m.raft_addr.clone()))
            .collect();
        if members != known {
            for (id, addr) in &members {
                match addr.parse::<SocketAddr>() {
                    Ok(addr) => runtime.inner.mesh.set_peer(*id, addr),
                    Err(e) => {
                        tracing::warn!(id, %addr, error = %e, "member has a bad cluster address")
                    }
                }
            }
            for id in known.keys().filter(|id| !members.contains_key(id)) {
                runtime.inner.mesh.remove_peer(*id);
            }
            known = members;
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// A member status change the failure detector wants proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    id: NodeId,
    status: MemberStatus,
    /// How long it had been silent (for `Failed`) or heard (for `Active`).
    after: Duration,
}

/// The leader's failure detector (ADR 0014), as pure bookkeeping: fed the Raft status every
/// [`DETECTOR_PERIOD`], it names the members to declare Failed or to make Active again.
///
/// - An Active or Draining member silent for longer than `failure_timeout` is declared Failed.
///   Raft counts only messages of the current term, so a peer not heard at all counts as silent
///   since this node became leader, or since the detector first saw it (a member just added).
/// - A Failed member heard continuously (every sample less than two leases old) for
///   [`REJOIN_AFTER`] is made Active again. A leader that is itself marked Failed makes itself
///   Active once it has led that long.
/// - Only a leader in good standing decides; this node is never declared Failed by itself.
struct FailureDetector {
    me: NodeId,
    failure_timeout: Duration,
    /// A failed member whose last message is older than this is not being heard continuously.
    heard_within: Duration,
    rejoin_after: Duration,
    /// The term this node leads in and when the detector first saw it lead.
    leading: Option<(u64, Instant)>,
    /// Failed members heard continuously since then.
    heard_since: BTreeMap<NodeId, Instant>,
    /// When the detector first saw each member while leading: a member never heard is silent
    /// since then.
    seen_since: BTreeMap<NodeId, Instant>,
}

impl FailureDetector {
    fn new(me: NodeId, failure_timeout: Duration, lease: Duration) -> Self {
        Self {
            me,
            failure_timeout,
            heard_within: lease.saturating_mul(2),
            rejoin_after: REJOIN_AFTER,
            leading: None,
            heard_since: BTreeMap::new(),
            seen_since: BTreeMap::new(),
        }
    }

    fn observe(&mut self, now: Instant, status: &RaftStatus) -> Vec<Verdict> {
        let view = &status.view;
        if view.role != Role::Leader || !view.lease_valid {
            self.leading = None;
            self.heard_since.clear();
            self.seen_since.clear();
            return Vec::new();
        }
        let since = match self.leading {
            Some((term, since)) if term == view.term => since,
            _ => {
                self.heard_since.clear();
                self.seen_since.clear();
                self.leading = Some((view.term, now));
                now
            }
        };
        let mut verdicts = Vec::new();
        for m in view.state.members.values() {
            let last_heard = if m.id == self.me {
                Some(Duration::ZERO)
            } else {
                match status.peers.iter().find(|p| p.id == m.id) {
                    Some(peer) => peer.last_heard,
                    // Not a voter: Raft tells nothing about it.
                    None => {
                        self.heard_since.remove(&m.id);
                        continue;
                    }
                }
            };
            match m.status {
                MemberStatus::Active | MemberStatus::Draining => {
                    self.heard_since.remove(&m.id);
                    let seen = *self.seen_since.entry(m.id).or_insert(now);
                    let silence = last_heard.unwrap_or(now.saturating_duration_since(seen));
                    if m.id != self.me && silence > self.failure_timeout {
                        verdicts.push(Verdict {
                            id: m.id,
                            status: MemberStatus::Failed,
                            after: silence,
                        });
                    }
                }
                MemberStatus::Failed => {
                    let heard = if m.id == self.me {
                        // Heard from itself since it started leading.
                        Some(since)
                    } else {
                        last_heard
                            .filter(|d| *d < self.heard_within)
                            .map(|_| *self.heard_since.entry(m.id).or_insert(now))
                    };
                    match heard {
                        Some(from) if now.saturating_duration_since(from) >= self.rejoin_after => {
                            verdicts.push(Verdict {
                                id: m.id,
                                status: MemberStatus::Active,
                                after: now.saturating_duration_since(from),
                            });
                        }
                        Some(_) => {}
                        None => {
                            self.heard_since.remove(&m.id);
                        }
                    }
                }
                MemberStatus::Removed => {
                    self.heard_since.remove(&m.id);
                }
            }
        }
        verdicts
    }
}

/// Runs the [`FailureDetector`] every [`DETECTOR_PERIOD`] and proposes its verdicts, at most one
/// outstanding proposal per member; a failed proposal is logged and decided again next round.
async fn detect_failures(runtime: ClusterRuntime, mut detector: FailureDetector) {
    let mut ticker = tokio::time::interval(DETECTOR_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: BTreeSet<NodeId> = BTreeSet::new();
    let mut proposals: tokio::task::JoinSet<(Verdict, Result<u64, OperationError>)> =
        tokio::task::JoinSet::new();
    loop {
        ticker.tick().await;
        while let Some(done) = proposals.try_join_next() {
            match done {
                Ok((verdict, result)) => {
                    pending.remove(&verdict.id);
                    report_verdict(&verdict, result);
                }
                // A proposal task cannot panic short of a bug; forget them all and decide again.
                Err(e) => {
                    tracing::error!(error = %e, "failure detector proposal task failed");
                    pending.clear();
                }
            }
        }
        let status = match runtime.inner.raft.status().await {
            Ok(status) => status,
            Err(ProposeError::Stopped) => return,
            Err(e) => {
                tracing::debug!(error = %e, "failure detector: no raft status");
                continue;
            }
        };
        for verdict in detector.observe(Instant::now(), &status) {
            if !pending.insert(verdict.id) {
                continue;
            }
            let silence_ms = verdict.after.as_millis() as u64;
            match verdict.status {
                MemberStatus::Failed => tracing::warn!(
                    node_id = verdict.id,
                    silence_ms,
                    "member silent longer than the failure timeout; declaring it failed"
                ),
                _ => tracing::info!(
                    node_id = verdict.id,
                    heard_for_ms = silence_ms,
                    "failed member heard again; making it active"
                ),
            }
            let runtime = runtime.clone();
            proposals.spawn(async move {
                let command = Command::SetMemberStatus {
                    id: verdict.id,
                    status: verdict.status,
                };
                let result = runtime.apply_here(&Operation::Propose(command)).await;
                (verdict, result)
            });
        }
    }
}

fn report_verdict(verdict: &Verdict, result: Result<u64, OperationError>) {
    let node_id = verdict.id;
    match (verdict.status, result) {
        (MemberStatus::Failed, Ok(index)) => {
            metrics::counter!("cluster_members_failed_total").increment(1);
            tracing::warn!(
                node_id,
                silence_ms = verdict.after.as_millis() as u64,
                index,
                "member declared failed; its actors moved"
            );
        }
        (_, Ok(index)) => {
            metrics::counter!("cluster_members_rejoined_total").increment(1);
            tracing::info!(node_id, index, "failed member is active again");
        }
        // Lost the leadership meanwhile: the next leader decides.
        (status, Err(e @ OperationError::Raft(ProposeError::NotLeader { .. }))) => {
            tracing::debug!(node_id, ?status, error = %e, "member status not proposed");
        }
        (status, Err(e)) => {
            tracing::warn!(node_id, ?status, error = %e, "member status change failed; will retry");
        }
    }
}

/// The configuration documents this node's file describes, keyed as the cluster stores them.
fn config_documents(config: &Config) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut docs = Vec::new();
    for queue in &config.queues {
        docs.push((format!("queue/{}", queue.name), serde_json::to_vec(queue)?));
    }
    for agent in config.agents()? {
        docs.push((
            format!("agent/{}", agent.extension),
            serde_json::to_vec(&agent)?,
        ));
    }
    for did in &config.dids {
        docs.push((format!("did/{}", did.number), serde_json::to_vec(did)?));
    }
    docs.push((
        crate::flows::FLOWS_DOCUMENT.to_owned(),
        serde_json::to_vec(&config.flow_set())?,
    ));
    Ok(docs)
}

/// While this node leads, proposes every configuration document the cluster does not have yet.
/// Documents already present win: a change made through the API is not undone by a restart.
async fn seed_configuration(runtime: ClusterRuntime, docs: Vec<(String, Vec<u8>)>) {
    let mut view = runtime.inner.raft.view();
    loop {
        let missing: Vec<(String, Vec<u8>)> = {
            let v = view.borrow_and_update();
            if v.role != Role::Leader {
                Vec::new()
            } else {
                docs.iter()
                    .filter(|(key, _)| !v.state.config.contains_key(key))
                    .cloned()
                    .collect()
            }
        };
        for (key, value) in missing {
            let command = Command::PutConfig {
                key: key.clone(),
                value,
                preferred_site: None,
            };
            if let Err(e) = runtime.inner.raft.propose(command).await {
                tracing::debug!(%key, error = %e, "configuration not seeded (will retry)");
                break;
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// One member as `GET /v1/cluster/status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberStatusJson {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    pub cluster_addr: String,
    pub sip_addr: String,
    pub http_addr: String,
    pub status: MemberStatus,
    pub voter: bool,
    /// `up`, `down`, or `unknown`: only the leader hears from every member; a follower knows
    /// itself and the leader (`switchyard ctl status` asks the leader).
    pub health: String,
    /// Whether this node's mesh holds a live connection to it (always true for itself).
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    /// Milliseconds since Raft last heard from it (leader's and followers' own view).
    pub last_heard_ms: Option<u64>,
    /// Log entries it is behind the leader (only known on the leader).
    pub replication_lag: Option<u64>,
    pub queues: usize,
    pub agents: usize,
}

/// `GET /v1/cluster/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusJson {
    pub node_id: NodeId,
    pub role: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub lease_valid: bool,
    pub config_revision: u64,
    pub placement_epoch: u64,
    pub members: Vec<MemberStatusJson>,
    pub sites: BTreeMap<String, Vec<NodeId>>,
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(code: StatusCode, message: impl ToString) -> ApiError {
    (
        code,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
}

/// Routes for cluster status and membership changes.
pub fn routes(runtime: ClusterRuntime) -> Router {
    Router::new()
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/placement", get(placement))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", axum::routing::delete(remove_node))
        .route("/v1/cluster/nodes/{id}/drain", post(drain_node))
        .route("/v1/cluster/nodes/{id}/activate", post(activate_node))
        .route(
            "/v1/cluster/config/{*key}",
            get(get_config).put(put_config).delete(delete_config),
        )
        .with_state(runtime)
}

async fn status(State(runtime): State<ClusterRuntime>) -> Result<Json<StatusJson>, ApiError> {
    let raft = runtime
        .inner
        .raft
        .status()
        .await
        .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let view = &raft.view;
    let me = runtime.inner.node_id;
    let mesh_peers = runtime.inner.mesh.peers();
    let mut counts: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
    for placement_entry in &view.state.placement {
        let (key, placement) = placement_entry;
        let entry = counts.entry(placement.node).or_default();
        match key.kind {
            ActorKind::Queue => entry.0 += 1,
            ActorKind::Agent => entry.1 += 1,
        }
    }
    let mut sites: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    let members = view
        .state
        .members
        .values()
        .map(|m| {
            sites.entry(m.site.clone()).or_default().push(m.id);
            let mesh_peer = mesh_peers.iter().find(|p| p.node_id == m.id);
            let raft_peer = raft.peers.iter().find(|p| p.id == m.id);
            let (queues, agents) = counts.get(&m.id).copied().unwrap_or_default();
            let heard_recently = raft_peer
                .and_then(|p| p.last_heard)
                .is_some_and(|d| d < HEALTHY_WITHIN);
            let health = if m.id == me || heard_recently {
                "up"
            } else if view.role == Role::Leader || Some(m.id) == view.leader {
                "down"
            } else {
                "unknown"
            };
            MemberStatusJson {
                id: m.id,
                name: m.name.clone(),
                site: m.site.clone(),
                cluster_addr: m.raft_addr.clone(),
                sip_addr: m.sip_addr.clone(),
                http_addr: m.http_addr.clone(),
                status: m.status,
                voter: view.voters.contains(&m.id),
                health: health.to_owned(),
                connected: m.id == me || mesh_peer.is_some_and(|p| p.connected),
                rtt_ms: mesh_peer
                    .and_then(|p| p.rtt)
                    .map(|d| d.as_secs_f64() * 1000.0),
                last_heard_ms: raft_peer
                    .and_then(|p| p.last_heard)
                    .map(|d| d.as_millis() as u64),
                replication_lag: raft_peer
                    .and_then(|p| p.matched)
                    .map(|matched| raft.last_index.saturating_sub(matched)),
                queues,
                agents,
            }
        })
        .collect();
    Ok(Json(StatusJson {
        node_id: me,
        role: format!("{:?}", view.role).to_lowercase(),
        leader: view.leader,
        term: view.term,
        commit_index: view.commit_index,
        applied_index: view.applied_index,
        last_index: raft.last_index,
        lease_valid: view.lease_valid,
        config_revision: view.state.config_revision,
        placement_epoch: view.state.placement_epoch,
        members,
        sites,
    }))
}

/// `GET /v1/cluster/placement`: every placed actor's home, as this node has applied it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlacementJson {
    pub node_id: NodeId,
    pub applied_index: u64,
    pub placement_epoch: u64,
    /// By actor key (`queue/support`, `agent/2001`).
    pub actors: BTreeMap<String, Placement>,
}

async fn placement(State(runtime): State<ClusterRuntime>) -> Json<PlacementJson> {
    let view = runtime.view();
    Json(PlacementJson {
        node_id: view.node_id,
        applied_index: view.applied_index,
        placement_epoch: view.state.placement_epoch,
        actors: view
            .state
            .placement
            .iter()
            .map(|(key, placement)| (key.config_key(), *placement))
            .collect(),
    })
}

/// `POST /v1/cluster/nodes` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewNode {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    pub cluster_addr: SocketAddr,
    pub sip_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

async fn add_node(
    State(runtime): State<ClusterRuntime>,
    Json(node): Json<NewNode>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if node.id == 0 {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "node id must be non-zero",
        ));
    }
    let member = Member {
        id: node.id,
        name: node.name,
        site: node.site,
        raft_addr: node.cluster_addr.to_string(),
        sip_addr: node.sip_addr.to_string(),
        http_addr: node.http_addr.to_string(),
        status: MemberStatus::Active,
        joined_at_index: 0,
    };
    let index = apply(&runtime, Operation::AddVoter(member)).await?;
    // New members take their share of actors.
    apply(&runtime, Operation::Propose(Command::Rebalance)).await?;
    Ok(Json(
        serde_json::json!({ "added": node.id, "index": index }),
    ))
}

async fn remove_node(
    State(runtime): State<ClusterRuntime>,
    UrlPath(id): UrlPath<NodeId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_member(&runtime, id)?;
    let index = apply(&runtime, Operation::RemoveVoter(id)).await?;
    Ok(Json(serde_json::json!({ "removed": id, "index": index })))
}

async fn drain_node(
    State(runtime): State<ClusterRuntime>,
    UrlPath(id): UrlPath<NodeId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_status(runtime, id, MemberStatus::Draining).await
}

async fn activate_node(
    State(runtime): State<ClusterRuntime>,
    UrlPath(id): UrlPath<NodeId>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_status(runtime, id, MemberStatus::Active).await
}

async fn set_status(
    runtime: ClusterRuntime,
    id: NodeId,
    status: MemberStatus,
) -> Result<Json<serde_json::Value>, ApiError> {
    known_member(&runtime, id)?;
    let index = apply(
        &runtime,
        Operation::Propose(Command::SetMemberStatus { id, status }),
    )
    .await?;
    Ok(Json(
        serde_json::json!({ "node": id, "status": status, "index": index }),
    ))
}

/// `GET /v1/cluster/config/{key}`: the document as this node has applied it, with the index it
/// has applied up to (reads are local: a follower may lag the leader by a few entries).
async fn get_config(
    State(runtime): State<ClusterRuntime>,
    UrlPath(key): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = runtime.view();
    let value = view
        .state
        .config
        .get(&key)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, format!("no configuration {key:?}")))?;
    let value: serde_json::Value = serde_json::from_slice(value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into()));
    Ok(Json(serde_json::json!({
        "key": key,
        "value": value,
        "applied_index": view.applied_index,
    })))
}

/// `PUT /v1/cluster/config/{key}` with a JSON body: stored cluster-wide once committed; the
/// answer comes after this node has applied it.
async fn put_config(
    State(runtime): State<ClusterRuntime>,
    UrlPath(key): UrlPath<String>,
    Json(value): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if key.is_empty() || key.len() > 256 {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "key must be 1-256 bytes",
        ));
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    let command = Command::PutConfig {
        key: key.clone(),
        value: bytes,
        preferred_site: None,
    };
    let index = apply(&runtime, Operation::Propose(command)).await?;
    Ok(Json(serde_json::json!({ "key": key, "index": index })))
}

async fn delete_config(
    State(runtime): State<ClusterRuntime>,
    UrlPath(key): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let index = apply(
        &runtime,
        Operation::Propose(Command::DeleteConfig { key: key.clone() }),
    )
    .await?;
    Ok(Json(serde_json::json!({ "key": key, "index": index })))
}

fn known_member(runtime: &ClusterRuntime, id: NodeId) -> Result<(), ApiError> {
    if runtime.view().state.members.contains_key(&id) {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::NOT_FOUND,
            format!("no member with id {id}"),
        ))
    }
}

async fn apply(runtime: &ClusterRuntime, operation: Operation) -> Result<u64, ApiError> {
    runtime.apply(operation).await.map_err(|e| match e {
        OperationError::NoLeader | OperationError::Refused(_) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        OperationError::Removed => api_error(StatusCode::GONE, e),
        OperationError::Raft(ProposeError::Rejected(_) | ProposeError::Invalid(_)) => {
            api_error(StatusCode::CONFLICT, e)
        }
        _ => api_error(StatusCode::BAD_GATEWAY, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_cluster::raft::PeerStatus;
    use switchyard_cluster::state::ClusterState;

    const TIMEOUT: Duration = Duration::from_millis(1000);
    const LEASE: Duration = Duration::from_millis(200);
    const MS: Duration = Duration::from_millis(1);

    fn member(id: NodeId, status: MemberStatus) -> Member {
        Member {
            id,
            name: format!("node{id}"),
            site: "dc1".into(),
            raft_addr: format!("127.0.0.1:{}", 7000 + id),
            sip_addr: format!("127.0.0.1:{}", 5060 + id),
            http_addr: format!("127.0.0.1:{}", 8080 + id),
            status,
            joined_at_index: 1,
        }
    }

    /// Node 1's status as leader in `term` of members with `statuses`, and Raft having last
    /// heard from each other member `heard` ago.
    fn status(
        role: Role,
        term: u64,
        members: &[(NodeId, MemberStatus, Option<Duration>)],
    ) -> RaftStatus {
        let mut state = ClusterState::default();
        for &(id, status, _) in members {
            state.members.insert(id, member(id, status));
        }
        RaftStatus {
            view: ClusterView {
                node_id: 1,
                role,
                leader: (role == Role::Leader).then_some(1),
                term,
                commit_index: 10,
                applied_index: 10,
                voters: members.iter().map(|m| m.0).collect(),
                state: Arc::new(state),
                lease_valid: true,
            },
            first_index: 1,
            last_index: 10,
            snapshot_index: 1,
            peers: members
                .iter()
                .filter(|m| m.0 != 1)
                .map(|&(id, _, last_heard)| PeerStatus {
                    id,
                    matched: Some(10),
                    last_heard,
                })
                .collect(),
        }
    }

    fn ids(verdicts: &[Verdict]) -> Vec<(NodeId, MemberStatus)> {
        verdicts.iter().map(|v| (v.id, v.status)).collect()
    }

    #[test]
    fn silent_active_and_draining_members_are_declared_failed() {
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        let t0 = Instant::now();
        let s = |heard2, heard3| {
            status(
                Role::Leader,
                5,
                &[
                    (1, MemberStatus::Active, None),
                    (2, MemberStatus::Active, heard2),
                    (3, MemberStatus::Draining, heard3),
                    (4, MemberStatus::Removed, None),
                ],
            )
        };
        assert!(d.observe(t0, &s(Some(50 * MS), Some(50 * MS))).is_empty());
        assert!(
            d.observe(t0, &s(Some(TIMEOUT), Some(10 * MS))).is_empty(),
            "silent for exactly the timeout: not yet"
        );
        let verdicts = d.observe(t0, &s(Some(TIMEOUT + MS), Some(3000 * MS)));
        assert_eq!(
            ids(&verdicts),
            [(2, MemberStatus::Failed), (3, MemberStatus::Failed)]
        );
        assert_eq!(verdicts[0].after, TIMEOUT + MS);
    }

    #[test]
    fn a_member_added_while_leading_is_silent_only_from_when_it_was_added() {
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        let t0 = Instant::now();
        let two = status(
            Role::Leader,
            5,
            &[
                (1, MemberStatus::Active, None),
                (2, MemberStatus::Active, Some(10 * MS)),
            ],
        );
        let three = status(
            Role::Leader,
            5,
            &[
                (1, MemberStatus::Active, None),
                (2, MemberStatus::Active, Some(10 * MS)),
                (3, MemberStatus::Active, None),
            ],
        );
        assert!(d.observe(t0, &two).is_empty());
        // Long into the leadership node 3 joins, not heard from yet: not failed at once.
        let joined = t0 + 10 * TIMEOUT;
        assert!(d.observe(joined, &three).is_empty());
        assert!(d.observe(joined + TIMEOUT, &three).is_empty());
        assert_eq!(
            ids(&d.observe(joined + TIMEOUT + MS, &three)),
            [(3, MemberStatus::Failed)]
        );
    }

    #[test]
    fn never_heard_counts_from_the_start_of_the_leadership() {
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        let t0 = Instant::now();
        let s = |term| {
            status(
                Role::Leader,
                term,
                &[
                    (1, MemberStatus::Active, None),
                    (2, MemberStatus::Active, None),
                ],
            )
        };
        assert!(d.observe(t0, &s(5)).is_empty());
        assert!(d.observe(t0 + TIMEOUT, &s(5)).is_empty());
        assert_eq!(
            ids(&d.observe(t0 + TIMEOUT + MS, &s(5))),
            [(2, MemberStatus::Failed)]
        );
        // A new term starts the count again.
        let t1 = t0 + 2 * TIMEOUT;
        assert!(d.observe(t1, &s(6)).is_empty());
        assert!(d.observe(t1 + TIMEOUT, &s(6)).is_empty());
        assert_eq!(d.observe(t1 + TIMEOUT + MS, &s(6)).len(), 1);
    }

    #[test]
    fn only_a_leader_in_good_standing_decides_and_never_about_itself() {
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        let t0 = Instant::now();
        let members = [
            (1, MemberStatus::Active, None),
            (2, MemberStatus::Active, Some(5000 * MS)),
        ];
        assert!(
            d.observe(t0, &status(Role::Follower, 5, &members))
                .is_empty()
        );
        let mut lost = status(Role::Leader, 5, &members);
        lost.view.lease_valid = false;
        assert!(d.observe(t0, &lost).is_empty());
        // Node 1 itself is never reported, however long it has led.
        let only_me = status(Role::Leader, 5, &[(1, MemberStatus::Active, None)]);
        assert!(d.observe(t0, &only_me).is_empty());
        assert!(d.observe(t0 + 10 * TIMEOUT, &only_me).is_empty());
        assert_eq!(
            ids(&d.observe(t0, &status(Role::Leader, 5, &members))),
            [(2, MemberStatus::Failed)]
        );
    }

    #[test]
    fn a_failed_member_rejoins_after_a_second_of_continuous_contact() {
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        let t0 = Instant::now();
        let s = |heard| {
            status(
                Role::Leader,
                5,
                &[
                    (1, MemberStatus::Active, None),
                    (2, MemberStatus::Failed, heard),
                ],
            )
        };
        // Still silent, or heard too long ago: nothing.
        assert!(d.observe(t0, &s(None)).is_empty());
        assert!(d.observe(t0, &s(Some(2 * LEASE))).is_empty());
        // Heard from t0 + 100 ms on ...
        let start = t0 + 100 * MS;
        for step in 0..10u32 {
            assert!(
                d.observe(start + step * 100 * MS, &s(Some(30 * MS)))
                    .is_empty(),
                "step {step}"
            );
        }
        // ... for a whole second: Active again.
        let verdicts = d.observe(start + 1000 * MS, &s(Some(30 * MS)));
        assert_eq!(ids(&verdicts), [(2, MemberStatus::Active)]);
        assert_eq!(verdicts[0].after, 1000 * MS);
        // A gap of two leases restarts the count.
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        assert!(d.observe(t0, &s(Some(10 * MS))).is_empty());
        assert!(d.observe(t0 + 600 * MS, &s(Some(400 * MS))).is_empty());
        assert!(d.observe(t0 + 700 * MS, &s(Some(10 * MS))).is_empty());
        assert!(d.observe(t0 + 1200 * MS, &s(Some(10 * MS))).is_empty());
        assert_eq!(d.observe(t0 + 1700 * MS, &s(Some(10 * MS))).len(), 1);
    }

    #[test]
    fn a_failed_leader_makes_itself_active() {
        let mut d = FailureDetector::new(1, TIMEOUT, LEASE);
        let t0 = Instant::now();
        let s = status(
            Role::Leader,
            5,
            &[
                (1, MemberStatus::Failed, None),
                (2, MemberStatus::Active, Some(10 * MS)),
            ],
        );
        assert!(d.observe(t0, &s).is_empty());
        assert!(d.observe(t0 + 900 * MS, &s).is_empty());
        assert_eq!(
            ids(&d.observe(t0 + REJOIN_AFTER, &s)),
            [(1, MemberStatus::Active)]
        );
    }
}

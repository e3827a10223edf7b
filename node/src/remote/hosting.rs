//! Hosting by placement: a task that follows this node's view of the cluster and makes the
//! queue and agent directories match it.
//!
//! For every placed actor: placed here (and the lease valid, so that a node that has just
//! restarted does not start what may have moved) -> run it here; placed elsewhere -> a proxy
//! towards its home. A change of home or of placement epoch is a new tenure: the old actor or
//! proxy is stopped and a new one started. Queues start before agents (placement keys sort that
//! way). A new queue knows nobody: once it may act, the agents serving it announce themselves
//! and the callers waiting for it rejoin. A new agent asks every node for its phone's
//! registrations.
//!
//! Fencing does not wait for this task: every actor started here checks its [`Fence`] at each
//! decision, so a lost lease or a lost placement stops all of them at once. A fenced actor keeps
//! running with its state (a leader election makes every follower lose its lease for about a
//! second; stopping would throw away every waiting caller) until the placement moves it.
//!
//! A newly started actor acts only after [`TAKEOVER_GRACE`]: if the previous home was cut off,
//! its lease has run out by then and it has stopped acting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use switchyard_cluster::raft::ClusterView;
use switchyard_cluster::state::{ActorKey, ActorKind, MemberStatus, NodeId, Placement};

use super::mailroom::requeue_calls;
use super::proxy::{self, Link};
use super::wire::{self, Answer, Ask, Envelope, Tell};
use super::{Fence, Hosted};
use crate::acd::agent::{self, AgentArgs};
use crate::acd::queue::{self, QueueArgs};
use crate::acd::{AgentMsg, QueueMsg};
use crate::cluster::ClusterRuntime;
use crate::config::{AgentSpec, QueueConfig};
use crate::node::NodeContext;
use crate::time::unix_ms;

/// The lease (200 ms with the default Raft timing: 50 ms ticks, `election_tick` 10) plus two
/// ticks for the old home to notice that its lease ran out.
pub const TAKEOVER_GRACE: Duration = Duration::from_millis(300);
/// Reconcile again this often even without a new view (retries failed starts).
const RETRY: Duration = Duration::from_secs(5);
/// How long a new agent waits for each peer's registrations.
const BINDINGS_TIMEOUT: Duration = Duration::from_secs(2);

enum Actor {
    Queue(ActorRef<QueueMsg>),
    Agent(ActorRef<AgentMsg>),
}

impl Actor {
    fn stop(&self) {
        match self {
            Actor::Queue(a) => a.stop(None),
            Actor::Agent(a) => a.stop(None),
        }
    }
}

/// What this node runs for one placed actor.
struct Tenure {
    /// The placement it follows.
    placement: Placement,
    /// Runs the actor here (`placement.node` is this node) or proxies it.
    actor: Actor,
}

pub struct Hosting {
    ctx: Arc<NodeContext>,
    runtime: ClusterRuntime,
    hosted: Hosted,
    tenures: BTreeMap<ActorKey, Tenure>,
    /// Members already known to be removed (their registrations were dropped).
    removed: BTreeSet<NodeId>,
}

impl Hosting {
    pub fn new(ctx: Arc<NodeContext>, runtime: ClusterRuntime, hosted: Hosted) -> Self {
        Self {
            ctx,
            runtime,
            hosted,
            tenures: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }

    /// Follows the view until the Raft node stops.
    pub async fn run(mut self) {
        let mut views = self.runtime.watch_view();
        loop {
            let view = Arc::clone(&views.borrow_and_update());
            self.reconcile(&view).await;
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    async fn reconcile(&mut self, view: &ClusterView) {
        let me = view.node_id;
        let placement = &view.state.placement;
        let gone: Vec<ActorKey> = self
            .tenures
            .keys()
            .filter(|key| !placement.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            tracing::info!(actor = %key, "actor no longer placed; stopping it here");
            self.end_tenure(&key);
        }

        let mut started_queues = Vec::new();
        let mut started_agents = Vec::new();
        // One start for the whole batch, so that a queue does not try agents started with it
        // while they still wait.
        let acting_from = Instant::now() + TAKEOVER_GRACE;
        for (key, &home) in placement {
            if self.tenures.get(key).is_some_and(|t| t.placement == home) {
                continue;
            }
            let actor = if home.node == me {
                if !view.lease_valid {
                    // Start when in good standing; until then the old entry (if any) stays.
                    continue;
                }
                match self.start_local(view, key, home, acting_from).await {
                    Ok(actor) => actor,
                    Err(e) => {
                        tracing::error!(actor = %key, error = %e, "cannot start actor");
                        continue;
                    }
                }
            } else {
                match self.start_proxy(key, home).await {
                    Ok(actor) => actor,
                    Err(e) => {
                        tracing::error!(actor = %key, error = %e, "cannot start proxy");
                        continue;
                    }
                }
            };
            let local = home.node == me;
            // The new entries first, so that no lookup finds the stopping actor, or nothing.
            match &actor {
                Actor::Queue(q) => {
                    self.ctx.queues.insert(key.id.clone(), q.clone());
                    if local {
                        self.hosted.queues.insert(key.id.clone(), q.clone());
                        started_queues.push(key.id.clone());
                    }
                }
                Actor::Agent(a) => {
                    self.ctx.agents.insert(key.id.clone(), a.clone());
                    if local {
                        self.hosted.agents.insert(key.id.clone(), a.clone());
                        started_agents.push(key.id.clone());
                    }
                }
            }
            let tenure = Tenure {
                placement: home,
                actor,
            };
            if let Some(previous) = self.tenures.insert(key.clone(), tenure) {
                if previous.placement.node == me && !local {
                    self.hosted_remove(key);
                }
                previous.actor.stop();
            }
            tracing::info!(actor = %key, home = home.node, epoch = home.epoch,
                "{}", if local { "hosting actor here" } else { "actor hosted elsewhere" });
        }
        if !started_queues.is_empty() {
            self.welcome_queues(view, started_queues);
        }
        if !started_agents.is_empty() {
            self.learn_registrations(view, started_agents);
        }
        self.forget_removed_members(view);
    }

    /// Stops what this node runs for an actor no longer placed anywhere.
    fn end_tenure(&mut self, key: &ActorKey) {
        let Some(tenure) = self.tenures.remove(key) else {
            return;
        };
        self.hosted_remove(key);
        match key.kind {
            ActorKind::Queue => {
                self.ctx.queues.remove(&key.id);
            }
            ActorKind::Agent => {
                self.ctx.agents.remove(&key.id);
            }
        }
        tenure.actor.stop();
    }

    fn hosted_remove(&self, key: &ActorKey) {
        match key.kind {
            ActorKind::Queue => {
                self.hosted.queues.remove(&key.id);
            }
            ActorKind::Agent => {
                self.hosted.agents.remove(&key.id);
            }
        }
    }

    async fn start_local(
        &self,
        view: &ClusterView,
        key: &ActorKey,
        home: Placement,
        acting_from: Instant,
    ) -> anyhow::Result<Actor> {
        let fence = Fence::placed(
            self.runtime.watch_view(),
            key.clone(),
            home.epoch,
            acting_from,
        );
        // Directories are filled in by the caller, which knows what the actor replaces.
        Ok(match key.kind {
            ActorKind::Queue => {
                let config: QueueConfig = document(view, key)?;
                let args = QueueArgs {
                    config,
                    agents: self.ctx.agents.clone(),
                    postman: self.ctx.postman.clone(),
                    fence,
                    board: self.ctx.queue_board.clone(),
                };
                Actor::Queue(queue::spawn_queue(args).await?)
            }
            ActorKind::Agent => {
                let spec: AgentSpec = document(view, key)?;
                let policies =
                    agent::policies(&spec, |name| document(view, &ActorKey::queue(name)).ok());
                let restored = self
                    .ctx
                    .failover
                    .as_ref()
                    .and_then(|f| f.take_agent(&spec.extension));
                let args = AgentArgs {
                    spec,
                    policies,
                    queues: self.ctx.queues.clone(),
                    fence,
                    restored,
                    failover: self.ctx.failover.clone(),
                };
                Actor::Agent(agent::spawn_agent(args).await?)
            }
        })
    }

    async fn start_proxy(&self, key: &ActorKey, home: Placement) -> anyhow::Result<Actor> {
        let link = Link {
            key: key.clone(),
            home: home.node,
            epoch: home.epoch,
            mesh: self.runtime.mesh().clone(),
        };
        Ok(match key.kind {
            ActorKind::Queue => Actor::Queue(proxy::spawn_queue_proxy(link).await?),
            ActorKind::Agent => Actor::Agent(proxy::spawn_agent_proxy(link).await?),
        })
    }

    /// A new queue knows no agents and no callers: the agents serving it (wherever they run)
    /// announce themselves if available, and every node asks its calls waiting in it to join
    /// again. Asked once the take-over grace has passed: the queue cannot act before, and by
    /// then the other nodes have applied the placement too, so the answers come here and not to
    /// the queue's previous home. An agent that is not running yet announces itself when it
    /// becomes available.
    fn welcome_queues(&self, view: &ClusterView, queues: Vec<String>) {
        let agent_docs = view
            .state
            .config
            .range("agent/".to_owned()..)
            .take_while(|(key, _)| key.starts_with("agent/"));
        let mut announce = Vec::new();
        for (key, bytes) in agent_docs {
            let (Some(actor), Ok(spec)) = (
                ActorKey::from_config_key(key),
                serde_json::from_slice::<AgentSpec>(bytes),
            ) else {
                continue;
            };
            for queue in queues.iter().filter(|q| spec.queues.contains(q)) {
                announce.push((actor.id.clone(), queue.clone()));
            }
        }
        let peers = live_peers(view);
        let agents = self.ctx.agents.clone();
        let calls = self.ctx.calls.clone();
        let mesh = self.runtime.mesh().clone();
        tokio::spawn(async move {
            tokio::time::sleep(TAKEOVER_GRACE).await;
            for (id, queue) in announce {
                if let Some(agent) = agents.get(&id) {
                    let _ = agent.cast(AgentMsg::Announce { queue });
                }
            }
            for queue in queues {
                requeue_calls(&calls, &queue);
                let started = Envelope::new(None, Tell::QueueStarted { queue });
                for &peer in &peers {
                    if let Err(e) = wire::tell(&mesh, peer, &started) {
                        tracing::debug!(peer, error = %e, "queue start not announced");
                    }
                }
            }
        });
    }

    /// A new agent knows no registrations: ask this node's registrar and every other member's.
    fn learn_registrations(&self, view: &ClusterView, agents: Vec<String>) {
        let me = view.node_id;
        {
            let now = unix_ms();
            let registrar = self.ctx.registrar.lock().unwrap_or_else(|e| e.into_inner());
            for id in &agents {
                let contacts: Vec<String> = registrar
                    .contacts(id, now)
                    .iter()
                    .map(|b| b.uri.to_string())
                    .collect();
                if let (false, Some(agent)) = (contacts.is_empty(), self.hosted.agents.get(id)) {
                    let _ = agent.cast(AgentMsg::Contacts { node: me, contacts });
                }
            }
        }
        for peer in live_peers(view) {
            let mesh = self.runtime.mesh().clone();
            let hosted = self.hosted.agents.clone();
            let envelope = Envelope::new(
                None,
                Ask::Bindings {
                    agents: agents.clone(),
                },
            );
            tokio::spawn(async move {
                match wire::ask(&mesh, peer, &envelope, BINDINGS_TIMEOUT).await {
                    Ok(Answer::Bindings(bindings)) => {
                        for (id, contacts) in bindings {
                            if let Some(agent) = hosted.get(&id) {
                                let _ = agent.cast(AgentMsg::Contacts {
                                    node: peer,
                                    contacts,
                                });
                            }
                        }
                    }
                    Ok(_) => tracing::warn!(peer, "registrations answered with something else"),
                    // A peer that is down holds no registrations anyone can use.
                    Err(e) => tracing::debug!(peer, error = %e, "registrations not learnt"),
                }
            });
        }
    }

    /// A removed member's registrations are gone with it.
    fn forget_removed_members(&mut self, view: &ClusterView) {
        let removed: Vec<NodeId> = view
            .state
            .members
            .values()
            .filter(|m| m.status == MemberStatus::Removed && !self.removed.contains(&m.id))
            .map(|m| m.id)
            .collect();
        for node in removed {
            self.removed.insert(node);
            for id in self.hosted.agents.ids() {
                if let Some(agent) = self.hosted.agents.get(&id) {
                    let _ = agent.cast(AgentMsg::Contacts {
                        node,
                        contacts: Vec::new(),
                    });
                }
            }
        }
    }
}

/// The other members, removed ones excepted.
fn live_peers(view: &ClusterView) -> Vec<NodeId> {
    view.state
        .members
        .values()
        .filter(|m| m.id != view.node_id && m.status != MemberStatus::Removed)
        .map(|m| m.id)
        .collect()
}

/// The replicated configuration document of `key`: the JSON of a `QueueConfig` or `AgentSpec`.
fn document<T: serde::de::DeserializeOwned>(
    view: &ClusterView,
    key: &ActorKey,
) -> anyhow::Result<T> {
    let bytes = view
        .state
        .config
        .get(&key.config_key())
        .ok_or_else(|| anyhow::anyhow!("no configuration document {key}"))?;
    Ok(serde_json::from_slice(bytes)?)
}

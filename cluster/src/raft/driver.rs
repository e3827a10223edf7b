//! The thin async shell around [`RaftCore`]: one dedicated thread per node running a
//! current-thread tokio runtime, so the fsyncs of the Raft log block only that thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::core::{CoreConfig, RaftCore, ViewKey};
use super::{
    ClusterView, ProposeError, RaftError, RaftStatus, RaftStorage, StepError, VoterChange,
};
use crate::state::{Command, Member, NodeId};

/// Inputs queued before the driver refuses peer messages (raft retransmits what is dropped).
const INBOUND_CAPACITY: usize = 4096;
/// Inputs handled per loop turn before the ready is processed, bounding the batch (and latency).
const BATCH: usize = 1024;

/// How a node runs its Raft group.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: NodeId,
    /// `raft.redb` lives here.
    pub data_dir: PathBuf,
    /// Initial voters (this node included), identical on every initial node; empty for a node
    /// that will be added to a running cluster. Ignored once the storage holds state.
    pub bootstrap: Vec<Member>,
    /// Logical clock period.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomised in `[n, 2n)` by raft-rs).
    pub election_tick: usize,
    /// Ticks between leader heartbeats; must be shorter than the lease,
    /// `(election_tick - 2) / 2` ticks.
    pub heartbeat_tick: usize,
    /// Applied entries between snapshots (and log compactions).
    pub snapshot_every: u64,
}

impl RaftConfig {
    /// Defaults: 50 ms ticks, elections after 0.5-1 s without a leader, heartbeats every tick,
    /// a 200 ms lease, a snapshot every 1,000 entries.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            bootstrap: Vec::new(),
            tick: Duration::from_millis(50),
            election_tick: 10,
            heartbeat_tick: 1,
            snapshot_every: 1000,
        }
    }
}

type Reply = oneshot::Sender<Result<u64, ProposeError>>;
/// The node's final result, taken by the first `shutdown`.
type Exit = Arc<Mutex<Option<oneshot::Receiver<Result<(), RaftError>>>>>;

enum Input {
    Step(Message),
    Propose(Command, Reply),
    Voters(VoterChange, Reply),
    Status(oneshot::Sender<RaftStatus>),
    Shutdown,
}

/// Talks to a running node; cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    node_id: NodeId,
    tx: mpsc::Sender<Input>,
    view: watch::Receiver<Arc<ClusterView>>,
    exit: Exit,
}

/// Starts the node: opens (or bootstraps) its storage, then runs it on its own thread. Messages
/// for peers are pushed to `outbound` as `(peer id, bytes)`; if that queue is full the message is
/// dropped and raft retries.
pub async fn start(
    config: RaftConfig,
    outbound: mpsc::Sender<(NodeId, Vec<u8>)>,
) -> Result<RaftHandle, RaftError> {
    if config.tick.is_zero() {
        return Err(RaftError::Config("tick must be positive".into()));
    }
    let node_id = config.node_id;
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    let (started_tx, started_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("raft-{node_id}"))
        .spawn(move || {
            let result = run_thread(config, rx, outbound, started_tx);
            // Nobody waiting is fine: the node was dropped without `shutdown`.
            let _ = exit_tx.send(result);
        })
        .map_err(|e| RaftError::Thread(e.to_string()))?;
    let view = started_rx
        .await
        .map_err(|_| RaftError::Thread("exited while starting".into()))??;
    Ok(RaftHandle {
        node_id,
        tx,
        view,
        exit: Arc::new(Mutex::new(Some(exit_rx))),
    })
}

impl RaftHandle {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Hands a peer's message to the node without waiting. Errors say why it was not taken (a
    /// malformed message, a full queue); raft recovers from lost messages either way.
    pub fn step(&self, from: NodeId, bytes: &[u8]) -> Result<(), StepError> {
        let msg = RaftCore::decode_message(self.node_id, from, bytes)?;
        self.tx.try_send(Input::Step(msg)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StepError::Busy,
            mpsc::error::TrySendError::Closed(_) => StepError::Stopped,
        })
    }

    /// Proposes `command`; answers with its log index once it is applied on this node.
    pub async fn propose(&self, command: Command) -> Result<u64, ProposeError> {
        self.request(|reply| Input::Propose(command, reply)).await
    }

    /// Makes `member` a voter and a member in one entry (see the module docs on joining).
    pub async fn add_voter(&self, member: Member) -> Result<u64, ProposeError> {
        self.request(|reply| Input::Voters(VoterChange::Add(member), reply))
            .await
    }

    /// Removes voter `id` and marks the member Removed. Asked of the leader about itself, it first
    /// hands leadership over and answers `NotLeader` with the successor.
    pub async fn remove_voter(&self, id: NodeId) -> Result<u64, ProposeError> {
        self.request(|reply| Input::Voters(VoterChange::Remove(id), reply))
            .await
    }

    /// The latest view; `changed()` on the receiver wakes on every update.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    pub async fn status(&self) -> Result<RaftStatus, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Status(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)
    }

    /// Stops the node and waits until its storage is closed. Returns the error that stopped it,
    /// if one did. Later calls (from any clone) return at once.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        // A closed queue means the node already stopped; the exit result says why.
        let _ = self.tx.send(Input::Shutdown).await;
        let exit = self.exit.lock().unwrap_or_else(|e| e.into_inner()).take();
        match exit {
            Some(exit) => exit
                .await
                .map_err(|_| RaftError::Thread("raft thread vanished".into()))?,
            None => Ok(()),
        }
    }

    async fn request(&self, input: impl FnOnce(Reply) -> Input) -> Result<u64, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(input(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)?
    }
}

type Started = oneshot::Sender<Result<watch::Receiver<Arc<ClusterView>>, RaftError>>;

fn run_thread(
    config: RaftConfig,
    rx: mpsc::Receiver<Input>,
    outbound: mpsc::Sender<(NodeId, Vec<u8>)>,
    started: Started,
) -> Result<(), RaftError> {
    let opened = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| RaftError::Thread(e.to_string()))
        .and_then(|rt| {
            let storage = RaftStorage::open(&config.data_dir)?;
            let core_config = CoreConfig {
                node_id: config.node_id,
                tick: config.tick,
                election_tick: config.election_tick,
                heartbeat_tick: config.heartbeat_tick,
                snapshot_every: config.snapshot_every,
            };
            Ok((
                rt,
                RaftCore::open(&core_config, storage, &config.bootstrap)?,
            ))
        });
    let (rt, core) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            // The error goes to `start`'s caller.
            let _ = started.send(Err(e));
            return Ok(());
        }
    };
    let now = Instant::now();
    let (view_tx, view_rx) = watch::channel(Arc::new(core.view(now)));
    if started.send(Ok(view_rx)).is_err() {
        return Ok(());
    }
    let mut driver = Driver {
        key: core.view_key(now),
        core,
        outbound,
        view_tx,
        replies: HashMap::new(),
        next_id: 0,
        outbound_closed: false,
    };
    let result = rt.block_on(driver.run(rx, config.tick));
    driver.stop(&result);
    result
}

struct Driver {
    core: RaftCore,
    outbound: mpsc::Sender<(NodeId, Vec<u8>)>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    key: ViewKey,
    replies: HashMap<u64, Reply>,
    next_id: u64,
    outbound_closed: bool,
}

impl Driver {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Input>,
        tick: Duration,
    ) -> Result<(), RaftError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // Inputs first: after a stall, queued acknowledgements must count before the
                    // tick checks the leader's lease.
                    if !self.drain(&mut rx) {
                        return Ok(());
                    }
                    self.core.tick(Instant::now());
                }
                input = rx.recv() => {
                    let Some(input) = input else {
                        // Every handle is gone.
                        return Ok(());
                    };
                    if !self.handle(input) || !self.drain(&mut rx) {
                        return Ok(());
                    }
                }
            }
            let out = self.core.process_ready()?;
            for msg in out.messages {
                let delivered = self.send(msg.to, &msg.bytes);
                self.core.report_sent(&msg, delivered);
            }
            for (id, result) in out.completed {
                if let Some(reply) = self.replies.remove(&id) {
                    // The proposer may have given up waiting.
                    let _ = reply.send(result);
                }
            }
            self.publish();
        }
    }

    /// Handles what else is queued (so one fsync covers the batch); false on shutdown.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Input>) -> bool {
        for _ in 0..BATCH {
            match rx.try_recv() {
                Ok(input) => {
                    if !self.handle(input) {
                        return false;
                    }
                }
                Err(_) => break,
            }
        }
        true
    }

    /// Handles one input; false on shutdown.
    fn handle(&mut self, input: Input) -> bool {
        let now = Instant::now();
        match input {
            Input::Step(msg) => {
                if let Err(e) = self.core.step(msg, now) {
                    tracing::debug!("raft message not stepped: {e}");
                }
            }
            Input::Propose(command, reply) => {
                let id = self.next_id();
                match self.core.propose(id, &command) {
                    Ok(()) => {
                        self.replies.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Input::Voters(change, reply) => {
                let id = self.next_id();
                match self.core.propose_voter_change(id, &change) {
                    Ok(()) => {
                        self.replies.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Input::Status(reply) => {
                let _ = reply.send(self.core.status(now));
            }
            Input::Shutdown => return false,
        }
        true
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn send(&mut self, to: NodeId, bytes: &[u8]) -> bool {
        match self.outbound.try_send((to, bytes.to_vec())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if !self.outbound_closed {
                    self.outbound_closed = true;
                    tracing::warn!("raft outbound queue closed; peers are unreachable");
                }
                false
            }
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let key = self.core.view_key(now);
        if key != self.key {
            self.key = key;
            self.view_tx.send_replace(Arc::new(self.core.view(now)));
        }
    }

    /// Answers everything still waiting and publishes a view without standing.
    fn stop(&mut self, result: &Result<(), RaftError>) {
        if let Err(e) = result {
            tracing::error!("raft node {} stopped: {e}", self.view_tx.borrow().node_id);
        }
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(ProposeError::Unknown(
                "the node stopped before the proposal was applied".into(),
            )));
        }
        let mut view = self.core.view(Instant::now());
        view.lease_valid = false;
        view.leader = None;
        self.view_tx.send_replace(Arc::new(view));
    }
}

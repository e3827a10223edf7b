//! The sans-IO Raft node: raft-rs's `RawNode` over [`RaftStorage`], the replicated
//! [`ClusterState`], proposal tracking and lease bookkeeping. Fed ticks, peer messages and
//! proposals (with the current time); returns encoded messages for peers and completed proposals.
//! Disk writes happen inside (the log must be durable before messages leave), nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
    MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};

use super::{
    ClusterView, PeerStatus, ProposeError, RaftError, RaftStatus, RaftStorage, Role, StepError,
    VoterChange, elapsed,
};
use crate::state::{ClusterState, Command, Member, MemberStatus, NodeId};

/// Largest append message; a lagging follower gets the log in pieces of this size.
const MAX_MSG_BYTES: u64 = 1 << 20;
/// Uncommitted bytes a leader accepts before refusing proposals (e.g. while it cannot reach a
/// quorum and has not yet stepped down).
const MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;

pub(crate) struct CoreConfig {
    pub node_id: NodeId,
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub snapshot_every: u64,
}

/// A message ready for the wire.
pub(crate) struct Outgoing {
    pub to: NodeId,
    pub bytes: Vec<u8>,
    pub snapshot: bool,
}

#[derive(Default)]
pub(crate) struct Output {
    pub messages: Vec<Outgoing>,
    /// Proposal id and its result (the entry index on success).
    pub completed: Vec<(u64, Result<u64, ProposeError>)>,
}

/// The fields whose change makes a new [`ClusterView`] worth publishing.
#[derive(PartialEq)]
pub(crate) struct ViewKey {
    role: Role,
    leader: u64,
    term: u64,
    commit: u64,
    applied: u64,
    voters: Vec<NodeId>,
    lease_valid: bool,
    state: *const ClusterState,
}

pub(crate) struct RaftCore {
    id: NodeId,
    node: RawNode<RaftStorage>,
    state: Arc<ClusterState>,
    conf_state: ConfState,
    applied: u64,
    snapshot_every: u64,
    lease: Duration,
    /// Our proposals not yet applied: log index -> proposal id.
    pending: BTreeMap<u64, u64>,
    /// When each peer last sent a message of the current term (term recorded alongside).
    heard: HashMap<NodeId, (u64, Instant)>,
    out: Output,
}

/// Entry context of our proposals: proposer node id and proposal id, so that an entry that
/// replaced ours at the same index (after a leader change) is never mistaken for it.
fn proposal_context(node: NodeId, id: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.to_le_bytes());
    ctx.extend_from_slice(&id.to_le_bytes());
    ctx
}

impl RaftCore {
    /// Opens the node over `storage`; a fresh storage is initialised from `bootstrap` (the initial
    /// voters, identical on every initial node), or left empty to join later if that is empty.
    pub fn open(
        config: &CoreConfig,
        mut storage: RaftStorage,
        bootstrap: &[Member],
    ) -> Result<Self, RaftError> {
        let mut raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: MAX_MSG_BYTES,
            max_inflight_msgs: 256,
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        if config.snapshot_every == 0 {
            return Err(RaftError::Config(
                "snapshot_every must be at least 1".into(),
            ));
        }
        // See the module docs: leases of old and new leader terms must never overlap.
        let lease_ticks = config.election_tick.saturating_sub(2) / 2;
        if lease_ticks <= config.heartbeat_tick {
            return Err(RaftError::Config(format!(
                "election_tick {} leaves a lease of {lease_ticks} ticks, not longer than the \
                 heartbeat interval of {} ticks",
                config.election_tick, config.heartbeat_tick
            )));
        }

        let lease = u32::try_from(lease_ticks)
            .ok()
            .and_then(|n| config.tick.checked_mul(n))
            .ok_or_else(|| RaftError::Config("tick * election_tick overflows".into()))?;

        if storage.is_fresh() && !bootstrap.is_empty() {
            storage.apply_snapshot(&bootstrap_snapshot(config.node_id, bootstrap)?)?;
        }
        let snapshot = storage.latest_snapshot();
        let meta = snapshot.get_metadata();
        let state = if meta.index == 0 {
            ClusterState::default()
        } else {
            ClusterState::decode(&snapshot.data)?
        };
        let conf_state = meta.get_conf_state().clone();
        let applied = meta.index;
        // Entries after the snapshot are replayed into the state from the log.
        raft_config.applied = applied;
        let node = RawNode::new(&raft_config, storage, &super::logger::logger())?;
        Ok(Self {
            id: config.node_id,
            node,
            state: Arc::new(state),
            conf_state,
            applied,
            snapshot_every: config.snapshot_every,
            lease,
            pending: BTreeMap::new(),
            heard: HashMap::new(),
            out: Output::default(),
        })
    }

    /// Advances raft's clock; a leader that has not heard from a quorum within the lease steps
    /// down here, well before raft-rs's own quorum check would, so that its followers' leases
    /// run out before a successor can be elected.
    pub fn tick(&mut self, now: Instant) {
        if self.node.raft.state == StateRole::Leader && !self.lease_valid(now) {
            tracing::warn!(
                term = self.node.raft.term,
                "no quorum heard within the lease; stepping down"
            );
            let term = self.node.raft.term;
            self.node.raft.become_follower(term, raft::INVALID_ID);
        }
        self.node.tick();
    }

    /// Decodes and checks a peer's message (no state touched, so callers may do it off-thread).
    pub fn decode_message(me: NodeId, from: NodeId, bytes: &[u8]) -> Result<Message, StepError> {
        let msg = Message::parse_from_bytes(bytes).map_err(|e| StepError::Decode(e.to_string()))?;
        if msg.from != from {
            return Err(StepError::Sender {
                claimed: msg.from,
                from,
            });
        }
        if msg.to != me {
            return Err(StepError::Recipient { to: msg.to, me });
        }
        Ok(msg)
    }

    pub fn step(&mut self, msg: Message, now: Instant) -> Result<(), StepError> {
        let (from, term, kind) = (msg.from, msg.term, msg.get_msg_type());
        // raft-rs aborts the process on a heartbeat that commits past the end of our log; only a
        // faulty peer sends one, so refuse it here.
        if kind == MessageType::MsgHeartbeat
            && term >= self.node.raft.term
            && msg.commit > self.node.raft.raft_log.last_index()
        {
            return Err(StepError::Refused(format!(
                "heartbeat commits {} beyond our last index {}",
                msg.commit,
                self.node.raft.raft_log.last_index()
            )));
        }
        self.node
            .step(msg)
            .map_err(|e| StepError::Refused(e.to_string()))?;
        if term == self.node.raft.term {
            self.heard.insert(from, (term, now));
        }
        Ok(())
    }

    pub fn propose(&mut self, id: u64, command: &Command) -> Result<(), ProposeError> {
        self.check_leader()?;
        let data = command
            .encode()
            .map_err(|e| ProposeError::Invalid(e.to_string()))?;
        self.node
            .propose(proposal_context(self.id, id), data)
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        self.track(id);
        Ok(())
    }

    pub fn propose_voter_change(
        &mut self,
        id: u64,
        change: &VoterChange,
    ) -> Result<(), ProposeError> {
        self.check_leader()?;
        let (node_id, change_type, command) = match change {
            VoterChange::Add(member) => (
                member.id,
                ConfChangeType::AddNode,
                Command::AddMember(member.clone()),
            ),
            VoterChange::Remove(node_id) => (
                *node_id,
                ConfChangeType::RemoveNode,
                Command::RemoveMember { id: *node_id },
            ),
        };
        if node_id == 0 {
            return Err(ProposeError::Invalid("node id 0 is not valid".into()));
        }
        if node_id == self.id && change_type == ConfChangeType::RemoveNode {
            // raft-rs keeps a removed leader leading; hand leadership over first instead.
            let transferee = self
                .best_follower()
                .ok_or_else(|| ProposeError::Invalid("cannot remove the only voter".into()))?;
            self.node.transfer_leader(transferee);
            return Err(ProposeError::NotLeader {
                leader: Some(transferee),
            });
        }
        if self.node.raft.has_pending_conf() {
            return Err(ProposeError::Dropped(
                "another membership change is still being applied; retry".into(),
            ));
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = node_id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.context = command
            .encode()
            .map_err(|e| ProposeError::Invalid(e.to_string()))?
            .into();
        self.node
            .propose_conf_change(proposal_context(self.id, id), cc)
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        self.track(id);
        Ok(())
    }

    /// Tells raft whether a message from [`Output::messages`] went out.
    pub fn report_sent(&mut self, msg: &Outgoing, delivered: bool) {
        if msg.snapshot {
            let status = if delivered {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            self.node.report_snapshot(msg.to, status);
        }
        if !delivered {
            self.node.report_unreachable(msg.to);
        }
    }

    /// Handles everything raft-rs has ready, following its protocol: leader messages go out at
    /// once; snapshot, entries and hard state are persisted (one transaction) before the
    /// messages that depend on them; committed entries are applied; then `advance` and the light
    /// ready. Repeats until nothing is left. A storage error is fatal for the node.
    pub fn process_ready(&mut self) -> Result<Output, RaftError> {
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            self.queue(ready.take_messages());
            let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
            // Validate the snapshot before it replaces our log.
            let restored = match &snapshot {
                Some(s) => Some(ClusterState::decode(&s.data)?),
                None => None,
            };
            let must_sync = ready.must_sync();
            self.node.mut_store().save(
                snapshot.as_ref(),
                ready.entries(),
                ready.hs(),
                must_sync,
            )?;
            if let (Some(s), Some(state)) = (snapshot, restored) {
                self.restore(&s, state);
            }
            self.apply(ready.take_committed_entries());
            self.queue(ready.take_persisted_messages());

            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut hs = self.node.store().hard_state().clone();
                hs.commit = commit;
                // The commit index can be relearned from the leader: no fsync needed.
                self.node.mut_store().save(None, &[], Some(&hs), false)?;
            }
            self.queue(light.take_messages());
            self.apply(light.take_committed_entries());
            self.node.advance_apply();
            self.maybe_snapshot()?;
        }
        Ok(std::mem::take(&mut self.out))
    }

    fn queue(&mut self, messages: Vec<Message>) {
        for msg in messages {
            match msg.write_to_bytes() {
                Ok(bytes) => self.out.messages.push(Outgoing {
                    to: msg.to,
                    snapshot: msg.get_msg_type() == MessageType::MsgSnapshot,
                    bytes,
                }),
                // Raft resends what is lost.
                Err(e) => tracing::warn!(to = msg.to, "cannot encode raft message: {e}"),
            }
        }
    }

    fn restore(&mut self, snapshot: &Snapshot, state: ClusterState) {
        let meta = snapshot.get_metadata();
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "restored cluster state from a snapshot"
        );
        self.state = Arc::new(state);
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        let skipped = self.pending.split_off(&(meta.index + 1));
        for (_, id) in std::mem::replace(&mut self.pending, skipped) {
            self.out.completed.push((
                id,
                Err(ProposeError::Unknown(
                    "the node caught up through a snapshot".into(),
                )),
            ));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        // Copy-on-write: clones only if a published view still shares the state.
        let state = Arc::make_mut(&mut self.state);
        for entry in entries {
            let index = entry.index;
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => Ok(()),
                EntryType::EntryNormal => Command::decode(&entry.data)
                    .map_err(|e| e.to_string())
                    .and_then(|cmd| {
                        state
                            .apply(index, &cmd)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
                EntryType::EntryConfChangeV2 => {
                    apply_conf_change(&mut self.node, &mut self.conf_state, state, &entry)
                }
                EntryType::EntryConfChange => {
                    Err("version 1 configuration changes are not used by this cluster".into())
                }
            };
            if let Err(reason) = &result {
                // Every replica reaches the same verdict, so skipping keeps them identical.
                tracing::warn!(index, "skipped raft entry: {reason}");
            }
            self.applied = index;
            // Resolve our proposals up to `index`: the one at `index` if the entry is ours, and
            // any below it (replaced by another leader's entries).
            while let Some(waiting) = self.pending.first_entry() {
                if *waiting.key() > index {
                    break;
                }
                let (at, id) = waiting.remove_entry();
                let outcome = if at == index && entry.context == proposal_context(self.id, id) {
                    result
                        .clone()
                        .map(|()| index)
                        .map_err(ProposeError::Rejected)
                } else {
                    Err(ProposeError::Dropped(
                        "replaced by another entry after a leader change".into(),
                    ))
                };
                self.out.completed.push((id, outcome));
            }
        }
    }

    fn track(&mut self, id: u64) {
        let index = self.node.raft.raft_log.last_index();
        if let Some(old) = self.pending.insert(index, id) {
            // The log was cut back below `index` since `old` was proposed there.
            self.out.completed.push((
                old,
                Err(ProposeError::Dropped(
                    "replaced by another entry after a leader change".into(),
                )),
            ));
        }
    }

    /// Snapshots the applied state every `snapshot_every` entries, or sooner when raft needed a
    /// newer snapshot for a peer (one added since the last snapshot).
    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let previous = self.node.store().latest_snapshot().get_metadata().index;
        let wanted = self.node.store().take_snapshot_request();
        let due = self.applied >= previous + self.snapshot_every;
        if self.applied <= previous || !(due || wanted) {
            return Ok(());
        }
        let data = self.state.encode()?;
        let store = self.node.mut_store();
        store.create_snapshot(self.applied, self.conf_state.clone(), data)?;
        // Keep the entries since the previous snapshot, so a follower that is only a little
        // behind catches up from the log rather than needing the whole snapshot.
        store.compact(previous + 1)?;
        tracing::debug!(index = self.applied, "raft snapshot taken");
        Ok(())
    }

    fn check_leader(&self) -> Result<(), ProposeError> {
        if self.node.raft.state == StateRole::Leader {
            Ok(())
        } else {
            Err(ProposeError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    fn leader(&self) -> Option<NodeId> {
        Some(self.node.raft.leader_id).filter(|&id| id != 0)
    }

    /// The follower with the most of the log.
    fn best_follower(&self) -> Option<NodeId> {
        self.node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.id && self.conf_state.voters.contains(id))
            .max_by_key(|(id, pr)| (pr.matched, **id))
            .map(|(id, _)| *id)
    }

    fn heard_in_term(&self, peer: NodeId) -> Option<Instant> {
        match self.heard.get(&peer) {
            Some(&(term, at)) if term == self.node.raft.term => Some(at),
            _ => None,
        }
    }

    /// Until when this node is in good standing (see the module docs).
    fn lease_until(&self, now: Instant) -> Option<Instant> {
        let raft = &self.node.raft;
        match raft.state {
            StateRole::Leader => {
                let voters = &self.conf_state.voters;
                let mut acks: Vec<Instant> = voters
                    .iter()
                    .filter_map(|&v| {
                        if v == self.id {
                            Some(now)
                        } else {
                            self.heard_in_term(v)
                        }
                    })
                    .collect();
                acks.sort_unstable_by(|a, b| b.cmp(a));
                let quorum = voters.len() / 2 + 1;
                acks.get(quorum - 1).and_then(|t| t.checked_add(self.lease))
            }
            StateRole::Follower => {
                let leader = self.leader()?;
                self.heard_in_term(leader)
                    .and_then(|t| t.checked_add(self.lease))
            }
            StateRole::Candidate | StateRole::PreCandidate => None,
        }
    }

    /// Sorted: raft-rs lists them in hash order.
    fn voters(&self) -> Vec<NodeId> {
        let mut voters = self.conf_state.voters.clone();
        voters.sort_unstable();
        voters
    }

    fn lease_valid(&self, now: Instant) -> bool {
        self.lease_until(now).is_some_and(|t| now < t)
    }

    fn role(&self) -> Role {
        match self.node.raft.state {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }

    pub fn view_key(&self, now: Instant) -> ViewKey {
        ViewKey {
            role: self.role(),
            leader: self.node.raft.leader_id,
            term: self.node.raft.term,
            commit: self.node.raft.raft_log.committed,
            applied: self.applied,
            voters: self.voters(),
            lease_valid: self.lease_valid(now),
            state: Arc::as_ptr(&self.state),
        }
    }

    pub fn view(&self, now: Instant) -> ClusterView {
        ClusterView {
            node_id: self.id,
            role: self.role(),
            leader: self.leader(),
            term: self.node.raft.term,
            commit_index: self.node.raft.raft_log.committed,
            applied_index: self.applied,
            voters: self.voters(),
            state: Arc::clone(&self.state),
            lease_valid: self.lease_valid(now),
        }
    }

    pub fn status(&self, now: Instant) -> RaftStatus {
        let store = self.node.store();
        let is_leader = self.node.raft.state == StateRole::Leader;
        let peers = self
            .conf_state
            .voters
            .iter()
            .filter(|&&id| id != self.id)
            .map(|&id| PeerStatus {
                id,
                matched: is_leader
                    .then(|| self.node.raft.prs().get(id).map(|pr| pr.matched))
                    .flatten(),
                last_heard: elapsed(self.heard_in_term(id), now),
            })
            .collect();
        RaftStatus {
            view: self.view(now),
            first_index: store.first_index().unwrap_or(0),
            last_index: store.last_index().unwrap_or(0),
            snapshot_index: store.latest_snapshot().get_metadata().index,
            peers,
        }
    }
}

/// Applies a voter change entry: the raft configuration and the member record it carries, or
/// neither if the entry is invalid.
fn apply_conf_change(
    node: &mut RawNode<RaftStorage>,
    conf_state: &mut ConfState,
    state: &mut ClusterState,
    entry: &Entry,
) -> Result<(), String> {
    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
        .map_err(|e| format!("undecodable configuration change: {e}"))?;
    let command = if cc.context.is_empty() {
        None
    } else {
        Some(Command::decode(&cc.context).map_err(|e| e.to_string())?)
    };
    *conf_state = node.apply_conf_change(&cc).map_err(|e| e.to_string())?;
    match command {
        Some(command) => state
            .apply(entry.index, &command)
            .map(drop)
            .map_err(|e| format!("voters changed, but the member record was refused: {e}")),
        None => Ok(()),
    }
}

/// The snapshot every initial node starts from: index 1, term 1, the initial voters, and a state
/// holding them as active members. Identical input gives identical snapshots on every node; a
/// node added later has no entry 1 and so must receive the leader's snapshot, which brings it the
/// same starting point.
fn bootstrap_snapshot(me: NodeId, members: &[Member]) -> Result<Snapshot, RaftError> {
    let mut state = ClusterState::default();
    for m in members {
        if m.id == 0 || state.members.contains_key(&m.id) {
            return Err(RaftError::Config(format!(
                "bootstrap members need distinct non-zero ids (got {} twice or zero)",
                m.id
            )));
        }
        let mut m = m.clone();
        m.status = MemberStatus::Active;
        m.joined_at_index = 1;
        state.members.insert(m.id, m);
    }
    if !state.members.contains_key(&me) {
        return Err(RaftError::Config(format!(
            "node {me} is not in its own bootstrap list"
        )));
    }
    let mut snapshot = Snapshot {
        data: state.encode()?.into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.set_conf_state(ConfState::from((
        state.members.keys().copied().collect::<Vec<_>>(),
        vec![],
    )));
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    //! Deterministic multi-node runs: simulated time, messages delivered by hand.

    use super::*;
    use crate::state::MemberStatus;

    const TICK: Duration = Duration::from_millis(50);

    fn member(id: NodeId) -> Member {
        Member {
            id,
            name: format!("n{id}"),
            site: "dc1".into(),
            raft_addr: format!("127.0.0.1:{}", 7000 + id),
            sip_addr: String::new(),
            http_addr: String::new(),
            status: MemberStatus::Active,
            joined_at_index: 0,
        }
    }

    fn config(id: NodeId) -> CoreConfig {
        CoreConfig {
            node_id: id,
            tick: TICK,
            election_tick: 10,
            heartbeat_tick: 1,
            snapshot_every: 5,
        }
    }

    struct Sim {
        dirs: Vec<tempfile::TempDir>,
        nodes: BTreeMap<NodeId, RaftCore>,
        now: Instant,
        results: HashMap<u64, Result<u64, ProposeError>>,
        /// Nodes cut off from the others (they still reach each other).
        minority: Vec<NodeId>,
    }

    impl Sim {
        fn new(n: u64) -> Self {
            let bootstrap: Vec<Member> = (1..=n).map(member).collect();
            let mut dirs = Vec::new();
            let mut nodes = BTreeMap::new();
            for id in 1..=n {
                let dir = tempfile::tempdir().unwrap();
                let storage = RaftStorage::open(dir.path()).unwrap();
                nodes.insert(
                    id,
                    RaftCore::open(&config(id), storage, &bootstrap).unwrap(),
                );
                dirs.push(dir);
            }
            Self {
                dirs,
                nodes,
                now: Instant::now(),
                results: HashMap::new(),
                minority: Vec::new(),
            }
        }

        fn add_empty(&mut self, id: NodeId) {
            let dir = tempfile::tempdir().unwrap();
            let storage = RaftStorage::open(dir.path()).unwrap();
            self.nodes
                .insert(id, RaftCore::open(&config(id), storage, &[]).unwrap());
            self.dirs.push(dir);
        }

        /// Delivers messages until quiet, then advances one tick.
        fn step_time(&mut self) {
            loop {
                let mut inflight = Vec::new();
                for (&id, node) in &mut self.nodes {
                    let out = node.process_ready().unwrap();
                    self.results.extend(out.completed);
                    for m in out.messages {
                        inflight.push((id, m));
                    }
                }
                if inflight.is_empty() {
                    break;
                }
                for (from, m) in inflight {
                    let delivered = self.minority.contains(&from) == self.minority.contains(&m.to);
                    if let Some(node) = self.nodes.get_mut(&from) {
                        node.report_sent(&m, delivered);
                    }
                    if !delivered {
                        continue;
                    }
                    if let Some(node) = self.nodes.get_mut(&m.to) {
                        let msg = RaftCore::decode_message(m.to, from, &m.bytes).unwrap();
                        let _ = node.step(msg, self.now);
                    }
                }
            }
            self.now += TICK;
            for node in self.nodes.values_mut() {
                node.tick(self.now);
            }
        }

        fn leader(&self) -> Option<NodeId> {
            self.nodes
                .iter()
                .find(|(id, n)| !self.minority.contains(id) && n.role() == Role::Leader)
                .map(|(id, _)| *id)
        }

        fn run_until(&mut self, mut f: impl FnMut(&Self) -> bool) {
            for _ in 0..400 {
                if f(self) {
                    return;
                }
                self.step_time();
            }
            panic!("condition not reached in 400 ticks");
        }
    }

    fn put(key: &str) -> Command {
        Command::PutConfig {
            key: key.into(),
            value: vec![1],
            preferred_site: None,
        }
    }

    #[test]
    fn elects_replicates_and_snapshots_deterministically() {
        let mut sim = Sim::new(3);
        sim.run_until(|s| s.leader().is_some());
        let leader = sim.leader().unwrap();
        let follower = if leader == 1 { 2 } else { 1 };
        assert!(matches!(
            sim.nodes.get_mut(&follower).unwrap().propose(1, &put("queue/a")),
            Err(ProposeError::NotLeader { leader: Some(l) }) if l == leader
        ));
        // One at a time, so that snapshots fall at several indexes.
        for i in 0..12 {
            sim.nodes
                .get_mut(&leader)
                .unwrap()
                .propose(i, &put(&format!("queue/q{i}")))
                .unwrap();
            sim.run_until(|s| s.results.contains_key(&i));
        }
        assert!(sim.results.values().all(|r| r.is_ok()));
        sim.run_until(|s| {
            let applied: Vec<u64> = s.nodes.values().map(|n| n.applied).collect();
            applied.iter().all(|&a| a == applied[0])
        });
        let states: Vec<&ClusterState> = sim.nodes.values().map(|n| &*n.state).collect();
        assert!(states.iter().all(|s| *s == states[0]));
        assert_eq!(states[0].config.len(), 12);
        assert_eq!(states[0].placement.len(), 12);
        // snapshot_every = 5: snapshots were taken and the log compacted.
        let status = sim.nodes[&leader].status(sim.now);
        assert!(status.snapshot_index >= 10, "{status:?}");
        assert!(status.first_index > 2);
        assert!(sim.nodes.values().all(|n| n.view(sim.now).lease_valid));
    }

    #[test]
    fn joining_node_catches_up_through_a_snapshot() {
        let mut sim = Sim::new(3);
        sim.run_until(|s| s.leader().is_some());
        let leader = sim.leader().unwrap();
        for i in 0..20 {
            sim.nodes
                .get_mut(&leader)
                .unwrap()
                .propose(i, &put(&format!("agent/{i}")))
                .unwrap();
        }
        sim.run_until(|s| s.results.len() == 20);
        sim.add_empty(4);
        assert_eq!(sim.nodes[&4].role(), Role::Follower);
        sim.nodes
            .get_mut(&leader)
            .unwrap()
            .propose_voter_change(100, &VoterChange::Add(member(4)))
            .unwrap();
        sim.run_until(|s| s.results.contains_key(&100));
        assert!(sim.results[&100].is_ok(), "{:?}", sim.results[&100]);
        sim.run_until(|s| s.nodes[&4].applied == s.nodes[&leader].applied);
        assert_eq!(*sim.nodes[&4].state, *sim.nodes[&leader].state);
        assert_eq!(sim.nodes[&4].conf_state.voters.len(), 4);
        assert_eq!(sim.nodes[&4].state.members[&4].status, MemberStatus::Active);

        // Remove a follower; the rest go on.
        let gone = (1..=3).find(|&id| id != leader).unwrap();
        sim.nodes
            .get_mut(&leader)
            .unwrap()
            .propose_voter_change(101, &VoterChange::Remove(gone))
            .unwrap();
        sim.run_until(|s| s.results.contains_key(&101));
        assert!(sim.results[&101].is_ok());
        assert_eq!(sim.nodes[&leader].conf_state.voters.len(), 3);
        assert_eq!(
            sim.nodes[&leader].state.members[&gone].status,
            MemberStatus::Removed
        );
    }

    #[test]
    fn removing_the_leader_hands_over_first() {
        let mut sim = Sim::new(3);
        sim.run_until(|s| s.leader().is_some());
        let old = sim.leader().unwrap();
        let err = sim
            .nodes
            .get_mut(&old)
            .unwrap()
            .propose_voter_change(1, &VoterChange::Remove(old))
            .unwrap_err();
        let ProposeError::NotLeader { leader: Some(next) } = err else {
            panic!("unexpected {err:?}");
        };
        sim.run_until(|s| s.leader() == Some(next));
        sim.run_until(|s| !s.nodes[&next].node.raft.has_pending_conf());
        sim.nodes
            .get_mut(&next)
            .unwrap()
            .propose_voter_change(2, &VoterChange::Remove(old))
            .unwrap();
        sim.run_until(|s| s.results.contains_key(&2));
        assert!(sim.results[&2].is_ok());
        assert!(!sim.nodes[&next].conf_state.voters.contains(&old));
    }

    /// Cuts the leader and `minority_size - 1` followers off. At every tick, the nodes in good
    /// standing must all follow one leader: the old term's leases end before a successor exists.
    fn leases_never_overlap(n: u64, minority_size: usize) {
        let mut sim = Sim::new(n);
        sim.run_until(|s| s.leader().is_some());
        sim.step_time();
        let old = sim.leader().unwrap();
        assert!(sim.nodes.values().all(|n| n.view(sim.now).lease_valid));
        let partners = sim.nodes.keys().copied().filter(|&id| id != old);
        sim.minority = std::iter::once(old)
            .chain(partners.take(minority_size - 1))
            .collect();
        let cut = sim.now;
        let mut minority_lease_end = None;
        sim.run_until(|s| {
            let standing: Vec<ClusterView> = s
                .nodes
                .values()
                .map(|n| n.view(s.now))
                .filter(|v| v.lease_valid)
                .collect();
            let leaders: std::collections::BTreeSet<_> =
                standing.iter().map(|v| v.leader).collect();
            assert!(
                leaders.len() <= 1,
                "two leaders in good standing: {leaders:?}"
            );
            let minority_standing = standing.iter().any(|v| s.minority.contains(&v.node_id));
            if minority_lease_end.is_none() && !minority_standing {
                minority_lease_end = Some(s.now - cut);
            }
            s.leader().is_some_and(|l| l != old) && standing.len() == n as usize - minority_size
        });
        let lasted = minority_lease_end.unwrap();
        assert!(
            lasted <= TICK * 10,
            "minority stayed in good standing for {lasted:?}"
        );
    }

    #[test]
    fn leases_never_overlap_when_the_leader_is_cut_off() {
        leases_never_overlap(3, 1);
    }

    #[test]
    fn leases_never_overlap_when_a_minority_with_the_leader_is_cut_off() {
        leases_never_overlap(5, 2);
    }

    #[test]
    fn timing_config_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = config(1);
        bad.heartbeat_tick = 4;
        let storage = RaftStorage::open(dir.path()).unwrap();
        let err = RaftCore::open(&bad, storage, &[member(1)]).err().unwrap();
        assert!(err.to_string().contains("lease"), "{err}");
        bad.node_id = 0;
        let storage = RaftStorage::open(dir.path()).unwrap();
        assert!(RaftCore::open(&bad, storage, &[member(1)]).is_err());
        // Nothing was written by the refused starts.
        assert!(RaftStorage::open(dir.path()).unwrap().is_fresh());
    }

    #[test]
    fn bootstrap_list_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let storage = RaftStorage::open(dir.path()).unwrap();
        let err = RaftCore::open(&config(9), storage, &[member(1), member(2)])
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not in its own bootstrap list"),
            "{err}"
        );
        let storage = RaftStorage::open(dir.path()).unwrap();
        let err = RaftCore::open(&config(1), storage, &[member(1), member(1)])
            .err()
            .unwrap();
        assert!(err.to_string().contains("distinct"), "{err}");
    }

    #[test]
    fn bad_messages_are_refused() {
        let msg = {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = 2;
            m.to = 1;
            m.term = 5;
            m.commit = 1_000;
            m.write_to_bytes().unwrap()
        };
        assert!(matches!(
            RaftCore::decode_message(1, 3, &msg),
            Err(StepError::Sender {
                claimed: 2,
                from: 3
            })
        ));
        assert!(matches!(
            RaftCore::decode_message(4, 2, &msg),
            Err(StepError::Recipient { to: 1, me: 4 })
        ));
        assert!(matches!(
            RaftCore::decode_message(1, 2, &[0xff, 0xff, 0xff]),
            Err(StepError::Decode(_))
        ));
        let mut sim = Sim::new(3);
        let decoded = RaftCore::decode_message(1, 2, &msg).unwrap();
        let node = sim.nodes.get_mut(&1).unwrap();
        assert!(matches!(
            node.step(decoded, sim.now),
            Err(StepError::Refused(_))
        ));
        let mut local = Message::default();
        local.set_msg_type(MessageType::MsgHup);
        local.from = 2;
        local.to = 1;
        assert!(node.step(local, sim.now).is_err());
    }
}

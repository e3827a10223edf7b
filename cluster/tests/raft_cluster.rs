//! In-process Raft clusters: real storage in temporary directories, real timers, peers connected
//! through channels that can drop chosen links to simulate partitions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_cluster::raft::{
    ClusterView, ProposeError, RaftConfig, RaftHandle, RaftStatus, Role, start,
};
use switchyard_cluster::state::{ActorKey, ClusterState, Command, Member, MemberStatus, NodeId};
use tempfile::TempDir;
use tokio::sync::mpsc;

const TICK: Duration = Duration::from_millis(50);

fn member(id: NodeId) -> Member {
    Member {
        id,
        name: format!("node{id}"),
        site: if id <= 2 { "east" } else { "west" }.into(),
        raft_addr: format!("127.0.0.1:{}", 7100 + id),
        sip_addr: format!("127.0.0.1:{}", 5100 + id),
        http_addr: format!("127.0.0.1:{}", 8100 + id),
        status: MemberStatus::Active,
        joined_at_index: 0,
    }
}

fn put(key: impl Into<String>) -> Command {
    let key = key.into();
    Command::PutConfig {
        value: key.as_bytes().to_vec(),
        key,
        preferred_site: None,
    }
}

type Handles = Arc<Mutex<HashMap<NodeId, RaftHandle>>>;
type Links = Arc<Mutex<HashSet<(NodeId, NodeId)>>>;

struct Cluster {
    dirs: BTreeMap<NodeId, TempDir>,
    handles: Handles,
    /// Directed links whose messages are dropped.
    cut: Links,
    bootstrap: Vec<Member>,
    snapshot_every: u64,
}

impl Cluster {
    async fn new(n: u64, snapshot_every: u64) -> Self {
        let mut cluster = Self {
            dirs: BTreeMap::new(),
            handles: Arc::default(),
            cut: Arc::default(),
            bootstrap: (1..=n).map(member).collect(),
            snapshot_every,
        };
        for id in 1..=n {
            cluster.dirs.insert(id, tempfile::tempdir().unwrap());
            cluster.start_node(id, true).await;
        }
        cluster
    }

    /// Starts (or restarts) node `id` over its directory.
    async fn start_node(&mut self, id: NodeId, initial: bool) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().unwrap());
        let mut config = RaftConfig::new(id, dir.path());
        config.tick = TICK;
        config.snapshot_every = self.snapshot_every;
        if initial {
            config.bootstrap = self.bootstrap.clone();
        }
        let (tx, mut rx) = mpsc::channel::<(NodeId, Vec<u8>)>(4096);
        let handle = start(config, tx).await.unwrap();
        self.handles.lock().unwrap().insert(id, handle);
        let (handles, cut) = (Arc::clone(&self.handles), Arc::clone(&self.cut));
        tokio::spawn(async move {
            while let Some((to, bytes)) = rx.recv().await {
                if cut.lock().unwrap().contains(&(id, to)) {
                    continue;
                }
                let peer = handles.lock().unwrap().get(&to).cloned();
                if let Some(peer) = peer {
                    // A full or stopped peer loses the message, like a network would.
                    let _ = peer.step(id, &bytes);
                }
            }
        });
    }

    fn handle(&self, id: NodeId) -> RaftHandle {
        self.handles.lock().unwrap()[&id].clone()
    }

    fn live(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.handles.lock().unwrap().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn view(&self, id: NodeId) -> Arc<ClusterView> {
        self.handle(id).view().borrow().clone()
    }

    async fn stop(&self, id: NodeId) {
        let handle = self.handles.lock().unwrap().remove(&id).unwrap();
        handle.shutdown().await.unwrap();
    }

    /// Drops all traffic between `group` and the other nodes.
    fn partition(&self, group: &[NodeId]) {
        let mut cut = self.cut.lock().unwrap();
        for &a in group {
            for b in self.dirs.keys().copied().filter(|b| !group.contains(b)) {
                cut.insert((a, b));
                cut.insert((b, a));
            }
        }
    }

    fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    /// A leader in good standing among `among`.
    async fn leader_among(&self, among: &[NodeId], timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        loop {
            for &id in among {
                let v = self.view(id);
                if v.role == Role::Leader && v.lease_valid {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn leader(&self) -> NodeId {
        self.leader_among(&self.live(), Duration::from_secs(5))
            .await
    }

    /// Proposes through whichever node leads, following `NotLeader` hints and retrying what was
    /// certainly not applied.
    async fn propose(&self, command: Command) -> Result<u64, ProposeError> {
        let live = self.live();
        let mut target = live
            .iter()
            .copied()
            .find(|&id| self.view(id).role == Role::Leader)
            .unwrap_or(live[0]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(handle) = self.handles.lock().unwrap().get(&target).cloned() else {
                target = self.live()[0];
                continue;
            };
            let hint = match handle.propose(command.clone()).await {
                Err(ProposeError::NotLeader { leader }) => leader,
                Err(ProposeError::Dropped(_)) => None,
                other => return other,
            };
            if Instant::now() > deadline {
                return Err(ProposeError::Dropped("no leader took the proposal".into()));
            }
            let live = self.live();
            target = hint.filter(|l| live.contains(l)).unwrap_or_else(|| {
                // No usable hint: try the next node.
                let i = live.iter().position(|&n| n == target).unwrap_or(0);
                live[(i + 1) % live.len()]
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every node in `ids` has applied the same index, at least `index`, and returns
    /// their (identical) state.
    async fn converged(&self, ids: &[NodeId], index: u64) -> Arc<ClusterState> {
        self.wait_for("convergence", Duration::from_secs(10), |c| {
            let views: Vec<_> = ids.iter().map(|&id| c.view(id)).collect();
            views
                .iter()
                .all(|v| v.applied_index >= index && v.applied_index == views[0].applied_index)
        })
        .await;
        let views: Vec<_> = ids.iter().map(|&id| self.view(id)).collect();
        for v in &views {
            assert_eq!(*v.state, *views[0].state, "node {} diverged", v.node_id);
        }
        Arc::clone(&views[0].state)
    }

    async fn status(&self, id: NodeId) -> RaftStatus {
        self.handle(id).status().await.unwrap()
    }

    async fn shutdown(self) {
        for id in self.live() {
            self.stop(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_apply_identically() {
    let cluster = Cluster::new(3, 1000).await;
    let leader = cluster.leader().await;
    let follower = cluster.live().into_iter().find(|&id| id != leader).unwrap();
    assert!(matches!(
        cluster.handle(follower).propose(put("queue/x")).await,
        Err(ProposeError::NotLeader { leader: Some(l) }) if l == leader
    ));
    let mut last = 0;
    for i in 0..50 {
        last = cluster.propose(put(format!("queue/q{i}"))).await.unwrap();
    }
    let state = cluster.converged(&cluster.live(), last).await;
    assert_eq!(state.config.len(), 50);
    assert_eq!(state.placement.len(), 50);
    assert_eq!(state.members.len(), 3);
    // Every node in good standing may act for exactly the actors placed on it.
    for id in cluster.live() {
        let view = cluster.view(id);
        assert!(view.lease_valid);
        let mine = state.placement.values().filter(|p| p.node == id).count();
        let may = state
            .placement
            .keys()
            .filter(|k| view.may_act_for(k).is_some())
            .count();
        assert_eq!(mine, may);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_within_two_seconds_of_leader_loss() {
    for n in [3, 5] {
        let cluster = Cluster::new(n, 1000).await;
        let old = cluster.leader().await;
        let index = cluster.propose(put("queue/before")).await.unwrap();
        cluster.converged(&cluster.live(), index).await;
        let killed = Instant::now();
        cluster.stop(old).await;
        let rest = cluster.live();
        let new = cluster.leader_among(&rest, Duration::from_secs(2)).await;
        let took = killed.elapsed();
        println!("{n} nodes: leader {old} stopped, node {new} leads after {took:?}");
        assert!(took < Duration::from_secs(2), "failover took {took:?}");
        let index = cluster.propose(put("queue/after")).await.unwrap();
        let state = cluster.converged(&rest, index).await;
        assert!(state.config.contains_key("queue/before"));
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_minority_loses_lease_and_cannot_commit() {
    let cluster = Cluster::new(5, 1000).await;
    let old = cluster.leader().await;
    let index = cluster.propose(put("agent/1")).await.unwrap();
    cluster.converged(&cluster.live(), index).await;
    let partner = cluster.live().into_iter().find(|&id| id != old).unwrap();
    let minority = [old, partner];
    let majority: Vec<NodeId> = cluster
        .live()
        .into_iter()
        .filter(|id| !minority.contains(id))
        .collect();

    cluster.partition(&minority);
    let cut = Instant::now();
    // The old leader still takes the proposal, but cannot commit it.
    let stranded = tokio::spawn({
        let handle = cluster.handle(old);
        async move { handle.propose(put("agent/stranded")).await }
    });
    cluster
        .wait_for("minority leases to run out", Duration::from_secs(2), |c| {
            minority.iter().all(|&id| !c.view(id).lease_valid)
        })
        .await;
    let lost = cut.elapsed();
    println!("minority lost its lease after {lost:?}");
    assert!(
        lost < Duration::from_millis(1100),
        "lease outlived the election timeout: {lost:?}"
    );

    let new = cluster
        .leader_among(&majority, Duration::from_secs(3))
        .await;
    assert!(!minority.contains(&new));
    let mut last = 0;
    for i in 0..10 {
        last = cluster
            .handle(new)
            .propose(put(format!("agent/m{i}")))
            .await
            .unwrap();
    }
    cluster.converged(&majority, last).await;
    for &id in &minority {
        let v = cluster.view(id);
        assert!(
            v.applied_index < last,
            "minority node {id} applied majority writes"
        );
        assert!(!v.lease_valid);
        assert!(!v.state.config.contains_key("agent/stranded"));
    }
    assert!(
        !stranded.is_finished(),
        "the stranded proposal completed in the minority"
    );

    cluster.heal();
    let state = cluster.converged(&cluster.live(), last).await;
    assert!(state.config.contains_key("agent/m9"));
    assert!(!state.config.contains_key("agent/stranded"));
    // The stranded entry was replaced by the new leader's log.
    let outcome = tokio::time::timeout(Duration::from_secs(5), stranded)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, Err(ProposeError::Dropped(_))),
        "{outcome:?}"
    );
    cluster
        .wait_for("leases after healing", Duration::from_secs(3), |c| {
            c.live().iter().all(|&id| c.view(id).lease_valid)
        })
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_restore_state_from_disk() {
    let mut cluster = Cluster::new(3, 10).await;
    let mut last = 0;
    for i in 0..35 {
        last = cluster.propose(put(format!("did/{i}"))).await.unwrap();
    }
    let before = cluster.converged(&cluster.live(), last).await;

    // A follower goes down, misses writes, comes back from its directory and catches up.
    let leader = cluster.leader().await;
    let follower = cluster.live().into_iter().find(|&id| id != leader).unwrap();
    cluster.stop(follower).await;
    for i in 35..50 {
        last = cluster.propose(put(format!("did/{i}"))).await.unwrap();
    }
    cluster.start_node(follower, false).await;
    let after = cluster.converged(&cluster.live(), last).await;
    assert_eq!(after.config.len(), 50);
    assert!(
        before
            .config
            .iter()
            .all(|(k, v)| after.config.get(k) == Some(v))
    );

    // The whole cluster restarts: the state comes back from snapshots plus log replay.
    for id in cluster.live() {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id, true).await;
    }
    let restored = cluster.converged(&cluster.live(), last).await;
    assert_eq!(*restored, *after);
    last = cluster.propose(put("did/again")).await.unwrap();
    cluster.converged(&cluster.live(), last).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_from_a_snapshot() {
    let cluster = Cluster::new(3, 20).await;
    let leader = cluster.leader().await;
    let lagger = cluster.live().into_iter().find(|&id| id != leader).unwrap();
    let index = cluster.propose(put("queue/first")).await.unwrap();
    cluster.converged(&cluster.live(), index).await;

    cluster.partition(&[lagger]);
    let mut last = 0;
    for i in 0..100 {
        last = cluster.propose(put(format!("queue/q{i}"))).await.unwrap();
    }
    let lagging = cluster.status(lagger).await;
    let leading = cluster.status(cluster.leader().await).await;
    assert!(
        leading.first_index > lagging.last_index + 1,
        "the leader still has the entries the follower misses: {leading:?}"
    );
    cluster.heal();
    let state = cluster.converged(&cluster.live(), last).await;
    assert_eq!(state.config.len(), 101);
    let caught_up = cluster.status(lagger).await;
    assert!(
        caught_up.snapshot_index > lagging.last_index,
        "follower did not install a snapshot: {caught_up:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_added_and_removed_while_writes_flow() {
    let mut cluster = Cluster::new(3, 50).await;
    cluster.leader().await;
    // A node added later starts empty, without a bootstrap list.
    cluster.start_node(4, false).await;
    assert!(cluster.view(4).voters.is_empty());
    let cluster = Arc::new(cluster);

    let writer = tokio::spawn({
        let cluster = Arc::clone(&cluster);
        async move {
            let mut acked = Vec::new();
            for i in 0..150 {
                let key = format!("agent/{i}");
                if cluster.propose(put(key.clone())).await.is_ok() {
                    acked.push(key);
                }
            }
            acked
        }
    });

    let add = async {
        loop {
            let leader = cluster.leader().await;
            match cluster.handle(leader).add_voter(member(4)).await {
                Ok(index) => return index,
                Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Dropped(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("add_voter: {e}"),
            }
        }
    };
    let added = add.await;
    cluster.converged(&[1, 2, 3, 4], added).await;
    assert_eq!(cluster.view(4).voters.len(), 4);

    let leader = cluster.leader().await;
    let removed = (1..=3).find(|&id| id != leader).unwrap();
    let removal = loop {
        let leader = cluster.leader().await;
        match cluster.handle(leader).remove_voter(removed).await {
            Ok(index) => break index,
            Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Dropped(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("remove_voter: {e}"),
        }
    };
    let acked = writer.await.unwrap();
    assert_eq!(acked.len(), 150, "writes failed during membership changes");
    let remaining: Vec<NodeId> = [1, 2, 3, 4]
        .into_iter()
        .filter(|&id| id != removed)
        .collect();
    let last = cluster
        .view(cluster.leader().await)
        .applied_index
        .max(removal);
    let state = cluster.converged(&remaining, last).await;
    assert!(acked.iter().all(|k| state.config.contains_key(k)));
    assert_eq!(state.members[&removed].status, MemberStatus::Removed);
    assert_eq!(state.members[&4].status, MemberStatus::Active);
    assert!(state.placement.values().all(|p| p.node != removed));
    assert_eq!(cluster.view(remaining[0]).voters.len(), 3);
    // The removed node no longer hears from a leader, so it drops out of good standing.
    cluster
        .wait_for(
            "removed node to lose its lease",
            Duration::from_secs(3),
            |c| !c.view(removed).lease_valid,
        )
        .await;
    Arc::try_unwrap(cluster).ok().unwrap().shutdown().await;
}

/// Concurrent writers, a leader crash and a partition: every acknowledged write is applied
/// exactly once on every node, nothing certainly-failed appears, nothing appears twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_history_has_no_lost_or_duplicated_writes() {
    let cluster = Arc::new(Cluster::new(5, 40).await);
    cluster.leader().await;
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut writers = Vec::new();
    for w in 0..3 {
        let cluster = Arc::clone(&cluster);
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while Instant::now() < stop_at {
                let key = format!("queue/w{w}-{i}");
                i += 1;
                let outcome =
                    tokio::time::timeout(Duration::from_secs(3), cluster.propose(put(key.clone())))
                        .await
                        .unwrap_or(Err(ProposeError::Unknown("timed out".into())));
                outcomes.push((key, outcome));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.leader().await;
    cluster.stop(leader).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = cluster.live()[0];
    cluster.partition(&[victim]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.heal();

    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }
    let last = cluster.view(cluster.leader().await).commit_index;
    let state = cluster.converged(&cluster.live(), last).await;

    let attempted: BTreeSet<&str> = outcomes.iter().map(|(k, _)| k.as_str()).collect();
    let mut indexes = BTreeSet::new();
    let (mut ok, mut ambiguous) = (0, 0);
    for (key, outcome) in &outcomes {
        match outcome {
            Ok(index) => {
                ok += 1;
                assert!(
                    indexes.insert(*index),
                    "two writes acknowledged at index {index}"
                );
                assert!(
                    state.config.contains_key(key),
                    "acknowledged write {key} lost"
                );
            }
            Err(ProposeError::Unknown(_)) => ambiguous += 1,
            Err(e) => assert!(
                !state.config.contains_key(key),
                "{key} failed ({e}) but applied"
            ),
        }
    }
    let present = state
        .config
        .keys()
        .filter(|k| k.starts_with("queue/w"))
        .count();
    assert!(
        state.config.keys().all(|k| attempted.contains(k.as_str())),
        "a write nobody made appeared"
    );
    // Each applied put raises the revision once: a duplicate would show up here.
    assert_eq!(state.config_revision as usize, present, "duplicated writes");
    assert!(present >= ok && present <= ok + ambiguous);
    println!(
        "history: {} attempts, {ok} acknowledged, {ambiguous} ambiguous, {present} applied",
        outcomes.len()
    );
    assert!(ok > 50, "too few writes went through: {ok}");
    // Placement covers every queue on live, active members.
    for key in state.config.keys() {
        let actor = ActorKey::from_config_key(key).unwrap();
        assert!(state.placement.contains_key(&actor));
    }
    Arc::try_unwrap(cluster).ok().unwrap().shutdown().await;
}

//! Commit latency and throughput of a three-node in-process Raft group whose logs are fsynced
//! redb files in temporary directories.
//!
//! `cargo run --release -p switchyard-cluster --example raft_bench -- [SECONDS] [CONCURRENCY]`
//!
//! Phase 1 proposes one command at a time (latency = propose until applied on the leader);
//! phase 2 keeps CONCURRENCY proposals in flight for SECONDS and reports applied writes/s.
//! Writes are 100-byte configuration documents over 1,000 keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_cluster::raft::{RaftConfig, RaftHandle, Role, start};
use switchyard_cluster::state::{Command, Member, MemberStatus, NodeId};
use tokio::sync::mpsc;

const NODES: u64 = 3;
const SEQUENTIAL: usize = 500;

fn command(i: usize) -> Command {
    Command::PutConfig {
        key: format!("did/{}", i % 1000),
        value: vec![b'x'; 100],
        preferred_site: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    println!(
        "{what}: n={} p50={:?} p99={:?} max={:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let concurrency: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);

    let members: Vec<Member> = (1..=NODES)
        .map(|id| Member {
            id,
            name: format!("bench{id}"),
            site: "local".into(),
            raft_addr: format!("127.0.0.1:{}", 7200 + id),
            sip_addr: String::new(),
            http_addr: String::new(),
            status: MemberStatus::Active,
            joined_at_index: 0,
        })
        .collect();
    let handles: Arc<Mutex<HashMap<NodeId, RaftHandle>>> = Arc::default();
    let mut dirs = Vec::new();
    for id in 1..=NODES {
        let dir = tempfile::tempdir()?;
        let mut config = RaftConfig::new(id, dir.path());
        config.bootstrap = members.clone();
        dirs.push(dir);
        let (tx, mut rx) = mpsc::channel::<(NodeId, Vec<u8>)>(8192);
        let handle = start(config, tx).await?;
        handles.lock().map_err(|_| "poisoned")?.insert(id, handle);
        let handles = Arc::clone(&handles);
        tokio::spawn(async move {
            while let Some((to, bytes)) = rx.recv().await {
                let peer = handles.lock().ok().and_then(|h| h.get(&to).cloned());
                if let Some(peer) = peer {
                    let _ = peer.step(id, &bytes);
                }
            }
        });
    }
    let all: Vec<RaftHandle> = handles
        .lock()
        .map_err(|_| "poisoned")?
        .values()
        .cloned()
        .collect();
    let leader = loop {
        if let Some(h) = all.iter().find(|h| h.view().borrow().role == Role::Leader) {
            break h.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "3 nodes, leader {}, logs fsynced in {}",
        leader.node_id(),
        std::env::temp_dir().display()
    );

    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        leader.propose(command(i)).await?;
        latencies.push(t.elapsed());
    }
    report("sequential commit latency", latencies);

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < deadline {
                let t = Instant::now();
                if leader.propose(command(i)).await.is_ok() {
                    latencies.push(t.elapsed());
                }
                i += concurrency;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed();
    println!(
        "{concurrency} in flight for {elapsed:.1?}: {} writes, {:.0} writes/s",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    report("concurrent commit latency", latencies);

    for h in all {
        h.shutdown().await?;
    }
    Ok(())
}

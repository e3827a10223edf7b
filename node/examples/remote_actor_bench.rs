//! What a remote actor message costs next to a local one: two QUIC meshes on loopback, node 1
//! holding proxies and node 2 a mailroom with the real actors (an agent actor for asks, a
//! recording queue for tells), as in a cluster.
//!
//! `cargo run --release -p switchyard --example remote_actor_bench [samples]`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchyard::acd::agent::{AgentArgs, spawn_agent};
use switchyard::acd::{AgentMsg, QueueMsg};
use switchyard::config::{AgentSpec, RegistrarConfig};
use switchyard::registrar::Registrar;
use switchyard::remote::mailroom::Mailroom;
use switchyard::remote::proxy::{Link, spawn_agent_proxy, spawn_queue_proxy};
use switchyard::remote::{Fence, Hosted};
use switchyard_cluster::Directory;
use switchyard_cluster::mesh::{self, MeshConfig};
use switchyard_cluster::raft::{ClusterView, Role};
use switchyard_cluster::state::{ActorKey, ClusterState, Placement};
use switchyard_cluster::tls;
use tokio::sync::{mpsc, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A queue stand-in that reports every message's arrival.
struct Recorder;

impl Actor for Recorder {
    type Msg = QueueMsg;
    type State = mpsc::UnboundedSender<Instant>;
    type Arguments = mpsc::UnboundedSender<Instant>;

    async fn pre_start(
        &self,
        _myself: ActorRef<QueueMsg>,
        tx: mpsc::UnboundedSender<Instant>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<QueueMsg>,
        _msg: QueueMsg,
        tx: &mut mpsc::UnboundedSender<Instant>,
    ) -> Result<(), ActorProcessingErr> {
        tx.send(Instant::now()).map_err(|_| "bench receiver gone")?;
        Ok(())
    }
}

fn view(me: u64) -> Arc<ClusterView> {
    let mut state = ClusterState::default();
    for key in [ActorKey::agent("2001"), ActorKey::queue("q")] {
        state.placement.insert(key, Placement { node: 2, epoch: 1 });
    }
    Arc::new(ClusterView {
        node_id: me,
        role: Role::Follower,
        leader: Some(2),
        term: 1,
        commit_index: 1,
        applied_index: 1,
        voters: vec![1, 2],
        state: Arc::new(state),
        lease_valid: true,
    })
}

fn tell() -> QueueMsg {
    QueueMsg::AgentUnavailable {
        agent_id: "2001".into(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let samples: usize = std::env::args().nth(1).map_or(Ok(20_000), |a| a.parse())?;

    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    tls::create_ca(&ca)?;
    let mut meshes = Vec::new();
    for id in [1u64, 2] {
        let certs = dir.path().join(format!("node-{id}"));
        tls::issue_node_cert(&ca, id, "bench", &certs)?;
        let mut config =
            MeshConfig::new(id, "127.0.0.1:0".parse()?, tls::load_node_identity(&certs)?);
        config.send_queue = samples.max(1024);
        meshes.push(mesh::start(config).await?);
    }
    let (mesh2, incoming2) = meshes.pop().ok_or("node 2")?;
    let (mesh1, _incoming1) = meshes.pop().ok_or("node 1")?;
    mesh1.set_peer(2, mesh2.local_addr());

    // Node 2: the real agent actor and a recording queue, behind a mailroom.
    let hosted = Hosted::default();
    let agent = spawn_agent(AgentArgs {
        spec: AgentSpec {
            extension: "2001".into(),
            password: "pw".into(),
            queues: Vec::new(),
            available_on_register: true,
            skills: Default::default(),
            pool: String::new(),
            site: String::new(),
            team: None,
        },
        policies: HashMap::new(),
        queues: Directory::default(),
        fence: Fence::open(),
        restored: None,
        failover: None,
    })
    .await?;
    hosted.agents.insert("2001".into(), agent.clone());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (queue, _) = Actor::spawn(None, Recorder, arrived_tx).await?;
    hosted.queues.insert("q".into(), queue.clone());
    let (_view2_tx, view2) = watch::channel(view(2));
    let mailroom = Mailroom {
        view: view2,
        mesh: mesh2.clone(),
        hosted,
        calls: Directory::default(),
        queues: Directory::default(),
        registrar: Arc::new(Mutex::new(Registrar::new(
            RegistrarConfig::default(),
            HashMap::new(),
            [1; 32],
        ))),
        failover: None,
    };
    tokio::spawn(mailroom.run(incoming2));

    // Node 1: proxies.
    let link = |key: ActorKey| Link {
        key,
        home: 2,
        epoch: 1,
        mesh: mesh1.clone(),
    };
    let agent_proxy = spawn_agent_proxy(link(ActorKey::agent("2001"))).await?;
    let queue_proxy = spawn_queue_proxy(link(ActorKey::queue("q"))).await?;

    let timeout = Some(Duration::from_secs(5));
    for (name, target) in [("local", &agent), ("remote", &agent_proxy)] {
        for _ in 0..1000 {
            target.call(AgentMsg::Snapshot, timeout).await?;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            target.call(AgentMsg::Snapshot, timeout).await?;
            times.push(start.elapsed());
        }
        report(&format!("ask  (agent Snapshot), {name}"), &mut times);
    }

    for (name, target) in [("local", &queue), ("remote", &queue_proxy)] {
        for _ in 0..1000 {
            target.cast(tell())?;
            arrived.recv().await.ok_or("recorder gone")?;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            target.cast(tell())?;
            let at = arrived.recv().await.ok_or("recorder gone")?;
            times.push(at - start);
        }
        report(&format!("tell (queue message), {name}"), &mut times);
    }

    for (name, target) in [("local", &queue), ("remote", &queue_proxy)] {
        let start = Instant::now();
        for _ in 0..samples {
            target.cast(tell())?;
        }
        for _ in 0..samples {
            arrived.recv().await.ok_or("recorder gone")?;
        }
        let elapsed = start.elapsed();
        println!(
            "tell throughput, {name}: {samples} in {elapsed:.2?} = {:.0}/s",
            samples as f64 / elapsed.as_secs_f64()
        );
    }
    mesh1.shutdown().await;
    mesh2.shutdown().await;
    Ok(())
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name}: p50 {:?}  p99 {:?}  max {:?}  ({} samples)",
        at(0.50),
        at(0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}

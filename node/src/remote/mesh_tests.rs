//! Proxies, mailrooms and the postman over real QUIC meshes on loopback, with hand-made views
//! (no Raft): asks and tells reach an actor on another node, a moved actor is forwarded to once,
//! and a second miss fails at once instead of timing out.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchyard_cluster::Directory;
use switchyard_cluster::mesh::{self, Mesh, MeshConfig};
use switchyard_cluster::raft::ClusterView;
use switchyard_cluster::state::{ActorKey, NodeId, Placement};
use switchyard_cluster::tls;
use tokio::sync::{mpsc, watch};

use super::mailroom::Mailroom;
use super::proxy::{Link, spawn_agent_proxy};
use super::tests::view;
use super::{CallAddr, Fence, Hosted, Postman};
use crate::acd::agent::{AgentArgs, AgentStatus, spawn_agent};
use crate::acd::{AgentMsg, OfferOutcome, QueueMsg, RequestedState};
use crate::call::{CallMsg, WireCallMsg};
use crate::config::{AgentSpec, RegistrarConfig};
use crate::registrar::Registrar;

const AGENT: &str = "2001";
const CONTACT: &str = "sip:2001@127.0.0.1:5999";

struct TestNode {
    id: NodeId,
    mesh: Mesh,
    view: watch::Sender<Arc<ClusterView>>,
    hosted: Hosted,
    queues: Directory<String, QueueMsg>,
    calls: Directory<String, CallMsg>,
}

impl TestNode {
    fn place(&self, placed: &[(ActorKey, Placement)]) {
        self.view
            .send_replace(Arc::new(view(self.id, true, placed)));
    }

    fn proxy_link(&self, home: NodeId, epoch: u64) -> Link {
        Link {
            key: ActorKey::agent(AGENT),
            home,
            epoch,
            mesh: self.mesh.clone(),
        }
    }
}

/// Nodes 1..=n, all peers of each other, each with a mailroom, placing nothing yet.
async fn nodes(n: u64) -> (tempfile::TempDir, Vec<TestNode>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    tls::create_ca(&ca).unwrap();
    let mut nodes = Vec::new();
    for id in 1..=n {
        let certs = dir.path().join(format!("node-{id}"));
        tls::issue_node_cert(&ca, id, "test", &certs).unwrap();
        let identity = tls::load_node_identity(&certs).unwrap();
        let config = MeshConfig::new(id, "127.0.0.1:0".parse().unwrap(), identity);
        let (mesh, incoming) = mesh::start(config).await.unwrap();
        let (view_tx, view_rx) = watch::channel(Arc::new(view(id, true, &[])));
        let node = TestNode {
            id,
            mesh: mesh.clone(),
            view: view_tx,
            hosted: Hosted::default(),
            queues: Directory::default(),
            calls: Directory::default(),
        };
        let mailroom = Mailroom {
            view: view_rx,
            mesh,
            hosted: node.hosted.clone(),
            calls: node.calls.clone(),
            queues: node.queues.clone(),
            registrar: Arc::new(Mutex::new(Registrar::new(
                RegistrarConfig::default(),
                HashMap::new(),
                [7; 32],
            ))),
            failover: None,
        };
        tokio::spawn(mailroom.run(incoming));
        nodes.push(node);
    }
    for a in &nodes {
        for b in &nodes {
            if a.id != b.id {
                a.mesh.set_peer(b.id, b.mesh.local_addr());
            }
        }
    }
    (dir, nodes)
}

async fn host_agent(node: &TestNode) -> ActorRef<AgentMsg> {
    let args = AgentArgs {
        spec: AgentSpec {
            extension: AGENT.into(),
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
    };
    let agent = spawn_agent(args).await.unwrap();
    node.hosted.agents.insert(AGENT.into(), agent.clone());
    agent
}

/// Forwards every message it gets to a channel.
struct Recorder<M>(PhantomData<fn() -> M>);

impl<M: ractor::Message> Actor for Recorder<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<M>,
        tx: mpsc::UnboundedSender<M>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<M>,
        msg: M,
        tx: &mut mpsc::UnboundedSender<M>,
    ) -> Result<(), ActorProcessingErr> {
        tx.send(msg).map_err(|_| "recorder's receiver is gone")?;
        Ok(())
    }
}

async fn recorder<M: ractor::Message>() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Recorder(PhantomData), tx).await.unwrap();
    (actor, rx)
}

async fn next<M>(rx: &mut mpsc::UnboundedReceiver<M>) -> M {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("nothing within 5 s")
        .expect("recorder stopped")
}

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(3));

#[tokio::test]
async fn asks_and_tells_reach_an_agent_on_another_node() {
    let (_dir, nodes) = nodes(2).await;
    let home = Placement { node: 2, epoch: 1 };
    for node in &nodes {
        node.place(&[(ActorKey::agent(AGENT), home)]);
    }
    host_agent(&nodes[1]).await;
    let proxy = spawn_agent_proxy(nodes[0].proxy_link(2, 1)).await.unwrap();

    proxy
        .cast(AgentMsg::Contacts {
            node: 1,
            contacts: vec![CONTACT.into()],
        })
        .unwrap();
    // Tells are ordered among themselves, but an ask may overtake an earlier tell.
    let mut snapshot = ractor::call_t!(proxy, AgentMsg::Snapshot, 3000).unwrap();
    for _ in 0..100 {
        if snapshot.status == AgentStatus::Available {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        snapshot = ractor::call_t!(proxy, AgentMsg::Snapshot, 3000).unwrap();
    }
    assert_eq!(snapshot.status, AgentStatus::Available, "{snapshot:?}");
    assert_eq!(snapshot.contacts, [CONTACT]);

    let reserve = |call: &str| {
        let call = call.to_owned();
        move |reply| AgentMsg::Reserve {
            call_id: call,
            queue: "sales".into(),
            reply,
        }
    };
    let first = proxy.call(reserve("c1"), TIMEOUT).await.unwrap();
    assert!(matches!(first, CallResult::Success(Some(ref c)) if c == &[CONTACT]));
    let second = proxy.call(reserve("c2"), TIMEOUT).await.unwrap();
    assert!(
        matches!(second, CallResult::Success(None)),
        "one call at a time"
    );

    let busy = proxy
        .call(
            |reply| AgentMsg::SetState {
                state: RequestedState::LoggedOut,
                reply,
            },
            TIMEOUT,
        )
        .await
        .unwrap();
    assert!(matches!(busy, CallResult::Success(Err(ref e)) if e.contains("offered")));
}

#[tokio::test]
async fn a_moved_actor_is_forwarded_once_and_a_second_miss_fails_at_once() {
    let (_dir, nodes) = nodes(3).await;
    let key = ActorKey::agent(AGENT);
    let now_on_2 = Placement { node: 2, epoch: 2 };
    nodes[1].place(&[(key.clone(), now_on_2)]);
    nodes[2].place(&[(key.clone(), now_on_2)]);
    host_agent(&nodes[1]).await;
    // Node 1 still believes the agent lives on node 3 (epoch 1).
    let stale = spawn_agent_proxy(nodes[0].proxy_link(3, 1)).await.unwrap();
    let snapshot = ractor::call_t!(stale, AgentMsg::Snapshot, 3000).unwrap();
    assert_eq!(snapshot.extension, AGENT);

    // Node 2 lets the agent go and believes it moved to node 3; node 3 still says node 2.
    nodes[1].hosted.agents.remove(&AGENT.to_owned());
    nodes[1].place(&[(key.clone(), Placement { node: 3, epoch: 3 })]);
    let started = Instant::now();
    let lost = stale.call(AgentMsg::Snapshot, TIMEOUT).await.unwrap();
    assert!(
        matches!(lost, CallResult::SenderError),
        "must fail, not answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a refused ask fails at once, not after the caller's timeout"
    );
}

#[tokio::test]
async fn the_postman_reaches_calls_on_other_nodes_and_ended_calls_free_the_agent() {
    let (_dir, nodes) = nodes(2).await;
    let (call, mut at_call) = recorder::<CallMsg>().await;
    nodes[0].calls.insert("live".into(), call);
    let (queue, mut at_queue) = recorder::<QueueMsg>().await;
    nodes[0].queues.insert("sales".into(), queue);
    let postman = Postman::new(2, Directory::default(), Some(nodes[1].mesh.clone()));

    let overflow = WireCallMsg::Overflow {
        queue: "sales".into(),
        action: crate::config::Overflow::Goodbye,
    };
    let live = CallAddr {
        node: 1,
        call_id: "live".into(),
    };
    postman.deliver(&live, overflow).unwrap();
    assert!(matches!(
        next(&mut at_call).await,
        CallMsg::Overflow { queue, .. } if queue == "sales"
    ));

    let offer = WireCallMsg::Offer {
        agent_id: AGENT.into(),
        queue: "sales".into(),
        ring_timeout_secs: 15,
        contacts: vec![CONTACT.into()],
        offered_ms: 0,
    };
    let ended = CallAddr {
        node: 1,
        call_id: "ended".into(),
    };
    postman.deliver(&ended, offer).unwrap();
    assert!(matches!(
        next(&mut at_queue).await,
        QueueMsg::OfferOutcome { call, agent_id, outcome: OfferOutcome::CallerAbandoned }
            if call == ended && agent_id == AGENT
    ));
}

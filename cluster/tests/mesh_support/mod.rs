//! Shared set-up for the mesh integration tests: a temporary cluster CA, node identities, meshes
//! on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use switchyard_cluster::mesh::{self, Incoming, Mesh, MeshConfig};
use switchyard_cluster::tls::{self, NodeIdentity};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A cluster CA in a temporary directory.
pub struct Ca {
    dir: TempDir,
}

impl Ca {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        tls::create_ca(&dir.path().join("ca")).expect("create CA");
        Self { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Issues (or re-reads) node `id`'s certificate.
    pub fn identity(&self, id: u64) -> NodeIdentity {
        let out = self.dir.path().join(format!("node-{id}"));
        if !out.join("node.pem").exists() {
            tls::issue_node_cert(&self.ca_dir(), id, &format!("test-{id}"), &out)
                .expect("issue node cert");
        }
        tls::load_node_identity(&out).expect("load identity")
    }
}

/// Node `id` listening on `addr`, with short timeouts so failures show quickly in tests.
pub async fn start_at(
    id: u64,
    identity: NodeIdentity,
    addr: SocketAddr,
) -> (Mesh, mpsc::Receiver<Incoming>) {
    let mut config = MeshConfig::new(id, addr, identity);
    config.keep_alive = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(2);
    // Rebinding a port just released by a shut-down node can race the old socket's closing.
    for _ in 0..50 {
        match mesh::start(config.clone()).await {
            Ok(started) => return started,
            Err(mesh::MeshError::Bind { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("start node {id}: {e}"),
        }
    }
    panic!("node {id}: {addr} stayed in use");
}

pub async fn start(ca: &Ca, id: u64) -> (Mesh, mpsc::Receiver<Incoming>) {
    start_at(id, ca.identity(id), "127.0.0.1:0".parse().expect("addr")).await
}

/// Makes every node know every other.
pub fn introduce(meshes: &[&Mesh]) {
    for a in meshes {
        for b in meshes {
            if a.node_id() != b.node_id() {
                a.set_peer(b.node_id(), b.local_addr());
            }
        }
    }
}

/// The next incoming item, or a test failure after [`PATIENCE`].
pub async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("timed out waiting for an incoming message")
        .expect("incoming channel closed")
}

/// Answers every request with its payload reversed, until the channel closes.
pub fn serve_echo(mut rx: mpsc::Receiver<Incoming>) {
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            if let Incoming::Request {
                mut payload, reply, ..
            } = item
            {
                payload.reverse();
                reply.send(payload).expect("reply");
            }
        }
    });
}

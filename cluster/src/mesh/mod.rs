//! The cluster mesh: authenticated QUIC connections between nodes carrying one-way messages and
//! request/response calls, addressed by node id.
//!
//! - **Identity.** Every connection is mutual TLS against the cluster CA (see [`crate::tls`]). A
//!   peer's node id is read from its verified certificate; an [`Envelope`] whose `from` differs
//!   is rejected and the connection closed.
//! - **Connections.** Each node dials the peers it sends to, lazily on first use, and keeps the
//!   connection alive with QUIC keep-alives. Both nodes of a pair may dial each other: each uses
//!   its own outgoing connection for what it sends and serves whatever arrives on incoming ones,
//!   so up to two connections exist per pair. That avoids any tie-breaking race and keeps
//!   reconnection a purely local decision of the sender. A dropped outgoing connection is
//!   redialled when there is traffic for it, with exponential backoff (100 ms doubling to 5 s,
//!   ±20 % jitter; reset once a connection has stayed up for 10 s). A peer that restarts is
//!   noticed when the old connection's `idle_timeout` expires. Any node holding a certificate of
//!   the cluster CA may connect and send; the address book only governs whom we dial.
//! - **One-way messages** ([`Mesh::send`]) never block: they go into a bounded per-peer queue
//!   that drops its *oldest* entry when full (Raft, the main user, prefers fresh messages and
//!   retransmits anyway). They are ordered per (peer, kind): one long-lived unidirectional
//!   stream per kind. Delivery is at most once: frames in flight when a connection drops are lost.
//! - **Requests** ([`Mesh::request`]) each use a fresh bidirectional stream; they fail fast with
//!   [`MeshError::Unreachable`] while the peer is known down and within its backoff.
//! - **Bad input** from a peer (corrupt frame, other protocol version, identity mismatch) closes
//!   that connection with an application close code from [`close_code`] and a reason text, and is
//!   logged; it never panics and never affects other peers.

mod envelope;
mod inbound;
mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::tls::{self, NodeIdentity, TlsError};
pub use envelope::{DEFAULT_MAX_FRAME, Envelope, Frame, PROTOCOL_VERSION};
use peer::Peer;

/// QUIC application error codes the mesh closes connections with. The close reason carries a
/// human-readable explanation.
pub mod close_code {
    use quinn::VarInt;

    /// The node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// The peer was removed from the address book.
    pub const PEER_REMOVED: VarInt = VarInt::from_u32(2);
    /// The peer's address changed; a new connection follows.
    pub const ADDRESS_CHANGED: VarInt = VarInt::from_u32(3);
    /// A frame carried another protocol version.
    pub const VERSION_MISMATCH: VarInt = VarInt::from_u32(0x10);
    /// A frame failed validation.
    pub const CORRUPT_FRAME: VarInt = VarInt::from_u32(0x11);
    /// A frame's `from` differed from the certificate's node id, or the certificate named no node.
    pub const IDENTITY_MISMATCH: VarInt = VarInt::from_u32(0x12);
}

/// QUIC stream error codes (reset / stop-sending) used by the mesh.
pub mod stream_code {
    use quinn::VarInt;

    /// The peer announced a frame over the size limit; only this stream is abandoned.
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(0x20);
    /// The request was dropped without a response.
    pub const NO_RESPONSE: VarInt = VarInt::from_u32(0x21);
}

/// Mesh failures.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A peer speaks another protocol version.
    #[error("mesh protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    /// A frame failed validation.
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// A frame is larger than the configured limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    /// A frame claims a sender other than the certificate's node.
    #[error("frame claims to be from node {claimed} but the peer's certificate is for node {cert}")]
    IdentityMismatch { cert: u64, claimed: u64 },
    /// The node id is not in the address book.
    #[error("node {0} is not a known peer")]
    UnknownPeer(u64),
    /// The peer is known to be down and its reconnection backoff has not elapsed.
    #[error("node {node_id} is unreachable: {reason}")]
    Unreachable { node_id: u64, reason: String },
    /// No response within the request's timeout.
    #[error("request to node {node_id} timed out after {after:?}")]
    Timeout { node_id: u64, after: Duration },
    /// The peer dropped the request without responding.
    #[error("the peer dropped the request without responding")]
    NoResponse,
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(String),
    /// A stream failed.
    #[error("stream: {0}")]
    Stream(String),
    /// Certificates or TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid mesh configuration: {0}")]
    Config(String),
    /// The mesh was shut down.
    #[error("the mesh is shut down")]
    Shutdown,
}

impl MeshError {
    /// The close code for errors that end a connection: protocol violations by the peer.
    fn close_code(&self) -> Option<VarInt> {
        match self {
            Self::VersionMismatch { .. } => Some(close_code::VERSION_MISMATCH),
            Self::Corrupt(_) => Some(close_code::CORRUPT_FRAME),
            Self::IdentityMismatch { .. } => Some(close_code::IDENTITY_MISMATCH),
            _ => None,
        }
    }
}

/// Mesh settings. [`MeshConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node's id; must match the id in `identity`'s certificate.
    pub node_id: u64,
    /// UDP address to bind: the node's cluster address.
    pub listen: SocketAddr,
    /// CA, certificate and key.
    pub identity: NodeIdentity,
    /// QUIC keep-alive interval (default 1 s).
    pub keep_alive: Duration,
    /// A connection silent this long is dead (default 5 s). Must exceed `keep_alive`.
    pub idle_timeout: Duration,
    /// Largest frame body accepted or sent (default 16 MiB).
    pub max_frame: usize,
    /// One-way messages queued per peer before the oldest are dropped (default 1024).
    pub send_queue: usize,
    /// Capacity of the [`Incoming`] channel; when the application falls behind, peers' streams
    /// are back-pressured (default 1024).
    pub incoming_queue: usize,
}

impl MeshConfig {
    /// Settings with the defaults.
    pub fn new(node_id: u64, listen: SocketAddr, identity: NodeIdentity) -> Self {
        Self {
            node_id,
            listen,
            identity,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            max_frame: DEFAULT_MAX_FRAME,
            send_queue: 1024,
            incoming_queue: 1024,
        }
    }
}

/// Something a peer sent this node.
#[derive(Debug)]
pub enum Incoming {
    /// A one-way message.
    Message {
        from: u64,
        kind: u16,
        payload: Vec<u8>,
    },
    /// A request; answer through `reply` (dropping it tells the requester there is no answer).
    Request {
        from: u64,
        kind: u16,
        payload: Vec<u8>,
        reply: Responder,
    },
}

/// Answers one [`Incoming::Request`].
#[derive(Debug)]
pub struct Responder {
    kind: u16,
    correlation: u64,
    from: u64,
    max_frame: usize,
    tx: oneshot::Sender<Frame>,
}

impl Responder {
    /// Sends the response. Fails only when the payload exceeds the frame limit, in which case the
    /// requester gets [`MeshError::NoResponse`]. Delivery is not confirmed: a response to a
    /// requester that already gave up is dropped.
    pub fn send(self, payload: Vec<u8>) -> Result<(), MeshError> {
        let frame = Envelope::new(self.kind, self.correlation, self.from, payload)
            .encode(self.max_frame)?;
        // An error means the requester gave up; that is not the responder's problem.
        let _ = self.tx.send(frame);
        Ok(())
    }
}

/// One address-book entry as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub node_id: u64,
    pub addr: SocketAddr,
    /// Whether this node's outgoing connection to the peer is up.
    pub connected: bool,
    /// Smoothed round-trip time of that connection.
    pub rtt: Option<Duration>,
    /// Why the last connection attempt failed or the connection was lost.
    pub last_error: Option<String>,
    /// One-way messages waiting to be sent.
    pub queued: usize,
    /// One-way messages dropped because the queue was full.
    pub dropped: u64,
}

/// Handle to a running mesh. Cheap to clone; dropping the last handle closes the endpoint.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

/// What the background tasks share. It holds no shutdown sender, so the tasks never keep the
/// mesh alive by themselves.
struct Shared {
    node_id: u64,
    max_frame: usize,
    send_queue: usize,
    client_config: quinn::ClientConfig,
    incoming: mpsc::Sender<Incoming>,
}

struct Inner {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
    /// Taken by `shutdown`, so that the socket is released once the tasks are gone.
    endpoint: Mutex<Option<Endpoint>>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    next_correlation: AtomicU64,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(endpoint) = lock(&self.endpoint).take() {
            endpoint.close(close_code::SHUTDOWN, b"mesh dropped");
        }
    }
}

/// Binds the endpoint and starts accepting connections. Returns the handle and the stream of
/// messages and requests from peers.
pub async fn start(config: MeshConfig) -> Result<(Mesh, mpsc::Receiver<Incoming>), MeshError> {
    if config.keep_alive >= config.idle_timeout {
        return Err(MeshError::Config(format!(
            "keep_alive ({:?}) must be shorter than idle_timeout ({:?})",
            config.keep_alive, config.idle_timeout
        )));
    }
    if config.send_queue == 0 || config.incoming_queue == 0 {
        return Err(MeshError::Config("queue sizes must be at least 1".into()));
    }
    if config.max_frame > u32::MAX as usize {
        return Err(MeshError::Config(format!(
            "max_frame {} exceeds the u32 length prefix",
            config.max_frame
        )));
    }
    let cert_node = config.identity.node_id()?;
    if cert_node != config.node_id {
        return Err(MeshError::Config(format!(
            "configured as node {} but the certificate is for node {cert_node}",
            config.node_id
        )));
    }

    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(config.keep_alive));
    transport.max_idle_timeout(Some(IdleTimeout::try_from(config.idle_timeout).map_err(
        |_| MeshError::Config(format!("idle_timeout {:?} too large", config.idle_timeout)),
    )?));
    // Requests each take a bidirectional stream; allow plenty in flight per connection.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    let transport = Arc::new(transport);

    let server_tls = QuicServerConfig::try_from(tls::server_config(&config.identity)?)
        .map_err(|e| MeshError::Config(format!("server TLS: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    let client_tls = QuicClientConfig::try_from(tls::client_config(&config.identity)?)
        .map_err(|e| MeshError::Config(format!("client TLS: {e}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
    client_config.transport_config(transport);

    let endpoint = Endpoint::server(server, config.listen).map_err(|source| MeshError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = endpoint.local_addr().map_err(|source| MeshError::Bind {
        addr: config.listen,
        source,
    })?;

    let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_queue);
    let shared = Arc::new(Shared {
        node_id: config.node_id,
        max_frame: config.max_frame,
        send_queue: config.send_queue,
        client_config,
        incoming: incoming_tx,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let runtime = tokio::runtime::Handle::current();
    let acceptor = runtime.spawn(inbound::accept_loop(
        endpoint.clone(),
        shared.clone(),
        shutdown_rx,
    ));
    tracing::info!(node = config.node_id, %local_addr, "mesh listening");
    let mesh = Mesh {
        inner: Arc::new(Inner {
            shared,
            runtime,
            local_addr,
            endpoint: Mutex::new(Some(endpoint)),
            peers: Mutex::new(HashMap::new()),
            next_correlation: AtomicU64::new(1),
            shutdown,
            tasks: Mutex::new(vec![acceptor]),
        }),
    };
    Ok((mesh, incoming_rx))
}

impl Mesh {
    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.shared.node_id
    }

    /// The bound UDP address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Adds a peer to the address book or changes its address (an existing connection to the old
    /// address is closed; the next message dials the new one). No connection is made until there
    /// is traffic. Ignored after [`Mesh::shutdown`].
    pub fn set_peer(&self, node_id: u64, addr: SocketAddr) {
        let mut peers = lock(&self.inner.peers);
        if let Some(peer) = peers.get(&node_id) {
            peer.set_addr(addr);
            return;
        }
        let Some(endpoint) = lock(&self.inner.endpoint).clone() else {
            return;
        };
        let peer = Arc::new(Peer::new(node_id, addr));
        let task = self.inner.runtime.spawn(peer::run(
            peer.clone(),
            self.inner.shared.clone(),
            endpoint,
            self.inner.shutdown.subscribe(),
        ));
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        peers.insert(node_id, peer);
    }

    /// Removes a peer: its queue is discarded and its outgoing connection closed. Connections the
    /// peer opened to us stay until it closes them (its certificate remains valid).
    pub fn remove_peer(&self, node_id: u64) {
        if let Some(peer) = lock(&self.inner.peers).remove(&node_id) {
            peer.remove(close_code::PEER_REMOVED, b"peer removed from the cluster");
        }
    }

    /// Queues a one-way message to `to` on channel `kind`. Never blocks. Ordered per
    /// (peer, kind), at most once; when the peer's queue is full the oldest message is dropped
    /// (counted in [`PeerStatus::dropped`]).
    pub fn send(&self, to: u64, kind: u16, payload: Vec<u8>) -> Result<(), MeshError> {
        self.send_queued(to, kind, payload, false)
    }

    /// Like [`Mesh::send`], but ahead of everything [`Mesh::send`] queued for the peer and on a
    /// higher-priority stream: for control traffic (Raft heartbeats, votes) that must not wait
    /// behind bulk actor traffic. Use one kind per lane: a kind's order holds within its lane.
    pub fn send_urgent(&self, to: u64, kind: u16, payload: Vec<u8>) -> Result<(), MeshError> {
        self.send_queued(to, kind, payload, true)
    }

    fn send_queued(
        &self,
        to: u64,
        kind: u16,
        payload: Vec<u8>,
        urgent: bool,
    ) -> Result<(), MeshError> {
        let peer = self.peer(to)?;
        let frame = Envelope::new(kind, 0, self.node_id(), payload).encode(self.max_frame())?;
        peer.enqueue(kind, frame, self.inner.shared.send_queue, urgent);
        Ok(())
    }

    /// Sends a request to `to` on channel `kind` on its own stream and waits up to `timeout` for
    /// the response, connecting first if needed.
    pub async fn request(
        &self,
        to: u64,
        kind: u16,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, MeshError> {
        let peer = self.peer(to)?;
        let correlation = self.inner.next_correlation.fetch_add(1, Ordering::Relaxed);
        let frame =
            Envelope::new(kind, correlation, self.node_id(), payload).encode(self.max_frame())?;
        tokio::time::timeout(timeout, peer.request(frame, correlation, self.max_frame()))
            .await
            .map_err(|_| MeshError::Timeout {
                node_id: to,
                after: timeout,
            })?
    }

    /// The address book with connection state, by node id.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = lock(&self.inner.peers)
            .values()
            .map(|p| p.status())
            .collect();
        peers.sort_by_key(|p| p.node_id);
        peers
    }

    /// Closes every connection (close code [`close_code::SHUTDOWN`]) and waits until the socket
    /// is released. Afterwards `send` and `request` fail with [`MeshError::Shutdown`].
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let Some(endpoint) = lock(&self.inner.endpoint).take() else {
            return;
        };
        const REASON: &[u8] = b"node shutting down";
        // Peers first: closing a connection directly takes effect before the endpoint's close.
        for (_, peer) in lock(&self.inner.peers).drain() {
            peer.remove(close_code::SHUTDOWN, REASON);
        }
        endpoint.close(close_code::SHUTDOWN, REASON);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            // A panicked task has nothing left to clean up; keep shutting down.
            let _ = task.await;
        }
        endpoint.wait_idle().await;
        tracing::info!(node = self.node_id(), "mesh shut down");
    }

    fn peer(&self, node_id: u64) -> Result<Arc<Peer>, MeshError> {
        if *self.inner.shutdown.borrow() {
            return Err(MeshError::Shutdown);
        }
        lock(&self.inner.peers)
            .get(&node_id)
            .cloned()
            .ok_or(MeshError::UnknownPeer(node_id))
    }

    fn max_frame(&self) -> usize {
        self.inner.shared.max_frame
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// is a few field updates), so poisoning is ignored rather than spread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A readable description of why a connection ended, naming the mesh's own close codes.
fn describe_close(error: &ConnectionError) -> String {
    let ConnectionError::ApplicationClosed(close) = error else {
        return error.to_string();
    };
    let name = match close.error_code {
        c if c == close_code::SHUTDOWN => "peer shutting down",
        c if c == close_code::PEER_REMOVED => "peer removed",
        c if c == close_code::ADDRESS_CHANGED => "address changed",
        c if c == close_code::VERSION_MISMATCH => "protocol version mismatch",
        c if c == close_code::CORRUPT_FRAME => "corrupt frame",
        c if c == close_code::IDENTITY_MISMATCH => "identity mismatch",
        _ => "application close",
    };
    format!(
        "closed by peer ({name}, code {}): {}",
        close.error_code,
        String::from_utf8_lossy(&close.reason)
    )
}

/// Maps a stream I/O error, recovering quinn's cause where there is one.
fn stream_error(error: std::io::Error) -> MeshError {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<quinn::ReadError>())
    {
        Some(quinn::ReadError::Reset(code)) if *code == stream_code::NO_RESPONSE => {
            MeshError::NoResponse
        }
        Some(quinn::ReadError::ConnectionLost(e)) => MeshError::Connection(describe_close(e)),
        _ => MeshError::Stream(error.to_string()),
    }
}

/// Acts on a peer's protocol violation: log it and close the connection with the matching code.
/// Returns whether the connection was closed.
fn close_on_violation(conn: &quinn::Connection, peer: u64, error: &MeshError) -> bool {
    let Some(code) = error.close_code() else {
        return false;
    };
    tracing::error!(peer, remote = %conn.remote_address(), "{error}; closing the connection");
    conn.close(code, error.to_string().as_bytes());
    true
}

/// Completes once shutdown is requested or the mesh handle is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped with the last `Mesh`: shut down all the same.
    let _ = shutdown.wait_for(|&stop| stop).await;
}

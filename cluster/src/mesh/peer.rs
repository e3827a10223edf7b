//! The sending side: one task per known peer owns this node's outgoing connection to it, dials
//! on demand with backoff, and drains the peer's message queue onto per-kind streams.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::{Connection, Endpoint, SendStream, VarInt, WriteError};
use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::envelope::read_frame;
use super::{
    Envelope, Frame, MeshError, PeerStatus, Shared, close_code, close_on_violation, describe_close,
    lock,
};
use crate::tls::node_dns_name;

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff; one that keeps dropping sooner (say,
/// a peer that accepts and then rejects us) keeps backing off instead of redialling at 10/s.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub(super) struct Peer {
    node_id: u64,
    state: Mutex<State>,
    /// Wakes the task: queued messages, a request wanting a connection, new address, removal.
    wake: Notify,
    /// Bumped on every link change, for requests waiting on a connection attempt.
    link_changed: watch::Sender<()>,
}

struct State {
    addr: SocketAddr,
    queue: VecDeque<(u16, Frame)>,
    /// Sent before anything in `queue` (see [`super::Mesh::send_urgent`]).
    urgent: VecDeque<(u16, Frame)>,
    link: Link,
    up_since: Option<Instant>,
    backoff: Duration,
    /// Consecutive failed dials: the first is logged as a warning, repeats only at debug level.
    failures: u32,
    last_error: Option<String>,
    dropped: u64,
    connect_wanted: bool,
    removed: bool,
}

enum Link {
    /// Never dialled, or reset by an address change: dial as soon as there is demand.
    Idle,
    Connecting,
    Up(Connection),
    /// Lost or failed; no new dial before `retry_at`.
    Down {
        retry_at: Instant,
    },
}

enum Ended {
    Lost(String),
    Removed,
    Shutdown,
}

impl Peer {
    pub(super) fn new(node_id: u64, addr: SocketAddr) -> Self {
        Self {
            node_id,
            state: Mutex::new(State {
                addr,
                queue: VecDeque::new(),
                urgent: VecDeque::new(),
                link: Link::Idle,
                up_since: None,
                backoff: INITIAL_BACKOFF,
                failures: 0,
                last_error: None,
                dropped: 0,
                connect_wanted: false,
                removed: false,
            }),
            wake: Notify::new(),
            link_changed: watch::Sender::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn link_changed(&self) {
        self.link_changed.send_modify(|_| ());
    }

    pub(super) fn status(&self) -> PeerStatus {
        let st = self.lock();
        let conn = match &st.link {
            Link::Up(conn) => Some(conn),
            _ => None,
        };
        PeerStatus {
            node_id: self.node_id,
            addr: st.addr,
            connected: conn.is_some(),
            rtt: conn.map(Connection::rtt),
            last_error: st.last_error.clone(),
            queued: st.queue.len() + st.urgent.len(),
            dropped: st.dropped,
        }
    }

    pub(super) fn enqueue(&self, kind: u16, frame: Frame, capacity: usize, urgent: bool) {
        let mut st = self.lock();
        let queue = if urgent {
            &mut st.urgent
        } else {
            &mut st.queue
        };
        if queue.len() >= capacity {
            queue.pop_front();
            st.dropped += 1;
            // Log-scale warnings: visible, but a long outage does not flood the log.
            if st.dropped.is_power_of_two() {
                tracing::warn!(
                    peer = self.node_id,
                    dropped = st.dropped,
                    "mesh send queue full; dropping the oldest messages"
                );
            }
        }
        if urgent {
            st.urgent.push_back((kind, frame));
        } else {
            st.queue.push_back((kind, frame));
        }
        drop(st);
        self.wake.notify_one();
    }

    pub(super) fn set_addr(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if st.addr == addr {
            return;
        }
        st.addr = addr;
        st.backoff = INITIAL_BACKOFF;
        st.failures = 0;
        let old = std::mem::replace(&mut st.link, Link::Idle);
        drop(st);
        if let Link::Up(conn) = old {
            conn.close(close_code::ADDRESS_CHANGED, b"peer address changed");
        }
        self.link_changed();
        self.wake.notify_one();
    }

    /// Ends the peer: discards its queue and closes the outgoing connection with `code`.
    pub(super) fn remove(&self, code: VarInt, reason: &[u8]) {
        let mut st = self.lock();
        st.removed = true;
        st.queue.clear();
        st.urgent.clear();
        let old = std::mem::replace(&mut st.link, Link::Idle);
        drop(st);
        if let Link::Up(conn) = old {
            conn.close(code, reason);
        }
        self.link_changed();
        self.wake.notify_one();
    }

    /// One request on a fresh bidirectional stream. The caller bounds it with the timeout.
    pub(super) async fn request(
        &self,
        frame: Frame,
        correlation: u64,
        max_frame: usize,
    ) -> Result<Vec<u8>, MeshError> {
        let conn = self.connection().await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| MeshError::Connection(describe_close(&e)))?;
        for part in frame.parts() {
            send.write_all(part).await.map_err(write_error)?;
        }
        // Fails only if the stream is already gone, which the read below reports better.
        let _ = send.finish();
        let body = read_frame(&mut recv, max_frame)
            .await?
            .ok_or(MeshError::NoResponse)?;
        let response = Envelope::decode(&body).and_then(|env| {
            if env.from != self.node_id {
                Err(MeshError::IdentityMismatch {
                    cert: self.node_id,
                    claimed: env.from,
                })
            } else if env.correlation != correlation {
                Err(MeshError::Corrupt(format!(
                    "response correlation {} does not match request {correlation}",
                    env.correlation
                )))
            } else {
                Ok(env.payload)
            }
        });
        if let Err(e) = &response {
            close_on_violation(&conn, self.node_id, e);
        }
        response
    }

    /// The live connection, dialling if there is none; fails fast while within backoff.
    async fn connection(&self) -> Result<Connection, MeshError> {
        let mut changes = self.link_changed.subscribe();
        loop {
            {
                let mut st = self.lock();
                if st.removed {
                    return Err(MeshError::UnknownPeer(self.node_id));
                }
                match &st.link {
                    Link::Up(conn) => return Ok(conn.clone()),
                    Link::Down { retry_at } if *retry_at > Instant::now() => {
                        return Err(MeshError::Unreachable {
                            node_id: self.node_id,
                            reason: st
                                .last_error
                                .clone()
                                .unwrap_or_else(|| "connection failed".into()),
                        });
                    }
                    Link::Connecting => {}
                    Link::Idle | Link::Down { .. } => {
                        st.connect_wanted = true;
                        self.wake.notify_one();
                    }
                }
            }
            // The sender lives in `self`, so this cannot fail while we wait.
            changes
                .changed()
                .await
                .map_err(|_| MeshError::UnknownPeer(self.node_id))?;
        }
    }

    /// Waits until there is something to send (or a request wants a connection) and the backoff
    /// has elapsed. Returns the address to dial, or `None` when the peer task should end.
    async fn wait_for_demand(&self, shutdown: &mut watch::Receiver<bool>) -> Option<SocketAddr> {
        loop {
            let wake = self.wake.notified();
            let retry_at = {
                let mut st = self.lock();
                if st.removed {
                    return None;
                }
                let demand = !st.queue.is_empty() || !st.urgent.is_empty() || st.connect_wanted;
                match st.link {
                    _ if !demand => None,
                    Link::Down { retry_at } if retry_at > Instant::now() => Some(retry_at),
                    _ => {
                        st.link = Link::Connecting;
                        let addr = st.addr;
                        drop(st);
                        self.link_changed();
                        return Some(addr);
                    }
                }
            };
            let backoff = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = backoff => {}
                _ = super::stopped(shutdown) => return None,
            }
        }
    }

    /// Records a successful dial; false if the address changed or the peer was removed meanwhile.
    fn connected(&self, conn: &Connection, addr: SocketAddr) -> bool {
        let mut st = self.lock();
        if st.removed || st.addr != addr {
            return false;
        }
        st.link = Link::Up(conn.clone());
        st.up_since = Some(Instant::now());
        st.failures = 0;
        st.last_error = None;
        st.connect_wanted = false;
        drop(st);
        self.link_changed();
        tracing::info!(peer = self.node_id, %addr, "mesh connection up");
        true
    }

    /// Records a failed dial or a lost connection and schedules the next attempt.
    fn failed(&self, reason: String, was_up: bool) {
        let mut st = self.lock();
        // An address change or removal already reset the link; nothing to back off from.
        if !matches!(st.link, Link::Up(_) | Link::Connecting) {
            return;
        }
        if was_up && st.up_since.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
            st.backoff = INITIAL_BACKOFF;
        }
        let delay = st.backoff.mul_f64(rand::rng().random_range(0.8..1.2));
        st.link = Link::Down {
            retry_at: Instant::now() + delay,
        };
        st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
        st.connect_wanted = false;
        st.failures = st.failures.saturating_add(1);
        let first_failure = st.failures == 1;
        st.last_error = Some(reason.clone());
        drop(st);
        self.link_changed();
        let peer = self.node_id;
        if was_up {
            tracing::warn!(
                peer,
                "mesh connection lost: {reason}; redialling in {delay:?}"
            );
        } else if first_failure {
            tracing::warn!(
                peer,
                "cannot connect to mesh peer: {reason}; retrying in {delay:?}"
            );
        } else {
            tracing::debug!(
                peer,
                "cannot connect to mesh peer: {reason}; retrying in {delay:?}"
            );
        }
    }
}

/// The peer task: dial on demand, pump messages while connected, back off when it fails.
pub(super) async fn run(
    peer: Arc<Peer>,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some(addr) = peer.wait_for_demand(&mut shutdown).await {
        let dialled = tokio::select! {
            dialled = dial(&endpoint, &shared, peer.node_id, addr) => dialled,
            _ = super::stopped(&mut shutdown) => return,
        };
        let conn = match dialled {
            Ok(conn) => conn,
            Err(reason) => {
                peer.failed(reason, false);
                continue;
            }
        };
        if !peer.connected(&conn, addr) {
            conn.close(close_code::ADDRESS_CHANGED, b"peer address changed");
            continue;
        }
        match pump(&peer, &conn, &mut shutdown).await {
            Ended::Lost(reason) => peer.failed(reason, true),
            Ended::Removed | Ended::Shutdown => return,
        }
    }
}

async fn dial(
    endpoint: &Endpoint,
    shared: &Shared,
    node_id: u64,
    addr: SocketAddr,
) -> Result<Connection, String> {
    endpoint
        .connect_with(shared.client_config.clone(), addr, &node_dns_name(node_id))
        .map_err(|e| format!("cannot dial {addr}: {e}"))?
        .await
        .map_err(|e| format!("handshake with {addr} failed: {}", describe_close(&e)))
}

/// Writes queued messages until the connection ends, one stream per kind.
async fn pump(peer: &Peer, conn: &Connection, shutdown: &mut watch::Receiver<bool>) -> Ended {
    let mut streams: HashMap<u16, SendStream> = HashMap::new();
    loop {
        let wake = peer.wake.notified();
        let next = {
            let mut st = peer.lock();
            if st.removed {
                return Ended::Removed;
            }
            match st.urgent.pop_front() {
                Some(urgent) => Some((urgent, true)),
                None => st.queue.pop_front().map(|m| (m, false)),
            }
        };
        let Some(((kind, frame), urgent)) = next else {
            tokio::select! {
                _ = wake => continue,
                e = conn.closed() => return Ended::Lost(describe_close(&e)),
                _ = super::stopped(shutdown) => return Ended::Shutdown,
            }
        };
        let written = tokio::select! {
            written = write_on_stream(conn, &mut streams, kind, &frame, urgent) => written,
            e = conn.closed() => return Ended::Lost(describe_close(&e)),
            _ = super::stopped(shutdown) => return Ended::Shutdown,
        };
        if let Err(e) = written {
            streams.remove(&kind);
            if let Some(reason) = conn.close_reason() {
                return Ended::Lost(describe_close(&reason));
            }
            tracing::warn!(
                peer = peer.node_id,
                kind,
                "mesh stream failed ({e}); message dropped, stream reopened"
            );
        }
    }
}

async fn write_on_stream(
    conn: &Connection,
    streams: &mut HashMap<u16, SendStream>,
    kind: u16,
    frame: &Frame,
    urgent: bool,
) -> Result<(), MeshError> {
    let stream = match streams.entry(kind) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let stream = conn
                .open_uni()
                .await
                .map_err(|e| MeshError::Connection(describe_close(&e)))?;
            if urgent {
                // QUIC sends higher-priority streams' data first, so urgent frames do not wait
                // behind bulk data already handed to the connection either.
                let _ = stream.set_priority(1);
            }
            e.insert(stream)
        }
    };
    for part in frame.parts() {
        stream.write_all(part).await.map_err(write_error)?;
    }
    Ok(())
}

fn write_error(error: WriteError) -> MeshError {
    match error {
        WriteError::ConnectionLost(e) => MeshError::Connection(describe_close(&e)),
        other => MeshError::Stream(other.to_string()),
    }
}

//! UDP and TCP on one address.
//!
//! Inbound datagrams and stream frames are parsed here, on the socket's own task, so a flood of
//! garbage costs the endpoint task nothing: malformed requests get their 400 straight from this
//! layer (or are dropped when no response can be built) and only parsed messages travel on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchyard_sip::framing::{Frame, StreamFramer};
use switchyard_sip::message;
use switchyard_sip::rsip::SipMessage;
use switchyard_sip::transaction::{Peer, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// A parsed message and where it came from.
pub struct Inbound {
    pub message: SipMessage,
    pub from: Peer,
}

/// Largest UDP datagram accepted; bigger ones are truncated by the kernel and fail to parse.
const MAX_DATAGRAM: usize = 65_535;
/// Frames queued towards one TCP connection before it is considered stuck and dropped.
const TCP_QUEUE: usize = 1024;

/// Sends bytes to peers over the right socket. Cheap to clone.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<UdpSocket>,
    tcp: Arc<TcpConnections>,
    inbound: mpsc::UnboundedSender<Inbound>,
}

#[derive(Default)]
struct TcpConnections {
    next_id: AtomicU64,
    by_id: Mutex<HashMap<u64, TcpConn>>,
}

#[derive(Clone)]
struct TcpConn {
    remote: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

impl TcpConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpConn>> {
        // Every critical section is a single map operation, so a poisoned map is still whole.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, peer: &Peer) -> Option<mpsc::Sender<Bytes>> {
        let map = self.lock();
        if let Some(conn) = peer.connection.and_then(|id| map.get(&id)) {
            return Some(conn.tx.clone());
        }
        // A request towards a TCP contact reuses any connection to that address (RFC 3261
        // §18.1.1), for example the one the phone registered over.
        map.values()
            .find(|c| c.remote == peer.addr)
            .map(|c| c.tx.clone())
    }
}

impl Transports {
    /// Binds UDP and TCP on `addr` and starts the receive tasks; parsed messages go to `inbound`.
    pub async fn bind(
        addr: SocketAddr,
        inbound: mpsc::UnboundedSender<Inbound>,
    ) -> std::io::Result<Self> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let listener = TcpListener::bind(addr).await?;
        let transports = Self {
            udp: Arc::clone(&udp),
            tcp: Arc::new(TcpConnections::default()),
            inbound: inbound.clone(),
        };
        tokio::spawn(udp_receive(udp, inbound));
        tokio::spawn(tcp_accept(listener, transports.clone()));
        Ok(transports)
    }

    /// Sends `bytes` to `peer`. UDP sends never wait for the network; TCP frames are queued to
    /// the connection's writer, opening a connection first when there is none to that address.
    pub fn send(&self, peer: &Peer, bytes: Bytes) {
        metrics::counter!("sip_messages_sent_total").increment(1);
        match peer.transport {
            Transport::Udp => match self.udp.try_send_to(&bytes, peer.addr) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let udp = Arc::clone(&self.udp);
                    let addr = peer.addr;
                    tokio::spawn(async move {
                        if let Err(e) = udp.send_to(&bytes, addr).await {
                            tracing::debug!(%addr, error = %e, "UDP send failed");
                        }
                    });
                }
                Err(e) => tracing::debug!(addr = %peer.addr, error = %e, "UDP send failed"),
            },
            Transport::Tcp => match self.tcp.find(peer) {
                Some(tx) => {
                    if tx.try_send(bytes).is_err() {
                        tracing::warn!(addr = %peer.addr, "TCP connection stuck or closed; message dropped");
                    }
                }
                None => {
                    let this = self.clone();
                    let addr = peer.addr;
                    tokio::spawn(async move {
                        match TcpStream::connect(addr).await {
                            Ok(stream) => {
                                let tx = this.adopt(stream, addr);
                                let _ = tx.try_send(bytes);
                            }
                            Err(e) => tracing::debug!(%addr, error = %e, "TCP connect failed"),
                        }
                    });
                }
            },
        }
    }

    /// Registers a connected stream, accepted or opened by us, and starts its reader and writer.
    fn adopt(&self, stream: TcpStream, remote: SocketAddr) -> mpsc::Sender<Bytes> {
        let _ = stream.set_nodelay(true);
        let id = self.tcp.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        self.tcp.lock().insert(
            id,
            TcpConn {
                remote,
                tx: tx.clone(),
            },
        );
        let (reader, writer) = stream.into_split();
        tokio::spawn(tcp_write(writer, rx));
        let this = self.clone();
        tokio::spawn(async move {
            tcp_read(reader, remote, id, &this).await;
            this.tcp.lock().remove(&id);
        });
        tx
    }
}

/// The endpoint task has stopped: the node is shutting down.
struct EndpointGone;

/// Parses one datagram or stream frame and hands it to the endpoint. A malformed request
/// yields the 400/505 to send back (none when not even a Via can be found: dropped).
fn deliver(
    raw: &[u8],
    from: Peer,
    inbound: &mpsc::UnboundedSender<Inbound>,
) -> Result<Option<Vec<u8>>, EndpointGone> {
    match message::parse(raw) {
        Ok(message) => {
            metrics::counter!("sip_messages_received_total").increment(1);
            inbound
                .send(Inbound { message, from })
                .map(|()| None)
                .map_err(|_| EndpointGone)
        }
        Err(err) => {
            metrics::counter!("sip_malformed_total").increment(1);
            tracing::debug!(from = %from.addr, error = %err, "malformed SIP message");
            Ok(message::error_response(raw, &err))
        }
    }
}

async fn udp_receive(socket: Arc<UdpSocket>, inbound: mpsc::UnboundedSender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port-unreachable from an earlier send surfaces here on some systems.
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let datagram = &buf[..len];
        // RFC 5626 keep-alive: a bare CRLF (or double CRLF) is answered by nothing over UDP
        // except STUN, which we do not speak; just ignore it.
        if datagram.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue;
        }
        let peer = Peer {
            addr: from,
            transport: Transport::Udp,
            connection: None,
        };
        match deliver(datagram, peer, &inbound) {
            Ok(None) => {}
            Ok(Some(reply)) => {
                let _ = socket.try_send_to(&reply, from);
            }
            Err(EndpointGone) => return,
        }
    }
}

async fn tcp_accept(listener: TcpListener, transports: Transports) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                transports.adopt(stream, remote);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn tcp_read(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    remote: SocketAddr,
    id: u64,
    transports: &Transports,
) {
    let inbound = &transports.inbound;
    let mut framer = StreamFramer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let peer = Peer {
        addr: remote,
        transport: Transport::Tcp,
        connection: Some(id),
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_message() {
                Ok(None) => break,
                Ok(Some(Frame::KeepAlive)) => transports.send(&peer, Bytes::from_static(b"\r\n")),
                Ok(Some(Frame::Message(bytes))) => match deliver(&bytes, peer, inbound) {
                    Ok(None) => {}
                    Ok(Some(reply)) => transports.send(&peer, Bytes::from(reply)),
                    Err(EndpointGone) => return,
                },
                // A stream whose framing is lost (absurd Content-Length, oversized headers)
                // cannot be resynchronised, and without a parsed request there is no Via to
                // answer to: close the connection.
                Err(err) => {
                    metrics::counter!("sip_malformed_total").increment(1);
                    tracing::debug!(%remote, error = %err, "TCP framing error; closing");
                    return;
                }
            }
        }
    }
}

async fn tcp_write(mut writer: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

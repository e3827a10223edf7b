//! The receiving side: accept connections, identify the peer by its certificate, and turn
//! streams into [`Incoming`] messages and requests.

use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::sync::{oneshot, watch};

use super::envelope::read_frame;
use super::{
    Envelope, Incoming, MeshError, Responder, Shared, close_code, close_on_violation,
    describe_close, stream_code,
};
use crate::tls::node_id_from_cert;

pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = super::stopped(&mut shutdown) => return,
        };
        tokio::spawn(serve_connection(incoming, shared.clone(), shutdown.clone()));
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%remote, "inbound mesh handshake failed: {}", describe_close(&e));
            return;
        }
    };
    let peer = match peer_node_id(&conn) {
        Ok(id) => id,
        Err(reason) => {
            tracing::warn!(%remote, "inbound mesh connection refused: {reason}");
            conn.close(close_code::IDENTITY_MISMATCH, reason.as_bytes());
            return;
        }
    };
    tracing::debug!(peer, %remote, "inbound mesh connection");
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(recv) => {
                    tokio::spawn(read_messages(conn.clone(), peer, recv, shared.clone()));
                }
                Err(e) => return ended(peer, &e),
            },
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(conn.clone(), peer, send, recv, shared.clone()));
                }
                Err(e) => return ended(peer, &e),
            },
            _ = super::stopped(&mut shutdown) => {
                conn.close(close_code::SHUTDOWN, b"node shutting down");
                return;
            }
        }
    }
}

fn ended(peer: u64, error: &quinn::ConnectionError) {
    tracing::debug!(
        peer,
        "inbound mesh connection ended: {}",
        describe_close(error)
    );
}

/// The node id from the peer's certificate, which rustls has already verified against the CA.
fn peer_node_id(conn: &Connection) -> Result<u64, String> {
    let certs = conn
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("the peer presented no certificate")?;
    let leaf = certs.first().ok_or("the peer presented no certificate")?;
    node_id_from_cert(leaf).map_err(|e| e.to_string())
}

/// One stream of one-way messages (one kind, in order) until the peer finishes it.
async fn read_messages(conn: Connection, peer: u64, mut recv: RecvStream, shared: Arc<Shared>) {
    loop {
        match next_envelope(&mut recv, peer, shared.max_frame).await {
            Ok(Some(env)) => {
                let message = Incoming::Message {
                    from: peer,
                    kind: env.kind,
                    payload: env.payload,
                };
                if shared.incoming.send(message).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => return reject(&conn, peer, &mut recv, &e),
        }
    }
}

/// One request: hand it to the application and write back what its [`Responder`] sends.
async fn serve_request(
    conn: Connection,
    peer: u64,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
) {
    let request = match next_envelope(&mut recv, peer, shared.max_frame).await {
        Ok(Some(env)) => env,
        Ok(None) => return,
        Err(e) => return reject(&conn, peer, &mut recv, &e),
    };
    let (tx, rx) = oneshot::channel();
    let incoming = Incoming::Request {
        from: peer,
        kind: request.kind,
        payload: request.payload,
        reply: Responder {
            kind: request.kind,
            correlation: request.correlation,
            from: shared.node_id,
            max_frame: shared.max_frame,
            tx,
        },
    };
    // Resolves when the requester stops the stream (it timed out) or the connection goes.
    let gave_up = send.stopped();
    tokio::pin!(gave_up);
    tokio::select! {
        delivered = shared.incoming.send(incoming) => {
            if delivered.is_err() {
                let _ = send.reset(stream_code::NO_RESPONSE);
                return;
            }
        }
        _ = &mut gave_up => return,
    }
    let response = tokio::select! {
        response = rx => response,
        _ = &mut gave_up => return,
    };
    let Ok(frame) = response else {
        let _ = send.reset(stream_code::NO_RESPONSE);
        return;
    };
    for part in frame.parts() {
        if let Err(e) = send.write_all(part).await {
            tracing::debug!(peer, "response not delivered: {e}");
            return;
        }
    }
    // Only fails if the stream is already closed, in which case there is nothing to finish.
    let _ = send.finish();
}

/// Reads and checks the next envelope: protocol version, and sender against the certificate.
async fn next_envelope(
    recv: &mut RecvStream,
    peer: u64,
    max_frame: usize,
) -> Result<Option<Envelope>, MeshError> {
    let Some(body) = read_frame(recv, max_frame).await? else {
        return Ok(None);
    };
    let env = Envelope::decode(&body)?;
    if env.from != peer {
        return Err(MeshError::IdentityMismatch {
            cert: peer,
            claimed: env.from,
        });
    }
    Ok(Some(env))
}

/// Protocol violations close the connection; an oversized frame costs only its stream.
fn reject(conn: &Connection, peer: u64, recv: &mut RecvStream, error: &MeshError) {
    if close_on_violation(conn, peer, error) {
        return;
    }
    if let MeshError::FrameTooLarge { .. } = error {
        tracing::warn!(peer, "{error}; abandoning the stream");
        let _ = recv.stop(stream_code::FRAME_TOO_LARGE);
    } else {
        tracing::debug!(peer, "mesh stream ended: {error}");
    }
}

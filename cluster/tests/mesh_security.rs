//! Mesh authentication and hostile input over real QUIC: foreign CAs, wrong node ids, forged
//! senders, other protocol versions, corrupt and oversized frames, join tokens.

mod mesh_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_support::{Ca, PATIENCE, introduce, next, serve_echo, start, start_at};
use quinn::crypto::rustls::QuicClientConfig;
use switchyard_cluster::mesh::{
    self, DEFAULT_MAX_FRAME, Envelope, Incoming, MeshConfig, MeshError, PROTOCOL_VERSION,
    close_code, stream_code,
};
use switchyard_cluster::tls::{self, NodeIdentity, TlsError};
use tokio::sync::mpsc;

const RAFT: u16 = 1;
const ACTOR: u16 = 2;

/// A bare QUIC connection to node `to` at `addr`, authenticated with `identity`, bypassing the
/// mesh so the test can put arbitrary bytes on the wire.
async fn raw_connect(
    identity: &NodeIdentity,
    to: u64,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let crypto = QuicClientConfig::try_from(tls::client_config(identity).expect("client config"))
        .expect("quic client config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
        .connect(addr, &tls::node_dns_name(to))
        .expect("connect")
        .await
}

/// Sends raw bytes as one unidirectional stream.
async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) {
    let mut stream = conn.open_uni().await.expect("open stream");
    stream.write_all(bytes).await.expect("write");
    stream.finish().expect("finish");
}

fn frame_bytes(envelope: &Envelope) -> Vec<u8> {
    envelope
        .encode(DEFAULT_MAX_FRAME)
        .expect("encode")
        .parts()
        .concat()
}

/// Waits for `conn` to be closed by the peer; returns the application close code and reason.
async fn closed_by_peer(conn: &quinn::Connection) -> (quinn::VarInt, String) {
    match tokio::time::timeout(PATIENCE, conn.closed())
        .await
        .expect("connection was not closed")
    {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code,
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other}"),
    }
}

/// Asserts that nothing arrives on `rx` for a little while.
async fn assert_quiet(rx: &mut mpsc::Receiver<Incoming>) {
    let got = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(got.is_err(), "unexpected delivery: {got:?}");
}

/// Node 1 still serves a well-behaved node after a bad one was thrown out.
async fn still_serving(ca: &Ca, target: &mesh::Mesh) {
    let (good, _rx) = start(ca, 99).await;
    good.set_peer(target.node_id(), target.local_addr());
    let reply = good
        .request(target.node_id(), ACTOR, b"ok?".to_vec(), PATIENCE)
        .await
        .expect("a good node is still served");
    assert_eq!(reply, b"?ko");
    good.shutdown().await;
}

#[tokio::test]
async fn a_node_of_another_ca_cannot_connect_either_way() {
    let ca = Ca::new();
    let foreign = Ca::new();
    let (n1, mut rx1) = start(&ca, 1).await;
    let (rogue, mut rx_rogue) = start(&foreign, 2).await;
    introduce(&[&n1, &rogue]);

    // Node 1 does not trust the rogue's server certificate.
    let err = n1
        .request(2, ACTOR, vec![], PATIENCE)
        .await
        .expect_err("rogue server must be refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // The rogue's client certificate is refused by node 1.
    let err = rogue
        .request(1, ACTOR, vec![], PATIENCE)
        .await
        .expect_err("rogue client must be refused");
    assert!(
        matches!(
            err,
            MeshError::Connection(_) | MeshError::Unreachable { .. } | MeshError::Stream(_)
        ),
        "{err}"
    );
    rogue.send(1, RAFT, b"let me in".to_vec()).expect("queued");
    n1.send(2, RAFT, b"secret".to_vec()).expect("queued");
    // A bare connection with the foreign certificate gets no further.
    match raw_connect(&foreign.identity(3), 1, n1.local_addr()).await {
        Err(_) => {}
        Ok(conn) => {
            let reason = tokio::time::timeout(PATIENCE, conn.closed())
                .await
                .expect("closed");
            assert!(
                !matches!(reason, quinn::ConnectionError::LocallyClosed),
                "{reason}"
            );
        }
    }
    assert_quiet(&mut rx1).await;
    assert_quiet(&mut rx_rogue).await;
    assert!(!n1.peers()[0].connected);

    n1.shutdown().await;
    rogue.shutdown().await;
}

#[tokio::test]
async fn dialling_the_wrong_node_fails() {
    let ca = Ca::new();
    let (n1, _rx1) = start(&ca, 1).await;
    let (n2, mut rx2) = start(&ca, 2).await;
    // Node 1 believes node 3 lives at node 2's address.
    n1.set_peer(3, n2.local_addr());
    let err = n1
        .request(3, ACTOR, vec![], PATIENCE)
        .await
        .expect_err("node 2 must not pass for node 3");
    assert!(
        err.to_string()
            .contains("not valid for name \"node-3.switchyard.cluster\""),
        "{err}"
    );
    assert_quiet(&mut rx2).await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_node_2_cannot_speak_for_node_3() {
    let ca = Ca::new();
    // A node configured as 3 with node 2's certificate does not start.
    let err = mesh::start(MeshConfig::new(
        3,
        "127.0.0.1:0".parse().expect("addr"),
        ca.identity(2),
    ))
    .await
    .err()
    .expect("start must fail");
    assert!(
        err.to_string().contains("certificate is for node 2"),
        "{err}"
    );

    // On the wire, a frame claiming node 3 over node 2's certificate closes the connection.
    let (n1, mut rx1) = start(&ca, 1).await;
    let conn = raw_connect(&ca.identity(2), 1, n1.local_addr())
        .await
        .expect("node 2's certificate is valid");
    send_raw(
        &conn,
        &frame_bytes(&Envelope::new(RAFT, 0, 3, b"forged".to_vec())),
    )
    .await;
    let (code, reason) = closed_by_peer(&conn).await;
    assert_eq!(code, close_code::IDENTITY_MISMATCH);
    assert!(
        reason.contains("from node 3") && reason.contains("certificate is for node 2"),
        "{reason}"
    );
    assert_quiet(&mut rx1).await;
    serve_echo(rx1);
    still_serving(&ca, &n1).await;
    n1.shutdown().await;
}

#[tokio::test]
async fn another_protocol_version_closes_the_connection_cleanly() {
    let ca = Ca::new();
    let (n1, mut rx1) = start(&ca, 1).await;
    let conn = raw_connect(&ca.identity(5), 1, n1.local_addr())
        .await
        .expect("connect");
    let mut future = Envelope::new(RAFT, 0, 5, b"from the future".to_vec());
    future.version = PROTOCOL_VERSION + 1;
    send_raw(&conn, &frame_bytes(&future)).await;
    let (code, reason) = closed_by_peer(&conn).await;
    assert_eq!(code, close_code::VERSION_MISMATCH);
    assert_eq!(
        reason,
        format!(
            "mesh protocol version mismatch: ours {PROTOCOL_VERSION}, theirs {}",
            PROTOCOL_VERSION + 1
        )
    );
    assert_quiet(&mut rx1).await;

    // The same on a request stream.
    let conn = raw_connect(&ca.identity(5), 1, n1.local_addr())
        .await
        .expect("reconnect");
    let (mut send, _recv) = conn.open_bi().await.expect("open");
    send.write_all(&frame_bytes(&future)).await.expect("write");
    send.finish().expect("finish");
    assert_eq!(closed_by_peer(&conn).await.0, close_code::VERSION_MISMATCH);

    // A well-formed frame from the same node is still welcome on a new connection.
    let conn = raw_connect(&ca.identity(5), 1, n1.local_addr())
        .await
        .expect("reconnect");
    send_raw(
        &conn,
        &frame_bytes(&Envelope::new(RAFT, 0, 5, b"now".to_vec())),
    )
    .await;
    match next(&mut rx1).await {
        Incoming::Message { from, payload, .. } => {
            assert_eq!((from, &payload[..]), (5, &b"now"[..]))
        }
        other => panic!("unexpected {other:?}"),
    }
    serve_echo(rx1);
    still_serving(&ca, &n1).await;
    n1.shutdown().await;
}

#[tokio::test]
async fn corrupt_and_oversized_frames() {
    let ca = Ca::new();
    let (n1, mut rx1) = start(&ca, 1).await;

    // Garbage that passes the length check but not validation.
    let conn = raw_connect(&ca.identity(5), 1, n1.local_addr())
        .await
        .expect("connect");
    let mut garbage = 40u32.to_be_bytes().to_vec();
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    send_raw(&conn, &garbage).await;
    let (code, reason) = closed_by_peer(&conn).await;
    assert_eq!(code, close_code::CORRUPT_FRAME);
    assert!(reason.starts_with("corrupt frame"), "{reason}");

    // A frame cut short by the end of its stream.
    let conn = raw_connect(&ca.identity(5), 1, n1.local_addr())
        .await
        .expect("connect");
    let whole = frame_bytes(&Envelope::new(RAFT, 0, 5, b"cut short".to_vec()));
    send_raw(&conn, &whole[..whole.len() - 3]).await;
    assert_eq!(closed_by_peer(&conn).await.0, close_code::CORRUPT_FRAME);

    // An announced 1 GiB frame costs only its stream; the connection carries on.
    let conn = raw_connect(&ca.identity(5), 1, n1.local_addr())
        .await
        .expect("connect");
    let mut stream = conn.open_uni().await.expect("open");
    stream
        .write_all(&(1u32 << 30).to_be_bytes())
        .await
        .expect("write");
    let stopped = tokio::time::timeout(PATIENCE, stream.stopped())
        .await
        .expect("stream not stopped");
    assert_eq!(stopped, Ok(Some(stream_code::FRAME_TOO_LARGE)));
    send_raw(
        &conn,
        &frame_bytes(&Envelope::new(RAFT, 0, 5, b"fine".to_vec())),
    )
    .await;
    match next(&mut rx1).await {
        Incoming::Message { from, payload, .. } => {
            assert_eq!((from, &payload[..]), (5, &b"fine"[..]))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(conn.close_reason().is_none());
    n1.shutdown().await;
}

#[tokio::test]
async fn join_tokens_issue_redeem_and_expire() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = tls::issue_join_token(&ca.ca_dir(), 7, Duration::from_secs(600)).expect("token");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "token must be copy-pasteable: {token}"
    );
    let node_dir = dir.path().join("node-7");
    assert_eq!(
        tls::redeem_join_token(&token, &node_dir).expect("redeem"),
        7
    );
    let identity = tls::load_node_identity(&node_dir).expect("load");

    // The joined node is a full member of the mesh.
    let (n1, rx1) = start(&ca, 1).await;
    serve_echo(rx1);
    let (n7, _rx7) = start_at(7, identity, "127.0.0.1:0".parse().expect("addr")).await;
    introduce(&[&n1, &n7]);
    assert_eq!(
        n7.request(1, ACTOR, b"joined".to_vec(), PATIENCE)
            .await
            .expect("request from joined node"),
        b"denioj"
    );

    let expired = tls::issue_join_token(&ca.ca_dir(), 8, Duration::ZERO).expect("token");
    let err = tls::redeem_join_token(&expired, &dir.path().join("node-8")).expect_err("expired");
    assert!(matches!(err, TlsError::TokenExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired"));
    let err = tls::redeem_join_token(&token.replace('.', ","), &dir.path().join("x"))
        .expect_err("corrupt");
    assert!(matches!(err, TlsError::TokenCorrupt(_)), "{err}");
    assert!(!dir.path().join("node-8").exists());

    n1.shutdown().await;
    n7.shutdown().await;
}

//! Mesh behaviour over real QUIC on 127.0.0.1: messages, requests, timeouts, reconnection.

mod mesh_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_support::{Ca, PATIENCE, introduce, next, serve_echo, start, start_at};
use switchyard_cluster::mesh::{Incoming, MeshError};

const RAFT: u16 = 1;
const ACTOR: u16 = 2;

#[tokio::test]
async fn three_nodes_exchange_messages_and_requests() {
    let ca = Ca::new();
    let (n1, mut rx1) = start(&ca, 1).await;
    let (n2, mut rx2) = start(&ca, 2).await;
    let (n3, mut rx3) = start(&ca, 3).await;
    introduce(&[&n1, &n2, &n3]);
    let nodes = [&n1, &n2, &n3];

    // Every node sends 100 numbered messages on two kinds to every other node.
    const COUNT: u32 = 100;
    for from in nodes {
        for to in nodes {
            if from.node_id() == to.node_id() {
                continue;
            }
            for i in 0..COUNT {
                for kind in [RAFT, ACTOR] {
                    from.send(to.node_id(), kind, i.to_be_bytes().to_vec())
                        .expect("send");
                }
            }
        }
    }
    for (me, rx) in [(1, &mut rx1), (2, &mut rx2), (3, &mut rx3)] {
        // Per (sender, kind) the sequence must arrive complete and in order.
        let mut seen: HashMap<(u64, u16), u32> = HashMap::new();
        for _ in 0..(2 * 2 * COUNT) {
            let Incoming::Message {
                from,
                kind,
                payload,
            } = next(rx).await
            else {
                panic!("node {me}: unexpected request");
            };
            assert_ne!(from, me);
            let n = u32::from_be_bytes(payload.try_into().expect("4 bytes"));
            let expected = seen.entry((from, kind)).or_default();
            assert_eq!(
                n, *expected,
                "node {me}: from {from} kind {kind} out of order"
            );
            *expected += 1;
        }
        assert!(seen.values().all(|&n| n == COUNT), "node {me}: {seen:?}");
    }

    serve_echo(rx1);
    serve_echo(rx2);
    serve_echo(rx3);
    for from in nodes {
        for to in nodes {
            if from.node_id() == to.node_id() {
                continue;
            }
            let payload = format!("{}->{}", from.node_id(), to.node_id()).into_bytes();
            let mut expected = payload.clone();
            expected.reverse();
            let reply = from
                .request(to.node_id(), ACTOR, payload, PATIENCE)
                .await
                .expect("request");
            assert_eq!(reply, expected);
        }
    }

    // Many requests in flight at once on one connection.
    let calls = (0..200u32).map(|i| {
        let n1 = n1.clone();
        async move {
            let reply = n1
                .request(2, ACTOR, i.to_be_bytes().to_vec(), PATIENCE)
                .await
                .expect("concurrent request");
            let mut expected = i.to_be_bytes().to_vec();
            expected.reverse();
            assert_eq!(reply, expected);
        }
    });
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("task");
    }

    let status = n1.peers();
    assert_eq!(status.iter().map(|p| p.node_id).collect::<Vec<_>>(), [2, 3]);
    for peer in &status {
        assert!(peer.connected, "{peer:?}");
        assert!(peer.rtt.is_some());
        assert_eq!((peer.queued, peer.dropped), (0, 0));
        assert_eq!(peer.last_error, None);
    }

    n1.shutdown().await;
    n2.shutdown().await;
    n3.shutdown().await;
    assert!(matches!(n1.send(2, RAFT, vec![]), Err(MeshError::Shutdown)));
}

#[tokio::test]
async fn requests_time_out_and_report_missing_responses() {
    let ca = Ca::new();
    let (n1, _rx1) = start(&ca, 1).await;
    let (n2, mut rx2) = start(&ca, 2).await;
    introduce(&[&n1, &n2]);

    // Node 2 holds on to the request without answering: the requester times out.
    let started = Instant::now();
    let pending = tokio::spawn({
        let n1 = n1.clone();
        async move {
            n1.request(2, ACTOR, b"slow".to_vec(), Duration::from_millis(300))
                .await
        }
    });
    let Incoming::Request { reply, .. } = next(&mut rx2).await else {
        panic!("expected a request");
    };
    let result = pending.await.expect("task");
    assert!(
        matches!(result, Err(MeshError::Timeout { node_id: 2, .. })),
        "{result:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Answering late is harmless.
    reply.send(b"too late".to_vec()).expect("late reply");

    // Node 2 drops the responder: the requester learns at once that no answer is coming.
    let pending = tokio::spawn({
        let n1 = n1.clone();
        async move { n1.request(2, ACTOR, b"drop me".to_vec(), PATIENCE).await }
    });
    drop(next(&mut rx2).await);
    let result = pending.await.expect("task");
    assert!(matches!(result, Err(MeshError::NoResponse)), "{result:?}");

    // Unknown peers and oversized payloads fail locally.
    assert!(matches!(
        n1.request(9, ACTOR, vec![], PATIENCE).await,
        Err(MeshError::UnknownPeer(9))
    ));
    assert!(matches!(
        n1.send(2, RAFT, vec![0; 17 * 1024 * 1024]),
        Err(MeshError::FrameTooLarge { .. })
    ));

    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn unreachable_peer_fails_fast_within_backoff() {
    let ca = Ca::new();
    let (n1, _rx1) = start(&ca, 1).await;
    // Reserve a port, then free it: nothing answers there.
    let (n2, _rx2) = start(&ca, 2).await;
    let dead = n2.local_addr();
    n2.shutdown().await;
    n1.set_peer(2, dead);

    // The first attempt has to wait for the handshake to time out.
    let first = n1.request(2, ACTOR, vec![], PATIENCE).await;
    assert!(first.is_err(), "{first:?}");
    // Now the peer is known down: the next request fails without waiting.
    let started = Instant::now();
    let second = n1.request(2, ACTOR, vec![], PATIENCE).await;
    assert!(
        matches!(second, Err(MeshError::Unreachable { node_id: 2, .. })),
        "{second:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    let status = &n1.peers()[0];
    assert!(!status.connected);
    assert!(status.last_error.is_some(), "{status:?}");

    n1.shutdown().await;
}

#[tokio::test]
async fn restarted_peer_is_reconnected_and_messages_flow_again() {
    let ca = Ca::new();
    let (n1, mut rx1) = start(&ca, 1).await;
    let (n2, rx2) = start(&ca, 2).await;
    introduce(&[&n1, &n2]);
    serve_echo(rx2);
    n1.request(2, ACTOR, b"before".to_vec(), PATIENCE)
        .await
        .expect("request before restart");
    n2.send(1, RAFT, b"hello from 2".to_vec()).expect("send");
    assert!(matches!(next(&mut rx1).await, Incoming::Message { .. }));

    let addr = n2.local_addr();
    n2.shutdown().await;
    drop(n2);

    // While node 2 is down, messages queue up (or are lost in flight: at most once).
    for i in 0..10u8 {
        n1.send(2, RAFT, vec![i]).expect("send while down");
    }
    let (n2, mut rx2) = start_at(2, ca.identity(2), addr).await;
    n2.set_peer(1, n1.local_addr());

    // Node 1 redials with backoff and the traffic resumes.
    let deadline = Instant::now() + PATIENCE;
    loop {
        n1.send(2, RAFT, b"after".to_vec())
            .expect("send after restart");
        match tokio::time::timeout(Duration::from_millis(200), rx2.recv()).await {
            Ok(Some(Incoming::Message { from: 1, kind, .. })) => {
                assert_eq!(kind, RAFT);
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => assert!(Instant::now() < deadline, "node 1 never reconnected"),
        }
    }
    serve_echo(rx2);
    let reply = n1
        .request(2, ACTOR, b"after".to_vec(), PATIENCE)
        .await
        .expect("request after restart");
    assert_eq!(reply, b"retfa");
    // And the other direction works with the restarted node too.
    n2.send(1, RAFT, b"back".to_vec()).expect("send");
    loop {
        if let Incoming::Message {
            from: 2, payload, ..
        } = next(&mut rx1).await
            && payload == b"back"
        {
            break;
        }
    }
    assert!(n1.peers()[0].connected);

    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test]
async fn address_change_and_removal() {
    let ca = Ca::new();
    let (n1, _rx1) = start(&ca, 1).await;
    let (n2, rx2) = start(&ca, 2).await;
    serve_echo(rx2);
    // A wrong address first, then the right one: the change takes effect without backoff.
    let (placeholder, _rx) = start(&ca, 4).await;
    n1.set_peer(2, placeholder.local_addr());
    assert!(n1.request(2, ACTOR, vec![1], PATIENCE).await.is_err());
    n1.set_peer(2, n2.local_addr());
    assert_eq!(
        n1.request(2, ACTOR, vec![1, 2], PATIENCE)
            .await
            .expect("request after address change"),
        [2, 1]
    );
    n1.remove_peer(2);
    assert!(n1.peers().is_empty());
    assert!(matches!(
        n1.send(2, RAFT, vec![]),
        Err(MeshError::UnknownPeer(2))
    ));
    n1.shutdown().await;
    n2.shutdown().await;
    placeholder.shutdown().await;
}

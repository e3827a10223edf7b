//! SIP transaction-layer behaviour seen from a raw UDP caller.

mod common;

use std::time::{Duration, Instant};

use common::sip::{Request, SipMsg, UdpSip, pcmu_sdp, uri_addr};
use common::{Node, NodeConfig, free_port};

const T1_MS: u64 = 200;
const T2_MS: u64 = 4000;

fn is_invite_200(m: &SipMsg, call_id: &str) -> bool {
    m.status() == Some(200)
        && m.call_id() == Some(call_id)
        && m.cseq().is_some_and(|(_, method)| method == "INVITE")
}

/// RFC 3261 13.3.1.4: the UAS core retransmits a 2xx to INVITE over UDP, starting at T1 and
/// doubling up to T2, until the ACK arrives; then it stops.
#[test]
fn udp_200_ok_retransmitted_until_acked() {
    let node = Node::start(
        "retransmit-200",
        NodeConfig {
            t1_ms: T1_MS,
            ..NodeConfig::default()
        },
    );
    let phone = node
        .sipp("agent-2001", "agent_answer_wait_bye.xml")
        .server()
        .calls(1)
        .duration_ms(100)
        .timeout_secs(90)
        .spawn();
    node.register_agents(&["2001".to_owned()], phone.local_port);

    let mut ua = UdpSip::new(node.sip);
    let mut invite = Request::new("INVITE", &format!("sip:1000@{}", node.sip))
        .header(&format!("Contact: <sip:rawcaller@{}>", ua.local))
        .body("application/sdp", &pcmu_sdp(free_port()));
    invite.from = format!("<sip:rawcaller@{}>;tag=rawcaller1", ua.local);
    ua.send(&invite);

    let first = ua
        .recv_matching(Duration::from_secs(20), |m| {
            is_invite_200(m, &invite.call_id)
        })
        .unwrap_or_else(|| {
            panic!(
                "no 200 to the INVITE within 20 s; node log:\n{}",
                node.log_tail(80)
            )
        });
    let mut copies = vec![first.clone()];
    // Do not ACK: collect retransmissions (expected ~T1, 2*T1, 4*T1 after the first).
    let deadline = Instant::now() + Duration::from_millis(8 * T1_MS + 2000);
    while copies.len() < 4 && Instant::now() < deadline {
        if let Some(m) = ua.recv_matching(Duration::from_millis(200), |m| {
            is_invite_200(m, &invite.call_id)
        }) {
            copies.push(m);
        }
    }
    let times: Vec<Duration> = copies
        .windows(2)
        .map(|w| w[1].received - w[0].received)
        .collect();
    eprintln!(
        "[retransmit] 200 copies: {}, intervals {times:?}",
        copies.len()
    );
    assert!(
        copies.len() >= 3,
        "expected at least 3 copies of the 200 without an ACK (T1 = {T1_MS} ms), got {} (intervals {times:?})",
        copies.len()
    );
    let ms = |d: &Duration| d.as_millis() as u64;
    // Timestamps are taken when this thread reads the socket: allow some scheduling jitter.
    assert!(
        (T1_MS / 2..=T1_MS * 3).contains(&ms(&times[0])),
        "first retransmission after ~T1 ({T1_MS} ms), got {times:?}"
    );
    assert!(
        ms(&times[1]) * 4 >= ms(&times[0]) * 5,
        "retransmission intervals must grow (T1, 2*T1, 4*T1 ... up to T2), got {times:?}"
    );
    assert!(
        ms(&(copies[2].received - copies[0].received)) >= T1_MS * 2,
        "three copies span at least T1 + 2*T1 ({} ms), got {times:?}",
        T1_MS * 3
    );
    for c in &copies {
        assert_eq!(
            c.to_tag(),
            first.to_tag(),
            "every copy is the same response"
        );
        assert_eq!(c.body, first.body, "every copy is the same response");
    }
    assert!(
        first.body_text().contains("m=audio"),
        "the 200 carries the SDP answer:\n{}",
        first.raw
    );

    // ACK the 2xx: a new transaction, sent to the remote target (the 200's Contact).
    let target = first
        .contact_uri()
        .unwrap_or_else(|| panic!("200 without Contact:\n{}", first.raw));
    let target_addr = uri_addr(&target).unwrap_or(node.sip);
    let to = first.header("To").unwrap().to_owned();
    let mut ack = Request::new("ACK", &target);
    ack.call_id = invite.call_id.clone();
    ack.from = invite.from.clone();
    ack.to = to.clone();
    ack.cseq = 1;
    ua.send_to(&ack.build(ua.local, "UDP"), target_addr);
    let acked_at = Instant::now();

    // A copy already in flight may still arrive; after that, silence for 2*T2.
    let late = ua.recv_matching(Duration::from_millis(2 * T2_MS), |m| {
        is_invite_200(m, &invite.call_id) && m.received > acked_at + Duration::from_millis(100)
    });
    assert!(
        late.is_none(),
        "the node kept retransmitting the 200 after the ACK:\n{}",
        late.unwrap().raw
    );

    // Hang up.
    let mut bye = Request::new("BYE", &target);
    bye.call_id = invite.call_id.clone();
    bye.from = invite.from.clone();
    bye.to = to;
    bye.cseq = 2;
    ua.send_to(&bye.build(ua.local, "UDP"), target_addr);
    let resp = ua
        .final_response(&invite.call_id, "BYE", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no response to BYE; node log:\n{}", node.log_tail(60)));
    assert_eq!(resp.status(), Some(200), "BYE answered:\n{}", resp.raw);
    phone.expect_success_with(&node);

    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(cdrs[0].disposition, "answered", "{cdrs:#?}");
    assert_eq!(cdrs[0].hangup_by, "caller", "{cdrs:#?}");
    assert_eq!(cdrs[0].caller_call_id, invite.call_id, "{cdrs:#?}");
}

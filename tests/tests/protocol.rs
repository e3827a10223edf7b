//! Request handling required by RFC 3261, over raw UDP.

mod common;

use std::time::Duration;

use common::sip::{Request, SipMsg, TcpSip, UdpSip, pcmu_sdp, sdp};
use common::{Node, NodeConfig, free_port};

const WAIT: Duration = Duration::from_secs(5);

fn node(name: &str) -> Node {
    Node::start(name, NodeConfig::default())
}

fn invite_to_did(node: &Node, ua: &UdpSip) -> Request {
    let mut r = Request::new("INVITE", &format!("sip:1000@{}", node.sip))
        .header(&format!("Contact: <sip:tester@{}>", ua.local));
    r.from = format!("<sip:tester@{}>;tag={}", ua.local, common::sip::unique("f"));
    r
}

/// ACK for a non-2xx final response: same branch, To with the response's tag (17.1.1.3).
fn ack_non_2xx(ua: &UdpSip, invite: &Request, resp: &SipMsg) {
    let mut ack = invite.clone();
    ack.method = "ACK".into();
    ack.headers
        .retain(|h| !h.to_ascii_lowercase().starts_with("content-type"));
    ack.body.clear();
    ack.to = resp.header("To").unwrap_or(&invite.to).to_owned();
    ack.cseq_method = None;
    ua.send(&ack);
}

/// Checks the response matches the request (RFC 3261 8.2.6.2: Call-ID, CSeq, From, Via copied;
/// final responses other than 100 carry a To tag).
fn assert_matches_request(resp: &SipMsg, req: &Request) {
    assert_eq!(
        resp.call_id(),
        Some(req.call_id.as_str()),
        "Call-ID copied:\n{}",
        resp.raw
    );
    let (n, m) = resp
        .cseq()
        .unwrap_or_else(|| panic!("CSeq missing:\n{}", resp.raw));
    assert_eq!(
        (n, m.as_str()),
        (req.cseq, req.method.as_str()),
        "CSeq copied:\n{}",
        resp.raw
    );
    let via = resp
        .header("Via")
        .unwrap_or_else(|| panic!("Via missing:\n{}", resp.raw));
    assert!(
        via.contains(&req.branch),
        "Via branch copied:\n{}",
        resp.raw
    );
    if resp.status().is_some_and(|s| s >= 200) {
        assert!(
            resp.to_tag().is_some(),
            "final response needs a To tag:\n{}",
            resp.raw
        );
    }
}

#[test]
fn options_gets_200() {
    let node = node("options");
    let mut ua = UdpSip::new(node.sip);
    let req = Request::new("OPTIONS", &format!("sip:{}", node.sip));
    let resp = ua
        .transact(&req, WAIT)
        .expect("no answer to OPTIONS over UDP");
    assert_eq!(resp.status(), Some(200), "{}", resp.raw);
    assert_matches_request(&resp, &req);

    let mut tcp = TcpSip::connect(node.sip);
    let req = Request::new("OPTIONS", &format!("sip:{}", node.sip));
    tcp.send(&req).unwrap();
    let resp = tcp
        .final_response(WAIT)
        .expect("no answer to OPTIONS over TCP");
    assert_eq!(resp.status(), Some(200), "{}", resp.raw);
    assert_matches_request(&resp, &req);
}

#[test]
fn compact_form_options_gets_200() {
    let node = node("compact-options");
    let mut ua = UdpSip::new(node.sip);
    let mut req = Request::new("OPTIONS", &format!("sip:{}", node.sip));
    req.compact = true;
    req = req.header(&format!("m: <sip:tester@{}>", ua.local));
    let text = req.build(ua.local, "UDP");
    for long in [
        "Via:",
        "From:",
        "To:",
        "Call-ID:",
        "Contact:",
        "Content-Length:",
    ] {
        assert!(!text.contains(long), "test bug: {long} in\n{text}");
    }
    let resp = ua
        .transact(&req, WAIT)
        .expect("no answer to a compact-form OPTIONS");
    assert_eq!(resp.status(), Some(200), "{}", resp.raw);
    assert_matches_request(&resp, &req);
}

#[test]
fn unknown_method_rejected() {
    let node = node("unknown-method");
    let mut ua = UdpSip::new(node.sip);
    let req = Request::new("FOO", &format!("sip:{}", node.sip));
    let resp = ua.transact(&req, WAIT).expect("no answer to FOO");
    let status = resp.status().unwrap();
    // RFC 3261 8.2.1: 405 for a method the UAS knows but does not allow here (MUST list
    // Allow); 501 for one it does not implement. Both are acceptable for FOO.
    eprintln!("[protocol] FOO answered {status}");
    assert!(
        matches!(status, 405 | 501),
        "FOO: expected 405 or 501, got:\n{}",
        resp.raw
    );
    if status == 405 {
        assert!(
            resp.header("Allow").is_some(),
            "405 MUST carry Allow:\n{}",
            resp.raw
        );
    }
    assert_matches_request(&resp, &req);
}

#[test]
fn max_forwards_zero_gets_483() {
    let node = node("max-forwards");
    let mut ua = UdpSip::new(node.sip);
    let mut req = invite_to_did(&node, &ua).body("application/sdp", &pcmu_sdp(free_port()));
    req.max_forwards = Some(0);
    let resp = ua
        .transact(&req, WAIT)
        .expect("no answer to INVITE with Max-Forwards: 0");
    assert_eq!(resp.status(), Some(483), "{}", resp.raw);
    assert_matches_request(&resp, &req);
    ack_non_2xx(&ua, &req, &resp);
}

#[test]
fn bye_for_unknown_dialog_gets_481() {
    let node = node("bye-481");
    let mut ua = UdpSip::new(node.sip);
    let mut req = Request::new("BYE", &format!("sip:1000@{}", node.sip));
    req.to = format!("<sip:1000@{}>;tag=nosuchdialog", node.sip);
    req.cseq = 2;
    let resp = ua.transact(&req, WAIT).expect("no answer to BYE");
    assert_eq!(resp.status(), Some(481), "{}", resp.raw);
    assert_matches_request(&resp, &req);
}

#[test]
fn unacceptable_sdp_gets_488() {
    let node = node("sdp-488");
    let mut ua = UdpSip::new(node.sip);
    let body = sdp(free_port(), "18", &["a=rtpmap:18 G729/8000"]);
    let req = invite_to_did(&node, &ua).body("application/sdp", &body);
    let resp = ua
        .transact(&req, WAIT)
        .expect("no answer to a G.729-only INVITE");
    assert_eq!(resp.status(), Some(488), "{}", resp.raw);
    assert_matches_request(&resp, &req);
    ack_non_2xx(&ua, &req, &resp);
}

#[test]
fn non_sdp_body_gets_415() {
    let node = node("body-415");
    let mut ua = UdpSip::new(node.sip);
    let req = invite_to_did(&node, &ua).body("text/plain", "hello, this is not SDP\r\n");
    let resp = ua
        .transact(&req, WAIT)
        .expect("no answer to a text/plain INVITE");
    assert_eq!(resp.status(), Some(415), "{}", resp.raw);
    assert_matches_request(&resp, &req);
    ack_non_2xx(&ua, &req, &resp);
}

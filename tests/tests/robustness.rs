//! Malformed input must never take the node down: it answers 400 or drops the message, and
//! keeps serving calls.

mod common;

use std::time::Duration;

use common::sip::{Request, TcpSip, UdpSip};
use common::{Node, NodeConfig};

/// Every response received within `wait` must be a 400.
fn only_400s_udp(ua: &mut UdpSip, what: &str, wait: Duration) {
    while let Some(m) = ua.recv(wait) {
        if let Some(status) = m.status() {
            assert_eq!(
                status, 400,
                "{what}: only a 400 (or nothing) is acceptable, got:\n{}",
                m.raw
            );
            eprintln!("[robustness] {what}: 400");
        } else {
            panic!("{what}: the node sent a request back?\n{}", m.raw);
        }
    }
}

fn options(node: &Node) -> Request {
    Request::new("OPTIONS", &format!("sip:{}", node.sip))
}

/// A request as text with its Content-Length and body replaced.
fn with_content_length(text: &str, value: &str, body: &str) -> String {
    let head = text.split("\r\n\r\n").next().unwrap();
    let head: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
        .collect();
    format!(
        "{}\r\nContent-Length: {value}\r\n\r\n{body}",
        head.join("\r\n")
    )
}

fn assert_options_ok_udp(node: &Node) {
    let mut ua = UdpSip::new(node.sip);
    let req = options(node);
    let resp = ua
        .transact(&req, Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "no answer to OPTIONS over UDP; node log:\n{}",
                node.log_tail(60)
            )
        });
    assert_eq!(resp.status(), Some(200), "{}", resp.raw);
}

fn assert_options_ok_tcp(node: &Node) {
    let mut tcp = TcpSip::connect(node.sip);
    let req = options(node);
    tcp.send(&req).expect("send OPTIONS over TCP");
    let resp = tcp
        .final_response(Duration::from_secs(5))
        .unwrap_or_else(|closed| {
            panic!(
                "no answer to OPTIONS over TCP (closed: {closed}); node log:\n{}",
                node.log_tail(60)
            )
        });
    assert_eq!(resp.status(), Some(200), "{}", resp.raw);
}

#[test]
fn garbage_and_malformed_requests_do_not_hurt() {
    let mut node = Node::start("robustness", NodeConfig::default());
    let mut ua = UdpSip::new(node.sip);
    let short = Duration::from_millis(700);

    // Garbage datagrams.
    let mut seed: u32 = 0x2545_f491;
    for i in 0..30 {
        let len = 1 + (i * 97) % 1400;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        ua.send_raw(&bytes);
    }
    for g in [
        &b"\r\n\r\n"[..],
        b"INVITE",
        b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\nCSeq: nope\r\n\r\n",
        b"\xff\xfe\xfd SIP/2.0\r\n\r\n",
        &[0u8; 1500],
    ] {
        ua.send_raw(g);
    }
    only_400s_udp(&mut ua, "garbage datagrams", short);
    node.assert_alive();

    // A request without Call-ID.
    let text = options(&node).build(ua.local, "UDP");
    let no_call_id: String = text
        .split("\r\n")
        .filter(|l| !l.starts_with("Call-ID"))
        .collect::<Vec<_>>()
        .join("\r\n");
    ua.send_raw(no_call_id.as_bytes());
    only_400s_udp(&mut ua, "request without Call-ID", short);

    // Absurd, negative and non-numeric Content-Length over UDP.
    for value in ["99999999", "-5", "abc", "18446744073709551616"] {
        let text = with_content_length(&options(&node).build(ua.local, "UDP"), value, "v=0\r\n");
        ua.send_raw(text.as_bytes());
        only_400s_udp(&mut ua, &format!("UDP Content-Length: {value}"), short);
    }
    // An INVITE to the DID whose body is cut short by its Content-Length.
    let mut invite = Request::new("INVITE", &format!("sip:1000@{}", node.sip));
    invite = invite.body("application/sdp", "v=0\r\n");
    let text = with_content_length(&invite.build(ua.local, "UDP"), "99999999", "v=0\r\n");
    ua.send_raw(text.as_bytes());
    only_400s_udp(&mut ua, "INVITE with Content-Length 99999999", short);
    node.assert_alive();

    // TCP: garbage, then close.
    {
        let mut tcp = TcpSip::connect(node.sip);
        let _ = tcp.send_raw(b"\x00\x01garbage that is not SIP\r\n\r\n");
        match tcp.recv(Duration::from_secs(2)) {
            Ok(m) => assert_eq!(
                m.status(),
                Some(400),
                "TCP garbage: 400 or close, got:\n{}",
                m.raw
            ),
            Err(closed) => eprintln!("[robustness] TCP garbage: no answer (closed: {closed})"),
        }
    }
    // TCP: absurd Content-Length. The node must neither crash nor wait for 100 MB.
    {
        let mut tcp = TcpSip::connect(node.sip);
        let text = with_content_length(
            &options(&node).build(tcp.local, "TCP"),
            "99999999",
            "v=0\r\n",
        );
        let _ = tcp.send_raw(text.as_bytes());
        match tcp.recv(Duration::from_secs(2)) {
            Ok(m) => assert_eq!(
                m.status(),
                Some(400),
                "TCP Content-Length 99999999: 400 or close, got:\n{}",
                m.raw
            ),
            Err(closed) => {
                eprintln!("[robustness] TCP Content-Length 99999999: no answer (closed: {closed})")
            }
        }
    }
    // TCP: 2 MB of header bytes without an end of headers.
    {
        let mut tcp = TcpSip::connect(node.sip);
        let mut flood = b"OPTIONS sip:x SIP/2.0\r\nX-Flood: ".to_vec();
        flood.resize(2 * 1024 * 1024, b'a');
        let _ = tcp.send_raw(&flood);
        match tcp.recv(Duration::from_secs(2)) {
            Ok(m) => assert!(
                matches!(m.status(), Some(400 | 413 | 513)),
                "header flood: 400/413/513 or close, got:\n{}",
                m.raw
            ),
            Err(closed) => eprintln!("[robustness] header flood: no answer (closed: {closed})"),
        }
    }
    // TCP: a request without Call-ID.
    {
        let mut tcp = TcpSip::connect(node.sip);
        let text = options(&node).build(tcp.local, "TCP");
        let no_call_id: String = text
            .split("\r\n")
            .filter(|l| !l.starts_with("Call-ID"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let _ = tcp.send_raw(no_call_id.as_bytes());
        match tcp.recv(Duration::from_secs(2)) {
            Ok(m) => assert_eq!(
                m.status(),
                Some(400),
                "TCP without Call-ID: 400 or nothing, got:\n{}",
                m.raw
            ),
            Err(closed) => {
                eprintln!("[robustness] TCP without Call-ID: no answer (closed: {closed})")
            }
        }
    }
    node.assert_alive();

    // Still serving: OPTIONS over both transports, the API, and a whole call.
    assert_options_ok_udp(&node);
    assert_options_ok_tcp(&node);
    assert_eq!(node.get("/healthz").status, 200);

    let phone = node
        .sipp("agent-2001", "agent_answer_wait_bye.xml")
        .server()
        .calls(1)
        .duration_ms(100)
        .timeout_secs(60)
        .spawn();
    node.register_agents(&["2001".to_owned()], phone.local_port);
    node.sipp("caller", "caller.xml")
        .duration_ms(500)
        .timeout_secs(60)
        .spawn()
        .expect_success_with(&node);
    phone.expect_success_with(&node);
    node.assert_alive();
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    assert!(
        cdrs.iter().any(|c| c.disposition == "answered"),
        "the call after the garbage was answered: {cdrs:#?}"
    );
}

use super::*;

const ME: &str = "10.0.0.1:5060";
const UA: &str = "192.0.2.10:5060";

fn udp(addr: &str) -> Peer {
    Peer {
        addr: addr.parse().expect("test address"),
        transport: Transport::Udp,
        connection: None,
    }
}

fn tcp(addr: &str) -> Peer {
    Peer {
        addr: addr.parse().expect("test address"),
        transport: Transport::Tcp,
        connection: Some(7),
    }
}

fn parse(text: &str) -> SipMessage {
    crate::message::parse(text.replace('\n', "\r\n").as_bytes()).expect("test message parses")
}

fn request(text: &str) -> Request {
    match parse(text) {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => panic!("not a request"),
    }
}

fn decode(bytes: &Bytes) -> SipMessage {
    crate::message::parse(bytes).expect("layer output parses")
}

/// An INVITE or other request from the UA to us.
fn inbound(method: &str, branch: &str, cseq: u32, to_tag: &str) -> String {
    let to_tag = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    format!(
        "{method} sip:4001@{ME} SIP/2.0
Via: SIP/2.0/UDP {UA};branch={branch}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=alice
To: <sip:4001@cc.example>{to_tag}
Call-ID: in-1
CSeq: {cseq} {method}
Contact: <sip:alice@{UA}>
Content-Length: 0

"
    )
}

/// A request we send to the UA.
fn outbound(method: &str, branch: &str) -> Request {
    request(&format!(
        "{method} sip:agent@{UA} SIP/2.0
Via: SIP/2.0/UDP {ME};branch={branch}
Max-Forwards: 70
Route: <sip:proxy.example;lr>
From: <sip:queue@cc.example>;tag=ours
To: <sip:agent@cc.example>
Call-ID: out-1
CSeq: 5 {method}
Contact: <sip:node@{ME}>
Content-Length: 0

"
    ))
}

/// A response from the UA to a request we sent.
fn response_text(status: &str, branch: &str, method: &str, to_tag: &str) -> String {
    let to_tag = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    format!(
        "SIP/2.0 {status}
Via: SIP/2.0/UDP {ME};branch={branch}
From: <sip:queue@cc.example>;tag=ours
To: <sip:agent@cc.example>{to_tag}
Call-ID: out-1
CSeq: 5 {method}
Contact: <sip:agent@{UA}>
Content-Length: 0

"
    )
}

struct Harness {
    layer: TransactionLayer,
    start: Instant,
}

impl Harness {
    fn new() -> Self {
        Harness {
            layer: TransactionLayer::new(Timers::default()),
            start: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn recv(&mut self, ms: u64, text: &str, from: Peer) {
        let now = self.at(ms);
        self.layer.handle_message(now, parse(text), from);
    }

    fn sent(&mut self) -> Vec<SipMessage> {
        std::iter::from_fn(|| self.layer.poll_transmit())
            .map(|t| decode(&t.bytes))
            .collect()
    }

    fn events(&mut self) -> Vec<TuEvent> {
        std::iter::from_fn(|| self.layer.poll_event()).collect()
    }

    /// Drives timers up to `end_ms`, returning (time, transmits) and (time, event) pairs in
    /// the order they happened.
    #[allow(clippy::type_complexity)]
    fn run_until(&mut self, end_ms: u64) -> (Vec<(u64, SipMessage)>, Vec<(u64, TuEvent)>) {
        let (mut sent, mut events) = (Vec::new(), Vec::new());
        while let Some(at) = self.layer.poll_timeout() {
            if at > self.at(end_ms) {
                break;
            }
            self.layer.handle_timeout(at);
            let ms = u64::try_from((at - self.start).as_millis()).expect("ms");
            sent.extend(self.sent().into_iter().map(|m| (ms, m)));
            events.extend(self.events().into_iter().map(|e| (ms, e)));
        }
        (sent, events)
    }

    /// The single pending event, which must be a new request.
    fn one_request(&mut self) -> (TransactionId, Request, Peer) {
        let mut events = self.events();
        match events.pop() {
            Some(TuEvent::Request { txn, request, from }) if events.is_empty() => {
                (txn, request, from)
            }
            other => panic!("expected one request, got {events:?} {other:?}"),
        }
    }

    /// Receives an inbound INVITE and returns its server transaction, discarding the 100.
    fn server_invite(&mut self, branch: &str, from: Peer) -> TransactionId {
        self.recv(0, &inbound("INVITE", branch, 1, ""), from);
        self.sent();
        self.one_request().0
    }

    fn respond(&mut self, ms: u64, txn: TransactionId, code: u16, to_tag: Option<&str>) {
        let request = request(&inbound("INVITE", "z9hG4bKx", 1, ""));
        let response = response(&request, StatusCode::from(code), to_tag);
        let now = self.at(ms);
        self.layer
            .send_response(now, txn, response)
            .expect("response accepted");
    }
}

fn status(message: &SipMessage) -> u16 {
    match message {
        SipMessage::Response(r) => r.status_code.code(),
        SipMessage::Request(_) => 0,
    }
}

fn method(message: &SipMessage) -> Option<Method> {
    match message {
        SipMessage::Request(r) => Some(r.method),
        SipMessage::Response(_) => None,
    }
}

fn times(sent: &[(u64, SipMessage)]) -> Vec<u64> {
    sent.iter().map(|(ms, _)| *ms).collect()
}

// ---------------------------------------------------------------- INVITE client

#[test]
fn invite_client_udp_retransmits_with_timer_a_until_timer_b() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    assert_eq!(h.sent().len(), 1);
    assert_eq!(h.layer.poll_timeout(), Some(h.at(500)));
    let (sent, events) = h.run_until(40_000);
    assert_eq!(times(&sent), [500, 1500, 3500, 7500, 15500, 31500]);
    assert!(sent.iter().all(|(_, m)| method(m) == Some(Method::Invite)));
    assert_eq!(events, [(32_000, TuEvent::Timeout { txn })]);
    assert!(h.layer.is_empty());
    assert_eq!(h.layer.poll_timeout(), None);
}

#[test]
fn invite_client_tcp_does_not_retransmit() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), tcp(UA))
        .expect("sent");
    assert_eq!(h.sent().len(), 1);
    let (sent, events) = h.run_until(40_000);
    assert!(sent.is_empty());
    assert_eq!(events, [(32_000, TuEvent::Timeout { txn })]);
}

#[test]
fn invite_client_provisional_stops_retransmissions() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.sent();
    h.recv(
        100,
        &response_text("180 Ringing", "z9hG4bKa", "INVITE", "t1"),
        udp(UA),
    );
    assert!(matches!(
        h.events().as_slice(),
        [TuEvent::Response { txn: t, response }] if *t == txn && response.status_code.code() == 180
    ));
    let (sent, events) = h.run_until(600_000);
    assert!(
        sent.is_empty() && events.is_empty(),
        "Proceeding has no timers"
    );
    assert_eq!(h.layer.len(), 1);
}

#[test]
fn invite_client_acks_non_2xx_and_absorbs_retransmissions() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.sent();
    h.recv(
        100,
        &response_text("486 Busy Here", "z9hG4bKa", "INVITE", "busy"),
        udp(UA),
    );
    let sent = h.sent();
    let [SipMessage::Request(ack)] = sent.as_slice() else {
        panic!("expected the ACK, got {sent:?}");
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri.to_string(), format!("sip:agent@{UA}"));
    assert_eq!(ack.top_branch().as_deref(), Some("z9hG4bKa"));
    assert_eq!(ack.cseq(), Some((5, Method::Ack)));
    assert_eq!(ack.to_tag().as_deref(), Some("busy"));
    assert_eq!(ack.from_tag().as_deref(), Some("ours"));
    assert_eq!(ack.call_id(), Some("out-1"));
    assert!(ack.route_header().is_some(), "Route copied from the INVITE");
    assert_eq!(
        ack.headers
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .count(),
        1
    );
    assert!(matches!(
        h.events().as_slice(),
        [TuEvent::Response { txn: t, .. }] if *t == txn
    ));

    // A retransmitted 486 gets the same ACK again and does not reach the TU.
    h.recv(
        600,
        &response_text("486 Busy Here", "z9hG4bKa", "INVITE", "busy"),
        udp(UA),
    );
    assert_eq!(
        h.sent().iter().map(method).collect::<Vec<_>>(),
        [Some(Method::Ack)]
    );
    assert!(h.events().is_empty());

    // Timer D ends it silently.
    let (sent, events) = h.run_until(40_000);
    assert!(sent.is_empty() && events.is_empty());
    assert!(h.layer.is_empty());
}

#[test]
fn invite_client_tcp_non_2xx_ends_at_once() {
    let mut h = Harness::new();
    h.layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), tcp(UA))
        .expect("sent");
    h.sent();
    h.recv(
        100,
        &response_text("404 Not Found", "z9hG4bKa", "INVITE", "nf"),
        tcp(UA),
    );
    assert_eq!(
        h.sent().iter().map(method).collect::<Vec<_>>(),
        [Some(Method::Ack)]
    );
    assert_eq!(h.events().len(), 1);
    assert!(h.layer.is_empty(), "timer D is zero on TCP");
}

#[test]
fn invite_client_2xx_accepted_reacks_from_cache_and_reports_forks() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.sent();
    let ok = response_text("200 OK", "z9hG4bKa", "INVITE", "agent");
    h.recv(100, &ok, udp(UA));
    assert!(h.sent().is_empty(), "the TU ACKs a 2xx, not the layer");
    assert!(matches!(
        h.events().as_slice(),
        [TuEvent::Response { txn: t, response }] if *t == txn && response.status_code.code() == 200
    ));

    // Retransmission before the TU's ACK: nothing to re-send, nothing for the TU.
    h.recv(400, &ok, udp(UA));
    assert!(h.sent().is_empty() && h.events().is_empty());

    let mut ack = outbound("ACK", "z9hG4bKack");
    ack.headers.retain(|h| !matches!(h, Header::To(_)));
    ack.headers.push(Header::To(rsip::headers::To::new(
        "<sip:agent@cc.example>;tag=agent",
    )));
    ack.headers.retain(|h| !matches!(h, Header::CSeq(_)));
    ack.headers.push(Header::CSeq(CSeq::new("5 ACK")));
    h.layer.send_ack_for_2xx(ack, udp("192.0.2.20:5060"));
    let acks: Vec<_> = std::iter::from_fn(|| h.layer.poll_transmit()).collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].peer, udp("192.0.2.20:5060"));
    assert_eq!(acks[0].txn, Some(txn));

    // Each retransmitted 2xx gets the cached ACK, byte for byte.
    h.recv(1500, &ok, udp(UA));
    let again: Vec<_> = std::iter::from_fn(|| h.layer.poll_transmit()).collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].bytes, acks[0].bytes);
    assert!(h.events().is_empty());

    // A 2xx from another fork is new to the TU.
    h.recv(
        1600,
        &response_text("200 OK", "z9hG4bKa", "INVITE", "other"),
        udp(UA),
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.events().len(), 1);

    // Late non-2xx responses are ignored in Accepted; timer M ends the transaction.
    h.recv(
        1700,
        &response_text("486 Busy Here", "z9hG4bKa", "INVITE", "x"),
        udp(UA),
    );
    assert!(h.sent().is_empty() && h.events().is_empty());
    let (sent, events) = h.run_until(40_000);
    assert!(sent.is_empty() && events.is_empty());
    assert!(h.layer.is_empty());
}

#[test]
fn stray_responses_are_dropped() {
    let mut h = Harness::new();
    h.recv(
        0,
        &response_text("200 OK", "z9hG4bKnone", "INVITE", "t"),
        udp(UA),
    );
    h.layer
        .send_request(h.at(0), outbound("OPTIONS", "z9hG4bKo"), udp(UA))
        .expect("sent");
    h.sent();
    // Same branch, different CSeq method: not this transaction's.
    h.recv(
        1,
        &response_text("200 OK", "z9hG4bKo", "INVITE", "t"),
        udp(UA),
    );
    assert!(h.sent().is_empty() && h.events().is_empty());
}

#[test]
fn send_request_validates() {
    let mut h = Harness::new();
    let mut no_branch = outbound("INVITE", "z9hG4bKa");
    no_branch.headers.retain(|h| !matches!(h, Header::Via(_)));
    assert_eq!(
        h.layer.send_request(h.at(0), no_branch, udp(UA)),
        Err(TxnError::BadRequest("no Via branch"))
    );
    assert!(matches!(
        h.layer
            .send_request(h.at(0), outbound("ACK", "z9hG4bKa"), udp(UA)),
        Err(TxnError::BadRequest(_))
    ));
    h.layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    assert_eq!(
        h.layer
            .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA)),
        Err(TxnError::BranchInUse)
    );
}

// ---------------------------------------------------------------- CANCEL (client)

#[test]
fn cancel_before_provisional_waits_for_it() {
    let mut h = Harness::new();
    let invite = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.sent();
    let cancel = h.layer.cancel(h.at(100), invite).expect("cancel");
    assert_eq!(h.layer.cancel(h.at(110), invite), Ok(cancel), "idempotent");
    assert!(h.sent().is_empty(), "§9.1: no CANCEL before a provisional");

    // The INVITE keeps retransmitting meanwhile.
    let (sent, _) = h.run_until(500);
    assert_eq!(sent.len(), 1);

    h.recv(
        700,
        &response_text("180 Ringing", "z9hG4bKa", "INVITE", "t"),
        udp(UA),
    );
    let sent = h.sent();
    let [SipMessage::Request(c)] = sent.as_slice() else {
        panic!("expected the CANCEL, got {sent:?}");
    };
    assert_eq!(c.method, Method::Cancel);
    assert_eq!(c.uri.to_string(), format!("sip:agent@{UA}"));
    assert_eq!(c.top_branch().as_deref(), Some("z9hG4bKa"));
    assert_eq!(c.cseq(), Some((5, Method::Cancel)));
    assert_eq!(c.to_tag(), None, "To is the INVITE's, not the response's");
    assert!(c.route_header().is_some());
    h.events();

    // The CANCEL is an ordinary non-INVITE transaction: timer E retransmits it.
    let (sent, _) = h.run_until(1200);
    assert_eq!(times(&sent), [1200]);
    assert_eq!(method(&sent[0].1), Some(Method::Cancel));

    h.recv(
        1300,
        &response_text("200 OK", "z9hG4bKa", "CANCEL", "t"),
        udp(UA),
    );
    assert!(matches!(
        h.events().as_slice(),
        [TuEvent::Response { txn, .. }] if *txn == cancel
    ));
    h.recv(
        1400,
        &response_text("487 Request Terminated", "z9hG4bKa", "INVITE", "t"),
        udp(UA),
    );
    assert_eq!(
        h.sent().iter().map(method).collect::<Vec<_>>(),
        [Some(Method::Ack)]
    );
    assert!(matches!(
        h.events().as_slice(),
        [TuEvent::Response { txn, response }] if *txn == invite && response.status_code.code() == 487
    ));
}

#[test]
fn cancel_after_provisional_is_sent_at_once() {
    let mut h = Harness::new();
    let invite = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.recv(
        100,
        &response_text("100 Trying", "z9hG4bKa", "INVITE", ""),
        udp(UA),
    );
    h.sent();
    h.events();
    h.layer.cancel(h.at(200), invite).expect("cancel");
    assert_eq!(
        h.sent().iter().map(method).collect::<Vec<_>>(),
        [Some(Method::Cancel)]
    );
}

#[test]
fn queued_cancel_is_dropped_when_the_invite_completes_first() {
    let mut h = Harness::new();
    let invite = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.sent();
    h.layer.cancel(h.at(10), invite).expect("cancel");
    h.recv(
        20,
        &response_text("200 OK", "z9hG4bKa", "INVITE", "t"),
        udp(UA),
    );
    assert!(h.sent().is_empty(), "the CANCEL is never sent");
    assert_eq!(h.layer.len(), 1, "only the accepted INVITE remains");
    assert_eq!(h.events().len(), 1);
    assert_eq!(h.layer.cancel(h.at(30), invite).map(|_| ()), Ok(()));
}

#[test]
fn cancel_after_final_is_refused() {
    let mut h = Harness::new();
    let invite = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), udp(UA))
        .expect("sent");
    h.recv(
        20,
        &response_text("603 Decline", "z9hG4bKa", "INVITE", "t"),
        udp(UA),
    );
    assert_eq!(
        h.layer.cancel(h.at(30), invite),
        Err(TxnError::AlreadyFinal)
    );
    let options = h
        .layer
        .send_request(h.at(0), outbound("OPTIONS", "z9hG4bKo"), udp(UA))
        .expect("sent");
    assert_eq!(h.layer.cancel(h.at(30), options), Err(TxnError::WrongKind));
}

#[test]
fn cancelled_invite_without_final_response_times_out() {
    let mut h = Harness::new();
    let invite = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), tcp(UA))
        .expect("sent");
    h.recv(
        100,
        &response_text("180 Ringing", "z9hG4bKa", "INVITE", "t"),
        tcp(UA),
    );
    let cancel = h.layer.cancel(h.at(1000), invite).expect("cancel");
    h.recv(
        1100,
        &response_text("200 OK", "z9hG4bKa", "CANCEL", "t"),
        tcp(UA),
    );
    h.sent();
    h.events();
    assert_eq!(
        h.layer.len(),
        1,
        "CANCEL over TCP ends with its final (K = 0)"
    );
    let (_, events) = h.run_until(100_000);
    assert_eq!(events, [(33_000, TuEvent::Timeout { txn: invite })]);
    assert_ne!(cancel, invite);
}

// ---------------------------------------------------------------- non-INVITE client

#[test]
fn non_invite_client_timer_e_caps_at_t2_then_timer_f() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("OPTIONS", "z9hG4bKo"), udp(UA))
        .expect("sent");
    h.sent();
    let (sent, events) = h.run_until(40_000);
    assert_eq!(
        times(&sent),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(events, [(32_000, TuEvent::Timeout { txn })]);
}

#[test]
fn non_invite_client_proceeding_retransmits_every_t2_and_timer_k() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("BYE", "z9hG4bKb"), udp(UA))
        .expect("sent");
    h.sent();
    h.recv(
        100,
        &response_text("100 Trying", "z9hG4bKb", "BYE", ""),
        udp(UA),
    );
    assert_eq!(h.events().len(), 1);
    let (sent, _) = h.run_until(9000);
    assert_eq!(times(&sent), [500, 4500, 8500]);

    h.recv(
        9100,
        &response_text("200 OK", "z9hG4bKb", "BYE", "t"),
        udp(UA),
    );
    assert!(matches!(h.events().as_slice(), [TuEvent::Response { txn: t, .. }] if *t == txn));
    // Retransmitted final: absorbed.
    h.recv(
        9200,
        &response_text("200 OK", "z9hG4bKb", "BYE", "t"),
        udp(UA),
    );
    assert!(h.events().is_empty() && h.sent().is_empty());
    let (sent, events) = h.run_until(14_100);
    assert!(sent.is_empty() && events.is_empty());
    assert!(h.layer.is_empty(), "timer K = T4 after the final response");
}

#[test]
fn non_invite_client_tcp_ends_on_final() {
    let mut h = Harness::new();
    h.layer
        .send_request(h.at(0), outbound("BYE", "z9hG4bKb"), tcp(UA))
        .expect("sent");
    h.sent();
    h.recv(
        100,
        &response_text("200 OK", "z9hG4bKb", "BYE", "t"),
        tcp(UA),
    );
    assert_eq!(h.events().len(), 1);
    assert!(h.layer.is_empty());
}

// ---------------------------------------------------------------- INVITE server

#[test]
fn invite_server_sends_100_at_once_and_absorbs_retransmissions() {
    let mut h = Harness::new();
    h.recv(0, &inbound("INVITE", "z9hG4bK1", 1, ""), udp(UA));
    let sent = h.sent();
    assert_eq!(sent.iter().map(status).collect::<Vec<_>>(), [100]);
    let SipMessage::Response(trying) = &sent[0] else {
        unreachable!()
    };
    assert_eq!(trying.to_tag(), None, "100 Trying carries no To tag");
    let (txn, request, from) = h.one_request();
    assert_eq!(request.method, Method::Invite);
    assert_eq!(from, udp(UA));

    h.recv(500, &inbound("INVITE", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [100]);
    assert!(h.events().is_empty());

    h.respond(600, txn, 180, Some("mine"));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [180]);
    h.recv(1000, &inbound("INVITE", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [180]);
    assert!(h.events().is_empty());
}

#[test]
fn invite_server_non_2xx_retransmits_with_timer_g_until_ack() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 486, Some("mine"));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [486]);
    let (sent, _) = h.run_until(12_000);
    assert_eq!(times(&sent), [500, 1500, 3500, 7500, 11500]);
    assert!(sent.iter().all(|(_, m)| status(m) == 486));

    // A retransmitted INVITE gets the final again.
    h.recv(12_100, &inbound("INVITE", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [486]);

    // The ACK (same branch) is absorbed: no event, retransmissions stop.
    h.recv(12_200, &inbound("ACK", "z9hG4bK1", 1, "mine"), udp(UA));
    assert!(h.events().is_empty());
    h.recv(12_300, &inbound("ACK", "z9hG4bK1", 1, "mine"), udp(UA));
    h.recv(12_300, &inbound("INVITE", "z9hG4bK1", 1, ""), udp(UA));
    assert!(h.sent().is_empty(), "Confirmed absorbs silently");
    let (sent, events) = h.run_until(17_200);
    assert!(sent.is_empty() && events.is_empty());
    assert!(h.layer.is_empty(), "timer I = T4 after the ACK");
}

#[test]
fn invite_server_timer_h_without_ack() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 500, None);
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [500]);
    let (sent, events) = h.run_until(40_000);
    assert_eq!(
        times(&sent),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(events, [(32_000, TuEvent::Timeout { txn })]);
}

#[test]
fn invite_server_tcp_sends_final_once_and_ends_on_ack() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", tcp(UA));
    h.respond(0, txn, 404, Some("mine"));
    let transmits: Vec<_> = std::iter::from_fn(|| h.layer.poll_transmit()).collect();
    assert_eq!(transmits.len(), 1);
    assert_eq!(
        transmits[0].peer,
        tcp(UA),
        "back on the request's connection"
    );
    let (sent, _) = h.run_until(10_000);
    assert!(sent.is_empty(), "no timer G on TCP");
    h.recv(10_000, &inbound("ACK", "z9hG4bK1", 1, "mine"), tcp(UA));
    assert!(h.layer.is_empty(), "timer I = 0 on TCP");
    assert!(h.events().is_empty());
}

#[test]
fn invite_server_retransmits_2xx_until_ack_then_delivers_it() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 200, Some("mine"));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [200]);
    let (sent, _) = h.run_until(4000);
    assert_eq!(times(&sent), [500, 1500, 3500]);

    // A retransmitted INVITE is absorbed (the 2xx is re-sent, the TU is not bothered).
    h.recv(4000, &inbound("INVITE", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [200]);
    assert!(h.events().is_empty());

    // An ACK with the wrong To tag is not ours.
    h.recv(4100, &inbound("ACK", "z9hG4bKack", 1, "other"), udp(UA));
    assert!(h.events().is_empty());

    // The 2xx ACK is a new transaction (new branch): matched by Call-ID, CSeq and tags.
    h.recv(
        4200,
        &inbound("ACK", "z9hG4bKack", 1, "mine"),
        udp("192.0.2.11:5060"),
    );
    let events = h.events();
    let [
        TuEvent::Ack {
            invite_txn,
            request,
            from,
        },
    ] = events.as_slice()
    else {
        panic!("expected the ACK, got {events:?}");
    };
    assert_eq!(*invite_txn, txn);
    assert_eq!(request.method, Method::Ack);
    assert_eq!(*from, udp("192.0.2.11:5060"));

    // Retransmissions stop; a duplicate ACK is absorbed; timer L ends the transaction quietly.
    h.recv(4300, &inbound("ACK", "z9hG4bKack", 1, "mine"), udp(UA));
    assert!(h.events().is_empty());
    let (sent, events) = h.run_until(40_000);
    assert!(sent.is_empty() && events.is_empty());
    assert!(h.layer.is_empty());
}

#[test]
fn invite_server_2xx_never_acked_times_out() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", tcp(UA));
    h.respond(0, txn, 200, Some("mine"));
    h.sent();
    let (sent, events) = h.run_until(40_000);
    // §13.3.1.4: 2xx retransmission is end to end, so it runs even over TCP, capped at T2.
    assert_eq!(
        times(&sent),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(events, [(32_000, TuEvent::Timeout { txn })]);
    assert!(h.layer.is_empty());
}

#[test]
fn send_response_checks_state() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 486, Some("mine"));
    let request = request(&inbound("INVITE", "z9hG4bKx", 1, ""));
    assert_eq!(
        h.layer
            .send_response(h.at(1), txn, response(&request, StatusCode::OK, None)),
        Err(TxnError::AlreadyFinal)
    );
    assert_eq!(
        h.layer.send_response(
            h.at(1),
            TransactionId(999),
            response(&request, StatusCode::OK, None)
        ),
        Err(TxnError::UnknownTransaction)
    );
    let client = h
        .layer
        .send_request(h.at(0), outbound("OPTIONS", "z9hG4bKo"), udp(UA))
        .expect("sent");
    assert_eq!(
        h.layer
            .send_response(h.at(1), client, response(&request, StatusCode::OK, None)),
        Err(TxnError::WrongKind)
    );
}

// ---------------------------------------------------------------- CANCEL (server)

#[test]
fn cancel_of_pending_invite_is_answered_and_reported() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 180, Some("mine"));
    h.sent();
    h.recv(100, &inbound("CANCEL", "z9hG4bK1", 1, ""), udp(UA));
    let sent = h.sent();
    let [SipMessage::Response(ok)] = sent.as_slice() else {
        panic!("expected the CANCEL's 200, got {sent:?}");
    };
    assert_eq!(ok.status_code.code(), 200);
    assert_eq!(ok.cseq(), Some((1, Method::Cancel)));
    assert_eq!(
        ok.to_tag().as_deref(),
        Some("mine"),
        "§9.2: same tag as the INVITE's"
    );
    let events = h.events();
    assert!(matches!(
        events.as_slice(),
        [TuEvent::Cancel { invite_txn, request, .. }] if *invite_txn == txn && request.method == Method::Cancel
    ));

    // A retransmitted CANCEL gets the 200 again, without a second event.
    h.recv(200, &inbound("CANCEL", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [200]);
    assert!(h.events().is_empty());

    // The TU answers 487; the ACK for it is absorbed.
    h.respond(300, txn, 487, Some("mine"));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [487]);
    h.recv(400, &inbound("ACK", "z9hG4bK1", 1, "mine"), udp(UA));
    assert!(h.events().is_empty());
    let (sent, _) = h.run_until(1000);
    assert!(sent.is_empty(), "487 no longer retransmitted");
}

#[test]
fn unmatched_cancel_gets_481() {
    let mut h = Harness::new();
    h.recv(0, &inbound("CANCEL", "z9hG4bK9", 1, ""), udp(UA));
    let sent = h.sent();
    assert_eq!(sent.iter().map(status).collect::<Vec<_>>(), [481]);
    let SipMessage::Response(r) = &sent[0] else {
        unreachable!()
    };
    assert!(r.to_tag().is_some());
    assert!(h.events().is_empty());
}

#[test]
fn cancel_after_final_gets_200_without_event() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 200, Some("mine"));
    h.sent();
    h.recv(10, &inbound("CANCEL", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [200]);
    assert!(h.events().is_empty());
}

// ---------------------------------------------------------------- non-INVITE server

#[test]
fn non_invite_server_absorbs_retransmissions_and_uses_timer_j() {
    let mut h = Harness::new();
    h.recv(0, &inbound("OPTIONS", "z9hG4bK2", 1, ""), udp(UA));
    assert!(h.sent().is_empty(), "no automatic 100 for non-INVITE");
    let (txn, _, _) = h.one_request();
    // Trying: absorbed silently.
    h.recv(100, &inbound("OPTIONS", "z9hG4bK2", 1, ""), udp(UA));
    assert!(h.sent().is_empty() && h.events().is_empty());

    h.respond(200, txn, 200, Some("mine"));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [200]);
    let (sent, _) = h.run_until(5000);
    assert!(
        sent.is_empty(),
        "non-INVITE finals are not retransmitted by timer"
    );
    h.recv(5000, &inbound("OPTIONS", "z9hG4bK2", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [200]);
    assert!(h.events().is_empty());
    let (_, events) = h.run_until(40_000);
    assert!(events.is_empty());
    assert!(h.layer.is_empty(), "timer J = 64*T1");
}

#[test]
fn non_invite_server_proceeding_resends_provisional() {
    let mut h = Harness::new();
    h.recv(0, &inbound("INFO", "z9hG4bK2", 1, "x"), udp(UA));
    let (txn, _, _) = h.one_request();
    h.respond(10, txn, 100, None);
    h.sent();
    h.recv(20, &inbound("INFO", "z9hG4bK2", 1, "x"), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [100]);
}

#[test]
fn non_invite_server_tcp_ends_on_final() {
    let mut h = Harness::new();
    h.recv(0, &inbound("BYE", "z9hG4bK2", 2, "x"), tcp(UA));
    let (txn, _, _) = h.one_request();
    h.respond(10, txn, 200, None);
    assert_eq!(h.sent().len(), 1);
    assert!(h.layer.is_empty(), "timer J = 0 on TCP");
}

// ---------------------------------------------------------------- matching

#[test]
fn rfc3261_matching_needs_branch_sent_by_and_method() {
    let mut h = Harness::new();
    h.server_invite("z9hG4bK1", udp(UA));
    // Same branch from another sent-by: a different transaction.
    let other = inbound("INVITE", "z9hG4bK1", 1, "").replace(
        &format!("Via: SIP/2.0/UDP {UA}"),
        "Via: SIP/2.0/UDP 192.0.2.99:5060",
    );
    h.recv(10, &other, udp("192.0.2.99:5060"));
    assert_eq!(h.events().len(), 1);
    // Same branch, other method: a different transaction too.
    h.recv(20, &inbound("OPTIONS", "z9hG4bK1", 1, ""), udp(UA));
    assert_eq!(h.events().len(), 1);
    assert_eq!(h.layer.len(), 3);
}

#[test]
fn rfc2543_matching_without_magic_cookie() {
    let mut h = Harness::new();
    let txn = h.server_invite("old1", udp(UA));
    h.recv(100, &inbound("INVITE", "old1", 1, ""), udp(UA));
    assert_eq!(h.sent().iter().map(status).collect::<Vec<_>>(), [100]);
    assert!(
        h.events().is_empty(),
        "retransmission matched without a cookie"
    );

    // Another CSeq is another transaction.
    h.recv(150, &inbound("INVITE", "old1", 2, ""), udp(UA));
    h.sent();
    assert_eq!(h.events().len(), 1);

    h.respond(200, txn, 486, Some("mine"));
    h.sent();
    h.recv(300, &inbound("ACK", "old1", 1, "mine"), udp(UA));
    assert!(h.events().is_empty());
    let (sent, _) = h.run_until(1000);
    assert!(sent.is_empty(), "the ACK matched: timer G stopped");
}

#[test]
fn stray_ack_is_dropped() {
    let mut h = Harness::new();
    h.recv(0, &inbound("ACK", "z9hG4bKstray", 1, "t"), udp(UA));
    assert!(h.sent().is_empty() && h.events().is_empty());
    assert!(h.layer.is_empty());
}

#[test]
fn request_via_gets_received_and_rport() {
    let mut h = Harness::new();
    let text = inbound("INVITE", "z9hG4bK1", 1, "").replace(
        &format!("Via: SIP/2.0/UDP {UA};branch=z9hG4bK1"),
        "Via: SIP/2.0/UDP 10.1.1.1:5060;rport;branch=z9hG4bK1",
    );
    let nat = udp("203.0.113.5:40000");
    h.recv(0, &text, nat);
    let sent: Vec<_> = std::iter::from_fn(|| h.layer.poll_transmit()).collect();
    assert_eq!(
        sent[0].peer, nat,
        "responses go where the request came from"
    );
    let SipMessage::Response(trying) = decode(&sent[0].bytes) else {
        panic!("expected 100");
    };
    let via = trying.via_header().expect("via").value().to_string();
    assert_eq!(
        via,
        "SIP/2.0/UDP 10.1.1.1:5060;rport=40000;branch=z9hG4bK1;received=203.0.113.5"
    );
    let (_, request, _) = h.one_request();
    assert_eq!(request.via_header().expect("via").value(), via);
    // The stamp does not break matching of retransmissions.
    h.recv(100, &text, nat);
    assert!(h.events().is_empty());

    // A sent-by that already is the source address is left alone.
    h.recv(0, &inbound("OPTIONS", "z9hG4bK3", 1, ""), udp(UA));
    let (_, request, _) = h.one_request();
    assert_eq!(
        request.via_header().expect("via").value(),
        format!("SIP/2.0/UDP {UA};branch=z9hG4bK3")
    );
}

// ---------------------------------------------------------------- IO plumbing

#[test]
fn transport_error_ends_the_transaction() {
    let mut h = Harness::new();
    let txn = h
        .layer
        .send_request(h.at(0), outbound("INVITE", "z9hG4bKa"), tcp(UA))
        .expect("sent");
    let t = h.layer.poll_transmit().expect("transmit");
    assert_eq!(t.txn, Some(txn));
    h.layer.on_transport_error(txn);
    assert_eq!(h.events(), [TuEvent::TransportError { txn }]);
    assert!(h.layer.is_empty());
    assert_eq!(h.layer.poll_timeout(), None, "stale timers pruned");
    h.layer.on_transport_error(txn);
    assert!(h.events().is_empty());
}

#[test]
fn stateless_send_and_branches() {
    let mut h = Harness::new();
    h.layer.send_stateless(
        Bytes::from_static(b"SIP/2.0 400 Bad Request\r\n\r\n"),
        udp(UA),
    );
    let t = h.layer.poll_transmit().expect("transmit");
    assert_eq!(t.txn, None);
    assert!(h.layer.is_empty());
    let (a, b) = (new_branch(), new_branch());
    assert!(a.starts_with(BRANCH_MAGIC_COOKIE) && a.len() == 23);
    assert_ne!(a, b);
}

#[test]
fn ack_on_the_invite_branch_still_acknowledges_a_2xx() {
    let mut h = Harness::new();
    let txn = h.server_invite("z9hG4bK1", udp(UA));
    h.respond(0, txn, 200, Some("mine"));
    h.sent();
    h.recv(100, &inbound("ACK", "z9hG4bK1", 1, "mine"), udp(UA));
    assert!(matches!(
        h.events().as_slice(),
        [TuEvent::Ack { invite_txn, .. }] if *invite_txn == txn
    ));
    let (sent, _) = h.run_until(10_000);
    assert!(sent.is_empty(), "2xx retransmission stopped");
}

#[test]
fn ack_for_unknown_2xx_is_still_sent() {
    let mut h = Harness::new();
    h.layer
        .send_ack_for_2xx(outbound("ACK", "z9hG4bKack"), udp(UA));
    let t = h.layer.poll_transmit().expect("transmit");
    assert_eq!(t.txn, None);
    assert!(h.layer.is_empty());
}

//! The call core's transitions, driven with plain messages and a fake node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_cluster::state::NodeId;
use switchyard_media::{Endpoint, EndpointId, MediaEvent, MonitorMode as MixMode};
use switchyard_sip::headers::MessageExt;
use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Method, Request, Response, SipMessage, StatusCode};
use switchyard_sip::transaction::{
    Peer, Timers, TransactionId, TransactionLayer, Transport, TuEvent,
};

use super::super::MonitorMode;
use super::super::legs::{self, Local};
use super::super::replica::{MediaTarget, ReplicaPhase};
use super::*;
use crate::acd::OfferOutcome;
use crate::cdr::{Disposition, FailoverOutcome, HangupBy};

const NODE: &str = "127.0.0.1:5060";
const CALLER: &str = "127.0.0.1:5070";
const AGENT: &str = "127.0.0.1:5080";
const SUPERVISOR: &str = "127.0.0.1:5090";
const TRUNK: &str = "127.0.0.1:5099";

/// DID 10086: VIPs get priority 10; a menu (1 sales, 2 support) with a 5 s timeout; 0 goes to
/// a line closed by its schedule's override.
const TEST_FLOWS: &str = r#"
[[flow]]
name = "main"
start = "vip-check"
language = "zh"
[flow.steps.vip-check]
branch_caller = { list = "vip", then = "vip", else = "welcome" }
[flow.steps.vip]
set = { priority = 10 }
next = "welcome"
[flow.steps.welcome]
play = ["welcome"]
next = "menu"
[flow.steps.menu]
menu = { prompt = ["menu"], options = { "1" = "sales", "2" = "support", "0" = "late", "3" = "out" }, timeout_secs = 5, max_timeouts = 2, on_timeout = "support", on_invalid = "support" }
[flow.steps.sales]
queue = { name = "sales", preferred_agent = "2001", preferred_wait_secs = 20 }
[flow.steps.support]
queue = { name = "support" }
[flow.steps.out]
transfer = { number = "4008001234" }
[flow.steps.late]
branch_time = { schedule = "late", open = "support", closed = "closed" }
[flow.steps.closed]
hangup = { prompt = ["closed"], disposition = "closed" }

[[flow]]
name = "survey"
start = "ask"
language = "en"
[flow.steps.ask]
collect = { prompt = ["survey"], var = "survey", max_digits = 1, accept = "12345", terminator = "", on_fail = "bye" }
next = "bye"
[flow.steps.bye]
hangup = { prompt = ["survey-thanks"], disposition = "survey" }

[[schedule]]
name = "late"
time_zone = "Asia/Shanghai"
override = "closed"

[[number_list]]
name = "vip"
numbers = ["13900000001-13900000099"]
"#;

/// What the fake media workers were asked to do.
#[derive(Debug, Clone, PartialEq)]
enum MediaOp {
    Remote(EndpointId, SocketAddr),
    Play(EndpointId, Sound),
    Prompts(EndpointId, Vec<String>, bool),
    StopPlayback(EndpointId),
    Inband(EndpointId),
    Bridge(EndpointId, EndpointId),
    Record(EndpointId, EndpointId, PathBuf),
    Monitor(EndpointId, MixMode),
    StopMonitor(EndpointId),
    Release(EndpointId),
}

struct FakeNode {
    now_ms: u64,
    started: Instant,
    dids: HashMap<String, DidConfig>,
    flows: Arc<FlowSet>,
    /// The survey flow of queue `support`.
    survey: Option<String>,
    recorded_queues: Vec<String>,
    bindings: HashMap<String, (rsip::Uri, Peer)>,
    standbys: Option<Vec<NodeId>>,
    may_act: bool,
    next_endpoint: u64,
    free_ports: bool,
    media: Vec<MediaOp>,
}

impl FakeNode {
    fn new() -> Self {
        let mut dids = HashMap::new();
        dids.insert(
            "1000".to_owned(),
            DidConfig {
                number: "1000".into(),
                queue: Some("support".into()),
                flow: None,
                priority: 3,
                priority_for: Default::default(),
            },
        );
        dids.insert(
            "1001".to_owned(),
            DidConfig {
                number: "1001".into(),
                queue: Some("support".into()),
                flow: None,
                priority: 3,
                priority_for: [("vip".to_owned(), 10), ("nobody".to_owned(), 20)].into(),
            },
        );
        dids.insert(
            "10086".to_owned(),
            DidConfig {
                number: "10086".into(),
                queue: None,
                flow: Some("main".into()),
                priority: 0,
                priority_for: Default::default(),
            },
        );
        let mut bindings = HashMap::new();
        for (ext, addr) in [("2001", AGENT), ("3001", SUPERVISOR)] {
            let uri = message::parse_uri(&format!("sip:{ext}@{addr}")).expect("uri");
            bindings.insert(ext.to_owned(), (uri, udp(addr)));
        }
        Self {
            now_ms: 1_000_000,
            started: Instant::now(),
            dids,
            flows: Arc::new(toml::from_str(TEST_FLOWS).expect("test flows")),
            survey: None,
            recorded_queues: vec!["support".into()],
            bindings,
            standbys: None,
            may_act: true,
            next_endpoint: 0,
            free_ports: true,
            media: Vec::new(),
        }
    }

    fn clustered(standbys: &[NodeId]) -> Self {
        Self {
            standbys: Some(standbys.to_vec()),
            ..Self::new()
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    fn took(&mut self) -> Vec<MediaOp> {
        std::mem::take(&mut self.media)
    }
}

impl CallEnv for FakeNode {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn instant(&self) -> Instant {
        self.started + Duration::from_millis(self.now_ms)
    }
    fn local(&self, transport: Transport) -> Local {
        Local {
            addr: NODE.parse().expect("addr"),
            transport,
        }
    }
    fn did(&self, number: &str) -> Option<DidConfig> {
        self.dids.get(number).cloned()
    }
    fn flows(&self) -> Arc<FlowSet> {
        Arc::clone(&self.flows)
    }
    fn agents_logged_in(&self, queue: &str) -> u32 {
        u32::from(queue == "support")
    }
    fn estimated_wait_secs(&self, _queue: &str) -> u64 {
        30
    }
    fn queue_exists(&self, queue: &str) -> bool {
        ["support", "sales"].contains(&queue)
    }
    fn survey_flow(&self, queue: &str) -> Option<String> {
        self.survey.clone().filter(|_| queue == "support")
    }
    fn routing_facts(&self, queue: &str, agent_id: &str, waited_ms: u64) -> RoutingFacts {
        let level = if waited_ms < 10_000 { 4 } else { 1 };
        RoutingFacts {
            pool: (agent_id == "2001").then(|| "inhouse".to_owned()),
            skills: [(format!("{queue}-skill"), level)].into(),
        }
    }
    fn callback_policy(&self, queue: &str) -> Option<crate::config::CallbackPolicy> {
        (queue == "support").then(|| crate::config::CallbackPolicy {
            key: '9',
            trunk: "carrier".into(),
            attempts: 2,
            retry_after_secs: 60,
            ring_secs: 30,
        })
    }
    fn trunk(&self, name: Option<&str>) -> Option<crate::config::TrunkConfig> {
        (name.unwrap_or("carrier") == "carrier").then(|| crate::config::TrunkConfig {
            name: "carrier".into(),
            address: TRUNK.parse().expect("addr"),
            tcp: false,
            caller_id: Some("10086".into()),
        })
    }
    fn queue_records(&self, queue: &str) -> bool {
        self.recorded_queues.iter().any(|q| q == queue)
    }
    fn binding(&self, extension: &str) -> Option<(rsip::Uri, Peer)> {
        self.bindings.get(extension).cloned()
    }
    fn recording_path(&self, call_id: &str, segment: Option<usize>) -> PathBuf {
        match segment {
            Some(n) => PathBuf::from(format!("/rec/{call_id}-{n}.wav")),
            None => PathBuf::from(format!("/rec/{call_id}.wav")),
        }
    }
    fn goodbye_duration(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn standbys(&self, _call_id: &str) -> Option<Vec<NodeId>> {
        self.standbys.clone()
    }
    fn may_act(&self) -> bool {
        self.may_act
    }
    fn node_id(&self) -> NodeId {
        7
    }
    fn allocate(&mut self, _near: Option<EndpointId>) -> Result<Endpoint, String> {
        if !self.free_ports {
            return Err("no port free".into());
        }
        self.next_endpoint += 1;
        let port = 20_000 + 2 * self.next_endpoint as u16;
        Ok(Endpoint {
            id: EndpointId::from_bits(self.next_endpoint),
            local: SocketAddr::new([127, 0, 0, 1].into(), port),
        })
    }
    fn release(&mut self, ep: EndpointId) {
        self.media.push(MediaOp::Release(ep));
    }
    fn set_remote(&mut self, ep: EndpointId, target: &MediaTarget) {
        self.media.push(MediaOp::Remote(ep, target.addr));
    }
    fn play(&mut self, ep: EndpointId, sound: Sound, _looped: bool) {
        self.media.push(MediaOp::Play(ep, sound));
    }
    fn play_prompts(
        &mut self,
        ep: EndpointId,
        prompts: &[String],
        barge_in: bool,
    ) -> Result<(), String> {
        self.media
            .push(MediaOp::Prompts(ep, prompts.to_vec(), barge_in));
        Ok(())
    }
    fn stop_playback(&mut self, ep: EndpointId) {
        self.media.push(MediaOp::StopPlayback(ep));
    }
    fn detect_inband_dtmf(&mut self, ep: EndpointId) {
        self.media.push(MediaOp::Inband(ep));
    }
    fn bridge(&mut self, a: EndpointId, b: EndpointId) -> Result<(), String> {
        self.media.push(MediaOp::Bridge(a, b));
        Ok(())
    }
    fn record(&mut self, a: EndpointId, b: EndpointId, path: &Path) -> Result<(), String> {
        self.media.push(MediaOp::Record(a, b, path.to_owned()));
        Ok(())
    }
    fn monitor(
        &mut self,
        supervisor: EndpointId,
        _caller: EndpointId,
        _agent: EndpointId,
        mode: MixMode,
    ) -> Result<(), String> {
        self.media.push(MediaOp::Monitor(supervisor, mode));
        Ok(())
    }
    fn set_monitor_mode(&mut self, supervisor: EndpointId, mode: MixMode) {
        self.media.push(MediaOp::Monitor(supervisor, mode));
    }
    fn stop_monitor(&mut self, supervisor: EndpointId) {
        self.media.push(MediaOp::StopMonitor(supervisor));
    }
    fn rtp_stats(&mut self, _ep: EndpointId) -> Option<RtpStats> {
        None
    }
}

fn udp(addr: &str) -> Peer {
    Peer {
        addr: addr.parse().expect("addr"),
        transport: Transport::Udp,
        connection: None,
    }
}

fn sdp_body(port: u16, pt: u8, dtmf: bool) -> String {
    let events = if dtmf {
        "a=rtpmap:101 telephone-event/8000\r\n"
    } else {
        ""
    };
    let fmts = if dtmf {
        format!("{pt} 101")
    } else {
        pt.to_string()
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {fmts}\r\n{events}"
    )
}

fn parse_request(text: &str) -> Request {
    match message::parse(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

fn caller_invite(did: &str, extra: &str, body: &str) -> Request {
    parse_request(&format!(
        "INVITE sip:{did}@{NODE} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CALLER};branch=z9hG4bK-caller-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:13900000001@{CALLER}>;tag=caller-tag\r\n\
         To: <sip:{did}@{NODE}>\r\n\
         Call-ID: caller-call@test\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:13900000001@{CALLER}>\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// A server transaction for `request`, from a real transaction layer.
fn server_txn(request: &Request, from: Peer) -> TransactionId {
    let mut layer = TransactionLayer::new(Timers::default());
    layer.handle_message(Instant::now(), SipMessage::Request(request.clone()), from);
    loop {
        match layer.poll_event() {
            Some(TuEvent::Request { txn, .. }) => return txn,
            Some(_) => continue,
            None => panic!("no server transaction"),
        }
    }
}

fn settings(replicated: bool) -> CallSettings {
    CallSettings {
        node_name: "node1".into(),
        user_agent: "switchyard-test".into(),
        replicated,
    }
}

/// A call whose caller dialled `did`, started (routed).
fn started_call(env: &mut FakeNode, did: &str) -> CallCore {
    let invite = caller_invite(
        did,
        "Content-Type: application/sdp\r\n",
        &sdp_body(4000, 0, true),
    );
    let txn = server_txn(&invite, udp(CALLER));
    let mut call = CallCore::new(
        env,
        settings(env.standbys.is_some()),
        invite,
        txn,
        udp(CALLER),
    );
    call.handle(env, Input::Start);
    call
}

fn responses(effects: &[Effect]) -> Vec<u16> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Respond { response, .. } => Some(response.status_code.code()),
            _ => None,
        })
        .collect()
}

fn sent(effects: &[Effect], method: Method) -> Vec<(Request, Peer)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { request, to, .. } if request.method == method => {
                Some((request.clone(), *to))
            }
            _ => None,
        })
        .collect()
}

fn queue_notes(effects: &[Effect]) -> Vec<QueueNote> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToQueue { note, .. } => Some(note.clone()),
            _ => None,
        })
        .collect()
}

fn record_of(effects: &[Effect]) -> Option<CallRecord> {
    effects.iter().find_map(|e| match e {
        Effect::WriteRecord(r) => Some((**r).clone()),
        _ => None,
    })
}

fn timers(effects: &[Effect]) -> Vec<Timer> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::After { timer, .. } => Some(*timer),
            _ => None,
        })
        .collect()
}

fn offer(agent: &str) -> Input {
    Input::Offer {
        agent_id: agent.into(),
        queue: "support".into(),
        ring_timeout_secs: 15,
        contacts: Vec::new(),
        offered_ms: 1_000_100,
    }
}

/// A final response from the phone to `invite`, with SDP for a 2xx.
fn phone_answer(invite: &Request, code: u16, contact: &str, rtp_port: u16) -> Response {
    let mut response = message::response(invite, StatusCode::from(code), Some("phone-tag"));
    if code < 300 {
        response
            .headers
            .push(Header::Contact(format!("<sip:phone@{contact}>").into()));
        response
            .headers
            .push(Header::ContentType("application/sdp".into()));
        response.body = sdp_body(rtp_port, 0, true).into_bytes();
    }
    response
}

/// An in-dialog request from the phone of `leg`, as the phone would send it.
fn in_dialog(method: Method, leg: &Leg, cseq: u32, body: &str) -> Request {
    let dialog = leg.dialog.as_ref().expect("dialog");
    let extra = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".into()
    };
    parse_request(&format!(
        "{method} {local} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {peer};branch=z9hG4bK-{method}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: {remote_uri};tag={remote_tag}\r\n\
         To: {local_uri};tag={local_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        local = dialog.local_contact.trim_matches(['<', '>']),
        peer = leg.peer.addr,
        remote_uri = dialog.remote_uri,
        remote_tag = dialog.remote_tag,
        local_uri = dialog.local_uri,
        local_tag = dialog.local_tag,
        call_id = dialog.call_id,
    ))
}

fn request_input(request: Request, from: &str) -> Input {
    let txn = server_txn(&request, udp(from));
    Input::Request { txn, request }
}

/// A call connected to agent 2001.
fn connected_call(env: &mut FakeNode) -> CallCore {
    let mut call = started_call(env, "1000");
    call.handle(env, offer("2001"));
    let effects = call.take_effects();
    let (invite, _) = sent(&effects, Method::Invite).remove(0);
    call.handle(
        env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    call.take_effects();
    assert_eq!(call.phase, Phase::Connected);
    call
}

#[test]
fn a_routed_call_hears_music_and_joins_its_queue_with_the_did_priority() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [183]);
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::Enqueue {
            priority: 3,
            since_ms: 1_000_000,
            preferred: None,
        }]
    );
    assert_eq!(call.phase, Phase::Queued);
    let ep = EndpointId::from_bits(1);
    assert_eq!(
        env.took(),
        [
            MediaOp::Remote(ep, "127.0.0.1:4000".parse().expect("addr")),
            MediaOp::Play(ep, Sound::MusicOnHold)
        ]
    );
    assert_eq!(call.snapshot().state, "queued");
}

#[test]
fn a_caller_without_telephone_events_is_listened_to_for_tones() {
    let mut env = FakeNode::new();
    let invite = caller_invite(
        "1000",
        "Content-Type: application/sdp\r\n",
        &sdp_body(4000, 8, false),
    );
    let txn = server_txn(&invite, udp(CALLER));
    let mut call = CallCore::new(&env, settings(false), invite, txn, udp(CALLER));
    call.handle(&mut env, Input::Start);
    assert!(
        env.took()
            .contains(&MediaOp::Inband(EndpointId::from_bits(1)))
    );
}

#[test]
fn calls_that_cannot_be_served_are_refused_with_the_matching_status() {
    let cases: [(&str, &str, String, u16); 4] = [
        (
            "9999",
            "Content-Type: application/sdp\r\n",
            sdp_body(4000, 0, true),
            404,
        ),
        ("1000", "", String::new(), 488),
        ("1000", "Content-Type: text/plain\r\n", "hello".into(), 415),
        (
            "1000",
            "Content-Type: application/sdp\r\nAccept: text/plain\r\n",
            sdp_body(4000, 0, true),
            406,
        ),
    ];
    for (did, extra, body, code) in cases {
        let mut env = FakeNode::new();
        let invite = caller_invite(did, extra, &body);
        let txn = server_txn(&invite, udp(CALLER));
        let mut call = CallCore::new(&env, settings(false), invite, txn, udp(CALLER));
        call.handle(&mut env, Input::Start);
        let effects = call.take_effects();
        assert_eq!(responses(&effects), [code], "{did} {extra}");
        let record = record_of(&effects).expect("a record");
        assert_eq!(record.disposition, Disposition::Failed);
        assert!(call.is_finished());
    }
}

#[test]
fn no_media_port_is_503() {
    let mut env = FakeNode::new();
    env.free_ports = false;
    let mut call = started_call(&mut env, "1000");
    assert_eq!(responses(&call.take_effects()), [503]);
}

#[test]
fn an_offer_rings_the_agent_and_its_answer_connects_bridges_and_records() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    env.took();
    call.handle(&mut env, offer("2001"));
    let effects = call.take_effects();
    let (invite, to) = sent(&effects, Method::Invite).remove(0);
    assert_eq!(to.addr, AGENT.parse::<SocketAddr>().expect("addr"));
    assert!(
        invite
            .from_uri()
            .expect("from")
            .to_string()
            .contains("13900000001")
    );
    assert_eq!(timers(&effects), [Timer::RingTimeout { attempt: 1 }]);
    assert_eq!(call.phase, Phase::Offering);

    env.advance(3_000);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    let effects = call.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    assert_eq!(responses(&effects), [200]);
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::OfferOutcome {
            agent_id: "2001".into(),
            outcome: OfferOutcome::Answered
        }]
    );
    let (caller, agent) = (EndpointId::from_bits(1), EndpointId::from_bits(2));
    let media = env.took();
    assert!(media.contains(&MediaOp::Bridge(caller, agent)));
    assert!(media.contains(&MediaOp::Record(
        caller,
        agent,
        PathBuf::from(format!("/rec/{}.wav", call.id()))
    )));
    assert_eq!(call.record.answered_ms, Some(1_003_000));
    assert_eq!(call.record.agent.as_deref(), Some("2001"));
    assert_eq!(call.snapshot().state, "connected");
}

#[test]
fn a_ring_timeout_cancels_and_a_late_answer_is_acked_and_hung_up() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.handle(&mut env, offer("2001"));
    let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
    // A timer of an earlier attempt changes nothing.
    call.handle(&mut env, Input::Timer(Timer::RingTimeout { attempt: 0 }));
    assert_eq!(call.phase, Phase::Offering);
    call.handle(&mut env, Input::Timer(Timer::RingTimeout { attempt: 1 }));
    let effects = call.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Cancel { .. })));
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::OfferOutcome {
            agent_id: "2001".into(),
            outcome: OfferOutcome::NoAnswer
        }]
    );
    assert_eq!(call.phase, Phase::Queued);
    assert!(
        env.took()
            .contains(&MediaOp::Release(EndpointId::from_bits(2)))
    );

    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    let effects = call.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    assert_eq!(sent(&effects, Method::Bye).len(), 1);
    assert_eq!(call.phase, Phase::Queued, "the caller still waits");
    assert!(call.legs.is_empty());
}

#[test]
fn refusals_are_reported_by_kind_and_the_caller_waits_on() {
    for (code, outcome) in [
        (486, OfferOutcome::Rejected),
        (603, OfferOutcome::Rejected),
        (408, OfferOutcome::NoAnswer),
        (500, OfferOutcome::Failed),
    ] {
        let mut env = FakeNode::new();
        let mut call = started_call(&mut env, "1000");
        call.handle(&mut env, offer("2001"));
        let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
        call.handle(
            &mut env,
            Input::Response(phone_answer(&invite, code, AGENT, 0)),
        );
        let notes = queue_notes(&call.take_effects());
        assert_eq!(
            notes,
            [QueueNote::OfferOutcome {
                agent_id: "2001".into(),
                outcome
            }]
        );
        assert_eq!(call.phase, Phase::Queued);
        assert_eq!(call.record.offers.len(), 1);
    }
}

#[test]
fn an_unregistered_agent_fails_the_offer_at_once_and_a_remote_contact_is_used() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    call.handle(&mut env, offer("2999"));
    let effects = call.take_effects();
    assert!(sent(&effects, Method::Invite).is_empty());
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::OfferOutcome {
            agent_id: "2999".into(),
            outcome: OfferOutcome::Failed
        }]
    );
    // Registered at another node: the offer carries the contact.
    call.handle(
        &mut env,
        Input::Offer {
            agent_id: "2999".into(),
            queue: "support".into(),
            ring_timeout_secs: 15,
            contacts: vec!["sip:2999@127.0.0.2:5062".into()],
            offered_ms: 1,
        },
    );
    let (_, to) = sent(&call.take_effects(), Method::Invite).remove(0);
    assert_eq!(
        to.addr,
        "127.0.0.2:5062".parse::<SocketAddr>().expect("addr")
    );
}

#[test]
fn an_offer_to_a_call_that_ended_reports_the_caller_gone() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.handle(&mut env, Input::CallerCancelled);
    call.take_effects();
    call.handle(&mut env, offer("2001"));
    assert_eq!(
        queue_notes(&call.take_effects()),
        [QueueNote::OfferOutcome {
            agent_id: "2001".into(),
            outcome: OfferOutcome::CallerAbandoned
        }]
    );
}

#[test]
fn the_caller_hanging_up_ends_both_legs_frees_the_agent_and_writes_one_record() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    env.advance(60_000);
    let bye = in_dialog(Method::Bye, &call.caller, 2, "");
    call.handle(&mut env, request_input(bye, CALLER));
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [200]);
    let byes = sent(&effects, Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.addr, AGENT.parse::<SocketAddr>().expect("addr"));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::AgentFree { agent_id } if agent_id == "2001"))
    );
    let record = record_of(&effects).expect("record");
    assert_eq!(record.disposition, Disposition::Answered);
    assert_eq!(record.hangup_by, HangupBy::Caller);
    assert_eq!(record.talk_ms, 60_000);
    assert_eq!(
        effects
            .iter()
            .filter(|e| matches!(e, Effect::WriteRecord(_)))
            .count(),
        1
    );
    assert!(call.is_finished());
    let released: Vec<_> = env
        .took()
        .into_iter()
        .filter(|op| matches!(op, MediaOp::Release(_)))
        .collect();
    assert_eq!(released.len(), 2);
}

#[test]
fn the_agent_hanging_up_byes_the_caller() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    let agent = call.agent().expect("agent");
    let bye = in_dialog(Method::Bye, agent, 1, "");
    call.handle(&mut env, request_input(bye, AGENT));
    let effects = call.take_effects();
    let byes = sent(&effects, Method::Bye);
    assert_eq!(byes.len(), 1);
    assert_eq!(byes[0].1.addr, CALLER.parse::<SocketAddr>().expect("addr"));
    assert_eq!(
        record_of(&effects).expect("record").hangup_by,
        HangupBy::Agent
    );
}

#[test]
fn a_caller_cancelling_while_ringing_abandons_and_waits_for_the_cancelled_leg() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.handle(&mut env, offer("2001"));
    let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
    call.handle(&mut env, Input::CallerCancelled);
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [487]);
    assert!(effects.iter().any(|e| matches!(e, Effect::Cancel { .. })));
    assert_eq!(
        queue_notes(&effects),
        [
            QueueNote::OfferOutcome {
                agent_id: "2001".into(),
                outcome: OfferOutcome::CallerAbandoned
            },
            QueueNote::Abandon
        ]
    );
    assert_eq!(
        record_of(&effects).expect("record").disposition,
        Disposition::Abandoned
    );
    assert!(timers(&effects).contains(&Timer::Reap));
    assert!(!call.is_finished(), "the cancelled leg may still answer");
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 487, AGENT, 0)),
    );
    assert!(call.is_finished());
}

#[test]
fn the_reap_timer_stops_waiting_for_cancelled_legs() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.handle(&mut env, offer("2001"));
    call.handle(&mut env, Input::CallerCancelled);
    assert!(!call.is_finished());
    call.handle(&mut env, Input::Timer(Timer::Reap));
    assert!(call.is_finished());
}

#[test]
fn overflow_to_goodbye_plays_the_prompt_then_refuses() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    call.handle(
        &mut env,
        Input::Overflow {
            queue: "support".into(),
            action: Overflow::Goodbye,
        },
    );
    assert!(
        env.took()
            .contains(&MediaOp::Play(EndpointId::from_bits(1), Sound::Goodbye))
    );
    let effects = call.take_effects();
    assert_eq!(timers(&effects), [Timer::PromptDeadline]);
    assert_eq!(call.snapshot().state, "goodbye");
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished {
            endpoint: EndpointId::from_bits(1),
        }),
    );
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [480]);
    assert_eq!(
        record_of(&effects).expect("record").disposition,
        Disposition::Overflowed
    );
    // The deadline coming after the end changes nothing.
    call.handle(&mut env, Input::Timer(Timer::PromptDeadline));
    assert!(call.take_effects().is_empty());
}

#[test]
fn overflow_to_another_queue_keeps_the_first_queued_time() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    env.advance(30_000);
    call.handle(
        &mut env,
        Input::Overflow {
            queue: "support".into(),
            action: Overflow::Queue {
                queue: "sales".into(),
            },
        },
    );
    let effects = call.take_effects();
    assert!(matches!(
        &effects[..],
        [Effect::ToQueue { queue, note: QueueNote::Enqueue { priority: 3, since_ms: 1_000_000, preferred: None, } }]
            if queue == "sales"
    ));
    assert_eq!(call.record.queue.as_deref(), Some("sales"));
}

#[test]
fn a_requeue_from_a_restarted_queue_rejoins_only_that_queue() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    call.handle(
        &mut env,
        Input::Requeue {
            queue: "sales".into(),
        },
    );
    assert!(call.take_effects().is_empty());
    env.advance(5_000);
    call.handle(
        &mut env,
        Input::Requeue {
            queue: "support".into(),
        },
    );
    assert_eq!(
        queue_notes(&call.take_effects()),
        [QueueNote::Enqueue {
            priority: 3,
            since_ms: 1_000_000,
            preferred: None,
        }]
    );
}

#[test]
fn a_reinvite_moves_the_media_and_is_answered_with_our_sdp() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    env.took();
    let our_sdp = call.caller.sdp.clone();
    let reinvite = in_dialog(Method::Invite, &call.caller, 2, &sdp_body(4500, 0, true));
    call.handle(&mut env, request_input(reinvite, CALLER));
    let effects = call.take_effects();
    let Some(Effect::Respond { response, .. }) = effects.first() else {
        panic!("no answer: {effects:?}");
    };
    assert_eq!(response.status_code.code(), 200);
    assert_eq!(response.body, our_sdp.into_bytes());
    assert_eq!(
        env.took(),
        [MediaOp::Remote(
            EndpointId::from_bits(1),
            "127.0.0.1:4500".parse().expect("addr")
        )]
    );
    // Garbage SDP is refused and moves nothing.
    let bad = in_dialog(Method::Invite, &call.caller, 3, "v=0\r\n");
    call.handle(&mut env, request_input(bad, CALLER));
    assert_eq!(responses(&call.take_effects()), [488]);
}

#[test]
fn requests_outside_the_dialog_or_of_unknown_methods_are_answered() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    let mut wrong_tag = in_dialog(Method::Bye, &call.caller, 2, "");
    for header in wrong_tag.headers.iter_mut() {
        if let Header::To(to) = header {
            *to = format!("<sip:1000@{NODE}>;tag=nope").into();
        }
    }
    call.handle(&mut env, request_input(wrong_tag, CALLER));
    assert_eq!(responses(&call.take_effects()), [481]);
    let refer = in_dialog(Method::Refer, &call.caller, 3, "");
    call.handle(&mut env, request_input(refer, CALLER));
    assert_eq!(responses(&call.take_effects()), [405]);
    let info = in_dialog(Method::Info, &call.caller, 4, "");
    call.handle(&mut env, request_input(info, CALLER));
    assert_eq!(responses(&call.take_effects()), [200]);
    assert_eq!(call.phase, Phase::Connected);
}

#[test]
fn caller_keys_are_recorded_up_to_a_bound() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    for _ in 0..100 {
        call.handle(
            &mut env,
            Input::Media(MediaEvent::Dtmf {
                endpoint: EndpointId::from_bits(1),
                digit: '5',
            }),
        );
    }
    // Keys from another endpoint are not the caller's.
    call.handle(
        &mut env,
        Input::Media(MediaEvent::Dtmf {
            endpoint: EndpointId::from_bits(99),
            digit: '1',
        }),
    );
    assert_eq!(call.record.dtmf.len(), MAX_RECORDED_DIGITS);
    assert!(!call.record.dtmf.contains('1'));
}

#[test]
fn rtp_silence_hangs_up_unless_the_node_may_not_act() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    env.may_act = false;
    let timeout = Input::Media(MediaEvent::RtpTimeout {
        endpoint: EndpointId::from_bits(1),
    });
    call.handle(&mut env, timeout);
    assert!(call.take_effects().is_empty());
    env.may_act = true;
    call.handle(
        &mut env,
        Input::Media(MediaEvent::RtpTimeout {
            endpoint: EndpointId::from_bits(1),
        }),
    );
    let effects = call.take_effects();
    assert_eq!(sent(&effects, Method::Bye).len(), 2);
    assert_eq!(
        record_of(&effects).expect("record").hangup_by,
        HangupBy::System
    );
}

#[test]
fn a_supervisor_is_rung_mixed_in_and_leaves_without_ending_the_call() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    assert!(
        call.start_monitor(&mut env, "3001".into(), MonitorMode::Listen)
            .is_err()
    );
    call.handle(&mut env, offer("2001"));
    let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    call.take_effects();
    assert!(
        call.start_monitor(&mut env, "2001".into(), MonitorMode::Listen)
            .is_err()
    );
    call.start_monitor(&mut env, "3001".into(), MonitorMode::Listen)
        .expect("monitor");
    assert!(
        call.start_monitor(&mut env, "3001".into(), MonitorMode::Barge)
            .is_err()
    );
    let (invite, to) = sent(&call.take_effects(), Method::Invite).remove(0);
    assert_eq!(to.addr, SUPERVISOR.parse::<SocketAddr>().expect("addr"));
    assert_eq!(call.snapshot().monitor.map(|m| m.answered), Some(false));
    env.took();
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, SUPERVISOR, 7000)),
    );
    let effects = call.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    let sup = EndpointId::from_bits(3);
    assert!(env.took().contains(&MediaOp::Monitor(sup, MixMode::Listen)));
    assert_eq!(call.record.monitors.len(), 1);
    call.set_monitor_mode(&mut env, MonitorMode::Whisper)
        .expect("mode");
    assert_eq!(env.took(), [MediaOp::Monitor(sup, MixMode::Whisper)]);

    let supervisor = call.supervisor().expect("supervisor");
    let bye = in_dialog(Method::Bye, supervisor, 1, "");
    call.handle(&mut env, request_input(bye, SUPERVISOR));
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [200]);
    assert!(sent(&effects, Method::Bye).is_empty());
    assert_eq!(call.phase, Phase::Connected);
    assert!(call.snapshot().monitor.is_none());
    assert!(env.took().contains(&MediaOp::StopMonitor(sup)));
}

#[test]
fn a_ringing_supervisor_is_cancelled_when_the_call_ends() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    call.start_monitor(&mut env, "3001".into(), MonitorMode::Barge)
        .expect("monitor");
    call.take_effects();
    let bye = in_dialog(Method::Bye, &call.caller, 2, "");
    call.handle(&mut env, request_input(bye, CALLER));
    let effects = call.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Cancel { .. })));
    assert!(
        !call.is_finished(),
        "the supervisor's phone may still answer"
    );
}

#[test]
fn changes_are_copied_to_the_standbys_once_per_burst_and_forgotten_at_the_end() {
    let mut env = FakeNode::clustered(&[2, 3]);
    let mut call = started_call(&mut env, "1000");
    let effects = call.take_effects();
    assert_eq!(timers(&effects), [Timer::CopyToStandbys]);
    // Another change before the copy goes costs no second timer.
    call.handle(&mut env, offer("2001"));
    assert!(!timers(&call.take_effects()).contains(&Timer::CopyToStandbys));
    call.handle(&mut env, Input::Timer(Timer::CopyToStandbys));
    let effects = call.take_effects();
    let copies: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::CopyTo { standby, replica } => Some((*standby, replica.phase)),
            _ => None,
        })
        .collect();
    assert_eq!(
        copies,
        [(2, ReplicaPhase::Offering), (3, ReplicaPhase::Offering)]
    );
    // Nothing changed: no copy.
    call.handle(&mut env, Input::Timer(Timer::CopyToStandbys));
    assert!(call.take_effects().is_empty());
    call.handle(&mut env, Input::CallerCancelled);
    let forgotten: Vec<_> = call
        .take_effects()
        .iter()
        .filter_map(|e| match e {
            Effect::Forget { standby } => Some(*standby),
            _ => None,
        })
        .collect();
    assert_eq!(forgotten, [2, 3]);
}

/// The copy of `call` its standby would hold, through rkyv as it crosses the mesh.
fn copy_of(call: &CallCore, env: &FakeNode, phase: ReplicaPhase) -> CallReplica {
    let replica = call.replica(env, phase).expect("replica");
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&replica).expect("rkyv");
    rkyv::from_bytes::<CallReplica, rkyv::rancor::Error>(&bytes).expect("rkyv back")
}

#[test]
fn a_connected_call_taken_over_reinvites_both_legs_and_resumes_on_their_answers() {
    let mut owner = FakeNode::clustered(&[2]);
    let call = connected_call(&mut owner);
    let replica = copy_of(&call, &owner, ReplicaPhase::Connected);
    assert_eq!(replica.owner, 7);

    let mut env = FakeNode::clustered(&[3]);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    assert_eq!(standby.record.id, call.record.id);
    standby.handle(&mut env, Input::Start);
    let effects = standby.take_effects();
    let reinvites = sent(&effects, Method::Invite);
    assert_eq!(reinvites.len(), 2);
    for (request, _) in &reinvites {
        let (cseq, _) = request.cseq().expect("cseq");
        assert!(
            cseq > 1000,
            "CSeq {cseq} clears what the old owner may have sent"
        );
        let contact = request.headers.iter().find_map(|h| match h {
            Header::Contact(c) => Some(c.to_string()),
            _ => None,
        });
        assert!(contact.is_some_and(|c| c.contains(NODE)), "our Contact");
    }
    let media = env.took();
    assert!(media.contains(&MediaOp::Bridge(
        EndpointId::from_bits(1),
        EndpointId::from_bits(2)
    )));
    assert!(
        media
            .iter()
            .any(|op| matches!(op, MediaOp::Record(_, _, path)
        if path.to_string_lossy().ends_with("-2.wav")))
    );
    assert!(standby.resuming.is_some());
    for (request, _) in reinvites {
        let port = if request.call_id() == Some("caller-call@test") {
            4000
        } else {
            6000
        };
        let peer = if port == 4000 { CALLER } else { AGENT };
        standby.handle(
            &mut env,
            Input::Response(phone_answer(&request, 200, peer, port)),
        );
    }
    let effects = standby.take_effects();
    assert_eq!(
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Ack { .. }))
            .count(),
        2
    );
    assert!(standby.resuming.is_none());
    let failover = standby.record.failover.clone().expect("failover");
    assert_eq!(failover.from_node, 7);
    assert_eq!(failover.outcome, FailoverOutcome::Resumed);
    assert_eq!(failover.recording_segments.len(), 1);

    // It ends like any call, with one record.
    let bye = in_dialog(Method::Bye, &standby.caller, 3, "");
    standby.handle(&mut env, request_input(bye, CALLER));
    let record = record_of(&standby.take_effects()).expect("record");
    assert_eq!(record.node, "node1");
    assert_eq!(record.agent.as_deref(), Some("2001"));
}

#[test]
fn a_taken_over_leg_refusing_its_reinvite_drops_the_call() {
    let mut owner = FakeNode::clustered(&[2]);
    let call = connected_call(&mut owner);
    let replica = copy_of(&call, &owner, ReplicaPhase::Connected);
    let mut env = FakeNode::clustered(&[3]);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    standby.handle(&mut env, Input::Start);
    let (reinvite, _) = sent(&standby.take_effects(), Method::Invite).remove(0);
    standby.handle(
        &mut env,
        Input::Response(phone_answer(&reinvite, 488, CALLER, 0)),
    );
    let effects = standby.take_effects();
    assert_eq!(sent(&effects, Method::Bye).len(), 2);
    let record = record_of(&effects).expect("record");
    assert_eq!(
        record.failover.map(|f| f.outcome),
        Some(FailoverOutcome::Dropped)
    );
    assert_eq!(record.disposition, Disposition::Answered);
}

#[test]
fn a_queued_caller_taken_over_adopts_its_invite_and_keeps_its_place() {
    let mut owner = FakeNode::clustered(&[2]);
    let mut call = started_call(&mut owner, "1000");
    call.take_effects();
    let replica = copy_of(&call, &owner, ReplicaPhase::Queued);
    let mut env = FakeNode::clustered(&[3]);
    env.advance(10_000);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    standby.handle(&mut env, Input::Start);
    let effects = standby.take_effects();
    let Some(Effect::Adopt { invite, from }) =
        effects.iter().find(|e| matches!(e, Effect::Adopt { .. }))
    else {
        panic!("no adoption: {effects:?}");
    };
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::Enqueue {
            priority: 3,
            since_ms: 1_000_000,
            preferred: None,
        }]
    );
    // The adopted INVITE comes back in this node's transaction: 183 with this node's media.
    let txn = server_txn(invite, *from);
    standby.handle(
        &mut env,
        Input::Request {
            txn,
            request: invite.clone(),
        },
    );
    let effects = standby.take_effects();
    assert_eq!(responses(&effects), [183]);
    assert!(
        env.took()
            .contains(&MediaOp::Play(EndpointId::from_bits(1), Sound::MusicOnHold))
    );
}

#[test]
fn a_ringing_offer_taken_over_is_cancelled_and_reported_failed() {
    let mut owner = FakeNode::clustered(&[2]);
    let mut call = started_call(&mut owner, "1000");
    call.handle(&mut owner, offer("2001"));
    let replica = copy_of(&call, &owner, ReplicaPhase::Offering);
    let mut env = FakeNode::clustered(&[3]);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    standby.handle(&mut env, Input::Start);
    let effects = standby.take_effects();
    let cancel = effects.iter().find_map(|e| match e {
        Effect::SendStateless { request, .. } => Some(request.clone()),
        _ => None,
    });
    let cancel = cancel.expect("a CANCEL");
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(
        queue_notes(&effects),
        [
            QueueNote::OfferOutcome {
                agent_id: "2001".into(),
                outcome: OfferOutcome::Failed
            },
            QueueNote::Enqueue {
                priority: 3,
                since_ms: 1_000_000,
                preferred: None,
            }
        ]
    );
    assert_eq!(standby.phase, Phase::Queued);
}

#[test]
fn a_draining_node_hands_the_call_over_and_lets_go_after_the_linger() {
    let mut env = FakeNode::clustered(&[2, 3]);
    let mut call = connected_call(&mut env);
    env.took();
    call.handle(&mut env, Input::HandOver);
    let effects = call.take_effects();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::HandOverTo { standby: 2, .. }))
    );
    assert!(timers(&effects).contains(&Timer::Relinquish));
    assert_eq!(call.phase, Phase::HandedOver);
    // A request still sent here lost the race to the standby.
    let bye = in_dialog(Method::Bye, &call.caller, 2, "");
    call.handle(&mut env, request_input(bye, CALLER));
    assert_eq!(responses(&call.take_effects()), [481]);
    call.handle(&mut env, Input::Timer(Timer::Relinquish));
    let effects = call.take_effects();
    assert!(
        record_of(&effects).is_none(),
        "the standby writes the record"
    );
    assert!(sent(&effects, Method::Bye).is_empty());
    assert!(call.is_finished());
}

#[test]
fn a_relinquished_call_stops_silently() {
    let mut env = FakeNode::clustered(&[2]);
    let mut call = connected_call(&mut env);
    call.handle(&mut env, Input::Relinquish);
    let effects = call.take_effects();
    assert!(record_of(&effects).is_none());
    assert!(sent(&effects, Method::Bye).is_empty());
    assert!(call.is_finished());
}

fn sdp_with(port: u16, direction: &str) -> String {
    format!("{}a={direction}\r\n", sdp_body(port, 0, true))
}

#[test]
fn an_agent_phone_holding_plays_music_to_the_caller_and_resuming_counts_the_hold() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    env.took();
    let (caller, agent) = (EndpointId::from_bits(1), EndpointId::from_bits(2));
    let hold = in_dialog(
        Method::Invite,
        call.agent().expect("agent"),
        2,
        &sdp_with(6000, "sendonly"),
    );
    call.handle(&mut env, request_input(hold, AGENT));
    let effects = call.take_effects();
    let Some(Effect::Respond { response, .. }) = effects.first() else {
        panic!("no answer: {effects:?}");
    };
    let answer = String::from_utf8_lossy(&response.body).into_owned();
    assert!(answer.contains("a=recvonly"), "{answer}");
    assert!(
        env.took()
            .contains(&MediaOp::Play(caller, Sound::MusicOnHold))
    );
    assert!(call.snapshot().on_hold);
    // The same hold offered again changes nothing, not even our SDP's version.
    let again = in_dialog(
        Method::Invite,
        call.agent().expect("agent"),
        3,
        &sdp_with(6000, "sendonly"),
    );
    call.handle(&mut env, request_input(again, AGENT));
    let Some(Effect::Respond {
        response: again, ..
    }) = call.take_effects().into_iter().next()
    else {
        panic!("no answer");
    };
    assert_eq!(String::from_utf8_lossy(&again.body), answer);
    assert!(env.took().iter().all(|op| !matches!(op, MediaOp::Play(..))));

    env.advance(12_000);
    let resume = in_dialog(
        Method::Invite,
        call.agent().expect("agent"),
        4,
        &sdp_with(6000, "sendrecv"),
    );
    call.handle(&mut env, request_input(resume, AGENT));
    let media = env.took();
    assert!(media.contains(&MediaOp::StopPlayback(caller)));
    assert!(media.contains(&MediaOp::StopPlayback(agent)));
    assert!(!call.snapshot().on_hold);
    let bye = in_dialog(Method::Bye, &call.caller, 2, "");
    call.handle(&mut env, request_input(bye, CALLER));
    assert_eq!(
        record_of(&call.take_effects()).expect("record").hold_ms,
        12_000
    );
}

#[test]
fn a_caller_holding_with_an_unspecified_address_plays_music_to_the_agent_and_keeps_the_media() {
    let mut env = FakeNode::new();
    let mut call = connected_call(&mut env);
    env.took();
    let body = sdp_body(4000, 0, true).replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
    let hold = in_dialog(Method::Invite, &call.caller, 2, &body);
    call.handle(&mut env, request_input(hold, CALLER));
    assert_eq!(responses(&call.take_effects()), [200]);
    let media = env.took();
    assert_eq!(
        media,
        [MediaOp::Play(EndpointId::from_bits(2), Sound::MusicOnHold)]
    );
    // A resume from the agent's side does not end the caller's hold.
    let agent_reinvite = in_dialog(
        Method::Invite,
        call.agent().expect("agent"),
        2,
        &sdp_with(6000, "sendrecv"),
    );
    call.handle(&mut env, request_input(agent_reinvite, AGENT));
    assert!(call.snapshot().on_hold);
}

#[test]
fn the_api_holds_and_resumes_a_connected_call_only() {
    let mut env = FakeNode::new();
    let mut queued = started_call(&mut env, "1000");
    assert!(queued.set_hold(&mut env, true).is_err());
    let mut call = connected_call(&mut env);
    env.took();
    assert!(call.set_hold(&mut env, false).is_err(), "not on hold");
    call.set_hold(&mut env, true).expect("hold");
    assert!(call.set_hold(&mut env, true).is_err(), "already on hold");
    let (caller, agent) = (EndpointId::from_bits(2), EndpointId::from_bits(3));
    assert_eq!(
        env.took(),
        [
            MediaOp::Play(caller, Sound::MusicOnHold),
            MediaOp::Play(agent, Sound::Silence)
        ]
    );
    // The agent's phone cannot resume a hold the API made.
    let reinvite = in_dialog(
        Method::Invite,
        call.agent().expect("agent"),
        2,
        &sdp_with(6000, "sendrecv"),
    );
    call.handle(&mut env, request_input(reinvite, AGENT));
    assert!(call.snapshot().on_hold);
    env.advance(5_000);
    call.set_hold(&mut env, false).expect("resume");
    assert!(!call.snapshot().on_hold);
    env.advance(5_000);
    call.set_hold(&mut env, true).expect("hold again");
    env.advance(1_000);
    // Hanging up on hold counts the hold up to the end.
    let bye = in_dialog(Method::Bye, &call.caller, 2, "");
    call.handle(&mut env, request_input(bye, CALLER));
    assert_eq!(
        record_of(&call.take_effects()).expect("record").hold_ms,
        6_000
    );
}

#[test]
fn a_held_call_taken_over_stays_held() {
    let mut owner = FakeNode::clustered(&[2]);
    let mut call = connected_call(&mut owner);
    call.handle(&mut owner, Input::Timer(Timer::CopyToStandbys));
    call.take_effects();
    call.set_hold(&mut owner, true).expect("hold");
    assert_eq!(
        timers(&call.take_effects()),
        [Timer::CopyToStandbys],
        "the hold is copied to the standbys"
    );
    let replica = copy_of(&call, &owner, ReplicaPhase::Connected);
    let mut env = FakeNode::clustered(&[3]);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    standby.handle(&mut env, Input::Start);
    let media = env.took();
    let bridged = media
        .iter()
        .position(|op| matches!(op, MediaOp::Bridge(..)))
        .expect("bridged");
    let music = media
        .iter()
        .position(|op| *op == MediaOp::Play(EndpointId::from_bits(1), Sound::MusicOnHold))
        .expect("music to the caller");
    assert!(
        music > bridged,
        "the bridge would stop the music: {media:?}"
    );
    assert!(standby.snapshot().on_hold);
    env.advance(3_000);
    standby
        .set_hold(&mut env, false)
        .expect("resume on the standby");
}

fn caller_ep(call: &CallCore) -> EndpointId {
    call.caller.endpoint.expect("caller endpoint").id
}

fn prompts_played(ops: &[MediaOp]) -> Vec<Vec<String>> {
    ops.iter()
        .filter_map(|op| match op {
            MediaOp::Prompts(_, prompts, _) => Some(prompts.clone()),
            _ => None,
        })
        .collect()
}

fn flow_timer(effects: &[Effect]) -> Timer {
    timers(effects)
        .into_iter()
        .find(|t| matches!(t, Timer::Flow { .. }))
        .expect("flow timer")
}

fn names(prompts: &[&str]) -> Vec<Vec<String>> {
    prompts.iter().map(|p| vec![(*p).to_owned()]).collect()
}

#[test]
fn a_flow_plays_its_prompts_and_a_menu_key_queues_the_caller_with_the_flow_priority() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "10086");
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [183]);
    assert!(queue_notes(&effects).is_empty());
    assert_eq!(call.phase, Phase::Ivr);
    let ep = caller_ep(&call);
    let ops = env.took();
    assert_eq!(prompts_played(&ops), names(&["zh/welcome"]));
    assert!(!ops.contains(&MediaOp::Play(ep, Sound::MusicOnHold)));

    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    assert_eq!(prompts_played(&env.took()), names(&["zh/menu"]));
    // Barge-in: the key stops the menu prompt and is taken at once.
    call.handle(
        &mut env,
        Input::Media(MediaEvent::Dtmf {
            endpoint: ep,
            digit: '1',
        }),
    );
    let effects = call.take_effects();
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::Enqueue {
            priority: 10,
            since_ms: 1_000_000,
            preferred: Some(PreferredAgent {
                agent: "2001".into(),
                until_ms: 1_020_000
            }),
        }],
        "the flow's account manager first, for 20 s"
    );
    assert!(env.took().contains(&MediaOp::Play(ep, Sound::MusicOnHold)));
    assert_eq!(call.phase, Phase::Queued);
    assert_eq!(call.record.queue.as_deref(), Some("sales"));
    call.handle(&mut env, Input::CallerCancelled);
    let record = record_of(&call.take_effects()).expect("record");
    assert_eq!(record.flow.as_deref(), Some("main"));
    assert_eq!(record.menu, "1");
    assert_eq!(record.priority, 10);
    assert_eq!(record.disposition, Disposition::Abandoned);
}

#[test]
fn no_key_twice_goes_to_the_timeout_step_and_a_stale_timer_is_ignored() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "10086");
    let ep = caller_ep(&call);
    call.take_effects();
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    let first = flow_timer(&call.take_effects());
    call.handle(&mut env, Input::Timer(first));
    // The menu plays again, with a new timer once it ends.
    assert_eq!(
        prompts_played(&env.took()),
        names(&["zh/welcome", "zh/menu", "zh/menu"])
    );
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    let second = flow_timer(&call.take_effects());
    assert_ne!(first, second);
    call.handle(&mut env, Input::Timer(first));
    assert_eq!(call.phase, Phase::Ivr, "the first timer no longer counts");
    call.handle(&mut env, Input::Timer(second));
    assert_eq!(call.phase, Phase::Queued);
    assert_eq!(call.record.queue.as_deref(), Some("support"));
    assert_eq!(call.record.menu, "");
}

#[test]
fn a_closed_line_plays_its_prompt_then_refuses_and_records_closed() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "10086");
    let ep = caller_ep(&call);
    for event in [
        MediaEvent::PlaybackFinished { endpoint: ep },
        MediaEvent::Dtmf {
            endpoint: ep,
            digit: '0',
        },
    ] {
        call.handle(&mut env, Input::Media(event));
    }
    assert_eq!(
        prompts_played(&env.took()),
        names(&["zh/welcome", "zh/menu", "zh/closed"])
    );
    call.take_effects();
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [480]);
    let record = record_of(&effects).expect("record");
    assert_eq!(record.disposition, Disposition::Closed);
    assert_eq!(record.menu, "0");
    assert!(record.queue.is_none());
}

#[test]
fn a_caller_mid_menu_is_taken_over_at_the_same_step_with_its_priority() {
    let mut owner = FakeNode::clustered(&[2]);
    let mut call = started_call(&mut owner, "10086");
    let ep = caller_ep(&call);
    call.handle(
        &mut owner,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    call.take_effects();
    let replica = copy_of(&call, &owner, ReplicaPhase::Ivr);

    let mut env = FakeNode::clustered(&[3]);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    standby.handle(&mut env, Input::Start);
    let effects = standby.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Adopt { .. })));
    assert_eq!(standby.phase, Phase::Ivr);
    let ops = env.took();
    assert_eq!(prompts_played(&ops), names(&["zh/menu"]), "the menu again");
    let new_ep = caller_ep(&standby);
    standby.handle(
        &mut env,
        Input::Media(MediaEvent::Dtmf {
            endpoint: new_ep,
            digit: '2',
        }),
    );
    let effects = standby.take_effects();
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::Enqueue {
            priority: 10,
            since_ms: 1_000_000,
            preferred: None,
        }]
    );
    assert_eq!(standby.record.menu, "2");
}

#[test]
fn every_step_of_a_flow_is_copied_to_the_standbys() {
    let mut env = FakeNode::clustered(&[2]);
    let mut call = started_call(&mut env, "10086");
    let ep = caller_ep(&call);
    let copies = |call: &mut CallCore, env: &mut FakeNode| {
        call.handle(env, Input::Timer(Timer::CopyToStandbys));
        call.take_effects()
            .iter()
            .filter(|e| matches!(e, Effect::CopyTo { .. }))
            .count()
    };
    call.take_effects();
    assert_eq!(copies(&mut call, &mut env), 1, "welcome");
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    assert_eq!(copies(&mut call, &mut env), 1, "menu");
    assert_eq!(copies(&mut call, &mut env), 0, "nothing changed");
}

#[test]
fn when_the_agent_hangs_up_first_the_caller_takes_the_survey_and_its_score_is_recorded() {
    let mut env = FakeNode::clustered(&[2]);
    env.survey = Some("survey".into());
    let mut call = connected_call(&mut env);
    call.handle(&mut env, Input::Timer(Timer::CopyToStandbys));
    call.take_effects();
    env.took();
    let bye = in_dialog(Method::Bye, call.agent().expect("agent"), 2, "");
    call.handle(&mut env, request_input(bye, AGENT));
    let effects = call.take_effects();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::AgentFree { agent_id } if agent_id == "2001")),
        "the agent is free at once: {effects:?}"
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::Forget { .. })));
    assert!(sent(&effects, Method::Bye).is_empty(), "the caller stays");
    assert!(record_of(&effects).is_none());
    assert_eq!(call.phase, Phase::Ivr);
    let ep = caller_ep(&call);
    assert_eq!(prompts_played(&env.took()), names(&["en/survey"]));
    call.handle(
        &mut env,
        Input::Media(MediaEvent::Dtmf {
            endpoint: ep,
            digit: '4',
        }),
    );
    assert_eq!(prompts_played(&env.took()), names(&["en/survey-thanks"]));
    call.handle(&mut env, Input::Timer(Timer::CopyToStandbys));
    assert!(
        !call
            .take_effects()
            .iter()
            .any(|e| matches!(e, Effect::CopyTo { .. })),
        "a survey is not copied"
    );
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    let effects = call.take_effects();
    assert_eq!(sent(&effects, Method::Bye).len(), 1, "BYE to the caller");
    let record = record_of(&effects).expect("record");
    assert_eq!(record.survey_score, Some(4));
    assert_eq!(record.disposition, Disposition::Answered);
    assert_eq!(record.hangup_by, HangupBy::Agent);
    assert_eq!(record.agent.as_deref(), Some("2001"));
}

#[test]
fn a_caller_on_a_did_priority_list_joins_with_that_priority() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1001");
    assert_eq!(
        queue_notes(&call.take_effects()),
        [QueueNote::Enqueue {
            priority: 10,
            since_ms: 1_000_000,
            preferred: None,
        }],
        "13900000001 is on the vip list, not on the (missing) nobody list"
    );
}

#[test]
fn a_waiting_caller_hears_its_place_and_wait_then_the_music_again() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    let ep = caller_ep(&call);
    env.took();
    let announce = |queue: &str| Input::Announce {
        queue: queue.into(),
        position: 3,
        wait_secs: Some(150),
    };
    call.handle(&mut env, announce("sales"));
    assert!(env.took().is_empty(), "not this caller's queue");
    call.handle(&mut env, announce("support"));
    assert_eq!(
        prompts_played(&env.took()),
        [[
            "en/position-before",
            "en/number-3",
            "en/position-after",
            "en/wait-before",
            "en/number-3",
            "en/wait-minutes"
        ]
        .map(str::to_owned)
        .to_vec()]
    );
    call.handle(
        &mut env,
        Input::Media(MediaEvent::PlaybackFinished { endpoint: ep }),
    );
    assert_eq!(env.took(), [MediaOp::Play(ep, Sound::MusicOnHold)]);
}

#[test]
fn the_clock_closes_a_line_outside_its_hours() {
    let mut env = FakeNode::new();
    let by_the_clock = TEST_FLOWS.replace(
        r#"override = "closed""#,
        r#"hours = [{ open = "08:30", close = "22:30" }]"#,
    );
    let flows: FlowSet = toml::from_str(&by_the_clock).expect("flows");
    env.flows = Arc::new(flows);
    // 2026-12-08 23:00 in Shanghai (15:00 UTC): closed; 09:00 (01:00 UTC): open.
    for (utc_ms, queued) in [(1_796_742_000_000, false), (1_796_691_600_000, true)] {
        env.now_ms = utc_ms;
        let mut call = started_call(&mut env, "10086");
        let ep = caller_ep(&call);
        call.handle(
            &mut env,
            Input::Media(MediaEvent::Dtmf {
                endpoint: ep,
                digit: '0',
            }),
        );
        assert_eq!(call.phase == Phase::Queued, queued, "at {utc_ms}");
    }
}

#[test]
fn overflow_to_a_flow_plays_it_to_the_waiting_caller() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    env.took();
    call.handle(
        &mut env,
        Input::Overflow {
            queue: "support".into(),
            action: Overflow::Flow {
                flow: "survey".into(),
            },
        },
    );
    assert_eq!(call.phase, Phase::Ivr);
    assert_eq!(prompts_played(&env.took()), names(&["en/survey"]));
}

fn key(call: &mut CallCore, env: &mut FakeNode, digit: char) {
    let endpoint = caller_ep(call);
    call.handle(env, Input::Media(MediaEvent::Dtmf { endpoint, digit }));
}

fn prompt_ends(call: &mut CallCore, env: &mut FakeNode) {
    let endpoint = call.caller.endpoint.expect("endpoint").id;
    call.handle(env, Input::Media(MediaEvent::PlaybackFinished { endpoint }));
}

/// A caller of queue support that pressed 9 and confirmed with 1: a booked callback.
fn booked_callback(env: &mut FakeNode) -> (CallCore, CallRecord) {
    let mut call = started_call(env, "1000");
    call.take_effects();
    env.took();
    key(&mut call, env, '9');
    let played = prompts_played(&env.took());
    assert_eq!(played.len(), 1);
    assert_eq!(
        played[0].first().map(String::as_str),
        Some("en/callback-confirm-before")
    );
    assert_eq!(played[0].len(), 13, "before, 11 digits, after: {played:?}");
    key(&mut call, env, '1');
    assert_eq!(
        prompts_played(&env.took()),
        names(&["en/callback-confirmed"])
    );
    prompt_ends(&mut call, env);
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [480]);
    assert!(
        queue_notes(&effects).is_empty(),
        "it keeps its place in the queue"
    );
    let asked = record_of(&effects).expect("the caller's record");
    assert_eq!(asked.disposition, Disposition::CallbackRequested);
    assert_eq!(call.snapshot().state, "callback");
    (call, asked)
}

#[test]
fn a_confirmed_callback_keeps_its_place_and_connects_agent_then_customer() {
    let mut env = FakeNode::new();
    let (mut call, asked) = booked_callback(&mut env);
    call.handle(&mut env, offer("2001"));
    let effects = call.take_effects();
    let (invite, _) = sent(&effects, Method::Invite).remove(0);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    let effects = call.take_effects();
    assert_eq!(call.phase, Phase::Dialling);
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::OfferOutcome {
            agent_id: "2001".into(),
            outcome: OfferOutcome::Answered
        }]
    );
    let (dial, to) = sent(&effects, Method::Invite).remove(0);
    assert_eq!(dial.uri.to_string(), format!("sip:13900000001@{TRUNK}"));
    assert_eq!(to.addr, TRUNK.parse::<SocketAddr>().expect("addr"));
    let from = dial.from_uri().expect("From");
    assert_eq!(legs::uri_user(&from), "10086", "the trunk's calling number");
    call.handle(
        &mut env,
        Input::Response(phone_answer(&dial, 200, TRUNK, 7000)),
    );
    let effects = call.take_effects();
    assert_eq!(
        sent(&effects, Method::Ack).len(),
        0,
        "ACKs go as Effect::Ack"
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    assert!(prompts_played(&env.took()).contains(&vec!["en/callback-greeting".to_owned()]));
    prompt_ends(&mut call, &mut env);
    assert_eq!(call.phase, Phase::Connected);
    assert!(
        env.took()
            .iter()
            .any(|op| matches!(op, MediaOp::Bridge(..)))
    );
    let bye = in_dialog(Method::Bye, &call.caller, 2, "");
    call.handle(&mut env, request_input(bye, TRUNK));
    let record = record_of(&call.take_effects()).expect("the callback's record");
    assert_eq!(record.callback_of.as_deref(), Some(asked.id.as_str()));
    assert_ne!(record.id, asked.id);
    assert_eq!(record.disposition, Disposition::Answered);
    assert_eq!(record.agent.as_deref(), Some("2001"));
    assert_eq!(
        record.queued_ms, asked.queued_ms,
        "waited since the first entry"
    );
}

#[test]
fn an_unanswered_callback_frees_the_agent_and_queues_again_in_its_first_place() {
    let mut env = FakeNode::new();
    let (mut call, _) = booked_callback(&mut env);
    for attempt in 1..=2 {
        call.handle(&mut env, offer("2001"));
        let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
        call.handle(
            &mut env,
            Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
        );
        let (dial, _) = sent(&call.take_effects(), Method::Invite).remove(0);
        call.handle(
            &mut env,
            Input::Response(phone_answer(&dial, 486, TRUNK, 0)),
        );
        let effects = call.take_effects();
        assert_eq!(sent(&effects, Method::Bye).len(), 1, "the agent is hung up");
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::AgentFree { .. }))
        );
        if attempt == 2 {
            let record = record_of(&effects).expect("given up");
            assert_eq!(record.disposition, Disposition::Failed);
            return;
        }
        assert_eq!(timers(&effects), [Timer::CallbackRetry]);
        call.handle(&mut env, Input::Timer(Timer::CallbackRetry));
        assert_eq!(
            queue_notes(&call.take_effects()),
            [QueueNote::Enqueue {
                priority: 3,
                since_ms: 1_000_000,
                preferred: None,
            }]
        );
    }
}

#[test]
fn a_waiting_callback_is_taken_over_without_media_and_queues_in_its_place() {
    let mut owner = FakeNode::clustered(&[2]);
    let (call, _) = booked_callback(&mut owner);
    let replica = copy_of(&call, &owner, ReplicaPhase::Queued);
    let mut env = FakeNode::clustered(&[3]);
    let mut standby = CallCore::from_replica(&env, settings(true), replica).expect("restored");
    standby.handle(&mut env, Input::Start);
    let effects = standby.take_effects();
    assert!(!effects.iter().any(|e| matches!(e, Effect::Adopt { .. })));
    assert!(env.took().is_empty(), "no media for a callback");
    assert_eq!(
        queue_notes(&effects),
        [QueueNote::Enqueue {
            priority: 3,
            since_ms: 1_000_000,
            preferred: None,
        }]
    );
    assert_eq!(standby.id(), call.id());
}

#[test]
fn pressing_2_or_nothing_keeps_the_caller_waiting() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    let ep = caller_ep(&call);
    key(&mut call, &mut env, '9');
    key(&mut call, &mut env, '2');
    assert!(env.took().contains(&MediaOp::Play(ep, Sound::MusicOnHold)));
    key(&mut call, &mut env, '9');
    call.handle(&mut env, Input::Timer(Timer::CallbackConfirm));
    assert!(env.took().contains(&MediaOp::Play(ep, Sound::MusicOnHold)));
    assert!(call.callback.is_none());
    assert_eq!(call.phase, Phase::Queued);
}

#[test]
fn the_record_names_the_answering_agents_pool_and_the_skills_then_required() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    env.advance(12_000);
    call.handle(&mut env, offer("2001"));
    let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    assert_eq!(call.record.pool.as_deref(), Some("inhouse"));
    assert_eq!(
        call.record.skills,
        [("support-skill".to_owned(), 1)].into(),
        "the step in force after 12 s in the queue"
    );
}

/// A caller of 10086 that pressed 3: the flow transfers it to 4008001234 through the trunk.
fn transferring_call(env: &mut FakeNode) -> (CallCore, Request) {
    let mut call = started_call(env, "10086");
    call.take_effects();
    key(&mut call, env, '3');
    assert_eq!(call.phase, Phase::Transferring);
    let effects = call.take_effects();
    let (invite, to) = sent(&effects, Method::Invite).remove(0);
    assert_eq!(invite.uri.to_string(), format!("sip:4008001234@{TRUNK}"));
    assert_eq!(to.addr, TRUNK.parse::<SocketAddr>().expect("addr"));
    (call, invite)
}

#[test]
fn a_flow_transfers_the_caller_to_an_outside_number_through_the_trunk() {
    let mut env = FakeNode::clustered(&[2]);
    let (mut call, invite) = transferring_call(&mut env);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, TRUNK, 7000)),
    );
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [200], "the caller is answered");
    assert!(effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    assert!(
        env.took()
            .iter()
            .any(|op| matches!(op, MediaOp::Bridge(..)))
    );
    assert_eq!(call.phase, Phase::Connected);
    let outside = call
        .legs
        .iter()
        .find(|l| l.is_outside())
        .expect("outside leg");
    let bye = in_dialog(Method::Bye, outside, 2, "");
    call.handle(&mut env, request_input(bye, TRUNK));
    let effects = call.take_effects();
    assert_eq!(sent(&effects, Method::Bye).len(), 1, "BYE to the caller");
    let record = record_of(&effects).expect("record");
    assert_eq!(record.disposition, Disposition::Transferred);
    assert_eq!(record.hangup_by, HangupBy::Outside);
    assert_eq!(record.transferred_to.as_deref(), Some("4008001234"));
    assert_eq!(record.menu, "3");
}

#[test]
fn an_unanswered_transfer_refuses_the_caller_and_a_cancel_stops_the_transfer() {
    let mut env = FakeNode::new();
    let (mut call, invite) = transferring_call(&mut env);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 486, TRUNK, 0)),
    );
    let effects = call.take_effects();
    assert_eq!(responses(&effects), [480]);
    assert_eq!(
        record_of(&effects).expect("record").disposition,
        Disposition::Failed
    );

    // The trunk never answers at all (timer B): the caller is not left waiting.
    let (mut call, _) = transferring_call(&mut env);
    let branch = call
        .legs
        .iter()
        .find(|l| l.is_outside())
        .map(|l| l.branch.clone())
        .expect("outside leg");
    call.handle(&mut env, Input::ClientTimeout { branch });
    assert_eq!(responses(&call.take_effects()), [480]);

    let (mut call, _) = transferring_call(&mut env);
    call.handle(&mut env, Input::CallerCancelled);
    let effects = call.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Cancel { .. })));
    assert_eq!(responses(&effects), [487]);
    assert_eq!(
        record_of(&effects).expect("record").disposition,
        Disposition::Abandoned
    );
}

#[test]
fn an_agent_answering_during_the_callback_offer_ends_the_offer() {
    let mut env = FakeNode::new();
    let mut call = started_call(&mut env, "1000");
    call.take_effects();
    let ep = caller_ep(&call);
    key(&mut call, &mut env, '9');
    call.handle(&mut env, offer("2001"));
    let (invite, _) = sent(&call.take_effects(), Method::Invite).remove(0);
    call.handle(
        &mut env,
        Input::Response(phone_answer(&invite, 200, AGENT, 6000)),
    );
    assert_eq!(call.phase, Phase::Connected);
    call.take_effects();
    env.took();
    call.handle(&mut env, Input::Timer(Timer::CallbackConfirm));
    key(&mut call, &mut env, '1');
    assert!(
        !env.took()
            .iter()
            .any(|op| matches!(op, MediaOp::Play(e, _) if *e == ep)),
        "no music or prompt on a connected caller"
    );
    assert!(responses(&call.take_effects()).is_empty(), "no 480");
}

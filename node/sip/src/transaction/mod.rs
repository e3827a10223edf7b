//! RFC 3261 §17 transactions, with RFC 6026's Accepted state, as a sans-IO state machine.
//!
//! One [`TransactionLayer`] per node, owned by one task. It never touches a socket or the
//! clock: the IO side feeds it parsed messages and the current time, then drains what it
//! produced:
//!
//! ```text
//! loop {
//!     select! {
//!         (msg, peer) = socket  => layer.handle_message(now, msg, peer),
//!         () = sleep_until(layer.poll_timeout()) => layer.handle_timeout(now),
//!         cmd = tu_commands     => layer.send_request / send_response / cancel / ...,
//!     }
//!     while let Some(t) = layer.poll_transmit() { send(t.peer, t.bytes) /* failure: on_transport_error */ }
//!     while let Some(e) = layer.poll_event()    { hand e to the TU }
//! }
//! ```
//!
//! Each message is serialised once; retransmissions re-send the same [`Bytes`]. Timers live in
//! one binary heap with lazy deletion, so [`TransactionLayer::poll_timeout`] is O(1).
//!
//! Beyond RFC 3261's transaction timers the layer also owns the end-to-end 2xx reliability that
//! §13.3.1.4 and §13.2.2.4 leave to the UA core: it retransmits an INVITE 2xx until the ACK
//! arrives (reporting [`TuEvent::Timeout`] if none does within 64*T1), and re-sends the TU's
//! cached ACK whenever a 2xx is retransmitted to us. See ADR 0003.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::distr::Alphanumeric;
use rsip::headers::{CSeq, MaxForwards, UntypedHeader};
use rsip::prelude::HeadersExt;
use rsip::{Header, Headers, Host, Method, Param, Request, Response, SipMessage, StatusCode, Uri};

use crate::dialog::new_tag;
use crate::headers::{BRANCH_MAGIC_COOKIE, MessageExt};
use crate::message::{response, to_bytes};

/// Timer D for unreliable transports (RFC 3261 §17.1.1.2: at least 32 s).
const TIMER_D: Duration = Duration::from_secs(32);

/// How a message travels; decides whether the layer retransmits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Unreliable: timers A, E and G retransmit; timers D, I, J and K absorb stragglers.
    Udp,
    /// Reliable: no transaction-level retransmissions; D, I, J and K are zero.
    Tcp,
}

impl Transport {
    fn is_reliable(self) -> bool {
        self == Transport::Tcp
    }
}

/// The far end of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Source of an inbound message, destination of an outbound one.
    pub addr: SocketAddr,
    /// Transport the message uses.
    pub transport: Transport,
    /// TCP connection chosen by the IO side; `None` lets it pick or open one.
    pub connection: Option<u64>,
}

/// RFC 3261 timer base values (§17.1.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate: first retransmission interval; transaction timeouts are 64*T1.
    pub t1: Duration,
    /// Cap on non-INVITE request and INVITE response retransmission intervals.
    pub t2: Duration,
    /// Maximum time a message stays in the network: timers I and K.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// Handle on a live transaction. Never reused within a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(u64);

/// Bytes for the IO side to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: Peer,
    /// One complete SIP message.
    pub bytes: Bytes,
    /// Transaction to report to [`TransactionLayer::on_transport_error`] if sending fails;
    /// `None` for stateless sends.
    pub txn: Option<TransactionId>,
}

/// What the transaction user (the B2BUA core) must act on.
#[derive(Clone, Debug, PartialEq)]
pub enum TuEvent {
    /// A new request created server transaction `txn` (never ACK or CANCEL). An INVITE was
    /// already answered 100 Trying. Answer with [`TransactionLayer::send_response`].
    Request {
        /// Server transaction to answer through.
        txn: TransactionId,
        /// The request, its top Via stamped with `received`/`rport` (RFC 3261 §18.2.1, RFC 3581).
        request: Request,
        /// Where it came from; responses go back there.
        from: Peer,
    },
    /// A CANCEL matched INVITE server transaction `invite_txn` that had not sent a final
    /// response yet. The layer already answered the CANCEL 200; the TU must answer the INVITE
    /// 487. (Unmatched CANCELs are answered 481 and CANCELs for answered INVITEs 200 without
    /// an event.)
    Cancel {
        /// The INVITE server transaction to answer 487.
        invite_txn: TransactionId,
        /// The CANCEL.
        request: Request,
        /// Where it came from.
        from: Peer,
    },
    /// The ACK for a 2xx that `invite_txn` sent. The layer has stopped retransmitting the 2xx;
    /// later copies of the ACK are absorbed.
    Ack {
        /// The INVITE server transaction that sent the 2xx.
        invite_txn: TransactionId,
        /// The ACK (it may carry the SDP answer).
        request: Request,
        /// Where it came from.
        from: Peer,
    },
    /// A response to client transaction `txn`: every provisional, the final response, and for
    /// an INVITE the first 2xx from each To tag (forks). Retransmissions are absorbed: ACKs for
    /// non-2xx finals are sent by the layer, ACKs for 2xx are re-sent from the copy given to
    /// [`TransactionLayer::send_ack_for_2xx`].
    Response {
        /// The client transaction.
        txn: TransactionId,
        /// The response.
        response: Response,
    },
    /// `txn` ended without an answer. Client: timer B or F fired (treat as 408), or a CANCELled
    /// INVITE got no final response within 64*T1. Server INVITE: no ACK arrived for a non-2xx
    /// final (timer H) or for a 2xx within 64*T1 (the TU should send BYE).
    Timeout {
        /// The transaction that timed out; it no longer exists.
        txn: TransactionId,
    },
    /// Sending for `txn` failed (reported through [`TransactionLayer::on_transport_error`]);
    /// the transaction no longer exists.
    TransportError {
        /// The failed transaction.
        txn: TransactionId,
    },
}

/// Why the layer refused a TU command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// The transaction never existed or has terminated.
    #[error("no such transaction")]
    UnknownTransaction,
    /// A server command on a client transaction, a CANCEL for a non-INVITE, and the like.
    #[error("operation does not apply to this kind of transaction")]
    WrongKind,
    /// The transaction is past the point where this is allowed (a response after the final
    /// one, a CANCEL after a final response).
    #[error("transaction already has a final response")]
    AlreadyFinal,
    /// The request cannot start a transaction.
    #[error("request unusable for a transaction: {0}")]
    BadRequest(&'static str),
    /// Another client transaction already uses this branch and method.
    #[error("branch already in use")]
    BranchInUse,
}

/// A fresh RFC 3261 branch: the magic cookie and 16 random alphanumerics (about 95 bits).
pub fn new_branch() -> String {
    let mut branch = String::with_capacity(BRANCH_MAGIC_COOKIE.len() + 16);
    branch.push_str(BRANCH_MAGIC_COOKIE);
    branch.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(16)
            .map(char::from),
    );
    branch
}

/// rsip's `Method` is not `Hash`; it is a fieldless enum, so the discriminant is the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MethodKey(Method);

impl Hash for MethodKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(&self.0).hash(state);
    }
}

/// §17.2.3 server transaction identity. ACK is keyed as INVITE so it finds the INVITE's
/// transaction; CANCEL keeps its own method and is looked up again as INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ServerKey {
    /// Branch with the magic cookie, plus sent-by and method.
    Rfc3261 {
        branch: String,
        sent_by: String,
        method: MethodKey,
    },
    /// RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number and top Via. The To tag is
    /// left out because an ACK carries the tag of our response while the INVITE had none.
    Rfc2543 {
        uri: String,
        from_tag: String,
        call_id: String,
        cseq: u32,
        via: String,
        method: MethodKey,
    },
}

impl ServerKey {
    fn of(request: &Request, via: Option<&rsip::typed::Via>) -> Option<ServerKey> {
        let method = MethodKey(match request.method {
            Method::Ack => Method::Invite,
            other => other,
        });
        if let Some(via) = via
            && let Some(branch) = via.branch()
            && branch.value().starts_with(BRANCH_MAGIC_COOKIE)
        {
            return Some(ServerKey::Rfc3261 {
                branch: branch.value().to_string(),
                sent_by: via.uri.host_with_port.to_string(),
                method,
            });
        }
        Some(ServerKey::Rfc2543 {
            uri: request.uri.to_string(),
            from_tag: request.from_tag().unwrap_or_default(),
            call_id: request.call_id()?.to_string(),
            cseq: request.cseq()?.0,
            via: request.via_header().ok()?.value().to_string(),
            method,
        })
    }

    fn with_method(&self, method: Method) -> ServerKey {
        let mut key = self.clone();
        match &mut key {
            ServerKey::Rfc3261 { method: m, .. } | ServerKey::Rfc2543 { method: m, .. } => {
                *m = MethodKey(method)
            }
        }
        key
    }
}

/// §17.1.3 client transaction identity: top Via branch and CSeq method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: MethodKey,
}

/// Pairs a 2xx with its ACK, whose branch differs: Call-ID, CSeq number and From tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AckKey {
    call_id: String,
    cseq: u32,
    from_tag: String,
}

impl AckKey {
    fn of(message: &impl MessageExt) -> Option<AckKey> {
        Some(AckKey {
            call_id: message.call_id()?.to_string(),
            cseq: message.cseq()?.0,
            from_tag: message.from_tag().unwrap_or_default(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// INVITE client: request sent, nothing heard.
    Calling,
    /// Non-INVITE: request sent (client) or received (server), no response yet.
    Trying,
    /// A provisional response was received (client) or sent (server).
    Proceeding,
    /// A non-2xx final (INVITE) or any final (non-INVITE) was received or sent.
    Completed,
    /// RFC 6026: a 2xx to an INVITE was received or sent.
    Accepted,
    /// INVITE server: the ACK for the non-2xx final arrived.
    Confirmed,
    /// A CANCEL waiting for the INVITE's first provisional response (§9.1).
    Queued,
}

/// The parts of an INVITE that its CANCEL and its non-2xx ACK copy (§9.1, §17.1.1.3).
#[derive(Debug)]
struct InviteOrigin {
    uri: Uri,
    via: Header,
    from: Header,
    to: Header,
    call_id: Header,
    routes: Vec<Header>,
    cseq: u32,
}

impl InviteOrigin {
    fn take(headers: Headers, uri: Uri, cseq: u32) -> Option<InviteOrigin> {
        let (mut via, mut from, mut to, mut call_id) = (None, None, None, None);
        let mut routes = Vec::new();
        for header in headers {
            match header {
                Header::Via(_) if via.is_none() => via = Some(header),
                Header::From(_) => from = Some(header),
                Header::To(_) => to = Some(header),
                Header::CallId(_) => call_id = Some(header),
                Header::Route(_) => routes.push(header),
                _ => {}
            }
        }
        Some(InviteOrigin {
            uri,
            via: via?,
            from: from?,
            to: to?,
            call_id: call_id?,
            routes,
            cseq,
        })
    }

    /// CANCEL (`to` = None: the INVITE's own To) or non-2xx ACK (`to` = the response's To).
    fn request(&self, method: Method, to: Option<Header>) -> Request {
        let mut headers = Headers::default();
        headers.push(self.via.clone());
        headers.push(Header::MaxForwards(MaxForwards::new("70")));
        headers.extend(self.routes.clone());
        headers.push(self.from.clone());
        headers.push(to.unwrap_or_else(|| self.to.clone()));
        headers.push(self.call_id.clone());
        headers.push(Header::CSeq(CSeq::new(format!("{} {method}", self.cseq))));
        Request {
            method,
            uri: self.uri.clone(),
            version: rsip::Version::V2,
            headers,
            body: Vec::new(),
        }
    }
}

/// A 2xx-answering branch of an INVITE client transaction and the ACK the TU sent it.
#[derive(Debug)]
struct Fork {
    to_tag: Option<String>,
    ack: Option<(Bytes, Peer)>,
}

#[derive(Debug)]
enum Kind {
    InviteClient {
        key: ClientKey,
        origin: Box<InviteOrigin>,
        /// The 2xx responses passed to the TU, one per To tag.
        accepted: Vec<Fork>,
        ack_key: Option<AckKey>,
        cancel: Option<TransactionId>,
    },
    NonInviteClient {
        key: ClientKey,
    },
    InviteServer {
        key: ServerKey,
        /// Tag our responses carry: reused for the CANCEL's 200, checked on the 2xx ACK.
        to_tag: Option<String>,
        ack_key: Option<AckKey>,
        acked: bool,
    },
    NonInviteServer {
        key: ServerKey,
    },
}

#[derive(Debug)]
struct Txn {
    kind: Kind,
    state: State,
    /// Where this transaction's messages go.
    peer: Peer,
    /// What a retransmission re-sends: the request (client Calling/Trying/Proceeding), the ACK
    /// (INVITE client Completed), or the last response (server).
    last: Option<Bytes>,
    /// Next retransmission and the interval that led to it (timers A, E, G, 2xx).
    retransmit: Option<(Instant, Duration)>,
    /// The state's deadline (timers B, D, F, H, I, J, K, L, M, CANCEL guard).
    deadline: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retransmit,
    Deadline,
}

/// The RFC 3261 §17 transaction layer for one node. See the module documentation for how the
/// IO side drives it.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: Timers,
    next_id: u64,
    txns: HashMap<TransactionId, Txn>,
    clients: HashMap<ClientKey, TransactionId>,
    servers: HashMap<ServerKey, TransactionId>,
    /// Accepted INVITE server transactions awaiting the 2xx ACK.
    uas_acks: HashMap<AckKey, TransactionId>,
    /// Accepted INVITE client transactions, for caching the TU's 2xx ACK.
    uac_acks: HashMap<AckKey, TransactionId>,
    /// Min-heap of timer expiries. An entry is live only while the transaction still holds
    /// that exact instant for that timer; anything else is skipped when popped.
    heap: BinaryHeap<Reverse<(Instant, TransactionId, TimerKind)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TuEvent>,
}

impl TransactionLayer {
    /// A layer using `timers` (each clamped to at least 1 ms so retransmission always
    /// advances).
    pub fn new(timers: Timers) -> Self {
        let floor = Duration::from_millis(1);
        TransactionLayer {
            timers: Timers {
                t1: timers.t1.max(floor),
                t2: timers.t2.max(floor),
                t4: timers.t4.max(floor),
            },
            next_id: 0,
            txns: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            uas_acks: HashMap::new(),
            uac_acks: HashMap::new(),
            heap: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Live transactions, for metrics.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    /// No live transactions.
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The earliest instant [`handle_timeout`](Self::handle_timeout) has work to do, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the TU.
    pub fn poll_event(&mut self) -> Option<TuEvent> {
        self.events.pop_front()
    }

    /// An inbound message, already parsed and validated, from `from`. Requests that cannot be
    /// matched to or start a transaction (no Via, Call-ID or CSeq), stray responses and stray
    /// ACKs are dropped.
    pub fn handle_message(&mut self, now: Instant, message: SipMessage, from: Peer) {
        match message {
            SipMessage::Request(request) => self.on_request(now, request, from),
            SipMessage::Response(response) => self.on_response(now, response),
        }
        self.prune_timers();
    }

    /// Starts a client transaction for `request` (any method but ACK) towards `to` and sends
    /// it. The request must carry a top Via with a unique branch (see [`new_branch`]).
    pub fn send_request(
        &mut self,
        now: Instant,
        request: Request,
        to: Peer,
    ) -> Result<TransactionId, TxnError> {
        if request.method == Method::Ack {
            return Err(TxnError::BadRequest(
                "ACK is sent with send_ack_for_2xx or by the layer",
            ));
        }
        let branch = request
            .top_branch()
            .ok_or(TxnError::BadRequest("no Via branch"))?;
        let (cseq, _) = request.cseq().ok_or(TxnError::BadRequest("no CSeq"))?;
        let key = ClientKey {
            branch,
            method: MethodKey(request.method),
        };
        if self.clients.contains_key(&key) {
            return Err(TxnError::BranchInUse);
        }
        let ack_key = AckKey::of(&request);
        let message = SipMessage::Request(request);
        let bytes = Bytes::from(to_bytes(&message));
        let kind = match message {
            SipMessage::Request(request) if request.method == Method::Invite => {
                let origin = InviteOrigin::take(request.headers, request.uri, cseq)
                    .ok_or(TxnError::BadRequest("no From, To or Call-ID"))?;
                let origin = Box::new(origin);
                Kind::InviteClient {
                    key: key.clone(),
                    origin,
                    accepted: Vec::new(),
                    ack_key,
                    cancel: None,
                }
            }
            _ => Kind::NonInviteClient { key: key.clone() },
        };
        let state = match kind {
            Kind::InviteClient { .. } => State::Calling,
            _ => State::Trying,
        };
        let id = self.insert(kind, state, to);
        self.clients.insert(key, id);
        self.start_client(now, id, bytes);
        self.prune_timers();
        Ok(id)
    }

    /// Sends `response` through server transaction `txn` to the peer the request came from.
    ///
    /// INVITE: 1xx keep it proceeding; a 2xx moves it to Accepted, where the layer retransmits
    /// the 2xx until the ACK arrives; 3xx-6xx are retransmitted (UDP) until the ACK.
    /// Non-INVITE: the final response completes it.
    pub fn send_response(
        &mut self,
        now: Instant,
        txn: TransactionId,
        response: Response,
    ) -> Result<(), TxnError> {
        let t1 = self.timers.t1;
        let timeout = 64 * t1;
        let code = response.status_code.code();
        let t = self
            .txns
            .get_mut(&txn)
            .ok_or(TxnError::UnknownTransaction)?;
        let reliable = t.peer.transport.is_reliable();
        let mut finished = false;
        match (&mut t.kind, t.state) {
            (
                Kind::InviteServer {
                    to_tag, ack_key, ..
                },
                State::Proceeding,
            ) => {
                if let Some(tag) = response.to_tag() {
                    *to_tag = Some(tag);
                }
                if (200..300).contains(&code) {
                    // §13.3.1.4: 2xx retransmission is end to end, so it runs over TCP too.
                    t.state = State::Accepted;
                    t.retransmit = Some((now + t1, t1));
                    t.deadline = Some(now + timeout);
                    *ack_key = AckKey::of(&response);
                    if let Some(key) = ack_key.clone() {
                        self.uas_acks.insert(key, txn);
                    }
                } else if code >= 300 {
                    t.state = State::Completed;
                    t.retransmit = (!reliable).then_some((now + t1, t1));
                    t.deadline = Some(now + timeout);
                }
            }
            (Kind::NonInviteServer { .. }, State::Trying | State::Proceeding) => {
                if code < 200 {
                    t.state = State::Proceeding;
                } else if reliable {
                    finished = true;
                } else {
                    t.state = State::Completed;
                    t.deadline = Some(now + timeout);
                }
            }
            (Kind::InviteServer { .. } | Kind::NonInviteServer { .. }, _) => {
                return Err(TxnError::AlreadyFinal);
            }
            _ => return Err(TxnError::WrongKind),
        }
        let bytes = encode(response);
        let peer = t.peer;
        t.last = Some(bytes.clone());
        self.transmit(peer, bytes, Some(txn));
        if finished {
            self.terminate(txn);
        } else {
            self.schedule(txn);
        }
        self.prune_timers();
        Ok(())
    }

    /// Sends the TU's ACK for a 2xx (a new transaction-less request, §13.2.2.4) and caches it:
    /// whenever the INVITE client transaction with the same Call-ID, CSeq number and From tag
    /// receives that 2xx again (same To tag) within 64*T1, the layer re-sends this ACK itself.
    pub fn send_ack_for_2xx(&mut self, ack: Request, to: Peer) {
        let to_tag = ack.to_tag();
        let invite = AckKey::of(&ack).and_then(|key| self.uac_acks.get(&key).copied());
        let bytes = encode(ack);
        if let Some(Txn {
            kind: Kind::InviteClient { accepted, .. },
            ..
        }) = invite.and_then(|id| self.txns.get_mut(&id))
            && let Some(fork) = accepted.iter_mut().find(|f| f.to_tag == to_tag)
        {
            fork.ack = Some((bytes.clone(), to));
        }
        self.transmit(to, bytes, invite);
    }

    /// CANCELs INVITE client transaction `invite_txn` (§9.1): builds the CANCEL from the INVITE
    /// (Request-URI, top Via and branch, From, To, Call-ID, CSeq number, Route) and sends it as
    /// a non-INVITE client transaction whose id is returned. Until the INVITE has received a
    /// provisional response the CANCEL is held back; if a final response arrives first it is
    /// discarded unsent and its transaction ends without an event. Calling this again returns
    /// the same CANCEL transaction.
    pub fn cancel(
        &mut self,
        now: Instant,
        invite_txn: TransactionId,
    ) -> Result<TransactionId, TxnError> {
        let t = self
            .txns
            .get(&invite_txn)
            .ok_or(TxnError::UnknownTransaction)?;
        let Kind::InviteClient {
            key,
            origin,
            cancel,
            ..
        } = &t.kind
        else {
            return Err(TxnError::WrongKind);
        };
        if let Some(existing) = cancel {
            return Ok(*existing);
        }
        if !matches!(t.state, State::Calling | State::Proceeding) {
            return Err(TxnError::AlreadyFinal);
        }
        let proceeding = t.state == State::Proceeding;
        let peer = t.peer;
        let bytes = encode(origin.request(Method::Cancel, None));
        let key = ClientKey {
            branch: key.branch.clone(),
            method: MethodKey(Method::Cancel),
        };
        let id = self.insert(
            Kind::NonInviteClient { key: key.clone() },
            State::Queued,
            peer,
        );
        self.clients.insert(key, id);
        if let Some(Txn {
            kind: Kind::InviteClient { cancel, .. },
            ..
        }) = self.txns.get_mut(&invite_txn)
        {
            *cancel = Some(id);
        }
        if proceeding {
            self.start_cancel(now, invite_txn, id, bytes);
        } else if let Some(c) = self.txns.get_mut(&id) {
            // Held until the INVITE's first provisional response.
            c.last = Some(bytes);
        }
        self.prune_timers();
        Ok(id)
    }

    /// Sends `bytes` outside any transaction (e.g. a 400 to an unparseable request).
    pub fn send_stateless(&mut self, bytes: Bytes, to: Peer) {
        self.transmit(to, bytes, None);
    }

    /// The IO side failed to send a message of `txn`: the transaction ends and the TU gets
    /// [`TuEvent::TransportError`]. Unknown (already ended) transactions are ignored.
    pub fn on_transport_error(&mut self, txn: TransactionId) {
        if self.txns.contains_key(&txn) {
            self.terminate(txn);
            self.events.push_back(TuEvent::TransportError { txn });
            self.prune_timers();
        }
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id, kind))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.timer_is_live(at, id, kind) {
                match kind {
                    TimerKind::Retransmit => self.on_retransmit_timer(now, id),
                    TimerKind::Deadline => self.on_deadline(id),
                }
            }
        }
        self.prune_timers();
    }

    fn insert(&mut self, kind: Kind, state: State, peer: Peer) -> TransactionId {
        let id = TransactionId(self.next_id);
        self.next_id += 1;
        self.txns.insert(
            id,
            Txn {
                kind,
                state,
                peer,
                last: None,
                retransmit: None,
                deadline: None,
            },
        );
        id
    }

    /// Sends a client transaction's request and arms timers A/B or E/F.
    fn start_client(&mut self, now: Instant, id: TransactionId, bytes: Bytes) {
        let t1 = self.timers.t1;
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        let peer = t.peer;
        if !peer.transport.is_reliable() {
            t.retransmit = Some((now + t1, t1));
        }
        t.deadline = Some(now + 64 * t1);
        t.last = Some(bytes.clone());
        self.transmit(peer, bytes, Some(id));
        self.schedule(id);
    }

    /// Sends a CANCEL and bounds its INVITE: §9.1 lets the UAC give up on the INVITE 64*T1
    /// after the CANCEL if no final response arrives, which Proceeding otherwise never does.
    fn start_cancel(
        &mut self,
        now: Instant,
        invite: TransactionId,
        cancel: TransactionId,
        bytes: Bytes,
    ) {
        if let Some(c) = self.txns.get_mut(&cancel) {
            c.state = State::Trying;
        }
        self.start_client(now, cancel, bytes);
        if let Some(t) = self.txns.get_mut(&invite) {
            t.deadline = Some(now + 64 * self.timers.t1);
            self.schedule(invite);
        }
    }

    fn on_request(&mut self, now: Instant, mut request: Request, from: Peer) {
        let via = request.top_via();
        let Some(key) = ServerKey::of(&request, via.as_ref()) else {
            return;
        };
        match request.method {
            Method::Ack => self.on_ack(now, request, from, &key),
            Method::Cancel => {
                if let Some(&id) = self.servers.get(&key) {
                    self.absorb(id);
                } else {
                    stamp_via(&mut request, via.as_ref(), &from);
                    self.on_cancel(now, request, from, key);
                }
            }
            _ => {
                if let Some(&id) = self.servers.get(&key) {
                    self.absorb(id);
                } else {
                    stamp_via(&mut request, via.as_ref(), &from);
                    self.new_server(request, from, key);
                }
            }
        }
    }

    /// A retransmitted request: re-send the last response, if any (§17.2.1, §17.2.2).
    fn absorb(&mut self, id: TransactionId) {
        if let Some(t) = self.txns.get(&id)
            && t.state != State::Confirmed
            && let Some(bytes) = t.last.clone()
        {
            let peer = t.peer;
            self.transmit(peer, bytes, Some(id));
        }
    }

    fn new_server(&mut self, request: Request, from: Peer, key: ServerKey) {
        let (kind, state) = if request.method == Method::Invite {
            let kind = Kind::InviteServer {
                key: key.clone(),
                to_tag: None,
                ack_key: None,
                acked: false,
            };
            (kind, State::Proceeding)
        } else {
            (Kind::NonInviteServer { key: key.clone() }, State::Trying)
        };
        let id = self.insert(kind, state, from);
        self.servers.insert(key, id);
        if request.method == Method::Invite {
            // Sent at once rather than after 200 ms: B2BUA routing may well take longer.
            let bytes = encode(response(&request, StatusCode::Trying, None));
            if let Some(t) = self.txns.get_mut(&id) {
                t.last = Some(bytes.clone());
            }
            self.transmit(from, bytes, Some(id));
        }
        self.events.push_back(TuEvent::Request {
            txn: id,
            request,
            from,
        });
    }

    fn on_ack(&mut self, now: Instant, request: Request, from: Peer, key: &ServerKey) {
        if let Some(&id) = self.servers.get(key) {
            let t4 = self.timers.t4;
            let Some(t) = self.txns.get_mut(&id) else {
                return;
            };
            match t.state {
                // §17.2.1: the ACK for our non-2xx final; absorbed, never given to the TU.
                State::Completed => {
                    t.state = State::Confirmed;
                    t.retransmit = None;
                    if t.peer.transport.is_reliable() {
                        self.terminate(id);
                    } else {
                        t.deadline = Some(now + t4);
                        self.schedule(id);
                    }
                }
                // A peer reusing the INVITE's branch (or an RFC 2543 peer) for the 2xx ACK.
                State::Accepted => self.on_2xx_ack(id, request, from),
                _ => {}
            }
            return;
        }
        if let Some(id) = AckKey::of(&request).and_then(|k| self.uas_acks.get(&k).copied()) {
            self.on_2xx_ack(id, request, from);
        }
    }

    fn on_2xx_ack(&mut self, id: TransactionId, request: Request, from: Peer) {
        let Some(Txn {
            kind: Kind::InviteServer { to_tag, acked, .. },
            retransmit,
            ..
        }) = self.txns.get_mut(&id)
        else {
            return;
        };
        if *acked || (to_tag.is_some() && request.to_tag() != *to_tag) {
            return;
        }
        *acked = true;
        *retransmit = None;
        self.events.push_back(TuEvent::Ack {
            invite_txn: id,
            request,
            from,
        });
    }

    /// §9.2: answer the CANCEL ourselves; only an INVITE still awaiting its final response
    /// concerns the TU.
    fn on_cancel(&mut self, now: Instant, request: Request, from: Peer, key: ServerKey) {
        let invite = self
            .servers
            .get(&key.with_method(Method::Invite))
            .and_then(|id| Some((*id, self.txns.get(id)?)));
        let (code, to_tag, pending_invite) = match invite {
            Some((id, t)) => match &t.kind {
                Kind::InviteServer { to_tag, .. } => (
                    StatusCode::OK,
                    to_tag.clone(),
                    (t.state == State::Proceeding).then_some(id),
                ),
                _ => (StatusCode::CallTransactionDoesNotExist, None, None),
            },
            None => (StatusCode::CallTransactionDoesNotExist, None, None),
        };
        let to_tag = to_tag.unwrap_or_else(new_tag);
        let response = response(&request, code, Some(&to_tag));
        let id = self.insert(
            Kind::NonInviteServer { key: key.clone() },
            State::Trying,
            from,
        );
        self.servers.insert(key, id);
        // Cannot fail: the transaction was just created in Trying.
        let _ = self.send_response(now, id, response);
        if let Some(invite_txn) = pending_invite {
            self.events.push_back(TuEvent::Cancel {
                invite_txn,
                request,
                from,
            });
        }
    }

    fn on_response(&mut self, now: Instant, response: Response) {
        let (Some(branch), Some((_, method))) = (response.top_branch(), response.cseq()) else {
            return;
        };
        let key = ClientKey {
            branch,
            method: MethodKey(method),
        };
        let Some(&id) = self.clients.get(&key) else {
            return;
        };
        let code = response.status_code.code();
        let Some(t) = self.txns.get(&id) else {
            return;
        };
        match (&t.kind, t.state) {
            (Kind::InviteClient { .. }, State::Calling | State::Proceeding) => {
                self.on_invite_response(now, id, response, code)
            }
            (Kind::InviteClient { .. }, State::Accepted) if (200..300).contains(&code) => {
                self.on_2xx_retransmission(id, response)
            }
            (Kind::InviteClient { .. }, State::Completed) if code >= 300 => self.absorb(id),
            (Kind::NonInviteClient { .. }, State::Trying | State::Proceeding) => {
                self.on_non_invite_response(now, id, response, code)
            }
            _ => {}
        }
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        id: TransactionId,
        response: Response,
        code: u16,
    ) {
        let timeout = 64 * self.timers.t1;
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        let Kind::InviteClient {
            origin,
            accepted,
            ack_key,
            cancel,
            ..
        } = &mut t.kind
        else {
            return;
        };
        let queued_cancel = cancel.filter(|_| t.state == State::Calling);
        let peer = t.peer;
        let reliable = peer.transport.is_reliable();
        let mut accepted_key = None;
        let mut ack = None;
        if code < 200 {
            if t.state == State::Calling {
                t.state = State::Proceeding;
                t.retransmit = None;
                t.deadline = None;
            }
        } else if code < 300 {
            t.state = State::Accepted;
            t.retransmit = None;
            t.deadline = Some(now + timeout);
            accepted.push(Fork {
                to_tag: response.to_tag(),
                ack: None,
            });
            accepted_key = ack_key.clone();
        } else {
            // §17.1.1.3: the layer ACKs non-2xx finals itself, on the INVITE's branch.
            let to = response
                .headers
                .iter()
                .find(|h| matches!(h, Header::To(_)))
                .cloned();
            let bytes = encode(origin.request(Method::Ack, to));
            t.state = State::Completed;
            t.retransmit = None;
            t.last = Some(bytes.clone());
            t.deadline = (!reliable).then_some(now + TIMER_D);
            ack = Some(bytes);
        }

        if code < 200 {
            if let Some(cancel) = queued_cancel
                && let Some(bytes) = self.txns.get_mut(&cancel).and_then(|c| c.last.take())
            {
                self.start_cancel(now, id, cancel, bytes);
            }
        } else {
            self.drop_queued(queued_cancel);
            if let Some(key) = accepted_key {
                self.uac_acks.insert(key, id);
            }
            if let Some(bytes) = ack {
                self.transmit(peer, bytes, Some(id));
            }
            if reliable && code >= 300 {
                self.terminate(id);
            } else {
                self.schedule(id);
            }
        }
        self.events
            .push_back(TuEvent::Response { txn: id, response });
    }

    /// RFC 6026 Accepted: a 2xx from a new To tag is a fork the TU must see; a repeat gets the
    /// ACK the TU sent for it, if any yet.
    fn on_2xx_retransmission(&mut self, id: TransactionId, response: Response) {
        let Some(Txn {
            kind: Kind::InviteClient { accepted, .. },
            ..
        }) = self.txns.get_mut(&id)
        else {
            return;
        };
        let to_tag = response.to_tag();
        match accepted.iter().find(|f| f.to_tag == to_tag) {
            Some(Fork {
                ack: Some((bytes, peer)),
                ..
            }) => {
                let (bytes, peer) = (bytes.clone(), *peer);
                self.transmit(peer, bytes, Some(id));
            }
            Some(Fork { ack: None, .. }) => {}
            None => {
                accepted.push(Fork { to_tag, ack: None });
                self.events
                    .push_back(TuEvent::Response { txn: id, response });
            }
        }
    }

    fn on_non_invite_response(
        &mut self,
        now: Instant,
        id: TransactionId,
        response: Response,
        code: u16,
    ) {
        let t4 = self.timers.t4;
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        if code < 200 {
            t.state = State::Proceeding;
        } else if t.peer.transport.is_reliable() {
            self.terminate(id);
        } else {
            t.state = State::Completed;
            t.retransmit = None;
            t.last = None;
            t.deadline = Some(now + t4);
            self.schedule(id);
        }
        self.events
            .push_back(TuEvent::Response { txn: id, response });
    }

    fn drop_queued(&mut self, cancel: Option<TransactionId>) {
        if let Some(cancel) = cancel
            && self
                .txns
                .get(&cancel)
                .is_some_and(|c| c.state == State::Queued)
        {
            self.terminate(cancel);
        }
    }

    fn on_retransmit_timer(&mut self, now: Instant, id: TransactionId) {
        let t2 = self.timers.t2;
        let Some(t) = self.txns.get_mut(&id) else {
            return;
        };
        let Some((_, interval)) = t.retransmit else {
            return;
        };
        let next = match (&t.kind, t.state) {
            // Timer A doubles without a cap (§17.1.1.2).
            (Kind::InviteClient { .. }, _) => interval * 2,
            // Timer E in Proceeding fires every T2 (§17.1.2.2).
            (Kind::NonInviteClient { .. }, State::Proceeding) => t2,
            // Timer E in Trying, timer G, and 2xx retransmission: doubling up to T2.
            _ => (interval * 2).min(t2),
        };
        t.retransmit = Some((now + next, next));
        if let Some(bytes) = t.last.clone() {
            let peer = t.peer;
            self.transmit(peer, bytes, Some(id));
        }
        self.schedule(id);
    }

    fn on_deadline(&mut self, id: TransactionId) {
        let Some(t) = self.txns.get(&id) else {
            return;
        };
        let report = match (&t.kind, t.state) {
            // Timer B, or no final response 64*T1 after our CANCEL.
            (Kind::InviteClient { .. }, State::Calling | State::Proceeding) => true,
            // Timer F.
            (Kind::NonInviteClient { .. }, State::Trying | State::Proceeding) => true,
            // Timer H.
            (Kind::InviteServer { .. }, State::Completed) => true,
            // RFC 6026 timer L: a 2xx never ACKed.
            (Kind::InviteServer { acked, .. }, State::Accepted) => !*acked,
            // D, I, J, K, M: the transaction simply ends.
            _ => false,
        };
        self.terminate(id);
        if report {
            self.events.push_back(TuEvent::Timeout { txn: id });
        }
    }

    /// Removes a transaction and its index entries, and any CANCEL still queued behind it.
    fn terminate(&mut self, id: TransactionId) {
        let Some(t) = self.txns.remove(&id) else {
            return;
        };
        match t.kind {
            Kind::InviteClient {
                key,
                ack_key,
                cancel,
                ..
            } => {
                remove_if(&mut self.clients, &key, id);
                if let Some(ack_key) = ack_key {
                    remove_if(&mut self.uac_acks, &ack_key, id);
                }
                self.drop_queued(cancel);
            }
            Kind::NonInviteClient { key } => remove_if(&mut self.clients, &key, id),
            Kind::InviteServer { key, ack_key, .. } => {
                remove_if(&mut self.servers, &key, id);
                if let Some(ack_key) = ack_key {
                    remove_if(&mut self.uas_acks, &ack_key, id);
                }
            }
            Kind::NonInviteServer { key } => remove_if(&mut self.servers, &key, id),
        }
    }

    fn transmit(&mut self, peer: Peer, bytes: Bytes, txn: Option<TransactionId>) {
        self.transmits.push_back(Transmit { peer, bytes, txn });
    }

    /// Pushes heap entries for the transaction's current timers. Entries for instants it no
    /// longer holds become stale and are skipped.
    fn schedule(&mut self, id: TransactionId) {
        let Some(t) = self.txns.get(&id) else {
            return;
        };
        if let Some((at, _)) = t.retransmit {
            self.heap.push(Reverse((at, id, TimerKind::Retransmit)));
        }
        if let Some(at) = t.deadline {
            self.heap.push(Reverse((at, id, TimerKind::Deadline)));
        }
    }

    fn timer_is_live(&self, at: Instant, id: TransactionId, kind: TimerKind) -> bool {
        self.txns.get(&id).is_some_and(|t| match kind {
            TimerKind::Retransmit => t.retransmit.map(|(when, _)| when) == Some(at),
            TimerKind::Deadline => t.deadline == Some(at),
        })
    }

    /// Drops stale entries from the top of the heap so `poll_timeout` does not wake the IO
    /// side for nothing.
    fn prune_timers(&mut self) {
        while let Some(&Reverse((at, id, kind))) = self.heap.peek() {
            if self.timer_is_live(at, id, kind) {
                break;
            }
            self.heap.pop();
        }
    }
}

fn remove_if<K: Hash + Eq>(map: &mut HashMap<K, TransactionId>, key: &K, id: TransactionId) {
    if map.get(key) == Some(&id) {
        map.remove(key);
    }
}

/// Serialises once; retransmissions clone the `Bytes` handle, not the message.
fn encode(message: impl Into<SipMessage>) -> Bytes {
    Bytes::from(to_bytes(&message.into()))
}

/// RFC 3261 §18.2.1 / RFC 3581 §4: record where the request really came from in its top Via,
/// so every response built from it carries `received` (and `rport`) for NAT traversal.
fn stamp_via(request: &mut Request, via: Option<&rsip::typed::Via>, from: &Peer) {
    let Some(via) = via else {
        return;
    };
    let rport = via.params.iter().any(
        |p| matches!(p, Param::Other(name, None) if name.value().eq_ignore_ascii_case("rport")),
    );
    let from_ip = from.addr.ip();
    if !rport && matches!(via.uri.host_with_port.host, Host::IpAddr(ip) if ip == from_ip) {
        return;
    }
    let Some(Header::Via(header)) = request
        .headers
        .iter_mut()
        .find(|h| matches!(h, Header::Via(_)))
    else {
        return;
    };
    // message::parse gives each via-parm its own header, so this value is one Via.
    let mut parts = header.value().split(';');
    let mut stamped = parts.next().unwrap_or_default().trim_end().to_string();
    for part in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let name = part.split('=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("received") {
            continue;
        }
        stamped.push(';');
        if part.eq_ignore_ascii_case("rport") {
            let _ = write!(stamped, "rport={}", from.addr.port());
        } else {
            stamped.push_str(part);
        }
    }
    let _ = write!(stamped, ";received={from_ip}");
    *header = rsip::headers::Via::new(stamped);
}

#[cfg(test)]
mod tests;

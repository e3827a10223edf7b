//! The SIP endpoint task: the one owner of the node's transaction layer.
//!
//! It reads parsed messages from the transports and commands from call actors, feeds both into
//! the sans-IO [`TransactionLayer`], transmits what the layer emits, and hands transaction-user
//! events to their owners: REGISTER to the registrar, out-of-dialog OPTIONS answered here, a new
//! INVITE to a freshly spawned call actor, and everything else to the call actor that owns the
//! SIP Call-ID (each leg of a call has its own Call-ID, so Call-ID alone routes in-dialog traffic
//! and responses to our own requests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ractor::{Actor, ActorRef};
use switchyard_sip::headers::MessageExt;
use switchyard_sip::message;
use switchyard_sip::rsip::{
    self, Header, Method, Request, Response, SipMessage, StatusCode, prelude::*,
};
use switchyard_sip::transaction::{Peer, TransactionId, TransactionLayer, TuEvent};
use tokio::sync::mpsc;

use crate::call::{CallActor, CallArgs, CallMsg};
use crate::node::NodeContext;
use crate::registrar::Registrar;
use crate::sip::transport::{Inbound, Transports};
use crate::time::unix_ms;

/// Methods this node implements; anything else out of dialog gets 405 with this list.
pub const ALLOWED: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE";
/// SIP extensions we implement; a Require naming another gets 420 (RFC 3261 §8.2.2.3).
const SUPPORTED_EXTENSIONS: &[&str] = &[];

/// What call actors ask of the endpoint.
pub enum Command {
    /// Send `request` in a new client transaction; its responses and timeout go to `owner`
    /// (nowhere for a BYE sent by a call that is ending).
    SendRequest {
        request: Request,
        to: Peer,
        owner: Option<ActorRef<CallMsg>>,
    },
    /// Answer a server transaction.
    Respond {
        txn: TransactionId,
        response: Response,
    },
    /// Send the ACK for a 2xx (end-to-end; the layer re-sends it on 2xx retransmissions).
    AckFor2xx { ack: Request, to: Peer },
    /// CANCEL the pending INVITE client transaction whose request had this branch.
    Cancel { invite_branch: String },
    /// Route in-dialog requests for this SIP Call-ID to `owner` (for legs the call created).
    Claim {
        sip_call_id: String,
        owner: ActorRef<CallMsg>,
    },
    /// Stop routing this SIP Call-ID (the call is over).
    Release { sip_call_id: String },
    /// Take over the server transaction of an INVITE another node received (its copy came
    /// with a call taken over): it is handled as if it had arrived here from `from`, and the
    /// owner gets it as a `SipRequest` carrying the new transaction, to answer later.
    Adopt {
        invite: Request,
        from: Peer,
        owner: ActorRef<CallMsg>,
    },
    /// Send a request once, outside any transaction (the CANCEL of another node's INVITE,
    /// whose responses go to that node's Via).
    SendStateless { request: Request, to: Peer },
}

enum Input {
    Inbound(Inbound),
    Command(Command),
}

/// How call actors reach the endpoint. Cheap to clone.
#[derive(Clone)]
pub struct SipHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl SipHandle {
    pub fn send(&self, command: Command) {
        // Only fails when the endpoint task is gone, that is, when the node is shutting down.
        let _ = self.commands.send(command);
    }
}

/// The receiving end of a [`SipHandle`], consumed by [`spawn`].
pub struct CommandReceiver(mpsc::UnboundedReceiver<Command>);

/// Creates the handle call actors use before the endpoint exists (the node context holds it).
pub fn channel() -> (SipHandle, CommandReceiver) {
    let (commands, rx) = mpsc::unbounded_channel();
    (SipHandle { commands }, CommandReceiver(rx))
}

/// Starts the endpoint task on the given transports' inbound channel.
pub fn spawn(
    ctx: Arc<NodeContext>,
    transports: Transports,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    commands: CommandReceiver,
    registrar: Arc<Mutex<Registrar>>,
) {
    let endpoint = Endpoint {
        layer: TransactionLayer::new(ctx.timers()),
        ctx,
        transports,
        registrar,
        calls: HashMap::new(),
        client_owners: HashMap::new(),
        invite_branches: HashMap::new(),
        server_owners: HashMap::new(),
    };
    tokio::spawn(endpoint.run(inbound, commands.0));
}

struct Endpoint {
    ctx: Arc<NodeContext>,
    layer: TransactionLayer,
    transports: Transports,
    registrar: Arc<Mutex<Registrar>>,
    /// SIP Call-ID -> the call actor owning that leg.
    calls: HashMap<String, CallRoute>,
    /// Client transaction -> (owner, branch).
    client_owners: HashMap<TransactionId, (ActorRef<CallMsg>, String)>,
    /// Branch of a pending INVITE client transaction -> the transaction, for CANCEL.
    invite_branches: HashMap<String, TransactionId>,
    /// INVITE server transaction -> the SIP Call-ID whose call owns it, for its timeout.
    server_owners: HashMap<TransactionId, String>,
}

struct CallRoute {
    owner: ActorRef<CallMsg>,
    /// INVITE server transactions of this leg, forgotten with it.
    server_txns: Vec<TransactionId>,
}

impl CallRoute {
    fn new(owner: ActorRef<CallMsg>) -> Self {
        Self {
            owner,
            server_txns: Vec::new(),
        }
    }
}

impl Endpoint {
    async fn run(
        mut self,
        mut inbound: mpsc::UnboundedReceiver<Inbound>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            let deadline = self.layer.poll_timeout();
            let input = tokio::select! {
                biased;
                Some(command) = commands.recv() => Input::Command(command),
                Some(message) = inbound.recv() => Input::Inbound(message),
                _ = sleep_until(deadline) => {
                    self.layer.handle_timeout(Instant::now());
                    self.flush();
                    metrics::gauge!("sip_transactions").set(self.layer.len() as f64);
                    continue;
                }
                else => return,
            };
            self.handle(input).await;
            // Drain what is already queued before flushing, so one flush serves a burst.
            for _ in 0..64 {
                let input = match commands.try_recv() {
                    Ok(c) => Input::Command(c),
                    Err(_) => match inbound.try_recv() {
                        Ok(m) => Input::Inbound(m),
                        Err(_) => break,
                    },
                };
                self.handle(input).await;
            }
            self.flush();
            metrics::gauge!("sip_transactions").set(self.layer.len() as f64);
        }
    }

    async fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Inbound(Inbound { message, from }) => {
                self.layer.handle_message(now, message, from);
            }
            Input::Command(command) => self.command(now, command),
        }
        // Events can spawn call actors, which needs awaiting; transmissions wait for flush.
        while let Some(event) = self.layer.poll_event() {
            self.event(event).await;
        }
    }

    fn command(&mut self, now: Instant, command: Command) {
        match command {
            Command::SendRequest { request, to, owner } => {
                let branch = request.top_branch().unwrap_or_default();
                let is_invite = request.method == Method::Invite;
                if let (Some(call_id), Some(owner)) = (request.call_id(), owner.as_ref()) {
                    self.calls
                        .entry(call_id.to_owned())
                        .or_insert_with(|| CallRoute::new(owner.clone()));
                }
                let txn = match self.layer.send_request(now, request, to) {
                    Ok(txn) => txn,
                    Err(e) => {
                        tracing::warn!(error = %e, "request not sent");
                        if let Some(owner) = owner {
                            let _ = owner.cast(CallMsg::ClientTimeout { branch });
                        }
                        return;
                    }
                };
                if let Some(owner) = owner {
                    if is_invite {
                        self.invite_branches.insert(branch.clone(), txn);
                    }
                    self.client_owners.insert(txn, (owner, branch));
                }
            }
            Command::Respond { txn, response } => {
                if let Err(e) = self.layer.send_response(now, txn, response) {
                    tracing::debug!(error = %e, "response for a finished transaction dropped");
                }
            }
            Command::AckFor2xx { ack, to } => self.layer.send_ack_for_2xx(ack, to),
            Command::Cancel { invite_branch } => {
                if let Some(txn) = self.invite_branches.get(&invite_branch).copied()
                    && let Err(e) = self.layer.cancel(now, txn)
                {
                    tracing::debug!(error = %e, "CANCEL not sent");
                }
            }
            Command::Claim { sip_call_id, owner } => {
                self.calls.insert(sip_call_id, CallRoute::new(owner));
            }
            Command::Adopt {
                invite,
                from,
                owner,
            } => {
                if let Some(call_id) = invite.call_id() {
                    self.calls.insert(call_id.to_owned(), CallRoute::new(owner));
                }
                self.layer
                    .handle_message(now, SipMessage::Request(invite), from);
            }
            Command::SendStateless { request, to } => {
                let bytes = message::to_bytes(&SipMessage::Request(request));
                self.layer.send_stateless(bytes.into(), to);
            }
            Command::Release { sip_call_id } => {
                if let Some(route) = self.calls.remove(&sip_call_id) {
                    for txn in route.server_txns {
                        self.server_owners.remove(&txn);
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        while let Some(transmit) = self.layer.poll_transmit() {
            self.transports.send(&transmit.peer, transmit.bytes);
        }
    }

    async fn event(&mut self, event: TuEvent) {
        match event {
            TuEvent::Request { txn, request, from } => self.request(txn, request, from).await,
            TuEvent::Cancel {
                invite_txn,
                request,
                ..
            } => {
                if let Some(route) = request.call_id().and_then(|id| self.calls.get(id)) {
                    let _ = route.owner.cast(CallMsg::SipCancel { invite_txn });
                }
            }
            TuEvent::Ack {
                invite_txn,
                request,
                ..
            } => {
                // The 2xx was acknowledged: its transaction can no longer time out.
                self.server_owners.remove(&invite_txn);
                if let Some(route) = request.call_id().and_then(|id| self.calls.get(id)) {
                    let _ = route.owner.cast(CallMsg::SipAck { request });
                }
            }
            TuEvent::Response { txn, response } => {
                let final_response = response.status_code.code() >= 200;
                let Some((owner, branch)) = self.client_owners.get(&txn) else {
                    return;
                };
                let _ = owner.cast(CallMsg::SipResponse { response });
                if final_response {
                    self.invite_branches.remove(branch);
                    self.client_owners.remove(&txn);
                }
            }
            TuEvent::Timeout { txn } => {
                if let Some((owner, branch)) = self.client_owners.remove(&txn) {
                    self.invite_branches.remove(&branch);
                    let _ = owner.cast(CallMsg::ClientTimeout { branch });
                } else if let Some(route) = self
                    .server_owners
                    .remove(&txn)
                    .and_then(|call_id| self.calls.get(&call_id))
                {
                    let _ = route.owner.cast(CallMsg::ServerTimeout { txn });
                }
            }
            TuEvent::TransportError { txn } => {
                if let Some((owner, branch)) = self.client_owners.remove(&txn) {
                    self.invite_branches.remove(&branch);
                    let _ = owner.cast(CallMsg::ClientTimeout { branch });
                }
            }
        }
    }

    async fn request(&mut self, txn: TransactionId, request: Request, from: Peer) {
        let now = Instant::now();
        if let Some(response) = self.reject_early(&request) {
            let _ = self.layer.send_response(now, txn, response);
            return;
        }
        let in_dialog = request.to_tag().is_some();
        let call_id = request.call_id().unwrap_or_default().to_owned();
        let owner = self.calls.get_mut(&call_id).map(|route| {
            if request.method == Method::Invite {
                route.server_txns.push(txn);
            }
            route.owner.clone()
        });
        match (&request.method, owner) {
            (_, Some(owner)) => {
                if request.method == Method::Invite {
                    self.server_owners.insert(txn, call_id);
                }
                let _ = owner.cast(CallMsg::SipRequest { txn, request, from });
            }
            (Method::Register, None) => {
                let (response, change) = {
                    let mut registrar = self.registrar.lock().unwrap_or_else(|e| e.into_inner());
                    registrar.handle_register(&request, &from, unix_ms())
                };
                let _ = self.layer.send_response(now, txn, response);
                if let Some(change) = change {
                    self.ctx.binding_changed(change);
                }
            }
            (Method::Options, None) if !in_dialog => {
                let mut response = message::response(&request, StatusCode::OK, None);
                response.headers.push(Header::Allow(ALLOWED.into()));
                response
                    .headers
                    .push(Header::Other("Accept".into(), "application/sdp".into()));
                let _ = self.layer.send_response(now, txn, response);
            }
            (Method::Invite, None) if !in_dialog => self.new_call(txn, request, from).await,
            (
                Method::Invite | Method::Bye | Method::Info | Method::Update | Method::Options,
                None,
            ) => {
                let response =
                    message::response(&request, StatusCode::CallTransactionDoesNotExist, None);
                let _ = self.layer.send_response(now, txn, response);
            }
            (_, None) => {
                let mut response = message::response(&request, StatusCode::MethodNotAllowed, None);
                response.headers.push(Header::Allow(ALLOWED.into()));
                let _ = self.layer.send_response(now, txn, response);
            }
        }
    }

    /// Checks every request must pass before any routing (RFC 3261 §8.2 and §16.3).
    fn reject_early(&self, request: &Request) -> Option<Response> {
        if !matches!(
            request.uri.scheme,
            Some(rsip::Scheme::Sip) | Some(rsip::Scheme::Sips)
        ) {
            return Some(message::response(
                request,
                StatusCode::UnsupportedUriScheme,
                None,
            ));
        }
        if request.max_forwards() == Some(0) && request.method != Method::Options {
            return Some(message::response(request, StatusCode::TooManyHops, None));
        }
        let unsupported: Vec<String> = request
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Require(r) => Some(r.value().to_owned()),
                _ => None,
            })
            .flat_map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|ext| !ext.is_empty() && !SUPPORTED_EXTENSIONS.contains(&ext.as_str()))
            .collect();
        if !unsupported.is_empty() && request.method != Method::Cancel {
            let mut response = message::response(request, StatusCode::BadExtension, None);
            response
                .headers
                .push(Header::Unsupported(unsupported.join(", ").into()));
            return Some(response);
        }
        None
    }

    async fn new_call(&mut self, txn: TransactionId, request: Request, from: Peer) {
        let Some(sip_call_id) = request.call_id().map(str::to_owned) else {
            return;
        };
        let refusal = message::response(&request, StatusCode::ServerInternalError, None);
        let args = CallArgs::Invite {
            ctx: Arc::clone(&self.ctx),
            invite: Box::new(request),
            txn,
            from,
        };
        match Actor::spawn(None, CallActor, args).await {
            Ok((actor, _join)) => {
                self.server_owners.insert(txn, sip_call_id.clone());
                let mut route = CallRoute::new(actor);
                route.server_txns.push(txn);
                self.calls.insert(sip_call_id, route);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start call actor");
                let _ = self.layer.send_response(Instant::now(), txn, refusal);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

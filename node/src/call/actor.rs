//! The B2BUA call flow.
//!
//! ```text
//! caller INVITE -> route by DID -> 183 + music on hold -> queue
//!   queue Offer -> INVITE agent contact -> (ring timeout: CANCEL, NoAnswer)
//!   agent 200 -> ACK agent, bridge media, 200 caller -> Connected
//! BYE from either side -> BYE the other -> record written
//! caller CANCEL while waiting -> 487, abandoned
//! API monitor -> INVITE supervisor contact -> 200: ACK, mix supervisor in (listen/whisper/barge)
//! ```
//!
//! Everything the actor keeps is owned here; the SIP endpoint and media workers only route
//! messages to it. An agent leg that was cancelled but may still answer (the 200/CANCEL race of
//! RFC 3261 §9.1) is kept as a "stray" leg until its final response, so a late 200 is ACKed and
//! hung up rather than leaving the agent's phone off-hook.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchyard_media::{Codec, Endpoint, EndpointStats, MediaEvent};
use switchyard_sip::dialog::{self, Dialog};
use switchyard_sip::headers::{MessageExt, request_uri_user};
use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Method, Request, Response, StatusCode, prelude::*};
use switchyard_sip::sdp;
use switchyard_sip::transaction::{self, Peer, TransactionId};

use super::legs::{self, AgentInvite, Local};
use super::replica::MediaTarget;
use super::{CallMsg, CallReplica, CallSnapshot, MonitorMode, MonitorSnapshot};
use crate::acd::{AgentMsg, OfferOutcome, QueueMsg};
use crate::cdr::{CallRecord, Disposition, HangupBy, MonitorRecord, OfferRecord, RtpStats};
use crate::config::Overflow;
use crate::node::NodeContext;
use crate::remote::CallAddr;
use crate::sip::endpoint::Command;
use crate::time::{unix_ms, utc_date};

/// Payload type we offer for RFC 4733 telephone-events towards agents.
const TELEPHONE_EVENT_PT: u8 = 101;
/// Codecs the media workers relay and transcode between.
const SUPPORTED_CODECS: [sdp::Codec; 2] = [sdp::Codec::Pcmu, sdp::Codec::Pcma];
/// What we offer an agent's phone, in order of preference.
const AGENT_OFFER_CODECS: [(u8, sdp::Codec); 2] = [(0, sdp::Codec::Pcmu), (8, sdp::Codec::Pcma)];
/// How long a finished call waits for cancelled agent legs to send their final response.
const STRAY_LEG_GRACE: Duration = Duration::from_secs(32);

mod takeover;

pub struct CallActor;

pub enum CallArgs {
    /// A new call: the caller's INVITE, in its server transaction.
    Invite {
        ctx: Arc<NodeContext>,
        invite: Box<Request>,
        txn: TransactionId,
        from: Peer,
    },
    /// A call of a failed or draining node, from the copy this node kept as its standby.
    Takeover {
        ctx: Arc<NodeContext>,
        replica: Box<CallReplica>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Checking the INVITE; no response beyond 100 yet.
    Routing,
    /// Waiting in a queue, hearing music.
    Queued,
    /// An agent's phone is ringing.
    Offering,
    Connected,
    /// Playing the goodbye prompt before refusing the call.
    Goodbye,
    /// Given to the standby of a draining node; relaying media until the legs have moved.
    HandedOver,
    /// Over; lingering only for stray agent legs.
    Done,
}

struct CallerLeg {
    invite: Request,
    /// The INVITE's server transaction; `None` on a standby until it has adopted it.
    txn: Option<TransactionId>,
    /// Where the INVITE came from.
    peer: Peer,
    local: Local,
    dialog: Option<Dialog>,
    local_tag: String,
    /// Our SDP answer, sent in the 183 and again in the 200.
    sdp: String,
    /// `o=` session id and version of `sdp`.
    sdp_session: u64,
    sdp_version: u64,
    endpoint: Option<Endpoint>,
    /// Where the caller's phone takes RTP.
    media: Option<MediaTarget>,
}

struct AgentLeg {
    agent_id: String,
    queue: String,
    attempt: u32,
    sip_call_id: String,
    invite: Request,
    branch: String,
    peer: Peer,
    local: Local,
    dialog: Option<Dialog>,
    endpoint: Option<Endpoint>,
    /// Where the agent's phone takes RTP, once it answered.
    media: Option<MediaTarget>,
    /// `o=` session id of our SDP towards the agent.
    sdp_session: u64,
    offered_ms: u64,
}

/// An INVITE sent to a registered extension's phone (an agent being offered the call, or a
/// supervisor joining it), with the media endpoint offered in it.
struct Ringing {
    sip_call_id: String,
    invite: Request,
    branch: String,
    peer: Peer,
    local: Local,
    endpoint: Endpoint,
}

/// Why an extension could not be rung.
#[derive(Debug)]
enum RingError {
    NotRegistered,
    Unreachable,
    NoMedia,
}

impl RingError {
    fn describe(&self, extension: &str) -> String {
        match self {
            RingError::NotRegistered => format!("extension {extension} is not registered"),
            RingError::Unreachable => format!("extension {extension} has no usable contact"),
            RingError::NoMedia => "no media port free".into(),
        }
    }
}

/// A supervisor monitoring the call, from its INVITE to its BYE.
struct SupervisorLeg {
    extension: String,
    mode: MonitorMode,
    ringing: Ringing,
    dialog: Option<Dialog>,
}

pub struct CallState {
    ctx: Arc<NodeContext>,
    /// When the INVITE reached the call, for the set-up latency histogram (INVITE to 200).
    invited_at: std::time::Instant,
    phase: Phase,
    caller: CallerLeg,
    agent: Option<AgentLeg>,
    /// Cancelled or abandoned agent legs still waiting for their final response.
    strays: Vec<AgentLeg>,
    supervisor: Option<SupervisorLeg>,
    attempts: u32,
    priority: u8,
    record: CallRecord,
    /// Replication to the standby node (clustered nodes only).
    replication: takeover::Replication,
    /// Re-INVITEs of a take-over still waiting for their answers.
    resuming: Option<takeover::Resuming>,
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallState, ActorProcessingErr> {
        let (ctx, invite, txn, from) = match args {
            CallArgs::Invite {
                ctx,
                invite,
                txn,
                from,
            } => (ctx, *invite, txn, from),
            CallArgs::Takeover { ctx, replica } => {
                return CallState::from_replica(ctx, *replica).map_err(Into::into);
            }
        };
        let now = unix_ms();
        let record = CallRecord {
            id: format!("{:016x}", rand::random::<u64>()),
            node: ctx.config.node.id.clone(),
            caller_call_id: invite.call_id().unwrap_or_default().to_owned(),
            agent_call_id: None,
            caller: invite
                .from_uri()
                .map(|uri| legs::uri_user(&uri))
                .unwrap_or_default(),
            did: request_uri_user(&invite).unwrap_or_default(),
            queue: None,
            agent: None,
            arrived_ms: now,
            queued_ms: None,
            offers: Vec::new(),
            answered_ms: None,
            ended_ms: now,
            wait_ms: 0,
            talk_ms: 0,
            disposition: Disposition::Failed,
            hangup_by: HangupBy::System,
            recording: None,
            caller_rtp: None,
            agent_rtp: None,
            dtmf: String::new(),
            monitors: Vec::new(),
            failover: None,
        };
        let local = ctx.local(from.transport);
        Ok(CallState {
            invited_at: std::time::Instant::now(),
            caller: CallerLeg {
                invite,
                txn: Some(txn),
                peer: from,
                local,
                dialog: None,
                local_tag: dialog::new_tag(),
                sdp: String::new(),
                sdp_session: rand::random::<u32>().into(),
                sdp_version: 1,
                endpoint: None,
                media: None,
            },
            ctx,
            phase: Phase::Routing,
            agent: None,
            strays: Vec::new(),
            supervisor: None,
            attempts: 0,
            priority: 0,
            record,
            replication: takeover::Replication::default(),
            resuming: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::counter!("calls_total").increment(1);
        metrics::gauge!("calls_active").increment(1.0);
        state
            .ctx
            .calls
            .insert(state.record.id.clone(), myself.clone());
        if state.phase == Phase::Routing {
            state.route(&myself);
        } else {
            state.resume(&myself);
        }
        state.replicate(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.calls.remove(&state.record.id);
        metrics::gauge!("calls_active").decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        message: CallMsg,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CallMsg::Offer {
                agent_id,
                queue,
                ring_timeout_secs,
                contacts,
                offered_ms,
            } => state.offer(
                &myself,
                agent_id,
                queue,
                ring_timeout_secs,
                &contacts,
                offered_ms,
            ),
            CallMsg::Overflow { queue, action } => state.overflow(&myself, queue, action),
            CallMsg::Requeue { queue } => state.requeue(&myself, queue),
            CallMsg::SipRequest { txn, request, .. } => state.on_request(&myself, txn, request),
            CallMsg::SipAck { .. } => {}
            CallMsg::SipCancel { .. } => state.on_caller_cancel(&myself),
            CallMsg::SipResponse { response } => state.on_response(&myself, response),
            CallMsg::ClientTimeout { branch } => state.on_client_timeout(&myself, &branch),
            CallMsg::ServerTimeout { .. } => {
                // Our 200 to the caller was never ACKed: the caller is gone.
                if state.phase == Phase::Connected && state.may_act() {
                    state.hang_up_agent();
                    state.finish(&myself, HangupBy::System, Disposition::Answered);
                }
            }
            CallMsg::RingTimeout { attempt } => state.on_ring_timeout(attempt),
            CallMsg::Media(event) => state.on_media(&myself, event),
            CallMsg::Reap => state.strays.clear(),
            CallMsg::PromptDeadline => {
                if state.phase == Phase::Goodbye {
                    state.refuse(
                        &myself,
                        StatusCode::TemporarilyUnavailable,
                        Disposition::Overflowed,
                    );
                }
            }
            CallMsg::Monitor {
                supervisor,
                mode,
                reply,
            } => {
                let result = state.start_monitor(&myself, supervisor, mode);
                answer(reply, result.map(|()| state.snapshot()));
            }
            CallMsg::SetMonitorMode { mode, reply } => {
                let result = state.set_monitor_mode(mode);
                answer(reply, result.map(|()| state.snapshot()));
            }
            CallMsg::Snapshot(reply) => answer(reply, state.snapshot()),
            CallMsg::Relinquish => state.relinquish(),
            CallMsg::HandOver => state.hand_over(&myself),
            CallMsg::CopyToStandbys => state.copy_to_standbys(),
        }
        if state.phase == Phase::Done && state.strays.is_empty() {
            myself.stop(None);
        } else {
            state.replicate(&myself);
        }
        Ok(())
    }
}

impl CallState {
    fn sip(&self, command: Command) {
        self.ctx.sip.send(command);
    }

    fn respond(&self, txn: TransactionId, response: Response) {
        self.sip(Command::Respond { txn, response });
    }

    fn respond_to_caller(&self, code: StatusCode) {
        let tag = Some(self.caller.local_tag.as_str());
        let response = message::response(&self.caller.invite, code, tag);
        self.respond_to_invite(response);
    }

    /// Answers the caller's INVITE; a standby that has not adopted its transaction yet cannot.
    fn respond_to_invite(&self, response: Response) {
        match self.caller.txn {
            Some(txn) => self.respond(txn, response),
            None => {
                tracing::warn!(call = %self.record.id, "caller's INVITE not adopted yet; response dropped")
            }
        }
    }

    /// Refuses the caller's INVITE with a final error and ends the call.
    fn refuse(&mut self, myself: &ActorRef<CallMsg>, code: StatusCode, disposition: Disposition) {
        self.respond_to_caller(code);
        self.finish(myself, HangupBy::System, disposition);
    }

    fn route(&mut self, myself: &ActorRef<CallMsg>) {
        let invite = &self.caller.invite;
        let content_type = invite.headers.iter().find_map(|h| match h {
            Header::ContentType(c) => Some(c.value().to_owned()),
            _ => None,
        });
        if !accepts_sdp(invite) {
            // Our answers carry SDP; a caller that accepts none cannot get one (RFC 3261 §21.4.7).
            return self.refuse(myself, StatusCode::NotAcceptable, Disposition::Failed);
        }
        if invite.body.is_empty() {
            // An INVITE without an offer would need our offer in the 200; not supported yet.
            return self.refuse(myself, StatusCode::NotAcceptableHere, Disposition::Failed);
        }
        if !content_type.is_some_and(|c| sdp::is_sdp_content_type(&c)) {
            let mut response = message::response(
                invite,
                StatusCode::UnsupportedMediaType,
                Some(&self.caller.local_tag),
            );
            response
                .headers
                .push(Header::Other("Accept".into(), "application/sdp".into()));
            self.respond_to_invite(response);
            return self.finish(myself, HangupBy::System, Disposition::Failed);
        }
        let negotiated = sdp::parse(&invite.body)
            .and_then(|offer| sdp::negotiate(&offer, &SUPPORTED_CODECS).map(|n| (offer, n)));
        let (offer, negotiated) = match negotiated {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "caller offer refused");
                let code = StatusCode::from(e.status_code());
                return self.refuse(myself, code, Disposition::Failed);
            }
        };
        // The offer is checked before the number, so a request we could never serve gets the
        // media-level answer (415/488) whatever it dialled, as RFC 4475 expects.
        let Some(did) = self.ctx.did(&self.record.did).cloned() else {
            return self.refuse(myself, StatusCode::NotFound, Disposition::Failed);
        };
        let invite = &self.caller.invite;
        let contact = self.caller.local.contact_uri();
        match Dialog::new_uas(invite, &self.caller.local_tag, &contact) {
            Ok(d) => self.caller.dialog = Some(d),
            Err(_) => return self.refuse(myself, StatusCode::BadRequest, Disposition::Failed),
        }
        let endpoint = match self.ctx.media.allocate(None) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "no media port for caller");
                return self.refuse(myself, StatusCode::ServiceUnavailable, Disposition::Failed);
            }
        };
        self.ctx.media_owners.insert(endpoint.id, myself.clone());
        let target = MediaTarget::new(
            std::net::SocketAddr::new(offer.connection, offer.port),
            &negotiated,
        );
        target.apply(&self.ctx.media, endpoint.id);
        self.caller.media = Some(target);
        if negotiated.telephone_event_pt.is_none() {
            // No telephone-events from this caller: listen for key tones in its audio.
            self.ctx.media.detect_inband_dtmf(endpoint.id, true);
        }
        self.ctx
            .media
            .play(endpoint.id, Arc::clone(&self.ctx.music), true);
        self.caller.sdp = sdp::build_answer(
            &offer,
            &sdp::LocalMedia {
                session_id: self.caller.sdp_session,
                version: self.caller.sdp_version,
                addr: endpoint.local.ip(),
                port: endpoint.local.port(),
                codecs: &[(negotiated.payload_type, negotiated.codec)],
                telephone_event_pt: negotiated.telephone_event_pt,
                direction: sdp::Direction::SendRecv,
            },
        );
        self.caller.endpoint = Some(endpoint);
        let early = legs::response_with_sdp(
            &self.caller.invite,
            StatusCode::SessionProgress,
            &self.caller.local_tag,
            &contact,
            &self.caller.sdp,
        );
        self.respond_to_invite(early);
        self.priority = did.priority;
        self.enqueue(myself, did.queue, unix_ms());
    }

    fn enqueue(&mut self, myself: &ActorRef<CallMsg>, queue: String, since_ms: u64) {
        let Some(queue_ref) = self.ctx.queues.get(&queue) else {
            return self.refuse(myself, StatusCode::ServiceUnavailable, Disposition::Failed);
        };
        self.record.queued_ms.get_or_insert(since_ms);
        self.record.queue = Some(queue);
        self.phase = Phase::Queued;
        let sent = queue_ref.cast(QueueMsg::Enqueue {
            call: self.addr(),
            priority: self.priority,
            since_ms,
        });
        if sent.is_err() {
            self.refuse(myself, StatusCode::ServiceUnavailable, Disposition::Failed);
        }
    }

    fn report(&mut self, queue: &str, agent_id: &str, offered_ms: u64, outcome: OfferOutcome) {
        self.record.offers.push(OfferRecord {
            agent: agent_id.to_owned(),
            queue: queue.to_owned(),
            offered_ms,
            ended_ms: unix_ms(),
            outcome,
        });
        if let Some(queue_ref) = self.ctx.queues.get(&queue.to_owned()) {
            let _ = queue_ref.cast(QueueMsg::OfferOutcome {
                call: self.addr(),
                agent_id: agent_id.to_owned(),
                outcome,
            });
        }
    }

    /// Where queues reach this call, on this node or another.
    fn addr(&self) -> CallAddr {
        CallAddr {
            node: self.ctx.node_id,
            call_id: self.record.id.clone(),
        }
    }

    /// Joins `queue` again, keeping the original wait, if still waiting in it: the queue moved
    /// to another node or restarted and no longer knows this caller.
    fn requeue(&mut self, myself: &ActorRef<CallMsg>, queue: String) {
        if self.phase == Phase::Queued && self.record.queue.as_ref() == Some(&queue) {
            tracing::info!(call = %self.record.id, %queue, "queue restarted; joining it again");
            let since = self.record.queued_ms.unwrap_or_else(unix_ms);
            self.enqueue(myself, queue, since);
        }
    }

    fn offer(
        &mut self,
        myself: &ActorRef<CallMsg>,
        agent_id: String,
        queue: String,
        ring_timeout_secs: u64,
        contacts: &[String],
        offered_ms: u64,
    ) {
        if self.phase != Phase::Queued {
            // The caller left (or is being connected) while the queue was choosing.
            let outcome = if self.phase == Phase::Done {
                OfferOutcome::CallerAbandoned
            } else {
                OfferOutcome::Failed
            };
            return self.report(&queue, &agent_id, offered_ms, outcome);
        }
        let ringing = match self.ring(myself, &agent_id, contacts) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(agent = %agent_id, error = ?e, "cannot offer the call");
                return self.report(&queue, &agent_id, offered_ms, OfferOutcome::Failed);
            }
        };
        myself.send_after(Duration::from_secs(ring_timeout_secs), {
            let attempt = self.attempts;
            move || CallMsg::RingTimeout { attempt }
        });
        let Ringing {
            sip_call_id,
            invite,
            branch,
            peer,
            local,
            endpoint,
        } = ringing;
        self.agent = Some(AgentLeg {
            agent_id,
            queue,
            attempt: self.attempts,
            sip_call_id,
            invite,
            branch,
            peer,
            local,
            dialog: None,
            sdp_session: u64::from(endpoint.local.port()),
            endpoint: Some(endpoint),
            media: None,
            offered_ms,
        });
        self.phase = Phase::Offering;
    }

    /// INVITEs `extension`'s registered contact from a new media endpoint on the caller's
    /// worker, with the caller's identity in From; responses come back as `SipResponse`.
    /// A binding in this node's registrar comes first (a phone registered over TCP is reached
    /// over its connection); otherwise the first of `contacts`, registered at another node.
    fn ring(
        &mut self,
        myself: &ActorRef<CallMsg>,
        extension: &str,
        contacts: &[String],
    ) -> Result<Ringing, RingError> {
        let binding = {
            let registrar = self.ctx.registrar.lock().unwrap_or_else(|e| e.into_inner());
            registrar.contacts(extension, unix_ms()).into_iter().next()
        };
        let (uri, source) = match binding {
            Some(binding) => (binding.uri, Some(binding.source)),
            None => {
                let uri = contacts.first().ok_or(RingError::NotRegistered)?;
                let uri = message::parse_uri(uri).map_err(|_| RingError::Unreachable)?;
                (uri, None)
            }
        };
        let peer = legs::peer_for(&uri, source.as_ref()).ok_or(RingError::Unreachable)?;
        let near = self.caller.endpoint.as_ref().map(|e| e.id);
        let endpoint = self.ctx.media.allocate(near).map_err(|e| {
            tracing::warn!(error = %e, "no media port for an outgoing leg");
            RingError::NoMedia
        })?;
        self.ctx.media_owners.insert(endpoint.id, myself.clone());
        self.attempts += 1;
        let local = self.ctx.local(peer.transport);
        let sip_call_id = format!("{}-{}@{}", self.record.id, self.attempts, local.addr.ip());
        let branch = transaction::new_branch();
        let invite = AgentInvite {
            local,
            target: &uri,
            agent_id: extension,
            caller_user: &self.record.caller,
            sip_call_id: &sip_call_id,
            from_tag: &dialog::new_tag(),
            branch: &branch,
            sdp: agent_offer(&endpoint),
            user_agent: &self.ctx.config.sip.user_agent,
        }
        .build();
        self.sip(Command::SendRequest {
            request: invite.clone(),
            to: peer,
            owner: Some(myself.clone()),
        });
        Ok(Ringing {
            sip_call_id,
            invite,
            branch,
            peer,
            local,
            endpoint,
        })
    }

    /// Gives up on the ringing agent leg: CANCEL it and keep it as a stray until it ends.
    fn withdraw_offer(&mut self, outcome: OfferOutcome) {
        let Some(mut leg) = self.agent.take() else {
            return;
        };
        self.sip(Command::Cancel {
            invite_branch: leg.branch.clone(),
        });
        self.release_endpoint(leg.endpoint.take());
        self.report(
            &leg.queue.clone(),
            &leg.agent_id.clone(),
            leg.offered_ms,
            outcome,
        );
        self.strays.push(leg);
        if self.phase == Phase::Offering {
            self.phase = Phase::Queued;
        }
    }

    fn on_ring_timeout(&mut self, attempt: u32) {
        if self.phase == Phase::Offering
            && self.agent.as_ref().is_some_and(|a| a.attempt == attempt)
        {
            self.withdraw_offer(OfferOutcome::NoAnswer);
        }
    }

    fn on_client_timeout(&mut self, myself: &ActorRef<CallMsg>, branch: &str) {
        if self.on_resume_failed(myself, branch) {
            return;
        }
        if self.phase == Phase::Offering && self.agent.as_ref().is_some_and(|a| a.branch == branch)
        {
            if let Some(mut leg) = self.agent.take() {
                self.release_endpoint(leg.endpoint.take());
                self.report(
                    &leg.queue,
                    &leg.agent_id,
                    leg.offered_ms,
                    OfferOutcome::Failed,
                );
            }
            self.phase = Phase::Queued;
        }
        if self
            .supervisor
            .as_ref()
            .is_some_and(|s| s.ringing.branch == branch)
        {
            self.end_monitor(false);
        }
        self.strays.retain(|s| s.branch != branch);
    }

    fn on_response(&mut self, myself: &ActorRef<CallMsg>, response: Response) {
        if self.on_resume_response(myself, &response) {
            return;
        }
        let Some(call_id) = response.call_id().map(str::to_owned) else {
            return;
        };
        let Some((_, method)) = response.cseq() else {
            return;
        };
        let code = response.status_code.code();
        if method != Method::Invite || code < 200 {
            return;
        }
        if let Some(i) = self.strays.iter().position(|s| s.sip_call_id == call_id) {
            let mut stray = self.strays.remove(i);
            if code < 300 {
                // Answered despite our CANCEL: acknowledge and hang up at once.
                if let Ok(dialog) = Dialog::new_uac(&stray.invite, &response) {
                    stray.dialog = Some(dialog);
                    send_ack(&self.ctx, stray.dialog.as_ref(), &stray.local, &stray.peer);
                    send_bye(
                        &self.ctx,
                        &mut stray.dialog,
                        &stray.local,
                        Some(&stray.peer),
                    );
                }
            }
            return;
        }
        if self
            .supervisor
            .as_ref()
            .is_some_and(|s| s.ringing.sip_call_id == call_id)
        {
            return self.on_supervisor_response(&response, code);
        }
        let is_current = self
            .agent
            .as_ref()
            .is_some_and(|a| a.sip_call_id == call_id);
        if !is_current || self.phase != Phase::Offering {
            return;
        }
        if code < 300 {
            self.connect(response);
        } else if let Some(mut leg) = self.agent.take() {
            self.release_endpoint(leg.endpoint.take());
            let outcome = match code {
                408 => OfferOutcome::NoAnswer,
                480 | 486 | 600 | 603 => OfferOutcome::Rejected,
                _ => OfferOutcome::Failed,
            };
            self.report(&leg.queue, &leg.agent_id, leg.offered_ms, outcome);
            self.phase = Phase::Queued;
        }
    }

    fn connect(&mut self, response: Response) {
        let Some(mut leg) = self.agent.take() else {
            return;
        };
        let dialog = match Dialog::new_uac(&leg.invite, &response) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "agent 2xx without a usable dialog");
                self.agent = Some(leg);
                return self.withdraw_offer(OfferOutcome::Failed);
            }
        };
        leg.dialog = Some(dialog);
        send_ack(&self.ctx, leg.dialog.as_ref(), &leg.local, &leg.peer);
        let answer = sdp::parse(&response.body)
            .and_then(|a| sdp::negotiate(&a, &SUPPORTED_CODECS).map(|n| (a, n)));
        let (Some(agent_ep), Some(caller_ep)) =
            (leg.endpoint.as_ref(), self.caller.endpoint.as_ref())
        else {
            return;
        };
        match answer {
            Ok((answer, negotiated)) => {
                let target = MediaTarget::new(
                    std::net::SocketAddr::new(answer.connection, answer.port),
                    &negotiated,
                );
                target.apply(&self.ctx.media, agent_ep.id);
                leg.media = Some(target);
                if let Err(e) = self.ctx.media.bridge(caller_ep.id, agent_ep.id) {
                    // Both legs are allocated on one worker; this is a bug if it happens.
                    tracing::error!(error = %e, "cannot bridge call legs");
                }
            }
            Err(e) => {
                // The agent's phone answered with SDP we cannot use: hang it up, try another.
                tracing::warn!(agent = %leg.agent_id, error = %e, "agent answer SDP unusable");
                send_bye(&self.ctx, &mut leg.dialog, &leg.local, Some(&leg.peer));
                self.release_endpoint(leg.endpoint.take());
                self.report(
                    &leg.queue,
                    &leg.agent_id,
                    leg.offered_ms,
                    OfferOutcome::Failed,
                );
                self.phase = Phase::Queued;
                return;
            }
        }
        let ok = legs::response_with_sdp(
            &self.caller.invite,
            StatusCode::OK,
            &self.caller.local_tag,
            &self.caller.local.contact_uri(),
            &self.caller.sdp,
        );
        self.respond_to_invite(ok);
        metrics::histogram!("call_setup_seconds").record(self.invited_at.elapsed().as_secs_f64());
        let now = unix_ms();
        self.record.answered_ms = Some(now);
        self.record.agent = Some(leg.agent_id.clone());
        self.record.agent_call_id = Some(leg.sip_call_id.clone());
        self.report(
            &leg.queue,
            &leg.agent_id,
            leg.offered_ms,
            OfferOutcome::Answered,
        );
        let record = self.ctx.config.queue(&leg.queue).is_some_and(|q| q.record);
        self.agent = Some(leg);
        self.phase = Phase::Connected;
        if record {
            self.start_recording(now);
        }
    }

    /// Records the connected call to `<recordings>/<yyyy-mm-dd>/<call id>.wav`; the record
    /// names the file. A recording that cannot start is logged and the call goes on.
    fn start_recording(&mut self, now: u64) {
        let (Some(caller), Some(agent)) = (
            self.caller.endpoint.as_ref(),
            self.agent.as_ref().and_then(|a| a.endpoint.as_ref()),
        ) else {
            return;
        };
        let path = self
            .ctx
            .recordings_dir
            .join(utc_date(now))
            .join(format!("{}.wav", self.record.id));
        match self.ctx.media.record(caller.id, agent.id, &path) {
            Ok(()) => self.record.recording = Some(path.display().to_string()),
            Err(e) => {
                metrics::counter!("recording_failures_total").increment(1);
                tracing::error!(call = %self.record.id, error = %e, "call not recorded");
            }
        }
    }

    fn on_request(&mut self, myself: &ActorRef<CallMsg>, txn: TransactionId, request: Request) {
        if self.adopt(&request, txn) {
            return;
        }
        if self.phase == Phase::HandedOver {
            // The standby answers for the call now; a request still sent here lost the race.
            let response =
                message::response(&request, StatusCode::CallTransactionDoesNotExist, None);
            return self.respond(txn, response);
        }
        let call_id = request.call_id().unwrap_or_default();
        let from_caller = call_id == self.record.caller_call_id;
        let from_agent = self
            .agent
            .as_ref()
            .is_some_and(|a| a.sip_call_id == call_id);
        let from_supervisor = self
            .supervisor
            .as_ref()
            .is_some_and(|s| s.ringing.sip_call_id == call_id);
        let side = if from_caller {
            Side::Caller
        } else if from_agent {
            Side::Agent
        } else {
            Side::Supervisor
        };
        if !from_caller && !from_agent && !from_supervisor {
            // A stray agent leg hanging up, or a leg this call has already let go.
            let ok = message::response(&request, StatusCode::OK, None);
            return self.respond(txn, ok);
        }
        let dialog = match side {
            Side::Caller => self.caller.dialog.as_mut(),
            Side::Agent => self.agent.as_mut().and_then(|a| a.dialog.as_mut()),
            Side::Supervisor => self.supervisor.as_mut().and_then(|s| s.dialog.as_mut()),
        };
        let Some(dialog) = dialog else {
            let response =
                message::response(&request, StatusCode::CallTransactionDoesNotExist, None);
            return self.respond(txn, response);
        };
        if request.to_tag().as_deref() != Some(dialog.local_tag.as_str()) {
            let response =
                message::response(&request, StatusCode::CallTransactionDoesNotExist, None);
            return self.respond(txn, response);
        }
        if let Err(e) = dialog.on_request(&request) {
            tracing::debug!(error = %e, "in-dialog request refused");
            let response = message::response(&request, StatusCode::ServerInternalError, None);
            return self.respond(txn, response);
        }
        match request.method {
            Method::Bye => {
                self.respond(txn, message::response(&request, StatusCode::OK, None));
                match side {
                    Side::Caller => self.on_caller_gone(myself),
                    Side::Agent => self.on_agent_bye(myself),
                    // The supervisor leaving ends the monitoring only.
                    Side::Supervisor => self.end_monitor(false),
                }
            }
            Method::Invite => self.on_reinvite(txn, &request, side),
            Method::Info | Method::Update | Method::Options => {
                self.respond(txn, message::response(&request, StatusCode::OK, None));
            }
            _ => {
                let mut response = message::response(&request, StatusCode::MethodNotAllowed, None);
                response
                    .headers
                    .push(Header::Allow(crate::sip::endpoint::ALLOWED.into()));
                self.respond(txn, response);
            }
        }
    }

    /// A re-INVITE (hold, codec or address change): follow the new address, keep our own.
    fn on_reinvite(&mut self, txn: TransactionId, request: &Request, side: Side) {
        let tag_of =
            |dialog: Option<&Dialog>| dialog.map(|d| d.local_tag.clone()).unwrap_or_default();
        let (endpoint, our_sdp, tag, local) = match side {
            Side::Caller => (
                self.caller.endpoint.as_ref().map(|e| (e.id, e.local)),
                self.caller.sdp.clone(),
                self.caller.local_tag.clone(),
                self.caller.local,
            ),
            Side::Agent => {
                let Some(leg) = self.agent.as_ref() else {
                    return;
                };
                let sdp = leg.endpoint.as_ref().map(agent_offer).unwrap_or_default();
                (
                    leg.endpoint.as_ref().map(|e| (e.id, e.local)),
                    sdp,
                    tag_of(leg.dialog.as_ref()),
                    leg.local,
                )
            }
            Side::Supervisor => {
                let Some(leg) = self.supervisor.as_ref() else {
                    return;
                };
                let ep = &leg.ringing.endpoint;
                (
                    Some((ep.id, ep.local)),
                    agent_offer(ep),
                    tag_of(leg.dialog.as_ref()),
                    leg.ringing.local,
                )
            }
        };
        if !request.body.is_empty() {
            let parsed = sdp::parse(&request.body)
                .and_then(|o| sdp::negotiate(&o, &SUPPORTED_CODECS).map(|n| (o, n)));
            match parsed {
                Ok((offer, negotiated)) => {
                    let target = MediaTarget::new(
                        std::net::SocketAddr::new(offer.connection, offer.port),
                        &negotiated,
                    );
                    if let Some((id, _)) = endpoint {
                        target.apply(&self.ctx.media, id);
                    }
                    match side {
                        Side::Caller => self.caller.media = Some(target),
                        Side::Agent => {
                            if let Some(leg) = self.agent.as_mut() {
                                leg.media = Some(target);
                            }
                        }
                        Side::Supervisor => {}
                    }
                }
                Err(_) => {
                    let response = message::response(request, StatusCode::NotAcceptableHere, None);
                    return self.respond(txn, response);
                }
            }
        }
        let ok = legs::response_with_sdp(
            request,
            StatusCode::OK,
            &tag,
            &local.contact_uri(),
            &our_sdp,
        );
        self.respond(txn, ok);
    }

    fn on_caller_cancel(&mut self, myself: &ActorRef<CallMsg>) {
        if matches!(
            self.phase,
            Phase::Routing | Phase::Queued | Phase::Offering | Phase::Goodbye
        ) {
            self.respond_to_caller(StatusCode::RequestTerminated);
            self.on_caller_gone(myself);
        }
    }

    /// The caller hung up (BYE) or cancelled.
    fn on_caller_gone(&mut self, myself: &ActorRef<CallMsg>) {
        match self.phase {
            Phase::Connected => {
                self.hang_up_agent();
                self.finish(myself, HangupBy::Caller, Disposition::Answered);
            }
            Phase::Offering => {
                self.withdraw_offer(OfferOutcome::CallerAbandoned);
                self.leave_queue();
                self.finish(myself, HangupBy::Caller, Disposition::Abandoned);
            }
            Phase::Queued | Phase::Routing => {
                self.leave_queue();
                self.finish(myself, HangupBy::Caller, Disposition::Abandoned);
            }
            Phase::Goodbye => self.finish(myself, HangupBy::Caller, Disposition::Overflowed),
            Phase::HandedOver | Phase::Done => {}
        }
    }

    fn on_agent_bye(&mut self, myself: &ActorRef<CallMsg>) {
        if self.phase == Phase::Connected {
            send_bye(&self.ctx, &mut self.caller.dialog, &self.caller.local, None);
            self.finish(myself, HangupBy::Agent, Disposition::Answered);
        }
    }

    fn leave_queue(&self) {
        if let Some(queue) = self
            .record
            .queue
            .as_ref()
            .and_then(|q| self.ctx.queues.get(q))
        {
            let _ = queue.cast(QueueMsg::Abandon {
                call_id: self.record.id.clone(),
            });
        }
    }

    fn hang_up_agent(&mut self) {
        if let Some(leg) = self.agent.as_mut() {
            send_bye(&self.ctx, &mut leg.dialog, &leg.local, Some(&leg.peer));
        }
    }

    fn overflow(&mut self, myself: &ActorRef<CallMsg>, queue: String, action: Overflow) {
        if self.phase != Phase::Queued {
            return;
        }
        tracing::info!(call = %self.record.id, %queue, ?action, "caller overflowed");
        match action {
            Overflow::Queue { queue: target } => {
                let since = self.record.queued_ms.unwrap_or_else(unix_ms);
                self.enqueue(myself, target, since);
            }
            Overflow::Goodbye => {
                self.phase = Phase::Goodbye;
                if let Some(ep) = self.caller.endpoint.as_ref() {
                    self.ctx
                        .media
                        .play(ep.id, Arc::clone(&self.ctx.goodbye), false);
                }
                // Prompts are 8 kHz; a second of slack covers the worker's pacing.
                let prompt_ms = self.ctx.goodbye.samples() as u64 / 8;
                let deadline = Duration::from_millis(prompt_ms) + Duration::from_secs(1);
                myself.send_after(deadline, || CallMsg::PromptDeadline);
            }
        }
    }

    fn on_media(&mut self, myself: &ActorRef<CallMsg>, event: MediaEvent) {
        match event {
            MediaEvent::PlaybackFinished { .. } if self.phase == Phase::Goodbye => {
                self.refuse(
                    myself,
                    StatusCode::TemporarilyUnavailable,
                    Disposition::Overflowed,
                );
            }
            MediaEvent::RtpTimeout { endpoint }
                if self.phase == Phase::Connected
                    && self
                        .supervisor
                        .as_ref()
                        .is_some_and(|s| s.ringing.endpoint.id == endpoint) =>
            {
                tracing::info!(call = %self.record.id, "supervisor RTP timeout; monitoring ends");
                self.end_monitor(true);
            }
            MediaEvent::RtpTimeout { .. } if self.phase == Phase::Connected && self.may_act() => {
                tracing::info!(call = %self.record.id, "RTP timeout; hanging up");
                self.hang_up_agent();
                send_bye(&self.ctx, &mut self.caller.dialog, &self.caller.local, None);
                self.finish(myself, HangupBy::System, Disposition::Answered);
            }
            MediaEvent::Dtmf { endpoint, digit }
                if self
                    .caller
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| e.id == endpoint) =>
            {
                tracing::info!(call = %self.record.id, %digit, "caller pressed a key");
                metrics::counter!("dtmf_digits_total").increment(1);
                // Bounded, so a stuck or hostile phone cannot grow the record without limit.
                if self.record.dtmf.len() < MAX_RECORDED_DIGITS {
                    self.record.dtmf.push(digit);
                }
            }
            MediaEvent::RecordingStopped { path, duration, .. } => {
                tracing::debug!(call = %self.record.id, path = %path.display(), ?duration, "recording closed");
            }
            _ => {}
        }
    }

    /// Rings `extension` to monitor the connected call; the mix starts when it answers.
    fn start_monitor(
        &mut self,
        myself: &ActorRef<CallMsg>,
        extension: String,
        mode: MonitorMode,
    ) -> Result<(), String> {
        if self.phase != Phase::Connected {
            return Err("the call is not connected".into());
        }
        if let Some(current) = &self.supervisor {
            return Err(format!("{} is already monitoring", current.extension));
        }
        if self.agent.as_ref().is_some_and(|a| a.agent_id == extension) {
            return Err("the agent cannot monitor its own call".into());
        }
        let ringing = self
            .ring(myself, &extension, &[])
            .map_err(|e| e.describe(&extension))?;
        tracing::info!(call = %self.record.id, supervisor = %extension, mode = mode.label(), "ringing supervisor");
        self.supervisor = Some(SupervisorLeg {
            extension,
            mode,
            ringing,
            dialog: None,
        });
        Ok(())
    }

    fn set_monitor_mode(&mut self, mode: MonitorMode) -> Result<(), String> {
        let Some(leg) = self.supervisor.as_mut() else {
            return Err("nobody is monitoring the call".into());
        };
        leg.mode = mode;
        if leg.dialog.is_some() {
            self.ctx
                .media
                .set_monitor_mode(leg.ringing.endpoint.id, mode.into());
        }
        tracing::info!(call = %self.record.id, mode = mode.label(), "monitor mode changed");
        Ok(())
    }

    fn on_supervisor_response(&mut self, response: &Response, code: u16) {
        let Some(leg) = self.supervisor.as_mut() else {
            return;
        };
        if leg.dialog.is_some() {
            // A retransmitted 2xx: the ACK already went.
            return;
        }
        if code >= 300 {
            tracing::info!(call = %self.record.id, supervisor = %leg.extension, code, "supervisor did not answer");
            return self.end_monitor(false);
        }
        let dialog = match Dialog::new_uac(&leg.ringing.invite, response) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "supervisor 2xx without a usable dialog");
                return self.end_monitor(false);
            }
        };
        leg.dialog = Some(dialog);
        let answer = sdp::parse(&response.body)
            .and_then(|a| sdp::negotiate(&a, &SUPPORTED_CODECS).map(|n| (a, n)));
        let (leg_ep, mode) = (leg.ringing.endpoint.id, leg.mode);
        let (extension, ringing_local, ringing_peer) =
            (leg.extension.clone(), leg.ringing.local, leg.ringing.peer);
        send_ack(
            &self.ctx,
            leg.dialog.as_ref(),
            &ringing_local,
            &ringing_peer,
        );
        let (Ok((answer, negotiated)), Some(caller), Some(agent)) = (
            answer,
            self.caller.endpoint.as_ref(),
            self.agent.as_ref().and_then(|a| a.endpoint.as_ref()),
        ) else {
            tracing::warn!(call = %self.record.id, "supervisor answer unusable, or the call ended");
            return self.end_monitor(true);
        };
        self.ctx.media.set_remote(
            leg_ep,
            std::net::SocketAddr::new(answer.connection, answer.port),
            media_codec(negotiated.codec),
            negotiated.payload_type,
            negotiated.telephone_event_pt,
        );
        if let Err(e) = self
            .ctx
            .media
            .monitor(leg_ep, caller.id, agent.id, mode.into())
        {
            tracing::error!(error = %e, "cannot mix the supervisor in");
            return self.end_monitor(true);
        }
        tracing::info!(call = %self.record.id, supervisor = %extension, mode = mode.label(), "supervisor joined");
        self.record.monitors.push(MonitorRecord {
            supervisor: extension,
            mode: mode.label().into(),
            started_ms: unix_ms(),
        });
    }

    /// Ends monitoring: the mix goes, the supervisor's endpoint is released, and with
    /// `hang_up` its phone is sent a BYE (or a CANCEL while it rings).
    fn end_monitor(&mut self, hang_up: bool) {
        let Some(mut leg) = self.supervisor.take() else {
            return;
        };
        self.ctx.media.stop_monitor(leg.ringing.endpoint.id);
        self.release_endpoint(Some(leg.ringing.endpoint));
        self.sip(Command::Release {
            sip_call_id: leg.ringing.sip_call_id.clone(),
        });
        if !hang_up {
            return;
        }
        if leg.dialog.is_some() {
            send_bye(
                &self.ctx,
                &mut leg.dialog,
                &leg.ringing.local,
                Some(&leg.ringing.peer),
            );
        } else {
            self.sip(Command::Cancel {
                invite_branch: leg.ringing.branch.clone(),
            });
            // A 200 racing the CANCEL is ACKed and hung up like a stray agent leg.
            let Ringing {
                sip_call_id,
                invite,
                branch,
                peer,
                local,
                ..
            } = leg.ringing;
            self.strays.push(AgentLeg {
                agent_id: leg.extension,
                queue: String::new(),
                attempt: 0,
                sip_call_id,
                invite,
                branch,
                peer,
                local,
                dialog: None,
                endpoint: None,
                media: None,
                sdp_session: 0,
                offered_ms: 0,
            });
        }
    }

    fn snapshot(&self) -> CallSnapshot {
        CallSnapshot {
            id: self.record.id.clone(),
            caller: self.record.caller.clone(),
            did: self.record.did.clone(),
            state: self.phase.label(),
            queue: self.record.queue.clone(),
            agent: self.record.agent.clone(),
            arrived_ms: self.record.arrived_ms,
            answered_ms: self.record.answered_ms,
            recording: self.record.recording.clone(),
            monitor: self.supervisor.as_ref().map(|s| MonitorSnapshot {
                supervisor: s.extension.clone(),
                mode: s.mode,
                answered: s.dialog.is_some(),
            }),
        }
    }

    /// The leg's RTP statistics for the record; asked before the endpoint is released.
    fn rtp_stats(&self, endpoint: Option<&Endpoint>) -> Option<RtpStats> {
        let ep = endpoint?;
        match self.ctx.media.endpoint_stats(ep.id) {
            Ok(stats) => Some(rtp_stats(&stats)),
            Err(e) => {
                tracing::debug!(error = %e, "no RTP statistics for a leg");
                None
            }
        }
    }

    /// Frees the call's media endpoints and SIP routes.
    fn release_all(&mut self) {
        if let Some(leg) = self.supervisor.take() {
            self.ctx.media.stop_monitor(leg.ringing.endpoint.id);
            self.release_endpoint(Some(leg.ringing.endpoint));
            self.sip(Command::Release {
                sip_call_id: leg.ringing.sip_call_id,
            });
        }
        let caller = self.caller.endpoint.take();
        self.release_endpoint(caller);
        self.sip(Command::Release {
            sip_call_id: self.record.caller_call_id.clone(),
        });
        if let Some(mut leg) = self.agent.take() {
            self.release_endpoint(leg.endpoint.take());
            self.sip(Command::Release {
                sip_call_id: leg.sip_call_id,
            });
        }
    }

    fn release_endpoint(&self, endpoint: Option<Endpoint>) {
        if let Some(ep) = endpoint {
            self.ctx.media.release(ep.id);
            self.ctx.media_owners.remove(&ep.id);
        }
    }

    /// Ends the call: frees media, writes the record, frees the agent.
    fn finish(
        &mut self,
        myself: &ActorRef<CallMsg>,
        hangup_by: HangupBy,
        disposition: Disposition,
    ) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        // Answers to a take-over's re-INVITEs that come after the end change nothing.
        self.resuming = None;
        let now = unix_ms();
        self.end_monitor(true);
        if self.record.answered_ms.is_some() {
            self.record.caller_rtp = self.rtp_stats(self.caller.endpoint.as_ref());
            self.record.agent_rtp =
                self.rtp_stats(self.agent.as_ref().and_then(|a| a.endpoint.as_ref()));
        }
        let agent_id = self.agent.as_ref().map(|leg| leg.agent_id.clone());
        self.release_all();
        if disposition == Disposition::Answered
            && let Some(agent) = agent_id.and_then(|id| self.ctx.agents.get(&id))
        {
            let _ = agent.cast(AgentMsg::CallEnded {
                call_id: self.record.id.clone(),
            });
        }
        let r = &mut self.record;
        r.ended_ms = now;
        r.disposition = disposition;
        r.hangup_by = hangup_by;
        let waited_from = r.queued_ms.unwrap_or(r.arrived_ms);
        r.wait_ms = r.answered_ms.unwrap_or(now).saturating_sub(waited_from);
        r.talk_ms = r.answered_ms.map(|a| now.saturating_sub(a)).unwrap_or(0);
        metrics::counter!("calls_ended_total", "disposition" => disposition_label(disposition))
            .increment(1);
        self.forget_replica();
        if let Err(e) = self.ctx.cdrs.submit(self.record.clone()) {
            tracing::error!(call = %self.record.id, error = %e, "call record not written");
        }
        if !self.strays.is_empty() {
            myself.send_after(STRAY_LEG_GRACE, || CallMsg::Reap);
        }
    }
}

/// Which leg of the call an in-dialog request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Caller,
    Agent,
    Supervisor,
}

/// Keys kept in a call record.
const MAX_RECORDED_DIGITS: usize = 64;

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Routing => "routing",
            Phase::Queued => "queued",
            Phase::Offering => "offering",
            Phase::Connected => "connected",
            Phase::Goodbye => "goodbye",
            Phase::HandedOver => "handed-over",
            Phase::Done => "done",
        }
    }
}

/// Answers an API request; the requester may have given up waiting.
fn answer<T>(reply: RpcReplyPort<T>, value: T) {
    let _ = reply.send(value);
}

fn rtp_stats(stats: &EndpointStats) -> RtpStats {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    RtpStats {
        packets_received: stats.packets_received,
        packets_lost: stats.packets_lost,
        jitter_us: micros(stats.jitter),
        packets_sent: stats.packets_sent,
        remote_packets_lost: stats.remote.map(|r| i64::from(r.packets_lost)),
        round_trip_us: stats.remote.and_then(|r| r.round_trip).map(micros),
    }
}

/// ACKs the 2xx that established `dialog` on a leg whose INVITE went to `peer`.
fn send_ack(ctx: &NodeContext, dialog: Option<&Dialog>, local: &Local, peer: &Peer) {
    let Some(dialog) = dialog else {
        return;
    };
    let ack = match dialog.create_ack(1, local.via(&transaction::new_branch()), Vec::new()) {
        Ok(ack) => ack,
        Err(e) => return tracing::warn!(error = %e, "cannot build ACK"),
    };
    let to = target_peer(dialog, peer);
    ctx.sip.send(Command::AckFor2xx { ack, to });
}

/// Sends a BYE in `dialog` (if established). `invite_peer` is where the leg's INVITE went;
/// without it the dialog's remote target must resolve on its own.
fn send_bye(
    ctx: &NodeContext,
    dialog: &mut Option<Dialog>,
    local: &Local,
    invite_peer: Option<&Peer>,
) {
    let Some(dialog) = dialog.as_mut() else {
        return;
    };
    let bye = match dialog.create_request(
        Method::Bye,
        local.via(&transaction::new_branch()),
        Vec::new(),
    ) {
        Ok(bye) => bye,
        Err(e) => return tracing::debug!(error = %e, "no BYE for this dialog"),
    };
    let to = match invite_peer {
        Some(peer) => target_peer(dialog, peer),
        None => match legs::peer_for(&remote_target(dialog), None) {
            Some(peer) => peer,
            None => return,
        },
    };
    ctx.sip.send(Command::SendRequest {
        request: bye,
        to,
        owner: None,
    });
}

/// Where in-dialog requests of `dialog` go: the remote target, or the INVITE's peer when the
/// target cannot be resolved (or the phone is reached over a connection we keep).
fn target_peer(dialog: &Dialog, invite_peer: &Peer) -> Peer {
    legs::peer_for(&remote_target(dialog), Some(invite_peer)).unwrap_or(*invite_peer)
}

fn remote_target(dialog: &Dialog) -> rsip::Uri {
    message::parse_uri(&dialog.remote_target).unwrap_or_default()
}

/// Whether the request's Accept (if any) allows an SDP body in our responses.
fn accepts_sdp(request: &Request) -> bool {
    let mut accepts = request
        .headers
        .iter()
        .filter_map(|h| match h {
            Header::Accept(a) => Some(a.value().to_owned()),
            _ => None,
        })
        .peekable();
    if accepts.peek().is_none() {
        return true;
    }
    accepts.any(|value| {
        value.split(',').any(|item| {
            let media = item.split(';').next().unwrap_or_default().trim();
            ["application/sdp", "application/*", "*/*"]
                .iter()
                .any(|ok| media.eq_ignore_ascii_case(ok))
        })
    })
}

/// Our SDP towards an agent's phone for media endpoint `endpoint`.
fn agent_offer(endpoint: &Endpoint) -> String {
    agent_sdp(endpoint, u64::from(endpoint.local.port()), 1)
}

/// Our SDP towards an agent's phone, as version `version` of session `session_id`.
fn agent_sdp(endpoint: &Endpoint, session_id: u64, version: u64) -> String {
    sdp::build(&sdp::LocalMedia {
        session_id,
        version,
        addr: endpoint.local.ip(),
        port: endpoint.local.port(),
        codecs: &AGENT_OFFER_CODECS,
        telephone_event_pt: Some(TELEPHONE_EVENT_PT),
        direction: sdp::Direction::SendRecv,
    })
}

fn media_codec(codec: sdp::Codec) -> Codec {
    match codec {
        sdp::Codec::Pcmu => Codec::Pcmu,
        sdp::Codec::Pcma => Codec::Pcma,
    }
}

fn disposition_label(d: Disposition) -> &'static str {
    match d {
        Disposition::Answered => "answered",
        Disposition::Abandoned => "abandoned",
        Disposition::Overflowed => "overflowed",
        Disposition::Failed => "failed",
    }
}

//! From the caller's INVITE to a connected agent: routing, queueing, offers, the answer.

use switchyard_sip::dialog::{self, Dialog};
use switchyard_sip::headers::MessageExt;
use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Method, Response, StatusCode, prelude::*};
use switchyard_sip::sdp;
use switchyard_sip::transaction;

use super::super::legs::{self, AgentInvite};
use super::super::replica::MediaTarget;
use super::{CallCore, CallEnv, Effect, Leg, LegState, Phase, QueueNote, Role, Sound, Timer};
use crate::acd::OfferOutcome;
use crate::cdr::{Disposition, HangupBy, OfferRecord};
use crate::config::{DidTarget, Overflow};
use switchyard_flows::FlowRun;

/// Codecs the media workers relay and transcode between.
pub(super) const SUPPORTED_CODECS: [sdp::Codec; 2] = [sdp::Codec::Pcmu, sdp::Codec::Pcma];
/// What we offer an agent's phone, in order of preference.
const AGENT_OFFER_CODECS: [(u8, sdp::Codec); 2] = [(0, sdp::Codec::Pcmu), (8, sdp::Codec::Pcma)];

/// Why an extension could not be rung.
#[derive(Debug)]
pub(super) enum RingError {
    NotRegistered,
    Unreachable,
    NoMedia,
}

impl RingError {
    pub(super) fn describe(&self, extension: &str) -> String {
        match self {
            RingError::NotRegistered => format!("extension {extension} is not registered"),
            RingError::Unreachable => format!("extension {extension} has no usable contact"),
            RingError::NoMedia => "no media port free".into(),
        }
    }
}

impl CallCore {
    pub(super) fn respond(&mut self, txn: transaction::TransactionId, response: Response) {
        self.emit(Effect::Respond { txn, response });
    }

    pub(super) fn respond_to_caller(&mut self, code: StatusCode) {
        let tag = Some(self.caller.local_tag.as_str());
        let response = message::response(&self.caller.invite, code, tag);
        self.respond_to_invite(response);
    }

    /// Answers the caller's INVITE; a standby that has not adopted its transaction yet cannot.
    pub(super) fn respond_to_invite(&mut self, response: Response) {
        match self.caller.txn {
            Some(txn) => self.respond(txn, response),
            None => {
                tracing::warn!(call = %self.record.id, "caller's INVITE not adopted yet; response dropped")
            }
        }
    }

    /// Refuses the caller's INVITE with a final error and ends the call.
    pub(super) fn refuse(
        &mut self,
        env: &mut dyn CallEnv,
        code: StatusCode,
        disposition: Disposition,
    ) {
        self.respond_to_caller(code);
        self.finish(env, HangupBy::System, disposition);
    }

    pub(super) fn route(&mut self, env: &mut dyn CallEnv) {
        let invite = &self.caller.invite;
        let content_type = invite.headers.iter().find_map(|h| match h {
            Header::ContentType(c) => Some(c.value().to_owned()),
            _ => None,
        });
        if !accepts_sdp(invite) {
            // Our answers carry SDP; a caller that accepts none cannot get one (RFC 3261 §21.4.7).
            return self.refuse(env, StatusCode::NotAcceptable, Disposition::Failed);
        }
        if invite.body.is_empty() {
            // An INVITE without an offer would need our offer in the 200; not supported yet.
            return self.refuse(env, StatusCode::NotAcceptableHere, Disposition::Failed);
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
            return self.finish(env, HangupBy::System, Disposition::Failed);
        }
        let negotiated = sdp::parse(&invite.body)
            .and_then(|offer| sdp::negotiate(&offer, &SUPPORTED_CODECS).map(|n| (offer, n)));
        let (offer, negotiated) = match negotiated {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "caller offer refused");
                let code = StatusCode::from(e.status_code());
                return self.refuse(env, code, Disposition::Failed);
            }
        };
        // The offer is checked before the number, so a request we could never serve gets the
        // media-level answer (415/488) whatever it dialled, as RFC 4475 expects.
        let Some(did) = env.did(&self.record.did) else {
            return self.refuse(env, StatusCode::NotFound, Disposition::Failed);
        };
        let contact = self.caller.local.contact_uri();
        match Dialog::new_uas(&self.caller.invite, &self.caller.local_tag, &contact) {
            Ok(d) => self.caller.dialog = Some(d),
            Err(_) => return self.refuse(env, StatusCode::BadRequest, Disposition::Failed),
        }
        let endpoint = match env.allocate(None) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "no media port for caller");
                return self.refuse(env, StatusCode::ServiceUnavailable, Disposition::Failed);
            }
        };
        let target = MediaTarget::new(
            std::net::SocketAddr::new(offer.connection, offer.port),
            &negotiated,
        );
        env.set_remote(endpoint.id, &target);
        self.caller.media = Some(target);
        if negotiated.telephone_event_pt.is_none() {
            // No telephone-events from this caller: listen for key tones in its audio.
            env.detect_inband_dtmf(endpoint.id);
        }
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
        let endpoint_id = endpoint.id;
        self.caller.endpoint = Some(endpoint);
        let early = legs::response_with_sdp(
            &self.caller.invite,
            StatusCode::SessionProgress,
            &self.caller.local_tag,
            &contact,
            &self.caller.sdp,
        );
        self.respond_to_invite(early);
        let flows = env.flows();
        self.priority = did.priority_of(&self.record.caller, &flows);
        match did.target() {
            Some(DidTarget::Flow(name)) => {
                let Some(flow) = flows.flow(name) else {
                    // A live change removed the flow the DID names.
                    tracing::error!(call = %self.record.id, flow = name, "DID names a missing flow");
                    return self.refuse(env, StatusCode::ServiceUnavailable, Disposition::Failed);
                };
                let mut run = FlowRun::new(flow, &self.record.caller, &self.record.did);
                run.priority = self.priority;
                self.start_flow(env, run);
            }
            Some(DidTarget::Queue(queue)) => {
                env.play(endpoint_id, Sound::MusicOnHold, true);
                let now = env.now_ms();
                self.enqueue(env, queue.to_owned(), now);
            }
            None => self.refuse(env, StatusCode::ServiceUnavailable, Disposition::Failed),
        }
    }

    pub(super) fn enqueue(&mut self, env: &mut dyn CallEnv, queue: String, since_ms: u64) {
        if !env.queue_exists(&queue) {
            return self.refuse(env, StatusCode::ServiceUnavailable, Disposition::Failed);
        }
        self.record.queued_ms.get_or_insert(since_ms);
        self.record.queue = Some(queue.clone());
        self.record.priority = self.priority;
        self.entered_queue_ms = env.now_ms();
        self.phase = Phase::Queued;
        let priority = self.priority;
        self.emit(Effect::ToQueue {
            queue,
            note: QueueNote::Enqueue {
                priority,
                since_ms,
                preferred: self.preferred.clone(),
            },
        });
    }

    /// Records what became of an offer and tells its queue.
    pub(super) fn report(
        &mut self,
        env: &dyn CallEnv,
        queue: &str,
        agent_id: &str,
        offered_ms: u64,
        outcome: OfferOutcome,
    ) {
        self.record.offers.push(OfferRecord {
            agent: agent_id.to_owned(),
            queue: queue.to_owned(),
            offered_ms,
            ended_ms: env.now_ms(),
            outcome,
        });
        self.emit(Effect::ToQueue {
            queue: queue.to_owned(),
            note: QueueNote::OfferOutcome {
                agent_id: agent_id.to_owned(),
                outcome,
            },
        });
    }

    /// Reports the outcome of agent leg `leg`'s offer.
    pub(super) fn report_leg(&mut self, env: &dyn CallEnv, leg: &Leg, outcome: OfferOutcome) {
        if let Role::Agent {
            agent_id,
            queue,
            offered_ms,
            ..
        } = &leg.role
        {
            self.report(env, queue, agent_id, *offered_ms, outcome);
        }
    }

    /// Joins `queue` again, keeping the original wait, if still waiting in it: the queue moved
    /// to another node or restarted and no longer knows this caller.
    pub(super) fn requeue(&mut self, env: &mut dyn CallEnv, queue: String) {
        if self.phase == Phase::Queued && self.record.queue.as_ref() == Some(&queue) {
            tracing::info!(call = %self.record.id, %queue, "queue restarted; joining it again");
            let since = self.record.queued_ms.unwrap_or_else(|| env.now_ms());
            self.enqueue(env, queue, since);
        }
    }

    pub(super) fn offer(
        &mut self,
        env: &mut dyn CallEnv,
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
            return self.report(env, &queue, &agent_id, offered_ms, outcome);
        }
        let role = Role::Agent {
            agent_id: agent_id.clone(),
            queue: queue.clone(),
            attempt: self.attempts + 1,
            offered_ms,
        };
        let leg = match self.ring(env, role, &agent_id, contacts) {
            Ok(leg) => leg,
            Err(e) => {
                tracing::debug!(agent = %agent_id, error = ?e, "cannot offer the call");
                return self.report(env, &queue, &agent_id, offered_ms, OfferOutcome::Failed);
            }
        };
        self.emit(Effect::After {
            delay: std::time::Duration::from_secs(ring_timeout_secs),
            timer: Timer::RingTimeout {
                attempt: self.attempts,
            },
        });
        self.legs.push(leg);
        self.phase = Phase::Offering;
    }

    /// INVITEs `extension`'s registered contact from a new media endpoint on the caller's
    /// worker, with the caller's identity in From; responses come back as `Input::Response`.
    /// A binding in this node's registrar comes first (a phone registered over TCP is reached
    /// over its connection); otherwise the first of `contacts`, registered at another node.
    pub(super) fn ring(
        &mut self,
        env: &mut dyn CallEnv,
        role: Role,
        extension: &str,
        contacts: &[String],
    ) -> Result<Leg, RingError> {
        let (uri, source) = match env.binding(extension) {
            Some((uri, source)) => (uri, Some(source)),
            None => {
                let uri = contacts.first().ok_or(RingError::NotRegistered)?;
                let uri = message::parse_uri(uri).map_err(|_| RingError::Unreachable)?;
                (uri, None)
            }
        };
        let peer = legs::peer_for(&uri, source.as_ref()).ok_or(RingError::Unreachable)?;
        let near = self.caller.endpoint.as_ref().map(|e| e.id);
        let endpoint = env.allocate(near).map_err(|e| {
            tracing::warn!(error = %e, "no media port for an outgoing leg");
            RingError::NoMedia
        })?;
        self.attempts += 1;
        let local = env.local(peer.transport);
        let sip_call_id = format!("{}-{}@{}", self.record.id, self.attempts, local.addr.ip());
        let branch = transaction::new_branch();
        let local_tag = dialog::new_tag();
        let sdp_session = u64::from(endpoint.local.port());
        let offer = agent_sdp(&endpoint, sdp_session, 1);
        let invite = AgentInvite {
            local,
            target: &uri,
            agent_id: extension,
            caller_user: &self.record.caller,
            sip_call_id: &sip_call_id,
            from_tag: &local_tag,
            branch: &branch,
            sdp: offer.clone(),
            user_agent: &self.user_agent,
        }
        .build();
        self.emit(Effect::Send {
            request: invite.clone(),
            to: peer,
            owned: true,
        });
        Ok(Leg {
            role,
            state: LegState::Inviting,
            sip_call_id,
            invite,
            branch,
            txn: None,
            peer,
            local,
            local_tag,
            dialog: None,
            endpoint: Some(endpoint),
            media: None,
            sdp_session,
            sdp_version: 1,
            sdp: offer,
        })
    }

    /// Gives up on the ringing agent leg: CANCEL it and keep it until it ends.
    pub(super) fn withdraw_offer(&mut self, env: &mut dyn CallEnv, outcome: OfferOutcome) {
        let Some(mut leg) = self.take_agent() else {
            return;
        };
        self.emit(Effect::Cancel {
            invite_branch: leg.branch.clone(),
        });
        Self::release_endpoint(env, leg.endpoint.take());
        self.report_leg(env, &leg, outcome);
        leg.state = LegState::Cancelled;
        self.legs.push(leg);
        if self.phase == Phase::Offering {
            self.phase = Phase::Queued;
        }
    }

    pub(super) fn on_ring_timeout(&mut self, env: &mut dyn CallEnv, attempt: u32) {
        let ringing = self
            .agent()
            .is_some_and(|a| matches!(a.role, Role::Agent { attempt: n, .. } if n == attempt));
        if self.phase == Phase::Offering && ringing {
            self.withdraw_offer(env, OfferOutcome::NoAnswer);
        }
    }

    pub(super) fn on_client_timeout(&mut self, env: &mut dyn CallEnv, branch: &str) {
        if self.on_resume_failed(env, branch) {
            return;
        }
        if self.phase == Phase::Offering && self.agent().is_some_and(|a| a.branch == branch) {
            if let Some(mut leg) = self.take_agent() {
                Self::release_endpoint(env, leg.endpoint.take());
                self.report_leg(env, &leg, OfferOutcome::Failed);
            }
            self.phase = Phase::Queued;
        }
        if self.supervisor().is_some_and(|s| s.branch == branch) {
            self.end_monitor(env, false);
        }
        // The trunk never answered the INVITE of a transfer or of a callback's customer.
        if self.phase == Phase::Transferring
            && self
                .legs
                .iter()
                .any(|l| l.is_outside() && l.branch == branch)
        {
            self.transfer_ring_timeout(env);
        }
        if self.phase == Phase::Dialling && self.caller.branch == branch {
            let attempt = self.callback.as_ref().map_or(0, |c| c.attempt);
            self.customer_ring_timeout(env, attempt);
        }
        self.legs
            .retain(|l| !(l.state == LegState::Cancelled && l.branch == branch));
    }

    pub(super) fn on_response(&mut self, env: &mut dyn CallEnv, response: Response) {
        if self.on_resume_response(env, &response) {
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
        if self.on_customer_response(env, &response, code)
            || self.on_transfer_response(env, &response, code)
        {
            return;
        }
        if let Some(i) = self
            .legs
            .iter()
            .position(|l| l.state == LegState::Cancelled && l.sip_call_id == call_id)
        {
            let mut stray = self.legs.remove(i);
            if code < 300 {
                // Answered despite our CANCEL: acknowledge and hang up at once.
                if let Ok(dialog) = Dialog::new_uac(&stray.invite, &response) {
                    stray.dialog = Some(dialog);
                    self.send_ack(&stray);
                    self.send_bye(&mut stray, true);
                }
            }
            return;
        }
        if self.supervisor().is_some_and(|s| s.sip_call_id == call_id) {
            return self.on_supervisor_response(env, &response, code);
        }
        let is_current = self.agent().is_some_and(|a| a.sip_call_id == call_id);
        if !is_current || self.phase != Phase::Offering {
            return;
        }
        if code < 300 {
            self.connect(env, response);
        } else if let Some(mut leg) = self.take_agent() {
            Self::release_endpoint(env, leg.endpoint.take());
            let outcome = match code {
                408 => OfferOutcome::NoAnswer,
                480 | 486 | 600 | 603 => OfferOutcome::Rejected,
                _ => OfferOutcome::Failed,
            };
            self.report_leg(env, &leg, outcome);
            self.phase = Phase::Queued;
        }
    }

    fn connect(&mut self, env: &mut dyn CallEnv, response: Response) {
        let Some(mut leg) = self.take_agent() else {
            return;
        };
        if self.is_callback() {
            return self.callback_agent_answered(env, leg, &response);
        }
        // Answered while still being offered a callback: the offer is over.
        self.callback = None;
        let (ack, answered) = Self::answer_out(env, &mut leg, &response);
        let Some(ack) = ack else {
            tracing::warn!(error = ?answered.err(), "agent 2xx without a usable dialog");
            self.legs.push(leg);
            return self.withdraw_offer(env, OfferOutcome::Failed);
        };
        self.emit(ack);
        if let Err(e) = answered {
            // The agent's phone answered with SDP we cannot use: hang it up, try another.
            tracing::warn!(agent = ?leg.agent_id(), error = %e, "agent answer SDP unusable");
            self.send_bye(&mut leg, true);
            Self::release_endpoint(env, leg.endpoint.take());
            self.report_leg(env, &leg, OfferOutcome::Failed);
            self.phase = Phase::Queued;
            return;
        }
        let (Some(agent_ep), Some(caller_ep)) = (leg.endpoint, self.caller.endpoint) else {
            return;
        };
        if let Err(e) = env.bridge(caller_ep.id, agent_ep.id) {
            // Both legs are allocated on one worker; this is a bug if it happens.
            tracing::error!(error = %e, "cannot bridge call legs");
        }
        let ok = legs::response_with_sdp(
            &self.caller.invite,
            StatusCode::OK,
            &self.caller.local_tag,
            &self.caller.local.contact_uri(),
            &self.caller.sdp,
        );
        self.respond_to_invite(ok);
        self.caller.state = LegState::Up;
        metrics::histogram!("call_setup_seconds")
            .record(env.instant().duration_since(self.invited_at).as_secs_f64());
        let now = env.now_ms();
        self.record.answered_ms = Some(now);
        self.record.agent = leg.agent_id().map(str::to_owned);
        self.record.agent_call_id = Some(leg.sip_call_id.clone());
        self.note_routing(env, &leg, now);
        self.report_leg(env, &leg, OfferOutcome::Answered);
        let record = match &leg.role {
            Role::Agent { queue, .. } => env.queue_records(queue),
            _ => false,
        };
        self.legs.push(leg);
        self.phase = Phase::Connected;
        if record {
            self.start_recording(env, None);
        }
    }

    /// Puts on the record what routing meant for the agent who answered.
    pub(super) fn note_routing(&mut self, env: &dyn CallEnv, leg: &Leg, now_ms: u64) {
        if let Role::Agent {
            agent_id, queue, ..
        } = &leg.role
        {
            let waited = now_ms.saturating_sub(self.entered_queue_ms);
            let facts = env.routing_facts(queue, agent_id, waited);
            self.record.pool = facts.pool;
            self.record.skills = facts.skills;
        }
    }

    /// Records the connected call to the path the node gives (`<call id>.wav`, or
    /// `<call id>-<segment>.wav` for the part after a take-over); the record names the file.
    /// A recording that cannot start is logged and the call goes on.
    pub(super) fn start_recording(&mut self, env: &mut dyn CallEnv, segment: Option<usize>) {
        let (Some(caller), Some(agent)) =
            (self.caller.endpoint, self.agent().and_then(|a| a.endpoint))
        else {
            return;
        };
        let path = env.recording_path(&self.record.id, segment);
        match env.record(caller.id, agent.id, &path) {
            Ok(()) => {
                let path = path.display().to_string();
                match (segment, self.record.failover.as_mut()) {
                    (Some(_), Some(failover)) => failover.recording_segments.push(path),
                    _ => self.record.recording = Some(path),
                }
            }
            Err(e) => {
                metrics::counter!("recording_failures_total").increment(1);
                tracing::error!(call = %self.record.id, error = %e, "call not recorded");
            }
        }
    }

    pub(super) fn overflow(&mut self, env: &mut dyn CallEnv, queue: String, action: Overflow) {
        if self.phase != Phase::Queued {
            return;
        }
        tracing::info!(call = %self.record.id, %queue, ?action, "caller overflowed");
        if self.is_callback() {
            // A callback keeps its place until it is carried out or given up.
            let since = self.record.queued_ms.unwrap_or_else(|| env.now_ms());
            return self.enqueue(env, queue, since);
        }
        // Overflowed while still being offered a callback: the offer is over.
        self.callback = None;
        match action {
            Overflow::Queue { queue: target } => {
                let since = self.record.queued_ms.unwrap_or_else(|| env.now_ms());
                self.enqueue(env, target, since);
            }
            Overflow::Flow { flow } => {
                let flows = env.flows();
                let Some(flow) = flows.flow(&flow) else {
                    tracing::error!(call = %self.record.id, %flow, "overflow flow is missing");
                    return self.refuse(
                        env,
                        StatusCode::ServiceUnavailable,
                        Disposition::Overflowed,
                    );
                };
                let mut run = FlowRun::new(flow, &self.record.caller, &self.record.did);
                run.priority = self.priority;
                if let Some(language) = self.flow.as_ref().map(|r| r.language.clone()) {
                    run.language = language;
                }
                self.start_flow(env, run);
            }
            Overflow::Goodbye => {
                self.phase = Phase::Goodbye;
                if let Some(ep) = self.caller.endpoint {
                    env.play(ep.id, Sound::Goodbye, false);
                }
                // A second of slack covers the worker's pacing.
                let delay = env.goodbye_duration() + std::time::Duration::from_secs(1);
                self.emit(Effect::After {
                    delay,
                    timer: Timer::PromptDeadline,
                });
            }
        }
    }
}

/// Our SDP towards an agent's or supervisor's phone, as version `version` of `session_id`.
pub(super) fn agent_sdp(
    endpoint: &switchyard_media::Endpoint,
    session_id: u64,
    version: u64,
) -> String {
    sdp::build(&sdp::LocalMedia {
        session_id,
        version,
        addr: endpoint.local.ip(),
        port: endpoint.local.port(),
        codecs: &AGENT_OFFER_CODECS,
        telephone_event_pt: Some(super::TELEPHONE_EVENT_PT),
        direction: sdp::Direction::SendRecv,
    })
}

/// Whether the request's Accept (if any) allows an SDP body in our responses.
fn accepts_sdp(request: &rsip::Request) -> bool {
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

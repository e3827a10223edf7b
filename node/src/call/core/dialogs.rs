//! In-dialog requests, hang-ups and the end of the call.

use switchyard_flows::FlowEvent;
use switchyard_media::MediaEvent;
use switchyard_sip::dialog::Dialog;
use switchyard_sip::headers::MessageExt;
use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Method, Request, StatusCode};
use switchyard_sip::sdp;
use switchyard_sip::transaction::{self, Peer, TransactionId};

use super::super::legs;
use super::super::replica::{Holder, MediaTarget};
use super::Sound;
use super::hold::offer_holds;
use super::setup::SUPPORTED_CODECS;
use super::{CallCore, CallEnv, Effect, Leg, LegState, MAX_RECORDED_DIGITS, Phase, QueueNote};
use super::{STRAY_LEG_GRACE, Timer};
use crate::acd::OfferOutcome;
use crate::cdr::{Disposition, HangupBy};

/// Which leg of the call an in-dialog request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Caller,
    /// `legs[i]`.
    Leg(usize),
}

impl CallCore {
    pub(super) fn on_request(
        &mut self,
        env: &mut dyn CallEnv,
        txn: TransactionId,
        request: Request,
    ) {
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
        let side = if call_id == self.record.caller_call_id {
            Some(Side::Caller)
        } else {
            self.legs
                .iter()
                .position(|l| l.state != LegState::Cancelled && l.sip_call_id == call_id)
                .map(Side::Leg)
        };
        let Some(side) = side else {
            // A cancelled leg hanging up, or a leg this call has already let go.
            let ok = message::response(&request, StatusCode::OK, None);
            return self.respond(txn, ok);
        };
        let leg = match side {
            Side::Caller => &mut self.caller,
            Side::Leg(i) => &mut self.legs[i],
        };
        let Some(dialog) = leg.dialog.as_mut() else {
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
                    Side::Caller => self.on_caller_gone(env),
                    Side::Leg(i) if self.legs[i].is_live_agent() => self.on_agent_bye(env),
                    Side::Leg(i) if self.legs[i].is_outside() => self.outside_hung_up(env),
                    // The supervisor leaving ends the monitoring only.
                    Side::Leg(_) => self.end_monitor(env, false),
                }
            }
            Method::Invite => self.on_reinvite(env, txn, &request, side),
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

    /// A re-INVITE (hold, codec or address change): follow the new address, keep our own,
    /// answer the offer's direction (RFC 3264 §6.1), and hold or resume the other party.
    fn on_reinvite(
        &mut self,
        env: &mut dyn CallEnv,
        txn: TransactionId,
        request: &Request,
        side: Side,
    ) {
        let holder = match side {
            Side::Caller => Some(Holder::Caller),
            Side::Leg(i) if self.legs[i].is_live_agent() => Some(Holder::Agent),
            Side::Leg(_) => None,
        };
        let leg = match side {
            Side::Caller => &mut self.caller,
            Side::Leg(i) => &mut self.legs[i],
        };
        let mut holds = None;
        if !request.body.is_empty() {
            let parsed = sdp::parse(&request.body)
                .and_then(|o| sdp::negotiate(&o, &SUPPORTED_CODECS).map(|n| (o, n)));
            let Ok((offer, negotiated)) = parsed else {
                let response = message::response(request, StatusCode::NotAcceptableHere, None);
                return self.respond(txn, response);
            };
            let target = MediaTarget::new(
                std::net::SocketAddr::new(offer.connection, offer.port),
                &negotiated,
            );
            if let Some(ep) = leg.endpoint {
                if !offer.connection.is_unspecified() {
                    env.set_remote(ep.id, &target);
                    leg.media = Some(target);
                }
                leg.answer(&offer, &negotiated, ep);
            }
            holds = Some(offer_holds(&offer));
        }
        let tag = leg
            .dialog
            .as_ref()
            .map(|d| d.local_tag.clone())
            .unwrap_or_default();
        let ok = legs::response_with_sdp(
            request,
            StatusCode::OK,
            &tag,
            &leg.local.contact_uri(),
            &leg.sdp,
        );
        self.respond(txn, ok);
        if let (Some(holder), Some(holds)) = (holder, holds) {
            self.phone_hold(env, holder, holds);
        }
    }

    pub(super) fn on_caller_cancel(&mut self, env: &mut dyn CallEnv) {
        if matches!(
            self.phase,
            Phase::Routing
                | Phase::Ivr
                | Phase::Queued
                | Phase::Offering
                | Phase::Goodbye
                | Phase::Transferring
        ) {
            self.respond_to_caller(StatusCode::RequestTerminated);
            self.on_caller_gone(env);
        }
    }

    /// The caller hung up (BYE) or cancelled.
    fn on_caller_gone(&mut self, env: &mut dyn CallEnv) {
        match self.phase {
            Phase::Connected => {
                self.hang_up_answerer();
                let disposition = if self.record.transferred_to.is_some() {
                    Disposition::Transferred
                } else {
                    Disposition::Answered
                };
                self.finish(env, HangupBy::Caller, disposition);
            }
            Phase::Transferring => {
                self.cancel_outside(env);
                self.finish(env, HangupBy::Caller, Disposition::Abandoned);
            }
            Phase::Offering => {
                self.withdraw_offer(env, OfferOutcome::CallerAbandoned);
                self.leave_queue();
                self.finish(env, HangupBy::Caller, Disposition::Abandoned);
            }
            // In the survey after the agent hung up: the conversation itself was answered.
            Phase::Ivr if self.record.answered_ms.is_some() => {
                self.finish(env, HangupBy::Agent, Disposition::Answered)
            }
            Phase::Ivr => self.finish(env, HangupBy::Caller, Disposition::Abandoned),
            Phase::Queued | Phase::Routing => {
                self.leave_queue();
                self.finish(env, HangupBy::Caller, Disposition::Abandoned);
            }
            Phase::Goodbye => self.finish(env, HangupBy::Caller, Disposition::Overflowed),
            // The callback's customer hung up during the greeting.
            Phase::Dialling if self.caller.state == LegState::Up => {
                self.record.answered_ms.get_or_insert(env.now_ms());
                self.hang_up_answerer();
                self.finish(env, HangupBy::Caller, Disposition::Answered);
            }
            Phase::HandedOver | Phase::Done | Phase::Dialling => {}
        }
    }

    fn on_agent_bye(&mut self, env: &mut dyn CallEnv) {
        if self.phase == Phase::Dialling && self.caller.state == LegState::Up {
            // The agent hung up while the customer heard the greeting: the call is over.
            self.record.answered_ms.get_or_insert(env.now_ms());
            self.hang_up_caller();
            return self.finish(env, HangupBy::Agent, Disposition::Answered);
        }
        if self.phase == Phase::Dialling {
            // The agent gave up on a callback still ringing the customer.
            self.emit(Effect::Cancel {
                invite_branch: self.caller.branch.clone(),
            });
            if let Some(agent) = self.agent_mut() {
                agent.dialog = None;
            }
            return self.callback_attempt_failed(env);
        }
        if self.phase != Phase::Connected {
            return;
        }
        let survey = self
            .record
            .queue
            .as_deref()
            .and_then(|queue| env.survey_flow(queue));
        match survey {
            Some(flow) => self.start_survey(env, &flow),
            None => {
                self.hang_up_caller();
                self.finish(env, HangupBy::Agent, Disposition::Answered);
            }
        }
    }

    fn leave_queue(&mut self) {
        if let Some(queue) = self.record.queue.clone() {
            self.emit(Effect::ToQueue {
                queue,
                note: QueueNote::Abandon,
            });
        }
    }

    /// BYE to whoever answered the caller: the agent, or the number a flow transferred to.
    pub(super) fn hang_up_answerer(&mut self) {
        let answerer = self
            .legs
            .iter_mut()
            .find(|l| l.is_live_agent() || l.is_outside());
        if let Some(bye) = answerer.and_then(|leg| bye(leg, true)) {
            self.emit(bye);
        }
    }

    pub(super) fn hang_up_caller(&mut self) {
        // A caller leg we placed (a callback's customer) is reached where its INVITE went.
        let via_invite_peer = !self.caller.branch.is_empty();
        if let Some(bye) = bye(&mut self.caller, via_invite_peer) {
            self.emit(bye);
        }
    }

    /// ACKs the 2xx that established `leg`'s dialog.
    pub(super) fn send_ack(&mut self, leg: &Leg) {
        if let Some(ack) = ack_of(leg, 1) {
            self.emit(ack);
        }
    }

    /// Sends a BYE on a leg taken out of the call.
    pub(super) fn send_bye(&mut self, leg: &mut Leg, via_invite_peer: bool) {
        if let Some(bye) = bye(leg, via_invite_peer) {
            self.emit(bye);
        }
    }

    pub(super) fn on_media(&mut self, env: &mut dyn CallEnv, event: MediaEvent) {
        let supervisor_ep = self.supervisor().and_then(|s| s.endpoint).map(|e| e.id);
        let caller_ep = self.caller.endpoint.map(|e| e.id);
        match event {
            MediaEvent::PlaybackFinished { .. } if self.phase == Phase::Goodbye => {
                self.refuse(
                    env,
                    StatusCode::TemporarilyUnavailable,
                    Disposition::Overflowed,
                );
            }
            MediaEvent::RtpTimeout { endpoint }
                if self.phase == Phase::Connected && supervisor_ep == Some(endpoint) =>
            {
                tracing::info!(call = %self.record.id, "supervisor RTP timeout; monitoring ends");
                self.end_monitor(env, true);
            }
            MediaEvent::RtpTimeout { .. } if self.phase == Phase::Connected && env.may_act() => {
                tracing::info!(call = %self.record.id, "RTP timeout; hanging up");
                self.hang_up_answerer();
                self.hang_up_caller();
                self.finish(env, HangupBy::System, Disposition::Answered);
            }
            MediaEvent::Dtmf { endpoint, digit } if caller_ep == Some(endpoint) => {
                tracing::debug!(call = %self.record.id, %digit, "caller pressed a key");
                metrics::counter!("dtmf_digits_total").increment(1);
                if self.record.dtmf.len() < MAX_RECORDED_DIGITS {
                    self.record.dtmf.push(digit);
                }
                self.flow_event(env, FlowEvent::Digit(digit));
                self.callback_digit(env, digit);
            }
            MediaEvent::PlaybackFinished { endpoint }
                if caller_ep == Some(endpoint) && self.callback_prompt_finished(env) => {}
            // An announcement ended: music again.
            MediaEvent::PlaybackFinished { endpoint }
                if caller_ep == Some(endpoint)
                    && matches!(self.phase, Phase::Queued | Phase::Offering) =>
            {
                env.play(endpoint, Sound::MusicOnHold, true);
            }
            MediaEvent::PlaybackFinished { endpoint } if caller_ep == Some(endpoint) => {
                if let Some(token) = self.flow.as_ref().map(|run| run.token) {
                    self.flow_event(env, FlowEvent::PromptFinished(token));
                }
            }
            MediaEvent::RecordingStopped { path, duration, .. } => {
                tracing::debug!(call = %self.record.id, path = %path.display(), ?duration, "recording closed");
            }
            _ => {}
        }
    }

    /// Frees the call's media endpoints and SIP routes; cancelled legs stay until they end.
    pub(super) fn release_all(&mut self, env: &mut dyn CallEnv) {
        if let Some(leg) = self.take_supervisor()
            && let Some(ep) = leg.endpoint
        {
            env.stop_monitor(ep.id);
            env.release(ep.id);
            self.emit(Effect::Release {
                sip_call_id: leg.sip_call_id,
            });
        }
        Self::release_endpoint(env, self.caller.endpoint.take());
        let sip_call_id = self.record.caller_call_id.clone();
        self.emit(Effect::Release { sip_call_id });
        while let Some(mut leg) = self.take_leg(|l| l.is_live_agent() || l.is_outside()) {
            Self::release_endpoint(env, leg.endpoint.take());
            self.emit(Effect::Release {
                sip_call_id: leg.sip_call_id,
            });
        }
    }

    /// Ends the call: frees media, writes the record, frees the agent.
    pub(super) fn finish(
        &mut self,
        env: &mut dyn CallEnv,
        hangup_by: HangupBy,
        disposition: Disposition,
    ) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        // Answers to a take-over's re-INVITEs that come after the end change nothing.
        self.resuming = None;
        let now = env.now_ms();
        if let Some(hold) = self.hold.take() {
            self.record.hold_ms += now.saturating_sub(hold.since_ms);
        }
        self.end_monitor(env, true);
        if self.record.answered_ms.is_some() {
            self.record.caller_rtp = self.caller.endpoint.and_then(|e| env.rtp_stats(e.id));
            self.record.agent_rtp = self
                .agent()
                .and_then(|a| a.endpoint)
                .and_then(|e| env.rtp_stats(e.id));
        }
        let agent_id = self.agent().and_then(Leg::agent_id).map(str::to_owned);
        self.release_all(env);
        if disposition == Disposition::Answered
            && let Some(agent_id) = agent_id
        {
            self.emit(Effect::AgentFree { agent_id });
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
        self.emit(Effect::WriteRecord(Box::new(self.record.clone())));
        if !self.legs.is_empty() {
            self.emit(Effect::After {
                delay: STRAY_LEG_GRACE,
                timer: Timer::Reap,
            });
        }
    }
}

/// The ACK for the 2xx to our INVITE numbered `cseq` in `leg`'s dialog.
pub(super) fn ack_of(leg: &Leg, cseq: u32) -> Option<Effect> {
    let dialog = leg.dialog.as_ref()?;
    let ack = dialog
        .create_ack(cseq, leg.local.via(&transaction::new_branch()), Vec::new())
        .map_err(|e| tracing::warn!(error = %e, "cannot build ACK"))
        .ok()?;
    let to = target_peer(dialog, &leg.peer);
    Some(Effect::Ack { ack, to })
}

/// A BYE in `leg`'s dialog, if established. With `via_invite_peer` it goes where the leg's
/// INVITE went unless the remote target says otherwise; without, the remote target must
/// resolve on its own.
fn bye(leg: &mut Leg, via_invite_peer: bool) -> Option<Effect> {
    let dialog = leg.dialog.as_mut()?;
    let request = dialog
        .create_request(
            Method::Bye,
            leg.local.via(&transaction::new_branch()),
            Vec::new(),
        )
        .map_err(|e| tracing::debug!(error = %e, "no BYE for this dialog"))
        .ok()?;
    let to = if via_invite_peer {
        target_peer(dialog, &leg.peer)
    } else {
        legs::peer_for(&remote_target(dialog), None)?
    };
    Some(Effect::Send {
        request,
        to,
        owned: false,
    })
}

/// Where in-dialog requests of `dialog` go: the remote target, or the INVITE's peer when the
/// target cannot be resolved (or the phone is reached over a connection we keep).
pub(super) fn target_peer(dialog: &Dialog, invite_peer: &Peer) -> Peer {
    legs::peer_for(&remote_target(dialog), Some(invite_peer)).unwrap_or(*invite_peer)
}

fn remote_target(dialog: &Dialog) -> rsip::Uri {
    message::parse_uri(&dialog.remote_target).unwrap_or_default()
}

fn disposition_label(d: Disposition) -> &'static str {
    match d {
        Disposition::Answered => "answered",
        Disposition::Abandoned => "abandoned",
        Disposition::Overflowed => "overflowed",
        Disposition::Failed => "failed",
        Disposition::Closed => "closed",
        Disposition::HungUp => "hung-up",
        Disposition::CallbackRequested => "callback-requested",
        Disposition::Transferred => "transferred",
    }
}

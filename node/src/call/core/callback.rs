//! Callbacks that keep the caller's place (FreeSWITCH's abandoned-resume, TaskRouter's virtual
//! start time, here across nodes).
//!
//! ```text
//! queued, key (queue's callback.key) -> "we will call you back on <number>: 1 yes, 2 no"
//!   1 -> "booked" -> 480 to the caller, record `callback-requested`; the call stays in the
//!        queue with its place (priority, first-queued time), as a callback, and is copied to
//!        its standbys like any waiting call
//!   2 or no key -> music again
//! its turn: the queue offers an agent as usual -> agent answers -> the customer is dialled
//!   through the trunk (the agent hears music) -> answers: greeting, then bridged: Connected
//!   no answer / refusal -> agent freed; after retry_after_secs the callback queues again with
//!   its first-queued time; after `attempts` failures its record says `failed`
//! ```
//!
//! The call keeps its identity (its queue entry and copies) and writes two records: the
//! caller's (`callback-requested`) and the callback's, whose `callback_of` names the first.

use std::time::Duration;

use switchyard_sip::dialog::Dialog;
use switchyard_sip::headers::MessageExt;
use switchyard_sip::rsip::{Response, StatusCode};

use super::dialogs::ack_of;
use super::{CallCore, CallEnv, Effect, Leg, LegState, Phase, Role, Sound, Timer};
use crate::acd::OfferOutcome;
use crate::cdr::{Disposition, HangupBy};

/// How long the caller has to confirm its number.
const CONFIRM_WITHIN: Duration = Duration::from_secs(20);

/// A callback asked for, or being carried out; copied to the standbys with the call.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Callback {
    pub stage: Stage,
    /// Where to call: the caller's number.
    pub number: String,
    pub trunk: String,
    pub attempts: u32,
    pub retry_after_secs: u64,
    pub ring_secs: u64,
    /// Attempts made so far.
    pub attempt: u32,
    /// The record id of the call that asked for it.
    pub of: String,
    /// Language of the prompts.
    pub language: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Stage {
    /// The number is read back; waiting for 1 (yes) or 2 (no).
    Confirming,
    /// Yes: the confirmation plays, then the caller is let go.
    Confirmed,
    /// The caller is gone; the callback waits for its turn (or its next attempt).
    Waiting,
}

impl CallCore {
    /// Whether the call is a booked callback (no caller on the line).
    pub(super) fn is_callback(&self) -> bool {
        self.callback
            .as_ref()
            .is_some_and(|c| c.stage == Stage::Waiting)
    }

    /// A key from a waiting caller: the queue's callback key starts the offer, 1 or 2 answer it.
    pub(super) fn callback_digit(&mut self, env: &mut dyn CallEnv, digit: char) {
        let Some(ep) = self.caller.endpoint.map(|e| e.id) else {
            return;
        };
        match self.callback.as_ref().map(|c| c.stage) {
            None if self.phase == Phase::Queued => {
                let Some(queue) = self.record.queue.clone() else {
                    return;
                };
                let Some(policy) = env.callback_policy(&queue).filter(|p| p.key == digit) else {
                    return;
                };
                let language = self
                    .flow
                    .as_ref()
                    .map_or_else(|| "en".to_owned(), |run| run.language.clone());
                let number = self.record.caller.clone();
                let mut prompts = vec![format!("{language}/callback-confirm-before")];
                prompts.extend(switchyard_flows::read_number(&language, &number));
                prompts.push(format!("{language}/callback-confirm-after"));
                if let Err(e) = env.play_prompts(ep, &prompts, true) {
                    tracing::warn!(call = %self.record.id, error = %e, "callback offer not played");
                    return;
                }
                self.callback = Some(Callback {
                    stage: Stage::Confirming,
                    number,
                    trunk: policy.trunk,
                    attempts: policy.attempts,
                    retry_after_secs: policy.retry_after_secs,
                    ring_secs: policy.ring_secs,
                    attempt: 0,
                    of: self.record.id.clone(),
                    language,
                });
                self.emit(Effect::After {
                    delay: CONFIRM_WITHIN,
                    timer: Timer::CallbackConfirm,
                });
            }
            Some(Stage::Confirming) if digit == '1' && self.phase == Phase::Queued => {
                let Some(callback) = self.callback.as_mut() else {
                    return;
                };
                callback.stage = Stage::Confirmed;
                let prompt = format!("{}/callback-confirmed", callback.language);
                if env.play_prompts(ep, &[prompt], false).is_err() {
                    self.callback_booked(env);
                }
            }
            Some(Stage::Confirming) if digit == '2' && self.phase == Phase::Queued => {
                self.callback_not_confirmed(env)
            }
            _ => {}
        }
    }

    /// No (or no answer): the caller keeps waiting with music.
    pub(super) fn callback_not_confirmed(&mut self, env: &mut dyn CallEnv) {
        if self.phase == Phase::Queued
            && self
                .callback
                .as_ref()
                .is_some_and(|c| c.stage == Stage::Confirming)
        {
            self.callback = None;
            if let Some(ep) = self.caller.endpoint {
                env.play(ep.id, Sound::MusicOnHold, true);
            }
        }
    }

    /// A prompt of the callback dialogue ended; true when the callback took it.
    pub(super) fn callback_prompt_finished(&mut self, env: &mut dyn CallEnv) -> bool {
        match self.callback.as_ref().map(|c| c.stage) {
            _ if !matches!(self.phase, Phase::Queued | Phase::Dialling) => false,
            Some(Stage::Confirming) => true,
            Some(Stage::Confirmed) => {
                self.callback_booked(env);
                true
            }
            _ if self.phase == Phase::Dialling => {
                self.connect_customer(env);
                true
            }
            _ => false,
        }
    }

    /// The caller confirmed: let it go, write its record, and wait as a callback.
    fn callback_booked(&mut self, env: &mut dyn CallEnv) {
        let Some(callback) = self.callback.as_mut() else {
            return;
        };
        callback.stage = Stage::Waiting;
        self.respond_to_caller(StatusCode::TemporarilyUnavailable);
        Self::release_endpoint(env, self.caller.endpoint.take());
        let sip_call_id = self.record.caller_call_id.clone();
        self.emit(Effect::Release { sip_call_id });
        let now = env.now_ms();
        let mut asked = self.record.clone();
        asked.ended_ms = now;
        asked.disposition = Disposition::CallbackRequested;
        asked.hangup_by = HangupBy::System;
        asked.wait_ms = now.saturating_sub(asked.queued_ms.unwrap_or(asked.arrived_ms));
        metrics::counter!("calls_ended_total", "disposition" => "callback-requested").increment(1);
        self.emit(Effect::WriteRecord(Box::new(asked)));
        // The callback's own record: the same caller and queue, waiting since the first entry.
        let r = &mut self.record;
        r.callback_of = Some(r.id.clone());
        r.id = format!("{:016x}", rand::random::<u64>());
        r.arrived_ms = now;
        r.offers.clear();
        r.dtmf.clear();
        r.caller_rtp = None;
        tracing::info!(call = %self.id, number = %self.record.caller, "callback booked");
    }

    /// The queue offered an agent, who answered: dial the customer while the agent hears music.
    pub(super) fn callback_agent_answered(
        &mut self,
        env: &mut dyn CallEnv,
        mut agent: Leg,
        response: &Response,
    ) {
        let Some(callback) = self.callback.clone() else {
            return;
        };
        let (ack, answered) = Self::answer_out(env, &mut agent, response);
        let Some(ack) = ack else {
            tracing::warn!(error = ?answered.err(), "agent 2xx without a usable dialog");
            self.legs.push(agent);
            return self.withdraw_offer(env, OfferOutcome::Failed);
        };
        self.emit(ack);
        match (answered, agent.endpoint) {
            // The agent hears music while the customer is dialled.
            (Ok(()), Some(ep)) => env.play(ep.id, Sound::MusicOnHold, true),
            (Err(e), _) => tracing::warn!(error = %e, "agent answer SDP unusable; no music"),
            (Ok(()), None) => {}
        }
        self.note_routing(env, &agent, env.now_ms());
        self.report_leg(env, &agent, OfferOutcome::Answered);
        self.record.agent = agent.agent_id().map(str::to_owned);
        self.record.agent_call_id = Some(agent.sip_call_id.clone());
        let near = agent.endpoint.map(|e| e.id);
        self.legs.push(agent);
        let Some(trunk) = env.trunk(Some(&callback.trunk)) else {
            tracing::error!(call = %self.id, trunk = %callback.trunk, "callback trunk is gone");
            return self.callback_attempt_failed(env);
        };
        let calling = trunk
            .caller_id
            .clone()
            .unwrap_or_else(|| self.record.did.clone());
        // Counted before dialling, so that a number that can never be dialled is given up.
        let attempt = callback.attempt + 1;
        if let Some(c) = self.callback.as_mut() {
            c.attempt = attempt;
        }
        let role = Role::Caller;
        let Some(leg) = self.dial_out(env, role, &trunk, &callback.number, &calling, near) else {
            return self.callback_attempt_failed(env);
        };
        self.record.caller_call_id = leg.sip_call_id.clone();
        self.caller = leg;
        self.phase = Phase::Dialling;
        self.emit(Effect::After {
            delay: Duration::from_secs(callback.ring_secs),
            timer: Timer::CallbackRing { attempt },
        });
    }

    /// A final response from the customer's phone; false if `response` is not for it.
    pub(super) fn on_customer_response(
        &mut self,
        env: &mut dyn CallEnv,
        response: &Response,
        code: u16,
    ) -> bool {
        let ours = self.callback.is_some()
            && response.call_id() == Some(self.caller.sip_call_id.as_str())
            && self.caller.txn.is_none();
        if !ours {
            return false;
        }
        if self.phase != Phase::Dialling || self.caller.state != LegState::Inviting {
            // Answered after we gave up (the CANCEL crossed the 200): hang it up.
            if code < 300
                && self.caller.dialog.is_none()
                && let Ok(d) = Dialog::new_uac(&self.caller.invite, response)
            {
                self.caller.dialog = Some(d);
                if let Some(ack) = ack_of(&self.caller, 1) {
                    self.emit(ack);
                }
                self.hang_up_caller();
            }
            return true;
        }
        if code >= 300 {
            tracing::info!(call = %self.id, code, "callback not answered");
            self.callback_attempt_failed(env);
            return true;
        }
        let (ack, answered) = Self::answer_out(env, &mut self.caller, response);
        if let Some(ack) = ack {
            self.emit(ack);
        }
        if let Err(e) = answered {
            tracing::warn!(error = %e, "customer answer unusable");
            self.hang_up_caller();
            self.callback_attempt_failed(env);
            return true;
        }
        let Some(ep) = self.caller.endpoint.map(|e| e.id) else {
            return true;
        };
        let language = self
            .callback
            .as_ref()
            .map_or("en", |c| c.language.as_str())
            .to_owned();
        if env
            .play_prompts(ep, &[format!("{language}/callback-greeting")], false)
            .is_err()
        {
            self.connect_customer(env);
        }
        true
    }

    /// The greeting played: bridge the customer and the agent.
    fn connect_customer(&mut self, env: &mut dyn CallEnv) {
        if self.caller.state != LegState::Up {
            return;
        }
        let (Some(customer), Some(agent)) =
            (self.caller.endpoint, self.agent().and_then(|a| a.endpoint))
        else {
            return;
        };
        if let Err(e) = env.bridge(customer.id, agent.id) {
            tracing::error!(error = %e, "cannot bridge a callback");
        }
        self.record.answered_ms = Some(env.now_ms());
        self.phase = Phase::Connected;
        let records = self
            .record
            .queue
            .as_deref()
            .is_some_and(|q| env.queue_records(q));
        if records {
            self.start_recording(env, None);
        }
    }

    pub(super) fn customer_ring_timeout(&mut self, env: &mut dyn CallEnv, attempt: u32) {
        let current = self.callback.as_ref().is_some_and(|c| c.attempt == attempt);
        if current && self.phase == Phase::Dialling && self.caller.state == LegState::Inviting {
            self.emit(Effect::Cancel {
                invite_branch: self.caller.branch.clone(),
            });
            self.callback_attempt_failed(env);
        }
    }

    /// Nobody answered (or the dial failed): free the agent, then queue again later, or give up.
    pub(super) fn callback_attempt_failed(&mut self, env: &mut dyn CallEnv) {
        if let Some(mut agent) = self.take_agent() {
            if agent.dialog.is_some() {
                self.send_bye(&mut agent, true);
            }
            Self::release_endpoint(env, agent.endpoint.take());
            self.emit(Effect::Release {
                sip_call_id: agent.sip_call_id.clone(),
            });
            if let Some(agent_id) = agent.agent_id() {
                let agent_id = agent_id.to_owned();
                self.emit(Effect::AgentFree { agent_id });
            }
        }
        self.caller.state = LegState::Cancelled;
        Self::release_endpoint(env, self.caller.endpoint.take());
        self.record.agent = None;
        self.record.agent_call_id = None;
        let Some(callback) = self.callback.as_ref() else {
            return;
        };
        if callback.attempt >= callback.attempts {
            tracing::info!(call = %self.id, attempts = callback.attempt, "callback given up");
            return self.finish(env, HangupBy::System, Disposition::Failed);
        }
        let delay = Duration::from_secs(callback.retry_after_secs);
        self.phase = Phase::Queued;
        self.emit(Effect::After {
            delay,
            timer: Timer::CallbackRetry,
        });
    }

    /// The pause after a failed attempt is over: the callback queues again, in its first place.
    pub(super) fn callback_retry(&mut self, env: &mut dyn CallEnv) {
        if self.phase == Phase::Queued
            && self.is_callback()
            && let Some(queue) = self.record.queue.clone()
        {
            let since = self.record.queued_ms.unwrap_or_else(|| env.now_ms());
            self.enqueue(env, queue, since);
        }
    }
}

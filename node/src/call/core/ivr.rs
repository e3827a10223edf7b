//! A caller in an IVR flow: the core feeds the call's [`FlowRun`] and carries out its commands.
//!
//! ```text
//! DID with a flow -> 183 with our media -> FlowRun Start
//!   Play        prompts on the caller's endpoint (interruptible when the step barges in)
//!   key press   RFC 4733 or in-band, from the caller's endpoint -> Digit
//!   prompt end  PlaybackFinished -> PromptFinished(token);  timer -> Timer(token)
//!   EnterQueue  music, queue with the flow's priority;  Hangup -> 480 with the disposition
//! ```
//!
//! The run is part of the replica: a standby resumes the caller at the same step, its prompt
//! played again from the start (`FlowRun::resume`).
//!
//! A survey is a flow too: when the agent hangs up first and the queue names a survey flow,
//! the agent is freed at once and the caller, still in its answered dialog, is run through the
//! flow; its `survey` variable (a key 1-5) goes on the record, and the flow's end is a BYE.
//! A survey is not copied to standbys (they forget the call when it starts): losing the node
//! then loses the survey and its record, never a conversation.

use std::time::Duration;

use switchyard_flows::{FlowCommand, FlowEnv, FlowEvent, FlowRun, SURVEY_VAR};
use switchyard_routing::PreferredAgent;
use switchyard_sip::rsip::StatusCode;

use super::{CallCore, CallEnv, Effect, Phase, Sound, Timer};
use crate::cdr::{Disposition, HangupBy};

/// The queue figures a flow may branch on, read through the call's environment.
struct QueueView<'a>(&'a dyn CallEnv);

impl FlowEnv for QueueView<'_> {
    fn agents_logged_in(&self, queue: &str) -> u32 {
        self.0.agents_logged_in(queue)
    }

    fn estimated_wait_secs(&self, queue: &str) -> u64 {
        self.0.estimated_wait_secs(queue)
    }
}

impl CallCore {
    /// Starts `run` for a caller just given early media.
    pub(super) fn start_flow(&mut self, env: &mut dyn CallEnv, run: FlowRun) {
        self.phase = Phase::Ivr;
        self.record.flow = Some(run.flow.clone());
        self.flow = Some(run);
        self.step_flow(env, Some(FlowEvent::Start));
    }

    /// The agent hung up first: free the agent, and put the caller into `flow`.
    pub(super) fn start_survey(&mut self, env: &mut dyn CallEnv, flow: &str) {
        let flows = env.flows();
        let Some(flow) = flows.flow(flow) else {
            tracing::warn!(call = %self.record.id, flow, "survey flow no longer exists");
            self.hang_up_caller();
            return self.finish(env, HangupBy::Agent, Disposition::Answered);
        };
        if let Some(mut agent) = self.take_agent() {
            self.record.agent_rtp = agent.endpoint.and_then(|e| env.rtp_stats(e.id));
            Self::release_endpoint(env, agent.endpoint.take());
            self.emit(Effect::Release {
                sip_call_id: agent.sip_call_id.clone(),
            });
            if let Some(agent_id) = agent.agent_id() {
                let agent_id = agent_id.to_owned();
                self.emit(Effect::AgentFree { agent_id });
            }
        }
        self.forget_replica();
        let mut run = FlowRun::new(flow, &self.record.caller, &self.record.did);
        run.priority = self.priority;
        self.phase = Phase::Ivr;
        self.flow = Some(run);
        self.step_flow(env, Some(FlowEvent::Start));
    }

    /// Ends a flow's call: a caller still in early media is refused, one in a survey (answered)
    /// gets a BYE.
    fn end_flow(&mut self, env: &mut dyn CallEnv, code: StatusCode, disposition: Disposition) {
        if self.record.answered_ms.is_some() {
            let score = self.flow.as_ref().and_then(|run| run.vars.get(SURVEY_VAR));
            self.record.survey_score = score.and_then(|s| s.parse().ok());
            self.hang_up_caller();
            self.finish(env, HangupBy::Agent, Disposition::Answered);
        } else {
            self.refuse(env, code, disposition);
        }
    }

    /// Plays the queue's position and wait announcement to a caller waiting in `queue`; the
    /// music comes back when it ends (see `on_media`).
    pub(super) fn announce(
        &mut self,
        env: &mut dyn CallEnv,
        queue: &str,
        position: u32,
        wait_secs: Option<u64>,
    ) {
        let (Phase::Queued, Some(ep)) = (self.phase, self.caller.endpoint.map(|e| e.id)) else {
            return;
        };
        if self.callback.is_some() {
            // The callback dialogue has the line.
            return;
        }
        if self.record.queue.as_deref() != Some(queue) {
            return;
        }
        let language = self.flow.as_ref().map_or("en", |run| run.language.as_str());
        let prompts = switchyard_flows::announce(language, position, wait_secs);
        if let Err(e) = env.play_prompts(ep, &prompts, false) {
            tracing::warn!(call = %self.record.id, error = %e, "announcement not played");
        }
    }

    /// Continues a taken-over caller at the step its copy was at.
    pub(super) fn resume_flow(&mut self, env: &mut dyn CallEnv) {
        self.step_flow(env, None);
    }

    pub(super) fn flow_event(&mut self, env: &mut dyn CallEnv, event: FlowEvent) {
        if self.phase == Phase::Ivr {
            self.step_flow(env, Some(event));
        }
    }

    /// Feeds `event` (or, with `None`, a resume) to the run and carries out what it asks.
    fn step_flow(&mut self, env: &mut dyn CallEnv, event: Option<FlowEvent>) {
        let Some(run) = self.flow.as_mut() else {
            return;
        };
        let flows = env.flows();
        let now = jiff::Timestamp::from_millisecond(env.now_ms() as i64)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let commands = match event {
            Some(event) => run.handle(&flows, &QueueView(env), now, event),
            None => run.resume(&flows, &QueueView(env), now),
        };
        // A survey (after the answer) is a run of its own: the menu keys stay those taken before.
        if self.record.answered_ms.is_none() {
            self.record.menu.clone_from(&run.menu_digits);
            self.priority = run.priority;
        }
        for command in commands {
            self.flow_command(env, command);
            if self.phase != Phase::Ivr {
                break;
            }
        }
    }

    fn flow_command(&mut self, env: &mut dyn CallEnv, command: FlowCommand) {
        let Some(caller_ep) = self.caller.endpoint.map(|e| e.id) else {
            return;
        };
        match command {
            FlowCommand::Play {
                prompts, barge_in, ..
            } => {
                if let Err(e) = env.play_prompts(caller_ep, &prompts, barge_in) {
                    tracing::error!(call = %self.record.id, error = %e, "flow prompt cannot play");
                    self.end_flow(env, StatusCode::ServiceUnavailable, Disposition::Failed);
                }
            }
            FlowCommand::StopPlayback => env.stop_playback(caller_ep),
            FlowCommand::StartTimer { token, after_ms } => self.emit(Effect::After {
                delay: Duration::from_millis(after_ms),
                timer: Timer::Flow { token },
            }),
            FlowCommand::EnterQueue { queue, .. } if self.record.answered_ms.is_some() => {
                tracing::warn!(call = %self.record.id, %queue, "a survey cannot queue the caller again");
                self.end_flow(env, StatusCode::ServiceUnavailable, Disposition::Failed);
            }
            FlowCommand::EnterQueue {
                queue,
                priority,
                preferred_agent,
                ..
            } => {
                self.priority = priority;
                self.preferred = preferred_agent.map(|p| PreferredAgent {
                    agent: p.agent,
                    until_ms: env
                        .now_ms()
                        .saturating_add(p.wait_secs.saturating_mul(1000)),
                });
                env.play(caller_ep, Sound::MusicOnHold, true);
                let now = env.now_ms();
                self.enqueue(env, queue, now);
            }
            FlowCommand::Hangup { disposition } => {
                let disposition = match disposition.as_str() {
                    "closed" => Disposition::Closed,
                    _ => Disposition::HungUp,
                };
                self.end_flow(env, StatusCode::TemporarilyUnavailable, disposition);
            }
            FlowCommand::Transfer { number, trunk } if self.record.answered_ms.is_none() => {
                self.transfer_out(env, &number, trunk.as_deref());
            }
            FlowCommand::Transfer { number, .. } => {
                tracing::warn!(call = %self.record.id, %number, "a survey cannot transfer the caller");
                self.end_flow(env, StatusCode::ServiceUnavailable, Disposition::Failed);
            }
            FlowCommand::Failed { reason } => {
                tracing::error!(call = %self.record.id, %reason, "flow failed");
                self.end_flow(env, StatusCode::ServiceUnavailable, Disposition::Failed);
            }
        }
    }
}

//! A supervisor listening, whispering or barging in: one more leg, mixed on the media worker.

use switchyard_sip::dialog::Dialog;
use switchyard_sip::rsip::Response;
use switchyard_sip::sdp;

use super::super::MonitorMode;
use super::super::replica::MediaTarget;
use super::dialogs::ack_of;
use super::setup::SUPPORTED_CODECS;
use super::{CallCore, CallEnv, Effect, LegState, Phase, Role};
use crate::cdr::MonitorRecord;

impl CallCore {
    /// Rings `extension` to monitor the connected call; the mix starts when it answers.
    pub fn start_monitor(
        &mut self,
        env: &mut dyn CallEnv,
        extension: String,
        mode: MonitorMode,
    ) -> Result<(), String> {
        if self.phase != Phase::Connected {
            return Err("the call is not connected".into());
        }
        if let Some(Role::Supervisor { extension, .. }) = self.supervisor().map(|s| &s.role) {
            return Err(format!("{extension} is already monitoring"));
        }
        if self
            .agent()
            .and_then(|a| a.agent_id())
            .is_some_and(|a| a == extension)
        {
            return Err("the agent cannot monitor its own call".into());
        }
        let role = Role::Supervisor {
            extension: extension.clone(),
            mode,
        };
        let leg = self
            .ring(env, role, &extension, &[])
            .map_err(|e| e.describe(&extension))?;
        tracing::info!(call = %self.record.id, supervisor = %extension, mode = mode.label(), "ringing supervisor");
        self.legs.push(leg);
        Ok(())
    }

    pub fn set_monitor_mode(
        &mut self,
        env: &mut dyn CallEnv,
        new_mode: MonitorMode,
    ) -> Result<(), String> {
        let Some(leg) = self.supervisor_mut() else {
            return Err("nobody is monitoring the call".into());
        };
        if let Role::Supervisor { mode, .. } = &mut leg.role {
            *mode = new_mode;
        }
        if leg.dialog.is_some()
            && let Some(ep) = leg.endpoint
        {
            env.set_monitor_mode(ep.id, new_mode.into());
        }
        tracing::info!(call = %self.record.id, mode = new_mode.label(), "monitor mode changed");
        Ok(())
    }

    pub(super) fn on_supervisor_response(
        &mut self,
        env: &mut dyn CallEnv,
        response: &Response,
        code: u16,
    ) {
        let call_id = self.record.id.clone();
        let Some(leg) = self.supervisor_mut() else {
            return;
        };
        if leg.dialog.is_some() {
            // A retransmitted 2xx: the ACK already went.
            return;
        }
        let Role::Supervisor { extension, mode } = leg.role.clone() else {
            return;
        };
        if code >= 300 {
            tracing::info!(call = %call_id, supervisor = %extension, code, "supervisor did not answer");
            return self.end_monitor(env, false);
        }
        match Dialog::new_uac(&leg.invite, response) {
            Ok(d) => leg.dialog = Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "supervisor 2xx without a usable dialog");
                return self.end_monitor(env, false);
            }
        }
        leg.state = LegState::Up;
        let leg_ep = leg.endpoint;
        let answer = sdp::parse(&response.body)
            .and_then(|a| sdp::negotiate(&a, &SUPPORTED_CODECS).map(|n| (a, n)));
        if let Some(ack) = self.supervisor().and_then(|leg| ack_of(leg, 1)) {
            self.emit(ack);
        }
        let (Ok((answer, negotiated)), Some(leg_ep), Some(caller), Some(agent)) = (
            answer,
            leg_ep,
            self.caller.endpoint,
            self.agent().and_then(|a| a.endpoint),
        ) else {
            tracing::warn!(call = %call_id, "supervisor answer unusable, or the call ended");
            return self.end_monitor(env, true);
        };
        let target = MediaTarget::new(
            std::net::SocketAddr::new(answer.connection, answer.port),
            &negotiated,
        );
        env.set_remote(leg_ep.id, &target);
        if let Some(leg) = self.supervisor_mut() {
            leg.media = Some(target);
        }
        if let Err(e) = env.monitor(leg_ep.id, caller.id, agent.id, mode.into()) {
            tracing::error!(error = %e, "cannot mix the supervisor in");
            return self.end_monitor(env, true);
        }
        tracing::info!(call = %call_id, supervisor = %extension, mode = mode.label(), "supervisor joined");
        self.record.monitors.push(MonitorRecord {
            supervisor: extension,
            mode: mode.label().into(),
            started_ms: env.now_ms(),
        });
    }

    /// Ends monitoring: the mix goes, the supervisor's endpoint is released, and with
    /// `hang_up` its phone is sent a BYE (or a CANCEL while it rings).
    pub(super) fn end_monitor(&mut self, env: &mut dyn CallEnv, hang_up: bool) {
        let Some(mut leg) = self.take_supervisor() else {
            return;
        };
        if let Some(ep) = leg.endpoint.take() {
            env.stop_monitor(ep.id);
            env.release(ep.id);
        }
        self.emit(Effect::Release {
            sip_call_id: leg.sip_call_id.clone(),
        });
        if !hang_up {
            return;
        }
        if leg.dialog.is_some() {
            self.send_bye(&mut leg, true);
        } else {
            self.emit(Effect::Cancel {
                invite_branch: leg.branch.clone(),
            });
            // A 200 racing the CANCEL is ACKed and hung up like a cancelled agent leg.
            leg.state = LegState::Cancelled;
            self.legs.push(leg);
        }
    }
}

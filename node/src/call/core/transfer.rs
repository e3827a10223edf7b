//! Calls out through a trunk: a flow's transfer to an outside number, and the leg a callback
//! dials to its customer (`callback`).
//!
//! ```text
//! flow Transfer -> music, INVITE sip:<number>@<trunk> (Phase::Transferring)
//!   2xx  -> ACK, bridge the caller with it, 200 to the caller: Connected (record `transferred`)
//!   >=300, no answer in TRANSFER_RING -> 480 to the caller, record `failed`
//! ```
//!
//! A transferred call is not copied to standbys: the standbys are told to forget it when the
//! transfer starts (the replica has no shape for a leg that is neither caller nor agent).

use std::time::Duration;

use switchyard_sip::dialog::{self, Dialog};
use switchyard_sip::headers::MessageExt;
use switchyard_sip::rsip::{Response, StatusCode};
use switchyard_sip::{message, sdp, transaction};

use super::super::legs::AgentInvite;
use super::super::replica::MediaTarget;
use super::dialogs::ack_of;
use super::setup::{SUPPORTED_CODECS, agent_sdp};
use super::{CallCore, CallEnv, Effect, Leg, LegState, Phase, Role, Sound, Timer};
use crate::cdr::{Disposition, HangupBy};
use crate::config::TrunkConfig;

/// How long a transfer's number may ring.
const TRANSFER_RING: Duration = Duration::from_secs(60);

impl CallCore {
    /// INVITEs `number` through `trunk` from a new endpoint near `near`, calling as `calling`;
    /// the leg's responses come back to this call. `None` (logged) when it cannot be sent.
    pub(super) fn dial_out(
        &mut self,
        env: &mut dyn CallEnv,
        role: Role,
        trunk: &TrunkConfig,
        number: &str,
        calling: &str,
        near: Option<switchyard_media::EndpointId>,
    ) -> Option<Leg> {
        let endpoint = match env.allocate(near) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::warn!(call = %self.id, error = %e, "no media port for a call out");
                return None;
            }
        };
        let Ok(target) = message::parse_uri(&format!("sip:{number}@{}", trunk.address)) else {
            tracing::warn!(call = %self.id, %number, "number is not dialable");
            Self::release_endpoint(env, Some(endpoint));
            return None;
        };
        let peer = transaction::Peer {
            addr: trunk.address,
            transport: if trunk.tcp {
                transaction::Transport::Tcp
            } else {
                transaction::Transport::Udp
            },
            connection: None,
        };
        let local = env.local(peer.transport);
        self.attempts += 1;
        let sip_call_id = format!("{}-out{}@{}", self.id, self.attempts, local.addr.ip());
        let branch = transaction::new_branch();
        let local_tag = dialog::new_tag();
        let sdp_session = u64::from(endpoint.local.port());
        let offer = agent_sdp(&endpoint, sdp_session, 1);
        let invite = AgentInvite {
            local,
            target: &target,
            agent_id: number,
            caller_user: calling,
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
        Some(Leg {
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

    /// Takes an outgoing leg's 2xx: its dialog, the ACK to send (returned, to be emitted whatever
    /// the SDP), and its endpoint pointed at the answer's media; `Err` when the answer's SDP
    /// cannot be used (the leg is then up and must be hung up).
    pub(super) fn answer_out(
        env: &mut dyn CallEnv,
        leg: &mut Leg,
        response: &Response,
    ) -> (Option<Effect>, Result<(), String>) {
        match Dialog::new_uac(&leg.invite, response) {
            Ok(dialog) => leg.dialog = Some(dialog),
            Err(e) => return (None, Err(e.to_string())),
        }
        leg.state = LegState::Up;
        let ack = ack_of(leg, 1);
        let answer = sdp::parse(&response.body)
            .and_then(|a| sdp::negotiate(&a, &SUPPORTED_CODECS).map(|n| (a, n)));
        let result = match answer {
            Ok((answer, negotiated)) => {
                let target = MediaTarget::new(
                    std::net::SocketAddr::new(answer.connection, answer.port),
                    &negotiated,
                );
                if let Some(ep) = leg.endpoint {
                    env.set_remote(ep.id, &target);
                }
                leg.media = Some(target);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        (ack, result)
    }

    /// A flow sends the caller to `number`.
    pub(super) fn transfer_out(
        &mut self,
        env: &mut dyn CallEnv,
        number: &str,
        trunk: Option<&str>,
    ) {
        let Some(trunk) = env.trunk(trunk) else {
            tracing::error!(call = %self.id, ?trunk, "transfer trunk does not exist");
            return self.refuse(env, StatusCode::ServiceUnavailable, Disposition::Failed);
        };
        let near = self.caller.endpoint.map(|e| e.id);
        let calling = trunk
            .caller_id
            .clone()
            .unwrap_or_else(|| self.record.caller.clone());
        let role = Role::Outside {
            number: number.to_owned(),
        };
        let Some(leg) = self.dial_out(env, role, &trunk, number, &calling, near) else {
            return self.refuse(env, StatusCode::ServiceUnavailable, Disposition::Failed);
        };
        if let Some(ep) = near {
            env.play(ep, Sound::MusicOnHold, true);
        }
        tracing::info!(call = %self.id, %number, trunk = %trunk.name, "flow transfers the caller");
        self.record.transferred_to = Some(number.to_owned());
        self.legs.push(leg);
        self.phase = Phase::Transferring;
        self.forget_replica();
        self.emit(Effect::After {
            delay: TRANSFER_RING,
            timer: Timer::TransferRing,
        });
    }

    /// A final response on the transfer's leg; false if `response` is not for it.
    pub(super) fn on_transfer_response(
        &mut self,
        env: &mut dyn CallEnv,
        response: &Response,
        code: u16,
    ) -> bool {
        let call_id = response.call_id().unwrap_or_default();
        let Some(i) = self
            .legs
            .iter()
            .position(|l| l.is_outside() && l.sip_call_id == call_id)
        else {
            return false;
        };
        if self.phase != Phase::Transferring || self.legs[i].state != LegState::Inviting {
            return true;
        }
        let mut leg = self.legs.remove(i);
        if code >= 300 {
            tracing::info!(call = %self.id, code, "transfer not answered");
            Self::release_endpoint(env, leg.endpoint.take());
            return {
                self.refuse(env, StatusCode::TemporarilyUnavailable, Disposition::Failed);
                true
            };
        }
        let (ack, answered) = Self::answer_out(env, &mut leg, response);
        if let Some(ack) = ack {
            self.emit(ack);
        }
        if let Err(e) = answered {
            tracing::warn!(call = %self.id, error = %e, "transfer answer unusable");
            self.send_bye(&mut leg, true);
            Self::release_endpoint(env, leg.endpoint.take());
            self.refuse(env, StatusCode::TemporarilyUnavailable, Disposition::Failed);
            return true;
        }
        if let (Some(caller), Some(out)) = (self.caller.endpoint, leg.endpoint)
            && let Err(e) = env.bridge(caller.id, out.id)
        {
            tracing::error!(error = %e, "cannot bridge a transferred call");
        }
        self.legs.push(leg);
        let ok = super::super::legs::response_with_sdp(
            &self.caller.invite,
            StatusCode::OK,
            &self.caller.local_tag,
            &self.caller.local.contact_uri(),
            &self.caller.sdp,
        );
        self.respond_to_invite(ok);
        self.caller.state = LegState::Up;
        self.record.answered_ms = Some(env.now_ms());
        self.phase = Phase::Connected;
        true
    }

    /// The number rang too long: give up on it and refuse the caller.
    pub(super) fn transfer_ring_timeout(&mut self, env: &mut dyn CallEnv) {
        if self.phase == Phase::Transferring {
            self.cancel_outside(env);
            self.refuse(env, StatusCode::TemporarilyUnavailable, Disposition::Failed);
        }
    }

    /// CANCELs the transfer's ringing INVITE; a 200 crossing it is ACKed and hung up.
    pub(super) fn cancel_outside(&mut self, env: &mut dyn CallEnv) {
        let Some(leg) = self
            .legs
            .iter_mut()
            .find(|l| l.is_outside() && l.state == LegState::Inviting)
        else {
            return;
        };
        leg.state = LegState::Cancelled;
        let invite_branch = leg.branch.clone();
        let endpoint = leg.endpoint.take();
        Self::release_endpoint(env, endpoint);
        self.emit(Effect::Cancel { invite_branch });
    }

    /// Ends a transferred call from the outside party's side.
    pub(super) fn outside_hung_up(&mut self, env: &mut dyn CallEnv) {
        self.hang_up_caller();
        self.finish(env, HangupBy::Outside, Disposition::Transferred);
    }
}

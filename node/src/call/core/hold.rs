//! Hold and resume (RFC 3264 §8.4): from a phone's re-INVITE or from the API.
//!
//! The call is a B2BUA, so holding is local media: the held party hears music on hold in
//! place of the relayed audio (a prompt playing on an endpoint replaces the relay to it), and
//! resuming stops the prompt so the relay carries on. The other phone is not re-INVITEd. The
//! time on hold is summed into the record (`hold_ms`, part of the handle time).

use switchyard_sip::sdp::{AudioDescription, Direction};

use super::super::replica::{Hold, Holder};
use super::{CallCore, CallEnv, Phase, Sound};

/// Whether an offer puts the other party on hold: the phone will not receive (`sendonly`,
/// `inactive`), or the RFC 2543 way, a connection address of 0.0.0.0.
pub(super) fn offer_holds(offer: &AudioDescription) -> bool {
    matches!(offer.direction, Direction::SendOnly | Direction::Inactive)
        || offer.connection.is_unspecified()
}

impl CallCore {
    /// Puts the connected call on hold through the API, or takes it off.
    pub fn set_hold(&mut self, env: &mut dyn CallEnv, hold: bool) -> Result<(), String> {
        if self.phase != Phase::Connected {
            return Err("the call is not connected".into());
        }
        match (hold, self.hold) {
            (true, None) => self.start_hold(env, Holder::Api),
            (true, Some(_)) => return Err("the call is already on hold".into()),
            (false, Some(_)) => self.end_hold(env),
            (false, None) => return Err("the call is not on hold".into()),
        }
        // The standbys keep the hold, so a held call stays held if this node dies.
        self.replicate();
        Ok(())
    }

    /// A phone's re-INVITE said whether it holds the other party.
    pub(super) fn phone_hold(&mut self, env: &mut dyn CallEnv, holder: Holder, holds: bool) {
        if self.phase != Phase::Connected {
            return;
        }
        match self.hold {
            None if holds => self.start_hold(env, holder),
            Some(hold) if !holds && hold.holder == holder => self.end_hold(env),
            _ => {}
        }
    }

    fn start_hold(&mut self, env: &mut dyn CallEnv, holder: Holder) {
        tracing::info!(call = %self.record.id, ?holder, "call on hold");
        self.hold = Some(Hold {
            holder,
            since_ms: env.now_ms(),
        });
        self.play_hold(env, holder);
    }

    /// Starts what the parties hear while `holder` holds the call.
    pub(super) fn play_hold(&mut self, env: &mut dyn CallEnv, holder: Holder) {
        let caller = self.caller.endpoint.map(|e| e.id);
        let agent = self.agent().and_then(|a| a.endpoint).map(|e| e.id);
        let (music_to, silence_to) = match holder {
            Holder::Caller => (agent, None),
            Holder::Agent => (caller, None),
            Holder::Api => (caller, agent),
        };
        if let Some(ep) = music_to {
            env.play(ep, Sound::MusicOnHold, true);
        }
        if let Some(ep) = silence_to {
            env.play(ep, Sound::Silence, true);
        }
    }

    pub(super) fn end_hold(&mut self, env: &mut dyn CallEnv) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        tracing::info!(call = %self.record.id, "call resumed");
        self.record.hold_ms += env.now_ms().saturating_sub(hold.since_ms);
        for ep in [self.caller.endpoint, self.agent().and_then(|a| a.endpoint)]
            .into_iter()
            .flatten()
        {
            env.stop_playback(ep.id);
        }
    }
}

//! A leg: one party's SIP dialog and media endpoint in a call.

use switchyard_media::Endpoint;
use switchyard_sip::dialog::Dialog;
use switchyard_sip::rsip::Request;
use switchyard_sip::sdp;
use switchyard_sip::transaction::{Peer, TransactionId};

use super::super::MonitorMode;
use super::super::legs::Local;
use super::super::replica::MediaTarget;

/// Who is on the other end of a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The caller, whose INVITE started the call.
    Caller,
    /// An agent offered the call by `queue`.
    Agent {
        agent_id: String,
        queue: String,
        /// Which offer of the call this is (ring timeouts name it).
        attempt: u32,
        /// When the queue made the offer (Unix ms).
        offered_ms: u64,
    },
    /// A supervisor monitoring the call.
    Supervisor {
        extension: String,
        mode: MonitorMode,
    },
    /// An outside number a flow transferred the caller to, through a trunk.
    Outside { number: String },
}

/// Where a leg stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Our INVITE is out (or, for the caller, theirs is not answered yet).
    Inviting,
    /// The dialog is established.
    Up,
    /// We cancelled the INVITE; a 200 racing the CANCEL is ACKed and hung up.
    Cancelled,
}

/// One party of the call.
#[derive(Debug)]
pub struct Leg {
    pub role: Role,
    pub state: LegState,
    pub sip_call_id: String,
    /// The INVITE that made the leg: received for the caller, sent for the others.
    pub invite: Request,
    /// The branch of the INVITE we sent (empty for the caller, and on a standby).
    pub branch: String,
    /// The caller's INVITE server transaction; `None` on a standby until it has adopted it.
    pub txn: Option<TransactionId>,
    /// Where the INVITE came from (caller) or went to (others).
    pub peer: Peer,
    pub local: Local,
    /// Our tag in the dialog.
    pub local_tag: String,
    pub dialog: Option<Dialog>,
    pub endpoint: Option<Endpoint>,
    /// Where the party's phone takes RTP, as negotiated.
    pub media: Option<MediaTarget>,
    /// `o=` session id and version of our SDP on this leg (RFC 3264 §8).
    pub sdp_session: u64,
    pub sdp_version: u64,
    /// Our SDP on this leg: the answer sent to the caller, the offer sent to the others.
    pub sdp: String,
}

impl Leg {
    /// An agent leg being rung or connected (not one we cancelled).
    pub fn is_live_agent(&self) -> bool {
        matches!(self.role, Role::Agent { .. }) && self.state != LegState::Cancelled
    }

    /// A leg to an outside number (ringing or answered, not one we cancelled).
    pub fn is_outside(&self) -> bool {
        matches!(self.role, Role::Outside { .. }) && self.state != LegState::Cancelled
    }

    /// A supervisor leg being rung or monitoring (not one we cancelled).
    pub fn is_live_supervisor(&self) -> bool {
        matches!(self.role, Role::Supervisor { .. }) && self.state != LegState::Cancelled
    }

    /// Answers the party's offer from our endpoint `ep`: the same SDP as before unless the
    /// answer changed (then the next version, RFC 3264 §8).
    pub fn answer(
        &mut self,
        offer: &sdp::AudioDescription,
        negotiated: &sdp::Negotiated,
        ep: Endpoint,
    ) {
        let answer = |version| {
            sdp::build_answer(
                offer,
                &sdp::LocalMedia {
                    session_id: self.sdp_session,
                    version,
                    addr: ep.local.ip(),
                    port: ep.local.port(),
                    codecs: &[(negotiated.payload_type, negotiated.codec)],
                    telephone_event_pt: negotiated.telephone_event_pt,
                    direction: sdp::Direction::SendRecv,
                },
            )
        };
        let same_version = answer(self.sdp_version);
        if same_version != self.sdp {
            self.sdp_version += 1;
            self.sdp = answer(self.sdp_version);
        }
    }

    pub fn agent_id(&self) -> Option<&str> {
        match &self.role {
            Role::Agent { agent_id, .. } => Some(agent_id),
            _ => None,
        }
    }
}

//! Call actors: one per inbound call, a back-to-back user agent joining the caller's leg and an
//! agent's leg through a media worker.
//!
//! - [`core`]: the call as a sans-IO state machine: legs, phases, inputs in, effects out.
//! - [`actor`]: the ractor actor feeding the core and carrying out its effects.
//! - [`legs`]: building the SIP requests and responses of the legs.
//! - [`replica`]: the copy of a call its standby node keeps, and takes the call over from
//!   (`crate::failover`).

mod actor;
mod core;
mod legs;
mod replica;

pub use actor::{CallActor, CallArgs};
pub use legs::Local;
pub use replica::CallReplica;

use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};
use switchyard_media::MediaEvent;
use switchyard_sip::rsip::{Request, Response};
use switchyard_sip::transaction::{Peer, TransactionId};

use crate::acd::AgentId;
use crate::config::Overflow;

/// Messages a call actor handles. The ACD sends `Offer` and `Overflow` (from any node of a
/// cluster: see [`WireCallMsg`]); the SIP endpoint, the media workers and the actor's own timers
/// send the rest.
pub enum CallMsg {
    /// Ring `agent_id`; report the result to `queue` with `QueueMsg::OfferOutcome`.
    Offer {
        agent_id: AgentId,
        queue: String,
        /// Seconds to ring before giving up with `OfferOutcome::NoAnswer`.
        ring_timeout_secs: u64,
        /// The agent's registered contact URIs, wherever the phone registered. A binding in
        /// this node's registrar is preferred (it knows the connection the phone uses).
        contacts: Vec<String>,
        /// When the queue made the offer (Unix ms): the offer's time in the call record, in
        /// the queue's order whichever node the call is on.
        offered_ms: u64,
    },
    /// The caller waited too long; the queue has already removed it.
    Overflow {
        queue: String,
        action: Overflow,
    },
    /// `queue` (re)started without knowing this caller: join it again if still waiting there.
    Requeue {
        queue: String,
    },
    /// Tell the waiting caller its place in `queue` and its estimated wait.
    Announce {
        queue: String,
        position: u32,
        wait_secs: Option<u64>,
    },
    /// A request on one of the call's legs (re-INVITE, BYE, INFO...), in a server transaction.
    SipRequest {
        txn: TransactionId,
        request: Request,
        from: Peer,
    },
    /// The ACK for a 2xx the call sent.
    SipAck {
        request: Request,
    },
    /// The caller cancelled its INVITE (the endpoint already answered the CANCEL).
    SipCancel {
        invite_txn: TransactionId,
    },
    /// A response to a request the call sent.
    SipResponse {
        response: Response,
    },
    /// A request the call sent got no final response (timer B/F) or could not be sent.
    ClientTimeout {
        branch: String,
    },
    /// A 2xx the call sent was never ACKed, or a non-2xx final never acknowledged.
    ServerTimeout {
        txn: TransactionId,
    },
    /// A timer the call set itself.
    Timer(core::Timer),
    /// Something the media workers reported about one of the call's endpoints.
    Media(MediaEvent),
    /// Ring extension `supervisor` and, when it answers, join it to the connected call in
    /// `mode`. Answers once the INVITE is sent, or with why it cannot be.
    Monitor {
        supervisor: String,
        mode: MonitorMode,
        reply: RpcReplyPort<Result<CallSnapshot, String>>,
    },
    /// Change the monitoring supervisor's mode.
    SetMonitorMode {
        mode: MonitorMode,
        reply: RpcReplyPort<Result<CallSnapshot, String>>,
    },
    /// Put the connected call on hold (`true`) or take it off; answers with why not.
    Hold {
        hold: bool,
        reply: RpcReplyPort<Result<CallSnapshot, String>>,
    },
    Snapshot(RpcReplyPort<CallSnapshot>),
    /// This node was declared failed while cut off and the call's standby owns it now: stop
    /// without a word on SIP and without a record.
    Relinquish,
    /// This node is draining: give the call to its standby, keep relaying media meanwhile.
    HandOver,
    /// Send the standbys a copy if the call changed (sent by the actor to itself, a moment after
    /// a change, so that a burst of changes costs one copy).
    CopyToStandbys,
}

/// The [`CallMsg`]s a queue sends, which cross the mesh when the queue lives on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireCallMsg {
    Offer {
        agent_id: AgentId,
        queue: String,
        ring_timeout_secs: u64,
        contacts: Vec<String>,
        offered_ms: u64,
    },
    Overflow {
        queue: String,
        action: Overflow,
    },
    Requeue {
        queue: String,
    },
    Announce {
        queue: String,
        position: u32,
        wait_secs: Option<u64>,
    },
}

impl From<WireCallMsg> for CallMsg {
    fn from(msg: WireCallMsg) -> Self {
        match msg {
            WireCallMsg::Offer {
                agent_id,
                queue,
                ring_timeout_secs,
                contacts,
                offered_ms,
            } => Self::Offer {
                agent_id,
                queue,
                ring_timeout_secs,
                contacts,
                offered_ms,
            },
            WireCallMsg::Overflow { queue, action } => Self::Overflow { queue, action },
            WireCallMsg::Requeue { queue } => Self::Requeue { queue },
            WireCallMsg::Announce {
                queue,
                position,
                wait_secs,
            } => Self::Announce {
                queue,
                position,
                wait_secs,
            },
        }
    }
}

/// How a supervisor monitors a call (`POST /v1/calls/{id}/monitor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorMode {
    /// Hears caller and agent; heard by nobody.
    Listen,
    /// Hears both; heard by the agent only.
    Whisper,
    /// Everyone hears everyone.
    Barge,
}

impl MonitorMode {
    pub fn label(self) -> &'static str {
        match self {
            MonitorMode::Listen => "listen",
            MonitorMode::Whisper => "whisper",
            MonitorMode::Barge => "barge",
        }
    }
}

impl From<MonitorMode> for switchyard_media::MonitorMode {
    fn from(mode: MonitorMode) -> Self {
        match mode {
            MonitorMode::Listen => Self::Listen,
            MonitorMode::Whisper => Self::Whisper,
            MonitorMode::Barge => Self::Barge,
        }
    }
}

/// A live call as `GET /v1/calls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallSnapshot {
    pub id: String,
    pub caller: String,
    pub did: String,
    /// `routing`, `queued`, `offering`, `connected`, `goodbye` or `done`.
    pub state: &'static str,
    pub queue: Option<String>,
    pub agent: Option<String>,
    pub arrived_ms: u64,
    pub answered_ms: Option<u64>,
    pub recording: Option<String>,
    pub monitor: Option<MonitorSnapshot>,
    /// Whether the customer is on hold.
    pub on_hold: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorSnapshot {
    pub supervisor: String,
    pub mode: MonitorMode,
    /// Whether the supervisor's phone answered (else it is ringing).
    pub answered: bool,
}

//! Call detail records: one per call, written durably when the call ends and served at
//! `GET /v1/cdrs`.

pub mod store;

use serde::{Deserialize, Serialize};

use crate::acd::OfferOutcome;

/// How a call ended, from the contact centre's point of view.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// An agent answered.
    Answered,
    /// The caller hung up (or cancelled) before an agent answered.
    Abandoned,
    /// The caller reached the queue's max wait and was sent to its overflow target.
    Overflowed,
    /// The call could not be handled (no route, bad SDP, internal error).
    Failed,
    /// An IVR flow hung up because the line was closed (opening hours, holiday, override).
    Closed,
    /// An IVR flow hung up for another reason (a blocked caller, a message-only line).
    HungUp,
    /// The caller asked to be called back and hung up keeping its place; the callback's own
    /// record names this one in `callback_of`.
    CallbackRequested,
    /// An IVR flow sent the caller to an outside number, which answered.
    Transferred,
}

/// Which side ended the call.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum HangupBy {
    Caller,
    Agent,
    /// Switchyard itself (overflow goodbye, error, timeout).
    System,
    /// The outside number a flow transferred the caller to.
    Outside,
}

/// One offer of the call to an agent.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct OfferRecord {
    pub agent: String,
    pub queue: String,
    /// Unix milliseconds.
    pub offered_ms: u64,
    pub ended_ms: u64,
    pub outcome: OfferOutcome,
}

/// The record of one call. Times are Unix milliseconds; durations are milliseconds.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct CallRecord {
    /// Switchyard's call id.
    pub id: String,
    /// Node that handled the call.
    pub node: String,
    /// SIP Call-ID of the caller's leg.
    pub caller_call_id: String,
    /// SIP Call-ID of the answered agent leg, if any.
    pub agent_call_id: Option<String>,
    /// Caller identity (From URI user, or the whole URI when it has no user part).
    pub caller: String,
    /// Dialled number (Request-URI user).
    pub did: String,
    /// Last queue the call was in.
    pub queue: Option<String>,
    /// Agent who answered.
    pub agent: Option<String>,
    pub arrived_ms: u64,
    pub queued_ms: Option<u64>,
    pub offers: Vec<OfferRecord>,
    pub answered_ms: Option<u64>,
    pub ended_ms: u64,
    /// From queue entry to answer (or to the end, for a call never answered).
    pub wait_ms: u64,
    /// From answer to end.
    pub talk_ms: u64,
    pub disposition: Disposition,
    pub hangup_by: HangupBy,
    /// Recording file (stereo WAV: caller left, agent right), when the queue records calls.
    #[serde(default)]
    pub recording: Option<String>,
    /// RTP on the caller's leg, as Switchyard received and sent it.
    #[serde(default)]
    pub caller_rtp: Option<RtpStats>,
    /// RTP on the answered agent's leg.
    #[serde(default)]
    pub agent_rtp: Option<RtpStats>,
    /// Keys the caller pressed (RFC 4733 telephone-events, or in-band tones when the caller
    /// did not offer them), in order.
    #[serde(default)]
    pub dtmf: String,
    /// Supervisors who monitored the call.
    #[serde(default)]
    pub monitors: Vec<MonitorRecord>,
    /// Time the customer spent on hold (from a phone's re-INVITE or the API); part of the
    /// handle time.
    #[serde(default)]
    pub hold_ms: u64,
    /// The IVR flow the call entered, if its DID routes to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// Menu keys the caller chose in the flow, in order.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub menu: String,
    /// Priority in the queue (from the DID or the flow); higher is served first.
    #[serde(default)]
    pub priority: u8,
    /// The pool of the agent who answered (in-house, a partner), for the pool split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The skills (minimum levels) the queue's routing step required when the agent answered.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub skills: std::collections::BTreeMap<String, u8>,
    /// The outside number an IVR flow transferred the caller to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_to: Option<String>,
    /// The record of the call that asked for this callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_of: Option<String>,
    /// The key (1-5) the caller pressed in the queue's survey after the agent hung up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey_score: Option<u8>,
    /// Set when the node holding the call failed (or drained) and this node took it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverRecord>,
}

/// A take-over of the call by its standby node.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct FailoverRecord {
    /// Cluster id of the node that held the call before.
    pub from_node: u64,
    /// When this node took it over (Unix milliseconds).
    pub at_ms: u64,
    pub outcome: FailoverOutcome,
    /// Recording files after the first, one per take-over (the first is `recording`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recording_segments: Vec<String>,
}

/// How a take-over went.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverOutcome {
    /// The call went on from this node.
    Resumed,
    /// A leg refused (or never answered) the re-INVITE: the call was ended on both legs.
    Dropped,
}

/// RTP statistics of one leg (RFC 3550 reception statistics and RTCP).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct RtpStats {
    pub packets_received: u64,
    /// Expected minus received.
    pub packets_lost: i64,
    /// Interarrival jitter, microseconds.
    pub jitter_us: u64,
    pub packets_sent: u64,
    /// Loss the phone reported (RTCP) on what we sent it, if it sent reports.
    pub remote_packets_lost: Option<i64>,
    /// Round trip measured with the phone's RTCP, microseconds.
    pub round_trip_us: Option<u64>,
}

/// A supervisor's monitoring of the call.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct MonitorRecord {
    pub supervisor: String,
    /// The mode it started in (`listen`, `whisper` or `barge`).
    pub mode: String,
    /// Unix milliseconds when the supervisor answered.
    pub started_ms: u64,
}

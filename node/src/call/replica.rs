//! The plain-data copy of a call that its standby node keeps (see `crate::failover`).
//!
//! A copy is made at every change the standby would need to continue the call: joining a
//! queue, ringing an agent, connecting, a re-INVITE that moved a leg's media, and the end.
//! Everything in it is what the call actor itself keeps; SIP messages travel as their text.

use std::net::SocketAddr;

use switchyard_cluster::state::NodeId;
use switchyard_sip::dialog::Dialog;
use switchyard_sip::sdp;
use switchyard_sip::transaction::{Peer, Transport};

use crate::cdr::CallRecord;

/// Where and how a leg's phone receives RTP, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MediaTarget {
    pub addr: SocketAddr,
    /// G.711 A-law; else µ-law.
    pub alaw: bool,
    pub payload_type: u8,
    pub telephone_event_pt: Option<u8>,
}

impl MediaTarget {
    pub fn new(addr: SocketAddr, negotiated: &sdp::Negotiated) -> Self {
        Self {
            addr,
            alaw: negotiated.codec == sdp::Codec::Pcma,
            payload_type: negotiated.payload_type,
            telephone_event_pt: negotiated.telephone_event_pt,
        }
    }

    pub fn sdp_codec(&self) -> sdp::Codec {
        if self.alaw {
            sdp::Codec::Pcma
        } else {
            sdp::Codec::Pcmu
        }
    }
}

/// Where a leg's SIP peer is, in a form that survives the copy (connections do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub tcp: bool,
}

impl From<&Peer> for PeerAddr {
    fn from(peer: &Peer) -> Self {
        Self {
            addr: peer.addr,
            tcp: peer.transport == Transport::Tcp,
        }
    }
}

impl PeerAddr {
    /// The peer as this node reaches it: over UDP, or a new TCP connection.
    pub fn peer(&self) -> Peer {
        Peer {
            addr: self.addr,
            transport: if self.tcp {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            connection: None,
        }
    }
}

/// How far the call had got.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum ReplicaPhase {
    /// In an IVR flow: the standby resumes the run at its step.
    Ivr,
    Queued,
    /// An agent's phone was ringing: the standby withdraws the offer and queues the caller.
    Offering,
    Connected,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CallerReplica {
    /// The caller's INVITE as received; a queued caller's final response is built from it.
    pub invite: String,
    pub peer: PeerAddr,
    pub local_tag: String,
    pub dialog: Option<Dialog>,
    pub media: Option<MediaTarget>,
    /// The `o=` session id and version of our SDP towards the caller (RFC 3264 §8).
    pub sdp_session: u64,
    pub sdp_version: u64,
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AgentLegReplica {
    pub agent_id: String,
    pub queue: String,
    pub sip_call_id: String,
    /// The INVITE that rang the agent; a ringing offer is cancelled from it.
    pub invite: String,
    pub peer: PeerAddr,
    pub dialog: Option<Dialog>,
    pub media: Option<MediaTarget>,
    pub sdp_session: u64,
    pub offered_ms: u64,
}

/// Who put the call on hold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum Holder {
    /// The caller's phone (re-INVITE `sendonly`/`inactive`): the agent hears music.
    Caller,
    /// The agent's phone: the caller hears music.
    Agent,
    /// The agent through the API: the caller hears music, the agent silence.
    Api,
}

/// A hold in progress.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Hold {
    pub holder: Holder,
    pub since_ms: u64,
}

/// One call as its standby keeps it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CallReplica {
    /// The call's identity (its first record's id).
    pub id: String,
    /// The node holding the call when the copy was made.
    pub owner: NodeId,
    /// Raised with every copy, so that a copy overtaken on the way never replaces a newer one.
    pub version: u64,
    /// The nodes holding a copy, in take-over order (`ClusterState::call_standbys`).
    pub standbys: Vec<NodeId>,
    pub phase: ReplicaPhase,
    pub priority: u8,
    /// Agent legs rung so far: numbers the SIP Call-IDs of the next ones.
    pub attempts: u32,
    pub caller: CallerReplica,
    pub agent: Option<AgentLegReplica>,
    pub hold: Option<Hold>,
    pub flow: Option<switchyard_flows::FlowRun>,
    pub callback: Option<super::core::Callback>,
    pub record: CallRecord,
}

impl CallReplica {
    pub fn call_id(&self) -> &str {
        &self.id
    }
}

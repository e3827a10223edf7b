//! The call's side of failover: copying it to its standbys, and continuing it there.
//!
//! ```text
//! owner:   any change a standby needs -> copy (version + 1) to the standbys; end -> forget
//! standby: owner failed -> restore from the copy, then by phase:
//!   Connected  media on this node's workers, bridged; re-INVITE both legs (our Contact and
//!              media, CSeq + CSEQ_GAP); both 200s -> resumed; a refusal or no answer ->
//!              BYE both legs, recorded as dropped
//!   Queued     adopt the caller's INVITE transaction, 183 with our media, music, rejoin the
//!              queue with the original place (priority, first-queued time)
//!   Offering   as Queued, after cancelling the agent's ringing INVITE (the offer is reported
//!              failed, so the caller goes back to the head of the line)
//! draining owner: copy as HandOver, stop playing, relay media for HANDOVER_LINGER, then let go
//! ```

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use switchyard_cluster::state::NodeId;
use switchyard_sip::dialog;
use switchyard_sip::headers::{MessageExt, request_uri_user};
use switchyard_sip::message;
use switchyard_sip::rsip::{self, Header, Method, Request, Response, StatusCode};
use switchyard_sip::sdp;
use switchyard_sip::transaction::{self, Peer, TransactionId};

use super::super::legs;
use super::super::replica::{AgentLegReplica, CallerReplica, MediaTarget, PeerAddr, ReplicaPhase};
use super::dialogs::{ack_of, target_peer};
use super::setup::{SUPPORTED_CODECS, agent_sdp};
use super::{CallCore, CallEnv, Effect, Leg, LegState, Phase, Role, Sound, TELEPHONE_EVENT_PT};
use super::{CallReplica, Timer};
use crate::acd::OfferOutcome;
use crate::cdr::{CallRecord, Disposition, FailoverOutcome, FailoverRecord, HangupBy};

/// CSeq numbers a standby skips past the last one copied: the failed node may have sent
/// requests after its last copy (it copies before anything but a final BYE, so one would do).
const CSEQ_GAP: u32 = 1000;
/// How long a draining node keeps relaying a handed-over call while its legs move.
const HANDOVER_LINGER: Duration = Duration::from_secs(10);
/// How long a change waits before it is copied: queueing, ringing and connecting often come
/// within milliseconds and then cost one copy, and a call shorter than this costs none. A node
/// that dies within it loses that change only (the standby works from the copy before).
const COPY_DELAY: Duration = Duration::from_millis(50);

/// What the owner knows of the call's copy.
#[derive(Default)]
pub(super) struct Replication {
    /// Whether the node is clustered, so that calls are copied at all.
    enabled: bool,
    /// Where the copies go, in take-over order.
    standbys: Vec<NodeId>,
    version: u64,
    /// Digest of what the last copy held, to send a new one only on a change.
    digest: u64,
    /// A `CopyToStandbys` is on its way.
    pending: bool,
}

/// A take-over waiting for the answers to its re-INVITEs.
pub(super) struct Resuming {
    from_node: NodeId,
    /// (SIP Call-ID, CSeq, branch) of each re-INVITE still unanswered.
    pending: Vec<(String, u32, String)>,
}

/// What a call needs to know of its node that does not change while it lives.
pub struct CallSettings {
    /// The node's name, written in the record.
    pub node_name: String,
    pub user_agent: String,
    /// Whether calls are copied to standbys (clustered nodes).
    pub replicated: bool,
}

impl CallCore {
    /// A new call from the caller's INVITE, in its server transaction.
    pub fn new(
        env: &dyn CallEnv,
        settings: CallSettings,
        invite: Request,
        txn: TransactionId,
        from: Peer,
    ) -> Self {
        let now = env.now_ms();
        let record = CallRecord {
            id: format!("{:016x}", rand::random::<u64>()),
            node: settings.node_name,
            caller_call_id: invite.call_id().unwrap_or_default().to_owned(),
            agent_call_id: None,
            caller: invite
                .from_uri()
                .map(|uri| legs::uri_user(&uri))
                .unwrap_or_default(),
            did: request_uri_user(&invite).unwrap_or_default(),
            queue: None,
            agent: None,
            arrived_ms: now,
            queued_ms: None,
            offers: Vec::new(),
            answered_ms: None,
            ended_ms: now,
            wait_ms: 0,
            talk_ms: 0,
            disposition: Disposition::Failed,
            hangup_by: HangupBy::System,
            recording: None,
            caller_rtp: None,
            agent_rtp: None,
            dtmf: String::new(),
            monitors: Vec::new(),
            hold_ms: 0,
            flow: None,
            menu: String::new(),
            priority: 0,
            survey_score: None,
            callback_of: None,
            transferred_to: None,
            pool: None,
            skills: Default::default(),
            failover: None,
        };
        let caller = Leg {
            role: Role::Caller,
            state: LegState::Inviting,
            sip_call_id: record.caller_call_id.clone(),
            invite,
            branch: String::new(),
            txn: Some(txn),
            peer: from,
            local: env.local(from.transport),
            local_tag: dialog::new_tag(),
            dialog: None,
            endpoint: None,
            media: None,
            sdp_session: rand::random::<u32>().into(),
            sdp_version: 1,
            sdp: String::new(),
        };
        Self {
            id: record.id.clone(),
            phase: Phase::Routing,
            caller,
            legs: Vec::new(),
            attempts: 0,
            priority: 0,
            flow: None,
            preferred: None,
            callback: None,
            entered_queue_ms: now,
            record,
            hold: None,
            invited_at: env.instant(),
            replication: Replication {
                enabled: settings.replicated,
                ..Replication::default()
            },
            resuming: None,
            user_agent: settings.user_agent,
            effects: Vec::new(),
        }
    }

    /// The call as its copy left it, on this node. Media and SIP start with `Input::Start`.
    pub fn from_replica(
        env: &dyn CallEnv,
        settings: CallSettings,
        replica: CallReplica,
    ) -> Result<Self, String> {
        let parse = |text: &str| match message::parse(text.as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => Ok(r),
            _ => Err(format!(
                "call {}: unusable INVITE in its copy",
                replica.record.id
            )),
        };
        let mut record = replica.record.clone();
        record.node = settings.node_name;
        let mut segments = Vec::new();
        if let Some(previous) = &record.failover {
            segments.clone_from(&previous.recording_segments);
        }
        record.failover = Some(FailoverRecord {
            from_node: replica.owner,
            at_ms: env.now_ms(),
            outcome: FailoverOutcome::Resumed,
            recording_segments: segments,
        });
        let caller_peer = replica.caller.peer.peer();
        let caller = Leg {
            role: Role::Caller,
            state: if replica.caller.dialog.is_some() && replica.phase == ReplicaPhase::Connected {
                LegState::Up
            } else {
                LegState::Inviting
            },
            sip_call_id: record.caller_call_id.clone(),
            invite: parse(&replica.caller.invite)?,
            branch: String::new(),
            txn: None,
            peer: caller_peer,
            local: env.local(caller_peer.transport),
            local_tag: replica.caller.local_tag,
            dialog: replica.caller.dialog,
            endpoint: None,
            media: replica.caller.media,
            sdp_session: replica.caller.sdp_session,
            sdp_version: replica.caller.sdp_version,
            sdp: String::new(),
        };
        let mut call_legs = Vec::new();
        if let Some(a) = replica.agent {
            let peer = a.peer.peer();
            call_legs.push(Leg {
                role: Role::Agent {
                    agent_id: a.agent_id,
                    queue: a.queue,
                    attempt: replica.attempts,
                    offered_ms: a.offered_ms,
                },
                state: if a.dialog.is_some() {
                    LegState::Up
                } else {
                    LegState::Inviting
                },
                sip_call_id: a.sip_call_id,
                invite: parse(&a.invite)?,
                branch: String::new(),
                txn: None,
                peer,
                local: env.local(peer.transport),
                local_tag: String::new(),
                dialog: a.dialog,
                endpoint: None,
                media: a.media,
                sdp_session: a.sdp_session,
                sdp_version: 1,
                sdp: String::new(),
            });
        }
        let phase = match replica.phase {
            ReplicaPhase::Ivr => Phase::Ivr,
            ReplicaPhase::Queued => Phase::Queued,
            ReplicaPhase::Offering => Phase::Offering,
            ReplicaPhase::Connected => Phase::Connected,
        };
        Ok(Self {
            id: replica.id,
            phase,
            caller,
            legs: call_legs,
            attempts: replica.attempts,
            priority: replica.priority,
            flow: replica.flow,
            // A taken-over caller queues again without its preferred agent's window.
            preferred: None,
            callback: replica.callback,
            entered_queue_ms: env.now_ms(),
            record,
            hold: replica.hold,
            invited_at: env.instant(),
            replication: Replication {
                enabled: settings.replicated,
                ..Replication::default()
            },
            resuming: Some(Resuming {
                from_node: replica.owner,
                pending: Vec::new(),
            }),
            user_agent: settings.user_agent,
            effects: Vec::new(),
        })
    }

    /// Arranges a copy to the standbys if anything they need changed since the last one.
    pub(super) fn replicate(&mut self) {
        if !self.replication.enabled || self.replication.pending {
            return;
        }
        let Some(phase) = self.replica_phase() else {
            return;
        };
        if self.digest(phase) != self.replication.digest {
            self.replication.pending = true;
            self.emit(Effect::After {
                delay: COPY_DELAY,
                timer: Timer::CopyToStandbys,
            });
        }
    }

    /// Sends the standbys a copy if anything they need changed since the last one.
    pub(super) fn copy_to_standbys(&mut self, env: &mut dyn CallEnv) {
        self.replication.pending = false;
        let Some(standbys) = env.standbys(&self.id) else {
            return;
        };
        let Some(replica_phase) = self.replica_phase() else {
            return;
        };
        let digest = self.digest(replica_phase);
        if digest == self.replication.digest && standbys == self.replication.standbys {
            return;
        }
        let dropped: Vec<NodeId> = self
            .replication
            .standbys
            .iter()
            .copied()
            .filter(|old| !standbys.contains(old))
            .collect();
        for standby in dropped {
            self.emit(Effect::Forget { standby });
        }
        self.replication.standbys = standbys;
        self.replication.digest = digest;
        if self.replication.standbys.is_empty() {
            return;
        }
        self.replication.version += 1;
        if let Some(replica) = self.replica(env, replica_phase) {
            let replica = Arc::new(replica);
            for &standby in &replica.standbys {
                self.effects.push(Effect::CopyTo {
                    standby,
                    replica: Arc::clone(&replica),
                });
            }
        }
    }

    /// The call is over: the standbys forget it.
    pub(super) fn forget_replica(&mut self) {
        for standby in std::mem::take(&mut self.replication.standbys) {
            self.emit(Effect::Forget { standby });
        }
    }

    fn replica_phase(&self) -> Option<ReplicaPhase> {
        match self.phase {
            // A survey (answered, agent gone) is not copied: see `ivr`.
            Phase::Ivr if self.record.answered_ms.is_none() => Some(ReplicaPhase::Ivr),
            Phase::Queued => Some(ReplicaPhase::Queued),
            Phase::Offering => Some(ReplicaPhase::Offering),
            // Still waiting for the answers to a take-over's re-INVITEs: not a call to copy.
            // A transferred call is not copied (see `transfer`).
            Phase::Connected if self.resuming.is_none() && self.record.transferred_to.is_none() => {
                Some(ReplicaPhase::Connected)
            }
            _ => None,
        }
    }

    fn digest(&self, phase: ReplicaPhase) -> u64 {
        let mut h = DefaultHasher::new();
        phase.hash(&mut h);
        self.record.queue.hash(&mut h);
        self.hold.hash(&mut h);
        self.priority.hash(&mut h);
        if let Some(callback) = &self.callback {
            (callback.stage as u8, callback.attempt).hash(&mut h);
        }
        if let Some(run) = &self.flow {
            // Where the caller is and what it chose; prompt and timer tokens need no copy.
            (&run.step, &run.menu_digits, run.no_input, run.bad_input).hash(&mut h);
            (&run.vars, &run.language, &run.collected, run.priority).hash(&mut h);
        }
        self.caller.media.map(|m| m.addr).hash(&mut h);
        if let Some(d) = &self.caller.dialog {
            (&d.remote_target, d.local_cseq, d.remote_cseq).hash(&mut h);
        }
        if let Some(leg) = self.agent() {
            (&leg.sip_call_id, leg.media.map(|m| m.addr)).hash(&mut h);
            if let Some(d) = &leg.dialog {
                (&d.remote_target, d.local_cseq, d.remote_cseq).hash(&mut h);
            }
        }
        h.finish()
    }

    /// The copy a standby continues the call from.
    pub(super) fn replica(&self, env: &dyn CallEnv, phase: ReplicaPhase) -> Option<CallReplica> {
        let text = |request: &Request| {
            let bytes = message::to_bytes(&rsip::SipMessage::Request(request.clone()));
            String::from_utf8(bytes).ok()
        };
        let caller = CallerReplica {
            invite: text(&self.caller.invite)?,
            peer: PeerAddr::from(&self.caller.peer),
            local_tag: self.caller.local_tag.clone(),
            dialog: self.caller.dialog.clone(),
            media: self.caller.media,
            sdp_session: self.caller.sdp_session,
            sdp_version: self.caller.sdp_version,
        };
        let agent = match self.agent() {
            Some(
                leg @ Leg {
                    role:
                        Role::Agent {
                            agent_id,
                            queue,
                            offered_ms,
                            ..
                        },
                    ..
                },
            ) => Some(AgentLegReplica {
                agent_id: agent_id.clone(),
                queue: queue.clone(),
                sip_call_id: leg.sip_call_id.clone(),
                invite: text(&leg.invite)?,
                peer: PeerAddr::from(&leg.peer),
                dialog: leg.dialog.clone(),
                media: leg.media,
                sdp_session: leg.sdp_session,
                offered_ms: *offered_ms,
            }),
            _ => None,
        };
        Some(CallReplica {
            id: self.id.clone(),
            owner: env.node_id(),
            version: self.replication.version,
            standbys: self.replication.standbys.clone(),
            phase,
            priority: self.priority,
            attempts: self.attempts,
            caller,
            agent,
            hold: self.hold,
            flow: self.flow.clone(),
            callback: self.callback.clone(),
            record: self.record.clone(),
        })
    }

    /// Continues a call taken over from its copy (see the module docs).
    pub(super) fn resume(&mut self, env: &mut dyn CallEnv) {
        if self.is_callback() && self.phase == Phase::Queued {
            // No caller on the line: only the place in the queue continues.
            tracing::info!(call = %self.id, "taking a callback over");
            self.resuming = None;
            if let Some(queue) = self.record.queue.clone() {
                let since = self.record.queued_ms.unwrap_or(self.record.arrived_ms);
                self.enqueue(env, queue, since);
            }
            return;
        }
        tracing::info!(call = %self.record.id, phase = self.phase.label(),
            from_node = self.resuming.as_ref().map_or(0, |r| r.from_node), "taking the call over");
        let caller_ep = match env.allocate(None) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::error!(call = %self.record.id, error = %e, "no media for a taken-over call");
                return self.drop_resumed(env);
            }
        };
        if let Some(target) = self.caller.media {
            env.set_remote(caller_ep.id, &target);
            if target.telephone_event_pt.is_none() {
                env.detect_inband_dtmf(caller_ep.id);
            }
        }
        let codec = self
            .caller
            .media
            .map_or((0, sdp::Codec::Pcmu, Some(TELEPHONE_EVENT_PT)), |m| {
                (m.payload_type, m.sdp_codec(), m.telephone_event_pt)
            });
        self.caller.sdp_version += 1;
        self.caller.sdp = sdp::build(&sdp::LocalMedia {
            session_id: self.caller.sdp_session,
            version: self.caller.sdp_version,
            addr: caller_ep.local.ip(),
            port: caller_ep.local.port(),
            codecs: &[(codec.0, codec.1)],
            telephone_event_pt: codec.2,
            direction: sdp::Direction::SendRecv,
        });
        self.caller.endpoint = Some(caller_ep);
        let contact = self.caller.local.contact_uri();
        if let Some(dialog) = self.caller.dialog.as_mut() {
            dialog.local_contact = contact;
        }
        match self.phase {
            Phase::Connected => self.resume_connected(env),
            Phase::Ivr => {
                self.resuming = None;
                self.emit(Effect::Adopt {
                    invite: self.caller.invite.clone(),
                    from: self.caller.peer,
                });
                self.resume_flow(env);
                metrics::counter!("failover_calls_total", "outcome" => "flow-resumed").increment(1);
            }
            Phase::Offering | Phase::Queued => {
                if self.phase == Phase::Offering {
                    self.cancel_foreign_offer(env);
                }
                self.resuming = None;
                self.emit(Effect::Adopt {
                    invite: self.caller.invite.clone(),
                    from: self.caller.peer,
                });
                env.play(caller_ep.id, Sound::MusicOnHold, true);
                let queue = self.record.queue.clone().unwrap_or_default();
                let since = self.record.queued_ms.unwrap_or(self.record.arrived_ms);
                self.enqueue(env, queue, since);
                metrics::counter!("failover_calls_total", "outcome" => "requeued").increment(1);
            }
            _ => {}
        }
    }

    fn resume_connected(&mut self, env: &mut dyn CallEnv) {
        let Some(caller_ep) = self.caller.endpoint.map(|e| e.id) else {
            return;
        };
        let agent_ep = match env.allocate(Some(caller_ep)) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::error!(call = %self.record.id, error = %e, "no media for a taken-over call");
                return self.drop_resumed(env);
            }
        };
        if let Err(e) = env.bridge(caller_ep, agent_ep.id) {
            tracing::error!(error = %e, "cannot bridge taken-over legs");
        }
        let mut pending = Vec::new();
        let caller_offer = self.caller.sdp.clone();
        if let Some((sent, effect)) = reinvite(&mut self.caller, caller_offer) {
            pending.push(sent);
            self.emit(effect);
        }
        if let Some(leg) = self.agent_mut() {
            if let Some(target) = leg.media {
                env.set_remote(agent_ep.id, &target);
            }
            leg.sdp_version = 2;
            leg.sdp = agent_sdp(&agent_ep, leg.sdp_session, leg.sdp_version);
            let contact = leg.local.contact_uri();
            if let Some(dialog) = leg.dialog.as_mut() {
                dialog.local_contact = contact;
            }
            leg.endpoint = Some(agent_ep);
            let offer = leg.sdp.clone();
            if let Some((sent, effect)) = reinvite(leg, offer) {
                pending.push(sent);
                self.emit(effect);
            }
        }
        if pending.len() < 2 {
            tracing::warn!(call = %self.record.id, "a taken-over leg has no dialog to re-INVITE");
            return self.drop_resumed(env);
        }
        if let Some(resuming) = self.resuming.as_mut() {
            resuming.pending = pending;
        }
        // A held call stays held: the music starts again from this node.
        if let Some(hold) = self.hold {
            self.play_hold(env, hold.holder);
        }
        if self.record.recording.is_some() {
            let segment = self
                .record
                .failover
                .as_ref()
                .map_or(2, |f| f.recording_segments.len() + 2);
            self.start_recording(env, Some(segment));
        }
    }

    /// CANCELs the INVITE the failed node sent the agent: the same request line and branch
    /// (RFC 3261 §9.1), sent once from here; its answers go to the failed node's Via.
    fn cancel_foreign_offer(&mut self, env: &mut dyn CallEnv) {
        let Some(leg) = self.take_agent() else {
            return;
        };
        let invite = &leg.invite;
        let keep = |h: &&Header| {
            matches!(
                h,
                Header::From(_) | Header::To(_) | Header::CallId(_) | Header::Route(_)
            )
        };
        let mut headers: Vec<Header> = invite
            .headers
            .iter()
            .find(|h| matches!(h, Header::Via(_)))
            .cloned()
            .into_iter()
            .collect();
        headers.extend(invite.headers.iter().filter(keep).cloned());
        if let Some((cseq, _)) = invite.cseq() {
            headers.push(Header::CSeq(format!("{cseq} CANCEL").into()));
        }
        headers.push(Header::MaxForwards("70".into()));
        let cancel = Request {
            method: Method::Cancel,
            uri: invite.uri.clone(),
            version: rsip::Version::V2,
            headers: headers.into(),
            body: Vec::new(),
        };
        self.emit(Effect::SendStateless {
            request: cancel,
            to: leg.peer,
        });
        if let Role::Agent {
            agent_id,
            queue,
            offered_ms,
            ..
        } = &leg.role
        {
            self.report(env, queue, agent_id, *offered_ms, OfferOutcome::Failed);
        }
        self.phase = Phase::Queued;
    }

    /// The caller's INVITE, handed to this node's transaction layer by `resume`, came back with
    /// its new transaction: answer with this node's early media.
    pub(super) fn adopt(&mut self, request: &Request, txn: TransactionId) -> bool {
        let adopting = self.caller.txn.is_none()
            && request.method == Method::Invite
            && request.to_tag().is_none()
            && request.call_id() == Some(self.record.caller_call_id.as_str());
        if !adopting {
            return false;
        }
        self.caller.txn = Some(txn);
        let early = legs::response_with_sdp(
            &self.caller.invite,
            StatusCode::SessionProgress,
            &self.caller.local_tag,
            &self.caller.local.contact_uri(),
            &self.caller.sdp,
        );
        self.respond(txn, early);
        true
    }

    /// A response to one of the take-over's re-INVITEs; false for anything else.
    pub(super) fn on_resume_response(
        &mut self,
        env: &mut dyn CallEnv,
        response: &Response,
    ) -> bool {
        let (Some(call_id), Some((cseq, Method::Invite))) = (response.call_id(), response.cseq())
        else {
            return false;
        };
        let Some(resuming) = self.resuming.as_mut() else {
            return false;
        };
        let Some(i) = resuming
            .pending
            .iter()
            .position(|(id, n, _)| id == call_id && *n == cseq)
        else {
            return false;
        };
        let code = response.status_code.code();
        if code < 200 {
            return true;
        }
        resuming.pending.remove(i);
        if code >= 300 {
            tracing::warn!(call = %self.record.id, code, "a leg refused the take-over re-INVITE");
            self.drop_resumed(env);
            return true;
        }
        let leg = if call_id == self.record.caller_call_id {
            &mut self.caller
        } else {
            match self.agent_mut() {
                Some(leg) => leg,
                None => return true,
            }
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            return true;
        };
        if let Err(e) = dialog.on_response(Method::Invite, response) {
            tracing::debug!(error = %e, "re-INVITE answer not applied to the dialog");
        }
        let ack = ack_of(leg, cseq);
        let answer = sdp::parse(&response.body)
            .and_then(|a| sdp::negotiate(&a, &SUPPORTED_CODECS).map(|n| (a, n)));
        if let (Ok((answer, negotiated)), Some(ep)) = (answer, leg.endpoint) {
            let target = MediaTarget::new(
                std::net::SocketAddr::new(answer.connection, answer.port),
                &negotiated,
            );
            env.set_remote(ep.id, &target);
            leg.media = Some(target);
        }
        if let Some(ack) = ack {
            self.emit(ack);
        }
        if self.resuming.as_ref().is_some_and(|r| r.pending.is_empty()) {
            self.resuming = None;
            metrics::counter!("failover_calls_total", "outcome" => "resumed").increment(1);
            tracing::info!(call = %self.record.id, "taken-over call resumed on this node");
        }
        true
    }

    /// A re-INVITE of the take-over got no answer at all; false for any other request.
    pub(super) fn on_resume_failed(&mut self, env: &mut dyn CallEnv, branch: &str) -> bool {
        let ours = self
            .resuming
            .as_ref()
            .is_some_and(|r| r.pending.iter().any(|(_, _, b)| b == branch));
        if ours {
            tracing::warn!(call = %self.record.id, "a leg never answered the take-over re-INVITE");
            self.drop_resumed(env);
        }
        ours
    }

    /// Ends a call that could not be taken over: BYE both legs, recorded as dropped.
    fn drop_resumed(&mut self, env: &mut dyn CallEnv) {
        self.resuming = None;
        metrics::counter!("failover_calls_total", "outcome" => "dropped").increment(1);
        if let Some(failover) = self.record.failover.as_mut() {
            failover.outcome = FailoverOutcome::Dropped;
        }
        self.hang_up_answerer();
        self.hang_up_caller();
        let disposition = if self.record.answered_ms.is_some() {
            Disposition::Answered
        } else {
            Disposition::Failed
        };
        self.finish(env, HangupBy::System, disposition);
    }

    /// Stops without SIP or record: the standby took the call while this node was cut off.
    pub(super) fn relinquish(&mut self, env: &mut dyn CallEnv) {
        if self.phase == Phase::Done {
            return;
        }
        tracing::info!(call = %self.record.id, "letting go of a call its standby took over");
        self.phase = Phase::Done;
        self.replication.standbys.clear();
        self.release_all(env);
        self.legs.clear();
    }

    /// Gives the call to its standby (this node drains) and lets go of it after a linger
    /// during which media still flows through here.
    pub(super) fn hand_over(&mut self, env: &mut dyn CallEnv) {
        let Some(phase) = self.replica_phase() else {
            return;
        };
        let Some(standbys) = env.standbys(&self.id) else {
            return;
        };
        self.replication.standbys = standbys;
        let Some(&standby) = self.replication.standbys.first() else {
            tracing::warn!(call = %self.record.id, "no standby to hand the call to");
            return;
        };
        self.replication.version += 1;
        let Some(replica) = self.replica(env, phase) else {
            return;
        };
        self.emit(Effect::HandOverTo {
            standby,
            replica: Box::new(replica),
        });
        if let Some(ep) = self.caller.endpoint {
            env.stop_playback(ep.id);
        }
        self.phase = Phase::HandedOver;
        self.replication.standbys.clear();
        self.emit(Effect::After {
            delay: HANDOVER_LINGER,
            timer: Timer::Relinquish,
        });
    }
}

/// A target-refresh re-INVITE with our new Contact and `offer` in `leg`'s dialog, its CSeq
/// above anything the previous owner may have used, and (Call-ID, CSeq, branch) to match
/// its answer.
fn reinvite(leg: &mut Leg, offer: String) -> Option<((String, u32, String), Effect)> {
    let dialog = leg.dialog.as_mut()?;
    dialog.set_local_cseq_floor(dialog.local_cseq.saturating_add(CSEQ_GAP));
    let branch = transaction::new_branch();
    let mut request = dialog
        .create_request(Method::Invite, leg.local.via(&branch), offer.into_bytes())
        .map_err(|e| tracing::warn!(error = %e, "cannot build the take-over re-INVITE"))
        .ok()?;
    request
        .headers
        .push(Header::ContentType("application/sdp".into()));
    request
        .headers
        .push(Header::Allow(crate::sip::endpoint::ALLOWED.into()));
    let to = target_peer(dialog, &leg.peer);
    let sent = (dialog.call_id.clone(), dialog.local_cseq, branch);
    Some((
        sent,
        Effect::Send {
            request,
            to,
            owned: true,
        },
    ))
}

//! The call's side of failover: copying it to its standby, and continuing it there.
//!
//! ```text
//! owner:   any change a standby needs -> copy (version + 1) to the standby; end -> CallEnded
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

use switchyard_cluster::state::NodeId;

use super::*;
use crate::call::replica::{AgentLegReplica, CallerReplica, PeerAddr, ReplicaPhase};
use crate::cdr::{FailoverOutcome, FailoverRecord};

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
    /// (SIP Call-ID, CSeq) of each re-INVITE still unanswered.
    pending: Vec<(String, u32, String)>,
}

impl CallState {
    /// Whether this node may send requests of its own for the call (see `crate::failover`).
    pub(super) fn may_act(&self) -> bool {
        self.ctx.failover.as_ref().is_none_or(|f| f.may_act())
    }

    /// Arranges a copy to the standbys if anything they need changed since the last one.
    pub(super) fn replicate(&mut self, myself: &ActorRef<CallMsg>) {
        if self.ctx.failover.is_none() || self.replication.pending {
            return;
        }
        let Some(phase) = self.replica_phase() else {
            return;
        };
        if self.digest(phase) != self.replication.digest {
            self.replication.pending = true;
            myself.send_after(COPY_DELAY, || CallMsg::CopyToStandbys);
        }
    }

    /// Sends the standbys a copy if anything they need changed since the last one.
    pub(super) fn copy_to_standbys(&mut self) {
        self.replication.pending = false;
        let Some(failover) = self.ctx.failover.clone() else {
            return;
        };
        let Some(replica_phase) = self.replica_phase() else {
            return;
        };
        let digest = self.digest(replica_phase);
        let standbys = failover.standbys_for(&self.record.id);
        if digest == self.replication.digest && standbys == self.replication.standbys {
            return;
        }
        for &old in &self.replication.standbys {
            if !standbys.contains(&old) {
                failover.call_ended(old, &self.record.id);
            }
        }
        self.replication.standbys = standbys;
        self.replication.digest = digest;
        if self.replication.standbys.is_empty() {
            return;
        }
        self.replication.version += 1;
        if let Some(replica) = self.replica(replica_phase) {
            for &standby in &replica.standbys {
                failover.send_call(standby, &replica);
            }
        }
    }

    /// The call is over: the standby forgets it.
    pub(super) fn forget_replica(&mut self) {
        let standbys = std::mem::take(&mut self.replication.standbys);
        if let Some(failover) = self.ctx.failover.as_ref() {
            for standby in standbys {
                failover.call_ended(standby, &self.record.id);
            }
        }
    }

    fn replica_phase(&self) -> Option<ReplicaPhase> {
        match self.phase {
            Phase::Queued => Some(ReplicaPhase::Queued),
            Phase::Offering => Some(ReplicaPhase::Offering),
            // Still waiting for the answers to a take-over's re-INVITEs: not a call to copy.
            Phase::Connected if self.resuming.is_none() => Some(ReplicaPhase::Connected),
            _ => None,
        }
    }

    fn digest(&self, phase: ReplicaPhase) -> u64 {
        let mut h = DefaultHasher::new();
        phase.hash(&mut h);
        self.record.queue.hash(&mut h);
        self.caller.media.map(|m| m.addr).hash(&mut h);
        if let Some(d) = &self.caller.dialog {
            (&d.remote_target, d.local_cseq, d.remote_cseq).hash(&mut h);
        }
        if let Some(leg) = &self.agent {
            (&leg.sip_call_id, leg.media.map(|m| m.addr)).hash(&mut h);
            if let Some(d) = &leg.dialog {
                (&d.remote_target, d.local_cseq, d.remote_cseq).hash(&mut h);
            }
        }
        h.finish()
    }

    fn replica(&self, phase: ReplicaPhase) -> Option<CallReplica> {
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
        let agent = match &self.agent {
            Some(leg) => Some(AgentLegReplica {
                agent_id: leg.agent_id.clone(),
                queue: leg.queue.clone(),
                sip_call_id: leg.sip_call_id.clone(),
                invite: text(&leg.invite)?,
                peer: PeerAddr::from(&leg.peer),
                dialog: leg.dialog.clone(),
                media: leg.media,
                sdp_session: leg.sdp_session,
                offered_ms: leg.offered_ms,
            }),
            None => None,
        };
        Some(CallReplica {
            owner: self.ctx.node_id,
            version: self.replication.version,
            standbys: self.replication.standbys.clone(),
            phase,
            priority: self.priority,
            attempts: self.attempts,
            caller,
            agent,
            record: self.record.clone(),
        })
    }

    /// The call as its copy left it, on this node. Media and SIP start in `resume`.
    pub(super) fn from_replica(
        ctx: Arc<NodeContext>,
        replica: CallReplica,
    ) -> Result<CallState, String> {
        let parse = |text: &str| match message::parse(text.as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => Ok(r),
            _ => Err(format!(
                "call {}: unusable INVITE in its copy",
                replica.record.id
            )),
        };
        let caller_peer = replica.caller.peer.peer();
        let caller_local = ctx.local(caller_peer.transport);
        let mut record = replica.record.clone();
        record.node = ctx.config.node.id.clone();
        let mut segments = Vec::new();
        if let Some(previous) = &record.failover {
            segments.clone_from(&previous.recording_segments);
        }
        record.failover = Some(FailoverRecord {
            from_node: replica.owner,
            at_ms: unix_ms(),
            outcome: FailoverOutcome::Resumed,
            recording_segments: segments,
        });
        let agent = match replica.agent {
            Some(a) => {
                let peer = a.peer.peer();
                Some(AgentLeg {
                    invite: parse(&a.invite)?,
                    agent_id: a.agent_id,
                    queue: a.queue,
                    attempt: replica.attempts,
                    sip_call_id: a.sip_call_id,
                    branch: String::new(),
                    peer,
                    local: ctx.local(peer.transport),
                    dialog: a.dialog,
                    endpoint: None,
                    media: a.media,
                    sdp_session: a.sdp_session,
                    offered_ms: a.offered_ms,
                })
            }
            None => None,
        };
        let phase = match replica.phase {
            ReplicaPhase::Queued => Phase::Queued,
            ReplicaPhase::Offering => Phase::Offering,
            ReplicaPhase::Connected => Phase::Connected,
        };
        Ok(CallState {
            invited_at: std::time::Instant::now(),
            caller: CallerLeg {
                invite: parse(&replica.caller.invite)?,
                txn: None,
                peer: caller_peer,
                local: caller_local,
                dialog: replica.caller.dialog,
                local_tag: replica.caller.local_tag,
                sdp: String::new(),
                sdp_session: replica.caller.sdp_session,
                sdp_version: replica.caller.sdp_version,
                endpoint: None,
                media: replica.caller.media,
            },
            ctx,
            phase,
            agent,
            strays: Vec::new(),
            supervisor: None,
            attempts: replica.attempts,
            priority: replica.priority,
            record,
            replication: Replication::default(),
            resuming: Some(Resuming {
                from_node: replica.owner,
                pending: Vec::new(),
            }),
        })
    }

    /// Continues a call taken over from its copy (see the module docs).
    pub(super) fn resume(&mut self, myself: &ActorRef<CallMsg>) {
        tracing::info!(call = %self.record.id, phase = self.phase.label(),
            from_node = self.resuming.as_ref().map_or(0, |r| r.from_node), "taking the call over");
        let caller_ep = match self.ctx.media.allocate(None) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::error!(call = %self.record.id, error = %e, "no media for a taken-over call");
                return self.drop_resumed(myself);
            }
        };
        self.ctx.media_owners.insert(caller_ep.id, myself.clone());
        if let Some(target) = self.caller.media {
            target.apply(&self.ctx.media, caller_ep.id);
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
        if let Some(dialog) = self.caller.dialog.as_mut() {
            dialog.local_contact = self.caller.local.contact_uri();
        }
        match self.phase {
            Phase::Connected => self.resume_connected(myself),
            Phase::Offering | Phase::Queued => {
                if self.phase == Phase::Offering {
                    self.cancel_foreign_offer();
                }
                self.resuming = None;
                self.sip(Command::Adopt {
                    invite: self.caller.invite.clone(),
                    from: self.caller.peer,
                    owner: myself.clone(),
                });
                self.ctx
                    .media
                    .play(caller_ep.id, Arc::clone(&self.ctx.music), true);
                let queue = self.record.queue.clone().unwrap_or_default();
                let since = self.record.queued_ms.unwrap_or(self.record.arrived_ms);
                self.enqueue(myself, queue, since);
                metrics::counter!("failover_calls_total", "outcome" => "requeued").increment(1);
            }
            _ => {}
        }
    }

    fn resume_connected(&mut self, myself: &ActorRef<CallMsg>) {
        let Some(caller_ep) = self.caller.endpoint.as_ref().map(|e| e.id) else {
            return;
        };
        let agent_ep = match self.ctx.media.allocate(Some(caller_ep)) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::error!(call = %self.record.id, error = %e, "no media for a taken-over call");
                return self.drop_resumed(myself);
            }
        };
        self.ctx.media_owners.insert(agent_ep.id, myself.clone());
        if let Err(e) = self.ctx.media.bridge(caller_ep, agent_ep.id) {
            tracing::error!(error = %e, "cannot bridge taken-over legs");
        }
        let mut pending = Vec::new();
        // Caller leg.
        let caller_offer = self.caller.sdp.clone();
        if let Some(sent) = reinvite(
            &self.ctx,
            myself,
            &mut self.caller.dialog,
            &self.caller.local,
            &self.caller.peer,
            caller_offer,
        ) {
            pending.push(sent);
        }
        // Agent leg.
        if let Some(leg) = self.agent.as_mut() {
            if let Some(target) = leg.media {
                target.apply(&self.ctx.media, agent_ep.id);
            }
            let offer = agent_sdp(&agent_ep, leg.sdp_session, 2);
            if let Some(dialog) = leg.dialog.as_mut() {
                dialog.local_contact = leg.local.contact_uri();
            }
            leg.endpoint = Some(agent_ep);
            if let Some(sent) = reinvite(
                &self.ctx,
                myself,
                &mut leg.dialog,
                &leg.local,
                &leg.peer,
                offer,
            ) {
                pending.push(sent);
            }
        }
        if pending.len() < 2 {
            tracing::warn!(call = %self.record.id, "a taken-over leg has no dialog to re-INVITE");
            return self.drop_resumed(myself);
        }
        if let Some(resuming) = self.resuming.as_mut() {
            resuming.pending = pending;
        }
        if self.record.recording.is_some() {
            self.continue_recording();
        }
    }

    /// Records the rest of the call in a new file next to the first, named in the record.
    fn continue_recording(&mut self) {
        let (Some(caller), Some(agent)) = (
            self.caller.endpoint.as_ref(),
            self.agent.as_ref().and_then(|a| a.endpoint.as_ref()),
        ) else {
            return;
        };
        let Some(failover) = self.record.failover.as_mut() else {
            return;
        };
        let segment = failover.recording_segments.len() + 2;
        let path = self
            .ctx
            .recordings_dir
            .join(utc_date(unix_ms()))
            .join(format!("{}-{segment}.wav", self.record.id));
        match self.ctx.media.record(caller.id, agent.id, &path) {
            Ok(()) => failover.recording_segments.push(path.display().to_string()),
            Err(e) => {
                metrics::counter!("recording_failures_total").increment(1);
                tracing::error!(call = %self.record.id, error = %e, "recording not continued");
            }
        }
    }

    /// CANCELs the INVITE the failed node sent the agent: the same request line and branch
    /// (RFC 3261 §9.1), sent once from here; its answers go to the failed node's Via.
    fn cancel_foreign_offer(&mut self) {
        let Some(leg) = self.agent.take() else {
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
        self.sip(Command::SendStateless {
            request: cancel,
            to: leg.peer,
        });
        self.report(
            &leg.queue,
            &leg.agent_id,
            leg.offered_ms,
            OfferOutcome::Failed,
        );
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
        myself: &ActorRef<CallMsg>,
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
            self.drop_resumed(myself);
            return true;
        }
        let is_caller = call_id == self.record.caller_call_id;
        let (dialog, local, peer, endpoint) = if is_caller {
            (
                self.caller.dialog.as_mut(),
                self.caller.local,
                self.caller.peer,
                self.caller.endpoint.as_ref().map(|e| e.id),
            )
        } else {
            let Some(leg) = self.agent.as_mut() else {
                return true;
            };
            (
                leg.dialog.as_mut(),
                leg.local,
                leg.peer,
                leg.endpoint.as_ref().map(|e| e.id),
            )
        };
        let Some(dialog) = dialog else {
            return true;
        };
        if let Err(e) = dialog.on_response(Method::Invite, response) {
            tracing::debug!(error = %e, "re-INVITE answer not applied to the dialog");
        }
        match dialog.create_ack(cseq, local.via(&transaction::new_branch()), Vec::new()) {
            Ok(ack) => {
                let to = target_peer(dialog, &peer);
                self.ctx.sip.send(Command::AckFor2xx { ack, to });
            }
            Err(e) => tracing::warn!(error = %e, "cannot build ACK"),
        }
        let answer = sdp::parse(&response.body)
            .and_then(|a| sdp::negotiate(&a, &SUPPORTED_CODECS).map(|n| (a, n)));
        if let (Ok((answer, negotiated)), Some(ep)) = (answer, endpoint) {
            let target = MediaTarget::new(
                std::net::SocketAddr::new(answer.connection, answer.port),
                &negotiated,
            );
            target.apply(&self.ctx.media, ep);
            if is_caller {
                self.caller.media = Some(target);
            } else if let Some(leg) = self.agent.as_mut() {
                leg.media = Some(target);
            }
        }
        if self.resuming.as_ref().is_some_and(|r| r.pending.is_empty()) {
            self.resuming = None;
            metrics::counter!("failover_calls_total", "outcome" => "resumed").increment(1);
            tracing::info!(call = %self.record.id, "taken-over call resumed on this node");
        }
        true
    }

    /// A re-INVITE of the take-over got no answer at all; false for any other request.
    pub(super) fn on_resume_failed(&mut self, myself: &ActorRef<CallMsg>, branch: &str) -> bool {
        let ours = self
            .resuming
            .as_ref()
            .is_some_and(|r| r.pending.iter().any(|(_, _, b)| b == branch));
        if ours {
            tracing::warn!(call = %self.record.id, "a leg never answered the take-over re-INVITE");
            self.drop_resumed(myself);
        }
        ours
    }

    /// Ends a call that could not be taken over: BYE both legs, recorded as dropped.
    fn drop_resumed(&mut self, myself: &ActorRef<CallMsg>) {
        self.resuming = None;
        metrics::counter!("failover_calls_total", "outcome" => "dropped").increment(1);
        if let Some(failover) = self.record.failover.as_mut() {
            failover.outcome = FailoverOutcome::Dropped;
        }
        self.hang_up_agent();
        send_bye(&self.ctx, &mut self.caller.dialog, &self.caller.local, None);
        let disposition = if self.record.answered_ms.is_some() {
            Disposition::Answered
        } else {
            Disposition::Failed
        };
        self.finish(myself, HangupBy::System, disposition);
    }

    /// Stops without SIP or record: the standby took the call while this node was cut off.
    pub(super) fn relinquish(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        tracing::info!(call = %self.record.id, "letting go of a call its standby took over");
        self.phase = Phase::Done;
        self.replication.standbys.clear();
        self.release_all();
        self.strays.clear();
    }

    /// Gives the call to its standby (this node drains) and lets go of it after a linger
    /// during which media still flows through here.
    pub(super) fn hand_over(&mut self, myself: &ActorRef<CallMsg>) {
        let Some(phase) = self.replica_phase() else {
            return;
        };
        let Some(failover) = self.ctx.failover.clone() else {
            return;
        };
        self.replication.standbys = failover.standbys_for(&self.record.id);
        let Some(&standby) = self.replication.standbys.first() else {
            tracing::warn!(call = %self.record.id, "no standby to hand the call to");
            return;
        };
        self.replication.version += 1;
        let Some(replica) = self.replica(phase) else {
            return;
        };
        failover.hand_over(standby, &replica);
        if let Some(ep) = self.caller.endpoint.as_ref() {
            self.ctx.media.stop_playback(ep.id);
        }
        self.phase = Phase::HandedOver;
        self.replication.standbys.clear();
        myself.send_after(HANDOVER_LINGER, || CallMsg::Relinquish);
    }
}

/// Sends a target-refresh re-INVITE with our new Contact and `offer` in `dialog`, its CSeq
/// above anything the previous owner may have used. Returns (Call-ID, CSeq, branch).
fn reinvite(
    ctx: &NodeContext,
    myself: &ActorRef<CallMsg>,
    dialog: &mut Option<Dialog>,
    local: &Local,
    peer: &Peer,
    offer: String,
) -> Option<(String, u32, String)> {
    let dialog = dialog.as_mut()?;
    dialog.set_local_cseq_floor(dialog.local_cseq.saturating_add(CSEQ_GAP));
    let branch = transaction::new_branch();
    let mut request = dialog
        .create_request(Method::Invite, local.via(&branch), offer.into_bytes())
        .map_err(|e| tracing::warn!(error = %e, "cannot build the take-over re-INVITE"))
        .ok()?;
    request
        .headers
        .push(Header::ContentType("application/sdp".into()));
    request
        .headers
        .push(Header::Allow(crate::sip::endpoint::ALLOWED.into()));
    let to = target_peer(dialog, peer);
    ctx.sip.send(Command::SendRequest {
        request,
        to,
        owner: Some(myself.clone()),
    });
    Some((dialog.call_id.clone(), dialog.local_cseq, branch))
}

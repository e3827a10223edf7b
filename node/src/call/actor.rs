//! The call actor: a thin shell around [`CallCore`]. It turns messages into the core's inputs,
//! answers the core's questions from the node ([`NodeEnv`]) and carries out its effects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchyard_cluster::state::NodeId;
use switchyard_media::{Codec, Endpoint, EndpointId, EndpointStats, MonitorMode as MixMode};
use switchyard_sip::rsip;
use switchyard_sip::transaction::{Peer, TransactionId, Transport};

use super::core::{CallCore, CallEnv, CallSettings, Effect, Input, QueueNote, RoutingFacts, Sound};
use super::legs::Local;
use super::replica::MediaTarget;
use super::{CallMsg, CallReplica};
use crate::acd::{AgentMsg, QueueMsg};
use crate::cdr::RtpStats;
use crate::config::{CallbackPolicy, DidConfig, TrunkConfig};
use crate::node::NodeContext;
use crate::remote::CallAddr;
use crate::sip::endpoint::Command;
use crate::time::{unix_ms, utc_date};
use switchyard_flows::FlowSet;

pub struct CallActor;

pub enum CallArgs {
    /// A new call: the caller's INVITE, in its server transaction.
    Invite {
        ctx: Arc<NodeContext>,
        invite: Box<rsip::Request>,
        txn: TransactionId,
        from: Peer,
    },
    /// A call of a failed or draining node, from the copy this node kept as its standby.
    Takeover {
        ctx: Arc<NodeContext>,
        replica: Box<CallReplica>,
    },
}

pub struct CallState {
    ctx: Arc<NodeContext>,
    core: CallCore,
}

impl Actor for CallActor {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallState, ActorProcessingErr> {
        let (ctx, core) = match args {
            CallArgs::Invite {
                ctx,
                invite,
                txn,
                from,
            } => {
                let env = NodeEnv::new(&ctx, &myself);
                let core = CallCore::new(&env, settings(&ctx), *invite, txn, from);
                (ctx, core)
            }
            CallArgs::Takeover { ctx, replica } => {
                let env = NodeEnv::new(&ctx, &myself);
                let core = CallCore::from_replica(&env, settings(&ctx), *replica)?;
                (ctx, core)
            }
        };
        Ok(CallState { ctx, core })
    }

    async fn post_start(
        &self,
        myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::counter!("calls_total").increment(1);
        metrics::gauge!("calls_active").increment(1.0);
        state
            .ctx
            .calls
            .insert(state.core.id().to_owned(), myself.clone());
        state.feed(&myself, Input::Start);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CallMsg>,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.calls.remove(&state.core.id().to_owned());
        metrics::gauge!("calls_active").decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        message: CallMsg,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        let input = match message {
            CallMsg::Offer {
                agent_id,
                queue,
                ring_timeout_secs,
                contacts,
                offered_ms,
            } => Input::Offer {
                agent_id,
                queue,
                ring_timeout_secs,
                contacts,
                offered_ms,
            },
            CallMsg::Overflow { queue, action } => Input::Overflow { queue, action },
            CallMsg::Requeue { queue } => Input::Requeue { queue },
            CallMsg::Announce {
                queue,
                position,
                wait_secs,
            } => Input::Announce {
                queue,
                position,
                wait_secs,
            },
            CallMsg::SipRequest { txn, request, .. } => Input::Request { txn, request },
            CallMsg::SipAck { .. } => return Ok(()),
            CallMsg::SipCancel { .. } => Input::CallerCancelled,
            CallMsg::SipResponse { response } => Input::Response(response),
            CallMsg::ClientTimeout { branch } => Input::ClientTimeout { branch },
            CallMsg::ServerTimeout { .. } => Input::ServerTimeout,
            CallMsg::Timer(timer) => Input::Timer(timer),
            CallMsg::Media(event) => Input::Media(event),
            CallMsg::Relinquish => Input::Relinquish,
            CallMsg::HandOver => Input::HandOver,
            CallMsg::CopyToStandbys => Input::Timer(super::core::Timer::CopyToStandbys),
            CallMsg::Monitor {
                supervisor,
                mode,
                reply,
            } => {
                let result = state.with_core(&myself, |core, env| {
                    core.start_monitor(env, supervisor, mode)
                });
                state.answer(reply, result);
                return Ok(());
            }
            CallMsg::SetMonitorMode { mode, reply } => {
                let result = state.with_core(&myself, |core, env| core.set_monitor_mode(env, mode));
                state.answer(reply, result);
                return Ok(());
            }
            CallMsg::Hold { hold, reply } => {
                let result = state.with_core(&myself, |core, env| core.set_hold(env, hold));
                state.answer(reply, result);
                return Ok(());
            }
            CallMsg::Snapshot(reply) => {
                let _ = reply.send(state.core.snapshot());
                return Ok(());
            }
        };
        state.feed(&myself, input);
        Ok(())
    }
}

fn settings(ctx: &NodeContext) -> CallSettings {
    CallSettings {
        node_name: ctx.config.node.id.clone(),
        user_agent: ctx.config.sip.user_agent.clone(),
        replicated: ctx.failover.is_some(),
    }
}

impl CallState {
    fn feed(&mut self, myself: &ActorRef<CallMsg>, input: Input) {
        self.with_core(myself, |core, env| core.handle(env, input));
    }

    /// Runs `f` on the core, carries out what it left to do, and stops the actor once the
    /// call is over.
    fn with_core<T>(
        &mut self,
        myself: &ActorRef<CallMsg>,
        f: impl FnOnce(&mut CallCore, &mut dyn CallEnv) -> T,
    ) -> T {
        let mut env = NodeEnv::new(&self.ctx, myself);
        let result = f(&mut self.core, &mut env);
        for effect in self.core.take_effects() {
            self.apply(myself, effect);
        }
        if self.core.is_finished() {
            myself.stop(None);
        }
        result
    }

    /// Answers an API request with the call as it now is; the requester may have given up.
    fn answer(
        &self,
        reply: RpcReplyPort<Result<super::CallSnapshot, String>>,
        result: Result<(), String>,
    ) {
        let _ = reply.send(result.map(|()| self.core.snapshot()));
    }

    fn apply(&self, myself: &ActorRef<CallMsg>, effect: Effect) {
        let ctx = &self.ctx;
        let sip = |command| ctx.sip.send(command);
        match effect {
            Effect::Send { request, to, owned } => sip(Command::SendRequest {
                request,
                to,
                owner: owned.then(|| myself.clone()),
            }),
            Effect::Respond { txn, response } => sip(Command::Respond { txn, response }),
            Effect::Ack { ack, to } => sip(Command::AckFor2xx { ack, to }),
            Effect::Cancel { invite_branch } => sip(Command::Cancel { invite_branch }),
            Effect::Release { sip_call_id } => sip(Command::Release { sip_call_id }),
            Effect::Adopt { invite, from } => sip(Command::Adopt {
                invite,
                from,
                owner: myself.clone(),
            }),
            Effect::SendStateless { request, to } => {
                sip(Command::SendStateless { request, to });
            }
            Effect::ToQueue { queue, note } => self.tell_queue(&queue, note),
            Effect::AgentFree { agent_id } => {
                if let Some(agent) = ctx.agents.get(&agent_id) {
                    let _ = agent.cast(AgentMsg::CallEnded {
                        call_id: self.core.id().to_owned(),
                    });
                }
            }
            Effect::After { delay, timer } => {
                myself.send_after(delay, move || CallMsg::Timer(timer));
            }
            Effect::WriteRecord(record) => {
                if let Err(e) = ctx.cdrs.submit(*record) {
                    tracing::error!(call = %self.core.id(), error = %e, "call record not written");
                }
            }
            Effect::CopyTo { standby, replica } => {
                if let Some(failover) = &ctx.failover {
                    failover.send_call(standby, &replica);
                }
            }
            Effect::Forget { standby } => {
                if let Some(failover) = &ctx.failover {
                    failover.call_ended(standby, self.core.id());
                }
            }
            Effect::HandOverTo { standby, replica } => {
                if let Some(failover) = &ctx.failover {
                    failover.hand_over(standby, &replica);
                }
            }
        }
    }

    fn tell_queue(&self, queue: &str, note: QueueNote) {
        let Some(queue_ref) = self.ctx.queues.get(&queue.to_owned()) else {
            tracing::warn!(call = %self.core.id(), %queue, "no such queue; message dropped");
            return;
        };
        let call = CallAddr {
            node: self.ctx.node_id,
            call_id: self.core.id().to_owned(),
        };
        let msg = match note {
            QueueNote::Enqueue {
                priority,
                since_ms,
                preferred,
            } => QueueMsg::Enqueue {
                call,
                priority,
                since_ms,
                preferred,
            },
            QueueNote::OfferOutcome { agent_id, outcome } => QueueMsg::OfferOutcome {
                call,
                agent_id,
                outcome,
            },
            QueueNote::Abandon => QueueMsg::Abandon {
                call_id: call.call_id,
            },
        };
        if queue_ref.cast(msg).is_err() {
            tracing::warn!(call = %self.core.id(), %queue, "queue gone; message dropped");
        }
    }
}

/// The node as the call core sees it.
struct NodeEnv<'a> {
    ctx: &'a NodeContext,
    myself: &'a ActorRef<CallMsg>,
}

impl<'a> NodeEnv<'a> {
    fn new(ctx: &'a NodeContext, myself: &'a ActorRef<CallMsg>) -> Self {
        Self { ctx, myself }
    }
}

impl CallEnv for NodeEnv<'_> {
    fn now_ms(&self) -> u64 {
        unix_ms()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }

    fn local(&self, transport: Transport) -> Local {
        self.ctx.local(transport)
    }

    fn did(&self, number: &str) -> Option<DidConfig> {
        self.ctx.did(number).cloned()
    }

    fn flows(&self) -> Arc<FlowSet> {
        self.ctx.flows.current()
    }

    fn agents_logged_in(&self, queue: &str) -> u32 {
        self.ctx
            .queue_board
            .get(queue)
            .map_or(0, |f| f.logged_in_agents)
    }

    fn estimated_wait_secs(&self, queue: &str) -> u64 {
        // No estimate yet (a queue that has not answered twice) counts as no wait.
        self.ctx
            .queue_board
            .get(queue)
            .and_then(|f| f.estimated_wait_secs)
            .unwrap_or(0)
    }

    fn queue_exists(&self, queue: &str) -> bool {
        self.ctx.queues.get(&queue.to_owned()).is_some()
    }

    fn routing_facts(&self, queue: &str, agent_id: &str, waited_ms: u64) -> RoutingFacts {
        let skills = self.ctx.config.queue(queue).map(|q| {
            switchyard_routing::requirement_at(&q.routing, waited_ms)
                .skills
                .iter()
                .map(|s| (s.name.clone(), s.level))
                .collect()
        });
        RoutingFacts {
            pool: self
                .ctx
                .agent_pools
                .get(agent_id)
                .filter(|pool| !pool.is_empty())
                .cloned(),
            skills: skills.unwrap_or_default(),
        }
    }

    fn callback_policy(&self, queue: &str) -> Option<CallbackPolicy> {
        self.ctx
            .config
            .queue(queue)
            .and_then(|q| q.callback.clone())
    }

    fn trunk(&self, name: Option<&str>) -> Option<TrunkConfig> {
        match name {
            Some(name) => self.ctx.config.trunk(name).cloned(),
            None => match self.ctx.config.trunks.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            },
        }
    }

    fn survey_flow(&self, queue: &str) -> Option<String> {
        self.ctx.config.queue(queue).and_then(|q| q.survey.clone())
    }

    fn queue_records(&self, queue: &str) -> bool {
        self.ctx.config.queue(queue).is_some_and(|q| q.record)
    }

    fn binding(&self, extension: &str) -> Option<(rsip::Uri, Peer)> {
        let registrar = self.ctx.registrar.lock().unwrap_or_else(|e| e.into_inner());
        let binding = registrar
            .contacts(extension, unix_ms())
            .into_iter()
            .next()?;
        Some((binding.uri, binding.source))
    }

    fn recording_path(&self, call_id: &str, segment: Option<usize>) -> PathBuf {
        let name = match segment {
            Some(n) => format!("{call_id}-{n}.wav"),
            None => format!("{call_id}.wav"),
        };
        self.ctx.recordings_dir.join(utc_date(unix_ms())).join(name)
    }

    fn goodbye_duration(&self) -> Duration {
        // Prompts are 8 kHz.
        Duration::from_millis(self.ctx.goodbye.samples() as u64 / 8)
    }

    fn standbys(&self, call_id: &str) -> Option<Vec<NodeId>> {
        self.ctx.failover.as_ref().map(|f| f.standbys_for(call_id))
    }

    fn may_act(&self) -> bool {
        self.ctx.failover.as_ref().is_none_or(|f| f.may_act())
    }

    fn node_id(&self) -> NodeId {
        self.ctx.node_id
    }

    fn allocate(&mut self, near: Option<EndpointId>) -> Result<Endpoint, String> {
        let endpoint = self.ctx.media.allocate(near).map_err(|e| e.to_string())?;
        self.ctx
            .media_owners
            .insert(endpoint.id, self.myself.clone());
        Ok(endpoint)
    }

    fn release(&mut self, ep: EndpointId) {
        self.ctx.media.release(ep);
        self.ctx.media_owners.remove(&ep);
    }

    fn set_remote(&mut self, ep: EndpointId, target: &MediaTarget) {
        let codec = if target.alaw {
            Codec::Pcma
        } else {
            Codec::Pcmu
        };
        self.ctx.media.set_remote(
            ep,
            target.addr,
            codec,
            target.payload_type,
            target.telephone_event_pt,
        );
    }

    fn play(&mut self, ep: EndpointId, sound: Sound, looped: bool) {
        let prompt = match sound {
            Sound::MusicOnHold => Arc::clone(&self.ctx.music),
            Sound::Goodbye => Arc::clone(&self.ctx.goodbye),
            Sound::Silence => Arc::clone(&self.ctx.silence),
        };
        self.ctx.media.play(ep, prompt, looped);
    }

    fn play_prompts(
        &mut self,
        ep: EndpointId,
        prompts: &[String],
        barge_in: bool,
    ) -> Result<(), String> {
        let prompts = prompts
            .iter()
            .map(|name| {
                self.ctx
                    .flows
                    .prompts()
                    .get(name)
                    .ok_or_else(|| format!("prompt {name:?} is not loaded"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ctx.media.play_sequence(ep, prompts, barge_in);
        Ok(())
    }

    fn stop_playback(&mut self, ep: EndpointId) {
        self.ctx.media.stop_playback(ep);
    }

    fn detect_inband_dtmf(&mut self, ep: EndpointId) {
        self.ctx.media.detect_inband_dtmf(ep, true);
    }

    fn bridge(&mut self, a: EndpointId, b: EndpointId) -> Result<(), String> {
        self.ctx.media.bridge(a, b).map_err(|e| e.to_string())
    }

    fn record(&mut self, a: EndpointId, b: EndpointId, path: &Path) -> Result<(), String> {
        self.ctx.media.record(a, b, path).map_err(|e| e.to_string())
    }

    fn monitor(
        &mut self,
        supervisor: EndpointId,
        caller: EndpointId,
        agent: EndpointId,
        mode: MixMode,
    ) -> Result<(), String> {
        self.ctx
            .media
            .monitor(supervisor, caller, agent, mode)
            .map_err(|e| e.to_string())
    }

    fn set_monitor_mode(&mut self, supervisor: EndpointId, mode: MixMode) {
        self.ctx.media.set_monitor_mode(supervisor, mode);
    }

    fn stop_monitor(&mut self, supervisor: EndpointId) {
        self.ctx.media.stop_monitor(supervisor);
    }

    fn rtp_stats(&mut self, ep: EndpointId) -> Option<RtpStats> {
        match self.ctx.media.endpoint_stats(ep) {
            Ok(stats) => Some(rtp_stats(&stats)),
            Err(e) => {
                tracing::debug!(error = %e, "no RTP statistics for a leg");
                None
            }
        }
    }
}

fn rtp_stats(stats: &EndpointStats) -> RtpStats {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    RtpStats {
        packets_received: stats.packets_received,
        packets_lost: stats.packets_lost,
        jitter_us: micros(stats.jitter),
        packets_sent: stats.packets_sent,
        remote_packets_lost: stats.remote.map(|r| i64::from(r.packets_lost)),
        round_trip_us: stats.remote.and_then(|r| r.round_trip).map(micros),
    }
}

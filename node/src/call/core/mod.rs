//! The call as a state machine with no I/O (ADR 0016).
//!
//! A [`CallCore`] is plain data: the caller's [`Leg`], the legs the call created (agents rung,
//! a supervisor, legs cancelled but still able to answer), the call record and where the call
//! stands ([`Phase`]). The actor feeds it [`Input`]s (SIP, media, ACD, timers) and carries out
//! the [`Effect`]s it leaves (SIP to send, queue and agent messages, timers, the record, copies
//! to standbys). What it must ask of the world while deciding (the clock, the registrar, the
//! configuration, media endpoints) comes through [`CallEnv`], which the tests replace.
//!
//! ```text
//! caller INVITE -> route by DID -> 183 + music on hold -> queue
//!   queue Offer -> INVITE agent contact -> (ring timeout: CANCEL, NoAnswer)
//!   agent 200 -> ACK agent, bridge media, 200 caller -> Connected
//! BYE from either side -> BYE the other -> record written
//! caller CANCEL while waiting -> 487, abandoned
//! API monitor -> INVITE supervisor contact -> 200: ACK, mix supervisor in (listen/whisper/barge)
//! ```
//!
//! An agent leg that was cancelled but may still answer (the 200/CANCEL race of RFC 3261
//! §9.1) stays as a [`LegState::Cancelled`] leg until its final response, so a late 200 is
//! ACKed and hung up rather than leaving the agent's phone off-hook.

mod callback;
mod dialogs;
mod failover;
mod hold;
mod ivr;
mod leg;
mod monitor;
mod setup;
#[cfg(test)]
mod tests;
mod transfer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_cluster::state::NodeId;
use switchyard_flows::{FlowEvent, FlowRun, FlowSet};
use switchyard_media::{Endpoint, EndpointId, MediaEvent, MonitorMode as MixMode};
use switchyard_routing::PreferredAgent;
use switchyard_sip::rsip::{self, Request, Response};
use switchyard_sip::transaction::{Peer, TransactionId, Transport};

pub use callback::Callback;
pub use failover::CallSettings;
pub use leg::{Leg, LegState, Role};

use super::legs::Local;
use super::replica::MediaTarget;
use super::{CallReplica, CallSnapshot, MonitorSnapshot};
use crate::acd::OfferOutcome;
use crate::cdr::{CallRecord, RtpStats};
use crate::config::{CallbackPolicy, DidConfig, Overflow, TrunkConfig};

/// Payload type we offer for RFC 4733 telephone-events towards agents.
const TELEPHONE_EVENT_PT: u8 = 101;
/// How long a finished call waits for cancelled legs to send their final response.
const STRAY_LEG_GRACE: Duration = Duration::from_secs(32);
/// Keys kept in a call record, so a stuck or hostile phone cannot grow it without limit.
const MAX_RECORDED_DIGITS: usize = 64;

/// What the core asks of the world while it decides. The node implements it over its context
/// and media workers; the tests with a fake that hands out endpoints and logs media commands.
pub trait CallEnv {
    /// Unix milliseconds, for records and the queue's order.
    fn now_ms(&self) -> u64;
    /// A monotonic instant, for latency figures.
    fn instant(&self) -> Instant;
    /// This node's SIP address for `transport`.
    fn local(&self, transport: Transport) -> Local;
    fn did(&self, number: &str) -> Option<DidConfig>;
    /// The IVR flows, schedules and number lists as they are now.
    fn flows(&self) -> Arc<FlowSet>;
    /// Agents logged in for `queue`, for flows that branch on it. The figures come from the
    /// queues homed on this node; a queue homed on another node reads as unstaffed.
    fn agents_logged_in(&self, queue: &str) -> u32;
    /// The queue's estimated wait for a caller joining now.
    fn estimated_wait_secs(&self, queue: &str) -> u64;
    /// Whether queue `queue` exists anywhere in the cluster.
    fn queue_exists(&self, queue: &str) -> bool;
    /// What routing meant at an answer: the agent's pool, and the skills the queue's step in
    /// force required after `waited_ms` in the queue.
    fn routing_facts(&self, queue: &str, agent_id: &str, waited_ms: u64) -> RoutingFacts;
    /// The queue's callback offer, if it makes one.
    fn callback_policy(&self, queue: &str) -> Option<CallbackPolicy>;
    /// The trunk `name`, or with `None` the only trunk there is.
    fn trunk(&self, name: Option<&str>) -> Option<TrunkConfig>;
    /// The flow a caller of `queue` enters when the agent hangs up first (a satisfaction
    /// survey), if the queue has one.
    fn survey_flow(&self, queue: &str) -> Option<String>;
    /// Whether calls answered from `queue` are recorded.
    fn queue_records(&self, queue: &str) -> bool;
    /// The binding of `extension` in this node's registrar: its contact, and where its
    /// REGISTER came from (a phone registered over TCP is reached over that connection).
    fn binding(&self, extension: &str) -> Option<(rsip::Uri, Peer)>;
    /// Where this call's recordings go.
    fn recording_path(&self, call_id: &str, segment: Option<usize>) -> PathBuf;
    /// How long the goodbye prompt plays.
    fn goodbye_duration(&self) -> Duration;
    /// The nodes to copy this call to, in take-over order; `None` on a node without a cluster.
    fn standbys(&self, call_id: &str) -> Option<Vec<NodeId>>;
    /// Whether this node may send requests of its own for its calls (see `crate::failover`).
    fn may_act(&self) -> bool;
    /// The node's cluster id.
    fn node_id(&self) -> NodeId;

    /// A media endpoint on the worker of `near` (legs of one call must share a worker to be
    /// bridged), or on the least loaded one. Its events come to this call.
    fn allocate(&mut self, near: Option<EndpointId>) -> Result<Endpoint, String>;
    fn release(&mut self, ep: EndpointId);
    fn set_remote(&mut self, ep: EndpointId, target: &MediaTarget);
    fn play(&mut self, ep: EndpointId, sound: Sound, looped: bool);
    /// Plays IVR prompts (`<language>/<name>`) back to back, once; with `barge_in` a key press
    /// stops them. Fails, playing nothing, when a prompt is not loaded.
    fn play_prompts(
        &mut self,
        ep: EndpointId,
        prompts: &[String],
        barge_in: bool,
    ) -> Result<(), String>;
    fn stop_playback(&mut self, ep: EndpointId);
    fn detect_inband_dtmf(&mut self, ep: EndpointId);
    fn bridge(&mut self, a: EndpointId, b: EndpointId) -> Result<(), String>;
    fn record(
        &mut self,
        a: EndpointId,
        b: EndpointId,
        path: &std::path::Path,
    ) -> Result<(), String>;
    fn monitor(
        &mut self,
        supervisor: EndpointId,
        caller: EndpointId,
        agent: EndpointId,
        mode: MixMode,
    ) -> Result<(), String>;
    fn set_monitor_mode(&mut self, supervisor: EndpointId, mode: MixMode);
    fn stop_monitor(&mut self, supervisor: EndpointId);
    fn rtp_stats(&mut self, ep: EndpointId) -> Option<RtpStats>;
}

/// What routing meant for an answered call, for its record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingFacts {
    pub pool: Option<String>,
    pub skills: std::collections::BTreeMap<String, u8>,
}

/// Sounds the call plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sound {
    MusicOnHold,
    Goodbye,
    /// Keeps relayed audio from a party (a prompt playing replaces the relay).
    Silence,
}

/// What happened to the call.
#[derive(Debug)]
pub enum Input {
    /// The actor started: route a new call, or continue one taken over from its copy.
    Start,
    /// The queue offers the call to `agent_id` (see `CallMsg::Offer`).
    Offer {
        agent_id: String,
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
    /// The queue tells the waiting caller its place and estimated wait.
    Announce {
        queue: String,
        position: u32,
        wait_secs: Option<u64>,
    },
    /// A request on one of the call's legs, in a server transaction.
    Request {
        txn: TransactionId,
        request: Request,
    },
    /// The caller cancelled its INVITE (the endpoint already answered the CANCEL).
    CallerCancelled,
    Response(Response),
    /// A request the call sent got no final response, or could not be sent.
    ClientTimeout {
        branch: String,
    },
    /// A 2xx the call sent was never ACKed.
    ServerTimeout,
    Timer(Timer),
    Media(MediaEvent),
    /// This node was declared failed while cut off: stop without a word on SIP or a record.
    Relinquish,
    /// This node is draining: give the call to its standby.
    HandOver,
}

/// Timers the call sets itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The offer made as attempt `attempt` rang too long.
    RingTimeout { attempt: u32 },
    /// The goodbye prompt should have finished by now.
    PromptDeadline,
    /// Stop waiting for cancelled legs to finish.
    Reap,
    /// Send the standbys a copy if the call changed.
    CopyToStandbys,
    /// A handed-over call has lingered long enough: let go.
    Relinquish,
    /// The flow's timer with this token (no key pressed in time).
    Flow { token: u64 },
    /// The caller did not confirm its callback number in time.
    CallbackConfirm,
    /// A callback waits this long between a failed attempt and its next turn.
    CallbackRetry,
    /// The customer's phone rang too long (attempt number).
    CallbackRing { attempt: u32 },
    /// The number a flow transferred to rang too long.
    TransferRing,
}

/// What the queue hears from the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueNote {
    Enqueue {
        priority: u8,
        since_ms: u64,
        /// The agent a flow asked for, and until when only they may take the call.
        preferred: Option<PreferredAgent>,
    },
    OfferOutcome {
        agent_id: String,
        outcome: OfferOutcome,
    },
    Abandon,
}

/// What the call asks of the world.
#[derive(Debug)]
pub enum Effect {
    /// Send `request` in a new client transaction; with `owned`, its responses and timeout
    /// come back to this call.
    Send {
        request: Request,
        to: Peer,
        owned: bool,
    },
    Respond {
        txn: TransactionId,
        response: Response,
    },
    Ack {
        ack: Request,
        to: Peer,
    },
    Cancel {
        invite_branch: String,
    },
    /// Stop routing this SIP Call-ID to the call.
    Release {
        sip_call_id: String,
    },
    /// Take over the server transaction of the caller's INVITE, received by another node.
    Adopt {
        invite: Request,
        from: Peer,
    },
    SendStateless {
        request: Request,
        to: Peer,
    },
    ToQueue {
        queue: String,
        note: QueueNote,
    },
    /// The connected call with `agent_id` ended: it wraps up.
    AgentFree {
        agent_id: String,
    },
    After {
        delay: Duration,
        timer: Timer,
    },
    WriteRecord(Box<CallRecord>),
    CopyTo {
        standby: NodeId,
        replica: Arc<CallReplica>,
    },
    Forget {
        standby: NodeId,
    },
    HandOverTo {
        standby: NodeId,
        replica: Box<CallReplica>,
    },
}

/// How far the call has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Checking the INVITE; no response beyond 100 yet.
    Routing,
    /// In an IVR flow: hearing prompts, pressing keys.
    Ivr,
    /// Waiting in a queue, hearing music.
    Queued,
    /// An agent's phone is ringing.
    Offering,
    /// A callback: the agent answered and the customer's phone is ringing.
    Dialling,
    /// A flow transferred the caller: the outside number is ringing.
    Transferring,
    Connected,
    /// Playing the goodbye prompt before refusing the call.
    Goodbye,
    /// Given to the standby of a draining node; relaying media until the legs have moved.
    HandedOver,
    /// Over; lingering only for cancelled legs.
    Done,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Routing => "routing",
            Phase::Dialling => "dialling",
            Phase::Transferring => "transferring",
            Phase::Ivr => "ivr",
            Phase::Queued => "queued",
            Phase::Offering => "offering",
            Phase::Connected => "connected",
            Phase::Goodbye => "goodbye",
            Phase::HandedOver => "handed-over",
            Phase::Done => "done",
        }
    }
}

/// One call, as plain data.
pub struct CallCore {
    /// The call's identity (directories, queues, copies): its first record's id. A callback
    /// keeps it while writing records of its own.
    id: String,
    phase: Phase,
    caller: Leg,
    /// Legs the call created: agents rung, the supervisor, cancelled legs still pending.
    legs: Vec<Leg>,
    /// Agent legs rung so far: numbers the SIP Call-IDs of the next ones.
    attempts: u32,
    priority: u8,
    /// The caller's way through its IVR flow, while in one (and after, for the record).
    flow: Option<FlowRun>,
    /// The agent the flow asked for ("account manager first"), kept across overflows.
    preferred: Option<PreferredAgent>,
    /// A callback asked for, or being carried out (see `callback`).
    callback: Option<callback::Callback>,
    /// When the call entered its current queue (Unix ms): routing steps count from there.
    entered_queue_ms: u64,
    record: CallRecord,
    /// The hold in progress, if any.
    hold: Option<super::replica::Hold>,
    /// When the INVITE reached the call, for the set-up latency histogram (INVITE to 200).
    invited_at: Instant,
    replication: failover::Replication,
    /// Re-INVITEs of a take-over still waiting for their answers.
    resuming: Option<failover::Resuming>,
    /// Our User-Agent on the legs we make.
    user_agent: String,
    effects: Vec<Effect>,
}

impl CallCore {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Over, with no cancelled leg left to wait for: the actor stops.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done && self.legs.is_empty()
    }

    /// The effects left by the inputs so far, oldest first.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn handle(&mut self, env: &mut dyn CallEnv, input: Input) {
        match input {
            Input::Start => {
                if self.phase == Phase::Routing {
                    self.route(env);
                } else {
                    self.resume(env);
                }
            }
            Input::Offer {
                agent_id,
                queue,
                ring_timeout_secs,
                contacts,
                offered_ms,
            } => self.offer(
                env,
                agent_id,
                queue,
                ring_timeout_secs,
                &contacts,
                offered_ms,
            ),
            Input::Overflow { queue, action } => self.overflow(env, queue, action),
            Input::Requeue { queue } => self.requeue(env, queue),
            Input::Announce {
                queue,
                position,
                wait_secs,
            } => self.announce(env, &queue, position, wait_secs),
            Input::Request { txn, request } => self.on_request(env, txn, request),
            Input::CallerCancelled => self.on_caller_cancel(env),
            Input::Response(response) => self.on_response(env, response),
            Input::ClientTimeout { branch } => self.on_client_timeout(env, &branch),
            Input::ServerTimeout => {
                // Our 200 to the caller was never ACKed: the caller is gone.
                if self.phase == Phase::Connected && env.may_act() {
                    self.hang_up_answerer();
                    self.finish(
                        env,
                        crate::cdr::HangupBy::System,
                        crate::cdr::Disposition::Answered,
                    );
                }
            }
            Input::Timer(timer) => self.on_timer(env, timer),
            Input::Media(event) => self.on_media(env, event),
            Input::Relinquish => self.relinquish(env),
            Input::HandOver => self.hand_over(env),
        }
        if !self.is_finished() {
            self.replicate();
        }
    }

    fn on_timer(&mut self, env: &mut dyn CallEnv, timer: Timer) {
        match timer {
            Timer::RingTimeout { attempt } => self.on_ring_timeout(env, attempt),
            Timer::PromptDeadline => {
                if self.phase == Phase::Goodbye {
                    self.refuse(
                        env,
                        rsip::StatusCode::TemporarilyUnavailable,
                        crate::cdr::Disposition::Overflowed,
                    );
                }
            }
            Timer::Reap => self.legs.clear(),
            Timer::CopyToStandbys => self.copy_to_standbys(env),
            Timer::Relinquish => self.relinquish(env),
            Timer::Flow { token } => self.flow_event(env, FlowEvent::Timer(token)),
            Timer::CallbackConfirm => self.callback_not_confirmed(env),
            Timer::CallbackRetry => self.callback_retry(env),
            Timer::CallbackRing { attempt } => self.customer_ring_timeout(env, attempt),
            Timer::TransferRing => self.transfer_ring_timeout(env),
        }
    }

    /// The live call as the API shows it.
    pub fn snapshot(&self) -> CallSnapshot {
        CallSnapshot {
            id: self.id.clone(),
            caller: self.record.caller.clone(),
            did: self.record.did.clone(),
            state: if self.is_callback() && self.phase == Phase::Queued {
                "callback"
            } else {
                self.phase.label()
            },
            queue: self.record.queue.clone(),
            agent: self.record.agent.clone(),
            arrived_ms: self.record.arrived_ms,
            answered_ms: self.record.answered_ms,
            recording: self.record.recording.clone(),
            on_hold: self.hold.is_some(),
            monitor: self.supervisor().and_then(|leg| match &leg.role {
                Role::Supervisor { extension, mode } => Some(MonitorSnapshot {
                    supervisor: extension.clone(),
                    mode: *mode,
                    answered: leg.dialog.is_some(),
                }),
                _ => None,
            }),
        }
    }

    fn emit(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// The agent leg being rung or connected.
    pub(super) fn agent(&self) -> Option<&Leg> {
        self.legs.iter().find(|l| l.is_live_agent())
    }

    pub(super) fn agent_mut(&mut self) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|l| l.is_live_agent())
    }

    /// Removes the agent leg being rung or connected from the call.
    pub(super) fn take_agent(&mut self) -> Option<Leg> {
        self.take_leg(Leg::is_live_agent)
    }

    /// The supervisor's leg, ringing or monitoring.
    pub(super) fn supervisor(&self) -> Option<&Leg> {
        self.legs.iter().find(|l| l.is_live_supervisor())
    }

    pub(super) fn supervisor_mut(&mut self) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|l| l.is_live_supervisor())
    }

    fn take_supervisor(&mut self) -> Option<Leg> {
        self.take_leg(Leg::is_live_supervisor)
    }

    fn take_leg(&mut self, is: fn(&Leg) -> bool) -> Option<Leg> {
        let i = self.legs.iter().position(is)?;
        Some(self.legs.remove(i))
    }

    fn release_endpoint(env: &mut dyn CallEnv, endpoint: Option<Endpoint>) {
        if let Some(ep) = endpoint {
            env.release(ep.id);
        }
    }
}

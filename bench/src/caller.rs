//! Simulated callers (UAC): arrivals, INVITE with an SDP offer, early media (music on hold),
//! optional DTMF, patience (CANCEL), talk, BYE, and re-INVITEs from a node taking over.
//! Hotline callers ([`crate::hotline`]) press a menu key in early media, and a survey key once
//! the agent has hung up on them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use switchyard_sip::dialog::{Dialog, new_tag};
use switchyard_sip::headers::MessageExt;
use switchyard_sip::message::{self, parse_uri};
use switchyard_sip::rsip::{Header, Method, Request, Response, StatusCode};
use switchyard_sip::sdp::{self, Codec, Direction, LocalMedia};
use switchyard_sip::transaction::{TransactionId, TuEvent, new_branch};

use crate::arrivals::Arrivals;
use crate::dist::Dist;
use crate::hotline::{self, Choice, Rules};
use crate::media::{MediaEngine, Remote};
use crate::stats::{CallRecord, Outcome, Recorder, Side as Party};
use crate::ua::{CallBook, Control, Ctx, Plan, Side, dialog_target, udp, via};

/// A target that did not answer an INVITE at all is skipped for this long.
const TARGET_HOLD_DOWN: Duration = Duration::from_secs(10);
/// An agent who should hang up but has not, this long after the planned talk time: the
/// caller ends the call itself and counts it dropped.
const BYE_GRACE: Duration = Duration::from_secs(15);
/// A surveyed caller's BYE comes after the survey (prompt, key, thanks): this much longer.
const SURVEY_GRACE: Duration = Duration::from_secs(30);
/// Hotline patience counts from the queue entry plus this, so that nobody gives up in the menu
/// because of a late key or an estimate of the silent callers' route a little short.
const QUEUE_MARGIN: Duration = Duration::from_millis(500);
/// Length of a hotline key press (real time, as RFC 4733 receivers expect).
const KEY_TONE: Duration = Duration::from_millis(100);
/// Payload type offered for telephone-events.
const TELEPHONE_EVENT_PT: u8 = 101;

pub struct CallerConfig {
    pub targets: Vec<SocketAddr>,
    /// Loopback self-test: call these agent extensions directly (targets = the agent socket).
    pub loopback_extensions: Option<Vec<String>>,
    /// (number, queue) and their weights; no queue: the hotline's flow.
    pub dids: Vec<(String, Option<String>)>,
    pub weights: Vec<f64>,
    pub talk: Dist,
    pub patience: Option<Dist>,
    pub agent_hangs_up: f64,
    pub codecs: Vec<Codec>,
    /// Digits, delay after early media, tone and gap lengths.
    pub dtmf: Option<(String, Duration, Duration, Duration)>,
    pub invite_timeout: Duration,
    /// Send the INVITE of a call whose target never answered to the next target.
    pub reroute_on_no_response: bool,
    pub max_concurrent: usize,
    pub media_ip: IpAddr,
    pub hotline: Option<Rules>,
    /// Unique per run: Call-IDs and caller users carry it, so the node's records of this run
    /// can be told apart from earlier ones.
    pub run_tag: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Arrival,
    InviteTimeout(u64),
    Patience(u64),
    Talk(u64),
    AwaitBye(u64),
    Dtmf(u64),
    MenuKey(u64),
    SurveyKey(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE sent, no final response.
    Inviting,
    /// Answered and ACKed.
    Talking,
    /// CANCEL sent (patience ran out, no response, or the run is ending).
    Cancelling,
    /// BYE sent.
    Ending,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Invite(u64),
    Cancel,
    Bye(u64),
}

struct Call {
    serial: u64,
    call_id: String,
    user: String,
    target: SocketAddr,
    did: usize,
    step: usize,
    offered_at: Instant,
    offered_at_s: f64,
    invite: Request,
    invite_txn: TransactionId,
    state: State,
    responded: bool,
    early_at: Option<Instant>,
    first_response_ms: Option<f64>,
    answered_at: Option<Instant>,
    setup_ms: Option<f64>,
    wait_ms: Option<f64>,
    answer_relay_ms: Option<f64>,
    agent: Option<String>,
    dialog: Option<Dialog>,
    leg: Option<u64>,
    media_port: u16,
    media_started: bool,
    sdp_version: u64,
    plan: Plan,
    /// Set when the call's fate is known before its SIP ends (abandon, no response, ...).
    outcome: Option<Outcome>,
    hangup_by: Option<Party>,
    dtmf_sent: bool,
    /// When the call joined its queue (its wait starts there): early media for a DID with a
    /// queue, the menu key (or the menu's timeouts) for the hotline.
    queue_entry: Option<Instant>,
    /// Counted in `queued`.
    queued: bool,
    /// Drawn at arrival; hotline patience starts at the queue entry.
    patience: Option<Duration>,
    hotline: Option<Choice>,
    /// Ended by the harness (end of run), not as planned.
    cut_short: bool,
}

pub struct Callers {
    cfg: CallerConfig,
    media: Option<Arc<MediaEngine>>,
    recorder: Arc<Mutex<Recorder>>,
    book: Arc<CallBook>,
    arrivals: Arrivals,
    rng: StdRng,
    start: Instant,
    next_arrival: Option<Instant>,
    arrivals_over: bool,
    calls: HashMap<u64, Call>,
    by_call_id: HashMap<String, u64>,
    by_txn: HashMap<TransactionId, Purpose>,
    serial: u64,
    rr: usize,
    down_until: Vec<Option<Instant>>,
    pub active: Arc<AtomicU64>,
}

impl Callers {
    pub fn new(
        cfg: CallerConfig,
        arrivals: Arrivals,
        rng: StdRng,
        start: Instant,
        media: Option<Arc<MediaEngine>>,
        recorder: Arc<Mutex<Recorder>>,
        book: Arc<CallBook>,
    ) -> Callers {
        let targets = cfg.targets.len();
        Callers {
            cfg,
            media,
            recorder,
            book,
            arrivals,
            rng,
            start,
            next_arrival: None,
            arrivals_over: false,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            by_txn: HashMap::new(),
            serial: 0,
            rr: 0,
            down_until: vec![None; targets],
            active: Arc::new(AtomicU64::new(0)),
        }
    }

    fn record<F: FnOnce(&mut Recorder)>(&self, f: F) {
        if let Ok(mut r) = self.recorder.lock() {
            f(&mut r);
        }
    }

    fn schedule_next_arrival(&mut self, ctx: &mut Ctx<Timer>) {
        match self.arrivals.next_arrival() {
            Some(t) if !self.arrivals_over => {
                let at = self.start + crate::duration::capped(t);
                self.next_arrival = Some(at);
                ctx.at(at, Timer::Arrival);
            }
            _ => {
                self.next_arrival = None;
                self.arrivals_over = true;
            }
        }
    }

    fn pick_target(&mut self, now: Instant) -> (usize, SocketAddr) {
        let n = self.cfg.targets.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            if self.down_until[i].is_none_or(|t| t <= now) {
                self.rr = i + 1;
                return (i, self.cfg.targets[i]);
            }
        }
        // Every target is held down: keep trying them in turn.
        let i = self.rr % n;
        self.rr = i + 1;
        (i, self.cfg.targets[i])
    }

    /// Starts one call arriving at `at_s` seconds into the run.
    fn launch(&mut self, ctx: &mut Ctx<Timer>, at_s: f64) {
        let step = self.arrivals.step_at(at_s);
        if self.calls.len() >= self.cfg.max_concurrent {
            self.record(|r| r.harness_limited(step));
            return;
        }
        self.serial += 1;
        let serial = self.serial;
        let (_, target) = self.pick_target(ctx.now);
        let did = self.arrivals.pick_weighted(&self.cfg.weights);
        let number = match &self.cfg.loopback_extensions {
            Some(exts) if !exts.is_empty() => exts[(serial as usize - 1) % exts.len()].clone(),
            _ => self.cfg.dids[did].0.clone(),
        };
        let tag = format!("{}-{serial}", self.cfg.run_tag);
        let call_id = format!("{tag}@switchyard-bench");
        let choice = match (&mut self.cfg.hotline, &self.cfg.dids[did].1) {
            (Some(rules), None) => Some(rules.choose(&mut self.rng, serial)),
            _ => None,
        };
        // A hotline caller is its phone number (VIP or not); the agents find the plan by it.
        let user = choice.as_ref().map_or(tag, |c| c.number.clone());
        let plan = Plan {
            talk: self.cfg.talk.sample(&mut self.rng),
            agent_hangs_up: match &choice {
                Some(c) => c.agent_hangs_up,
                None => self.rng.random::<f64>() < self.cfg.agent_hangs_up,
            },
        };
        let patience = self.cfg.patience.map(|p| p.sample(&mut self.rng));

        let added = self
            .media
            .as_ref()
            .map(|m| m.add_leg(self.cfg.media_ip, Party::Caller));
        let (leg, media_port) = match added {
            Some(added) => match added {
                Ok((id, addr)) => (Some(id), addr.port()),
                Err(_) => {
                    self.release(choice.as_ref());
                    self.record(|r| {
                        r.offered(step);
                        r.finished(&failed_record(
                            serial,
                            &call_id,
                            target,
                            at_s,
                            step,
                            "harness-socket",
                        ));
                    });
                    return;
                }
            },
            // No media: an offer nobody listens on (the discard port).
            None => (None, 9),
        };
        let codecs: Vec<(u8, Codec)> = self
            .cfg
            .codecs
            .iter()
            .map(|c| (c.static_payload_type(), *c))
            .collect();
        let offer = sdp::build(&LocalMedia {
            session_id: serial,
            version: 1,
            addr: self.cfg.media_ip,
            port: media_port,
            codecs: &codecs,
            telephone_event_pt: Some(TELEPHONE_EVENT_PT),
            direction: Direction::SendRecv,
        });
        let Some(invite) = build_invite(ctx.local, target, &number, &user, &call_id, offer) else {
            self.release(choice.as_ref());
            self.record(|r| {
                r.offered(step);
                r.finished(&failed_record(
                    serial, &call_id, target, at_s, step, "bad-uri",
                ));
            });
            if let (Some(m), Some(leg)) = (&self.media, leg) {
                m.remove_leg(leg, Box::new(|_| {}));
            }
            return;
        };
        let txn = match ctx.layer.send_request(ctx.now, invite.clone(), udp(target)) {
            Ok(txn) => txn,
            Err(_) => {
                self.release(choice.as_ref());
                self.record(|r| {
                    r.offered(step);
                    r.finished(&failed_record(
                        serial,
                        &call_id,
                        target,
                        at_s,
                        step,
                        "harness-txn",
                    ));
                });
                return;
            }
        };
        self.book.plan(&user, plan);
        let hotline = choice.is_some();
        self.by_txn.insert(txn, Purpose::Invite(serial));
        self.by_call_id.insert(call_id.clone(), serial);
        self.calls.insert(
            serial,
            Call {
                serial,
                call_id,
                user,
                target,
                did,
                step,
                offered_at: ctx.now,
                offered_at_s: at_s,
                invite,
                invite_txn: txn,
                state: State::Inviting,
                responded: false,
                early_at: None,
                first_response_ms: None,
                answered_at: None,
                setup_ms: None,
                wait_ms: None,
                answer_relay_ms: None,
                agent: None,
                dialog: None,
                leg,
                media_port,
                media_started: false,
                sdp_version: 1,
                plan,
                outcome: None,
                hangup_by: None,
                dtmf_sent: false,
                queue_entry: None,
                queued: false,
                patience,
                cut_short: false,
                hotline: choice,
            },
        );
        self.active.fetch_add(1, Ordering::Relaxed);
        self.record(|r| r.offered(step));
        ctx.after(self.cfg.invite_timeout, Timer::InviteTimeout(serial));
        if let Some(p) = patience
            && !hotline
        {
            ctx.after(p, Timer::Patience(serial));
        }
    }

    /// Frees a hotline caller's number.
    fn release(&mut self, choice: Option<&Choice>) {
        if let (Some(rules), Some(c)) = (self.cfg.hotline.as_mut(), choice) {
            rules.release(c);
        }
    }

    fn on_invite_response(&mut self, ctx: &mut Ctx<Timer>, serial: u64, response: Response) {
        let code = response.status_code.code();
        let codecs = self.cfg.codecs.clone();
        let dtmf_after = self.cfg.dtmf.as_ref().map(|d| d.1);
        let no_key_after = self.cfg.hotline.as_ref().map(|h| h.no_key_after);
        let survey_after = self.cfg.hotline.as_ref().map(|h| h.survey_key_after);
        let media = self.media.clone();
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        call.responded = true;
        let elapsed_ms = ms(ctx.now - call.offered_at);
        if code < 200 {
            // The first response with SDP means the node routed the call and queued it
            // (183 with music on hold).
            if call.early_at.is_none()
                && call.state == State::Inviting
                && let Some(remote) = remote_of(&response.body, &codecs)
            {
                call.early_at = Some(ctx.now);
                call.first_response_ms = Some(elapsed_ms);
                start_media(media.as_deref(), call, remote);
                let queued = match (&call.hotline, no_key_after) {
                    (Some(c), _) if c.key.is_some() => {
                        ctx.after(c.key_after, Timer::MenuKey(serial));
                        false
                    }
                    (Some(_), Some(route)) => {
                        // The menu's timeouts queue a silent caller.
                        let entry = ctx.now + route;
                        call.queue_entry = Some(entry);
                        if let Some(p) = call.patience {
                            ctx.at(entry + QUEUE_MARGIN + p, Timer::Patience(serial));
                        }
                        false
                    }
                    _ => {
                        call.queue_entry = Some(ctx.now);
                        call.queued = true;
                        if let Some(after) = dtmf_after {
                            ctx.after(after, Timer::Dtmf(serial));
                        }
                        true
                    }
                };
                self.record(|r| {
                    r.first_response(elapsed_ms);
                    r.queued += u64::from(queued);
                });
            }
            return;
        }
        if code >= 300 {
            let cause = if code == 487 && call.state == State::Cancelling {
                None
            } else {
                Some(Outcome::Failed(format!("sip-{code}")))
            };
            if let Some(c) = cause
                && call.outcome.is_none()
            {
                call.outcome = Some(c);
            }
            self.finish(ctx, serial);
            return;
        }
        // 2xx: confirm the dialog and ACK, even when we meanwhile decided to give up (the
        // CANCEL/200 race): the node counts such a call answered, so the harness does too,
        // and hangs up at once.
        let dialog = Dialog::new_uac(&call.invite, &response);
        let Ok(dialog) = dialog else {
            call.outcome = Some(Outcome::Failed("bad-2xx".into()));
            self.finish(ctx, serial);
            return;
        };
        // A standby that took a queued call over answers from its own address: the ACK and
        // everything after it go to the Contact.
        call.target = dialog_target(&dialog).unwrap_or(call.target);
        if let Ok(ack) = dialog.create_ack(1, via(ctx.local, &new_branch()), Vec::new()) {
            ctx.layer.send_ack_for_2xx(ack, udp(call.target));
        }
        if let Some(remote) = remote_of(&response.body, &codecs) {
            start_media(media.as_deref(), call, remote);
        }
        let first_answer = call.answered_at.is_none();
        call.answered_at = Some(ctx.now);
        call.setup_ms = Some(elapsed_ms);
        call.wait_ms = call
            .queue_entry
            .or(call.early_at)
            .map(|e| ms(ctx.now.saturating_duration_since(e)));
        if call.first_response_ms.is_none() {
            call.first_response_ms = Some(elapsed_ms);
        }
        if let Some((at, agent)) = self.book.answered_by(&call.user) {
            call.answer_relay_ms = Some(ms(ctx.now.saturating_duration_since(at)));
            call.agent = Some(agent);
        }
        let gave_up = call.state == State::Cancelling;
        if gave_up {
            call.outcome = None;
        }
        call.state = State::Talking;
        call.dialog = Some(dialog);
        let (step, setup, wait, relay, first) = (
            call.step,
            elapsed_ms,
            call.wait_ms,
            call.answer_relay_ms,
            call.first_response_ms,
        );
        let early = call.early_at.is_some();
        let count_queued = !call.queued;
        call.queued = true;
        let survey = call.hotline.as_ref().is_some_and(|c| c.survey);
        let plan = call.plan;
        if first_answer {
            self.record(|r| {
                r.answered(step, setup, wait);
                if let Some(relay) = relay {
                    r.answer_relay(relay);
                }
                // Answered without a queued (183) response reaching us (lost under load, or a
                // node that answers at once), or a silent hotline caller: the call was still
                // offered to a queue.
                if count_queued {
                    r.queued += 1;
                }
                if !early && let Some(f) = first {
                    r.first_response(f);
                }
            });
        }
        if gave_up {
            self.hang_up(ctx, serial, None);
        } else if plan.agent_hangs_up {
            let grace = match survey_after {
                Some(after) if survey => {
                    ctx.after(plan.talk + after, Timer::SurveyKey(serial));
                    BYE_GRACE + SURVEY_GRACE
                }
                _ => BYE_GRACE,
            };
            ctx.after(plan.talk + grace, Timer::AwaitBye(serial));
        } else {
            ctx.after(plan.talk, Timer::Talk(serial));
        }
    }

    /// Sends BYE; `outcome` marks a call that did not end as planned.
    fn hang_up(&mut self, ctx: &mut Ctx<Timer>, serial: u64, outcome: Option<Outcome>) {
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        if call.state != State::Talking {
            return;
        }
        if outcome.is_some() {
            call.outcome = outcome;
        }
        call.hangup_by.get_or_insert(Party::Caller);
        if let (Some(m), Some(leg)) = (&self.media, call.leg) {
            m.end_leg(leg);
        }
        let target = call.target;
        let bye = call.dialog.as_mut().and_then(|d| {
            d.create_request(Method::Bye, via(ctx.local, &new_branch()), vec![])
                .ok()
        });
        call.state = State::Ending;
        match bye.map(|b| ctx.layer.send_request(ctx.now, b, udp(target))) {
            Some(Ok(txn)) => {
                self.by_txn.insert(txn, Purpose::Bye(serial));
            }
            _ => self.finish(ctx, serial),
        }
    }

    /// Sends the INVITE of a call whose target never answered to the next target up, in a new
    /// transaction; the old one is abandoned (nothing answers it). False when no other target
    /// is left.
    fn reroute(&mut self, ctx: &mut Ctx<Timer>, serial: u64) -> bool {
        let (_, next) = self.pick_target(ctx.now);
        let Some(call) = self.calls.get_mut(&serial) else {
            return false;
        };
        if next == call.target {
            return false;
        }
        let mut invite = call.invite.clone();
        for header in invite.headers.iter_mut() {
            if let Header::Via(_) = header {
                *header = Header::Via(via(ctx.local, &new_branch()));
                break;
            }
        }
        invite.uri.host_with_port = next.into();
        let Ok(txn) = ctx.layer.send_request(ctx.now, invite.clone(), udp(next)) else {
            return false;
        };
        self.by_txn.remove(&call.invite_txn);
        self.by_txn.insert(txn, Purpose::Invite(serial));
        call.invite_txn = txn;
        call.invite = invite;
        call.target = next;
        ctx.after(self.cfg.invite_timeout, Timer::InviteTimeout(serial));
        self.record(|r| r.rerouted += 1);
        true
    }

    fn cancel(&mut self, ctx: &mut Ctx<Timer>, serial: u64, outcome: Outcome) {
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        if call.state != State::Inviting {
            return;
        }
        if call.outcome.is_none() {
            call.outcome = Some(outcome);
        }
        if let Some(entry) = call.queue_entry.or(call.early_at) {
            call.wait_ms = Some(ms(ctx.now.saturating_duration_since(entry)));
        }
        // A silent hotline caller past the menu's timeouts gives up in the queue.
        let newly_queued = !call.queued && call.queue_entry.is_some_and(|e| ctx.now >= e);
        call.queued |= newly_queued;
        call.state = State::Cancelling;
        if let (Some(m), Some(leg)) = (&self.media, call.leg) {
            m.end_leg(leg);
        }
        // An error means the INVITE already completed: its final response is on the way.
        if let Ok(txn) = ctx.layer.cancel(ctx.now, call.invite_txn) {
            self.by_txn.insert(txn, Purpose::Cancel);
        }
        if newly_queued {
            self.record(|r| r.queued += 1);
        }
    }

    /// Records the call and forgets it; its media leg reports on the media thread.
    fn finish(&mut self, _ctx: &mut Ctx<Timer>, serial: u64) {
        let Some(call) = self.calls.remove(&serial) else {
            return;
        };
        self.by_call_id.remove(&call.call_id);
        self.by_txn.remove(&call.invite_txn);
        self.book.forget(&call.user);
        self.active.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let outcome = match call.outcome {
            Some(o) => o,
            None if call.answered_at.is_some() => Outcome::Answered,
            None => Outcome::Failed("unfinished".into()),
        };
        let (number, did_queue) = self.cfg.dids[call.did].clone();
        let queue = match &call.hotline {
            Some(c) => c.queue.clone(),
            None => did_queue.unwrap_or_default(),
        };
        if let Some(c) = &call.hotline {
            self.release(Some(c));
            // Only a call that reached its queue the way it planned, and ended there as
            // planned, has a record that must say all of it.
            let checked = !call.cut_short
                && call.queued
                && c.pressed == c.key
                && matches!(outcome, Outcome::Answered | Outcome::Abandoned);
            let expect = hotline::Expect {
                call_id: call.call_id.clone(),
                vip: c.priority > 0,
                menu: c.pressed,
                queue: c.queue.clone(),
                priority: c.priority,
                agent_hangs_up: c.agent_hangs_up,
                survey: c.survey_key,
                checked,
            };
            self.record(|r| r.hotline.push(expect));
        }
        let record = CallRecord {
            n: call.serial,
            call_id: call.call_id,
            target: call.target,
            did: number,
            queue,
            offered_at: call.offered_at_s,
            step: call.step,
            first_response_ms: call.first_response_ms,
            setup_ms: call.setup_ms,
            wait_ms: call.wait_ms,
            answer_relay_ms: call.answer_relay_ms,
            talk_ms: call.answered_at.map(|a| ms(now - a)),
            agent: call.agent,
            hangup_by: call.hangup_by,
            outcome,
            dtmf_sent: call.dtmf_sent,
            media: None,
        };
        match (&self.media, call.leg) {
            (Some(m), Some(leg)) => {
                let recorder = self.recorder.clone();
                m.remove_leg(
                    leg,
                    Box::new(move |report| {
                        let mut record = record;
                        // A call never connected to media has nothing to report.
                        record.media = call.media_started.then_some(report);
                        if let Ok(mut r) = recorder.lock() {
                            r.finished(&record);
                        }
                    }),
                );
            }
            _ => self.record(|r| r.finished(&record)),
        }
    }

    fn on_request(&mut self, ctx: &mut Ctx<Timer>, txn: TransactionId, request: Request) {
        let serial = request
            .call_id()
            .and_then(|id| self.by_call_id.get(id).copied());
        let Some(serial) = serial else {
            // Not ours (or already over): RFC 3261 §12.2.2.
            let _ = ctx.layer.send_response(
                ctx.now,
                txn,
                message::response(&request, StatusCode::CallTransactionDoesNotExist, None),
            );
            return;
        };
        match request.method {
            Method::Bye => {
                let ok = message::response(&request, StatusCode::OK, None);
                let _ = ctx.layer.send_response(ctx.now, txn, ok);
                if let Some(call) = self.calls.get_mut(&serial) {
                    if call.answered_at.is_none() {
                        call.outcome
                            .get_or_insert(Outcome::Failed("bye-before-answer".into()));
                    } else if call.hangup_by.is_none() {
                        call.hangup_by = Some(Party::Agent);
                    }
                }
                self.finish(ctx, serial);
            }
            Method::Invite | Method::Update => self.on_reoffer(ctx, txn, serial, &request),
            Method::Options | Method::Info | Method::Notify => {
                let _ = ctx.layer.send_response(
                    ctx.now,
                    txn,
                    message::response(&request, StatusCode::OK, None),
                );
            }
            _ => {
                let _ = ctx.layer.send_response(
                    ctx.now,
                    txn,
                    message::response(&request, StatusCode::NotImplemented, None),
                );
            }
        }
    }

    /// A re-INVITE or UPDATE (a standby node taking the call over): answer with our media and
    /// send towards the new address.
    fn on_reoffer(&mut self, ctx: &mut Ctx<Timer>, txn: TransactionId, serial: u64, req: &Request) {
        let codecs = self.cfg.codecs.clone();
        let media_ip = self.cfg.media_ip;
        let media = self.media.clone();
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        if call.state == State::Ending {
            // We hung up (the BYE may be lost on its way to a dead node): the dialog is over.
            let gone = message::response(req, StatusCode::CallTransactionDoesNotExist, None);
            let _ = ctx.layer.send_response(ctx.now, txn, gone);
            return;
        }
        if let Some(d) = call.dialog.as_mut()
            && let Err(e) = d.on_request(req)
        {
            let code = StatusCode::from(e.status_code());
            let _ = ctx
                .layer
                .send_response(ctx.now, txn, message::response(req, code, None));
            return;
        }
        // The re-INVITE's Contact is where the call lives now; the BYE goes there.
        if let Some(target) = call.dialog.as_ref().and_then(dialog_target) {
            call.target = target;
        }
        call.sdp_version += 1;
        let local_codecs: Vec<(u8, Codec)> = codecs
            .iter()
            .map(|c| (c.static_payload_type(), *c))
            .collect();
        let local = LocalMedia {
            session_id: call.serial,
            version: call.sdp_version,
            addr: media_ip,
            port: call.media_port,
            codecs: &local_codecs,
            telephone_event_pt: Some(TELEPHONE_EVENT_PT),
            direction: Direction::SendRecv,
        };
        let body = match sdp::parse(&req.body) {
            Ok(offer) => {
                if let Some(remote) = remote_from(&offer, &codecs) {
                    start_media(media.as_deref(), call, remote);
                }
                sdp::build_answer(&offer, &local)
            }
            // An offerless re-INVITE: we offer in the 200, the ACK answers.
            Err(_) => sdp::build(&local),
        };
        let response = ok_with_sdp(req, ctx.local, &call.user, body);
        let _ = ctx.layer.send_response(ctx.now, txn, response);
    }

    /// Presses the hotline caller's menu key; the flow queues the call on it.
    fn press_menu_key(&mut self, ctx: &mut Ctx<Timer>, serial: u64) {
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        let key = match &call.hotline {
            Some(c) if call.state == State::Inviting => c.key,
            _ => None,
        };
        let (Some(key), Some(m), Some(leg), true) =
            (key, &self.media, call.leg, call.media_started)
        else {
            return;
        };
        press(m, leg, key);
        if let Some(c) = call.hotline.as_mut() {
            c.pressed = Some(key);
        }
        call.queue_entry = Some(ctx.now);
        call.queued = true;
        if let Some(p) = call.patience {
            ctx.after(QUEUE_MARGIN + p, Timer::Patience(serial));
        }
        self.record(|r| r.queued += 1);
    }

    /// Presses a score from 1 to 5: the agent has hung up and the survey prompt plays.
    fn press_survey_key(&mut self, serial: u64) {
        let score = self.rng.random_range(1..=5u8);
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        if call.state != State::Talking {
            return;
        }
        let (Some(m), Some(leg), true) = (&self.media, call.leg, call.media_started) else {
            return;
        };
        press(m, leg, char::from(b'0' + score));
        if let Some(c) = call.hotline.as_mut() {
            c.survey_key = Some(score);
        }
    }

    fn send_dtmf(&mut self, serial: u64) {
        let Some((digits, _, tone, gap)) = self.cfg.dtmf.clone() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&serial) else {
            return;
        };
        if let (Some(m), Some(leg), true) = (&self.media, call.leg, call.media_started) {
            m.send_dtmf(leg, &digits, tone, gap);
            call.dtmf_sent = true;
        }
    }
}

impl Side for Callers {
    type Timer = Timer;

    fn start(&mut self, ctx: &mut Ctx<Timer>) {
        self.schedule_next_arrival(ctx);
    }

    fn on_event(&mut self, ctx: &mut Ctx<Timer>, event: TuEvent) {
        match event {
            TuEvent::Response { txn, response } => match self.by_txn.get(&txn).copied() {
                Some(Purpose::Invite(serial)) => self.on_invite_response(ctx, serial, response),
                Some(Purpose::Bye(serial)) if response.status_code.code() >= 200 => {
                    self.by_txn.remove(&txn);
                    let code = response.status_code.code();
                    if code >= 300
                        && code != 481
                        && let Some(call) = self.calls.get_mut(&serial)
                    {
                        call.outcome
                            .get_or_insert(Outcome::Dropped(format!("bye-sip-{code}")));
                    }
                    self.finish(ctx, serial);
                }
                Some(Purpose::Cancel) if response.status_code.code() >= 200 => {
                    self.by_txn.remove(&txn);
                }
                _ => {}
            },
            TuEvent::Timeout { txn } | TuEvent::TransportError { txn } => {
                match self.by_txn.remove(&txn) {
                    Some(Purpose::Invite(serial)) => {
                        if let Some(call) = self.calls.get_mut(&serial) {
                            call.outcome
                                .get_or_insert(Outcome::Failed("timeout".into()));
                        }
                        self.finish(ctx, serial);
                    }
                    Some(Purpose::Bye(serial)) => {
                        if let Some(call) = self.calls.get_mut(&serial) {
                            call.outcome
                                .get_or_insert(Outcome::Dropped("bye-timeout".into()));
                        }
                        self.finish(ctx, serial);
                    }
                    Some(Purpose::Cancel) | None => {}
                }
            }
            TuEvent::Request { txn, request, .. } => self.on_request(ctx, txn, request),
            // ACKs of our 2xx to re-INVITEs and CANCELs of requests we never hold open.
            TuEvent::Ack { .. } | TuEvent::Cancel { .. } => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<Timer>, timer: Timer) {
        match timer {
            Timer::Arrival => {
                while let Some(at) = self.next_arrival {
                    if at > ctx.now || self.arrivals_over {
                        break;
                    }
                    let at_s = at.duration_since(self.start).as_secs_f64();
                    self.launch(ctx, at_s);
                    match self.arrivals.next_arrival() {
                        Some(t) => {
                            self.next_arrival = Some(self.start + crate::duration::capped(t))
                        }
                        None => {
                            self.next_arrival = None;
                            self.arrivals_over = true;
                        }
                    }
                }
                if let Some(at) = self.next_arrival {
                    ctx.at(at, Timer::Arrival);
                }
            }
            Timer::InviteTimeout(serial) => {
                let Some(call) = self.calls.get(&serial) else {
                    return;
                };
                if call.responded || call.state != State::Inviting {
                    return;
                }
                let target = call.target;
                if let Some(i) = self.cfg.targets.iter().position(|t| *t == target) {
                    self.down_until[i] = Some(ctx.now + TARGET_HOLD_DOWN);
                }
                if !(self.cfg.reroute_on_no_response && self.reroute(ctx, serial)) {
                    self.cancel(ctx, serial, Outcome::Failed("no-response".into()));
                }
            }
            Timer::Patience(serial) => self.cancel(ctx, serial, Outcome::Abandoned),
            Timer::Talk(serial) => self.hang_up(ctx, serial, None),
            Timer::AwaitBye(serial) => self.hang_up(
                ctx,
                serial,
                Some(Outcome::Dropped("no-bye-from-agent".into())),
            ),
            Timer::Dtmf(serial) => self.send_dtmf(serial),
            Timer::MenuKey(serial) => self.press_menu_key(ctx, serial),
            Timer::SurveyKey(serial) => self.press_survey_key(serial),
        }
    }

    fn on_control(&mut self, ctx: &mut Ctx<Timer>, control: Control) {
        match control {
            Control::StopArrivals => {
                self.arrivals_over = true;
                self.next_arrival = None;
            }
            Control::HangUpAll => {
                self.arrivals_over = true;
                self.next_arrival = None;
                let serials: Vec<u64> = self.calls.keys().copied().collect();
                let mut ended = 0;
                for serial in serials {
                    if let Some(call) = self.calls.get_mut(&serial) {
                        call.cut_short = true;
                    }
                    match self.calls.get(&serial).map(|c| c.state) {
                        Some(State::Inviting) => {
                            ended += 1;
                            self.cancel(ctx, serial, Outcome::Abandoned);
                        }
                        Some(State::Talking) => {
                            ended += 1;
                            self.hang_up(ctx, serial, None);
                        }
                        _ => {}
                    }
                }
                self.record(|r| r.hung_up_at_end += ended);
            }
            Control::Abort => {
                self.arrivals_over = true;
                self.next_arrival = None;
                let serials: Vec<u64> = self.calls.keys().copied().collect();
                for serial in serials {
                    if let Some(call) = self.calls.get_mut(&serial) {
                        call.cut_short = true;
                    }
                    self.finish(ctx, serial);
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.arrivals_over && self.calls.is_empty()
    }
}

/// One key press on the caller's RTP stream.
fn press(media: &MediaEngine, leg: u64, key: char) {
    let mut text = [0; 4];
    media.send_dtmf(leg, key.encode_utf8(&mut text), KEY_TONE, KEY_TONE);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn start_media(media: Option<&MediaEngine>, call: &mut Call, remote: Remote) {
    if let (Some(m), Some(leg)) = (media, call.leg) {
        m.start_sending(leg, remote);
        call.media_started = true;
    }
}

/// The remote RTP address and codec of an SDP body we can use.
fn remote_of(body: &[u8], codecs: &[Codec]) -> Option<Remote> {
    if body.is_empty() {
        return None;
    }
    remote_from(&sdp::parse(body).ok()?, codecs)
}

fn remote_from(desc: &sdp::AudioDescription, codecs: &[Codec]) -> Option<Remote> {
    let n = sdp::negotiate(desc, codecs).ok()?;
    Some(Remote {
        addr: SocketAddr::new(desc.connection, desc.port),
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event_pt: n.telephone_event_pt,
    })
}

fn build_invite(
    local: SocketAddr,
    target: SocketAddr,
    number: &str,
    user: &str,
    call_id: &str,
    sdp: String,
) -> Option<Request> {
    let uri = parse_uri(&format!("sip:{number}@{target}")).ok()?;
    let headers: Vec<Header> = vec![
        Header::Via(via(local, &new_branch())),
        Header::MaxForwards("70".into()),
        Header::From(format!("<sip:{user}@{}>;tag={}", local.ip(), new_tag()).into()),
        Header::To(format!("<sip:{number}@{target}>").into()),
        Header::CallId(call_id.to_owned().into()),
        Header::CSeq("1 INVITE".into()),
        Header::Contact(format!("<sip:{user}@{local}>").into()),
        Header::UserAgent("switchyard-bench".into()),
        Header::ContentType("application/sdp".into()),
    ];
    Some(Request {
        method: Method::Invite,
        uri,
        version: switchyard_sip::rsip::Version::V2,
        headers: headers.into(),
        body: sdp.into_bytes(),
    })
}

/// A 200 to an in-dialog request carrying our SDP and Contact.
pub fn ok_with_sdp(req: &Request, local: SocketAddr, user: &str, body: String) -> Response {
    let mut response = message::response(req, StatusCode::OK, None);
    response
        .headers
        .push(Header::Contact(format!("<sip:{user}@{local}>").into()));
    response
        .headers
        .push(Header::ContentType("application/sdp".into()));
    response.body = body.into_bytes();
    response
}

fn failed_record(
    n: u64,
    call_id: &str,
    target: SocketAddr,
    at_s: f64,
    step: usize,
    cause: &str,
) -> CallRecord {
    CallRecord {
        n,
        call_id: call_id.to_owned(),
        target,
        did: String::new(),
        queue: String::new(),
        offered_at: at_s,
        step,
        first_response_ms: None,
        setup_ms: None,
        wait_ms: None,
        answer_relay_ms: None,
        talk_ms: None,
        agent: None,
        hangup_by: None,
        outcome: Outcome::Failed(cause.to_owned()),
        dtmf_sent: false,
        media: None,
    }
}

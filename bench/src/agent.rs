//! Simulated agent phones (UAS): REGISTER with digest auth, ring, answer after a delay,
//! talk, hang up or wait for the BYE, wrap up; re-INVITEs from a node taking over are
//! answered. Every agent shares the side's one socket; the Request-URI user says which
//! agent an INVITE rings.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use switchyard_sip::dialog::{Dialog, new_tag};
use switchyard_sip::headers::{MessageExt, name_addr_uri, request_uri_user};
use switchyard_sip::message::{self, parse_uri};
use switchyard_sip::rsip::headers::UntypedHeader;
use switchyard_sip::rsip::{Header, Method, Request, Response, StatusCode};
use switchyard_sip::sdp::{self, Codec, Direction, LocalMedia};
use switchyard_sip::transaction::{Peer, TransactionId, TuEvent, new_branch};

use crate::auth;
use crate::caller::ok_with_sdp;
use crate::dist::Dist;
use crate::media::{MediaEngine, Remote};
use crate::scenario::DigestPreference;
use crate::stats::{Recorder, Side as Party};
use crate::ua::{CallBook, Control, Ctx, Side, dialog_target, udp, via};

/// Pause before retrying a failed registration.
const REGISTER_RETRY: Duration = Duration::from_secs(5);

/// How one group of agents behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub answer_delay: Dist,
    pub wrap_up: Dist,
    pub digest: DigestPreference,
    pub expires: u32,
}

#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub ext: String,
    pub password: String,
    pub group: usize,
    /// The node this phone registers with.
    pub registrar: SocketAddr,
}

pub struct AgentConfig {
    pub agents: Vec<AgentSpec>,
    pub groups: Vec<Behaviour>,
    /// Register with the nodes (off in loopback, where callers ring the phones directly).
    pub register: bool,
    /// REGISTERs started per second.
    pub register_rate: f64,
    /// Refuse (486) an INVITE for an agent already ringing or talking, and count it: a node
    /// must never offer a busy agent. Off in loopback, where callers pick agents blindly.
    pub strict: bool,
    pub media_ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    RegisterNext,
    Register(usize),
    Answer(u64),
    HangUp(u64),
    WrapDone(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegPhase {
    /// Removing stale bindings of earlier runs (`Contact: *`, `Expires: 0`).
    Clearing,
    Registering,
    Registered,
    Unregistering,
    Gone,
}

struct Agent {
    spec: AgentSpec,
    call_id: String,
    from_tag: String,
    cseq: u32,
    phase: RegPhase,
    /// Challenges answered for the current REGISTER (a second 401 means wrong credentials).
    auth_rounds: u32,
    expires: u32,
    ever_registered: bool,
    /// The leg ringing or talking.
    leg: Option<u64>,
    wrap_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    Ringing,
    /// 200 sent, waiting for the ACK.
    Answered,
    Talking,
    Ending,
}

struct Leg {
    agent: usize,
    call_id: String,
    invite: Request,
    invite_txn: TransactionId,
    from: Peer,
    to_tag: String,
    caller: String,
    offer: sdp::AudioDescription,
    remote: Remote,
    media_leg: Option<u64>,
    media_port: u16,
    sdp_version: u64,
    state: LegState,
    dialog: Option<Dialog>,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Register(usize),
    Invite(u64),
    Bye(u64),
}

pub struct Agents {
    cfg: AgentConfig,
    media: Option<Arc<MediaEngine>>,
    recorder: Arc<Mutex<Recorder>>,
    book: Arc<CallBook>,
    rng: StdRng,
    agents: Vec<Agent>,
    by_ext: HashMap<String, usize>,
    legs: HashMap<u64, Leg>,
    by_call_id: HashMap<String, u64>,
    by_txn: HashMap<TransactionId, Purpose>,
    serial: u64,
    next_register: usize,
    stopping: bool,
    pending_unregister: usize,
    pub registered: Arc<AtomicU64>,
    pub busy: Arc<AtomicU64>,
}

impl Agents {
    pub fn new(
        cfg: AgentConfig,
        rng: StdRng,
        media: Option<Arc<MediaEngine>>,
        recorder: Arc<Mutex<Recorder>>,
        book: Arc<CallBook>,
    ) -> Agents {
        let agents: Vec<Agent> = cfg
            .agents
            .iter()
            .map(|spec| Agent {
                call_id: format!("reg-{}-{}@switchyard-bench", spec.ext, new_tag()),
                from_tag: new_tag(),
                cseq: 0,
                phase: RegPhase::Clearing,
                auth_rounds: 0,
                expires: cfg.groups.get(spec.group).map_or(3600, |g| g.expires),
                ever_registered: false,
                leg: None,
                wrap_until: None,
                spec: spec.clone(),
            })
            .collect();
        let by_ext = agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.spec.ext.clone(), i))
            .collect();
        Agents {
            cfg,
            media,
            recorder,
            book,
            rng,
            agents,
            by_ext,
            legs: HashMap::new(),
            by_call_id: HashMap::new(),
            by_txn: HashMap::new(),
            serial: 0,
            next_register: 0,
            stopping: false,
            pending_unregister: 0,
            registered: Arc::new(AtomicU64::new(0)),
            busy: Arc::new(AtomicU64::new(0)),
        }
    }

    fn record<F: FnOnce(&mut Recorder)>(&self, f: F) {
        if let Ok(mut r) = self.recorder.lock() {
            f(&mut r);
        }
    }

    fn group(&self, agent: usize) -> Option<&Behaviour> {
        self.cfg.groups.get(self.agents.get(agent)?.spec.group)
    }

    fn is_busy(a: &Agent, now: Instant) -> bool {
        a.leg.is_some() || a.wrap_until.is_some_and(|w| w > now)
    }

    /// Sends the REGISTER of agent `i`'s current phase, with `authorization` when answering a
    /// challenge.
    fn send_register(&mut self, ctx: &mut Ctx<Timer>, i: usize, authorization: Option<String>) {
        let local = ctx.local;
        let Some(a) = self.agents.get_mut(i) else {
            return;
        };
        a.cseq += 1;
        let registrar = a.spec.registrar;
        let (contact, expires) = match a.phase {
            RegPhase::Clearing | RegPhase::Unregistering => ("*".to_owned(), 0),
            _ => (format!("<sip:{}@{local}>", a.spec.ext), a.expires),
        };
        let Ok(uri) = parse_uri(&format!("sip:{registrar}")) else {
            return;
        };
        let aor = format!("<sip:{}@{}>", a.spec.ext, registrar.ip());
        let mut headers: Vec<Header> = vec![
            Header::Via(via(local, &new_branch())),
            Header::MaxForwards("70".into()),
            Header::From(format!("{aor};tag={}", a.from_tag).into()),
            Header::To(aor.into()),
            Header::CallId(a.call_id.clone().into()),
            Header::CSeq(format!("{} REGISTER", a.cseq).into()),
            Header::Contact(contact.into()),
            Header::Expires(expires.to_string().into()),
            Header::UserAgent("switchyard-bench".into()),
        ];
        if let Some(auth) = authorization {
            headers.push(Header::Authorization(auth.into()));
        }
        let request = Request {
            method: Method::Register,
            uri,
            version: switchyard_sip::rsip::Version::V2,
            headers: headers.into(),
            body: Vec::new(),
        };
        if let Ok(txn) = ctx.layer.send_request(ctx.now, request, udp(registrar)) {
            self.by_txn.insert(txn, Purpose::Register(i));
        }
    }

    fn on_register_response(&mut self, ctx: &mut Ctx<Timer>, i: usize, response: &Response) {
        let code = response.status_code.code();
        if code < 200 {
            return;
        }
        let Some(a) = self.agents.get_mut(i) else {
            return;
        };
        let group_digest = self
            .cfg
            .groups
            .get(a.spec.group)
            .map_or(DigestPreference::Md5, |g| g.digest);
        match code {
            401 | 407 if a.auth_rounds < 2 => {
                a.auth_rounds += 1;
                let challenges = response.headers.iter().filter_map(|h| match h {
                    Header::WwwAuthenticate(w) => Some(w.value()),
                    Header::ProxyAuthenticate(p) => Some(p.value()),
                    _ => None,
                });
                let Some(challenge) = auth::choose(challenges, group_digest) else {
                    self.register_failed(ctx, i, "no-usable-challenge");
                    return;
                };
                let registrar = a.spec.registrar;
                let cnonce = new_tag();
                let value = challenge.authorization(
                    &a.spec.ext,
                    &a.spec.password,
                    "REGISTER",
                    &format!("sip:{registrar}"),
                    1,
                    &cnonce,
                );
                self.send_register(ctx, i, Some(value));
            }
            423 => {
                // Interval too brief: take the registrar's minimum.
                if let Some(min) = response.headers.iter().find_map(|h| match h {
                    Header::MinExpires(m) => m.value().trim().parse::<u32>().ok(),
                    _ => None,
                }) {
                    a.expires = min;
                    a.auth_rounds = 0;
                    self.send_register(ctx, i, None);
                } else {
                    self.register_failed(ctx, i, "sip-423");
                }
            }
            200..=299 => {
                a.auth_rounds = 0;
                match a.phase {
                    RegPhase::Clearing => {
                        a.phase = RegPhase::Registering;
                        self.send_register(ctx, i, None);
                    }
                    RegPhase::Registering | RegPhase::Registered => {
                        a.phase = RegPhase::Registered;
                        let first = !a.ever_registered;
                        a.ever_registered = true;
                        let granted = granted_expires(response, ctx.local).unwrap_or(a.expires);
                        let refresh = Duration::from_secs(u64::from(granted.max(2)) / 2);
                        ctx.after(refresh, Timer::Register(i));
                        if first {
                            self.registered.fetch_add(1, Ordering::Relaxed);
                            self.record(|r| r.agents.registered += 1);
                        }
                    }
                    RegPhase::Unregistering => {
                        a.phase = RegPhase::Gone;
                        self.pending_unregister = self.pending_unregister.saturating_sub(1);
                    }
                    RegPhase::Gone => {}
                }
            }
            _ => {
                let cause = if code == 401 || code == 407 {
                    "auth-rejected".to_owned()
                } else {
                    format!("sip-{code}")
                };
                self.register_failed(ctx, i, &cause);
            }
        }
    }

    fn register_failed(&mut self, ctx: &mut Ctx<Timer>, i: usize, cause: &str) {
        self.record(|r| {
            *r.agents
                .register_failures
                .entry(cause.to_owned())
                .or_default() += 1
        });
        let Some(a) = self.agents.get_mut(i) else {
            return;
        };
        a.auth_rounds = 0;
        if a.phase == RegPhase::Unregistering {
            a.phase = RegPhase::Gone;
            self.pending_unregister = self.pending_unregister.saturating_sub(1);
        } else if !self.stopping {
            ctx.after(REGISTER_RETRY, Timer::Register(i));
        }
    }

    fn on_invite(&mut self, ctx: &mut Ctx<Timer>, txn: TransactionId, req: Request, from: Peer) {
        let reply = |ctx: &mut Ctx<Timer>, code: StatusCode| {
            let _ = ctx
                .layer
                .send_response(ctx.now, txn, message::response(&req, code, None));
        };
        if self.stopping {
            return reply(ctx, StatusCode::TemporarilyUnavailable);
        }
        let agent = request_uri_user(&req).and_then(|u| self.by_ext.get(&u).copied());
        let Some(agent) = agent else {
            self.record(|r| r.agents.unknown += 1);
            return reply(ctx, StatusCode::NotFound);
        };
        self.record(|r| r.agents.offers += 1);
        if self.cfg.strict && self.agents[agent].leg.is_some() {
            self.record(|r| r.agents.offered_while_busy += 1);
            return reply(ctx, StatusCode::BusyHere);
        }
        let Ok(offer) = sdp::parse(&req.body) else {
            return reply(ctx, StatusCode::NotAcceptableHere);
        };
        let Ok(neg) = sdp::negotiate(&offer, &[Codec::Pcmu, Codec::Pcma]) else {
            return reply(ctx, StatusCode::NotAcceptableHere);
        };
        let remote = Remote {
            addr: SocketAddr::new(offer.connection, offer.port),
            codec: neg.codec,
            payload_type: neg.payload_type,
            telephone_event_pt: neg.telephone_event_pt,
        };
        let (media_leg, media_port) = match &self.media {
            Some(m) => match m.add_leg(self.cfg.media_ip, Party::Agent) {
                Ok((id, addr)) => (Some(id), addr.port()),
                Err(_) => return reply(ctx, StatusCode::ServiceUnavailable),
            },
            None => (None, 9),
        };
        let Some(call_id) = req.call_id().map(str::to_owned) else {
            return reply(ctx, StatusCode::BadRequest);
        };
        let caller = req
            .from_uri()
            .and_then(|uri| uri.auth.map(|a| a.user))
            .unwrap_or_default();
        self.serial += 1;
        let serial = self.serial;
        let to_tag = new_tag();
        let mut ringing = message::response(&req, StatusCode::Ringing, Some(&to_tag));
        let ext = self.agents[agent].spec.ext.clone();
        ringing
            .headers
            .push(Header::Contact(format!("<sip:{ext}@{}>", ctx.local).into()));
        let _ = ctx.layer.send_response(ctx.now, txn, ringing);

        let delay = self
            .group(agent)
            .map(|g| g.answer_delay)
            .map_or(Duration::ZERO, |d| d.sample(&mut self.rng));
        let wrap_until = self.agents[agent].wrap_until.unwrap_or(ctx.now);
        let was_busy = Self::is_busy(&self.agents[agent], ctx.now);
        self.agents[agent].leg = Some(serial);
        if !was_busy {
            self.busy.fetch_add(1, Ordering::Relaxed);
        }
        ctx.at((ctx.now + delay).max(wrap_until), Timer::Answer(serial));
        self.by_txn.insert(txn, Purpose::Invite(serial));
        self.by_call_id.insert(call_id.clone(), serial);
        self.legs.insert(
            serial,
            Leg {
                agent,
                call_id,
                invite: req,
                invite_txn: txn,
                from,
                to_tag,
                caller,
                offer,
                remote,
                media_leg,
                media_port,
                sdp_version: 1,
                state: LegState::Ringing,
                dialog: None,
            },
        );
    }

    fn answer(&mut self, ctx: &mut Ctx<Timer>, serial: u64) {
        let media_ip = self.cfg.media_ip;
        let Some(leg) = self.legs.get_mut(&serial) else {
            return;
        };
        if leg.state != LegState::Ringing {
            return;
        }
        let ext = self.agents[leg.agent].spec.ext.clone();
        let contact = format!("<sip:{ext}@{}>", ctx.local);
        let local = LocalMedia {
            session_id: serial,
            version: leg.sdp_version,
            addr: media_ip,
            port: leg.media_port,
            codecs: &[(leg.remote.payload_type, leg.remote.codec)],
            telephone_event_pt: leg.remote.telephone_event_pt,
            direction: Direction::SendRecv,
        };
        let body = sdp::build_answer(&leg.offer, &local);
        let mut ok = message::response(&leg.invite, StatusCode::OK, Some(&leg.to_tag));
        ok.headers.push(Header::Contact(contact.clone().into()));
        ok.headers
            .push(Header::ContentType("application/sdp".into()));
        ok.body = body.into_bytes();
        if ctx
            .layer
            .send_response(ctx.now, leg.invite_txn, ok)
            .is_err()
        {
            // The INVITE is gone (cancelled in the same instant): nothing to answer.
            self.end_leg(ctx, serial);
            return;
        }
        let mut dialog = Dialog::new_uas(&leg.invite, &leg.to_tag, &contact).ok();
        if let Some(d) = dialog.as_mut() {
            d.confirm();
        }
        leg.dialog = dialog;
        leg.state = LegState::Answered;
        if let (Some(m), Some(id)) = (&self.media, leg.media_leg) {
            m.start_sending(id, leg.remote);
        }
        self.book.agent_answered(&leg.caller, ctx.now, &ext);
        let plan = self.book.plan_of(&leg.caller);
        if let Some(p) = plan
            && p.agent_hangs_up
        {
            ctx.after(p.talk, Timer::HangUp(serial));
        }
        self.record(|r| r.agents.answered += 1);
    }

    fn hang_up(&mut self, ctx: &mut Ctx<Timer>, serial: u64) {
        let Some(leg) = self.legs.get_mut(&serial) else {
            return;
        };
        if !matches!(leg.state, LegState::Answered | LegState::Talking) {
            return;
        }
        leg.state = LegState::Ending;
        if let (Some(m), Some(id)) = (&self.media, leg.media_leg) {
            m.end_leg(id);
        }
        // The node's Contact, which a re-INVITE from a node taking the call over changed.
        let from = leg
            .dialog
            .as_ref()
            .and_then(dialog_target)
            .map_or(leg.from, udp);
        let bye = leg.dialog.as_mut().and_then(|d| {
            d.create_request(Method::Bye, via(ctx.local, &new_branch()), vec![])
                .ok()
        });
        match bye.map(|b| ctx.layer.send_request(ctx.now, b, from)) {
            Some(Ok(txn)) => {
                self.by_txn.insert(txn, Purpose::Bye(serial));
                self.record(|r| r.agents.hung_up += 1);
            }
            _ => self.end_leg(ctx, serial),
        }
    }

    /// The leg is over: media reported, agent into wrap-up.
    fn end_leg(&mut self, ctx: &mut Ctx<Timer>, serial: u64) {
        let Some(leg) = self.legs.remove(&serial) else {
            return;
        };
        self.by_call_id.remove(&leg.call_id);
        self.by_txn.remove(&leg.invite_txn);
        if let (Some(m), Some(id)) = (&self.media, leg.media_leg) {
            let recorder = self.recorder.clone();
            let connected = leg.dialog.is_some();
            m.remove_leg(
                id,
                Box::new(move |report| {
                    if connected && let Ok(mut r) = recorder.lock() {
                        r.leg_media(Party::Agent, &report);
                    }
                }),
            );
        }
        let wrap = if leg.dialog.is_some() {
            self.group(leg.agent)
                .map(|g| g.wrap_up)
                .map_or(Duration::ZERO, |d| d.sample(&mut self.rng))
        } else {
            // A cancelled offer is not a call: no wrap-up.
            Duration::ZERO
        };
        let Some(a) = self.agents.get_mut(leg.agent) else {
            return;
        };
        if a.leg == Some(serial) {
            a.leg = None;
            if wrap.is_zero() {
                a.wrap_until = None;
                self.busy.fetch_sub(1, Ordering::Relaxed);
            } else {
                a.wrap_until = Some(ctx.now + wrap);
                ctx.after(wrap, Timer::WrapDone(leg.agent));
            }
        }
    }

    fn on_in_dialog(&mut self, ctx: &mut Ctx<Timer>, txn: TransactionId, req: Request) {
        let serial = req.call_id().and_then(|c| self.by_call_id.get(c).copied());
        let Some(serial) = serial else {
            let _ = ctx.layer.send_response(
                ctx.now,
                txn,
                message::response(&req, StatusCode::CallTransactionDoesNotExist, None),
            );
            return;
        };
        match req.method {
            Method::Bye => {
                let _ = ctx.layer.send_response(
                    ctx.now,
                    txn,
                    message::response(&req, StatusCode::OK, None),
                );
                self.end_leg(ctx, serial);
            }
            Method::Invite | Method::Update => {
                let media_ip = self.cfg.media_ip;
                let media = self.media.clone();
                let Some(leg) = self.legs.get_mut(&serial) else {
                    return;
                };
                let ext = self.agents[leg.agent].spec.ext.clone();
                if let Some(d) = leg.dialog.as_mut()
                    && let Err(e) = d.on_request(&req)
                {
                    let code = StatusCode::from(e.status_code());
                    let _ =
                        ctx.layer
                            .send_response(ctx.now, txn, message::response(&req, code, None));
                    return;
                }
                leg.sdp_version += 1;
                if let Ok(offer) = sdp::parse(&req.body)
                    && let Ok(neg) = sdp::negotiate(&offer, &[Codec::Pcmu, Codec::Pcma])
                {
                    leg.remote = Remote {
                        addr: SocketAddr::new(offer.connection, offer.port),
                        codec: neg.codec,
                        payload_type: neg.payload_type,
                        telephone_event_pt: neg.telephone_event_pt,
                    };
                    leg.offer = offer;
                    if let (Some(m), Some(id)) = (&media, leg.media_leg) {
                        m.start_sending(id, leg.remote);
                    }
                }
                let local = LocalMedia {
                    session_id: serial,
                    version: leg.sdp_version,
                    addr: media_ip,
                    port: leg.media_port,
                    codecs: &[(leg.remote.payload_type, leg.remote.codec)],
                    telephone_event_pt: leg.remote.telephone_event_pt,
                    direction: Direction::SendRecv,
                };
                let body = sdp::build_answer(&leg.offer, &local);
                let ok = ok_with_sdp(&req, ctx.local, &ext, body);
                let _ = ctx.layer.send_response(ctx.now, txn, ok);
            }
            Method::Options | Method::Info | Method::Notify => {
                let _ = ctx.layer.send_response(
                    ctx.now,
                    txn,
                    message::response(&req, StatusCode::OK, None),
                );
            }
            _ => {
                let _ = ctx.layer.send_response(
                    ctx.now,
                    txn,
                    message::response(&req, StatusCode::NotImplemented, None),
                );
            }
        }
    }

    fn stop(&mut self, ctx: &mut Ctx<Timer>) {
        self.stopping = true;
        let serials: Vec<u64> = self.legs.keys().copied().collect();
        for serial in serials {
            match self.legs.get(&serial).map(|l| l.state) {
                Some(LegState::Ringing) => {
                    if let Some(leg) = self.legs.get(&serial) {
                        let busy = message::response(
                            &leg.invite,
                            StatusCode::TemporarilyUnavailable,
                            None,
                        );
                        let _ = ctx.layer.send_response(ctx.now, leg.invite_txn, busy);
                    }
                    self.end_leg(ctx, serial);
                }
                Some(LegState::Answered | LegState::Talking) => self.hang_up(ctx, serial),
                _ => {}
            }
        }
        if self.cfg.register {
            for i in 0..self.agents.len() {
                if matches!(
                    self.agents[i].phase,
                    RegPhase::Registered | RegPhase::Registering
                ) {
                    self.agents[i].phase = RegPhase::Unregistering;
                    self.agents[i].auth_rounds = 0;
                    self.pending_unregister += 1;
                    self.send_register(ctx, i, None);
                }
            }
        }
    }
}

/// The expiry the registrar granted our Contact (its `expires` parameter), else Expires.
fn granted_expires(response: &Response, local: SocketAddr) -> Option<u32> {
    let ours = local.to_string();
    let from_contact = response.headers.iter().find_map(|h| match h {
        Header::Contact(c) if c.value().contains(&ours) => {
            let (_, params) = name_addr_uri(c.value())?;
            switchyard_sip::headers::header_param(params, "expires")?
                .parse()
                .ok()
        }
        _ => None,
    });
    from_contact.or_else(|| response.expires())
}

impl Side for Agents {
    type Timer = Timer;

    fn start(&mut self, ctx: &mut Ctx<Timer>) {
        if self.cfg.register && !self.agents.is_empty() {
            ctx.after(Duration::ZERO, Timer::RegisterNext);
        }
    }

    fn on_event(&mut self, ctx: &mut Ctx<Timer>, event: TuEvent) {
        match event {
            TuEvent::Request { txn, request, from } => {
                if request.method == Method::Invite && request.to_tag().is_none() {
                    self.on_invite(ctx, txn, request, from);
                } else {
                    self.on_in_dialog(ctx, txn, request);
                }
            }
            TuEvent::Response { txn, response } => match self.by_txn.get(&txn).copied() {
                Some(Purpose::Register(i)) => {
                    if response.status_code.code() >= 200 {
                        self.by_txn.remove(&txn);
                    }
                    self.on_register_response(ctx, i, &response);
                }
                Some(Purpose::Bye(serial)) if response.status_code.code() >= 200 => {
                    self.by_txn.remove(&txn);
                    self.end_leg(ctx, serial);
                }
                _ => {}
            },
            TuEvent::Ack { invite_txn, .. } => {
                if let Some(Purpose::Invite(serial)) = self.by_txn.get(&invite_txn).copied()
                    && let Some(leg) = self.legs.get_mut(&serial)
                    && leg.state == LegState::Answered
                {
                    leg.state = LegState::Talking;
                }
            }
            TuEvent::Cancel { invite_txn, .. } => {
                if let Some(Purpose::Invite(serial)) = self.by_txn.get(&invite_txn).copied()
                    && let Some(leg) = self.legs.get(&serial)
                {
                    let terminated =
                        message::response(&leg.invite, StatusCode::RequestTerminated, None);
                    let _ = ctx.layer.send_response(ctx.now, invite_txn, terminated);
                    self.record(|r| r.agents.cancelled += 1);
                    self.end_leg(ctx, serial);
                }
            }
            TuEvent::Timeout { txn } | TuEvent::TransportError { txn } => {
                match self.by_txn.remove(&txn) {
                    Some(Purpose::Register(i)) => self.register_failed(ctx, i, "timeout"),
                    // No ACK for our 200: hang up what the node never confirmed.
                    Some(Purpose::Invite(serial)) => {
                        self.hang_up(ctx, serial);
                        if self
                            .legs
                            .get(&serial)
                            .is_some_and(|l| l.state != LegState::Ending)
                        {
                            self.end_leg(ctx, serial);
                        }
                    }
                    Some(Purpose::Bye(serial)) => self.end_leg(ctx, serial),
                    None => {}
                }
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<Timer>, timer: Timer) {
        match timer {
            Timer::RegisterNext => {
                if self.stopping {
                    return;
                }
                let i = self.next_register;
                self.next_register += 1;
                self.send_register(ctx, i, None);
                if self.next_register < self.agents.len() {
                    let gap = Duration::from_secs_f64(1.0 / self.cfg.register_rate.max(1.0));
                    ctx.after(gap, Timer::RegisterNext);
                }
            }
            Timer::Register(i) => {
                // A refresh, or a retry of whichever step failed (clearing or registering).
                if !self.stopping
                    && self.agents.get(i).is_some_and(|a| {
                        matches!(
                            a.phase,
                            RegPhase::Clearing | RegPhase::Registering | RegPhase::Registered
                        )
                    })
                {
                    self.send_register(ctx, i, None);
                }
            }
            Timer::Answer(serial) => self.answer(ctx, serial),
            Timer::HangUp(serial) => self.hang_up(ctx, serial),
            Timer::WrapDone(i) => {
                if let Some(a) = self.agents.get_mut(i)
                    && a.leg.is_none()
                    && a.wrap_until.is_some_and(|w| w <= ctx.now)
                {
                    a.wrap_until = None;
                    self.busy.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn on_control(&mut self, ctx: &mut Ctx<Timer>, control: Control) {
        match control {
            Control::StopArrivals => {}
            Control::HangUpAll => self.stop(ctx),
            Control::Abort => {
                self.stopping = true;
                let serials: Vec<u64> = self.legs.keys().copied().collect();
                for serial in serials {
                    self.end_leg(ctx, serial);
                }
                self.pending_unregister = 0;
            }
        }
    }

    fn finished(&self) -> bool {
        self.stopping && self.legs.is_empty() && self.pending_unregister == 0
    }
}

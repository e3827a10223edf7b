//! The SIP event loop shared by the simulated callers and agents: one UDP socket, one
//! `switchyard_sip::transaction::TransactionLayer`, and a heap of application timers (talk
//! time, patience, answer delay, ...), driven exactly as the node's endpoint drives its layer
//! (ADR 0003): feed messages and timeouts in, drain transmits to the socket and events to the
//! side's logic, sleep until the next deadline.
//!
//! Each side's logic is plain state machines behind [`Side`]; all calls of a side live in one
//! task, so there are no per-call tasks or locks on the SIP path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_sip::message;
use switchyard_sip::transaction::{Peer, Timers, TransactionLayer, Transport, TuEvent};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What the runner tells a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Callers: no new calls.
    StopArrivals,
    /// End every call now (BYE or CANCEL) and finish once they are gone.
    HangUpAll,
    /// Give up on whatever is left: record it and return.
    Abort,
}

/// The per-side logic the loop drives.
pub trait Side {
    /// Application timer keys.
    type Timer: Copy + Ord;

    /// Called once before the loop starts (first arrival, first REGISTER).
    fn start(&mut self, ctx: &mut Ctx<Self::Timer>);
    fn on_event(&mut self, ctx: &mut Ctx<Self::Timer>, event: TuEvent);
    fn on_timer(&mut self, ctx: &mut Ctx<Self::Timer>, timer: Self::Timer);
    fn on_control(&mut self, ctx: &mut Ctx<Self::Timer>, control: Control);
    /// The loop returns once this is true.
    fn finished(&self) -> bool;
}

/// What a side's logic may touch: the transaction layer, its timers and the clock.
pub struct Ctx<T> {
    pub layer: TransactionLayer,
    pub local: SocketAddr,
    pub now: Instant,
    timers: BinaryHeap<Reverse<(Instant, u64, T)>>,
    timer_seq: u64,
}

impl<T: Copy + Ord> Ctx<T> {
    /// Fires `timer` after `delay`. Timers are never cancelled: a side ignores one that no
    /// longer applies (its call is gone or has moved on), which keeps this a plain heap.
    pub fn after(&mut self, delay: Duration, timer: T) {
        self.at(self.now + delay, timer);
    }

    pub fn at(&mut self, when: Instant, timer: T) {
        self.timer_seq += 1;
        self.timers.push(Reverse((when, self.timer_seq, timer)));
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop_due(&mut self) -> Option<T> {
        match self.timers.peek() {
            Some(Reverse((at, _, _))) if *at <= self.now => {
                self.timers.pop().map(|Reverse((_, _, t))| t)
            }
            _ => None,
        }
    }
}

/// A UDP peer (the harness speaks UDP only).
pub fn udp(addr: SocketAddr) -> Peer {
    Peer {
        addr,
        transport: Transport::Udp,
        connection: None,
    }
}

/// Runs `side` on `socket` until it is finished.
pub async fn run<S: Side>(
    socket: UdpSocket,
    mut side: S,
    mut control: mpsc::UnboundedReceiver<Control>,
    t1: Duration,
) -> S {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return side,
    };
    let mut ctx = Ctx {
        layer: TransactionLayer::new(Timers {
            t1,
            ..Timers::default()
        }),
        local,
        now: Instant::now(),
        timers: BinaryHeap::new(),
        timer_seq: 0,
    };
    side.start(&mut ctx);
    let mut buf = vec![0u8; 65_535];
    let mut control_open = true;
    loop {
        flush(&socket, &mut side, &mut ctx).await;
        if side.finished() {
            return side;
        }
        let deadline = [ctx.layer.poll_timeout(), ctx.next_timer()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = received {
                    ctx.now = Instant::now();
                    feed(&mut ctx, &buf[..n], from);
                    // Take what else is queued before going round, so bursts cost one wakeup.
                    for _ in 0..64 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => feed(&mut ctx, &buf[..n], from),
                            Err(_) => break,
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {}
            c = control.recv(), if control_open => {
                ctx.now = Instant::now();
                match c {
                    Some(c) => side.on_control(&mut ctx, c),
                    None => control_open = false,
                }
            }
        }
        ctx.now = Instant::now();
        ctx.layer.handle_timeout(ctx.now);
        while let Some(timer) = ctx.pop_due() {
            side.on_timer(&mut ctx, timer);
        }
    }
}

/// Parses one datagram into the layer; garbage is dropped (the node's problem to report, and
/// nothing a harness should crash on).
fn feed<T: Copy + Ord>(ctx: &mut Ctx<T>, bytes: &[u8], from: SocketAddr) {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return; // keep-alive
    }
    if let Ok(msg) = message::parse(bytes) {
        ctx.layer.handle_message(ctx.now, msg, udp(from));
    }
}

/// Hands events to the side and sends what the layer produced, until both are empty.
async fn flush<S: Side>(socket: &UdpSocket, side: &mut S, ctx: &mut Ctx<S::Timer>) {
    loop {
        let mut idle = true;
        while let Some(event) = ctx.layer.poll_event() {
            idle = false;
            side.on_event(ctx, event);
        }
        while let Some(t) = ctx.layer.poll_transmit() {
            idle = false;
            if socket.send_to(&t.bytes, t.peer.addr).await.is_err()
                && let Some(txn) = t.txn
            {
                ctx.layer.on_transport_error(txn);
            }
        }
        if idle {
            return;
        }
    }
}

/// What a caller arranged for its call, read by the agent that answers it (the two sides
/// are different tasks; the caller's From user ties them together).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub talk: Duration,
    pub agent_hangs_up: bool,
}

#[derive(Debug, Default)]
struct Entry {
    plan: Option<Plan>,
    agent_answered: Option<(Instant, String)>,
}

/// Plans and answer times by caller user.
#[derive(Debug, Default)]
pub struct CallBook {
    entries: Mutex<HashMap<String, Entry>>,
}

impl CallBook {
    pub fn plan(&self, caller: &str, plan: Plan) {
        if let Ok(mut m) = self.entries.lock() {
            m.entry(caller.to_owned()).or_default().plan = Some(plan);
        }
    }

    pub fn plan_of(&self, caller: &str) -> Option<Plan> {
        self.entries.lock().ok()?.get(caller)?.plan
    }

    /// The agent `ext` sent its 200 for `caller`'s call at `at`.
    pub fn agent_answered(&self, caller: &str, at: Instant, ext: &str) {
        if let Ok(mut m) = self.entries.lock()
            && let Some(e) = m.get_mut(caller)
        {
            e.agent_answered = Some((at, ext.to_owned()));
        }
    }

    pub fn answered_by(&self, caller: &str) -> Option<(Instant, String)> {
        self.entries
            .lock()
            .ok()?
            .get(caller)?
            .agent_answered
            .clone()
    }

    pub fn forget(&self, caller: &str) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(caller);
        }
    }
}

/// `SIP/2.0/UDP local;branch=...;rport`.
pub fn via(local: SocketAddr, branch: &str) -> switchyard_sip::rsip::headers::Via {
    format!("SIP/2.0/UDP {local};branch={branch};rport").into()
}

/// Where in-dialog requests go: the dialog's remote target (the node's Contact), when it names
/// an IP address.
pub fn dialog_target(dialog: &switchyard_sip::dialog::Dialog) -> Option<SocketAddr> {
    let uri = switchyard_sip::message::parse_uri(&dialog.remote_target).ok()?;
    let ip: std::net::IpAddr = match &uri.host_with_port.host {
        switchyard_sip::rsip::Host::IpAddr(ip) => *ip,
        switchyard_sip::rsip::Host::Domain(domain) => domain.to_string().parse().ok()?,
    };
    let port = uri
        .host_with_port
        .port
        .as_ref()
        .map_or(5060, |p| *p.value());
    Some(SocketAddr::new(ip, port))
}

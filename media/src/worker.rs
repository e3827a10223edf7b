//! One media worker thread: a thin epoll loop moving packets between sockets and the protocol
//! types. Nothing on the packet path allocates: datagrams are read into one reused buffer,
//! rewritten in place and sent from it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::dtmf::{DtmfSender, DtmfStep, ToneDetector};
use crate::handle::Pool;
use crate::jitter::JitterBuffer;
use crate::mixer::{self, MonitorMode, ROLES};
use crate::playback::{Pacer, Playback, SLACK, Tick};
use crate::recorder::{Block, Recording, WriterMsg};
use crate::rtcp::{self, ReceptionStats, ReportBlock};
use crate::rtp::{self, DtmfDetector, FRAME_SAMPLES, HEADER_LEN, OutStream};
use crate::sys::{self, Epoll, Waker};
use crate::{Codec, EndpointId, EndpointStats, MediaEvent, Prompt, RemoteReport, g711};

/// Epoll token of the waker; endpoint tokens are `slot << 1 | is_rtcp`.
const WAKE_TOKEN: u64 = u64::MAX;
/// Room for any sane RTP packet; a datagram that fills it may be truncated and is dropped.
const BUF_LEN: usize = 2048;
const HOUSEKEEPING: Duration = Duration::from_millis(250);
const METRICS_EVERY: Duration = Duration::from_secs(1);
const FRAME: usize = FRAME_SAMPLES as usize;
/// Jitter buffer delay where audio is mixed or recorded.
const JITTER_DELAY: u32 = 3 * FRAME_SAMPLES;
/// Payload bytes of one 20 ms G.711 frame after the RTP header.
const FRAME_END: usize = HEADER_LEN + FRAME;

pub(crate) enum Command {
    Add {
        id: EndpointId,
        port: u16,
        rtp: UdpSocket,
        rtcp: UdpSocket,
    },
    SetRemote {
        id: EndpointId,
        remote: Remote,
    },
    Play {
        id: EndpointId,
        prompts: Vec<Arc<Prompt>>,
        looped: bool,
        interruptible: bool,
    },
    StopPlayback {
        id: EndpointId,
    },
    Bridge {
        a: EndpointId,
        b: EndpointId,
    },
    Release {
        id: EndpointId,
    },
    Stats {
        id: EndpointId,
        reply: Sender<EndpointStats>,
    },
    Record {
        id: u64,
        caller: EndpointId,
        agent: EndpointId,
        block: Block,
        spare: Receiver<Block>,
    },
    StopRecording {
        id: EndpointId,
    },
    Monitor {
        supervisor: EndpointId,
        caller: EndpointId,
        agent: EndpointId,
        mode: MonitorMode,
    },
    SetMonitorMode {
        supervisor: EndpointId,
        mode: MonitorMode,
    },
    StopMonitor {
        supervisor: EndpointId,
    },
    SendDtmf {
        id: EndpointId,
        digit: char,
        duration: Duration,
    },
    DetectInband {
        id: EndpointId,
        enabled: bool,
    },
}

/// The far end of an endpoint as negotiated in SDP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote {
    pub(crate) addr: SocketAddr,
    pub(crate) codec: Codec,
    pub(crate) payload_type: u8,
    pub(crate) telephone_event_pt: Option<u8>,
}

/// Counters the worker bumps and the handle reads; each worker owns its own, so they are never
/// contended.
#[derive(Default)]
pub(crate) struct WorkerStats {
    pub(crate) received: AtomicU64,
    pub(crate) relayed: AtomicU64,
    pub(crate) played: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) unexpected: AtomicU64,
    pub(crate) rtcp_received: AtomicU64,
    pub(crate) rtcp_invalid: AtomicU64,
    pub(crate) rtcp_sent: AtomicU64,
    pub(crate) mixed: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) cpu_nanos: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Ep {
    id: EndpointId,
    port: u16,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    remote: Option<Remote>,
    /// Where RTP really comes from, once the first packet arrived.
    latched: Option<SocketAddr>,
    out: OutStream,
    playback: Option<Playback>,
    /// Slot of the bridged endpoint.
    peer: Option<usize>,
    dtmf: DtmfDetector,
    last_activity: Instant,
    /// Whether an inactivity timeout may be reported (set by `set_remote` and each packet).
    timeout_armed: bool,
    report: RtcpState,
    /// Decoded incoming audio, while a recording or mix uses this endpoint.
    tap: Option<Box<Tap>>,
    /// Recordings and mixes using `tap`.
    taps: u8,
    /// What this endpoint sends comes from a mix, not from relay.
    mixed: bool,
    /// A key press being sent to this endpoint; it has the floor over relay and mixes.
    dtmf_out: Option<DtmfSender>,
    /// In-band DTMF detection, for legs that do not send telephone-events.
    inband: Option<Box<ToneDetector>>,
}

/// Per-endpoint RTCP state: what we received and sent, and what the far end reported.
struct RtcpState {
    rx: ReceptionStats,
    packets_sent: u64,
    octets_sent: u64,
    /// Whether RTP went out since our last report (SR rather than RR).
    sent_since_report: bool,
    /// Where the far end's RTCP comes from (symmetric RTCP), once it sent some.
    from: Option<SocketAddr>,
    /// NTP middle bits of the last SR received, and when it arrived.
    last_sr: Option<(u32, Instant)>,
    remote: Option<RemoteReport>,
    received: u64,
    sent: u64,
    next_report: Instant,
}

struct Tap {
    jitter: JitterBuffer,
    /// The frame popped at the current clock step.
    frame: [i16; FRAME],
}

impl Ep {
    fn target(&self) -> Option<SocketAddr> {
        self.latched.or(self.remote.map(|r| r.addr))
    }

    /// Whether audio relayed from the peer may be sent to this endpoint now.
    fn takes_relay(&self) -> bool {
        self.playback.is_none() && !self.mixed && self.dtmf_out.is_none()
    }

    fn sent(&mut self, payload: usize) {
        self.report.packets_sent += 1;
        self.report.octets_sent += payload as u64;
        self.report.sent_since_report = true;
    }

    fn stats(&self) -> EndpointStats {
        EndpointStats {
            packets_received: self.report.rx.received(),
            packets_lost: self.report.rx.lost(),
            jitter: samples_to_duration(self.report.rx.jitter()),
            packets_sent: self.report.packets_sent,
            rtcp_received: self.report.received,
            rtcp_sent: self.report.sent,
            remote: self.report.remote,
        }
    }
}

fn samples_to_duration(samples: u32) -> Duration {
    Duration::from_micros(u64::from(samples) * 125)
}

/// A supervisor monitoring (or a third party conferenced into) a call.
#[derive(Clone, Copy)]
struct Mix {
    /// Slots by role: caller, agent, supervisor.
    slots: [usize; 3],
    mode: MonitorMode,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Audio,
    TelephoneEvent,
}

/// Worker settings from [`crate::MediaConfig`].
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) rtp_timeout: Duration,
    pub(crate) rtcp_interval: Duration,
}

pub(crate) struct Worker {
    index: usize,
    epoll: Epoll,
    waker: Arc<Waker>,
    commands: Receiver<Command>,
    events: Sender<MediaEvent>,
    pool: Arc<Pool>,
    stats: Arc<WorkerStats>,
    timing: Timing,
    slots: Vec<Option<Ep>>,
    free_slots: Vec<usize>,
    by_id: HashMap<EndpointId, usize>,
    buf: Box<[u8; BUF_LEN]>,
    ready: Vec<libc::epoll_event>,
    /// Earliest playback deadline, if anything plays.
    next_tick: Option<Instant>,
    /// The 20 ms clock of jitter buffers, recordings, mixes and DTMF sending, while any runs.
    clock: Option<Pacer>,
    recordings: Vec<Recording>,
    mixes: Vec<Mix>,
    writer: Sender<WriterMsg>,
    /// Origin of arrival times for jitter.
    epoch: Instant,
    /// SDES CNAME of this worker's streams.
    cname: Box<[u8]>,
    next_housekeeping: Instant,
    next_metrics: Instant,
    /// Counter values at the last metrics flush, to export deltas.
    flushed: [u64; KINDS.len()],
    random: RandomState,
    draws: u64,
}

/// Packet counters exported as `switchyard_media_packets_total{kind}`.
const KINDS: [&str; 10] = [
    "received",
    "relayed",
    "played",
    "invalid",
    "unexpected",
    "rtcp_received",
    "rtcp_invalid",
    "rtcp_sent",
    "mixed",
    "send_error",
];

impl WorkerStats {
    fn counters(&self) -> [&AtomicU64; KINDS.len()] {
        [
            &self.received,
            &self.relayed,
            &self.played,
            &self.invalid,
            &self.unexpected,
            &self.rtcp_received,
            &self.rtcp_invalid,
            &self.rtcp_sent,
            &self.mixed,
            &self.send_errors,
        ]
    }
}

/// Where a worker's recordings and events go.
pub(crate) struct Outputs {
    pub(crate) events: Sender<MediaEvent>,
    pub(crate) writer: Sender<WriterMsg>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        epoll: Epoll,
        waker: Arc<Waker>,
        commands: Receiver<Command>,
        outputs: Outputs,
        pool: Arc<Pool>,
        stats: Arc<WorkerStats>,
        timing: Timing,
        cname: String,
    ) -> io::Result<Self> {
        epoll.add(waker.fd(), WAKE_TOKEN)?;
        let now = Instant::now();
        Ok(Self {
            index,
            epoll,
            waker,
            commands,
            events: outputs.events,
            pool,
            stats,
            timing,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            buf: Box::new([0; BUF_LEN]),
            ready: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            next_tick: None,
            clock: None,
            recordings: Vec::new(),
            mixes: Vec::new(),
            writer: outputs.writer,
            epoch: now,
            cname: cname.into_bytes().into_boxed_slice(),
            next_housekeeping: now + HOUSEKEEPING,
            next_metrics: now + METRICS_EVERY,
            flushed: [0; KINDS.len()],
            random: RandomState::new(),
            draws: 0,
        })
    }

    pub(crate) fn run(mut self) {
        tracing::debug!(worker = self.index, "media worker started");
        loop {
            let now = Instant::now();
            let mut deadline = self.next_housekeeping;
            if let Some(tick) = self.next_tick {
                deadline = deadline.min(tick);
            }
            if let Some(clock) = &self.clock {
                deadline = deadline.min(clock.next_due());
            }
            let mut ready = std::mem::take(&mut self.ready);
            match self
                .epoll
                .wait(&mut ready, deadline.saturating_duration_since(now))
            {
                Ok(events) => {
                    // Commands first: a packet sent after `bridge` returned must find the bridge
                    // in place even when epoll lists its socket ahead of the waker.
                    let now = Instant::now();
                    if !self.drain_commands(now) {
                        break;
                    }
                    for ev in events {
                        let token = ev.u64;
                        if token == WAKE_TOKEN {
                            self.waker.reset();
                        } else if token & 1 == 0 {
                            self.on_rtp((token >> 1) as usize, now);
                        } else {
                            self.on_rtcp((token >> 1) as usize, now);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Not expected with valid arguments; back off rather than spin.
                    tracing::error!(worker = self.index, error = %e, "epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.ready = ready;
            let now = Instant::now();
            if !self.drain_commands(now) {
                break;
            }
            if self.next_tick.is_some_and(|t| t <= now + SLACK) {
                self.tick_playback(now);
            }
            if self.clock.is_some() {
                self.on_clock(now);
            }
            if now >= self.next_housekeeping {
                self.housekeeping(now);
            }
        }
        for recording in self.recordings.drain(..) {
            recording.finish();
        }
        tracing::debug!(worker = self.index, "media worker stopped");
    }

    /// Applies queued commands; false once the handle is gone and the queue is empty.
    fn drain_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.apply(cmd, now),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn apply(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Add {
                id,
                port,
                rtp,
                rtcp,
            } => self.add(id, port, rtp, rtcp, now),
            Command::SetRemote { id, remote } => {
                let first_report = now + self.report_interval();
                if let Some(ep) = self.endpoint(id) {
                    if ep.remote.is_some_and(|r| r.addr != remote.addr) {
                        ep.latched = None;
                        ep.report.from = None;
                    }
                    if ep.remote.is_none() {
                        ep.report.next_report = first_report;
                    }
                    ep.remote = Some(remote);
                    ep.last_activity = now;
                    ep.timeout_armed = true;
                }
            }
            Command::Play {
                id,
                prompts,
                looped,
                interruptible,
            } => {
                if let Some(ep) = self.endpoint(id) {
                    ep.playback = Some(Playback::new(prompts, looped, interruptible, now));
                    ep.out.interrupt();
                    self.next_tick = Some(now);
                }
            }
            Command::StopPlayback { id } => {
                if let Some(ep) = self.endpoint(id) {
                    ep.playback = None;
                    ep.out.interrupt();
                }
            }
            Command::Bridge { a, b } => self.bridge(a, b),
            Command::Release { id } => self.release(id),
            Command::Stats { id, reply } => {
                // A dropped `reply` tells the handle the endpoint is unknown.
                if let Some(ep) = self.endpoint(id) {
                    let _ = reply.send(ep.stats());
                }
            }
            Command::Record {
                id,
                caller,
                agent,
                block,
                spare,
            } => self.record(id, caller, agent, block, spare, now),
            Command::StopRecording { id } => {
                if let Some(slot) = self.slot_of(id) {
                    self.stop_recordings(slot);
                }
            }
            Command::Monitor {
                supervisor,
                caller,
                agent,
                mode,
            } => self.monitor([caller, agent, supervisor], mode, now),
            Command::SetMonitorMode { supervisor, mode } => {
                if let Some(slot) = self.slot_of(supervisor)
                    && let Some(i) = self.mix_of(slot)
                {
                    self.mixes[i].mode = mode;
                    self.apply_mix_routes(i);
                }
            }
            Command::StopMonitor { supervisor } => {
                if let Some(slot) = self.slot_of(supervisor)
                    && let Some(i) = self.mix_of(slot)
                {
                    self.dissolve_mix(i);
                }
            }
            Command::SendDtmf {
                id,
                digit,
                duration,
            } => {
                let samples = u32::try_from(duration.as_millis() * 8).unwrap_or(u32::MAX);
                if let Some(ep) = self.endpoint(id) {
                    let inband = ep.remote.is_some_and(|r| r.telephone_event_pt.is_none());
                    ep.dtmf_out = DtmfSender::new(digit, samples, inband);
                    ep.out.interrupt();
                    self.start_clock(now);
                }
            }
            Command::DetectInband { id, enabled } => {
                if let Some(ep) = self.endpoint(id) {
                    ep.inband = enabled.then(Box::default);
                }
            }
        }
    }

    fn endpoint(&mut self, id: EndpointId) -> Option<&mut Ep> {
        let slot = self.slot_of(id)?;
        self.slots[slot].as_mut()
    }

    fn slot_of(&self, id: EndpointId) -> Option<usize> {
        let slot = self.by_id.get(&id).copied();
        if slot.is_none() {
            tracing::debug!(endpoint = %id, "command for unknown endpoint ignored");
        }
        slot
    }

    fn add(&mut self, id: EndpointId, port: u16, rtp: UdpSocket, rtcp: UdpSocket, now: Instant) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let registered = self
            .epoll
            .add(rtp.as_raw_fd(), (slot as u64) << 1)
            .and_then(|()| self.epoll.add(rtcp.as_raw_fd(), (slot as u64) << 1 | 1));
        if let Err(e) = registered {
            tracing::error!(endpoint = %id, error = %e, "cannot watch RTP socket; endpoint dropped");
            let _ = self.epoll.delete(rtp.as_raw_fd());
            self.free_slots.push(slot);
            self.forget(port);
            return;
        }
        let random = self.random_u64(id.0);
        self.slots[slot] = Some(Ep {
            id,
            port,
            rtp,
            rtcp,
            remote: None,
            latched: None,
            out: OutStream::new(random as u32, (random >> 32) as u16, (random >> 16) as u32),
            playback: None,
            peer: None,
            dtmf: DtmfDetector::default(),
            last_activity: now,
            timeout_armed: false,
            report: RtcpState {
                rx: ReceptionStats::default(),
                packets_sent: 0,
                octets_sent: 0,
                sent_since_report: false,
                from: None,
                last_sr: None,
                remote: None,
                received: 0,
                sent: 0,
                next_report: now,
            },
            tap: None,
            taps: 0,
            mixed: false,
            dtmf_out: None,
            inband: None,
        });
        self.by_id.insert(id, slot);
    }

    /// Random SSRC, first sequence number and timestamp (RFC 3550 §5.1), and RTCP report
    /// intervals, from std's randomly keyed hasher.
    fn random_u64(&self, salt: u64) -> u64 {
        let mut h = self.random.build_hasher();
        h.write_u64(salt);
        h.finish()
    }

    /// The RTCP interval randomised over [0.5, 1.5) of the configured one (RFC 3550 §6.3.1),
    /// so endpoints created together do not report in step.
    fn report_interval(&mut self) -> Duration {
        self.draws += 1;
        let r = self.random_u64(self.draws ^ 0x5254_4350);
        let factor = 0.5 + (r >> 11) as f64 / (1u64 << 53) as f64;
        self.timing.rtcp_interval.mul_f64(factor)
    }

    fn release(&mut self, id: EndpointId) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        self.stop_recordings(slot);
        if let Some(i) = self.mix_of(slot) {
            self.dissolve_mix(i);
        }
        self.unlink(slot);
        self.by_id.remove(&id);
        if let Some(ep) = self.slots[slot].take() {
            // Closing the sockets also removes them from epoll; deleting first keeps that
            // explicit and cheap.
            let _ = self.epoll.delete(ep.rtp.as_raw_fd());
            let _ = self.epoll.delete(ep.rtcp.as_raw_fd());
            drop(ep.rtp);
            drop(ep.rtcp);
            self.forget(ep.port);
        }
        self.free_slots.push(slot);
    }

    /// Returns a port pair to the pool and the endpoint's share of this worker's load.
    fn forget(&self, port: u16) {
        self.pool.free(port);
        self.pool.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }

    fn bridge(&mut self, a: EndpointId, b: EndpointId) {
        let (Some(sa), Some(sb)) = (self.slot_of(a), self.slot_of(b)) else {
            return;
        };
        if sa == sb {
            return;
        }
        self.unlink(sa);
        self.unlink(sb);
        for (slot, peer) in [(sa, sb), (sb, sa)] {
            if let Some(ep) = self.slots[slot].as_mut() {
                ep.peer = Some(peer);
                ep.playback = None;
                ep.out.interrupt();
            }
        }
    }

    fn unlink(&mut self, slot: usize) {
        let peer = self.slots[slot].as_mut().and_then(|ep| ep.peer.take());
        if let Some(ep) = peer.and_then(|p| self.slots[p].as_mut()) {
            ep.peer = None;
        }
    }

    fn start_clock(&mut self, now: Instant) {
        if self.clock.is_none() {
            self.clock = Some(Pacer::new(now));
        }
    }

    /// Starts decoding an endpoint's incoming audio into a jitter buffer (shared by recordings
    /// and mixes).
    fn tap(&mut self, slot: usize) {
        if let Some(ep) = self.slots[slot].as_mut() {
            ep.taps += 1;
            if ep.tap.is_none() {
                ep.tap = Some(Box::new(Tap {
                    jitter: JitterBuffer::new(JITTER_DELAY),
                    frame: [0; FRAME],
                }));
            }
        }
    }

    fn untap(&mut self, slot: usize) {
        if let Some(ep) = self.slots[slot].as_mut() {
            ep.taps = ep.taps.saturating_sub(1);
            if ep.taps == 0 {
                ep.tap = None;
            }
        }
    }

    fn record(
        &mut self,
        id: u64,
        caller: EndpointId,
        agent: EndpointId,
        block: Block,
        spare: Receiver<Block>,
        now: Instant,
    ) {
        let recording = match (self.slot_of(caller), self.slot_of(agent)) {
            (Some(c), Some(a)) => Recording::new(id, c, a, block, spare, self.writer.clone()),
            _ => {
                // The file was opened by the handle; close it empty.
                let _ = self.writer.try_send(WriterMsg::Close { id });
                return;
            }
        };
        // One recording per caller endpoint: a new one replaces it.
        self.stop_recordings(recording.caller);
        self.tap(recording.caller);
        self.tap(recording.agent);
        self.recordings.push(recording);
        self.start_clock(now);
    }

    /// Ends the recordings `slot` takes part in.
    fn stop_recordings(&mut self, slot: usize) {
        while let Some(i) = self
            .recordings
            .iter()
            .position(|r| r.caller == slot || r.agent == slot)
        {
            let recording = self.recordings.swap_remove(i);
            self.untap(recording.caller);
            self.untap(recording.agent);
            recording.finish();
        }
    }

    fn mix_of(&self, slot: usize) -> Option<usize> {
        self.mixes.iter().position(|m| m.slots.contains(&slot))
    }

    fn monitor(&mut self, ids: [EndpointId; 3], mode: MonitorMode, now: Instant) {
        let [Some(c), Some(a), Some(s)] = ids.map(|id| self.slot_of(id)) else {
            return;
        };
        if c == a || a == s || c == s {
            return;
        }
        // An endpoint is in one mix at a time; a new one replaces the old.
        for slot in [c, a, s] {
            if let Some(i) = self.mix_of(slot) {
                self.dissolve_mix(i);
            }
        }
        // The supervisor's own bridge, if any, would compete with the mix.
        self.unlink(s);
        for slot in [c, a, s] {
            self.tap(slot);
        }
        self.mixes.push(Mix {
            slots: [c, a, s],
            mode,
        });
        self.apply_mix_routes(self.mixes.len() - 1);
        self.start_clock(now);
    }

    /// Decides, per party, whether it hears relayed audio (caller and agent hearing only each
    /// other over their bridge) or the mix.
    fn apply_mix_routes(&mut self, i: usize) {
        let Mix { slots, mode } = self.mixes[i];
        for role in ROLES {
            let heard = mixer::hears(mode, role);
            let slot = slots[role as usize];
            let Some(ep) = self.slots[slot].as_mut() else {
                continue;
            };
            let only_peer = ep
                .peer
                .is_some_and(|p| slots.iter().zip(heard).all(|(&other, h)| h == (other == p)));
            let mixed = !only_peer;
            if mixed != ep.mixed {
                ep.mixed = mixed;
                ep.out.interrupt();
            }
        }
    }

    fn dissolve_mix(&mut self, i: usize) {
        let mix = self.mixes.swap_remove(i);
        for slot in mix.slots {
            if let Some(ep) = self.slots[slot].as_mut()
                && ep.mixed
            {
                ep.mixed = false;
                ep.out.interrupt();
            }
            self.untap(slot);
        }
    }

    /// Reads one datagram (level-triggered epoll reports the socket again if more wait) and
    /// relays it to the bridged peer.
    fn on_rtp(&mut self, slot: usize, now: Instant) {
        let until_clock = self.clock.as_ref().map_or(0, |c| {
            duration_to_samples(c.next_due().saturating_duration_since(now))
        });
        let arrival = duration_to_samples(now.duration_since(self.epoch));
        let Some(ep) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let (len, from) = match ep.rtp.recv_from(&mut self.buf[..]) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!(endpoint = %ep.id, error = %e, "RTP receive failed");
                return;
            }
        };
        bump(&self.stats.received);
        let packet = &mut self.buf[..len];
        let Some(hdr) = (len < BUF_LEN).then(|| rtp::parse(packet).ok()).flatten() else {
            bump(&self.stats.invalid);
            return;
        };
        let Some(remote) = ep.remote else {
            bump(&self.stats.unexpected);
            return;
        };
        match ep.latched {
            None => {
                if from != remote.addr {
                    tracing::debug!(endpoint = %ep.id, sdp = %remote.addr, actual = %from, "RTP latched to source address");
                }
                ep.latched = Some(from);
            }
            Some(addr) if addr != from => {
                bump(&self.stats.unexpected);
                return;
            }
            Some(_) => {}
        }
        ep.last_activity = now;
        ep.timeout_armed = true;
        let payload = &packet[hdr.payload_start..hdr.payload_end];
        let mut digit = None;
        let kind = if hdr.payload_type == remote.payload_type {
            if let Some(tap) = ep.tap.as_mut() {
                tap.jitter
                    .push(hdr.timestamp, remote.codec, payload, until_clock);
            }
            if let Some(detector) = ep.inband.as_mut() {
                digit = detector.push(remote.codec, payload);
            }
            Kind::Audio
        } else if Some(hdr.payload_type) == remote.telephone_event_pt {
            digit = ep.dtmf.on_packet(hdr.ssrc, hdr.timestamp, payload);
            Kind::TelephoneEvent
        } else {
            bump(&self.stats.unexpected);
            return;
        };
        ep.report.rx.on_packet(
            hdr.ssrc,
            hdr.seq,
            hdr.timestamp,
            arrival,
            kind == Kind::Audio,
        );
        if let Some(digit) = digit {
            let _ = self.events.send(MediaEvent::Dtmf {
                endpoint: ep.id,
                digit,
            });
            if ep.playback.as_ref().is_some_and(|p| p.interruptible) {
                ep.playback = None;
                ep.out.interrupt();
                let _ = self.events.send(MediaEvent::PlaybackInterrupted {
                    endpoint: ep.id,
                    digit,
                });
            }
        }
        let Some(peer) = ep.peer else {
            return;
        };
        let Some(dst) = self.slots.get_mut(peer).and_then(Option::as_mut) else {
            return;
        };
        // A prompt, a mix or a key press being sent to the peer has the floor.
        if !dst.takes_relay() {
            return;
        }
        let (Some(dst_remote), Some(target)) = (dst.remote, dst.target()) else {
            return;
        };
        let payload_type = match kind {
            Kind::Audio => {
                g711::transcode(
                    &mut packet[hdr.payload_start..hdr.payload_end],
                    remote.codec,
                    dst_remote.codec,
                );
                dst_remote.payload_type
            }
            Kind::TelephoneEvent => match dst_remote.telephone_event_pt {
                Some(pt) => pt,
                None => return,
            },
        };
        let stamp = dst
            .out
            .relay(now, hdr.ssrc, hdr.seq, hdr.timestamp, hdr.marker);
        rtp::write_header(packet, payload_type, stamp, dst.out.ssrc());
        match dst.rtp.send_to(packet, target) {
            Ok(_) => {
                bump(&self.stats.relayed);
                dst.sent(hdr.payload_end - hdr.payload_start);
            }
            Err(_) => bump(&self.stats.send_errors),
        }
    }

    /// Reads one RTCP datagram: the far end's reports, and a sign of life.
    fn on_rtcp(&mut self, slot: usize, now: Instant) {
        let Some(ep) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Ok((len, from)) = ep.rtcp.recv_from(&mut self.buf[..]) else {
            return;
        };
        let summary = match rtcp::parse(&self.buf[..len.min(BUF_LEN)], ep.out.ssrc()) {
            Ok(s) if ep.remote.is_some() => s,
            _ => return bump(&self.stats.rtcp_invalid),
        };
        // Once RTP latched, RTCP is taken only from the same host.
        if ep.latched.is_some_and(|rtp| rtp.ip() != from.ip()) {
            return bump(&self.stats.rtcp_invalid);
        }
        bump(&self.stats.rtcp_received);
        let state = &mut ep.report;
        state.received += 1;
        state.from = Some(from);
        if let Some(sender) = summary.sender {
            state.last_sr = Some((sender.ntp_middle, now));
        }
        if let Some(block) = summary.about_us {
            state.remote = Some(RemoteReport {
                fraction_lost: block.fraction_lost,
                packets_lost: block.cumulative_lost,
                jitter: samples_to_duration(block.jitter),
                round_trip: rtcp::round_trip(&block, rtcp::ntp_now()),
            });
        }
        ep.last_activity = now;
        ep.timeout_armed = true;
    }

    /// Sends every due playback frame and finds the next deadline.
    fn tick_playback(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for ep in self.slots.iter_mut().flatten() {
            let codec = ep.remote.map_or(Codec::Pcmu, |r| r.codec);
            // Without a remote, or while a key press goes out, the prompt runs on the clock,
            // unheard.
            let send_to = ep.remote.zip(ep.target()).filter(|_| ep.dtmf_out.is_none());
            let Some(playback) = ep.playback.as_mut() else {
                continue;
            };
            let mut sent = 0;
            loop {
                match playback.poll(now, codec, &mut self.buf[HEADER_LEN..FRAME_END]) {
                    Tick::Idle => break,
                    Tick::Frame { samples } => {
                        let Some((remote, target)) = send_to else {
                            continue;
                        };
                        let stamp = ep.out.local(now, samples);
                        let packet = &mut self.buf[..FRAME_END];
                        packet[0] = 0x80;
                        rtp::write_header(packet, remote.payload_type, stamp, ep.out.ssrc());
                        match ep.rtp.send_to(packet, target) {
                            Ok(_) => {
                                bump(&self.stats.played);
                                sent += 1;
                            }
                            Err(_) => bump(&self.stats.send_errors),
                        }
                    }
                    Tick::Finished => {
                        ep.playback = None;
                        let _ = self
                            .events
                            .send(MediaEvent::PlaybackFinished { endpoint: ep.id });
                        break;
                    }
                }
            }
            for _ in 0..sent {
                ep.sent(FRAME);
            }
            if let Some(p) = &ep.playback {
                next = Some(next.map_or(p.next_due(), |n| n.min(p.next_due())));
            }
        }
        self.next_tick = next;
    }

    /// Runs the 20 ms clock: every step pops each tapped endpoint's jitter buffer and feeds
    /// recordings; the last step of a catch-up also sends mixes and key presses.
    fn on_clock(&mut self, now: Instant) {
        while let Some(frames) = self.clock.as_mut().and_then(|c| c.poll(now)) {
            for step in 1..=frames {
                self.clock_step(now, step == frames);
            }
        }
        let busy = !self.recordings.is_empty()
            || !self.mixes.is_empty()
            || self.slots.iter().flatten().any(|ep| ep.dtmf_out.is_some());
        if !busy {
            self.clock = None;
        }
    }

    fn clock_step(&mut self, now: Instant, send: bool) {
        for ep in self.slots.iter_mut().flatten() {
            if let Some(tap) = ep.tap.as_mut() {
                tap.jitter.pop(&mut tap.frame);
            }
        }
        const SILENCE: [i16; FRAME] = [0; FRAME];
        let frame_of = |slots: &[Option<Ep>], slot: usize| -> [i16; FRAME] {
            slots
                .get(slot)
                .and_then(Option::as_ref)
                .and_then(|ep| ep.tap.as_ref())
                .map_or(SILENCE, |t| t.frame)
        };
        for recording in &mut self.recordings {
            let left = frame_of(&self.slots, recording.caller);
            let right = frame_of(&self.slots, recording.agent);
            recording.write(&left, &right);
        }
        if !send {
            return;
        }
        let mut mixed = [0i16; FRAME];
        for mix in &self.mixes {
            let frames = mix.slots.map(|slot| frame_of(&self.slots, slot));
            for role in ROLES {
                let Some(ep) = self.slots[mix.slots[role as usize]].as_mut() else {
                    continue;
                };
                if !ep.mixed || ep.playback.is_some() || ep.dtmf_out.is_some() {
                    continue;
                }
                let (Some(remote), Some(target)) = (ep.remote, ep.target()) else {
                    continue;
                };
                mixer::mix(
                    [&frames[0], &frames[1], &frames[2]],
                    mixer::hears(mix.mode, role),
                    &mut mixed,
                );
                for (byte, &sample) in self.buf[HEADER_LEN..FRAME_END].iter_mut().zip(&mixed) {
                    *byte = g711::encode(remote.codec, sample);
                }
                let stamp = ep.out.local(now, FRAME_SAMPLES);
                let packet = &mut self.buf[..FRAME_END];
                packet[0] = 0x80;
                rtp::write_header(packet, remote.payload_type, stamp, ep.out.ssrc());
                match ep.rtp.send_to(packet, target) {
                    Ok(_) => {
                        bump(&self.stats.mixed);
                        ep.sent(FRAME);
                    }
                    Err(_) => bump(&self.stats.send_errors),
                }
            }
        }
        for ep in self.slots.iter_mut().flatten() {
            if ep.dtmf_out.is_none() {
                continue;
            }
            let (Some(remote), Some(target)) = (ep.remote, ep.target()) else {
                ep.dtmf_out = None;
                continue;
            };
            let Some(sender) = ep.dtmf_out.as_mut() else {
                continue;
            };
            let step = sender.step(remote.codec, &mut self.buf[HEADER_LEN..FRAME_END]);
            let (stamp, payload_type, len) = match (step, remote.telephone_event_pt) {
                (DtmfStep::Event { start, .. }, Some(pt)) => (ep.out.event(now, start), pt, 4),
                (DtmfStep::Tone, _) => {
                    (ep.out.local(now, FRAME_SAMPLES), remote.payload_type, FRAME)
                }
                // Done, or the telephone-event type went away (re-INVITE).
                (DtmfStep::Done | DtmfStep::Event { .. }, _) => {
                    ep.dtmf_out = None;
                    ep.out.interrupt();
                    continue;
                }
            };
            let packet = &mut self.buf[..HEADER_LEN + len];
            packet[0] = 0x80;
            rtp::write_header(packet, payload_type, stamp, ep.out.ssrc());
            match ep.rtp.send_to(packet, target) {
                Ok(_) => {
                    bump(&self.stats.played);
                    ep.sent(len);
                }
                Err(_) => bump(&self.stats.send_errors),
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.next_housekeeping = now + HOUSEKEEPING;
        for slot in 0..self.slots.len() {
            let due = self.slots[slot]
                .as_ref()
                .is_some_and(|ep| ep.remote.is_some() && now >= ep.report.next_report);
            if due {
                let next = now + self.report_interval();
                self.send_report(slot, now, next);
            }
        }
        for ep in self.slots.iter_mut().flatten() {
            if ep.timeout_armed && now.duration_since(ep.last_activity) >= self.timing.rtp_timeout {
                ep.timeout_armed = false;
                let _ = self.events.send(MediaEvent::RtpTimeout { endpoint: ep.id });
            }
        }
        let cpu = sys::thread_cpu_time();
        self.stats.cpu_nanos.store(
            u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if now >= self.next_metrics {
            self.next_metrics = now + METRICS_EVERY;
            self.export_metrics(cpu);
        }
    }

    /// Sends our compound report (SR if we sent RTP since the last one, else RR) to the far
    /// end's RTCP address: where its RTCP comes from, else the RTP address's port + 1.
    fn send_report(&mut self, slot: usize, now: Instant, next: Instant) {
        let Some(ep) = self.slots[slot].as_mut() else {
            return;
        };
        ep.report.next_report = next;
        let Some(target) = ep.report.from.or_else(|| {
            let rtp = ep.target()?;
            Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
        }) else {
            return;
        };
        let state = &mut ep.report;
        let sender = state.sent_since_report.then(|| rtcp::SenderReport {
            ntp: rtcp::ntp_now(),
            rtp_timestamp: ep.out.timestamp_at(now),
            packets: state.packets_sent as u32,
            octets: state.octets_sent as u32,
        });
        state.sent_since_report = false;
        let block = state.rx.report().map(|b| match state.last_sr {
            Some((lsr, at)) => ReportBlock {
                last_sr: lsr,
                delay_since_last_sr: rtcp::compact(now.duration_since(at)),
                ..b
            },
            None => b,
        });
        let len = rtcp::write_report(&mut self.buf[..], ep.out.ssrc(), sender, block, &self.cname);
        match ep.rtcp.send_to(&self.buf[..len], target) {
            Ok(_) => {
                bump(&self.stats.rtcp_sent);
                state.sent += 1;
            }
            Err(_) => bump(&self.stats.send_errors),
        }
    }

    /// Publishes counter deltas through the `metrics` facade once a second, keeping registry
    /// lookups off the packet path.
    fn export_metrics(&mut self, cpu: Duration) {
        let current = self.stats.counters().map(|c| c.load(Ordering::Relaxed));
        for ((kind, now), before) in KINDS.iter().zip(current).zip(self.flushed) {
            metrics::counter!("switchyard_media_packets_total", "kind" => *kind)
                .increment(now - before);
        }
        self.flushed = current;
        let worker = self.index.to_string();
        metrics::gauge!("switchyard_media_endpoints", "worker" => worker.clone())
            .set(self.by_id.len() as f64);
        metrics::gauge!("switchyard_media_recordings", "worker" => worker.clone())
            .set(self.recordings.len() as f64);
        metrics::gauge!("switchyard_media_worker_cpu_seconds", "worker" => worker)
            .set(cpu.as_secs_f64());
    }
}

/// 8 kHz samples in `d`, wrapping like RTP timestamps.
fn duration_to_samples(d: Duration) -> u32 {
    (d.as_micros() / 125) as u32
}

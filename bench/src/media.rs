//! The harness's media plane: one dedicated thread sends and receives RTP for every call leg.
//!
//! Legs sit on a timer wheel of [`SLOTS`] one-millisecond slots; each tick serves one slot, so
//! every leg sends one 20 ms packet per turn of the wheel and the load is spread evenly instead
//! of bursting every 20 ms. The same tick drains the slot's sockets; the kernel timestamps each
//! datagram on arrival (`sys::recv_timestamped`), so reading late does not distort jitter or
//! gaps. Per packet nothing is allocated: each leg keeps its packet buffer, the receive buffer
//! is the thread's own, and statistics are plain counters.
//!
//! Legs are spread over `media.threads` such threads (one by default: about a thousand
//! concurrent calls with media per core, see ADR 0011).
//!
//! A dedicated OS thread rather than a tokio task, like the node's media workers (ADR 0004):
//! SIP bursts on the runtime must not delay the 20 ms clock, and the tick's lateness is then a
//! clean measure of whether the harness keeps up (see `monitor`).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchyard_media::rtp::{self, HEADER_LEN, Stamp};
use switchyard_media::{Codec as MediaCodec, g711};
use switchyard_sip::sdp::Codec;

use crate::rtpstats::{LegReport, RxStats};
use crate::stats::{Recorder, Side};
use crate::sys;

/// Wheel slots, one per millisecond of the 20 ms packet time.
const SLOTS: usize = 20;
/// A tick later than this counts as late (the "RTP tick lags > 5 ms").
pub const LATE_TICK: Duration = Duration::from_millis(5);
/// Samples per packet: 20 ms at 8 kHz.
const FRAME: usize = rtp::FRAME_SAMPLES as usize;
/// RFC 4733 end packets are sent three times (§2.5.1.4).
const END_REPEATS: u8 = 3;
/// RFC 4733 volume field: -10 dBm0, a typical key press.
const EVENT_VOLUME: u8 = 10;
/// RFC 4733 payload: event, E/R/volume, 16-bit duration.
const EVENT_LEN: usize = 4;

/// Where a leg sends, once the far end's SDP is known.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    pub addr: SocketAddr,
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event_pt: Option<u8>,
}

/// Called with a leg's figures when it is removed.
pub type OnLegEnd = Box<dyn FnOnce(LegReport) + Send>;

enum Cmd {
    Add {
        id: u64,
        socket: UdpSocket,
        side: Side,
    },
    Start {
        id: u64,
        remote: Remote,
    },
    Dtmf {
        id: u64,
        codes: Vec<u8>,
        tone_packets: u16,
        gap_packets: u16,
    },
    /// The call is being hung up: stop sending; its silence from here on is no gap.
    End {
        id: u64,
    },
    Remove {
        id: u64,
        done: OnLegEnd,
    },
    Stop,
}

/// Counters the monitor reads every interval.
#[derive(Debug, Default)]
pub struct MediaCounters {
    pub ticks: AtomicU64,
    pub late_ticks: AtomicU64,
    /// Largest tick lateness since the monitor last took it (µs).
    pub max_lag_us: AtomicU64,
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    /// Sends the socket refused (buffer full) or failed.
    pub send_errors: AtomicU64,
    pub legs: AtomicU64,
}

/// Handle on the media thread.
pub struct MediaEngine {
    /// One command channel per media thread; a leg lives on thread `id % threads`.
    txs: Vec<Mutex<Sender<Cmd>>>,
    next_id: AtomicU64,
    pub counters: Arc<MediaCounters>,
    threads: Mutex<Vec<JoinHandle<Histogram<u64>>>>,
    /// Keeps kernel receive timestamps switched on between legs (see `sys`).
    _keeper: UdpSocket,
}

impl MediaEngine {
    /// Starts `threads` media threads (at least one). `gap_threshold` decides which silences
    /// become gap events.
    pub fn start(
        recorder: Arc<Mutex<Recorder>>,
        gap_threshold: Duration,
        threads: usize,
    ) -> io::Result<MediaEngine> {
        let keeper = UdpSocket::bind(("127.0.0.1", 0))?;
        sys::enable_rx_timestamps(&keeper)?;
        let counters = Arc::new(MediaCounters::default());
        let mut txs = Vec::new();
        let mut handles = Vec::new();
        for k in 0..threads.max(1) {
            let (tx, rx) = channel();
            let thread_counters = counters.clone();
            let recorder = recorder.clone();
            let gap_ns = gap_threshold.as_nanos() as i64;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("bench-media-{k}"))
                    .spawn(move || Wheel::new(rx, thread_counters, recorder, gap_ns).run())?,
            );
            txs.push(Mutex::new(tx));
        }
        Ok(MediaEngine {
            txs,
            next_id: AtomicU64::new(1),
            counters,
            threads: Mutex::new(handles),
            _keeper: keeper,
        })
    }

    fn send(&self, id: u64, cmd: Cmd) {
        let k = (id % self.txs.len() as u64) as usize;
        // A thread only goes away at shutdown, when nothing is sent any more.
        if let Some(Ok(tx)) = self.txs.get(k).map(Mutex::lock) {
            let _ = tx.send(cmd);
        }
    }

    /// Binds a socket for a new leg on `ip` (any port) and registers it; the leg receives at
    /// once and sends after [`MediaEngine::start_sending`]. Returns its id and local address.
    pub fn add_leg(&self, ip: std::net::IpAddr, side: Side) -> io::Result<(u64, SocketAddr)> {
        let socket = UdpSocket::bind((ip, 0))?;
        socket.set_nonblocking(true)?;
        sys::enable_rx_timestamps(&socket)?;
        let local = socket.local_addr()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, Cmd::Add { id, socket, side });
        Ok((id, local))
    }

    /// Starts (or redirects, after a re-INVITE) the leg's audio towards `remote`.
    pub fn start_sending(&self, id: u64, remote: Remote) {
        self.send(id, Cmd::Start { id, remote });
    }

    /// Sends `digits` as RFC 4733 events, `tone` each with `gap` of audio between them.
    pub fn send_dtmf(&self, id: u64, digits: &str, tone: Duration, gap: Duration) {
        let packets = |d: Duration| (d.as_millis() / 20).clamp(1, u128::from(u16::MAX)) as u16;
        let codes = digits
            .chars()
            .filter_map(switchyard_media::dtmf::event_code)
            .collect();
        self.send(
            id,
            Cmd::Dtmf {
                id,
                codes,
                tone_packets: packets(tone),
                gap_packets: packets(gap),
            },
        );
    }

    /// Stops sending on a leg whose call is being hung up (BYE or CANCEL sent): the far end
    /// stops too, and the time until the hang-up completes is not a media gap.
    pub fn end_leg(&self, id: u64) {
        self.send(id, Cmd::End { id });
    }

    /// Stops the leg; `done` gets its figures on the media thread.
    pub fn remove_leg(&self, id: u64, done: OnLegEnd) {
        self.send(id, Cmd::Remove { id, done });
    }

    /// Stops the threads (legs still present are dropped unreported) and returns the
    /// histogram of tick lateness in microseconds, all threads together.
    pub fn shutdown(&self) -> Option<Histogram<u64>> {
        for tx in &self.txs {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(Cmd::Stop);
            }
        }
        let handles = std::mem::take(&mut *self.threads.lock().ok()?);
        let mut all: Option<Histogram<u64>> = None;
        for lag in handles.into_iter().filter_map(|h| h.join().ok()) {
            match all.as_mut() {
                Some(a) => {
                    // Same bounds on every thread: adding cannot fail.
                    let _ = a.add(&lag);
                }
                None => all = Some(lag),
            }
        }
        all
    }
}

/// One leg's state on the media thread.
struct Leg {
    socket: UdpSocket,
    side: Side,
    slot: usize,
    remote: Option<Remote>,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    first: bool,
    sent: u64,
    rx: RxStats,
    media_start_ns: i64,
    /// When the call began hanging up, if it has.
    ended_ns: Option<i64>,
    dtmf: DtmfSender,
    packet: [u8; HEADER_LEN + FRAME],
}

struct Wheel {
    rx: Receiver<Cmd>,
    counters: Arc<MediaCounters>,
    recorder: Arc<Mutex<Recorder>>,
    gap_threshold_ns: i64,
    legs: Vec<Option<Leg>>,
    free: Vec<usize>,
    index: HashMap<u64, usize>,
    slots: [Vec<usize>; SLOTS],
    /// A 20 ms frame of each side's tone in each codec: [side][codec].
    frames: [[[u8; FRAME]; 2]; 2],
    tick: u64,
    lag: Histogram<u64>,
}

impl Wheel {
    fn new(
        rx: Receiver<Cmd>,
        counters: Arc<MediaCounters>,
        recorder: Arc<Mutex<Recorder>>,
        gap_threshold_ns: i64,
    ) -> Wheel {
        // Callers send 400 Hz and agents 1000 Hz: both have a whole number of periods in 160
        // samples, so one precomputed frame repeats without a click.
        let frame = |hz: f64, codec: MediaCodec| {
            let mut f = [0u8; FRAME];
            for (i, b) in f.iter_mut().enumerate() {
                let t = i as f64 / 8000.0;
                let sample = (t * hz * std::f64::consts::TAU).sin() * 6000.0;
                *b = g711::encode(codec, sample as i16);
            }
            f
        };
        let frames = [
            [
                frame(400.0, MediaCodec::Pcmu),
                frame(400.0, MediaCodec::Pcma),
            ],
            [
                frame(1000.0, MediaCodec::Pcmu),
                frame(1000.0, MediaCodec::Pcma),
            ],
        ];
        Wheel {
            rx,
            counters,
            recorder,
            gap_threshold_ns,
            legs: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            slots: Default::default(),
            frames,
            tick: 0,
            lag: crate::stats::histogram(),
        }
    }

    fn run(mut self) -> Histogram<u64> {
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            if self.commands() {
                return self.lag;
            }
            let due = start + Duration::from_millis(self.tick);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let lag = Instant::now().saturating_duration_since(due);
            let lag_us = lag.as_micros() as u64;
            self.lag.saturating_record(lag_us.max(1));
            self.counters
                .max_lag_us
                .fetch_max(lag_us, Ordering::Relaxed);
            self.counters.ticks.fetch_add(1, Ordering::Relaxed);
            if lag > LATE_TICK {
                self.counters.late_ticks.fetch_add(1, Ordering::Relaxed);
            }
            // Far behind (the machine stalled): skip ahead rather than bursting every missed
            // packet at once; the skipped ticks show as lag.
            if lag > Duration::from_secs(1) {
                self.tick += (lag.as_millis() as u64 / 20) * 20;
            }
            let slot = (self.tick % SLOTS as u64) as usize;
            self.serve(slot, &mut buf);
            self.tick += 1;
        }
    }

    /// Applies queued commands; true when told to stop.
    fn commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => return true,
                Ok(cmd) => self.apply(cmd),
                Err(TryRecvError::Empty) => return false,
            }
        }
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add { id, socket, side } => {
                // The next slot to be served: the leg starts within a millisecond, and legs
                // added over time spread over the wheel.
                let slot = (self.tick % SLOTS as u64) as usize;
                let leg = Leg {
                    socket,
                    side,
                    slot,
                    remote: None,
                    ssrc: rand::random(),
                    seq: rand::random(),
                    timestamp: rand::random(),
                    first: true,
                    sent: 0,
                    rx: RxStats::default(),
                    media_start_ns: sys::realtime_ns(),
                    ended_ns: None,
                    dtmf: DtmfSender::default(),
                    packet: [0; HEADER_LEN + FRAME],
                };
                let at = match self.free.pop() {
                    Some(i) => {
                        self.legs[i] = Some(leg);
                        i
                    }
                    None => {
                        self.legs.push(Some(leg));
                        self.legs.len() - 1
                    }
                };
                self.index.insert(id, at);
                self.slots[slot].push(at);
                self.counters.legs.fetch_add(1, Ordering::Relaxed);
            }
            Cmd::Start { id, remote } => {
                if let Some(leg) = self.leg_mut(id) {
                    if leg.remote.is_none() {
                        leg.media_start_ns = sys::realtime_ns();
                    }
                    leg.remote = Some(remote);
                }
            }
            Cmd::Dtmf {
                id,
                codes,
                tone_packets,
                gap_packets,
            } => {
                if let Some(leg) = self.leg_mut(id) {
                    leg.dtmf = DtmfSender::new(&codes, tone_packets, gap_packets);
                }
            }
            Cmd::End { id } => {
                if let Some(leg) = self.leg_mut(id) {
                    leg.remote = None;
                    leg.ended_ns.get_or_insert_with(sys::realtime_ns);
                }
            }
            Cmd::Remove { id, done } => {
                let Some(at) = self.index.remove(&id) else {
                    return;
                };
                let Some(mut leg) = self.legs[at].take() else {
                    return;
                };
                self.slots[leg.slot].retain(|&i| i != at);
                self.free.push(at);
                self.counters.legs.fetch_sub(1, Ordering::Relaxed);
                // Packets already queued count: they arrived while the call was up.
                let mut buf = [0u8; 2048];
                Self::drain(&mut leg, &mut buf, &self.counters, None);
                let end = leg.ended_ns.unwrap_or_else(sys::realtime_ns);
                // Audio that never came back before the hang-up (a node that died) is a gap
                // too; it ends with the call.
                if let Some(last) = leg.rx.last_arrival()
                    && end - last > self.gap_threshold_ns
                    && let Ok(mut r) = self.recorder.lock()
                {
                    r.media_gap(leg.side, end, (end - last) as f64 / 1e6);
                }
                done(leg.rx.report(leg.media_start_ns, end, leg.sent));
            }
            Cmd::Stop => {}
        }
    }

    fn leg_mut(&mut self, id: u64) -> Option<&mut Leg> {
        let at = *self.index.get(&id)?;
        self.legs.get_mut(at)?.as_mut()
    }

    fn serve(&mut self, slot: usize, buf: &mut [u8; 2048]) {
        for k in 0..self.slots[slot].len() {
            let at = self.slots[slot][k];
            let Some(leg) = self.legs.get_mut(at).and_then(Option::as_mut) else {
                continue;
            };
            if let Some(remote) = leg.remote {
                let frame = &self.frames[leg.side as usize][codec_index(remote.codec)];
                Self::send_one(leg, remote, frame, &self.counters);
            }
            let gaps = (&self.recorder, self.gap_threshold_ns);
            Self::drain(leg, buf, &self.counters, Some(gaps));
        }
    }

    fn send_one(leg: &mut Leg, remote: Remote, frame: &[u8; FRAME], counters: &MediaCounters) {
        let len = match (remote.telephone_event_pt, leg.dtmf.next_packet()) {
            (Some(te), Some(event)) => write_event(
                &mut leg.packet,
                te,
                leg.seq,
                leg.timestamp,
                leg.ssrc,
                &event,
            ),
            _ => {
                leg.packet[HEADER_LEN..].copy_from_slice(frame);
                let stamp = Stamp {
                    seq: leg.seq,
                    timestamp: leg.timestamp,
                    marker: leg.first,
                };
                rtp::write_header(&mut leg.packet, remote.payload_type, stamp, leg.ssrc);
                HEADER_LEN + FRAME
            }
        };
        match leg.socket.send_to(&leg.packet[..len], remote.addr) {
            Ok(_) => {
                leg.sent += 1;
                counters.packets_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        leg.first = false;
        leg.seq = leg.seq.wrapping_add(1);
        leg.timestamp = leg.timestamp.wrapping_add(FRAME as u32);
    }

    /// Reads every datagram waiting on the leg's socket.
    fn drain(
        leg: &mut Leg,
        buf: &mut [u8; 2048],
        counters: &MediaCounters,
        gaps: Option<(&Arc<Mutex<Recorder>>, i64)>,
    ) {
        let te = leg.remote.and_then(|r| r.telephone_event_pt);
        loop {
            let (n, stamp) = match sys::recv_timestamped(&leg.socket, buf) {
                Ok(r) => r,
                // WouldBlock ends the batch; other errors (an ICMP report) are not packets.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let Ok(header) = rtp::parse(&buf[..n]) else {
                continue;
            };
            counters.packets_received.fetch_add(1, Ordering::Relaxed);
            let at = stamp.unwrap_or_else(sys::realtime_ns);
            let audio = Some(header.payload_type) != te && header.payload_type < 64;
            let arrival = leg.rx.on_packet(
                at,
                header.seq,
                header.timestamp,
                header.ssrc,
                header.marker,
                audio,
            );
            if let (Some((recorder, threshold)), Some(gap)) = (gaps, arrival.gap_ns)
                && gap > threshold
                && let Ok(mut r) = recorder.lock()
            {
                r.media_gap(leg.side, at, gap as f64 / 1e6);
            }
        }
    }
}

fn codec_index(codec: Codec) -> usize {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 1,
    }
}

/// Writes an RFC 4733 telephone-event packet into `packet` in place (no allocation: it runs
/// per packet) and returns its length. `audio_ts` is the stream's clock for this tick; every
/// packet of an event carries the event's start time (§2.3.3), and the first one the marker
/// bit (§2.3.2).
fn write_event(
    packet: &mut [u8],
    payload_type: u8,
    seq: u16,
    audio_ts: u32,
    ssrc: u32,
    event: &EventPacket,
) -> usize {
    let p = &mut packet[HEADER_LEN..HEADER_LEN + EVENT_LEN];
    p[0] = event.code;
    // E bit, reserved bit clear, volume.
    p[1] = if event.end { 0x80 } else { 0 } | EVENT_VOLUME;
    p[2..4].copy_from_slice(&event.duration.to_be_bytes());
    let stamp = Stamp {
        seq,
        timestamp: audio_ts.wrapping_sub(event.elapsed),
        marker: event.start,
    };
    rtp::write_header(packet, payload_type, stamp, ssrc);
    HEADER_LEN + EVENT_LEN
}

/// One RFC 4733 packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventPacket {
    code: u8,
    start: bool,
    end: bool,
    /// Duration field: samples since the event's start, this packet included.
    duration: u16,
    /// Samples from the event's start to this packet's audio time (to recover its timestamp).
    elapsed: u32,
}

/// Sends a string of key presses, one packet per 20 ms tick.
#[derive(Debug, Default)]
struct DtmfSender {
    codes: Vec<u8>,
    next: usize,
    tone_packets: u16,
    gap_packets: u16,
    state: DtmfState,
}

#[derive(Debug, Default, Clone, Copy)]
enum DtmfState {
    #[default]
    Idle,
    Tone {
        code: u8,
        sent: u16,
    },
    End {
        code: u8,
        sent: u16,
        left: u8,
    },
    Gap {
        left: u16,
    },
}

impl DtmfSender {
    fn new(codes: &[u8], tone_packets: u16, gap_packets: u16) -> DtmfSender {
        DtmfSender {
            codes: codes.to_vec(),
            next: 0,
            tone_packets,
            gap_packets,
            state: DtmfState::Idle,
        }
    }

    /// The event packet for this tick, or `None` for audio.
    fn next_packet(&mut self) -> Option<EventPacket> {
        let frame = FRAME as u32;
        match self.state {
            DtmfState::Idle => {
                let code = *self.codes.get(self.next)?;
                self.next += 1;
                self.state = if self.tone_packets <= 1 {
                    DtmfState::End {
                        code,
                        sent: 1,
                        left: END_REPEATS,
                    }
                } else {
                    DtmfState::Tone { code, sent: 1 }
                };
                Some(EventPacket {
                    code,
                    start: true,
                    end: false,
                    duration: FRAME as u16,
                    elapsed: 0,
                })
            }
            DtmfState::Tone { code, sent } => {
                let sent = sent + 1;
                let packet = EventPacket {
                    code,
                    start: false,
                    end: false,
                    duration: (u32::from(sent) * frame).min(u32::from(u16::MAX)) as u16,
                    elapsed: u32::from(sent - 1) * frame,
                };
                self.state = if sent >= self.tone_packets {
                    DtmfState::End {
                        code,
                        sent,
                        left: END_REPEATS,
                    }
                } else {
                    DtmfState::Tone { code, sent }
                };
                Some(packet)
            }
            DtmfState::End { code, sent, left } => {
                // End packets repeat the final duration; the audio clock runs on underneath.
                let elapsed = u32::from(sent) * frame + u32::from(END_REPEATS - left) * frame;
                self.state = if left <= 1 {
                    DtmfState::Gap {
                        left: self.gap_packets,
                    }
                } else {
                    DtmfState::End {
                        code,
                        sent,
                        left: left - 1,
                    }
                };
                Some(EventPacket {
                    code,
                    start: false,
                    end: true,
                    duration: (u32::from(sent) * frame).min(u32::from(u16::MAX)) as u16,
                    elapsed,
                })
            }
            DtmfState::Gap { left } => {
                self.state = if left <= 1 {
                    DtmfState::Idle
                } else {
                    DtmfState::Gap { left: left - 1 }
                };
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_packets_follow_rfc4733() {
        // Two keys, 3 packets of tone each, one packet of audio between them.
        let mut d = DtmfSender::new(&[1, 11], 3, 1);
        let packets: Vec<Option<EventPacket>> = (0..16).map(|_| d.next_packet()).collect();
        let first = packets[0].unwrap();
        assert!(first.start && !first.end && first.code == 1 && first.duration == 160);
        assert_eq!(packets[1].unwrap().duration, 320);
        assert_eq!(packets[2].unwrap().duration, 480);
        // Three end packets with the final duration.
        for p in &packets[3..6] {
            let p = p.unwrap();
            assert!(p.end);
            assert_eq!(p.duration, 480);
        }
        // Every packet of one event maps back to the same start timestamp.
        for (k, p) in packets[..6].iter().enumerate() {
            assert_eq!(p.unwrap().elapsed, k as u32 * 160);
        }
        assert_eq!(packets[6], None, "gap: audio");
        let second = packets[7].unwrap();
        assert!(second.start && second.code == 11);
        assert!(packets[13..].iter().all(Option::is_none), "then audio only");
    }

    #[test]
    fn event_packets_are_rfc4733_bytes() {
        // Key 5 for two packets of tone, sent as payload type 101 on a stream whose clock
        // wraps during the event.
        let mut d = DtmfSender::new(&[5], 2, 1);
        let mut buf = [0u8; HEADER_LEN + FRAME];
        let mut audio_ts = u32::MAX - 100;
        let mut seq = 0xFFFE;
        let mut wire = Vec::new();
        while let Some(event) = d.next_packet() {
            let len = write_event(&mut buf, 101, seq, audio_ts, 0x0102_0304, &event);
            wire.push(buf[..len].to_vec());
            seq = seq.wrapping_add(1);
            audio_ts = audio_ts.wrapping_add(160);
        }
        let start = (u32::MAX - 100).to_be_bytes();
        let expected: [(u8, u16, [u8; 4]); 5] = [
            // Marker and payload type; event 5, volume 10, 160 samples so far.
            (0x80 | 101, 0xFFFE, [5, 0x0A, 0x00, 0xA0]),
            (101, 0xFFFF, [5, 0x0A, 0x01, 0x40]),
            // Three end packets: E bit, the final duration repeated.
            (101, 0x0000, [5, 0x8A, 0x01, 0x40]),
            (101, 0x0001, [5, 0x8A, 0x01, 0x40]),
            (101, 0x0002, [5, 0x8A, 0x01, 0x40]),
        ];
        assert_eq!(wire.len(), expected.len());
        for (packet, (byte1, seq, payload)) in wire.iter().zip(expected) {
            assert_eq!(packet.len(), 16, "12-byte header and 4-byte event");
            assert_eq!(packet[0], 0x80, "version 2, no padding, extension or CSRC");
            assert_eq!(packet[1], byte1);
            assert_eq!(packet[2..4], seq.to_be_bytes());
            assert_eq!(
                packet[4..8],
                start,
                "every packet has the event's start time"
            );
            assert_eq!(packet[8..12], [1, 2, 3, 4]);
            assert_eq!(packet[12..], payload);
        }
    }
}

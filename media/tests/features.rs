//! RTCP, recording, supervisor mixes and DTMF against real UDP sockets on 127.0.0.1, with
//! synthetic tones checked by Goertzel filters. Each test uses its own port range.

use std::f32::consts::TAU;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use switchyard_media::rtcp::{self, ReportBlock};
use switchyard_media::rtp::{self, Stamp};
use switchyard_media::{
    Codec, Endpoint, MediaConfig, MediaEvent, MediaHandle, MonitorMode, Prompt, g711, start,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const FRAME: Duration = Duration::from_millis(20);

fn media(port_min: u16, rtp_timeout: Duration) -> (MediaHandle, Receiver<MediaEvent>) {
    start(MediaConfig {
        workers: 1,
        bind_ip: LOCALHOST,
        port_min,
        port_max: port_min + 99,
        rtp_timeout,
        rtcp_interval: Duration::from_millis(300),
    })
    .expect("media starts")
}

/// A test phone: an RTP socket and the RTCP socket on the port above it, its own stream
/// numbering and a tone generator.
struct Phone {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    codec: Codec,
    ssrc: u32,
    seq: u16,
    ts: u32,
    /// Samples of tone generated so far, for phase continuity.
    n: u64,
    received: Vec<i16>,
}

impl Phone {
    /// Binds an even/odd pair at or above `port`.
    fn new(mut port: u16, codec: Codec, ssrc: u32) -> Phone {
        loop {
            if let (Ok(rtp), Ok(rtcp)) = (
                UdpSocket::bind((LOCALHOST, port)),
                UdpSocket::bind((LOCALHOST, port + 1)),
            ) {
                rtp.set_nonblocking(true).unwrap();
                rtcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                return Phone {
                    rtp,
                    rtcp,
                    codec,
                    ssrc,
                    seq: 1000,
                    ts: 50_000,
                    n: 0,
                    received: Vec::new(),
                };
            }
            port += 2;
        }
    }

    fn addr(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }

    fn payload_type(&self) -> u8 {
        if self.codec == Codec::Pcmu { 0 } else { 8 }
    }

    /// Sends one 20 ms frame of `freq` Hz (silence for 0) to `to`, unless `lost`.
    fn send_tone(&mut self, to: SocketAddr, freq: f32, lost: bool) {
        let mut packet = vec![0x80u8; 12];
        let stamp = Stamp {
            seq: self.seq,
            timestamp: self.ts,
            marker: false,
        };
        rtp::write_header(&mut packet, self.payload_type(), stamp, self.ssrc);
        for _ in 0..160 {
            let t = self.n as f32 / 8000.0;
            let v = if freq > 0.0 {
                (TAU * freq * t).sin() * 8000.0
            } else {
                0.0
            };
            packet.push(g711::encode(self.codec, v as i16));
            self.n += 1;
        }
        if !lost {
            self.rtp.send_to(&packet, to).unwrap();
        }
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
    }

    /// Reads whatever arrived, decoding audio packets; returns the RTP headers seen.
    fn drain(&mut self) -> Vec<rtp::RtpHeader> {
        let mut buf = [0u8; 2048];
        let mut headers = Vec::new();
        while let Ok((n, _)) = self.rtp.recv_from(&mut buf) {
            let Ok(h) = rtp::parse(&buf[..n]) else {
                continue;
            };
            if h.payload_type == self.payload_type() {
                self.received.extend(
                    buf[h.payload_start..h.payload_end]
                        .iter()
                        .map(|&b| g711::decode(self.codec, b)),
                );
            }
            headers.push(h);
        }
        headers
    }
}

/// Power of `freq` in `samples` relative to their total energy (1.0 for a pure tone).
fn tone_share(samples: &[i16], freq: f32) -> f32 {
    let coeff = 2.0 * (TAU * freq / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + f64::from(coeff) * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    if energy == 0.0 {
        return 0.0;
    }
    let power = s1 * s1 + s2 * s2 - f64::from(coeff) * s1 * s2;
    (2.0 * power / samples.len() as f64 / energy) as f32
}

/// Whether `freq` is clearly present in `samples` (and they are not silence).
fn has_tone(samples: &[i16], freq: f32) -> bool {
    let rms = (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
        / samples.len().max(1) as f64)
        .sqrt();
    rms > 500.0 && tone_share(samples, freq) > 0.15
}

fn wait_event(
    events: &Receiver<MediaEvent>,
    within: Duration,
    mut pick: impl FnMut(&MediaEvent) -> bool,
) -> Option<MediaEvent> {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(e) if pick(&e) => return Some(e),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Runs `frames` 20 ms steps on the wall clock, calling `step(i)` for each.
fn paced(frames: usize, mut step: impl FnMut(usize)) {
    let start = Instant::now();
    for i in 0..frames {
        if let Some(wait) = (start + FRAME * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        step(i);
    }
}

fn bridged_pair(
    media: &MediaHandle,
    caller: &Phone,
    agent: &Phone,
    te: bool,
) -> (Endpoint, Endpoint) {
    let a = media.allocate(None).unwrap();
    let b = media.allocate(Some(a.id)).unwrap();
    let te = te.then_some(101);
    media.set_remote(a.id, caller.addr(), caller.codec, caller.payload_type(), te);
    media.set_remote(b.id, agent.addr(), agent.codec, agent.payload_type(), te);
    media.bridge(a.id, b.id).unwrap();
    (a, b)
}

#[test]
fn rtcp_reports_loss_and_jitter_and_reads_the_far_ends_reports() {
    let (media, events) = media(12_000, Duration::from_millis(700));
    let mut caller = Phone::new(12_200, Codec::Pcmu, 0xCA11);
    let mut agent = Phone::new(12_300, Codec::Pcma, 0xA6E7);
    let (a, b) = bridged_pair(&media, &caller, &agent, false);
    // 100 frames from the caller, every 10th lost and every 7th 10 ms late; the agent sends
    // cleanly so the caller's leg has something to put in its SR.
    paced(100, |i| {
        if i % 7 == 3 {
            std::thread::sleep(Duration::from_millis(10));
        }
        caller.send_tone(a.local, 1000.0, i % 10 == 5);
        agent.send_tone(b.local, 0.0, false);
        caller.drain();
        agent.drain();
    });
    let stats = media.endpoint_stats(a.id).unwrap();
    assert_eq!(stats.packets_lost, 10, "{stats:?}");
    assert!((85..=90).contains(&stats.packets_received), "{stats:?}");
    assert!(
        stats.jitter > Duration::from_millis(1) && stats.jitter < Duration::from_millis(20),
        "{stats:?}"
    );
    assert!(stats.packets_sent >= 95, "{stats:?}");
    assert!(stats.rtcp_sent >= 2, "{stats:?}");
    assert_eq!(media.endpoint_stats(b.id).unwrap().packets_lost, 0);

    // The caller's phone got our reports on its RTCP port: the latest says ~10% lost.
    let mut buf = [0u8; 1500];
    let mut about_caller: Option<ReportBlock> = None;
    let mut our_sr = None;
    caller
        .rtcp
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok((n, _)) = caller.rtcp.recv_from(&mut buf) {
            let summary = rtcp::parse(&buf[..n], 0xCA11).expect("our RTCP is valid");
            our_sr = summary.sender.or(our_sr);
            about_caller = summary.about_us.or(about_caller);
        }
    }
    let block = about_caller.expect("a report block about the caller's stream");
    assert_eq!(block.cumulative_lost, 10);
    let sr = our_sr.expect("a sender report, as we relay the agent's audio");
    assert!(sr.packets >= 95);

    // The phone's RR about our stream shows up in the endpoint's stats, with the round trip
    // from its LSR/DLSR echo.
    let rr_block = ReportBlock {
        ssrc: sr.ssrc,
        fraction_lost: 25,
        cumulative_lost: 3,
        highest_seq: 1,
        jitter: 80,
        last_sr: sr.ntp_middle,
        delay_since_last_sr: 0,
    };
    let mut rr = [0u8; rtcp::REPORT_MAX_LEN];
    let n = rtcp::write_report(&mut rr, 0xCA11, None, Some(rr_block), b"phone");
    let rtcp_port = SocketAddr::new(LOCALHOST, a.local.port() + 1);
    caller.rtcp.send_to(&rr[..n], rtcp_port).unwrap();
    // Garbage on the RTCP port is counted, never fatal.
    caller
        .rtcp
        .send_to(&[0x80, 201, 0, 40, 1], rtcp_port)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    let remote = loop {
        let stats = media.endpoint_stats(a.id).unwrap();
        if let Some(r) = stats.remote {
            break r;
        }
        assert!(Instant::now() < deadline, "RR not taken into account");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((remote.fraction_lost, remote.packets_lost), (25, 3));
    assert_eq!(remote.jitter, Duration::from_millis(10));
    assert!(
        remote
            .round_trip
            .is_some_and(|rtt| rtt < Duration::from_secs(2))
    );
    // The garbage was sent after the report: give the worker the moment it needs to read it.
    let deadline = Instant::now() + Duration::from_secs(1);
    while media.stats().rtcp_invalid < 1 {
        assert!(Instant::now() < deadline, "garbage RTCP not counted");
        std::thread::sleep(Duration::from_millis(10));
    }

    // RTCP alone keeps a leg alive; when it stops too, the timeout fires.
    let _ = events.try_iter().count();
    paced(50, |i| {
        if i % 10 == 0 {
            caller.rtcp.send_to(&rr[..n], rtcp_port).unwrap();
        }
        agent.send_tone(b.local, 0.0, false);
    });
    assert!(
        events
            .try_iter()
            .all(|e| e != MediaEvent::RtpTimeout { endpoint: a.id }),
        "RTCP counts as liveness"
    );
    assert!(
        wait_event(&events, Duration::from_secs(2), |e| {
            *e == MediaEvent::RtpTimeout { endpoint: a.id }
        })
        .is_some()
    );
}

fn temp_wav(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("switchyard-media-test-{}", std::process::id()))
        .join("nested")
        .join(format!("{name}.wav"))
}

/// First 20 ms window (as a sample index) from which `freq` is present.
fn onset(samples: &[i16], freq: f32) -> Option<usize> {
    (0..samples.len().saturating_sub(160))
        .step_by(40)
        .find(|&i| has_tone(&samples[i..i + 160], freq))
}

#[test]
fn records_caller_left_agent_right_time_aligned_and_flushed_every_second() {
    let (media, events) = media(12_400, Duration::from_secs(60));
    let mut caller = Phone::new(12_600, Codec::Pcmu, 1);
    let mut agent = Phone::new(12_700, Codec::Pcma, 2);
    let (a, b) = bridged_pair(&media, &caller, &agent, false);
    let path = temp_wav("recording");
    media.record(a.id, b.id, &path).unwrap();
    // Caller: 1 kHz from 0.2 s to 1.2 s; agent: 2 kHz from 0.7 s to 1.7 s; silence around.
    let mut valid_midway = false;
    paced(120, |i| {
        let t = i as f32 * 0.02;
        let tone = |from: f32, freq: f32| {
            if t >= from && t < from + 1.0 {
                freq
            } else {
                0.0
            }
        };
        caller.send_tone(a.local, tone(0.2, 1000.0), false);
        agent.send_tone(b.local, tone(0.7, 2000.0), false);
        if i == 100 {
            // After 2 s the file on disk is already valid and holds at least a second.
            let reader = hound::WavReader::open(&path).expect("valid while recording");
            valid_midway = reader.len() >= 2 * 8000;
        }
    });
    assert!(valid_midway, "recording is flushed about every second");
    media.stop_recording(a.id);
    let Some(MediaEvent::RecordingStopped {
        endpoint,
        path: closed,
        duration,
    }) = wait_event(&events, Duration::from_secs(2), |e| {
        matches!(e, MediaEvent::RecordingStopped { .. })
    })
    else {
        panic!("no RecordingStopped");
    };
    assert_eq!((endpoint, &closed), (a.id, &path));
    assert!(
        duration >= Duration::from_millis(2300) && duration <= Duration::from_millis(2600),
        "{duration:?}"
    );

    let mut reader = hound::WavReader::open(&path).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let left_on = onset(&left, 1000.0).expect("1 kHz on the left");
    let right_on = onset(&right, 2000.0).expect("2 kHz on the right");
    assert!(onset(&left, 2000.0).is_none(), "no agent audio on the left");
    assert!(
        onset(&right, 1000.0).is_none(),
        "no caller audio on the right"
    );
    // The agent's tone started 500 ms after the caller's: so it does in the file.
    let offset_ms = (right_on as i64 - left_on as i64) / 8;
    assert!((470..=530).contains(&offset_ms), "offset {offset_ms} ms");
    // And the caller's tone starts 200 ms (plus the jitter buffer's 60 ms) into the file.
    let start_ms = left_on as i64 / 8;
    assert!(
        (200..=320).contains(&start_ms),
        "caller tone at {start_ms} ms"
    );
    // The tone lasts about a second.
    let tone_ms = (left_on..left.len().saturating_sub(160))
        .step_by(80)
        .take_while(|&i| has_tone(&left[i..i + 160], 1000.0))
        .count()
        * 10;
    assert!((950..=1050).contains(&tone_ms), "tone {tone_ms} ms");
    let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
}

#[test]
fn release_closes_a_recording_and_bad_paths_fail_at_once() {
    let (media, events) = media(12_800, Duration::from_secs(60));
    let a = media.allocate(None).unwrap();
    let b = media.allocate(Some(a.id)).unwrap();
    assert!(
        media
            .record(a.id, b.id, std::path::Path::new("/proc/nope/x.wav"))
            .is_err()
    );
    let path = temp_wav("released");
    media.record(a.id, b.id, &path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    media.release(b.id);
    let stopped = wait_event(&events, Duration::from_secs(2), |e| {
        matches!(e, MediaEvent::RecordingStopped { .. })
    });
    assert!(
        matches!(stopped, Some(MediaEvent::RecordingStopped { endpoint, .. }) if endpoint == a.id)
    );
    let reader = hound::WavReader::open(&path).unwrap();
    // About 300 ms of silence.
    assert!(
        (1600..=3200).contains(&(reader.len() / 2)),
        "{}",
        reader.len()
    );
    let _ = std::fs::remove_file(&path);
}

/// What each party hears in `mode`, as (caller, agent, supervisor) received audio.
fn run_monitor(
    media: &MediaHandle,
    mode: Option<MonitorMode>,
    phones: &mut [Phone; 3],
    eps: &[Endpoint; 3],
) {
    if let Some(mode) = mode {
        media.set_monitor_mode(eps[2].id, mode);
    }
    // Let the change settle, then listen for 400 ms.
    let freqs = [600.0, 1000.0, 1500.0];
    for phone in phones.iter_mut() {
        phone.received.clear();
    }
    paced(35, |i| {
        for ((phone, ep), freq) in phones.iter_mut().zip(eps).zip(freqs) {
            phone.send_tone(ep.local, freq, false);
            phone.drain();
            if i == 15 {
                phone.received.clear();
            }
        }
    });
}

#[test]
fn listen_whisper_and_barge_deliver_the_right_mix() {
    let (media, _events) = media(12_900, Duration::from_secs(60));
    let caller = Phone::new(13_100, Codec::Pcmu, 1);
    let agent = Phone::new(13_200, Codec::Pcma, 2);
    let supervisor = Phone::new(13_300, Codec::Pcma, 3);
    let (a, b) = bridged_pair(&media, &caller, &agent, false);
    let s = media.allocate(Some(a.id)).unwrap();
    media.set_remote(s.id, supervisor.addr(), Codec::Pcma, 8, None);
    media
        .monitor(s.id, a.id, b.id, MonitorMode::Listen)
        .unwrap();
    let mut phones = [caller, agent, supervisor];
    let eps = [a, b, s];
    let (c600, a1000, s1500) = (600.0, 1000.0, 1500.0);
    // [caller hears, agent hears, supervisor hears] as (600, 1000, 1500) presence.
    let expect = |phones: &[Phone; 3], table: [[bool; 3]; 3], mode: &str| {
        for (who, (phone, row)) in ["caller", "agent", "supervisor"]
            .iter()
            .zip(phones.iter().zip(table))
        {
            let got = [c600, a1000, s1500].map(|f| has_tone(&phone.received, f));
            assert_eq!(got, row, "{mode}: {who} hears (600, 1000, 1500)");
        }
    };
    run_monitor(&media, None, &mut phones, &eps);
    expect(
        &phones,
        [
            [false, true, false],
            [true, false, false],
            [true, true, false],
        ],
        "listen",
    );
    run_monitor(&media, Some(MonitorMode::Whisper), &mut phones, &eps);
    expect(
        &phones,
        [
            [false, true, false],
            [true, false, true],
            [true, true, false],
        ],
        "whisper",
    );
    run_monitor(&media, Some(MonitorMode::Barge), &mut phones, &eps);
    expect(
        &phones,
        [
            [false, true, true],
            [true, false, true],
            [true, true, false],
        ],
        "barge",
    );
    // Ending the mix returns the call to plain relay; the supervisor hears nothing.
    media.stop_monitor(s.id);
    run_monitor(&media, None, &mut phones, &eps);
    expect(
        &phones,
        [
            [false, true, false],
            [true, false, false],
            [false, false, false],
        ],
        "stopped",
    );
    assert!(media.stats().mixed > 0);
}

#[test]
fn dtmf_generated_as_events_and_tones_is_detected_and_interrupts_prompts() {
    let (media, events) = media(13_400, Duration::from_secs(60));
    // Two endpoints wired to each other: what one sends, the other receives.
    let x = media.allocate(None).unwrap();
    let y = media.allocate(Some(x.id)).unwrap();
    media.set_remote(x.id, y.local, Codec::Pcmu, 0, Some(101));
    media.set_remote(y.id, x.local, Codec::Pcmu, 0, Some(101));
    media
        .send_dtmf(x.id, '7', Duration::from_millis(100))
        .unwrap();
    assert_eq!(
        wait_event(&events, Duration::from_secs(1), |e| matches!(
            e,
            MediaEvent::Dtmf { .. }
        )),
        Some(MediaEvent::Dtmf {
            endpoint: y.id,
            digit: '7'
        })
    );
    assert!(
        media
            .send_dtmf(x.id, 'x', Duration::from_millis(100))
            .is_err()
    );

    // Without telephone-events, keys go in-band and are detected where enabled.
    media.set_remote(x.id, y.local, Codec::Pcma, 8, None);
    media.set_remote(y.id, x.local, Codec::Pcma, 8, None);
    media.detect_inband_dtmf(y.id, true);
    // Y plays an interruptible sequence towards X; the key from X stops it.
    let long = Arc::new(Prompt::from_pcm(&vec![1000; 8000]).unwrap());
    media.play_sequence(y.id, vec![long.clone(), long], true);
    std::thread::sleep(Duration::from_millis(100));
    media
        .send_dtmf(x.id, '#', Duration::from_millis(120))
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(e) = events.recv_timeout(Duration::from_millis(50)) {
            seen.push(e);
        }
    }
    assert_eq!(
        seen,
        [
            MediaEvent::Dtmf {
                endpoint: y.id,
                digit: '#'
            },
            MediaEvent::PlaybackInterrupted {
                endpoint: y.id,
                digit: '#'
            }
        ]
    );
}

#[test]
fn rfc4733_packets_keep_the_legs_stream_and_end_three_times() {
    let (media, _events) = media(13_500, Duration::from_secs(60));
    let mut caller = Phone::new(13_700, Codec::Pcmu, 9);
    let mut agent = Phone::new(13_800, Codec::Pcmu, 10);
    let (a, b) = bridged_pair(&media, &caller, &agent, true);
    // Relay some agent audio to the caller first, to see the stream continue.
    paced(5, |_| agent.send_tone(b.local, 0.0, false));
    std::thread::sleep(Duration::from_millis(30));
    let before = caller.drain();
    let last = *before.last().expect("relayed audio");
    media
        .send_dtmf(a.id, '1', Duration::from_millis(100))
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 256];
    caller.rtp.set_nonblocking(false).unwrap();
    caller
        .rtp
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while got.len() < 8 && Instant::now() < deadline {
        if let Ok((n, _)) = caller.rtp.recv_from(&mut buf) {
            let h = rtp::parse(&buf[..n]).unwrap();
            got.push((h, buf[h.payload_start..h.payload_end].to_vec()));
        }
    }
    // 100 ms: 5 packets (the last with E), then two more end packets.
    assert_eq!(got.len(), 7, "{got:?}");
    let ts = got[0].0.timestamp;
    for (i, (h, p)) in got.iter().enumerate() {
        assert_eq!((h.payload_type, h.ssrc, h.timestamp), (101, last.ssrc, ts));
        assert_eq!(h.seq, last.seq.wrapping_add(1 + i as u16));
        assert_eq!(h.marker, i == 0);
        assert_eq!(p[0], 1);
        let end = p[1] & 0x80 != 0;
        assert_eq!(end, i >= 4);
        let duration = u16::from_be_bytes([p[2], p[3]]);
        assert_eq!(duration, (160 * (i as u16 + 1)).min(800));
    }
    assert!(ts.wrapping_sub(last.timestamp) >= 160);
}

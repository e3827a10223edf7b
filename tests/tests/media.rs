//! Media through a real node: SIPp phones play RTP (pcap files written here) on both legs of a
//! call; the node records it and detects the caller's RFC 4733 key press.

mod common;

use std::f64::consts::TAU;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, NodeConfig};
use serde_json::Value;

const RATE: f64 = 8000.0;

/// One RTP packet of a pcap: when it is sent (from the start) and its RTP bytes.
struct Packet {
    at_ms: u64,
    rtp: Vec<u8>,
}

/// An RTP stream being written: 20 ms PCMU frames and RFC 4733 events on one SSRC.
struct Stream {
    packets: Vec<Packet>,
    seq: u16,
    ts: u32,
    ssrc: u32,
    /// Samples generated, for tone phase.
    n: u64,
}

impl Stream {
    fn new(ssrc: u32) -> Self {
        Self {
            packets: Vec::new(),
            seq: 100,
            ts: 16_000,
            ssrc,
            n: 0,
        }
    }

    fn header(&self, pt: u8, marker: bool, ts: u32) -> Vec<u8> {
        let mut h = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        h.extend_from_slice(&self.seq.to_be_bytes());
        h.extend_from_slice(&ts.to_be_bytes());
        h.extend_from_slice(&self.ssrc.to_be_bytes());
        h
    }

    /// `ms` of `freq` Hz (0: silence) as 20 ms PCMU packets.
    fn tone(&mut self, freq: f64, ms: u64) {
        for _ in 0..ms / 20 {
            let mut rtp = self.header(0, false, self.ts);
            for _ in 0..160 {
                let v = (TAU * freq * self.n as f64 / RATE).sin() * 8000.0;
                rtp.push(ulaw(if freq > 0.0 { v as i16 } else { 0 }));
                self.n += 1;
            }
            self.push(rtp);
            self.ts = self.ts.wrapping_add(160);
        }
    }

    /// Key `event` for 100 ms as RFC 4733 packets (payload type 101, three end packets).
    fn key(&mut self, event: u8) {
        let start = self.ts;
        for i in 1..=8u16 {
            let end = i >= 5;
            let duration = 160 * i.min(5);
            let mut rtp = self.header(101, i == 1, start);
            rtp.extend_from_slice(&[event, if end { 0x8A } else { 0x0A }]);
            rtp.extend_from_slice(&duration.to_be_bytes());
            // The end packets go out back to back with the last update.
            let at = self.packets.last().map_or(0, |p| p.at_ms) + if i <= 5 { 20 } else { 0 };
            self.packets.push(Packet { at_ms: at, rtp });
            self.seq = self.seq.wrapping_add(1);
        }
        self.ts = self.ts.wrapping_add(800);
        self.n += 800;
    }

    fn push(&mut self, rtp: Vec<u8>) {
        let at_ms = self.packets.last().map_or(0, |p| p.at_ms + 20);
        self.packets.push(Packet { at_ms, rtp });
        self.seq = self.seq.wrapping_add(1);
    }

    /// A pcap (Ethernet/IPv4/UDP) that SIPp's `play_pcap_audio` replays with these timings.
    fn write_pcap(&self, path: &Path) {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&65_535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
        for p in &self.packets {
            let udp_len = 8 + p.rtp.len();
            let ip_len = 20 + udp_len;
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
            let sum = ip
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum::<u32>();
            let sum = !(((sum & 0xFFFF) + (sum >> 16)) as u16);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&ip);
            frame.extend_from_slice(&6000u16.to_be_bytes());
            frame.extend_from_slice(&6000u16.to_be_bytes());
            frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
            frame.extend_from_slice(&[0, 0]);
            frame.extend_from_slice(&p.rtp);
            let secs = 1_700_000_000 + p.at_ms / 1000;
            let micros = (p.at_ms % 1000) * 1000;
            out.extend_from_slice(&(secs as u32).to_le_bytes());
            out.extend_from_slice(&(micros as u32).to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&frame);
        }
        fs::create_dir_all(path.parent().expect("pcap dir")).expect("create pcap dir");
        fs::write(path, out).expect("write pcap");
    }
}

/// G.711 μ-law encoding (Sun reference).
fn ulaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample) >> 2;
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    let pcm = pcm.min(8159) + (0x84 >> 2);
    let seg = (0..8).find(|&s| pcm < 0x40 << s).unwrap_or(8);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    (((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) as u8) ^ mask
}

/// Stereo 16-bit samples of a finalised WAV file, as (left, right).
fn read_stereo_wav(path: &Path) -> Option<(Vec<i16>, Vec<i16>)> {
    let bytes = fs::read(path).ok()?;
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut channels = 0;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let body = bytes.get(at + 8..at + 8 + len)?;
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().ok()?);
            assert_eq!((channels, rate), (2, 8000), "recording format");
        } else if id == b"data" {
            assert_eq!(channels, 2);
            let samples: Vec<i16> = body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            let left = samples.iter().step_by(2).copied().collect();
            let right = samples.iter().skip(1).step_by(2).copied().collect();
            return Some((left, right));
        }
        at += 8 + len + (len & 1);
    }
    None
}

/// Whether `freq` dominates the 20 ms window of `samples` at `at` (Goertzel power share).
fn has_tone(samples: &[i16], at: usize, freq: f64) -> bool {
    has_tone_share(samples, at, freq, 0.5)
}

/// Whether `freq` holds at least `share` of the energy of a non-silent 20 ms window at `at`.
fn has_tone_share(samples: &[i16], at: usize, freq: f64, share: f64) -> bool {
    let Some(window) = samples.get(at..at + 160) else {
        return false;
    };
    let coeff = 2.0 * (TAU * freq / RATE).cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &x in window {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    energy / 160.0 > 500.0 * 500.0 && 2.0 * power / 160.0 / energy > share
}

/// First sample index (10 ms steps) from which `freq` is present.
fn onset(samples: &[i16], freq: f64) -> Option<usize> {
    (0..samples.len())
        .step_by(80)
        .find(|&i| has_tone(samples, i, freq))
}

fn raw_cdrs(node: &Node) -> Vec<Value> {
    match node.get_json("/v1/cdrs?limit=1000") {
        Value::Object(mut page) => match page.remove("records") {
            Some(Value::Array(records)) => records,
            other => panic!("no records array: {other:?}"),
        },
        Value::Array(records) => records,
        other => panic!("unexpected /v1/cdrs body: {other}"),
    }
}

#[test]
fn call_audio_is_recorded_per_channel_and_caller_keys_are_detected() {
    let node = Node::start("media-recording", NodeConfig::default());

    // Agent: 500 ms of silence, then 1 s of 2 kHz, then silence.
    let agent = node
        .sipp("agent-2001", "agent_answer_play_pcap.xml")
        .server()
        .calls(1)
        .duration_ms(100)
        .timeout_secs(60);
    let mut stream = Stream::new(0xA6E7);
    stream.tone(0.0, 500);
    stream.tone(2000.0, 1000);
    stream.tone(0.0, 1500);
    stream.write_pcap(&agent.dir().join("agent.pcap"));
    let agent = agent.spawn();
    node.register_agents(&["2001".to_owned()], agent.local_port);

    // Caller: 1 s of 1 kHz at once, silence, key 5 at 1.5 s, silence.
    let caller = node
        .sipp("caller", "caller_play_pcap.xml")
        .duration_ms(3500)
        .timeout_secs(60);
    let mut stream = Stream::new(0xCA11);
    stream.tone(1000.0, 1000);
    stream.tone(0.0, 500);
    stream.key(5);
    stream.tone(0.0, 1000);
    stream.write_pcap(&caller.dir().join("caller.pcap"));
    let caller = caller.spawn();
    caller.expect_success_with(&node);
    agent.expect_success_with(&node);

    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(cdrs.len(), 1);
    let record = raw_cdrs(&node).into_iter().next().expect("a call record");
    assert_eq!(record["disposition"], "answered", "{record:#}");
    assert_eq!(record["dtmf"], "5", "the caller's RFC 4733 key: {record:#}");
    let caller_rtp = &record["caller_rtp"];
    assert!(
        caller_rtp["packets_received"].as_u64().unwrap_or(0) >= 100,
        "caller leg RTP statistics: {record:#}"
    );
    assert_eq!(caller_rtp["packets_lost"], 0, "{record:#}");
    assert!(
        record["agent_rtp"]["packets_received"]
            .as_u64()
            .unwrap_or(0)
            >= 100
    );

    let path = record["recording"]
        .as_str()
        .unwrap_or_else(|| panic!("the queue records by default: {record:#}"))
        .to_owned();
    let path = Path::new(&path);
    assert!(
        path.starts_with(node.dir.path()),
        "under the data dir: {path:?}"
    );
    assert!(
        path.file_name().is_some_and(
            |n| n.to_string_lossy() == format!("{}.wav", record["id"].as_str().unwrap())
        ),
        "named after the call: {path:?}"
    );
    // The writer thread closes the file just after the call ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (left, right) = loop {
        if let Some(channels) = read_stereo_wav(path) {
            break channels;
        }
        assert!(Instant::now() < deadline, "recording {path:?} not readable");
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = left.len() as f64 / RATE;
    assert!((3.0..6.0).contains(&seconds), "recording lasts {seconds} s");
    let left_on = onset(&left, 1000.0).expect("caller's 1 kHz on the left channel");
    let right_on = onset(&right, 2000.0).expect("agent's 2 kHz on the right channel");
    assert!(
        onset(&left, 2000.0).is_none(),
        "agent audio leaked into the left channel"
    );
    assert!(
        onset(&right, 1000.0).is_none(),
        "caller audio leaked into the right channel"
    );
    eprintln!(
        "recording: {seconds:.2} s, caller tone at {} ms, agent tone at {} ms",
        left_on / 8,
        right_on / 8
    );
    // Both phones start playing on the ACK: the agent's tone is 500 ms into its stream.
    let offset_ms = (right_on as i64 - left_on as i64) / 8;
    assert!(
        (440..=560).contains(&offset_ms),
        "agent tone {offset_ms} ms after the caller's, not ~500"
    );
    let tone_ms = (left_on..left.len())
        .step_by(80)
        .take_while(|&i| has_tone(&left, i, 1000.0))
        .count()
        * 10;
    assert!(
        (900..=1100).contains(&tone_ms),
        "caller tone lasts {tone_ms} ms"
    );
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn api(node: &Node, method: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = common::http::send_json(node.http, method, path, body, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, value)
}

#[test]
fn supervisor_listens_then_whispers_to_the_agent() {
    let node = Node::start("media-monitor", NodeConfig::default());
    // The agent's phone echoes what it hears, so the recording's right channel (what the node
    // receives from the agent) shows what the agent is sent.
    let agent = node
        .sipp("agent-2001", "agent_answer_wait_bye.xml")
        .server()
        .calls(1)
        .duration_ms(100)
        .timeout_secs(60)
        .arg("-rtp_echo")
        .spawn();
    node.register_agents(&["2001".to_owned()], agent.local_port);
    let caller = node
        .sipp("caller", "caller_play_pcap.xml")
        .duration_ms(6000)
        .timeout_secs(60);
    let mut stream = Stream::new(0xCA11);
    stream.tone(1000.0, 6000);
    stream.write_pcap(&caller.dir().join("caller.pcap"));
    let caller = caller.spawn();

    // Wait for the call to be connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    let call_id = loop {
        let calls = node.get_json("/v1/calls");
        if let Some(call) = calls
            .as_array()
            .and_then(|c| c.iter().find(|c| c["state"] == "connected"))
        {
            break call["id"].as_str().expect("call id").to_owned();
        }
        assert!(Instant::now() < deadline, "no connected call: {calls}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let monitor = format!("/v1/calls/{call_id}/monitor");
    let (status, body) = api(&node, "PUT", &monitor, r#"{"mode":"barge"}"#);
    assert_eq!(status, 409, "nobody monitors yet: {body}");
    let (status, body) = api(
        &node,
        "POST",
        "/v1/calls/nope/monitor",
        r#"{"supervisor":"2050","mode":"listen"}"#,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = api(
        &node,
        "POST",
        &monitor,
        r#"{"supervisor":"2050","mode":"shout"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(
        &node,
        "POST",
        &monitor,
        r#"{"supervisor":"2050","mode":"listen"}"#,
    );
    assert_eq!(status, 409, "2050 is not registered yet: {body}");

    // The supervisor's phone answers and sends a 500 Hz tone.
    let supervisor = node
        .sipp("supervisor-2050", "agent_answer_play_pcap.xml")
        .server()
        .calls(1)
        .duration_ms(100)
        .timeout_secs(60);
    let mut stream = Stream::new(0x5050);
    stream.tone(500.0, 8000);
    stream.write_pcap(&supervisor.dir().join("agent.pcap"));
    let supervisor = supervisor.spawn();
    node.register_agents(&["2050".to_owned()], supervisor.local_port);
    let (status, body) = api(
        &node,
        "POST",
        &monitor,
        r#"{"supervisor":"2050","mode":"listen"}"#,
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["monitor"]["supervisor"], "2050", "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.get_json(&format!("/v1/calls/{call_id}"))["monitor"]["answered"] != true {
        assert!(Instant::now() < deadline, "supervisor never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let joined_at = unix_ms();
    // Listening for a while: the agent hears only the caller.
    std::thread::sleep(Duration::from_millis(1500));
    let whisper_at = unix_ms();
    let (status, body) = api(&node, "PUT", &monitor, r#"{"mode":"whisper"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["monitor"]["mode"], "whisper", "{body}");
    let mixed = node.get("/metrics").text();
    assert!(
        mixed.lines().any(
            |l| l.starts_with("switchyard_media_packets_total{kind=\"mixed\"}")
                && !l.ends_with(" 0")
        ),
        "mixed packets are counted"
    );

    caller.expect_success_with(&node);
    agent.expect_success_with(&node);
    // The node hangs the supervisor up when the call ends.
    supervisor.expect_success_with(&node);

    node.wait_cdrs(1, Duration::from_secs(10));
    let record = raw_cdrs(&node).into_iter().next().expect("a call record");
    assert_eq!(record["monitors"][0]["supervisor"], "2050", "{record:#}");
    assert_eq!(record["monitors"][0]["mode"], "listen", "{record:#}");
    let answered_ms = record["answered_ms"].as_u64().expect("answered");
    let path = record["recording"].as_str().expect("recorded").to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (left, right) = loop {
        if let Some(channels) = read_stereo_wav(Path::new(&path)) {
            break channels;
        }
        assert!(Instant::now() < deadline, "recording not readable");
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = |unix: u64| (unix.saturating_sub(answered_ms) * 8) as usize;
    let (joined, whisper) = (at(joined_at), at(whisper_at));
    let windows = |from: usize, to: usize| (from..to.min(right.len())).step_by(80);
    // Before the whisper, the agent's echo carries the caller's tone but not the supervisor's.
    let listen = windows(joined + 2400, whisper.saturating_sub(2400));
    assert!(listen.len() > 20, "listen period too short to judge");
    assert!(
        listen.clone().any(|i| has_tone(&right, i, 1000.0)),
        "agent hears the caller"
    );
    assert!(
        !listen
            .into_iter()
            .any(|i| has_tone_share(&right, i, 500.0, 0.1)),
        "agent heard the supervisor while it only listened"
    );
    // After it, the supervisor's 500 Hz reaches the agent.
    assert!(
        windows(whisper + 2400, whisper + 12_000).any(|i| has_tone_share(&right, i, 500.0, 0.2)),
        "agent does not hear the supervisor's whisper"
    );
    // The caller never hears the supervisor: its channel is its own tone only.
    assert!(!windows(0, left.len()).any(|i| has_tone_share(&left, i, 500.0, 0.1)));
}

/// Waits until `GET /v1/calls/{id}` says `on_hold` is `held`, and returns when (Unix ms).
fn wait_hold(node: &Node, call_id: &str, held: bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let call = node.get_json(&format!("/v1/calls/{call_id}"));
        if call["on_hold"] == held {
            return unix_ms();
        }
        assert!(
            Instant::now() < deadline,
            "on_hold never became {held}: {call}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_caller_hears_music_on_hold_from_the_phone_and_from_the_api() {
    let node = Node::start("media-hold", NodeConfig::default());
    // The agent's phone sends 1 kHz all along, and holds and resumes from its hold key.
    let agent = node
        .sipp("agent-2001", "agent_hold_resume.xml")
        .server()
        .calls(1)
        .timeout_secs(60);
    let mut stream = Stream::new(0xA0D0);
    stream.tone(1000.0, 9000);
    stream.write_pcap(&agent.dir().join("agent.pcap"));
    let agent = agent.spawn();
    node.register_agents(&["2001".to_owned()], agent.local_port);
    // The caller echoes what it hears, so the recording's left channel (what the node
    // receives from the caller) is what the caller was sent.
    let caller = node
        .sipp("caller", "caller.xml")
        .duration_ms(7000)
        .timeout_secs(60)
        .arg("-rtp_echo")
        .spawn();

    let deadline = Instant::now() + Duration::from_secs(10);
    let call_id = loop {
        let calls = node.get_json("/v1/calls");
        if let Some(call) = calls
            .as_array()
            .and_then(|c| c.iter().find(|c| c["state"] == "connected"))
        {
            break call["id"].as_str().expect("call id").to_owned();
        }
        assert!(Instant::now() < deadline, "no connected call: {calls}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let phone_hold = wait_hold(&node, &call_id, true);
    let phone_resume = wait_hold(&node, &call_id, false);
    let hold_path = format!("/v1/calls/{call_id}/hold");
    let resume_path = format!("/v1/calls/{call_id}/resume");
    let (status, body) = api(&node, "POST", &resume_path, "");
    assert_eq!(status, 409, "not on hold: {body}");
    // Some talk between the holds, then the agent's desktop holds for a second.
    std::thread::sleep(Duration::from_millis(1000));
    let (status, body) = api(&node, "POST", &hold_path, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["on_hold"], true, "{body}");
    let api_hold = unix_ms();
    let (status, _) = api(&node, "POST", &hold_path, "");
    assert_eq!(status, 409, "already on hold");
    std::thread::sleep(Duration::from_millis(1200));
    let (status, body) = api(&node, "POST", &resume_path, "");
    assert_eq!(status, 200, "{body}");
    let api_resume = unix_ms();
    let (status, _) = api(&node, "POST", "/v1/calls/nope/hold", "");
    assert_eq!(status, 404);

    caller.expect_success_with(&node);
    agent.expect_success_with(&node);
    node.wait_cdrs(1, Duration::from_secs(10));
    let record = raw_cdrs(&node).into_iter().next().expect("a call record");
    let hold_ms = record["hold_ms"].as_u64().expect("hold_ms");
    let expected = (phone_resume - phone_hold) + (api_resume - api_hold);
    assert!(
        hold_ms.abs_diff(expected) < 400,
        "hold_ms {hold_ms}, about {expected} expected: {record:#}"
    );
    let answered_ms = record["answered_ms"].as_u64().expect("answered");
    let path = record["recording"].as_str().expect("recorded").to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (left, _) = loop {
        if let Some(channels) = read_stereo_wav(Path::new(&path)) {
            break channels;
        }
        assert!(Instant::now() < deadline, "recording not readable");
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = |unix: u64| (unix.saturating_sub(answered_ms) * 8) as usize;
    // Windows well inside each period (the state is polled, and the echo adds a little delay).
    let inside = |from: u64, to: u64| {
        (at(from) + 2400..at(to).saturating_sub(2400).min(left.len())).step_by(160)
    };
    let share_of_tone = |windows: std::iter::StepBy<std::ops::Range<usize>>| {
        let total = windows.len().max(1);
        windows.filter(|&i| has_tone(&left, i, 1000.0)).count() * 100 / total
    };
    let loud = |i: usize| {
        let w = &left[i..(i + 160).min(left.len())];
        w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 160.0 > 300.0 * 300.0
    };
    for (name, from, to) in [
        ("phone hold", phone_hold, phone_resume),
        ("API hold", api_hold, api_resume),
    ] {
        let windows = inside(from, to);
        assert!(windows.len() >= 10, "{name}: period too short to judge");
        assert_eq!(
            share_of_tone(windows.clone()),
            0,
            "{name}: the caller heard the agent"
        );
        let music = windows.clone().filter(|&i| loud(i)).count() * 100 / windows.len();
        assert!(
            music >= 80,
            "{name}: the caller heard music only {music}% of the time"
        );
    }
    for (name, from, to) in [
        ("before the hold", answered_ms, phone_hold),
        ("between the holds", phone_resume, api_hold),
    ] {
        let share = share_of_tone(inside(from, to));
        assert!(
            share >= 80,
            "{name}: the caller heard the agent {share}% of the time"
        );
    }
}

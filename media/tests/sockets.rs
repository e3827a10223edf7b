//! Media workers against real UDP sockets on 127.0.0.1. Each test uses its own port range.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use switchyard_media::rtp::{self, RtpHeader, Stamp};
use switchyard_media::{
    Codec, MediaConfig, MediaError, MediaEvent, MediaHandle, Prompt, g711, start,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT_TEST_PORTS: u16 = 11_700;

/// Workers with an RTP timeout short enough to test, or long enough never to fire.
fn media(port_min: u16, port_max: u16, workers: usize) -> (MediaHandle, Receiver<MediaEvent>) {
    let rtp_timeout = if port_min == TIMEOUT_TEST_PORTS {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(60)
    };
    start(MediaConfig {
        workers,
        bind_ip: LOCALHOST,
        port_min,
        port_max,
        rtp_timeout,
        rtcp_interval: Duration::from_secs(5),
    })
    .expect("media starts")
}

/// A test phone: a UDP socket with a receive timeout.
fn phone() -> UdpSocket {
    let s = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80; 12];
    rtp::write_header(
        &mut p,
        pt,
        Stamp {
            seq,
            timestamp: ts,
            marker: false,
        },
        ssrc,
    );
    p.extend_from_slice(payload);
    p
}

fn recv(sock: &UdpSocket) -> (RtpHeader, Vec<u8>) {
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("packet arrives");
    let h = rtp::parse(&buf[..n]).expect("valid RTP");
    (h, buf[h.payload_start..h.payload_end].to_vec())
}

fn nothing_arrives(sock: &UdpSocket, within: Duration) -> bool {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 2048];
    let none = sock.recv_from(&mut buf).is_err();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    none
}

fn wait_for(events: &Receiver<MediaEvent>, within: Duration) -> Option<MediaEvent> {
    events.recv_timeout(within).ok()
}

fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn allocates_even_ports_reserves_rtcp_and_frees_on_release() {
    let (media, _events) = media(11_001, 11_006, 1);
    let a = media.allocate(None).unwrap();
    let b = media.allocate(None).unwrap();
    assert_eq!(a.local.ip(), LOCALHOST);
    for ep in [a, b] {
        let port = ep.local.port();
        assert_eq!(port % 2, 0);
        assert!((11_002..=11_004).contains(&port));
        // RTCP port is held too.
        assert!(UdpSocket::bind((LOCALHOST, port + 1)).is_err());
    }
    assert_ne!(a.local, b.local);
    assert!(matches!(
        media.allocate(None),
        Err(MediaError::NoPorts { .. })
    ));
    media.release(a.id);
    assert!(wait_until(|| media.allocate(None).is_ok()));
    assert_eq!(media.stats().endpoints, 2);
}

#[test]
fn skips_ports_held_by_others() {
    let _squatter = UdpSocket::bind((LOCALHOST, 11_102)).unwrap();
    let (media, _events) = media(11_102, 11_105, 1);
    assert_eq!(media.allocate(None).unwrap().local.port(), 11_104);
}

#[test]
fn rejects_bad_config() {
    let base = MediaConfig {
        workers: 1,
        bind_ip: LOCALHOST,
        port_min: 11_200,
        port_max: 11_210,
        rtp_timeout: Duration::from_secs(1),
        rtcp_interval: Duration::from_secs(5),
    };
    for bad in [
        MediaConfig {
            workers: 0,
            ..base.clone()
        },
        MediaConfig {
            port_min: 11_201,
            port_max: 11_201,
            ..base.clone()
        },
        MediaConfig {
            rtp_timeout: Duration::ZERO,
            ..base.clone()
        },
    ] {
        assert!(matches!(start(bad), Err(MediaError::Config(_))));
    }
}

#[test]
fn places_legs_near_each_other_and_refuses_cross_worker_bridges() {
    let (media, _events) = media(11_300, 11_399, 2);
    let a = media.allocate(None).unwrap();
    let other = media.allocate(None).unwrap();
    let b = media.allocate(Some(a.id)).unwrap();
    assert!(media.bridge(a.id, b.id).is_ok());
    // Least-loaded placement put `other` on the second worker.
    assert!(matches!(
        media.bridge(a.id, other.id),
        Err(MediaError::NotColocated { .. })
    ));
    assert_eq!(media.stats().worker_cpu.len(), 2);
}

#[test]
fn bridge_relays_transcodes_latches_and_detects_dtmf() {
    let (media, events) = media(11_400, 11_499, 1);
    let (pa, pb, intruder) = (phone(), phone(), phone());
    let a = media.allocate(None).unwrap();
    let b = media.allocate(Some(a.id)).unwrap();
    // Caller's SDP names an address it will not send from (NAT): the endpoint must latch.
    let sdp_addr: SocketAddr = (LOCALHOST, 9).into();
    media.set_remote(a.id, sdp_addr, Codec::Pcmu, 0, Some(101));
    media.set_remote(b.id, pb.local_addr().unwrap(), Codec::Pcma, 8, Some(96));
    media.bridge(a.id, b.id).unwrap();

    // Caller -> agent: PCMU becomes PCMA with the agent leg's own SSRC and numbering.
    let pcm = [0i16, 1000, -1000, 12345, -32768, 32767];
    let ulaw: Vec<u8> = pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
    let mut agent_ssrc = None;
    let mut last: Option<RtpHeader> = None;
    for i in 0..5u16 {
        pa.send_to(
            &rtp_packet(0, 60_000 + i, 1_000_000 + 160 * u32::from(i), 0xCA11, &ulaw),
            a.local,
        )
        .unwrap();
        let (h, payload) = recv(&pb);
        assert_eq!(h.payload_type, 8);
        assert_ne!(h.ssrc, 0xCA11);
        assert_eq!(*agent_ssrc.get_or_insert(h.ssrc), h.ssrc);
        let expected: Vec<u8> = ulaw
            .iter()
            .map(|&u| g711::linear_to_alaw(g711::ulaw_to_linear(u)))
            .collect();
        assert_eq!(payload, expected);
        if let Some(prev) = last {
            assert_eq!(h.seq, prev.seq.wrapping_add(1));
            assert_eq!(h.timestamp, prev.timestamp.wrapping_add(160));
            assert!(!h.marker);
        } else {
            assert!(h.marker, "first packet of a new source carries the marker");
        }
        last = Some(h);
    }

    // Agent -> caller goes to where the caller really sends from, not the SDP address.
    let alaw = [0xD5u8; 160];
    pb.send_to(&rtp_packet(8, 7, 160, 0xA6E7, &alaw), b.local)
        .unwrap();
    let (h, payload) = recv(&pa);
    assert_eq!(h.payload_type, 0);
    assert_eq!(payload, vec![g711::linear_to_ulaw(8); 160]);

    // After latching, RTP from elsewhere is dropped, as is garbage.
    let before = media.stats();
    intruder
        .send_to(&rtp_packet(0, 1, 1, 0xBAD, &ulaw), a.local)
        .unwrap();
    intruder.send_to(b"\x00garbage", a.local).unwrap();
    pb.send_to(&[0x80, 200, 0, 1, 0, 0, 0, 0], b.local).unwrap();
    assert!(nothing_arrives(&pb, Duration::from_millis(150)));
    assert!(nothing_arrives(&pa, Duration::from_millis(10)));
    let after = media.stats();
    assert_eq!(after.unexpected - before.unexpected, 1);
    assert_eq!(after.invalid - before.invalid, 2);

    // Invalid RTCP is counted and dropped.
    let rtcp_port: SocketAddr = (LOCALHOST, a.local.port() + 1).into();
    pa.send_to(&[0x80, 200, 0, 6, 0, 0, 0, 1], rtcp_port)
        .unwrap();
    assert!(wait_until(|| media.stats().rtcp_invalid == 1));

    // DTMF from the caller is reported once and passed on with the agent's event type.
    for (end, dur) in [(0x0A, 160u16), (0x0A, 320), (0x8A, 480), (0x8A, 480)] {
        let [d0, d1] = dur.to_be_bytes();
        pa.send_to(
            &rtp_packet(101, 60_010, 1_001_600, 0xCA11, &[11, end, d0, d1]),
            a.local,
        )
        .unwrap();
    }
    assert_eq!(
        wait_for(&events, Duration::from_secs(1)),
        Some(MediaEvent::Dtmf {
            endpoint: a.id,
            digit: '#'
        })
    );
    for _ in 0..4 {
        let (h, payload) = recv(&pb);
        assert_eq!((h.payload_type, payload[0]), (96, 11));
        assert_eq!(h.ssrc, agent_ssrc.unwrap());
    }
    assert!(wait_for(&events, Duration::from_millis(100)).is_none());

    // Release of one leg leaves the other unbridged.
    media.release(b.id);
    assert!(wait_until(|| media.stats().endpoints == 1));
    pa.send_to(&rtp_packet(0, 60_011, 1_001_760, 0xCA11, &ulaw), a.local)
        .unwrap();
    assert!(nothing_arrives(&pb, Duration::from_millis(150)));
}

fn tone_prompt(samples: usize) -> Arc<Prompt> {
    let pcm: Vec<i16> = (0..samples)
        .map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16)
        .collect();
    Arc::new(Prompt::from_pcm(&pcm).unwrap())
}

#[test]
fn playback_is_paced_and_continuous() {
    let (media, events) = media(11_500, 11_599, 1);
    let pa = phone();
    let a = media.allocate(None).unwrap();
    media.set_remote(a.id, pa.local_addr().unwrap(), Codec::Pcma, 8, None);
    let prompt = tone_prompt(8000);
    let expected_audio: Vec<u8> = (0..8000)
        .map(|i| g711::linear_to_alaw(((i as f32 * 0.3).sin() * 8000.0) as i16))
        .collect();
    media.play(a.id, prompt, true);

    let start = Instant::now();
    let mut headers = Vec::new();
    let mut audio = Vec::new();
    while start.elapsed() < Duration::from_secs(1) {
        let (h, payload) = recv(&pa);
        headers.push(h);
        audio.extend(payload);
    }
    let n = headers.len();
    assert!((48..=53).contains(&n), "{n} packets in one second");
    assert!(headers[0].marker);
    for w in headers.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
        assert_eq!((w[1].ssrc, w[1].payload_type), (w[0].ssrc, 8));
        assert!(!w[1].marker);
    }
    let looped: Vec<u8> = expected_audio
        .iter()
        .copied()
        .cycle()
        .take(audio.len())
        .collect();
    assert!(audio == looped, "played audio differs from the prompt");

    // After a stop, a one-shot prompt (100 ms) continues the same stream.
    media.stop_playback(a.id);
    let mut last = *headers.last().unwrap();
    let mut buf = [0u8; 2048];
    pa.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while let Ok((n, _)) = pa.recv_from(&mut buf) {
        last = rtp::parse(&buf[..n]).unwrap();
    }
    pa.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    media.play(a.id, tone_prompt(800), false);
    let mut shot = Vec::new();
    for _ in 0..5 {
        shot.push(recv(&pa).0);
    }
    assert_eq!(
        wait_for(&events, Duration::from_secs(1)),
        Some(MediaEvent::PlaybackFinished { endpoint: a.id })
    );
    assert!(nothing_arrives(&pa, Duration::from_millis(100)));
    assert_eq!(shot[0].ssrc, last.ssrc);
    assert!(shot[0].marker);
    assert_eq!(shot[0].seq, last.seq.wrapping_add(1));
    // The 100 ms of silence shows in the timestamps.
    assert!(shot[0].timestamp.wrapping_sub(last.timestamp) >= 800);
    for w in shot.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
    }
}

#[test]
fn leg_sees_one_stream_across_music_agent_and_prompt() {
    let (media, _events) = media(11_600, 11_699, 1);
    let (pa, pb) = (phone(), phone());
    let a = media.allocate(None).unwrap();
    let b = media.allocate(Some(a.id)).unwrap();
    media.set_remote(a.id, pa.local_addr().unwrap(), Codec::Pcmu, 0, None);
    media.set_remote(b.id, pb.local_addr().unwrap(), Codec::Pcmu, 0, None);

    let mut seen = Vec::new();
    media.play(a.id, tone_prompt(8000), true);
    for _ in 0..5 {
        seen.push(recv(&pa).0);
    }
    media.bridge(a.id, b.id).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    // Drain music sent before the bridge took effect.
    while !nothing_arrives(&pa, Duration::from_millis(10)) {}
    let music_end = *seen.last().unwrap();
    for i in 0..5u16 {
        pb.send_to(
            &rtp_packet(0, 900 + i, 500 + 160 * u32::from(i), 0xA6E7, &[0xFF; 160]),
            b.local,
        )
        .unwrap();
        seen.push(recv(&pa).0);
    }
    media.play(a.id, tone_prompt(8000), false);
    for _ in 0..3 {
        seen.push(recv(&pa).0);
    }

    let ssrc = seen[0].ssrc;
    assert!(seen.iter().all(|h| h.ssrc == ssrc));
    // Music packets drained above may have advanced the stream; after that it is gap-free.
    let agent_first = seen[5];
    assert!(agent_first.marker);
    assert!(agent_first.seq.wrapping_sub(music_end.seq) >= 1);
    for w in seen[5..].windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{w:?}");
        assert!(w[1].timestamp.wrapping_sub(w[0].timestamp) >= 160);
    }
    assert!(
        seen[10].marker,
        "prompt after agent audio starts a new source"
    );
    // Agent audio kept its own spacing.
    for w in seen[5..10].windows(2) {
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
    }
}

#[test]
fn reports_rtp_timeout_only_for_endpoints_with_a_remote() {
    let (media, events) = media(TIMEOUT_TEST_PORTS, 11_799, 1);
    let pb = phone();
    let _without_remote = media.allocate(None).unwrap();
    let b = media.allocate(None).unwrap();
    media.set_remote(b.id, pb.local_addr().unwrap(), Codec::Pcmu, 0, None);
    let start = Instant::now();
    assert_eq!(
        wait_for(&events, Duration::from_secs(2)),
        Some(MediaEvent::RtpTimeout { endpoint: b.id })
    );
    assert!(start.elapsed() >= Duration::from_millis(280));
    // Once only, and never for the endpoint without a remote.
    assert!(wait_for(&events, Duration::from_millis(600)).is_none());
    // A packet re-arms the timer.
    pb.send_to(&rtp_packet(0, 1, 1, 1, &[0xFF; 160]), b.local)
        .unwrap();
    assert_eq!(
        wait_for(&events, Duration::from_secs(2)),
        Some(MediaEvent::RtpTimeout { endpoint: b.id })
    );
}

#[test]
fn handle_is_shareable_with_async_code() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<MediaHandle>();
}

#[test]
fn dropping_the_handle_stops_workers_and_closes_sockets() {
    let (media, _events) = media(11_800, 11_899, 2);
    let a = media.allocate(None).unwrap();
    let copy = media.clone();
    drop(media);
    // A clone keeps the workers running.
    assert!(UdpSocket::bind(a.local).is_err());
    drop(copy);
    assert!(wait_until(|| UdpSocket::bind(a.local).is_ok()));
}

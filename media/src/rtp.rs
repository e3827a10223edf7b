//! RTP (RFC 3550) parsing and the per-endpoint outgoing stream that keeps SSRC, sequence and
//! timestamp continuous when the audio source changes.

use std::time::{Duration, Instant};

/// Fixed RTP header length.
pub const HEADER_LEN: usize = 12;
/// Samples in one 20 ms G.711 frame at 8 kHz.
pub const FRAME_SAMPLES: u32 = 160;

/// The parts of an RTP header the relay needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Offset of the payload (after CSRCs and any header extension).
    pub payload_start: usize,
    /// End of the payload (before any padding).
    pub payload_end: usize,
}

/// Why a datagram is not an RTP packet we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    TooShort,
    BadVersion,
    /// Payload types 72-76 are RTCP sent to the RTP port (RFC 5761).
    Rtcp,
    BadPadding,
}

/// Parses and validates an RTP header without copying.
pub fn parse(packet: &[u8]) -> Result<RtpHeader, RtpError> {
    if packet.len() < HEADER_LEN {
        return Err(RtpError::TooShort);
    }
    let b0 = packet[0];
    if b0 >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    let payload_type = packet[1] & 0x7F;
    if (72..=76).contains(&payload_type) {
        return Err(RtpError::Rtcp);
    }
    let csrc_count = usize::from(b0 & 0x0F);
    let mut payload_start = HEADER_LEN + 4 * csrc_count;
    if b0 & 0x10 != 0 {
        let ext = packet
            .get(payload_start..payload_start + 4)
            .ok_or(RtpError::TooShort)?;
        payload_start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if payload_start > packet.len() {
        return Err(RtpError::TooShort);
    }
    let mut payload_end = packet.len();
    if b0 & 0x20 != 0 {
        let pad = usize::from(packet[packet.len() - 1]);
        if pad == 0 || pad > payload_end - payload_start {
            return Err(RtpError::BadPadding);
        }
        payload_end -= pad;
    }
    Ok(RtpHeader {
        marker: packet[1] & 0x80 != 0,
        payload_type,
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        payload_start,
        payload_end,
    })
}

/// Sequence number, timestamp and marker for one outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
}

/// Overwrites the fixed header fields in place, keeping version, padding, extension and CSRC
/// bits of a relayed packet. `packet` must be at least [`HEADER_LEN`] long.
pub fn write_header(packet: &mut [u8], payload_type: u8, stamp: Stamp, ssrc: u32) {
    packet[0] = (packet[0] & 0x3F) | 0x80;
    packet[1] = (payload_type & 0x7F) | if stamp.marker { 0x80 } else { 0 };
    packet[2..4].copy_from_slice(&stamp.seq.to_be_bytes());
    packet[4..8].copy_from_slice(&stamp.timestamp.to_be_bytes());
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// Where an endpoint's outgoing audio currently comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    None,
    Local,
    /// A telephone-event being sent: every packet carries the event's start timestamp.
    Event,
    Relay {
        ssrc: u32,
    },
}

/// The RTP stream one endpoint sends: one SSRC for the life of the endpoint, with sequence
/// numbers and timestamps that run on across playback and relayed sources.
///
/// Relayed packets are mapped by offsets computed once when the source changes, so reordering
/// and loss in the relayed stream pass through unchanged. At a change the timestamp advances by
/// the wall-clock time since the last packet (at least one frame), and the first packet carries
/// the marker bit so the phone resynchronises its jitter buffer.
#[derive(Debug, Clone)]
pub struct OutStream {
    ssrc: u32,
    next_seq: u16,
    last_ts: u32,
    last_at: Option<Instant>,
    source: Source,
    seq_offset: u16,
    ts_offset: u32,
}

impl OutStream {
    /// Starts a stream; RFC 3550 wants `ssrc`, the first sequence number and timestamp random.
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        Self {
            ssrc,
            next_seq: first_seq,
            last_ts: first_ts,
            last_at: None,
            source: Source::None,
            seq_offset: 0,
            ts_offset: 0,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Ends the current source (playback started, stopped or bridge changed), so the next packet
    /// starts a new one even if it is of the same kind.
    pub fn interrupt(&mut self) {
        self.source = Source::None;
    }

    /// Stamps a locally generated frame (playback) that advances `samples` past the previous one.
    pub fn local(&mut self, now: Instant, samples: u32) -> Stamp {
        let switched = self.source != Source::Local;
        let timestamp = if switched {
            self.source = Source::Local;
            self.resume_ts(now)
        } else {
            self.last_ts.wrapping_add(samples)
        };
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.last_ts = timestamp;
        self.last_at = Some(now);
        Stamp {
            seq,
            timestamp,
            marker: switched,
        }
    }

    /// Stamps a telephone-event packet (RFC 4733): `start` begins a new event on the clock (with
    /// the marker); later packets of the event repeat its timestamp. Audio after the event
    /// resumes on the clock, so the event's duration shows in the timestamps.
    pub fn event(&mut self, now: Instant, start: bool) -> Stamp {
        if start || self.source != Source::Event {
            self.last_ts = self.resume_ts(now);
            self.last_at = Some(now);
            self.source = Source::Event;
        }
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        Stamp {
            seq,
            timestamp: self.last_ts,
            marker: start,
        }
    }

    /// Our RTP timestamp for wall-clock `now`, for RTCP sender reports.
    pub fn timestamp_at(&self, now: Instant) -> u32 {
        match self.last_at {
            None => self.last_ts,
            Some(at) => self
                .last_ts
                .wrapping_add(samples_in(now.saturating_duration_since(at))),
        }
    }

    /// Stamps a relayed packet from stream `ssrc`.
    pub fn relay(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        marker: bool,
    ) -> Stamp {
        let switched = self.source != Source::Relay { ssrc };
        if switched {
            self.source = Source::Relay { ssrc };
            self.seq_offset = self.next_seq.wrapping_sub(seq);
            self.ts_offset = self.resume_ts(now).wrapping_sub(timestamp);
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = timestamp.wrapping_add(self.ts_offset);
        // Late (reordered) packets keep their place without pulling the stream back.
        if switched || (out_seq.wrapping_sub(self.next_seq) as i16) >= 0 {
            self.next_seq = out_seq.wrapping_add(1);
        }
        if switched || (out_ts.wrapping_sub(self.last_ts) as i32) > 0 {
            self.last_ts = out_ts;
            self.last_at = Some(now);
        }
        Stamp {
            seq: out_seq,
            timestamp: out_ts,
            marker: marker || switched,
        }
    }

    /// Timestamp for the first packet of a new source: the last one plus the time since it was
    /// sent, and never less than one frame so it cannot collide.
    fn resume_ts(&self, now: Instant) -> u32 {
        match self.last_at {
            None => self.last_ts,
            Some(at) => {
                let elapsed = samples_in(now.saturating_duration_since(at));
                self.last_ts.wrapping_add(elapsed.max(FRAME_SAMPLES))
            }
        }
    }
}

/// 8 kHz samples in `d`, saturating far beyond any real gap.
fn samples_in(d: Duration) -> u32 {
    u32::try_from(d.as_micros() * 8 / 1000).unwrap_or(u32::MAX)
}

/// Detects RFC 4733 telephone-events. A key press is a run of packets sharing one RTP timestamp
/// (with retransmitted end packets); it is reported once, on its first packet, so a lost end
/// packet cannot swallow it.
#[derive(Debug, Default, Clone)]
pub struct DtmfDetector {
    last: Option<(u32, u32)>,
}

impl DtmfDetector {
    /// Returns the digit when `payload` starts a new DTMF event in stream `ssrc`.
    pub fn on_packet(&mut self, ssrc: u32, timestamp: u32, payload: &[u8]) -> Option<char> {
        let &event = payload.first()?;
        if payload.len() < 4 || self.last == Some((ssrc, timestamp)) {
            return None;
        }
        let digit = crate::dtmf::digit_of(event)?;
        self.last = Some((ssrc, timestamp));
        Some(digit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        write_header(
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

    #[test]
    fn parses_minimal_header() {
        let p = packet(8, 0xBEEF, 0xDEAD_0001, 0x1234_5678, &[1, 2, 3]);
        let h = parse(&p).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                marker: false,
                payload_type: 8,
                seq: 0xBEEF,
                timestamp: 0xDEAD_0001,
                ssrc: 0x1234_5678,
                payload_start: 12,
                payload_end: 15,
            }
        );
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        // Two CSRCs, a one-word extension, 3 payload bytes, 2 padding bytes.
        let mut p = vec![0xB2, 0x80, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]);
        p.extend_from_slice(&[7, 7, 7, 0, 2]);
        let h = parse(&p).unwrap();
        assert!(h.marker);
        assert_eq!(h.payload_type, 0);
        assert_eq!((h.payload_start, h.payload_end), (28, 31));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort));
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(parse(b"INVITE sip:x SIP/2.0"), Err(RtpError::BadVersion));
        let mut rtcp = packet(0, 0, 0, 0, &[]);
        rtcp[1] = 200; // RTCP SR
        assert_eq!(parse(&rtcp), Err(RtpError::Rtcp));
        // CSRC count beyond the packet.
        let mut p = packet(0, 0, 0, 0, &[]);
        p[0] |= 0x0F;
        assert_eq!(parse(&p), Err(RtpError::TooShort));
        // Extension header cut off, and extension length beyond the packet.
        let mut p = packet(0, 0, 0, 0, &[0xBE, 0xDE]);
        p[0] |= 0x10;
        assert_eq!(parse(&p), Err(RtpError::TooShort));
        let mut p = packet(0, 0, 0, 0, &[0xBE, 0xDE, 0xFF, 0xFF]);
        p[0] |= 0x10;
        assert_eq!(parse(&p), Err(RtpError::TooShort));
        // Padding of zero, and padding longer than the payload.
        let mut p = packet(0, 0, 0, 0, &[1, 0]);
        p[0] |= 0x20;
        assert_eq!(parse(&p), Err(RtpError::BadPadding));
        let mut p = packet(0, 0, 0, 0, &[1, 9]);
        p[0] |= 0x20;
        assert_eq!(parse(&p), Err(RtpError::BadPadding));
    }

    #[test]
    fn parse_never_panics_on_any_short_input() {
        let mut buf = [0u8; 40];
        for len in 0..buf.len() {
            for first in 0..=255u8 {
                buf[0] = first;
                buf[len.saturating_sub(1)] = first;
                let _ = parse(&buf[..len]);
            }
        }
    }

    #[test]
    fn write_header_keeps_flags_and_sets_fields() {
        let mut p = vec![0xB1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        write_header(
            &mut p,
            8,
            Stamp {
                seq: 7,
                timestamp: 9,
                marker: true,
            },
            0xAABBCCDD,
        );
        assert_eq!(
            &p[..12],
            &[0xB1, 0x88, 0, 7, 0, 0, 0, 9, 0xAA, 0xBB, 0xCC, 0xDD]
        );
    }

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn local_frames_are_continuous() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 65534, u32::MAX - 160);
        let a = out.local(t0, 160);
        let b = out.local(ms(t0, 20), 160);
        let c = out.local(ms(t0, 40), 480);
        assert_eq!(
            (a.seq, a.timestamp, a.marker),
            (65534, u32::MAX - 160, true)
        );
        assert_eq!((b.seq, b.timestamp, b.marker), (65535, u32::MAX, false));
        assert_eq!((c.seq, c.timestamp, c.marker), (0, 479, false));
    }

    #[test]
    fn relay_rewrites_with_fixed_offsets() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 100, 1000);
        let a = out.relay(t0, 77, 5000, 90_000, false);
        assert_eq!((a.seq, a.timestamp, a.marker), (100, 1000, true));
        // Loss and reordering pass through as the same gaps.
        let c = out.relay(ms(t0, 40), 77, 5002, 90_320, false);
        let b = out.relay(ms(t0, 41), 77, 5001, 90_160, false);
        assert_eq!((c.seq, c.timestamp, c.marker), (102, 1320, false));
        assert_eq!((b.seq, b.timestamp, b.marker), (101, 1160, false));
        let d = out.relay(ms(t0, 60), 77, 5003, 90_480, true);
        assert_eq!((d.seq, d.timestamp, d.marker), (103, 1480, true));
    }

    #[test]
    fn source_switches_keep_one_continuous_stream() {
        let t0 = Instant::now();
        let mut out = OutStream::new(42, 1, 0);
        let mut stamps = Vec::new();
        // Music for 3 frames.
        for i in 0..3 {
            stamps.push(out.local(ms(t0, 20 * i), 160));
        }
        // Agent audio from a stream with unrelated numbering, starting 20 ms after the music.
        for i in 0..3u16 {
            stamps.push(out.relay(
                ms(t0, 60 + 20 * u64::from(i)),
                0xA6E7,
                40_000 + i,
                7_000_000 + 160 * u32::from(i),
                false,
            ));
        }
        // The agent's phone restarts its stream with a new SSRC after a 100 ms gap.
        stamps.push(out.relay(ms(t0, 220), 0xB0B, 3, 12, false));
        // Then a prompt, 20 ms later.
        stamps.push(out.local(ms(t0, 240), 160));
        stamps.push(out.local(ms(t0, 260), 160));

        let seqs: Vec<u16> = stamps.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<u16>>());
        // The new SSRC resumes 120 ms (960 samples) after the last agent packet.
        let ts: Vec<u32> = stamps.iter().map(|s| s.timestamp).collect();
        assert_eq!(ts, [0, 160, 320, 480, 640, 800, 1760, 1920, 2080]);
        let markers: Vec<usize> = stamps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.marker)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(markers, [0, 3, 6, 7]);
        assert_eq!(out.ssrc(), 42);
    }

    #[test]
    fn interrupted_playback_resumes_on_the_clock() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 0, 0);
        out.local(t0, 160);
        out.interrupt();
        // A new prompt 1 s later: timestamps follow the clock, and the marker flags the change.
        let s = out.local(ms(t0, 1000), 160);
        assert_eq!((s.seq, s.timestamp, s.marker), (1, 8000, true));
    }

    #[test]
    fn resume_advances_at_least_one_frame() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 0, 0);
        out.local(t0, 160);
        // A switch in the same instant must not reuse the last timestamp.
        let s = out.relay(t0, 9, 0, 0, false);
        assert_eq!(s.timestamp, 160);
    }

    #[test]
    fn events_repeat_their_timestamp_and_audio_resumes_after_them() {
        let t0 = Instant::now();
        let mut out = OutStream::new(1, 10, 0);
        out.local(t0, 160);
        let a = out.event(ms(t0, 20), true);
        let b = out.event(ms(t0, 40), false);
        let c = out.event(ms(t0, 60), false);
        assert_eq!((a.seq, a.timestamp, a.marker), (11, 160, true));
        assert_eq!((b.seq, b.timestamp, b.marker), (12, 160, false));
        assert_eq!((c.seq, c.timestamp), (13, 160));
        out.interrupt();
        let d = out.local(ms(t0, 100), 160);
        assert_eq!((d.seq, d.timestamp, d.marker), (14, 160 + 640, true));
        assert_eq!(out.timestamp_at(ms(t0, 120)), 160 + 640 + 160);
    }

    #[test]
    fn dtmf_reports_each_key_press_once() {
        let mut d = DtmfDetector::default();
        let start = [5, 0x0A, 0, 160];
        let end = [5, 0x8A, 3, 0x20];
        assert_eq!(d.on_packet(1, 1000, &start), Some('5'));
        assert_eq!(d.on_packet(1, 1000, &start), None);
        assert_eq!(d.on_packet(1, 1000, &end), None);
        assert_eq!(d.on_packet(1, 1000, &end), None);
        assert_eq!(d.on_packet(1, 2000, &[11, 0x8A, 0, 160]), Some('#'));
        assert_eq!(d.on_packet(1, 3000, &[10, 0, 0, 160]), Some('*'));
        assert_eq!(d.on_packet(1, 4000, &[13, 0, 0, 160]), Some('B'));
        // Same timestamp from another stream is another key press.
        assert_eq!(d.on_packet(2, 4000, &[0, 0, 0, 160]), Some('0'));
        // Non-DTMF events and short payloads are ignored.
        assert_eq!(d.on_packet(1, 5000, &[16, 0, 0, 160]), None);
        assert_eq!(d.on_packet(1, 6000, &[1, 0]), None);
        assert_eq!(d.on_packet(1, 7000, &[]), None);
    }
}

//! DTMF beyond RFC 4733 detection: generating key presses towards a leg (as telephone-events or
//! as in-band tones for legs without them) and detecting in-band tones with Goertzel filters.

use std::f32::consts::TAU;

use crate::rtp::FRAME_SAMPLES;
use crate::{Codec, g711};

const RATE: f32 = 8000.0;
const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// RFC 4733 event code of a key.
pub fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// The key of an RFC 4733 event code (0-15).
pub fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

fn frequencies(digit: char) -> Option<(f32, f32)> {
    let digit = digit.to_ascii_uppercase();
    KEYS.iter().enumerate().find_map(|(r, row)| {
        let c = row.iter().position(|&k| k == digit)?;
        Some((ROWS[r], COLS[c]))
    })
}

/// One 20 ms step of a key press being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfStep {
    /// An RFC 4733 payload of 4 bytes was written; `start` marks the event's first packet and
    /// `end` its (retransmitted) end packets.
    Event {
        start: bool,
        end: bool,
    },
    /// 160 samples of tone were written, encoded in the leg's codec.
    Tone,
    Done,
}

/// How the key press goes out.
#[derive(Debug, Clone)]
enum Form {
    Event,
    Tone { row: f32, col: f32, n: u32 },
}

/// A key press being sent to one leg, one packet per 20 ms.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    /// Length in samples (at most what the 16-bit duration field holds).
    total: u32,
    sent: u32,
    /// End packets still to send (RFC 4733 §2.5.1.4 sends the end three times).
    ends_left: u8,
    form: Form,
}

impl DtmfSender {
    /// A key press of `duration_samples` as telephone-events (`inband` false) or tones.
    pub fn new(digit: char, duration_samples: u32, inband: bool) -> Option<Self> {
        let event = event_code(digit)?;
        let (row, col) = frequencies(digit)?;
        Some(Self {
            event,
            total: duration_samples.clamp(FRAME_SAMPLES, u32::from(u16::MAX)),
            sent: 0,
            ends_left: 3,
            form: if inband {
                Form::Tone { row, col, n: 0 }
            } else {
                Form::Event
            },
        })
    }

    /// Writes the next packet's payload into `out` (at least 160 bytes).
    pub fn step(&mut self, codec: Codec, out: &mut [u8]) -> DtmfStep {
        match &mut self.form {
            Form::Event => {
                if self.ends_left == 0 {
                    return DtmfStep::Done;
                }
                let start = self.sent == 0;
                self.sent = (self.sent + FRAME_SAMPLES).min(self.total);
                let end = self.sent >= self.total;
                if end {
                    self.ends_left -= 1;
                }
                out[0] = self.event;
                // E bit, reserved bit clear, volume 10 (-10 dBm0).
                out[1] = if end { 0x80 | 10 } else { 10 };
                out[2..4].copy_from_slice(&(self.sent as u16).to_be_bytes());
                DtmfStep::Event { start, end }
            }
            Form::Tone { row, col, n } => {
                if self.sent >= self.total {
                    return DtmfStep::Done;
                }
                for byte in &mut out[..FRAME_SAMPLES as usize] {
                    let t = *n as f32 / RATE;
                    // Two tones at about -10 dBm0 each.
                    let v = 7000.0 * ((TAU * *row * t).sin() + (TAU * *col * t).sin());
                    *byte = g711::encode(codec, v as i16);
                    *n += 1;
                }
                self.sent += FRAME_SAMPLES;
                DtmfStep::Tone
            }
        }
    }
}

/// Samples per Goertzel block: 205 at 8 kHz gives bins about 39 Hz apart, the classic choice
/// for separating the DTMF frequencies.
const BLOCK: usize = 205;
/// Below this mean power (an amplitude of about 400) a block is silence.
const MIN_POWER: f32 = 400.0 * 400.0 / 2.0;
/// The two tones must hold this share of the block's energy (speech spreads wider).
const MIN_TONE_SHARE: f32 = 0.6;
/// Each tone must stand this far (power ratio, 6 dB) above the others of its group.
const GROUP_MARGIN: f32 = 4.0;
/// Twist limits: the row (low) tone may be 8 dB above the column tone, or 4 dB below it.
const MAX_NORMAL_TWIST: f32 = 6.3;
const MAX_REVERSE_TWIST: f32 = 2.5;

/// In-band DTMF detection on decoded audio: Goertzel filters at the eight DTMF frequencies
/// over 205-sample blocks, with energy, group-margin and twist checks. A key is reported once
/// when two consecutive blocks (about 51 ms) agree, and re-armed after a block without it.
#[derive(Debug, Clone)]
pub struct ToneDetector {
    block: [f32; BLOCK],
    filled: usize,
    coeffs: [f32; 8],
    last: Option<char>,
    reported: bool,
}

impl Default for ToneDetector {
    fn default() -> Self {
        let mut coeffs = [0.0; 8];
        for (c, f) in coeffs.iter_mut().zip(ROWS.iter().chain(COLS.iter())) {
            *c = 2.0 * (TAU * f / RATE).cos();
        }
        Self {
            block: [0.0; BLOCK],
            filled: 0,
            coeffs,
            last: None,
            reported: false,
        }
    }
}

impl ToneDetector {
    /// Feeds one packet of `codec` audio; returns a key when one is recognised.
    pub fn push(&mut self, codec: Codec, payload: &[u8]) -> Option<char> {
        let mut found = None;
        for &byte in payload {
            self.block[self.filled] = f32::from(g711::decode(codec, byte));
            self.filled += 1;
            if self.filled == BLOCK {
                self.filled = 0;
                found = found.or(self.decide());
            }
        }
        found
    }

    fn decide(&mut self) -> Option<char> {
        let key = self.classify();
        let confirmed = key.is_some() && key == self.last;
        self.last = key;
        if !confirmed {
            self.reported = false;
            return None;
        }
        if self.reported {
            return None;
        }
        self.reported = true;
        key
    }

    fn classify(&self) -> Option<char> {
        let energy: f32 = self.block.iter().map(|x| x * x).sum();
        if energy / (BLOCK as f32) < MIN_POWER {
            return None;
        }
        let mut power = [0.0f32; 8];
        for (p, &coeff) in power.iter_mut().zip(&self.coeffs) {
            let (mut s1, mut s2) = (0.0f32, 0.0f32);
            for &x in &self.block {
                let s0 = x + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            *p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        }
        let (rows, cols) = power.split_at(4);
        let best = |group: &[f32]| {
            let (i, &max) = group.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
            let clear = group
                .iter()
                .enumerate()
                .all(|(j, &p)| j == i || p * GROUP_MARGIN < max);
            clear.then_some((i, max))
        };
        let (r, row_power) = best(rows)?;
        let (c, col_power) = best(cols)?;
        if row_power > col_power * MAX_NORMAL_TWIST || col_power > row_power * MAX_REVERSE_TWIST {
            return None;
        }
        // A pure tone of amplitude A gives power (A·N/2)², i.e. 2P/N is its share of the energy.
        let share = 2.0 * (row_power + col_power) / BLOCK as f32 / energy;
        (share >= MIN_TONE_SHARE).then_some(KEYS[r][c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_frames(digit: char, ms: u32, codec: Codec) -> Vec<u8> {
        let mut sender = DtmfSender::new(digit, ms * 8, true).unwrap();
        let mut out = Vec::new();
        let mut frame = [0u8; 160];
        while sender.step(codec, &mut frame) == DtmfStep::Tone {
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn event_codes_round_trip() {
        for d in "0123456789*#ABCD".chars() {
            assert_eq!(digit_of(event_code(d).unwrap()), Some(d));
        }
        assert_eq!(event_code('x'), None);
        assert_eq!(digit_of(16), None);
    }

    #[test]
    fn rfc4733_sender_grows_duration_and_ends_three_times() {
        let mut s = DtmfSender::new('5', 400, false).unwrap();
        let mut out = [0u8; 160];
        let mut steps = Vec::new();
        loop {
            let step = s.step(Codec::Pcmu, &mut out);
            if step == DtmfStep::Done {
                break;
            }
            steps.push((step, out[0], out[1], u16::from_be_bytes([out[2], out[3]])));
        }
        let start = |start, end| DtmfStep::Event { start, end };
        assert_eq!(
            steps,
            [
                (start(true, false), 5, 10, 160),
                (start(false, false), 5, 10, 320),
                (start(false, true), 5, 0x8A, 400),
                (start(false, true), 5, 0x8A, 400),
                (start(false, true), 5, 0x8A, 400),
            ]
        );
    }

    #[test]
    fn detects_every_generated_key_once_in_both_laws() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for digit in "0123456789*#ABCD".chars() {
                let mut d = ToneDetector::default();
                let mut audio = vec![g711::silence(codec); 800];
                audio.extend(tone_frames(digit, 100, codec));
                audio.extend(vec![g711::silence(codec); 800]);
                let found: Vec<char> = audio.chunks(160).filter_map(|p| d.push(codec, p)).collect();
                assert_eq!(found, [digit], "{codec:?}");
            }
        }
    }

    #[test]
    fn ignores_silence_single_tones_speechlike_noise_and_short_blips() {
        let codec = Codec::Pcmu;
        let mut d = ToneDetector::default();
        // One tone only (1 kHz).
        let single: Vec<u8> = (0..8000)
            .map(|i| {
                g711::encode(
                    codec,
                    ((TAU * 1000.0 * i as f32 / RATE).sin() * 9000.0) as i16,
                )
            })
            .collect();
        // A chord of many frequencies, like voiced speech.
        let chord: Vec<u8> = (0..8000)
            .map(|i| {
                let t = i as f32 / RATE;
                let v: f32 = [220.0, 440.0, 660.0, 880.0, 1100.0, 1320.0]
                    .iter()
                    .map(|f| (TAU * f * t).sin() * 3000.0)
                    .sum();
                g711::encode(codec, v as i16)
            })
            .collect();
        // A 20 ms key blip is too short to confirm.
        let blip = tone_frames('1', 20, codec);
        for audio in [vec![0xFF; 8000], single, chord, blip] {
            assert!(audio.chunks(160).all(|p| d.push(codec, p).is_none()));
        }
        // Two presses of the same key separated by silence are two presses.
        let mut audio = tone_frames('7', 80, codec);
        audio.extend(vec![0xFF; 480]);
        audio.extend(tone_frames('7', 80, codec));
        let found: Vec<char> = audio.chunks(160).filter_map(|p| d.push(codec, p)).collect();
        assert_eq!(found, ['7', '7']);
    }
}

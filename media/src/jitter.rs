//! The jitter buffer used wherever audio is mixed or recorded: decoded samples are written by
//! RTP timestamp into a ring and read out one 20 ms frame per tick of the worker's clock, so
//! reordered packets land in place and gaps play as silence. Pure relay does not use it.

use crate::rtp::FRAME_SAMPLES;
use crate::{Codec, g711};

/// Ring size in samples (512 ms); a power of two so timestamps map by masking.
const RING: usize = 4096;
const MASK: u32 = RING as u32 - 1;
const FRAME: usize = FRAME_SAMPLES as usize;
/// Packets later than this (1 s) are not late but a new timeline: resynchronise.
const RESYNC_BEHIND: i32 = 8000;

/// One direction's jitter buffer. Allocated when a recording or mix starts, never on the packet
/// path.
pub struct JitterBuffer {
    ring: Box<[i16; RING]>,
    /// RTP timestamp of the next sample to play; `None` until the first packet.
    playout: Option<u32>,
    /// Buffering delay in samples.
    delay: u32,
    /// Packets that arrived after their audio had been played.
    pub late: u64,
    /// Timeline restarts (new SSRC, long gaps, clock drift).
    pub resyncs: u64,
    /// Whether the previous packet was late.
    last_late: bool,
}

impl JitterBuffer {
    pub fn new(delay_samples: u32) -> Self {
        Self {
            ring: Box::new([0; RING]),
            playout: None,
            delay: delay_samples.min((RING - 2 * FRAME) as u32),
            late: 0,
            resyncs: 0,
            last_late: false,
        }
    }

    /// Decodes and stores one packet's audio. `until_pop` is the time, in samples, until the
    /// next [`Self::pop`]: it sets the first packet's playout so that its audio comes out
    /// `delay` after it arrived, not rounded to the tick.
    pub fn push(&mut self, timestamp: u32, codec: Codec, payload: &[u8], until_pop: u32) {
        let len = payload.len().min(RING - 2 * FRAME);
        let playout = match self.playout {
            Some(p) => p,
            None => self.restart(timestamp, until_pop),
        };
        let ahead = timestamp.wrapping_sub(playout) as i32;
        if ahead < 0 || ahead as usize + len > RING - FRAME {
            let late = ahead < 0 && ahead > -RESYNC_BEHIND && ahead + len as i32 <= 0;
            if late && !self.last_late {
                // One late packet is reordering: drop it.
                self.late += 1;
                self.last_late = true;
                return;
            }
            // Late again (the sender's clock is slower than ours), far behind or too far ahead
            // (a new timeline): restart on this packet.
            self.resyncs += 1;
            self.restart(timestamp, until_pop);
        }
        self.last_late = false;
        for (i, &byte) in payload[..len].iter().enumerate() {
            let at = (timestamp.wrapping_add(i as u32) & MASK) as usize;
            self.ring[at] = g711::decode(codec, byte);
        }
    }

    fn restart(&mut self, timestamp: u32, until_pop: u32) -> u32 {
        self.ring.fill(0);
        let playout = timestamp
            .wrapping_sub(self.delay)
            .wrapping_add(until_pop.min(FRAME_SAMPLES));
        self.playout = Some(playout);
        playout
    }

    /// Writes the next 20 ms into `out`; silence where nothing arrived.
    pub fn pop(&mut self, out: &mut [i16; FRAME]) {
        let Some(playout) = self.playout else {
            out.fill(0);
            return;
        };
        for (i, sample) in out.iter_mut().enumerate() {
            let at = (playout.wrapping_add(i as u32) & MASK) as usize;
            // Cleared as read, so a slot nobody writes again plays as silence.
            *sample = std::mem::take(&mut self.ring[at]);
        }
        self.playout = Some(playout.wrapping_add(FRAME_SAMPLES));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(value: i16) -> Vec<u8> {
        vec![g711::linear_to_ulaw(value); FRAME]
    }

    fn level(frame: &[i16; FRAME]) -> i16 {
        frame[FRAME / 2]
    }

    #[test]
    fn delays_reorders_and_fills_gaps_with_silence() {
        let mut jb = JitterBuffer::new(2 * FRAME_SAMPLES);
        let mut out = [0i16; FRAME];
        // Packets 0, 2, 1 (reordered), 4 (3 lost), each a different level.
        jb.push(1000, Codec::Pcmu, &frame_of(1000), 0);
        jb.push(1320, Codec::Pcmu, &frame_of(3000), 0);
        jb.push(1160, Codec::Pcmu, &frame_of(2000), 0);
        jb.push(1640, Codec::Pcmu, &frame_of(5000), 0);
        let mut levels = Vec::new();
        for _ in 0..8 {
            jb.pop(&mut out);
            levels.push(level(&out));
        }
        let q = |v: i16| g711::ulaw_to_linear(g711::linear_to_ulaw(v));
        assert_eq!(levels, [0, 0, q(1000), q(2000), q(3000), 0, q(5000), 0]);
        assert_eq!((jb.late, jb.resyncs), (0, 0));
    }

    #[test]
    fn late_packets_are_dropped_and_new_timelines_resync() {
        let mut jb = JitterBuffer::new(FRAME_SAMPLES);
        let mut out = [0i16; FRAME];
        jb.push(0, Codec::Pcma, &[0xD5; FRAME], 0);
        for _ in 0..3 {
            jb.pop(&mut out);
        }
        // Timestamp 160's audio was due in the second pop: late.
        jb.push(160, Codec::Pcma, &[0x80; FRAME], 0);
        assert_eq!(jb.late, 1);
        // A new SSRC with an unrelated timestamp: played after the delay again.
        jb.push(9_000_000, Codec::Pcmu, &frame_of(4000), 0);
        assert_eq!(jb.resyncs, 1);
        jb.pop(&mut out);
        assert_eq!(level(&out), 0);
        jb.pop(&mut out);
        assert!(level(&out) > 3000);
    }

    #[test]
    fn first_packet_plays_delay_after_arrival() {
        let mut jb = JitterBuffer::new(3 * FRAME_SAMPLES);
        let mut out = [0i16; FRAME];
        // Arriving 5 ms (40 samples) before a pop: its first sample comes out 440 samples in.
        jb.push(0, Codec::Pcmu, &frame_of(2000), 40);
        let mut samples = Vec::new();
        for _ in 0..4 {
            jb.pop(&mut out);
            samples.extend_from_slice(&out);
        }
        let first = samples.iter().position(|&s| s != 0).unwrap();
        assert_eq!(first, 3 * FRAME - 40);
    }
}

//! Paced playback of a prompt as 20 ms frames.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rtp::FRAME_SAMPLES;
use crate::{Codec, Prompt, g711};

/// Time covered by one frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames due this soon are sent now, so endpoints whose deadlines are close share one wake-up.
pub(crate) const SLACK: Duration = Duration::from_millis(2);
/// Behind by more than this (a stalled worker), the pacer skips frames instead of bursting them.
const MAX_LATE: Duration = Duration::from_millis(100);

/// Absolute 20 ms deadlines, so pacing does not drift with wake-up jitter.
#[derive(Debug, Clone)]
pub struct Pacer {
    next_due: Instant,
}

impl Pacer {
    /// The first frame is due at `start`.
    pub fn new(start: Instant) -> Self {
        Self { next_due: start }
    }

    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// When a frame is due, returns how many frame periods it advances: 1 normally, more when
    /// frames were skipped after a stall.
    pub fn poll(&mut self, now: Instant) -> Option<u32> {
        if now + SLACK < self.next_due {
            return None;
        }
        let late = now.saturating_duration_since(self.next_due);
        let skipped = if late > MAX_LATE {
            u32::try_from(late.as_nanos() / FRAME.as_nanos()).unwrap_or(u32::MAX / 2)
        } else {
            0
        };
        self.next_due += FRAME * (skipped + 1);
        Some(skipped + 1)
    }
}

/// What a playback produced on one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// No frame due yet.
    Idle,
    /// A frame was written; it advances the stream by `samples`.
    Frame { samples: u32 },
    /// A one-shot prompt has been sent completely.
    Finished,
}

/// A sequence of prompts ("you are number" "3" "in the queue") being played to one endpoint,
/// back to back without gaps.
#[derive(Debug)]
pub struct Playback {
    prompts: Box<[Arc<Prompt>]>,
    looped: bool,
    /// Whether a key press from the endpoint stops it.
    pub interruptible: bool,
    /// Prompt being played (== `prompts.len()` when done) and next sample in it.
    idx: usize,
    pos: usize,
    pacer: Pacer,
}

impl Playback {
    pub fn new(
        prompts: Vec<Arc<Prompt>>,
        looped: bool,
        interruptible: bool,
        start: Instant,
    ) -> Self {
        Self {
            prompts: prompts.into_boxed_slice(),
            looped,
            interruptible,
            idx: 0,
            pos: 0,
            pacer: Pacer::new(start),
        }
    }

    pub fn next_due(&self) -> Instant {
        self.pacer.next_due()
    }

    fn done(&self) -> bool {
        self.idx >= self.prompts.len()
    }

    /// Moves `n` samples on through the sequence, wrapping when looped.
    fn advance(&mut self, mut n: usize) {
        if self.looped {
            let total: usize = self.prompts.iter().map(|p| p.samples()).sum();
            n %= total.max(1);
        }
        while n > 0 && !self.done() {
            let left = self.prompts[self.idx].samples() - self.pos;
            if n < left {
                self.pos += n;
                return;
            }
            n -= left;
            self.idx += 1;
            self.pos = 0;
            if self.looped && self.done() {
                self.idx = 0;
            }
        }
    }

    /// Writes the next frame into `out` (one byte per sample, [`FRAME_SAMPLES`] long) when due.
    /// Looped sequences wrap without a gap; a one-shot sequence's last frame is padded with
    /// silence.
    pub fn poll(&mut self, now: Instant, codec: Codec, out: &mut [u8]) -> Tick {
        if self.done() {
            return Tick::Finished;
        }
        let Some(frames) = self.pacer.poll(now) else {
            return Tick::Idle;
        };
        let frame = FRAME_SAMPLES as usize;
        // Frames skipped after a stall are not sent, but playback keeps to the clock.
        self.advance((frames as usize - 1) * frame);
        if self.done() {
            return Tick::Finished;
        }
        let mut written = 0;
        while written < frame && !self.done() {
            let audio = &self.prompts[self.idx].encoded(codec)[self.pos..];
            let n = audio.len().min(frame - written);
            out[written..written + n].copy_from_slice(&audio[..n]);
            written += n;
            self.advance(n);
        }
        out[written..frame].fill(g711::silence(codec));
        Tick::Frame {
            samples: frames * FRAME_SAMPLES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn pacer_yields_fifty_frames_a_second_without_drift() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        // Polled every 3 ms (never in step with 20 ms) for just under a second.
        let frames: u32 = (0..333).filter_map(|i| pacer.poll(at(t0, i * 3))).sum();
        assert_eq!(frames, 50);
        assert_eq!(pacer.next_due(), at(t0, 1000));
    }

    #[test]
    fn pacer_sends_slightly_early_but_not_before_slack() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        assert_eq!(pacer.poll(t0), Some(1));
        assert_eq!(pacer.poll(at(t0, 17)), None);
        assert_eq!(pacer.poll(at(t0, 18)), Some(1));
        assert_eq!(pacer.next_due(), at(t0, 40));
    }

    #[test]
    fn pacer_catches_up_small_delays_and_skips_stalls() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        // 60 ms late: the missed frames go out back to back.
        assert_eq!(pacer.poll(at(t0, 60)), Some(1));
        assert_eq!(pacer.poll(at(t0, 60)), Some(1));
        assert_eq!(pacer.poll(at(t0, 60)), Some(1));
        assert_eq!(pacer.poll(at(t0, 60)), Some(1));
        assert_eq!(pacer.poll(at(t0, 60)), None);
        // A one-second stall: one frame that advances 50 periods.
        assert_eq!(pacer.poll(at(t0, 1080)), Some(51));
        assert_eq!(pacer.next_due(), at(t0, 1100));
    }

    fn ramp_prompt(len: usize) -> Arc<Prompt> {
        // A ramp, so frames from different positions differ.
        let pcm: Vec<i16> = (0..len).map(|i| (i % 512 * 64) as i16).collect();
        Arc::new(Prompt::from_pcm(&pcm).unwrap())
    }

    #[test]
    fn one_shot_pads_last_frame_then_finishes() {
        let t0 = Instant::now();
        let prompt = ramp_prompt(200);
        let mut pb = Playback::new(vec![prompt.clone()], false, false, t0);
        let mut out = [0u8; 160];
        assert_eq!(
            pb.poll(t0, Codec::Pcma, &mut out),
            Tick::Frame { samples: 160 }
        );
        assert_eq!(&out[..], &prompt.encoded(Codec::Pcma)[..160]);
        assert_eq!(pb.poll(at(t0, 10), Codec::Pcma, &mut out), Tick::Idle);
        assert_eq!(
            pb.poll(at(t0, 20), Codec::Pcma, &mut out),
            Tick::Frame { samples: 160 }
        );
        assert_eq!(&out[..40], &prompt.encoded(Codec::Pcma)[160..]);
        assert!(out[40..].iter().all(|&b| b == 0xD5));
        assert_eq!(pb.poll(at(t0, 40), Codec::Pcma, &mut out), Tick::Finished);
    }

    #[test]
    fn looped_prompt_wraps_seamlessly() {
        let t0 = Instant::now();
        let prompt = ramp_prompt(200);
        let mut pb = Playback::new(vec![prompt.clone()], true, false, t0);
        let audio = prompt.encoded(Codec::Pcmu);
        let mut sent = Vec::new();
        let mut out = [0u8; 160];
        for i in 0..5 {
            assert_eq!(
                pb.poll(at(t0, 20 * i), Codec::Pcmu, &mut out),
                Tick::Frame { samples: 160 }
            );
            sent.extend_from_slice(&out);
        }
        let expected: Vec<u8> = audio.iter().copied().cycle().take(800).collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn sequence_plays_prompts_back_to_back() {
        let t0 = Instant::now();
        let (a, b) = (ramp_prompt(100), ramp_prompt(250));
        let mut pb = Playback::new(vec![a.clone(), b.clone(), a.clone()], false, true, t0);
        assert!(pb.interruptible);
        let mut sent = Vec::new();
        let mut out = [0u8; 160];
        let mut i = 0;
        while let Tick::Frame { .. } = pb.poll(at(t0, 20 * i), Codec::Pcmu, &mut out) {
            sent.extend_from_slice(&out);
            i += 1;
        }
        let mut expected: Vec<u8> = [&a, &b, &a]
            .iter()
            .flat_map(|p| p.encoded(Codec::Pcmu).to_vec())
            .collect();
        expected.resize(3 * 160, 0xFF);
        assert_eq!(sent, expected);
    }

    #[test]
    fn stall_skips_audio_with_the_clock() {
        let t0 = Instant::now();
        let prompt = ramp_prompt(8000);
        let mut pb = Playback::new(vec![prompt.clone()], false, false, t0);
        let mut out = [0u8; 160];
        pb.poll(t0, Codec::Pcmu, &mut out);
        // 200 ms stall: the frame due at 220 ms (the 12th) goes out, the 10 before it are skipped.
        assert_eq!(
            pb.poll(at(t0, 220), Codec::Pcmu, &mut out),
            Tick::Frame { samples: 1760 }
        );
        assert_eq!(&out[..], &prompt.encoded(Codec::Pcmu)[1760..1920]);
    }
}

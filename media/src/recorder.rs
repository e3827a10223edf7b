//! Call recording: workers fill preallocated one-second stereo blocks from the legs' jitter
//! buffers and hand them to one writer thread per process, which appends them to the WAV file
//! and flushes (rewriting the header sizes) after each block. A crash loses at most the block
//! being filled, about a second, and leaves a valid file.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::rtp::FRAME_SAMPLES;
use crate::{EndpointId, MediaEvent, SAMPLE_RATE};

/// Stereo frames per block: one second.
const BLOCK_FRAMES: usize = SAMPLE_RATE as usize;
/// Interleaved samples per block (left = caller, right = agent).
pub(crate) const BLOCK_SAMPLES: usize = 2 * BLOCK_FRAMES;
/// Blocks waiting for the writer; beyond this (a stalled disk) blocks are dropped, not queued.
pub(crate) const WRITER_QUEUE: usize = 4096;

pub(crate) type Block = Box<[i16; BLOCK_SAMPLES]>;

pub(crate) fn new_block() -> Block {
    Box::new([0; BLOCK_SAMPLES])
}

pub(crate) type Wav = hound::WavWriter<BufWriter<File>>;

pub(crate) fn wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

pub(crate) enum WriterMsg {
    Open {
        id: u64,
        endpoint: EndpointId,
        path: PathBuf,
        wav: Wav,
        /// Where written blocks go back to, for reuse by the worker.
        recycle: Sender<Block>,
    },
    /// The first `frames` stereo frames of `block`.
    Write {
        id: u64,
        block: Block,
        frames: usize,
    },
    Close {
        id: u64,
    },
}

/// Starts the writer thread; it ends when every sender is gone.
pub(crate) fn spawn_writer(events: Sender<MediaEvent>) -> std::io::Result<Sender<WriterMsg>> {
    let (tx, rx) = crossbeam_channel::bounded(WRITER_QUEUE);
    std::thread::Builder::new()
        .name("media-rec".into())
        .spawn(move || write_loop(&rx, &events))?;
    Ok(tx)
}

struct Open {
    endpoint: EndpointId,
    path: PathBuf,
    wav: Wav,
    recycle: Sender<Block>,
    frames: u64,
    failed: bool,
}

fn write_loop(rx: &Receiver<WriterMsg>, events: &Sender<MediaEvent>) {
    let mut open: std::collections::HashMap<u64, Open> = std::collections::HashMap::new();
    for msg in rx {
        match msg {
            WriterMsg::Open {
                id,
                endpoint,
                path,
                wav,
                recycle,
            } => {
                open.insert(
                    id,
                    Open {
                        endpoint,
                        path,
                        wav,
                        recycle,
                        frames: 0,
                        failed: false,
                    },
                );
            }
            WriterMsg::Write { id, block, frames } => {
                let Some(rec) = open.get_mut(&id) else {
                    continue;
                };
                if !rec.failed {
                    let frames = frames.min(BLOCK_FRAMES);
                    match append(&mut rec.wav, &block[..2 * frames]) {
                        Ok(()) => rec.frames += frames as u64,
                        Err(e) => {
                            tracing::error!(path = %rec.path.display(), error = %e, "recording write failed; the rest of the call is not recorded");
                            rec.failed = true;
                        }
                    }
                }
                // The worker keeps a spare; a full recycle queue just frees the block.
                let _ = rec.recycle.try_send(block);
            }
            WriterMsg::Close { id } => {
                let Some(rec) = open.remove(&id) else {
                    continue;
                };
                if let Err(e) = rec.wav.finalize() {
                    tracing::error!(path = %rec.path.display(), error = %e, "recording not finalised");
                }
                let _ = events.send(MediaEvent::RecordingStopped {
                    endpoint: rec.endpoint,
                    path: rec.path,
                    duration: Duration::from_micros(
                        rec.frames * 1_000_000 / u64::from(SAMPLE_RATE),
                    ),
                });
            }
        }
    }
    // Workers are gone (process shutting down): close what they did not.
    for (_, rec) in open {
        let _ = rec.wav.finalize();
    }
}

/// Appends interleaved samples, then flushes so the header sizes on disk cover them.
fn append(wav: &mut Wav, samples: &[i16]) -> Result<(), hound::Error> {
    let mut writer = wav.get_i16_writer(samples.len() as u32);
    for &s in samples {
        writer.write_sample(s);
    }
    writer.flush()?;
    wav.flush()
}

/// The worker's side of one recording.
pub(crate) struct Recording {
    pub(crate) id: u64,
    /// Slots of the caller (left) and agent (right) endpoints.
    pub(crate) caller: usize,
    pub(crate) agent: usize,
    block: Option<Block>,
    frames: usize,
    spare: Receiver<Block>,
    writer: Sender<WriterMsg>,
}

impl Recording {
    pub(crate) fn new(
        id: u64,
        caller: usize,
        agent: usize,
        block: Block,
        spare: Receiver<Block>,
        writer: Sender<WriterMsg>,
    ) -> Self {
        Self {
            id,
            caller,
            agent,
            block: Some(block),
            frames: 0,
            spare,
            writer,
        }
    }

    /// Appends one 20 ms stereo frame; hands the block to the writer when it is full.
    pub(crate) fn write(&mut self, left: &[i16], right: &[i16]) {
        let Some(block) = self.block.as_mut() else {
            // No block to fill (the writer is far behind); this audio is lost.
            self.block = self.spare.try_recv().ok();
            return;
        };
        let at = 2 * self.frames;
        let frame = FRAME_SAMPLES as usize;
        for (i, (l, r)) in left.iter().zip(right).take(frame).enumerate() {
            block[at + 2 * i] = *l;
            block[at + 2 * i + 1] = *r;
        }
        self.frames += frame;
        if self.frames + frame > BLOCK_FRAMES {
            self.hand_over();
            self.block = self.spare.try_recv().ok();
        }
    }

    fn hand_over(&mut self) {
        if let Some(block) = self.block.take()
            && self.frames > 0
        {
            let msg = WriterMsg::Write {
                id: self.id,
                block,
                frames: self.frames,
            };
            if let Err(TrySendError::Full(_)) = self.writer.try_send(msg) {
                tracing::warn!(
                    recording = self.id,
                    "recording writer is behind; one second dropped"
                );
            }
        }
        self.frames = 0;
    }

    /// Hands over the partial block and closes the file.
    pub(crate) fn finish(mut self) {
        self.hand_over();
        // Never block the worker; if Close is lost the file keeps its last flushed header,
        // which is still valid.
        if self
            .writer
            .try_send(WriterMsg::Close { id: self.id })
            .is_err()
        {
            tracing::error!(
                recording = self.id,
                "recording writer is behind; file not closed"
            );
        }
    }
}

//! Prompts (music on hold, announcements) held as 8 kHz PCM and pre-encoded in both G.711 laws.

use std::path::Path;

use crate::{Codec, MediaError, g711};

/// Sample rate of everything the media workers send.
pub const SAMPLE_RATE: u32 = 8000;

/// An audio prompt, loaded once and shared (`Arc<Prompt>`) by every endpoint that plays it.
#[derive(Debug)]
pub struct Prompt {
    pcmu: Box<[u8]>,
    pcma: Box<[u8]>,
}

impl Prompt {
    /// Loads a WAV file. Integer or float samples of any width are accepted; channels are mixed
    /// to mono and other rates resampled linearly to 8 kHz.
    pub fn load_wav(path: &Path) -> Result<Prompt, MediaError> {
        let err = |e: hound::Error| MediaError::Prompt {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let reader = hound::WavReader::open(path).map_err(err)?;
        let spec = reader.spec();
        let samples: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => reader.into_samples::<f32>().collect::<Result<_, _>>(),
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| v as f32 * scale))
                    .collect::<Result<_, _>>()
            }
        }
        .map_err(err)?;
        let mono = mix_to_mono(&samples, usize::from(spec.channels));
        let pcm: Vec<i16> = resample_linear(&mono, spec.sample_rate, SAMPLE_RATE)
            .into_iter()
            .map(|v| (v * 32768.0).clamp(-32768.0, 32767.0) as i16)
            .collect();
        Prompt::from_pcm(&pcm).map_err(|_| MediaError::Prompt {
            path: path.display().to_string(),
            reason: "no audio".into(),
        })
    }

    /// Builds a prompt from 8 kHz mono samples.
    pub fn from_pcm(pcm: &[i16]) -> Result<Prompt, MediaError> {
        if pcm.is_empty() {
            return Err(MediaError::Prompt {
                path: String::new(),
                reason: "no audio".into(),
            });
        }
        Ok(Prompt {
            pcmu: pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect(),
            pcma: pcm.iter().map(|&s| g711::linear_to_alaw(s)).collect(),
        })
    }

    /// Length in 8 kHz samples.
    pub fn samples(&self) -> usize {
        self.pcmu.len()
    }

    /// Encoded audio for `codec`, one byte per sample.
    pub(crate) fn encoded(&self, codec: Codec) -> &[u8] {
        match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        }
    }
}

fn mix_to_mono(samples: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return samples.to_vec();
    }
    samples
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

fn resample_linear(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || from == 0 || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let idx = pos as usize;
            let frac = (pos - idx as f64) as f32;
            let a = input[idx.min(input.len() - 1)];
            let b = input[(idx + 1).min(input.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resamples_to_expected_length_and_shape() {
        let ramp: Vec<f32> = (0..16_000).map(|i| i as f32 / 16_000.0).collect();
        let out = resample_linear(&ramp, 16_000, 8_000);
        assert_eq!(out.len(), 8_000);
        assert!((out[4000] - 0.5).abs() < 1e-3);
        let up = resample_linear(&[0.0, 1.0], 8_000, 16_000);
        assert_eq!(up, [0.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn mixes_channels() {
        assert_eq!(mix_to_mono(&[1.0, 0.0, 0.5, 0.5], 2), [0.5, 0.5]);
    }

    #[test]
    fn rejects_empty_audio() {
        assert!(Prompt::from_pcm(&[]).is_err());
    }

    #[test]
    fn loads_stereo_44k_wav_as_8k_mono() {
        let path =
            std::env::temp_dir().join(format!("switchyard-media-{}.wav", std::process::id()));
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..44_100 {
            w.write_sample(8000i16).unwrap();
            w.write_sample(8000i16).unwrap();
        }
        w.finalize().unwrap();
        let prompt = Prompt::load_wav(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(prompt.samples(), 8_000);
        assert_eq!(g711::ulaw_to_linear(prompt.encoded(Codec::Pcmu)[100]), 7932);
        assert_eq!(g711::alaw_to_linear(prompt.encoded(Codec::Pcma)[100]), 8064);
        assert!(Prompt::load_wav(Path::new("/nonexistent/x.wav")).is_err());
    }
}

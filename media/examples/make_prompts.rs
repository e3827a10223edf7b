//! Generates the stock prompts the node plays: `music-on-hold.wav` (an 8 s looping arpeggio over
//! C-Am-F-G) and `goodbye.wav` (a falling two-tone chime), both 8 kHz mono 16-bit.
//!
//! Usage: `cargo run -p switchyard-media --example make_prompts -- deploy/media`

use std::f32::consts::TAU;
use std::path::{Path, PathBuf};

const RATE: u32 = 8000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "deploy/media".into()),
    );
    std::fs::create_dir_all(&dir)?;
    write(&dir.join("music-on-hold.wav"), &music_on_hold())?;
    write(&dir.join("goodbye.wav"), &goodbye())?;
    println!("wrote {}/{{music-on-hold,goodbye}}.wav", dir.display());
    Ok(())
}

fn write(path: &Path, samples: &[f32]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()
}

/// Frequency of a MIDI note.
fn note(midi: i32) -> f32 {
    440.0 * 2f32.powf((midi - 69) as f32 / 12.0)
}

/// A soft, slightly bright tone: fundamental plus two quiet harmonics, so it survives the
/// telephone band (300-3400 Hz) even for lower notes.
fn voice(freq: f32, t: f32) -> f32 {
    (TAU * freq * t).sin() + 0.3 * (TAU * 2.0 * freq * t).sin() + 0.1 * (TAU * 3.0 * freq * t).sin()
}

/// Adds a plucked note: 5 ms attack, exponential decay, and a short fade so it ends at zero. A
/// note running past the end wraps to the start, so looped music has no seam.
fn pluck(out: &mut [f32], start: usize, len: usize, freq: f32, gain: f32, decay: f32) {
    let fade = (RATE / 100) as usize;
    let total = out.len();
    for i in 0..len {
        let t = i as f32 / RATE as f32;
        let attack = (t / 0.005).min(1.0);
        let release = ((len - i) as f32 / fade as f32).min(1.0);
        out[(start + i) % total] += gain * attack * release * (-t * decay).exp() * voice(freq, t);
    }
}

fn music_on_hold() -> Vec<f32> {
    // C, Am, F, G as MIDI roots with major/minor triads, two seconds each: 8 s that loop.
    let chords: [(i32, [i32; 3]); 4] = [
        (60, [0, 4, 7]),
        (57, [0, 3, 7]),
        (53, [0, 4, 7]),
        (55, [0, 4, 7]),
    ];
    let chord_len = 2 * RATE as usize;
    let step = RATE as usize / 4;
    let mut out = vec![0.0f32; 4 * chord_len];
    for (c, (root, triad)) in chords.iter().enumerate() {
        let base = c * chord_len;
        // Pad: the triad an octave up, sustained under the whole chord.
        for &interval in triad {
            pluck(
                &mut out,
                base,
                chord_len,
                note(root + 12 + interval),
                0.06,
                0.6,
            );
        }
        // Arpeggio in eighth notes at 120 bpm: up and back down over two octaves.
        let pattern = [0, 1, 2, 3, 4, 3, 2, 1];
        for (k, &p) in pattern.iter().enumerate() {
            let midi = root + 12 + 12 * (p / 3) as i32 + triad[p % 3];
            pluck(&mut out, base + k * step, 2 * step, note(midi), 0.16, 5.0);
        }
    }
    out
}

fn goodbye() -> Vec<f32> {
    let mut out = vec![0.0f32; RATE as usize * 3 / 2];
    let tone = RATE as usize * 3 / 5;
    // G5 then C5, bell-like, ending in 0.3 s of quiet.
    pluck(&mut out, 0, tone, note(79), 0.35, 3.0);
    pluck(&mut out, tone, tone, note(72), 0.35, 3.0);
    out
}

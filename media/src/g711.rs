//! G.711 μ-law (PCMU) and A-law (PCMA), after the ITU/Sun reference implementation.
//!
//! Decoding and PCMU<->PCMA transcoding use tables built at compile time, so the relay path
//! transcodes with one lookup per byte.

use crate::Codec;

/// Bytes that encode silence, used to pad the tail of a prompt.
pub const fn silence(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0xFF,
        Codec::Pcma => 0xD5,
    }
}

/// Encodes one 16-bit linear sample as μ-law.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    const CLIP: i32 = 8159;
    const BIAS: i32 = 0x84 >> 2;
    // The reference works on 14-bit magnitudes.
    let mut pcm = (sample as i32) >> 2;
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > CLIP {
        pcm = CLIP;
    }
    pcm += BIAS;
    let seg = segment(pcm, 0x3F);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let uval = ((seg << 4) as i32 | ((pcm >> (seg + 1)) & 0xF)) as u8;
    uval ^ mask
}

/// Encodes one 16-bit linear sample as A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    // The reference works on 13-bit magnitudes.
    let mut pcm = (sample as i32) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = segment(pcm, 0x1F);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let quant = if seg < 2 { pcm >> 1 } else { pcm >> seg };
    let aval = ((seg << 4) as i32 | (quant & 0xF)) as u8;
    aval ^ mask
}

/// Index of the first segment holding `value`, segment `i` ending below `(first_end + 1) << i`;
/// 8 when none does.
const fn segment(value: i32, first_end: i32) -> u32 {
    let mut seg = 0;
    while seg < 8 {
        if value < (first_end + 1) << seg {
            return seg;
        }
        seg += 1;
    }
    8
}

const fn ulaw_to_linear_ref(code: u8) -> i16 {
    const BIAS: i32 = 0x84;
    let u = !code;
    let mut t = (((u & 0x0F) as i32) << 3) + BIAS;
    t <<= ((u & 0x70) >> 4) as i32;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

const fn alaw_to_linear_ref(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_ulaw_to_linear() -> [i16; 256] {
    let mut out = [0; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = ulaw_to_linear_ref(i as u8);
        i += 1;
    }
    out
}

const fn build_alaw_to_linear() -> [i16; 256] {
    let mut out = [0; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = alaw_to_linear_ref(i as u8);
        i += 1;
    }
    out
}

static ULAW_TO_LINEAR: [i16; 256] = build_ulaw_to_linear();
static ALAW_TO_LINEAR: [i16; 256] = build_alaw_to_linear();

const fn build_ulaw_to_alaw() -> [u8; 256] {
    let mut out = [0; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = linear_to_alaw(ulaw_to_linear_ref(i as u8));
        i += 1;
    }
    out
}

const fn build_alaw_to_ulaw() -> [u8; 256] {
    let mut out = [0; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = linear_to_ulaw(alaw_to_linear_ref(i as u8));
        i += 1;
    }
    out
}

static ULAW_TO_ALAW: [u8; 256] = build_ulaw_to_alaw();
static ALAW_TO_ULAW: [u8; 256] = build_alaw_to_ulaw();

/// Decodes one μ-law byte.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[code as usize]
}

/// Decodes one A-law byte.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[code as usize]
}

/// Encodes one sample for `codec`.
pub fn encode(codec: Codec, sample: i16) -> u8 {
    match codec {
        Codec::Pcmu => linear_to_ulaw(sample),
        Codec::Pcma => linear_to_alaw(sample),
    }
}

/// Decodes one byte of `codec`.
pub fn decode(codec: Codec, code: u8) -> i16 {
    match codec {
        Codec::Pcmu => ulaw_to_linear(code),
        Codec::Pcma => alaw_to_linear(code),
    }
}

/// Rewrites a G.711 payload in place from one law to the other; a no-op when they match.
pub fn transcode(payload: &mut [u8], from: Codec, to: Codec) {
    let table = match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => &ULAW_TO_ALAW,
        (Codec::Pcma, Codec::Pcmu) => &ALAW_TO_ULAW,
        _ => return,
    };
    for byte in payload {
        *byte = table[*byte as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from CPython's audioop (the same Sun reference code).
    const ENCODE_REF: &[(i16, u8, u8)] = &[
        (0, 0xFF, 0xD5),
        (1, 0xFF, 0xD5),
        (-1, 0x7E, 0x55),
        (8, 0xFE, 0xD5),
        (-8, 0x7E, 0x55),
        (100, 0xF2, 0xD3),
        (-100, 0x72, 0x53),
        (1000, 0xCE, 0xFA),
        (-1000, 0x4E, 0x7A),
        (5000, 0xAB, 0x86),
        (-5000, 0x2B, 0x06),
        (12345, 0x97, 0xBD),
        (-12345, 0x17, 0x3D),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
    ];

    const DECODE_REF: &[(u8, i16, i16)] = &[
        (0x00, -32124, -5504),
        (0x7F, 0, -848),
        (0x80, 32124, 5504),
        (0xFF, 0, 848),
        (0x12, -14972, -3008),
        (0x9A, 10876, 4032),
        (0x55, -716, -8),
        (0xD5, 716, 8),
        (0x2A, -5372, -32256),
        (0xAA, 5372, 32256),
    ];

    #[test]
    fn encode_matches_reference() {
        for &(sample, ulaw, alaw) in ENCODE_REF {
            assert_eq!(linear_to_ulaw(sample), ulaw, "μ-law of {sample}");
            assert_eq!(linear_to_alaw(sample), alaw, "A-law of {sample}");
        }
    }

    #[test]
    fn decode_matches_reference() {
        for &(code, ulaw, alaw) in DECODE_REF {
            assert_eq!(ulaw_to_linear(code), ulaw, "μ-law {code:#04x}");
            assert_eq!(alaw_to_linear(code), alaw, "A-law {code:#04x}");
        }
    }

    #[test]
    fn decode_then_encode_is_identity() {
        for code in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code);
            // μ-law has two codes for zero (0x7F and 0xFF); both decode to 0 and encode as 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(linear_to_ulaw(ulaw_to_linear(code)), expected);
        }
    }

    #[test]
    fn encode_error_is_within_quantisation_step() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for sample in (i16::MIN..=i16::MAX).step_by(7) {
                let back = decode(codec, encode(codec, sample)) as i32;
                let err = (back - sample as i32).abs();
                // Quantisation steps grow with the segment to about 1/16 of the magnitude.
                let bound = (sample as i32).abs() / 16 + 64;
                assert!(err <= bound, "{codec:?} {sample} -> {back}");
            }
        }
    }

    #[test]
    fn transcode_round_trip_stays_close() {
        for code in 0..=255u8 {
            let original = ulaw_to_linear(code) as i32;
            let mut buf = [code];
            transcode(&mut buf, Codec::Pcmu, Codec::Pcma);
            let via_alaw = alaw_to_linear(buf[0]) as i32;
            transcode(&mut buf, Codec::Pcma, Codec::Pcmu);
            let back = ulaw_to_linear(buf[0]) as i32;
            // One A-law quantum near zero (16) or ~1/16 of the magnitude above it.
            let bound = original.abs() / 16 + 16;
            assert!(
                (via_alaw - original).abs() <= bound,
                "{code:#04x} via A-law"
            );
            assert!((back - original).abs() <= bound, "{code:#04x} round trip");
        }
        let mut same = [1, 2, 3];
        transcode(&mut same, Codec::Pcma, Codec::Pcma);
        assert_eq!(same, [1, 2, 3]);
    }

    #[test]
    fn silence_decodes_near_zero() {
        assert_eq!(ulaw_to_linear(silence(Codec::Pcmu)), 0);
        assert_eq!(alaw_to_linear(silence(Codec::Pcma)), 8);
    }
}

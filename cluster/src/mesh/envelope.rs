//! The mesh wire format: length-prefixed, rkyv-archived [`Envelope`]s on QUIC streams.
//!
//! A frame is a `u32` big-endian body length followed by the body, the rkyv archive of an
//! `Envelope`. Bodies over the configured maximum are refused before any allocation. Decoding
//! validates the archive (bytecheck) before reading a field, then insists on
//! [`PROTOCOL_VERSION`]; anything else is an error for the connection, never a panic.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::MeshError;

/// The mesh protocol version. Bump it on any change to [`Envelope`]'s layout or to the meaning
/// of its fields; it also goes into the ALPN string (`switchyard/<version>`).
pub const PROTOCOL_VERSION: u16 = 1;

/// Default largest frame body: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

const LEN_PREFIX: usize = 4;
const READ_CHUNK: usize = 256 * 1024;

/// One message on the mesh.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
pub struct Envelope {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Application-defined channel (e.g. Raft, actor request, actor response).
    pub kind: u16,
    /// Pairs a response with its request; 0 for one-way messages.
    pub correlation: u64,
    /// Sender node id; receivers check it against the peer's certificate.
    pub from: u64,
    /// Opaque application bytes.
    pub payload: Vec<u8>,
}

/// An encoded frame: length prefix and archived body, ready to be written.
#[derive(Debug)]
pub struct Frame {
    prefix: [u8; LEN_PREFIX],
    body: AlignedVec,
}

impl Frame {
    /// The bytes to write, in order.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.prefix, &self.body]
    }
}

impl Envelope {
    /// An envelope of the current protocol version.
    pub fn new(kind: u16, correlation: u64, from: u64, payload: Vec<u8>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            kind,
            correlation,
            from,
            payload,
        }
    }

    /// Archives the envelope into a frame whose body is at most `max_frame` bytes.
    pub fn encode(&self, max_frame: usize) -> Result<Frame, MeshError> {
        let body = rkyv::to_bytes::<rancor::Error>(self)
            .map_err(|e| MeshError::Corrupt(format!("cannot archive envelope: {e}")))?;
        let len = body.len();
        let prefix = u32::try_from(len)
            .ok()
            .filter(|_| len <= max_frame)
            .ok_or(MeshError::FrameTooLarge {
                len,
                max: max_frame,
            })?
            .to_be_bytes();
        Ok(Frame { prefix, body })
    }

    /// Validates and decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, MeshError> {
        if body.is_empty() {
            return Err(MeshError::Corrupt("empty frame".into()));
        }
        // Archives must be aligned: bodies from `read_frame` are; anything else is copied.
        let copy: AlignedVec;
        let body = if body.as_ptr().align_offset(AlignedVec::<16>::ALIGNMENT) == 0 {
            body
        } else {
            let mut aligned = AlignedVec::with_capacity(body.len());
            aligned.extend_from_slice(body);
            copy = aligned;
            &copy
        };
        let archived = rkyv::access::<ArchivedEnvelope, rancor::Error>(body)
            .map_err(|e| MeshError::Corrupt(format!("invalid envelope archive: {e}")))?;
        let version = archived.version.to_native();
        if version != PROTOCOL_VERSION {
            return Err(MeshError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        Ok(Self {
            version,
            kind: archived.kind.to_native(),
            correlation: archived.correlation.to_native(),
            from: archived.from.to_native(),
            payload: archived.payload.as_slice().to_vec(),
        })
    }
}

/// Reads one frame body from `stream`. `Ok(None)` is a clean end of stream between frames; a
/// stream ending inside a frame is `Corrupt`; a length over `max_frame` is `FrameTooLarge` and
/// nothing of the body is read or allocated.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    max_frame: usize,
) -> Result<Option<AlignedVec>, MeshError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut filled = 0;
    while filled < LEN_PREFIX {
        match stream.read(&mut prefix[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(MeshError::Corrupt(format!(
                    "stream ended inside a length prefix ({filled} of {LEN_PREFIX} bytes)"
                )));
            }
            Ok(n) => filled += n,
            Err(e) => return Err(super::stream_error(e)),
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame {
        return Err(MeshError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    // Grow with the data actually received, so a peer announcing big frames without sending
    // them cannot make us commit memory up front.
    let mut body = AlignedVec::new();
    while body.len() < len {
        let start = body.len();
        let end = len.min(start + READ_CHUNK);
        body.resize(end, 0);
        match stream.read_exact(&mut body[start..end]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(MeshError::Corrupt(format!(
                    "stream ended inside a {len}-byte frame"
                )));
            }
            Err(e) => return Err(super::stream_error(e)),
        }
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn sample() -> Envelope {
        Envelope::new(2, 77, 3, b"hello mesh".to_vec())
    }

    fn wire(frame: &Frame) -> Vec<u8> {
        frame.parts().concat()
    }

    async fn read_all(mut bytes: &[u8], max: usize) -> Result<Vec<Envelope>, MeshError> {
        let mut out = Vec::new();
        while let Some(body) = read_frame(&mut bytes, max).await? {
            out.push(Envelope::decode(&body)?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn round_trip_several_frames() {
        let a = sample();
        let b = Envelope::new(1, 0, 3, vec![0xAB; 100_000]);
        let mut bytes = wire(&a.encode(DEFAULT_MAX_FRAME).expect("encode"));
        bytes.extend(wire(&b.encode(DEFAULT_MAX_FRAME).expect("encode")));
        assert_eq!(
            read_all(&bytes, DEFAULT_MAX_FRAME).await.expect("read"),
            [a, b]
        );
    }

    #[test]
    fn decode_copes_with_unaligned_input() {
        let frame = sample().encode(DEFAULT_MAX_FRAME).expect("encode");
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(frame.parts()[1]);
        assert_eq!(Envelope::decode(&shifted[1..]).expect("decode"), sample());
    }

    #[test]
    fn other_version_is_a_version_mismatch() {
        let mut env = sample();
        env.version = PROTOCOL_VERSION + 1;
        let frame = env.encode(DEFAULT_MAX_FRAME).expect("encode");
        match Envelope::decode(frame.parts()[1]) {
            Err(MeshError::VersionMismatch { ours, theirs }) => {
                assert_eq!((ours, theirs), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
            }
            other => panic!("expected a version mismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_both_ways() {
        let big = Envelope::new(1, 0, 1, vec![0; 2048]);
        assert!(matches!(
            big.encode(1024),
            Err(MeshError::FrameTooLarge { max: 1024, .. })
        ));
        // A peer announcing a huge frame is stopped at the prefix, before any allocation.
        let bytes = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_all(&bytes, DEFAULT_MAX_FRAME).await,
            Err(MeshError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn truncations_are_corrupt_not_panics() {
        let bytes = wire(&sample().encode(DEFAULT_MAX_FRAME).expect("encode"));
        for cut in 1..bytes.len() {
            assert!(
                matches!(
                    read_all(&bytes[..cut], DEFAULT_MAX_FRAME).await,
                    Err(MeshError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        assert!(
            read_all(&[], DEFAULT_MAX_FRAME)
                .await
                .expect("empty")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn random_bytes_and_bit_flips_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..5000 {
            let len = rng.random_range(0..200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Half the time, a plausible length prefix so the body reaches the validator.
            if len >= 4 && rng.random() {
                bytes[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
            }
            let _ = read_all(&bytes, DEFAULT_MAX_FRAME).await;
        }
        let body = sample().encode(DEFAULT_MAX_FRAME).expect("encode").parts()[1].to_vec();
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut flipped = body.clone();
                flipped[i] ^= 1 << bit;
                let _ = Envelope::decode(&flipped);
            }
        }
    }
}

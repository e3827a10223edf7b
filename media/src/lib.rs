//! Switchyard media workers: RTP relay between call legs with RTCP reports, G.711 transcoding,
//! prompt playback, DTMF (RFC 4733 and in-band), call recording and supervisor mixes.
//!
//! Media runs on dedicated OS threads ("media-N"), outside the async runtime. Each worker owns its
//! endpoints' sockets and state and waits in `epoll`; the async side drives it through a cheap,
//! non-blocking [`MediaHandle`] and reads [`MediaEvent`]s from a channel. See
//! `docs/adr/0004-media-workers-on-dedicated-threads.md`.
//!
//! Protocol logic lives in plain types tested without sockets ([`g711`], [`rtp`], [`rtcp`],
//! [`dtmf`], the jitter buffer, mixer and playback pacer); the worker loop only moves packets
//! between them and the sockets. Recordings are written by one "media-rec" thread. See also
//! `docs/adr/0010-recording-and-mixing.md`.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub mod dtmf;
pub mod g711;
mod handle;
mod jitter;
mod mixer;
mod playback;
mod prompt;
mod recorder;
pub mod rtcp;
pub mod rtp;
mod sys;
mod worker;

pub use handle::{MediaHandle, MediaStats, start};
pub use mixer::MonitorMode;
pub use prompt::{Prompt, SAMPLE_RATE};

/// Media worker settings.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Worker threads; each call's legs share one.
    pub workers: usize,
    /// Address RTP sockets bind to; it is also the address in [`Endpoint::local`].
    pub bind_ip: IpAddr,
    /// RTP uses even ports in this range, RTCP the odd port above each.
    pub port_min: u16,
    pub port_max: u16,
    /// Silence after which [`MediaEvent::RtpTimeout`] is raised (see there).
    pub rtp_timeout: Duration,
    /// Mean interval of our RTCP reports per endpoint (RFC 3550 suggests 5 s); each interval is
    /// randomised over 0.5-1.5 times this.
    pub rtcp_interval: Duration,
}

/// Names one endpoint (an RTP/RTCP socket pair) for the life of the process. The owning worker's
/// index is in the top 16 bits, so commands route without a lookup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(u64);

impl EndpointId {
    fn new(worker: usize, serial: u64) -> Self {
        Self(((worker as u64) << 48) | (serial & ((1 << 48) - 1)))
    }

    fn worker(self) -> usize {
        (self.0 >> 48) as usize
    }

    /// An id from its raw value, for code that names endpoints without a worker behind them
    /// (the call core's tests stand in for the media workers with ids of their own).
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ep{}/{}", self.worker(), self.0 & ((1 << 48) - 1))
    }
}

/// A newly allocated endpoint: `local` is the RTP address to put in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub local: SocketAddr,
}

/// The G.711 laws the workers speak; both run at 8 kHz, so transcoding keeps timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
}

/// What the workers report to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP or RTCP arrived for `rtp_timeout`. The clock starts at the first `set_remote` and
    /// restarts with every packet received, so endpoints without a remote never time out.
    /// Reported once; a later packet re-arms it.
    RtpTimeout { endpoint: EndpointId },
    /// A one-shot prompt or sequence was sent completely (not raised for looped, stopped,
    /// interrupted or replaced ones).
    PlaybackFinished { endpoint: EndpointId },
    /// A key press arrived (RFC 4733, or in-band where enabled), reported once per press.
    Dtmf { endpoint: EndpointId, digit: char },
    /// An interruptible prompt was stopped by a key press from its endpoint.
    PlaybackInterrupted { endpoint: EndpointId, digit: char },
    /// A recording was closed (stopped, or one of its legs released); `endpoint` is its caller
    /// leg and `duration` the audio written.
    RecordingStopped {
        endpoint: EndpointId,
        path: PathBuf,
        duration: Duration,
    },
}

impl MediaEvent {
    /// The endpoint the event is about.
    pub fn endpoint(&self) -> EndpointId {
        match self {
            MediaEvent::RtpTimeout { endpoint }
            | MediaEvent::PlaybackFinished { endpoint }
            | MediaEvent::Dtmf { endpoint, .. }
            | MediaEvent::PlaybackInterrupted { endpoint, .. }
            | MediaEvent::RecordingStopped { endpoint, .. } => *endpoint,
        }
    }
}

/// RTP and RTCP statistics of one endpoint (see [`MediaHandle::endpoint_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// RTP packets received from the far end (RFC 3550 A.1 validated).
    pub packets_received: u64,
    /// Expected minus received over the call (negative with duplicates).
    pub packets_lost: i64,
    /// Interarrival jitter of what we receive (RFC 3550 A.8).
    pub jitter: Duration,
    /// RTP packets we sent to the far end.
    pub packets_sent: u64,
    pub rtcp_received: u64,
    pub rtcp_sent: u64,
    /// The far end's last report on the stream we send it.
    pub remote: Option<RemoteReport>,
}

/// What the far end's RTCP said about our stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteReport {
    /// Loss over its last report interval, in 1/256.
    pub fraction_lost: u8,
    pub packets_lost: i32,
    pub jitter: Duration,
    /// From its LSR/DLSR echo of our sender report, once it has one.
    pub round_trip: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid media config: {0}")]
    Config(String),
    #[error("no free RTP port pair in {min}-{max}")]
    NoPorts { min: u16, max: u16 },
    #[error("binding RTP socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(EndpointId),
    #[error("endpoints {a} and {b} are on different media workers")]
    NotColocated { a: EndpointId, b: EndpointId },
    #[error("media worker {0} has stopped")]
    WorkerGone(usize),
    #[error("{0:?} is not a DTMF key")]
    InvalidDigit(char),
    #[error("endpoints of a mix must be distinct")]
    SameEndpoint,
    #[error("recording {path}: {source}")]
    Recording { path: PathBuf, source: hound::Error },
    #[error("prompt {path}: {reason}")]
    Prompt { path: String, reason: String },
    #[error("starting media workers: {0}")]
    Io(#[from] io::Error),
}

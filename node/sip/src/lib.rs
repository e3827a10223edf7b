//! Sans-IO SIP for Switchyard.
//!
//! Nothing in this crate opens a socket, spawns a task or reads the clock: callers feed bytes,
//! messages and `Instant`s in, and take messages to transmit and events out. That keeps every
//! protocol rule unit-testable and lets the node run the same code over UDP, TCP or (later) a
//! replicated standby.
//!
//! - [`message`]: parsing (rsip plus the compact header forms and line folding rsip lacks),
//!   validation, and building responses.
//! - [`headers`]: typed accessors over rsip messages used everywhere else.
//! - [`framing`]: Content-Length framing of a TCP byte stream.
//! - [`transaction`]: RFC 3261 §17 client and server transactions, timers A-K.
//! - [`dialog`]: RFC 3261 §12 dialogs as plain, replicable data.
//! - [`digest`]: server-side digest authentication (MD5, SHA-256, qop=auth).
//! - [`sdp`]: the audio subset of SDP offer/answer (RFC 3264) the node needs.

pub mod dialog;
pub mod digest;
pub mod framing;
pub mod headers;
pub mod message;
pub mod sdp;
pub mod transaction;

pub use rsip;

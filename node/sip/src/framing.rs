//! Splitting a SIP byte stream (TCP, TLS) into messages by Content-Length (RFC 3261 §18.3), and
//! spotting RFC 5626 CRLF keep-alives between them.
//!
//! Feed every read to [`StreamFramer::push`], then call [`StreamFramer::next_message`] until it
//! returns `Ok(None)`. That keeps the buffer bounded by one read plus the configured limits. An
//! error means the stream can no longer be framed: answer 400 if possible and close the
//! connection; the framer is not meant to be used afterwards.

use bytes::{Buf, Bytes, BytesMut};

use crate::message::find_subslice;

/// Default limit on a header section, start line included.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default limit on a body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

const DOUBLE_CRLF: &[u8] = b"\r\n\r\n";

/// One item taken off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message, header section and exactly Content-Length bytes of body, ready for
    /// [`crate::message::parse`].
    Message(Bytes),
    /// A CRLFCRLF ping (RFC 5626 §3.5.1); the transport answers it with a single CRLF.
    KeepAlive,
}

/// Why the stream cannot be framed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// No end of the header section within the limit.
    #[error("header section longer than {0} bytes")]
    HeadersTooLarge(usize),
    /// Content-Length is mandatory on streams.
    #[error("missing Content-Length")]
    MissingContentLength,
    /// Content-Length is not a number, or appears more than once.
    #[error("malformed or repeated Content-Length")]
    InvalidContentLength,
    /// Content-Length over the limit.
    #[error("body longer than {0} bytes")]
    BodyTooLarge(usize),
}

/// Incremental framer for one connection.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_header_bytes: usize,
    max_body_bytes: usize,
    /// How much of `buf` has been searched for the end of the header section, so a message
    /// arriving in many small reads is scanned once, not once per read.
    scanned: usize,
    /// Total length of the message at the front of `buf` once its header section is complete.
    pending: Option<usize>,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_BODY_BYTES)
    }
}

impl StreamFramer {
    /// A framer refusing header sections over `max_header_bytes` and bodies over
    /// `max_body_bytes`.
    pub fn new(max_header_bytes: usize, max_body_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_header_bytes,
            max_body_bytes,
            scanned: 0,
            pending: None,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Frame>, FramingError> {
        let total = match self.pending {
            Some(total) => total,
            None => {
                if let Some(keep_alive) = self.take_crlfs() {
                    return Ok(keep_alive);
                }
                match self.find_message_length()? {
                    Some(total) => total,
                    None => return Ok(None),
                }
            }
        };
        if self.buf.len() < total {
            self.pending = Some(total);
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }

    /// Consumes CRLFs before a message: a double CRLF is a ping, a lone CRLF a pong or the
    /// padding RFC 3261 §7.5 says to ignore. `Some(..)` is the answer to return right away:
    /// a keep-alive, or `None` while what is buffered could still become one.
    fn take_crlfs(&mut self) -> Option<Option<Frame>> {
        loop {
            if self.buf.starts_with(DOUBLE_CRLF) {
                self.buf.advance(DOUBLE_CRLF.len());
                return Some(Some(Frame::KeepAlive));
            }
            if !self.buf.is_empty() && DOUBLE_CRLF.starts_with(&self.buf) {
                return Some(None);
            }
            if !self.buf.starts_with(b"\r\n") {
                return None;
            }
            self.buf.advance(2);
            self.scanned = 0;
        }
    }

    /// Total length of the message at the front of the buffer once its header section is in.
    fn find_message_length(&mut self) -> Result<Option<usize>, FramingError> {
        // Resume a little before where the last search stopped: the terminator may straddle.
        let from = self.scanned.saturating_sub(DOUBLE_CRLF.len() - 1);
        let limit = self
            .buf
            .len()
            .min(self.max_header_bytes + DOUBLE_CRLF.len());
        let found = self
            .buf
            .get(from..limit)
            .and_then(|window| find_subslice(window, DOUBLE_CRLF));
        let Some(offset) = found else {
            if self.buf.len() >= self.max_header_bytes + DOUBLE_CRLF.len() {
                return Err(FramingError::HeadersTooLarge(self.max_header_bytes));
            }
            self.scanned = self.buf.len();
            return Ok(None);
        };
        let head_len = from + offset;
        self.scanned = 0;
        let body_len = usize::try_from(content_length(&self.buf[..head_len])?)
            .ok()
            .filter(|&len| len <= self.max_body_bytes)
            .ok_or(FramingError::BodyTooLarge(self.max_body_bytes))?;
        Ok(Some(head_len + DOUBLE_CRLF.len() + body_len))
    }
}

/// The single Content-Length (or compact `l`) of a header section.
fn content_length(head: &[u8]) -> Result<u64, FramingError> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"l") {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        // Ten digits is already far beyond any limit; more would only risk overflow.
        if found.is_some()
            || value.is_empty()
            || value.len() > 10
            || !value.iter().all(u8::is_ascii_digit)
        {
            return Err(FramingError::InvalidContentLength);
        }
        let len = value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        found = Some(len);
    }
    found.ok_or(FramingError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
        Content-Length: 5\r\n\r\nhello";
    const BYE: &[u8] = b"BYE sip:a@example.com SIP/2.0\r\nl:0\r\n\r\n";

    fn drain(framer: &mut StreamFramer) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = framer.next_message().unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn message(bytes: &[u8]) -> Frame {
        Frame::Message(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn coalesced_messages_and_keep_alives_come_out_in_order() {
        let mut framer = StreamFramer::default();
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(OPTIONS);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(BYE);
        stream.extend_from_slice(b"\r\n\r\n\r\n\r\n");
        framer.push(&stream);
        assert_eq!(
            drain(&mut framer),
            [
                Frame::KeepAlive,
                message(OPTIONS),
                message(BYE),
                Frame::KeepAlive,
                Frame::KeepAlive
            ]
        );
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn byte_by_byte_reads_frame_the_same() {
        let mut stream = OPTIONS.to_vec();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(BYE);
        let mut framer = StreamFramer::default();
        let mut frames = Vec::new();
        for b in &stream {
            framer.push(std::slice::from_ref(b));
            frames.extend(drain(&mut framer));
        }
        assert_eq!(frames, [message(OPTIONS), Frame::KeepAlive, message(BYE)]);
    }

    #[test]
    fn every_split_point_frames_the_same() {
        let mut stream = BYE.to_vec();
        stream.extend_from_slice(OPTIONS);
        for split in 0..=stream.len() {
            let mut framer = StreamFramer::default();
            framer.push(&stream[..split]);
            let mut frames = drain(&mut framer);
            framer.push(&stream[split..]);
            frames.extend(drain(&mut framer));
            assert_eq!(frames, [message(BYE), message(OPTIONS)], "split at {split}");
        }
    }

    #[test]
    fn partial_ping_waits_and_lone_crlf_is_skipped() {
        let mut framer = StreamFramer::default();
        framer.push(b"\r\n\r");
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(b"\n");
        assert_eq!(framer.next_message(), Ok(Some(Frame::KeepAlive)));
        framer.push(b"\r\n");
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(BYE);
        assert_eq!(framer.next_message(), Ok(Some(message(BYE))));
    }

    #[test]
    fn content_length_is_mandatory_and_must_be_sane() {
        let cases: [(&[u8], FramingError); 5] = [
            (
                b"BYE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n",
                FramingError::MissingContentLength,
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
                FramingError::InvalidContentLength,
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 1\r\n\r\nx",
                FramingError::InvalidContentLength,
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nl: 99999999999999999999\r\n\r\n",
                FramingError::InvalidContentLength,
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nCONTENT-LENGTH : 65537\r\n\r\n",
                FramingError::BodyTooLarge(DEFAULT_MAX_BODY_BYTES),
            ),
        ];
        for (bytes, expected) in cases {
            let mut framer = StreamFramer::default();
            framer.push(bytes);
            assert_eq!(framer.next_message(), Err(expected));
        }
    }

    #[test]
    fn header_section_over_the_limit_is_refused() {
        let mut framer = StreamFramer::new(64, 64);
        framer.push(b"INVITE sip:a@b SIP/2.0\r\n");
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(&[b'x'; 64]);
        assert_eq!(
            framer.next_message(),
            Err(FramingError::HeadersTooLarge(64))
        );

        // Exactly at the limit is fine.
        let head = b"BYE sip:a@b SIP/2.0\r\nl: 0\r\nX: 12345678901234567890123456789";
        let mut framer = StreamFramer::new(head.len(), 0);
        framer.push(head);
        framer.push(b"\r\n\r\n");
        assert!(matches!(framer.next_message(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn body_waits_for_all_its_bytes() {
        let mut framer = StreamFramer::default();
        framer.push(&OPTIONS[..OPTIONS.len() - 2]);
        assert_eq!(framer.next_message(), Ok(None));
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(&OPTIONS[OPTIONS.len() - 2..]);
        assert_eq!(framer.next_message(), Ok(Some(message(OPTIONS))));
    }
}

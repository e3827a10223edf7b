//! `cargo +nightly fuzz run framer`: stream framing with the input split at fuzzer-chosen points.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_sip::framing::{Frame, StreamFramer};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so split reads get explored too.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut framer = StreamFramer::new(4096, 4096);
    let mut framed = 0;
    for piece in stream.chunks(chunk) {
        framer.push(piece);
        loop {
            match framer.next_message() {
                Ok(Some(Frame::Message(bytes))) => framed += bytes.len(),
                Ok(Some(Frame::KeepAlive)) => framed += 4,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // Nothing is lost or invented: what was framed plus what waits is at most the input.
    assert!(framed + framer.buffered() <= stream.len());
});

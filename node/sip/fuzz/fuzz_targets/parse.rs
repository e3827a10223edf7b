//! `cargo +nightly fuzz run parse`: message parsing, error answers and re-rendering.
//! Seed the corpus with shared/conformance/rfc4475/*.dat.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_sip::message;
use switchyard_sip::rsip::SipMessage;

fuzz_target!(|data: &[u8]| {
    match message::parse(data) {
        Ok(msg) => {
            // Whatever we accept, we must render into something we accept again.
            let again = message::parse(&message::to_bytes(&msg));
            assert!(
                again.is_ok(),
                "re-rendered message no longer parses: {again:?}"
            );
            if let SipMessage::Request(req) = &msg {
                let resp = message::response(req, 200.into(), Some("tag"));
                let _ = message::to_bytes(&SipMessage::Response(resp));
            }
        }
        Err(err) => {
            let _ = message::error_response(data, &err);
        }
    }
});

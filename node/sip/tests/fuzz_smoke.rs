//! Deterministic fuzzing for CI: mutations of the RFC 4475 torture messages and random bytes go
//! through everything that reads network input, which must never panic. The libFuzzer targets
//! in `node/sip/fuzz` explore further but need nightly; this runs on every `cargo test`.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_sip::digest::DigestVerifier;
use switchyard_sip::framing::{Frame, StreamFramer};
use switchyard_sip::message;
use switchyard_sip::rsip::SipMessage;
use switchyard_sip::sdp;

const CASES: usize = 50_000;

/// Fragments that tend to reach deeper into the parsers than random bytes do.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\r\n ",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"\"",
    b"\\",
    b"<",
    b">",
    b"@",
    b"%",
    b"=",
    b"/",
    b"?",
    b"[::1]",
    b"SIP/2.0",
    b"sip:",
    b"Content-Length: 4294967296",
    b"l: 0",
    b"Via: SIP/2.0/UDP h",
    b"v=0",
    b"m=audio 0 RTP/AVP 0",
    b"a=rtpmap:0 PCMU/8000",
    b"Digest username=\"a\"",
    b"\xff\xfe",
    b"\xc3\xa9",
];

fn seeds() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/rfc4475");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "RFC 4475 corpus {} unreadable ({e}); it must be checked out as \
                 shared/conformance/rfc4475 beside the repository",
                dir.display()
            )
        })
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "dat").then(|| std::fs::read(path).ok())?
        })
        .collect();
    seeds.sort();
    assert_eq!(seeds.len(), 49, "RFC 4475 corpus incomplete");
    seeds
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..7) {
            0 if len > 0 => input[at.min(len - 1)] = rng.random(),
            1 => input.insert(at, rng.random()),
            2 => {
                let end = rng.random_range(at..=len.min(at + 64));
                input.drain(at..end);
            }
            3 => {
                let end = rng.random_range(at..=len.min(at + 64));
                let copy = input[at..end].to_vec();
                let to = rng.random_range(0..=input.len());
                input.splice(to..to, copy);
            }
            4 => input.truncate(at),
            _ => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
        }
    }
}

fn exercise(rng: &mut StdRng, input: &[u8], verifier: &DigestVerifier) {
    match message::parse(input) {
        Ok(msg) => {
            // Whatever we accept, we must render into something we accept again.
            let bytes = message::to_bytes(&msg);
            let again = message::parse(&bytes);
            assert!(
                again.is_ok(),
                "{again:?}\n{}\nrendered from\n{}",
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(input)
            );
            if let SipMessage::Request(req) = &msg {
                let resp = message::response(req, 200.into(), Some("t"));
                let _ = message::to_bytes(&SipMessage::Response(resp));
            }
            if let Ok(offer) = sdp::parse(msg.body()) {
                let _ = sdp::negotiate(&offer, &[sdp::Codec::Pcma, sdp::Codec::Pcmu]);
            }
        }
        Err(err) => {
            let _ = message::error_response(input, &err);
        }
    }
    let _ = sdp::parse(input);
    let text = String::from_utf8_lossy(input);
    let _ = verifier.verify(&text, "INVITE", 1_000, |_| Some("pw".to_owned()));

    let mut framer = StreamFramer::new(2048, 2048);
    let mut rest = input;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len());
        framer.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match framer.next_message() {
                Ok(Some(Frame::Message(frame))) => {
                    let _ = message::parse(&frame);
                }
                Ok(Some(Frame::KeepAlive)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[test]
fn parsers_never_panic_on_mutated_or_random_input() {
    let seeds = seeds();
    let verifier = DigestVerifier::new("example.com", b"secret".to_vec(), 60);
    let mut rng = StdRng::seed_from_u64(0x5157_4954_4348);
    let mut input = Vec::new();
    for case in 0..CASES {
        input.clear();
        if case % 10 == 0 {
            let len = rng.random_range(0..512);
            input.extend((0..len).map(|_| rng.random::<u8>()));
        } else {
            input.extend_from_slice(&seeds[case % seeds.len()]);
            mutate(&mut rng, &mut input);
        }
        exercise(&mut rng, &input, &verifier);
    }
}

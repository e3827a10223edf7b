//! The 49 RFC 4475 torture messages through `message::parse` and `message::error_response`.
//!
//! Each case states what the parser must do and, in its comment, the response the node sends
//! once the transaction and application layers see it ("node:"). Parse errors are answered by
//! `error_response` with `ParseError::status_code()`; the rest is the node's job.
//!
//! The corpus lives in `shared/conformance/rfc4475` beside the repository.

use std::path::PathBuf;

use switchyard_sip::digest::{AuthError, DigestVerifier};
use switchyard_sip::headers::MessageExt;
use switchyard_sip::message::{self, ParseError};
use switchyard_sip::rsip::prelude::*;
use switchyard_sip::rsip::{Header, Method, Request, Response, SipMessage, StatusCode};
use switchyard_sip::sdp;

/// What the parser must do with a message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A well-formed request with this method.
    Request(Method),
    /// A well-formed response with this status code.
    Response(u16),
    /// A request refused with this error; `error_response` answers it.
    Reject(ParseError),
    /// A response refused with this error; it is dropped, never answered.
    Drop(ParseError),
}

use Expect::*;

const CASES: &[(&str, Expect)] = &[
    // 3.1.1 Valid messages.
    // node: processed normally (INVITE to a B2BUA: 100, then routing).
    ("wsinv", Request(Method::Invite)),
    // node: 501 (extension method; the message itself is well formed).
    ("intmeth", Reject(ParseError::UnknownMethod)),
    // node: processed normally.
    ("esc01", Request(Method::Invite)),
    // node: processed normally by the registrar.
    ("escnull", Request(Method::Register)),
    // node: 501 (RE%47IST%45R is an unknown method, not REGISTER).
    ("esc02", Reject(ParseError::UnknownMethod)),
    // node: 200 to OPTIONS.
    ("lwsdisp", Request(Method::Options)),
    // node: processed normally.
    ("longreq", Request(Method::Invite)),
    // node: REGISTER processed, the trailing INVITE in the datagram ignored.
    ("dblreq", Request(Method::Register)),
    // node: 200 to OPTIONS.
    ("semiuri", Request(Method::Options)),
    // node: 200 to OPTIONS (the response goes to the top Via, UDP).
    ("transports", Request(Method::Options)),
    // node: MESSAGE is not served by a contact centre: 405 with Allow.
    ("mpart01", Request(Method::Message)),
    // node: matched to its client transaction like any 200.
    ("unreason", Response(200)),
    // node: matched to its client transaction like any 100.
    ("noreason", Response(100)),
    // 3.1.2 Invalid messages.
    ("badinv01", Reject(ParseError::InvalidHeader("Via"))),
    ("clerr", Reject(ParseError::BodyTruncated)),
    ("ncl", Reject(ParseError::InvalidHeader("Content-Length"))),
    ("scalar02", Reject(ParseError::InvalidHeader("CSeq"))),
    ("scalarlg", Drop(ParseError::InvalidHeader("CSeq"))),
    ("quotbal", Reject(ParseError::InvalidHeader("To"))),
    ("ltgtruri", Reject(ParseError::RequestUri)),
    ("lwsruri", Reject(ParseError::RequestLine)),
    // RFC 4475 allows rejecting or tolerating these two; we reject.
    ("lwsstart", Reject(ParseError::RequestLine)),
    ("trws", Reject(ParseError::RequestLine)),
    // URI headers are not allowed in a Request-URI; rejecting is the RFC's first choice.
    ("escruri", Reject(ParseError::RequestUri)),
    // node: processed normally; the Date header is never interpreted.
    ("baddate", Request(Method::Invite)),
    // Contact URI with headers but no <>: ambiguous, rejected.
    ("regbadct", Reject(ParseError::InvalidHeader("Contact"))),
    // Liberal: the spaces inside <> are dropped, so nothing malformed is forwarded.
    // node: 200 to OPTIONS.
    ("badaspec", Request(Method::Options)),
    ("baddn", Reject(ParseError::InvalidHeader("From"))),
    ("badvers", Reject(ParseError::UnsupportedVersion)),
    ("mismatch01", Reject(ParseError::CSeqMethodMismatch)),
    // RFC 4475 accepts 501 or 400; the CSeq check comes first, so 400.
    ("mismatch02", Reject(ParseError::CSeqMethodMismatch)),
    ("bigcode", Drop(ParseError::StatusLine)),
    // 3.2 Transaction layer.
    // node: branch is the bare magic cookie, so the transaction layer must fall back to RFC 2543
    // matching (or reject statelessly with 400); then 200 to OPTIONS.
    ("badbranch", Request(Method::Options)),
    // 3.3 Application layer.
    // Missing From, To and Call-ID: 400, answered with the Via and CSeq that are there.
    ("insuf", Reject(ParseError::MissingHeader("From"))),
    ("unkscm", Reject(ParseError::UnsupportedUriScheme)),
    // soap.beep is never meaningful to us, so 416 rather than 404.
    ("novelsc", Reject(ParseError::UnsupportedUriScheme)),
    // node: registrar answers 404 (the AOR isbn:... is not one of ours, RFC 3261 §10.3).
    ("unksm2", Request(Method::Register)),
    // node: 420 Bad Extension with Unsupported: nothingSupportsThis, nothingSupportsThisEither
    // (a UAS ignores Proxy-Require).
    ("bext01", Request(Method::Options)),
    // node: 415 Unsupported Media Type with Accept: application/sdp.
    ("invut", Request(Method::Invite)),
    // node: the unknown scheme counts as no credentials: 401 with a fresh challenge.
    ("regaut01", Request(Method::Register)),
    ("multi01", Reject(ParseError::DuplicateHeader("CSeq"))),
    (
        "mcl01",
        Reject(ParseError::DuplicateHeader("Content-Length")),
    ),
    // node: a response to a request we never sent (no matching transaction): dropped. Responses
    // are never sent to a Via sent-by, so the broadcast address is harmless.
    ("bcast", Response(200)),
    // node: a UAS processes it (200 to OPTIONS); only when relaying a request with
    // Max-Forwards 0 onwards does it answer 483 Too Many Hops.
    ("zeromf", Request(Method::Options)),
    // node: registrar stores the contact with contact-param unknownparam, 200.
    ("cparam01", Request(Method::Register)),
    // node: registrar stores the contact with URI parameter unknownparam, 200.
    ("cparam02", Request(Method::Register)),
    // node: registrar stores the contact URI including its escaped header, 200.
    ("regescrt", Request(Method::Register)),
    // node: 406 Not Acceptable (only text/nobodyKnowsThis is acceptable in the answer).
    ("sdp01", Request(Method::Invite)),
    // 3.4 Backward compatibility.
    // node: processed normally with RFC 2543 transaction matching (no branch) and no To tag
    // expected from the caller.
    ("inv2543", Request(Method::Invite)),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/rfc4475")
}

fn load(name: &str) -> Vec<u8> {
    let path = corpus_dir().join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "RFC 4475 corpus file {} unreadable ({e}); the corpus must be checked out as \
             shared/conformance/rfc4475 beside the repository",
            path.display()
        )
    })
}

fn request(name: &str) -> Request {
    match message::parse(&load(name)) {
        Ok(SipMessage::Request(req)) => req,
        other => panic!("{name}: expected a request, got {other:?}"),
    }
}

fn response(name: &str) -> Response {
    match message::parse(&load(name)) {
        Ok(SipMessage::Response(resp)) => resp,
        other => panic!("{name}: expected a response, got {other:?}"),
    }
}

fn values<'a>(headers: impl Iterator<Item = &'a Header>, name: &str) -> Vec<String> {
    headers
        .filter_map(|h| {
            let text = h.to_string();
            let (header, value) = text.split_once(": ")?;
            header.eq_ignore_ascii_case(name).then(|| value.to_owned())
        })
        .collect()
}

#[test]
fn every_corpus_file_has_an_expectation() {
    let dir = corpus_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "RFC 4475 corpus directory {} unreadable ({e}); it must be checked out as \
                 shared/conformance/rfc4475 beside the repository",
                dir.display()
            )
        })
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".dat")?.to_owned())
        })
        .collect();
    files.sort();
    let mut expected: Vec<String> = CASES.iter().map(|(name, _)| name.to_string()).collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(files.len(), 49);
}

#[test]
fn every_message_meets_its_expectation() {
    for &(name, expect) in CASES {
        let raw = load(name);
        let parsed = message::parse(&raw);
        match (expect, &parsed) {
            (Request(method), Ok(SipMessage::Request(req))) => {
                assert_eq!(req.method, method, "{name}");
                // What we would forward parses back to the same message (to_bytes adds the
                // Content-Length an RFC 2543 message may lack).
                let bytes = message::to_bytes(&SipMessage::Request(req.clone()));
                let Ok(SipMessage::Request(again)) = message::parse(&bytes) else {
                    panic!("{name}: serialised request does not parse");
                };
                let without_length = |r: &Request| {
                    r.headers
                        .iter()
                        .filter(|h| !matches!(h, Header::ContentLength(_)))
                        .cloned()
                        .collect::<Vec<_>>()
                };
                assert_eq!(without_length(&again), without_length(req), "{name}");
                assert_eq!((&again.uri, &again.body), (&req.uri, &req.body), "{name}");
            }
            (Response(code), Ok(SipMessage::Response(resp))) => {
                assert_eq!(resp.status_code.code(), code, "{name}");
            }
            (Reject(err), Err(got)) => {
                assert_eq!(*got, err, "{name}");
                let answer = message::error_response(&raw, got)
                    .unwrap_or_else(|| panic!("{name}: no error response"));
                let answer = String::from_utf8_lossy(&answer);
                let status = format!("SIP/2.0 {} {got}\r\n", got.status_code());
                assert!(answer.starts_with(&status), "{name}: {answer}");
                // The offending header is echoed as received, so the answer is not always
                // something our own parser would accept; its frame must be right though.
                assert!(answer.contains("\r\nCSeq: "), "{name}: {answer}");
                assert!(answer.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{name}");
            }
            (Drop(err), Err(got)) => {
                assert_eq!(*got, err, "{name}");
                assert_eq!(message::error_response(&raw, got), None, "{name}");
            }
            _ => panic!("{name}: expected {expect:?}, got {parsed:?}"),
        }
    }
}

#[test]
fn status_codes_of_the_rejections() {
    let code = |name: &str| message::parse(&load(name)).unwrap_err().status_code();
    assert_eq!(code("badvers"), 505);
    assert_eq!(code("unkscm"), 416);
    assert_eq!(code("novelsc"), 416);
    assert_eq!(code("intmeth"), 501);
    assert_eq!(code("esc02"), 501);
    for name in [
        "mismatch01",
        "mismatch02",
        "scalar02",
        "ncl",
        "clerr",
        "insuf",
    ] {
        assert_eq!(code(name), 400, "{name}");
    }
}

#[test]
fn wsinv_fields_survive_the_whitespace() {
    let req = request("wsinv");
    assert_eq!(req.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(req.cseq(), Some((9, Method::Invite)));
    assert_eq!(req.max_forwards(), Some(68));
    assert_eq!(req.to_tag().as_deref(), Some("1918181833n"));
    assert_eq!(req.from_tag().as_deref(), Some("98asjd8"));
    assert_eq!(req.top_branch().as_deref(), Some("390skdjuw"));
    assert_eq!(
        values(req.headers.iter(), "Via"),
        [
            "SIP/2.0/UDP 192.0.2.2;branch=390skdjuw",
            "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8",
            "SIP/2.0/UDP 192.168.255.111;branch=z9hG4bK30239",
        ]
    );
    assert_eq!(
        values(req.headers.iter(), "From"),
        ["\"J Rosenberg \\\\\\\"\" <sip:jdrosen@example.com>;tag=98asjd8"]
    );
    assert_eq!(
        values(req.headers.iter(), "Contact"),
        [
            "\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com>;newparam=newvalue;secondparam;q=0.33"
        ]
    );
    assert_eq!(
        values(req.headers.iter(), "NewFangledHeader"),
        ["newfangled value continued newfangled value"]
    );
    assert_eq!(
        values(req.headers.iter(), "UnknownHeaderWithUnusualValue"),
        [";;,,;;,;"]
    );
    assert!(
        req.headers
            .iter()
            .any(|h| matches!(h, Header::Subject(s) if s.value().is_empty()))
    );
    assert_eq!(
        req.uri.to_string(),
        "sip:vivekg@chair-dnrc.example.com;unknownparam"
    );
    assert_eq!(req.body.len(), 150);
}

#[test]
fn escaped_and_unusual_uris_keep_their_user_parts() {
    let req = request("esc01");
    assert_eq!(req.uri.user(), Some("sips%3Auser%40example.com"));
    assert_eq!(req.uri.host().to_string(), "example.net");
    assert_eq!(req.call_id(), Some("esc01.239409asdfakjkn23onasd0-3234"));
    assert_eq!(
        values(req.headers.iter(), "Contact"),
        ["<sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>"]
    );
    assert!(
        req.headers
            .iter()
            .any(|h| matches!(h, Header::ContentType(_)))
    );

    let req = request("semiuri");
    assert_eq!(req.uri.user(), Some("user;par=u%40example.net"));
    assert_eq!(req.uri.host().to_string(), "example.com");
    assert_eq!(
        values(req.headers.iter(), "Accept"),
        [
            "application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, \
          message/sip, message/sipfrag"
        ]
    );

    let req = request("escnull");
    assert_eq!(values(req.headers.iter(), "Contact").len(), 2);
}

#[test]
fn unknown_methods_are_answered_501_with_their_exotic_call_ids() {
    let raw = load("intmeth");
    let answer = message::error_response(&raw, &ParseError::UnknownMethod).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("SIP/2.0 501 Not Implemented\r\n"));
    assert!(answer.contains("\r\nCall-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n"));
    assert!(answer.contains("\r\nCSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n"));

    let answer = message::error_response(&load("esc02"), &ParseError::UnknownMethod).unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("CSeq: 29344 RE%47IST%45R\r\n"));
}

#[test]
fn long_values_and_many_vias() {
    let req = request("longreq");
    let vias = values(req.headers.iter(), "Via");
    assert_eq!(vias.len(), 34);
    assert_eq!(vias[0], "SIP/2.0/TCP sip33.example.com");
    assert!(vias[33].ends_with("longlonglongbranchvalue"));
    assert!(
        req.call_id()
            .unwrap()
            .starts_with("longreq.onereallyreally")
    );
    assert!(req.from_tag().unwrap().starts_with("12982982"));
}

#[test]
fn trailing_datagram_octets_and_missing_content_length() {
    let req = request("dblreq");
    assert_eq!(
        req.call_id(),
        Some("dblreq.0ha0isndaksdj99sdfafnl3lk233412")
    );
    assert!(req.body.is_empty());

    let req = request("inv2543");
    assert_eq!(req.top_branch(), None);
    assert_eq!(req.from_tag(), None);
    assert_eq!(req.max_forwards(), None);
    assert!(req.body.starts_with(b"v=0\r\n") && req.body.ends_with(b"m=audio 49217 RTP/AVP 0\r\n"));
    let offer = sdp::parse(&req.body).unwrap();
    assert_eq!(offer.payload_types, [0]);
}

#[test]
fn bodies_are_exactly_content_length() {
    let raw = load("mpart01");
    let req = request("mpart01");
    assert_eq!(req.body.len(), 553);
    assert!(raw.ends_with(&req.body));

    let resp = response("unreason");
    assert_eq!(resp.status_code, StatusCode::OK);
    assert_eq!(resp.body.len(), 154);
    assert_eq!(response("noreason").status_code, StatusCode::Trying);
    assert_eq!(request("invut").body.len(), 40);
}

#[test]
fn liberal_cases_are_cleaned_up() {
    let req = request("badaspec");
    assert_eq!(
        values(req.headers.iter(), "To"),
        ["\"Watson, Thomas\" <sip:t.watson@example.org>"]
    );
    let req = request("baddate");
    assert_eq!(
        values(req.headers.iter(), "Date"),
        ["Fri, 01 Jan 2010 16:00:00 EST"]
    );
}

#[test]
fn transaction_and_application_layer_cases_expose_what_the_node_needs() {
    assert_eq!(
        request("badbranch").top_branch().as_deref(),
        Some("z9hG4bK")
    );
    assert_eq!(request("zeromf").max_forwards(), Some(0));
    assert_eq!(values(request("transports").headers.iter(), "Via").len(), 5);

    let bext = request("bext01");
    assert_eq!(
        values(bext.headers.iter(), "Require"),
        ["nothingSupportsThis, nothingSupportsThisEither"]
    );
    assert_eq!(values(bext.headers.iter(), "Proxy-Require").len(), 1);

    let invut = request("invut");
    let content_type = values(invut.headers.iter(), "Content-Type");
    assert_eq!(content_type, ["application/unknownformat"]);
    assert!(!sdp::is_sdp_content_type(&content_type[0]));

    let regaut = request("regaut01");
    let authorization = values(regaut.headers.iter(), "Authorization");
    let verifier = DigestVerifier::new("example.com", b"secret".to_vec(), 60);
    assert_eq!(
        verifier.verify(&authorization[0], "REGISTER", 0, |_| None),
        Err(AuthError::NotDigest)
    );

    assert_eq!(
        values(request("cparam01").headers.iter(), "Contact"),
        ["sip:+19725552222@gw1.example.net;unknownparam"]
    );
    assert_eq!(
        values(request("regescrt").headers.iter(), "Contact"),
        ["<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"]
    );

    let sdp01 = request("sdp01");
    assert_eq!(
        values(sdp01.headers.iter(), "Accept"),
        ["text/nobodyKnowsThis"]
    );
    let offer = sdp::parse(&sdp01.body).unwrap();
    let chosen = sdp::negotiate(&offer, &[sdp::Codec::Pcmu, sdp::Codec::Pcma]).unwrap();
    assert_eq!(chosen.codec, sdp::Codec::Pcmu);

    let bcast = response("bcast");
    assert_eq!(
        values(bcast.headers.iter(), "Via")[1],
        "SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23"
    );
}

#[test]
fn insufficient_headers_still_get_a_400() {
    let raw = load("insuf");
    let answer = message::error_response(&raw, &ParseError::MissingHeader("From")).unwrap();
    assert_eq!(
        String::from_utf8(answer).unwrap(),
        "SIP/2.0 400 Bad Request - Missing From\r\n\
         Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n\
         CSeq: 193942 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

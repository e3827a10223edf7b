//! RFC 4475 torture messages against a running node: each gets what the RFC says.
//!
//! The parser-level expectations live in `node/sip/tests/rfc4475.rs`; this test checks the
//! whole node (transport, transaction layer, endpoint checks, registrar, call routing) answers
//! each message with the right status over a real UDP socket, and survives all of them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::sip::UdpSip;
use common::{Node, NodeConfig, workspace_root};

/// What the node must do with one message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This final status code.
    Code(u16),
    /// A final response showing the message was understood (not a syntax or version error).
    Processed,
    /// No answer: responses matching no transaction, unusable garbage.
    Nothing,
}

const CASES: &[(&str, Expect)] = &[
    // 3.1.1 valid messages
    ("wsinv", Expect::Processed),
    ("intmeth", Expect::Code(501)),
    ("esc01", Expect::Processed),
    ("escnull", Expect::Code(401)),
    ("esc02", Expect::Code(501)),
    ("lwsdisp", Expect::Code(200)),
    ("longreq", Expect::Processed),
    ("dblreq", Expect::Code(401)),
    ("semiuri", Expect::Code(200)),
    ("transports", Expect::Code(200)),
    ("mpart01", Expect::Code(405)),
    ("unreason", Expect::Nothing),
    ("noreason", Expect::Nothing),
    // 3.1.2 invalid messages
    ("badinv01", Expect::Code(400)),
    ("clerr", Expect::Code(400)),
    ("scalar02", Expect::Code(400)),
    ("scalarlg", Expect::Nothing),
    ("quotbal", Expect::Code(400)),
    ("ltgtruri", Expect::Code(400)),
    ("lwsruri", Expect::Code(400)),
    ("lwsstart", Expect::Code(400)),
    ("trws", Expect::Code(400)),
    ("escruri", Expect::Code(400)),
    ("baddate", Expect::Processed),
    ("regbadct", Expect::Code(400)),
    ("badaspec", Expect::Code(200)),
    ("baddn", Expect::Code(400)),
    ("badvers", Expect::Code(505)),
    ("mismatch01", Expect::Code(400)),
    ("mismatch02", Expect::Code(400)),
    ("bigcode", Expect::Nothing),
    ("badbranch", Expect::Code(200)),
    ("insuf", Expect::Code(400)),
    ("multi01", Expect::Code(400)),
    ("mcl01", Expect::Code(400)),
    ("ncl", Expect::Code(400)),
    // 3.2 transaction layer
    ("bcast", Expect::Nothing),
    ("zeromf", Expect::Code(200)),
    // 3.3 application layer
    ("cparam01", Expect::Code(401)),
    ("cparam02", Expect::Code(401)),
    ("regescrt", Expect::Code(401)),
    ("sdp01", Expect::Code(406)),
    ("inv2543", Expect::Processed),
    ("unkscm", Expect::Code(416)),
    ("novelsc", Expect::Code(416)),
    ("unksm2", Expect::Code(404)),
    ("bext01", Expect::Code(420)),
    ("invut", Expect::Code(415)),
    ("regaut01", Expect::Code(401)),
];

/// The top Via's branch and sent-by, which identify a server transaction.
fn transaction_key(message: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(message);
    let via = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("via:") || l.starts_with("v:"))?;
    let value = via.split_once(':')?.1;
    let sent_by = value
        .split_whitespace()
        .nth(1)?
        .split(';')
        .next()?
        .to_owned();
    let branch = value
        .split(';')
        .find_map(|p| p.trim().strip_prefix("branch="))?
        .to_owned();
    Some((branch, sent_by))
}

fn corpus_dir() -> PathBuf {
    let dir = workspace_root().join("../shared/conformance/rfc4475");
    assert!(
        dir.is_dir(),
        "RFC 4475 corpus not found at {} (CI clones ../shared beside the repo)",
        dir.display()
    );
    dir
}

#[test]
fn every_torture_message_gets_the_rfc_answer() {
    let dir = corpus_dir();
    let files = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "dat"))
        })
        .count();
    assert_eq!(files, CASES.len(), "one expectation per corpus file");

    // Several messages reuse one branch and sent-by (cparam01/cparam02, escnull/regescrt); to
    // the node those are retransmissions of one transaction (RFC 3261 §17.2.3), answered to
    // the first sender. A short T1 lets each transaction expire (64*T1) before the next.
    let t1_ms = 20;
    let mut node = Node::start(
        "rfc4475",
        NodeConfig {
            t1_ms,
            ..NodeConfig::default()
        },
    );
    let mut failures = Vec::new();
    let mut used_keys = std::collections::HashSet::new();
    for (name, expect) in CASES {
        let bytes = std::fs::read(dir.join(format!("{name}.dat"))).expect("read message");
        if let Some(key) = transaction_key(&bytes)
            && !used_keys.insert(key)
        {
            std::thread::sleep(Duration::from_millis(64 * t1_ms + 500));
        }
        // A fresh socket per message keeps late answers to one from being read as another's.
        let mut ua = UdpSip::new(node.sip);
        ua.send_raw(&bytes);
        let wait = match expect {
            Expect::Nothing => Duration::from_millis(300),
            _ => Duration::from_secs(3),
        };
        let mut got = None;
        while let Some(msg) = ua.recv(wait) {
            if let Some(code) = msg.status()
                && code >= 200
            {
                got = Some(code);
                break;
            }
        }
        let ok = match (expect, got) {
            (Expect::Code(want), Some(code)) => *want == code,
            (Expect::Processed, Some(code)) => !matches!(code, 400 | 416 | 501 | 505),
            (Expect::Nothing, None) => true,
            _ => false,
        };
        println!("{name:<11} expected {expect:?}, got {got:?}");
        if !ok {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    node.assert_alive();
    // Still serving after all of them.
    let resp = node.get("/healthz");
    assert_eq!(resp.status, 200, "node healthy after the torture messages");
    assert!(
        failures.is_empty(),
        "RFC 4475 mismatches:\n{}",
        failures.join("\n")
    );
}

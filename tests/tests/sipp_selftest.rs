//! The SIPp scenarios in `tests/sipp/` checked against SIPp itself, with stand-ins for the
//! node from `tests/sipp/selftest/`: no node needed. A scenario edit that breaks SIPp's
//! parsing, message matching or dialog handling fails here rather than as a confusing
//! node-test failure.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;

use common::{Sipp, TestDir, Transport, free_port, scenario};

fn selftest_scenario(name: &str) -> PathBuf {
    scenario(&format!("selftest/{name}"))
}

/// Runs `server` (a UAS) and `client` against it, one call each; both must succeed.
fn pair(
    name: &str,
    transport: Transport,
    server: (PathBuf, &[&str]),
    client: (PathBuf, &[&str]),
) -> (common::SippProcess, common::SippProcess, TestDir) {
    let dir = TestDir::new(name);
    let port = free_port();
    let mut srv = Sipp::new(&format!("{name}-server"), server.0, dir.join("server"))
        .server()
        .transport(transport)
        .local_port(port)
        .timeout_secs(30);
    for a in server.1 {
        srv = srv.arg(a);
    }
    let srv = srv.spawn();
    // Let the UAS bind before the client sends.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut cli = Sipp::new(&format!("{name}-client"), client.0, dir.join("client"))
        .remote(SocketAddr::from(([127, 0, 0, 1], port)))
        .transport(transport)
        .timeout_secs(30);
    for a in client.1 {
        cli = cli.arg(a);
    }
    let mut cli = cli.spawn();
    let mut srv = srv;
    let (c, s) = (cli.wait(), srv.wait());
    assert!(
        c == Some(0) && s == Some(0),
        "{name} over {transport:?}: client exit {c:?}, server exit {s:?}\n{}\n{}",
        cli.report(),
        srv.report()
    );
    (srv, cli, dir)
}

fn both(f: impl Fn(Transport)) {
    f(Transport::Udp);
    f(Transport::Tcp);
}

#[test]
fn caller_hangs_up() {
    both(|t| {
        pair(
            "caller",
            t,
            (selftest_scenario("node_answers_caller.xml"), &[]),
            (scenario("caller.xml"), &["-d", "300"]),
        );
    });
}

#[test]
fn compact_caller() {
    both(|t| {
        let (srv, _, _dir) = pair(
            "compact",
            t,
            (selftest_scenario("node_answers_caller.xml"), &[]),
            (scenario("compact.xml"), &["-d", "200"]),
        );
        let msgs = srv.messages();
        assert!(msgs.contains("\ni: "), "compact Call-ID expected:\n{msgs}");
        assert!(
            !msgs.contains("\nCall-ID:"),
            "no long Call-ID expected:\n{msgs}"
        );
    });
}

#[test]
fn caller_waits_for_bye() {
    both(|t| {
        pair(
            "caller-wait-bye",
            t,
            (selftest_scenario("node_hangs_up_caller.xml"), &[]),
            (scenario("caller_wait_bye.xml"), &[]),
        );
    });
}

#[test]
fn caller_cancels() {
    both(|t| {
        pair(
            "caller-cancel",
            t,
            (selftest_scenario("node_queues_caller.xml"), &[]),
            (scenario("caller_cancel.xml"), &["-d", "300"]),
        );
    });
}

#[test]
fn agent_answers_and_waits_for_bye() {
    both(|t| {
        pair(
            "agent-wait-bye",
            t,
            (scenario("agent_answer_wait_bye.xml"), &["-d", "100"]),
            (selftest_scenario("node_offers_then_bye.xml"), &[]),
        );
    });
}

#[test]
fn agent_answers_and_hangs_up() {
    both(|t| {
        let (srv, _, _dir) = pair(
            "agent-send-bye",
            t,
            (
                scenario("agent_answer_send_bye.xml"),
                &["-d", "100", "-set", "talk_ms", "500"],
            ),
            (selftest_scenario("node_offers_wait_bye.xml"), &[]),
        );
        // The BYE goes to the offer's Contact (sip:switchyard@...), not to the To URI.
        let msgs = srv.messages();
        assert!(
            msgs.contains("\nBYE sip:switchyard@127.0.0.1:"),
            "BYE Request-URI must be the remote target:\n{msgs}"
        );
    });
}

#[test]
fn agent_does_not_answer() {
    both(|t| {
        pair(
            "agent-no-answer",
            t,
            (scenario("agent_no_answer.xml"), &[]),
            (selftest_scenario("node_offers_then_cancel.xml"), &[]),
        );
    });
}

#[test]
fn agent_registers_with_digest() {
    both(|t| {
        let dir = TestDir::new("register-csv");
        let csv = dir.join("agents.csv");
        fs::write(
            &csv,
            "SEQUENTIAL\n\
             2001;pw2001;5070;[authentication username=2001 password=pw2001]\n\
             2002;pw2002;5071;[authentication username=2002 password=pw2002]\n",
        )
        .unwrap();
        let csv_arg = csv.to_string_lossy().into_owned();
        let (_, cli, _dir) = pair(
            "register",
            t,
            (selftest_scenario("registrar.xml"), &["-m", "2"]),
            (
                scenario("agent_register.xml"),
                &["-inf", &csv_arg, "-m", "2", "-r", "20"],
            ),
        );
        let msgs = cli.messages();
        assert!(
            msgs.contains("Authorization: Digest username=\"2002\""),
            "second agent authenticates as itself:\n{msgs}"
        );
        assert!(
            msgs.contains("Contact: <sip:2002@127.0.0.1:5071>"),
            "{msgs}"
        );
    });
}

//! End-to-end calls through a real node: SIPp callers dial DID 1000, SIPp agent phones answer.

mod common;

use std::time::Duration;

use common::{Cdr, Node, NodeConfig, SippProcess, Transport};

/// Starts an agent phone running `scenario` and registers `ext` with its Contact.
fn agent(
    node: &Node,
    ext: &str,
    scenario: &str,
    answer_delay_ms: u64,
    extra: &[(&str, &str)],
) -> SippProcess {
    let mut sipp = node
        .sipp(&format!("agent-{ext}"), scenario)
        .server()
        .calls(1)
        .duration_ms(answer_delay_ms)
        .timeout_secs(90);
    for (k, v) in extra {
        sipp = sipp.set(k, v);
    }
    let phone = sipp.spawn();
    node.register_agents(&[ext.to_owned()], phone.local_port);
    phone
}

fn only_cdr(node: &Node) -> Cdr {
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(cdrs.len(), 1, "exactly one call record expected: {cdrs:#?}");
    let cdr = cdrs.into_iter().next().unwrap();
    cdr.check_invariants();
    cdr
}

fn assert_answered_by(cdr: &Cdr, ext: &str, hangup_by: &str) {
    assert_eq!(cdr.disposition, "answered", "{cdr:#?}");
    assert_eq!(cdr.hangup_by, hangup_by, "{cdr:#?}");
    assert_eq!(cdr.agent.as_deref(), Some(ext), "{cdr:#?}");
    assert_eq!(cdr.did, "1000", "{cdr:#?}");
    assert_eq!(cdr.queue.as_deref(), Some("support"), "{cdr:#?}");
    let agent_call_id = cdr
        .agent_call_id
        .as_deref()
        .expect("answered call has an agent Call-ID");
    assert_ne!(
        agent_call_id, cdr.caller_call_id,
        "the agent leg is a separate dialog: {cdr:#?}"
    );
    assert!(
        cdr.answered_ms.is_some() && cdr.queued_ms.is_some(),
        "{cdr:#?}"
    );
}

#[test]
fn call_completes_caller_hangs_up() {
    let node = Node::start("caller-hangs-up", NodeConfig::default());
    let phone = agent(&node, "2001", "agent_answer_wait_bye.xml", 200, &[]);
    let caller = node
        .sipp("caller", "caller.xml")
        .duration_ms(1500)
        .timeout_secs(60)
        .spawn();
    let caller_pid = caller.pid();
    caller.expect_success_with(&node);
    phone.expect_success_with(&node);

    let cdr = only_cdr(&node);
    assert_answered_by(&cdr, "2001", "caller");
    assert_eq!(
        cdr.caller_call_id,
        format!("1-{caller_pid}@127.0.0.1"),
        "{cdr:#?}"
    );
    assert_eq!(cdr.caller, "caller1", "caller = From user: {cdr:#?}");
    assert_eq!(cdr.offers.len(), 1, "{cdr:#?}");
    assert_eq!(
        (cdr.offers[0].agent.as_str(), cdr.offers[0].outcome.as_str()),
        ("2001", "answered"),
        "{cdr:#?}"
    );
    // The caller talked 1.5 s after its ACK.
    assert!(
        (1000..10_000).contains(&cdr.talk_ms),
        "talk_ms {} not about 1500: {cdr:#?}",
        cdr.talk_ms
    );
}

#[test]
fn call_completes_agent_hangs_up() {
    let node = Node::start("agent-hangs-up", NodeConfig::default());
    let phone = agent(
        &node,
        "2001",
        "agent_answer_send_bye.xml",
        200,
        &[("talk_ms", "1500")],
    );
    let caller = node
        .sipp("caller", "caller_wait_bye.xml")
        .timeout_secs(60)
        .spawn();
    caller.expect_success_with(&node);
    phone.expect_success_with(&node);

    let cdr = only_cdr(&node);
    assert_answered_by(&cdr, "2001", "agent");
    assert!(
        (1000..10_000).contains(&cdr.talk_ms),
        "talk_ms {} not about 1500: {cdr:#?}",
        cdr.talk_ms
    );
}

#[test]
fn caller_cancels_while_queued() {
    // No agent registered: the call waits in the queue until the caller gives up.
    let node = Node::start("caller-cancels", NodeConfig::default());
    let caller = node
        .sipp("caller", "caller_cancel.xml")
        .duration_ms(1000)
        .timeout_secs(30)
        .spawn();
    let caller_pid = caller.pid();
    // caller_cancel.xml fails unless the INVITE ends with 487 and the CANCEL gets 200.
    caller.expect_success_with(&node);

    let cdr = only_cdr(&node);
    assert_eq!(cdr.disposition, "abandoned", "{cdr:#?}");
    assert_eq!(cdr.hangup_by, "caller", "{cdr:#?}");
    assert_eq!(
        cdr.caller_call_id,
        format!("1-{caller_pid}@127.0.0.1"),
        "{cdr:#?}"
    );
    assert!(cdr.agent.is_none() && cdr.answered_ms.is_none(), "{cdr:#?}");
    assert!(cdr.offers.is_empty(), "no agent, no offer: {cdr:#?}");
    assert_eq!(cdr.talk_ms, 0, "{cdr:#?}");
    assert!(
        (500..10_000).contains(&cdr.wait_ms),
        "waited about 1 s in the queue, wait_ms = {}: {cdr:#?}",
        cdr.wait_ms
    );
}

#[test]
fn agent_that_does_not_answer_is_skipped() {
    let node = Node::start(
        "no-answer-skipped",
        NodeConfig {
            offer_timeout_secs: 2,
            ..NodeConfig::default()
        },
    );
    // 2001 registers first, so it has been idle longest and is offered the call first.
    let silent = agent(&node, "2001", "agent_no_answer.xml", 0, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let answering = agent(&node, "2002", "agent_answer_wait_bye.xml", 200, &[]);
    let caller = node
        .sipp("caller", "caller.xml")
        .duration_ms(1000)
        .timeout_secs(60)
        .spawn();
    caller.expect_success_with(&node);
    // agent_no_answer.xml succeeds only if the node CANCELs the ringing INVITE and ACKs 487.
    silent.expect_success_with(&node);
    answering.expect_success_with(&node);

    let cdr = only_cdr(&node);
    assert_answered_by(&cdr, "2002", "caller");
    let offers: Vec<(&str, &str)> = cdr
        .offers
        .iter()
        .map(|o| (o.agent.as_str(), o.outcome.as_str()))
        .collect();
    assert_eq!(
        offers,
        [("2001", "no-answer"), ("2002", "answered")],
        "{cdr:#?}"
    );
    let rang = cdr.offers[0].ended_ms - cdr.offers[0].offered_ms;
    assert!(
        (1500..=4000).contains(&rang),
        "2001 should ring for offer_timeout_secs = 2, rang {rang} ms: {cdr:#?}"
    );
}

#[test]
fn call_over_tcp() {
    let node = Node::start("tcp-call", NodeConfig::default());
    // The agent phone stays on UDP; the caller's leg is TCP.
    let phone = agent(&node, "2001", "agent_answer_wait_bye.xml", 100, &[]);
    let caller = node
        .sipp("caller-tcp", "caller.xml")
        .transport(Transport::Tcp)
        .duration_ms(1000)
        .timeout_secs(60)
        .spawn();
    caller.expect_success_with(&node);
    phone.expect_success_with(&node);
    let cdr = only_cdr(&node);
    assert_answered_by(&cdr, "2001", "caller");
}

#[test]
fn compact_headers_call() {
    let node = Node::start("compact-call", NodeConfig::default());
    let phone = agent(&node, "2001", "agent_answer_wait_bye.xml", 100, &[]);
    let caller = node
        .sipp("caller-compact", "compact.xml")
        .duration_ms(1000)
        .timeout_secs(60)
        .spawn();
    caller.expect_success_with(&node);
    phone.expect_success_with(&node);
    let cdr = only_cdr(&node);
    assert_answered_by(&cdr, "2001", "caller");
    assert_eq!(
        cdr.caller, "compact1",
        "caller from the compact f: header: {cdr:#?}"
    );
}

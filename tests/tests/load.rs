//! Load: 100 agents, 500 calls at 50 calls/s. Every call must be answered and no agent may
//! ever be on two calls at once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Node, NodeConfig, assert_no_agent_overlap};

const AGENTS: u32 = 100;
const CALLS: u32 = 500;

#[test]
fn five_hundred_calls_one_hundred_agents() {
    let node = Node::start(
        "load",
        NodeConfig {
            wrap_up_secs: 0,
            rtp_ports: 1000,
            ..NodeConfig::default()
        },
    );
    // One SIPp instance is every agent's phone: all Contacts point at it.
    let phones = node
        .sipp("agents", "agent_answer_wait_bye.xml")
        .server()
        .calls(CALLS)
        .duration_ms(50)
        .timeout_secs(180)
        .spawn();
    node.register_agents(&Node::extensions(2001, AGENTS), phones.local_port);

    let callers = node
        .sipp("callers", "caller.xml")
        .calls(CALLS)
        .rate(50.0)
        .limit(250)
        .duration_ms(1000)
        .timeout_secs(150)
        .spawn();
    let stats = callers.expect_success_with(&node);
    assert_eq!(
        stats.successful,
        u64::from(CALLS),
        "successful calls: {stats:?}"
    );
    assert_eq!(stats.failed, 0, "{stats:?}");
    let phone_stats = phones.expect_success_with(&node);
    assert_eq!(
        phone_stats.successful,
        u64::from(CALLS),
        "agent legs: {phone_stats:?}"
    );

    let cdrs = node.wait_cdrs(CALLS as usize, Duration::from_secs(30));
    assert_eq!(cdrs.len(), CALLS as usize, "one record per call");
    for c in &cdrs {
        c.check_invariants();
        assert_eq!(c.disposition, "answered", "{c:#?}");
        assert_eq!(c.hangup_by, "caller", "{c:#?}");
    }
    let call_ids: HashSet<&str> = cdrs.iter().map(|c| c.caller_call_id.as_str()).collect();
    assert_eq!(call_ids.len(), CALLS as usize, "distinct caller Call-IDs");
    assert_no_agent_overlap(&cdrs);

    // Longest idle: every agent has been idle since registering, and one who just finished a
    // call is the least idle, so the first 100 answers go to 100 different agents.
    let mut by_answer: Vec<_> = cdrs.iter().collect();
    by_answer.sort_by_key(|c| c.answered_ms);
    let first: HashSet<&str> = by_answer[..AGENTS as usize]
        .iter()
        .map(|c| c.agent.as_deref().unwrap())
        .collect();
    assert_eq!(
        first.len(),
        AGENTS as usize,
        "longest-idle: the first {AGENTS} answered calls should go to {AGENTS} distinct agents"
    );
    let waits: Vec<u64> = cdrs.iter().map(|c| c.wait_ms).collect();
    eprintln!(
        "[load] {} calls, mean wait {} ms, max wait {} ms",
        cdrs.len(),
        waits.iter().sum::<u64>() / waits.len() as u64,
        waits.iter().max().unwrap()
    );
}

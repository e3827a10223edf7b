//! Skills routing and priorities through a real node: SIPp callers, SIPp agent phones.

mod common;

use std::time::{Duration, Instant};

use common::{Node, NodeConfig, SippProcess};

/// Queue `billing` takes billing >= 4 for the first 10 s of a caller's wait, then anyone with
/// billing; 3001 is level 5, 3002 level 2. Queue `general` (3003) has a DID for priority 10.
const ROUTING: &str = r#"
[[queue]]
name = "billing"
strategy = "skills-best"
routing = [{ skills = { billing = 4 }, for_secs = 10 }, { skills = { billing = 1 } }]

[[queue]]
name = "general"

[[agents]]
extensions = "3001"
password = "pw{ext}"
queues = ["billing"]
skills = { billing = 5 }
available_on_register = true

[[agents]]
extensions = "3002"
password = "pw{ext}"
queues = ["billing"]
skills = { billing = 2 }
available_on_register = true

[[agents]]
extensions = "3003"
password = "pw{ext}"
queues = ["general"]
available_on_register = true

[[did]]
number = "1001"
queue = "billing"

[[did]]
number = "1002"
queue = "general"

[[did]]
number = "1003"
queue = "general"
priority = 10

# Nobody ever logs in to "empty": callers go straight to its overflow flow.
[[queue]]
name = "empty"
exits = { no_agents = true }
overflow = { action = "flow", flow = "sorry" }

[[did]]
number = "1004"
queue = "empty"

[[flow]]
name = "sorry"
start = "bye"
[flow.steps.bye]
hangup = { prompt = ["closed"], disposition = "closed" }
"#;

/// An agent phone answering `calls` calls, each after 200 ms, registered as `ext`.
fn agent(node: &Node, ext: &str, calls: u32) -> SippProcess {
    let phone = node
        .sipp(&format!("agent-{ext}"), "agent_answer_wait_bye.xml")
        .server()
        .calls(calls)
        .duration_ms(200)
        .timeout_secs(120)
        .spawn();
    node.register_agents(&[ext.to_owned()], phone.local_port);
    phone
}

fn caller(node: &Node, label: &str, did: &str) -> SippProcess {
    node.sipp(label, "caller.xml")
        .dial(did)
        .duration_ms(300)
        .timeout_secs(90)
        .spawn()
}

/// Polls `GET /v1/queues/{queue}` until `waiting` callers are in it.
fn wait_waiting(node: &Node, queue: &str, waiting: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snapshot = node.get_json(&format!("/v1/queues/{queue}"));
        if snapshot["waiting"] == waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {queue} never had {waiting} waiting: {snapshot}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn skills_widen_after_ten_seconds_the_expert_goes_first_priority_overtakes_and_empty_queues_exit() {
    let node = Node::start(
        "routing",
        NodeConfig {
            extra: ROUTING.into(),
            ..NodeConfig::default()
        },
    );

    // Only the level-2 agent is free: the caller waits for the step to widen at 10 s.
    let novice = agent(&node, "3002", 1);
    caller(&node, "caller-widening", "1001").expect_success_with(&node);
    novice.expect_success_with(&node);
    let widened = node.wait_cdrs(1, Duration::from_secs(10)).remove(0);
    assert_eq!(widened.agent.as_deref(), Some("3002"), "{widened:#?}");
    assert!(
        (10_000..13_000).contains(&widened.wait_ms),
        "answered after the 10 s step, not before: {widened:#?}"
    );
    assert_eq!(widened.skills.get("billing"), Some(&1), "{widened:#?}");

    // Both free: skills-best offers the level-5 agent at once.
    let expert = agent(&node, "3001", 1);
    let novice = agent(&node, "3002", 1);
    caller(&node, "caller-expert", "1001").expect_success_with(&node);
    expert.expect_success_with(&node);
    let cdrs = node.wait_cdrs(2, Duration::from_secs(10));
    let to_expert = cdrs.iter().max_by_key(|c| c.arrived_ms).expect("record");
    assert_eq!(to_expert.agent.as_deref(), Some("3001"), "{to_expert:#?}");
    assert!(to_expert.wait_ms < 3_000, "at once: {to_expert:#?}");
    assert_eq!(to_expert.skills.get("billing"), Some(&4), "{to_expert:#?}");
    drop(novice);

    // Three callers wait in general, then one with priority 10: it is answered first.
    let mut waiting = Vec::new();
    for i in 1..=3 {
        waiting.push(caller(&node, &format!("caller-ordinary-{i}"), "1002"));
        wait_waiting(&node, "general", i);
    }
    let vip = caller(&node, "caller-priority", "1003");
    wait_waiting(&node, "general", 4);
    let phone = agent(&node, "3003", 4);
    vip.expect_success_with(&node);
    for caller in waiting {
        caller.expect_success_with(&node);
    }
    phone.expect_success_with(&node);
    let cdrs = node.wait_cdrs(6, Duration::from_secs(10));
    let mut general: Vec<_> = cdrs
        .iter()
        .filter(|c| c.queue.as_deref() == Some("general"))
        .collect();
    general.sort_by_key(|c| c.answered_ms);
    let order: Vec<&str> = general.iter().map(|c| c.did.as_str()).collect();
    assert_eq!(order, ["1003", "1002", "1002", "1002"], "{general:#?}");
    assert_eq!(general[0].priority, 10, "{:#?}", general[0]);

    // Join-empty: the caller hears the overflow flow's prompt and is refused at once.
    let sipp = node
        .sipp("caller-join-empty", "caller_ivr.xml")
        .dial("1004")
        .timeout_secs(30);
    std::fs::create_dir_all(sipp.dir()).expect("sipp dir");
    std::fs::copy(
        "/usr/share/sip-tester/dtmf_2833_1.pcap",
        sipp.dir().join("keys.pcap"),
    )
    .expect("SIPp's dtmf_2833_1.pcap");
    sipp.spawn().expect_success_with(&node);
    let cdrs = node.wait_cdrs(7, Duration::from_secs(10));
    let empty = cdrs.iter().find(|c| c.did == "1004").expect("record");
    assert_eq!(empty.disposition, "closed", "{empty:#?}");
    assert_eq!(empty.flow.as_deref(), Some("sorry"), "{empty:#?}");
    let queue = node.get_json("/v1/queues/empty");
    assert_eq!(queue["overflowed"], 1, "{queue}");
}

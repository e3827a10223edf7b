//! IVR flows end to end: SIPp callers dial a flow's DID and press keys as RFC 4733 events
//! (SIPp's own `dtmf_2833_N.pcap`), SIPp agent phones answer in the queue the menu chose.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cdr, Node, NodeConfig, SippProcess, http};

/// Queues `billing` (agent 3001) and `general` (agent 3002), and flow `main` on DID 10086:
/// a short menu prompt, `1` billing, `0` a line that a schedule closes, no key twice within a
/// second -> general.
const HOTLINE: &str = r#"
[[queue]]
name = "billing"
[[queue]]
name = "general"

[[agents]]
extensions = "3001"
password = "pw{ext}"
queues = ["billing"]
available_on_register = true

[[agents]]
extensions = "3002"
password = "pw{ext}"
queues = ["general"]
available_on_register = true

[[did]]
number = "10086"
flow = "main"

[[flow]]
name = "main"
start = "menu"
language = "en"
[flow.steps.menu]
menu = { prompt = ["digit-1"], options = { "1" = "billing", "0" = "late", "3" = "out" }, timeout_secs = 1, max_timeouts = 2, on_timeout = "general", on_invalid = "general" }
[flow.steps.out]
transfer = { number = "4008001234", trunk = "carrier" }
[flow.steps.billing]
queue = { name = "billing" }
[flow.steps.general]
queue = { name = "general" }
[flow.steps.late]
branch_time = { schedule = "late", open = "general", closed = "closed" }
[flow.steps.closed]
hangup = { prompt = ["closed"], disposition = "closed" }

[[schedule]]
name = "late"
time_zone = "Asia/Shanghai"
"#;

const PCAPS: &str = "/usr/share/sip-tester";

fn agent(node: &Node, ext: &str) -> SippProcess {
    let phone = node
        .sipp(&format!("agent-{ext}"), "agent_answer_wait_bye.xml")
        .server()
        .calls(1)
        .duration_ms(200)
        .timeout_secs(90)
        .spawn();
    node.register_agents(&[ext.to_owned()], phone.local_port);
    phone
}

/// A caller dialling 10086 that presses `key` once the flow's prompt starts.
fn caller_pressing(node: &Node, label: &str, key: char) -> SippProcess {
    let sipp = node
        .sipp(label, "caller_ivr.xml")
        .dial("10086")
        .duration_ms(500)
        .timeout_secs(60);
    std::fs::create_dir_all(sipp.dir()).expect("sipp dir");
    let pcap = Path::new(PCAPS).join(format!("dtmf_2833_{key}.pcap"));
    std::fs::copy(&pcap, sipp.dir().join("keys.pcap"))
        .unwrap_or_else(|e| panic!("{}: {e} (Debian's sip-tester ships it)", pcap.display()));
    sipp.spawn()
}

fn record_of<'a>(cdrs: &'a [Cdr], agent: &str) -> &'a Cdr {
    cdrs.iter()
        .find(|c| c.agent.as_deref() == Some(agent))
        .unwrap_or_else(|| panic!("no record with agent {agent:?}: {cdrs:#?}"))
}

fn put(node: &Node, path: &str, body: &str) -> http::Response {
    http::send_json(node.http, "PUT", path, body, Duration::from_secs(10)).expect("PUT")
}

#[test]
fn a_menu_routes_by_key_and_by_timeout_a_closed_line_refuses_and_flows_change_live() {
    let trunk_port = common::free_port();
    let node = Node::start(
        "ivr-menu",
        NodeConfig {
            extra: format!(
                "{HOTLINE}\n[[trunk]]\nname = \"carrier\"\naddress = \"127.0.0.1:{trunk_port}\"\n"
            ),
            ..NodeConfig::default()
        },
    );
    let billing = agent(&node, "3001");
    let general = agent(&node, "3002");

    // Key 1 during the prompt (barge-in): billing, answered by 3001.
    caller_pressing(&node, "caller-key-1", '1').expect_success_with(&node);
    billing.expect_success_with(&node);
    // No key: the menu times out twice and sends the caller to general.
    node.sipp("caller-no-key", "caller.xml")
        .dial("10086")
        .duration_ms(500)
        .timeout_secs(60)
        .spawn()
        .expect_success_with(&node);
    general.expect_success_with(&node);

    // Key 3: the flow transfers the caller to an outside number, a SIPp UAS behind the trunk.
    let outside = node
        .sipp("carrier", "agent_answer_wait_bye.xml")
        .server()
        .local_port(trunk_port)
        .calls(1)
        .duration_ms(200)
        .timeout_secs(60)
        .spawn();
    caller_pressing(&node, "caller-transfer", '3').expect_success_with(&node);
    outside.expect_success_with(&node);

    // Closed by the operator: key 0 hears the closed prompt and is refused.
    let closed = put(
        &node,
        "/v1/schedules/late/override",
        r#"{"state":"closed"}"#,
    );
    assert_eq!(closed.status, 200, "{}", closed.text());
    caller_pressing(&node, "caller-closed", '0').expect_success_with(&node);

    let cdrs = node.wait_cdrs(4, Duration::from_secs(10));
    let transferred = cdrs
        .iter()
        .find(|c| c.disposition == "transferred")
        .unwrap_or_else(|| panic!("no transferred call: {cdrs:#?}"));
    assert_eq!(transferred.menu, "3", "{transferred:#?}");
    assert_eq!(transferred.hangup_by, "caller", "{transferred:#?}");
    let keyed = record_of(&cdrs, "3001");
    assert_eq!(keyed.queue.as_deref(), Some("billing"), "{keyed:#?}");
    assert_eq!(keyed.disposition, "answered", "{keyed:#?}");
    assert_eq!(keyed.flow.as_deref(), Some("main"), "{keyed:#?}");
    assert_eq!(keyed.menu, "1", "{keyed:#?}");
    let timed_out = record_of(&cdrs, "3002");
    assert_eq!(
        timed_out.queue.as_deref(),
        Some("general"),
        "{timed_out:#?}"
    );
    assert_eq!(timed_out.menu, "", "{timed_out:#?}");
    assert!(
        timed_out.queued_ms.unwrap_or(0) >= timed_out.arrived_ms + 2_000,
        "two 1 s timeouts after the prompt: {timed_out:#?}"
    );
    let refused = cdrs
        .iter()
        .find(|c| c.disposition == "closed")
        .unwrap_or_else(|| panic!("no closed call: {cdrs:#?}"));
    assert_eq!(refused.disposition, "closed", "{refused:#?}");
    assert_eq!(refused.menu, "0", "{refused:#?}");
    assert!(refused.queue.is_none(), "{refused:#?}");

    // A change naming a queue that does not exist is refused with its flow, step and field.
    let mut set = node.get_json("/v1/flows");
    set["flow"][0]["steps"]["billing"]["queue"]["name"] = "nowhere".into();
    let bad = put(&node, "/v1/flows", &set.to_string());
    assert_eq!(bad.status, 400, "{}", bad.text());
    let reason: serde_json::Value = serde_json::from_slice(&bad.body).expect("JSON error");
    let reason = reason["error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(r#"flow "main", step "billing", field "name""#)
            && reason.contains("nowhere"),
        "{reason}"
    );
    // A valid one applies to the next caller: key 1 now goes to general.
    set["flow"][0]["steps"]["billing"]["queue"]["name"] = "general".into();
    let good = put(&node, "/v1/flows", &set.to_string());
    assert_eq!(good.status, 200, "{}", good.text());
    let general = agent(&node, "3002");
    caller_pressing(&node, "caller-after-change", '1').expect_success_with(&node);
    general.expect_success_with(&node);
    let cdrs = node.wait_cdrs(5, Duration::from_secs(10));
    let last = cdrs.iter().max_by_key(|c| c.arrived_ms).expect("records");
    assert_eq!(last.queue.as_deref(), Some("general"), "{last:#?}");
}

#[test]
fn a_caller_asks_for_a_callback_keeps_its_place_and_is_called_back_through_the_trunk() {
    // The carrier: a SIPp UAS answering whatever the trunk sends it.
    let trunk_port = common::free_port();
    let node = Node::start(
        "ivr-callback",
        NodeConfig {
            extra: format!(
                r#"
[[trunk]]
name = "carrier"
address = "127.0.0.1:{trunk_port}"
caller_id = "10086"

[[queue]]
name = "callbacks"
callback = {{ key = "9", trunk = "carrier", attempts = 2, retry_after_secs = 1 }}

[[did]]
number = "1005"
queue = "callbacks"

[[agents]]
extensions = "3005"
password = "pw{{ext}}"
queues = ["callbacks"]
available_on_register = true
"#
            ),
            ..NodeConfig::default()
        },
    );
    let customer = node
        .sipp("carrier", "agent_answer_wait_bye.xml")
        .server()
        .local_port(trunk_port)
        .calls(1)
        .duration_ms(200)
        .timeout_secs(90)
        .spawn();

    // Nobody is logged in: the caller waits, presses 9, confirms with 1 and is let go.
    let sipp = node
        .sipp("caller-callback", "caller_callback.xml")
        .dial("1005")
        .timeout_secs(60);
    std::fs::create_dir_all(sipp.dir()).expect("sipp dir");
    for key in ['9', '1'] {
        let pcap = Path::new(PCAPS).join(format!("dtmf_2833_{key}.pcap"));
        std::fs::copy(&pcap, sipp.dir().join(format!("key{key}.pcap")))
            .unwrap_or_else(|e| panic!("{}: {e}", pcap.display()));
    }
    sipp.spawn().expect_success_with(&node);
    let asked = node.wait_cdrs(1, Duration::from_secs(10)).remove(0);
    assert_eq!(asked.disposition, "callback-requested", "{asked:#?}");
    let queue = node.get_json("/v1/queues/callbacks");
    assert_eq!(queue["waiting"], 1, "the callback keeps its place: {queue}");

    // An agent logs in: it answers first, then the customer is dialled through the trunk.
    let phone = node
        .sipp("agent-3005", "agent_answer_send_bye.xml")
        .server()
        .calls(1)
        .duration_ms(200)
        .set("talk_ms", "8000")
        .timeout_secs(90)
        .spawn();
    node.register_agents(&["3005".to_owned()], phone.local_port);
    phone.expect_success_with(&node);
    customer.expect_success_with(&node);
    let cdrs = node.wait_cdrs(2, Duration::from_secs(10));
    let called = cdrs
        .iter()
        .find(|c| c.id != asked.id)
        .expect("the callback's record");
    assert_eq!(
        called.callback_of.as_deref(),
        Some(asked.id.as_str()),
        "{called:#?}"
    );
    assert_eq!(called.disposition, "answered", "{called:#?}");
    assert_eq!(called.agent.as_deref(), Some("3005"), "{called:#?}");
    assert_eq!(called.caller, "13800000001", "{called:#?}");
}

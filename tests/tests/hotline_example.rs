//! `deploy/examples/hotline.toml` as operators run it: its own ports (SIP 5060, HTTP 8080),
//! agents and numbers. The one test here owns those ports while it runs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::Node;

#[test]
fn the_hotline_example_routes_a_menu_key_to_a_billing_expert() {
    let node = Node::start_example(
        "hotline-example",
        "hotline.toml",
        SocketAddr::from(([127, 0, 0, 1], 5060)),
        SocketAddr::from(([127, 0, 0, 1], 8080)),
    );
    // 2001 has billing 5 and 2021 billing 2: within the first 10 s only the expert may answer.
    let expert = node
        .sipp("agent-2001", "agent_answer_wait_bye.xml")
        .server()
        .calls(1)
        .duration_ms(200)
        .timeout_secs(90)
        .spawn();
    node.register_agents(&["2001".to_owned()], expert.local_port);
    let sipp = node
        .sipp("caller", "caller_ivr.xml")
        .dial("10086")
        .duration_ms(500)
        .timeout_secs(60);
    std::fs::create_dir_all(sipp.dir()).expect("sipp dir");
    std::fs::copy(
        Path::new("/usr/share/sip-tester/dtmf_2833_1.pcap"),
        sipp.dir().join("keys.pcap"),
    )
    .expect("SIPp's dtmf_2833_1.pcap (Debian's sip-tester ships it)");
    sipp.spawn().expect_success_with(&node);
    expert.expect_success_with(&node);

    let record = node.wait_cdrs(1, Duration::from_secs(10)).remove(0);
    assert_eq!(record.did, "10086", "{record:#?}");
    assert_eq!(record.flow.as_deref(), Some("main"), "{record:#?}");
    assert_eq!(record.menu, "1", "{record:#?}");
    assert_eq!(record.queue.as_deref(), Some("billing"), "{record:#?}");
    assert_eq!(record.agent.as_deref(), Some("2001"), "{record:#?}");
    assert_eq!(record.pool.as_deref(), Some("inhouse"), "{record:#?}");
    assert_eq!(record.skills.get("billing"), Some(&4), "{record:#?}");
    assert_eq!(record.disposition, "answered", "{record:#?}");
}

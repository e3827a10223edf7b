//! The same load offered by SIPp (tests/sipp/caller.xml and agent phones) and by the bench,
//! each against a fresh node: 200 calls at 20 calls/s, 1 s answer delay, 1 s talk, 60 agents.
//! The node's own figures (answered calls, average wait, service level) must agree within 5%:
//! the bench loads a node the way the established tool does.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Sipp, TestDir, bench, free_media_port, get_json, start_node, wait_cdrs};
use switchyard_bench::nodes;
use switchyard_bench::scenario::Scenario;

const CALLS: u64 = 200;
const AGENTS: u32 = 60;

const SCENARIO: &str = r#"
name = "parity"
duration = "10s"
[arrivals]
process = "constant"
rate = 20.0
[callers]
dids = [{ number = "1000", queue = "support" }]
talk_time = "1s"
[[agents]]
count = 60
first_extension = 2001
skills = ["support"]
answer_delay = "1s"
[node]
service_level = "2s"
"#;

/// What the node says about a run.
#[derive(Debug)]
struct NodeFigures {
    answered: f64,
    avg_wait_ms: f64,
    service_level_pct: f64,
}

fn node_figures(http: SocketAddr) -> NodeFigures {
    let records = wait_cdrs(http, CALLS as usize, Duration::from_secs(15));
    assert_eq!(records.len() as u64, CALLS, "one record per call");
    let answered: Vec<_> = records
        .iter()
        .filter(|r| r["disposition"] == "answered")
        .collect();
    let waits: u64 = answered
        .iter()
        .map(|r| r["wait_ms"].as_u64().unwrap_or(0))
        .sum();
    let q = get_json(http, "/v1/queues/support");
    NodeFigures {
        answered: answered.len() as f64,
        avg_wait_ms: waits as f64 / answered.len().max(1) as f64,
        service_level_pct: q["service_level_pct"].as_f64().unwrap_or(0.0),
    }
}

fn within_5pct(what: &str, sipp: f64, bench: f64) {
    let diff = (sipp - bench).abs() / sipp.abs().max(bench.abs()).max(1e-9) * 100.0;
    assert!(
        diff <= 5.0,
        "{what}: SIPp {sipp:.1}, bench {bench:.1} ({diff:.1}% apart)"
    );
}

#[test]
fn sipp_and_bench_give_the_same_server_figures() {
    let scenario = Scenario::parse(SCENARIO).expect("scenario");

    // SIPp: one UAS instance is every agent's phone, registered through agent_register.xml.
    let dir_a = TestDir::new("parity-sipp");
    let sipp_fig = {
        let node = start_node(&scenario, &dir_a);
        let sip = node.nodes[0].addrs.sip.to_string();
        let phone_port = nodes::free_port().expect("port");
        let mut phones = Sipp::spawn(
            &dir_a,
            "phones",
            "agent_answer_wait_bye.xml",
            &[
                "-p".into(),
                phone_port.to_string(),
                "-mp".into(),
                free_media_port().to_string(),
                "-d".into(),
                "1000".into(),
                "-m".into(),
                CALLS.to_string(),
            ],
        );
        let csv = dir_a.join("agents.csv");
        let mut lines = String::from("SEQUENTIAL\n");
        for ext in 2001..2001 + AGENTS {
            lines.push_str(&format!(
                "{ext};pw{ext};{phone_port};[authentication username={ext} password=pw{ext}]\n"
            ));
        }
        std::fs::write(&csv, lines).expect("agents.csv");
        let mut register = Sipp::spawn(
            &dir_a,
            "register",
            "agent_register.xml",
            &[
                sip.clone(),
                "-inf".into(),
                csv.display().to_string(),
                "-m".into(),
                AGENTS.to_string(),
                "-r".into(),
                "100".into(),
                "-timeout".into(),
                "30s".into(),
                "-timeout_error".into(),
            ],
        );
        let code = register.wait(Duration::from_secs(40));
        assert_eq!(code, Some(0), "registration: {}", register.errors());
        let mut callers = Sipp::spawn(
            &dir_a,
            "callers",
            "caller.xml",
            &[
                sip,
                "-s".into(),
                "1000".into(),
                "-mp".into(),
                free_media_port().to_string(),
                "-r".into(),
                "20".into(),
                "-m".into(),
                CALLS.to_string(),
                "-d".into(),
                "1000".into(),
                "-l".into(),
                "200".into(),
                "-timeout".into(),
                "60s".into(),
                "-timeout_error".into(),
            ],
        );
        let code = callers.wait(Duration::from_secs(70));
        assert_eq!(code, Some(0), "SIPp callers: {}", callers.errors());
        let fig = node_figures(node.nodes[0].addrs.http);
        phones.wait(Duration::from_secs(5));
        fig
    };

    // The bench, same load, fresh node.
    let dir_b = TestDir::new("parity-bench");
    let bench_fig = {
        let node = start_node(&scenario, &dir_b);
        let n = &node.nodes[0];
        let path = dir_b.join("parity.toml");
        std::fs::write(&path, SCENARIO).expect("scenario file");
        let out = dir_b.join("out");
        let (code, output) = bench(&[
            "run",
            &path.display().to_string(),
            "--target",
            &n.addrs.sip.to_string(),
            "--out",
            &out.display().to_string(),
            "--quiet",
        ]);
        assert_eq!(code, Some(0), "{output}");
        node_figures(n.addrs.http)
    };

    eprintln!("[parity] SIPp {sipp_fig:?}\n[parity] bench {bench_fig:?}");
    within_5pct("answered calls", sipp_fig.answered, bench_fig.answered);
    within_5pct(
        "average wait ms",
        sipp_fig.avg_wait_ms,
        bench_fig.avg_wait_ms,
    );
    within_5pct(
        "service level %",
        sipp_fig.service_level_pct,
        bench_fig.service_level_pct,
    );
}

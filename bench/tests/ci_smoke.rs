//! The `ci-smoke` scenario against a real node for 10 s: the harness's counts must equal the
//! node's call records, no call may fail, and both sides must receive RTP with < 1% loss.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestDir, bench, cdrs, f, scenario_path, start_node, summary, u, wait_cdrs};
use switchyard_bench::scenario::Scenario;

#[test]
fn ci_smoke_against_a_node() {
    let dir = TestDir::new("ci-smoke");
    let path = scenario_path("ci-smoke.toml");
    let scenario = Scenario::load(&path).expect("ci-smoke parses");
    let node = start_node(&scenario, &dir);
    let n = &node.nodes[0];
    let out = dir.join("out");
    let (code, output) = bench(&[
        "run",
        &path.display().to_string(),
        "--target",
        &n.addrs.sip.to_string(),
        "--http",
        &n.addrs.http.to_string(),
        "--duration",
        "10s",
        "--out",
        &out.display().to_string(),
        "--quiet",
    ]);
    let s = summary(&out);
    assert_eq!(
        code,
        Some(0),
        "the scenario's pass criteria failed:\n{output}\nnode log: {}",
        n.log.display()
    );

    let offered = u(&s, "/calls/offered");
    let answered = u(&s, "/calls/answered");
    let abandoned = u(&s, "/calls/abandoned");
    assert!(offered >= 45, "5 calls/s for 10 s: {offered}");
    // 20 phones answer MD5 challenges and one SHA-256.
    assert_eq!(u(&s, "/agents/registered"), 21, "{output}");
    assert_eq!(u(&s, "/agents/offered_while_busy"), 0, "{output}");
    assert_eq!(u(&s, "/calls/failed"), 0, "{output}");
    assert_eq!(u(&s, "/calls/dropped"), 0, "{output}");
    assert_eq!(answered + abandoned, offered, "{output}");

    // The node's own records, read here independently of the harness's cross-check.
    let tag = s["run"]["tag"].as_str().expect("run tag").to_owned();
    let records: Vec<_> = wait_cdrs(n.addrs.http, offered as usize, Duration::from_secs(10))
        .into_iter()
        .filter(|r| {
            r["caller_call_id"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{tag}-")))
        })
        .collect();
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        *by.entry(r["disposition"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert_eq!(records.len() as u64, offered, "one record per call: {by:?}");
    assert_eq!(by.get("answered").copied().unwrap_or(0), answered, "{by:?}");
    assert_eq!(
        by.get("abandoned").copied().unwrap_or(0),
        abandoned,
        "{by:?}"
    );
    assert!(
        abandoned > 0,
        "the overloaded sales queue makes callers give up: {by:?}"
    );
    let dtmf = records.iter().filter(|r| r["dtmf"] == "12#").count() as u64;
    assert_eq!(
        dtmf,
        u(&s, "/calls/dtmf_sent"),
        "every caller's keys recorded"
    );
    let agent_hangups = records.iter().filter(|r| r["hangup_by"] == "agent").count();
    assert!(agent_hangups > 0, "agents end some calls");

    for side in ["caller", "agent"] {
        let received = u(&s, &format!("/media/{side}/packets_received"));
        let loss = f(&s, &format!("/media/{side}/loss_pct"));
        assert!(received > 0, "{side} legs received RTP");
        assert!(loss < 1.0, "{side} loss {loss}%");
        assert_eq!(
            u(&s, &format!("/media/{side}/legs_without_audio")),
            0,
            "{side}: every connected leg heard audio"
        );
    }
    assert_eq!(
        u(&s, "/media/agent/legs"),
        answered,
        "one agent leg per answer"
    );
    // Nothing else ran against this node.
    assert_eq!(cdrs(n.addrs.http).len(), records.len());
    for file in ["summary.json", "intervals.csv", "calls.csv", "report.html"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let calls_csv = std::fs::read_to_string(out.join("calls.csv")).expect("calls.csv");
    assert_eq!(
        calls_csv.lines().count() as u64,
        offered + 1,
        "header and a row per call"
    );
}

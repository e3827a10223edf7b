//! The harness alone (callers ringing its own agents, no node): every call completes and the
//! media it measures between its own legs is clean, so what it reports against a node is the
//! node's. Also checks its own load is measured.

mod common;

use common::{TestDir, bench, f, summary, u};

#[test]
fn loopback_measures_clean_media() {
    let dir = TestDir::new("loopback");
    let scenario = dir.join("loop.toml");
    std::fs::write(
        &scenario,
        r#"
name = "loopback"
duration = "5s"
[arrivals]
process = "constant"
rate = 40.0
[callers]
dids = [{ number = "1000", queue = "q" }]
talk_time = "2s"
agent_hangs_up = 0.5
[[agents]]
count = 200
first_extension = 2001
skills = ["q"]
answer_delay = "50ms"
[pass]
max_failed_pct = 0.0
max_rtp_loss_pct = 0.0
max_media_gap = "200ms"
"#,
    )
    .expect("write scenario");
    let out = dir.join("out");
    let (code, output) = bench(&[
        "run",
        &scenario.display().to_string(),
        "--loopback",
        "--out",
        &out.display().to_string(),
        "--quiet",
    ]);
    assert_eq!(code, Some(0), "{output}");
    let s = summary(&out);
    assert_eq!(u(&s, "/calls/offered"), 200);
    assert_eq!(u(&s, "/calls/answered"), 200);
    for side in ["caller", "agent"] {
        assert_eq!(u(&s, &format!("/media/{side}/legs")), 200);
        // About 2 s of 20 ms packets per leg.
        let received = u(&s, &format!("/media/{side}/packets_received"));
        assert!(received > 200 * 90, "{side}: {received} packets");
        let jitter = f(&s, &format!("/media/{side}/jitter_ms/p99"));
        assert!(jitter < 5.0, "{side} jitter p99 {jitter} ms");
    }
    // A caller's 200 comes straight from the agent: the relay time is the harness's own.
    let setup = f(&s, "/latency_ms/setup/p50");
    assert!((50.0..100.0).contains(&setup), "set-up p50 {setup} ms");
    assert!(
        f(&s, "/harness/cpu_pct_max") > 0.0,
        "the harness measured itself"
    );
    assert!(
        u(&s, "/harness/tick_lag_ms/count") > 1000,
        "tick lag recorded"
    );
}

//! The cluster's own figures, fetched from each node's HTTP API before and after the run:
//! queue counters (`GET /v1/queues/{name}`, differenced, since they count from the node's
//! start) and this run's call records (`GET /v1/cdrs`, paged from where the run began and
//! filtered by the run's Call-ID tag). [`compare`] sets them beside the harness's figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::hotline::{self, Expect};
use crate::http;

const PAGE: usize = 1000;

/// Queue counters of one node at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueueCounters {
    pub offered: u64,
    pub answered: u64,
    pub answered_in_service_level: u64,
    pub abandoned: u64,
    pub overflowed: u64,
    pub service_level_secs: u64,
}

impl QueueCounters {
    fn of(v: &Value) -> QueueCounters {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        QueueCounters {
            offered: n("offered"),
            answered: n("answered"),
            answered_in_service_level: n("answered_in_service_level"),
            abandoned: n("abandoned"),
            overflowed: n("overflowed"),
            service_level_secs: n("service_level_secs"),
        }
    }

    fn since(self, before: QueueCounters) -> QueueCounters {
        QueueCounters {
            offered: self.offered.saturating_sub(before.offered),
            answered: self.answered.saturating_sub(before.answered),
            answered_in_service_level: self
                .answered_in_service_level
                .saturating_sub(before.answered_in_service_level),
            abandoned: self.abandoned.saturating_sub(before.abandoned),
            overflowed: self.overflowed.saturating_sub(before.overflowed),
            service_level_secs: self.service_level_secs,
        }
    }

    fn add(&mut self, o: QueueCounters) {
        self.offered += o.offered;
        self.answered += o.answered;
        self.answered_in_service_level += o.answered_in_service_level;
        self.abandoned += o.abandoned;
        self.overflowed += o.overflowed;
        self.service_level_secs = self.service_level_secs.max(o.service_level_secs);
    }
}

/// Where each node stood when the run began.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    nodes: Vec<NodeBaseline>,
    /// The nodes form one cluster: every member answers for every queue (forwarding to its
    /// home node), so queue counters are read from one member instead of summed.
    clustered: bool,
}

#[derive(Debug, Clone)]
struct NodeBaseline {
    http: SocketAddr,
    cdr_after: u64,
    queues: BTreeMap<String, QueueCounters>,
}

/// The last CDR sequence number a node has (the `after` of this run's first record).
fn cdr_end(http: SocketAddr) -> anyhow::Result<u64> {
    let mut after = 0u64;
    loop {
        let page = http::get_json(http, &format!("/v1/cdrs?after={after}&limit={PAGE}"))?;
        let records = page.get("records").and_then(Value::as_array);
        let next = page.get("next").and_then(Value::as_u64).unwrap_or(after);
        if records.is_none_or(|r| r.is_empty()) || next <= after {
            return Ok(after);
        }
        after = next;
    }
}

/// A queue's counters on one node; `None` when the node does not host it (in a cluster
/// each queue lives on one node, its home, and the others answer 404).
fn queue(http: SocketAddr, name: &str) -> anyhow::Result<Option<QueueCounters>> {
    let path = format!("/v1/queues/{name}");
    let (status, body) = http::get(http, &path, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("GET http://{http}{path}: {e}"))?;
    match status {
        200 => {
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| anyhow::anyhow!("GET http://{http}{path}: invalid JSON: {e}"))?;
            Ok(Some(QueueCounters::of(&v)))
        }
        404 => Ok(None),
        _ => anyhow::bail!(
            "GET http://{http}{path}: HTTP {status} {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// Reads every node's starting point. Blocking: call from a blocking context.
pub fn baseline(https: &[SocketAddr], queues: &[String]) -> anyhow::Result<Baseline> {
    let clustered = https.len() > 1
        && https.iter().all(|&h| {
            matches!(
                http::get(h, "/v1/cluster/status", Duration::from_secs(5)),
                Ok((200, _))
            )
        });
    let mut nodes = Vec::new();
    for (k, &http) in https.iter().enumerate() {
        let mut q = BTreeMap::new();
        // In a cluster the first member speaks for every queue.
        if !clustered || k == 0 {
            for name in queues {
                q.insert(name.clone(), queue(http, name)?.unwrap_or_default());
            }
        }
        nodes.push(NodeBaseline {
            http,
            cdr_after: cdr_end(http)?,
            queues: q,
        });
    }
    Ok(Baseline { nodes, clustered })
}

/// A clustered queue's counters from the first member that answers (any member forwards to
/// the queue's home, and the first may be the node a failover test killed).
fn cluster_queue(base: &Baseline, name: &str) -> anyhow::Result<QueueCounters> {
    let mut last = None;
    for node in &base.nodes {
        match queue(node.http, name) {
            Ok(Some(q)) => return Ok(q),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no member knows queue {name}")))
}

/// This run's call records, summarised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CdrSummary {
    pub records: u64,
    pub by_disposition: BTreeMap<String, u64>,
    pub by_hangup: BTreeMap<String, u64>,
    /// Mean wait of answered calls (average speed of answer), ms.
    pub avg_wait_answered_ms: f64,
    pub answered_within_sl: u64,
    /// Records whose `dtmf` holds exactly the digits the callers sent.
    pub dtmf_matching: u64,
    /// RTP loss the node measured on caller and agent legs (packets lost / expected).
    pub caller_rtp_loss_pct: Option<f64>,
    pub agent_rtp_loss_pct: Option<f64>,
}

/// The cluster's figures for this run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerView {
    pub nodes: Vec<SocketAddr>,
    pub queues: BTreeMap<String, QueueCounters>,
    pub queue_total: QueueCounters,
    pub cdrs: CdrSummary,
    /// The hotline calls' records against the harness's view of them.
    pub hotline: Option<hotline::Check>,
    pub errors: Vec<String>,
}

/// Fetches the cluster's figures for the run tagged `run_tag`, waiting up to `settle` for
/// `expected_records` call records to be written (the store commits in groups); `hotline` is
/// the flow and the harness's view of the calls that went through it.
pub fn collect(
    base: &Baseline,
    run_tag: &str,
    digits: Option<&str>,
    hotline: Option<(&str, &[Expect])>,
    expected_records: u64,
    settle: Duration,
) -> ServerView {
    let mut view = ServerView {
        nodes: base.nodes.iter().map(|n| n.http).collect(),
        ..ServerView::default()
    };
    let deadline = Instant::now() + settle;
    let records = loop {
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for node in &base.nodes {
            match run_records(node.http, node.cdr_after, run_tag) {
                Ok(mut r) => records.append(&mut r),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if (records.len() as u64 >= expected_records && errors.is_empty())
            || Instant::now() >= deadline
        {
            view.errors = errors;
            break records;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for node in base
        .nodes
        .iter()
        .take(if base.clustered { 1 } else { usize::MAX })
    {
        for (name, before) in &node.queues {
            let now = if base.clustered {
                cluster_queue(base, name).map(Some)
            } else {
                queue(node.http, name)
            };
            match now {
                Ok(Some(now)) => {
                    let d = now.since(*before);
                    view.queues.entry(name.clone()).or_default().add(d);
                    view.queue_total.add(d);
                }
                Ok(None) => {}
                Err(e) => view.errors.push(format!("{e:#}")),
            }
        }
    }
    // A record a cluster holds on several nodes counts once.
    let mut seen = std::collections::HashSet::new();
    let records: Vec<Value> = records
        .into_iter()
        .filter(|r| match r.get("id").and_then(Value::as_str) {
            Some(id) => seen.insert(id.to_owned()),
            None => true,
        })
        .collect();
    view.cdrs = summarise(&records, digits, view.queue_total.service_level_secs);
    view.hotline = hotline.map(|(flow, expects)| hotline::check(flow, expects, &records));
    view
}

fn run_records(http: SocketAddr, mut after: u64, run_tag: &str) -> anyhow::Result<Vec<Value>> {
    let prefix = format!("{run_tag}-");
    let mut out = Vec::new();
    loop {
        let page = http::get_json(http, &format!("/v1/cdrs?after={after}&limit={PAGE}"))?;
        let Some(records) = page.get("records").and_then(Value::as_array) else {
            anyhow::bail!("GET /v1/cdrs on {http}: no records array");
        };
        if records.is_empty() {
            return Ok(out);
        }
        out.extend(
            records
                .iter()
                .filter(|r| {
                    r.get("caller_call_id")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.starts_with(&prefix))
                })
                .cloned(),
        );
        let next = page.get("next").and_then(Value::as_u64).unwrap_or(after);
        if next <= after {
            return Ok(out);
        }
        after = next;
    }
}

fn summarise(records: &[Value], digits: Option<&str>, sl_secs: u64) -> CdrSummary {
    let mut s = CdrSummary {
        records: records.len() as u64,
        ..CdrSummary::default()
    };
    let mut wait_sum = 0u64;
    let mut answered = 0u64;
    let mut rtp = [(0i64, 0u64); 2];
    for r in records {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let disposition = text("disposition");
        *s.by_disposition.entry(disposition.clone()).or_default() += 1;
        *s.by_hangup.entry(text("hangup_by")).or_default() += 1;
        if disposition == "answered" {
            let wait = r.get("wait_ms").and_then(Value::as_u64).unwrap_or(0);
            wait_sum += wait;
            answered += 1;
            if wait <= sl_secs * 1000 {
                s.answered_within_sl += 1;
            }
        }
        // Keys pressed in a flow (menu, survey) are the hotline check's, not these digits'.
        if let Some(d) = digits
            && r.get("flow").is_none_or(Value::is_null)
            && r.get("dtmf").and_then(Value::as_str) == Some(d)
        {
            s.dtmf_matching += 1;
        }
        for (i, key) in ["caller_rtp", "agent_rtp"].iter().enumerate() {
            if let Some(stats) = r.get(*key).filter(|v| v.is_object()) {
                let lost = stats
                    .get("packets_lost")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let got = stats
                    .get("packets_received")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                rtp[i].0 += lost.max(0);
                rtp[i].1 += got;
            }
        }
    }
    if answered > 0 {
        s.avg_wait_answered_ms = wait_sum as f64 / answered as f64;
    }
    let pct = |(lost, got): (i64, u64)| {
        let expected = got + lost as u64;
        (expected > 0).then(|| lost as f64 * 100.0 / expected as f64)
    };
    s.caller_rtp_loss_pct = pct(rtp[0]);
    s.agent_rtp_loss_pct = pct(rtp[1]);
    s
}

/// One figure measured both ways.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub harness: f64,
    pub server: f64,
    /// |harness - server| / max(|harness|, |server|) x 100.
    pub diff_pct: f64,
    /// Differences up to this much (in the metric's unit) never count, however large in %.
    pub floor: f64,
    pub ok: bool,
}

/// Relative difference above which a figure is flagged.
pub const TOLERANCE_PCT: f64 = 5.0;

pub fn comparison(metric: &str, harness: f64, server: f64, floor: f64) -> Comparison {
    let scale = harness.abs().max(server.abs());
    let diff = (harness - server).abs();
    let diff_pct = if scale > 0.0 {
        diff / scale * 100.0
    } else {
        0.0
    };
    Comparison {
        metric: metric.to_owned(),
        harness,
        server,
        diff_pct,
        floor,
        ok: diff_pct <= TOLERANCE_PCT || diff <= floor,
    }
}

/// A per-call count that must match exactly: each difference is a call the two sides see
/// differently.
pub fn exact(metric: &str, harness: u64, server: u64) -> Comparison {
    let mut c = comparison(metric, harness as f64, server as f64, 0.0);
    c.ok = harness == server;
    c
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn summarises_records() {
        let records = vec![
            json!({"disposition": "answered", "hangup_by": "caller", "wait_ms": 100, "dtmf": "1#",
                   "caller_rtp": {"packets_received": 98, "packets_lost": 2}}),
            json!({"disposition": "answered", "hangup_by": "agent", "wait_ms": 30_000, "dtmf": ""}),
            json!({"disposition": "abandoned", "hangup_by": "caller", "wait_ms": 5_000}),
            // A menu key "1" in a flow is not the DTMF the scenario's digits count.
            json!({"disposition": "failed", "hangup_by": "system", "dtmf": "1#", "flow": "main"}),
        ];
        let s = summarise(&records, Some("1#"), 20);
        assert_eq!(s.records, 4);
        assert_eq!(s.by_disposition["answered"], 2);
        assert_eq!(s.avg_wait_answered_ms, 15_050.0);
        assert_eq!(s.answered_within_sl, 1);
        assert_eq!(s.dtmf_matching, 1);
        assert_eq!(s.caller_rtp_loss_pct, Some(2.0));
        assert_eq!(s.agent_rtp_loss_pct, None);
    }

    #[test]
    fn comparisons_use_relative_tolerance_and_floor() {
        assert!(comparison("answered", 100.0, 96.0, 1.0).ok);
        assert!(!comparison("answered", 100.0, 90.0, 1.0).ok);
        // 12 ms against 10 ms is 17% but within a 20 ms floor.
        assert!(comparison("avg wait ms", 12.0, 10.0, 20.0).ok);
        assert!(comparison("x", 0.0, 0.0, 0.0).ok);
        assert!(
            !exact("hotline menu", 1000, 999).ok,
            "one call of a thousand differs"
        );
        assert!(exact("hotline menu", 7, 7).ok);
    }
}

//! The run's results: `summary.json`, `intervals.csv`, the pass/fail verdict, the text
//! summary, and (in `html`) the report a person opens in a browser.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::hooks::HookResult;
use crate::hotline;
use crate::server::{Comparison, ServerView};
use crate::stats::{AgentCounters, IntervalRow, MediaAgg, Percentiles};

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioInfo {
    pub name: String,
    pub description: String,
    pub file: String,
    pub time_scale: f64,
    pub duration_s: f64,
    pub interval_s: f64,
    pub arrivals: String,
    pub base_rate_cps: f64,
    pub talk_time: String,
    pub patience: String,
    pub agents: u32,
    pub targets: Vec<String>,
    pub http: Vec<String>,
    pub loopback: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub tag: String,
    pub started_unix_ms: u64,
    /// Seconds from the first arrival to the end of the last call.
    pub wall_s: f64,
    /// Seconds during which calls arrived.
    pub arrival_s: f64,
    pub interrupted: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Calls {
    pub offered: u64,
    pub queued: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub failed: u64,
    pub dropped: u64,
    pub harness_limited: u64,
    pub hung_up_at_end: u64,
    /// Sent to another node after the first never answered (`reroute_on_no_response`).
    pub rerouted: u64,
    pub failures: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    pub dtmf_sent: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub offered_cps: f64,
    pub achieved_cps: f64,
    pub peak_offered_cps: f64,
    pub peak_achieved_cps: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub setup: Percentiles,
    pub first_response: Percentiles,
    pub queue_wait: Percentiles,
    pub answer_relay: Percentiles,
    pub talk: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Service {
    pub service_level_secs: f64,
    pub service_level_pct: Option<f64>,
    pub abandon_rate_pct: Option<f64>,
    pub avg_wait_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaSide {
    pub legs: u64,
    pub legs_without_audio: u64,
    pub legs_lossy: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub loss_pct: f64,
    pub jitter_ms: Percentiles,
    pub max_gap_ms: Percentiles,
    pub first_packet_ms: Percentiles,
}

impl MediaSide {
    pub fn of(m: &MediaAgg) -> MediaSide {
        MediaSide {
            legs: m.legs,
            legs_without_audio: m.legs_without_audio,
            legs_lossy: m.legs_lossy,
            packets_sent: m.sent,
            packets_received: m.received,
            loss_pct: m.loss_pct(),
            jitter_ms: Percentiles::of(&m.jitter),
            max_gap_ms: Percentiles::of(&m.max_gap),
            first_packet_ms: Percentiles::of(&m.first_packet),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Media {
    pub enabled: bool,
    pub caller: MediaSide,
    pub agent: MediaSide,
    pub gap_events: u64,
    pub max_gap_ms: f64,
    pub send_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub index: usize,
    pub start_s: f64,
    pub end_s: f64,
    pub rate_cps: f64,
    pub offered: u64,
    pub answered: u64,
    pub failed: u64,
    pub failed_pct: f64,
    pub achieved_cps: f64,
    pub setup_p50_ms: f64,
    pub setup_p99_ms: f64,
    pub harness_saturated: bool,
    /// Mean CPU of the harness and of the watched processes (the node) during the stair.
    pub harness_cpu_pct: f64,
    pub watched_cpu_pct: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Harness {
    pub cpu_pct_mean: f64,
    pub cpu_pct_max: f64,
    pub busiest_thread_pct_max: f64,
    pub tick_lag_ms: Percentiles,
    pub loop_lag_max_ms: f64,
    pub saturated: bool,
    pub saturated_intervals: u64,
    /// Intervals in which the harness ran late for want of a CPU (see `monitor`).
    pub descheduled_intervals: u64,
    pub reasons: Vec<String>,
    pub rss_mib_max: f64,
    pub fds_max: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    pub pids: Vec<u32>,
    pub rss_mib_start: f64,
    pub rss_mib_end: f64,
    pub rss_growth_pct: f64,
    pub fds_start: u64,
    pub fds_end: u64,
    pub fd_growth: i64,
    pub cpu_pct_mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Criterion {
    pub name: String,
    pub limit: String,
    pub actual: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub criteria: Vec<Criterion>,
}

/// The hotline calls: what the harness did, and what the node's records say.
#[derive(Debug, Clone, Serialize)]
pub struct Hotline {
    pub flow: String,
    pub harness: hotline::Counts,
    pub node: Option<hotline::Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: ScenarioInfo,
    pub run: RunInfo,
    pub calls: Calls,
    pub rates: Rates,
    pub latency_ms: Latency,
    pub service: Service,
    pub media: Media,
    pub agents: AgentCounters,
    pub steps: Vec<Step>,
    pub sustained_max_cps: Option<f64>,
    /// Who limited the ramp at its first failing stair: the node, the harness, or both (the
    /// machine).
    pub limited_by: Option<String>,
    pub server: Option<ServerView>,
    pub hotline: Option<Hotline>,
    pub cross_check: Vec<Comparison>,
    pub harness: Harness,
    pub resources: Option<Resources>,
    pub hooks: Vec<HookResult>,
    pub pass: Verdict,
}

/// Writes `summary.json`, `intervals.csv` and `report.html` into `out`.
pub fn write_all(
    out: &Path,
    summary: &Summary,
    intervals: &[IntervalRow],
    gaps: &[crate::stats::GapEvent],
) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(summary)?;
    std::fs::write(out.join("summary.json"), json)?;
    write_csv(&out.join("intervals.csv"), intervals)?;
    std::fs::write(
        out.join("report.html"),
        crate::html::render(summary, intervals, gaps),
    )?;
    Ok(())
}

fn write_csv(path: &Path, rows: &[IntervalRow]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        w,
        "t_s,offered,answered,abandoned,failed,dropped,offered_cps,achieved_cps,target_cps,\
         active_calls,busy_agents,setup_p50_ms,setup_p99_ms,setup_max_ms,wait_p50_ms,wait_max_ms,\
         max_gap_ms,gap_events,rtp_loss_pct,harness_cpu_pct,busiest_thread,busiest_thread_pct,\
         tick_lag_max_ms,late_ticks,loop_lag_max_ms,saturated,watched_cpu_pct,watched_rss_mib,\
         watched_fds,hooks"
    )?;
    for r in rows {
        let g = &r.gauges;
        writeln!(
            w,
            "{:.1},{},{},{},{},{},{:.2},{:.2},{:.2},{},{},{:.3},{:.3},{:.3},{:.1},{:.1},{:.1},{},{:.3},\
             {:.1},{},{:.1},{:.2},{},{:.2},{},{:.1},{:.1},{},{}",
            r.t_s,
            r.offered,
            r.answered,
            r.abandoned,
            r.failed,
            r.dropped,
            r.offered_cps,
            r.achieved_cps,
            g.target_cps,
            g.active_calls,
            g.busy_agents,
            r.setup_p50_ms,
            r.setup_p99_ms,
            r.setup_max_ms,
            r.wait_p50_ms,
            r.wait_max_ms,
            r.max_gap_ms,
            r.gap_events,
            r.rtp_loss_pct,
            g.harness_cpu_pct,
            g.busiest_thread,
            g.busiest_thread_pct,
            g.tick_lag_max_ms,
            g.late_ticks,
            g.loop_lag_max_ms,
            u8::from(g.saturated),
            g.watched_cpu_pct,
            g.watched_rss_mib,
            g.watched_fds,
            csv_field(&r.hooks),
        )?;
    }
    w.flush()
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    parts.join(" ")
}

/// The hotline lines of the text summary.
pub fn hotline_text(h: &Hotline) -> String {
    let mut t = String::new();
    let c = &h.harness;
    let _ = writeln!(
        t,
        "hotline    flow {}: {} calls  menu keys {}  VIP {}  agent hung up {}  survey keys {}",
        h.flow,
        c.calls,
        counts(&c.keys),
        c.vip,
        c.agent_ended,
        counts(&c.survey_keys)
    );
    if let Some(n) = &h.node {
        let _ = writeln!(
            t,
            "           node records: menu {}  VIP priority {}  survey scores {}  | {} calls \
             checked, {} without a record, {} fields differ",
            counts(&n.node_menu),
            n.node_vip,
            n.node_surveys,
            n.checked,
            n.missing,
            n.field_mismatches()
        );
        for e in &n.examples {
            let _ = writeln!(t, "           differs: {e}");
        }
    }
    t
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The text printed at the end of a run.
pub fn text(s: &Summary) -> String {
    let mut t = String::new();
    let c = &s.calls;
    let _ = writeln!(t, "==== {} ({}) ====", s.scenario.name, s.run.tag);
    let _ = writeln!(
        t,
        "calls      offered {}  answered {}  abandoned {}  failed {}  dropped {}{}",
        c.offered,
        c.answered,
        c.abandoned,
        c.failed,
        c.dropped,
        if c.harness_limited > 0 {
            format!("  (harness-limited {})", c.harness_limited)
        } else {
            String::new()
        }
    );
    if !c.failures.is_empty() || !c.drops.is_empty() {
        let causes: Vec<String> = c
            .failures
            .iter()
            .chain(c.drops.iter())
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(t, "causes     {}", causes.join(", "));
    }
    if c.rerouted > 0 {
        let _ = writeln!(
            t,
            "rerouted   {} calls sent to another node after theirs never answered",
            c.rerouted
        );
    }
    let _ = writeln!(
        t,
        "rate       offered {:.1}/s  achieved {:.1}/s  (peak {:.1}/s)",
        s.rates.offered_cps, s.rates.achieved_cps, s.rates.peak_achieved_cps
    );
    let l = &s.latency_ms;
    let _ = writeln!(
        t,
        "set-up     p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms   first response p50 {:.2} ms p99 {:.2} ms",
        l.setup.p50, l.setup.p99, l.setup.max, l.first_response.p50, l.first_response.p99
    );
    let _ = writeln!(
        t,
        "wait       p50 {:.0} ms  p99 {:.0} ms   answer relay p50 {:.2} ms p99 {:.2} ms",
        l.queue_wait.p50, l.queue_wait.p99, l.answer_relay.p50, l.answer_relay.p99
    );
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"));
    let _ = writeln!(
        t,
        "service    level {} (within {}s)  abandon rate {}  average wait {}",
        opt(s.service.service_level_pct, "%"),
        s.service.service_level_secs,
        opt(s.service.abandon_rate_pct, "%"),
        opt(s.service.avg_wait_ms, " ms"),
    );
    if s.media.enabled {
        for (name, m) in [("caller", &s.media.caller), ("agent", &s.media.agent)] {
            let _ = writeln!(
                t,
                "rtp {name:<6} legs {}  loss {:.3}%  jitter p99 {:.2} ms  max gap p99 {:.0} ms max {:.0} ms{}",
                m.legs,
                m.loss_pct,
                m.jitter_ms.p99,
                m.max_gap_ms.p99,
                m.max_gap_ms.max,
                if m.legs_without_audio > 0 {
                    format!("  ({} legs without audio)", m.legs_without_audio)
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(max) = s.sustained_max_cps {
        let _ = writeln!(
            t,
            "sustained  {max:.0} calls/s{}",
            s.limited_by
                .as_ref()
                .map_or(String::new(), |b| format!(" (limited by the {b})"))
        );
    }
    if let Some(h) = &s.hotline {
        let _ = write!(t, "{}", hotline_text(h));
    }
    if !s.cross_check.is_empty() {
        let _ = writeln!(t, "cross-check (harness | cluster):");
        for cmp in &s.cross_check {
            let _ = writeln!(
                t,
                "  {:<28} {:>10.1} | {:>10.1}  {:>5.1}% {}",
                cmp.metric,
                cmp.harness,
                cmp.server,
                cmp.diff_pct,
                if cmp.ok { "ok" } else { "DIFFERS" }
            );
        }
    }
    if let Some(server) = &s.server
        && !server.errors.is_empty()
    {
        let _ = writeln!(t, "cluster API errors: {}", server.errors.join("; "));
    }
    let h = &s.harness;
    let _ = writeln!(
        t,
        "harness    cpu mean {:.0}% max {:.0}%  busiest thread max {:.0}%  tick lag p99 {:.2} ms max {:.1} ms{}",
        h.cpu_pct_mean,
        h.cpu_pct_max,
        h.busiest_thread_pct_max,
        h.tick_lag_ms.p99,
        h.tick_lag_ms.max,
        if h.saturated {
            format!(
                "\n           HARNESS SATURATED in {} intervals (and descheduled in {}): {}",
                h.saturated_intervals,
                h.descheduled_intervals,
                h.reasons.join("; ")
            )
        } else if h.descheduled_intervals > 0 {
            format!(
                "\n           harness descheduled (machine busy) in {} intervals: {}",
                h.descheduled_intervals,
                h.reasons.join("; ")
            )
        } else {
            String::new()
        }
    );
    if let Some(r) = &s.resources {
        let _ = writeln!(
            t,
            "watched    rss {:.1} -> {:.1} MiB ({:+.1}%)  fds {} -> {} ({:+})  cpu mean {:.0}%",
            r.rss_mib_start,
            r.rss_mib_end,
            r.rss_growth_pct,
            r.fds_start,
            r.fds_end,
            r.fd_growth,
            r.cpu_pct_mean
        );
    }
    let _ = writeln!(t, "pass criteria:");
    if s.pass.criteria.is_empty() {
        let _ = writeln!(t, "  (none)");
    }
    for cr in &s.pass.criteria {
        let _ = writeln!(
            t,
            "  {:<4} {:<26} {} (limit {})",
            if cr.ok { "ok" } else { "FAIL" },
            cr.name,
            cr.actual,
            cr.limit
        );
    }
    let _ = writeln!(t, "result     {}", if s.pass.ok { "PASS" } else { "FAIL" });
    t
}

//! Turning what the recorder holds into the run's [`Summary`]: rates, service figures, ramp
//! stairs and the sustained maximum, harness load, watched resources, the cross-check with
//! the cluster, and the verdict against the scenario's pass criteria.

use std::net::SocketAddr;

use hdrhistogram::Histogram;

use crate::hooks::HookResult;
use crate::hotline::{self, Counts};
use crate::report::{
    Calls, Criterion, Harness, Hotline, Latency, Media, MediaSide, Rates, Resources, RunInfo,
    ScenarioInfo, Service, Step, Summary, Verdict,
};
use crate::scenario::{Pass, Process, Scenario};
use crate::server::{Comparison, ServerView, comparison, exact};
use crate::stats::{IntervalRow, Percentiles, Recorder, Side};

/// Failure share under which a ramp stair counts as sustained, unless the scenario says.
pub const DEFAULT_STAIR_FAILED_PCT: f64 = 0.1;
/// Causes that are the harness's own, never the node's (no call record expected).
const HARNESS_CAUSES: [&str; 4] = ["harness-limit", "harness-socket", "harness-txn", "bad-uri"];

pub struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub scenario_file: &'a str,
    pub targets: &'a [SocketAddr],
    pub http: &'a [SocketAddr],
    pub loopback: bool,
    pub recorder: &'a Recorder,
    pub stairs: &'a [(f64, f64, f64)],
    pub run_tag: String,
    pub started_unix_ms: u64,
    pub wall_s: f64,
    pub arrival_s: f64,
    pub interrupted: bool,
    pub server: Option<ServerView>,
    pub tick_lag: Option<Histogram<u64>>,
    pub send_errors: u64,
    pub hooks: Vec<HookResult>,
    pub watched: Vec<u32>,
    pub ramp: bool,
}

pub fn build(i: Inputs<'_>) -> Summary {
    let s = i.scenario;
    let r = i.recorder;
    let t = &r.total;
    let calls = Calls {
        offered: t.offered,
        queued: r.queued,
        answered: t.answered,
        abandoned: t.abandoned,
        failed: t.failed + t.harness_limited,
        dropped: t.dropped,
        harness_limited: t.harness_limited,
        hung_up_at_end: r.hung_up_at_end,
        rerouted: r.rerouted,
        failures: r.failures.clone(),
        drops: r.drops.clone(),
        dtmf_sent: r.dtmf_calls,
    };
    let arrival = i.arrival_s.max(1e-3);
    let rates = Rates {
        offered_cps: t.offered as f64 / arrival,
        achieved_cps: t.answered as f64 / arrival,
        peak_offered_cps: r
            .intervals
            .iter()
            .map(|x| x.offered_cps)
            .fold(0.0, f64::max),
        peak_achieved_cps: r
            .intervals
            .iter()
            .map(|x| x.achieved_cps)
            .fold(0.0, f64::max),
    };
    let latency = Latency {
        setup: Percentiles::of(&t.setup),
        first_response: Percentiles::of(&r.first_response),
        queue_wait: Percentiles::of(&t.wait),
        answer_relay: Percentiles::of(&r.answer_relay),
        talk: Percentiles::of(&r.talk),
    };
    // The node's threshold when known, so both sides count the same calls in service level.
    let sl_secs = i
        .server
        .as_ref()
        .map(|v| v.queue_total.service_level_secs)
        .filter(|&x| x > 0)
        .map_or(s.node.service_level.secs_f64(), |x| x as f64);
    let queued = r.queued;
    let within = r
        .answered_waits_ms
        .iter()
        .filter(|w| **w <= sl_secs * 1000.0)
        .count() as f64;
    let service = Service {
        service_level_secs: sl_secs,
        service_level_pct: (queued > 0).then(|| within * 100.0 / queued as f64),
        abandon_rate_pct: (queued > 0).then(|| t.abandoned as f64 * 100.0 / queued as f64),
        avg_wait_ms: (!r.answered_waits_ms.is_empty())
            .then(|| r.answered_waits_ms.iter().sum::<f64>() / r.answered_waits_ms.len() as f64),
    };
    let media = Media {
        enabled: s.media.enabled,
        caller: MediaSide::of(&r.media[Side::Caller as usize]),
        agent: MediaSide::of(&r.media[Side::Agent as usize]),
        gap_events: t.gap_events,
        max_gap_ms: t.max_gap_ms,
        send_errors: i.send_errors,
    };
    let harness = harness(&r.intervals, i.tick_lag.as_ref());
    let failed_limit = s.pass.max_failed_pct.unwrap_or(DEFAULT_STAIR_FAILED_PCT);
    let steps = stairs(
        r,
        i.stairs,
        &r.intervals,
        failed_limit,
        &s.pass,
        i.arrival_s,
    );
    let first_bad = steps.iter().position(|st| !st.ok);
    let sustained_max_cps = if i.ramp {
        let good = &steps[..first_bad.unwrap_or(steps.len())];
        Some(good.last().map_or(0.0, |st| st.rate_cps))
    } else {
        None
    };
    let limited_by = first_bad.map(|b| limiter(&steps[b], !i.watched.is_empty()));
    let cross_check = i
        .server
        .as_ref()
        .map(|v| cross_check(&calls, &service, v, s.callers.dtmf.is_some(), r))
        .unwrap_or_default();
    let resources = resources(&r.intervals, &i.watched, i.arrival_s);
    let hotline = s.hotline.as_ref().map(|h| Hotline {
        flow: h.flow.clone(),
        harness: Counts::of(&r.hotline),
        node: i.server.as_ref().and_then(|v| v.hotline.clone()),
    });
    let mut summary = Summary {
        scenario: ScenarioInfo {
            name: s.name.clone(),
            description: s.description.clone(),
            file: i.scenario_file.to_owned(),
            time_scale: s.time_scale,
            duration_s: s.duration.secs_f64(),
            interval_s: s.interval.secs_f64(),
            arrivals: describe_arrivals(s),
            base_rate_cps: s.base_rate(),
            talk_time: s.callers.talk_time.describe(),
            patience: s.callers.patience.map_or("none".into(), |p| p.describe()),
            agents: s.agent_count(),
            targets: i.targets.iter().map(ToString::to_string).collect(),
            http: i.http.iter().map(ToString::to_string).collect(),
            loopback: i.loopback,
        },
        run: RunInfo {
            tag: i.run_tag,
            started_unix_ms: i.started_unix_ms,
            wall_s: i.wall_s,
            arrival_s: i.arrival_s,
            interrupted: i.interrupted,
        },
        calls,
        rates,
        latency_ms: latency,
        service,
        media,
        agents: r.agents.clone(),
        steps,
        sustained_max_cps,
        limited_by,
        server: i.server,
        hotline,
        cross_check,
        harness,
        resources,
        hooks: i.hooks,
        pass: Verdict::default(),
    };
    summary.pass = verdict(&summary, &s.pass, s.callers.dtmf.is_some());
    summary
}

fn describe_arrivals(s: &Scenario) -> String {
    let a = &s.arrivals;
    let rate = s.base_rate();
    match a.process {
        Process::Constant => format!("constant {rate:.2}/s"),
        Process::Poisson => format!("Poisson {rate:.2}/s"),
        Process::Ramp => format!(
            "ramp {rate:.1} to {:.1}/s{}",
            s.ramp_to_rate().unwrap_or(rate),
            if a.steps > 0 {
                format!(" in {} stairs", a.steps)
            } else {
                String::new()
            }
        ),
        Process::Burst => format!(
            "{rate:.2}/s plus {} calls every {}",
            a.burst_calls.unwrap_or(0),
            a.burst_every.map_or("-".into(), |d| d.to_string())
        ),
    }
}

fn harness(rows: &[IntervalRow], tick_lag: Option<&Histogram<u64>>) -> Harness {
    let n = rows.len().max(1) as f64;
    let mut reasons: Vec<String> = Vec::new();
    for row in rows
        .iter()
        .filter(|r| r.gauges.saturated || r.gauges.descheduled)
    {
        let why = format!("{:.0}s: {}", row.t_s, row.gauges.saturation);
        if reasons.len() < 10 {
            reasons.push(why);
        }
    }
    let saturated_intervals = rows.iter().filter(|r| r.gauges.saturated).count() as u64;
    Harness {
        cpu_pct_mean: rows.iter().map(|r| r.gauges.harness_cpu_pct).sum::<f64>() / n,
        cpu_pct_max: rows
            .iter()
            .map(|r| r.gauges.harness_cpu_pct)
            .fold(0.0, f64::max),
        busiest_thread_pct_max: rows
            .iter()
            .map(|r| r.gauges.busiest_thread_pct)
            .fold(0.0, f64::max),
        tick_lag_ms: tick_lag.map(Percentiles::of).unwrap_or_default(),
        loop_lag_max_ms: rows
            .iter()
            .map(|r| r.gauges.loop_lag_max_ms)
            .fold(0.0, f64::max),
        saturated: saturated_intervals > 0,
        saturated_intervals,
        descheduled_intervals: rows.iter().filter(|r| r.gauges.descheduled).count() as u64,
        reasons,
        rss_mib_max: rows
            .iter()
            .map(|r| r.gauges.harness_rss_mib)
            .fold(0.0, f64::max),
        fds_max: rows.iter().map(|r| r.gauges.harness_fds).max().unwrap_or(0),
    }
}

fn stairs(
    r: &Recorder,
    stairs: &[(f64, f64, f64)],
    rows: &[IntervalRow],
    failed_limit: f64,
    pass: &Pass,
    arrival_s: f64,
) -> Vec<Step> {
    stairs
        .iter()
        .enumerate()
        // Stairs the run never reached (stopped early) are left out.
        .filter(|(_, (start, _, _))| *start < arrival_s)
        .map(|(k, &(start, end, rate))| {
            let w = &r.steps[k.min(r.steps.len() - 1)];
            let failed = w.failed + w.dropped + w.harness_limited;
            let failed_pct = if w.offered > 0 {
                failed as f64 * 100.0 / w.offered as f64
            } else {
                0.0
            };
            let setup = Percentiles::of(&w.setup);
            let in_stair: Vec<&IntervalRow> = rows
                .iter()
                .filter(|row| row.t_s > start && row.t_s <= end + 0.5)
                .collect();
            let harness_saturated = in_stair.iter().any(|row| row.gauges.saturated);
            let mean = |f: &dyn Fn(&IntervalRow) -> f64| {
                in_stair.iter().map(|r| f(r)).sum::<f64>() / in_stair.len().max(1) as f64
            };
            let setup_ok = pass
                .max_setup_p99
                .is_none_or(|limit| setup.p99 <= limit.secs_f64() * 1000.0);
            Step {
                index: k,
                start_s: start,
                end_s: end,
                rate_cps: rate,
                offered: w.offered,
                answered: w.answered,
                failed,
                failed_pct,
                achieved_cps: w.answered as f64 / (end - start).max(1e-3),
                setup_p50_ms: setup.p50,
                setup_p99_ms: setup.p99,
                harness_saturated,
                harness_cpu_pct: mean(&|r| r.gauges.harness_cpu_pct),
                watched_cpu_pct: mean(&|r| r.gauges.watched_cpu_pct),
                ok: w.offered > 0 && failed_pct < failed_limit && setup_ok,
            }
        })
        .collect()
}

/// Node CPU (of watched processes) from which a node counts as busy itself.
const NODE_BUSY_PCT: f64 = 80.0;

/// Who gave out at the first failing stair.
fn limiter(step: &Step, node_watched: bool) -> String {
    match (step.harness_saturated, node_watched) {
        (false, _) => "node".into(),
        (true, true) if step.watched_cpu_pct >= NODE_BUSY_PCT => format!(
            "machine: node at {:.0}% and harness at {:.0}% CPU, both saturated",
            step.watched_cpu_pct, step.harness_cpu_pct
        ),
        (true, _) => "harness".into(),
    }
}

fn cross_check(
    calls: &Calls,
    service: &Service,
    v: &ServerView,
    dtmf: bool,
    r: &Recorder,
) -> Vec<Comparison> {
    let q = &v.queue_total;
    let c = &v.cdrs;
    let harness_side: u64 = HARNESS_CAUSES
        .iter()
        .filter_map(|k| calls.failures.get(*k))
        .sum();
    let mut out = vec![
        comparison(
            "call records",
            calls.offered.saturating_sub(harness_side) as f64,
            c.records as f64,
            1.0,
        ),
        comparison(
            "queued (queue offered)",
            calls.queued as f64,
            q.offered as f64,
            1.0,
        ),
        comparison(
            "answered (queue)",
            calls.answered as f64,
            q.answered as f64,
            1.0,
        ),
        comparison(
            "answered (call records)",
            calls.answered as f64,
            c.by_disposition.get("answered").copied().unwrap_or(0) as f64,
            1.0,
        ),
        comparison(
            "abandoned (queue)",
            calls.abandoned as f64,
            q.abandoned as f64,
            1.0,
        ),
    ];
    if q.offered > 0 {
        let node_sl = q.answered_in_service_level as f64 * 100.0 / q.offered as f64;
        let node_abandon = q.abandoned as f64 * 100.0 / q.offered as f64;
        out.push(comparison(
            "service level %",
            service.service_level_pct.unwrap_or(0.0),
            node_sl,
            1.0,
        ));
        out.push(comparison(
            "abandon rate %",
            service.abandon_rate_pct.unwrap_or(0.0),
            node_abandon,
            1.0,
        ));
    }
    if calls.answered > 0 {
        out.push(comparison(
            "average wait ms (answered)",
            service.avg_wait_ms.unwrap_or(0.0),
            c.avg_wait_answered_ms,
            20.0,
        ));
    }
    if dtmf {
        out.push(comparison(
            "calls with their DTMF recorded",
            r.dtmf_calls as f64,
            c.dtmf_matching as f64,
            1.0,
        ));
    }
    if let Some(h) = &v.hotline {
        out.extend(hotline_rows(h));
    }
    out
}

/// One row per compared field of the hotline calls: the calls with a record against those
/// whose record agrees with the harness. Per call, so they must match exactly.
fn hotline_rows(h: &hotline::Check) -> Vec<Comparison> {
    let found = h.checked - h.missing;
    let mut rows = vec![exact("hotline call records", h.checked, found)];
    for field in hotline::FIELDS {
        let differ = h.mismatches.get(field).copied().unwrap_or(0);
        rows.push(exact(
            &format!("hotline {field}"),
            found,
            found.saturating_sub(differ),
        ));
    }
    rows
}

/// Share of the arrival window treated as warm-up (the load still building up).
const WARM_UP_SHARE: f64 = 0.2;

fn resources(rows: &[IntervalRow], pids: &[u32], arrival_s: f64) -> Option<Resources> {
    if pids.is_empty() {
        return None;
    }
    // Growth is judged at steady load: after the warm-up and before the drain, comparing the
    // first and last tenths of what remains.
    let live: Vec<&IntervalRow> = rows
        .iter()
        .filter(|r| r.t_s >= arrival_s * WARM_UP_SHARE && r.t_s <= arrival_s + 0.5)
        .filter(|r| r.gauges.watched_rss_mib > 0.0)
        .collect();
    if live.is_empty() {
        return None;
    }
    let k = (live.len() / 10).max(1);
    let mean = |xs: &[&IntervalRow], f: &dyn Fn(&IntervalRow) -> f64| {
        xs.iter().map(|r| f(r)).sum::<f64>() / xs.len() as f64
    };
    let (head, tail) = (&live[..k], &live[live.len() - k..]);
    let rss0 = mean(head, &|r| r.gauges.watched_rss_mib);
    let rss1 = mean(tail, &|r| r.gauges.watched_rss_mib);
    let fds0 = mean(head, &|r| r.gauges.watched_fds as f64).round() as u64;
    let fds1 = mean(tail, &|r| r.gauges.watched_fds as f64).round() as u64;
    Some(Resources {
        pids: pids.to_vec(),
        rss_mib_start: rss0,
        rss_mib_end: rss1,
        rss_growth_pct: if rss0 > 0.0 {
            (rss1 - rss0) * 100.0 / rss0
        } else {
            0.0
        },
        fds_start: fds0,
        fds_end: fds1,
        fd_growth: fds1 as i64 - fds0 as i64,
        cpu_pct_mean: mean(&live, &|r| r.gauges.watched_cpu_pct),
    })
}

fn verdict(s: &Summary, p: &Pass, dtmf: bool) -> Verdict {
    let mut criteria = Vec::new();
    let offered = s.calls.offered.max(1) as f64;
    let mut check = |name: &str, limit: String, actual: String, ok: bool| {
        criteria.push(Criterion {
            name: name.to_owned(),
            limit,
            actual,
            ok,
        });
    };
    // A ramp climbs until something gives: its failure and set-up limits judge each stair,
    // and the verdict looks at the stairs it sustained, not at the collapse above them.
    let good: Vec<&Step> = s.steps.iter().take_while(|st| st.ok).collect();
    let ramp = !s.steps.is_empty();
    if let Some(max) = p.max_failed_pct {
        if ramp {
            let offered: u64 = good.iter().map(|st| st.offered).sum();
            let failed: u64 = good.iter().map(|st| st.failed).sum();
            let v = failed as f64 * 100.0 / offered.max(1) as f64;
            check(
                "failed % (sustained stairs)",
                format!("<= {max}"),
                format!("{v:.3}"),
                v <= max && offered > 0,
            );
        } else {
            let v = (s.calls.failed + s.calls.dropped) as f64 * 100.0 / offered;
            check("failed %", format!("<= {max}"), format!("{v:.3}"), v <= max);
        }
    }
    if let Some(max) = p.max_abandoned_pct {
        let v = s.calls.abandoned as f64 * 100.0 / offered;
        check(
            "abandoned %",
            format!("<= {max}"),
            format!("{v:.2}"),
            v <= max,
        );
    }
    if let Some(min) = p.min_answered_pct {
        let v = s.calls.answered as f64 * 100.0 / offered;
        check(
            "answered %",
            format!(">= {min}"),
            format!("{v:.2}"),
            v >= min,
        );
    }
    if let Some(max) = p.max_setup_p99 {
        let limit = max.secs_f64() * 1000.0;
        if ramp {
            let v = good.iter().map(|st| st.setup_p99_ms).fold(0.0, f64::max);
            check(
                "set-up p99 ms (worst sustained stair)",
                format!("<= {limit}"),
                format!("{v:.2}"),
                v <= limit && !good.is_empty(),
            );
        } else {
            let v = s.latency_ms.setup.p99;
            check(
                "set-up p99 ms",
                format!("<= {limit}"),
                format!("{v:.2}"),
                v <= limit && s.latency_ms.setup.count > 0,
            );
        }
    }
    if let Some(max) = p.max_first_response_p99 {
        let v = s.latency_ms.first_response.p99;
        let limit = max.secs_f64() * 1000.0;
        check(
            "first response p99 ms",
            format!("<= {limit}"),
            format!("{v:.2}"),
            v <= limit && s.latency_ms.first_response.count > 0,
        );
    }
    if let Some(min) = p.min_service_level_pct {
        let v = s.service.service_level_pct.unwrap_or(0.0);
        check(
            "service level %",
            format!(">= {min}"),
            format!("{v:.1}"),
            v >= min,
        );
    }
    if let Some(max) = p.max_avg_wait {
        let v = s.service.avg_wait_ms.unwrap_or(0.0);
        let limit = max.secs_f64() * 1000.0;
        check(
            "average wait ms",
            format!("<= {limit}"),
            format!("{v:.0}"),
            v <= limit,
        );
    }
    if let Some(max) = p.max_rtp_loss_pct {
        let (c, a) = (&s.media.caller, &s.media.agent);
        let v = c.loss_pct.max(a.loss_pct);
        let heard = c.packets_received > 0 && a.packets_received > 0;
        check(
            "RTP loss % (worse side)",
            format!("<= {max}, audio on both sides"),
            format!(
                "{v:.3} (received: callers {}, agents {})",
                c.packets_received, a.packets_received
            ),
            v <= max && heard,
        );
    }
    if let Some(max) = p.max_media_gap {
        let v = s
            .media
            .caller
            .max_gap_ms
            .max
            .max(s.media.agent.max_gap_ms.max);
        let limit = max.secs_f64() * 1000.0;
        check(
            "longest media gap ms",
            format!("<= {limit}"),
            format!("{v:.0}"),
            v <= limit,
        );
    }
    if let Some(min) = p.min_achieved_cps {
        let v = s.rates.achieved_cps;
        check(
            "achieved calls/s",
            format!(">= {min}"),
            format!("{v:.1}"),
            v >= min,
        );
    }
    if let Some(min) = p.min_sustained_cps {
        let v = s.sustained_max_cps.unwrap_or(0.0);
        check(
            "sustained calls/s",
            format!(">= {min}"),
            format!("{v:.0}"),
            v >= min,
        );
    }
    if p.cross_check {
        let bad: Vec<&str> = s
            .cross_check
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.metric.as_str())
            .collect();
        let fetched = s.server.as_ref().is_some_and(|v| v.errors.is_empty());
        check(
            "harness and cluster agree",
            "within 5%".into(),
            if !fetched {
                "cluster figures unavailable".into()
            } else if bad.is_empty() {
                "all agree".into()
            } else {
                format!("differ: {}", bad.join(", "))
            },
            fetched && bad.is_empty(),
        );
    }
    if p.dtmf_recorded && dtmf {
        let v = s.server.as_ref().map_or(0, |v| v.cdrs.dtmf_matching);
        check(
            "DTMF recorded by the node",
            format!("= {} calls", s.calls.dtmf_sent),
            v.to_string(),
            v == s.calls.dtmf_sent && v > 0,
        );
    }
    if let Some(r) = &s.resources {
        if let Some(max) = p.max_rss_growth_pct {
            check(
                "watched RSS growth %",
                format!("<= {max}"),
                format!("{:.1}", r.rss_growth_pct),
                r.rss_growth_pct <= max,
            );
        }
        if let Some(max) = p.max_fd_growth {
            check(
                "watched fd growth",
                format!("<= {max}"),
                r.fd_growth.to_string(),
                r.fd_growth <= max,
            );
        }
    } else if p.max_rss_growth_pct.is_some() || p.max_fd_growth.is_some() {
        check(
            "watched resources",
            "sampled".into(),
            "no process to watch (--watch-pid)".into(),
            false,
        );
    }
    if p.fail_if_saturated {
        check(
            "harness not saturated",
            "0 intervals".into(),
            format!("{} intervals", s.harness.saturated_intervals),
            !s.harness.saturated,
        );
    }
    if s.calls.offered == 0 {
        check("calls offered", "> 0".into(), "0".into(), false);
    }
    let ok = criteria.iter().all(|c| c.ok);
    Verdict { ok, criteria }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(saturated: bool, node_cpu: f64) -> Step {
        Step {
            index: 3,
            start_s: 30.0,
            end_s: 40.0,
            rate_cps: 400.0,
            offered: 4000,
            answered: 3900,
            failed: 100,
            failed_pct: 2.5,
            achieved_cps: 390.0,
            setup_p50_ms: 2.0,
            setup_p99_ms: 50.0,
            harness_saturated: saturated,
            harness_cpu_pct: 95.0,
            watched_cpu_pct: node_cpu,
            ok: false,
        }
    }

    #[test]
    fn hotline_rows_flag_any_call_that_differs() {
        let check = hotline::check(
            "main",
            &[hotline::Expect {
                call_id: "t-1@b".into(),
                vip: true,
                menu: Some('2'),
                queue: "tech".into(),
                priority: 10,
                agent_hangs_up: false,
                survey: None,
                checked: true,
            }],
            &[
                serde_json::json!({"caller_call_id": "t-1@b", "flow": "main", "menu": "2",
                                 "queue": "tech", "priority": 0}),
            ],
        );
        let rows = hotline_rows(&check);
        let bad: Vec<&str> = rows
            .iter()
            .filter(|r| !r.ok)
            .map(|r| r.metric.as_str())
            .collect();
        assert_eq!(bad, ["hotline priority"]);
        assert_eq!(rows.len(), 1 + hotline::FIELDS.len());
    }

    #[test]
    fn the_limiter_is_named_honestly() {
        assert_eq!(limiter(&step(false, 99.0), true), "node");
        assert_eq!(limiter(&step(true, 20.0), true), "harness");
        assert_eq!(limiter(&step(true, 0.0), false), "harness");
        assert!(limiter(&step(true, 97.0), true).starts_with("machine"));
    }
}

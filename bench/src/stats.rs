//! What the harness measures: call counts by outcome, latency histograms (HDR), media
//! figures per side, ramp stairs, and the per-interval rows behind the CSV, the progress line
//! and the report's plots.
//!
//! One `Recorder` behind a mutex: the SIP tasks touch it a few times per call and the media
//! thread once per finished leg (and for each gap above the threshold), never per packet.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::rtpstats::LegReport;
use crate::sys;

/// Which simulated party a leg belongs to; the value indexes per-side arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Caller = 0,
    Agent = 1,
}

/// How a call ended, from the caller's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered and ended normally by either side.
    Answered,
    /// The caller gave up (CANCEL) before an answer.
    Abandoned,
    /// Never answered, for this cause (`sip-503`, `timeout`, `no-response`, ...).
    Failed(String),
    /// Answered, then lost (`bye-timeout`, `media-timeout`, ...).
    Dropped(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Abandoned => "abandoned",
            Outcome::Failed(_) => "failed",
            Outcome::Dropped(_) => "dropped",
        }
    }

    pub fn cause(&self) -> &str {
        match self {
            Outcome::Failed(c) | Outcome::Dropped(c) => c,
            _ => "",
        }
    }
}

/// The harness's record of one call, written to `calls.csv`.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub n: u64,
    pub call_id: String,
    pub target: SocketAddr,
    pub did: String,
    pub queue: String,
    /// Seconds since the start of the run.
    pub offered_at: f64,
    pub step: usize,
    /// INVITE to the first provisional response carrying SDP (the node has routed the call).
    pub first_response_ms: Option<f64>,
    /// INVITE to 200 OK.
    pub setup_ms: Option<f64>,
    /// Queue wait: from the first response with SDP (queued, music on hold) to the 200 OK,
    /// or to the CANCEL of an abandoned call.
    pub wait_ms: Option<f64>,
    /// The agent's 200 leaving the harness to the caller's 200 arriving: the B2BUA's answer
    /// latency.
    pub answer_relay_ms: Option<f64>,
    pub talk_ms: Option<f64>,
    pub agent: Option<String>,
    pub hangup_by: Option<Side>,
    pub outcome: Outcome,
    pub dtmf_sent: bool,
    pub media: Option<LegReport>,
}

/// Latency histograms are in microseconds, 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

fn record_ms(h: &mut Histogram<u64>, ms: f64) {
    h.saturating_record(((ms * 1000.0).round() as u64).max(1));
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Media figures of one side, summed over its finished legs.
#[derive(Debug, Clone)]
pub struct MediaAgg {
    pub legs: u64,
    pub legs_without_audio: u64,
    /// Legs losing more than 1% of their packets.
    pub legs_lossy: u64,
    pub sent: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub jitter: Histogram<u64>,
    pub max_gap: Histogram<u64>,
    pub first_packet: Histogram<u64>,
}

impl Default for MediaAgg {
    fn default() -> Self {
        MediaAgg {
            legs: 0,
            legs_without_audio: 0,
            legs_lossy: 0,
            sent: 0,
            received: 0,
            expected: 0,
            lost: 0,
            jitter: histogram(),
            max_gap: histogram(),
            first_packet: histogram(),
        }
    }
}

impl MediaAgg {
    fn add(&mut self, r: &LegReport) {
        self.legs += 1;
        self.sent += r.sent;
        self.received += r.received;
        self.expected += r.expected;
        self.lost += r.lost;
        if r.received == 0 {
            self.legs_without_audio += 1;
            return;
        }
        if r.lost * 100 > r.expected {
            self.legs_lossy += 1;
        }
        record_ms(&mut self.jitter, r.jitter_ms);
        record_ms(&mut self.max_gap, r.max_gap_ms);
        if let Some(f) = r.first_packet_ms {
            record_ms(&mut self.first_packet, f);
        }
    }

    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.expected as f64
        }
    }
}

/// A gap in a leg's audio longer than the scenario's threshold, when it ended.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GapEvent {
    pub at_s: f64,
    pub gap_ms: f64,
    pub side: Side,
}

/// Counters of one interval or one ramp stair.
#[derive(Debug, Clone)]
pub struct Window {
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub failed: u64,
    pub dropped: u64,
    pub harness_limited: u64,
    pub setup: Histogram<u64>,
    pub wait: Histogram<u64>,
    pub max_gap_ms: f64,
    pub gap_events: u64,
    pub rtp_expected: u64,
    pub rtp_lost: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            offered: 0,
            answered: 0,
            abandoned: 0,
            failed: 0,
            dropped: 0,
            harness_limited: 0,
            setup: histogram(),
            wait: histogram(),
            max_gap_ms: 0.0,
            gap_events: 0,
            rtp_expected: 0,
            rtp_lost: 0,
        }
    }
}

/// Figures the runner samples each interval (harness load and watched processes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Gauges {
    pub active_calls: u64,
    pub busy_agents: u64,
    pub target_cps: f64,
    pub harness_cpu_pct: f64,
    pub busiest_thread: String,
    pub busiest_thread_pct: f64,
    pub tick_lag_max_ms: f64,
    pub late_ticks: u64,
    pub loop_lag_max_ms: f64,
    pub saturated: bool,
    /// Late without being busy: waiting for a CPU (see `monitor`).
    pub descheduled: bool,
    /// Why, when saturated or descheduled.
    pub saturation: String,
    pub harness_rss_mib: f64,
    pub harness_fds: u64,
    pub watched_cpu_pct: f64,
    pub watched_rss_mib: f64,
    pub watched_fds: u64,
}

/// One row of `intervals.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalRow {
    pub t_s: f64,
    pub offered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub failed: u64,
    pub dropped: u64,
    pub offered_cps: f64,
    pub achieved_cps: f64,
    pub setup_p50_ms: f64,
    pub setup_p99_ms: f64,
    pub setup_max_ms: f64,
    pub wait_p50_ms: f64,
    pub wait_max_ms: f64,
    pub max_gap_ms: f64,
    pub gap_events: u64,
    pub rtp_loss_pct: f64,
    #[serde(flatten)]
    pub gauges: Gauges,
    pub hooks: String,
}

/// Agent-side counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentCounters {
    pub registered: u64,
    pub register_failures: BTreeMap<String, u64>,
    pub offers: u64,
    pub answered: u64,
    /// Offers the node cancelled while ringing (the caller gave up).
    pub cancelled: u64,
    /// Offers to an agent already on a call: the node should never do that.
    pub offered_while_busy: u64,
    pub hung_up: u64,
    /// INVITEs for extensions the harness does not simulate.
    pub unknown: u64,
}

pub struct Recorder {
    pub start: Instant,
    pub start_realtime_ns: i64,
    pub total: Window,
    pub current: Window,
    pub steps: Vec<Window>,
    pub failures: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    pub first_response: Histogram<u64>,
    pub answer_relay: Histogram<u64>,
    pub talk: Histogram<u64>,
    /// Answered calls' waits, for the service level against a threshold known at the end.
    pub answered_waits_ms: Vec<f64>,
    pub media: [MediaAgg; 2],
    pub gaps: Vec<GapEvent>,
    pub agents: AgentCounters,
    pub intervals: Vec<IntervalRow>,
    pub dtmf_calls: u64,
    /// Calls that reached the queue: a first response with SDP, or answered without one.
    pub queued: u64,
    /// Calls still up when the run ended, hung up by the harness.
    pub hung_up_at_end: u64,
    /// Calls whose INVITE went to another target after the first never answered.
    pub rerouted: u64,
    /// Every hotline call, as the harness made it.
    pub hotline: Vec<crate::hotline::Expect>,
    calls_csv: Option<BufWriter<File>>,
    hooks_fired: Vec<String>,
}

/// Gap events kept for the report's scatter plot; beyond this only counts and maxima grow.
const MAX_GAP_EVENTS: usize = 100_000;

impl Recorder {
    pub fn new(steps: usize, calls_csv: Option<&Path>) -> std::io::Result<Recorder> {
        let calls_csv = match calls_csv {
            Some(p) => {
                let mut w = BufWriter::new(File::create(p)?);
                writeln!(
                    w,
                    "n,call_id,target,did,queue,offered_at_s,outcome,cause,first_response_ms,\
                     setup_ms,wait_ms,answer_relay_ms,talk_ms,agent,hangup_by,rtp_received,\
                     rtp_lost,jitter_ms,max_gap_ms,first_packet_ms"
                )?;
                Some(w)
            }
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            start_realtime_ns: sys::realtime_ns(),
            total: Window::default(),
            current: Window::default(),
            steps: vec![Window::default(); steps.max(1)],
            failures: BTreeMap::new(),
            drops: BTreeMap::new(),
            first_response: histogram(),
            answer_relay: histogram(),
            talk: histogram(),
            answered_waits_ms: Vec::new(),
            media: [MediaAgg::default(), MediaAgg::default()],
            gaps: Vec::new(),
            agents: AgentCounters::default(),
            intervals: Vec::new(),
            dtmf_calls: 0,
            queued: 0,
            hung_up_at_end: 0,
            rerouted: 0,
            hotline: Vec::new(),
            calls_csv,
            hooks_fired: Vec::new(),
        })
    }

    /// Restarts the clock: arrivals begin now.
    pub fn restart_clock(&mut self) {
        self.start = Instant::now();
        self.start_realtime_ns = sys::realtime_ns();
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn windows(&mut self, step: usize) -> [&mut Window; 3] {
        let last = self.steps.len() - 1;
        let step = &mut self.steps[step.min(last)];
        [&mut self.total, &mut self.current, step]
    }

    pub fn offered(&mut self, step: usize) {
        for w in self.windows(step) {
            w.offered += 1;
        }
    }

    /// An arrival the harness could not place (its concurrency cap): offered and failed, with
    /// the cause saying whose limit it was.
    pub fn harness_limited(&mut self, step: usize) {
        for w in self.windows(step) {
            w.offered += 1;
            w.harness_limited += 1;
        }
        *self.failures.entry("harness-limit".into()).or_default() += 1;
    }

    pub fn answered(&mut self, step: usize, setup_ms: f64, wait_ms: Option<f64>) {
        for w in self.windows(step) {
            w.answered += 1;
            record_ms(&mut w.setup, setup_ms);
            if let Some(wait) = wait_ms {
                record_ms(&mut w.wait, wait);
            }
        }
        self.answered_waits_ms.push(wait_ms.unwrap_or(0.0));
    }

    pub fn first_response(&mut self, ms: f64) {
        record_ms(&mut self.first_response, ms);
    }

    pub fn answer_relay(&mut self, ms: f64) {
        record_ms(&mut self.answer_relay, ms);
    }

    /// A finished call (its caller leg's media, if any, already merged in).
    pub fn finished(&mut self, call: &CallRecord) {
        match &call.outcome {
            Outcome::Answered => {}
            Outcome::Abandoned => {
                for w in self.windows(call.step) {
                    w.abandoned += 1;
                }
            }
            Outcome::Failed(cause) => {
                for w in self.windows(call.step) {
                    w.failed += 1;
                }
                *self.failures.entry(cause.clone()).or_default() += 1;
            }
            Outcome::Dropped(cause) => {
                for w in self.windows(call.step) {
                    w.dropped += 1;
                }
                *self.drops.entry(cause.clone()).or_default() += 1;
            }
        }
        if let Some(t) = call.talk_ms {
            record_ms(&mut self.talk, t);
        }
        if call.dtmf_sent {
            self.dtmf_calls += 1;
        }
        if let Some(m) = &call.media {
            self.leg_media(Side::Caller, m);
        }
        if let Some(w) = self.calls_csv.as_mut() {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
            let m = call.media.unwrap_or_default();
            // A failed write loses a line of the per-call log, never the run.
            let _ = writeln!(
                w,
                "{},{},{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.1},{}",
                call.n,
                call.call_id,
                call.target,
                call.did,
                call.queue,
                call.offered_at,
                call.outcome.label(),
                call.outcome.cause(),
                opt(call.first_response_ms),
                opt(call.setup_ms),
                opt(call.wait_ms),
                opt(call.answer_relay_ms),
                opt(call.talk_ms),
                call.agent.as_deref().unwrap_or(""),
                call.hangup_by.map_or("", |s| match s {
                    Side::Caller => "caller",
                    Side::Agent => "agent",
                }),
                m.received,
                m.lost,
                m.jitter_ms,
                m.max_gap_ms,
                opt(m.first_packet_ms),
            );
        }
    }

    /// A finished leg's media figures.
    pub fn leg_media(&mut self, side: Side, r: &LegReport) {
        self.media[side as usize].add(r);
        for w in [&mut self.total, &mut self.current] {
            w.rtp_expected += r.expected;
            w.rtp_lost += r.lost;
        }
    }

    /// A silence of `gap_ms` on a `side` leg ended at `at_realtime_ns`.
    pub fn media_gap(&mut self, side: Side, at_realtime_ns: i64, gap_ms: f64) {
        let at_s = (at_realtime_ns - self.start_realtime_ns) as f64 / 1e9;
        for w in [&mut self.total, &mut self.current] {
            w.gap_events += 1;
            w.max_gap_ms = w.max_gap_ms.max(gap_ms);
        }
        if self.gaps.len() < MAX_GAP_EVENTS {
            self.gaps.push(GapEvent { at_s, gap_ms, side });
        }
    }

    pub fn hook_fired(&mut self, name: &str) {
        self.hooks_fired.push(name.to_owned());
    }

    /// Closes the current interval of `secs` seconds ending at `t_s`.
    pub fn roll(&mut self, t_s: f64, secs: f64, gauges: Gauges) -> IntervalRow {
        let w = std::mem::take(&mut self.current);
        let s = Percentiles::of(&w.setup);
        let wait = Percentiles::of(&w.wait);
        let row = IntervalRow {
            t_s,
            offered: w.offered,
            answered: w.answered,
            abandoned: w.abandoned,
            failed: w.failed,
            dropped: w.dropped,
            offered_cps: w.offered as f64 / secs,
            achieved_cps: w.answered as f64 / secs,
            setup_p50_ms: s.p50,
            setup_p99_ms: s.p99,
            setup_max_ms: s.max,
            wait_p50_ms: wait.p50,
            wait_max_ms: wait.max,
            max_gap_ms: w.max_gap_ms,
            gap_events: w.gap_events,
            rtp_loss_pct: if w.rtp_expected > 0 {
                w.rtp_lost as f64 * 100.0 / w.rtp_expected as f64
            } else {
                0.0
            },
            gauges,
            hooks: std::mem::take(&mut self.hooks_fired).join(" | "),
        };
        self.intervals.push(row.clone());
        row
    }

    pub fn flush_calls(&mut self) {
        if let Some(w) = self.calls_csv.as_mut() {
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(outcome: Outcome) -> CallRecord {
        CallRecord {
            n: 1,
            call_id: "c1".into(),
            target: "127.0.0.1:5060".parse().unwrap(),
            did: "1000".into(),
            queue: "q".into(),
            offered_at: 0.5,
            step: 0,
            first_response_ms: Some(2.0),
            setup_ms: Some(10.0),
            wait_ms: Some(8.0),
            answer_relay_ms: None,
            talk_ms: Some(1000.0),
            agent: Some("2001".into()),
            hangup_by: Some(Side::Caller),
            outcome,
            dtmf_sent: false,
            media: Some(LegReport {
                received: 50,
                expected: 50,
                ..LegReport::default()
            }),
        }
    }

    #[test]
    fn outcomes_land_in_their_windows() {
        let mut r = Recorder::new(2, None).unwrap();
        r.offered(0);
        r.offered(1);
        r.offered(1);
        r.harness_limited(1);
        r.answered(1, 10.0, Some(8.0));
        r.finished(&call(Outcome::Answered));
        let mut failed = call(Outcome::Failed("sip-503".into()));
        failed.step = 1;
        r.finished(&failed);
        assert_eq!(r.total.offered, 4);
        assert_eq!(r.steps[1].offered, 3);
        assert_eq!(r.steps[1].failed, 1);
        assert_eq!(r.failures.get("sip-503"), Some(&1));
        assert_eq!(r.failures.get("harness-limit"), Some(&1));
        assert_eq!(r.media[Side::Caller as usize].received, 100);
        let row = r.roll(1.0, 1.0, Gauges::default());
        assert_eq!((row.offered, row.answered, row.failed), (4, 1, 1));
        assert!((row.setup_p50_ms - 10.0).abs() < 0.1);
        // The next interval starts empty; totals stay.
        let row = r.roll(2.0, 1.0, Gauges::default());
        assert_eq!(row.offered, 0);
        assert_eq!(r.total.answered, 1);
    }
}

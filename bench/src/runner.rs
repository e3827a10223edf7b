//! One run of a scenario: agents register, callers arrive for the scenario's duration, calls
//! drain, the cluster's own figures are fetched, and the results are written and judged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use switchyard_sip::sdp::Codec;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::agent::{AgentConfig, AgentSpec, Agents, Behaviour};
use crate::arrivals::Arrivals;
use crate::caller::{CallerConfig, Callers};
use crate::hooks;
use crate::hotline::{self, Rules};
use crate::media::MediaEngine;
use crate::monitor::{LoopLag, Monitor};
use crate::report::{self, Summary};
use crate::scenario::{CodecName, Process, Scenario};
use crate::server::{self, ServerView};
use crate::stats::{Gauges, Recorder};
use crate::summary;
use crate::sys;
use crate::ua::{self, CallBook, Control};

/// After arrivals and draining, calls still up get this long to hang up cleanly.
const HANG_UP_GRACE: Duration = Duration::from_secs(10);

pub struct RunOptions {
    pub scenario: Scenario,
    pub scenario_file: String,
    pub targets: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub out: PathBuf,
    /// Callers ring the harness's own agents directly: measures the harness alone.
    pub loopback: bool,
    pub watch: Vec<u32>,
    pub pid_dir: Option<PathBuf>,
    pub register_rate: f64,
    pub t1: Duration,
    /// No progress lines (tests).
    pub quiet: bool,
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Arriving,
    Draining(Instant),
    HangingUp(Instant),
    Aborted,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Summary> {
    let s = &opts.scenario;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    if let Err(e) = sys::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
    let seed = s.seed.unwrap_or_else(rand::random);
    // The tag must differ between runs even with a fixed seed: the cross-check selects the
    // node's records by it.
    let run_tag = format!("sb{:08x}", rand::random::<u32>());
    let arrivals = Arrivals::new(s, StdRng::seed_from_u64(seed ^ 0xA11));
    let stairs = arrivals.steps();
    let recorder = Arc::new(Mutex::new(Recorder::new(
        stairs.len().max(1),
        Some(&opts.out.join("calls.csv")),
    )?));
    let media = if s.media.enabled {
        Some(Arc::new(MediaEngine::start(
            recorder.clone(),
            s.media.gap_threshold.0,
            s.media.threads,
        )?))
    } else {
        None
    };
    let lag = Arc::new(LoopLag::default());
    lag.spawn();

    let agent_socket = sip_socket(s.media.bind_ip)?;
    let caller_socket = sip_socket(s.media.bind_ip)?;
    let agent_addr = agent_socket.local_addr()?;
    let targets = if opts.loopback {
        vec![agent_addr]
    } else {
        opts.targets.clone()
    };
    if targets.is_empty() {
        bail!(
            "no targets: give --target HOST:PORT (or targets.sip in the scenario), or --loopback"
        );
    }

    let mut specs = Vec::new();
    for (g, group) in s.agent_groups.iter().enumerate() {
        for ext in group.first_extension..group.first_extension + group.count {
            let ext = ext.to_string();
            specs.push(AgentSpec {
                password: group.password.replace("{ext}", &ext),
                ext,
                group: g,
                registrar: targets[specs.len() % targets.len()],
            });
        }
    }
    let scale = s.time_scale;
    let groups = s
        .agent_groups
        .iter()
        .map(|g| Behaviour {
            answer_delay: g.answer_delay.scaled(scale),
            wrap_up: g.wrap_up.scaled(scale),
            digest: g.digest,
            expires: g.register_expires,
        })
        .collect();
    let loopback_extensions = opts
        .loopback
        .then(|| specs.iter().map(|a| a.ext.clone()).collect());
    let agent_count = specs.len() as u64;
    let book = Arc::new(CallBook::default());
    let agents = Agents::new(
        AgentConfig {
            agents: specs,
            groups,
            register: !opts.loopback,
            register_rate: opts.register_rate,
            strict: !opts.loopback,
            media_ip: s.media.bind_ip,
        },
        StdRng::seed_from_u64(seed ^ 0xA6E),
        media.clone(),
        recorder.clone(),
        book.clone(),
    );
    let registered = agents.registered.clone();
    let busy = agents.busy.clone();
    let (agent_tx, agent_rx) = mpsc::unbounded_channel();
    let mut agent_task = tokio::spawn(ua::run(agent_socket, agents, agent_rx, opts.t1));

    let queues = s.queues();
    let baseline = if opts.http.is_empty() {
        None
    } else {
        let (http, q) = (opts.http.clone(), queues.clone());
        match tokio::task::spawn_blocking(move || server::baseline(&http, &q)).await? {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("warning: no server-side figures: {e:#}");
                None
            }
        }
    };

    if !opts.loopback {
        wait_for_registrations(
            &registered,
            agent_count,
            opts.register_rate,
            &recorder,
            opts.quiet,
        )
        .await;
    }

    let caller_cfg = CallerConfig {
        targets: targets.clone(),
        loopback_extensions,
        dids: s
            .callers
            .dids
            .iter()
            .map(|d| (d.number.clone(), d.queue.clone()))
            .collect(),
        // Callers in loopback ring the agents directly: there is no flow to drive.
        hotline: match &s.hotline {
            Some(h) if !opts.loopback => Some(Rules::new(
                h,
                s.callers.agent_hangs_up,
                hotline::prompts_dir().as_deref(),
            )?),
            _ => None,
        },
        weights: s.callers.dids.iter().map(|d| d.weight).collect(),
        talk: s.callers.talk_time.scaled(scale),
        patience: s.callers.patience.map(|p| p.scaled(scale)),
        agent_hangs_up: s.callers.agent_hangs_up,
        codecs: s
            .callers
            .codecs
            .iter()
            .map(|c| match c {
                CodecName::Pcmu => Codec::Pcmu,
                CodecName::Pcma => Codec::Pcma,
            })
            .collect(),
        dtmf: s.callers.dtmf.as_ref().map(|d| {
            (
                d.digits.clone(),
                Duration::from_secs_f64(d.after.secs_f64() / scale),
                d.tone.0,
                d.gap.0,
            )
        }),
        invite_timeout: s.callers.invite_timeout.0,
        reroute_on_no_response: s.callers.reroute_on_no_response,
        max_concurrent: s.max_concurrent,
        media_ip: s.media.bind_ip,
        run_tag: run_tag.clone(),
    };
    let started_unix_ms = sys::realtime_ns() as u64 / 1_000_000;
    let start = {
        let mut r = lock(&recorder);
        r.restart_clock();
        r.start
    };
    let rate_arrivals = Arrivals::new(s, StdRng::seed_from_u64(seed ^ 0xA11));
    let callers = Callers::new(
        caller_cfg,
        arrivals,
        StdRng::seed_from_u64(seed ^ 0xCA1),
        start,
        media.clone(),
        recorder.clone(),
        book,
    );
    let active = callers.active.clone();
    let (caller_tx, caller_rx) = mpsc::unbounded_channel();
    let mut caller_task = tokio::spawn(ua::run(caller_socket, callers, caller_rx, opts.t1));
    let hook_results = hooks::spawn(
        &s.hooks,
        start,
        &opts.out,
        opts.pid_dir.as_deref(),
        recorder.clone(),
    );
    let mut monitor = Monitor::new(
        opts.watch.clone(),
        media.as_ref().map(|m| m.counters.clone()),
        lag,
    );

    let interval = s.interval.0;
    let arrivals_end = (!s.duration.0.is_zero()).then(|| start + s.duration.0);
    let drain = s.drain_time();
    let mut phase = Phase::Arriving;
    let mut stairs_checked = 0;
    let stair_limit = s
        .pass
        .max_failed_pct
        .unwrap_or(crate::summary::DEFAULT_STAIR_FAILED_PCT);
    let mut interrupted = false;
    let mut next_roll = start + interval;
    let mut last_roll = start;
    let mut callers_done = false;
    let mut arrival_s = 0.0;
    while !callers_done {
        tokio::select! {
            () = tokio::time::sleep_until(next_roll.into()) => {
                let now = Instant::now();
                let t = now.duration_since(start).as_secs_f64();
                let target = if phase == Phase::Arriving { rate_arrivals.rate_at(t) } else { 0.0 };
                let row = roll(&recorder, &mut monitor, now, last_roll, start, target,
                               active.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
                if !opts.quiet {
                    eprintln!("{}", progress(&row, &lock(&recorder)));
                }
                last_roll = now;
                next_roll += interval;
            }
            signal = tokio::signal::ctrl_c() => {
                if signal.is_err() {
                    continue;
                }
                interrupted = true;
                if matches!(phase, Phase::HangingUp(_) | Phase::Aborted) {
                    eprintln!("second interrupt: giving up on the calls still up");
                    let _ = caller_tx.send(Control::Abort);
                    phase = Phase::Aborted;
                } else {
                    eprintln!("interrupted: hanging up every call (Ctrl-C again to stop at once)");
                    arrival_s = start.elapsed().as_secs_f64();
                    let _ = caller_tx.send(Control::HangUpAll);
                    phase = Phase::HangingUp(Instant::now() + HANG_UP_GRACE);
                }
            }
            joined = &mut caller_task => {
                callers_done = true;
                if let Err(e) = joined {
                    eprintln!("caller task failed: {e}");
                }
            }
        }
        let now = Instant::now();
        match phase {
            Phase::Arriving => {
                let t = now.duration_since(start).as_secs_f64();
                let failed_stair = if s.arrivals.stop_on_failure {
                    failing_stair(
                        &lock(&recorder),
                        &stairs,
                        &mut stairs_checked,
                        t,
                        stair_limit,
                    )
                } else {
                    None
                };
                if let Some((k, pct)) = failed_stair {
                    eprintln!(
                        "stair {k} ({:.0} calls/s) failed {pct:.2}% of its calls (limit {stair_limit}%): \
                         stopping the ramp",
                        stairs[k].2
                    );
                    arrival_s = t;
                    let _ = caller_tx.send(Control::StopArrivals);
                    phase = Phase::Draining(now + drain);
                } else if let Some(end) = arrivals_end
                    && now >= end
                {
                    arrival_s = s.duration.secs_f64();
                    let _ = caller_tx.send(Control::StopArrivals);
                    phase = Phase::Draining(end + drain);
                }
            }
            Phase::Draining(deadline) if now >= deadline => {
                eprintln!(
                    "drain time ({}) over: hanging up {} calls still up",
                    crate::duration::format_duration(drain),
                    active.load(Ordering::Relaxed)
                );
                let _ = caller_tx.send(Control::HangUpAll);
                phase = Phase::HangingUp(now + HANG_UP_GRACE);
            }
            Phase::HangingUp(deadline) if now >= deadline => {
                let _ = caller_tx.send(Control::Abort);
                phase = Phase::Aborted;
            }
            _ => {}
        }
    }
    if arrival_s == 0.0 {
        arrival_s = start.elapsed().as_secs_f64();
    }
    let now = Instant::now();
    if now.duration_since(last_roll) > Duration::from_millis(100) {
        roll(
            &recorder,
            &mut monitor,
            now,
            last_roll,
            start,
            0.0,
            active.load(Ordering::Relaxed),
            busy.load(Ordering::Relaxed),
        );
    }
    let wall_s = start.elapsed().as_secs_f64();

    // Agents hang up what is left and un-register.
    let _ = agent_tx.send(Control::HangUpAll);
    if tokio::time::timeout(HANG_UP_GRACE, &mut agent_task)
        .await
        .is_err()
    {
        let _ = agent_tx.send(Control::Abort);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut agent_task).await;
    }
    // Legs removed last report on the media thread; it handles commands in order.
    let tick_lag = media.as_ref().and_then(|m| m.shutdown());
    let send_errors = media
        .as_ref()
        .map_or(0, |m| m.counters.send_errors.load(Ordering::Relaxed));

    let server_view: Option<ServerView> = match baseline {
        Some(base) => {
            let (expected, digits, flow) = {
                let r = lock(&recorder);
                (
                    r.total.answered + r.total.abandoned,
                    s.callers.dtmf.as_ref().map(|d| d.digits.clone()),
                    s.hotline
                        .as_ref()
                        .map(|h| (h.flow.clone(), r.hotline.clone())),
                )
            };
            let tag = run_tag.clone();
            Some(
                tokio::task::spawn_blocking(move || {
                    server::collect(
                        &base,
                        &tag,
                        digits.as_deref(),
                        flow.as_ref().map(|(f, e)| (f.as_str(), &e[..])),
                        expected,
                        Duration::from_secs(10),
                    )
                })
                .await?,
            )
        }
        None => None,
    };
    let results = hook_results.lock().map(|h| h.clone()).unwrap_or_default();
    let mut r = lock(&recorder);
    r.flush_calls();
    let summary = summary::build(summary::Inputs {
        scenario: s,
        scenario_file: &opts.scenario_file,
        targets: &targets,
        http: &opts.http,
        loopback: opts.loopback,
        recorder: &r,
        stairs: &stairs,
        run_tag,
        started_unix_ms,
        wall_s,
        arrival_s,
        interrupted,
        server: server_view,
        tick_lag,
        send_errors,
        hooks: results,
        watched: monitor.watched_pids().to_vec(),
        ramp: s.arrivals.process == Process::Ramp,
    });
    report::write_all(&opts.out, &summary, &r.intervals, &r.gaps)?;
    Ok(summary)
}

/// A stair's calls have this long after it ends to fail before it is judged.
const STAIR_SETTLE_S: f64 = 3.0;

/// The first stair, ended at least [`STAIR_SETTLE_S`] before `t` and not judged yet, that
/// failed more than `limit` percent of its calls, with that share. Stairs judged are counted
/// in `checked`.
fn failing_stair(
    r: &Recorder,
    stairs: &[(f64, f64, f64)],
    checked: &mut usize,
    t: f64,
    limit: f64,
) -> Option<(usize, f64)> {
    while let Some(&(_, end, _)) = stairs.get(*checked) {
        if t < end + STAIR_SETTLE_S {
            return None;
        }
        let k = *checked;
        *checked += 1;
        let w = r.steps.get(k)?;
        let failed = w.failed + w.dropped + w.harness_limited;
        if w.offered > 0 {
            let pct = failed as f64 * 100.0 / w.offered as f64;
            if pct > limit {
                return Some((k, pct));
            }
        }
    }
    None
}

/// SIP buffer size asked of the kernel (see `sys::set_buffer_sizes`).
const SIP_BUFFER: usize = 4 << 20;

/// A UDP socket for one side's SIP, with large buffers.
fn sip_socket(ip: std::net::IpAddr) -> anyhow::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    if let Err(e) = sys::set_buffer_sizes(&socket, SIP_BUFFER) {
        eprintln!("warning: cannot enlarge SIP socket buffers: {e}");
    }
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket)?)
}

fn lock(recorder: &Arc<Mutex<Recorder>>) -> std::sync::MutexGuard<'_, Recorder> {
    // A panic while holding the lock leaves counters that are still worth reporting.
    recorder.lock().unwrap_or_else(|p| p.into_inner())
}

#[allow(clippy::too_many_arguments)]
fn roll(
    recorder: &Arc<Mutex<Recorder>>,
    monitor: &mut Monitor,
    now: Instant,
    last: Instant,
    start: Instant,
    target_cps: f64,
    active: u64,
    busy: u64,
) -> crate::stats::IntervalRow {
    let (load, watched) = monitor.sample();
    let gauges = Gauges {
        active_calls: active,
        busy_agents: busy,
        target_cps,
        harness_cpu_pct: load.cpu_pct,
        busiest_thread: load.busiest_thread.clone(),
        busiest_thread_pct: load.busiest_thread_pct,
        tick_lag_max_ms: load.tick_lag_max_ms,
        late_ticks: load.late_ticks,
        loop_lag_max_ms: load.loop_lag_max_ms,
        saturated: load.saturated(),
        descheduled: load.descheduled(),
        saturation: if load.saturated() || load.descheduled() {
            load.reason()
        } else {
            String::new()
        },
        watched_cpu_pct: watched.cpu_pct,
        watched_rss_mib: watched.rss_bytes as f64 / 1048576.0,
        watched_fds: watched.fds,
        harness_rss_mib: load.rss_mib,
        harness_fds: load.fds,
    };
    let secs = now.duration_since(last).as_secs_f64().max(1e-3);
    let t = now.duration_since(start).as_secs_f64();
    lock(recorder).roll(t, secs, gauges)
}

fn progress(row: &crate::stats::IntervalRow, r: &Recorder) -> String {
    let g = &row.gauges;
    let t = &r.total;
    let mut line = format!(
        "[{:>5.0}s] {:>6.1}/{:<6.1} cps (target {:.1}) | active {:>4} busy agents {:>4} | ans {} abn {} fail {}{} | setup p50 {:.1} p99 {:.1} ms | cpu {:.0}% ({} {:.0}%) tick lag {:.1} ms",
        row.t_s,
        row.offered_cps,
        row.achieved_cps,
        g.target_cps,
        g.active_calls,
        g.busy_agents,
        t.answered,
        t.abandoned,
        t.failed + t.harness_limited,
        if t.dropped > 0 {
            format!(" drop {}", t.dropped)
        } else {
            String::new()
        },
        row.setup_p50_ms,
        row.setup_p99_ms,
        g.harness_cpu_pct,
        g.busiest_thread,
        g.busiest_thread_pct,
        g.tick_lag_max_ms,
    );
    if row.max_gap_ms > 0.0 {
        line.push_str(&format!(" | gap max {:.0} ms", row.max_gap_ms));
    }
    if g.saturated {
        line.push_str(&format!(" | HARNESS SATURATED: {}", g.saturation));
    } else if g.descheduled {
        line.push_str(&format!(" | harness descheduled: {}", g.saturation));
    }
    line
}

async fn wait_for_registrations(
    registered: &Arc<std::sync::atomic::AtomicU64>,
    count: u64,
    rate: f64,
    recorder: &Arc<Mutex<Recorder>>,
    quiet: bool,
) {
    let timeout = Duration::from_secs_f64((count as f64 / rate.max(1.0)) * 2.0 + 20.0);
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    loop {
        let n = registered.load(Ordering::Relaxed);
        if n >= count {
            if !quiet {
                eprintln!("{count} agents registered");
            }
            return;
        }
        if Instant::now() >= deadline {
            let failures = lock(recorder).agents.register_failures.clone();
            eprintln!(
                "warning: only {n} of {count} agents registered after {}s (failures: {failures:?}); starting anyway",
                timeout.as_secs()
            );
            return;
        }
        if !quiet && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("registering agents: {n}/{count}");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stair_is_judged_once_after_it_settles() {
        let mut r = Recorder::new(3, None).unwrap();
        let stairs = [(0.0, 10.0, 100.0), (10.0, 20.0, 200.0), (20.0, 30.0, 300.0)];
        for _ in 0..1000 {
            r.offered(0);
            r.offered(1);
        }
        r.harness_limited(1);
        r.harness_limited(1);
        let mut checked = 0;
        assert_eq!(failing_stair(&r, &stairs, &mut checked, 12.0, 0.1), None);
        assert_eq!(checked, 0, "stair 0 still settling");
        assert_eq!(failing_stair(&r, &stairs, &mut checked, 13.5, 0.1), None);
        assert_eq!(checked, 1, "stair 0 passed");
        let (k, pct) = failing_stair(&r, &stairs, &mut checked, 23.5, 0.1).unwrap();
        assert_eq!(k, 1);
        assert!((pct - 2.0 * 100.0 / 1002.0).abs() < 1e-9);
        assert_eq!(failing_stair(&r, &stairs, &mut checked, 40.0, 0.1), None);
    }
}

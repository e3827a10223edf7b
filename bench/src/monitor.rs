//! The harness watching itself (and the processes it is told to watch): CPU per thread from
//! `/proc/self/task`, the media tick's lateness, the SIP runtime's lag, and the memory, CPU
//! and open files of watched processes (the nodes, for soak runs).
//!
//! Saturation rule (the issue's): a harness thread above 90% of a core, or the RTP tick (or
//! the runtime) late by more than 5 ms on more than 1% of its ticks in an interval. Then the
//! latencies and gaps it reports may be its own, and it says so.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::media::{LATE_TICK, MediaCounters};

/// Busiest-thread CPU above which the harness is saturated.
pub const SATURATED_THREAD_PCT: f64 = 90.0;
/// Late RTP ticks above this share of an interval: the harness's own sending was bursty.
const LATE_TICK_SHARE: f64 = 0.01;
/// Late runtime probes above this share: SIP handling (and so set-up times) was delayed.
/// Higher than for ticks: the probe wakes only 100 times a second, so one hiccup is 1%.
const LATE_PROBE_SHARE: f64 = 0.05;
/// Late ticks while every harness thread stays under this share of a core mean the harness
/// did not get a CPU rather than had too much to do (descheduled, not saturated).
const DESCHEDULED_BELOW_PCT: f64 = 50.0;
/// How often the runtime lag probe wakes.
const PROBE_EVERY: Duration = Duration::from_millis(10);

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// utime + stime (ticks) and RSS (pages) from a `stat` file.
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss: u64 = f.get(21)?.parse().ok()?;
    Some((utime + stime, rss))
}

/// One watched process at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub fds: u64,
}

pub fn sample_pid(pid: u32) -> Option<ProcSample> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (cpu_ticks, rss_pages) = parse_stat(&text)?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Some(ProcSample {
        cpu_ticks,
        rss_bytes: rss_pages * page_size(),
        fds,
    })
}

/// The harness's own load over one interval.
#[derive(Debug, Clone, Default)]
pub struct SelfLoad {
    pub cpu_pct: f64,
    pub busiest_thread: String,
    pub busiest_thread_pct: f64,
    pub tick_lag_max_ms: f64,
    pub late_ticks: u64,
    pub ticks: u64,
    pub loop_lag_max_ms: f64,
    pub late_probes: u64,
    pub probes: u64,
    pub rss_mib: f64,
    pub fds: u64,
}

impl SelfLoad {
    fn rtp_late(&self) -> bool {
        self.ticks > 0 && self.late_ticks as f64 > LATE_TICK_SHARE * self.ticks as f64
    }

    fn sip_late(&self) -> bool {
        self.probes > 0 && self.late_probes as f64 > LATE_PROBE_SHARE * self.probes as f64
    }

    /// The harness itself is the bottleneck: a thread near a full core, or late while busy.
    pub fn saturated(&self) -> bool {
        self.busiest_thread_pct > SATURATED_THREAD_PCT
            || (self.busiest_thread_pct >= DESCHEDULED_BELOW_PCT
                && (self.rtp_late() || self.sip_late()))
    }

    /// Late although no thread was busy: the harness waited for a CPU (the machine, often
    /// the node under test on the same cores, was busy). Its timings in the interval include
    /// that wait.
    pub fn descheduled(&self) -> bool {
        !self.saturated() && (self.rtp_late() || self.sip_late())
    }

    /// Why, in words, when saturated or descheduled.
    pub fn reason(&self) -> String {
        let mut why = Vec::new();
        if self.busiest_thread_pct > SATURATED_THREAD_PCT {
            why.push(format!(
                "thread {} at {:.0}% of a core",
                self.busiest_thread, self.busiest_thread_pct
            ));
        }
        if self.rtp_late() {
            why.push(format!(
                "RTP tick late > 5 ms on {} of {} ticks (max {:.1} ms)",
                self.late_ticks, self.ticks, self.tick_lag_max_ms
            ));
        }
        if self.sip_late() {
            why.push(format!(
                "SIP runtime late > 5 ms on {} of {} probes (max {:.1} ms)",
                self.late_probes, self.probes, self.loop_lag_max_ms
            ));
        }
        if self.descheduled() {
            why.push(format!(
                "busiest thread only {:.0}%: the harness was waiting for a CPU",
                self.busiest_thread_pct
            ));
        }
        why.join("; ")
    }
}

/// Lateness of the tokio runtime, measured by a task that asks to wake every 10 ms.
#[derive(Debug, Default)]
pub struct LoopLag {
    max_us: AtomicU64,
    late: AtomicU64,
    probes: AtomicU64,
}

impl LoopLag {
    /// Runs the probe until the runtime shuts down.
    pub fn spawn(self: &Arc<Self>) {
        let lag = self.clone();
        tokio::spawn(async move {
            let mut due = Instant::now() + PROBE_EVERY;
            loop {
                tokio::time::sleep_until(due.into()).await;
                let late = Instant::now().saturating_duration_since(due);
                lag.max_us
                    .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                lag.probes.fetch_add(1, Ordering::Relaxed);
                if late > LATE_TICK {
                    lag.late.fetch_add(1, Ordering::Relaxed);
                }
                due = Instant::now() + PROBE_EVERY;
            }
        });
    }
}

/// Samples the harness and watched processes once per interval.
pub struct Monitor {
    tck: f64,
    last_at: Instant,
    threads: HashMap<u32, u64>,
    process_ticks: u64,
    watched: Vec<u32>,
    watched_ticks: HashMap<u32, u64>,
    media: Option<Arc<MediaCounters>>,
    lag: Arc<LoopLag>,
    media_ticks: u64,
    media_late: u64,
}

/// Watched processes over one interval, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchedLoad {
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    pub alive: usize,
}

impl Monitor {
    pub fn new(watched: Vec<u32>, media: Option<Arc<MediaCounters>>, lag: Arc<LoopLag>) -> Self {
        let mut m = Monitor {
            tck: clock_ticks(),
            last_at: Instant::now(),
            threads: HashMap::new(),
            process_ticks: 0,
            watched,
            watched_ticks: HashMap::new(),
            media,
            lag,
            media_ticks: 0,
            media_late: 0,
        };
        // Prime the counters so the first interval reports a delta.
        m.sample();
        m
    }

    pub fn watched_pids(&self) -> &[u32] {
        &self.watched
    }

    /// Loads since the previous call.
    pub fn sample(&mut self) -> (SelfLoad, WatchedLoad) {
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        self.last_at = now;
        let pct = |ticks: u64| ticks as f64 / self.tck / secs * 100.0;

        let mut load = SelfLoad::default();
        let mut threads = HashMap::new();
        if let Ok(dir) = fs::read_dir("/proc/self/task") {
            for entry in dir.flatten() {
                let Some(tid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Some((ticks, _)) = fs::read_to_string(entry.path().join("stat"))
                    .ok()
                    .and_then(|t| parse_stat(&t))
                else {
                    continue;
                };
                let before = self.threads.get(&tid).copied().unwrap_or(ticks);
                let p = pct(ticks.saturating_sub(before));
                if p > load.busiest_thread_pct {
                    load.busiest_thread_pct = p;
                    load.busiest_thread = fs::read_to_string(entry.path().join("comm"))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default();
                }
                threads.insert(tid, ticks);
            }
        }
        self.threads = threads;
        if let Some(s) = sample_pid(std::process::id()) {
            load.cpu_pct = pct(s.cpu_ticks.saturating_sub(self.process_ticks));
            self.process_ticks = s.cpu_ticks;
            load.rss_mib = s.rss_bytes as f64 / 1048576.0;
            load.fds = s.fds;
        }
        if let Some(m) = &self.media {
            let ticks = m.ticks.load(Ordering::Relaxed);
            let late = m.late_ticks.load(Ordering::Relaxed);
            load.ticks = ticks - self.media_ticks.min(ticks);
            load.late_ticks = late - self.media_late.min(late);
            self.media_ticks = ticks;
            self.media_late = late;
            load.tick_lag_max_ms = m.max_lag_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        }
        load.loop_lag_max_ms = self.lag.max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        load.late_probes = self.lag.late.swap(0, Ordering::Relaxed);
        load.probes = self.lag.probes.swap(0, Ordering::Relaxed);

        let mut watched = WatchedLoad::default();
        for &pid in &self.watched {
            let Some(s) = sample_pid(pid) else {
                continue;
            };
            let before = self.watched_ticks.get(&pid).copied().unwrap_or(s.cpu_ticks);
            watched.cpu_pct += pct(s.cpu_ticks.saturating_sub(before));
            watched.rss_bytes += s.rss_bytes;
            watched.fds += s.fds;
            watched.alive += 1;
            self.watched_ticks.insert(pid, s.cpu_ticks);
        }
        (load, watched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "123 (a) b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 2000000 512 rest";
        assert_eq!(parse_stat(line), Some((300, 512)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn saturation_rule() {
        let mut l = SelfLoad {
            busiest_thread: "bench-media".into(),
            busiest_thread_pct: 50.0,
            ticks: 1000,
            late_ticks: 5,
            probes: 100,
            ..SelfLoad::default()
        };
        assert!(!l.saturated() && !l.descheduled());
        l.late_ticks = 20;
        assert!(l.saturated(), "late while half a core busy");
        assert!(l.reason().contains("RTP tick"));
        l.busiest_thread_pct = 10.0;
        assert!(!l.saturated() && l.descheduled(), "late while idle");
        assert!(l.reason().contains("waiting for a CPU"));
        l.late_ticks = 0;
        l.late_probes = 3;
        assert!(!l.descheduled(), "3 of 100 probes is a hiccup");
        l.late_probes = 0;
        l.busiest_thread_pct = 95.0;
        assert!(l.saturated());
        assert!(l.reason().contains("bench-media"));
    }

    #[test]
    fn samples_this_process() {
        let s = sample_pid(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0 && s.fds > 0);
    }
}

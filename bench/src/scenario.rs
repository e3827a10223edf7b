//! Scenario files (`bench/scenarios/*.toml`): who calls, how often, how agents behave, what
//! runs when, and what counts as a pass. `bench/scenarios/README.md` documents every key.
//!
//! Call behaviour (rates, talk time, patience, answer delay, wrap-up, DTMF timing) is written
//! in real-world terms; `time_scale` runs it that many times faster (durations divided, rates
//! multiplied), so a busy hour with 3-minute calls fits in a few minutes with the same offered
//! load in Erlangs. `duration`, `interval`, `drain` and hook times are wall-clock times of the
//! run and are never scaled.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::dist::Dist;
use crate::duration::Dur;
use crate::hotline::Hotline;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How long new calls arrive (wall clock); `--duration` overrides it. Zero = until Ctrl-C.
    pub duration: Dur,
    /// Call behaviour runs this many times faster than written.
    #[serde(default = "one")]
    pub time_scale: f64,
    /// Length of one row of the per-interval CSV and of the progress line's window.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// After arrivals stop, how long calls in progress may take to end before they are hung
    /// up; default: the longest talk time the scenario can produce, plus 30 s.
    pub drain: Option<Dur>,
    /// Upper bound on simultaneous calls; arrivals beyond it are counted as `harness-limit`
    /// (a harness limit, never a node failure).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Seed for arrivals and distributions; random when absent.
    pub seed: Option<u64>,
    #[serde(default)]
    pub targets: Targets,
    pub arrivals: Arrivals,
    pub callers: Callers,
    #[serde(rename = "agents")]
    pub agent_groups: Vec<AgentGroup>,
    #[serde(default)]
    pub media: Media,
    /// The IVR flow behind DIDs that name one: its menu, VIP callers and surveys.
    pub hotline: Option<Hotline>,
    /// Queue settings written into the node config when the harness starts the nodes itself
    /// (`demo`, tests); ignored for external targets.
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub watch: Watch,
    #[serde(default)]
    pub pass: Pass,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// SIP addresses of the nodes; callers are spread over them round-robin.
    #[serde(default)]
    pub sip: Vec<SocketAddr>,
    /// HTTP API addresses, for the server-side cross-check.
    #[serde(default)]
    pub http: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Process {
    /// Evenly spaced arrivals.
    Constant,
    /// Exponential inter-arrival times (a Poisson process).
    Poisson,
    /// Rate moving from `rate` to `to_rate`, continuously or in `steps` equal stairs.
    Ramp,
    /// `rate` plus `burst_calls` extra calls every `burst_every`, within `burst_within`.
    Burst,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    pub process: Process,
    /// Calls per second (real-world; multiplied by `time_scale`).
    pub rate: Option<f64>,
    /// Instead of `rate`: this fraction of the agents' capacity (agents / mean handle time).
    pub load: Option<f64>,
    /// Ramp: the final rate.
    pub to_rate: Option<f64>,
    /// Ramp: number of stairs (each `duration / steps` long); 0 or absent = continuous.
    #[serde(default)]
    pub steps: u32,
    /// Ramp: inter-arrival times are exponential around the current rate (else even).
    #[serde(default)]
    pub poisson: bool,
    /// Ramp with stairs: stop arriving once a stair fails more than `pass.max_failed_pct`
    /// (0.1% if unset) of its calls, judged 3 s after it ends; the stairs above it would only
    /// measure a collapse.
    #[serde(default = "yes")]
    pub stop_on_failure: bool,
    pub burst_calls: Option<u32>,
    pub burst_every: Option<Dur>,
    #[serde(default = "default_burst_within")]
    pub burst_within: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Did {
    pub number: String,
    /// The node's queue behind this number (for the cross-check and generated node configs);
    /// or, with `flow`, the `[hotline]` flow's menu decides it.
    pub queue: Option<String>,
    pub flow: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CodecName {
    #[serde(rename = "PCMU")]
    Pcmu,
    #[serde(rename = "PCMA")]
    Pcma,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callers {
    pub dids: Vec<Did>,
    pub talk_time: Dist,
    /// How long a caller waits for an answer before hanging up (CANCEL); absent = forever.
    pub patience: Option<Dist>,
    /// Fraction of answered calls the agent ends (the rest the caller ends).
    #[serde(default)]
    pub agent_hangs_up: f64,
    /// Offered codecs, in order.
    #[serde(default = "default_codecs")]
    pub codecs: Vec<CodecName>,
    /// Keys pressed (RFC 4733) after the call is queued, as an IVR caller would.
    pub dtmf: Option<Dtmf>,
    /// No response at all to an INVITE within this long: the call fails (`no-response`) and
    /// the target is skipped for a while (a node that died). Wall clock.
    #[serde(default = "default_invite_timeout")]
    pub invite_timeout: Dur,
    /// Instead of failing a call whose target never answered, send its INVITE to the next
    /// target, as an SBC in front of a cluster does (counted as `rerouted`).
    #[serde(default)]
    pub reroute_on_no_response: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dtmf {
    pub digits: String,
    /// Delay after the first response with SDP (the caller hears the queue).
    #[serde(default = "default_dtmf_after")]
    pub after: Dur,
    /// Length of one key press and the pause after it (real time; never scaled: RFC 4733
    /// receivers need realistic tone lengths).
    #[serde(default = "default_dtmf_tone")]
    pub tone: Dur,
    #[serde(default = "default_dtmf_tone")]
    pub gap: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DigestPreference {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroup {
    pub count: u32,
    pub first_extension: u32,
    /// Password; `{ext}` is replaced by the extension.
    #[serde(default = "default_password")]
    pub password: String,
    /// Queues these agents serve (written into generated node configs).
    pub skills: Vec<String>,
    #[serde(default = "zero_dist")]
    pub answer_delay: Dist,
    /// Time after a call before the phone answers again (an INVITE arriving meanwhile rings
    /// until wrap-up ends).
    #[serde(default = "zero_dist")]
    pub wrap_up: Dist,
    /// Digest algorithm answered when the node offers several challenges.
    #[serde(default = "default_digest")]
    pub digest: DigestPreference,
    /// REGISTER Expires (seconds); refreshed at half of it.
    #[serde(default = "default_expires")]
    pub register_expires: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// Send and measure RTP on every leg.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address the harness's RTP (and SIP) sockets bind to.
    #[serde(default = "default_ip")]
    pub bind_ip: IpAddr,
    /// A silence longer than this on a leg counts as a gap event (plotted over time).
    #[serde(default = "default_gap_threshold")]
    pub gap_threshold: Dur,
    /// Media threads (each carries about a thousand calls with media on one core).
    #[serde(default = "one_usize")]
    pub threads: usize,
}

impl Default for Media {
    fn default() -> Self {
        Media {
            enabled: true,
            bind_ip: default_ip(),
            gap_threshold: default_gap_threshold(),
            threads: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    #[serde(default = "default_node_service_level")]
    pub service_level: Dur,
    #[serde(default)]
    pub wrap_up: Dur,
    #[serde(default = "default_offer_timeout")]
    pub offer_timeout: Dur,
    #[serde(default = "default_max_wait")]
    pub max_wait: Dur,
    /// Queue recordings on (the node writes a WAV per answered call).
    #[serde(default)]
    pub record: bool,
    #[serde(default = "one_usize")]
    pub media_workers: usize,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            service_level: default_node_service_level(),
            wrap_up: Dur::default(),
            offer_timeout: default_offer_timeout(),
            max_wait: default_max_wait(),
            record: false,
            media_workers: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Wall-clock time since the start of arrivals.
    pub at: Dur,
    /// Shell command (`sh -c`), with `BENCH_OUT`, `BENCH_PIDS` and `BENCH_ELAPSED` set.
    pub run: String,
    /// Label in the report; defaults to the command.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// Processes whose CPU, memory and open files are sampled (plus `--watch-pid` and the
    /// nodes the harness started).
    #[serde(default)]
    pub pids: Vec<u32>,
}

/// Pass criteria; every one is optional. The run exits non-zero when one fails.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pass {
    pub max_failed_pct: Option<f64>,
    pub max_abandoned_pct: Option<f64>,
    pub min_answered_pct: Option<f64>,
    pub max_setup_p99: Option<Dur>,
    pub max_first_response_p99: Option<Dur>,
    pub min_service_level_pct: Option<f64>,
    pub max_avg_wait: Option<Dur>,
    pub max_rtp_loss_pct: Option<f64>,
    pub max_media_gap: Option<Dur>,
    pub min_achieved_cps: Option<f64>,
    /// Ramp scenarios: the highest stair passing `max_failed_pct` must reach this rate.
    pub min_sustained_cps: Option<f64>,
    /// The server-side figures must agree with the harness's (within their tolerance).
    #[serde(default)]
    pub cross_check: bool,
    /// Every call must carry the scenario's DTMF digits in its call record.
    #[serde(default)]
    pub dtmf_recorded: bool,
    pub max_rss_growth_pct: Option<f64>,
    pub max_fd_growth: Option<i64>,
    /// Fail when the harness itself was saturated (its figures are then not the node's).
    #[serde(default)]
    pub fail_if_saturated: bool,
}

/// Command-line overrides applied on top of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub agents: Option<u32>,
    pub time_scale: Option<f64>,
}

fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_max_concurrent() -> usize {
    5000
}
fn default_burst_within() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_codecs() -> Vec<CodecName> {
    vec![CodecName::Pcmu, CodecName::Pcma]
}
fn default_invite_timeout() -> Dur {
    Dur(Duration::from_secs(4))
}
fn default_dtmf_after() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_dtmf_tone() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_password() -> String {
    "pw{ext}".into()
}
fn zero_dist() -> Dist {
    Dist::constant(Duration::ZERO)
}
fn default_digest() -> DigestPreference {
    DigestPreference::Md5
}
fn default_expires() -> u32 {
    3600
}
fn default_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_gap_threshold() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_node_service_level() -> Dur {
    Dur(Duration::from_secs(20))
}
fn default_offer_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_max_wait() -> Dur {
    Dur(Duration::from_secs(600))
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("invalid scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn apply(&mut self, o: &Overrides) -> anyhow::Result<()> {
        if let Some(d) = o.duration {
            self.duration = Dur(d);
        }
        if let Some(scale) = o.time_scale {
            self.time_scale = scale;
        }
        if let Some(rate) = o.rate {
            // An explicit rate replaces a load fraction; it is given in wall-clock calls/s.
            self.arrivals.load = None;
            self.arrivals.rate = Some(rate / self.time_scale);
        }
        if let Some(n) = o.agents {
            let total: u32 = self.agent_groups.iter().map(|g| g.count).sum();
            if total == 0 {
                bail!("the scenario has no agents to scale");
            }
            // Keep the groups' proportions; the first absorbs rounding.
            let mut left = n;
            for (i, g) in self.agent_groups.iter_mut().enumerate().rev() {
                g.count = if i == 0 {
                    left
                } else {
                    let share =
                        (f64::from(g.count) * f64::from(n) / f64::from(total)).round() as u32;
                    let share = share.min(left);
                    left -= share;
                    share
                };
            }
        }
        self.validate()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            bail!("time_scale must be > 0");
        }
        if self.interval.0 < Duration::from_millis(100) {
            bail!("interval must be at least 100ms");
        }
        let a = &self.arrivals;
        match (a.rate, a.load) {
            (Some(_), Some(_)) => bail!("arrivals: give rate or load, not both"),
            (None, None) => bail!("arrivals: give rate (calls/s) or load (fraction of agents)"),
            (Some(r), None) if !(r.is_finite() && r >= 0.0) => bail!("arrivals.rate must be >= 0"),
            (None, Some(l)) if !(l.is_finite() && l > 0.0) => bail!("arrivals.load must be > 0"),
            _ => {}
        }
        match a.process {
            Process::Ramp => {
                if a.to_rate.is_none() {
                    bail!("arrivals: a ramp needs to_rate");
                }
                if a.load.is_some() {
                    bail!("arrivals: a ramp is given in rates, not load");
                }
            }
            Process::Burst => {
                if a.burst_calls.is_none() || a.burst_every.is_none_or(|d| d.0.is_zero()) {
                    bail!("arrivals: a burst needs burst_calls and a non-zero burst_every");
                }
            }
            Process::Constant | Process::Poisson => {}
        }
        if self.callers.dids.is_empty() {
            bail!("callers.dids: at least one number to call");
        }
        if !self
            .callers
            .dids
            .iter()
            .all(|d| d.weight.is_finite() && d.weight > 0.0)
        {
            bail!("callers.dids: weights must be > 0");
        }
        if !(0.0..=1.0).contains(&self.callers.agent_hangs_up) {
            bail!("callers.agent_hangs_up is a fraction between 0 and 1");
        }
        if self.callers.codecs.is_empty() {
            bail!("callers.codecs: at least one codec");
        }
        if let Some(d) = &self.callers.dtmf
            && d.digits
                .chars()
                .any(|c| switchyard_media::dtmf::event_code(c).is_none())
        {
            bail!("callers.dtmf.digits: only 0-9 * # A-D");
        }
        if self.agent_groups.is_empty() {
            bail!("at least one [[agents]] group");
        }
        let mut extensions = BTreeSet::new();
        for g in &self.agent_groups {
            if g.skills.is_empty() {
                bail!("agents {}: skills must name a queue", g.first_extension);
            }
            if g.register_expires < 60 {
                bail!("agents.register_expires must be at least 60");
            }
            for ext in g.first_extension..g.first_extension.saturating_add(g.count) {
                if !extensions.insert(ext) {
                    bail!("agent extension {ext} appears in two groups");
                }
            }
        }
        let flow = self.hotline.as_ref().map(|h| h.flow.as_str());
        for d in &self.callers.dids {
            match (&d.queue, &d.flow) {
                (Some(_), None) => {}
                (None, Some(f)) if Some(f.as_str()) == flow => {}
                (None, Some(f)) => bail!("DID {}: flow {f:?} is not [hotline]'s", d.number),
                _ => bail!("DID {}: give queue or flow, not both", d.number),
            }
        }
        if let Some(h) = &self.hotline {
            h.validate()?;
            if !self.media.enabled {
                bail!("[hotline] callers press keys in RTP: media must be enabled");
            }
        }
        let queues = self.queues();
        let served: Vec<&String> = self
            .callers
            .dids
            .iter()
            .filter_map(|d| d.queue.as_ref())
            .chain(self.hotline.iter().flat_map(|h| h.menu.values()))
            .chain(self.hotline.as_ref().map(|h| &h.no_key_queue))
            .collect();
        for q in served {
            if !self.agent_groups.iter().any(|g| g.skills.contains(q)) {
                bail!("queue {q:?} is called but no agent group serves it");
            }
        }
        if queues.is_empty() {
            bail!("no queues");
        }
        for h in &self.hooks {
            if h.run.trim().is_empty() {
                bail!("hooks: empty command");
            }
        }
        Ok(())
    }

    /// Every queue the scenario mentions, sorted.
    pub fn queues(&self) -> Vec<String> {
        let mut q: BTreeSet<String> = self
            .callers
            .dids
            .iter()
            .filter_map(|d| d.queue.clone())
            .collect();
        if let Some(h) = &self.hotline {
            q.extend(h.queues());
        }
        for g in &self.agent_groups {
            q.extend(g.skills.iter().cloned());
        }
        q.into_iter().collect()
    }

    pub fn agent_count(&self) -> u32 {
        self.agent_groups.iter().map(|g| g.count).sum()
    }

    /// Mean time an agent is busy with one call (real-world seconds): answer delay, talk and
    /// wrap-up (the harness's and the node's), averaged over the agent groups.
    pub fn mean_handle_secs(&self) -> f64 {
        let agents = f64::from(self.agent_count().max(1));
        let per_agent: f64 = self
            .agent_groups
            .iter()
            .map(|g| f64::from(g.count) * (g.answer_delay.mean() + g.wrap_up.mean()))
            .sum::<f64>()
            / agents;
        // The node's wrap-up is wall clock while the rest is real-world time.
        per_agent + self.callers.talk_time.mean() + self.node.wrap_up.secs_f64() * self.time_scale
    }

    /// The base arrival rate in wall-clock calls per second.
    pub fn base_rate(&self) -> f64 {
        let real = match (self.arrivals.rate, self.arrivals.load) {
            (Some(r), _) => r,
            (None, Some(load)) => {
                load * f64::from(self.agent_count()) / self.mean_handle_secs().max(1e-3)
            }
            (None, None) => 0.0,
        };
        real * self.time_scale
    }

    /// The ramp's final rate, wall clock.
    pub fn ramp_to_rate(&self) -> Option<f64> {
        self.arrivals.to_rate.map(|r| r * self.time_scale)
    }

    /// A generous guess of the most simultaneous calls (wall clock): the peak arrival rate
    /// times how long a call holds, plus every agent; for sizing a node's RTP port range.
    pub fn peak_calls_estimate(&self) -> f64 {
        let peak = self.base_rate().max(self.ramp_to_rate().unwrap_or(0.0))
            + f64::from(self.arrivals.burst_calls.unwrap_or(0));
        let ring = self
            .agent_groups
            .iter()
            .map(|g| g.answer_delay.mean())
            .fold(0.0, f64::max);
        let hold = (self.callers.talk_time.mean() + ring) / self.time_scale + 2.0;
        peak * hold + f64::from(self.agent_count())
    }

    /// Wall-clock drain time after arrivals stop.
    pub fn drain_time(&self) -> Duration {
        if let Some(d) = self.drain {
            return d.0;
        }
        let scale = self.time_scale;
        let talk = self.callers.talk_time;
        let longest_talk = if talk.max.is_finite() {
            talk.max
        } else {
            talk.mean() * 5.0
        };
        let ring = self
            .agent_groups
            .iter()
            .map(|g| g.answer_delay.mean() * 3.0 + g.wrap_up.mean())
            .fold(0.0, f64::max);
        // Hotline callers spend up to half a minute in the menu and a few seconds in the survey,
        // in real time.
        let ivr = if self.hotline.is_some() { 45.0 } else { 0.0 };
        crate::duration::capped((longest_talk + ring) / scale + 30.0 + ivr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        duration = "10s"
        [arrivals]
        process = "poisson"
        load = 0.8
        [callers]
        dids = [{ number = "1000", queue = "support" }]
        talk_time = { exponential = "3m" }
        [[agents]]
        count = 90
        first_extension = 2001
        skills = ["support"]
        answer_delay = "2s"
        wrap_up = "10s"
    "#;

    #[test]
    fn load_gives_rate_from_capacity() {
        let mut s = Scenario::parse(MINIMAL).unwrap();
        // 90 agents, 192 s per call: 0.46875 calls/s at 100%, 0.375 at 80%.
        assert!((s.base_rate() - 0.375).abs() < 1e-9);
        s.apply(&Overrides {
            time_scale: Some(10.0),
            ..Overrides::default()
        })
        .unwrap();
        assert!((s.base_rate() - 3.75).abs() < 1e-9);
        s.apply(&Overrides {
            rate: Some(5.0),
            agents: Some(45),
            ..Overrides::default()
        })
        .unwrap();
        assert!((s.base_rate() - 5.0).abs() < 1e-9);
        assert_eq!(s.agent_count(), 45);
    }

    #[test]
    fn rejects_inconsistent_files() {
        let no_agent_for_queue = MINIMAL.replace("skills = [\"support\"]", "skills = [\"sales\"]");
        assert!(Scenario::parse(&no_agent_for_queue).is_err());
        let both = MINIMAL.replace("load = 0.8", "load = 0.8\nrate = 3.0");
        assert!(Scenario::parse(&both).is_err());
        let ramp = MINIMAL
            .replace("\"poisson\"", "\"ramp\"")
            .replace("load = 0.8", "rate = 1.0");
        assert!(Scenario::parse(&ramp).is_err());
        let unknown = MINIMAL.replace("name = \"t\"", "name = \"t\"\nbogus = 1");
        assert!(Scenario::parse(&unknown).is_err());
        let digits = format!("{MINIMAL}\n");
        let digits = digits.replace(
            "talk_time = { exponential = \"3m\" }",
            "talk_time = \"1s\"\ndtmf = { digits = \"12x\" }",
        );
        assert!(Scenario::parse(&digits).is_err());
    }

    #[test]
    fn ready_made_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(
            seen >= 5,
            "expected the five ready-made scenarios, found {seen}"
        );
    }
}

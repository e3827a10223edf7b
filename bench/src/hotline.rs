//! The hotline: callers dial a DID that routes to an IVR flow (10086 in
//! `deploy/examples/hotline.toml`), press a menu key after a delay or nothing at all, call from
//! VIP numbers or ordinary ones, and, when the agent hangs up first in a queue with a survey,
//! press a score from 1 to 5. The harness keeps its own view of every such call ([`Expect`])
//! and [`check`] sets it beside the node's call record: `flow`, `menu`, `queue`, `priority` and
//! `survey_score`.
//!
//! Callbacks are not simulated: the node does not offer them yet.
//!
//! Prompts play in real time on the node, so the key delays here are wall-clock times and never
//! scaled by the scenario's `time_scale`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dist::Dist;
use crate::duration::Dur;

/// The generated flow's menu, as in `deploy/examples/hotline.toml`: a silent caller hears the
/// menu this many times, this long each, before the timeout branch.
pub const MENU_TIMEOUT_SECS: u64 = 5;
pub const MENU_MAX_TIMEOUTS: u32 = 2;
/// The survey flow the generated config gives survey queues.
pub const SURVEY_FLOW: &str = "survey";
/// The number list VIP callers are on in the generated config.
pub const VIP_LIST: &str = "vip";

/// The scenario's `[hotline]` section: what the node's flow does with a caller, and how the
/// callers of DIDs naming the flow behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hotline {
    /// The node's flow; DIDs with `flow = "<this>"` lead to it.
    #[serde(default = "default_flow")]
    pub flow: String,
    /// Prompt language of the flow the harness writes for nodes it starts.
    #[serde(default = "default_language")]
    pub language: String,
    /// Menu key to the queue it leads to.
    pub menu: BTreeMap<String, String>,
    /// Where the menu sends a caller who presses nothing.
    pub no_key_queue: String,
    /// Share of callers pressing each key; the rest press nothing.
    pub keys: BTreeMap<String, f64>,
    /// From early media to the key press (wall clock).
    #[serde(default = "default_key_after")]
    pub key_after: Dist,
    /// From early media until the flow queues a caller who pressed nothing (wall clock);
    /// default: the welcome and menu prompts' lengths in the shipped prompts plus the menu's
    /// timeouts.
    pub no_key_after: Option<Dur>,
    /// Share of callers from VIP numbers.
    #[serde(default)]
    pub vip_share: f64,
    /// The VIP range, `first-last`, both of one length.
    #[serde(default = "default_vip_numbers")]
    pub vip_numbers: String,
    #[serde(default = "default_vip_priority")]
    pub vip_priority: u8,
    /// Queues whose callers take the survey when the agent hangs up first.
    #[serde(default)]
    pub survey_queues: Vec<String>,
    /// Share of answered hotline calls the agent ends; default `callers.agent_hangs_up`.
    pub agent_hangs_up: Option<f64>,
    /// From the agent's hang-up to the survey key (wall clock): the survey prompt has started.
    #[serde(default = "default_survey_key_after")]
    pub survey_key_after: Dur,
}

fn default_flow() -> String {
    "main".into()
}
fn default_language() -> String {
    "zh".into()
}
fn default_key_after() -> Dist {
    Dist::constant(Duration::from_secs(2))
}
fn default_vip_numbers() -> String {
    "13900000001-13900000099".into()
}
fn default_vip_priority() -> u8 {
    10
}
fn default_survey_key_after() -> Dur {
    Dur(Duration::from_secs(2))
}

impl Hotline {
    pub fn validate(&self) -> anyhow::Result<()> {
        for key in self.menu.keys() {
            if key.chars().count() != 1 || key.chars().any(|c| !matches!(c, '0'..='9' | '*' | '#'))
            {
                bail!("hotline.menu: {key:?} is not one key 0-9 * #");
            }
        }
        let mut share = 0.0;
        for (key, s) in &self.keys {
            if !self.menu.contains_key(key) {
                bail!("hotline.keys: {key:?} is not a menu key");
            }
            if !(s.is_finite() && *s >= 0.0) {
                bail!("hotline.keys: shares must be >= 0");
            }
            share += s;
        }
        if share > 1.0 + 1e-9 {
            bail!("hotline.keys: shares add up to more than 1");
        }
        if !(0.0..=1.0).contains(&self.vip_share) {
            bail!("hotline.vip_share is a fraction between 0 and 1");
        }
        if self
            .agent_hangs_up
            .is_some_and(|s| !(0.0..=1.0).contains(&s))
        {
            bail!("hotline.agent_hangs_up is a fraction between 0 and 1");
        }
        VipRange::parse(&self.vip_numbers)?;
        let queues = self.queues();
        for q in &self.survey_queues {
            if !queues.contains(q) {
                bail!("hotline.survey_queues: {q:?} is no queue of the menu");
            }
        }
        Ok(())
    }

    /// Every queue the menu leads to, sorted.
    pub fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self.menu.values().cloned().collect();
        q.push(self.no_key_queue.clone());
        q.sort();
        q.dedup();
        q
    }
}

/// `first-last`: numbers of one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VipRange {
    first: u64,
    count: u64,
    width: usize,
}

impl VipRange {
    fn parse(text: &str) -> anyhow::Result<VipRange> {
        let (a, b) = text
            .split_once('-')
            .with_context(|| format!("hotline.vip_numbers {text:?}: give first-last"))?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) || a.len() != b.len() || a.len() > 18 {
            bail!("hotline.vip_numbers {text:?}: two numbers of one length");
        }
        let (first, last): (u64, u64) = (a.parse()?, b.parse()?);
        if last < first || last - first >= 100_000 {
            bail!("hotline.vip_numbers {text:?}: first-last, at most 100000 numbers");
        }
        Ok(VipRange {
            first,
            count: last - first + 1,
            width: a.len(),
        })
    }

    fn number(&self, offset: u64) -> String {
        format!("{:0w$}", self.first + offset, w = self.width)
    }
}

/// The hotline as the callers use it during a run.
#[derive(Debug)]
pub struct Rules {
    pub flow: String,
    /// (key, queue, share of callers), in menu order.
    keys: Vec<(char, String, f64)>,
    no_key_queue: String,
    key_after: Dist,
    pub no_key_after: Duration,
    vip_share: f64,
    vip: VipRange,
    /// VIP numbers not in a call: the agents tell calls apart by caller number, so one number
    /// is never in two calls at once.
    vip_free: Vec<u64>,
    vip_priority: u8,
    survey_queues: Vec<String>,
    agent_hangs_up: f64,
    pub survey_key_after: Duration,
}

/// What one hotline caller does, chosen when it dials.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The caller's number (From user).
    pub number: String,
    vip_offset: Option<u64>,
    /// The menu key to press, and when after early media.
    pub key: Option<char>,
    pub key_after: Duration,
    /// The queue the menu should lead to.
    pub queue: String,
    pub priority: u8,
    pub agent_hangs_up: bool,
    /// The queue runs a survey when the agent hangs up first.
    pub survey: bool,
    /// What was actually pressed.
    pub pressed: Option<char>,
    pub survey_key: Option<u8>,
}

impl Rules {
    /// `no_key_after` comes from the scenario, else from the prompts in `prompts`.
    pub fn new(h: &Hotline, agent_hangs_up: f64, prompts: Option<&Path>) -> anyhow::Result<Rules> {
        let vip = VipRange::parse(&h.vip_numbers)?;
        let no_key_after = match (h.no_key_after, prompts) {
            (Some(d), _) => d.0,
            (None, Some(dir)) => no_key_route(&dir.join(&h.language))?,
            (None, None) => bail!(
                "hotline.no_key_after: no prompts directory to measure the menu's length in \
                 (set SWITCHYARD_PROMPTS or hotline.no_key_after)"
            ),
        };
        let mut keys = Vec::new();
        for (key, queue) in &h.menu {
            let share = h.keys.get(key).copied().unwrap_or(0.0);
            if let Some(c) = key.chars().next() {
                keys.push((c, queue.clone(), share));
            }
        }
        Ok(Rules {
            flow: h.flow.clone(),
            keys,
            no_key_queue: h.no_key_queue.clone(),
            key_after: h.key_after,
            no_key_after,
            vip_share: h.vip_share,
            vip,
            vip_free: (0..vip.count).rev().collect(),
            vip_priority: h.vip_priority,
            survey_queues: h.survey_queues.clone(),
            agent_hangs_up: h.agent_hangs_up.unwrap_or(agent_hangs_up),
            survey_key_after: h.survey_key_after.0,
        })
    }

    /// Picks the caller's number, key and fate; `serial` makes ordinary numbers unique.
    pub fn choose(&mut self, rng: &mut impl Rng, serial: u64) -> Choice {
        let vip_offset = if rng.random::<f64>() < self.vip_share {
            self.vip_free.pop()
        } else {
            None
        };
        let number = match vip_offset {
            Some(o) => self.vip.number(o),
            // 138..., outside the VIP range and unique among the calls up.
            None => format!("138{:08}", serial % 100_000_000),
        };
        let mut x = rng.random::<f64>();
        let mut pick = None;
        for (key, queue, share) in &self.keys {
            if x < *share {
                pick = Some((*key, queue.clone()));
                break;
            }
            x -= share;
        }
        let (key, queue) = match pick {
            Some((k, q)) => (Some(k), q),
            None => (None, self.no_key_queue.clone()),
        };
        let survey = self.survey_queues.contains(&queue);
        Choice {
            number,
            vip_offset,
            key,
            key_after: self.key_after.sample(rng),
            queue,
            priority: if vip_offset.is_some() {
                self.vip_priority
            } else {
                0
            },
            agent_hangs_up: rng.random::<f64>() < self.agent_hangs_up,
            survey,
            pressed: None,
            survey_key: None,
        }
    }

    /// The call is over: its VIP number is free again.
    pub fn release(&mut self, c: &Choice) {
        if let Some(o) = c.vip_offset {
            self.vip_free.push(o);
        }
    }
}

/// Length of a WAV file's audio.
fn wav_secs(path: &Path) -> anyhow::Result<f64> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow::anyhow!("{}: not a WAV file", path.display());
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad());
    }
    let (mut at, mut byte_rate, mut data) = (12, None, None);
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let body = at + 8;
        if id == b"fmt " && body + 12 <= bytes.len() {
            byte_rate = Some(u32::from_le_bytes([
                bytes[body + 8],
                bytes[body + 9],
                bytes[body + 10],
                bytes[body + 11],
            ]));
        } else if id == b"data" {
            data = Some(len);
        }
        // Chunks are padded to an even length.
        at = body + len as usize + (len as usize & 1);
    }
    match (byte_rate, data) {
        (Some(rate), Some(len)) if rate > 0 => Ok(f64::from(len) / f64::from(rate)),
        _ => Err(bad()),
    }
}

/// How long the generated flow takes to queue a silent caller: the welcome, then the menu and
/// its timeout [`MENU_MAX_TIMEOUTS`] times.
fn no_key_route(prompts: &Path) -> anyhow::Result<Duration> {
    let welcome = wav_secs(&prompts.join("welcome.wav"))?;
    let menu = wav_secs(&prompts.join("menu.wav"))?;
    let secs = welcome + f64::from(MENU_MAX_TIMEOUTS) * (menu + MENU_TIMEOUT_SECS as f64);
    Ok(Duration::from_secs_f64(secs))
}

/// The prompts for nodes the harness starts: `$SWITCHYARD_PROMPTS`, else `deploy/prompts` in
/// the working directory, else in the source tree this harness was built from.
pub fn prompts_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHYARD_PROMPTS") {
        return Some(PathBuf::from(p));
    }
    let here = PathBuf::from("deploy/prompts");
    if here.is_dir() {
        return here.canonicalize().ok();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prompts");
    built.is_dir().then(|| built.canonicalize().ok()).flatten()
}

/// The node config for the hotline: its DIDs, the menu flow, the survey flow and the VIP
/// list, mirroring `deploy/examples/hotline.toml` without opening hours (a demo must behave
/// the same at any time of day).
pub fn node_config(h: &Hotline, dids: &[&str]) -> String {
    let mut c = String::new();
    for did in dids {
        c.push_str(&format!(
            "\n[[did]]\nnumber = \"{did}\"\nflow = \"{}\"\npriority_for = {{ {VIP_LIST} = {} }}\n",
            h.flow, h.vip_priority
        ));
    }
    let options: Vec<String> = h
        .menu
        .iter()
        .map(|(key, queue)| format!("\"{key}\" = \"to-{queue}\""))
        .collect();
    c.push_str(&format!(
        "\n[[flow]]\nname = \"{flow}\"\nstart = \"welcome\"\nlanguage = \"{lang}\"\n\n\
         [flow.steps.welcome]\nplay = [\"welcome\"]\nnext = \"menu\"\n\n\
         [flow.steps.menu]\nmenu = {{ prompt = [\"menu\"], options = {{ {options} }}, \
         timeout_secs = {MENU_TIMEOUT_SECS}, max_timeouts = {MENU_MAX_TIMEOUTS}, max_invalid = 3, \
         invalid_prompt = [\"invalid\"], on_timeout = \"to-{none}\", on_invalid = \"to-{none}\" }}\n",
        flow = h.flow,
        lang = h.language,
        options = options.join(", "),
        none = h.no_key_queue,
    ));
    for q in h.queues() {
        c.push_str(&format!(
            "\n[flow.steps.to-{q}]\nqueue = {{ name = \"{q}\" }}\n"
        ));
    }
    if !h.survey_queues.is_empty() {
        c.push_str(&format!(
            "\n[[flow]]\nname = \"{SURVEY_FLOW}\"\nstart = \"ask\"\nlanguage = \"{}\"\n\n\
             [flow.steps.ask]\ncollect = {{ prompt = [\"survey\"], var = \"survey\", max_digits = 1, \
             accept = \"12345\", terminator = \"\", timeout_secs = 8, on_fail = \"thanks\" }}\n\
             next = \"thanks\"\n\n[flow.steps.thanks]\nhangup = {{ prompt = [\"survey-thanks\"], \
             disposition = \"survey\" }}\n",
            h.language
        ));
    }
    c.push_str(&format!(
        "\n[[number_list]]\nname = \"{VIP_LIST}\"\nnumbers = [\"{}\"]\n",
        h.vip_numbers
    ));
    c
}

/// The harness's view of one hotline call.
#[derive(Debug, Clone)]
pub struct Expect {
    pub call_id: String,
    pub vip: bool,
    /// The key pressed at the menu, if any.
    pub menu: Option<char>,
    pub queue: String,
    pub priority: u8,
    pub agent_hangs_up: bool,
    pub survey: Option<u8>,
    /// The call reached its queue and ended as planned (answered, or given up while queued):
    /// its record must say all of the above. Calls cut short by the end of the run or lost are
    /// counted but not checked.
    pub checked: bool,
}

/// Hotline calls as the harness made them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub calls: u64,
    /// Menu keys pressed (`none` for callers who pressed nothing).
    pub keys: BTreeMap<String, u64>,
    pub vip: u64,
    pub agent_ended: u64,
    /// Survey keys pressed, by key.
    pub survey_keys: BTreeMap<String, u64>,
    pub checked: u64,
}

impl Counts {
    pub fn of(expects: &[Expect]) -> Counts {
        let mut c = Counts::default();
        for e in expects {
            c.calls += 1;
            let key = e.menu.map_or("none".to_owned(), String::from);
            *c.keys.entry(key).or_default() += 1;
            c.vip += u64::from(e.vip);
            c.agent_ended += u64::from(e.agent_hangs_up);
            if let Some(k) = e.survey {
                *c.survey_keys.entry(k.to_string()).or_default() += 1;
            }
            c.checked += u64::from(e.checked);
        }
        c
    }
}

/// The fields compared, in report order.
pub const FIELDS: [&str; 5] = ["flow", "menu", "queue", "priority", "survey_score"];

/// The node's records of the checked hotline calls, set against the harness's view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    pub checked: u64,
    /// Checked calls without a record.
    pub missing: u64,
    /// Records disagreeing with the harness, by field.
    pub mismatches: BTreeMap<String, u64>,
    /// The first few disagreements, for a person to follow up.
    pub examples: Vec<String>,
    /// What the node's records of the run's flow calls say.
    pub node_menu: BTreeMap<String, u64>,
    pub node_vip: u64,
    pub node_surveys: u64,
}

const EXAMPLES: usize = 10;

impl Check {
    pub fn field_mismatches(&self) -> u64 {
        self.mismatches.values().sum()
    }
}

/// Compares each checked call in `expects` with its record in `records` (by caller Call-ID);
/// `flow` is the flow every hotline record must name.
pub fn check(flow: &str, expects: &[Expect], records: &[Value]) -> Check {
    let mut by_call_id = std::collections::HashMap::new();
    let mut c = Check::default();
    for r in records {
        if let Some(id) = r.get("caller_call_id").and_then(Value::as_str) {
            by_call_id.insert(id, r);
        }
        if r.get("flow").and_then(Value::as_str) == Some(flow) {
            let menu = r.get("menu").and_then(Value::as_str).unwrap_or("");
            let key = if menu.is_empty() { "none" } else { menu };
            *c.node_menu.entry(key.to_owned()).or_default() += 1;
            c.node_vip += u64::from(r.get("priority").and_then(Value::as_u64).unwrap_or(0) > 0);
            c.node_surveys += u64::from(r.get("survey_score").is_some_and(|s| !s.is_null()));
        }
    }
    for field in FIELDS {
        c.mismatches.insert(field.to_owned(), 0);
    }
    for e in expects.iter().filter(|e| e.checked) {
        c.checked += 1;
        let Some(r) = by_call_id.get(e.call_id.as_str()) else {
            c.missing += 1;
            if c.examples.len() < EXAMPLES {
                c.examples.push(format!("{}: no call record", e.call_id));
            }
            continue;
        };
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let number = |k: &str| r.get(k).and_then(Value::as_u64);
        let expected = [
            flow.to_owned(),
            e.menu.map_or(String::new(), String::from),
            e.queue.clone(),
            e.priority.to_string(),
            e.survey.map_or("-".to_owned(), |k| k.to_string()),
        ];
        let actual = [
            text("flow"),
            text("menu"),
            text("queue"),
            number("priority").unwrap_or(0).to_string(),
            number("survey_score").map_or("-".to_owned(), |k| k.to_string()),
        ];
        for ((field, want), got) in FIELDS.iter().zip(&expected).zip(&actual) {
            if want != got {
                *c.mismatches.entry((*field).to_owned()).or_default() += 1;
                if c.examples.len() < EXAMPLES {
                    c.examples.push(format!(
                        "{}: {field} harness {want:?} node {got:?}",
                        e.call_id
                    ));
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    use super::*;

    fn hotline() -> Hotline {
        toml::from_str(
            r#"
            menu = { "1" = "billing", "2" = "tech", "0" = "general" }
            no_key_queue = "general"
            keys = { "1" = 0.4, "2" = 0.3, "0" = 0.2 }
            vip_share = 0.5
            vip_numbers = "13900000001-13900000003"
            survey_queues = ["general"]
            no_key_after = "29s"
            "#,
        )
        .unwrap()
    }

    fn expect(call_id: &str, menu: Option<char>, queue: &str, vip: bool) -> Expect {
        Expect {
            call_id: call_id.into(),
            vip,
            menu,
            queue: queue.into(),
            priority: if vip { 10 } else { 0 },
            agent_hangs_up: false,
            survey: None,
            checked: true,
        }
    }

    #[test]
    fn validates_keys_shares_and_ranges() {
        assert!(hotline().validate().is_ok());
        let mut h = hotline();
        h.keys.insert("9".into(), 0.1);
        assert!(h.validate().is_err(), "9 is no menu key");
        let mut h = hotline();
        h.keys.insert("1".into(), 0.9);
        assert!(h.validate().is_err(), "shares above 1");
        let mut h = hotline();
        h.vip_numbers = "139-13900000099".into();
        assert!(h.validate().is_err(), "ends of different lengths");
        let mut h = hotline();
        h.survey_queues = vec!["sales".into()];
        assert!(h.validate().is_err());
    }

    #[test]
    fn vip_numbers_are_never_in_two_calls_at_once() {
        let h = hotline();
        let mut rules = Rules::new(&h, 0.0, None).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let choices: Vec<Choice> = (0..40).map(|n| rules.choose(&mut rng, n)).collect();
        let vips: Vec<&str> = choices
            .iter()
            .filter(|c| c.priority == 10)
            .map(|c| c.number.as_str())
            .collect();
        assert_eq!(vips.len(), 3, "three VIP numbers, then ordinary ones");
        let mut unique = vips.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 3);
        assert!(
            vips.iter()
                .all(|n| ("13900000001"..="13900000003").contains(n))
        );
        for c in choices.iter().filter(|c| c.priority == 0) {
            assert!(c.number.starts_with("138") && c.number.len() == 11);
        }
        for c in &choices {
            assert_eq!(c.survey, c.queue == "general");
            match c.key {
                Some('1') => assert_eq!(c.queue, "billing"),
                Some('2') => assert_eq!(c.queue, "tech"),
                Some('0') | None => assert_eq!(c.queue, "general"),
                Some(k) => panic!("key {k} is no share"),
            }
        }
        let freed = choices.iter().find(|c| c.priority == 10).unwrap();
        rules.release(freed);
        let again = (100..200)
            .map(|n| rules.choose(&mut rng, n))
            .find(|c| c.priority == 10)
            .unwrap();
        assert_eq!(
            again.number, freed.number,
            "the freed number is the only one left"
        );
    }

    #[test]
    fn check_counts_each_field_that_differs() {
        let mut survey = expect("t-3@b", Some('0'), "general", false);
        survey.survey = Some(4);
        let mut cut = expect("t-5@b", Some('1'), "billing", false);
        cut.checked = false;
        let expects = vec![
            expect("t-1@b", Some('1'), "billing", true),
            expect("t-2@b", None, "general", false),
            survey,
            expect("t-4@b", Some('2'), "tech", false),
            cut,
        ];
        let records = vec![
            json!({"caller_call_id": "t-1@b", "flow": "main", "menu": "1", "queue": "billing",
                   "priority": 10}),
            // No menu key: the field is left out; priority 10 for an ordinary caller.
            json!({"caller_call_id": "t-2@b", "flow": "main", "queue": "general", "priority": 10}),
            // The survey run lost the menu key.
            json!({"caller_call_id": "t-3@b", "flow": "main", "menu": "", "queue": "general",
                   "priority": 0, "survey_score": 4}),
            json!({"caller_call_id": "t-5@b", "flow": "main", "queue": "billing"}),
            json!({"caller_call_id": "other@b", "queue": "support", "priority": 0}),
        ];
        let c = check("main", &expects, &records);
        assert_eq!(c.checked, 4);
        assert_eq!(c.missing, 1, "t-4 has no record");
        assert_eq!(c.mismatches["priority"], 1);
        assert_eq!(c.mismatches["menu"], 1);
        assert_eq!(c.mismatches["flow"], 0);
        assert_eq!(c.mismatches["survey_score"], 0);
        assert_eq!(c.field_mismatches(), 2);
        assert_eq!(c.examples.len(), 3);
        assert_eq!(c.node_menu["none"], 3);
        assert_eq!(c.node_menu["1"], 1);
        assert_eq!((c.node_vip, c.node_surveys), (2, 1));
        let counts = Counts::of(&expects);
        assert_eq!((counts.calls, counts.vip, counts.checked), (5, 1, 4));
        assert_eq!(counts.keys["none"], 1);
        assert_eq!(counts.survey_keys["4"], 1);
    }

    #[test]
    fn generated_flow_names_every_queue_and_the_survey() {
        let c = node_config(&hotline(), &["10086"]);
        assert!(c.contains("number = \"10086\"\nflow = \"main\"\npriority_for = { vip = 10 }"));
        for q in ["billing", "tech", "general"] {
            assert!(c.contains(&format!(
                "[flow.steps.to-{q}]\nqueue = {{ name = \"{q}\" }}"
            )));
        }
        assert!(c.contains("on_timeout = \"to-general\""));
        assert!(c.contains("name = \"survey\""));
        assert!(c.contains("numbers = [\"13900000001-13900000003\"]"));
        let parsed: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(parsed["flow"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_shipped_prompts_give_the_silent_callers_route() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prompts/zh");
        let d = no_key_route(&dir).unwrap();
        // welcome 3.23 s, then twice the 7.76 s menu and 5 s of waiting.
        assert!((d.as_secs_f64() - 28.75).abs() < 0.05, "{d:?}");
    }
}

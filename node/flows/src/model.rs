//! The flow document operators write: TOML in the node's file, JSON through the API.
//!
//! A step is a table holding exactly one kind key (`play`, `menu`, ...) plus, for the kinds
//! that continue (`play`, `collect`, `set`), `next`. The step deserializer rejects unknown keys
//! and steps with zero or two kinds, so a typo never silently drops a setting.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::numbers::NumberList;
use crate::schedule::Schedule;

/// Every flow, schedule and number list of the cluster: one replicated configuration document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSet {
    #[serde(default, rename = "flow", skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<Flow>,
    #[serde(default, rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    #[serde(default, rename = "number_list", skip_serializing_if = "Vec::is_empty")]
    pub number_lists: Vec<NumberList>,
}

impl FlowSet {
    pub fn flow(&self, name: &str) -> Option<&Flow> {
        self.flows.iter().find(|flow| flow.name == name)
    }

    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|schedule| schedule.name == name)
    }

    pub fn number_list(&self, name: &str) -> Option<&NumberList> {
        self.number_lists.iter().find(|list| list.name == name)
    }
}

/// One call flow: a graph of steps entered at `start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub name: String,
    pub start: String,
    /// Language of the prompts until a `set` step changes it.
    #[serde(default = "default_language")]
    pub language: String,
    pub steps: BTreeMap<String, Step>,
}

fn default_language() -> String {
    "en".to_owned()
}

/// One step: what it does, and where it continues when its kind continues.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub kind: StepKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Play steps only: whether a digit stops the prompt (default true). A digit that stops it
    /// is carried to the next menu or collect step as type-ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub barge_in: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Prompts played in order, then `next`.
    Play(Vec<String>),
    Menu(Menu),
    Collect(Collect),
    BranchTime(BranchTime),
    BranchCaller(BranchCaller),
    BranchVar(BranchVar),
    BranchQueue(BranchQueue),
    Set(Set),
    Queue(Queue),
    Transfer(Transfer),
    Hangup(Hangup),
}

/// Keys a step table may hold: `next`, `barge_in`, then one kind each.
const STEP_KEYS: &[&str] = &[
    "next",
    "barge_in",
    "play",
    "menu",
    "collect",
    "branch_time",
    "branch_caller",
    "branch_var",
    "branch_queue",
    "set",
    "queue",
    "transfer",
    "hangup",
];
const KINDS: &[&str] = STEP_KEYS.split_at(2).1;

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Play(_) => "play",
            StepKind::Menu(_) => "menu",
            StepKind::Collect(_) => "collect",
            StepKind::BranchTime(_) => "branch_time",
            StepKind::BranchCaller(_) => "branch_caller",
            StepKind::BranchVar(_) => "branch_var",
            StepKind::BranchQueue(_) => "branch_queue",
            StepKind::Set(_) => "set",
            StepKind::Queue(_) => "queue",
            StepKind::Transfer(_) => "transfer",
            StepKind::Hangup(_) => "hangup",
        }
    }
}

impl Step {
    /// Whether this kind continues at `next` (the others name their exits themselves or end).
    pub(crate) fn takes_next(&self) -> bool {
        matches!(
            self.kind,
            StepKind::Play(_) | StepKind::Collect(_) | StepKind::Set(_)
        )
    }

    /// Whether the step passes control on at once, without playing or waiting for the caller.
    pub(crate) fn is_instant(&self) -> bool {
        matches!(
            self.kind,
            StepKind::BranchTime(_)
                | StepKind::BranchCaller(_)
                | StepKind::BranchVar(_)
                | StepKind::BranchQueue(_)
                | StepKind::Set(_)
        )
    }

    /// Whether a digit stops this step's prompt.
    pub(crate) fn barges_in(&self) -> bool {
        match self.kind {
            StepKind::Play(_) => self.barge_in.unwrap_or(true),
            StepKind::Menu(_) | StepKind::Collect(_) => true,
            _ => false,
        }
    }

    /// Every step this one can continue to, with the field naming it.
    pub(crate) fn exits(&self) -> Vec<(String, &str)> {
        fn named<'s>(field: &str, target: &'s str) -> (String, &'s str) {
            (field.to_owned(), target)
        }
        let mut exits = match &self.kind {
            StepKind::Menu(menu) => menu
                .options
                .iter()
                .map(|(key, target)| (format!("options.{key}"), target.as_str()))
                .chain([
                    named("on_timeout", &menu.on_timeout),
                    named("on_invalid", &menu.on_invalid),
                ])
                .collect(),
            StepKind::Collect(collect) => vec![named("on_fail", &collect.on_fail)],
            StepKind::BranchTime(branch) => {
                vec![named("open", &branch.open), named("closed", &branch.closed)]
            }
            StepKind::BranchCaller(branch) => {
                vec![
                    named("then", &branch.then),
                    named("else", &branch.otherwise),
                ]
            }
            StepKind::BranchVar(branch) => branch
                .cases
                .iter()
                .map(|(value, target)| (format!("cases.{value}"), target.as_str()))
                .chain([named("else", &branch.otherwise)])
                .collect(),
            StepKind::BranchQueue(branch) => {
                vec![
                    named("then", &branch.then),
                    named("else", &branch.otherwise),
                ]
            }
            _ => Vec::new(),
        };
        if let Some(next) = &self.next {
            exits.push(named("next", next));
        }
        exits
    }

    /// Every prompt the step may play, with the field naming it.
    pub(crate) fn prompts(&self) -> Vec<(String, &str)> {
        let (first, second): (_, &[String]) = match &self.kind {
            StepKind::Play(names) => (("play", names.as_slice()), &[]),
            StepKind::Menu(menu) => (("prompt", menu.prompt.as_slice()), &menu.invalid_prompt),
            StepKind::Collect(collect) => (
                ("prompt", collect.prompt.as_slice()),
                &collect.invalid_prompt,
            ),
            StepKind::Hangup(hangup) => (("prompt", hangup.prompt.as_slice()), &[]),
            _ => return Vec::new(),
        };
        [first, ("invalid_prompt", second)]
            .into_iter()
            .flat_map(|(field, names)| {
                names
                    .iter()
                    .enumerate()
                    .map(move |(index, name)| (format!("{field}[{index}]"), name.as_str()))
            })
            .collect()
    }
}

/// Play `prompt`, wait `timeout_secs` for one digit and follow `options`. No digit
/// `max_timeouts` times in a row goes to `on_timeout` (earlier ones replay the prompt); a digit
/// not in `options` `max_invalid` times goes to `on_invalid` (earlier ones play
/// `invalid_prompt` then the prompt again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Menu {
    #[serde(default)]
    pub prompt: Vec<String>,
    /// Key (`0`-`9`, `*`, `#`) to step.
    pub options: BTreeMap<String, String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_tries")]
    pub max_timeouts: u32,
    #[serde(default = "default_tries")]
    pub max_invalid: u32,
    #[serde(default)]
    pub invalid_prompt: Vec<String>,
    pub on_timeout: String,
    pub on_invalid: String,
}

/// Play `prompt` and collect between `min_digits` and `max_digits` of `accept` into the call
/// variable `var`, then `next`. Input ends at `max_digits`, at the terminator, or after
/// `timeout_secs` without a digit (restarted by each digit). Too few digits or a digit outside
/// `accept` is a failed attempt; after `max_attempts` of them the flow goes to `on_fail`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    #[serde(default)]
    pub prompt: Vec<String>,
    pub var: String,
    #[serde(default = "default_min_digits")]
    pub min_digits: u32,
    pub max_digits: u32,
    /// `#`, `*`, or empty for none.
    #[serde(default = "default_terminator")]
    pub terminator: String,
    /// The keys that count as input (`12345` for a satisfaction survey).
    #[serde(default = "default_accept")]
    pub accept: String,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_tries")]
    pub max_attempts: u32,
    #[serde(default)]
    pub invalid_prompt: Vec<String>,
    pub on_fail: String,
}

fn default_timeout_secs() -> u64 {
    5
}

fn default_tries() -> u32 {
    3
}

fn default_min_digits() -> u32 {
    1
}

fn default_terminator() -> String {
    "#".to_owned()
}

fn default_accept() -> String {
    "0123456789".to_owned()
}

/// `open` while the named schedule is open, else `closed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchTime {
    pub schedule: String,
    pub open: String,
    pub closed: String,
}

/// `then` when the caller's number is in the named list, else `else`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchCaller {
    pub list: String,
    pub then: String,
    #[serde(rename = "else")]
    pub otherwise: String,
}

/// The case matching the variable's value, else `else` (also when the variable is unset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchVar {
    pub var: String,
    pub cases: BTreeMap<String, String>,
    #[serde(rename = "else")]
    pub otherwise: String,
}

/// `then` when the queue has at least `min_agents` logged in and an estimated wait of at most
/// `max_wait_secs` (each only when given), else `else`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchQueue {
    pub queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agents: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_secs: Option<u64>,
    pub then: String,
    #[serde(rename = "else")]
    pub otherwise: String,
}

/// Changes to the call: priority, skills added to those requested, language, variables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

/// Hand the call to a queue; `preferred_agent` (an account manager) is offered it first, for
/// `preferred_wait_secs` (default 20) while free.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_wait_secs: Option<u64>,
}

pub(crate) const DEFAULT_PREFERRED_WAIT_SECS: u64 = 20;

/// The keys a caller can press.
pub(crate) const DTMF_KEYS: &str = "0123456789*#";

/// Transfer the call to a number, through `trunk` or the node's default one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
}

/// Play `prompt` (no barge-in) and hang up; `disposition` goes on the call record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hangup {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt: Vec<String>,
    #[serde(default = "default_disposition")]
    pub disposition: String,
}

fn default_disposition() -> String {
    "normal".to_owned()
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(StepVisitor)
    }
}

struct StepVisitor;

impl<'de> Visitor<'de> for StepVisitor {
    type Value = Step;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        write!(formatter, "a step table with one of {}", KINDS.join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
        let (mut kind, mut next, mut barge_in) = (None::<StepKind>, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "next" => next = Some(map.next_value()?),
                "barge_in" => barge_in = Some(map.next_value()?),
                other => {
                    let parsed = map.next_value_seed(KindSeed(other))?;
                    if let Some(first) = &kind {
                        let mut both = [first.name(), parsed.name()];
                        both.sort_unstable();
                        return Err(de::Error::custom(format!(
                            "a step has one kind, found both {} and {}",
                            both[0], both[1]
                        )));
                    }
                    kind = Some(parsed);
                }
            }
        }
        let kind = kind.ok_or_else(|| {
            de::Error::custom(format!("a step needs one of {}", KINDS.join(", ")))
        })?;
        Ok(Step {
            kind,
            next,
            barge_in,
        })
    }
}

/// Reads the value of a kind key as that kind's settings.
struct KindSeed<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KindSeed<'_> {
    type Value = StepKind;

    fn deserialize<D: Deserializer<'de>>(self, value: D) -> Result<StepKind, D::Error> {
        Ok(match self.0 {
            "play" => StepKind::Play(Deserialize::deserialize(value)?),
            "menu" => StepKind::Menu(Deserialize::deserialize(value)?),
            "collect" => StepKind::Collect(Deserialize::deserialize(value)?),
            "branch_time" => StepKind::BranchTime(Deserialize::deserialize(value)?),
            "branch_caller" => StepKind::BranchCaller(Deserialize::deserialize(value)?),
            "branch_var" => StepKind::BranchVar(Deserialize::deserialize(value)?),
            "branch_queue" => StepKind::BranchQueue(Deserialize::deserialize(value)?),
            "set" => StepKind::Set(Deserialize::deserialize(value)?),
            "queue" => StepKind::Queue(Deserialize::deserialize(value)?),
            "transfer" => StepKind::Transfer(Deserialize::deserialize(value)?),
            "hangup" => StepKind::Hangup(Deserialize::deserialize(value)?),
            other => return Err(de::Error::unknown_field(other, STEP_KEYS)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FlowSet, String> {
        toml::from_str(text).map_err(|error| error.message().to_owned())
    }

    const SUGGESTED: &str = r#"
        [[flow]]
        name = "main"
        start = "welcome"
        [flow.steps.welcome]
        play = ["welcome"]
        next = "menu"
        [flow.steps.menu]
        menu = { prompt = ["menu"], options = { "1" = "billing", "0" = "general" }, timeout_secs = 5, max_timeouts = 2, max_invalid = 3, invalid_prompt = ["invalid"], on_timeout = "general", on_invalid = "general" }
        [flow.steps.billing]
        queue = { name = "billing" }
        [flow.steps.general]
        queue = { name = "general", preferred_agent = "2001" }
    "#;

    #[test]
    fn reads_the_suggested_shape_with_defaults() {
        let set = parse(SUGGESTED).expect("parses");
        let flow = set.flow("main").expect("flow main");
        assert_eq!(flow.language, "en");
        let welcome = &flow.steps["welcome"];
        assert_eq!(welcome.kind, StepKind::Play(vec!["welcome".into()]));
        assert_eq!(welcome.next.as_deref(), Some("menu"));
        let StepKind::Menu(menu) = &flow.steps["menu"].kind else {
            panic!("menu step")
        };
        assert_eq!(menu.options["1"], "billing");
        assert_eq!((menu.max_timeouts, menu.max_invalid), (2, 3));
        let StepKind::Queue(queue) = &flow.steps["general"].kind else {
            panic!("queue step")
        };
        assert_eq!(queue.preferred_agent.as_deref(), Some("2001"));
        assert_eq!(queue.preferred_wait_secs, None);
    }

    #[test]
    fn round_trips_through_json_and_toml() {
        let set = parse(SUGGESTED).expect("parses");
        let json = serde_json::to_string(&set).expect("to json");
        assert!(
            json.contains(r#""welcome":{"play":["welcome"],"next":"menu"}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<FlowSet>(&json).expect("from json"),
            set
        );
        let toml_text = toml::to_string(&set).expect("to toml");
        assert_eq!(parse(&toml_text).expect("from toml"), set);
    }

    #[test]
    fn rejects_unknown_keys_and_steps_without_exactly_one_kind() {
        let step = |body: &str| {
            parse(&format!(
                "[[flow]]\nname = \"f\"\nstart = \"a\"\n[flow.steps.a]\n{body}\n"
            ))
        };
        let typo = step("play = [\"x\"]\nnxt = \"b\"").expect_err("typo");
        assert!(typo.contains("unknown field `nxt`"), "{typo}");
        let none = step("next = \"b\"").expect_err("no kind");
        assert!(
            none.contains("a step needs one of play, menu, collect"),
            "{none}"
        );
        let two = step("play = [\"x\"]\nhangup = {}").expect_err("two kinds");
        assert_eq!(two, "a step has one kind, found both hangup and play");
        let inner = step("queue = { name = \"q\", prefered_agent = \"1\" }").expect_err("inner");
        assert!(inner.contains("unknown field `prefered_agent`"), "{inner}");
    }

    #[test]
    fn lists_exits_and_prompts_with_their_fields() {
        let set = parse(SUGGESTED).expect("parses");
        let flow = set.flow("main").expect("flow");
        let menu = &flow.steps["menu"];
        let exits: Vec<_> = menu
            .exits()
            .into_iter()
            .map(|(field, to)| format!("{field}={to}"))
            .collect();
        assert_eq!(
            exits,
            [
                "options.0=general",
                "options.1=billing",
                "on_timeout=general",
                "on_invalid=general"
            ]
        );
        let prompts: Vec<_> = menu
            .prompts()
            .into_iter()
            .map(|(field, name)| format!("{field}={name}"))
            .collect();
        assert_eq!(prompts, ["prompt[0]=menu", "invalid_prompt[0]=invalid"]);
        assert!(!menu.takes_next() && !menu.is_instant() && menu.barges_in());
    }
}

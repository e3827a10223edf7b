//! Checking a flow set against what the cluster has, before it is accepted.
//!
//! Everything wrong is reported at once, each error naming its flow, step and field, so an
//! operator fixes a document in one round. Syntax (times, zones, number ranges, unknown keys) is
//! already checked when the document is read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{DTMF_KEYS, Flow, FlowSet, Step, StepKind};

/// What flows may refer to outside the flow set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub queues: BTreeSet<String>,
    pub trunks: BTreeSet<String>,
    /// Prompt names available in each language (`en` -> `welcome`, ...).
    pub prompts: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowError {
    pub subject: Subject,
    pub step: Option<String>,
    pub field: Option<String>,
    pub problem: String,
}

/// The part of the flow set an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Flow(String),
    Schedule(String),
    NumberList(String),
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Flow(name) => write!(f, "flow {name:?}")?,
            Subject::Schedule(name) => write!(f, "schedule {name:?}")?,
            Subject::NumberList(name) => write!(f, "number list {name:?}")?,
        }
        if let Some(step) = &self.step {
            write!(f, ", step {step:?}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field:?}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for FlowError {}

pub fn validate(set: &FlowSet, catalog: &Catalog) -> Result<(), Vec<FlowError>> {
    let mut errors = Vec::new();
    let mut report = |subject: Subject, field: Option<String>, problem: &str| {
        errors.push(FlowError {
            subject,
            step: None,
            field,
            problem: problem.to_owned(),
        })
    };
    let defined_twice = (duplicates(set.flows.iter().map(|flow| &flow.name)).map(Subject::Flow))
        .chain(duplicates(set.schedules.iter().map(|s| &s.name)).map(Subject::Schedule))
        .chain(duplicates(set.number_lists.iter().map(|l| &l.name)).map(Subject::NumberList));
    for subject in defined_twice {
        report(subject, None, "defined more than once");
    }
    for schedule in &set.schedules {
        for (index, hours) in schedule.hours.iter().enumerate() {
            if hours.days.is_empty() {
                report(
                    Subject::Schedule(schedule.name.clone()),
                    Some(format!("hours[{index}].days")),
                    "no days: leave it out for every day",
                );
            }
        }
    }
    for flow in &set.flows {
        FlowCheck {
            set,
            catalog,
            flow,
            errors: &mut errors,
        }
        .run();
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Names given more than once, each once.
fn duplicates<'a>(names: impl Iterator<Item = &'a String>) -> impl Iterator<Item = String> {
    let mut seen = BTreeSet::new();
    let repeated: BTreeSet<&String> = names.filter(|name| !seen.insert(*name)).collect();
    repeated.into_iter().cloned()
}

struct FlowCheck<'a> {
    set: &'a FlowSet,
    catalog: &'a Catalog,
    flow: &'a Flow,
    errors: &'a mut Vec<FlowError>,
}

impl<'a> FlowCheck<'a> {
    fn error(&mut self, step: Option<&str>, field: Option<&str>, problem: impl Into<String>) {
        self.errors.push(FlowError {
            subject: Subject::Flow(self.flow.name.clone()),
            step: step.map(str::to_owned),
            field: field.map(str::to_owned),
            problem: problem.into(),
        });
    }

    fn run(&mut self) {
        let flow = self.flow;
        if !self.catalog.prompts.contains_key(&flow.language) {
            self.error(
                None,
                Some("language"),
                format!("unknown language {:?}", flow.language),
            );
        }
        if !flow.steps.contains_key(&flow.start) {
            self.error(
                None,
                Some("start"),
                format!("unknown step {:?}", flow.start),
            );
        }
        let languages = self.languages();
        for (id, step) in &flow.steps {
            self.check_links(id, step);
            self.check_prompts(id, step, &languages);
            self.check_kind(id, step);
        }
        self.check_reachable();
        self.check_instant_loops();
    }

    /// The known languages the flow's prompts may be played in.
    fn languages(&self) -> BTreeSet<&'a str> {
        let (flow, catalog) = (self.flow, self.catalog);
        let set_languages = flow.steps.values().filter_map(|step| match &step.kind {
            StepKind::Set(set) => set.language.as_deref(),
            _ => None,
        });
        [flow.language.as_str()]
            .into_iter()
            .chain(set_languages)
            .filter(|language| catalog.prompts.contains_key(*language))
            .collect()
    }

    fn check_links(&mut self, id: &str, step: &Step) {
        for (field, target) in step.exits() {
            if !self.flow.steps.contains_key(target) {
                self.error(Some(id), Some(&field), format!("unknown step {target:?}"));
            }
        }
        match (step.takes_next(), &step.next) {
            (true, None) => self.error(Some(id), Some("next"), "missing"),
            (false, Some(_)) => self.error(
                Some(id),
                Some("next"),
                format!("a {} step does not take next", step.kind.name()),
            ),
            _ => {}
        }
        if step.barge_in.is_some() && !matches!(step.kind, StepKind::Play(_)) {
            self.error(Some(id), Some("barge_in"), "only play steps take barge_in");
        }
    }

    fn check_prompts(&mut self, id: &str, step: &Step, languages: &BTreeSet<&str>) {
        for (field, name) in step.prompts() {
            for language in languages {
                let known = self.catalog.prompts.get(*language);
                if !known.is_some_and(|names| names.contains(name)) {
                    self.error(
                        Some(id),
                        Some(&field),
                        format!("unknown prompt {name:?} in language {language:?}"),
                    );
                }
            }
        }
    }

    fn check_kind(&mut self, id: &str, step: &Step) {
        let at = Some(id);
        match &step.kind {
            StepKind::Play(prompts) => {
                if prompts.is_empty() {
                    self.error(at, Some("play"), "missing prompt");
                }
            }
            StepKind::Menu(menu) => {
                if menu.prompt.is_empty() {
                    self.error(at, Some("prompt"), "missing prompt");
                }
                if menu.options.is_empty() {
                    self.error(at, Some("options"), "no options");
                }
                for key in menu.options.keys() {
                    if key.chars().count() != 1 || !DTMF_KEYS.contains(key.as_str()) {
                        self.error(
                            at,
                            Some(&format!("options.{key}")),
                            "not a single key of 0-9, * or #",
                        );
                    }
                }
                self.at_least_one(id, "timeout_secs", menu.timeout_secs);
                self.at_least_one(id, "max_timeouts", menu.max_timeouts.into());
                self.at_least_one(id, "max_invalid", menu.max_invalid.into());
            }
            StepKind::Collect(collect) => {
                if collect.prompt.is_empty() {
                    self.error(at, Some("prompt"), "missing prompt");
                }
                if collect.var.is_empty() {
                    self.error(at, Some("var"), "empty variable name");
                }
                self.at_least_one(id, "max_digits", collect.max_digits.into());
                if collect.min_digits > collect.max_digits {
                    self.error(
                        at,
                        Some("min_digits"),
                        format!(
                            "{} is more than max_digits {}",
                            collect.min_digits, collect.max_digits
                        ),
                    );
                }
                if !["", "#", "*"].contains(&collect.terminator.as_str()) {
                    self.error(at, Some("terminator"), "must be \"#\", \"*\" or \"\"");
                }
                if collect.accept.is_empty()
                    || !collect.accept.chars().all(|c| DTMF_KEYS.contains(c))
                {
                    self.error(at, Some("accept"), "must be keys of 0-9, * or #");
                } else if !collect.terminator.is_empty()
                    && collect.accept.contains(collect.terminator.as_str())
                {
                    self.error(at, Some("accept"), "contains the terminator");
                }
                self.at_least_one(id, "timeout_secs", collect.timeout_secs);
                self.at_least_one(id, "max_attempts", collect.max_attempts.into());
            }
            StepKind::BranchTime(branch) => {
                if self.set.schedule(&branch.schedule).is_none() {
                    let problem = format!("unknown schedule {:?}", branch.schedule);
                    self.error(at, Some("schedule"), problem);
                }
            }
            StepKind::BranchCaller(branch) => {
                if self.set.number_list(&branch.list).is_none() {
                    self.error(
                        at,
                        Some("list"),
                        format!("unknown number list {:?}", branch.list),
                    );
                }
            }
            StepKind::BranchVar(branch) => {
                if branch.var.is_empty() {
                    self.error(at, Some("var"), "empty variable name");
                }
                if branch.cases.is_empty() {
                    self.error(at, Some("cases"), "no cases");
                }
            }
            StepKind::BranchQueue(branch) => {
                self.known_queue(id, "queue", &branch.queue);
                if branch.min_agents.is_none() && branch.max_wait_secs.is_none() {
                    self.error(at, None, "needs min_agents or max_wait_secs");
                }
            }
            StepKind::Set(set) => {
                if let Some(language) = &set.language {
                    if !self.catalog.prompts.contains_key(language) {
                        self.error(
                            at,
                            Some("language"),
                            format!("unknown language {language:?}"),
                        );
                    }
                }
                if set.skills.iter().any(String::is_empty) {
                    self.error(at, Some("skills"), "empty skill name");
                }
                if set.vars.keys().any(String::is_empty) {
                    self.error(at, Some("vars"), "empty variable name");
                }
            }
            StepKind::Queue(queue) => {
                self.known_queue(id, "name", &queue.name);
                match (&queue.preferred_agent, queue.preferred_wait_secs) {
                    (Some(agent), _) if agent.is_empty() => {
                        self.error(at, Some("preferred_agent"), "empty agent");
                    }
                    (None, Some(_)) => {
                        self.error(at, Some("preferred_wait_secs"), "without preferred_agent");
                    }
                    (Some(_), Some(secs)) => self.at_least_one(id, "preferred_wait_secs", secs),
                    _ => {}
                }
            }
            StepKind::Transfer(transfer) => {
                let number = transfer
                    .number
                    .strip_prefix('+')
                    .unwrap_or(&transfer.number);
                if number.is_empty() || !number.chars().all(|c| DTMF_KEYS.contains(c)) {
                    let problem = format!("{:?} is not a dialable number", transfer.number);
                    self.error(at, Some("number"), problem);
                }
                if let Some(trunk) = &transfer.trunk {
                    if !self.catalog.trunks.contains(trunk) {
                        self.error(at, Some("trunk"), format!("unknown trunk {trunk:?}"));
                    }
                }
            }
            StepKind::Hangup(hangup) => {
                let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
                if hangup.disposition.is_empty() || !hangup.disposition.chars().all(word) {
                    self.error(
                        at,
                        Some("disposition"),
                        "must be lowercase letters, digits or -",
                    );
                }
            }
        }
    }

    fn at_least_one(&mut self, step: &str, field: &str, value: u64) {
        if value == 0 {
            self.error(Some(step), Some(field), "must be at least 1");
        }
    }

    fn known_queue(&mut self, step: &str, field: &str, queue: &str) {
        if !self.catalog.queues.contains(queue) {
            self.error(Some(step), Some(field), format!("unknown queue {queue:?}"));
        }
    }

    fn check_reachable(&mut self) {
        let flow = self.flow;
        let mut reached = BTreeSet::new();
        let mut pending = vec![flow.start.as_str()];
        while let Some(id) = pending.pop() {
            if let Some(step) = flow.steps.get(id) {
                if reached.insert(id) {
                    pending.extend(step.exits().into_iter().map(|(_, target)| target));
                }
            }
        }
        if !flow.steps.contains_key(&flow.start) {
            return; // already reported; every step would be unreachable
        }
        for id in flow.steps.keys() {
            if !reached.contains(id.as_str()) {
                let problem = format!("unreachable from start step {:?}", flow.start);
                self.error(Some(id), None, problem);
            }
        }
    }

    /// Loops made only of steps that neither play nor wait would spin forever.
    fn check_instant_loops(&mut self) {
        let flow = self.flow;
        let mut done = BTreeSet::new();
        for id in flow.steps.keys() {
            let mut path = Vec::new();
            self.walk_instant(id, &mut path, &mut done);
        }
    }

    fn walk_instant(&mut self, id: &'a str, path: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) {
        let flow = self.flow;
        let Some(step) = flow.steps.get(id).filter(|step| step.is_instant()) else {
            return;
        };
        if let Some(at) = path.iter().position(|seen| *seen == id) {
            let cycle = [&path[at..], &[id]].concat().join(" -> ");
            let problem = format!("loop without waiting for the caller: {cycle}");
            self.error(Some(path[at]), None, problem);
            return;
        }
        if !done.insert(id) {
            return;
        }
        path.push(id);
        for (_, target) in step.exits() {
            self.walk_instant(target, path, done);
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect();
        Catalog {
            queues: names(&["billing", "general"]),
            trunks: names(&["telecom"]),
            prompts: BTreeMap::from([
                (
                    "en".to_owned(),
                    names(&["welcome", "menu", "invalid", "closed"]),
                ),
                ("zh".to_owned(), names(&["welcome", "menu", "invalid"])),
            ]),
        }
    }

    /// Every error message of the flow set, as displayed.
    fn errors(text: &str) -> Vec<String> {
        let set: FlowSet = toml::from_str(text).expect("flow set parses");
        match validate(&set, &catalog()) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// A valid flow `f` starting at step `a`, with the given steps after it.
    fn flow(steps: &str) -> String {
        format!("[[flow]]\nname = \"f\"\nstart = \"a\"\n[flow.steps.end]\nhangup = {{}}\n{steps}")
    }

    #[test]
    fn accepts_a_complete_flow() {
        let text = flow(
            r##"
            [flow.steps.a]
            play = ["welcome"]
            next = "menu"
            barge_in = false
            [flow.steps.menu]
            menu = { prompt = ["menu"], options = { "1" = "q", "*" = "time", "#" = "end" }, invalid_prompt = ["invalid"], on_timeout = "end", on_invalid = "end" }
            [flow.steps.time]
            branch_time = { schedule = "hours", open = "q", closed = "closed" }
            [flow.steps.closed]
            hangup = { prompt = ["closed"], disposition = "closed" }
            [flow.steps.q]
            queue = { name = "billing", preferred_agent = "2001", preferred_wait_secs = 15 }
            [[schedule]]
            name = "hours"
            time_zone = "Asia/Shanghai"
            "##,
        );
        assert_eq!(errors(&text), Vec::<String>::new());
    }

    #[test]
    fn names_unknown_steps_and_the_missing_start() {
        let text = r##"
            [[flow]]
            name = "main"
            start = "welcom"
            [flow.steps.welcome]
            play = ["welcome"]
            next = "menu"
            [flow.steps.menu]
            menu = { prompt = ["menu"], options = { "1" = "billng" }, on_timeout = "welcome", on_invalid = "welcome" }
        "##;
        assert_eq!(
            errors(text),
            [
                r##"flow "main", field "start": unknown step "welcom""##,
                r##"flow "main", step "menu", field "options.1": unknown step "billng""##,
            ]
        );
    }

    #[test]
    fn names_unknown_queues_trunks_schedules_lists_and_languages() {
        let text = r##"
            [[flow]]
            name = "f"
            start = "a"
            language = "fr"
            [flow.steps.a]
            branch_time = { schedule = "hours", open = "b", closed = "c" }
            [flow.steps.b]
            branch_caller = { list = "vip", then = "c", else = "d" }
            [flow.steps.c]
            queue = { name = "biling" }
            [flow.steps.d]
            branch_queue = { queue = "tech", min_agents = 1, then = "e", else = "c" }
            [flow.steps.e]
            transfer = { number = "4008001234", trunk = "mobile" }
        "##;
        assert_eq!(
            errors(text),
            [
                r##"flow "f", field "language": unknown language "fr""##,
                r##"flow "f", step "a", field "schedule": unknown schedule "hours""##,
                r##"flow "f", step "b", field "list": unknown number list "vip""##,
                r##"flow "f", step "c", field "name": unknown queue "biling""##,
                r##"flow "f", step "d", field "queue": unknown queue "tech""##,
                r##"flow "f", step "e", field "trunk": unknown trunk "mobile""##,
            ]
        );
    }

    #[test]
    fn names_missing_and_unknown_prompts_per_language() {
        let text = flow(
            r##"
            [flow.steps.a]
            play = []
            next = "b"
            [flow.steps.b]
            set = { language = "zh" }
            next = "c"
            [flow.steps.c]
            play = ["welcome", "welcom"]
            next = "d"
            [flow.steps.d]
            hangup = { prompt = ["closed"] }
            "##,
        );
        assert_eq!(
            errors(&text),
            [
                r##"flow "f", step "a", field "play": missing prompt"##,
                r##"flow "f", step "c", field "play[1]": unknown prompt "welcom" in language "en""##,
                r##"flow "f", step "c", field "play[1]": unknown prompt "welcom" in language "zh""##,
                r##"flow "f", step "d", field "prompt[0]": unknown prompt "closed" in language "zh""##,
                r##"flow "f", step "end": unreachable from start step "a""##,
            ]
        );
    }

    #[test]
    fn checks_menu_settings() {
        let text = flow(
            r##"
            [flow.steps.a]
            menu = { options = { "1" = "end", "12" = "end", "x" = "end" }, timeout_secs = 0, max_timeouts = 0, max_invalid = 0, on_timeout = "end", on_invalid = "end" }
            next = "end"
            "##,
        );
        assert_eq!(
            errors(&text),
            [
                r##"flow "f", step "a", field "next": a menu step does not take next"##,
                r##"flow "f", step "a", field "prompt": missing prompt"##,
                r##"flow "f", step "a", field "options.12": not a single key of 0-9, * or #"##,
                r##"flow "f", step "a", field "options.x": not a single key of 0-9, * or #"##,
                r##"flow "f", step "a", field "timeout_secs": must be at least 1"##,
                r##"flow "f", step "a", field "max_timeouts": must be at least 1"##,
                r##"flow "f", step "a", field "max_invalid": must be at least 1"##,
            ]
        );
        let empty = flow(
            r##"
            [flow.steps.a]
            menu = { prompt = ["menu"], options = {}, on_timeout = "end", on_invalid = "end" }
            "##,
        );
        assert_eq!(
            errors(&empty),
            [r##"flow "f", step "a", field "options": no options"##]
        );
    }

    #[test]
    fn checks_collect_settings() {
        let text = flow(
            r##"
            [flow.steps.a]
            collect = { prompt = ["menu"], var = "", min_digits = 5, max_digits = 4, terminator = "0", accept = "12a", timeout_secs = 0, max_attempts = 0, on_fail = "end" }
            [flow.steps.b]
            collect = { prompt = ["menu"], var = "pin", max_digits = 0, accept = "0123#", on_fail = "end" }
            next = "end"
            "##,
        );
        assert_eq!(
            errors(&text),
            [
                r##"flow "f", step "a", field "next": missing"##,
                r##"flow "f", step "a", field "var": empty variable name"##,
                r##"flow "f", step "a", field "min_digits": 5 is more than max_digits 4"##,
                r##"flow "f", step "a", field "terminator": must be "#", "*" or """##,
                r##"flow "f", step "a", field "accept": must be keys of 0-9, * or #"##,
                r##"flow "f", step "a", field "timeout_secs": must be at least 1"##,
                r##"flow "f", step "a", field "max_attempts": must be at least 1"##,
                r##"flow "f", step "b", field "max_digits": must be at least 1"##,
                r##"flow "f", step "b", field "min_digits": 1 is more than max_digits 0"##,
                r##"flow "f", step "b", field "accept": contains the terminator"##,
                r##"flow "f", step "b": unreachable from start step "a""##,
            ]
        );
    }

    #[test]
    fn checks_branch_set_queue_transfer_and_hangup_settings() {
        let text = flow(
            r##"
            [flow.steps.a]
            branch_var = { var = "", cases = {}, else = "b" }
            [flow.steps.b]
            branch_queue = { queue = "billing", then = "c", else = "c" }
            [flow.steps.c]
            set = { language = "de", skills = [""], vars = { "" = "x" } }
            next = "d"
            barge_in = true
            [flow.steps.d]
            queue = { name = "billing", preferred_wait_secs = 10 }
            [flow.steps.e]
            queue = { name = "billing", preferred_agent = "", preferred_wait_secs = 0 }
            [flow.steps.g]
            queue = { name = "billing", preferred_agent = "2001", preferred_wait_secs = 0 }
            [flow.steps.h]
            transfer = { number = "400-800" }
            [flow.steps.i]
            hangup = { disposition = "Closed!" }
            "##,
        );
        let reported = errors(&text);
        let expected = [
            r##"flow "f", step "a", field "var": empty variable name"##,
            r##"flow "f", step "a", field "cases": no cases"##,
            r##"flow "f", step "b": needs min_agents or max_wait_secs"##,
            r##"flow "f", step "c", field "barge_in": only play steps take barge_in"##,
            r##"flow "f", step "c", field "language": unknown language "de""##,
            r##"flow "f", step "c", field "skills": empty skill name"##,
            r##"flow "f", step "c", field "vars": empty variable name"##,
            r##"flow "f", step "d", field "preferred_wait_secs": without preferred_agent"##,
            r##"flow "f", step "e", field "preferred_agent": empty agent"##,
            r##"flow "f", step "g", field "preferred_wait_secs": must be at least 1"##,
            r##"flow "f", step "h", field "number": "400-800" is not a dialable number"##,
            r##"flow "f", step "i", field "disposition": must be lowercase letters, digits or -"##,
        ];
        for message in expected {
            assert!(
                reported.contains(&message.to_owned()),
                "{message}\n{reported:#?}"
            );
        }
    }

    #[test]
    fn finds_unreachable_steps_and_loops_without_input() {
        let text = flow(
            r##"
            [flow.steps.a]
            set = { priority = 1 }
            next = "b"
            [flow.steps.b]
            branch_var = { var = "x", cases = { "1" = "a" }, else = "c" }
            [flow.steps.c]
            play = ["welcome"]
            next = "a"
            [flow.steps.orphan]
            play = ["welcome"]
            next = "end"
            "##,
        );
        assert_eq!(
            errors(&text),
            [
                r##"flow "f", step "end": unreachable from start step "a""##,
                r##"flow "f", step "orphan": unreachable from start step "a""##,
                r##"flow "f", step "a": loop without waiting for the caller: a -> b -> a"##,
            ]
        );
    }

    #[test]
    fn names_duplicates_and_empty_days() {
        let text = r##"
            [[flow]]
            name = "f"
            start = "a"
            steps = { a = { hangup = {} } }
            [[flow]]
            name = "f"
            start = "a"
            steps = { a = { hangup = {} } }
            [[schedule]]
            name = "s"
            time_zone = "UTC"
            hours = [{ days = [], open = "08:00", close = "09:00" }]
            [[schedule]]
            name = "s"
            time_zone = "UTC"
            [[number_list]]
            name = "vip"
            [[number_list]]
            name = "vip"
        "##;
        assert_eq!(
            errors(text),
            [
                r##"flow "f": defined more than once"##,
                r##"schedule "s": defined more than once"##,
                r##"number list "vip": defined more than once"##,
                r##"schedule "s", field "hours[0].days": no days: leave it out for every day"##,
            ]
        );
    }
}

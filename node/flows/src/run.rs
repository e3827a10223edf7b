//! A caller's way through a flow: plain data that takes events and returns commands.
//!
//! The call actor owns a [`FlowRun`], feeds it what happened (start, digits, prompt and timer
//! completions) with the current time and a view of the queues, carries out the returned
//! [`FlowCommand`]s, and replicates the run with the rest of the call. Prompts and timers carry
//! tokens: a completion whose token is not the one awaited (a prompt stopped by barge-in, a timer
//! of a step already left) is ignored. The flow set is looked up on every event, so a live change
//! applies at the next step; a run whose flow or step was removed ends with
//! [`FlowCommand::Failed`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::announce::prompt_path;
use crate::model::{
    Collect, DEFAULT_PREFERRED_WAIT_SECS, DTMF_KEYS, Flow, FlowSet, Menu, Step, StepKind,
};
use crate::schedule::ScheduleState;

/// The variable a survey flow collects the caller's score into; the call core stores it on the
/// call record.
pub const SURVEY_VAR: &str = "survey";

/// Steps entered in a row without playing or waiting before the run gives up (validation
/// rejects such loops; this guards a set that skipped it).
const MAX_HOPS: usize = 64;

/// What the flow may ask about the call's surroundings, read-only.
pub trait FlowEnv {
    fn agents_logged_in(&self, queue: &str) -> u32;
    fn estimated_wait_secs(&self, queue: &str) -> u64;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    Start,
    /// A key from an RFC 4733 event or an in-band tone: `0`-`9`, `*`, `#` (others are ignored).
    Digit(char),
    /// The prompt started with this token played to its end.
    PromptFinished(u64),
    /// The timer started with this token expired.
    Timer(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowCommand {
    /// Play prompts in order; each is `<language>/<name>`, the file
    /// `<prompts dir>/<language>/<name>.wav`. Report the end with `PromptFinished(token)`.
    Play {
        token: u64,
        prompts: Vec<String>,
        barge_in: bool,
    },
    /// Stop the prompt playing now (a digit barged in); no `PromptFinished` is needed.
    StopPlayback,
    /// Report `Timer(token)` after `after_ms`; an earlier timer need not be cancelled.
    StartTimer {
        token: u64,
        after_ms: u64,
    },
    EnterQueue {
        queue: String,
        priority: u8,
        skills: Vec<String>,
        language: String,
        preferred_agent: Option<PreferredAgent>,
    },
    Transfer {
        number: String,
        trunk: Option<String>,
    },
    Hangup {
        disposition: String,
    },
    /// The run cannot go on (its flow or step was removed by a live change, or a loop never
    /// waited); the call core decides what happens to the call.
    Failed {
        reason: String,
    },
}

/// Offer the call to this agent first, for as long as `wait_secs` while the agent is free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferredAgent {
    pub agent: String,
    pub wait_secs: u64,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    NotStarted,
    /// A prompt is playing; `token` is the one awaited.
    Prompting,
    /// Waiting for a digit; `token` is the timer's.
    AwaitingDigits,
    /// The run handed the call on (queue, transfer, hang-up) or failed; events are ignored.
    Finished,
}

/// The replicated state of a caller in a flow: the standby resumes it at the same step.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct FlowRun {
    pub flow: String,
    pub step: String,
    pub phase: Phase,
    pub caller: String,
    pub did: String,
    pub language: String,
    pub priority: u8,
    pub skills: Vec<String>,
    pub vars: BTreeMap<String, String>,
    /// Every menu key taken, in order (for the call record).
    pub menu_digits: String,
    /// Timeouts and invalid input at the current step.
    pub no_input: u32,
    pub bad_input: u32,
    /// Digits of the collect step in progress.
    pub collected: String,
    /// Token of the prompt or timer awaited; each new one takes the next value.
    pub token: u64,
}

/// Where to go after a step has done its part.
enum Outcome {
    Stay,
    Goto {
        step: String,
        typeahead: Option<char>,
    },
    Fail(String),
}

fn goto(step: &str, typeahead: Option<char>) -> Outcome {
    Outcome::Goto {
        step: step.to_owned(),
        typeahead,
    }
}

/// What one call of `handle` or `resume` works with and produces.
struct Turn<'a> {
    flows: &'a FlowSet,
    env: &'a dyn FlowEnv,
    now: Timestamp,
    out: Vec<FlowCommand>,
}

impl FlowRun {
    /// A run at the flow's start, for a call from `caller` to `did`; send `FlowEvent::Start`.
    pub fn new(flow: &Flow, caller: &str, did: &str) -> FlowRun {
        FlowRun {
            flow: flow.name.clone(),
            step: flow.start.clone(),
            phase: Phase::NotStarted,
            caller: caller.to_owned(),
            did: did.to_owned(),
            language: flow.language.clone(),
            priority: 0,
            skills: Vec::new(),
            vars: BTreeMap::new(),
            menu_digits: String::new(),
            no_input: 0,
            bad_input: 0,
            collected: String::new(),
            token: 0,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    pub fn handle(
        &mut self,
        flows: &FlowSet,
        env: &dyn FlowEnv,
        now: Timestamp,
        event: FlowEvent,
    ) -> Vec<FlowCommand> {
        self.take_turn(flows, env, now, |run, turn, step| {
            run.dispatch(turn, step, event)
        })
    }

    /// Re-enters the current step, on a standby after failover: its prompt plays again and its
    /// timer restarts; counters and variables are kept, digits of an unfinished entry are not.
    pub fn resume(
        &mut self,
        flows: &FlowSet,
        env: &dyn FlowEnv,
        now: Timestamp,
    ) -> Vec<FlowCommand> {
        self.take_turn(flows, env, now, |run, turn, step| {
            run.collected.clear();
            run.enter(turn, step, None)
        })
    }

    /// Applies `act` to the current step and follows where it leads.
    fn take_turn(
        &mut self,
        flows: &FlowSet,
        env: &dyn FlowEnv,
        now: Timestamp,
        act: impl FnOnce(&mut FlowRun, &mut Turn, &Step) -> Outcome,
    ) -> Vec<FlowCommand> {
        let mut turn = Turn {
            flows,
            env,
            now,
            out: Vec::new(),
        };
        if self.phase != Phase::Finished {
            let outcome = match self.current(flows) {
                Ok(step) => act(self, &mut turn, step),
                Err(reason) => Outcome::Fail(reason),
            };
            self.follow(&mut turn, outcome);
        }
        turn.out
    }

    fn current<'f>(&self, flows: &'f FlowSet) -> Result<&'f Step, String> {
        let flow = flows
            .flow(&self.flow)
            .ok_or_else(|| format!("flow {:?} no longer exists", self.flow))?;
        flow.steps
            .get(&self.step)
            .ok_or_else(|| format!("flow {:?} has no step {:?}", self.flow, self.step))
    }

    fn dispatch(&mut self, turn: &mut Turn, step: &Step, event: FlowEvent) -> Outcome {
        match event {
            FlowEvent::Start if self.phase == Phase::NotStarted => self.enter(turn, step, None),
            FlowEvent::Digit(digit) => self.on_digit(turn, step, digit),
            FlowEvent::PromptFinished(token) if self.awaits(Phase::Prompting, token) => {
                self.on_prompt_finished(turn, step)
            }
            FlowEvent::Timer(token) if self.awaits(Phase::AwaitingDigits, token) => {
                self.on_timer(turn, step)
            }
            _ => Outcome::Stay,
        }
    }

    fn awaits(&self, phase: Phase, token: u64) -> bool {
        self.phase == phase && self.token == token
    }

    /// Moves from step to step until one plays, waits or ends the run.
    fn follow(&mut self, turn: &mut Turn, mut outcome: Outcome) {
        let mut hops = 0;
        loop {
            outcome = match outcome {
                Outcome::Stay => return,
                Outcome::Fail(reason) => {
                    self.finish(turn, FlowCommand::Failed { reason });
                    return;
                }
                Outcome::Goto { step, .. } if hops == MAX_HOPS => Outcome::Fail(format!(
                    "{MAX_HOPS} steps in a row without waiting for the caller, at step {step:?}"
                )),
                Outcome::Goto { step, typeahead } => {
                    hops += 1;
                    self.step = step;
                    self.no_input = 0;
                    self.bad_input = 0;
                    self.collected.clear();
                    match self.current(turn.flows) {
                        Ok(step) => self.enter(turn, step, typeahead),
                        Err(reason) => Outcome::Fail(reason),
                    }
                }
            };
        }
    }

    /// Starts the step; `typeahead` is a digit that barged into an earlier prompt.
    fn enter(&mut self, turn: &mut Turn, step: &Step, typeahead: Option<char>) -> Outcome {
        match &step.kind {
            StepKind::Play(prompts) => match typeahead {
                Some(_) if step.barges_in() => self.next_of(step, typeahead),
                _ => {
                    self.play(turn, prompts, step.barges_in());
                    Outcome::Stay
                }
            },
            StepKind::Menu(menu) => match typeahead {
                Some(digit) => self.menu_digit(turn, menu, digit),
                None => {
                    self.play(turn, &menu.prompt, true);
                    Outcome::Stay
                }
            },
            StepKind::Collect(collect) => match typeahead {
                Some(digit) => self.collect_digit(turn, step, collect, digit),
                None => {
                    self.play(turn, &collect.prompt, true);
                    Outcome::Stay
                }
            },
            StepKind::BranchTime(branch) => match turn.flows.schedule(&branch.schedule) {
                Some(schedule) => match schedule.state_at(turn.now) {
                    ScheduleState::Open => goto(&branch.open, typeahead),
                    ScheduleState::Closed => goto(&branch.closed, typeahead),
                },
                None => Outcome::Fail(format!("schedule {:?} no longer exists", branch.schedule)),
            },
            StepKind::BranchCaller(branch) => match turn.flows.number_list(&branch.list) {
                Some(list) if list.contains(&self.caller) => goto(&branch.then, typeahead),
                Some(_) => goto(&branch.otherwise, typeahead),
                None => Outcome::Fail(format!("number list {:?} no longer exists", branch.list)),
            },
            StepKind::BranchVar(branch) => {
                let case = self
                    .vars
                    .get(&branch.var)
                    .and_then(|value| branch.cases.get(value));
                goto(case.unwrap_or(&branch.otherwise), typeahead)
            }
            StepKind::BranchQueue(branch) => {
                let staffed = branch
                    .min_agents
                    .is_none_or(|min| turn.env.agents_logged_in(&branch.queue) >= min);
                let quick = branch
                    .max_wait_secs
                    .is_none_or(|max| turn.env.estimated_wait_secs(&branch.queue) <= max);
                let target = if staffed && quick {
                    &branch.then
                } else {
                    &branch.otherwise
                };
                goto(target, typeahead)
            }
            StepKind::Set(set) => {
                if let Some(priority) = set.priority {
                    self.priority = priority;
                }
                for skill in &set.skills {
                    if !self.skills.contains(skill) {
                        self.skills.push(skill.clone());
                    }
                }
                if let Some(language) = &set.language {
                    self.language.clone_from(language);
                }
                self.vars
                    .extend(set.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.next_of(step, typeahead)
            }
            StepKind::Queue(queue) => {
                let preferred_agent = queue.preferred_agent.as_ref().map(|agent| PreferredAgent {
                    agent: agent.clone(),
                    wait_secs: queue
                        .preferred_wait_secs
                        .unwrap_or(DEFAULT_PREFERRED_WAIT_SECS),
                });
                let command = FlowCommand::EnterQueue {
                    queue: queue.name.clone(),
                    priority: self.priority,
                    skills: self.skills.clone(),
                    language: self.language.clone(),
                    preferred_agent,
                };
                self.finish(turn, command);
                Outcome::Stay
            }
            StepKind::Transfer(transfer) => {
                let command = FlowCommand::Transfer {
                    number: transfer.number.clone(),
                    trunk: transfer.trunk.clone(),
                };
                self.finish(turn, command);
                Outcome::Stay
            }
            StepKind::Hangup(hangup) => {
                if hangup.prompt.is_empty() {
                    let disposition = hangup.disposition.clone();
                    self.finish(turn, FlowCommand::Hangup { disposition });
                } else {
                    self.play(turn, &hangup.prompt, false);
                }
                Outcome::Stay
            }
        }
    }

    fn next_of(&self, step: &Step, typeahead: Option<char>) -> Outcome {
        match &step.next {
            Some(next) => goto(next, typeahead),
            None => Outcome::Fail(format!("step {:?} has no next", self.step)),
        }
    }

    fn on_digit(&mut self, turn: &mut Turn, step: &Step, digit: char) -> Outcome {
        if !DTMF_KEYS.contains(digit) {
            return Outcome::Stay;
        }
        match self.phase {
            Phase::AwaitingDigits => {}
            Phase::Prompting if step.barges_in() => turn.out.push(FlowCommand::StopPlayback),
            _ => return Outcome::Stay,
        }
        match &step.kind {
            StepKind::Play(_) => self.next_of(step, Some(digit)),
            StepKind::Menu(menu) => self.menu_digit(turn, menu, digit),
            StepKind::Collect(collect) => self.collect_digit(turn, step, collect, digit),
            _ => Outcome::Stay,
        }
    }

    fn on_prompt_finished(&mut self, turn: &mut Turn, step: &Step) -> Outcome {
        match &step.kind {
            StepKind::Play(_) => self.next_of(step, None),
            StepKind::Menu(menu) => {
                self.start_timer(turn, menu.timeout_secs);
                Outcome::Stay
            }
            StepKind::Collect(collect) => {
                self.start_timer(turn, collect.timeout_secs);
                Outcome::Stay
            }
            StepKind::Hangup(hangup) => {
                let disposition = hangup.disposition.clone();
                self.finish(turn, FlowCommand::Hangup { disposition });
                Outcome::Stay
            }
            // A live change replaced the step while its prompt played: start it afresh.
            _ => goto(&self.step, None),
        }
    }

    fn on_timer(&mut self, turn: &mut Turn, step: &Step) -> Outcome {
        match &step.kind {
            StepKind::Menu(menu) => {
                self.no_input += 1;
                if self.no_input >= menu.max_timeouts {
                    return goto(&menu.on_timeout, None);
                }
                self.play(turn, &menu.prompt, true);
                Outcome::Stay
            }
            StepKind::Collect(collect) if self.collected.len() >= collect.min_digits as usize => {
                self.accept(step, collect)
            }
            StepKind::Collect(collect) => {
                if self.collected.is_empty() {
                    self.no_input += 1;
                } else {
                    self.bad_input += 1;
                }
                self.retry(turn, collect)
            }
            // A live change replaced the step while its timer ran: start it afresh.
            _ => goto(&self.step, None),
        }
    }

    fn menu_digit(&mut self, turn: &mut Turn, menu: &Menu, digit: char) -> Outcome {
        let mut key = [0; 4];
        if let Some(target) = menu.options.get(&*digit.encode_utf8(&mut key)) {
            self.menu_digits.push(digit);
            return goto(target, None);
        }
        self.bad_input += 1;
        if self.bad_input >= menu.max_invalid {
            return goto(&menu.on_invalid, None);
        }
        self.play(turn, menu.invalid_prompt.iter().chain(&menu.prompt), true);
        Outcome::Stay
    }

    fn collect_digit(
        &mut self,
        turn: &mut Turn,
        step: &Step,
        collect: &Collect,
        digit: char,
    ) -> Outcome {
        let enough = |collected: &str| collected.len() >= collect.min_digits as usize;
        if collect.terminator.contains(digit) {
            if enough(&self.collected) {
                return self.accept(step, collect);
            }
            self.bad_input += 1;
            return self.retry(turn, collect);
        }
        if !collect.accept.contains(digit) {
            self.bad_input += 1;
            return self.retry(turn, collect);
        }
        self.collected.push(digit);
        if self.collected.len() >= collect.max_digits as usize {
            return self.accept(step, collect);
        }
        self.start_timer(turn, collect.timeout_secs);
        Outcome::Stay
    }

    fn accept(&mut self, step: &Step, collect: &Collect) -> Outcome {
        self.vars
            .insert(collect.var.clone(), self.collected.clone());
        self.next_of(step, None)
    }

    fn retry(&mut self, turn: &mut Turn, collect: &Collect) -> Outcome {
        if self.no_input + self.bad_input >= collect.max_attempts {
            return goto(&collect.on_fail, None);
        }
        self.collected.clear();
        self.play(
            turn,
            collect.invalid_prompt.iter().chain(&collect.prompt),
            true,
        );
        Outcome::Stay
    }

    fn play<'p>(
        &mut self,
        turn: &mut Turn,
        names: impl IntoIterator<Item = &'p String>,
        barge_in: bool,
    ) {
        self.token += 1;
        self.phase = Phase::Prompting;
        let prompts = names
            .into_iter()
            .map(|name| prompt_path(&self.language, name))
            .collect();
        turn.out.push(FlowCommand::Play {
            token: self.token,
            prompts,
            barge_in,
        });
    }

    fn start_timer(&mut self, turn: &mut Turn, secs: u64) {
        self.token += 1;
        self.phase = Phase::AwaitingDigits;
        turn.out.push(FlowCommand::StartTimer {
            token: self.token,
            after_ms: secs.saturating_mul(1000),
        });
    }

    fn finish(&mut self, turn: &mut Turn, command: FlowCommand) {
        self.phase = Phase::Finished;
        turn.out.push(command);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FlowCommand::{Hangup, StopPlayback};
    use FlowEvent::{Digit, PromptFinished, Timer};

    struct Queues {
        agents: u32,
        wait_secs: u64,
    }

    impl FlowEnv for Queues {
        fn agents_logged_in(&self, _queue: &str) -> u32 {
            self.agents
        }

        fn estimated_wait_secs(&self, _queue: &str) -> u64 {
            self.wait_secs
        }
    }

    /// A caller in the first flow of a set, at noon in Shanghai.
    struct Call {
        flows: FlowSet,
        queues: Queues,
        now: Timestamp,
        run: FlowRun,
    }

    impl Call {
        fn new(text: &str, caller: &str) -> Call {
            let flows: FlowSet = toml::from_str(text).expect("flow set parses");
            let run = FlowRun::new(&flows.flows[0], caller, "10086");
            Call {
                flows,
                queues: Queues {
                    agents: 1,
                    wait_secs: 0,
                },
                now: "2026-06-01T04:00:00Z".parse().expect("noon in Shanghai"),
                run,
            }
        }

        fn send(&mut self, event: FlowEvent) -> Vec<FlowCommand> {
            self.run.handle(&self.flows, &self.queues, self.now, event)
        }

        fn start(&mut self) -> Vec<FlowCommand> {
            self.send(FlowEvent::Start)
        }

        fn digit(&mut self, digit: char) -> Vec<FlowCommand> {
            self.send(Digit(digit))
        }

        /// The prompt awaited plays to its end.
        fn prompt_ends(&mut self) -> Vec<FlowCommand> {
            self.send(PromptFinished(self.run.token))
        }

        /// The timer awaited expires.
        fn timer_expires(&mut self) -> Vec<FlowCommand> {
            self.send(Timer(self.run.token))
        }
    }

    fn play(token: u64, prompts: &[&str], barge_in: bool) -> FlowCommand {
        FlowCommand::Play {
            token,
            prompts: prompts.iter().map(|prompt| prompt.to_string()).collect(),
            barge_in,
        }
    }

    fn timer(token: u64, after_ms: u64) -> FlowCommand {
        FlowCommand::StartTimer { token, after_ms }
    }

    fn queue(name: &str) -> FlowCommand {
        FlowCommand::EnterQueue {
            queue: name.to_owned(),
            priority: 0,
            skills: Vec::new(),
            language: "en".to_owned(),
            preferred_agent: None,
        }
    }

    fn hangup(disposition: &str) -> FlowCommand {
        Hangup {
            disposition: disposition.to_owned(),
        }
    }

    const MENU: &str = r##"
        [[flow]]
        name = "main"
        start = "welcome"
        [flow.steps.welcome]
        play = ["welcome"]
        next = "menu"
        [flow.steps.menu]
        menu = { prompt = ["menu"], options = { "1" = "billing", "2" = "tech", "0" = "general" }, timeout_secs = 5, max_timeouts = 2, max_invalid = 3, invalid_prompt = ["invalid"], on_timeout = "general", on_invalid = "general" }
        [flow.steps.billing]
        queue = { name = "billing" }
        [flow.steps.tech]
        queue = { name = "tech" }
        [flow.steps.general]
        queue = { name = "general" }
    "##;

    /// A caller who heard the welcome and the menu and is waiting for a key (timer token 3).
    fn at_menu() -> Call {
        let mut call = Call::new(MENU, "13800000000");
        assert_eq!(call.start(), [play(1, &["en/welcome"], true)]);
        assert_eq!(call.prompt_ends(), [play(2, &["en/menu"], true)]);
        assert_eq!(call.prompt_ends(), [timer(3, 5000)]);
        call
    }

    #[test]
    fn plays_welcome_then_menu_and_follows_the_key() {
        let mut call = at_menu();
        assert_eq!(call.run.phase, Phase::AwaitingDigits);
        assert_eq!(call.digit('2'), [queue("tech")]);
        assert!(call.run.is_finished());
        assert_eq!(call.run.step, "tech");
        assert_eq!(call.run.menu_digits, "2");
    }

    #[test]
    fn key_pressed_during_the_menu_prompt_stops_it_and_is_taken() {
        let mut call = Call::new(MENU, "13800000000");
        call.start();
        call.prompt_ends();
        assert_eq!(call.digit('1'), [StopPlayback, queue("billing")]);
        assert_eq!(call.run.menu_digits, "1");
    }

    #[test]
    fn key_pressed_during_the_welcome_is_type_ahead_for_the_menu() {
        let mut call = Call::new(MENU, "13800000000");
        call.start();
        assert_eq!(call.digit('0'), [StopPlayback, queue("general")]);

        let mut call = Call::new(MENU, "13800000000");
        call.start();
        assert_eq!(
            call.digit('9'),
            [StopPlayback, play(2, &["en/invalid", "en/menu"], true)]
        );
        assert_eq!((call.run.step.as_str(), call.run.bad_input), ("menu", 1));
    }

    #[test]
    fn play_without_barge_in_ignores_keys() {
        let text = r#"
            [[flow]]
            name = "notice"
            start = "recorded"
            [flow.steps.recorded]
            play = ["recorded"]
            barge_in = false
            next = "q"
            [flow.steps.q]
            queue = { name = "general" }
        "#;
        let mut call = Call::new(text, "13800000000");
        assert_eq!(call.start(), [play(1, &["en/recorded"], false)]);
        assert_eq!(call.digit('1'), []);
        assert_eq!(call.prompt_ends(), [queue("general")]);
    }

    #[test]
    fn no_key_twice_goes_to_the_timeout_step() {
        let mut call = at_menu();
        assert_eq!(call.timer_expires(), [play(4, &["en/menu"], true)]);
        assert_eq!(call.run.no_input, 1);
        assert_eq!(call.prompt_ends(), [timer(5, 5000)]);
        assert_eq!(call.timer_expires(), [queue("general")]);
        assert_eq!(call.run.menu_digits, "");
    }

    #[test]
    fn invalid_key_three_times_goes_to_the_invalid_step() {
        let mut call = at_menu();
        assert_eq!(call.digit('9'), [play(4, &["en/invalid", "en/menu"], true)]);
        assert_eq!(
            call.digit('*'),
            [StopPlayback, play(5, &["en/invalid", "en/menu"], true)]
        );
        assert_eq!(call.digit('#'), [StopPlayback, queue("general")]);
        assert_eq!(call.run.bad_input, 0, "counters reset on a new step");
    }

    #[test]
    fn timeouts_and_invalid_keys_count_separately() {
        let mut call = at_menu();
        call.digit('9');
        call.prompt_ends();
        call.timer_expires();
        call.digit('8');
        assert_eq!((call.run.no_input, call.run.bad_input), (1, 2));
        assert_eq!(call.run.step, "menu");
    }

    #[test]
    fn stale_completions_and_unknown_keys_are_ignored() {
        let mut call = at_menu();
        assert_eq!(call.digit('x'), []);
        assert_eq!(call.digit('A'), []);
        assert_eq!(call.send(FlowEvent::Start), []);
        call.digit('9'); // invalid: the menu plays again with token 4
        assert_eq!(call.send(Timer(3)), [], "timer of the previous wait");
        assert_eq!(call.send(PromptFinished(2)), [], "prompt stopped earlier");
        assert_eq!(call.send(Timer(4)), [], "a prompt token is not a timer");
        assert_eq!(call.prompt_ends(), [timer(5, 5000)]);
        call.digit('1');
        assert!(call.run.is_finished());
        for event in [Digit('1'), PromptFinished(5), Timer(5), FlowEvent::Start] {
            assert_eq!(call.send(event), [], "{event:?} after the end");
        }
    }

    const ACCOUNT: &str = r#"
        [[flow]]
        name = "account"
        start = "ask"
        [flow.steps.ask]
        collect = { prompt = ["enter-account"], var = "account", min_digits = 4, max_digits = 6, timeout_secs = 3, max_attempts = 2, invalid_prompt = ["invalid"], on_fail = "general" }
        next = "billing"
        [flow.steps.billing]
        queue = { name = "billing" }
        [flow.steps.general]
        queue = { name = "general" }
    "#;

    #[test]
    fn collects_digits_until_the_terminator() {
        let mut call = Call::new(ACCOUNT, "13800000000");
        assert_eq!(call.start(), [play(1, &["en/enter-account"], true)]);
        assert_eq!(call.digit('1'), [StopPlayback, timer(2, 3000)]);
        assert_eq!(call.digit('2'), [timer(3, 3000)]);
        assert_eq!(call.digit('3'), [timer(4, 3000)]);
        assert_eq!(call.digit('4'), [timer(5, 3000)]);
        assert_eq!(call.run.collected, "1234");
        assert_eq!(call.digit('#'), [queue("billing")]);
        assert_eq!(call.run.vars["account"], "1234");
        assert_eq!(call.run.collected, "");
    }

    #[test]
    fn collect_ends_at_max_digits_or_on_timeout_with_enough() {
        let mut call = Call::new(ACCOUNT, "13800000000");
        call.start();
        for digit in "12345".chars() {
            call.digit(digit);
        }
        assert_eq!(call.digit('6'), [queue("billing")]);
        assert_eq!(call.run.vars["account"], "123456");

        let mut call = Call::new(ACCOUNT, "13800000000");
        call.start();
        call.prompt_ends();
        for digit in "98765".chars() {
            call.digit(digit);
        }
        assert_eq!(call.timer_expires(), [queue("billing")]);
        assert_eq!(call.run.vars["account"], "98765");
    }

    #[test]
    fn collect_retries_then_fails() {
        let mut call = Call::new(ACCOUNT, "13800000000");
        call.start();
        call.digit('1');
        call.digit('2');
        assert_eq!(
            call.digit('#'),
            [play(4, &["en/invalid", "en/enter-account"], true)],
            "too short"
        );
        assert_eq!((call.run.collected.as_str(), call.run.bad_input), ("", 1));
        assert_eq!(call.prompt_ends(), [timer(5, 3000)]);
        assert_eq!(call.timer_expires(), [queue("general")], "nothing typed");
        assert!(!call.run.vars.contains_key("account"));
    }

    #[test]
    fn collect_rejects_keys_outside_accept_and_counts_stalled_input() {
        let mut call = Call::new(ACCOUNT, "13800000000");
        call.start();
        assert_eq!(
            call.digit('*'),
            [
                StopPlayback,
                play(2, &["en/invalid", "en/enter-account"], true)
            ]
        );
        call.prompt_ends();
        call.digit('5');
        assert_eq!(
            call.timer_expires(),
            [queue("general")],
            "stalled at one digit"
        );
        assert_eq!(call.run.bad_input, 0);
    }

    #[test]
    fn survey_stores_the_score_and_hangs_up_after_thanks() {
        let text = r#"
            [[flow]]
            name = "survey"
            start = "ask"
            [flow.steps.ask]
            collect = { prompt = ["survey"], var = "survey", max_digits = 1, accept = "12345", terminator = "", on_fail = "bye" }
            next = "thanks"
            [flow.steps.thanks]
            hangup = { prompt = ["thanks"], disposition = "survey" }
            [flow.steps.bye]
            hangup = {}
        "#;
        let mut call = Call::new(text, "13800000000");
        call.start();
        assert_eq!(
            call.digit('7'),
            [StopPlayback, play(2, &["en/survey"], true)]
        );
        assert_eq!(
            call.digit('4'),
            [StopPlayback, play(3, &["en/thanks"], false)]
        );
        assert_eq!(call.run.vars[SURVEY_VAR], "4");
        assert_eq!(call.digit('5'), [], "no barge-in on the goodbye");
        assert_eq!(call.prompt_ends(), [hangup("survey")]);

        let mut silent = Call::new(text, "13800000000");
        silent.start();
        for _ in 0..2 {
            silent.prompt_ends();
            silent.timer_expires();
        }
        silent.prompt_ends();
        assert_eq!(silent.timer_expires(), [hangup("normal")]);
    }

    const BRANCHES: &str = r#"
        [[flow]]
        name = "branches"
        start = "blocked"
        [flow.steps.blocked]
        branch_caller = { list = "blocked", then = "refuse", else = "vip" }
        [flow.steps.refuse]
        hangup = { disposition = "blocked" }
        [flow.steps.vip]
        branch_caller = { list = "vip", then = "vip-set", else = "hours" }
        [flow.steps.vip-set]
        set = { priority = 10, skills = ["vip", "billing"], vars = { segment = "vip" } }
        next = "hours"
        [flow.steps.hours]
        branch_time = { schedule = "general", open = "busy", closed = "closed" }
        [flow.steps.closed]
        hangup = { prompt = ["closed"], disposition = "closed" }
        [flow.steps.busy]
        branch_queue = { queue = "general", min_agents = 1, max_wait_secs = 120, then = "segment", else = "overflow" }
        [flow.steps.overflow]
        transfer = { number = "4008001234", trunk = "telecom" }
        [flow.steps.segment]
        branch_var = { var = "segment", cases = { vip = "vip-queue" }, else = "general" }
        [flow.steps.vip-queue]
        queue = { name = "vip", preferred_agent = "2001" }
        [flow.steps.general]
        queue = { name = "general", preferred_agent = "2002", preferred_wait_secs = 30 }

        [[schedule]]
        name = "general"
        time_zone = "Asia/Shanghai"
        hours = [{ open = "08:30", close = "22:30" }]

        [[number_list]]
        name = "vip"
        numbers = ["13900000001-13900000099"]
        [[number_list]]
        name = "blocked"
        numbers = ["13666666666"]
    "#;

    #[test]
    fn vip_callers_get_priority_skills_and_their_manager() {
        let mut call = Call::new(BRANCHES, "13900000050");
        assert_eq!(
            call.start(),
            [FlowCommand::EnterQueue {
                queue: "vip".into(),
                priority: 10,
                skills: vec!["vip".into(), "billing".into()],
                language: "en".into(),
                preferred_agent: Some(PreferredAgent {
                    agent: "2001".into(),
                    wait_secs: 20
                }),
            }]
        );
    }

    #[test]
    fn other_callers_take_the_else_branches() {
        let mut call = Call::new(BRANCHES, "13900000100");
        assert_eq!(
            call.start(),
            [FlowCommand::EnterQueue {
                queue: "general".into(),
                priority: 0,
                skills: vec![],
                language: "en".into(),
                preferred_agent: Some(PreferredAgent {
                    agent: "2002".into(),
                    wait_secs: 30
                }),
            }]
        );
        let mut blocked = Call::new(BRANCHES, "13666666666");
        assert_eq!(blocked.start(), [hangup("blocked")]);
    }

    #[test]
    fn closed_hours_play_the_closed_prompt_and_hang_up() {
        let mut call = Call::new(BRANCHES, "13900000100");
        call.now = "2026-06-01T14:30:00Z".parse().expect("22:30 in Shanghai");
        assert_eq!(call.start(), [play(1, &["en/closed"], false)]);
        assert_eq!(call.prompt_ends(), [hangup("closed")]);
    }

    #[test]
    fn queue_state_decides_the_queue_branch() {
        let overflow = FlowCommand::Transfer {
            number: "4008001234".into(),
            trunk: Some("telecom".into()),
        };
        for (agents, wait_secs, overflows) in [(0, 0, true), (2, 121, true), (2, 120, false)] {
            let mut call = Call::new(BRANCHES, "13900000100");
            call.queues = Queues { agents, wait_secs };
            let commands = call.start();
            assert_eq!(
                commands == [overflow.clone()],
                overflows,
                "{agents} {wait_secs}"
            );
        }
    }

    #[test]
    fn variables_and_language_steer_later_steps() {
        let text = r#"
            [[flow]]
            name = "lang"
            start = "pick"
            [flow.steps.pick]
            menu = { prompt = ["language"], options = { "1" = "zh", "2" = "en" }, on_timeout = "check", on_invalid = "check" }
            [flow.steps.zh]
            set = { language = "zh", vars = { lang = "zh" } }
            next = "check"
            [flow.steps.en]
            set = { vars = { lang = "en" } }
            next = "check"
            [flow.steps.check]
            branch_var = { var = "lang", cases = { zh = "hello", en = "hello" }, else = "general" }
            [flow.steps.hello]
            play = ["welcome"]
            next = "general"
            [flow.steps.general]
            queue = { name = "general" }
        "#;
        let mut call = Call::new(text, "13800000000");
        call.start();
        assert_eq!(
            call.digit('1'),
            [StopPlayback, play(2, &["zh/welcome"], true)]
        );
        assert_eq!(call.run.vars["lang"], "zh");
        let commands = call.prompt_ends();
        assert!(
            matches!(&commands[..], [FlowCommand::EnterQueue { language, .. }] if language == "zh"),
            "{commands:?}"
        );

        let mut unset = Call::new(text, "13800000000");
        unset.start();
        unset.prompt_ends();
        for _ in 0..3 {
            unset.timer_expires();
            unset.prompt_ends();
        }
        assert_eq!(unset.run.step, "general", "no variable: else");
    }

    #[test]
    fn replica_round_trips_through_rkyv_and_json() {
        let mut call = at_menu();
        call.run.vars.insert("account".into(), "1234".into());
        call.run.skills.push("vip".into());
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&call.run).expect("archive");
        let back = rkyv::from_bytes::<FlowRun, rkyv::rancor::Error>(&bytes).expect("unarchive");
        assert_eq!(back, call.run);
        let json = serde_json::to_string(&call.run).expect("to json");
        assert!(json.contains(r#""phase":"awaiting_digits""#), "{json}");
        assert_eq!(
            serde_json::from_str::<FlowRun>(&json).expect("from json"),
            call.run
        );
    }

    #[test]
    fn standby_resumes_at_the_same_step_with_its_counters() {
        let mut call = at_menu();
        call.timer_expires();
        call.prompt_ends(); // waiting again, one timeout counted, timer token 5
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&call.run).expect("archive");
        let mut standby = Call::new(MENU, "13800000000");
        standby.run = rkyv::from_bytes::<FlowRun, rkyv::rancor::Error>(&bytes).expect("unarchive");

        assert_eq!(
            standby
                .run
                .resume(&standby.flows, &standby.queues, standby.now),
            [play(6, &["en/menu"], true)]
        );
        assert_eq!(
            (standby.run.step.as_str(), standby.run.no_input),
            ("menu", 1)
        );
        assert_eq!(standby.send(Timer(5)), [], "the dead node's timer");
        assert_eq!(standby.prompt_ends(), [timer(7, 5000)]);
        assert_eq!(
            standby.timer_expires(),
            [queue("general")],
            "second timeout"
        );
    }

    #[test]
    fn resume_starts_a_run_not_started_and_leaves_a_finished_one() {
        let mut call = Call::new(MENU, "13800000000");
        assert_eq!(
            call.run.resume(&call.flows, &call.queues, call.now),
            [play(1, &["en/welcome"], true)]
        );
        call.digit('1');
        assert!(call.run.is_finished());
        assert_eq!(call.run.resume(&call.flows, &call.queues, call.now), []);
    }

    #[test]
    fn live_changes_apply_at_the_next_step_and_removals_fail_the_run() {
        let mut call = at_menu();
        // The menu becomes a play step while its timer runs: the timer re-enters the step.
        call.flows.flows[0].steps.insert(
            "menu".into(),
            Step {
                kind: StepKind::Play(vec!["moved".into()]),
                next: Some("general".into()),
                barge_in: None,
            },
        );
        assert_eq!(call.timer_expires(), [play(4, &["en/moved"], true)]);

        call.flows.flows[0].steps.remove("general");
        assert_eq!(
            call.prompt_ends(),
            [FlowCommand::Failed {
                reason: r#"flow "main" has no step "general""#.into()
            }]
        );
        assert!(call.run.is_finished());

        let mut gone = at_menu();
        gone.flows.flows.clear();
        assert_eq!(
            gone.digit('1'),
            [FlowCommand::Failed {
                reason: r#"flow "main" no longer exists"#.into()
            }]
        );
    }

    #[test]
    fn a_loop_that_never_waits_fails_instead_of_spinning() {
        let text = r#"
            [[flow]]
            name = "spin"
            start = "a"
            [flow.steps.a]
            set = { priority = 1 }
            next = "b"
            [flow.steps.b]
            branch_var = { var = "x", cases = {}, else = "a" }
        "#;
        let mut call = Call::new(text, "13800000000");
        assert_eq!(
            call.start(),
            [FlowCommand::Failed {
                reason: format!(
                    "{MAX_HOPS} steps in a row without waiting for the caller, at step \"b\""
                )
            }]
        );
    }
}

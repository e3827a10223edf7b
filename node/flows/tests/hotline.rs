//! The hotline example, parsed, validated and called through the public API.

use std::collections::BTreeMap;

use jiff::Timestamp;
use switchyard_flows::{
    Catalog, FlowCommand, FlowEnv, FlowEvent, FlowRun, FlowSet, Override, validate,
};

const HOTLINE: &str = include_str!("hotline.toml");

struct NoQueues;

impl FlowEnv for NoQueues {
    fn agents_logged_in(&self, _queue: &str) -> u32 {
        0
    }

    fn estimated_wait_secs(&self, _queue: &str) -> u64 {
        0
    }
}

fn hotline() -> FlowSet {
    toml::from_str(HOTLINE).expect("hotline parses")
}

fn catalog() -> Catalog {
    let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect();
    let prompts = names(&["welcome", "menu", "invalid", "closed"]);
    Catalog {
        queues: names(&["billing", "tech", "general"]),
        trunks: names(&[]),
        prompts: BTreeMap::from([("zh".to_owned(), prompts)]),
    }
}

/// Shanghai local time `HH:MM` on 2026-06-01, a Monday.
fn shanghai(time: &str) -> Timestamp {
    format!("2026-06-01T{time}:00+08:00")
        .parse()
        .expect("timestamp")
}

/// A caller of 10086 at `now` who hears the welcome and the menu, then presses each key (or
/// lets the menu time out for `None`) after the prompt ends; returns the commands that end the
/// flow.
fn call(flows: &FlowSet, caller: &str, now: Timestamp, keys: &[Option<char>]) -> Vec<FlowCommand> {
    let mut run = FlowRun::new(flows.flow("main").expect("flow main"), caller, "10086");
    let prompt_ends =
        |run: &mut FlowRun| run.handle(flows, &NoQueues, now, FlowEvent::PromptFinished(run.token));
    let act = |run: &mut FlowRun, key: Option<char>| {
        let event = key.map_or(FlowEvent::Timer(run.token), FlowEvent::Digit);
        run.handle(flows, &NoQueues, now, event)
    };
    run.handle(flows, &NoQueues, now, FlowEvent::Start);
    let menu = prompt_ends(&mut run);
    assert!(matches!(&menu[..], [FlowCommand::Play { prompts, .. }] if prompts == &["zh/menu"]));
    let mut commands = Vec::new();
    for &key in keys {
        if run.is_finished() {
            break;
        }
        prompt_ends(&mut run);
        commands = act(&mut run, key);
    }
    if !run.is_finished() {
        commands = prompt_ends(&mut run); // the goodbye prompt
    }
    assert!(run.is_finished(), "{commands:?}");
    commands
}

fn queue(name: &str, priority: u8) -> FlowCommand {
    FlowCommand::EnterQueue {
        queue: name.to_owned(),
        priority,
        skills: Vec::new(),
        language: "zh".to_owned(),
        preferred_agent: None,
    }
}

#[test]
fn hotline_validates() {
    assert_eq!(validate(&hotline(), &catalog()), Ok(()));
}

#[test]
fn hotline_without_the_tech_queue_is_rejected_with_the_step_named() {
    let mut catalog = catalog();
    catalog.queues.remove("tech");
    let errors = validate(&hotline(), &catalog).expect_err("tech is unknown");
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [r#"flow "main", step "tech", field "name": unknown queue "tech""#]
    );
}

#[test]
fn menu_keys_reach_their_queues() {
    let flows = hotline();
    let noon = shanghai("12:00");
    assert_eq!(
        call(&flows, "13800000000", noon, &[Some('1')]),
        [queue("billing", 0)]
    );
    assert_eq!(
        call(&flows, "13800000000", noon, &[Some('2')]),
        [queue("tech", 0)]
    );
    assert_eq!(
        call(&flows, "13800000000", noon, &[Some('0')]),
        [queue("general", 0)]
    );
}

#[test]
fn vip_callers_get_priority_ten() {
    let flows = hotline();
    let noon = shanghai("12:00");
    assert_eq!(
        call(&flows, "13900000001", noon, &[Some('1')]),
        [queue("billing", 10)]
    );
    assert_eq!(
        call(&flows, "13900000099", noon, &[Some('2')]),
        [queue("tech", 10)]
    );
    assert_eq!(
        call(&flows, "13900000100", noon, &[Some('2')]),
        [queue("tech", 0)]
    );
}

#[test]
fn two_timeouts_or_three_invalid_keys_go_to_general() {
    let flows = hotline();
    let noon = shanghai("12:00");
    assert_eq!(
        call(&flows, "13800000000", noon, &[None, None]),
        [queue("general", 0)]
    );
    assert_eq!(
        call(
            &flows,
            "13800000000",
            noon,
            &[Some('9'), Some('*'), Some('#')]
        ),
        [queue("general", 0)]
    );
    assert_eq!(
        call(&flows, "13800000000", noon, &[Some('9'), None, Some('1')]),
        [queue("billing", 0)],
        "one of each is not enough"
    );
}

#[test]
fn general_is_open_from_half_past_eight_to_half_past_ten_shanghai() {
    let flows = hotline();
    let closed = vec![FlowCommand::Hangup {
        disposition: "closed".to_owned(),
    }];
    let general = vec![queue("general", 0)];
    let press_0: &[Option<char>] = &[Some('0')];
    let wait_twice: &[Option<char>] = &[None, None];
    for (time, keys, expected) in [
        ("08:29", press_0, &closed),
        ("08:30", press_0, &general),
        ("22:29", wait_twice, &general),
        ("22:30", wait_twice, &closed),
    ] {
        assert_eq!(
            &call(&flows, "13800000000", shanghai(time), keys),
            expected,
            "{time}"
        );
    }
    let late = call(&flows, "13800000000", shanghai("23:00"), &[Some('1')]);
    assert_eq!(late, [queue("billing", 0)], "billing has no hours");

    let holiday: Timestamp = "2026-10-01T12:00:00+08:00".parse().expect("timestamp");
    assert_eq!(call(&flows, "13800000000", holiday, press_0), closed);
    let mut forced = hotline();
    forced.schedules[0].manual = Override::Open;
    assert_eq!(call(&forced, "13800000000", holiday, press_0), general);
}

#[test]
fn closed_plays_the_closed_prompt_before_hanging_up() {
    let flows = hotline();
    let mut run = FlowRun::new(flows.flow("main").expect("main"), "13800000000", "10086");
    let late = shanghai("23:00");
    run.handle(&flows, &NoQueues, late, FlowEvent::Start);
    let commands = run.handle(&flows, &NoQueues, late, FlowEvent::Digit('0'));
    assert_eq!(
        commands,
        [
            FlowCommand::StopPlayback,
            FlowCommand::Play {
                token: 2,
                prompts: vec!["zh/closed".to_owned()],
                barge_in: false
            }
        ]
    );
}

#[test]
fn hotline_round_trips_through_the_api_json() {
    let flows = hotline();
    let json = serde_json::to_string(&flows).expect("to json");
    let back: FlowSet = serde_json::from_str(&json).expect("from json");
    assert_eq!(back, flows);
}

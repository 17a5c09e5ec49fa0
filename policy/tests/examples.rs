//! The example policies in docs/policies, each decision checked on inputs that should and
//! should not trigger it.

use std::path::PathBuf;

use crank_policy::{Kind, Policies, Time, sample};

fn examples() -> Policies {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/policies");
    Policies::load_dir(&dir).expect("the example policies load")
}

#[test]
fn every_decision_has_an_example() {
    let p = examples();
    assert_eq!(
        p.kinds(),
        vec![Kind::Admission, Kind::Placement, Kind::Output]
    );
}

#[test]
fn unknown_requesters_below_the_price_are_declined() {
    let p = examples();
    let mut input = sample::admission();
    input.requester.trust.known = false;
    input.price.max_stroops = 4_999;
    let d = p.admission(&input);
    assert_eq!(
        d.decline_reason().as_deref(),
        Some("policy: unknown requester offering 4999 stroops, below 5000")
    );
    input.price.max_stroops = 5_000;
    assert!(p.admission(&input).deny.is_empty());
    // A known requester may offer less.
    input.requester.trust.known = true;
    input.price.max_stroops = 10;
    assert!(p.admission(&input).deny.is_empty());
}

#[test]
fn no_work_above_the_temperature_and_double_on_battery() {
    let p = examples();
    let mut input = sample::admission();
    input.device.temperature_c = Some(85.0);
    let d = p.admission(&input);
    assert_eq!(d.deny.len(), 1, "{d:?}");
    assert!(d.deny[0].contains("above 80"), "{d:?}");
    input.device.temperature_c = None;
    let d = p.admission(&input);
    assert!(d.deny.is_empty(), "no thermal zone is not hot: {d:?}");
    assert_eq!(d.price_multiplier, 1.0);
    input.gate.on_battery = true;
    assert_eq!(p.admission(&input).price_multiplier, 2.0);
}

#[test]
fn confidential_tasks_stay_on_allow_listed_or_own_devices() {
    let p = examples();
    let mut input = sample::placement();
    assert!(p.placement(&input).exclude.is_empty(), "no label, no rule");
    input
        .task
        .labels
        .insert("sensitivity".into(), "confidential".into());
    assert_eq!(
        p.placement(&input).exclude,
        vec!["confidential task: worker not allow-listed".to_string()]
    );
    input.candidate.own = true;
    assert!(p.placement(&input).exclude.is_empty());
}

#[test]
fn a_bid_over_the_label_budget_is_excluded() {
    let p = examples();
    let mut input = sample::placement();
    input
        .task
        .labels
        .insert("budget_stroops".into(), "999".into());
    let d = p.placement(&input);
    assert_eq!(
        d.exclude,
        vec!["bid of 1000 stroops over the task's budget of 999".to_string()]
    );
    // Before the call for bids there is no bid to judge.
    input.stage = "call".into();
    input.candidate.bid = None;
    assert!(p.placement(&input).exclude.is_empty());
}

#[test]
fn confidential_scores_are_redacted() {
    let p = examples();
    let mut input = sample::output();
    assert!(p.output(&input).redact.is_empty());
    input
        .task
        .labels
        .insert("sensitivity".into(), "confidential".into());
    assert_eq!(p.output(&input).redact, vec!["logits".to_string()]);
    input.task.time = Time::at(0);
    input.outputs[0].name = "label".into();
    assert!(p.output(&input).redact.is_empty());
}

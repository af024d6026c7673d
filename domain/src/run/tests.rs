//! The run state machine: given / when / then cases and a property test
//! over random command sequences on random DAGs.

use super::*;
use crate::OrgName;
use crate::testing::given;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

fn id() -> RunId {
    RunId {
        org: OrgName::parse("acme").unwrap(),
        id: Uuid::from_u128(7),
    }
}

fn n(name: &str) -> NodeName {
    NodeName::parse(name).unwrap()
}

fn root() -> Actor {
    Actor::parse("root").unwrap()
}

fn plan(nodes: Value, concurrency: u32) -> std::sync::Arc<RunPlan> {
    let spec: WorkflowSpec = serde_json::from_value(json!({
        "version": "1",
        "concurrency": concurrency,
        "budget": {"wallTime": "1h"},
        "nodes": nodes
    }))
    .unwrap();
    let tools = spec
        .nodes
        .iter()
        .filter_map(|node| {
            node.tool.as_ref().map(|tool| {
                (
                    node.name.clone(),
                    PinnedTool {
                        name: tool.clone(),
                        version: ToolVersion::parse("1").unwrap(),
                    },
                )
            })
        })
        .collect();
    std::sync::Arc::new(RunPlan {
        workflow: WorkflowName::parse("main").unwrap(),
        spec,
        tools,
        workflows: BTreeMap::new(),
        parent: None,
        job_space: None,
    })
}

fn start(plan: std::sync::Arc<RunPlan>, input: Value) -> RunCommand {
    RunCommand::Start {
        plan,
        input,
        by: root(),
        now: 1000,
    }
}

fn run_of(events: &[RunEvent]) -> Run {
    Run::replay(events)
}

fn step(run: &mut Run, command: RunCommand) -> Vec<RunEvent> {
    let events = run.decide(&id(), &command).unwrap();
    for event in &events {
        run.evolve(event);
    }
    events
}

fn types(events: &[RunEvent]) -> Vec<&'static str> {
    events.iter().map(DomainEvent::event_type).collect()
}

#[test]
fn a_run_goes_through_a_tool_an_approval_and_a_timer() {
    let plan = plan(
        json!([
            {"name": "count", "tool": "text.count", "input": {"text": "input.text"}},
            {"name": "check", "needs": ["count"], "approval": {"message": "ok?", "timeout": "1h"}},
            {"name": "pause", "needs": ["check"], "wait": "5s"}
        ]),
        4,
    );
    let mut run = Run::default();
    let events = step(&mut run, start(plan, json!({"text": "a b c"})));
    assert_eq!(types(&events), ["Started", "NodeScheduled"]);
    assert_eq!(
        events[1],
        RunEvent::NodeScheduled {
            node: n("count"),
            attempt: 1,
            due: 1000,
            input: json!({"text": "a b c"})
        }
    );
    let claim = RunCommand::Claim {
        node: n("count"),
        attempt: 1,
        worker: "w1".into(),
        lease_until: 31_000,
        checks: json!({"authorization": "allowed"}),
        now: 1001,
    };
    assert_eq!(types(&step(&mut run, claim)), ["NodeStarted"]);
    let events = step(
        &mut run,
        RunCommand::Succeed {
            node: n("count"),
            attempt: 1,
            output: json!({"words": 3}),
            now: 1002,
        },
    );
    assert_eq!(types(&events), ["NodeSucceeded", "ApprovalRequested"]);
    let events = step(
        &mut run,
        RunCommand::Answer {
            node: n("check"),
            approved: true,
            by: Actor::parse("acme:alice").unwrap(),
            comment: "fine".into(),
            now: 2000,
        },
    );
    assert_eq!(types(&events), ["Approved", "TimerStarted"]);
    assert!(step(&mut run, RunCommand::Tick { now: 6999 }).is_empty());
    let events = step(&mut run, RunCommand::Tick { now: 7000 });
    assert_eq!(types(&events), ["TimerFired", "Completed"]);
    let state = run.0.unwrap();
    assert_eq!(state.status, RunStatus::Succeeded);
    assert_eq!(state.output.unwrap()["count"], json!({"words": 3}));
}

#[test]
fn false_conditions_skip_and_what_needs_a_skipped_node_still_runs() {
    let plan = plan(
        json!([
            {"name": "a", "tool": "t.a", "when": "input.go"},
            {"name": "b", "needs": ["a"], "tool": "t.b"},
            {"name": "c", "tool": "t.c"}
        ]),
        4,
    );
    let events = given::<Run>(&id(), [])
        .when(start(plan, json!({"go": false})))
        .then_expect_types();
    assert_eq!(
        events,
        ["Started", "NodeSkipped", "NodeScheduled", "NodeScheduled"]
    );
}

#[test]
fn failures_retry_with_backoff_then_fail_the_run() {
    let plan = plan(
        json!([{"name": "a", "tool": "t.a",
                "retry": {"attempts": 3, "backoff": "1s", "nonRetryable": ["output_not_json"]}}]),
        1,
    );
    let mut run = Run::default();
    step(&mut run, start(plan, json!({})));
    let fail = |attempt, code: &str, now| RunCommand::Fail {
        node: n("a"),
        attempt,
        failure: NodeFailure {
            code: code.into(),
            message: "boom".into(),
            retryable: true,
        },
        now,
    };
    let events = step(&mut run, fail(1, "timeout", 2000));
    assert_eq!(types(&events), ["AttemptFailed"]);
    assert!(matches!(
        events[0],
        RunEvent::AttemptFailed {
            retry_at: Some(3000),
            ..
        }
    ));
    let due = run.0.as_ref().unwrap().due(2000);
    assert_eq!((due.dispatch.len(), due.tick, due.next), (0, false, 3000));
    assert_eq!(run.0.as_ref().unwrap().due(3000).dispatch, [(n("a"), 2, 0)]);
    // A report for the old attempt is refused; the new one is due later.
    assert!(run.decide(&id(), &fail(1, "timeout", 2001)).is_err());
    let events = step(&mut run, fail(2, "output_not_json", 4000));
    assert_eq!(types(&events), ["AttemptFailed", "NodeFailed", "Failed"]);
    let state = run.0.as_ref().unwrap();
    assert_eq!(state.status, RunStatus::Failed);
    assert_eq!(state.error.as_ref().unwrap().code, "output_not_json");
    // Late reports change nothing.
    assert!(step(&mut run, fail(2, "timeout", 5000)).is_empty());
}

#[test]
fn a_completed_node_never_runs_again() {
    let plan = plan(
        json!([{"name": "a", "tool": "t.a"}, {"name": "b", "tool": "t.b"}]),
        1,
    );
    let mut run = Run::default();
    let events = step(&mut run, start(plan, json!({})));
    assert_eq!(
        types(&events),
        ["Started", "NodeScheduled"],
        "concurrency 1"
    );
    let succeed = RunCommand::Succeed {
        node: n("a"),
        attempt: 1,
        output: json!(1),
        now: 1500,
    };
    assert_eq!(
        types(&step(&mut run, succeed.clone())),
        ["NodeSucceeded", "NodeScheduled"]
    );
    assert!(
        step(&mut run, succeed).is_empty(),
        "a repeated report is a no-op"
    );
    let claim = RunCommand::Claim {
        node: n("a"),
        attempt: 1,
        worker: "w".into(),
        lease_until: 0,
        checks: Value::Null,
        now: 1600,
    };
    assert!(matches!(
        run.decide(&id(), &claim),
        Err(RunRejection::NotRunning { .. })
    ));
}

#[test]
fn leases_keep_a_node_with_one_worker_until_they_expire() {
    let plan = plan(json!([{"name": "a", "tool": "t.a"}]), 1);
    let mut run = Run::default();
    step(&mut run, start(plan, json!({})));
    let claim = |worker: &str, now| RunCommand::Claim {
        node: n("a"),
        attempt: 1,
        worker: worker.into(),
        lease_until: now + 100,
        checks: Value::Null,
        now,
    };
    step(&mut run, claim("w1", 1000));
    assert_eq!(
        run.decide(&id(), &claim("w2", 1050)),
        Err(RunRejection::LeaseHeld(n("a")))
    );
    // Not even its holder takes it twice while the lease runs.
    assert_eq!(
        run.decide(&id(), &claim("w1", 1060)),
        Err(RunRejection::LeaseHeld(n("a")))
    );
    assert_eq!(types(&step(&mut run, claim("w2", 1100))), ["NodeStarted"]);
    assert_eq!(types(&step(&mut run, claim("w1", 1250))), ["NodeStarted"]);
}

#[test]
fn deadlines_rejections_and_cancellation_end_runs() {
    let p = plan(json!([{"name": "a", "tool": "t.a"}]), 1);
    let mut run = Run::default();
    step(&mut run, start(p.clone(), json!({})));
    let events = step(
        &mut run,
        RunCommand::Tick {
            now: 1000 + 3_600_000,
        },
    );
    assert_eq!(types(&events), ["Failed"]);

    let p2 = plan(json!([{"name": "ok", "approval": {}}]), 1);
    let mut run = Run::default();
    step(&mut run, start(p2, json!({})));
    let events = step(
        &mut run,
        RunCommand::Answer {
            node: n("ok"),
            approved: false,
            by: root(),
            comment: "no".into(),
            now: 1100,
        },
    );
    assert_eq!(types(&events), ["Rejected", "Failed"]);

    let mut run = Run::default();
    step(&mut run, start(p, json!({})));
    let events = step(
        &mut run,
        RunCommand::Cancel {
            by: root(),
            reason: "not needed".into(),
        },
    );
    assert_eq!(types(&events), ["Cancelled"]);
    assert!(
        step(
            &mut run,
            RunCommand::Succeed {
                node: n("a"),
                attempt: 1,
                output: json!({}),
                now: 1200
            }
        )
        .is_empty()
    );
    assert_eq!(
        run.decide(
            &id(),
            &RunCommand::Answer {
                node: n("a"),
                approved: true,
                by: root(),
                comment: String::new(),
                now: 1300
            }
        ),
        Err(RunRejection::Ended("cancelled"))
    );
}

#[test]
fn expressions_that_fail_at_run_time_fail_the_node() {
    let p = plan(
        json!([{"name": "a", "tool": "t.a", "input": {"x": "input.missing + 1"}}]),
        1,
    );
    let events = given::<Run>(&id(), [])
        .when(start(p, json!({})))
        .then_expect_types();
    assert_eq!(events, ["Started", "NodeFailed", "Failed"]);
}

trait Types {
    fn then_expect_types(self) -> Vec<&'static str>;
}

impl Types for crate::testing::Then<Run> {
    fn then_expect_types(self) -> Vec<&'static str> {
        let events = self.result().expect("the command is accepted");
        types(&events)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Claim(usize, u32, u8),
    Succeed(usize, u32),
    Fail(usize, u32, bool),
    Answer(usize, bool),
    Tick(i64),
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..6, 1u32..4, 0u8..2).prop_map(|(n, a, w)| Op::Claim(n, a, w)),
        (0usize..6, 1u32..4).prop_map(|(n, a)| Op::Succeed(n, a)),
        (0usize..6, 1u32..4, any::<bool>()).prop_map(|(n, a, r)| Op::Fail(n, a, r)),
        (0usize..6, any::<bool>()).prop_map(|(n, a)| Op::Answer(n, a)),
        (0i64..20_000).prop_map(Op::Tick),
        Just(Op::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever workers, approvers and clocks do: a succeeded node is never
    /// scheduled or started again, a running lease is never taken over
    /// (not even by its holder), an ended run never changes, a
    /// succeeded run has every node done, and folding the events gives
    /// the state the decision was made against.
    #[test]
    fn runs_keep_their_invariants(
        kinds in proptest::collection::vec(0u8..3, 6),
        edges in proptest::collection::vec((0usize..6, 0usize..6), 0..8),
        concurrency in 1u32..4,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let nodes: Vec<Value> = (0..6)
            .map(|i| {
                let needs: Vec<String> = edges
                    .iter()
                    .filter(|(from, to)| *from == i && *to < i)
                    .map(|(_, to)| format!("n{to}"))
                    .collect();
                let mut node = json!({"name": format!("n{i}"), "needs": needs,
                                      "retry": {"attempts": 2, "backoff": "10ms"}});
                match kinds[i] {
                    0 => node["tool"] = json!("t.x"),
                    1 => node["approval"] = json!({"timeout": "2s"}),
                    _ => node["wait"] = json!("1s"),
                }
                node
            })
            .collect();
        let mut run = Run::default();
        let mut history = step(&mut run, start(plan(Value::Array(nodes), concurrency), json!({})));
        let mut now = 1000i64;
        let mut succeeded: std::collections::BTreeSet<NodeName> = Default::default();
        for op in ops {
            now += 7;
            let name = |i: usize| n(&format!("n{i}"));
            let command = match op {
                Op::Claim(i, attempt, w) => RunCommand::Claim {
                    node: name(i), attempt, worker: format!("w{w}"),
                    lease_until: now + 50, checks: Value::Null, now,
                },
                Op::Succeed(i, attempt) => RunCommand::Succeed { node: name(i), attempt, output: json!({"i": i}), now },
                Op::Fail(i, attempt, retryable) => RunCommand::Fail {
                    node: name(i), attempt,
                    failure: NodeFailure { code: "x".into(), message: "x".into(), retryable }, now,
                },
                Op::Answer(i, approved) => RunCommand::Answer { node: name(i), approved, by: root(), comment: String::new(), now },
                Op::Tick(d) => { now += d; RunCommand::Tick { now } }
                Op::Cancel => RunCommand::Cancel { by: root(), reason: String::new() },
            };
            let before = run.clone();
            let Ok(events) = run.decide(&id(), &command) else { continue };
            let was_final = before.0.as_ref().unwrap().status.is_final();
            prop_assert!(!was_final || events.is_empty() , "an ended run changed: {:?}", events);
            for event in &events {
                match event {
                    RunEvent::NodeScheduled { node, .. } => {
                        prop_assert!(!succeeded.contains(node), "{} ran again", node);
                    }
                    RunEvent::NodeStarted { node, .. } => {
                        prop_assert!(!succeeded.contains(node), "{} ran again", node);
                        // One holder at a time, whoever asks.
                        if let Some(NodeState::Running { lease_until, .. }) =
                            run.0.as_ref().unwrap().nodes.get(node)
                        {
                            prop_assert!(*lease_until <= now, "{} started under a running lease", node);
                        }
                    }
                    RunEvent::NodeSucceeded { node, .. } | RunEvent::Approved { node, .. } | RunEvent::TimerFired { node, .. } => {
                        succeeded.insert(node.clone());
                    }
                    _ => {}
                }
                run.evolve(event);
            }
            history.extend(events);
            let state = run.0.as_ref().unwrap();
            if state.status == RunStatus::Succeeded {
                prop_assert!(state.nodes.values().all(NodeState::is_done));
            }
            let active = state.nodes.values().filter(|s| s.is_active()).count();
            prop_assert!(active <= concurrency as usize, "{} active", active);
        }
        prop_assert_eq!(run_of(&history), run);
        // The payload printed straight from each event is the stored one.
        for event in &history {
            let parts = crate::EventParts::from_event(event).unwrap();
            prop_assert_eq!(
                crate::EventParts::payload_json(event).unwrap(),
                parts.payload.to_string()
            );
        }
    }
}

//! Contracts: what one run may do, and what it has used.
//!
//! A [`Contract`] is issued when a run starts, derived from the run's
//! definition and the org's grants: the tool versions it may call (those
//! its nodes name, pinned, and only those its starter's roles allow), its
//! budgets (calls, cost units), its data scopes and its deadline. Every
//! call is charged before it starts ([`ContractCommand::Charge`]): a call
//! outside the contract or past a budget is answered with a `Breached`
//! event, so the breach is on record, and the call does not run. Charging
//! the same attempt twice charges once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::run::{PinnedTool, RunId, RunPlan};
use crate::tool::{ToolName, ToolVersion};
use crate::workflow::{NodeName, WorkflowName};
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode};

/// What a contract allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terms {
    pub workflow: WorkflowName,
    pub workflow_version: ToolVersion,
    /// The subject the run acts for.
    pub principal: String,
    /// Each tool the run may call, at one version.
    pub tools: BTreeMap<ToolName, ToolVersion>,
    /// Calls in all, retries included.
    pub max_calls: u32,
    /// Cost units in all; `None`: unbounded.
    pub max_cost: Option<u64>,
    pub scopes: BTreeSet<String>,
    /// Milliseconds since the epoch.
    pub deadline: i64,
}

impl Terms {
    /// A run's terms, from its plan: each tool version the plan pins that
    /// its starter may call (as `may_call` says, asked when the run
    /// starts; a node whose tool is left out breaches when it is called),
    /// the workflow's budgets and scopes, and a deadline its wall time
    /// after `now`.
    pub fn for_run(
        plan: &RunPlan,
        principal: &str,
        may_call: impl Fn(&PinnedTool) -> bool,
        now: i64,
    ) -> Self {
        let spec = &plan.spec;
        Self {
            workflow: plan.workflow.clone(),
            workflow_version: spec.version.clone(),
            principal: principal.to_owned(),
            tools: plan
                .tools
                .values()
                .filter(|tool| may_call(tool))
                .map(|tool| (tool.name.clone(), tool.version.clone()))
                .collect(),
            max_calls: spec.budget.calls,
            max_cost: spec.budget.cost,
            scopes: spec.scopes.clone(),
            deadline: now.saturating_add(spec.budget.wall_time.as_millis() as i64),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachKind {
    ToolNotAllowed,
    VersionNotAllowed,
    CallsExhausted,
    CostExhausted,
    DeadlinePassed,
    Closed,
}

impl BreachKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToolNotAllowed => "tool_not_allowed",
            Self::VersionNotAllowed => "version_not_allowed",
            Self::CallsExhausted => "calls_exhausted",
            Self::CostExhausted => "cost_exhausted",
            Self::DeadlinePassed => "deadline_passed",
            Self::Closed => "contract_closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContractState {
    pub id: RunId,
    pub terms: Terms,
    pub calls_used: u32,
    pub cost_used: u64,
    /// The attempts charged, as `node/attempt`.
    pub charged: BTreeSet<String>,
    pub breaches: u32,
    pub closed: bool,
}

/// The Contract aggregate; `None` until issued.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Contract(pub Option<Box<ContractState>>);

/// One call, as charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallCharge {
    pub node: NodeName,
    pub attempt: u32,
    pub tool: ToolName,
    pub version: ToolVersion,
    pub cost: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContractCommand {
    Issue {
        terms: Box<Terms>,
    },
    Charge {
        call: CallCharge,
        now: i64,
    },
    /// The run ended: no more calls.
    Close,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum ContractEvent {
    Issued {
        id: RunId,
        terms: Box<Terms>,
    },
    CallAdmitted {
        call: CallCharge,
        calls_used: u32,
        cost_used: u64,
    },
    Breached {
        call: CallCharge,
        kind: BreachKind,
        detail: String,
    },
    Closed {},
}

impl DomainEvent for ContractEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Issued { .. } => "Issued",
            Self::CallAdmitted { .. } => "CallAdmitted",
            Self::Breached { .. } => "Breached",
            Self::Closed {} => "Closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractRejection {
    #[error("contract does not exist")]
    NotFound,
    #[error("contract already issued")]
    AlreadyIssued,
}

impl ErrorCode for ContractRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "contract_not_found",
            Self::AlreadyIssued => "contract_already_issued",
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound => ErrorClass::NotFound,
            Self::AlreadyIssued => ErrorClass::AlreadyExists,
        }
    }
}

impl ContractState {
    /// Why this call may not run, if it may not.
    fn breach(&self, call: &CallCharge, now: i64) -> Option<(BreachKind, String)> {
        let terms = &self.terms;
        if self.closed {
            return Some((BreachKind::Closed, "the run has ended".into()));
        }
        let Some(allowed) = terms.tools.get(&call.tool) else {
            return Some((
                BreachKind::ToolNotAllowed,
                format!("tool `{}` is not in the contract", call.tool),
            ));
        };
        if *allowed != call.version {
            return Some((
                BreachKind::VersionNotAllowed,
                format!(
                    "tool `{}` may run at version `{allowed}`, not `{}`",
                    call.tool, call.version
                ),
            ));
        }
        if now >= terms.deadline {
            return Some((
                BreachKind::DeadlinePassed,
                "the contract's deadline has passed".into(),
            ));
        }
        if self.calls_used >= terms.max_calls {
            return Some((
                BreachKind::CallsExhausted,
                format!("all {} calls of the budget are used", terms.max_calls),
            ));
        }
        if let Some(max) = terms.max_cost
            && self.cost_used + u64::from(call.cost) > max
        {
            return Some((
                BreachKind::CostExhausted,
                format!(
                    "the call costs {} and {} of {max} cost units are used",
                    call.cost, self.cost_used
                ),
            ));
        }
        None
    }
}

impl Aggregate for Contract {
    const KIND: &'static str = "contract";
    type Id = RunId;
    type Command = ContractCommand;
    type Event = ContractEvent;
    type Rejection = ContractRejection;

    fn decide(
        &self,
        id: &RunId,
        command: &ContractCommand,
    ) -> Result<Vec<ContractEvent>, ContractRejection> {
        match (command, &self.0) {
            (ContractCommand::Issue { terms }, None) => Ok(vec![ContractEvent::Issued {
                id: id.clone(),
                terms: terms.clone(),
            }]),
            (ContractCommand::Issue { terms }, Some(state)) => {
                if state.terms == **terms {
                    Ok(vec![])
                } else {
                    Err(ContractRejection::AlreadyIssued)
                }
            }
            (_, None) => Err(ContractRejection::NotFound),
            (ContractCommand::Charge { call, now }, Some(state)) => {
                if state
                    .charged
                    .contains(&format!("{}/{}", call.node, call.attempt))
                {
                    return Ok(vec![]);
                }
                Ok(vec![match state.breach(call, *now) {
                    Some((kind, detail)) => ContractEvent::Breached {
                        call: call.clone(),
                        kind,
                        detail,
                    },
                    None => ContractEvent::CallAdmitted {
                        call: call.clone(),
                        calls_used: state.calls_used + 1,
                        cost_used: state.cost_used + u64::from(call.cost),
                    },
                }])
            }
            (ContractCommand::Close, Some(state)) if state.closed => Ok(vec![]),
            (ContractCommand::Close, Some(_)) => Ok(vec![ContractEvent::Closed {}]),
        }
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &ContractEvent) {
        match event {
            ContractEvent::Issued { id, terms } => {
                self.0 = Some(Box::new(ContractState {
                    id: id.clone(),
                    terms: (**terms).clone(),
                    calls_used: 0,
                    cost_used: 0,
                    charged: BTreeSet::new(),
                    breaches: 0,
                    closed: false,
                }));
            }
            ContractEvent::CallAdmitted {
                call,
                calls_used,
                cost_used,
            } => {
                if let Some(state) = self.0.as_mut() {
                    state.calls_used = *calls_used;
                    state.cost_used = *cost_used;
                    state
                        .charged
                        .insert(format!("{}/{}", call.node, call.attempt));
                }
            }
            ContractEvent::Breached { .. } => {
                if let Some(state) = self.0.as_mut() {
                    state.breaches += 1;
                }
            }
            ContractEvent::Closed {} => {
                if let Some(state) = self.0.as_mut() {
                    state.closed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrgName;

    fn id() -> RunId {
        RunId {
            org: OrgName::parse("acme").unwrap(),
            id: uuid::Uuid::from_u128(1),
        }
    }

    fn terms() -> Box<Terms> {
        Box::new(Terms {
            workflow: WorkflowName::parse("main").unwrap(),
            workflow_version: ToolVersion::parse("1").unwrap(),
            principal: "acme:alice".into(),
            tools: [(
                ToolName::parse("t.a").unwrap(),
                ToolVersion::parse("1").unwrap(),
            )]
            .into_iter()
            .collect(),
            max_calls: 2,
            max_cost: Some(5),
            scopes: BTreeSet::new(),
            deadline: 10_000,
        })
    }

    fn call(node: &str, attempt: u32, tool: &str, version: &str, cost: u32) -> CallCharge {
        CallCharge {
            node: NodeName::parse(node).unwrap(),
            attempt,
            tool: ToolName::parse(tool).unwrap(),
            version: ToolVersion::parse(version).unwrap(),
            cost,
        }
    }

    fn charge(contract: &mut Contract, call: CallCharge, now: i64) -> Vec<ContractEvent> {
        let events = contract
            .decide(&id(), &ContractCommand::Charge { call, now })
            .unwrap();
        for e in &events {
            contract.evolve(e);
        }
        events
    }

    fn kind(events: &[ContractEvent]) -> Option<BreachKind> {
        match events {
            [ContractEvent::Breached { kind, .. }] => Some(*kind),
            _ => None,
        }
    }

    #[test]
    fn terms_hold_the_pinned_tools_the_starter_may_call() {
        let spec: crate::workflow::WorkflowSpec = serde_json::from_value(serde_json::json!({
            "version": "3",
            "budget": {"calls": 7, "wallTime": "10s"},
            "scopes": ["crm:read"],
            "nodes": [{"name": "a", "tool": "t.a"}, {"name": "b", "tool": "t.b"}]
        }))
        .unwrap();
        let pin = |name: &str| PinnedTool {
            name: ToolName::parse(name).unwrap(),
            version: ToolVersion::parse("1").unwrap(),
        };
        let plan = RunPlan {
            workflow: WorkflowName::parse("main").unwrap(),
            spec,
            tools: [
                (NodeName::parse("a").unwrap(), pin("t.a")),
                (NodeName::parse("b").unwrap(), pin("t.b")),
            ]
            .into_iter()
            .collect(),
            workflows: BTreeMap::new(),
            parent: None,
            job_space: None,
        };
        let terms = Terms::for_run(&plan, "acme:alice", |t| t.name.as_str() == "t.a", 1000);
        assert_eq!(
            terms.tools.keys().map(ToolName::as_str).collect::<Vec<_>>(),
            ["t.a"]
        );
        assert_eq!((terms.max_calls, terms.deadline), (7, 11_000));
        assert_eq!(terms.workflow_version.as_str(), "3");
        assert!(terms.scopes.contains("crm:read"));
    }

    #[test]
    fn calls_are_charged_once_and_refused_past_the_terms() {
        let mut contract = Contract::default();
        for e in contract
            .decide(&id(), &ContractCommand::Issue { terms: terms() })
            .unwrap()
        {
            contract.evolve(&e);
        }
        let ok = charge(&mut contract, call("a", 1, "t.a", "1", 2), 100);
        assert!(matches!(
            ok[0],
            ContractEvent::CallAdmitted {
                calls_used: 1,
                cost_used: 2,
                ..
            }
        ));
        assert!(charge(&mut contract, call("a", 1, "t.a", "1", 2), 100).is_empty());
        assert_eq!(
            kind(&charge(&mut contract, call("b", 1, "t.b", "1", 0), 100)),
            Some(BreachKind::ToolNotAllowed)
        );
        assert_eq!(
            kind(&charge(&mut contract, call("b", 1, "t.a", "2", 0), 100)),
            Some(BreachKind::VersionNotAllowed)
        );
        assert_eq!(
            kind(&charge(&mut contract, call("b", 1, "t.a", "1", 4), 100)),
            Some(BreachKind::CostExhausted)
        );
        assert_eq!(
            kind(&charge(&mut contract, call("b", 1, "t.a", "1", 1), 10_000)),
            Some(BreachKind::DeadlinePassed)
        );
        assert!(kind(&charge(&mut contract, call("b", 1, "t.a", "1", 1), 200)).is_none());
        assert_eq!(
            kind(&charge(&mut contract, call("c", 1, "t.a", "1", 0), 300)),
            Some(BreachKind::CallsExhausted)
        );
        let state = contract.0.as_ref().unwrap();
        assert_eq!(
            (state.calls_used, state.cost_used, state.breaches),
            (2, 3, 5)
        );
    }
}

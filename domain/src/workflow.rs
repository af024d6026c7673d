//! Workflow definitions: versioned DAGs of nodes, checked whole before
//! anything is stored.
//!
//! A node is a tool call, a sub-workflow, an approval, a timer, or (later)
//! an agent job. Edges are `needs`; `when` conditions and input mappings are
//! CEL expressions over the run's `input` and earlier nodes' outputs
//! (`nodes.<name>.output`). [`validate`] reports every problem at once, each
//! with its path: cycles, unknown nodes, tools or versions, expressions that
//! do not parse (with line and column), reads of outputs a node cannot have,
//! nodes that can never run. The [`Workflow`] aggregate keeps the versions;
//! like a tool's, a version never changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr::Expression;
use crate::ids::{Actor, InvalidName, Scoped, check_dns_label};
use crate::span::Span;
use crate::tool::{CompiledSchema, ToolName, ToolRejection, ToolState, ToolVersion};
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode, OrgName};

/// A workflow's name: a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkflowName(String);

impl WorkflowName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        check_dns_label("workflow name", value)?;
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A node's name: a lower-case identifier (`fetch`, `count_words`), so
/// that expressions can read `nodes.fetch.output`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                what: "node name",
                value: value.chars().take(80).collect(),
                reason: "must be a lower-case identifier such as `fetch` or `count_words`",
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

crate::ids::parsed_name!(WorkflowName, NodeName);

/// Retries of a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    #[serde(default = "Retry::one")]
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    #[serde(default = "Retry::second")]
    pub backoff: Span,
    #[serde(default = "Retry::minute")]
    pub max_backoff: Span,
    /// Failure codes that end the node at once (`output_schema_mismatch`,
    /// `exit_nonzero`, …).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub non_retryable: BTreeSet<String>,
}

impl Retry {
    fn one() -> u32 {
        1
    }
    fn second() -> Span {
        Span::from_secs(1)
    }
    fn minute() -> Span {
        Span::from_secs(60)
    }

    /// The wait before attempt `next` (2, 3, …).
    pub fn delay_before(&self, next: u32) -> Span {
        let doublings = next.saturating_sub(2).min(30);
        let millis = self
            .backoff
            .as_millis()
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff.as_millis());
        Span::from_millis(millis)
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Self::second(),
            max_backoff: Self::minute(),
            non_retryable: BTreeSet::new(),
        }
    }
}

/// An approval node: waits for a subject allowed to `approve` the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalSpec {
    /// What the approver is asked.
    #[serde(default)]
    pub message: String,
    /// How long to wait; past it the node fails with `approval_timed_out`.
    #[serde(default = "ApprovalSpec::day")]
    pub timeout: Span,
}

impl ApprovalSpec {
    fn day() -> Span {
        Span::from_secs(86_400)
    }
}

/// A sub-workflow node: runs another workflow as one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubWorkflow {
    pub name: WorkflowName,
    /// Omitted: the latest version when the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ToolVersion>,
}

/// One node as written. Exactly one of `tool`, `workflow`, `approval`,
/// `wait` and `job` says what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: NodeName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<NodeName>,
    /// A CEL condition; false skips the node. What needs a skipped node
    /// still runs (its `when` can test `nodes.x.status == 'skipped'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The node's input: a CEL expression per field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolName>,
    /// The tool version; omitted: the latest approved when the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ToolVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<SubWorkflow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// A timer: the node completes this long after it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Span>,
    /// An agent job (arrives with agents and jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Value>,
    #[serde(default)]
    pub retry: Retry,
    /// One attempt's time limit; for tools, at most the tool's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NodeKind<'a> {
    Tool(&'a ToolName, Option<&'a ToolVersion>),
    Workflow(&'a SubWorkflow),
    Approval(&'a ApprovalSpec),
    Wait(Span),
    Job,
}

impl NodeSpec {
    /// Every kind the node names (a valid node names one).
    pub fn kinds(&self) -> Vec<NodeKind<'_>> {
        let mut kinds = Vec::new();
        if let Some(tool) = &self.tool {
            kinds.push(NodeKind::Tool(tool, self.version.as_ref()));
        }
        if let Some(sub) = &self.workflow {
            kinds.push(NodeKind::Workflow(sub));
        }
        if let Some(approval) = &self.approval {
            kinds.push(NodeKind::Approval(approval));
        }
        if let Some(wait) = self.wait {
            kinds.push(NodeKind::Wait(wait));
        }
        if self.job.is_some() {
            kinds.push(NodeKind::Job);
        }
        kinds
    }

    /// What the node does; `None` for a node that names no kind or several.
    pub fn kind(&self) -> Option<NodeKind<'_>> {
        match self.kinds().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// Bounds on one run, written into its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// Tool calls in all, retries included.
    #[serde(default = "Budget::calls")]
    pub calls: u32,
    /// Cost units in all (each tool declares its cost per call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// From start to the deadline.
    #[serde(default = "Budget::wall_time")]
    pub wall_time: Span,
}

impl Budget {
    fn calls() -> u32 {
        1000
    }
    fn wall_time() -> Span {
        Span::from_secs(86_400)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            calls: Self::calls(),
            cost: None,
            wall_time: Self::wall_time(),
        }
    }
}

fn any_schema() -> Value {
    Value::Object(serde_json::Map::new())
}

fn default_concurrency() -> u32 {
    8
}

/// One version of a workflow, as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowSpec {
    pub version: ToolVersion,
    #[serde(default)]
    pub description: String,
    /// The JSON Schema a run's input must match.
    #[serde(default = "any_schema")]
    pub input: Value,
    /// Most nodes of one run running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub budget: Budget,
    /// The data scopes a run may touch, written into its contract and
    /// given to every tool call.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub scopes: BTreeSet<String>,
    pub nodes: Vec<NodeSpec>,
    /// A CEL expression for the run's output; omitted: every succeeded
    /// node's output by node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

pub const MAX_NODES: usize = 200;

/// One problem in a definition, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Problem {
    /// Such as `spec.nodes[2].when`.
    pub path: String,
    pub message: String,
}

/// What a definition refers to, looked up by the caller.
#[derive(Debug, Default, Clone)]
pub struct Known {
    /// The org's tools the definition names (absent: unknown).
    pub tools: HashMap<ToolName, ToolState>,
    /// The org's workflows the definition names, with their versions.
    pub workflows: HashMap<WorkflowName, Vec<ToolVersion>>,
}

/// Checks a definition whole; every problem is reported.
pub fn validate(
    name: &WorkflowName,
    spec: &WorkflowSpec,
    known: &Known,
) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |path: String, message: String| problems.push(Problem { path, message });

    if spec.description.chars().count() > 2000 {
        problem(
            "spec.description".into(),
            "must be at most 2000 characters".into(),
        );
    }
    if let Err(e) = CompiledSchema::compile(&spec.input) {
        problem(
            "spec.input".into(),
            format!("is not a valid JSON Schema: {e}"),
        );
    }
    if !(1..=64).contains(&spec.concurrency) {
        problem("spec.concurrency".into(), "must be between 1 and 64".into());
    }
    if spec.budget.calls == 0 || spec.budget.calls > 1_000_000 {
        problem(
            "spec.budget.calls".into(),
            "must be between 1 and 1000000".into(),
        );
    }
    if spec.budget.wall_time.as_millis() < 1000
        || spec.budget.wall_time > Span::from_secs(30 * 86_400)
    {
        problem(
            "spec.budget.wallTime".into(),
            "must be between 1s and 30d".into(),
        );
    }
    for scope in &spec.scopes {
        if scope.is_empty()
            || scope.len() > 100
            || scope.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            problem(
                "spec.scopes".into(),
                format!("`{scope}` must be 1 to 100 characters without spaces"),
            );
        }
    }
    if spec.nodes.is_empty() || spec.nodes.len() > MAX_NODES {
        problem(
            "spec.nodes".into(),
            format!("a workflow holds 1 to {MAX_NODES} nodes"),
        );
    }

    // Names, and where each is.
    let mut index: HashMap<&NodeName, usize> = HashMap::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        if index.insert(&node.name, i).is_some() {
            problem(
                format!("spec.nodes[{i}].name"),
                format!("`{}` is declared twice", node.name),
            );
        }
    }

    // Edges.
    for (i, node) in spec.nodes.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for (j, need) in node.needs.iter().enumerate() {
            let path = format!("spec.nodes[{i}].needs[{j}]");
            if need == &node.name {
                problem(path, "a node cannot need itself".into());
            } else if !index.contains_key(need) {
                problem(path, format!("unknown node `{need}`"));
            } else if !seen.insert(need) {
                problem(path, format!("`{need}` is listed twice"));
            }
        }
    }
    let on_cycle = cycles(spec, &index);
    for (i, node) in spec.nodes.iter().enumerate() {
        if let Some(cycle) = on_cycle.get(&node.name) {
            problem(
                format!("spec.nodes[{i}].needs"),
                format!("is part of a cycle: {cycle}"),
            );
        }
    }
    let ancestors = ancestors(spec, &index);
    for (i, node) in spec.nodes.iter().enumerate() {
        let blocked: Vec<&str> = ancestors[i]
            .iter()
            .filter(|a| on_cycle.contains_key(*a))
            .map(|a| a.as_str())
            .collect();
        if !on_cycle.contains_key(&node.name) && !blocked.is_empty() {
            problem(
                format!("spec.nodes[{i}]"),
                format!(
                    "can never run: it waits on the cycle through `{}`",
                    blocked.join("`, `")
                ),
            );
        }
    }

    // What each node does.
    for (i, node) in spec.nodes.iter().enumerate() {
        let path = format!("spec.nodes[{i}]");
        let kinds = node.kinds();
        if kinds.len() != 1 {
            problem(
                path.clone(),
                "must name exactly one of `tool`, `workflow`, `approval`, `wait` and `job`".into(),
            );
        }
        if node.version.is_some() && node.tool.is_none() {
            problem(
                format!("{path}.version"),
                "only a tool node takes a version".into(),
            );
        }
        if !(1..=20).contains(&node.retry.attempts) {
            problem(
                format!("{path}.retry.attempts"),
                "must be between 1 and 20".into(),
            );
        }
        if let Some(timeout) = node.timeout
            && (timeout.as_millis() < 10 || timeout > Span::from_secs(86_400))
        {
            problem(
                format!("{path}.timeout"),
                "must be between 10ms and 1d".into(),
            );
        }
        match node.kind() {
            Some(NodeKind::Tool(tool, version)) => match known.tools.get(tool) {
                None => problem(format!("{path}.tool"), format!("unknown tool `{tool}`")),
                Some(state) => match state.runnable(version) {
                    Ok(_) => {}
                    Err(ToolRejection::NoApprovedVersion) => problem(
                        format!("{path}.tool"),
                        format!("tool `{tool}` has no approved version; approve one or name a version"),
                    ),
                    Err(e) => problem(format!("{path}.version"), format!("tool `{tool}`: {e}")),
                },
            },
            Some(NodeKind::Workflow(sub)) => {
                if &sub.name == name {
                    problem(format!("{path}.workflow.name"), "a workflow cannot run itself".into());
                } else {
                    match (known.workflows.get(&sub.name), &sub.version) {
                        (None, _) => problem(
                            format!("{path}.workflow.name"),
                            format!("unknown workflow `{}`", sub.name),
                        ),
                        (Some(versions), Some(v)) if !versions.contains(v) => problem(
                            format!("{path}.workflow.version"),
                            format!("workflow `{}` has no version `{v}`", sub.name),
                        ),
                        _ => {}
                    }
                }
            }
            Some(NodeKind::Approval(approval)) => {
                if approval.message.chars().count() > 1000 {
                    problem(format!("{path}.approval.message"), "must be at most 1000 characters".into());
                }
                if approval.timeout.as_millis() < 10 || approval.timeout > Span::from_secs(30 * 86_400) {
                    problem(format!("{path}.approval.timeout"), "must be between 10ms and 30d".into());
                }
            }
            Some(NodeKind::Wait(wait)) if wait > Span::from_secs(30 * 86_400) => {
                problem(format!("{path}.wait"), "must be at most 30d".into());
            }
            Some(NodeKind::Job) => problem(
                format!("{path}.job"),
                "agent job nodes need agents and jobs, which Charter does not run yet; use a tool node".into(),
            ),
            Some(NodeKind::Wait(_)) | None => {}
        }
    }

    // Expressions: they parse, and read only what exists before them.
    let input_fields = closed_fields(&spec.input);
    for (i, node) in spec.nodes.iter().enumerate() {
        let mut expressions: Vec<(String, &str)> = Vec::new();
        if let Some(when) = &node.when {
            expressions.push((format!("spec.nodes[{i}].when"), when));
        }
        for (field, source) in &node.input {
            expressions.push((format!("spec.nodes[{i}].input.{field}"), source));
        }
        if matches!(
            node.kind(),
            Some(NodeKind::Wait(_)) | Some(NodeKind::Approval(_))
        ) && !node.input.is_empty()
        {
            problem(
                format!("spec.nodes[{i}].input"),
                "timers and approvals take no input".into(),
            );
        }
        for (path, source) in expressions {
            match Expression::parse(source) {
                Err(e) => problem(path, format!("does not parse: {e}")),
                Ok(expression) => {
                    if path.ends_with(".when") && expression.source().trim() == "false" {
                        problem(
                            path.clone(),
                            "is always false, so the node can never run".into(),
                        );
                    }
                    for reference in expression.references() {
                        if let Some(message) = check_reference(
                            &reference,
                            &ancestors[i],
                            &index,
                            spec,
                            known,
                            input_fields.as_ref(),
                        ) {
                            problem(path.clone(), message);
                        }
                    }
                }
            }
        }
    }
    if let Some(output) = &spec.output {
        match Expression::parse(output) {
            Err(e) => problem("spec.output".into(), format!("does not parse: {e}")),
            Ok(expression) => {
                let all: BTreeSet<NodeName> = spec.nodes.iter().map(|n| n.name.clone()).collect();
                for reference in expression.references() {
                    if let Some(message) = check_reference(
                        &reference,
                        &all,
                        &index,
                        spec,
                        known,
                        input_fields.as_ref(),
                    ) {
                        problem("spec.output".into(), message);
                    }
                }
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The property names of an object schema that allows no others.
fn closed_fields(schema: &Value) -> Option<BTreeSet<String>> {
    if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
        return None;
    }
    Some(
        schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default(),
    )
}

fn check_reference(
    path: &[String],
    before: &BTreeSet<NodeName>,
    index: &HashMap<&NodeName, usize>,
    spec: &WorkflowSpec,
    known: &Known,
    input_fields: Option<&BTreeSet<String>>,
) -> Option<String> {
    match path.first().map(String::as_str) {
        Some("input") => {
            let field = path.get(1)?;
            match input_fields {
                Some(fields) if !fields.contains(field) => Some(format!(
                    "reads `input.{field}`, which the workflow's input schema does not allow"
                )),
                _ => None,
            }
        }
        Some("nodes") => {
            let Some(target) = path.get(1) else {
                return Some("reads all of `nodes`; name the node whose output it needs".into());
            };
            let Ok(target) = NodeName::parse(target) else {
                return Some(format!("reads `nodes.{target}`, which is no node name"));
            };
            let Some(&at) = index.get(&target) else {
                return Some(format!(
                    "reads the output of `{target}`, which is not a node"
                ));
            };
            if !before.contains(&target) {
                return Some(format!(
                    "reads the output of `{target}`, which does not run before it (add it to `needs`)"
                ));
            }
            match path.get(2).map(String::as_str) {
                None | Some("output") | Some("status") => {}
                Some(other) => {
                    return Some(format!(
                        "reads `nodes.{target}.{other}`; a node has `output` and `status`"
                    ));
                }
            }
            if path.get(2).map(String::as_str) == Some("output")
                && let Some(field) = path.get(3)
            {
                let fields = match spec.nodes[at].kind() {
                    Some(NodeKind::Tool(tool, version)) => known
                        .tools
                        .get(tool)
                        .and_then(|t| t.runnable(version).ok())
                        .and_then(|v| closed_fields(&v.spec.output)),
                    Some(NodeKind::Approval(_)) => Some(
                        ["approved", "by", "comment"]
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                    ),
                    Some(NodeKind::Wait(_)) => Some(BTreeSet::new()),
                    _ => None,
                };
                if let Some(fields) = fields
                    && !fields.contains(field)
                {
                    return Some(format!(
                        "reads `nodes.{target}.output.{field}`, which the output of `{target}` cannot have"
                    ));
                }
            }
            None
        }
        Some(other) => Some(format!(
            "reads `{other}`, which is not defined; expressions see `input` and `nodes`"
        )),
        None => None,
    }
}

/// The nodes on a cycle, each with one of its cycles written out. A node is
/// on a cycle when it can reach itself through `needs`; a breadth-first
/// search from it finds the shortest way back.
fn cycles(spec: &WorkflowSpec, index: &HashMap<&NodeName, usize>) -> HashMap<NodeName, String> {
    let mut found = HashMap::new();
    for start in 0..spec.nodes.len() {
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut back = None;
        while let Some(at) = queue.pop_front() {
            for need in &spec.nodes[at].needs {
                let Some(&next) = index.get(need) else {
                    continue;
                };
                if next == start && at != start {
                    back = Some(at);
                    break;
                }
                if next != start && !parent.contains_key(&next) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
            if back.is_some() {
                break;
            }
        }
        if let Some(mut at) = back {
            let mut names = vec![
                spec.nodes[start].name.as_str(),
                spec.nodes[at].name.as_str(),
            ];
            while let Some(&up) = parent.get(&at) {
                names.push(spec.nodes[up].name.as_str());
                at = up;
            }
            // `names` runs back from the start; reversed it is the order
            // in which each node needs the next.
            names.reverse();
            found.insert(spec.nodes[start].name.clone(), names.join(" → "));
        }
    }
    found
}

/// Each node's transitive needs (cycles included, without looping).
fn ancestors(spec: &WorkflowSpec, index: &HashMap<&NodeName, usize>) -> Vec<BTreeSet<NodeName>> {
    (0..spec.nodes.len())
        .map(|start| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![start];
            while let Some(at) = todo.pop() {
                for need in &spec.nodes[at].needs {
                    if let Some(&next) = index.get(need)
                        && seen.insert(need.clone())
                    {
                        todo.push(next);
                    }
                }
            }
            seen.remove(&spec.nodes[start].name);
            seen
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowVersionState {
    pub spec: WorkflowSpec,
    pub registered_by: Actor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub org: OrgName,
    pub name: WorkflowName,
    /// In the order they were registered; the last is the latest.
    pub versions: Vec<WorkflowVersionState>,
}

impl WorkflowState {
    pub fn version(&self, version: Option<&ToolVersion>) -> Option<&WorkflowVersionState> {
        match version {
            None => self.versions.last(),
            Some(v) => self.versions.iter().find(|s| s.spec.version == *v),
        }
    }
}

/// The Workflow aggregate; `None` until its first version is registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Workflow(pub Option<WorkflowState>);

pub type WorkflowId = Scoped<WorkflowName>;

#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowCommand {
    /// Adds a version, already checked by [`validate`].
    Register { spec: Box<WorkflowSpec>, by: Actor },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum WorkflowEvent {
    VersionRegistered {
        org: OrgName,
        name: WorkflowName,
        spec: Box<WorkflowSpec>,
        by: Actor,
    },
}

impl DomainEvent for WorkflowEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::VersionRegistered { .. } => "VersionRegistered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowRejection {
    #[error(
        "version `{0}` is already registered with another definition; versions are immutable, register a new one"
    )]
    VersionImmutable(ToolVersion),
    #[error("a workflow holds at most 500 versions")]
    TooManyVersions,
}

impl ErrorCode for WorkflowRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::VersionImmutable(_) => "workflow_version_immutable",
            Self::TooManyVersions => "too_many_workflow_versions",
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            Self::VersionImmutable(_) => ErrorClass::AlreadyExists,
            Self::TooManyVersions => ErrorClass::FailedPrecondition,
        }
    }
}

impl Aggregate for Workflow {
    const KIND: &'static str = "workflow";
    type Id = WorkflowId;
    type Command = WorkflowCommand;
    type Event = WorkflowEvent;
    type Rejection = WorkflowRejection;

    fn decide(
        &self,
        id: &WorkflowId,
        command: &WorkflowCommand,
    ) -> Result<Vec<WorkflowEvent>, WorkflowRejection> {
        let WorkflowCommand::Register { spec, by } = command;
        if let Some(state) = &self.0 {
            if let Some(existing) = state.version(Some(&spec.version)) {
                return if existing.spec == **spec {
                    Ok(vec![])
                } else {
                    Err(WorkflowRejection::VersionImmutable(spec.version.clone()))
                };
            }
            if state.versions.len() >= 500 {
                return Err(WorkflowRejection::TooManyVersions);
            }
        }
        Ok(vec![WorkflowEvent::VersionRegistered {
            org: id.org.clone(),
            name: id.name.clone(),
            spec: spec.clone(),
            by: by.clone(),
        }])
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &WorkflowEvent) {
        let WorkflowEvent::VersionRegistered {
            org,
            name,
            spec,
            by,
        } = event;
        self.0
            .get_or_insert_with(|| WorkflowState {
                org: org.clone(),
                name: name.clone(),
                versions: Vec::new(),
            })
            .versions
            .push(WorkflowVersionState {
                spec: (**spec).clone(),
                registered_by: by.clone(),
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{Tool, ToolCommand, ToolSpec};
    use proptest::prelude::*;
    use serde_json::json;

    fn known() -> Known {
        let id = Scoped::new(
            OrgName::parse("acme").unwrap(),
            ToolName::parse("text.count").unwrap(),
        );
        let spec: ToolSpec = serde_json::from_value(json!({
            "version": "1",
            "output": {"type": "object", "additionalProperties": false, "properties": {"words": {"type": "integer"}}},
            "runtime": {"builtin": "echo"}
        }))
        .unwrap();
        let mut tool = Tool::default();
        let root = Actor::parse("root").unwrap();
        for command in [
            ToolCommand::Register {
                spec: Box::new(spec.clone()),
                by: root.clone(),
            },
            ToolCommand::Approve {
                version: spec.version.clone(),
                by: root.clone(),
            },
        ] {
            for e in tool.decide(&id, &command).unwrap() {
                tool.evolve(&e);
            }
        }
        let mut known = Known::default();
        known.tools.insert(id.name, tool.0.unwrap());
        known.workflows.insert(
            WorkflowName::parse("child").unwrap(),
            vec![ToolVersion::parse("1").unwrap()],
        );
        known
    }

    fn spec(nodes: Value) -> WorkflowSpec {
        serde_json::from_value(json!({
            "version": "1",
            "input": {"type": "object", "additionalProperties": false, "properties": {"text": {"type": "string"}}},
            "nodes": nodes
        }))
        .unwrap()
    }

    fn problems(nodes: Value) -> Vec<String> {
        match validate(
            &WorkflowName::parse("main").unwrap(),
            &spec(nodes),
            &known(),
        ) {
            Ok(()) => vec![],
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_good_definition_passes() {
        let found = problems(json!([
            {"name": "count", "tool": "text.count", "input": {"text": "input.text"}},
            {"name": "check", "needs": ["count"], "approval": {"message": "ok?", "timeout": "1h"},
             "when": "nodes.count.output.words > 10"},
            {"name": "pause", "needs": ["check"], "wait": "5s"},
            {"name": "sub", "needs": ["pause"], "workflow": {"name": "child"},
             "input": {"words": "nodes.count.output.words", "ok": "nodes.check.output.approved"}}
        ]));
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let found = problems(json!([
            {"name": "a", "needs": ["c"], "tool": "text.count"},
            {"name": "b", "needs": ["a"], "tool": "text.count"},
            {"name": "c", "needs": ["b"], "tool": "text.count"},
            {"name": "d", "needs": ["c"], "tool": "nope.tool"},
            {"name": "e", "tool": "text.count", "version": "7"},
            {"name": "f", "tool": "text.count", "when": "input.text ==", "input": {"x": "nodes.g.output"}},
            {"name": "g", "needs": ["l"], "tool": "text.count", "input": {"y": "nodes.l.output.lines", "z": "input.nope", "w": "secret.key"}},
            {"name": "h", "job": {"capability": "plan"}},
            {"name": "i", "tool": "text.count", "wait": "1s"},
            {"name": "j", "needs": ["zz", "j"], "workflow": {"name": "main"}},
            {"name": "k", "tool": "text.count", "when": "false"},
            {"name": "l", "tool": "text.count"},
        ]));
        let expect = [
            "spec.nodes[0].needs: is part of a cycle",
            "spec.nodes[1].needs: is part of a cycle",
            "spec.nodes[2].needs: is part of a cycle",
            "spec.nodes[3]: can never run",
            "spec.nodes[3].tool: unknown tool `nope.tool`",
            "spec.nodes[4].version: tool `text.count`: version `7` is not registered",
            "spec.nodes[5].when: does not parse: line 1",
            "spec.nodes[5].input.x: reads the output of `g`, which does not run before it",
            "spec.nodes[6].input.y: reads `nodes.l.output.lines`, which the output of `l` cannot have",
            "spec.nodes[6].input.z: reads `input.nope`",
            "spec.nodes[6].input.w: reads `secret`, which is not defined",
            "spec.nodes[7].job: agent job nodes need agents and jobs",
            "spec.nodes[8]: must name exactly one of",
            "spec.nodes[9].needs[0]: unknown node `zz`",
            "spec.nodes[9].needs[1]: a node cannot need itself",
            "spec.nodes[9].workflow.name: a workflow cannot run itself",
            "spec.nodes[10].when: is always false",
        ];
        for e in expect {
            assert!(
                found.iter().any(|f| f.starts_with(e)),
                "missing `{e}` in {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        let retry = Retry {
            attempts: 5,
            backoff: Span::from_millis(100),
            max_backoff: Span::from_millis(350),
            non_retryable: BTreeSet::new(),
        };
        let delays: Vec<u64> = (2..=5).map(|n| retry.delay_before(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    fn versions_are_immutable() {
        let id = Scoped::new(
            OrgName::parse("acme").unwrap(),
            WorkflowName::parse("main").unwrap(),
        );
        let root = Actor::parse("root").unwrap();
        let first = spec(json!([{"name": "a", "tool": "text.count"}]));
        let mut flow = Workflow::default();
        let events = flow
            .decide(
                &id,
                &WorkflowCommand::Register {
                    spec: Box::new(first.clone()),
                    by: root.clone(),
                },
            )
            .unwrap();
        for e in &events {
            flow.evolve(e);
        }
        assert!(
            flow.decide(
                &id,
                &WorkflowCommand::Register {
                    spec: Box::new(first.clone()),
                    by: root.clone()
                }
            )
            .unwrap()
            .is_empty()
        );
        let mut changed = first;
        changed.concurrency = 2;
        assert_eq!(
            flow.decide(
                &id,
                &WorkflowCommand::Register {
                    spec: Box::new(changed),
                    by: root
                }
            )
            .unwrap_err(),
            WorkflowRejection::VersionImmutable(ToolVersion::parse("1").unwrap())
        );
    }

    proptest! {
        /// Random `needs` graphs: validation flags exactly the nodes on a
        /// cycle, and accepts every acyclic graph.
        #[test]
        fn cycles_are_found_exactly(edges in proptest::collection::vec((0usize..8, 0usize..8), 0..16)) {
            let n = 8;
            let mut needs: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
            for (from, to) in edges {
                if from != to {
                    needs[from].insert(to);
                }
            }
            let nodes: Vec<Value> = (0..n)
                .map(|i| json!({
                    "name": format!("n{i}"),
                    "tool": "text.count",
                    "needs": needs[i].iter().map(|j| format!("n{j}")).collect::<Vec<_>>()
                }))
                .collect();
            let found = problems(Value::Array(nodes));
            // A node is on a cycle iff it can reach itself.
            let reaches_self = |start: usize| {
                let mut seen = BTreeSet::new();
                let mut todo: Vec<usize> = needs[start].iter().copied().collect();
                while let Some(at) = todo.pop() {
                    if at == start {
                        return true;
                    }
                    if seen.insert(at) {
                        todo.extend(needs[at].iter().copied());
                    }
                }
                false
            };
            for i in 0..n {
                let flagged = found.iter().any(|f| f.starts_with(&format!("spec.nodes[{i}].needs: is part of a cycle")));
                prop_assert_eq!(flagged, reaches_self(i), "node {} in {:?}", i, found);
            }
            if (0..n).all(|i| !reaches_self(i)) {
                prop_assert!(found.is_empty(), "{:?}", found);
            }
        }
    }
}

//! `charter-executor` runs approved tool versions and nothing else decides
//! here: whether a call may happen (authorization, contract, budgets) is
//! settled before it reaches an [`Executor`].
//!
//! It owns the runtimes: local processes (scrubbed environment, a fresh
//! working directory, a wall-clock timeout that kills the whole process
//! group, CPU-time, memory and file-size limits, capped stdout and stderr),
//! HTTP endpoints and Charter's built-in tools. It checks the input against
//! the tool's input schema and the output against its output schema, fills
//! secrets in by reference at call time and redacts their values from
//! anything it returns. Every failure is a typed [`Failure`] with a stable
//! code and whether retrying may help.

mod http;
mod process;
mod secrets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use charter_domain::OrgName;
use charter_domain::tool::{Builtin, CompiledSchema, Runtime, SchemaProblem, ToolName, ToolSpec};
use serde::Serialize;
use serde_json::Value;

pub use secrets::{SecretDir, Secrets};

/// Why a call failed, as workflows and clients match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The input breaks the tool's input schema.
    InputSchemaMismatch,
    /// The call ran past its timeout and was killed.
    Timeout,
    /// The process used up its CPU time.
    CpuLimitExceeded,
    /// Stdout or stderr went past the tool's cap.
    OutputTooLarge,
    /// The process exited with a non-zero status.
    ExitNonZero,
    /// The process was killed by a signal.
    Killed,
    /// The output is not one JSON value.
    OutputNotJson,
    /// The output breaks the tool's output schema.
    OutputSchemaMismatch,
    /// The process could not be started.
    SpawnFailed,
    /// A secret the tool names is not set for the org.
    SecretMissing,
    /// The endpoint answered with a status outside 2xx.
    HttpStatus,
    /// The endpoint could not be reached.
    Unreachable,
    /// The tool is served by remote agents, which this executor is not.
    AgentRuntime,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InputSchemaMismatch => "input_schema_mismatch",
            Self::Timeout => "timeout",
            Self::CpuLimitExceeded => "cpu_limit_exceeded",
            Self::OutputTooLarge => "output_too_large",
            Self::ExitNonZero => "exit_nonzero",
            Self::Killed => "killed",
            Self::OutputNotJson => "output_not_json",
            Self::OutputSchemaMismatch => "output_schema_mismatch",
            Self::SpawnFailed => "spawn_failed",
            Self::SecretMissing => "secret_missing",
            Self::HttpStatus => "http_status",
            Self::Unreachable => "unreachable",
            Self::AgentRuntime => "agent_runtime",
        }
    }

    /// Whether the same call may succeed when tried again.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::ExitNonZero | Self::Killed | Self::Unreachable
        )
    }
}

/// A failed call. Messages and `stderr` never hold a secret's value.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
    pub retryable: bool,
    /// The process's exit status or the endpoint's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// The last part of stderr (or of an error response's body).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Where the input or output broke its schema.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<SchemaProblem>,
}

impl Failure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.retryable(),
            status: None,
            stderr: String::new(),
            problems: Vec::new(),
        }
    }

    fn with_status(mut self, status: i32) -> Self {
        self.status = Some(status);
        self
    }

    fn with_stderr(mut self, stderr: String) -> Self {
        self.stderr = stderr;
        self
    }
}

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    pub output: Value,
    pub elapsed: Duration,
    /// The last part of what the process wrote to stderr (redacted).
    pub stderr: String,
}

/// One call of one tool version.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub org: &'a OrgName,
    pub tool: &'a ToolName,
    pub spec: &'a ToolSpec,
    pub input: &'a Value,
    /// The same for every attempt of one logical call, so that a tool can
    /// recognise a repeat (`CHARTER_IDEMPOTENCY_KEY`, `Idempotency-Key`).
    pub idempotency_key: &'a str,
    /// The data scopes the call's contract grants, given to the tool
    /// (`CHARTER_DATA_SCOPES`, `Charter-Data-Scopes`, comma-separated).
    pub scopes: &'a [String],
}

struct Schemas {
    input: CompiledSchema,
    output: CompiledSchema,
}

type SchemaKey = (OrgName, ToolName, String);

/// Runs tool calls. Cheap to share: clone the `Arc` it lives in.
pub struct Executor {
    secrets: Arc<dyn Secrets>,
    http: reqwest::Client,
    schemas: Mutex<HashMap<SchemaKey, Arc<Schemas>>>,
}

/// How much of stderr a result keeps.
const STDERR_TAIL: usize = 2048;

impl Executor {
    pub fn new(secrets: Arc<dyn Secrets>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            secrets,
            http,
            schemas: Mutex::new(HashMap::new()),
        }
    }

    fn schemas(&self, call: &Call<'_>) -> Result<Arc<Schemas>, Failure> {
        let key = (
            call.org.clone(),
            call.tool.clone(),
            call.spec.version.as_str().to_owned(),
        );
        let mut cache = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(&key) {
            return Ok(found.clone());
        }
        // Specs were checked when registered; a failure here means the
        // stored spec is damaged, which no retry repairs.
        let compile = |schema: &Value| {
            CompiledSchema::compile(schema).map_err(|e| {
                Failure::new(
                    FailureCode::SpawnFailed,
                    format!("the tool's schema does not compile: {e}"),
                )
            })
        };
        let schemas = Arc::new(Schemas {
            input: compile(&call.spec.input)?,
            output: compile(&call.spec.output)?,
        });
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, schemas.clone());
        Ok(schemas)
    }

    /// Checks a call's input against the tool's input schema.
    pub fn check_input(&self, call: &Call<'_>) -> Result<(), Failure> {
        let schemas = self.schemas(call)?;
        schemas.input.check(call.input).map_err(|problems| {
            let mut failure = Failure::new(
                FailureCode::InputSchemaMismatch,
                format!(
                    "the input does not match the tool's input schema: {}",
                    summary(&problems)
                ),
            );
            failure.problems = problems;
            failure
        })
    }

    /// Whether calls of this tool run inside the caller, at once and
    /// without I/O (the built-ins), so that [`Executor::call_inline`]
    /// answers them.
    pub fn runs_inline(spec: &ToolSpec) -> bool {
        matches!(spec.runtime, Runtime::Builtin(_))
    }

    /// Runs a call of a tool that [runs inline](Executor::runs_inline) to
    /// the end, input and output checked; `None` for any other tool.
    pub fn call_inline(&self, call: &Call<'_>) -> Option<Result<Success, Failure>> {
        let started = Instant::now();
        let output = match &call.spec.runtime {
            Runtime::Builtin(builtin) => builtin_output(*builtin, call.input),
            _ => return None,
        };
        Some(
            self.check_input(call)
                .and_then(|()| self.check_output(call, output, String::new(), started)),
        )
    }

    fn check_output(
        &self,
        call: &Call<'_>,
        output: Value,
        stderr: String,
        started: Instant,
    ) -> Result<Success, Failure> {
        let schemas = self.schemas(call)?;
        if let Err(problems) = schemas.output.check(&output) {
            let mut failure = Failure::new(
                FailureCode::OutputSchemaMismatch,
                format!(
                    "the output does not match the tool's output schema: {}",
                    summary(&problems)
                ),
            )
            .with_stderr(stderr);
            failure.problems = problems;
            return Err(failure);
        }
        Ok(Success {
            output,
            elapsed: started.elapsed(),
            stderr,
        })
    }

    /// Runs one call to the end: input check, the runtime, output check.
    /// Dropping the future cancels the call and kills what it started.
    pub async fn call(&self, call: Call<'_>) -> Result<Success, Failure> {
        if let Some(outcome) = self.call_inline(&call) {
            return outcome;
        }
        self.check_input(&call)?;
        let started = Instant::now();
        let (output, stderr) = match &call.spec.runtime {
            Runtime::Builtin(builtin) => (builtin_output(*builtin, call.input), String::new()),
            Runtime::Process(process) => {
                let secrets = self.resolve(call.org, process.secrets.iter())?;
                process::run(&call, process, &secrets).await?
            }
            Runtime::Http(endpoint) => {
                let secrets = self.resolve(call.org, endpoint.secrets.iter())?;
                http::run(&self.http, &call, endpoint, &secrets).await?
            }
            Runtime::Agent(agent) => {
                return Err(Failure::new(
                    FailureCode::AgentRuntime,
                    format!(
                        "capability `{}` is served by remote agents, which take jobs, not executor calls",
                        agent.capability
                    ),
                ));
            }
        };
        self.check_output(&call, output, stderr, started)
    }

    /// Looks up the values of the secrets a tool names.
    fn resolve<'a, K: ToString + 'a>(
        &self,
        org: &OrgName,
        wanted: impl Iterator<Item = (&'a K, &'a charter_domain::tool::SecretName)>,
    ) -> Result<Vec<(String, String)>, Failure> {
        wanted
            .map(|(target, name)| {
                self.secrets
                    .get(org, name)
                    .map(|value| (target.to_string(), value))
                    .ok_or_else(|| {
                        Failure::new(
                            FailureCode::SecretMissing,
                            format!("secret `{name}` is not set for org `{org}`"),
                        )
                    })
            })
            .collect()
    }
}

/// What a built-in answers.
fn builtin_output(builtin: Builtin, input: &Value) -> Value {
    match builtin {
        Builtin::Noop => Value::Object(serde_json::Map::new()),
        Builtin::Echo => input.clone(),
    }
}

fn summary(problems: &[SchemaProblem]) -> String {
    problems
        .iter()
        .take(3)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replaces every secret value (of 4 bytes or more) in `text`.
pub(crate) fn redact(text: &str, secrets: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (_, value) in secrets {
        if value.len() >= 4 && text.contains(value.as_str()) {
            text = text.replace(value.as_str(), "[redacted]");
        }
    }
    text
}

/// The last `STDERR_TAIL` bytes of a text, cut at a character boundary.
pub(crate) fn tail(text: &str) -> String {
    if text.len() <= STDERR_TAIL {
        return text.to_owned();
    }
    let mut start = text.len() - STDERR_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}
